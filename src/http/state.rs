//! State shared by the HTTP workers: the gateway's parts, and whether it
//! is still taking work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::auth::Authenticator;
use crate::dedup::Dedup;
use crate::observe::metrics::Metrics;
use crate::quota::Quotas;
use crate::retrieval::Retrieval;
use crate::store::redis::Redis;
use crate::upstream::breaker::Breaker;

/// State shared by every worker of the public listener.
pub struct AppState {
    /// Cap on request bodies, from `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// Most labels in one batch, from `server.max_batch_labels`; its body may
    /// be 128 bytes a label.
    pub max_batch_labels: usize,
    /// `server.public_origin`, or `None` for the request's own scheme and `Host`.
    pub public_origin: Option<String>,
    /// Resolves callers to users and tiers; replaced whole on a reload.
    pub authenticator: ArcSwap<Authenticator>,
    /// Per-user limits and the courtesy budget.
    pub quotas: Arc<Quotas>,
    /// Remembered outcomes and calls in flight.
    pub dedup: Arc<Dedup>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Stops calling a failing MPC.
    pub breaker: Arc<Breaker>,
    /// The use case every retrieval route calls.
    pub retrieval: Retrieval,
}

/// Whether the shared store answers, for `/readyz`.
pub enum StoreHealth {
    /// This process's memory: always there.
    Memory,
    /// A Redis server shared by replicas.
    Redis(Arc<Redis>),
}

impl StoreHealth {
    /// `up` or `down`, as `/readyz` shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Redis(redis) if !redis.is_up() => "down",
            _ => "up",
        }
    }
}

/// Whether the gateway is still taking work; flips once, at shutdown.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
    active: AtomicUsize,
}

/// A request being served; counted until dropped.
pub struct Active<'a>(&'a Readiness);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Readiness {
    /// Counts a request as being served until the guard is dropped.
    pub fn enter(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self)
    }

    /// Requests being served right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Marks the start of shutdown; `/readyz` turns 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
