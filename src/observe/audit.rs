//! The audit trail: one JSON line per retrieve decision, so an operator can
//! answer "who asked for this label, and when, and what happened".
//!
//! A line is in the file whole or not at all: a write that fails part-way
//! (a full disk) is cut back, counted in `audit_write_failures_total` and
//! reported in an ERROR at most once per [`REPORT_EVERY`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

use crate::clock::Clock;

/// At most one ERROR per this interval for lost lines; the others are
/// counted into the next one.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One retrieve decision.
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// When the decision was made (RFC 3339, UTC).
    pub timestamp: String,
    /// The request's id, as in its response and log lines.
    pub request_id: &'a str,
    /// Who asked; `None` when the caller could not be identified.
    pub user: Option<&'a str>,
    /// The label, when a valid one was read.
    pub label: Option<&'a str>,
    /// Its kind, or `none`.
    pub label_kind: &'a str,
    /// What became of the request (the `retrievals_total` outcome).
    pub outcome: &'a str,
    /// The MPC's status, when an MPC answer was involved.
    pub upstream_status: Option<u16>,
    /// Whether this request may have made the MPC send an email.
    pub email_may_have_been_triggered: bool,
    /// The MPC was `demo`'s simulation, so no email was sent; only written when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
}

impl AuditEntry<'_> {
    /// `at` in the entry's format.
    pub fn timestamp(at: SystemTime) -> String {
        humantime::format_rfc3339_millis(at).to_string()
    }
}

/// Where audit lines go: a file opened for appending, or nowhere.
pub struct AuditLog {
    trail: Option<Mutex<Trail>>,
    /// Lines lost, as `mpc_gateway_audit_write_failures_total`.
    failures: IntCounter,
    /// For spacing the ERRORs about lost lines.
    clock: Arc<dyn Clock>,
    /// The MPC is `demo`'s simulation: every line says so.
    simulated: bool,
}

impl AuditLog {
    /// An audit log appending to `path`, or a silent one when `None`; lost
    /// lines count in `failures`, and their ERRORs are spaced on `clock`.
    pub fn open(
        path: Option<&Path>,
        failures: IntCounter,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Self> {
        let trail = match path {
            Some(path) => {
                let mid_line = ends_mid_line(path);
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Some(Mutex::new(Trail::new(Box::new(file), mid_line)))
            }
            None => None,
        };
        Ok(Self {
            trail,
            failures,
            clock,
            simulated: false,
        })
    }

    /// The same log, recording decisions made in front of `demo`'s simulated MPC.
    pub fn simulated(self, simulated: bool) -> Self {
        Self { simulated, ..self }
    }

    /// Whether the decisions it records were made in front of a simulated MPC.
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// Whether lines are written anywhere.
    pub fn is_enabled(&self) -> bool {
        self.trail.is_some()
    }

    /// Appends one line, whole or not at all; a lost line is counted and
    /// reported.
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let Some(trail) = &self.trail else {
            return;
        };
        // A leading newline, sent only after a line that could not be cut back.
        let mut line = Vec::with_capacity(256);
        line.push(b'\n');
        let encoded = serde_json::to_writer(&mut line, entry);
        line.push(b'\n');
        let mut trail = trail
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = match encoded {
            Ok(()) => trail.append(&line),
            Err(error) => Err(io::Error::from(error)),
        };
        match result {
            Ok(()) => {
                if let Some(unreported) = trail.reports.written() {
                    tracing::warn!(
                        unreported,
                        "the audit trail is written again; {unreported} more lines were lost \
                         after the last ERROR"
                    );
                }
            }
            Err(error) => {
                self.failures.inc();
                if let Some(unreported) = trail.reports.lost(self.clock.now()) {
                    tracing::error!(
                        %error,
                        unreported,
                        "cannot write the audit trail: a line is lost ({unreported} more \
                         failures since the last report)"
                    );
                }
            }
        }
    }
}

/// Where lines are appended: the audit file, or a test's stand-in for one.
trait Sink: Write + Send {
    /// The current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Cuts back to `size` bytes.
    fn truncate(&mut self, size: u64) -> io::Result<()>;
}

impl Sink for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn truncate(&mut self, size: u64) -> io::Result<()> {
        self.set_len(size)
    }
}

/// The open trail, behind the log's mutex.
struct Trail {
    sink: Box<dyn Sink>,
    /// The file ends inside a line (one that could not be cut back, or left
    /// by a crash): the next line starts with a newline, so it is not glued on.
    mid_line: bool,
    reports: Reports,
}

impl Trail {
    fn new(sink: Box<dyn Sink>, mid_line: bool) -> Self {
        Self {
            sink,
            mid_line,
            reports: Reports::default(),
        }
    }

    /// Writes `line` (`\n`, the JSON, `\n`) whole, or leaves the file as it was.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let line = if self.mid_line { line } else { &line[1..] };
        let mut written = 0;
        let result = loop {
            if written == line.len() {
                break Ok(());
            }
            match self.sink.write(&line[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(error),
            }
        };
        match result {
            Ok(()) => {
                self.mid_line = false;
                Ok(())
            }
            Err(error) if written == 0 => Err(error),
            Err(error) => match self.cut_back(written) {
                Ok(()) => Err(error),
                Err(cut) => {
                    self.mid_line = true;
                    Err(io::Error::new(
                        error.kind(),
                        format!("{error}; and the partial line stays: {cut}"),
                    ))
                }
            },
        }
    }

    /// Removes the last `written` bytes, the part of a line that got in.
    ///
    /// Only this process appends to the file, so they are at its end.
    fn cut_back(&mut self, written: usize) -> io::Result<()> {
        let size = self.sink.size()?;
        let before = u64::try_from(written)
            .ok()
            .and_then(|written| size.checked_sub(written))
            .ok_or_else(|| io::Error::other("the file is shorter than what was written"))?;
        self.sink.truncate(before)
    }
}

/// Whether the file at `path` ends inside a line (its last write was cut
/// short by a crash or a full disk); `false` when it cannot be read.
fn ends_mid_line(path: &Path) -> bool {
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut last = [0];
    file.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.len() > 0)
        && file.seek(SeekFrom::End(-1)).is_ok()
        && file.read_exact(&mut last).is_ok()
        && last != *b"\n"
}

/// Spaces the ERRORs about lost lines: one per [`REPORT_EVERY`], carrying
/// how many failures went unreported since the previous one.
#[derive(Debug, Default)]
struct Reports {
    last: Option<Duration>,
    unreported: u64,
}

impl Reports {
    /// A line was lost at `now`: whether to report it, and if so how many
    /// failures since the last report were not.
    fn lost(&mut self, now: Duration) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_sub(last) < REPORT_EVERY)
        {
            self.unreported += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// A line was written: the failures not reported yet, once.
    fn written(&mut self) -> Option<u64> {
        (self.unreported > 0).then(|| std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn counter() -> IntCounter {
        IntCounter::new("audit_write_failures_total", "test").unwrap()
    }

    fn entry<'a>(request_id: &'a str) -> AuditEntry<'a> {
        AuditEntry {
            timestamp: AuditEntry::timestamp(SystemTime::now()),
            request_id,
            user: Some("alice"),
            label: Some("A10cnQO"),
            label_kind: "trksub",
            outcome: "sent",
            upstream_status: Some(200),
            email_may_have_been_triggered: true,
            simulated: false,
        }
    }

    /// A disk with `room` bytes left: a write beyond it gets in part, the
    /// next fails with ENOSPC, as on a full file system.
    #[derive(Clone, Default)]
    struct FakeDisk(Arc<Mutex<Disk>>);

    #[derive(Default)]
    struct Disk {
        bytes: Vec<u8>,
        room: usize,
        truncate_fails: bool,
    }

    impl FakeDisk {
        fn with_room(room: usize) -> Self {
            let disk = Self::default();
            disk.0.lock().unwrap().room = room;
            disk
        }

        fn free(&self, bytes: usize) {
            self.0.lock().unwrap().room += bytes;
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().bytes.clone()).unwrap()
        }

        fn log(&self, failures: &IntCounter, clock: Arc<dyn Clock>) -> AuditLog {
            AuditLog {
                trail: Some(Mutex::new(Trail::new(Box::new(self.clone()), false))),
                failures: failures.clone(),
                clock,
                simulated: false,
            }
        }
    }

    impl Write for FakeDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut disk = self.0.lock().unwrap();
            if disk.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(disk.room);
            disk.bytes.extend_from_slice(&buf[..n]);
            disk.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for FakeDisk {
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().bytes.len() as u64)
        }

        fn truncate(&mut self, size: u64) -> io::Result<()> {
            let mut disk = self.0.lock().unwrap();
            if disk.truncate_fails {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            let size = usize::try_from(size).unwrap();
            disk.room += disk.bytes.len() - size;
            disk.bytes.truncate(size);
            Ok(())
        }
    }

    fn parsed(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
            .collect()
    }

    #[test]
    fn lines_are_appended_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::open(Some(&path), counter(), Arc::new(FakeClock::default())).unwrap();
        for (user, outcome) in [("alice", "sent"), ("bob", "deduplicated")] {
            log.record(&AuditEntry {
                timestamp: AuditEntry::timestamp(SystemTime::now()),
                request_id: "r1",
                user: Some(user),
                label: Some("A10cnQO"),
                label_kind: "trksub",
                outcome,
                upstream_status: Some(200),
                email_may_have_been_triggered: outcome == "sent",
                simulated: false,
            });
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "appended after what was there");
        assert_eq!(lines[1]["user"], "alice");
        assert_eq!(lines[1]["email_may_have_been_triggered"], true);
        assert_eq!(lines[2]["outcome"], "deduplicated");
    }

    #[test]
    fn without_a_file_nothing_is_written() {
        let failures = counter();
        let log = AuditLog::open(None, failures.clone(), Arc::new(FakeClock::default())).unwrap();
        assert!(!log.is_enabled());
        log.record(&AuditEntry {
            timestamp: AuditEntry::timestamp(SystemTime::now()),
            request_id: "r",
            user: None,
            label: None,
            label_kind: "none",
            outcome: "unauthenticated",
            upstream_status: None,
            email_may_have_been_triggered: false,
            simulated: false,
        });
        assert_eq!(failures.get(), 0, "no trail is not a failing one");
    }

    #[test]
    fn a_full_disk_keeps_whole_lines_and_counts_the_lost_ones() {
        let disk = FakeDisk::with_room(1000);
        let failures = counter();
        let log = disk.log(&failures, Arc::new(FakeClock::default()));
        for n in 0..20 {
            log.record(&entry(&format!("r{n}")));
        }
        let text = disk.text();
        assert!(text.ends_with('\n'), "{text:?}");
        let kept = parsed(&text).len();
        assert!((1..20).contains(&kept), "{kept} lines kept");
        assert_eq!(failures.get(), 20 - kept as u64);

        // Room again: the next line starts on its own, nothing glued on.
        disk.free(1000);
        log.record(&entry("after"));
        let lines = parsed(&disk.text());
        assert_eq!(lines.len(), kept + 1);
        assert_eq!(lines[kept]["request_id"], "after");
        assert_eq!(failures.get(), 20 - kept as u64);
    }

    #[test]
    fn a_partial_line_that_cannot_be_cut_back_keeps_the_next_off_it() {
        let disk = FakeDisk::with_room(300);
        disk.0.lock().unwrap().truncate_fails = true;
        let failures = counter();
        let log = disk.log(&failures, Arc::new(FakeClock::default()));
        log.record(&entry("first"));
        log.record(&entry("cut"));
        assert_eq!(failures.get(), 1);
        disk.free(1000);
        log.record(&entry("next"));
        log.record(&entry("then"));

        let text = disk.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(lines[1]).is_err());
        for (line, id) in [(lines[0], "first"), (lines[2], "next"), (lines[3], "then")] {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["request_id"], id);
        }
    }

    #[test]
    fn a_file_left_mid_line_gets_the_next_line_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"whole\":true}\n{\"cut\":").unwrap();
        let log = AuditLog::open(Some(&path), counter(), Arc::new(FakeClock::default())).unwrap();
        log.record(&entry("after"));
        log.record(&entry("again"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["{\"whole\":true}", "{\"cut\":"], "{text}");
        assert_eq!(parsed(&lines[2..].join("\n")).len(), 2, "{text}");
    }

    #[test]
    fn every_line_lost_on_a_real_full_device_is_counted() {
        let failures = counter();
        let log = AuditLog::open(
            Some(Path::new("/dev/full")),
            failures.clone(),
            Arc::new(FakeClock::default()),
        )
        .unwrap();
        for n in 0..3 {
            log.record(&entry(&format!("r{n}")));
        }
        assert_eq!(failures.get(), 3);
    }

    #[test]
    fn lost_lines_are_reported_once_per_interval_with_the_count_since() {
        let mut reports = Reports::default();
        let at = Duration::from_secs;
        assert_eq!(reports.lost(at(100)), Some(0));
        assert_eq!(reports.lost(at(101)), None);
        assert_eq!(reports.lost(at(109)), None);
        assert_eq!(reports.lost(at(110)), Some(2));
        assert_eq!(reports.written(), None, "all reported");
        assert_eq!(reports.lost(at(111)), None);
        assert_eq!(reports.written(), Some(1));
        assert_eq!(reports.written(), None);
        assert_eq!(reports.lost(at(125)), Some(0));
    }

    /// A log writer for one test thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_logs_one_error_per_interval() {
        let captured = Captured::default();
        let settings = crate::config::LogSettings {
            format: crate::config::LogFormat::Json,
            ..crate::config::Settings::load_from(None, Some(Default::default()))
                .unwrap()
                .log
        };
        let writer = captured.clone();
        let subscriber =
            crate::observe::logging::subscriber(&settings, move || writer.clone(), false);
        let clock = Arc::new(FakeClock::default());
        let disk = FakeDisk::with_room(0);
        let failures = counter();
        let log = disk.log(&failures, clock.clone());
        tracing::subscriber::with_default(subscriber, || {
            // Other tests hit the same callsites with no subscriber, which
            // can leave them cached as never interested: ask again.
            tracing::callsite::rebuild_interest_cache();
            for n in 0..5 {
                log.record(&entry(&format!("r{n}")));
            }
            clock.advance(REPORT_EVERY);
            log.record(&entry("reported with the four before"));
            log.record(&entry("reported once written again"));
            disk.free(1000);
            log.record(&entry("written"));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let logged = |level| -> Vec<serde_json::Value> {
            parsed(&text)
                .into_iter()
                .filter(|line| line["level"] == level)
                .collect()
        };
        let errors = logged("ERROR");
        assert_eq!(errors.len(), 2, "{text}");
        assert_eq!(errors[0]["unreported"], 0);
        assert_eq!(errors[1]["unreported"], 4);
        let warnings = logged("WARN");
        assert_eq!(warnings.len(), 1, "{text}");
        assert_eq!(warnings[0]["unreported"], 1);
        assert_eq!(failures.get(), 7);
    }

    #[test]
    fn only_lines_written_in_demo_mode_say_simulated() {
        let real = serde_json::to_value(entry("r1")).unwrap();
        assert!(real.get("simulated").is_none(), "{real}");
        let demo = AuditEntry {
            simulated: true,
            ..entry("r2")
        };
        assert_eq!(serde_json::to_value(demo).unwrap()["simulated"], true);
    }
}
