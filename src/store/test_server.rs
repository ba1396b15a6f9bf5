//! A real `redis-server` for tests, started on a unix socket of its own
//! (no port to race for), without persistence, and stopped by PID when
//! dropped. Shared by the unit tests and the HTTP tests (`tests/api_redis.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `redis-server` process of this test run.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("redis-test-")
            .tempdir()
            .expect("a directory for the server's socket");
        let mut server = Self { child: None, dir };
        server.restart();
        server
    }

    /// The server shared by every test of this process that needs no server
    /// of its own; each keeps apart by a key prefix of its own.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            // The server dies with the thread that started it: one that lives
            // as long as the process.
            let (started, server) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                started.send(Self::start()).expect("the starter waits");
                loop {
                    std::thread::park();
                }
            });
            server.recv().expect("the shared Redis server starts")
        })
    }

    /// The server's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The `store.redis_url` that reaches it.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Stops the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts the server again on the same socket, empty.
    pub fn restart(&mut self) {
        self.kill();
        let socket = self.socket();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--enable-debug-command", "local", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl only asks the kernel to signal the child when the
        // thread that started it ends; it touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start redis-server (scripts/test installs it): {error}")
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(&socket, Duration::from_secs(1)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server did not answer on {} within 10 s",
            socket.display()
        );
    }

    /// Whether the server answers PING within `wait`.
    pub fn answers_within(&self, wait: Duration) -> bool {
        ping(&self.socket(), wait)
    }

    /// Runs one command with `redis-cli` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server answers PING on `socket` within `wait`.
fn ping(socket: &Path, wait: Duration) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(wait));
    let mut answer = [0_u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}
