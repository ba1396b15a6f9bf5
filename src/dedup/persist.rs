//! The state file: remembered outcomes survive a restart.
//!
//! Written whole to a temporary file beside the target and renamed over it,
//! so a crash leaves either the old file or the new one, never half of one.
//! A file that is missing, truncated, corrupt or of another version is
//! reported and ignored: the gateway then starts with an empty memory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Dedup, Outcome, Remembered, Uncertainty};
use crate::label::Label;
use crate::upstream::MpcAnswer;

/// Version of the file format; bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(with = "humantime_serde")]
    saved_at: SystemTime,
    entries: Vec<Entry>,
}

/// One remembered outcome, in plain fields: a raw JSON body cannot pass
/// through serde's buffering of tagged or flattened enums.
#[derive(Serialize, Deserialize)]
struct Entry {
    label: String,
    outcome: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<MpcAnswer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<Uncertainty>,
    #[serde(with = "humantime_serde")]
    requested_at: SystemTime,
    #[serde(with = "humantime_serde")]
    expires_at: SystemTime,
    user: String,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Sent,
    Rejected,
    Uncertain,
}

impl Entry {
    fn new(label: &Label, remembered: &Remembered) -> Self {
        let (outcome, upstream, reason) = match remembered.outcome() {
            Outcome::Sent { upstream } => (Kind::Sent, Some(upstream.clone()), None),
            Outcome::Rejected { upstream } => (Kind::Rejected, Some(upstream.clone()), None),
            Outcome::Uncertain { reason } => (Kind::Uncertain, None, Some(*reason)),
        };
        Self {
            label: label.as_str().to_owned(),
            outcome,
            upstream,
            reason,
            requested_at: remembered.requested_at(),
            expires_at: remembered.expires_at(),
            user: remembered.user().to_owned(),
        }
    }

    fn outcome(self) -> Option<Outcome> {
        match (self.outcome, self.upstream, self.reason) {
            (Kind::Sent, Some(upstream), _) => Some(Outcome::Sent { upstream }),
            (Kind::Rejected, Some(upstream), _) => Some(Outcome::Rejected { upstream }),
            (Kind::Uncertain, _, Some(reason)) => Some(Outcome::Uncertain { reason }),
            _ => None,
        }
    }
}

/// Why saved state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The file is not a state file (truncated, corrupt, not JSON).
    #[error("{path} is not a valid state file: {source}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The parser's reason.
        source: serde_json::Error,
    },
    /// The file was written by an incompatible version.
    #[error("{path} has format version {found}, this gateway reads version {FORMAT_VERSION}")]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// Loads saved outcomes into `dedup`; returns how many were still current.
/// A missing file is an empty state, not an error.
pub fn load(path: &Path, dedup: &Dedup) -> Result<usize, LoadError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(LoadError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let corrupt = |source| LoadError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let VersionOnly { version } = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if version != FORMAT_VERSION {
        return Err(LoadError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let state: StateFile = serde_json::from_slice(&bytes).map_err(corrupt)?;
    let mut loaded = 0;
    for entry in state.entries {
        let Ok(label) = Label::parse(&entry.label) else {
            continue;
        };
        let (requested_at, expires_at) = (entry.requested_at, entry.expires_at);
        let user = entry.user.clone().into();
        let Some(outcome) = entry.outcome() else {
            continue;
        };
        let remembered = Remembered::new(outcome, requested_at, expires_at, user);
        if !remembered.remaining().is_zero() {
            dedup.store(label, remembered);
            loaded += 1;
        }
    }
    Ok(loaded)
}

/// Writes every current outcome to `path` atomically; returns how many.
pub fn save(path: &Path, dedup: &Dedup) -> io::Result<usize> {
    let entries: Vec<Entry> = dedup
        .snapshot()
        .into_iter()
        .map(|(label, remembered)| Entry::new(&label, &remembered))
        .collect();
    let count = entries.len();
    let state = StateFile {
        version: FORMAT_VERSION,
        saved_at: SystemTime::now(),
        entries,
    };

    let temporary = temporary_path(path);
    let mut file = fs::File::create(&temporary)?;
    serde_json::to_writer(io::BufWriter::new(&mut file), &state)?;
    file.flush()?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    // Make the rename itself durable.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(directory) = fs::File::open(parent)
    {
        let _ = directory.sync_all();
    }
    Ok(count)
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DedupSettings;
    use crate::dedup::Claim;
    use crate::upstream::{Reply, UpstreamFailure};
    use std::sync::Arc;
    use std::time::Duration;

    fn dedup() -> Arc<Dedup> {
        Dedup::new(&DedupSettings {
            sent_ttl: Duration::from_secs(3600),
            rejected_ttl: Duration::from_secs(600),
            uncertain_ttl: Duration::from_secs(120),
            max_entries: 1000.try_into().unwrap(),
            state_file: Default::default(),
        })
    }

    fn settle(dedup: &Arc<Dedup>, text: &str, result: Result<Reply, UpstreamFailure>) {
        let Claim::Lead(lease) = dedup.claim(&Label::parse(text).unwrap()) else {
            panic!("expected to lead");
        };
        let _ = lease.settle(result, "alice".into());
    }

    #[test]
    fn saved_state_loads_back_with_its_lifetimes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let before = dedup();
        let answer = MpcAnswer::with_json(200, &serde_json::json!({"message": "queued"}));
        settle(&before, "A10cnQO", Ok(Reply::Accepted(answer.clone())));
        settle(
            &before,
            "2024-05-02T21:03:35.001_0000FzZw",
            Err(UpstreamFailure::Timeout(Duration::from_secs(1))),
        );
        assert_eq!(save(&path, &before).unwrap(), 2);
        assert!(!temporary_path(&path).exists());

        let after = dedup();
        assert_eq!(load(&path, &after).unwrap(), 2);
        let sent = after.get(&Label::parse("A10cnQO").unwrap()).unwrap();
        let original = before.get(&Label::parse("A10cnQO").unwrap()).unwrap();
        assert_eq!(sent.outcome(), &Outcome::Sent { upstream: answer });
        assert_eq!(sent.user(), "alice");
        assert_eq!(sent, original);
        let uncertain = after
            .get(&Label::parse("2024-05-02T21:03:35.001_0000FzZw").unwrap())
            .unwrap();
        assert_eq!(
            uncertain.outcome(),
            &Outcome::Uncertain {
                reason: Uncertainty::Timeout
            }
        );
    }

    #[test]
    fn missing_file_is_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("absent.json"), &dedup()).unwrap(), 0);
    }

    #[test]
    fn corrupt_truncated_or_foreign_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let source = dedup();
        settle(
            &source,
            "A10cnQO",
            Ok(Reply::Accepted(MpcAnswer {
                status: 200,
                body: None,
            })),
        );
        save(&path, &source).unwrap();
        let whole = fs::read(&path).unwrap();

        let cases: [(&str, Vec<u8>); 5] = [
            ("truncated", whole[..whole.len() / 2].to_vec()),
            ("garbage", b"\x00\x01 not json".to_vec()),
            ("empty", Vec::new()),
            ("wrong shape", br#"{"version": 1, "entries": 5}"#.to_vec()),
            (
                "future version",
                br#"{"version": 99, "whatever": true}"#.to_vec(),
            ),
        ];
        for (name, bytes) in cases {
            fs::write(&path, bytes).unwrap();
            let target = dedup();
            assert!(load(&path, &target).is_err(), "{name}");
            assert!(target.is_empty(), "{name}");
        }
    }

    #[test]
    fn expired_and_invalid_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = humantime::format_rfc3339(SystemTime::now()).to_string();
        let past =
            humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(10)).to_string();
        let future =
            humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(600)).to_string();
        let entry = |label: &str, expires: &str| {
            format!(
                r#"{{"label":"{label}","outcome":"sent","upstream":{{"status":200,"body":null}},"requested_at":"{now}","expires_at":"{expires}","user":"bob"}}"#
            )
        };
        let text = format!(
            r#"{{"version":1,"saved_at":"{now}","entries":[{},{},{}]}}"#,
            entry("A10cnQO", &future),
            entry("A10cnQP", &past),
            entry("not a label", &future)
        );
        fs::write(&path, text).unwrap();
        let target = dedup();
        assert_eq!(load(&path, &target).unwrap(), 1);
        assert!(target.get(&Label::parse("A10cnQO").unwrap()).is_some());
    }
}
