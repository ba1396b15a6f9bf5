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
/// token, now (ms, gateway clock), how long a claim not yet calling lives
/// (ms), the marker epoch the replica knows ('' for none yet): a replica
/// that has not caught up with a loss may not lead (`stale`).
const CLAIM: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token', 'outcome', 'expires', 'since', 'user', 'until')
local state = record[1]
if state == 'outcome' and tonumber(record[4]) > tonumber(ARGV[2]) then
  return {'outcome', record[3]}
end
if state == 'claimed' or state == 'calling' then
  return {'wait', record[2], state, record[5] or '', record[6] or '', record[7] or ''}
end
local marker = redis.call('HMGET', KEYS[2], 'epoch', 'ready_at')
if not marker[2] then return {'lost'} end
if ARGV[4] ~= '' and marker[1] ~= ARGV[4] then return {'stale'} end
local time = redis.call('TIME')
if tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) < tonumber(marker[2]) then
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

/// Ends a claim given up before its MPC call began: `claimed`, or
/// `calling` when the reply to its `BEGIN_CALL` was lost (the MPC is called
/// only after that reply). KEYS: the label. ARGV: token, channel, message.
const RELEASE: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token')
if record[2] == ARGV[1] and (record[1] == 'claimed' or record[1] == 'calling') then
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

/// What a label holds, the failure of the claim the failure key names if
/// one was kept, and the marker's epoch (under which an absence is
/// knowledge, not a loss). KEYS: the label, the failure key, the marker.
const PEEK: &str = r"
local record = redis.call('HMGET', KEYS[1], 'state', 'token', 'outcome', 'expires', 'since', 'user', 'until')
return {record[1] or '', record[2] or '', record[3] or '', record[4] or '', record[5] or '',
        record[6] or '', record[7] or '', redis.call('GET', KEYS[2]) or '',
        redis.call('HGET', KEYS[3], 'epoch') or ''}
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

/// Why a claim is refused when this replica could not write back after a loss.
const BEHIND: &str = "the store lost its data and this replica has not written back yet";

/// How many records one write-back script run carries.
const WRITE_BACK_BATCH: usize = 500;

/// An outcome held here, and when Redis last confirmed it (gateway clock).
#[derive(Clone)]
struct Cached {
    remembered: Remembered,
    checked: Duration,
}

/// What this replica knows of a call under way: since when, for whom,
/// held until when.
type Calling = (SystemTime, Arc<str>, SystemTime);

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
    /// Another replica holds it; a message wakes the poller early. Once
    /// it is seen calling, this replica knows the call was made and writes
    /// it back after lost data, should its holder be gone.
    Watching {
        wake: Arc<Notify>,
        calling: Option<Calling>,
    },
}

/// A claim ended here whose end has not reached Redis yet (its reply was
/// lost, or it is on its way): retried until Redis takes it, so that the
/// label is not held for nothing.
#[derive(Clone)]
struct Ending {
    token: u64,
    /// The failure of a call that certainly sent nothing, as kept for
    /// waiters; `None` for a claim given up before its call began.
    failure: Option<String>,
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
        calling: Option<Calling>,
    },
}

/// One look at a label in Redis.
struct Peeked {
    held: Held,
    /// The failure kept for the claim whose failure key was read.
    failure: Option<UpstreamFailure>,
    /// Whether Redis holds the marker epoch this replica knows: only then
    /// is an absence knowledge (a forget, an expiry, a release), not a loss.
    same_epoch: bool,
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
    /// Claims ended here whose end is still on its way to Redis.
    ending: DashMap<Label, Ending>,
    /// Outcomes whose write to Redis failed, written by the watch job.
    unsynced: Mutex<HashMap<Label, (Remembered, u64)>>,
    changes: AtomicU64,
    scripts: Scripts,
    marker: String,
    channel: String,
    /// The marker epoch last seen; a new one means Redis lost its data.
    epoch: Mutex<Option<String>>,
    /// Wakes the marker job before its next round (a loss was noticed).
    recheck: Arc<Notify>,
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
        let store = Self::new(redis, clock, max_entries, longest, call_deadline);
        tokio::spawn(follow_events(Arc::downgrade(&store)));
        tokio::spawn(watch_marker(
            Arc::downgrade(&store),
            Arc::clone(&store.recheck),
        ));
        store
    }

    /// The store without the jobs that follow the other replicas.
    fn new(
        redis: Arc<Redis>,
        clock: Arc<dyn Clock>,
        max_entries: u64,
        longest: Duration,
        call_deadline: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
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
            ending: DashMap::new(),
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
            recheck: Arc::new(Notify::new()),
        })
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
        let fresh = self
            .clock
            .now()
            .checked_sub(cached.checked)
            .is_some_and(|age| age < REVALIDATE);
        Some((cached.remembered, fresh))
    }

    fn keep(&self, label: &Label, remembered: &Remembered) {
        if remembered.remaining(self.now()).is_zero() {
            return;
        }
        self.cache.insert(
            label.clone(),
            Cached {
                remembered: remembered.clone(),
                checked: self.clock.now(),
            },
        );
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Has the outcome held here for `label` checked against Redis at its
    /// next use (a message says the label changed, or some were missed).
    fn mark_stale(&self, label: &Label) {
        if let Some(mut cached) = self.cache.get(label) {
            cached.checked = Duration::ZERO;
            self.cache.insert(label.clone(), cached);
        }
    }

    /// Whether `epoch`, read from Redis, is the one this replica knows.
    fn is_known_epoch(&self, epoch: &str) -> bool {
        !epoch.is_empty() && self.epoch.lock().expect("epoch lock").as_deref() == Some(epoch)
    }

    /// The marker epoch this replica knows, or '' before it has seen one.
    fn known_epoch(&self) -> String {
        self.epoch
            .lock()
            .expect("epoch lock")
            .clone()
            .unwrap_or_default()
    }

    /// Drops what is held here for `label`: only on knowledge that it was
    /// forgotten (a forget, or an absence under the known epoch), never
    /// because Redis has nothing after losing its data.
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

    /// [`RedisStore::lost_call`], also kept here: a replica that answered a
    /// label as held remembers it, and writes it back after lost data.
    fn keep_lost_call(
        &self,
        label: &Label,
        since: SystemTime,
        user: Arc<str>,
        until: SystemTime,
    ) -> Remembered {
        let remembered = Self::lost_call(since, user, until);
        self.keep(label, &remembered);
        remembered
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
            .arg(self.call_deadline.as_millis() as u64)
            .arg(self.known_epoch());
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
                    } if self.is_lost(since) => Ok(Claim::Remembered(
                        self.keep_lost_call(label, since, user, until),
                    )),
                    // This replica's own call, whose outcome it holds but
                    // could not write yet: answered from it, as before.
                    Held::Claim { token, calling } => match self.unsynced_outcome(label, token) {
                        Some(remembered) => Ok(Claim::Remembered(remembered)),
                        None => Ok(self.watch(label, token, calling)),
                    },
                    _ => Err(refused("unreadable claim")),
                }
            }
            Some("lead") => Ok(self.lead(label, token, hold_for)),
            Some("lost") => Err(refused(LOST)),
            Some("stale") => Err(refused(BEHIND)),
            Some("recovering") => Err(refused(RECOVERING)),
            _ => Err(refused("unexpected answer to a claim")),
        }
    }

    /// The outcome of this replica's call `token` on `label`, settled here
    /// but not yet written to Redis.
    fn unsynced_outcome(&self, label: &Label, token: u64) -> Option<Remembered> {
        let unsynced = self.unsynced.lock().expect("unsynced lock");
        let (remembered, held) = unsynced.get(label)?;
        (*held == token && !remembered.remaining(self.now()).is_zero()).then(|| remembered.clone())
    }

    /// Holds the claim `token` here; a local claim may have come first.
    fn lead(&self, label: &Label, token: u64, hold_for: Duration) -> Claim {
        match self.calls.entry(label.clone()) {
            Entry::Occupied(call) => {
                // Another request here claimed meanwhile: ours is not the label's.
                let waiter = Waiter::new(call.get().sender.subscribe());
                let ending = Ending {
                    token,
                    failure: None,
                };
                self.spawn_ending(label.clone(), ending, self.call_deadline);
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
    fn watch(&self, label: &Label, token: u64, calling: Option<Calling>) -> Claim {
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
                        calling,
                    },
                });
                if let Some(store) = self.me.upgrade() {
                    tokio::spawn(store.poll(label.clone(), token, wake));
                }
                Claim::Wait(Waiter::new(receiver))
            }
        }
    }

    /// How long the claim `token` on `label` held here may hold it in Redis.
    fn held_for(&self, label: &Label, token: u64) -> Duration {
        match self.calls.get(label).as_deref() {
            Some(Call {
                token: held,
                role: Role::Leading { hold_for, .. },
                ..
            }) if *held == token => (*hold_for).max(self.call_deadline),
            _ => self.call_deadline,
        }
    }

    /// Records that the call `token` watched here for `label` is under way.
    fn note_calling(&self, label: &Label, token: u64, seen: Calling) {
        if let Some(mut call) = self.calls.get_mut(label)
            && call.token == token
            && let Role::Watching { calling, .. } = &mut call.role
            && calling.is_none()
        {
            *calling = Some(seen);
        }
    }

    /// Whether the call `token` watched here for `label` was seen under way.
    fn saw_calling(&self, label: &Label, token: u64) -> bool {
        self.calls.get(label).is_some_and(|call| {
            call.token == token
                && matches!(
                    call.role,
                    Role::Watching {
                        calling: Some(_),
                        ..
                    }
                )
        })
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

    /// The script run that ends, in Redis, the claim `ending` on `label`.
    fn end_invocation(&self, label: &Label, ending: &Ending) -> ::redis::ScriptInvocation<'_> {
        let mut invocation = match &ending.failure {
            None => {
                let mut invocation = self.scripts.release.prepare_invoke();
                invocation
                    .key(self.label_key(label))
                    .arg(ending.token.to_string());
                invocation
            }
            Some(failure) => {
                let mut invocation = self.scripts.settle.prepare_invoke();
                invocation
                    .key(self.label_key(label))
                    .key(self.failure_key(label, ending.token))
                    .arg(ending.token.to_string())
                    .arg("failure")
                    .arg(failure)
                    .arg(0)
                    .arg(FAILURE_TTL.as_millis() as u64);
                invocation
            }
        };
        invocation.arg(&self.channel).arg(self.event('s', label));
        invocation
    }

    /// Ends in Redis, in the background, a claim ended here, retrying
    /// until Redis takes it or the claim has lapsed there by itself
    /// (`lapses_within`); a claim here for the same label first finishes it.
    fn spawn_ending(&self, label: Label, ending: Ending, lapses_within: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.ending.insert(label.clone(), ending);
        let Some(store) = self.me.upgrade() else {
            return;
        };
        runtime.spawn(async move {
            let lapsed = Instant::now() + lapses_within;
            let mut pause = POLL;
            while !store.finish_ending(&label).await && Instant::now() < lapsed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WATCH);
            }
        });
    }

    /// Ends in Redis the claim ended here for `label`, if one is on its
    /// way; whether none is left.
    async fn finish_ending(&self, label: &Label) -> bool {
        let Some(ending) = self.ending.get(label).map(|ending| ending.clone()) else {
            return true;
        };
        let operation = if ending.failure.is_some() {
            "settle"
        } else {
            "release"
        };
        let invocation = self.end_invocation(label, &ending);
        if self.redis.run::<i64>(operation, &invocation).await.is_err() {
            return false;
        }
        self.ending
            .remove_if(label, |_, held| held.token == ending.token);
        true
    }

    /// One look at `label`, and at the failure kept for its claim `token`.
    async fn peek(&self, label: &Label, token: u64) -> Result<Peeked, StoreError> {
        let mut invocation = self.scripts.peek.prepare_invoke();
        invocation
            .key(self.label_key(label))
            .key(self.failure_key(label, token))
            .key(&self.marker);
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
        let same_epoch = self.is_known_epoch(reply.get(8).map_or("", String::as_str));
        Ok(Peeked {
            held,
            failure,
            same_epoch,
        })
    }

    /// Follows the claim `token` on `label` held by another replica until
    /// it settles, is given up or its holder is lost.
    async fn poll(self: Arc<Self>, label: Label, token: u64, wake: Arc<Notify>) {
        let started = Instant::now();
        let give_up = self.call_deadline * 2 + POLL;
        loop {
            let _ = tokio::time::timeout(POLL, wake.notified()).await;
            let settled = match self.peek(&label, token).await {
                Ok(Peeked {
                    failure: Some(failure),
                    ..
                }) => Some(Err(failure)),
                Ok(Peeked {
                    held: Held::Outcome(remembered),
                    ..
                }) => {
                    self.keep(&label, &remembered);
                    Some(Ok(remembered))
                }
                Ok(Peeked {
                    held:
                        Held::Claim {
                            token: held,
                            calling,
                        },
                    ..
                }) if held == token => match calling {
                    Some((since, user, until)) if self.is_lost(since) => {
                        Some(Ok(self.keep_lost_call(&label, since, user, until)))
                    }
                    _ if started.elapsed() > give_up => None,
                    Some(calling) => {
                        self.note_calling(&label, token, calling);
                        continue;
                    }
                    None => continue,
                },
                // Given up before calling, or taken over: claim again.
                Ok(Peeked {
                    same_epoch: true, ..
                }) => None,
                // Redis lost its data. A call seen under way comes back
                // with the write-back of whichever replica knows it (this
                // one included); one never seen calling was fenced off by
                // the loss (its call cannot begin): claim again.
                Ok(_) if started.elapsed() > give_up || !self.saw_calling(&label, token) => None,
                Ok(_) => {
                    self.recheck.notify_one();
                    continue;
                }
                Err(_) if started.elapsed() > give_up => None,
                Err(_) => continue,
            };
            self.end_call(&label, token, settled);
            return;
        }
    }

    /// Writes back, after Redis lost its data, every call known here to be
    /// under way (made here, or seen calling at another replica, whose
    /// holder may be gone) and every outcome remembered here.
    async fn write_back(&self) -> Result<u64, StoreError> {
        let now = self.now();
        let mut records: Vec<(String, u64, String, String)> = Vec::new();
        for call in self.calls.iter() {
            let (since, user, until) = match &call.role {
                Role::Leading {
                    hold_for,
                    calling: Some((since, user)),
                } => (*since, user, *since + *hold_for),
                Role::Watching {
                    calling: Some((since, user, until)),
                    ..
                } => (*since, user, *until),
                _ => continue,
            };
            let remaining = until.duration_since(now).unwrap_or_default();
            if remaining.is_zero() {
                continue;
            }
            let fields = serde_json::json!({
                "state": "calling",
                "token": call.token.to_string(),
                "since": millis(since).to_string(),
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
        records.extend(self.cache.iter().filter_map(|(label, cached)| {
            let remaining = cached.remembered.remaining(now);
            (!remaining.is_zero()).then(|| {
                (
                    self.label_key(&label),
                    remaining.as_millis() as u64,
                    outcome_fields(&label, &cached.remembered),
                    String::new(),
                )
            })
        }));
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
                // A claim on the label ended: what is held here for it (a
                // call seen lost, say) is checked again at its next use.
                self.mark_stale(&label);
                if let Some(call) = self.calls.get(&label)
                    && let Role::Watching { wake, .. } = &call.role
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
            if let Role::Watching { wake, .. } = &call.role {
                wake.notify_one();
            }
        }
        // Forgets may have been missed: what is held here is checked again.
        for (label, mut cached) in this.cache.iter() {
            cached.checked = Duration::ZERO;
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

/// Checks the marker every [`WATCH`], and at once when a look at a label
/// found Redis without the epoch this replica knows (a claim that finds it
/// gone checks by itself).
async fn watch_marker(store: Weak<RedisStore>, recheck: Arc<Notify>) {
    loop {
        let Some(this) = store.upgrade() else { return };
        this.check().await;
        drop(this);
        let _ = tokio::time::timeout(WATCH, recheck.notified()).await;
    }
}

impl DedupStore for RedisStore {
    fn get<'a>(&'a self, label: &'a Label) -> StoreFuture<'a, Option<Remembered>> {
        Box::pin(async move {
            if let Some((remembered, true)) = self.cached(label) {
                return Ok(Some(remembered));
            }
            match self.peek(label, 0).await {
                Ok(Peeked {
                    held: Held::Outcome(remembered),
                    ..
                }) => {
                    self.keep(label, &remembered);
                    Ok(Some(remembered))
                }
                Ok(Peeked {
                    held:
                        Held::Claim {
                            calling: Some((since, user, until)),
                            ..
                        },
                    ..
                }) if self.is_lost(since) => {
                    Ok(Some(self.keep_lost_call(label, since, user, until)))
                }
                Ok(Peeked {
                    same_epoch: true, ..
                }) => {
                    self.drop_cached(label);
                    Ok(None)
                }
                Ok(_) => {
                    // Redis lost its data: what is held here stands, and is
                    // written back by the marker job, woken now.
                    self.recheck.notify_one();
                    Ok(self.cached(label).map(|(remembered, _)| remembered))
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
            let mut claimed = if self.finish_ending(label).await {
                self.claim_in_redis(label, hold_for).await
            } else {
                // This replica's last claim on the label still holds it in
                // Redis: a claim now would wait on it for nothing.
                Err(StoreError {
                    operation: "release",
                    reason: "the end of a previous claim has not reached the store".into(),
                })
            };
            if matches!(&claimed, Err(error) if error.reason == LOST || error.reason == BEHIND) {
                // Redis lost its data: write the marker (claims held off
                // while the replicas write back) or catch up with the one
                // written, writing back what is remembered here; then claim again.
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
            let lapses_within = self.held_for(&label, token);
            if let Ok(remembered) = &settled {
                self.keep(&label, remembered);
            }
            self.end_call(&label, token, Some(settled.clone()));
            let remembered = match settled {
                Ok(remembered) => remembered,
                Err(failure) => {
                    let ending = Ending {
                        token,
                        failure: Some(
                            serde_json::to_string(&FailureRecord::of(&failure, self.now()))
                                .unwrap_or_default(),
                        ),
                    };
                    let invocation = self.end_invocation(&label, &ending);
                    let written = self.redis.run::<i64>("settle", &invocation).await;
                    if written.is_err() {
                        // The call sent nothing: its claim must not hold
                        // the label as if it might have. Retried until
                        // Redis takes it.
                        self.spawn_ending(label, ending, lapses_within);
                    }
                    return written.map(drop);
                }
            };
            let mut invocation = self.scripts.settle.prepare_invoke();
            invocation
                .key(self.label_key(&label))
                .key(self.failure_key(&label, token))
                .arg(token.to_string())
                .arg("outcome")
                .arg(outcome_json(&label, &remembered))
                .arg(millis(remembered.expires_at()))
                .arg((remembered.remaining(self.now()).as_millis() as u64).max(1))
                .arg(&self.channel)
                .arg(self.event('s', &label));
            let written = self.redis.run::<i64>("settle", &invocation).await;
            if written.is_err() {
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
        let (label, token) = (claim.label(), claim.token());
        let began = self.calls.get(label).is_some_and(|call| {
            call.token == token
                && matches!(
                    call.role,
                    Role::Leading {
                        calling: Some(_),
                        ..
                    }
                )
        });
        let lapses_within = self.held_for(label, token);
        self.end_call(label, token, None);
        if !began {
            // Its call never began (or the reply that it had was lost, and
            // the MPC was not called): the label is free again at once.
            // One that began may have reached the MPC: its claim holds the
            // label until it lapses.
            let ending = Ending {
                token,
                failure: None,
            };
            self.spawn_ending(label.clone(), ending, lapses_within);
        }
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
    use crate::store::redis::{for_tests, for_tests_on};
    use crate::store::test_server::RedisServer;

    const HOLD: Duration = Duration::from_secs(120);
    const DEADLINE: Duration = Duration::from_secs(5);

    /// A replica on `redis` without the jobs that follow the others: the
    /// test decides when it checks the marker (and has it learn the
    /// marker's epoch first) and when it hears of other replicas.
    async fn quiet_replica(redis: &Arc<Redis>) -> (Arc<RedisStore>, Arc<FakeClock>) {
        quiet_replica_with(redis, DEADLINE).await
    }

    /// [`quiet_replica`], whose calls lose their holder after `deadline`.
    async fn quiet_replica_with(
        redis: &Arc<Redis>,
        deadline: Duration,
    ) -> (Arc<RedisStore>, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::default());
        let store = RedisStore::new(
            Arc::clone(redis),
            clock.clone(),
            100,
            Duration::from_secs(3600),
            deadline,
        );
        store.check().await;
        assert!(store.epoch.lock().unwrap().is_some(), "the marker is known");
        (store, clock)
    }

    fn label(text: &str) -> Label {
        Label::parse(text).unwrap()
    }

    async fn lead(store: &RedisStore, label: &Label) -> ClaimId {
        match store.claim(label, HOLD).await.unwrap() {
            Claim::Lead(claim) => claim,
            Claim::Remembered(_) => panic!("expected to lead, found an outcome"),
            Claim::Wait(_) => panic!("expected to lead, found a call under way"),
        }
    }

    /// Claims `label`, calls and settles it as sent.
    async fn send(store: &RedisStore, clock: &FakeClock, label: &Label) -> Remembered {
        let claim = lead(store, label).await;
        store.begin_call(&claim, "alice").await.unwrap();
        let now = clock.system_time();
        let sent = Remembered::new(
            Outcome::Sent {
                upstream: MpcAnswer {
                    status: 200,
                    body: None,
                },
            },
            now,
            now + Duration::from_secs(3600),
            "alice".into(),
        );
        store.settle(claim, Ok(sent.clone())).await.unwrap();
        sent
    }

    /// The state of `label`'s record in Redis, if it has one.
    async fn state_in_redis(store: &RedisStore, label: &Label) -> Option<String> {
        try_state_in_redis(store, label).await.unwrap()
    }

    async fn try_state_in_redis(
        store: &RedisStore,
        label: &Label,
    ) -> Result<Option<String>, StoreError> {
        let command = ::redis::cmd("HGET")
            .arg(store.label_key(label))
            .arg("state")
            .to_owned();
        store.redis.query("watch", &command).await
    }

    /// Waits, at most `within`, until `label`'s record in Redis is `state`.
    async fn until_state(store: &RedisStore, label: &Label, state: Option<&str>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // A connection killed by the test fails once, then reconnects.
            let now = try_state_in_redis(store, label).await;
            if matches!(&now, Ok(now) if now.as_deref() == state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{label:?} is {now:?} in Redis, not {state:?}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `store` follows the events channel.
    async fn until_subscribed(store: &RedisStore) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let command = ::redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&store.channel)
                .to_owned();
            let (_, subscribers): (String, u64) =
                store.redis.query("watch", &command).await.unwrap();
            if subscribers >= 1 {
                return;
            }
            assert!(Instant::now() < deadline, "never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A replica with every job running, on `clock`.
    fn started_replica(redis: &Arc<Redis>, clock: Arc<FakeClock>) -> Arc<RedisStore> {
        RedisStore::start(
            Arc::clone(redis),
            clock,
            100,
            Duration::from_secs(3600),
            DEADLINE,
        )
    }

    fn flush(server: &RedisServer) {
        assert_eq!(server.cli(&["FLUSHALL"]), "OK");
    }

    #[tokio::test]
    async fn an_outcome_settled_at_another_replica_is_answered_here() {
        let redis = for_tests();
        let (here, _) = quiet_replica(&redis).await;
        let (there, clock) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let sent = send(&there, &clock, &x).await;
        match here.claim(&x, HOLD).await.unwrap() {
            Claim::Remembered(remembered) => assert_eq!(remembered, sent),
            _ => panic!("the outcome is in Redis"),
        }
        assert_eq!(here.get(&x).await.unwrap(), Some(sent));
    }

    #[tokio::test]
    async fn a_claim_ended_elsewhere_has_the_copy_here_checked_again() {
        let redis = for_tests();
        let (holder, holder_clock) = quiet_replica(&redis).await;
        let clock = Arc::new(FakeClock::default());
        // This one follows the events channel.
        let here = started_replica(&redis, clock.clone());
        // Subscribed before anything is held here (a subscription checks
        // again all that is held).
        until_subscribed(&here).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        clock.advance(DEADLINE + Duration::from_secs(1));
        let Claim::Remembered(lost) = here.claim(&x, HOLD).await.unwrap() else {
            panic!("past its deadline, the call is answered as lost")
        };
        // The holder was only slow: its outcome ends the claim, and its
        // message has the copy here checked again before its time is up.
        let now = holder_clock.system_time();
        let sent = Remembered::new(
            Outcome::Sent {
                upstream: MpcAnswer {
                    status: 200,
                    body: None,
                },
            },
            now,
            now + Duration::from_secs(3600),
            "alice".into(),
        );
        holder.settle(claim, Ok(sent.clone())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let Claim::Remembered(answered) = here.claim(&x, HOLD).await.unwrap() else {
                panic!("remembered either way")
            };
            if answered == sent {
                break;
            }
            assert_eq!(answered, lost);
            assert!(
                Instant::now() < deadline,
                "the copy was never checked again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_forget_at_another_replica_drops_the_copy_here_at_once() {
        let redis = for_tests();
        let clock = Arc::new(FakeClock::default());
        let here = started_replica(&redis, clock.clone());
        until_subscribed(&here).await;
        let (there, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        send(&here, &clock, &x).await;
        assert!(there.forget(&x).await.unwrap().is_some());
        // The clock stands still: only the message can drop the copy.
        let deadline = Instant::now() + Duration::from_secs(2);
        while here.get(&x).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the forget was not heard");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_marker_job_writes_back_after_lost_data_by_itself() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let clock = Arc::new(FakeClock::default());
        let store = started_replica(&redis, clock.clone());
        let x = label("A10cnQO");
        send(&store, &clock, &x).await;
        flush(&server);
        until_state(&store, &x, Some("outcome"), Duration::from_secs(3)).await;
    }

    #[tokio::test]
    async fn a_status_read_with_redis_down_and_nothing_held_fails_as_a_read() {
        let mut server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_millis(200));
        let (store, _) = quiet_replica(&redis).await;
        server.kill();
        let error = store.get(&label("A10cnQO")).await.unwrap_err();
        assert_eq!(error.operation, "get");
    }

    #[tokio::test]
    async fn a_status_read_after_lost_data_keeps_what_is_held_here_and_writes_it_back() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (store, clock) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let sent = send(&store, &clock, &x).await;
        flush(&server);
        clock.advance(REVALIDATE);
        assert_eq!(
            store.get(&x).await.unwrap(),
            Some(sent),
            "Redis has nothing because it lost its data: not a forget"
        );
        store.check().await;
        assert_eq!(
            state_in_redis(&store, &x).await.as_deref(),
            Some("outcome"),
            "written back"
        );
    }

    #[tokio::test]
    async fn an_absence_under_the_known_epoch_is_a_forget_and_drops_the_copy() {
        let redis = for_tests();
        let (here, clock) = quiet_replica(&redis).await;
        let (there, _) = quiet_replica(&redis).await;
        let (x, y) = (label("A10cnQO"), label("A10cnQP"));
        send(&here, &clock, &x).await;
        send(&here, &clock, &y).await;
        // Forgotten at the other replica; its messages are not followed here.
        assert!(there.forget(&x).await.unwrap().is_some());
        assert!(there.forget(&y).await.unwrap().is_some());
        clock.advance(REVALIDATE - Duration::from_millis(1));
        assert!(
            here.get(&x).await.unwrap().is_some(),
            "a copy is answered without asking Redis for a while"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(here.get(&x).await.unwrap(), None);
        assert_eq!(here.snapshot().len(), 1, "only the label not read yet");
        lead(&here, &y).await;
        assert!(here.snapshot().is_empty());
    }

    #[tokio::test]
    async fn a_replica_behind_a_loss_writes_back_before_it_may_lead() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (store, clock) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let sent = send(&store, &clock, &x).await;
        flush(&server);
        // Another replica noticed first and wrote a new marker, and the
        // hold for writing back is over: this one never heard of it.
        let _: i64 = redis
            .query(
                "marker",
                ::redis::cmd("HSET")
                    .arg(&store.marker)
                    .arg("epoch")
                    .arg("another")
                    .arg("ready_at")
                    .arg(0),
            )
            .await
            .unwrap();
        clock.advance(REVALIDATE);
        assert_eq!(
            store.get(&x).await.unwrap().as_ref(),
            Some(&sent),
            "nothing under an epoch this replica does not know is no forget"
        );
        match store.claim(&x, HOLD).await.unwrap() {
            Claim::Remembered(remembered) => assert_eq!(remembered, sent),
            Claim::Lead(_) => panic!("led with a copy from before the loss: a second email"),
            Claim::Wait(_) => panic!("nothing is under way"),
        }
        assert_eq!(
            store.epoch.lock().unwrap().as_deref(),
            Some("another"),
            "caught up"
        );
        assert_eq!(state_in_redis(&store, &x).await.as_deref(), Some("outcome"));
    }

    #[tokio::test]
    async fn a_failure_whose_settle_was_lost_frees_the_label_once_redis_answers() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_millis(200));
        // Retried for as long as the claim may hold the label (HOLD), not
        // only until its call's deadline.
        let (here, _) = quiet_replica_with(&redis, Duration::from_millis(100)).await;
        let (there, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&here, &x).await;
        here.begin_call(&claim, "alice").await.unwrap();
        // The connection dies before the settle, whose command is lost,
        // and Redis then answers nothing for a second.
        assert_ne!(server.cli(&["CLIENT", "KILL", "TYPE", "normal"]), "0");
        let socket = server.socket();
        let sleeping = tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .arg("-s")
                .arg(socket)
                .args(["DEBUG", "SLEEP", "1"])
                .output()
                .unwrap()
        });
        while server.answers_within(Duration::from_millis(50)) {}
        let failure = UpstreamFailure::ServerError(MpcAnswer {
            status: 500,
            body: None,
        });
        assert!(here.settle(claim, Err(failure)).await.is_err());
        sleeping.await.unwrap();
        until_state(&there, &x, None, Duration::from_secs(3)).await;
        assert!(here.ending.is_empty(), "nothing left to end");
        lead(&there, &x).await;
    }

    #[tokio::test]
    async fn a_call_whose_begin_was_run_but_not_answered_is_released_whole() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (store, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&store, &x).await;
        assert_ne!(server.cli(&["CLIENT", "KILL", "TYPE", "normal"]), "0");
        assert!(store.begin_call(&claim, "alice").await.is_err());
        // As if Redis had run it and the reply was lost: the MPC is not
        // called (it is only after that reply), and the claim is given up.
        let key = store.label_key(&x);
        let since = millis(SystemTime::now()).to_string();
        assert_eq!(
            server.cli(&["HSET", &key, "state", "calling", "since", &since]),
            "1",
            "a claim held by this replica, now calling"
        );
        store.release(claim);
        until_state(&store, &x, None, Duration::from_secs(3)).await;
        assert!(store.ending.is_empty(), "nothing left to end");
        lead(&store, &x).await;
    }

    #[tokio::test]
    async fn a_call_answered_as_lost_is_kept_and_written_back_after_lost_data() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, _) = quiet_replica(&redis).await;
        let (other, clock) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        // The holder dies mid-call; past the deadline the other answers the
        // label as held.
        clock.advance(DEADLINE + Duration::from_secs(1));
        let Claim::Remembered(lost) = other.claim(&x, HOLD).await.unwrap() else {
            panic!("a call past its deadline is answered")
        };
        assert!(lost.outcome().may_have_emailed());
        flush(&server);
        other.check().await;
        assert_eq!(
            state_in_redis(&other, &x).await.as_deref(),
            Some("outcome"),
            "held as uncertain again"
        );
    }

    fn sent_now() -> Remembered {
        let now = SystemTime::now();
        Remembered::new(
            Outcome::Sent {
                upstream: MpcAnswer {
                    status: 200,
                    body: None,
                },
            },
            now,
            now + Duration::from_secs(3600),
            "alice".into(),
        )
    }

    /// A waiter at `watcher` on `holder`'s call, which is seen calling
    /// (`calling_first`) or only claimed when the wait begins, lives
    /// through lost data: it gets the holder's outcome.
    async fn a_waiter_on_a_call_seen_under_way_lives_through_lost_data(calling_first: bool) {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, _) = quiet_replica(&redis).await;
        let (watcher, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        if calling_first {
            holder.begin_call(&claim, "alice").await.unwrap();
        }
        let Claim::Wait(waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a call is under way")
        };
        if !calling_first {
            holder.begin_call(&claim, "alice").await.unwrap();
            // The waiter's poll sees it calling.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !watcher.saw_calling(&x, claim.token()) {
                assert!(Instant::now() < deadline, "the poll never saw the call");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        flush(&server);
        tokio::time::timeout(Duration::from_secs(2), watcher.recheck.notified())
            .await
            .expect("the waiter's poll saw the loss and woke the marker job");
        holder.check().await;
        let sent = sent_now();
        holder.settle(claim, Ok(sent.clone())).await.unwrap();
        assert_eq!(waiter.settled().await, Some(Ok(sent)));
    }

    #[tokio::test]
    async fn a_waiter_on_a_call_seen_calling_lives_through_lost_data() {
        a_waiter_on_a_call_seen_under_way_lives_through_lost_data(true).await;
    }

    #[tokio::test]
    async fn a_waiter_on_a_claim_seen_calling_later_lives_through_lost_data() {
        a_waiter_on_a_call_seen_under_way_lives_through_lost_data(false).await;
    }

    #[tokio::test]
    async fn a_waiter_elsewhere_gets_the_failure_of_a_call_that_sent_nothing() {
        let redis = for_tests();
        let (holder, _) = quiet_replica(&redis).await;
        let (watcher, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        let Claim::Wait(waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a call is under way")
        };
        let failure = UpstreamFailure::ServerError(MpcAnswer {
            status: 503,
            body: None,
        });
        holder.settle(claim, Err(failure.clone())).await.unwrap();
        assert_eq!(waiter.settled().await, Some(Err(failure)));
        lead(&watcher, &x).await;
    }

    #[tokio::test]
    async fn a_waiter_elsewhere_rides_out_a_redis_that_is_silent_for_a_moment() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_millis(200));
        let (holder, _) = quiet_replica(&redis).await;
        let (watcher, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        let Claim::Wait(waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a call is under way")
        };
        let socket = server.socket();
        // The waiter's polls fail for a second, longer than store.timeout.
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .arg("-s")
                .arg(socket)
                .args(["DEBUG", "SLEEP", "1"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let sent = sent_now();
        holder.settle(claim, Ok(sent.clone())).await.unwrap();
        assert_eq!(waiter.settled().await, Some(Ok(sent)));
    }

    #[tokio::test]
    async fn a_waiter_elsewhere_is_answered_when_the_call_passes_its_deadline() {
        let redis = for_tests();
        let (holder, _) = quiet_replica(&redis).await;
        let (watcher, clock) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        let Claim::Wait(waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a call is under way")
        };
        // Its holder died: past the deadline the waiter is answered.
        clock.advance(DEADLINE + Duration::from_secs(1));
        let settled = tokio::time::timeout(Duration::from_secs(1), waiter.settled())
            .await
            .expect("answered at the next poll");
        let lost = settled.unwrap().unwrap();
        assert!(lost.outcome().may_have_emailed());
        assert_eq!(watcher.snapshot().len(), 1, "and kept");
    }

    #[tokio::test]
    async fn a_waiter_elsewhere_stops_waiting_after_twice_the_deadline() {
        let redis = for_tests();
        let (holder, _) = quiet_replica(&redis).await;
        // Its clock never reaches the call's deadline, its real time does.
        let (watcher, _) = quiet_replica_with(&redis, Duration::from_millis(100)).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        let Claim::Wait(waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a call is under way")
        };
        let settled = tokio::time::timeout(Duration::from_secs(2), waiter.settled())
            .await
            .expect("a waiter never waits for ever");
        assert_eq!(settled, None, "told to claim again");
    }

    #[tokio::test]
    async fn a_waiter_on_a_claim_never_seen_calling_claims_again_after_lost_data() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, _) = quiet_replica(&redis).await;
        let (watcher, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        let Claim::Wait(waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a claim is held")
        };
        flush(&server);
        // Its call cannot begin after the loss: no waiting for it.
        let settled = tokio::time::timeout(Duration::from_secs(1), waiter.settled())
            .await
            .expect("told at once to claim again");
        assert_eq!(settled, None);
        assert!(holder.begin_call(&claim, "alice").await.is_err());
    }

    #[tokio::test]
    async fn a_call_under_way_here_is_written_back_after_lost_data() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        flush(&server);
        holder.check().await;
        assert_eq!(
            state_in_redis(&holder, &x).await.as_deref(),
            Some("calling")
        );
        let (other, _) = quiet_replica(&redis).await;
        let Claim::Wait(_) = other.claim(&x, HOLD).await.unwrap() else {
            panic!("held again by its call")
        };
    }

    #[tokio::test]
    async fn an_outcome_whose_settle_failed_is_written_when_redis_answers_again() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        assert_ne!(server.cli(&["CLIENT", "KILL", "TYPE", "normal"]), "0");
        let sent = sent_now();
        assert!(holder.settle(claim, Ok(sent.clone())).await.is_err());
        until_state(&holder, &x, Some("calling"), Duration::from_secs(1)).await;
        holder.check().await;
        assert_eq!(
            state_in_redis(&holder, &x).await.as_deref(),
            Some("outcome")
        );
        let (other, _) = quiet_replica(&redis).await;
        match other.claim(&x, HOLD).await.unwrap() {
            Claim::Remembered(remembered) => assert_eq!(remembered, sent),
            _ => panic!("the outcome is in Redis"),
        }
    }

    #[tokio::test]
    async fn an_outcome_whose_settle_failed_is_answered_here_though_redis_holds_the_call() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, clock) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        assert_ne!(server.cli(&["CLIENT", "KILL", "TYPE", "normal"]), "0");
        let sent = sent_now();
        assert!(holder.settle(claim, Ok(sent.clone())).await.is_err());
        // Past the local copy's trust: the claim asks Redis, which still
        // holds this replica's call.
        clock.advance(REVALIDATE * 2);
        until_state(&holder, &x, Some("calling"), Duration::from_secs(1)).await;
        match holder.claim(&x, HOLD).await.unwrap() {
            Claim::Remembered(remembered) => assert_eq!(remembered, sent),
            _ => panic!("the outcome is held here: not a wait on its own call"),
        }
    }

    #[tokio::test]
    async fn a_call_seen_under_way_elsewhere_is_written_back_after_lost_data() {
        let server = RedisServer::start();
        let redis = for_tests_on(&server, Duration::from_secs(2));
        let (holder, _) = quiet_replica(&redis).await;
        let (watcher, _) = quiet_replica(&redis).await;
        let x = label("A10cnQO");
        let claim = lead(&holder, &x).await;
        holder.begin_call(&claim, "alice").await.unwrap();
        let Claim::Wait(_waiter) = watcher.claim(&x, HOLD).await.unwrap() else {
            panic!("a call is under way")
        };
        flush(&server);
        watcher.check().await;
        assert_eq!(
            state_in_redis(&watcher, &x).await.as_deref(),
            Some("calling"),
            "the call is held again, with its holder's token"
        );
        let sent = Remembered::new(
            Outcome::Sent {
                upstream: MpcAnswer {
                    status: 200,
                    body: None,
                },
            },
            SystemTime::now(),
            SystemTime::now() + Duration::from_secs(3600),
            "alice".into(),
        );
        holder.settle(claim, Ok(sent)).await.unwrap();
        assert_eq!(
            state_in_redis(&holder, &x).await.as_deref(),
            Some("outcome")
        );
    }

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
