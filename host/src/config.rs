//! The configuration file: parsed, checked and resolved before anything starts.
//!
//! Every mistake an operator can make here ends in one message that names the key
//! (and the client, where it is a client's) and says what is expected. A key the
//! host does not know is an error, never silently ignored. Paths are resolved
//! against the config file's folder so the host behaves the same from any working
//! directory. Nothing here touches the network, the store or the plugins.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use serde::Deserialize;

use crate::event::KNOWN_EVENTS;

/// The whole configuration, checked and with every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The folder the config file is in; relative paths were resolved against it.
    pub base_dir: PathBuf,
    /// The file it was read from (`None` when parsed from text).
    pub path: Option<PathBuf>,
    /// That file's stamp, taken just before it was read: a change made after
    /// that, even while the host was still starting, is seen by the reloader.
    pub stamp: Option<FileStamp>,
    pub server: Server,
    pub plugins: Plugins,
    pub store: Store,
    /// `[delivery]`: what every client starts from, those created through the
    /// API included.
    pub delivery: Delivery,
    pub clients: Vec<Client>,
}

/// `Debug` by hand: the tokens are never printed.
#[derive(Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub ingest_token: Option<String>,
    /// Operator tokens for the API (`admin_tokens`, and `HOOKWASM_ADMIN_TOKEN`).
    pub admin_tokens: Vec<String>,
    /// `GET /metrics` without a token (a scraper on a private network).
    pub open_metrics: bool,
    /// `GET /v1/status` without a token.
    pub open_status: bool,
    /// `POST /v1/events` takes an event once within this window (keyed on its
    /// own identity); `None`: every post is a new event.
    pub dedup_window: Option<Duration>,
    /// The largest event body accepted, in bytes.
    pub max_body: usize,
    /// The largest body of `POST /v1/events:batch`, in bytes.
    pub max_batch_body: usize,
    /// The most events in one batch.
    pub max_batch_events: usize,
    /// Time a client has to send a request's line and headers, from its first byte.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body, once its headers are in.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listen)
            .field("ingest_token", &self.ingest_token.as_ref().map(|_| "…"))
            .field("admin_tokens", &self.admin_tokens.len())
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Plugins {
    pub dir: PathBuf,
    pub limits: PluginLimits,
    /// Compiled components, keyed by content; next to the store by default.
    pub cache_dir: PathBuf,
    /// The key that authenticates compiled components; beside the store by default.
    pub cache_key: PathBuf,
    /// Idle instances kept per plugin version and client.
    pub warm_instances: usize,
    /// Calls after which an instance is replaced by a fresh one.
    pub recycle_after: u32,
    /// The largest plugin file read, in bytes; a larger one is refused unread.
    pub max_file_size: u64,
}

/// What one plugin call may use. A call that goes over is stopped and recorded as
/// a plugin error for that delivery alone.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLimits {
    /// Wall-clock budget of one call (enforced by epoch interruption).
    pub deadline: Duration,
    /// Linear memory a plugin instance may grow to, in bytes.
    pub memory: usize,
    /// The largest body a plugin may return, in bytes.
    pub max_output: usize,
    /// The most headers a plugin may add.
    pub max_headers: usize,
    /// Log lines kept per call (host `log` and captured stdout/stderr together).
    pub max_log_lines: usize,
    /// Bytes kept of a skip reason or an error message; the rest is cut.
    pub max_reason: usize,
    /// Bytes of headers a plugin may add (names, values and content type together).
    pub max_header_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline: Duration::from_millis(500),
            memory: 128 << 20,
            max_output: 4 << 20,
            max_headers: 32,
            max_log_lines: 32,
            max_reason: 1 << 10,
            max_header_bytes: 8 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// The embedded store's file (when `url` is `None`).
    pub path: PathBuf,
    /// `postgres://…`: the store is in PostgreSQL, shared by every host
    /// with the same url (`[store] url` or `HOOKWASM_STORE_URL`).
    pub url: Option<String>,
    /// On PostgreSQL, how long a host's claim on work lasts unless renewed:
    /// a host that dies has its work taken over about this long after.
    pub lease: Duration,
    /// Finished deliveries, their attempts and unreferenced events older
    /// than this are deleted; `None` keeps everything.
    pub retention: Option<Duration>,
}

/// How deliveries to one client are made. `[delivery]` sets the defaults and every
/// client may override any key.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The waits between attempts: `n` waits mean `n + 1` attempts in all.
    pub retry_schedule: Vec<Duration>,
    /// Total time for one attempt, from connecting to the last byte of the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Allow every address, private and loopback ranges included.
    pub allow_private_networks: bool,
    /// Networks allowed although they are private, loopback or link-local.
    pub allowed_networks: Vec<IpNet>,
    /// Requests to this client in flight at once.
    pub max_in_flight: usize,
    /// Requests per second at most (attempts are spaced `1/rate` apart);
    /// `None`: as fast as `max_in_flight` allows.
    pub rate_limit: Option<u32>,
    /// A client whose deliveries have all failed for this long is disabled.
    pub disable_after: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        // Svix's schedule: 8 attempts over about 27 hours.
        let schedule = ["5s", "5m", "30m", "2h", "5h", "10h", "10h"];
        Delivery {
            retry_schedule: schedule
                .iter()
                .map(|s| humantime::parse_duration(s).unwrap())
                .collect(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            allow_private_networks: false,
            allowed_networks: Vec::new(),
            max_in_flight: 16,
            rate_limit: None,
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// One client application, with its own delivery settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub id: String,
    pub url: reqwest::Url,
    /// A file name in `plugins.dir`.
    pub plugin: Option<String>,
    /// Empty means every event.
    pub events: Vec<String>,
    /// Signing secrets, newest first; each signs every attempt.
    pub secrets: Vec<Secret>,
    pub enabled: bool,
    pub config: Vec<(String, String)>,
    pub delivery: Delivery,
    pub limits: PluginLimits,
}

impl Client {
    /// Whether this client gets a delivery for an event of this name.
    pub fn wants(&self, event_name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event_name)
    }
}

/// A Standard Webhooks secret: `whsec_` and the base64 of the key.
#[derive(Clone, PartialEq)]
pub struct Secret {
    pub key: Vec<u8>,
    /// When a rotated-out secret stops signing (ms); `None` for a current one.
    pub until: Option<i64>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn parse(text: &str) -> Result<Secret> {
        use base64::Engine as _;
        let b64 = text
            .strip_prefix("whsec_")
            .ok_or_else(|| anyhow!("a secret starts with `whsec_` followed by base64"))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| anyhow!("the part after `whsec_` is not base64 ({e})"))?;
        if !(24..=64).contains(&key.len()) {
            bail!(
                "the key is {} bytes; Standard Webhooks wants 24 to 64",
                key.len()
            );
        }
        Ok(Secret { key, until: None })
    }

    /// A fresh random secret, as text.
    pub fn generate() -> String {
        use base64::Engine as _;
        let key: [u8; 32] = rand::random();
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// Whether it still signs at `now` (ms).
    pub fn signs_at(&self, now: i64) -> bool {
        self.until.is_none_or(|t| now < t)
    }
}

// ---- The file as written -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    plugins: RawPlugins,
    store: RawStore,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    clients: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    ingest_token: Option<String>,
    #[serde(default)]
    admin_tokens: Vec<String>,
    #[serde(default)]
    open_metrics: bool,
    #[serde(default)]
    open_status: bool,
    dedup_window: Option<HumanDuration>,
    max_body: Option<ByteSize>,
    max_batch_body: Option<ByteSize>,
    max_batch_events: Option<u64>,
    header_timeout: Option<HumanDuration>,
    body_timeout: Option<HumanDuration>,
    idle_timeout: Option<HumanDuration>,
    max_connections: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    dir: PathBuf,
    cache_dir: Option<PathBuf>,
    cache_key: Option<PathBuf>,
    warm_instances: Option<u64>,
    recycle_after: Option<u64>,
    max_file_size: Option<ByteSize>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    path: PathBuf,
    url: Option<String>,
    lease: Option<HumanDuration>,
    retention: Option<HumanDuration>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    retry_schedule: Option<Vec<HumanDuration>>,
    timeout: Option<HumanDuration>,
    connect_timeout: Option<HumanDuration>,
    allow_private_networks: Option<bool>,
    allowed_networks: Option<Vec<String>>,
    max_in_flight: Option<u64>,
    rate_limit: Option<u64>,
    disable_after: Option<HumanDuration>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    deadline: Option<HumanDuration>,
    memory: Option<ByteSize>,
    max_output: Option<ByteSize>,
    max_headers: Option<u64>,
    max_log_lines: Option<u64>,
    max_reason: Option<ByteSize>,
    max_header_bytes: Option<ByteSize>,
}

/// A client's own keys. Delivery keys (`timeout`, …) and `[clients.limits]` are
/// read from what is left, so both lists are written once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    url: String,
    plugin: Option<String>,
    #[serde(default)]
    events: Vec<String>,
    secret: Option<OneOrMany>,
    enabled: Option<bool>,
    /// In the order of the file (toml's `preserve_order`): the WIT promises
    /// plugins the entries as written.
    #[serde(default)]
    config: toml::Table,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A duration written the human way: `"5s"`, `"30m"`, `"2h"`, `"1day"`.
#[derive(Clone, Copy)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration like \"30s\" or \"5m\" ({e})"
                ))
            })
    }
}

/// A size: a whole number of bytes, or a string such as `"64MiB"` or `"512KiB"`.
#[derive(Clone, Copy)]
struct ByteSize(usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom(format!("{n} is not a size in bytes"))),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like \"64MiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "`{other}` in `{s}` is not a unit (B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

// ---- Loading ---------------------------------------------------------------------

/// What tells one version of a file from the next without reading it: its size,
/// modification time, inode and device (a file renamed over it, or a link
/// pointed elsewhere, is another inode). A rewrite in place that keeps its size
/// within one tick of the file system's clock is not told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp(u64, Option<std::time::SystemTime>, u64, u64);

impl FileStamp {
    /// The stamp of the file `path` names, following links; `None` if there is
    /// none to read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp(m.len(), m.modified().ok(), m.ino(), m.dev()))
    }
}

impl Config {
    /// Reads and checks the file at `path`; `HOOKWASM_ADMIN_TOKEN` adds an
    /// operator token.
    pub fn load(path: &Path) -> Result<Config> {
        let stamp = FileStamp::of(path);
        let mut config = Config::load_file(path)?;
        config.path = Some(path.to_path_buf());
        config.stamp = stamp;
        if let Ok(t) = std::env::var("HOOKWASM_ADMIN_TOKEN")
            && !t.is_empty()
        {
            if t.len() < 16 {
                bail!(
                    "HOOKWASM_ADMIN_TOKEN is {} characters; an operator token needs at least 16",
                    t.len()
                );
            }
            config.server.admin_tokens.push(t);
        }
        Ok(config)
    }

    fn load_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Config::parse(&text, &base_dir).with_context(|| format!("config file {}", path.display()))
    }

    /// Checks `text` as a config file in folder `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| anyhow!("{}", one_line(&e.to_string())))?;

        let listen = raw.server.listen.parse::<SocketAddr>().map_err(|_| {
            anyhow!(
                "server.listen = {:?} is not an address like \"127.0.0.1:8080\"",
                raw.server.listen
            )
        })?;
        if let Some(t) = &raw.server.ingest_token
            && t.is_empty()
        {
            bail!("server.ingest_token is empty: remove the key or give it a value");
        }
        let rs = &raw.server;
        let server = Server {
            listen,
            max_body: size_in("server.max_body", rs.max_body, 1 << 20, 1 << 10, 1 << 30)?,
            max_batch_body: size_in(
                "server.max_batch_body",
                rs.max_batch_body,
                16 << 20,
                1 << 10,
                1 << 30,
            )?,
            max_batch_events: count_in(
                "server.max_batch_events",
                rs.max_batch_events,
                1000,
                1,
                100_000,
            )? as usize,
            header_timeout: duration_in(
                "server.header_timeout",
                rs.header_timeout,
                SECS(10),
                SECS(1),
                SECS(600),
            )?,
            body_timeout: duration_in(
                "server.body_timeout",
                rs.body_timeout,
                SECS(30),
                SECS(1),
                SECS(3600),
            )?,
            idle_timeout: duration_in(
                "server.idle_timeout",
                rs.idle_timeout,
                SECS(60),
                SECS(1),
                SECS(86400),
            )?,
            max_connections: count_in(
                "server.max_connections",
                rs.max_connections,
                4096,
                1,
                1_000_000,
            )? as usize,
            ingest_token: raw.server.ingest_token,
            admin_tokens: raw.server.admin_tokens,
            open_metrics: raw.server.open_metrics,
            open_status: raw.server.open_status,
            dedup_window: match raw.server.dedup_window {
                None => None,
                Some(w) => Some(duration_in(
                    "server.dedup_window",
                    Some(w),
                    SECS(1),
                    SECS(1),
                    DAYS(7),
                )?),
            },
        };
        for (i, t) in server.admin_tokens.iter().enumerate() {
            if t.len() < 16 {
                bail!(
                    "server.admin_tokens[{i}] is {} characters; an operator token needs at least 16 (try `openssl rand -hex 32`)",
                    t.len()
                );
            }
        }

        let limits = apply_limits(
            &PluginLimits::default(),
            &raw.plugins.limits,
            "plugins.limits",
        )?;
        // The environment's url wins over the file's store, either kind: the
        // same file then serves a host on SQLite or one of several on PostgreSQL.
        let env_url = std::env::var("HOOKWASM_STORE_URL")
            .ok()
            .filter(|u| !u.is_empty());
        let url = match (env_url, &raw.store.url) {
            (Some(u), _) => Some(check_store_url("HOOKWASM_STORE_URL", u)?),
            (None, Some(u)) => {
                if !raw.store.path.as_os_str().is_empty() {
                    bail!(
                        "[store] has both path and url: path is the embedded SQLite store, url a PostgreSQL one; keep one"
                    );
                }
                Some(check_store_url("[store] url", u.clone())?)
            }
            (None, None) => None,
        };
        if url.is_none() && raw.store.path.as_os_str().is_empty() {
            bail!(
                "[store] path is missing: the SQLite file the host keeps its events in (or url = \"postgres://…\" for PostgreSQL)"
            );
        }
        if url.is_none() && raw.store.lease.is_some() {
            bail!(
                "[store] lease is for the PostgreSQL store (url); the embedded store has no leases"
            );
        }
        let store = Store {
            lease: duration_in("store.lease", raw.store.lease, SECS(15), SECS(1), SECS(600))?,
            path: if url.is_some() {
                PathBuf::new()
            } else {
                base_dir.join(&raw.store.path)
            },
            url,
            retention: match raw.store.retention {
                None => None,
                Some(r) => Some(duration_in(
                    "store.retention",
                    Some(r),
                    SECS(1),
                    SECS(1),
                    DAYS(3650),
                )?),
            },
        };
        let cache_dir = match &raw.plugins.cache_dir {
            Some(d) => base_dir.join(d),
            None if store.url.is_some() => base_dir.join("plugin-cache"),
            None => store.path.parent().unwrap_or(base_dir).join("plugin-cache"),
        };
        let rp = &raw.plugins;
        let plugins = Plugins {
            dir: base_dir.join(&rp.dir),
            limits,
            cache_key: match &rp.cache_key {
                Some(k) => base_dir.join(k),
                None => store
                    .path
                    .parent()
                    .unwrap_or(base_dir)
                    .join("plugin-cache.key"),
            },
            cache_dir,
            warm_instances: count_in("plugins.warm_instances", rp.warm_instances, 2, 0, 64)?
                as usize,
            recycle_after: count_in(
                "plugins.recycle_after",
                rp.recycle_after,
                10_000,
                1,
                1_000_000_000,
            )? as u32,
            max_file_size: size_in(
                "plugins.max_file_size",
                rp.max_file_size,
                64 << 20,
                1 << 10,
                1 << 30,
            )? as u64,
        };
        let delivery = apply_delivery(&Delivery::default(), &raw.delivery, "delivery")?;

        let mut clients: Vec<Client> = Vec::new();
        for (i, table) in raw.clients.into_iter().enumerate() {
            let client = parse_client(i, table, &delivery, &plugins.limits)?;
            if clients.iter().any(|c| c.id == client.id) {
                bail!(
                    "clients: two clients have the id {:?}; ids must be unique",
                    client.id
                );
            }
            clients.push(client);
        }
        Ok(Config {
            base_dir: base_dir.to_path_buf(),
            path: None,
            stamp: None,
            server,
            plugins,
            store,
            delivery,
            clients,
        })
    }

    /// A client from the keys of a `[[clients]]` table given as JSON (the API's
    /// create and change), checked as strictly as the file's, on this file's
    /// `[delivery]` and limits.
    pub fn client_from_json(
        &self,
        spec: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Client> {
        let mut table = toml::Table::new();
        for (k, v) in spec {
            // JSON's null means "not set", which TOML writes by leaving the key out.
            if v.is_null() {
                continue;
            }
            let v = toml::Value::try_from(v).map_err(|e| anyhow!("{k}: {e}"))?;
            table.insert(k.clone(), v);
        }
        parse_client(0, table, &self.delivery, &self.plugins.limits)
    }

    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }
}

/// toml's messages span several lines with a source excerpt; keep the first line
/// and the position so the error stays one line.
fn one_line(msg: &str) -> String {
    let mut lines = msg.lines().filter(|l| !l.trim().is_empty());
    let head = lines
        .next()
        .unwrap_or("invalid TOML")
        .trim()
        .trim_start_matches("TOML parse error ");
    let detail = msg.lines().last().unwrap_or("").trim();
    if detail.is_empty() || head.contains(detail) {
        head.to_string()
    } else {
        format!("{head}: {detail}")
    }
}

const DELIVERY_KEYS: &[&str] = &[
    "retry_schedule",
    "timeout",
    "connect_timeout",
    "allow_private_networks",
    "allowed_networks",
    "max_in_flight",
    "rate_limit",
    "disable_after",
];

fn parse_client(
    index: usize,
    mut table: toml::Table,
    base: &Delivery,
    limits: &PluginLimits,
) -> Result<Client> {
    let name = match table.get("id") {
        Some(toml::Value::String(s)) => format!("client {s:?}"),
        _ => format!("clients[{index}]"),
    };
    // Split off the delivery overrides, then read the rest strictly.
    let mut overrides = toml::Table::new();
    for key in DELIVERY_KEYS {
        if let Some(v) = table.remove(*key) {
            overrides.insert(key.to_string(), v);
        }
    }
    let raw: RawClient = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("{name}: {}", one_line(&e.to_string())))?;
    let over: RawDelivery = toml::Value::Table(overrides)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("{name}: {}", one_line(&e.to_string())))?;

    // Not only dots either: `.` and `..` are path segments to a browser.
    if raw.id.is_empty()
        || raw.id.chars().all(|c| c == '.')
        || !raw
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "{name}: id {:?} must use only letters, digits, `-`, `_` and `.`, and not only dots",
            raw.id
        );
    }
    let url = reqwest::Url::parse(&raw.url)
        .map_err(|e| anyhow!("{name}: url {:?} is not a URL ({e})", raw.url))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        bail!(
            "{name}: url {:?} must be an http:// or https:// URL with a host",
            raw.url
        );
    }
    if let Some(p) = &raw.plugin
        && (p.contains('/') || p.contains('\\') || !p.ends_with(".wasm"))
    {
        bail!(
            "{name}: plugin {p:?} must be a file name ending in .wasm inside plugins.dir (no folders)"
        );
    }
    for e in &raw.events {
        if !KNOWN_EVENTS.contains(&e.as_str()) {
            bail!(
                "{name}: events names {e:?}, which Phraseanet does not send; known events: {}",
                KNOWN_EVENTS.join(", ")
            );
        }
    }
    let secrets = match raw.secret {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    }
    .iter()
    .map(|s| Secret::parse(s).map_err(|e| anyhow!("{name}: secret: {e}")))
    .collect::<Result<Vec<_>>>()?;
    let mut config = Vec::new();
    for (k, v) in raw.config {
        let v = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                v.to_string()
            }
            _ => bail!(
                "{name}: config.{k} must be a string, number or boolean (plugins get strings)"
            ),
        };
        config.push((k, v));
    }
    Ok(Client {
        delivery: apply_delivery(base, &over, &name)?,
        limits: apply_limits(limits, &raw.limits, &format!("{name}: limits"))?,
        id: raw.id,
        url,
        plugin: raw.plugin,
        events: raw.events,
        secrets,
        enabled: raw.enabled.unwrap_or(true),
        config,
    })
}

fn apply_delivery(base: &Delivery, raw: &RawDelivery, ctx: &str) -> Result<Delivery> {
    let mut d = base.clone();
    let key = |k: &str| format!("{ctx}: {k}");
    if let Some(s) = &raw.retry_schedule {
        if s.len() > 100 {
            bail!("{ctx}: retry_schedule has {} waits; at most 100", s.len());
        }
        d.retry_schedule = s
            .iter()
            .map(|h| {
                duration_in(
                    &key("retry_schedule"),
                    Some(*h),
                    Duration::ZERO,
                    Duration::ZERO,
                    DAYS(30),
                )
            })
            .collect::<Result<_>>()?;
    }
    d.timeout = duration_in(&key("timeout"), raw.timeout, d.timeout, MS(1), SECS(3600))?;
    d.connect_timeout = duration_in(
        &key("connect_timeout"),
        raw.connect_timeout,
        d.connect_timeout,
        MS(1),
        SECS(600),
    )?;
    if let Some(b) = raw.allow_private_networks {
        d.allow_private_networks = b;
    }
    if let Some(nets) = &raw.allowed_networks {
        d.allowed_networks = nets
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow!(
                            "{ctx}: allowed_networks: {n:?} is not a network like \"127.0.0.0/8\""
                        )
                    })
            })
            .collect::<Result<_>>()?;
    }
    d.max_in_flight = count_in(
        &key("max_in_flight"),
        raw.max_in_flight,
        d.max_in_flight as u64,
        1,
        10_000,
    )? as usize;
    if let Some(r) = raw.rate_limit {
        d.rate_limit = Some(count_in(&key("rate_limit"), Some(r), 0, 1, 100_000)? as u32);
    }
    d.disable_after = duration_in(
        &key("disable_after"),
        raw.disable_after,
        d.disable_after,
        SECS(1),
        DAYS(365),
    )?;
    Ok(d)
}

fn apply_limits(base: &PluginLimits, raw: &RawLimits, ctx: &str) -> Result<PluginLimits> {
    let key = |k: &str| format!("{ctx}.{k}");
    Ok(PluginLimits {
        // The host checks deadlines every 10ms; a shorter one cannot be kept.
        deadline: duration_in(
            &key("deadline"),
            raw.deadline,
            base.deadline,
            MS(10),
            SECS(60),
        )?,
        memory: size_in(&key("memory"), raw.memory, base.memory, 1 << 20, 4 << 30)?,
        max_output: size_in(
            &key("max_output"),
            raw.max_output,
            base.max_output,
            1,
            256 << 20,
        )?,
        max_headers: count_in(
            &key("max_headers"),
            raw.max_headers,
            base.max_headers as u64,
            0,
            1000,
        )? as usize,
        max_log_lines: count_in(
            &key("max_log_lines"),
            raw.max_log_lines,
            base.max_log_lines as u64,
            0,
            100_000,
        )? as usize,
        max_reason: size_in(
            &key("max_reason"),
            raw.max_reason,
            base.max_reason,
            64,
            64 << 10,
        )?,
        max_header_bytes: size_in(
            &key("max_header_bytes"),
            raw.max_header_bytes,
            base.max_header_bytes,
            256,
            1 << 20,
        )?,
    })
}

// ---- Ranges ------------------------------------------------------------------------
//
// Every number has a range: a value far outside any sensible one (a semaphore of
// 2^63 permits, a retry in 500 billion years) would otherwise panic or wrap deep
// inside the host instead of being named here.

#[allow(non_snake_case)]
const fn MS(n: u64) -> Duration {
    Duration::from_millis(n)
}
#[allow(non_snake_case)]
const fn SECS(n: u64) -> Duration {
    Duration::from_secs(n)
}
#[allow(non_snake_case)]
const fn DAYS(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// `given` (or `default` when absent), checked to lie in `lo..=hi`.
/// A PostgreSQL url, checked the way the driver will read it, so a typo is
/// named at start rather than at the first connection.
fn check_store_url(key: &str, url: String) -> Result<String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("{key} must be a postgres://user@host:port/database url");
    }
    let config = url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| anyhow!("{key} is not a PostgreSQL url the driver reads: {e}"))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        bail!(
            "{key} asks for sslmode=require: this version connects to PostgreSQL without TLS (a local socket or a private network)"
        );
    }
    Ok(url)
}

fn duration_in(
    key: &str,
    given: Option<HumanDuration>,
    default: Duration,
    lo: Duration,
    hi: Duration,
) -> Result<Duration> {
    let v = given.map_or(default, |h| h.0);
    if v < lo || v > hi {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        bail!(
            "{key} = {:?} is out of range: between {} and {}",
            show(v),
            show(lo),
            show(hi)
        );
    }
    Ok(v)
}

fn size_in(
    key: &str,
    given: Option<ByteSize>,
    default: usize,
    lo: usize,
    hi: usize,
) -> Result<usize> {
    let v = given.map_or(default, |b| b.0);
    if v < lo || v > hi {
        bail!(
            "{key} = {v} bytes is out of range: between {} and {}",
            show_size(lo),
            show_size(hi)
        );
    }
    Ok(v)
}

fn count_in(key: &str, given: Option<u64>, default: u64, lo: u64, hi: u64) -> Result<u64> {
    let v = given.unwrap_or(default);
    if v < lo || v > hi {
        bail!("{key} = {v} is out of range: between {lo} and {hi}");
    }
    Ok(v)
}

fn show_size(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        [plugins]
        dir = "plugins-enabled"
        [store]
        path = "data/hookwasm.db"
    "#;

    fn parse(extra: &str) -> Result<Config> {
        Config::parse(&format!("{MINIMAL}\n{extra}"), Path::new("/etc/hookwasm"))
    }

    fn err(extra: &str) -> String {
        format!("{:#}", parse(extra).unwrap_err())
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse("").unwrap();
        assert_eq!(c.plugins.dir, Path::new("/etc/hookwasm/plugins-enabled"));
        assert_eq!(c.store.path, Path::new("/etc/hookwasm/data/hookwasm.db"));
        assert_eq!(c.server.max_body, 1 << 20);
        assert!(c.clients.is_empty());
    }

    #[test]
    fn client_overrides_delivery_keys() {
        let c = parse(
            r##"
            [delivery]
            timeout = "10s"
            allowed_networks = ["127.0.0.0/8"]
            [[clients]]
            id = "a"
            url = "http://127.0.0.1:9/x"
            timeout = "2s"
            retry_schedule = ["1s"]
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            [clients.config]
            channel = "#press"
            n = 3
            "##,
        )
        .unwrap();
        let a = &c.clients[0];
        assert_eq!(a.delivery.timeout, Duration::from_secs(2));
        assert_eq!(a.delivery.retry_schedule, vec![Duration::from_secs(1)]);
        assert_eq!(a.delivery.allowed_networks.len(), 1);
        assert_eq!(
            a.config,
            vec![
                ("channel".into(), "#press".into()),
                ("n".into(), "3".into())
            ]
        );
        assert_eq!(a.secrets.len(), 1);
        assert!(a.wants("record.created"));
    }

    #[test]
    fn a_postgres_url_replaces_the_path_and_is_checked() {
        let text = MINIMAL.replace("path = \"data/hookwasm.db\"", "url = \"postgres://h/db\"");
        let c = Config::parse(&text, Path::new("/etc/hookwasm")).unwrap();
        assert_eq!(c.store.url.as_deref(), Some("postgres://h/db"));
        assert_eq!(c.plugins.cache_dir, Path::new("/etc/hookwasm/plugin-cache"));
        let err = |t: &str| format!("{:#}", Config::parse(t, Path::new("/")).unwrap_err());
        let both = MINIMAL.replace(
            "path = \"data/hookwasm.db\"",
            "path = \"x.db\"\nurl = \"postgres://h/db\"",
        );
        let e = err(&both);
        assert!(e.contains("both path and url"), "{e}");
        let e = err(&MINIMAL.replace("path = \"data/hookwasm.db\"", "url = \"mysql://h/db\""));
        assert!(e.starts_with("[store] url must be a postgres://"), "{e}");
        let e = err(&MINIMAL.replace(
            "path = \"data/hookwasm.db\"",
            "path = \"x.db\"\nlease = \"5s\"",
        ));
        assert!(e.contains("lease is for the PostgreSQL store"), "{e}");
    }

    #[test]
    fn the_deploy_example_config_is_a_valid_one() {
        let text = include_str!("../../deploy/hookwasm.toml");
        let c = Config::parse(text, Path::new("/etc/hookwasm")).unwrap();
        assert!(c.store.url.is_some());
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(
            err("[server2]\nx=1").contains("server2"),
            "{}",
            err("[server2]\nx=1")
        );
        let e = err("[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\ntimout=\"1s\"");
        assert!(e.contains("timout") && e.contains("client \"a\""), "{e}");
        let e = err("[[clients]]\nid=\"..\"\nurl=\"http://x.org\"");
        assert!(e.contains("not only dots"), "{e}");
        let e = err("[delivery]\nretry_shedule=[]");
        assert!(e.contains("retry_shedule"), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        assert!(err("[delivery]\ntimeout = \"soon\"").contains("not a duration"));
        let e = err("[[clients]]\nid=\"a\"\nurl=\"ftp://x.org\"");
        assert!(e.contains("http://"), "{e}");
        let e = err("[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\nsecret=\"abc\"");
        assert!(e.contains("whsec_"), "{e}");
        let e = err("[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\nevents=[\"new_feed_entries\"]");
        assert!(
            e.contains("new_feed_entries") && e.contains("known events"),
            "{e}"
        );
        let e = err(
            "[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\n[[clients]]\nid=\"a\"\nurl=\"http://y.org\"",
        );
        assert!(e.contains("unique"), "{e}");
        let e = err("[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\nplugin=\"../x.wasm\"");
        assert!(e.contains("file name"), "{e}");
    }

    #[test]
    fn numbers_out_of_range_are_one_line_errors() {
        for (extra, key) in [
            (
                "[delivery]\nmax_in_flight = 9223372036854775807",
                "delivery: max_in_flight",
            ),
            (
                "[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\nmax_in_flight = 9223372036854775807",
                "client \"a\": max_in_flight",
            ),
            ("[delivery]\nmax_in_flight = 0", "max_in_flight"),
            (
                "[delivery]\nretry_schedule = [\"5s\", \"500000years\"]",
                "retry_schedule",
            ),
            ("[delivery]\ndisable_after = \"0s\"", "disable_after"),
            ("[delivery]\ntimeout = \"0s\"", "timeout"),
            (
                "[plugins.limits]\nmemory = \"64GiB\"",
                "plugins.limits.memory",
            ),
            (
                "[plugins.limits]\ndeadline = \"1ms\"",
                "plugins.limits.deadline",
            ),
            (
                "[plugins.limits]\nmax_headers = 100000",
                "plugins.limits.max_headers",
            ),
            ("[server]\nmax_connections = 0", "server.max_connections"),
        ] {
            // [server] and [plugins] are already in MINIMAL: merge by rewriting.
            let text = if let Some(rest) = extra.strip_prefix("[server]\n") {
                MINIMAL.replace("[server]\n", &format!("[server]\n{rest}\n"))
            } else if let Some(rest) = extra.strip_prefix("[plugins.limits]\n") {
                format!("{MINIMAL}\n[plugins.limits]\n{rest}")
            } else {
                format!("{MINIMAL}\n{extra}")
            };
            let e = format!(
                "{:#}",
                Config::parse(&text, Path::new("/etc")).expect_err(extra)
            );
            assert!(
                e.contains(key) && (e.contains("out of range") || e.contains("at most")),
                "{extra}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
        // A huge retry wait that humantime cannot even represent is refused too.
        assert!(
            err("[delivery]\nretry_schedule = [\"500000000000years\"]").contains("retry_schedule")
        );
    }

    #[test]
    fn a_clients_config_keeps_the_order_of_the_file() {
        let c = parse(
            "[[clients]]\nid=\"a\"\nurl=\"http://x.org\"\n[clients.config]\nzeta = \"1\"\nalpha = \"2\"\nmid = 3\n",
        )
        .unwrap();
        let keys: Vec<&str> = c.clients[0]
            .config
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert!(parse_size("lots").is_err());
    }
}
