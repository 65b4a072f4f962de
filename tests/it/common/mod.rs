//! What the integration tests share: plugins built from source, config files
//! built from parts, a real receiver on 127.0.0.1, the real `hookwasm` binary
//! run against a config in a temp dir, the store in SQLite or PostgreSQL, and
//! one way to wait.

mod browser;
mod config;
mod custom_section;
mod eventually;
mod host;
mod postgres;
mod receiver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use browser::Browser;
pub use config::{Client, Config};

/// The operator token every host under test is configured with.
pub const OPERATOR: &str = "operator-token-for-the-tests-0123456789";
pub use eventually::eventually;
pub use host::Host;
pub use postgres::{fresh_database, on_postgres, query};
pub use receiver::{Got, Receiver};

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The sample `new_feed_entry` in Phraseanet's current format.
pub const CURRENT: &str = "new_feed_entry.json";
/// The sample `new_feed_entry` in the format Phraseanet's documentation shows.
pub const DOCUMENTED: &str = "new_feed_entry.documented.json";

/// The path of a sample event in tests/fixtures/events.
pub fn fixture_path(name: &str) -> PathBuf {
    repo().join("tests/fixtures/events").join(name)
}

/// The bytes of a sample event in tests/fixtures/events.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

/// The current-format `new_feed_entry` with Phraseanet's `webhookId` set to `n`, to
/// tell events apart at the receiver.
pub fn numbered(n: usize) -> String {
    String::from_utf8(fixture(CURRENT))
        .unwrap()
        .replace("\"webhookId\":12", &format!("\"webhookId\":{n}"))
}

/// Builds a plugin workspace for wasm32-wasip2 (once per test process).
fn build(workspace: &str) -> PathBuf {
    let dir = repo().join(workspace);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building the plugins in {workspace} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("target/wasm32-wasip2/release")
}

/// The `.wasm` of a plugin, built from source: an example (`chat-message`) or a
/// test fixture (`misbehave`).
pub fn plugin(name: &str) -> PathBuf {
    static EXAMPLES: OnceLock<PathBuf> = OnceLock::new();
    static FIXTURES: OnceLock<PathBuf> = OnceLock::new();
    let file = format!("{}.wasm", name.replace('-', "_"));
    let examples = EXAMPLES.get_or_init(|| build("plugins"));
    if examples.join(&file).exists() {
        return examples.join(file);
    }
    let fixtures = FIXTURES.get_or_init(|| build("tests/plugins"));
    let path = fixtures.join(&file);
    assert!(
        path.exists(),
        "no plugin {name} in plugins/ or tests/plugins/"
    );
    path
}

/// A Python (`python-…`) or JavaScript (`js-…`) example plugin, built by
/// `scripts/build-plugins` (which installs componentize-py / componentize-js).
pub fn foreign_plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(repo().join("scripts/build-plugins"))
            .args(["python", "js"])
            .output()
            .expect("scripts/build-plugins runs");
        assert!(
            out.status.success(),
            "scripts/build-plugins python js failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let path = repo().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "scripts/build-plugins made no {}",
        path.display()
    );
    path
}

/// The version hash the host gives a plugin file: 16 hex digits of its SHA-256.
pub fn hash_of(path: &Path) -> String {
    hookwasm::plugin::content_hash(&std::fs::read(path).unwrap())
}

/// A copy of a plugin under a new content hash: a new plugin version for the host.
pub fn variant(src: &Path, tag: &str) -> PathBuf {
    let bytes = custom_section::with_custom_section(&std::fs::read(src).unwrap(), tag);
    let out = std::env::temp_dir().join(format!(
        "hookwasm-variant-{}-{tag}.wasm",
        std::process::id()
    ));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// A copy of a plugin with a custom section `name` holding `payload` appended.
pub fn with_section(src: &Path, name: &str, payload: &str) -> PathBuf {
    let bytes =
        custom_section::with_named_section(&std::fs::read(src).unwrap(), name, payload.as_bytes());
    let out = std::env::temp_dir().join(format!(
        "hookwasm-section-{}-{name}-{payload}.wasm",
        std::process::id()
    ));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// A process's resident memory, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hookwasm")
}

/// Runs `hookwasm` with `args` (the command line's compiled-code cache is the
/// tests' shared one) and returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_with(&[], args)
}

/// `hookwasm plugin test WASM --event EVENT` with `extra` arguments
/// (`--config K=V`, `--client ID`, …).
pub fn plugin_test(wasm: &Path, event: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "plugin",
        "test",
        wasm.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `run`, with extra environment variables (which may replace the cache's).
pub fn run_with(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    output(Command::new(bin()).args(args), env)
}

/// `run_with`, in the folder `cwd`.
pub fn run_in(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    output(Command::new(bin()).args(args).current_dir(cwd), env)
}

fn output(command: &mut Command, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = command
        .env(
            "HOOKWASM_CACHE_DIR",
            repo().join("target/test-plugin-cache"),
        )
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An address where nothing listens: bound, then let go.
pub fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
