//! HTTP-level tests: the real server on port 0 in front of a wiremock MPC.

mod admin_access;
mod cli;
mod dedup;
mod demo;
mod health;
mod helpers;
mod identity;
mod labels;
mod load;
mod logging;
mod mpc_replies;
mod observability;
mod quota;
mod reload;
mod resilience;
mod retrieve;
mod robustness;
mod slow_clients;
