//! Watching the gateway: logs, metrics and the audit trail.

pub mod audit;
pub mod logging;
pub mod metrics;
pub mod record;
