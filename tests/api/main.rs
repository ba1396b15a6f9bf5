//! HTTP-level tests: the real server on port 0 in front of a wiremock MPC,
//! every gateway on the memory backend. `tests/api_redis` runs the same
//! tests again with the gateways on a shared Redis.

/// Whether the gateways of this test binary keep their state in Redis.
pub const ON_REDIS: bool = false;

mod admin_access;
mod batch;
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
mod page;
mod quota;
mod reload;
mod resilience;
mod retrieve;
mod robustness;
mod slow_clients;
mod state_file;
mod throttling;
