//! Logging set-up: the subscriber, its reloadable level, and rate limits on noisy lines.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::clock::{Clock, SystemClock, nanos};
use crate::config::{LogFormat, LogLevel, LogSettings};

/// A subscriber writing to `writer` in the configured format and level;
/// `ansi` colours the pretty format for a terminal.
pub fn subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    reloadable_subscriber(settings, writer, ansi).0
}

/// Changes the level of a running subscriber (on a configuration reload).
pub type LevelHandle = Box<dyn Fn(&LogLevel) -> Result<(), String> + Send + Sync>;

/// Like [`subscriber`], with a handle that changes its level later.
pub fn reloadable_subscriber<W>(
    settings: &LogSettings,
    writer: W,
    ansi: bool,
) -> (Box<dyn Subscriber + Send + Sync>, LevelHandle)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder().parse_lossy(settings.level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // One shape of handle for both formats, whose builder types differ.
    macro_rules! with_level_handle {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            let level: LevelHandle = Box::new(move |level: &LogLevel| {
                handle
                    .reload(EnvFilter::builder().parse_lossy(level.as_str()))
                    .map_err(|error| error.to_string())
            });
            (builder.finish().with(ClientErrors::new()), level)
        }};
    }
    match settings.format {
        LogFormat::Json => {
            let (subscriber, level) = with_level_handle!(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
            );
            (Box::new(subscriber), level)
        }
        LogFormat::Pretty => {
            let (subscriber, level) = with_level_handle!(builder.with_target(false));
            (Box::new(subscriber), level)
        }
    }
}

/// Where actix-http logs, at ERROR, each connection it drops over the
/// client's bytes (an unparsable or too large request head).
const ACTIX_DISPATCHER: &str = "actix_http::h1::dispatcher";

/// How that line starts; actix's other ERROR lines there are left alone.
const STREAM_ERROR: &str = "stream error: ";

/// At most one line per this long about requests the HTTP parser refused.
const CLIENT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Turns actix-http's per-connection "stream error" lines, which anyone can
/// cause, into rate-limited warnings that count the lines held back.
struct ClientErrors(LineLimit);

impl ClientErrors {
    fn new() -> Self {
        Self(LineLimit::new(
            Arc::new(SystemClock),
            CLIENT_ERROR_LOG_EVERY,
        ))
    }
}

impl<S: Subscriber> Layer<S> for ClientErrors {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::ERROR || metadata.target() != ACTIX_DISPATCHER {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let Some(error) = message.0.strip_prefix(STREAM_ERROR) else {
            return true;
        };
        if let Some(held_back) = self.0.admit() {
            tracing::warn!(
                error,
                held_back,
                "refused a request the HTTP parser could not read (held_back: \
                 such lines not logged since the last)"
            );
        }
        false
    }
}

/// An event's message text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// Lets one line through per interval and counts the ones held back.
pub struct LineLimit {
    clock: Arc<dyn Clock>,
    every: u64,
    next: AtomicU64,
    held_back: AtomicU64,
}

impl LineLimit {
    /// One line per `every` on `clock`, the first at once.
    pub fn new(clock: Arc<dyn Clock>, every: Duration) -> Self {
        Self {
            clock,
            every: nanos(every),
            next: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now, with how many were held back since the last.
    pub fn admit(&self) -> Option<u64> {
        let now = nanos(self.clock.now());
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Installs the process-wide subscriber writing to stdout; returns the
/// handle to its level, or `None` when a subscriber was already installed
/// (tests, embedding), which is then kept.
pub fn init(settings: &LogSettings) -> Option<LevelHandle> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (subscriber, level) = reloadable_subscriber(settings, std::io::stdout, ansi);
    tracing::subscriber::set_global_default(subscriber)
        .ok()
        .map(|()| level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let clock = Arc::new(crate::clock::FakeClock::default());
        let limit = LineLimit::new(clock.clone(), Duration::from_secs(10));
        assert_eq!(limit.admit(), Some(0), "the first line at once");
        assert_eq!(limit.admit(), None);
        clock.advance(Duration::from_secs(9));
        assert_eq!(limit.admit(), None);
        clock.advance(Duration::from_secs(1));
        assert_eq!(limit.admit(), Some(2), "two held back");
        assert_eq!(limit.admit(), None);
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_level_handle_changes_what_a_running_subscriber_writes() {
        for format in [LogFormat::Json, LogFormat::Pretty] {
            let settings = LogSettings {
                format,
                level: "info".to_owned().try_into().unwrap(),
                audit_file: Default::default(),
            };
            let lines = Lines::default();
            let writer = lines.clone();
            let (subscriber, level) =
                reloadable_subscriber(&settings, move || writer.clone(), false);
            tracing::subscriber::with_default(subscriber, || {
                tracing::debug!("before the reload");
                level(&"debug".to_owned().try_into().unwrap()).unwrap();
                tracing::debug!("after the reload");
            });
            let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("before the reload"), "{format:?}: {text}");
            assert!(text.contains("after the reload"), "{format:?}: {text}");
        }
    }
}
