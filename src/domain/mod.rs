//! The gateway's own vocabulary, free of any framework: labels, who asks,
//! what the MPC's answers mean, and what a retrieval came to.

pub mod identity;
pub mod label;
pub mod mpc_reply;
pub mod outcome;
