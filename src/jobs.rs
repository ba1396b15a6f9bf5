//! The gateway's background jobs: dropping idle users' limiter state,
//! keeping the state file, reloading on SIGHUP, and waiting for a stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::oneshot;

use crate::dedup::Dedup;
use crate::dedup::persist::{self, StateFile};
use crate::observe::metrics::Metrics;
use crate::quota::Quotas;
use crate::reload::Reloader;

/// How often idle users' limiter state is dropped.
const QUOTA_HOUSEKEEPING: Duration = Duration::from_secs(60);

/// How often remembered outcomes are written to the state file (when changed).
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// Drops idle users' limiter state every [`QUOTA_HOUSEKEEPING`], forever.
pub async fn drop_idle_users(quotas: Arc<Quotas>) {
    let mut ticks = tokio::time::interval(QUOTA_HOUSEKEEPING);
    loop {
        ticks.tick().await;
        let tracked = quotas.retain_recent();
        tracing::debug!(tracked_users = tracked, "dropped idle users' limiter state");
    }
}

/// Reloads the configuration on each SIGHUP, until the gateway stops.
pub async fn reload_on_hangup(reloader: Arc<Reloader>, mut hangups: Signal) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let reloader = Arc::clone(&reloader);
        // Reading the file is blocking I/O; a refusal is logged and counted.
        let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
    }
}

/// Rewrites the state file every [`SAVE_EVERY`] while something changed
/// since its last good write, then once more when `stop` fires (or its
/// sender is gone); returns how that last write went. Owns the file, so
/// its lock ends when the job does.
pub async fn keep_state_file(
    state_file: StateFile,
    dedup: Arc<Dedup>,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<usize> {
    let mut ticks = tokio::time::interval(SAVE_EVERY);
    let mut saved = dedup.changes();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {
                let changes = dedup.changes();
                // A failed write is tried again at the next tick.
                if changes != saved && save(state_file.path(), &dedup, &metrics).await.is_ok() {
                    saved = changes;
                }
            }
        }
    }
    save(state_file.path(), &dedup, &metrics).await
}

/// Writes the state file once, off the async threads; logs and counts the result.
async fn save(path: &Path, dedup: &Arc<Dedup>, metrics: &Metrics) -> std::io::Result<usize> {
    let (target, dedup) = (path.to_owned(), Arc::clone(dedup));
    let result = tokio::task::spawn_blocking(move || persist::save(&target, &dedup))
        .await
        .unwrap_or_else(|error| Err(std::io::Error::other(error)));
    match &result {
        Ok(count) => {
            metrics.state_file_saved();
            tracing::debug!(path = %path.display(), remembered = count, "state file written");
        }
        Err(error) => {
            metrics.state_file_save_failed();
            tracing::error!(path = %path.display(), %error, "cannot write the state file");
        }
    }
    result
}

/// Returns at the first SIGTERM or SIGINT.
pub async fn stop_signal(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{Outcome, Remembered};
    use crate::domain::label::Label;
    use crate::domain::outcome::MpcAnswer;
    use crate::http::routes;
    use std::time::SystemTime;

    fn dedup_with_one_outcome() -> Arc<Dedup> {
        let dedup = crate::dedup::in_memory(1000);
        let sent = Outcome::Sent {
            upstream: MpcAnswer {
                status: 200,
                body: None,
            },
        };
        let now = SystemTime::now();
        let remembered = Remembered::new(sent, now, now + Duration::from_secs(60), "bob".into());
        assert!(dedup.restore(Label::parse("A10cnQO").unwrap(), remembered));
        dedup
    }

    fn saves(metrics: &Metrics, result: &str) -> String {
        let series = format!("mpc_gateway_state_file_saves_total{{result=\"{result}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()).map(str::to_owned))
            .unwrap_or_else(|| panic!("no series {series}"))
    }

    #[tokio::test]
    async fn each_write_of_the_state_file_is_counted_by_result() {
        let dir = tempfile::tempdir().unwrap();
        let directory = dir.path().join("state");
        std::fs::create_dir(&directory).unwrap();
        let path = directory.join("state.json");
        let (dedup, metrics) = (
            dedup_with_one_outcome(),
            Metrics::new(&routes::TEMPLATES, routes::UNMATCHED).unwrap(),
        );

        assert_eq!(save(&path, &dedup, &metrics).await.unwrap(), 1);
        assert_eq!(
            (saves(&metrics, "ok"), saves(&metrics, "error")),
            ("1".into(), "0".into())
        );
        std::fs::remove_dir_all(&directory).unwrap();
        save(&path, &dedup, &metrics).await.unwrap_err();
        assert_eq!(
            (saves(&metrics, "ok"), saves(&metrics, "error")),
            ("1".into(), "1".into())
        );
    }

    #[tokio::test]
    async fn the_state_file_job_writes_once_more_when_stopped_then_lets_go_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let state_file = StateFile::open(&path).unwrap();
        let (dedup, metrics) = (
            dedup_with_one_outcome(),
            Arc::new(Metrics::new(&routes::TEMPLATES, routes::UNMATCHED).unwrap()),
        );
        let (stop, stopped) = oneshot::channel();
        let job = tokio::spawn(keep_state_file(
            state_file,
            Arc::clone(&dedup),
            Arc::clone(&metrics),
            stopped,
        ));

        stop.send(()).unwrap();
        assert_eq!(job.await.unwrap().unwrap(), 1, "written on stop");
        assert_eq!(saves(&metrics, "ok"), "1");
        StateFile::open(&path).expect("the lock ends with the job");
    }
}
