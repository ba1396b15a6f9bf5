//! The state file: remembered outcomes survive a restart.
//!
//! Written whole to a temporary file beside the target and renamed over it,
//! so a crash leaves either the old file or the new one, never half of one;
//! a write that fails removes its temporary file. One gateway at a time: a
//! lock file beside the state file is held while the gateway runs. A file
//! that cannot be read or is not a state file (not JSON, another shape or
//! version) is kept aside under a new name, never overwritten; a malformed
//! entry is skipped on its own.

use std::cmp::Reverse;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Dedup, Outcome, Remembered, Uncertainty};
use crate::domain::label::Label;
use crate::domain::outcome::MpcAnswer;

/// Version of the file format; bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// How many names a file kept aside may try before giving up.
const ASIDE_ATTEMPTS: u32 = 1000;

/// The file as written.
#[derive(Serialize)]
struct Document {
    version: u32,
    #[serde(with = "humantime_serde")]
    saved_at: SystemTime,
    entries: Vec<Entry>,
}

/// The file as read (its version checked before): each entry is parsed on
/// its own, so that one bad entry costs only itself.
#[derive(Deserialize)]
struct StoredDocument<'a> {
    /// Required, so that a file without it is not taken for a state file.
    #[serde(rename = "saved_at", with = "humantime_serde")]
    _saved_at: SystemTime,
    #[serde(borrow)]
    entries: Vec<&'a RawValue>,
}

/// One remembered outcome, in plain fields: a raw JSON body cannot pass
/// through serde's buffering of tagged or flattened enums.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
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
    pub(super) fn new(label: &Label, remembered: &Remembered) -> Self {
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

    /// The label and its outcome, or why the entry cannot be one.
    pub(super) fn into_remembered(self) -> Result<(Label, Remembered), String> {
        let label = Label::parse(&self.label).map_err(|error| format!("invalid label: {error}"))?;
        let outcome = match (self.outcome, self.upstream, self.reason) {
            (Kind::Sent, Some(upstream), _) => Outcome::Sent { upstream },
            (Kind::Rejected, Some(upstream), _) => Outcome::Rejected { upstream },
            (Kind::Uncertain, _, Some(reason)) => Outcome::Uncertain { reason },
            (Kind::Sent | Kind::Rejected, None, _) => return Err("no upstream answer".to_owned()),
            (Kind::Uncertain, _, None) => return Err("no reason".to_owned()),
        };
        let remembered = Remembered::new(
            outcome,
            self.requested_at,
            self.expires_at,
            self.user.into(),
        );
        Ok((label, remembered))
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

/// What loading a state file kept, and what it dropped and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Outcomes now remembered.
    pub kept: usize,
    /// Outcomes whose window had already ended.
    pub expired: usize,
    /// Current outcomes dropped, the oldest first, to stay within `dedup.max_entries`.
    pub over_bound: usize,
    /// Entries that are not outcomes (missing fields, invalid label, repeated label).
    pub malformed: usize,
    /// Which entry (from 0) was the first malformed one, and why.
    pub first_malformed: Option<(usize, String)>,
}

impl Loaded {
    fn skip(&mut self, index: usize, reason: String) {
        self.malformed += 1;
        self.first_malformed.get_or_insert((index, reason));
    }
}

/// Loads saved outcomes into `dedup`, the most recent first up to
/// `dedup.max_entries`. A missing file is an empty state, not an error; a
/// file that is not a state file loads nothing.
pub fn load(path: &Path, dedup: &Dedup) -> Result<Loaded, LoadError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
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
    let document: StoredDocument = serde_json::from_slice(&bytes).map_err(corrupt)?;

    let mut loaded = Loaded::default();
    let mut current = Vec::with_capacity(document.entries.len());
    for (index, raw) in document.entries.into_iter().enumerate() {
        let parsed = serde_json::from_str::<Entry>(raw.get())
            .map_err(|error| error.to_string())
            .and_then(Entry::into_remembered);
        match parsed {
            Ok((_, remembered)) if remembered.remaining(dedup.now()).is_zero() => {
                loaded.expired += 1
            }
            Ok((label, remembered)) => current.push((index, label, remembered)),
            Err(reason) => loaded.skip(index, reason),
        }
    }
    // Over the bound, the most recent calls are the ones worth remembering.
    current.sort_by_key(|(_, _, remembered)| Reverse(remembered.requested_at()));
    let bound = usize::try_from(dedup.max_entries()).unwrap_or(usize::MAX);
    let mut seen = std::collections::HashSet::with_capacity(current.len());
    for (index, label, remembered) in current {
        if !seen.insert(label.clone()) {
            loaded.skip(index, format!("label {label} repeated"));
        } else if loaded.kept == bound {
            loaded.over_bound += 1;
        } else if dedup.restore(label, remembered) {
            loaded.kept += 1;
        }
    }
    Ok(loaded)
}

/// Writes every current outcome to `path` atomically; returns how many. A
/// failed write leaves the previous file as it was and no temporary file.
pub fn save(path: &Path, dedup: &Dedup) -> io::Result<usize> {
    let entries: Vec<Entry> = dedup
        .snapshot()
        .into_iter()
        .map(|(label, remembered)| Entry::new(&label, &remembered))
        .collect();
    let count = entries.len();
    let document = Document {
        version: FORMAT_VERSION,
        saved_at: dedup.now(),
        entries,
    };

    let temporary = temporary_path(path);
    if let Err(error) =
        write_whole(&temporary, &document).and_then(|()| fs::rename(&temporary, path))
    {
        // A partial file is of no use and would hold the disk space that ran out.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    // Make the rename itself durable.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(directory) = fs::File::open(parent)
    {
        let _ = directory.sync_all();
    }
    Ok(count)
}

fn write_whole(path: &Path, document: &Document) -> io::Result<()> {
    let mut writer = io::BufWriter::new(fs::File::create(path)?);
    serde_json::to_writer(&mut writer, document)?;
    // Flushed here: a BufWriter dropped unflushed swallows its last write's error.
    let file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// This gateway's state file, locked against other gateways until dropped.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// Held open for its lock; the lock ends when the file is closed.
    _lock: fs::File,
}

/// What [`StateFile::restore`] found.
#[derive(Debug)]
pub enum Restored {
    /// The file was read (or did not exist yet).
    Loaded(Loaded),
    /// The file could not be used: it now lives at `aside`, and nothing was loaded.
    SetAside {
        /// Why it could not be used.
        error: LoadError,
        /// Where it was moved.
        aside: PathBuf,
    },
}

/// Why the state file cannot be used by this gateway.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing can be created beside it: a missing or read-only directory,
    /// or a parent that is not a directory.
    #[error("cannot write beside {path}: cannot create {created}: {source}")]
    NotWritable {
        /// The state file.
        path: PathBuf,
        /// The file that could not be created.
        created: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The lock file cannot be locked for a reason other than another holder.
    #[error("cannot lock {lock}: {source}")]
    Lock {
        /// The lock file.
        lock: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Another gateway holds it.
    #[error(
        "{path} is in use by another gateway, which holds {lock}; \
         each gateway needs its own state file"
    )]
    Held {
        /// The state file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// It cannot be read as a state file and cannot be moved aside either.
    #[error("{error}, and it cannot be kept aside: {source}")]
    SetAside {
        /// Why it cannot be read.
        error: LoadError,
        /// Why it cannot be moved.
        source: io::Error,
    },
}

impl StateFile {
    /// Takes `path` for this gateway: locks `<path>.lock` and proves that
    /// the directory takes new files, so that saving cannot fail for want
    /// of either later.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let not_writable = |created: &Path| {
            let created = created.to_owned();
            move |source| OpenError::NotWritable {
                path: path.to_owned(),
                created,
                source,
            }
        };
        let lock_path = sibling(path, ".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(not_writable(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Held {
                    path: path.to_owned(),
                    lock: lock_path,
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(OpenError::Lock {
                    lock: lock_path,
                    source,
                });
            }
        }
        // The lock file may be left from an earlier run: create a new file too.
        let probe = temporary_path(path);
        fs::File::create(&probe).map_err(not_writable(&probe))?;
        fs::remove_file(&probe).map_err(not_writable(&probe))?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads what the file remembers into `dedup`; a file that is not a
    /// state file is renamed to `<name>.corrupt-<unix seconds of now>`.
    pub fn restore(&self, dedup: &Dedup, now: SystemTime) -> Result<Restored, OpenError> {
        match load(&self.path, dedup) {
            Ok(loaded) => Ok(Restored::Loaded(loaded)),
            Err(error) => match set_aside(&self.path, now) {
                Ok(aside) => Ok(Restored::SetAside { error, aside }),
                Err(source) => Err(OpenError::SetAside { error, source }),
            },
        }
    }
}

/// Renames `path` to a name not yet taken; only the lock holder calls it,
/// so nobody takes the name between the look and the rename.
fn set_aside(path: &Path, now: SystemTime) -> io::Result<PathBuf> {
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    for attempt in 0..ASIDE_ATTEMPTS {
        let suffix = match attempt {
            0 => format!(".corrupt-{seconds}"),
            _ => format!(".corrupt-{seconds}-{attempt}"),
        };
        let aside = sibling(path, &suffix);
        match fs::symlink_metadata(&aside) {
            Ok(_) => continue,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::rename(path, &aside)?;
                return Ok(aside);
            }
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{ASIDE_ATTEMPTS} files named {}.corrupt-{seconds}* exist already",
            path.display()
        ),
    ))
}

fn temporary_path(path: &Path) -> PathBuf {
    sibling(path, ".tmp")
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::Claim;
    use crate::domain::mpc_reply::{Reply, UpstreamFailure};
    use std::sync::Arc;
    use std::time::Duration;

    fn dedup() -> Arc<Dedup> {
        crate::dedup::in_memory(1000)
    }

    /// The memory store answers at once: its futures need no runtime.
    fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
        futures_util::FutureExt::now_or_never(future).expect("the memory store answers at once")
    }

    fn settle(dedup: &Arc<Dedup>, text: &str, result: Result<Reply, UpstreamFailure>) {
        let Ok(Claim::Lead(lease)) = ready(dedup.claim(&Label::parse(text).unwrap())) else {
            panic!("expected to lead");
        };
        let _ = ready(lease.settle(&result, "alice".into()));
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
        assert_eq!(load(&path, &after).unwrap().kept, 2);
        let sent = ready(after.get(&Label::parse("A10cnQO").unwrap()))
            .unwrap()
            .unwrap();
        let original = ready(before.get(&Label::parse("A10cnQO").unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!(sent.outcome(), &Outcome::Sent { upstream: answer });
        assert_eq!(sent.user(), "alice");
        assert_eq!(sent, original);
        let uncertain =
            ready(after.get(&Label::parse("2024-05-02T21:03:35.001_0000FzZw").unwrap()))
                .unwrap()
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
        assert_eq!(
            load(&dir.path().join("absent.json"), &dedup()).unwrap(),
            Loaded::default()
        );
    }

    /// Writes a state file at `path` remembering one sent label; returns
    /// the memory it was written from.
    fn save_one_sent_label(path: &Path) -> Arc<Dedup> {
        let source = dedup();
        settle(
            &source,
            "A10cnQO",
            Ok(Reply::Accepted(MpcAnswer {
                status: 200,
                body: None,
            })),
        );
        save(path, &source).unwrap();
        source
    }

    #[test]
    fn corrupt_truncated_or_foreign_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save_one_sent_label(&path);
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
        let loaded = load(&path, &target).unwrap();
        assert_eq!(loaded.kept, 1);
        assert_eq!((loaded.expired, loaded.malformed), (1, 1));
        assert!(
            ready(target.get(&Label::parse("A10cnQO").unwrap()))
                .unwrap()
                .is_some()
        );
    }

    fn bounded_dedup(max_entries: u64) -> Arc<Dedup> {
        crate::dedup::in_memory(max_entries)
    }

    /// A sent outcome for `label` by `user`, requested `age` ago and current for an hour more.
    fn sent_entry(label: &str, user: &str, age: Duration) -> String {
        let requested = humantime::format_rfc3339_millis(SystemTime::now() - age);
        let expires = humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(3600));
        format!(
            r#"{{"label":"{label}","outcome":"sent","upstream":{{"status":200,"body":null}},"requested_at":"{requested}","expires_at":"{expires}","user":"{user}"}}"#
        )
    }

    fn state_text(entries: &[String]) -> String {
        let now = humantime::format_rfc3339(SystemTime::now());
        format!(
            r#"{{"version":1,"saved_at":"{now}","entries":[{}]}}"#,
            entries.join(",")
        )
    }

    #[test]
    fn over_the_bound_the_most_recent_outcomes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // The oldest first, as a file written in insertion order would be.
        let labels = ["LABEL50", "LABEL40", "LABEL30", "LABEL20", "LABEL10"];
        let entries: Vec<String> = labels
            .iter()
            .map(|label| {
                let age = label[5..].parse().unwrap();
                sent_entry(label, "bob", Duration::from_secs(age))
            })
            .collect();
        fs::write(&path, state_text(&entries)).unwrap();

        let target = bounded_dedup(3);
        let loaded = load(&path, &target).unwrap();
        assert_eq!((loaded.kept, loaded.over_bound), (3, 2));
        for newest in ["LABEL30", "LABEL20", "LABEL10"] {
            assert!(
                ready(target.get(&Label::parse(newest).unwrap()))
                    .unwrap()
                    .is_some(),
                "{newest}"
            );
        }
        for oldest in ["LABEL50", "LABEL40"] {
            assert!(
                ready(target.get(&Label::parse(oldest).unwrap()))
                    .unwrap()
                    .is_none(),
                "{oldest}"
            );
        }
        assert_eq!(target.len(), 3);
    }

    #[test]
    fn a_malformed_entry_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let minute = Duration::from_secs(60);
        let good = sent_entry("A10cnQO", "bob", minute);
        let entries = [
            good.clone(),
            good.replace(r#","user":"bob""#, ""),
            good.replace(r#""outcome":"sent""#, r#""outcome":"maybe""#),
            good.replace(r#""upstream":{"status":200,"body":null},"#, ""),
            "42".to_owned(),
            sent_entry("A10cnQP", "bob", minute),
            // The same label again, more recently: this one is kept.
            sent_entry("A10cnQO", "carol", Duration::from_secs(1)),
        ];
        fs::write(&path, state_text(&entries)).unwrap();

        let target = dedup();
        let loaded = load(&path, &target).unwrap();
        assert_eq!((loaded.kept, loaded.malformed), (2, 5));
        let (first, reason) = loaded.first_malformed.unwrap();
        assert_eq!(first, 1);
        assert!(reason.contains("user"), "{reason}");
        let kept = ready(target.get(&Label::parse("A10cnQO").unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!(kept.user(), "carol");
        assert!(
            ready(target.get(&Label::parse("A10cnQP").unwrap()))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_file_that_is_not_a_state_file_is_kept_aside_not_overwritten() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cases: [(&str, &[u8]); 6] = [
            ("not json", b"\x00\x01 not json"),
            ("truncated", br#"{"version": 1, "entries": [trunc"#),
            ("top-level array", b"[1, 2, 3]"),
            (
                "entries not a list",
                br#"{"version": 1, "saved_at": "2024-01-01T00:00:00Z", "entries": 5}"#,
            ),
            ("no saved_at", br#"{"version": 1, "entries": []}"#),
            (
                "other version",
                br#"{"version": 2, "saved_at": "2024-01-01T00:00:00Z", "entries": []}"#,
            ),
        ];
        for (name, bytes) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            fs::write(&path, bytes).unwrap();
            let state_file = StateFile::open(&path).unwrap();
            let target = dedup();
            let Restored::SetAside { aside, .. } = state_file.restore(&target, now).unwrap() else {
                panic!("{name}: expected the file to be kept aside");
            };
            assert_eq!(
                aside,
                dir.path().join("state.json.corrupt-1700000000"),
                "{name}"
            );
            assert_eq!(fs::read(&aside).unwrap(), bytes, "{name}");
            assert!(!path.exists(), "{name}: the name is free for the next save");
            assert!(target.is_empty(), "{name}");

            // Corrupt again within the same second: the first copy stays.
            fs::write(&path, b"again").unwrap();
            let Restored::SetAside { aside: second, .. } =
                state_file.restore(&target, now).unwrap()
            else {
                panic!("{name}: expected the second file to be kept aside");
            };
            assert_eq!(second, dir.path().join("state.json.corrupt-1700000000-1"));
            assert_eq!(fs::read(&second).unwrap(), b"again");
            assert_eq!(fs::read(&aside).unwrap(), bytes, "{name}: not overwritten");
        }
    }

    #[test]
    fn an_unreadable_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // A directory where the file should be cannot be read as one, even by root.
        fs::create_dir(&path).unwrap();
        let state_file = StateFile::open(&path).unwrap();
        let restored = state_file
            .restore(&dedup(), SystemTime::UNIX_EPOCH)
            .unwrap();
        let Restored::SetAside { error, aside } = restored else {
            panic!("expected the directory to be kept aside");
        };
        assert!(matches!(error, LoadError::Read { .. }), "{error}");
        assert!(aside.is_dir());
        assert!(!path.exists());
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let source = save_one_sent_label(&path);
        let before = fs::read(&path).unwrap();

        // A full disk, for root too and without mounting anything: writes to
        // /dev/full fail with ENOSPC, and the temporary file's name leads there.
        assert!(Path::new("/dev/full").exists(), "this test needs /dev/full");
        std::os::unix::fs::symlink("/dev/full", temporary_path(&path)).unwrap();
        settle(
            &source,
            "A10cnQP",
            Ok(Reply::Accepted(MpcAnswer {
                status: 200,
                body: None,
            })),
        );
        let error = save(&path, &source).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        assert!(
            fs::symlink_metadata(temporary_path(&path)).is_err(),
            "the temporary file is removed"
        );
        assert_eq!(fs::read(&path).unwrap(), before, "the old file is intact");
    }

    #[test]
    fn one_gateway_holds_the_file_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let first = StateFile::open(&path).unwrap();
        let second = StateFile::open(&path).unwrap_err();
        assert!(matches!(second, OpenError::Held { .. }), "{second}");
        assert!(second.to_string().contains("another gateway"), "{second}");
        drop(first);
        StateFile::open(&path).expect("free again once the first is dropped");
    }

    #[test]
    fn a_file_that_cannot_be_written_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_directory = dir.path().join("plain");
        fs::write(&not_a_directory, b"").unwrap();
        for path in [
            dir.path().join("missing").join("state.json"),
            not_a_directory.join("state.json"),
        ] {
            let error = StateFile::open(&path).unwrap_err();
            assert!(matches!(error, OpenError::NotWritable { .. }), "{error}");
        }
    }
}
