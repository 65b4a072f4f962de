//! The real `hookwasm serve`, in a temp folder, on a socket the test bound.
//!
//! The test binds 127.0.0.1:0 once and keeps the listener for the host's whole
//! life; each `hookwasm serve` it starts gets the socket as descriptor 3 with
//! `LISTEN_FDS=1` (socket activation), so the port is never free for anyone
//! else to take, not even between a stop and a restart.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{Config, bin, eventually, run};

/// How long a host may take to serve, or to exit once told.
const START: Duration = Duration::from_secs(60);
/// How long a host may take to show a row or a plugin version.
const SHOW: Duration = Duration::from_secs(60);

pub struct Host {
    child: Option<Child>,
    listener: TcpListener,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    setup: Config,
    log: PathBuf,
    http: reqwest::Client,
}

impl Host {
    /// Copies the plugin files into `dir/plugins`, writes `dir/hookwasm.toml`
    /// and starts `hookwasm serve` on a socket bound here.
    pub(super) async fn start(setup: Config, dir: tempfile::TempDir) -> Host {
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for (name, src) in &setup.files {
            std::fs::copy(src, plugins.join(name)).unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = dir.path().join("hookwasm.toml");
        std::fs::write(&config, setup.render(&addr.to_string())).unwrap();
        let mut host = Host {
            child: None,
            listener,
            log: dir.path().join("host.log"),
            dir,
            addr,
            config,
            setup,
            http: reqwest::Client::new(),
        };
        host.spawn().await;
        host
    }

    /// Starts `hookwasm serve` with the socket as descriptor 3, and waits until
    /// it answers `/healthz`.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let fd = self.listener.as_raw_fd();
        let mut command = Command::new(bin());
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("HOOKWASM_LOG", "info,hookwasm=debug,plugin=debug")
            .env("LISTEN_FDS", "1")
            .envs(self.setup.env.iter().map(|(k, v)| (k, v)))
            .env_remove("LISTEN_PID")
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: between fork and exec the closure only calls dup2 and fcntl,
        // which are async-signal-safe, and allocates nothing.
        unsafe { command.pre_exec(move || as_descriptor_3(fd)) };
        self.child = Some(command.spawn().unwrap());

        let wait = eventually(START, "hookwasm to serve /healthz").log(self);
        let url = self.url("/healthz");
        let log = self.log.clone();
        let (child, http) = (self.child.as_mut().unwrap(), &self.http);
        wait.until(async || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "hookwasm exited ({status}) before serving:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            // Until the host accepts, a connection waits in the socket's
            // queue: ask again, rather than wait for a host that died.
            let answer = http.get(&url).timeout(Duration::from_secs(1)).send().await;
            match answer {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(format!("/healthz answered {}", r.status())),
                Err(e) => Err(format!("/healthz: {e}")),
            }
        })
        .await;
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

    pub fn log_path(&self) -> &Path {
        &self.log
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
            .bearer_auth(super::OPERATOR)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Calls the API: `method path` with `token` as the bearer and a JSON
    /// `body`; returns the status and the JSON answer (`Null` for none).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        self.api_bytes(method, path, token, body).await
    }

    /// Creates client `id` through the API (`spec`'s other keys as given) and a
    /// token for it; returns (its secret, its token).
    pub async fn api_client(
        &self,
        id: &str,
        url: &str,
        spec: serde_json::Value,
    ) -> (String, String) {
        let mut body = serde_json::json!({ "id": id, "url": url });
        if let serde_json::Value::Object(extra) = spec {
            body.as_object_mut().unwrap().extend(extra);
        }
        let op = Some(super::OPERATOR);
        let (status, created) = self.api("POST", "/v1/admin/clients", op, Some(body)).await;
        assert_eq!(status, 201, "creating client {id}: {created}");
        let (status, tok) = self
            .api("POST", &format!("/v1/admin/clients/{id}/tokens"), op, None)
            .await;
        assert_eq!(status, 201, "a token for {id}: {tok}");
        let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
        (text(&created["secret"]), text(&tok["token"]))
    }

    /// As [`Host::api`], with the body as bytes (a plugin upload).
    pub async fn api_bytes(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{path} answered {status} with a body that is not JSON ({e}): {text}")
            })
        };
        (status, json)
    }

    /// Replaces a plugin the safe way: copy beside it, then rename over it.
    pub fn install_plugin(&self, name: &str, src: &Path) {
        let tmp = self.plugins().join(format!(".{name}.tmp"));
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, self.plugins().join(name)).unwrap();
    }

    /// Waits until `/v1/status` says `file` serves the version `hash`.
    pub async fn wait_serving(&self, file: &str, hash: &str) {
        eventually(SHOW, format_args!("{file}@{hash} to serve"))
            .every(Duration::from_millis(20))
            .log(self)
            .until(async || {
                let st = self.status().await;
                let serving = st["plugins"].as_array().unwrap().iter().any(|p| {
                    p["file"] == file && p["serving"].as_str().is_some_and(|s| s.ends_with(hash))
                });
                if serving { Ok(()) } else { Err(st) }
            })
            .await
    }

    /// Runs a store inspection command against this host's config.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        let config = self.config.to_str().unwrap();
        all.extend(["--config", config]);
        run(&all)
    }

    /// The deliveries in the store, as `hookwasm deliveries --json` prints them
    /// (newest first).
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

    /// Waits until `n` of a client's deliveries in the store satisfy `done`;
    /// returns them all.
    pub async fn wait_rows(
        &self,
        client: &str,
        n: usize,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        eventually(SHOW, format_args!("{n} matching deliveries of {client}"))
            .every(Duration::from_millis(100))
            .log(self)
            .until(async || {
                let rows = self.deliveries(client);
                if rows.iter().filter(|r| done(r)).count() >= n {
                    Ok(rows)
                } else {
                    Err(format!("{rows:#?}"))
                }
            })
            .await
    }

    /// Waits until `n` of a client's deliveries are in `state`.
    pub async fn wait_state(&self, client: &str, n: usize, state: &str) -> Vec<serde_json::Value> {
        self.wait_rows(client, n, |r| r["state"] == state).await
    }

    /// Sends SIGTERM and waits for the exit. The host installs its handler as
    /// its accept loop first runs, which can be just after it answered a first
    /// request (one queued on the socket before it started, say); a SIGTERM
    /// before that would kill it outright, so this waits for the handler first.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let pid = self.pid();
        eventually(START, "hookwasm to handle SIGTERM")
            .every(Duration::from_millis(10))
            .log(self)
            .until(async || catches(pid, libc::SIGTERM))
            .await;
        self.signal(libc::SIGTERM).await
    }

    /// Sends SIGKILL and waits for the exit.
    pub async fn kill9(&mut self) {
        self.signal(libc::SIGKILL).await;
    }

    async fn signal(&mut self, signal: libc::c_int) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill only sends a signal, to our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        eventually(START, format_args!("hookwasm (pid {pid}) to exit"))
            .every(Duration::from_millis(20))
            .until(async || child.try_wait().unwrap())
            .await
    }

    /// Starts the host again, on the same socket, after `sigterm` or `kill9`.
    /// Connections made while no host ran are closed first, as a closed port
    /// would have refused them.
    pub async fn restart(&mut self) {
        assert!(
            self.child.as_mut().unwrap().try_wait().unwrap().is_some(),
            "restart a host that stopped (sigterm, kill9), or use restart_with"
        );
        self.listener.set_nonblocking(true).unwrap();
        while self.listener.accept().is_ok() {}
        self.spawn().await;
    }

    /// Changes the config file while the host runs (written beside, then
    /// renamed over, as configuration tools do); returns the new text.
    pub fn rewrite_config(&mut self, change: impl FnOnce(Config) -> Config) -> String {
        self.setup = change(self.setup.clone());
        let text = self.setup.render(&self.addr.to_string());
        self.write_config(&text);
        text
    }

    /// The config text `change` makes of the current one, which it becomes
    /// (not written: the test puts it where it wants).
    pub fn setup_with(&mut self, change: impl FnOnce(Config) -> Config) -> String {
        self.setup = change(self.setup.clone());
        self.setup.render(&self.addr.to_string())
    }

    /// Waits until client `id` has a worker (the status names it).
    pub async fn wait_client(&self, id: &str) {
        eventually(SHOW, format!("client {id} to be served"))
            .log(self)
            .until(async || {
                let st = self.status().await;
                let clients = st["clients"].as_array().cloned().unwrap_or_default();
                clients.iter().any(|c| c["id"] == id).then_some(())
            })
            .await;
    }

    /// GETs `path` as the operator; the status and the text.
    pub async fn api_text(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(super::OPERATOR)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// This host's `/metrics`: the sum of every sample of counter or gauge
    /// `name` whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, text) = self.api_text("/metrics").await;
        assert_eq!(status, 200, "/metrics: {text}");
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name} is neither a counter nor a gauge"),
            })
            .sum()
    }

    /// Puts `text` in the config file (beside, then renamed over).
    pub fn write_config(&self, text: &str) {
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Changes the config (`change` gets the one the host started with), stops
    /// the host with SIGTERM (it must exit cleanly) and starts it again: the
    /// config is read at start.
    pub async fn restart_with(&mut self, change: impl FnOnce(Config) -> Config) {
        self.setup = change(self.setup.clone());
        std::fs::write(&self.config, self.setup.render(&self.addr.to_string())).unwrap();
        let status = self.sigterm().await;
        assert!(status.success(), "{status}\n{}", self.log());
        self.restart().await;
    }
}

/// Whether process `pid` has a handler for `signal` (`SigCgt` in its status).
fn catches(pid: u32, signal: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// In the child, between fork and exec: the socket as descriptor 3, kept open
/// across exec.
fn as_descriptor_3(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 and fcntl on descriptors this process owns.
    let ok = unsafe {
        if fd == 3 {
            // Already there: only clear close-on-exec (dup2 would not).
            let flags = libc::fcntl(3, libc::F_GETFD);
            flags >= 0 && libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == 0
        } else {
            // The new descriptor has close-on-exec clear.
            libc::dup2(fd, 3) == 3
        }
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
