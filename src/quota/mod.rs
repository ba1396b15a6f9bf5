//! Per-user limits and the gateway-wide courtesy budget towards the MPC.
//!
//! Every limit is GCRA ([`gcra`]). We keep our own small GCRA rather than
//! `governor` because the RateLimit response fields need to *peek* at a
//! user's remaining quota without charging it, a refund is needed when the
//! courtesy budget refuses after the user was charged, and the state of the
//! shared limits sits behind [`RateStore`] so that a shared store can hold
//! it for several replicas. `requests_per_minute` stays in each replica's
//! memory: it guards the replica, not the MPC.

pub mod gcra;
pub mod memory;
pub mod redis;
pub mod store;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use arc_swap::ArcSwap;

pub use gcra::{Cost, Decision, Limit};
pub use memory::MemoryStore;
pub use store::RateStore;

use crate::clock::Clock;
use crate::store::StoreError;

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// The per-user anti-flood limit on every request.
    RequestsPerMinute,
    /// The per-user limit on requests forwarded to the MPC.
    UpstreamPerHour,
    /// The gateway-wide courtesy budget towards the MPC.
    CourtesyBudget,
}

impl LimitKind {
    /// Every limit, for series exported at 0 from start-up.
    pub const ALL: [Self; 3] = [
        Self::RequestsPerMinute,
        Self::UpstreamPerHour,
        Self::CourtesyBudget,
    ];

    /// The name used in problems and metrics (`quota_rejections_total{limit}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::UpstreamPerHour => "upstream_per_hour",
            Self::CourtesyBudget => "max_per_minute",
        }
    }
}

/// A quota tier: the limits that apply to each of its users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    /// The tier's name in `quota.tiers`.
    pub name: Box<str>,
    /// Every request, anti-flood.
    pub requests: Limit,
    /// Requests forwarded to the MPC.
    pub upstream: Limit,
    /// The `upstream` limit as a `RateLimit-Policy` field, rendered once.
    pub upstream_policy: HeaderValue,
}

impl Tier {
    /// A tier named `name` with these limits.
    pub fn new(name: &str, requests: Limit, upstream: Limit) -> Self {
        let policy = format!(
            "\"upstream\";q={};w={}",
            upstream.count(),
            upstream.period().as_secs()
        );
        Self {
            name: name.into(),
            requests,
            upstream,
            upstream_policy: HeaderValue::try_from(policy)
                .expect("digits and quotes are a valid header"),
        }
    }
}

/// A refusal by a limit, with when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The limit that refused.
    pub limit: LimitKind,
    /// How long until it would admit.
    pub retry_after: Duration,
}

/// Why a charge was refused: a limit, or a store that could not say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// A limit is used up.
    #[error("{} limit used up", .0.limit.as_str())]
    Exceeded(Refusal),
    /// The store holding the limit failed: nothing may be charged or sent.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every limiter of the gateway.
pub struct Quotas {
    requests: MemoryStore,
    upstream: Arc<dyn RateStore>,
    budget: Arc<dyn RateStore>,
    budget_limit: ArcSwap<Limit>,
}

/// Key of the single gateway-wide budget.
const BUDGET_KEY: &str = "gateway";

impl Quotas {
    /// Every limiter in this process's memory, with the courtesy budget
    /// `max_per_minute` towards the MPC.
    pub fn new(clock: Arc<dyn Clock>, max_per_minute: NonZeroU32) -> Self {
        let upstream = Arc::new(MemoryStore::new(clock.clone()));
        let budget = Arc::new(MemoryStore::new(clock.clone()));
        Self::with_stores(clock, upstream, budget, max_per_minute)
    }

    /// The upstream quotas and the budget in the given stores (shared by
    /// replicas); the anti-flood limit in memory on `clock`.
    pub fn with_stores(
        clock: Arc<dyn Clock>,
        upstream: Arc<dyn RateStore>,
        budget: Arc<dyn RateStore>,
        max_per_minute: NonZeroU32,
    ) -> Self {
        Self {
            requests: MemoryStore::new(clock),
            upstream,
            budget,
            budget_limit: ArcSwap::from_pointee(Limit::per_minute(max_per_minute)),
        }
    }

    /// Charges one request against the user's anti-flood limit.
    pub fn admit_request(&self, user: &str, tier: &Tier) -> Result<(), Refusal> {
        let decision = self.requests.step_now(user, &tier.requests, Cost::Charge);
        refusal(decision, LimitKind::RequestsPerMinute)
    }

    /// Charges one forwarded request against the user's upstream quota.
    pub async fn admit_upstream(&self, user: &str, tier: &Tier) -> Result<(), QuotaError> {
        let decision = self
            .upstream
            .step(user, &tier.upstream, Cost::Charge)
            .await?;
        Ok(refusal(decision, LimitKind::UpstreamPerHour)?)
    }

    /// Gives back an upstream unit when the request was not forwarded after all.
    pub async fn refund_upstream(&self, user: &str, tier: &Tier) -> Result<(), StoreError> {
        self.upstream
            .step(user, &tier.upstream, Cost::Refund)
            .await
            .map(drop)
    }

    /// The user's upstream quota as it stands, for the RateLimit fields.
    pub async fn upstream_status(&self, user: &str, tier: &Tier) -> Result<Decision, StoreError> {
        self.upstream.step(user, &tier.upstream, Cost::Peek).await
    }

    /// Charges the gateway-wide budget.
    pub async fn admit_budget(&self) -> Result<(), QuotaError> {
        let limit = self.budget_limit.load_full();
        let decision = self.budget.step(BUDGET_KEY, &limit, Cost::Charge).await?;
        Ok(refusal(decision, LimitKind::CourtesyBudget)?)
    }

    /// Gives back a unit of the budget when the request was not forwarded after all.
    pub async fn refund_budget(&self) -> Result<(), StoreError> {
        let limit = self.budget_limit.load_full();
        self.budget
            .step(BUDGET_KEY, &limit, Cost::Refund)
            .await
            .map(drop)
    }

    /// Sets the courtesy budget (on a reload); what was spent stays spent.
    pub fn set_budget(&self, max_per_minute: NonZeroU32) {
        self.budget_limit
            .store(Arc::new(Limit::per_minute(max_per_minute)));
    }

    /// Drops state of users whose limits are back to full; returns users still tracked.
    pub fn retain_recent(&self) -> usize {
        self.budget.retain_recent();
        self.requests
            .retain_recent()
            .max(self.upstream.retain_recent())
    }

    /// Users with limiter state in this process right now.
    pub fn tracked_users(&self) -> usize {
        self.requests.len().max(self.upstream.tracked())
    }
}

fn refusal(decision: Decision, limit: LimitKind) -> Result<(), Refusal> {
    if decision.allowed {
        Ok(())
    } else {
        Err(Refusal {
            limit,
            retry_after: decision.retry_after,
        })
    }
}

impl From<Refusal> for QuotaError {
    fn from(refusal: Refusal) -> Self {
        Self::Exceeded(refusal)
    }
}

/// Whole seconds for `Retry-After`: rounded up, never 0 for a real wait.
pub fn whole_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn tier(rpm: u32, per_hour: u32, burst: u32) -> Tier {
        Tier::new(
            "t",
            Limit::per_minute(nz(rpm)),
            Limit::new(nz(per_hour), Duration::from_secs(3600), nz(burst)),
        )
    }

    fn quotas(budget: u32) -> (Arc<FakeClock>, Quotas) {
        let clock = Arc::new(FakeClock::default());
        let quotas = Quotas::new(clock.clone(), nz(budget));
        (clock, quotas)
    }

    #[test]
    fn requests_per_minute_floods_are_refused() {
        let (clock, quotas) = quotas(100);
        let tier = tier(3, 10, 1);
        for _ in 0..3 {
            quotas.admit_request("alice", &tier).unwrap();
        }
        let refusal = quotas.admit_request("alice", &tier).unwrap_err();
        assert_eq!(refusal.limit, LimitKind::RequestsPerMinute);
        assert_eq!(refusal.retry_after, Duration::from_secs(20));
        clock.advance(Duration::from_secs(20));
        assert!(quotas.admit_request("alice", &tier).is_ok());
    }

    #[tokio::test]
    async fn a_peek_at_a_fresh_user_tracks_nothing() {
        let (_clock, quotas) = quotas(100);
        let tier = tier(60, 10, 2);
        quotas.upstream_status("alice", &tier).await.unwrap();
        assert_eq!(quotas.tracked_users(), 0);
        quotas.admit_upstream("alice", &tier).await.unwrap();
        assert_eq!(quotas.tracked_users(), 1);
    }

    #[tokio::test]
    async fn idle_users_are_evicted() {
        let (clock, quotas) = quotas(100);
        let tier = tier(60, 10, 2);
        for user in 0..1000 {
            quotas
                .admit_request(
                    &format!("anonymous:10.0.{}.{}", user / 256, user % 256),
                    &tier,
                )
                .unwrap();
        }
        quotas.admit_upstream("alice", &tier).await.unwrap();
        assert_eq!(quotas.tracked_users(), 1000);

        // At 60 per minute one request is forgotten after one second.
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            quotas.retain_recent(),
            1000,
            "half a second is not enough to refill"
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            quotas.retain_recent(),
            1,
            "only alice's upstream use is still recent"
        );
        clock.advance(Duration::from_secs(360));
        assert_eq!(quotas.retain_recent(), 0);
        let status = quotas.upstream_status("alice", &tier).await.unwrap();
        assert_eq!(status.remaining, 2);
    }

    #[test]
    fn a_tier_states_its_upstream_limit_as_a_ratelimit_policy() {
        let tier = tier(60, 10, 2);
        assert_eq!(tier.upstream_policy, "\"upstream\";q=10;w=3600");
    }

    #[test]
    fn limits_are_named_as_the_spec_names_them() {
        let names = LimitKind::ALL.map(LimitKind::as_str);
        assert_eq!(
            names,
            ["requests_per_minute", "upstream_per_hour", "max_per_minute"]
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(360)), 360);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
