//! The fault injector: one fault at a time, chosen at random, with a few
//! seconds of recovery between, each logged with its start and end.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clients::{Focus, Traffic};
use crate::helpers::redis_server::RedisServer;
use crate::log::{Fault, FaultKind, MpcReply, Secs, now, seconds};
use crate::replicas::{REPLICAS, Replicas};
use crate::stand_in::{Aim, Aimed};

/// Recovery between two faults, in seconds: long enough for the replicas'
/// once-a-second jobs (marker check, unwritten outcomes) to run twice.
const RECOVERY: std::ops::Range<Secs> = 2.0..5.0;

/// How often each kind of fault is chosen, out of the sum.
const WEIGHTS: [(Kind, u32); 11] = [
    (Kind::ReplicaKill, 10),
    (Kind::ReplicaStop, 12),
    (Kind::RedisRestart, 10),
    (Kind::FlushAll, 12),
    (Kind::ScriptFlush, 6),
    (Kind::DebugSleep, 10),
    (Kind::RedisStop, 10),
    (Kind::ClientKill, 12),
    (Kind::ClientKillAt(MpcReply::ServerError), 8),
    (Kind::ClientKillAt(MpcReply::Accepted), 4),
    (Kind::FlushAllAfter(MpcReply::Accepted), 6),
];

/// An aimed fault waits this long at most for the answer it is aimed at.
const AIM_FOR: Duration = Duration::from_secs(10);

/// An aimed `FLUSHALL` comes this long after the answer: its settle done,
/// the label being asked again.
const FLUSH_AFTER: std::ops::Range<Secs> = 0.1..1.0;

/// How long the clients hold their requests before an aimed `CLIENT KILL`
/// (the answer it is aimed at waiting meanwhile, well within the
/// gateways' timeout), so that the call's settle is the first command on
/// the dead connection rather than some other request's.
const HUSH: Secs = 0.3;

#[derive(Clone, Copy)]
enum Kind {
    ReplicaKill,
    ReplicaStop,
    RedisRestart,
    FlushAll,
    ScriptFlush,
    DebugSleep,
    RedisStop,
    ClientKill,
    /// `CLIENT KILL` just before the stand-in writes an answer of this kind,
    /// so that the settle of the call is the first command on a dead
    /// connection.
    ClientKillAt(MpcReply),
    /// `FLUSHALL` shortly after the stand-in wrote an answer of this kind.
    FlushAllAfter(MpcReply),
}

/// How long the clients ask often for the label an aimed fault struck.
const FOCUS_FOR: Secs = 30.0;

/// When an aimed fault strikes.
#[derive(Clone, Copy)]
enum Aiming {
    /// Before the answer is written, the clients held meanwhile.
    Before,
    /// This many seconds after the answer was written.
    After(Secs),
}

impl Kind {
    fn is_aimed(self) -> bool {
        matches!(self, Self::ClientKillAt(_) | Self::FlushAllAfter(_))
    }
}

/// Something to do with the Redis server, on its thread.
type Job = Box<dyn FnOnce(&mut RedisServer) + Send>;

/// The Redis server of the run, owned by a thread of its own: the server
/// is killed when the thread that started it ends, so every start and
/// restart happens there.
pub struct RedisHost {
    jobs: mpsc::Sender<Job>,
    socket: PathBuf,
    url: String,
}

impl RedisHost {
    /// Starts the server on its thread.
    pub fn start() -> Self {
        let (jobs, received) = mpsc::channel::<Job>();
        let (started, where_) = mpsc::channel();
        std::thread::Builder::new()
            .name("redis-host".into())
            .spawn(move || {
                let mut server = RedisServer::start();
                started.send((server.socket(), server.url())).unwrap();
                for job in received {
                    job(&mut server);
                }
            })
            .unwrap();
        let (socket, url) = where_.recv().expect("redis-server starts");
        Self { jobs, socket, url }
    }

    /// The `store.redis_url` that reaches it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `job` on the server's thread and waits for it (blocking).
    fn on_server<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut RedisServer) -> T + Send + 'static,
    ) -> T {
        let (done, result) = mpsc::channel();
        self.jobs
            .send(Box::new(move |server| {
                let _ = done.send(job(server));
            }))
            .unwrap();
        result.recv().expect("the Redis host runs the job")
    }

    /// The server's process id, as it tells it.
    fn pid(&self) -> libc::pid_t {
        let info = command(&self.socket, &["INFO", "server"], Duration::from_secs(5)).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("INFO server names the process id")
    }
}

/// Sends one command to the Redis at `socket` on a connection of its own
/// and returns its reply as text (blocking, at most `wait`).
pub fn command(socket: &Path, args: &[&str], wait: Duration) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end();
    match line.strip_prefix('$') {
        Some(length) => {
            let length: usize = length.parse().map_err(|_| line.to_owned())?;
            let mut bulk = vec![0; length + 2];
            reader.read_exact(&mut bulk).map_err(|e| e.to_string())?;
            bulk.truncate(length);
            Ok(String::from_utf8_lossy(&bulk).into_owned())
        }
        None if line.starts_with('-') => Err(line.to_owned()),
        None => Ok(line.to_owned()),
    }
}

/// The injector and its log.
pub struct Injector {
    rng: StdRng,
    redis: Arc<RedisHost>,
    redis_pid: libc::pid_t,
    aim: Aim,
    hush: Arc<AtomicBool>,
    focus: Focus,
    pub faults: Vec<Fault>,
}

impl Injector {
    /// An injector drawing from `seed`, aiming through the stand-in's
    /// `aim` and at the clients' `traffic`.
    pub fn new(seed: u64, redis: Arc<RedisHost>, aim: Aim, traffic: &Traffic) -> Self {
        let redis_pid = redis.pid();
        Self {
            rng: StdRng::seed_from_u64(seed ^ 0x5EED_FA17),
            redis,
            redis_pid,
            aim,
            hush: Arc::clone(&traffic.hush),
            focus: Arc::clone(&traffic.focus),
            faults: Vec::new(),
        }
    }

    /// Injects faults until `until`, then one more at once, so that the
    /// check that service resumes times a fresh recovery; returns when that
    /// last recovery was complete.
    pub async fn run(&mut self, replicas: &mut Replicas, until: Secs) -> Secs {
        loop {
            let gap = self.rng.random_range(RECOVERY);
            if now() + gap >= until {
                tokio::time::sleep(seconds(until - now())).await;
                break;
            }
            tokio::time::sleep(seconds(gap)).await;
            self.inject(replicas, false).await;
        }
        loop {
            if let Some(last) = self.inject(replicas, true).await {
                return last.end;
            }
        }
    }

    /// One fault, drawn at random (the last one not aimed, so that it comes
    /// at once), and its recovery; `None` when an aimed one found nothing
    /// to aim at.
    async fn inject(&mut self, replicas: &mut Replicas, last: bool) -> Option<Fault> {
        let weights: Vec<(Kind, u32)> = WEIGHTS
            .into_iter()
            .filter(|(kind, _)| !(last && kind.is_aimed()))
            .collect();
        let total: u32 = weights.iter().map(|(_, weight)| weight).sum();
        let mut roll = self.rng.random_range(0..total);
        let kind = weights
            .iter()
            .find(|(_, weight)| {
                let hit = roll < *weight;
                roll = roll.saturating_sub(*weight);
                hit
            })
            .map(|(kind, _)| *kind)
            .unwrap();
        let replica = self.rng.random_range(0..REPLICAS);
        let fault = match kind {
            Kind::ReplicaKill => {
                let start = now();
                replicas.kill(replica);
                let down = self.rng.random_range(0.3..1.5);
                tokio::time::sleep(seconds(down)).await;
                let ready = replicas.launch(replica).await;
                Fault {
                    kind: FaultKind::ReplicaKill(replica),
                    start,
                    end: ready,
                    down: None,
                    aimed_at: None,
                }
            }
            Kind::ReplicaStop => {
                let stopped = self.rng.random_range(1.0..3.0);
                let start = now();
                replicas.signal(replica, libc::SIGSTOP);
                tokio::time::sleep(seconds(stopped)).await;
                replicas.signal(replica, libc::SIGCONT);
                Fault {
                    kind: FaultKind::ReplicaStop(replica),
                    start,
                    end: now(),
                    down: None,
                    aimed_at: None,
                }
            }
            Kind::RedisRestart => {
                let start = now();
                self.on_server(RedisServer::kill).await;
                let dead = self.rng.random_range(0.3..1.5);
                tokio::time::sleep(seconds(dead)).await;
                let starting = now();
                self.on_server(RedisServer::restart).await;
                let end = now();
                let host = Arc::clone(&self.redis);
                self.redis_pid = tokio::task::spawn_blocking(move || host.pid())
                    .await
                    .unwrap();
                Fault {
                    kind: FaultKind::RedisRestart,
                    start,
                    end,
                    down: Some((start, starting)),
                    aimed_at: None,
                }
            }
            Kind::FlushAll => self.instant(FaultKind::FlushAll, &["FLUSHALL"]).await,
            Kind::ScriptFlush => {
                self.instant(FaultKind::ScriptFlush, &["SCRIPT", "FLUSH"])
                    .await
            }
            Kind::ClientKill => {
                self.instant(FaultKind::ClientKill, &["CLIENT", "KILL", "TYPE", "normal"])
                    .await
            }
            Kind::DebugSleep => {
                let sleep = (self.rng.random_range(1.0..2.0_f64) * 10.0).round() / 10.0;
                let start = now();
                let socket = self.redis.socket.clone();
                let asleep = sleep.to_string();
                tokio::task::spawn_blocking(move || {
                    command(
                        &socket,
                        &["DEBUG", "SLEEP", &asleep],
                        Duration::from_secs(10),
                    )
                })
                .await
                .unwrap()
                .expect("DEBUG SLEEP is allowed on the local socket");
                Fault {
                    kind: FaultKind::DebugSleep,
                    start,
                    end: now(),
                    // Asleep for `sleep` from some moment after `start`.
                    down: Some((start, start + sleep)),
                    aimed_at: None,
                }
            }
            Kind::ClientKillAt(reply) => {
                const KILL: &[&str] = &["CLIENT", "KILL", "TYPE", "normal"];
                self.aimed(reply, FaultKind::ClientKill, KILL, Aiming::Before)
                    .await?
            }
            Kind::FlushAllAfter(reply) => {
                let after = self.rng.random_range(FLUSH_AFTER);
                self.aimed(
                    reply,
                    FaultKind::FlushAll,
                    &["FLUSHALL"],
                    Aiming::After(after),
                )
                .await?
            }
            Kind::RedisStop => {
                let stopped = self.rng.random_range(1.0..3.0);
                let start = now();
                // SAFETY: kill only sends a signal to the server this test started.
                unsafe { libc::kill(self.redis_pid, libc::SIGSTOP) };
                tokio::time::sleep(seconds(stopped)).await;
                let end = now();
                // SAFETY: as above.
                unsafe { libc::kill(self.redis_pid, libc::SIGCONT) };
                Fault {
                    kind: FaultKind::RedisStop,
                    start,
                    end,
                    down: Some((start, end)),
                    aimed_at: None,
                }
            }
        };
        println!(
            "{:8.2} s  fault {}{} until {:.2} s",
            fault.start,
            describe(fault.kind),
            fault
                .aimed_at
                .as_ref()
                .map_or(String::new(), |at| format!(" (aimed at {at})")),
            fault.end
        );
        self.faults.push(fault.clone());
        Some(fault)
    }

    /// The Redis command `args`, aimed at the stand-in's next answer of
    /// kind `reply`; `None` when no such answer comes within [`AIM_FOR`].
    async fn aimed(
        &mut self,
        reply: MpcReply,
        kind: FaultKind,
        args: &'static [&'static str],
        aiming: Aiming,
    ) -> Option<Fault> {
        let (done, mut fired) = tokio::sync::oneshot::channel();
        let socket = self.redis.socket.clone();
        let hush = Arc::clone(&self.hush);
        let fire = move |label: &str| {
            let (go_on, waits) = tokio::sync::oneshot::channel();
            let label = label.to_owned();
            std::thread::spawn(move || {
                match aiming {
                    Aiming::Before => {
                        hush.store(true, Ordering::SeqCst);
                        std::thread::sleep(seconds(HUSH));
                    }
                    Aiming::After(after) => {
                        let _ = go_on.send(());
                        std::thread::sleep(seconds(after));
                        let start = now();
                        let reply = command(&socket, args, Duration::from_secs(5));
                        let _ = done.send((start, now(), label, reply));
                        return;
                    }
                }
                let start = now();
                let reply = command(&socket, args, Duration::from_secs(5));
                let _ = done.send((start, now(), label, reply));
                let _ = go_on.send(());
            });
            waits
        };
        *self.aim.lock().unwrap() = Some(Aimed {
            reply,
            fire: Box::new(fire),
        });
        let struck = match tokio::time::timeout(AIM_FOR, &mut fired).await {
            Ok(struck) => struck,
            // Unless it fired meanwhile: then it is on its way.
            Err(_) if self.aim.lock().unwrap().take().is_some() => return None,
            Err(_) => fired.await,
        };
        // The call's settle goes first, then the clients again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.hush.store(false, Ordering::SeqCst);
        let (start, end, label, outcome) = struck.expect("an aimed fault reports");
        if let Err(error) = outcome {
            panic!("{kind:?}: Redis refused {args:?}: {error}");
        }
        // Asked often for as long as a window the fault may have harmed.
        *self.focus.lock().unwrap() = Some((label.clone(), end + FOCUS_FOR));
        Some(Fault {
            kind,
            start,
            end,
            down: None,
            aimed_at: Some(format!("the {} answer to {label}", reply.name())),
        })
    }

    /// A fault that is one Redis command.
    async fn instant(&self, kind: FaultKind, args: &'static [&'static str]) -> Fault {
        let socket = self.redis.socket.clone();
        let start = now();
        let reply =
            tokio::task::spawn_blocking(move || command(&socket, args, Duration::from_secs(5)))
                .await
                .unwrap();
        if let Err(error) = reply {
            panic!("{kind:?}: Redis refused {args:?}: {error}");
        }
        Fault {
            kind,
            start,
            end: now(),
            down: None,
            aimed_at: None,
        }
    }

    async fn on_server(&self, job: fn(&mut RedisServer)) {
        let host = Arc::clone(&self.redis);
        tokio::task::spawn_blocking(move || host.on_server(job))
            .await
            .unwrap();
    }
}

/// A fault's name, with its replica.
pub fn describe(kind: FaultKind) -> String {
    match kind.replica() {
        Some(replica) => format!("{} r{replica}", kind.name()),
        None => kind.name().to_owned(),
    }
}
