//! mpc-action-gateway: an intranet gateway in front of the Minor Planet
//! Center's Action Codes API.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod gate;
pub mod identity;
pub mod label;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod quota;
pub mod reload;
pub mod routes;
pub mod startup;
pub mod telemetry;
pub mod upstream;
