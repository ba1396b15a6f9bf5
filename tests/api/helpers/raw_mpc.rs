//! A fake MPC on a raw TCP socket, for the ways a connection can end that
//! an HTTP mock cannot produce: a close, a reset or a half-close after the
//! request was read, a cut-off answer, a 1xx or 3xx status.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A raw MPC: its base URL and how many whole requests it has read.
pub struct RawMpc {
    pub address: String,
    requests: Arc<AtomicUsize>,
}

impl RawMpc {
    /// Whole requests read so far, on every connection.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Starts an MPC that reads each request whole (head and body), counts it,
/// then hands the connection to `behave`.
pub async fn raw_mpc<F, Fut>(behave: F) -> RawMpc
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let behave = Arc::new(behave);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let behave = Arc::clone(&behave);
            tokio::spawn(async move {
                if read_message(&mut stream).await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    behave(stream).await;
                }
            });
        }
    });
    RawMpc { address, requests }
}

/// Reads one HTTP/1.1 message from a raw socket, head then `Content-Length`
/// bytes of body; returns its head, lowercased, or `None` when the
/// connection ends first.
pub async fn read_message(stream: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return Some(head);
            }
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The connection as a std socket that sends a TCP reset when dropped.
pub fn reset_on_close(stream: TcpStream) -> std::net::TcpStream {
    let socket = stream.into_std().unwrap();
    super::reset_on_drop(&socket);
    socket
}
