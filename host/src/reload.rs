//! Live configuration: the config file is watched, and read again on SIGHUP. A
//! file that checks is applied at once — clients added, removed or changed (URL,
//! secret, events, limits, `config`), delivery defaults, tokens — with no
//! restart; one that does not is reported (log, status, metrics) and the last
//! good configuration keeps serving: the same rule as plugins.
//!
//! The folder is watched rather than the file, since editors and configuration
//! tools replace a file by renaming a new one over it. Changes are debounced
//! ([`QUIET`]) so a file written in several steps is read once it is whole; a
//! file caught half-written fails to check, is reported, and the write that
//! completes it is read next.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::directory::Directory;

/// How long the file must be left alone before it is read.
const QUIET: Duration = Duration::from_millis(200);

/// Watches the configuration file of `directory` (if it came from a file) and
/// SIGHUP until `cancel`.
pub fn watch(directory: Arc<Directory>, cancel: CancellationToken) -> anyhow::Result<()> {
    let Some(path) = directory.config().path.clone() else {
        return Ok(());
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = tx.send(());
        }
    })?;
    watcher
        .watch(&folder, RecursiveMode::NonRecursive)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot watch the config file's folder {}: {e}",
                folder.display()
            )
        })?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            let why = tokio::select! {
                Some(()) = rx.recv() => {
                    // Let a write in several steps end.
                    while let Ok(Some(())) = tokio::time::timeout(QUIET, rx.recv()).await {}
                    "the file changed"
                }
                _ = hangup.recv() => "SIGHUP",
                _ = cancel.cancelled() => return,
            };
            reload(&directory, &path, why).await;
        }
    });
    Ok(())
}

/// Reads the file again and applies it, or reports why not.
async fn reload(directory: &Directory, path: &std::path::Path, why: &str) {
    // Read until two reads a moment apart agree: a file still being written
    // in place is not applied half-way (a half that parses could drop clients).
    let mut seen = std::fs::read(path).ok();
    for _ in 0..10 {
        tokio::time::sleep(QUIET / 2).await;
        let now = std::fs::read(path).ok();
        if now == seen {
            break;
        }
        seen = now;
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
}
