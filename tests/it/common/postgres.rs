//! The PostgreSQL server the suite runs against when `HOOKWASM_TEST_PG` names
//! one (`postgres://postgres@127.0.0.1:PORT`, as `scripts/pg start` prints it;
//! `scripts/test` runs the suite a second time so). Each test's store is then a
//! database of its own on that server, made empty for it; without the variable
//! every store is a SQLite file, and nothing here runs.

use std::process::Command;
use std::sync::OnceLock;

/// Debian's client, beside the server `scripts/pg` runs.
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

/// Whether the stores are in PostgreSQL (`HOOKWASM_TEST_PG` is set).
pub fn on_postgres() -> bool {
    server().is_some()
}

/// The server's URL, without a database.
fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            std::env::var("HOOKWASM_TEST_PG")
                .ok()
                .filter(|url| !url.is_empty())
                .map(|url| url.trim_end_matches('/').to_string())
        })
        .as_deref()
}

/// A new, empty database on the server; its URL, for `[store] url`. The name
/// is random: a server may outlive a run, and serve several at once.
pub fn fresh_database() -> String {
    let server = server().expect("a database is made only with HOOKWASM_TEST_PG set");
    let name = format!("t_{:016x}", rand::random::<u64>());
    query(
        &format!("{server}/postgres"),
        &format!("CREATE DATABASE {name}"),
    );
    format!("{server}/{name}")
}

/// The first value `sql`'s answer gives, as text, from the database at `url`.
pub fn query(url: &str, sql: &str) -> String {
    let out = Command::new(PSQL)
        .arg(url)
        .args(["-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("{PSQL} runs: {e}"));
    assert!(
        out.status.success(),
        "{sql} on {url} (HOOKWASM_TEST_PG) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
