//! What the integration tests share: plugins built from source, a real receiver on
//! 127.0.0.1, and the real `hookwasm` binary run against a config in a temp dir.
#![allow(dead_code)]

mod custom_section;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use tokio::sync::Notify;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/events").join(name)).unwrap()
}

/// The current-format `new_feed_entry` with Phraseanet's `webhookId` set to `n`, to
/// tell events apart at the receiver.
pub fn numbered(n: usize) -> String {
    String::from_utf8(fixture("new_feed_entry.json"))
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

/// Runs `hookwasm` with `args` and returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env(
            "HOOKWASM_CACHE_DIR",
            repo().join("target/test-plugin-cache"),
        )
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- A receiver ----------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

#[derive(Default)]
struct RecvState {
    got: Mutex<Vec<Got>>,
    notify: Notify,
    /// Per path: the statuses to answer, in turn; the last one sticks.
    statuses: Mutex<HashMap<String, Vec<u16>>>,
    delays: Mutex<HashMap<String, Duration>>,
    headers: Mutex<HashMap<String, Vec<(String, String)>>>,
}

/// A real HTTP server on 127.0.0.1 that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<RecvState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener).await
    }

    pub async fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RecvState::default());
        let st = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let st = st.clone();
            async move {
                let path = req.uri().path().to_string();
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 256 << 20)
                    .await
                    .unwrap_or_default();
                let delay = st.delays.lock().unwrap().get(&path).copied();
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let status = {
                    let mut s = st.statuses.lock().unwrap();
                    match s.get_mut(&path) {
                        Some(list) if list.len() > 1 => list.remove(0),
                        Some(list) => list[0],
                        None => 200,
                    }
                };
                let extra = st
                    .headers
                    .lock()
                    .unwrap()
                    .get(&path)
                    .cloned()
                    .unwrap_or_default();
                st.got.lock().unwrap().push(Got {
                    path,
                    headers,
                    body,
                    at: Instant::now(),
                });
                st.notify.notify_waiters();
                let mut resp = axum::http::Response::builder().status(status);
                for (k, v) in extra {
                    resp = resp.header(k, v);
                }
                resp.body(axum::body::Body::from("answer from the test receiver"))
                    .unwrap()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer these statuses on `path`, one per request; the last one sticks.
    pub fn set_statuses(&self, path: &str, statuses: &[u16]) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .insert(path.to_string(), statuses.to_vec());
    }

    /// Add this header to every answer on `path`.
    pub fn set_header(&self, path: &str, name: &str, value: &str) {
        self.state
            .headers
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push((name.into(), value.into()));
    }

    pub fn set_delay(&self, path: &str, d: Duration) {
        self.state
            .delays
            .lock()
            .unwrap()
            .insert(path.to_string(), d);
    }

    pub fn got(&self, path: &str) -> Vec<Got> {
        self.state
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Got> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until `path` has had `n` requests; panics after `within`.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Got> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.state.notify.notified();
            let got = self.got(path);
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{path}: got {} requests, expected {n} within {within:?}",
                    got.len()
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

// ---- The host ----------------------------------------------------------------

pub struct Host {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub config: PathBuf,
    log: PathBuf,
    http: reqwest::Client,
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Host {
    /// Writes a config (`[server]`, `[plugins]`, `[store]` are added) and plugin
    /// files (`(name in plugins.dir, source)`), then starts `hookwasm serve`.
    pub async fn start(config: &str, plugins: &[(&str, PathBuf)]) -> Host {
        let cache = repo().join("target/test-plugin-cache");
        // The key beside the folder, as the command line keeps it, so that the
        // host and `plugin test` in the tests share one cache.
        let key = repo().join("target/test-plugin-cache.key");
        let extra = format!(
            "cache_dir = {:?}\ncache_key = {:?}\n",
            cache.to_str().unwrap(),
            key.to_str().unwrap()
        );
        Host::start_with(config, plugins, &extra).await
    }

    /// Like `start`, with `plugins_extra` lines in the `[plugins]` section.
    pub async fn start_with(
        config: &str,
        plugins: &[(&str, PathBuf)],
        plugins_extra: &str,
    ) -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        for (name, src) in plugins {
            std::fs::copy(src, dir.path().join("plugins").join(name)).unwrap();
        }
        Host::start_in(dir, config, plugins_extra).await
    }

    /// Like `start_with`, in a folder the test has laid out (`plugins/` in it).
    pub async fn start_in(dir: tempfile::TempDir, config: &str, plugins_extra: &str) -> Host {
        let addr = free_port();
        let text = format!(
            "[server]\nlisten = \"{addr}\"\n\n[plugins]\ndir = \"plugins\"\n{plugins_extra}\n[store]\npath = \"data/hookwasm.db\"\n\n{config}"
        );
        let path = dir.path().join("hookwasm.toml");
        std::fs::write(&path, text).unwrap();
        let mut host = Host {
            child: None,
            log: dir.path().join("host.log"),
            dir,
            addr,
            config: path,
            http: reqwest::Client::new(),
        };
        host.spawn().await;
        host
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("HOOKWASM_LOG", "info,hookwasm=debug,plugin=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("http://{}/healthz", self.addr))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hookwasm exited ({status}) before serving:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hookwasm did not serve within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs an event as `application/json`; returns the status and JSON answer.
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        self.post_with(body, "application/json", None).await
    }

    pub async fn post_with(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: &str,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(self.url("/v1/events"))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let json = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub async fn status(&self) -> serde_json::Value {
        self.http
            .get(self.url("/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Replaces a plugin the safe way: copy beside it, then rename over it.
    pub fn install_plugin(&self, name: &str, src: &Path) {
        let tmp = self.plugins().join(format!(".{name}.tmp"));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, self.plugins().join(name)).unwrap();
    }

    /// Waits until `/v1/status` says `file` serves the version of `src`.
    pub async fn wait_serving(&self, file: &str, hash: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status().await;
            let serving = st["plugins"].as_array().unwrap().iter().any(|p| {
                p["file"] == file && p["serving"].as_str().is_some_and(|s| s.ends_with(hash))
            });
            if serving {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{file}@{hash} never served: {st}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a store inspection command against this host's config.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        let config = self.config.to_str().unwrap();
        all.extend(["--config", config]);
        run(&all)
    }

    /// The deliveries in the store, as `hookwasm deliveries --json` prints them.
    pub fn deliveries(&self, client: &str) -> Vec<serde_json::Value> {
        let (code, out, err) = self.cli(&[
            "deliveries",
            "--client",
            client,
            "--limit",
            "100000",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn sigterm(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        unsafe_kill(child.id(), "TERM");
        wait_exit(child)
    }

    pub fn kill9(&mut self) {
        let child = self.child.as_mut().unwrap();
        unsafe_kill(child.id(), "KILL");
        wait_exit(child);
    }

    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "hookwasm did not exit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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

/// `[delivery]` that lets the host deliver to the test receivers on loopback.
pub const LOOPBACK: &str = "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n";

/// A `[[clients]]` entry.
pub fn client(id: &str, url: &str, extra: &str) -> String {
    format!("[[clients]]\nid = \"{id}\"\nurl = \"{url}\"\n{extra}\n")
}

/// A host with one client `id` that delivers to `recv` at `/{id}` (loopback
/// allowed), its own keys in `extra`, and these plugin files.
pub async fn host_with_client(
    recv: &Receiver,
    id: &str,
    extra: &str,
    plugins: &[(&str, PathBuf)],
) -> Host {
    let config = format!(
        "{LOOPBACK}{}",
        client(id, &recv.url(&format!("/{id}")), extra)
    );
    Host::start(&config, plugins).await
}

/// Waits until `n` of a client's deliveries in the store satisfy `done`.
pub async fn wait_rows(
    host: &Host,
    client: &str,
    n: usize,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = host.deliveries(client);
        if rows.iter().filter(|r| done(r)).count() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{client}: {rows:#?}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `hookwasm` with `args` in the folder `cwd`, with extra environment
/// variables; returns (exit code, stdout, stderr).
pub fn run_in(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
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
