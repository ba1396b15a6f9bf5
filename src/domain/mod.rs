//! The gateway's own vocabulary, free of any framework: labels, who asks,
//! and what a retrieval came to.

pub mod identity;
pub mod label;
pub mod outcome;
