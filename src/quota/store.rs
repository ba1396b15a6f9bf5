//! The seam between the limits and where their state lives: the memory
//! backend here, a shared store for several replicas behind the same trait.
//!
//! A store owns its notion of now (the injected clock in memory, the
//! server's own clock in a shared store), so that replicas stepping one key
//! agree on time.

use super::gcra::{Cost, Decision, Limit};
use crate::store::StoreFuture;

/// Where limiter state lives: one TAT per key, each step atomic.
pub trait RateStore: Send + Sync {
    /// Applies one GCRA step to `key` atomically, at the store's now.
    fn step<'a>(&'a self, key: &'a str, limit: &'a Limit, cost: Cost) -> StoreFuture<'a, Decision>;
    /// Forgets keys whose state equals a fresh key's; returns how many remain.
    /// A store whose keys expire by themselves has nothing to do here.
    fn retain_recent(&self) -> usize;
    /// How many keys this process knows to have state.
    fn tracked(&self) -> usize;
}

/// Runs the [`suite`] against the backend that `$fixture` (a future of a
/// [`suite::Fixture`]) makes afresh for each test.
#[cfg(test)]
macro_rules! rate_store_suite {
    ($fixture:expr) => {
        $crate::quota::store::rate_store_suite!(@each $fixture;
            burst_is_admitted_at_once_then_one_per_interval,
            refills_fully_after_burst_intervals,
            peeking_charges_nothing,
            refund_gives_a_unit_back,
            users_are_limited_independently,
            budget_is_gateway_wide,
            a_budget_unit_given_back_can_be_spent_again,
            a_new_budget_applies_to_what_was_spent
        );
    };
    (@each $fixture:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::quota::store::suite::$name($fixture.await).await
            }
        )*
    };
}

#[cfg(test)]
pub(crate) use rate_store_suite;

/// The behaviour every [`RateStore`] owes the limits, as one suite that any
/// backend runs with [`rate_store_suite!`].
#[cfg(test)]
pub(crate) mod suite {
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;

    use super::RateStore;
    use crate::clock::FakeClock;
    use crate::quota::{Limit, LimitKind, QuotaError, Quotas, Tier};

    /// The stores under test, and the clock they follow: a backend with a
    /// clock of its own must be made to read this one in tests.
    pub struct Fixture {
        pub clock: Arc<FakeClock>,
        pub upstream: Arc<dyn RateStore>,
        pub budget: Arc<dyn RateStore>,
    }

    impl Fixture {
        fn quotas(self, budget: u32) -> (Arc<FakeClock>, Quotas) {
            let quotas =
                Quotas::with_stores(self.clock.clone(), self.upstream, self.budget, nz(budget));
            (self.clock, quotas)
        }
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn tier(per_hour: u32, burst: u32) -> Tier {
        Tier::new(
            "t",
            Limit::per_minute(nz(60)),
            Limit::new(nz(per_hour), Duration::from_secs(3600), nz(burst)),
        )
    }

    fn retry_after(refused: QuotaError) -> (LimitKind, Duration) {
        match refused {
            QuotaError::Exceeded(refusal) => (refusal.limit, refusal.retry_after),
            QuotaError::Store(error) => panic!("the store failed: {error}"),
        }
    }

    pub async fn burst_is_admitted_at_once_then_one_per_interval(fixture: Fixture) {
        let (clock, quotas) = fixture.quotas(100);
        let tier = tier(10, 2);
        assert!(quotas.admit_upstream("alice", &tier).await.is_ok());
        assert!(quotas.admit_upstream("alice", &tier).await.is_ok());
        let refused = quotas.admit_upstream("alice", &tier).await.unwrap_err();
        // 10 per hour: one more every 6 minutes.
        assert_eq!(
            retry_after(refused),
            (LimitKind::UpstreamPerHour, Duration::from_secs(360))
        );
        clock.advance(Duration::from_secs(359));
        let refused = quotas.admit_upstream("alice", &tier).await.unwrap_err();
        assert_eq!(retry_after(refused).1, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(quotas.admit_upstream("alice", &tier).await.is_ok());
        assert!(quotas.admit_upstream("alice", &tier).await.is_err());
    }

    pub async fn refills_fully_after_burst_intervals(fixture: Fixture) {
        let (clock, quotas) = fixture.quotas(100);
        let tier = tier(10, 3);
        for _ in 0..3 {
            quotas.admit_upstream("alice", &tier).await.unwrap();
        }
        let status = quotas.upstream_status("alice", &tier).await.unwrap();
        assert_eq!(status.remaining, 0);
        assert!(!status.allowed);
        assert_eq!(status.reset_after, Duration::from_secs(3 * 360));
        clock.advance(Duration::from_secs(3 * 360));
        let status = quotas.upstream_status("alice", &tier).await.unwrap();
        assert_eq!(status.remaining, 3);
        assert_eq!(status.reset_after, Duration::ZERO);
    }

    pub async fn peeking_charges_nothing(fixture: Fixture) {
        let (_clock, quotas) = fixture.quotas(100);
        let tier = tier(10, 2);
        for _ in 0..10 {
            let status = quotas.upstream_status("alice", &tier).await.unwrap();
            assert_eq!(status.remaining, 2);
            assert!(status.allowed);
        }
        quotas.admit_upstream("alice", &tier).await.unwrap();
        let status = quotas.upstream_status("alice", &tier).await.unwrap();
        assert_eq!(status.remaining, 1);
    }

    pub async fn refund_gives_a_unit_back(fixture: Fixture) {
        let (_clock, quotas) = fixture.quotas(100);
        let tier = tier(10, 1);
        quotas.admit_upstream("alice", &tier).await.unwrap();
        assert!(quotas.admit_upstream("alice", &tier).await.is_err());
        quotas.refund_upstream("alice", &tier).await.unwrap();
        assert!(quotas.admit_upstream("alice", &tier).await.is_ok());
        assert!(
            quotas.admit_upstream("alice", &tier).await.is_err(),
            "only the one"
        );
    }

    pub async fn users_are_limited_independently(fixture: Fixture) {
        let (_clock, quotas) = fixture.quotas(100);
        let tier = tier(10, 1);
        quotas.admit_upstream("alice", &tier).await.unwrap();
        assert!(quotas.admit_upstream("alice", &tier).await.is_err());
        assert!(quotas.admit_upstream("bob", &tier).await.is_ok());
    }

    pub async fn budget_is_gateway_wide(fixture: Fixture) {
        let (clock, quotas) = fixture.quotas(2);
        assert!(quotas.admit_budget().await.is_ok());
        assert!(quotas.admit_budget().await.is_ok());
        let refused = quotas.admit_budget().await.unwrap_err();
        assert_eq!(
            retry_after(refused),
            (LimitKind::CourtesyBudget, Duration::from_secs(30))
        );
        clock.advance(Duration::from_secs(30));
        assert!(quotas.admit_budget().await.is_ok());
    }

    pub async fn a_budget_unit_given_back_can_be_spent_again(fixture: Fixture) {
        let (_clock, quotas) = fixture.quotas(1);
        assert!(quotas.admit_budget().await.is_ok());
        assert!(quotas.admit_budget().await.is_err());
        quotas.refund_budget().await.unwrap();
        assert!(quotas.admit_budget().await.is_ok(), "the unit is back");
        assert!(quotas.admit_budget().await.is_err(), "only the one");
    }

    pub async fn a_new_budget_applies_to_what_was_spent(fixture: Fixture) {
        let (clock, quotas) = fixture.quotas(1);
        assert!(quotas.admit_budget().await.is_ok());
        quotas.set_budget(nz(60));
        assert!(quotas.admit_budget().await.is_err(), "spent at 1 a minute");
        clock.advance(Duration::from_secs(2));
        assert!(
            quotas.admit_budget().await.is_ok(),
            "one a second from now on"
        );
    }
}
