//! The HTTP tests of `tests/api` again, every gateway keeping its shared
//! state in a real Redis (started by the tests: `src/store/test_server.rs`),
//! and the tests only several replicas can have: gateways sharing one
//! Redis, replicas killed mid-call, Redis stopped, emptied or slow.
//!
//! Left out: the command line, the demo (memory only by contract), the
//! state file (ignored with Redis) and the load test.

/// Whether the gateways of this test binary keep their state in Redis.
pub const ON_REDIS: bool = true;

#[path = "../api/admin_access.rs"]
mod admin_access;
#[path = "../api/batch.rs"]
mod batch;
#[path = "../api/dedup.rs"]
mod dedup;
#[path = "../api/health.rs"]
mod health;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/identity.rs"]
mod identity;
#[path = "../api/labels.rs"]
mod labels;
#[path = "../api/logging.rs"]
mod logging;
#[path = "../api/mpc_replies.rs"]
mod mpc_replies;
#[path = "../api/observability.rs"]
mod observability;
#[path = "../api/page.rs"]
mod page;
mod paused_replicas;
#[path = "../api/quota.rs"]
mod quota;
#[path = "../api/reload.rs"]
mod reload;
mod replicas;
#[path = "../api/resilience.rs"]
mod resilience;
#[path = "../api/retrieve.rs"]
mod retrieve;
#[path = "../api/robustness.rs"]
mod robustness;
#[path = "../api/slow_clients.rs"]
mod slow_clients;
#[path = "../api/throttling.rs"]
mod throttling;
