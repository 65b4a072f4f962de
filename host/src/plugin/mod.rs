//! The one door to wasmtime: load, check and call plugin components.
//!
//! Nothing else in the host touches `Engine`, `Store` or `Linker`. A [`Runtime`]
//! owns the engine (with epoch interruption, ticked every [`TICK`] by a thread of
//! its own) and one linker per supported world version. [`Runtime::load`] compiles
//! a component and checks it against the world it targets, so a plugin that does
//! not fit is refused at load, never at call. [`Runtime::call`] runs one plugin on
//! one event under the client's limits: a deadline, a memory cap, bounded output
//! and bounded logging. Any failure is a typed [`PluginError`] for that call only.
//!
//! Sandbox: WASI is linked because every toolchain's standard library imports it,
//! but the context is deny-all: no preopened directory, no socket, no name lookup,
//! no environment or arguments, stdin closed; stdout and stderr are captured, cut
//! to a few KiB, and written (escaped) to the host log with the plugin's tag.
//!
//! Time: a plugin has no clock of its own. During a call the wall clock reads the
//! event's `received-at` (time stands still within a call, as on serverless
//! platforms), so a rendering is the same in `plugin test`, a replay and a
//! dry-run; the monotonic clock runs, but only in whole milliseconds.
//!
//! Output: what a plugin answers is checked before anything is stored or sent
//! (see [`check_output`]): body size, header count and total size, names the
//! host sets or that a receiver could take for them (`webhook_signature` reads as
//! `webhook-signature` to CGI, PHP and WSGI), hop-by-hop headers, and values that
//! are not visible ASCII. Skip reasons and error messages are cut to
//! `max_reason`.
//!
//! World versions live in submodules (`v0_1`, …), one `bindgen!` each, and
//! [`Bindings`] dispatches on the version a component exports, so a plugin built
//! against an old version keeps working when the world grows.
//!
//! Not here: which file serves which client, and hot reload (`registry`).

mod cache;
mod capture;
pub mod registry;
mod v0_1;
mod v0_2;

#[doc(hidden)]
pub use v0_2::Bare;

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::PluginLimits;
use crate::event::Event;
use crate::text::{cut, escape};

use capture::Capture;

/// How often the engine's epoch advances: the resolution of plugin deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Bytes of stdout/stderr kept per call; the rest is dropped.
const CAPTURE_BYTES: usize = 4096;

/// The world versions this host can run, newest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldVersion {
    V0_1,
    V0_2,
}

impl WorldVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            WorldVersion::V0_1 => "0.1.0",
            WorldVersion::V0_2 => "0.2.0",
        }
    }

    /// The export that marks a component as targeting this version.
    fn handler_export(self) -> &'static str {
        match self {
            WorldVersion::V0_1 => "hookwasm:plugin/handler@0.1.0",
            WorldVersion::V0_2 => "hookwasm:plugin/handler@0.2.0",
        }
    }

    const ALL: &'static [WorldVersion] = &[WorldVersion::V0_1, WorldVersion::V0_2];
}

/// A compiled plugin, checked against its world, ready to call. Cheap to share:
/// in-flight calls keep the version they started with alive after a reload.
pub struct Plugin {
    /// The file name in `plugins.dir`.
    pub file: String,
    /// The first 16 hex digits of the SHA-256 of the file: the plugin's version.
    pub hash: String,
    pub world: WorldVersion,
    /// What the component imports, by name.
    pub imports: Vec<String>,
    bindings: Bindings,
    /// Idle instances, per client: an instance never serves two clients.
    warm: Mutex<HashMap<String, Vec<Warm>>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plugin({} {} world {})",
            self.file,
            self.hash,
            self.world.as_str()
        )
    }
}

enum Bindings {
    V0_1(v0_1::PluginPre<HostState>),
    V0_2(v0_2::PluginPre<HostState>),
}

/// The client a call is made for.
pub struct CallContext<'a> {
    pub client_id: &'a str,
    /// The delivery's id, the `webhook-id` the client will see.
    pub delivery_id: &'a str,
    pub config: &'a [(String, String)],
    pub limits: &'a PluginLimits,
}

/// What a plugin decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Deliver(Rendered),
    Skip(String),
}

/// A request body and headers as a plugin rendered them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component: {0}")]
    NotComponent(String),
    #[error(
        "does not export a supported plugin world (found exports: {found}; supported: {supported})"
    )]
    NoWorld { found: String, supported: String },
    #[error("does not fit world {version}: {reason}")]
    Mismatch {
        version: &'static str,
        reason: String,
    },
}

/// Why one call did not produce a verdict. The delivery is held, never sent raw.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    #[error("the plugin says the event is invalid: {0}")]
    InvalidEvent(String),
    #[error("the plugin says the client's config is invalid: {0}")]
    InvalidConfig(String),
    #[error("the plugin failed: {0}")]
    Failed(String),
    #[error("the plugin ran past its deadline of {0:?}")]
    Deadline(Duration),
    #[error("the plugin tried to grow its memory past the cap of {0} bytes")]
    Memory(usize),
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin's answer was refused: {0}")]
    BadOutput(String),
}

impl PluginError {
    /// The same error with its message cut to `max` bytes: a plugin's text is
    /// stored with every delivery and logged, so it is bounded like its body.
    pub fn capped(self, max: usize) -> PluginError {
        match self {
            PluginError::InvalidEvent(m) => PluginError::InvalidEvent(cut(m, max)),
            PluginError::InvalidConfig(m) => PluginError::InvalidConfig(cut(m, max)),
            PluginError::Failed(m) => PluginError::Failed(cut(m, max)),
            PluginError::Trap(m) => PluginError::Trap(cut(m, max)),
            PluginError::BadOutput(m) => PluginError::BadOutput(cut(m, max)),
            other => other,
        }
    }

    /// A short machine-readable kind, as stored with the delivery.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::InvalidEvent(_) => "invalid-event",
            PluginError::InvalidConfig(_) => "invalid-config",
            PluginError::Failed(_) => "failed",
            PluginError::Deadline(_) => "deadline",
            PluginError::Memory(_) => "memory",
            PluginError::Trap(_) => "trap",
            PluginError::BadOutput(_) => "bad-output",
        }
    }
}

/// Per-instance state inside a `Store`. An instance serves one client only.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    log: LogTag,
    stdout: Capture,
    stderr: Capture,
    /// What the guest's wall clock reads: the current event's `received_at` (ms).
    now: Arc<AtomicI64>,
}

/// The wall clock a plugin sees: the time the event was received, fixed for the
/// whole call.
struct EventClock(Arc<AtomicI64>);

impl wasmtime_wasi::HostWallClock for EventClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64)
    }
}

/// A monotonic clock in whole milliseconds: enough to measure, too coarse to
/// time the host's work from inside.
struct CoarseClock(std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for CoarseClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        let ns = self.0.elapsed().as_nanos() as u64;
        ns - ns % 1_000_000
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it did, so the trap that follows is
/// reported as a memory error rather than whatever the guest did on failure.
struct Limiter {
    memory: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Tags and counts a call's log lines.
struct LogTag {
    client: String,
    plugin: String,
    lines: usize,
    max: usize,
    dropped: usize,
}

impl LogTag {
    fn emit(&mut self, level: tracing::Level, message: &str) {
        if self.lines >= self.max {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        // Cut a long line at a character boundary; a short one costs nothing.
        let mut end = message.len().min(2000);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let message = escape(&message[..end]);
        let (client, plugin) = (&self.client, &self.plugin);
        match level {
            tracing::Level::ERROR => tracing::error!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "plugin", client, plugin, "{message}"),
            tracing::Level::TRACE => tracing::trace!(target: "plugin", client, plugin, "{message}"),
        }
    }
}

/// An instantiated plugin, kept warm between calls for one client.
struct Warm {
    store: Store<HostState>,
    instance: Instance,
    calls: u32,
}

enum Instance {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

/// How the runtime keeps compiled code and instances.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached, keyed by content and engine.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The key that authenticates cache entries; `<cache_dir>.key` by default.
    pub cache_key: Option<std::path::PathBuf>,
    /// Idle instances kept per plugin version and client.
    pub warm_instances: usize,
    /// Calls after which an instance is replaced by a fresh one.
    pub recycle_after: u32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            cache_key: None,
            warm_instances: 2,
            recycle_after: 10_000,
        }
    }
}

/// The engine, its epoch ticker and a linker per world version.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    options: RuntimeOptions,
    cache: Option<cache::Cache>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // One core per compilation: a large plugin compiling in the background must
        // leave the other core to the deliveries (the registry runs one
        // compilation per core when many files load at once).
        config.parallel_compilation(false);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        never_block(&mut linker)?;
        v0_1::add_to_linker(&mut linker)?;
        v0_2::add_to_linker(&mut linker)?;

        let cache = match &options.cache_dir {
            Some(dir) => {
                let key = options.cache_key.clone().unwrap_or_else(|| {
                    let mut k = dir.as_os_str().to_owned();
                    k.push(".key");
                    k.into()
                });
                Some(cache::Cache::open(dir, &key, &engine)?)
            }
            None => None,
        };

        // The ticker stops when the runtime is dropped.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e, s) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(Runtime {
            engine,
            linker,
            options,
            cache,
            stop,
        })
    }

    /// Compiles `bytes` (the file `file`), or takes it from the cache, and checks
    /// it against the world it targets. Compiling is slow (tens of ms for Rust,
    /// seconds for Python): never call this on an async worker.
    pub fn load(&self, file: &str, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let hash = content_hash(bytes);
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotComponent(
                "the file does not start with the WebAssembly header `\\0asm`".into(),
            ));
        }
        let compile = || {
            Component::new(&self.engine, bytes).map_err(|e| {
                if bytes.starts_with(b"\0asm\x01\0\0\0") {
                    LoadError::NotComponent(
                        "it is a core WebAssembly module; build it as a component (wasm32-wasip2, componentize-py, componentize-js)".into(),
                    )
                } else {
                    LoadError::NotComponent(one_line(&format!("{e:#}")))
                }
            })
        };
        let component = match &self.cache {
            Some(cache) => cache.get_or_insert(&self.engine, bytes, compile)?,
            None => compile()?,
        };
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let world = WorldVersion::ALL
            .iter()
            .copied()
            .find(|v| exports.iter().any(|e| e == v.handler_export()))
            .ok_or_else(|| LoadError::NoWorld {
                found: if exports.is_empty() {
                    "none".into()
                } else {
                    exports.join(", ")
                },
                supported: WorldVersion::ALL
                    .iter()
                    .map(|v| v.handler_export())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch {
            version: world.as_str(),
            reason: one_line(&format!("{e:#}")),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(mismatch)?;
        let bindings = match world {
            WorldVersion::V0_1 => Bindings::V0_1(v0_1::PluginPre::new(pre).map_err(mismatch)?),
            WorldVersion::V0_2 => Bindings::V0_2(v0_2::PluginPre::new(pre).map_err(mismatch)?),
        };
        Ok(Plugin {
            file: file.to_string(),
            hash,
            world,
            imports,
            bindings,
            warm: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh instance of `plugin` for one client, with a deny-all WASI. On
    /// failure, whether it was the memory cap that stopped it.
    fn instantiate(
        &self,
        plugin: &Plugin,
        cx: &CallContext<'_>,
        received_at: i64,
    ) -> Result<Warm, (wasmtime::Error, bool)> {
        let stdout = Capture::new(CAPTURE_BYTES);
        let stderr = Capture::new(CAPTURE_BYTES);
        let now = Arc::new(AtomicI64::new(received_at));
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(EventClock(now.clone()))
            .monotonic_clock(CoarseClock(std::time::Instant::now()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory: cx.limits.memory,
                hit: false,
            },
            log: LogTag {
                client: cx.client_id.to_string(),
                plugin: format!("{}@{}", plugin.file, plugin.hash),
                lines: 0,
                max: cx.limits.max_log_lines,
                dropped: 0,
            },
            stdout,
            stderr,
            now,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Instantiation runs the guest's start code: it gets a deadline too.
        store.set_epoch_deadline(deadline_ticks(cx.limits.deadline));
        store.epoch_deadline_trap();
        let instance = match &plugin.bindings {
            Bindings::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
            Bindings::V0_2(pre) => pre.instantiate(&mut store).map(Instance::V0_2),
        }
        .map_err(|e| (e, store.data().limiter.hit))?;
        Ok(Warm {
            store,
            instance,
            calls: 0,
        })
    }

    /// Runs `plugin` on `event` for one client, in a warm instance of that client's
    /// when one is idle. Blocks for at most about the client's deadline: run it off
    /// the async workers. An instance that trapped or hit a limit is thrown away.
    pub fn call(
        &self,
        plugin: &Plugin,
        event: &Event,
        cx: &CallContext<'_>,
    ) -> Result<Verdict, PluginError> {
        let limits = cx.limits;
        let idle = plugin
            .warm
            .lock()
            .unwrap()
            .get_mut(cx.client_id)
            .and_then(Vec::pop);
        let mut warm = match idle {
            Some(w) => w,
            None => match self.instantiate(plugin, cx, event.received_at) {
                Ok(w) => w,
                // A memory minimum over the cap fails here, before any call.
                Err((_, true)) => return Err(PluginError::Memory(limits.memory)),
                Err((e, false)) => {
                    return Err(PluginError::Trap(format!(
                        "could not instantiate: {}",
                        one_line(&format!("{e:#}"))
                    ))
                    .capped(limits.max_reason));
                }
            },
        };
        {
            let state = warm.store.data_mut();
            state
                .now
                .store(event.received_at, std::sync::atomic::Ordering::Relaxed);
            state.limiter.memory = limits.memory;
            state.limiter.hit = false;
            state.log.lines = 0;
            state.log.dropped = 0;
            state.log.max = limits.max_log_lines;
        }
        warm.store
            .set_epoch_deadline(deadline_ticks(limits.deadline));
        let result = match &warm.instance {
            Instance::V0_1(i) => v0_1::call(i, &mut warm.store, event, cx),
            Instance::V0_2(i) => v0_2::call(i, &mut warm.store, event, cx),
        };
        warm.calls += 1;

        let state = warm.store.data_mut();
        let stderr_tail = state.stderr.take_lines();
        for (name, lines) in [
            ("stdout", state.stdout.take_lines()),
            ("stderr", stderr_tail.clone()),
        ] {
            for line in lines {
                state
                    .log
                    .emit(tracing::Level::INFO, &format!("{name}: {line}"));
            }
        }
        if state.log.dropped > 0 {
            let n = state.log.dropped;
            state.log.lines = 0;
            state.log.emit(
                tracing::Level::WARN,
                &format!("{n} more log lines dropped (limit {})", state.log.max),
            );
        }
        let memory_hit = state.limiter.hit;

        let verdict = match result {
            Ok(answer) => {
                // The instance is sound: keep it for this client's next call.
                if warm.calls < self.options.recycle_after {
                    let mut pools = plugin.warm.lock().unwrap();
                    match pools.get_mut(cx.client_id) {
                        Some(pool) if pool.len() < self.options.warm_instances => pool.push(warm),
                        Some(_) => {}
                        None => {
                            pools.insert(cx.client_id.to_string(), vec![warm]);
                        }
                    }
                }
                answer.map_err(|e| e.capped(limits.max_reason))?
            }
            Err(trap) => {
                return Err(if memory_hit {
                    PluginError::Memory(limits.memory)
                } else if matches!(trap.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    PluginError::Deadline(limits.deadline)
                } else {
                    PluginError::Trap(describe_trap(&trap, &stderr_tail)).capped(limits.max_reason)
                });
            }
        };
        check_output(verdict, limits)
    }
}

/// The only way a deny-all WASI guest can block in the host is a clock sleep, and
/// epoch interruption cannot stop a host call: a plugin calling `sleep(1 hour)`
/// would hold its client, and the host's shutdown, for that hour. So a clock
/// subscription is ready at once — sleeps return immediately — and the deadline
/// keeps bounding what the plugin does with its time.
fn never_block(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::{DynPollable, Pollable};

    struct Ready;
    #[wasmtime_wasi::async_trait]
    impl Pollable for Ready {
        async fn ready(&mut self) {}
    }
    fn ready(table: &mut ResourceTable) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let r = table.push(Ready)?;
        Ok((wasmtime_wasi::p2::subscribe(table, r)?,))
    }

    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: wasmtime::StoreContextMut<'_, HostState>, (_,): (u64,)| {
            ready(&mut store.data_mut().table)
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: wasmtime::StoreContextMut<'_, HostState>, (_,): (u64,)| {
            ready(&mut store.data_mut().table)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn deadline_ticks(deadline: Duration) -> u64 {
    (deadline.as_millis().div_ceil(TICK.as_millis()).max(1)) as u64
}

/// A trap in words a plugin author can act on: the trap's kind, what the guest
/// printed last (a Rust panic message, a Python traceback), and where.
fn describe_trap(trap: &wasmtime::Error, stderr: &[String]) -> String {
    let mut what = match trap.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => {
            "wasm `unreachable` executed (a panic or abort in the plugin)".to_string()
        }
        Some(Trap::StackOverflow) => "stack overflow".to_string(),
        Some(t) => t.to_string(),
        None => trap.root_cause().to_string(),
    };
    let said: Vec<&str> = stderr
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if !said.is_empty() {
        // The line that names the error often comes before a stack trace, which
        // the last lines alone would quote instead: componentize-js prints
        // "… (received `Error: …`) …", then `Stack:`, frames and an abort notice.
        // Such a line leads. (A Python exception's `ValueError: …` and a Rust
        // panic's message are last, and in the tail anyway.)
        fn names_error(line: &str) -> bool {
            ["(received `", "Error: ", "Exception: ", "panicked at"]
                .iter()
                .any(|m| line.contains(m))
        }
        let tail_from = said.len().saturating_sub(3);
        let mut quoted: Vec<&str> = Vec::new();
        if let Some(named) = said[..tail_from].iter().rposition(|l| names_error(l))
            && !said[tail_from..].iter().any(|l| names_error(l))
        {
            quoted.push(said[named].trim());
            if named + 1 < tail_from {
                quoted.push("…");
            }
        }
        quoted.extend(said[tail_from..].iter().map(|l| l.trim()));
        what.push_str(&format!(
            "; the plugin printed: {}",
            quoted.join(" / ").chars().take(400).collect::<String>()
        ));
    }
    what
}

/// Headers the host sets itself, and those a receiver's stack reads as such.
const RESERVED_HEADERS: &[&str] = &["content-type", "content-length", "host", "user-agent"];

/// Hop-by-hop headers: they speak about the connection, not the delivery.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Why a plugin may not send header `name`, if it may not.
fn refused_header(name: &str) -> Option<&'static str> {
    // CGI, PHP and WSGI turn `-` and `_` into the same variable name, so
    // `webhook_signature` would reach a receiver as `webhook-signature`.
    let n = name.to_ascii_lowercase().replace('_', "-");
    if RESERVED_HEADERS.contains(&n.as_str()) || n.starts_with("webhook-") {
        Some("the host's to set (or reads as one of those once `_` is taken for `-`)")
    } else if HOP_BY_HOP.contains(&n.as_str()) || n.starts_with("proxy-") {
        Some("a hop-by-hop header")
    } else {
        None
    }
}

/// Visible ASCII, with spaces and tabs inside: what every receiver reads the same.
fn visible_ascii(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
}

/// Checks a plugin's answer against the client's limits and the header rules;
/// cuts a skip reason to `max_reason`.
fn check_output(verdict: Verdict, limits: &PluginLimits) -> Result<Verdict, PluginError> {
    let r = match verdict {
        Verdict::Skip(reason) => return Ok(Verdict::Skip(cut(reason, limits.max_reason))),
        Verdict::Deliver(r) => r,
    };
    let refuse = |msg: String| Err(PluginError::BadOutput(cut(msg, limits.max_reason)));
    let shown = |s: &str| escape(&cut(s.to_string(), 64)).into_owned();
    if r.body.len() > limits.max_output {
        return refuse(format!(
            "the body is {} bytes, over the limit of {}",
            r.body.len(),
            limits.max_output
        ));
    }
    if r.headers.len() > limits.max_headers {
        return refuse(format!(
            "{} headers, over the limit of {}",
            r.headers.len(),
            limits.max_headers
        ));
    }
    let mut total = r.content_type.as_ref().map_or(0, String::len);
    for (name, value) in &r.headers {
        total += name.len() + value.len();
        if total > limits.max_header_bytes {
            return refuse(format!(
                "the headers are over the limit of {} bytes (max_header_bytes)",
                limits.max_header_bytes
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return refuse(format!("`{}` is not a valid header name", shown(name)));
        }
        if let Some(why) = refused_header(name) {
            return refuse(format!("header `{}` is {why}", shown(name)));
        }
        if !visible_ascii(value) {
            return refuse(format!(
                "the value of header `{}` is not visible ASCII",
                shown(name)
            ));
        }
    }
    if let Some(ct) = &r.content_type {
        if total > limits.max_header_bytes {
            return refuse(format!(
                "the content type is over the limit of {} bytes (max_header_bytes)",
                limits.max_header_bytes
            ));
        }
        if !visible_ascii(ct) || ct.trim().is_empty() {
            return refuse(format!("content type {:?} is not visible ASCII", shown(ct)));
        }
    }
    Ok(Verdict::Deliver(r))
}

impl Runtime {
    /// A warm instance of a 0.2.0 `plugin` with `event` ready, for the benchmark
    /// of a bare call.
    #[doc(hidden)]
    pub fn bare_call(&self, plugin: &Plugin, event: &Event) -> anyhow::Result<Bare> {
        let limits = PluginLimits::default();
        let cx = CallContext {
            client_id: "bench",
            delivery_id: "msg_bench",
            config: &[],
            limits: &limits,
        };
        let warm = self
            .instantiate(plugin, &cx, event.received_at)
            .map_err(|(e, _)| e)?;
        match warm.instance {
            Instance::V0_2(i) => Ok(v0_2::Bare::new(warm.store, i, event)),
            Instance::V0_1(_) => anyhow::bail!("the bare-call benchmark wants a 0.2.0 plugin"),
        }
    }
}

/// The plugin version: 16 hex digits of the content's SHA-256.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// wasmtime's errors run over several lines (a cause chain, a backtrace); the log
/// and the store want one.
fn one_line(msg: &str) -> String {
    let mut out = String::new();
    for line in msg.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("wasm backtrace") {
            break;
        }
        if !out.is_empty() {
            out.push_str(" | ");
        }
        out.push_str(line);
        if out.len() > 600 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(headers: &[(&str, &str)], content_type: Option<&str>) -> Verdict {
        Verdict::Deliver(Rendered {
            body: b"{}".to_vec(),
            content_type: content_type.map(str::to_string),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    fn refused(v: Verdict) -> String {
        match check_output(v, &PluginLimits::default()) {
            Err(PluginError::BadOutput(m)) => m,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn look_alike_and_hop_by_hop_headers_are_refused() {
        for name in [
            "webhook_signature",
            "Webhook-Id",
            "webhook_id",
            "content_length",
            "Content-Type",
            "HOST",
            "user_agent",
            "connection",
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "keep_alive",
            "expect",
            "proxy-authorization",
            "proxy_connection",
            "transfer-encoding",
        ] {
            let m = refused(deliver(&[(name, "x")], None));
            assert!(m.contains(name), "{name}: {m}");
        }
        assert!(
            check_output(
                deliver(&[("x-chat-channel", "#press")], None),
                &PluginLimits::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn header_values_must_be_visible_ascii_and_bounded() {
        assert!(refused(deliver(&[("x-a", "caf\u{e9}")], None)).contains("visible ASCII"));
        assert!(refused(deliver(&[("x-a", "a\u{1}b")], None)).contains("visible ASCII"));
        assert!(refused(deliver(&[], Some("text/plain\u{7f}"))).contains("content type"));
        let big = "v".repeat(9000);
        assert!(refused(deliver(&[("x-a", &big)], None)).contains("max_header_bytes"));
        assert!(refused(deliver(&[], Some(&big))).contains("max_header_bytes"));
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("x-{i}"), "v".repeat(500)))
            .collect();
        let v = Verdict::Deliver(Rendered {
            body: vec![],
            content_type: None,
            headers: many,
        });
        assert!(refused(v).contains("max_header_bytes"));
    }

    #[test]
    fn reasons_and_messages_are_cut() {
        let limits = PluginLimits::default();
        match check_output(Verdict::Skip("r".repeat(1 << 20)), &limits).unwrap() {
            Verdict::Skip(r) => assert!(r.len() <= limits.max_reason, "{}", r.len()),
            v => panic!("{v:?}"),
        }
        let e = PluginError::Failed("m".repeat(1 << 20)).capped(limits.max_reason);
        assert!(e.to_string().len() < limits.max_reason + 64);
    }
}
