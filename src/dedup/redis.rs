//! Remembered outcomes and claims in the Redis that replicas share, with
//! this process's memory as a first level.
//!
//! One hash per label moves `claimed` → `calling` → `outcome`. A claim
//! carries a random fencing token, checked in Redis before the MPC is
//! called; a claim that lapsed or was taken over never calls. `claimed`
//! lapses by itself if its holder vanishes before calling (nothing was
//! sent); `calling` is held for `dedup.uncertain_ttl` from the moment the
//! call began, and a call older than `call_deadline` is answered as
//! uncertain: its holder died mid-call and the MPC may have sent the email.
//!
//! Waiters at other replicas are woken by a message on the events channel
//! (a hint) and poll the label meanwhile, so a lost message delays them by
//! one poll at most. Outcomes are kept in this process's memory (moka) and
//! checked against Redis at most every [`REVALIDATE`], so a forget at any
//! replica is honoured everywhere within a second, at once when its message
//! arrives.
//!
//! A marker key tells that Redis lost its data (restarted empty, flushed):
//! a replica that finds it gone writes it again, refuses new claims for
//! [`RECOVERY`], and every replica writes back what it remembers, so that a
//! label any live replica remembers is not sent again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use ::redis::Script;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::StreamExt;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::persist::Entry as Stored;
use super::store::{Claim, ClaimId, DedupStore, Settled, Waiter};
use crate::clock::{Clock, since_epoch};
use crate::domain::label::Label;
use crate::domain::mpc_reply::{RetryAfter, Throttle, UpstreamFailure};
use crate::domain::outcome::{MpcAnswer, Outcome, Remembered, Uncertainty};
use crate::store::redis::{Redis, script};
use crate::store::{StoreError, StoreFuture};

/// Longest a remembered outcome is answered from memory without asking Redis.
pub const REVALIDATE: Duration = Duration::from_millis(500);

/// How often a waiter looks at the label it waits for, messages aside.
const POLL: Duration = Duration::from_millis(100);

/// How often the marker is checked (and unwritten outcomes written).
const WATCH: Duration = Duration::from_secs(1);

/// After Redis lost its data, how long new claims are refused so that every
/// live replica (each checking every [`WATCH`]) has written back first.
pub const RECOVERY: Duration = Duration::from_secs(3);

/// How long the failure of a call that certainly sent nothing is kept for
/// the waiters at other replicas.
const FAILURE_TTL: Duration = Duration::from_secs(10);

/// Remembered, wait, or lead. KEYS: the label, the marker. ARGV: a new
/// token, now (ms, gateway clock), how long a claim not yet calling lives (ms).
const CLAIM: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token', 'outcome', 'expires', 'since', 'user', 'until')
local state = record[1]
if state == 'outcome' and tonumber(record[4]) > tonumber(ARGV[2]) then
  return {'outcome', record[3]}
end
if state == 'claimed' or state == 'calling' then
  return {'wait', record[2], state, record[5] or '', record[6] or '', record[7] or ''}
end
local ready = redis.call('HGET', KEYS[2], 'ready_at')
if not ready then return {'lost'} end
local time = redis.call('TIME')
if tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) < tonumber(ready) then
  return {'recovering'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'claimed', 'token', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'lead'}
";

/// The claim starts calling, if it is still the label's. KEYS: the label.
/// ARGV: token, since (ms), until (ms), user, lifetime (ms).
const BEGIN_CALL: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
if record[1] ~= 'claimed' or record[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'calling', 'since', ARGV[2], 'until', ARGV[3], 'user', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Ends a claim with its outcome (`outcome`) or a failure that sent nothing
/// (`failure`), and tells the other replicas. KEYS: the label, the failure
/// key. ARGV: token, kind, payload, expires (ms), lifetime (ms), channel,
/// message.
const SETTLE: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
local ours = record[2] == ARGV[1]
if ARGV[2] == 'outcome' then
  if ours or not record[1] then
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'state', 'outcome', 'outcome', ARGV[3], 'expires', ARGV[4])
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
  end
else
  if ours then redis.call('DEL', KEYS[1]) end
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
";

/// Ends a claim given up before calling. KEYS: the label. ARGV: token,
/// channel, message.
const RELEASE: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
if record[1] == 'claimed' and record[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
";

/// Forgets an outcome, or a call whose holder was lost (its `since` older
/// than the deadline), and tells the other replicas. KEYS: the label. ARGV:
/// channel, message, now (ms), the deadline (ms). Returns what was forgotten.
const FORGET: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'outcome', 'since', 'user', 'until')
redis.call('PUBLISH', ARGV[1], ARGV[2])
if record[1] == 'outcome' then
  redis.call('DEL', KEYS[1])
  return {'outcome', record[2]}
end
if record[1] == 'calling' and tonumber(record[3]) + tonumber(ARGV[4]) < tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return {'lost', record[3], record[4], record[5]}
end
return {}
";

/// What a label holds, and the failure of the claim `ARGV[1]` if one was
/// kept. KEYS: the label, the failure key.
const PEEK: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token', 'outcome', 'expires', 'since', 'user', 'until')
return {record[1] or '', record[2] or '', record[3] or '', record[4] or '', record[5] or '',
        record[6] or '', record[7] or '', redis.call('GET', KEYS[2]) or ''}
";

/// The marker's epoch, written anew (ready for claims after ARGV[2] ms) when
/// Redis lost it. KEYS: the marker. ARGV: a new epoch, the recovery (ms).
const MARKER: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch then return epoch end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'ready_at', string.format('%d', now + tonumber(ARGV[2])))
return ARGV[1]
";

/// Writes records back unless their key holds something else. KEYS: the
/// labels. ARGV, three per key: lifetime (ms), the fields as a JSON
/// object, and a token whose claim may be overwritten (or '').
const WRITE_BACK: &str = r"
local written = 0
for i, key in ipairs(KEYS) do
  local token = ARGV[3 * i]
  local held = redis.call('HGET', key, 'token')
  local state = redis.call('HGET', key, 'state')
  if not state or (token ~= '' and held == token) then
    redis.call('DEL', key)
    for field, value in pairs(cjson.decode(ARGV[3 * i - 1])) do
      redis.call('HSET', key, field, value)
    end
    redis.call('PEXPIRE', key, ARGV[3 * i - 2])
    written = written + 1
  end
end
return written
";

/// Why a claim is refused when the marker is gone.
const LOST: &str = "the store has lost its data (its marker is gone)";

/// Why a claim is refused while replicas write back.
const RECOVERING: &str = "the store lost its data: new claims wait while the replicas write back";

/// How many records one write-back script run carries.
const WRITE_BACK_BATCH: usize = 500;

/// An outcome held here, and when Redis last confirmed it.
#[derive(Clone)]
struct Cached {
    remembered: Remembered,
    checked: Instant,
}

/// A label this replica leads the call for, or waits on at another replica.
struct Call {
    token: u64,
    sender: watch::Sender<Option<Settled>>,
    role: Role,
}

enum Role {
    /// This replica holds the claim; once calling, since when and for whom.
    Leading {
        hold_for: Duration,
        calling: Option<(SystemTime, Arc<str>)>,
    },
    /// Another replica holds it; a message wakes the poller early.
    Watching { wake: Arc<Notify> },
}

/// A failure that certainly sent nothing, as kept for other replicas.
#[derive(Serialize, Deserialize)]
#[serde(tag = "failure", rename_all = "snake_case")]
enum FailureRecord {
    ServerError {
        upstream: MpcAnswer,
    },
    NotRead {
        upstream: MpcAnswer,
    },
    /// The MPC asked to be left alone; `wait_ms` is what the gateway's
    /// pause had left when the call settled: a duration, not a time, so
    /// that a replica whose clock differs reads it right.
    Throttled {
        upstream: MpcAnswer,
        wait_ms: u64,
    },
    NotConnected {
        reason: String,
    },
}

impl FailureRecord {
    fn of(failure: &UpstreamFailure, now: SystemTime) -> Self {
        match failure {
            UpstreamFailure::ServerError(upstream) => Self::ServerError {
                upstream: upstream.clone(),
            },
            UpstreamFailure::NotRead(upstream) => Self::NotRead {
                upstream: upstream.clone(),
            },
            UpstreamFailure::Throttled(throttle) => Self::Throttled {
                upstream: throttle.answer.clone(),
                wait_ms: throttle
                    .retry_after
                    .map_or(0, |pause| pause.wait_from(now).as_millis() as u64),
            },
            other => Self::NotConnected {
                reason: other.to_string(),
            },
        }
    }

    fn into_failure(self) -> UpstreamFailure {
        match self {
            Self::ServerError { upstream } => UpstreamFailure::ServerError(upstream),
            Self::NotRead { upstream } => UpstreamFailure::NotRead(upstream),
            Self::Throttled { upstream, wait_ms } => UpstreamFailure::Throttled(Throttle {
                answer: upstream,
                retry_after: Some(RetryAfter::Delay(Duration::from_millis(wait_ms))),
            }),
            Self::NotConnected { reason } => UpstreamFailure::NotConnected(reason),
        }
    }
}

/// What a label's hash held at one look.
enum Held {
    Nothing,
    Outcome(Remembered),
    Claim {
        token: u64,
        /// Since when the call is under way, for whom, held until when.
        calling: Option<(SystemTime, Arc<str>, SystemTime)>,
    },
}

struct Scripts {
    claim: Script,
    begin_call: Script,
    settle: Script,
    release: Script,
    forget: Script,
    peek: Script,
    marker: Script,
    write_back: Script,
}

/// Outcomes and claims in the shared Redis, outcomes also in memory.
pub struct RedisStore {
    /// Itself, for the pollers it starts.
    me: Weak<RedisStore>,
    /// Tells this replica's messages on the events channel from the others'.
    origin: u64,
    redis: Arc<Redis>,
    clock: Arc<dyn Clock>,
    call_deadline: Duration,
    cache: Cache<Label, Cached>,
    calls: DashMap<Label, Call>,
    /// Claims given up here whose release is still on its way to Redis.
    releasing: Arc<DashMap<Label, u64>>,
    /// Outcomes whose write to Redis failed, written by the watch job.
    unsynced: Mutex<HashMap<Label, (Remembered, u64)>>,
    changes: AtomicU64,
    scripts: Scripts,
    marker: String,
    channel: String,
    /// The marker epoch last seen; a new one means Redis lost its data.
    epoch: Mutex<Option<String>>,
}

impl RedisStore {
    /// A store on `redis` keeping at most `max_entries` outcomes in memory,
    /// none past `longest`; a call under way longer than `call_deadline`
    /// has lost its holder. Starts the jobs that follow the other replicas.
    pub fn start(
        redis: Arc<Redis>,
        clock: Arc<dyn Clock>,
        max_entries: u64,
        longest: Duration,
        call_deadline: Duration,
    ) -> Arc<Self> {
        let store = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            origin: new_token(),
            marker: redis.key("marker"),
            channel: redis.key("events"),
            redis,
            clock,
            call_deadline,
            cache: Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(longest)
                .build(),
            calls: DashMap::new(),
            releasing: Arc::new(DashMap::new()),
            unsynced: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            scripts: Scripts {
                claim: script(CLAIM),
                begin_call: script(BEGIN_CALL),
                settle: script(SETTLE),
                release: script(RELEASE),
                forget: script(FORGET),
                peek: script(PEEK),
                marker: script(MARKER),
                write_back: script(WRITE_BACK),
            },
            epoch: Mutex::new(None),
        });
        tokio::spawn(follow_events(Arc::downgrade(&store)));
        tokio::spawn(watch_marker(Arc::downgrade(&store)));
        store
    }

    fn label_key(&self, label: &Label) -> String {
        self.redis.key(&format!("label:{}", label.as_str()))
    }

    fn failure_key(&self, label: &Label, token: u64) -> String {
        self.redis
            .key(&format!("failed:{}:{token}", label.as_str()))
    }

    fn now(&self) -> SystemTime {
        self.clock.system_time()
    }

    /// The outcome held here, if it is current; `fresh` when Redis confirmed
    /// it lately.
    fn cached(&self, label: &Label) -> Option<(Remembered, bool)> {
        let cached = self.cache.get(label)?;
        if cached.remembered.remaining(self.now()).is_zero() {
            return None;
        }
        Some((cached.remembered, cached.checked.elapsed() < REVALIDATE))
    }

    fn keep(&self, label: &Label, remembered: &Remembered) {
        if remembered.remaining(self.now()).is_zero() {
            return;
        }
        self.cache.insert(
            label.clone(),
            Cached {
                remembered: remembered.clone(),
                checked: Instant::now(),
            },
        );
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_cached(&self, label: &Label) -> Option<Remembered> {
        let dropped = self.cache.remove(label).map(|cached| cached.remembered);
        if dropped.is_some() {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        dropped
    }

    /// The answer for a call whose holder died mid-call: the MPC may have
    /// sent the email, so the label is held as uncertain until `until`.
    fn lost_call(since: SystemTime, user: Arc<str>, until: SystemTime) -> Remembered {
        let reason = Uncertainty::Timeout;
        Remembered::new(Outcome::Uncertain { reason }, since, until, user)
    }

    fn is_lost(&self, since: SystemTime) -> bool {
        self.now()
            .duration_since(since)
            .is_ok_and(|running| running > self.call_deadline)
    }

    async fn claim_in_redis(&self, label: &Label, hold_for: Duration) -> Result<Claim, StoreError> {
        let token = new_token();
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(self.label_key(label))
            .key(&self.marker)
            .arg(token.to_string())
            .arg(millis(self.now()))
            .arg(self.call_deadline.as_millis() as u64);
        let reply: Vec<String> = self.redis.run("claim", &invocation).await?;
        let refused = |reason: &str| StoreError {
            operation: "claim",
            reason: reason.to_owned(),
        };
        match reply.first().map(String::as_str) {
            Some("outcome") => {
                let remembered = parse_outcome(reply.get(1).map_or("", String::as_str))?;
                self.keep(label, &remembered);
                Ok(Claim::Remembered(remembered))
            }
            Some("wait") => {
                let held = parse_claim(&reply[1..])?;
                match held {
                    Held::Claim {
                        calling: Some((since, user, until)),
                        ..
                    } if self.is_lost(since) => {
                        Ok(Claim::Remembered(Self::lost_call(since, user, until)))
                    }
                    Held::Claim { token, .. } => Ok(self.watch(label, token)),
                    _ => Err(refused("unreadable claim")),
                }
            }
            Some("lead") => Ok(self.lead(label, token, hold_for)),
            Some("lost") => Err(refused(LOST)),
            Some("recovering") => Err(refused(RECOVERING)),
            _ => Err(refused("unexpected answer to a claim")),
        }
    }

    /// Holds the claim `token` here; a local claim may have come first.
    fn lead(&self, label: &Label, token: u64, hold_for: Duration) -> Claim {
        match self.calls.entry(label.clone()) {
            Entry::Occupied(call) => {
                // Another request here claimed meanwhile: ours is not the label's.
                let waiter = Waiter::new(call.get().sender.subscribe());
                self.spawn_release(label.clone(), token);
                Claim::Wait(waiter)
            }
            Entry::Vacant(slot) => {
                let (sender, _) = watch::channel(None);
                slot.insert(Call {
                    token,
                    sender,
                    role: Role::Leading {
                        hold_for,
                        calling: None,
                    },
                });
                Claim::Lead(ClaimId::new(label.clone(), token))
            }
        }
    }

    /// Waits on the claim `token` of another replica, polling one label
    /// once for every waiter here.
    fn watch(&self, label: &Label, token: u64) -> Claim {
        match self.calls.entry(label.clone()) {
            Entry::Occupied(call) => Claim::Wait(Waiter::new(call.get().sender.subscribe())),
            Entry::Vacant(slot) => {
                let (sender, receiver) = watch::channel(None);
                let wake = Arc::new(Notify::new());
                slot.insert(Call {
                    token,
                    sender,
                    role: Role::Watching {
                        wake: Arc::clone(&wake),
                    },
                });
                if let Some(store) = self.me.upgrade() {
                    tokio::spawn(store.poll(label.clone(), token, wake));
                }
                Claim::Wait(Waiter::new(receiver))
            }
        }
    }

    /// Ends the local side of a call: waiters here get `settled`, or are
    /// told to claim again when it is `None`.
    fn end_call(&self, label: &Label, token: u64, settled: Option<Settled>) {
        if let Some((_, call)) = self.calls.remove_if(label, |_, call| call.token == token)
            && let Some(settled) = settled
        {
            call.sender.send_replace(Some(settled));
        }
    }

    fn release_invocation(&self, label: &Label, token: u64) -> ::redis::ScriptInvocation<'_> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.label_key(label))
            .arg(token.to_string())
            .arg(&self.channel)
            .arg(self.event('s', label));
        invocation
    }

    /// Releases the claim `token` in Redis in the background; a claim here
    /// for the same label waits for it (see [`RedisStore::finish_release`]).
    fn spawn_release(&self, label: Label, token: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.releasing.insert(label.clone(), token);
        let Some(store) = self.me.upgrade() else {
            return;
        };
        runtime.spawn(async move { store.finish_release(&label).await });
    }

    /// Ends in Redis a claim given up here, if one is on its way; a
    /// release that fails lapses by itself after the claim's lifetime.
    async fn finish_release(&self, label: &Label) {
        let Some(token) = self.releasing.get(label).map(|token| *token) else {
            return;
        };
        let invocation = self.release_invocation(label, token);
        let _ = self.redis.run::<i64>("release", &invocation).await;
        self.releasing.remove_if(label, |_, held| *held == token);
    }

    async fn peek(
        &self,
        label: &Label,
        token: u64,
    ) -> Result<(Held, Option<UpstreamFailure>), StoreError> {
        let mut invocation = self.scripts.peek.prepare_invoke();
        invocation
            .key(self.label_key(label))
            .key(self.failure_key(label, token));
        let reply: Vec<String> = self.redis.run("watch", &invocation).await?;
        let failure = reply
            .get(7)
            .filter(|text| !text.is_empty())
            .and_then(|text| serde_json::from_str::<FailureRecord>(text).ok())
            .map(FailureRecord::into_failure);
        let held = match reply.first().map(String::as_str) {
            Some("outcome") => {
                let remembered = parse_outcome(&reply[2])?;
                let expires = reply[3].parse::<u64>().unwrap_or(0);
                if expires > millis(self.now()) {
                    Held::Outcome(remembered)
                } else {
                    Held::Nothing
                }
            }
            Some("claimed" | "calling") => {
                let fields = [
                    reply[1].clone(),
                    reply[0].clone(),
                    reply[4].clone(),
                    reply[5].clone(),
                    reply[6].clone(),
                ];
                parse_claim(&fields)?
            }
            _ => Held::Nothing,
        };
        Ok((held, failure))
    }

    /// Follows the claim `token` on `label` held by another replica until
    /// it settles, is given up or its holder is lost.
    async fn poll(self: Arc<Self>, label: Label, token: u64, wake: Arc<Notify>) {
        let started = Instant::now();
        let give_up = self.call_deadline * 2 + POLL;
        loop {
            let _ = tokio::time::timeout(POLL, wake.notified()).await;
            let settled = match self.peek(&label, token).await {
                Ok((_, Some(failure))) => Some(Err(failure)),
                Ok((Held::Outcome(remembered), _)) => {
                    self.keep(&label, &remembered);
                    Some(Ok(remembered))
                }
                Ok((
                    Held::Claim {
                        token: held,
                        calling,
                    },
                    _,
                )) if held == token => match calling {
                    Some((since, user, until)) if self.is_lost(since) => {
                        Some(Ok(Self::lost_call(since, user, until)))
                    }
                    _ if started.elapsed() > give_up => None,
                    _ => continue,
                },
                // Given up before calling, or taken over: claim again.
                Ok(_) => None,
                Err(_) if started.elapsed() > give_up => None,
                Err(_) => continue,
            };
            self.end_call(&label, token, settled);
            return;
        }
    }

    /// Writes back every outcome remembered here and every call under way
    /// here, after Redis lost its data.
    async fn write_back(&self) -> Result<u64, StoreError> {
        let now = self.now();
        let mut records: Vec<(String, u64, String, String)> = self
            .cache
            .iter()
            .filter_map(|(label, cached)| {
                let remaining = cached.remembered.remaining(now);
                (!remaining.is_zero()).then(|| {
                    (
                        self.label_key(&label),
                        remaining.as_millis() as u64,
                        outcome_fields(&label, &cached.remembered),
                        String::new(),
                    )
                })
            })
            .collect();
        for call in self.calls.iter() {
            if let (
                Role::Leading {
                    hold_for,
                    calling: Some((since, user)),
                },
                token,
            ) = (&call.role, call.token)
            {
                let until = *since + *hold_for;
                let remaining = until.duration_since(now).unwrap_or_default();
                if remaining.is_zero() {
                    continue;
                }
                let fields = serde_json::json!({
                    "state": "calling",
                    "token": token.to_string(),
                    "since": millis(*since).to_string(),
                    "until": millis(until).to_string(),
                    "user": &**user,
                });
                records.push((
                    self.label_key(call.key()),
                    remaining.as_millis() as u64,
                    fields.to_string(),
                    String::new(),
                ));
            }
        }
        self.write_records(records).await
    }

    /// Writes the outcomes whose write failed before.
    async fn write_unsynced(&self) -> Result<u64, StoreError> {
        let pending: Vec<(Label, (Remembered, u64))> = {
            let unsynced = self.unsynced.lock().expect("unsynced lock");
            if unsynced.is_empty() {
                return Ok(0);
            }
            unsynced
                .iter()
                .map(|(label, entry)| (label.clone(), entry.clone()))
                .collect()
        };
        let now = self.now();
        let records = pending
            .iter()
            .filter(|(_, (remembered, _))| !remembered.remaining(now).is_zero())
            .map(|(label, (remembered, token))| {
                (
                    self.label_key(label),
                    remembered.remaining(now).as_millis() as u64,
                    outcome_fields(label, remembered),
                    token.to_string(),
                )
            })
            .collect();
        let written = self.write_records(records).await?;
        let mut unsynced = self.unsynced.lock().expect("unsynced lock");
        for (label, _) in pending {
            unsynced.remove(&label);
        }
        Ok(written)
    }

    async fn write_records(
        &self,
        records: Vec<(String, u64, String, String)>,
    ) -> Result<u64, StoreError> {
        let mut written = 0;
        for batch in records.chunks(WRITE_BACK_BATCH) {
            let mut invocation = self.scripts.write_back.prepare_invoke();
            for (key, ttl, fields, token) in batch {
                invocation.key(key).arg(ttl.max(&1)).arg(fields).arg(token);
            }
            written += self.redis.run::<u64>("marker", &invocation).await?;
        }
        Ok(written)
    }

    /// Checks the marker; after a loss, writes back what is remembered here.
    async fn check(&self) {
        let was = self.epoch.lock().expect("epoch lock").clone();
        // A replica that never saw the marker cannot tell a first start from
        // a loss; one that saw it holds claims off while others write back.
        let recovery = if was.is_some() {
            RECOVERY
        } else {
            Duration::ZERO
        };
        let mut invocation = self.scripts.marker.prepare_invoke();
        invocation
            .key(&self.marker)
            .arg(new_token().to_string())
            .arg(recovery.as_millis() as u64);
        let Ok(epoch) = self.redis.run::<String>("marker", &invocation).await else {
            return;
        };
        if was.as_ref() != Some(&epoch) {
            if was.is_some() {
                match self.write_back().await {
                    Ok(written) => tracing::warn!(
                        written_back = written,
                        "the shared store lost its data (restarted empty or flushed): \
                         wrote back the outcomes this replica remembers"
                    ),
                    Err(error) => {
                        tracing::error!(%error, "cannot write back remembered outcomes");
                        return;
                    }
                }
            }
            *self.epoch.lock().expect("epoch lock") = Some(epoch);
        }
        if let Err(error) = self.write_unsynced().await {
            tracing::debug!(%error, "outcomes not yet written to the shared store wait");
        }
    }

    /// Applies one message of the events channel.
    /// A message for the events channel: `<kind>:<origin>:<label>`, `s` for
    /// a claim that ended, `f` for a forget.
    fn event(&self, kind: char, label: &Label) -> String {
        format!("{kind}:{}:{}", self.origin, label.as_str())
    }

    /// Applies one message of the events channel; this replica's own need
    /// nothing (it acted on them already).
    fn on_event(&self, message: &str) {
        let mut parts = message.splitn(3, ':');
        let (Some(kind), Some(origin), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if origin.parse() == Ok(self.origin) {
            return;
        }
        let Ok(label) = Label::parse(text) else {
            return;
        };
        match kind {
            "f" => {
                self.drop_cached(&label);
            }
            _ => {
                if let Some(call) = self.calls.get(&label)
                    && let Role::Watching { wake } = &call.role
                {
                    wake.notify_one();
                }
            }
        }
    }
}

/// Follows the events channel, reconnecting when it drops; every watcher is
/// woken after a reconnect, since messages may have been missed.
async fn follow_events(store: Weak<RedisStore>) {
    loop {
        let Some(this) = store.upgrade() else { return };
        let subscribed = match this.redis.subscriber().await {
            Ok(mut subscriber) => match subscriber.subscribe(&this.channel).await {
                Ok(()) => Some(subscriber),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some(subscriber) = subscribed else {
            drop(this);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for call in this.calls.iter() {
            if let Role::Watching { wake } = &call.role {
                wake.notify_one();
            }
        }
        // Forgets may have been missed: what is held here is checked again.
        for (label, mut cached) in this.cache.iter() {
            cached.checked = Instant::now() - REVALIDATE;
            this.cache.insert(Label::clone(&label), cached);
        }
        drop(this);
        let mut messages = subscriber.into_on_message();
        while let Some(message) = messages.next().await {
            let Some(this) = store.upgrade() else { return };
            if let Ok(text) = message.get_payload::<String>() {
                this.on_event(&text);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the marker every [`WATCH`] (a claim that finds it gone checks at once).
async fn watch_marker(store: Weak<RedisStore>) {
    loop {
        let Some(this) = store.upgrade() else { return };
        this.check().await;
        drop(this);
        tokio::time::sleep(WATCH).await;
    }
}

impl DedupStore for RedisStore {
    fn get<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
        Box::pin(async move {
            if let Some((remembered, true)) = self.cached(label) {
                return Ok(Some(remembered));
            }
            match self.peek(label, 0).await {
                Ok((Held::Outcome(remembered), _)) => {
                    self.keep(label, &remembered);
                    Ok(Some(remembered))
                }
                Ok(_) => {
                    self.drop_cached(label);
                    Ok(None)
                }
                Err(error) => match self.cached(label) {
                    Some((remembered, _)) => Ok(Some(remembered)),
                    None => Err(StoreError {
                        operation: "get",
                        ..error
                    }),
                },
            }
        })
    }

    fn claim<'a>(&'a self, label: &'a Label, hold_for: Duration) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let cached = self.cached(label);
            if let Some((remembered, true)) = &cached {
                return Ok(Claim::Remembered(remembered.clone()));
            }
            if let Some(call) = self.calls.get(label) {
                return Ok(Claim::Wait(Waiter::new(call.sender.subscribe())));
            }
            self.finish_release(label).await;
            let mut claimed = self.claim_in_redis(label, hold_for).await;
            if matches!(&claimed, Err(error) if error.reason == LOST) {
                // Write the marker (after a loss, with claims held off while
                // the replicas write back), then claim again.
                self.check().await;
                claimed = self.claim_in_redis(label, hold_for).await;
            }
            match claimed {
                Ok(Claim::Lead(claim)) if cached.is_some() => {
                    // Forgotten at another replica meanwhile.
                    self.drop_cached(label);
                    Ok(Claim::Lead(claim))
                }
                Ok(claim) => Ok(claim),
                // What is held here may still be answered.
                Err(_) if cached.is_some() => Ok(Claim::Remembered(cached.expect("checked").0)),
                Err(error) => Err(error),
            }
        })
    }

    fn begin_call<'a>(&'a self, claim: &'a ClaimId, user: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let hold_for = match self.calls.get(claim.label()).as_deref() {
                Some(Call {
                    token,
                    role: Role::Leading { hold_for, .. },
                    ..
                }) if *token == claim.token() => *hold_for,
                _ => {
                    return Err(StoreError {
                        operation: "begin_call",
                        reason: "the claim is no longer held here".into(),
                    });
                }
            };
            let hold_for = hold_for.max(self.call_deadline);
            let since = self.now();
            let until = since + hold_for;
            let mut invocation = self.scripts.begin_call.prepare_invoke();
            invocation
                .key(self.label_key(claim.label()))
                .arg(claim.token().to_string())
                .arg(millis(since))
                .arg(millis(until))
                .arg(user)
                .arg(hold_for.as_millis() as u64);
            let begun: i64 = self.redis.run("begin_call", &invocation).await?;
            if begun != 1 {
                return Err(StoreError {
                    operation: "begin_call",
                    reason: "the claim lapsed or was taken over before the call".into(),
                });
            }
            if let Some(mut call) = self.calls.get_mut(claim.label())
                && call.token == claim.token()
                && let Role::Leading { calling, .. } = &mut call.role
            {
                *calling = Some((since, user.into()));
            }
            Ok(())
        })
    }

    fn settle<'a>(&'a self, claim: ClaimId, settled: Settled) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let label = claim.label().clone();
            let token = claim.token();
            if let Ok(remembered) = &settled {
                self.keep(&label, remembered);
            }
            self.end_call(&label, token, Some(settled.clone()));
            let mut invocation = self.scripts.settle.prepare_invoke();
            invocation
                .key(self.label_key(&label))
                .key(self.failure_key(&label, token))
                .arg(token.to_string());
            match &settled {
                Ok(remembered) => invocation
                    .arg("outcome")
                    .arg(outcome_json(&label, remembered))
                    .arg(millis(remembered.expires_at()))
                    .arg((remembered.remaining(self.now()).as_millis() as u64).max(1)),
                Err(failure) => invocation
                    .arg("failure")
                    .arg(
                        serde_json::to_string(&FailureRecord::of(failure, self.now()))
                            .unwrap_or_default(),
                    )
                    .arg(0)
                    .arg(FAILURE_TTL.as_millis() as u64),
            };
            invocation.arg(&self.channel).arg(self.event('s', &label));
            let written = self.redis.run::<i64>("settle", &invocation).await;
            if let (Err(_), Ok(remembered)) = (&written, settled) {
                // Kept here and written when the store answers again; the
                // claim in Redis holds the label meanwhile.
                self.unsynced
                    .lock()
                    .expect("unsynced lock")
                    .insert(label, (remembered, token));
            }
            written.map(drop)
        })
    }

    fn release(&self, claim: ClaimId) {
        self.end_call(claim.label(), claim.token(), None);
        self.spawn_release(claim.label().clone(), claim.token());
    }

    fn forget<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
        Box::pin(async move {
            let mut invocation = self.scripts.forget.prepare_invoke();
            invocation
                .key(self.label_key(label))
                .arg(&self.channel)
                .arg(self.event('f', label));
            invocation
                .arg(millis(self.now()))
                .arg(self.call_deadline.as_millis() as u64);
            let forgotten: Vec<String> = self.redis.run("forget", &invocation).await?;
            let here = self.drop_cached(label);
            self.unsynced.lock().expect("unsynced lock").remove(label);
            match forgotten.first().map(String::as_str) {
                Some("outcome") => parse_outcome(&forgotten[1]).map(Some),
                Some("lost") => {
                    // The operator checked the mailbox: the label may be sent again.
                    let at = |index: usize| forgotten.get(index).and_then(|at| from_millis(at));
                    match (at(1), forgotten.get(2), at(3)) {
                        (Some(since), Some(user), Some(until)) => {
                            Ok(Some(Self::lost_call(since, user.as_str().into(), until)))
                        }
                        _ => Ok(here),
                    }
                }
                _ => Ok(here),
            }
        })
    }

    fn restore(&self, label: Label, remembered: Remembered) -> bool {
        if self.cached(&label).is_some() || remembered.remaining(self.now()).is_zero() {
            return false;
        }
        self.keep(&label, &remembered);
        self.unsynced
            .lock()
            .expect("unsynced lock")
            .insert(label, (remembered, 0));
        true
    }

    fn snapshot(&self) -> Vec<(Label, Remembered)> {
        let now = self.now();
        self.cache
            .iter()
            .filter(|(_, cached)| !cached.remembered.remaining(now).is_zero())
            .map(|(label, cached)| (Label::clone(&label), cached.remembered))
            .collect()
    }

    fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    fn in_flight(&self) -> usize {
        self.calls
            .iter()
            .filter(|call| matches!(call.role, Role::Leading { .. }))
            .count()
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

fn new_token() -> u64 {
    rand::random::<u64>() >> 1
}

fn millis(at: SystemTime) -> u64 {
    since_epoch(at).as_millis() as u64
}

fn from_millis(text: &str) -> Option<SystemTime> {
    let millis = text.parse::<u64>().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis))
}

fn outcome_json(label: &Label, remembered: &Remembered) -> String {
    serde_json::to_string(&Stored::new(label, remembered)).expect("an entry serialises")
}

fn outcome_fields(label: &Label, remembered: &Remembered) -> String {
    serde_json::json!({
        "state": "outcome",
        "outcome": outcome_json(label, remembered),
        "expires": millis(remembered.expires_at()).to_string(),
    })
    .to_string()
}

fn parse_outcome(text: &str) -> Result<Remembered, StoreError> {
    let unreadable = |reason: String| StoreError {
        operation: "get",
        reason: format!("unreadable outcome in the store: {reason}"),
    };
    let stored: Stored = serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
    stored
        .into_remembered()
        .map(|(_, remembered)| remembered)
        .map_err(unreadable)
}

/// A claim from its fields: token, state, since, user, until.
fn parse_claim(fields: &[String]) -> Result<Held, StoreError> {
    let unreadable = || StoreError {
        operation: "claim",
        reason: "unreadable claim in the store".into(),
    };
    let token = fields
        .first()
        .and_then(|token| token.parse().ok())
        .ok_or_else(unreadable)?;
    let calling = match fields.get(1).map(String::as_str) {
        Some("calling") => {
            let since = fields
                .get(2)
                .and_then(|t| from_millis(t))
                .ok_or_else(unreadable)?;
            let user: Arc<str> = fields.get(3).map_or("", String::as_str).into();
            let until = fields
                .get(4)
                .and_then(|t| from_millis(t))
                .ok_or_else(unreadable)?;
            Some((since, user, until))
        }
        _ => None,
    };
    Ok(Held::Claim { token, calling })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::store::redis::for_tests;

    #[tokio::test]
    async fn claims_wait_while_the_replicas_write_back_lost_data() {
        let clock = Arc::new(FakeClock::default());
        let redis = for_tests();
        let store = RedisStore::start(
            Arc::clone(&redis),
            clock,
            10,
            Duration::from_secs(3600),
            Duration::from_secs(5),
        );
        let label = Label::parse("A10cnQO").unwrap();
        let hold = Duration::from_secs(120);
        // The first claim writes the marker (a first start: no hold).
        let Ok(Claim::Lead(claim)) = store.claim(&label, hold).await else {
            panic!("expected to lead")
        };
        store.release(claim);
        // A marker written after a loss: claims wait until it is ready.
        let marker = redis.key("marker");
        let held: i64 = redis
            .query(
                "marker",
                ::redis::cmd("HSET")
                    .arg(&marker)
                    .arg("ready_at")
                    .arg(u64::MAX / 4),
            )
            .await
            .unwrap();
        assert_eq!(held, 0, "the field was there already");
        match store.claim(&Label::parse("A10cnQP").unwrap(), hold).await {
            Err(error) => assert_eq!(error.reason, RECOVERING),
            Ok(_) => panic!("a claim while the replicas write back"),
        }
    }

    #[test]
    fn failures_that_sent_nothing_reach_other_replicas_whole() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let answer = |status| MpcAnswer { status, body: None };
        let throttled = |retry_after| {
            UpstreamFailure::Throttled(Throttle {
                answer: answer(429),
                retry_after,
            })
        };
        let cases = [
            (
                UpstreamFailure::ServerError(answer(503)),
                UpstreamFailure::ServerError(answer(503)),
            ),
            (
                UpstreamFailure::NotRead(answer(408)),
                UpstreamFailure::NotRead(answer(408)),
            ),
            (
                throttled(Some(RetryAfter::At(now + Duration::from_millis(2_500)))),
                throttled(Some(RetryAfter::Delay(Duration::from_millis(2_500)))),
            ),
            (
                UpstreamFailure::NotConnected("refused".into()),
                UpstreamFailure::NotConnected("could not connect to the MPC: refused".into()),
            ),
        ];
        for (failure, read_back) in cases {
            let text = serde_json::to_string(&FailureRecord::of(&failure, now)).unwrap();
            let record: FailureRecord = serde_json::from_str(&text).unwrap();
            assert_eq!(record.into_failure(), read_back, "{text}");
        }
    }

    super::super::store::dedup_store_suite!(async {
        let clock = Arc::new(FakeClock::default());
        super::super::store::suite::Fixture {
            store: RedisStore::start(
                for_tests(),
                clock.clone(),
                1000,
                Duration::from_secs(3600),
                Duration::from_secs(5),
            ),
            clock,
        }
    });
}
