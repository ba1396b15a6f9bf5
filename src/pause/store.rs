//! The seam between the pause policy and where the pause lives: this
//! process's memory, or a store shared by several replicas.
//!
//! The store answers in durations from its own now (the injected clock in
//! memory, the server's clock in a shared store), never in points in time:
//! replicas whose clocks disagree still agree on how long a pause has left.

use std::time::Duration;

use crate::store::StoreFuture;

/// Where the pause the MPC asked for lives.
pub trait PauseStore: Send + Sync {
    /// Pauses forwarding for `wait` from the store's now, unless the pause
    /// under way ends later; answers how long the pause has left.
    fn extend(&self, wait: Duration) -> StoreFuture<'_, Duration>;

    /// How long the pause has left (zero: none). A shared store may answer
    /// from what this replica learned moments ago, without asking.
    fn remaining(&self) -> StoreFuture<'_, Duration>;

    /// How long the pause has left as this replica knows it now, without
    /// asking anyone (for `/readyz` and the `upstream_paused` gauge).
    fn known(&self) -> Duration;
}

/// Runs the [`suite`] against the backend that `$fixture` (a future of a
/// [`suite::Fixture`]) makes afresh for each test.
#[cfg(test)]
macro_rules! pause_store_suite {
    ($fixture:expr) => {
        $crate::pause::store::pause_store_suite!(@each $fixture;
            nothing_is_paused_at_first,
            a_pause_lasts_its_wait_on_the_clock,
            a_shorter_pause_leaves_a_longer_one_alone,
            a_longer_pause_extends_a_shorter_one,
            a_zero_wait_pauses_nothing,
            a_new_pause_begins_after_one_ended
        );
    };
    (@each $fixture:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::pause::store::suite::$name($fixture.await).await
            }
        )*
    };
}

#[cfg(test)]
pub(crate) use pause_store_suite;

/// The behaviour every [`PauseStore`] owes the policy above it, as one
/// suite that any backend runs with [`pause_store_suite!`].
#[cfg(test)]
pub(crate) mod suite {
    use std::sync::Arc;
    use std::time::Duration;

    use super::PauseStore;
    use crate::clock::FakeClock;

    /// The store under test and the clock it follows: a backend with a
    /// clock of its own must be made to read this one in tests.
    pub struct Fixture {
        pub clock: Arc<FakeClock>,
        pub store: Arc<dyn PauseStore>,
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    pub async fn nothing_is_paused_at_first(fixture: Fixture) {
        let Fixture { store, .. } = fixture;
        assert_eq!(store.remaining().await.unwrap(), Duration::ZERO);
        assert_eq!(store.known(), Duration::ZERO);
    }

    pub async fn a_pause_lasts_its_wait_on_the_clock(fixture: Fixture) {
        let Fixture { clock, store } = fixture;
        assert_eq!(store.extend(secs(3)).await.unwrap(), secs(3));
        assert_eq!(store.remaining().await.unwrap(), secs(3));
        assert_eq!(store.known(), secs(3));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(
            store.remaining().await.unwrap(),
            Duration::from_millis(1_500)
        );
        assert_eq!(store.known(), Duration::from_millis(1_500));
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(store.remaining().await.unwrap(), Duration::ZERO);
        assert_eq!(store.known(), Duration::ZERO);
    }

    pub async fn a_shorter_pause_leaves_a_longer_one_alone(fixture: Fixture) {
        let Fixture { clock, store } = fixture;
        store.extend(secs(60)).await.unwrap();
        clock.advance(secs(10));
        assert_eq!(store.extend(secs(10)).await.unwrap(), secs(50));
        assert_eq!(store.remaining().await.unwrap(), secs(50));
        assert_eq!(store.known(), secs(50));
    }

    pub async fn a_longer_pause_extends_a_shorter_one(fixture: Fixture) {
        let Fixture { clock, store } = fixture;
        store.extend(secs(10)).await.unwrap();
        clock.advance(secs(5));
        assert_eq!(store.extend(secs(60)).await.unwrap(), secs(60));
        clock.advance(secs(59));
        assert_eq!(store.remaining().await.unwrap(), secs(1));
    }

    pub async fn a_zero_wait_pauses_nothing(fixture: Fixture) {
        let Fixture { store, .. } = fixture;
        assert_eq!(store.extend(Duration::ZERO).await.unwrap(), Duration::ZERO);
        assert_eq!(store.remaining().await.unwrap(), Duration::ZERO);
        assert_eq!(store.known(), Duration::ZERO);
    }

    pub async fn a_new_pause_begins_after_one_ended(fixture: Fixture) {
        let Fixture { clock, store } = fixture;
        store.extend(secs(5)).await.unwrap();
        clock.advance(secs(6));
        assert_eq!(store.remaining().await.unwrap(), Duration::ZERO);
        assert_eq!(store.extend(secs(3)).await.unwrap(), secs(3));
        assert_eq!(store.remaining().await.unwrap(), secs(3));
    }
}
