//! Limiter state in the shared Redis: one GCRA step per script run, on the
//! server's own clock (`TIME`), so that replicas stepping one key agree on
//! time; a key expires once its state equals a fresh key's.
//!
//! Lua numbers are doubles: times are whole microseconds of Unix time
//! (exact up to the year 2255), not the nanoseconds of [`super::gcra`].
//!
//! Charges and refunds always run in Redis. A peek (the RateLimit fields of
//! every answer) is worked out here from the key's state as the last step of
//! this replica saw it, while that is younger than [`PEEK_FRESH`], so that
//! an answer from a remembered outcome never waits on Redis; it may then lag
//! that long behind what other replicas charged.

use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use moka::sync::Cache;

use super::gcra::{Cost, Decision, Limit, gcra};
use super::store::RateStore;
use crate::clock::{Clock, SystemClock, nanos};
use crate::store::StoreFuture;
use crate::store::redis::{Redis, script};

/// One GCRA step, as [`super::gcra::gcra`] does it, with the key's TAT in
/// Redis. ARGV: interval and tolerance (µs), cost (`peek`, `charge`,
/// `refund`), and a fixed now (µs) or `""` for the server's clock. Returns
/// allowed (0/1), remaining, reset_after and retry_after (µs), and the
/// TAT kept (µs, 0 for none).
const STEP: &str = r"
local t = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = ARGV[3]
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local stored = tonumber(redis.call('GET', KEYS[1]))
local base = now
if stored and stored > now then base = stored end
local allowed = 1
local after = base
if cost == 'charge' then
  if base + t - now <= tolerance then after = base + t else allowed = 0 end
elseif cost == 'refund' then
  after = math.max(base - t, now)
elseif base + t - now > tolerance then
  allowed = 0
end
if (cost == 'charge' and allowed == 1) or (cost == 'refund' and stored) then
  if after > now then
    redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000))
  else
    redis.call('DEL', KEYS[1])
  end
end
local used = after - now
local remaining = math.floor(math.max(tolerance - used, 0) / t)
local retry = math.max(after + t - tolerance - now, 0)
local kept = 0
if after > now then kept = after end
return {allowed, remaining, used, retry, string.format('%d', kept)}
";

/// How long the state a step returned answers peeks here.
pub const PEEK_FRESH: Duration = Duration::from_millis(500);

/// Most keys whose last state is kept for peeks.
const PEEK_KEYS: u64 = 100_000;

/// Limiter state in the shared Redis under `<key_prefix><namespace>:<key>`.
pub struct RedisStore {
    redis: Arc<Redis>,
    namespace: Box<str>,
    step: Script,
    /// Tests only: a clock that stands in for the server's.
    clock: Option<Arc<dyn Clock>>,
    /// Each key's TAT (µs, 0 for none) as the last step here left it.
    seen: Cache<Box<str>, u64>,
}

impl RedisStore {
    /// Limits stored under `namespace` (one per kind of limit), stepped on
    /// the server's clock.
    pub fn new(redis: Arc<Redis>, namespace: &str) -> Self {
        Self {
            redis,
            namespace: format!("quota:{namespace}:").into(),
            step: script(STEP),
            clock: None,
            seen: Cache::builder()
                .max_capacity(PEEK_KEYS)
                .time_to_live(PEEK_FRESH)
                .build(),
        }
    }

    /// A peek worked out from the state the last step here saw, if it is recent.
    fn peek_here(&self, key: &str, limit: &Limit) -> Option<Decision> {
        let tat = self.seen.get(key)?;
        let now = match &self.clock {
            Some(clock) => clock.now(),
            None => SystemClock.now(),
        };
        // A TAT of 0 (none kept) is in the past: the same as a fresh key.
        let tat = tat.saturating_mul(1000);
        Some(gcra(Some(tat), nanos(now), limit, Cost::Peek).1)
    }

    /// The same store, stepped on `clock` instead of the server's (tests).
    pub fn on_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
}

impl RateStore for RedisStore {
    fn step<'a>(&'a self, key: &'a str, limit: &'a Limit, cost: Cost) -> StoreFuture<'a, Decision> {
        Box::pin(async move {
            if cost == Cost::Peek
                && let Some(decision) = self.peek_here(key, limit)
            {
                return Ok(decision);
            }
            let interval = (limit.interval_nanos() / 1000).max(1);
            let tolerance = interval.saturating_mul(u64::from(limit.burst()));
            let now = self
                .clock
                .as_ref()
                .map(|clock| clock.now().as_micros().to_string())
                .unwrap_or_default();
            let cost = match cost {
                Cost::Peek => "peek",
                Cost::Charge => "charge",
                Cost::Refund => "refund",
            };
            let mut invocation = self.step.prepare_invoke();
            invocation
                .key(self.redis.key(&format!("{}{key}", self.namespace)))
                .arg(interval)
                .arg(tolerance)
                .arg(cost)
                .arg(now);
            let (allowed, remaining, used, retry, kept): (u8, u32, u64, u64, u64) =
                self.redis.run("quota", &invocation).await?;
            self.seen.insert(key.into(), kept);
            Ok(Decision {
                allowed: allowed == 1,
                remaining,
                reset_after: Duration::from_micros(used),
                retry_after: Duration::from_micros(retry),
            })
        })
    }

    fn retain_recent(&self) -> usize {
        // Keys expire by themselves once back to full.
        0
    }

    fn tracked(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::store::redis::for_tests;

    super::super::store::rate_store_suite!(async {
        let clock = Arc::new(FakeClock::default());
        let redis = for_tests();
        super::super::store::suite::Fixture {
            upstream: Arc::new(
                RedisStore::new(Arc::clone(&redis), "upstream").on_clock(clock.clone()),
            ),
            budget: Arc::new(RedisStore::new(redis, "budget").on_clock(clock.clone())),
            clock,
        }
    });

    #[tokio::test]
    async fn a_peek_soon_after_a_step_here_does_not_ask_redis() {
        let redis = for_tests();
        let store = RedisStore::new(Arc::clone(&redis), "upstream");
        let limit = Limit::new(
            10.try_into().unwrap(),
            Duration::from_secs(3600),
            3.try_into().unwrap(),
        );
        store.step("carol", &limit, Cost::Charge).await.unwrap();
        // Gone from Redis: only a peek answered here still sees the charge.
        let key = redis.key("quota:upstream:carol");
        let deleted: i64 = redis
            .query("get", ::redis::cmd("DEL").arg(&key))
            .await
            .unwrap();
        assert_eq!(deleted, 1);
        let peek = store.step("carol", &limit, Cost::Peek).await.unwrap();
        assert_eq!(peek.remaining, 2, "the charge seen here");
        assert!(peek.allowed);
        let charged = store.step("carol", &limit, Cost::Charge).await.unwrap();
        assert_eq!(charged.remaining, 2, "a charge always asks Redis");
    }

    #[tokio::test]
    async fn keys_expire_in_redis_so_nothing_is_tracked_here() {
        let store = RedisStore::new(for_tests(), "upstream");
        let limit = Limit::per_minute(5.try_into().unwrap());
        store.step("dave", &limit, Cost::Charge).await.unwrap();
        assert_eq!(store.retain_recent(), 0);
        assert_eq!(store.tracked(), 0);
    }

    #[tokio::test]
    async fn scripts_flushed_from_the_server_are_loaded_again() {
        let store = RedisStore::new(for_tests(), "upstream");
        let limit = Limit::per_minute(1.try_into().unwrap());
        assert!(
            store
                .step("bob", &limit, Cost::Charge)
                .await
                .unwrap()
                .allowed
        );
        assert_eq!(
            crate::store::test_server::RedisServer::shared().cli(&["SCRIPT", "FLUSH"]),
            "OK"
        );
        let step = store.step("bob", &limit, Cost::Charge).await.unwrap();
        assert!(!step.allowed, "the state survived, the script came back");
    }

    #[tokio::test]
    async fn steps_on_the_servers_clock_and_keys_expire_when_back_to_full() {
        let redis = for_tests();
        let store = RedisStore::new(Arc::clone(&redis), "upstream");
        let limit = Limit::new(
            2.try_into().unwrap(),
            Duration::from_secs(2),
            2.try_into().unwrap(),
        );
        assert!(
            store
                .step("alice", &limit, Cost::Peek)
                .await
                .unwrap()
                .allowed
        );
        let key = redis.key("quota:upstream:alice");
        let exists = |key: String| {
            let redis = Arc::clone(&redis);
            async move {
                redis
                    .query::<bool>("get", ::redis::cmd("EXISTS").arg(key))
                    .await
                    .unwrap()
            }
        };
        assert!(!exists(key.clone()).await, "a peek stores nothing");
        for _ in 0..2 {
            assert!(
                store
                    .step("alice", &limit, Cost::Charge)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        let refused = store.step("alice", &limit, Cost::Charge).await.unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after <= Duration::from_secs(1));
        assert!(
            refused.retry_after > Duration::from_millis(500),
            "{refused:?}"
        );
        let ttl: i64 = redis
            .query("get", ::redis::cmd("PTTL").arg(&key))
            .await
            .unwrap();
        assert!(
            (1500..=2000).contains(&ttl),
            "expires once back to full: {ttl} ms"
        );
        store.step("alice", &limit, Cost::Refund).await.unwrap();
        store.step("alice", &limit, Cost::Refund).await.unwrap();
        assert!(!exists(key).await, "refunded to full: nothing left to keep");
    }
}
