//! The pause in the Redis that replicas share: one key, `<prefix>pause`,
//! holding when the pause ends on the server's clock (`TIME`), so that
//! replicas whose own clocks disagree still agree on how long it has left.
//!
//! Each replica keeps what it learned in its own memory and asks Redis
//! again every [`REFRESH`] in the background, so that a pause set at any
//! replica is honoured by all within a second while a remembered answer
//! never waits on Redis. A request about to be forwarded reads that
//! knowledge; only when it is older than [`STALE`] (Redis not answering
//! the refresh) does it ask Redis itself, and a replica that cannot learn
//! the pause forwards nothing. What a replica knows of a pause and Redis
//! lacks (its write failed, or Redis lost its data) is written back by the
//! refresh: a pause the MPC asked for is never forgotten early.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ::redis::Script;

use super::store::PauseStore;
use crate::clock::Clock;
use crate::store::redis::{Redis, script};
use crate::store::{StoreError, StoreFuture};

/// How often each replica reads the pause in the background.
pub const REFRESH: Duration = Duration::from_millis(250);

/// How old this replica's knowledge of the pause may be when a request is
/// about to be forwarded; older, the request asks Redis itself.
pub const STALE: Duration = Duration::from_millis(750);

/// By how much this replica's knowledge must outlast the pause in Redis
/// before the refresh writes it back: more than the few milliseconds that
/// reading it took, so that refreshes never stretch a pause.
const WRITE_BACK_MARGIN: Duration = Duration::from_secs(1);

/// Extends the pause to `now + wait` unless it ends later (by more than a
/// margin); answers what it has left (ms). KEYS: the pause. ARGV: wait
/// (ms), the margin (ms), and a fixed now (ms) or `""` for the server's
/// clock. The key outlives its end by a minute: its value, not its expiry,
/// decides, and the expiry only clears it away.
const PAUSE: &str = r"
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local wait = tonumber(ARGV[1])
local held = tonumber(redis.call('GET', KEYS[1]))
local left = 0
if held and held > now then left = held - now end
if wait > left + tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], string.format('%d', now + wait), 'PX', string.format('%d', wait + 60000))
  left = wait
end
return left
";

/// What this replica knows of the pause.
struct Known {
    /// When the pause ends on this replica's clock (zero: no pause known).
    until: Duration,
    /// When Redis last answered about it.
    read_at: Option<Instant>,
}

/// The pause in the shared Redis, known here as of the last refresh.
pub struct RedisStore {
    redis: Arc<Redis>,
    key: String,
    script: Script,
    /// This replica's clock, on which the pause's end is kept here.
    clock: Arc<dyn Clock>,
    /// Tests only: `clock` stands in for the server's.
    on_clock: bool,
    known: Mutex<Known>,
}

impl RedisStore {
    /// The pause under `<key_prefix>pause`, stepped on the server's clock
    /// and kept here on `clock`; not refreshed in the background (see
    /// [`RedisStore::start`]).
    pub fn new(redis: Arc<Redis>, clock: Arc<dyn Clock>) -> Self {
        Self {
            key: redis.key("pause"),
            redis,
            script: script(PAUSE),
            clock,
            on_clock: false,
            known: Mutex::new(Known {
                until: Duration::ZERO,
                read_at: None,
            }),
        }
    }

    /// The same store, stepped on its clock instead of the server's (tests).
    pub fn on_clock(mut self) -> Self {
        self.on_clock = true;
        self
    }

    /// Starts reading the pause every [`REFRESH`], for as long as the store lives.
    pub fn start(self) -> Arc<Self> {
        let store = Arc::new(self);
        tokio::spawn(refresh(Arc::downgrade(&store)));
        store
    }

    fn known_left(&self) -> Duration {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.until.saturating_sub(self.clock.now())
    }

    /// Takes in that the pause has `left` from now; `answered` when Redis said so.
    fn learn(&self, left: Duration, answered: bool) {
        let until = self.clock.now().saturating_add(left);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.until = known.until.max(until);
        if answered {
            known.read_at = Some(Instant::now());
        }
    }

    fn is_fresh(&self) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.read_at.is_some_and(|at| at.elapsed() < STALE)
    }

    /// Runs the script with `wait` and `margin`, and learns its answer.
    async fn ask(&self, wait: Duration, margin: Duration) -> Result<Duration, StoreError> {
        let now = if self.on_clock {
            self.clock.now().as_millis().to_string()
        } else {
            String::new()
        };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(wait.as_millis() as u64)
            .arg(margin.as_millis() as u64)
            .arg(now);
        let left: u64 = self.redis.run("pause", &invocation).await?;
        self.learn(Duration::from_millis(left), true);
        Ok(self.known_left())
    }

    /// Reads the pause from Redis, writing back what is known here and missing there.
    async fn sync(&self) -> Result<Duration, StoreError> {
        self.ask(self.known_left(), WRITE_BACK_MARGIN).await
    }
}

/// Reads the pause every [`REFRESH`] while the store lives.
async fn refresh(store: Weak<RedisStore>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(store) = store.upgrade() else { return };
        if let Err(error) = store.sync().await {
            tracing::debug!(%error, "cannot read the MPC's pause from the shared store");
        }
    }
}

impl PauseStore for RedisStore {
    fn extend(&self, wait: Duration) -> StoreFuture<'_, Duration> {
        Box::pin(async move {
            // Obeyed here whatever Redis says; written back if it failed.
            self.learn(wait, false);
            self.ask(wait, Duration::ZERO).await
        })
    }

    fn remaining(&self) -> StoreFuture<'_, Duration> {
        Box::pin(async move {
            // A pause known here holds whatever Redis says: pauses only grow.
            let known = self.known_left();
            if !known.is_zero() || self.is_fresh() {
                return Ok(known);
            }
            self.sync().await
        })
    }

    fn known(&self) -> Duration {
        self.known_left()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{FakeClock, SystemClock};
    use crate::store::redis::for_tests;

    super::super::store::pause_store_suite!(async {
        let clock = Arc::new(FakeClock::default());
        super::super::store::suite::Fixture {
            store: RedisStore::new(for_tests(), clock.clone())
                .on_clock()
                .start(),
            clock,
        }
    });

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    /// Two replicas' stores on one Redis, on the server's clock.
    fn replicas(clocks: [Arc<dyn Clock>; 2]) -> [RedisStore; 2] {
        let redis = for_tests();
        clocks.map(|clock| RedisStore::new(Arc::clone(&redis), clock))
    }

    async fn pttl(store: &RedisStore) -> i64 {
        store
            .redis
            .query("pause", ::redis::cmd("PTTL").arg(&store.key))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_pause_set_at_one_replica_is_read_at_another_on_the_servers_clock() {
        let [first, second] = replicas([Arc::new(SystemClock), Arc::new(SystemClock)]);
        assert_eq!(second.remaining().await.unwrap(), Duration::ZERO);
        first.extend(secs(60)).await.unwrap();
        assert_eq!(second.known(), Duration::ZERO, "not read yet");
        assert_eq!(
            second.remaining().await.unwrap(),
            Duration::ZERO,
            "what was read moments ago answers"
        );
        let left = second.sync().await.unwrap();
        assert!(left > secs(59) && left <= secs(60), "{left:?}");
        assert!(second.known() > secs(59));
        let ttl = pttl(&first).await;
        assert!(
            (119_000..=120_000).contains(&ttl),
            "kept past its end, set on the server's clock: {ttl} ms"
        );
    }

    #[tokio::test]
    async fn replicas_whose_clocks_disagree_agree_on_the_time_left() {
        let ahead = FakeClock::at(SystemClock.now() + secs(600));
        let [first, second] = replicas([Arc::new(SystemClock), Arc::new(ahead)]);
        first.extend(secs(60)).await.unwrap();
        let left = second.remaining().await.unwrap();
        assert!(
            left > secs(59) && left <= secs(60),
            "ten minutes of skew change nothing: {left:?}"
        );
    }

    #[tokio::test]
    async fn a_request_asks_redis_itself_once_the_refresh_is_stale() {
        let [first, second] = replicas([Arc::new(SystemClock), Arc::new(SystemClock)]);
        second.remaining().await.unwrap();
        first.extend(secs(60)).await.unwrap();
        second.known.lock().unwrap().read_at = Some(Instant::now() - STALE);
        let left = second.remaining().await.unwrap();
        assert!(left > secs(59), "read from Redis: {left:?}");
    }

    #[tokio::test]
    async fn the_background_refresh_brings_a_pause_set_elsewhere_within_a_second() {
        let redis = for_tests();
        let first = RedisStore::new(Arc::clone(&redis), Arc::new(SystemClock));
        let second = RedisStore::new(redis, Arc::new(SystemClock)).start();
        first.extend(secs(60)).await.unwrap();
        let learned = async {
            while second.known().is_zero() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(1), learned)
            .await
            .expect("the other replica learns the pause within 1 s");
    }

    #[tokio::test]
    async fn a_pause_redis_lost_is_written_back_by_the_replicas_that_know_it() {
        let clock = Arc::new(FakeClock::default());
        let store = RedisStore::new(for_tests(), clock.clone()).on_clock();
        store.extend(secs(60)).await.unwrap();
        let deleted: i64 = store
            .redis
            .query("pause", ::redis::cmd("DEL").arg(&store.key))
            .await
            .unwrap();
        assert_eq!(deleted, 1);
        clock.advance(secs(10));
        assert_eq!(store.sync().await.unwrap(), secs(50));
        let [other] = [RedisStore::new(Arc::clone(&store.redis), clock.clone()).on_clock()];
        assert_eq!(other.remaining().await.unwrap(), secs(50), "back in Redis");
    }

    #[tokio::test]
    async fn a_refresh_never_stretches_a_pause() {
        let clock = Arc::new(FakeClock::default());
        let redis = for_tests();
        let first = RedisStore::new(Arc::clone(&redis), clock.clone()).on_clock();
        let second = RedisStore::new(redis, clock.clone()).on_clock();
        first.extend(secs(60)).await.unwrap();
        // This replica thinks the pause ends a little later than Redis does.
        second.learn(Duration::from_millis(60_900), false);
        assert_eq!(second.sync().await.unwrap(), Duration::from_millis(60_900));
        assert_eq!(
            first.sync().await.unwrap(),
            secs(60),
            "within the margin: not written back"
        );
    }

    #[tokio::test]
    async fn a_replica_that_cannot_reach_redis_knows_its_own_pause_and_refuses_to_guess() {
        let settings = crate::config::StoreSettings {
            backend: crate::config::StoreBackend::Redis,
            redis_url: "redis+unix:///nonexistent/redis.sock"
                .to_owned()
                .try_into()
                .unwrap(),
            key_prefix: "unreachable:".to_owned(),
            timeout: Duration::from_millis(200),
        };
        let health = crate::store::redis::Health {
            up: prometheus::IntGauge::new("up", "up").unwrap(),
            errors: prometheus::IntCounterVec::new(
                prometheus::Opts::new("errors", "errors"),
                &["operation"],
            )
            .unwrap(),
        };
        let redis = Redis::open(&settings, health).unwrap();
        let clock = Arc::new(FakeClock::default());
        let store = RedisStore::new(redis, clock.clone()).on_clock();
        let refused = store.remaining().await.unwrap_err();
        assert_eq!(refused.operation, "pause");
        assert!(store.extend(secs(30)).await.is_err());
        assert_eq!(store.known(), secs(30), "the MPC's answer is obeyed here");
        assert_eq!(store.remaining().await.unwrap(), secs(30));
        clock.advance(secs(30));
        assert!(
            store.remaining().await.is_err(),
            "no pause known here, none read from Redis: refuses to guess"
        );
    }
}
