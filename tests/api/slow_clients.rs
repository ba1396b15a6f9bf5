//! Slow and broken clients: every request head meets its deadline, public
//! connections are capped below the open-file limit, and requests the HTTP
//! parser refuses are not logged at ERROR.

use std::io::BufRead;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::raw_mpc::read_message;
use crate::helpers::{ChildLogs, Running, spawn_app, spawn_app_with};

/// The gateway's request-head deadline.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// What a trickler sends after its first answer: a head that never ends.
const TRICKLED_HEAD: &[u8] = b"GET /openapi.json HTTP/1.1\r\nHost: gateway\r\nX-Slow: ";

const FIRST_REQUEST: &[u8] = b"GET /openapi.json HTTP/1.1\r\nHost: gateway\r\n\r\n";

fn socket_address(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Reads one response with a `Content-Length` body; returns its status line.
async fn read_response(conn: &mut TcpStream) -> String {
    let head = read_message(conn)
        .await
        .expect("the response arrives whole");
    head.lines().next().unwrap_or_default().to_owned()
}

/// A connection that has been answered once and kept alive.
async fn kept_alive(address: &str) -> TcpStream {
    let mut conn = TcpStream::connect(address).await.unwrap();
    conn.write_all(FIRST_REQUEST).await.unwrap();
    assert_eq!(read_response(&mut conn).await, "http/1.1 200 ok");
    conn
}

/// Sends the never-ending head a byte per `every` until the server closes the
/// connection or answers 408; how long that took, or `None` after `most`.
async fn trickle(conn: &mut TcpStream, every: Duration, most: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut answer = [0u8; 256];
    let bytes = TRICKLED_HEAD.iter().chain(std::iter::repeat(&b'a'));
    for byte in bytes {
        if started.elapsed() > most {
            return None;
        }
        if conn.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        match tokio::time::timeout(every, conn.read(&mut answer)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(n)) => {
                let answer = String::from_utf8_lossy(&answer[..n]);
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
                return Some(started.elapsed());
            }
        }
    }
    unreachable!("the trickled bytes never end")
}

/// Whether the server has closed `conn` (checked without waiting).
fn closed(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match conn.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("a trickler got an answer"),
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test]
async fn a_second_head_trickled_on_a_kept_alive_connection_meets_the_deadline() {
    let app = spawn_app().await;
    let mut conn = kept_alive(socket_address(&app.address)).await;

    let closed_after = trickle(&mut conn, Duration::from_millis(500), 3 * HEAD_DEADLINE)
        .await
        .expect("the server gave up on the trickled head");

    assert!(
        closed_after <= HEAD_DEADLINE + Duration::from_millis(1500),
        "closed only after {closed_after:?}"
    );
}

#[tokio::test]
async fn trickling_clients_fill_only_the_public_cap() {
    const CAP: usize = 20;
    let app = spawn_app_with(|settings| {
        settings.server.max_connections = CAP.try_into().unwrap();
    })
    .await;
    let address = socket_address(&app.address);
    let mut tricklers = Vec::new();
    for _ in 0..CAP {
        let mut conn = kept_alive(address).await;
        conn.write_all(&TRICKLED_HEAD[..1]).await.unwrap();
        tricklers.push(conn);
    }

    let asked = Instant::now();
    let health = app.admin_get("/healthz").await;
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "admin took {:?}",
        asked.elapsed()
    );

    let fresh = app.public_get("/openapi.json").await;
    assert_eq!(fresh.status().as_u16(), 200);
    let freed = tricklers.iter().filter(|conn| closed(conn)).count();
    assert!(
        freed > 0,
        "served while all {CAP} trickling connections were still held"
    );
}

/// The binary on ports the kernel picks with JSON logs on a pipe, once
/// serving, and the lines it writes; `customise` adjusts its command first.
fn run_binary_logging(
    customise: impl FnOnce(&mut std::process::Command),
) -> (Running, std::sync::mpsc::Receiver<Value>) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mpc-action-gateway"));
    command
        .env("MPC_GATEWAY__SERVER__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__ADMIN__LISTEN", "127.0.0.1:0")
        .env("MPC_GATEWAY__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::piped());
    customise(&mut command);
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let parsed = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if lines.send(parsed).is_err() {
                break;
            }
        }
    });
    let serving = lines_until(&received, |line| {
        line["message"] == "mpc-action-gateway serving"
    });
    let serving = serving.last().unwrap();
    let address = |listener: &str| format!("http://{}", serving[listener].as_str().unwrap());
    let running = Running {
        public: address("public"),
        admin: address("admin"),
        child,
        logs: ChildLogs::none(),
    };
    (running, received)
}

/// Log lines up to and including the first that `last` accepts.
fn lines_until(
    received: &std::sync::mpsc::Receiver<Value>,
    last: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut lines = Vec::new();
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no such line among {lines:#?}"));
        let done = last(&line);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[tokio::test]
async fn requests_the_parser_refuses_get_400_and_no_error_line() {
    let (running, received) = run_binary_logging(|_| {});

    let mut conn = TcpStream::connect(socket_address(&running.public))
        .await
        .unwrap();
    conn.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let mut lines = lines_until(&received, |line| {
        line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("refused a request the HTTP parser could not read"))
    });
    let refused = lines.last().unwrap().clone();
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert_eq!(refused["held_back"], 0, "{refused}");
    // A later line: whatever actix would log for the garbage is written by then.
    let health = reqwest::get(format!("{}/healthz", running.admin))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    lines.extend(lines_until(&received, |line| {
        line["message"] == "request finished" && line["span"]["route"] == "/healthz"
    }));
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_binary_raises_its_open_files_limit_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;

    let (running, _lines) = run_binary_logging(|command| {
        // SAFETY: only getrlimit and setrlimit run in the child before exec.
        unsafe {
            command.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = limit.rlim_cur.min(512);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    });

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", running.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    let (soft, hard) = (open_files[3], open_files[4]);
    assert_eq!(soft, hard, "{limits}");
}
