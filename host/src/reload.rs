//! Live configuration: the config file is looked at every [`POLL`], and read
//! again on SIGHUP. A file that checks is applied then — clients added,
//! removed or changed (URL, secret, events, limits, `config`), delivery
//! defaults, tokens — with no restart; one that does not is reported (log,
//! status, metrics) and the last good configuration keeps serving: the same
//! rule as plugins.
//!
//! The file's metadata is polled rather than its folder watched: the store
//! usually lives in the same folder, and a folder watch woke a thread for every
//! write of its journal (about 7 % of the host's CPU under load). A stat a second
//! costs nothing, follows links (a Kubernetes ConfigMap swaps a link) and sees a
//! file renamed over the old one as well as one edited in place. A file still
//! being written is read until two reads agree; one caught half-written fails to
//! check, is reported, and the write that completes it is seen next.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, FileStamp};
use crate::directory::Directory;

/// How often the file's metadata is looked at.
const POLL: Duration = Duration::from_secs(1);

/// How far apart the reads of a changed file are: it is applied once two agree.
const QUIET: Duration = Duration::from_millis(200);

/// Watches the configuration file of `directory` (if it came from a file) and
/// SIGHUP until `cancel`.
pub fn watch(directory: Arc<Directory>, cancel: CancellationToken) -> anyhow::Result<()> {
    let Some(path) = directory.config().path.clone() else {
        return Ok(());
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // The stamp of the version the host started with: a change made while it
    // was starting differs from it at the first look.
    let mut seen = directory.config().stamp;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = tick.tick() => {
                    let now = FileStamp::of(&path);
                    if now == seen {
                        continue;
                    }
                    "the file changed"
                }
                _ = hangup.recv() => "SIGHUP",
                _ = cancel.cancelled() => return,
            };
            seen = reload(&directory, &path, why).await;
        }
    });
    Ok(())
}

/// Reads the file again and applies it, or reports why not; returns the stamp
/// of the version read.
async fn reload(directory: &Directory, path: &Path, why: &str) -> Option<FileStamp> {
    // Read until two reads a moment apart agree: a file still being written
    // in place is not applied half-way (a half that parses could drop clients).
    // Each stamp is taken before its read: a write between the two is seen
    // again at the next poll rather than missed.
    let mut at = FileStamp::of(path);
    let mut seen = std::fs::read(path).ok();
    for _ in 0..10 {
        tokio::time::sleep(QUIET / 2).await;
        let before = FileStamp::of(path);
        let now = std::fs::read(path).ok();
        if now == seen {
            break;
        }
        (seen, at) = (now, before);
    }
    let file = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&file))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("reading it crashed: {e}")));
    match loaded {
        Ok(config) => match directory.apply_config(config).await {
            Ok(at_restart) => {
                tracing::info!(reason = why, "configuration reloaded");
                crate::metrics::config_reload(true);
                if !at_restart.is_empty() {
                    tracing::warn!(
                        "changed keys that take effect at the next restart only: {}",
                        at_restart.join(", ")
                    );
                }
            }
            Err(e) => {
                tracing::error!("the new configuration could not be applied: {e}");
                crate::metrics::config_reload(false);
                directory.config_refused(format!("not applied: {e}"));
            }
        },
        Err(e) => {
            let e = crate::text::escape(&format!("{e:#}")).into_owned();
            tracing::error!(
                reason = why,
                "the configuration file has an error; the last good configuration keeps serving: {e}"
            );
            crate::metrics::config_reload(false);
            directory.config_refused(e);
        }
    }
    at
}
