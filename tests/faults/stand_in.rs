//! The stand-in MPC: a raw HTTP/1.1 server (keep-alive, as the MPC's own)
//! on a thread and runtime of its own, so that its clock is not held up by
//! the clients. It answers by the label's first two letters
//! ([`MpcReply::of`]) and logs every call: label, replica, when it was read,
//! when and what it answered, and whether the answer could be written.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::log::{Call, MpcReply, Secs, now, seconds};

/// The User-Agent of replica `n` is this followed by `n`.
pub const USER_AGENT_PREFIX: &str = "fault-replica-";

/// The longest random delay before an answer within the timeout.
const MAX_DELAY: Secs = 0.3;

/// How far past the gateway's `upstream.timeout` a late answer comes.
const LATE_BY: Secs = 0.5;

/// Something to do just before the stand-in next writes an answer of a
/// kind, given the label: a fault aimed at that moment. The answer waits
/// (a second at most) until the receiver it returns is told to go on.
pub struct Aimed {
    pub reply: MpcReply,
    pub fire: Fire,
}

/// What an aimed fault does, given the label; the answer goes on once the
/// receiver it returns is told to.
pub type Fire = Box<dyn FnOnce(&str) -> oneshot::Receiver<()> + Send>;

/// The longest an answer waits for the fault aimed at it.
const AIMED_WAIT: Duration = Duration::from_secs(1);

/// The fault aimed at the next answer of its kind, if one is.
pub type Aim = Arc<Mutex<Option<Aimed>>>;

/// The running stand-in: its base URL, its call log and its aim.
pub struct StandIn {
    pub base_url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    pub aim: Aim,
}

impl StandIn {
    /// Every call so far; one still under way is shown as ended now, its
    /// answer not delivered.
    pub fn calls(&self) -> Vec<Call> {
        let at = now();
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|call| {
                let mut call = call.clone();
                if call.ended.is_nan() {
                    call.ended = at;
                    call.delivered = false;
                }
                call
            })
            .collect()
    }
}

/// Starts the stand-in on a loopback port; `timeout` is the gateways'
/// `upstream.timeout`, which late answers overrun.
pub fn start(seed: u64, timeout: Duration) -> StandIn {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&calls);
    let aim: Aim = Arc::default();
    let aimed = Arc::clone(&aim);
    std::thread::Builder::new()
        .name("stand-in-mpc".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut rng = StdRng::seed_from_u64(seed);
                while let Ok((stream, _)) = listener.accept().await {
                    let connection = Connection {
                        log: Arc::clone(&log),
                        aim: Arc::clone(&aimed),
                        rng: StdRng::seed_from_u64(rng.random()),
                        late: timeout.as_secs_f64() + LATE_BY,
                    };
                    tokio::spawn(connection.serve(stream));
                }
            });
        })
        .unwrap();
    StandIn {
        base_url,
        calls,
        aim,
    }
}

struct Connection {
    log: Arc<Mutex<Vec<Call>>>,
    aim: Aim,
    rng: StdRng,
    late: Secs,
}

impl Connection {
    /// Answers requests on one connection until it ends.
    async fn serve(mut self, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        while let Some((head, body)) = read_request(&mut stream, &mut buffer).await {
            let read = now();
            let label = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|body| body["label"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let replica = head.lines().find_map(|line| {
                let agent = line.strip_prefix("user-agent:")?.trim();
                agent.strip_prefix(USER_AGENT_PREFIX)?.parse().ok()
            });
            let reply = MpcReply::of(&label);
            let index = {
                let mut log = self.log.lock().unwrap();
                log.push(Call {
                    label: label.clone(),
                    replica,
                    read,
                    ended: Secs::NAN,
                    reply,
                    delivered: false,
                });
                log.len() - 1
            };
            let (delay, status, body) = match reply {
                MpcReply::Accepted => (self.delay(), 200, r#"{"message":"queued"}"#),
                MpcReply::Rejected => (self.delay(), 404, r#"{"error":"unknown label"}"#),
                MpcReply::ServerError => (self.delay(), 500, r#"{"error":"internal"}"#),
                MpcReply::Late => (self.late, 200, r#"{"message":"queued"}"#),
                MpcReply::Closed => {
                    self.end(index, true);
                    return;
                }
            };
            tokio::time::sleep(seconds(delay)).await;
            let aimed = {
                let mut aim = self.aim.lock().unwrap();
                match &*aim {
                    Some(aimed) if aimed.reply == reply => aim.take(),
                    _ => None,
                }
            };
            if let Some(aimed) = aimed {
                let go_on = (aimed.fire)(&label);
                let _ = tokio::time::timeout(AIMED_WAIT, go_on).await;
            }
            let ended = now();
            let answer = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                reason(status),
                body.len()
            );
            let delivered = stream.write_all(answer.as_bytes()).await.is_ok();
            {
                let mut log = self.log.lock().unwrap();
                log[index].ended = ended;
                log[index].delivered = delivered;
            }
            if !delivered {
                return;
            }
        }
    }

    fn delay(&mut self) -> Secs {
        self.rng.random_range(0.0..MAX_DELAY)
    }

    fn end(&self, index: usize, delivered: bool) {
        let mut log = self.log.lock().unwrap();
        log[index].ended = now();
        log[index].delivered = delivered;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Internal Server Error",
    }
}

/// Reads one request (head and `Content-Length` bytes of body) from
/// `stream`, keeping what follows it in `buffer` for the next; the head is
/// lowercased. `None` when the connection ends first.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let body = buffer[end + 4..end + 4 + length].to_vec();
                buffer.drain(..end + 4 + length);
                return Some((head, body));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
