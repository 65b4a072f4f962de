//! The command line, on top of the library: one module per kind of command.
//! Errors are `anyhow` here and become one line in `main`.
//!
//! - [`serve`]: the host itself, with socket activation and signals;
//! - [`plugin`]: plugin authors' tools (test, check, new, build, update-sdk);
//! - [`store`]: looking at and acting on a store beside a running host
//!   (deliveries, replay, ingest, clients);
//! - [`receive`]: a receiver for trying deliveries out.

pub mod build;
pub mod plugin;
pub mod receive;
pub mod scaffold;
pub mod serve;
pub mod store;

pub fn init_logging(plugin_command: bool) {
    use tracing_subscriber::EnvFilter;
    // `plugin test` shows the guest's own log lines; the host's are noise there.
    let default = if plugin_command {
        "warn,plugin=trace"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("HOOKWASM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    // HOOKWASM_LOG_FORMAT=json: one JSON object per line, for log collectors.
    if std::env::var("HOOKWASM_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// An error chain on one line: `context: cause: cause`.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
