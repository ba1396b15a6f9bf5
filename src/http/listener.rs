//! The public listener's connections: a cap on how many are held at once, the
//! open-file limit that cap must fit under, and a request-head deadline on every
//! request of a kept-alive connection, not only its first.
//!
//! actix-http times only a connection's first request head (its dispatcher
//! clears the head timer for good once a request is parsed, and clears the
//! keep-alive timer as soon as any byte of the next one arrives), so a client
//! that trickles the second head keeps the connection forever. Each accepted
//! socket is therefore wrapped in a [`WatchedStream`], which the
//! `request_context` middleware tells when a request begins and ends.

use std::cell::Cell;
use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::HttpService;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::App;
use actix_web::dev::{AppConfig, Extensions, Server};
use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http::AppFactory;

/// How often a connection's clocks are checked; deadlines count whole ticks.
const TICK: Duration = Duration::from_secs(1);

/// File descriptors kept free of public connections: the admin listener and
/// its clients, MPC connections, the state and audit files, the runtime's own.
pub const RESERVED_FILES: u64 = 256;

/// How the public listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest a request head may take, from its first byte.
    pub head_timeout: Duration,
    /// How long an idle kept-alive connection is kept open.
    pub keep_alive: Duration,
    /// Most connections held at once, all workers together.
    pub max_connections: usize,
    /// Worker threads.
    pub workers: usize,
    /// Seconds a stopping worker waits for its requests.
    pub shutdown_timeout: u64,
}

impl ConnectionLimits {
    /// Each worker's share of `max_connections` (actix counts per worker),
    /// rounded down so the total stays under it, but at least one.
    pub fn per_worker(&self) -> usize {
        (self.max_connections / self.workers.max(1)).max(1)
    }
}

/// Builds the public server on `listener`: `app` per worker, every socket watched.
pub fn public_server<F, A>(
    listener: TcpListener,
    limits: ConnectionLimits,
    app: F,
) -> io::Result<Server>
where
    F: Fn() -> App<A> + Send + Clone + 'static,
    A: AppFactory + 'static,
{
    let addr = listener.local_addr()?;
    let deadlines = Deadlines {
        head_ticks: ticks(limits.head_timeout),
        // Beyond actix's own keep-alive close: reached only by a connection
        // holding a pipelined partial head, which actix no longer times.
        idle_ticks: ticks(limits.keep_alive + limits.head_timeout),
    };
    Ok(actix_server::Server::build()
        .workers(limits.workers)
        .max_concurrent_connections(limits.per_worker())
        .disable_signals()
        .shutdown_timeout(limits.shutdown_timeout)
        .listen("public", listener, move || {
            let http = HttpService::build()
                .client_request_timeout(limits.head_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .keep_alive(limits.keep_alive)
                .local_addr(addr)
                .on_connect_ext(|io: &WatchedStream, data: &mut Extensions| {
                    data.insert(io.watch.clone());
                })
                .h1(map_config(
                    app()
                        .into_factory()
                        .map_err(|error: actix_web::Error| error.error_response()),
                    // The default names 127.0.0.1:8080; nothing here reads it.
                    |_| AppConfig::default(),
                ));
            // Bytes read with no request in service start a head clock that the
            // middleware stops when the request begins; overstaying fails the read.
            fn_service(move |io: TcpStream| async move {
                let peer = io.peer_addr().ok();
                Ok((WatchedStream::new(io, deadlines), peer))
            })
            .and_then(http)
        })?
        .run())
}

fn ticks(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs().div_ceil(TICK.as_secs()).max(1)).unwrap_or(u32::MAX)
}

/// A connection's requests as the middleware sees them; shared with its socket.
#[derive(Clone, Default)]
pub struct ConnectionWatch(Rc<Requests>);

#[derive(Default)]
struct Requests {
    /// Requests begun on the connection (wrapping).
    begun: Cell<u32>,
    /// Requests begun and not yet answered.
    serving: Cell<u32>,
}

impl ConnectionWatch {
    /// Marks a request as begun (its head arrived whole) until the guard is dropped.
    pub fn serve(&self) -> Serving {
        let requests = &self.0;
        requests.begun.set(requests.begun.get().wrapping_add(1));
        requests.serving.set(requests.serving.get() + 1);
        Serving(Rc::clone(&self.0))
    }
}

/// A request being served on a watched connection.
pub struct Serving(Rc<Requests>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.set(self.0.serving.get().saturating_sub(1));
    }
}

#[derive(Debug, Clone, Copy)]
struct Deadlines {
    head_ticks: u32,
    idle_ticks: u32,
}

/// Why a watched connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overstay {
    /// A request head took longer than the head deadline.
    Head,
    /// No request began for longer than keep-alive and a head deadline.
    Idle,
}

/// The clocks of one connection, advanced by bytes read and by ticks.
#[derive(Debug)]
struct Clocks {
    deadlines: Deadlines,
    /// `begun` when bytes arrived with no request in service: a head is
    /// awaited until a request begins.
    head_after: Option<u32>,
    head_ticks: u32,
    begun_at_tick: u32,
    idle_ticks: u32,
}

impl Clocks {
    fn new(deadlines: Deadlines) -> Self {
        Self {
            deadlines,
            head_after: None,
            head_ticks: 0,
            begun_at_tick: 0,
            idle_ticks: 0,
        }
    }

    /// Bytes arrived: with no request in service they start a head's clock.
    #[inline]
    fn bytes_read(&mut self, requests: &Requests) {
        let begun = requests.begun.get();
        if requests.serving.get() == 0 && self.head_after != Some(begun) {
            self.head_after = Some(begun);
            self.head_ticks = 0;
        }
    }

    /// A tick passed: whether the connection has outstayed a deadline.
    fn tick(&mut self, requests: &Requests) -> Option<Overstay> {
        let begun = requests.begun.get();
        if self.head_after == Some(begun) {
            self.head_ticks += 1;
            if self.head_ticks >= self.deadlines.head_ticks {
                return Some(Overstay::Head);
            }
        } else {
            self.head_after = None;
        }
        if begun == self.begun_at_tick && requests.serving.get() == 0 {
            self.idle_ticks += 1;
            if self.idle_ticks >= self.deadlines.idle_ticks {
                return Some(Overstay::Idle);
            }
        } else {
            self.begun_at_tick = begun;
            self.idle_ticks = 0;
        }
        None
    }
}

/// An accepted public socket that fails its reads once the client overstays
/// a deadline, which makes actix drop the connection.
pub struct WatchedStream {
    io: TcpStream,
    watch: ConnectionWatch,
    clocks: Clocks,
    tick: Pin<Box<Sleep>>,
    tick_registered: bool,
}

impl WatchedStream {
    fn new(io: TcpStream, deadlines: Deadlines) -> Self {
        Self {
            io,
            watch: ConnectionWatch::default(),
            clocks: Clocks::new(deadlines),
            tick: Box::pin(tokio::time::sleep(TICK)),
            tick_registered: false,
        }
    }

    /// Runs the ticks that are due; an error once a deadline is overstayed.
    fn check_ticks(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // A registered timer wakes this task when due: until then a load suffices.
        while !self.tick_registered || self.tick.is_elapsed() {
            if self.tick.as_mut().poll(cx).is_pending() {
                self.tick_registered = true;
                return Ok(());
            }
            if let Some(overstay) = self.clocks.tick(&self.watch.0) {
                tracing::debug!(?overstay, "closing a public connection that overstayed");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client overstayed a connection deadline",
                ));
            }
            // Ticks missed while actix did not read count once, not many times.
            let (next, now) = (self.tick.deadline() + TICK, Instant::now());
            self.tick
                .as_mut()
                .reset(if next > now { next } else { now + TICK });
            self.tick_registered = false;
        }
        Ok(())
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clocks.bytes_read(&this.watch.0);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.check_ticks(cx) {
                Ok(()) => Poll::Pending,
                Err(error) => Poll::Ready(Err(error)),
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Raises this process's soft open-file limit to its hard limit and returns
/// the limit now in force (`None` where it cannot be read).
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        // rlim_t is u64 on Linux but not on every unix.
        #[allow(clippy::useless_conversion)]
        Some(u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The public connection cap that fits `configured` under the open-file
/// `limit` with [`RESERVED_FILES`] to spare; `None` when nothing fits.
pub fn connection_cap(configured: usize, limit: Option<u64>) -> Option<usize> {
    let Some(limit) = limit else {
        return Some(configured);
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    (room > 0).then(|| configured.min(room))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines = Deadlines {
        head_ticks: 5,
        idle_ticks: 35,
    };

    fn ticks_until_closed(clocks: &mut Clocks, requests: &Requests, most: u32) -> Option<u32> {
        (1..=most).find(|_| clocks.tick(requests).is_some())
    }

    #[test]
    fn a_head_after_an_answer_must_arrive_within_its_ticks() {
        let watch = ConnectionWatch::default();
        let mut clocks = Clocks::new(DEADLINES);
        clocks.bytes_read(&watch.0);
        drop(watch.serve());
        assert_eq!(clocks.tick(&watch.0), None, "the first head arrived");

        clocks.bytes_read(&watch.0);
        for _ in 0..3 {
            clocks.bytes_read(&watch.0);
            assert_eq!(clocks.tick(&watch.0), None);
        }
        clocks.bytes_read(&watch.0);
        assert_eq!(clocks.tick(&watch.0), None);
        assert_eq!(
            clocks.tick(&watch.0),
            Some(Overstay::Head),
            "trickled bytes do not help"
        );
    }

    #[test]
    fn bytes_read_while_a_request_is_served_start_no_clock() {
        let watch = ConnectionWatch::default();
        let mut clocks = Clocks::new(DEADLINES);
        clocks.bytes_read(&watch.0);
        let serving = watch.serve();
        clocks.bytes_read(&watch.0);
        assert_eq!(
            ticks_until_closed(&mut clocks, &watch.0, 60),
            None,
            "a slow MPC call"
        );
        drop(serving);
    }

    #[test]
    fn a_connection_where_no_request_begins_is_closed_after_keep_alive() {
        let watch = ConnectionWatch::default();
        let mut clocks = Clocks::new(DEADLINES);
        clocks.bytes_read(&watch.0);
        drop(watch.serve());
        // The first tick sees the request begin; the idle clock starts there.
        assert_eq!(
            ticks_until_closed(&mut clocks, &watch.0, 60),
            Some(DEADLINES.idle_ticks + 1)
        );
    }

    #[test]
    fn the_cap_is_split_between_workers_and_never_exceeded() {
        let limits = |max_connections, workers| ConnectionLimits {
            head_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            max_connections,
            workers,
            shutdown_timeout: 1,
        };
        assert_eq!(limits(20, 2).per_worker(), 10);
        assert_eq!(limits(20, 3).per_worker(), 6);
        assert_eq!(limits(1, 4).per_worker(), 1);
    }

    #[test]
    fn the_cap_leaves_room_under_the_open_file_limit() {
        assert_eq!(connection_cap(10_000, Some(1_048_576)), Some(10_000));
        assert_eq!(connection_cap(10_000, Some(1_024)), Some(768));
        assert_eq!(connection_cap(10_000, Some(RESERVED_FILES)), None);
        assert_eq!(connection_cap(10_000, None), Some(10_000));
    }
}
