//! The audit trail: one JSON line per retrieve decision, so an operator can
//! answer "who asked for this label, and when, and what happened".

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

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
}

impl AuditEntry<'_> {
    /// The current time in the entry's format.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
}

/// Where audit lines go: a file opened for appending, or nowhere.
#[derive(Debug, Default)]
pub struct AuditLog {
    file: Option<Mutex<File>>,
}

impl AuditLog {
    /// An audit log appending to `path`, or a silent one when `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(path) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Self { file })
    }

    /// Whether lines are written anywhere.
    pub fn is_enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one line; each line is written whole with a single write.
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let Some(file) = &self.file else {
            return;
        };
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "cannot encode an audit entry");
                return;
            }
        };
        line.push(b'\n');
        let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = file.write_all(&line) {
            tracing::error!(%error, "cannot write the audit trail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::open(Some(&path)).unwrap();
        for (user, outcome) in [("alice", "sent"), ("bob", "deduplicated")] {
            log.record(&AuditEntry {
                timestamp: AuditEntry::now(),
                request_id: "r1",
                user: Some(user),
                label: Some("A10cnQO"),
                label_kind: "trksub",
                outcome,
                upstream_status: Some(200),
                email_may_have_been_triggered: outcome == "sent",
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
        AuditLog::open(None).unwrap().record(&AuditEntry {
            timestamp: AuditEntry::now(),
            request_id: "r",
            user: None,
            label: None,
            label_kind: "none",
            outcome: "unauthenticated",
            upstream_status: None,
            email_may_have_been_triggered: false,
        });
    }
}
