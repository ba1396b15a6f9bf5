//! mpc-action-gateway: an intranet gateway in front of the Minor Planet
//! Center's Action Codes API.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod domain;
pub mod fake_mpc;
pub mod http;
pub mod jobs;
pub mod observe;
pub mod pause;
pub mod quota;
pub mod reload;
pub mod retrieval;
pub mod startup;
pub mod store;
pub mod upstream;
