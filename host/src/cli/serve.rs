//! `hookwasm serve`: the host until SIGINT or SIGTERM, on the configured address
//! or on a socket handed over by socket activation.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use hookwasm::config::Config;

pub async fn serve(
    config_path: &Path,
    inherited: Option<std::net::TcpListener>,
) -> Result<ExitCode> {
    // First of all: a SIGTERM during start-up must stop the host, not kill it.
    let stop = shutdown_signal()?;
    let config = Config::load(config_path)?;
    let listener = match inherited {
        Some(l) => tokio::net::TcpListener::from_std(l)
            .map_err(|e| anyhow!("the socket handed over (LISTEN_FDS) cannot be used: {e}"))?,
        None => tokio::net::TcpListener::bind(config.server.listen).await.map_err(|e| {
            anyhow!(
                "cannot listen on {} ({e}); is another hookwasm running there? change server.listen in {}",
                config.server.listen,
                config_path.display()
            )
        })?,
    };
    hookwasm::run(config, listener, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// The listening socket handed over by systemd's socket activation (or a test
/// harness): `LISTEN_FDS=1` and the socket on descriptor 3. `LISTEN_PID`, when
/// set, must be this process. `server.listen` is then not bound: the socket is
/// open before the host starts, so no one can take the port in between. Call it
/// before any thread starts: it clears those variables.
pub fn inherited_listener() -> Result<Option<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    // SAFETY: called from `main` before the runtime starts: no other thread.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
    }
    let Some(fds) = fds else { return Ok(None) };
    if pid.is_some_and(|p| p.trim() != std::process::id().to_string()) {
        return Ok(None);
    }
    if fds.trim() != "1" {
        bail!("LISTEN_FDS={fds}: the host takes exactly one listening socket (descriptor 3)");
    }
    // SAFETY: by the socket-activation protocol descriptor 3 is ours, open, and
    // nothing else in this process owns it.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    std_listener
        .set_nonblocking(true)
        .and(std_listener.local_addr())
        .map(|_| Some(std_listener))
        .map_err(|e| anyhow!("LISTEN_FDS=1, but descriptor 3 is not a listening TCP socket ({e})"))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while the
/// host is busy starting or serving its first request must stop it gracefully,
/// not kill it.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| anyhow!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| anyhow!("cannot handle SIGINT: {e}"))?;
    // SIGHUP reloads the config (see `reload`); taken from here on, so one
    // sent while the host starts does not end it (tokio keeps the handler for
    // the process's life; the reload watcher listens later).
    let _ = signal(SignalKind::hangup()).map_err(|e| anyhow!("cannot handle SIGHUP: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
