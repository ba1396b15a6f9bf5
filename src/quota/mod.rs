//! Per-user limits and the gateway-wide courtesy budget towards the MPC.
//!
//! Every limit is GCRA: a limit of N per period with burst B admits B at once,
//! then one more every period/N. The state of a key is one number, its
//! theoretical arrival time (TAT). We keep our own small GCRA rather than
//! `governor` because the RateLimit response fields need to *peek* at a
//! user's remaining quota without charging it, a refund is needed when the
//! courtesy budget refuses after the user was charged, and the state must sit
//! behind [`RateStore`] so that a shared store can later hold it for several
//! replicas.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::clock::{Clock, nanos};

/// One GCRA limit: `count` per `period`, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
    interval: u64,
}

impl Limit {
    /// A limit of `count` per `period` with the given burst.
    pub fn new(count: NonZeroU32, period: Duration, burst: NonZeroU32) -> Self {
        let interval = (nanos(period) / u64::from(count.get())).max(1);
        Self {
            count,
            period,
            burst,
            interval,
        }
    }

    /// `count` per minute with burst `count`.
    pub fn per_minute(count: NonZeroU32) -> Self {
        Self::new(count, Duration::from_secs(60), count)
    }

    /// How many the limit allows per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period the count is given for.
    pub fn period(&self) -> Duration {
        self.period
    }

    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(u64::from(self.burst.get()))
    }
}

/// What a limiter step does to a key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// Report only; change nothing.
    Peek,
    /// Admit and charge one unit, if the limit allows.
    Charge,
    /// Give back one unit charged earlier.
    Refund,
}

/// The result of one limiter step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request was admitted (for a peek: whether one would be).
    pub allowed: bool,
    /// Units left right now, after this step.
    pub remaining: u32,
    /// Time until the key is back to its full burst.
    pub reset_after: Duration,
    /// Time until one more unit is available; zero when one is.
    pub retry_after: Duration,
}

/// One GCRA step on a key's TAT: returns the new TAT and the decision.
pub fn gcra(tat: Option<u64>, now: u64, limit: &Limit, cost: Cost) -> (Option<u64>, Decision) {
    let t = limit.interval;
    let tolerance = limit.tolerance();
    let base = tat.map_or(now, |tat| tat.max(now));
    let decide = |base: u64, allowed: bool| {
        let used = base - now;
        let remaining = (tolerance.saturating_sub(used) / t) as u32;
        let retry_after = (base + t).saturating_sub(tolerance).saturating_sub(now);
        Decision {
            allowed,
            remaining,
            reset_after: Duration::from_nanos(used),
            retry_after: Duration::from_nanos(retry_after),
        }
    };
    match cost {
        Cost::Peek => (tat, decide(base, base + t - now <= tolerance)),
        Cost::Charge => {
            let next = base + t;
            if next - now <= tolerance {
                (Some(next), decide(next, true))
            } else {
                (tat, decide(base, false))
            }
        }
        Cost::Refund => {
            let back = base.saturating_sub(t).max(now);
            (Some(back), decide(back, true))
        }
    }
}

/// Where limiter state lives: one TAT per key, updated atomically.
pub trait RateStore: Send + Sync {
    /// Applies one GCRA step to `key` atomically.
    fn step(&self, key: &str, limit: &Limit, now: Duration, cost: Cost) -> Decision;
    /// Forgets keys whose state equals a fresh key's; returns how many remain.
    fn retain_recent(&self, now: Duration) -> usize;
    /// How many keys have state.
    fn len(&self) -> usize;
    /// Whether no key has state.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limiter state in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tats: DashMap<Box<str>, u64>,
}

impl RateStore for MemoryStore {
    fn step(&self, key: &str, limit: &Limit, now: Duration, cost: Cost) -> Decision {
        let now = nanos(now);
        if let Some(mut tat) = self.tats.get_mut(key) {
            let (next, decision) = gcra(Some(*tat), now, limit, cost);
            if let Some(next) = next {
                *tat = next;
            }
            return decision;
        }
        if cost != Cost::Charge {
            // A key without state is a fresh key: nothing to store.
            return gcra(None, now, limit, cost).1;
        }
        // Another request may insert the key meanwhile: step on what is there.
        let mut tat = self.tats.entry(key.into()).or_insert(now);
        let (next, decision) = gcra(Some(*tat), now, limit, cost);
        if let Some(next) = next {
            *tat = next;
        }
        decision
    }

    fn retain_recent(&self, now: Duration) -> usize {
        let now = nanos(now);
        self.tats.retain(|_, tat| *tat > now);
        self.tats.len()
    }

    fn len(&self) -> usize {
        self.tats.len()
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// The per-user anti-flood limit on every request.
    RequestsPerMinute,
    /// The per-user limit on requests forwarded to the MPC.
    UpstreamPerHour,
}

impl LimitKind {
    /// The name used in problems and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::UpstreamPerHour => "upstream_per_hour",
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

/// Every limiter of the gateway, over one clock.
pub struct Quotas {
    clock: Arc<dyn Clock>,
    requests: Arc<dyn RateStore>,
    upstream: Arc<dyn RateStore>,
    budget: Arc<dyn RateStore>,
    budget_limit: ArcSwap<Limit>,
}

/// Key of the single gateway-wide budget.
const BUDGET_KEY: &str = "gateway";

impl Quotas {
    /// In-memory limiters with the courtesy budget `max_per_minute` towards the MPC.
    pub fn new(clock: Arc<dyn Clock>, max_per_minute: NonZeroU32) -> Self {
        Self {
            clock,
            requests: Arc::new(MemoryStore::default()),
            upstream: Arc::new(MemoryStore::default()),
            budget: Arc::new(MemoryStore::default()),
            budget_limit: ArcSwap::from_pointee(Limit::per_minute(max_per_minute)),
        }
    }

    /// Charges one request against the user's anti-flood limit.
    pub fn admit_request(&self, user: &str, tier: &Tier) -> Result<(), Refusal> {
        let decision = self
            .requests
            .step(user, &tier.requests, self.clock.now(), Cost::Charge);
        refusal(decision, LimitKind::RequestsPerMinute)
    }

    /// Charges one forwarded request against the user's upstream quota.
    pub fn admit_upstream(&self, user: &str, tier: &Tier) -> Result<(), Refusal> {
        let decision = self
            .upstream
            .step(user, &tier.upstream, self.clock.now(), Cost::Charge);
        refusal(decision, LimitKind::UpstreamPerHour)
    }

    /// Gives back an upstream unit when the request was not forwarded after all.
    pub fn refund_upstream(&self, user: &str, tier: &Tier) {
        self.upstream
            .step(user, &tier.upstream, self.clock.now(), Cost::Refund);
    }

    /// The user's upstream quota as it stands, for the RateLimit fields.
    pub fn upstream_status(&self, user: &str, tier: &Tier) -> Decision {
        self.upstream
            .step(user, &tier.upstream, self.clock.now(), Cost::Peek)
    }

    /// Gives back a unit of the budget when the request was not forwarded after all.
    pub fn refund_budget(&self) {
        self.budget.step(
            BUDGET_KEY,
            &self.budget_limit.load(),
            self.clock.now(),
            Cost::Refund,
        );
    }

    /// Sets the courtesy budget (on a reload); what was spent stays spent.
    pub fn set_budget(&self, max_per_minute: NonZeroU32) {
        self.budget_limit
            .store(Arc::new(Limit::per_minute(max_per_minute)));
    }

    /// Charges the gateway-wide budget; `Err` holds how long until it refills.
    pub fn admit_budget(&self) -> Result<(), Duration> {
        let decision = self.budget.step(
            BUDGET_KEY,
            &self.budget_limit.load(),
            self.clock.now(),
            Cost::Charge,
        );
        if decision.allowed {
            Ok(())
        } else {
            Err(decision.retry_after)
        }
    }

    /// Drops state of users whose limits are back to full; returns users still tracked.
    pub fn retain_recent(&self) -> usize {
        let now = self.clock.now();
        self.budget.retain_recent(now);
        self.requests
            .retain_recent(now)
            .max(self.upstream.retain_recent(now))
    }

    /// Users with limiter state right now.
    pub fn tracked_users(&self) -> usize {
        self.requests.len().max(self.upstream.len())
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
    fn burst_is_admitted_at_once_then_one_per_interval() {
        let (clock, quotas) = quotas(100);
        let tier = tier(60, 10, 2);
        assert!(quotas.admit_upstream("alice", &tier).is_ok());
        assert!(quotas.admit_upstream("alice", &tier).is_ok());
        let refusal = quotas.admit_upstream("alice", &tier).unwrap_err();
        assert_eq!(refusal.limit, LimitKind::UpstreamPerHour);
        // 10 per hour: one more every 6 minutes.
        assert_eq!(refusal.retry_after, Duration::from_secs(360));

        clock.advance(Duration::from_secs(359));
        let refusal = quotas.admit_upstream("alice", &tier).unwrap_err();
        assert_eq!(refusal.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(quotas.admit_upstream("alice", &tier).is_ok());
        assert!(quotas.admit_upstream("alice", &tier).is_err());
    }

    #[test]
    fn refills_fully_after_burst_intervals() {
        let (clock, quotas) = quotas(100);
        let tier = tier(60, 10, 3);
        for _ in 0..3 {
            quotas.admit_upstream("alice", &tier).unwrap();
        }
        let status = quotas.upstream_status("alice", &tier);
        assert_eq!(status.remaining, 0);
        assert!(!status.allowed);
        assert_eq!(status.reset_after, Duration::from_secs(3 * 360));

        clock.advance(Duration::from_secs(3 * 360));
        let status = quotas.upstream_status("alice", &tier);
        assert_eq!(status.remaining, 3);
        assert_eq!(status.reset_after, Duration::ZERO);
    }

    #[test]
    fn peeking_charges_nothing() {
        let (_clock, quotas) = quotas(100);
        let tier = tier(60, 10, 2);
        for _ in 0..10 {
            let status = quotas.upstream_status("alice", &tier);
            assert_eq!(status.remaining, 2);
            assert!(status.allowed);
        }
        quotas.admit_upstream("alice", &tier).unwrap();
        assert_eq!(quotas.upstream_status("alice", &tier).remaining, 1);
        assert_eq!(
            quotas.tracked_users(),
            1,
            "a peek at a fresh user stores nothing"
        );
    }

    #[test]
    fn refund_gives_a_unit_back() {
        let (_clock, quotas) = quotas(100);
        let tier = tier(60, 10, 1);
        quotas.admit_upstream("alice", &tier).unwrap();
        assert!(quotas.admit_upstream("alice", &tier).is_err());
        quotas.refund_upstream("alice", &tier);
        assert!(quotas.admit_upstream("alice", &tier).is_ok());
    }

    #[test]
    fn users_are_limited_independently() {
        let (_clock, quotas) = quotas(100);
        let tier = tier(60, 10, 1);
        quotas.admit_upstream("alice", &tier).unwrap();
        assert!(quotas.admit_upstream("alice", &tier).is_err());
        assert!(quotas.admit_upstream("bob", &tier).is_ok());
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

    #[test]
    fn budget_is_gateway_wide() {
        let (clock, quotas) = quotas(2);
        assert!(quotas.admit_budget().is_ok());
        assert!(quotas.admit_budget().is_ok());
        assert_eq!(quotas.admit_budget(), Err(Duration::from_secs(30)));
        clock.advance(Duration::from_secs(30));
        assert!(quotas.admit_budget().is_ok());
    }

    #[test]
    fn a_peek_says_whether_the_next_charge_would_be_admitted_and_charges_nothing() {
        let limit = Limit::new(nz(10), Duration::from_secs(3600), nz(2));
        let now = 1_000_000_000_000;
        let (tat, peek) = gcra(None, now, &limit, Cost::Peek);
        assert!(peek.allowed);
        assert_eq!((tat, peek.remaining), (None, 2), "nothing charged");
        let (tat, _) = gcra(tat, now, &limit, Cost::Charge);
        let (tat, _) = gcra(tat, now, &limit, Cost::Charge);
        let (after, peek) = gcra(tat, now, &limit, Cost::Peek);
        assert!(!peek.allowed, "the burst is spent");
        assert_eq!(after, tat);
        let later = now + limit.interval;
        assert!(
            gcra(tat, later, &limit, Cost::Peek).1.allowed,
            "one interval later"
        );
    }

    #[test]
    fn a_budget_unit_given_back_can_be_spent_again() {
        let (_clock, quotas) = quotas(1);
        assert!(quotas.admit_budget().is_ok());
        assert!(quotas.admit_budget().is_err());
        quotas.refund_budget();
        assert!(quotas.admit_budget().is_ok(), "the unit is back");
        assert!(quotas.admit_budget().is_err(), "only the one");
    }

    #[test]
    fn a_new_budget_applies_to_what_was_spent() {
        let (clock, quotas) = quotas(1);
        assert!(quotas.admit_budget().is_ok());
        quotas.set_budget(60.try_into().unwrap());
        assert!(quotas.admit_budget().is_err(), "spent at 1 a minute");
        clock.advance(Duration::from_secs(2));
        assert!(quotas.admit_budget().is_ok(), "one a second from now on");
    }

    #[test]
    fn idle_users_are_evicted() {
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
        quotas.admit_upstream("alice", &tier).unwrap();
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
        assert_eq!(quotas.upstream_status("alice", &tier).remaining, 2);
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(360)), 360);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn gcra_matches_the_spec_definition() {
        // N per period with burst B admits B at once, then one every period/N.
        let limit = Limit::new(nz(4), Duration::from_secs(60), nz(3));
        let mut tat = None;
        let mut admitted = 0;
        for _ in 0..10 {
            let (next, decision) = gcra(tat, 0, &limit, Cost::Charge);
            tat = next;
            admitted += u32::from(decision.allowed);
        }
        assert_eq!(admitted, 3);
        let at = nanos(Duration::from_secs(15));
        let (_, decision) = gcra(tat, at, &limit, Cost::Charge);
        assert!(decision.allowed, "one more after period/N = 15 s");
    }
}
