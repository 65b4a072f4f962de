//! The integration tests, one binary: the real `hookwasm` binary, real plugins
//! built from source, real receivers on 127.0.0.1, real SQLite files (or a
//! real PostgreSQL, with `HOOKWASM_TEST_PG`). One module per subject; what
//! they share is in `common`. See tests/README.md.

mod common;

/// Events in: both formats to every client, bad input, the ingest token, the
/// server's limits on connections, and `hookwasm ingest`.
mod ingest;

/// Deliveries out: retries, Retry-After, 410, disabling, isolation between
/// clients, signatures, the SSRF guard, replay.
mod delivery;

/// Stopping and starting: SIGTERM finishes what is in flight, kill -9 under load
/// and a graceful restart lose nothing.
mod lifecycle;

/// Plugins at work: hostile ones, warm instances, world versions, the wall
/// clock, memory caps, Python and JavaScript, the compiled-code cache.
mod plugins;

/// Hot reload: replacing, breaking, adding and rewriting plugin files while the
/// host runs, and the held work that resumes.
mod reload;

/// What an attacker or an accident can put in front of the host: private
/// store files, a cache others can write, special files among the plugins.
mod hardening;

/// The plugin author's commands: `plugin new`, `build`, `test`, `check`,
/// `update-sdk`.
mod authoring;

/// The HTTP API: clients created by operators, client tokens, self-service
/// plugins (upload, dry run, activation, rollback), secret rotation, the
/// deliveries' views, and who may call what.
mod api;

/// Running it without a shell: live configuration, the per-client route, the
/// de-duplication window, rate limits, retention, metrics, readiness, JSON logs.
mod operations;

/// The operator's command line: `serve` with a bad config, the demo receiver.
mod commands;

/// Several hosts on one PostgreSQL store: sharing the work, a host killed or
/// added under load, a client's order, an API change seen by every host.
mod hosts;

/// The web console in a real browser (headless Chromium through WebDriver):
/// signing in, what operators and clients see, self-service plugins.
mod console;
