//! Config files, built: the sections every config needs are written here once,
//! and a test names only what is its own (a client's keys, a `[server]` timeout,
//! the TOML a config-error test is about).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::{Host, Receiver, on_postgres, plugin, postgres, repo, run};

/// Where the compiled-code cache is.
#[derive(Clone, Debug)]
enum Cache {
    /// `target/test-plugin-cache`, shared by every host and `hookwasm` run of
    /// the tests, its key beside it (as the command line keeps it).
    Shared,
    /// `cache_dir` here, the key where the host keeps it by default.
    Dir(PathBuf),
    /// No cache keys at all: the host's defaults.
    Default,
}

/// A `hookwasm.toml`: `[server]`, `[plugins]`, `[store]`, `[delivery]`, the
/// clients, then any TOML as is; and the plugin files to put in `plugins.dir`.
///
/// The store is `data/hookwasm.db` beside the file, or, on PostgreSQL (see
/// [`on_postgres`]), a database made for this config when it is first written.
/// A clone keeps that database: a host restarted with a changed config finds
/// its store again, and clones started in other folders are several hosts on
/// one store.
#[derive(Clone, Debug)]
pub struct Config {
    listen: String,
    server: Vec<String>,
    cache: Cache,
    plugins: Vec<String>,
    loopback: bool,
    delivery: Vec<String>,
    clients: Vec<Client>,
    toml: Vec<String>,
    store: Vec<String>,
    /// On PostgreSQL, the store's URL, made once for this config and its clones.
    database: Arc<OnceLock<String>>,
    /// The SQLite file even on PostgreSQL (a store to migrate from).
    embedded: bool,
    pub(super) files: Vec<(String, PathBuf)>,
    /// Environment variables of the host's process.
    pub(super) env: Vec<(String, String)>,
}

impl Config {
    /// What a host under test runs with: deliveries to the test receivers on
    /// loopback allowed, the shared compiled-code cache.
    pub fn new() -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            server: vec![format!("admin_tokens = [\"{}\"]", super::OPERATOR)],
            cache: Cache::Shared,
            plugins: Vec::new(),
            loopback: true,
            delivery: Vec::new(),
            clients: Vec::new(),
            toml: Vec::new(),
            store: Vec::new(),
            database: Arc::default(),
            embedded: false,
            files: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Only the keys a config must have, for `hookwasm serve --config` runs that
    /// end in a config error: no loopback, no cache keys, `listen` 127.0.0.1:0.
    pub fn minimal() -> Config {
        Config {
            cache: Cache::Default,
            loopback: false,
            ..Config::new()
        }
    }

    /// `server.listen` in a written file (a started host listens on its own
    /// socket, whose address it writes there).
    pub fn listen(mut self, addr: impl ToString) -> Config {
        self.listen = addr.to_string();
        self
    }

    /// A line in `[server]`: `ingest_token = "…"`, a timeout…
    pub fn server(mut self, line: &str) -> Config {
        self.server.push(line.into());
        self
    }

    /// An environment variable of the host: `HOOKWASM_LOG_FORMAT=json`…
    pub fn env(mut self, key: &str, value: &str) -> Config {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A line in `[plugins]`: `recycle_after = 4`…
    pub fn plugins(mut self, line: &str) -> Config {
        self.plugins.push(line.into());
        self
    }

    /// The compiled-code cache in `dir` instead of the shared one.
    pub fn cache_dir(mut self, dir: &Path) -> Config {
        self.cache = Cache::Dir(dir.to_path_buf());
        self
    }

    /// No private network allowed: the delivery guard as shipped.
    pub fn without_loopback(mut self) -> Config {
        self.loopback = false;
        self
    }

    /// A line in `[delivery]`.
    pub fn delivery(mut self, line: &str) -> Config {
        self.delivery.push(line.into());
        self
    }

    pub fn client(mut self, client: Client) -> Config {
        self.clients.push(client);
        self
    }

    /// The config without client `id`.
    pub fn without_client(mut self, id: &str) -> Config {
        self.clients.retain(|c| c.id != id);
        self
    }

    /// The store in the PostgreSQL database at `url` (a copy made by `migrate`).
    pub fn database(mut self, url: &str) -> Config {
        self.embedded = false;
        self.database = Arc::new(OnceLock::from(url.to_string()));
        self
    }

    /// The store in `data/hookwasm.db`, even when the others are in PostgreSQL.
    pub fn embedded(mut self) -> Config {
        self.embedded = true;
        self
    }

    /// A line in `[store]`: `retention = "30d"`…
    pub fn store(mut self, line: &str) -> Config {
        self.store.push(line.into());
        self
    }

    /// TOML added at the end as is: what a config-error test is about.
    pub fn toml(mut self, text: &str) -> Config {
        self.toml.push(text.into());
        self
    }

    /// The example or fixture plugin `name`, built from source, as
    /// `plugins/{name}.wasm`.
    pub fn install(self, name: &str) -> Config {
        self.install_as(&format!("{name}.wasm"), plugin(name))
    }

    /// `src` as `plugins/{file}`.
    pub fn install_as(mut self, file: &str, src: PathBuf) -> Config {
        self.files.push((file.into(), src));
        self
    }

    /// The config text, listening on `listen`.
    pub fn render(&self, listen: &str) -> String {
        fn lines(text: &mut String, lines: &[String]) {
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
        }
        let mut t = format!("[server]\nlisten = \"{listen}\"\n");
        lines(&mut t, &self.server);
        t.push_str("\n[plugins]\ndir = \"plugins\"\n");
        match &self.cache {
            Cache::Shared => {
                let cache = repo().join("target/test-plugin-cache");
                let key = repo().join("target/test-plugin-cache.key");
                t.push_str(&format!(
                    "cache_dir = {:?}\ncache_key = {:?}\n",
                    cache.to_str().unwrap(),
                    key.to_str().unwrap()
                ));
            }
            Cache::Dir(dir) => t.push_str(&format!("cache_dir = {:?}\n", dir.to_str().unwrap())),
            Cache::Default => {}
        }
        lines(&mut t, &self.plugins);
        if on_postgres() && !self.embedded {
            let url = self.database.get_or_init(postgres::fresh_database);
            t.push_str(&format!("\n[store]\nurl = {url:?}\n"));
        } else {
            t.push_str("\n[store]\npath = \"data/hookwasm.db\"\n");
        }
        lines(&mut t, &self.store);
        if self.loopback || !self.delivery.is_empty() {
            t.push_str("\n[delivery]\n");
            if self.loopback {
                t.push_str("allowed_networks = [\"127.0.0.0/8\"]\n");
            }
            lines(&mut t, &self.delivery);
        }
        for c in &self.clients {
            t.push('\n');
            t.push_str(&c.render());
        }
        for text in &self.toml {
            t.push('\n');
            t.push_str(text);
            if !text.ends_with('\n') {
                t.push('\n');
            }
        }
        t
    }

    /// Writes the config as `dir/hookwasm.toml`, for a `hookwasm` run of the
    /// test's own; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("hookwasm.toml");
        std::fs::write(&path, self.render(&self.listen)).unwrap();
        path
    }

    /// Runs `hookwasm serve --config` on this config, written in `dir`, to an
    /// end (a config the host refuses); returns (exit code, stdout, stderr).
    pub fn serve_in(&self, dir: &Path) -> (i32, String, String) {
        let path = self.write(dir);
        run(&["serve", "--config", path.to_str().unwrap()])
    }

    /// Starts `hookwasm serve` with this config in a new folder.
    pub async fn start(self) -> Host {
        self.start_in(tempfile::tempdir().unwrap()).await
    }

    /// Starts `hookwasm serve` with this config in `dir`, which the test may
    /// have laid out (`plugins/` in it).
    pub async fn start_in(self, dir: tempfile::TempDir) -> Host {
        Host::start(self, dir).await
    }
}

/// The file's text, as `write` writes it.
impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(&self.listen))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

/// A `[[clients]]` entry.
#[derive(Clone, Debug)]
pub struct Client {
    id: String,
    url: String,
    keys: Vec<String>,
    limits: Vec<String>,
    config: Vec<String>,
}

impl Client {
    pub fn new(id: &str, url: &str) -> Client {
        Client {
            id: id.into(),
            url: url.into(),
            keys: Vec::new(),
            limits: Vec::new(),
            config: Vec::new(),
        }
    }

    /// Client `id` delivering to `recv` at `/{id}`.
    pub fn to(recv: &Receiver, id: &str) -> Client {
        Client::new(id, &recv.url(&format!("/{id}")))
    }

    /// `plugin = "{file}"`.
    pub fn plugin(self, file: &str) -> Client {
        self.key(&format!("plugin = \"{file}\""))
    }

    /// `secret = "{secret}"`.
    pub fn secret(self, secret: &str) -> Client {
        self.key(&format!("secret = \"{secret}\""))
    }

    /// `max_in_flight = {n}`.
    pub fn max_in_flight(self, n: usize) -> Client {
        self.key(&format!("max_in_flight = {n}"))
    }

    /// `retry_schedule = [...]`.
    pub fn retry_schedule(self, delays: &[&str]) -> Client {
        let list: Vec<String> = delays.iter().map(|d| format!("\"{d}\"")).collect();
        self.key(&format!("retry_schedule = [{}]", list.join(", ")))
    }

    /// Any other line of the client's own: `events = […]`, `enabled = false`…
    pub fn key(mut self, line: &str) -> Client {
        self.keys.push(line.into());
        self
    }

    /// `{key} = "{value}"` in `[clients.limits]`.
    pub fn limit(mut self, key: &str, value: &str) -> Client {
        self.limits.push(format!("{key} = \"{value}\""));
        self
    }

    /// `{key} = "{value}"` in `[clients.config]`, in this order.
    pub fn config(mut self, key: &str, value: &str) -> Client {
        self.config.push(format!("{key} = \"{value}\""));
        self
    }

    fn render(&self) -> String {
        let mut t = format!(
            "[[clients]]\nid = \"{}\"\nurl = \"{}\"\n",
            self.id, self.url
        );
        for l in &self.keys {
            t.push_str(l);
            t.push('\n');
        }
        for (table, lines) in [("limits", &self.limits), ("config", &self.config)] {
            if !lines.is_empty() {
                t.push_str(&format!("[clients.{table}]\n"));
                for l in lines {
                    t.push_str(l);
                    t.push('\n');
                }
            }
        }
        t
    }
}
