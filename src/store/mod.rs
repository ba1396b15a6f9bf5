//! What the shared-state seams (quota and dedup stores) have in common: the
//! future their methods return and the one way they fail.

use std::future::Future;
use std::pin::Pin;

pub mod redis;
// Shared with the HTTP tests, which use more of it than the unit tests do.
#[cfg(test)]
#[allow(dead_code)]
pub(crate) mod test_server;

/// Every `operation` of `store_errors_total`, exported at 0 from start-up.
pub const OPERATIONS: [&str; 10] = [
    "get",
    "claim",
    "begin_call",
    "settle",
    "release",
    "forget",
    "watch",
    "quota",
    "marker",
    "pause",
];

/// The future a store method returns: boxed, so that stores are objects
/// chosen at start-up (`store.backend`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The store could not be read or written in time: nothing may be decided
/// from it, so nothing is forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the shared store failed to {operation}: {reason}")]
pub struct StoreError {
    /// What was being done, a bounded name (the `operation` of `store_errors_total`).
    pub operation: &'static str,
    /// What went wrong, for the logs.
    pub reason: String,
}

/// A store answer that is ready now (the memory backend's every answer).
pub fn ready<'a, T: Send + 'a>(value: T) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}
