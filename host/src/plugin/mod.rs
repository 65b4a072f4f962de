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
//! World versions live in submodules (`v0_1`, …), one frozen `bindgen!` each,
//! plus the glue they share ([`world`]); [`WORLDS`] lists them, and a component
//! is bound to the version whose handler it exports, so a plugin built against
//! an old version keeps working when the world grows.
//!
//! Not here: which file serves which client, and hot reload (`registry`).

#[macro_use]
mod world;
mod cache;
mod capture;
mod error;
mod instance;
mod output;
pub mod registry;
mod v0_1;
mod v0_2;

pub use error::{LoadError, PluginError};
pub use instance::HostState;
use instance::{CoarseClock, EventClock, Limiter, LogTag, Warm};
use output::check_output;
pub use world::World;

#[doc(hidden)]
pub use v0_2::Bare;

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::WasiCtx;

use crate::config::PluginLimits;
use crate::event::Event;
use crate::model::Rendered;

use capture::Capture;

/// How often the engine's epoch advances: the resolution of plugin deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Bytes of stdout/stderr kept per call; the rest is dropped.
const CAPTURE_BYTES: usize = 4096;

/// The world versions this host can run, oldest first: the one list a new
/// version is added to.
const WORLDS: &[&World] = &[&v0_1::WORLD, &v0_2::WORLD];

/// A compiled plugin, checked against its world, ready to call. Cheap to share:
/// in-flight calls keep the version they started with alive after a reload.
pub struct Plugin {
    /// The file name in `plugins.dir`.
    pub file: String,
    /// The first 16 hex digits of the SHA-256 of the file: the plugin's version.
    pub hash: String,
    pub world: &'static World,
    /// What the component imports, by name.
    pub imports: Vec<String>,
    pre: Box<dyn world::Pre>,
    /// Idle instances, per client: an instance never serves two clients.
    warm: Mutex<HashMap<String, Vec<Warm>>>,
    /// When this version was compiled (ms).
    pub loaded_at: i64,
    /// The size of the component, in bytes.
    pub size: usize,
    pub stats: CallStats,
}

/// What a plugin version's calls have cost so far.
pub struct CallStats {
    calls: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
    traps: std::sync::atomic::AtomicU64,
    /// Call times in microseconds, 2 significant digits.
    times: Mutex<hdrhistogram::Histogram<u64>>,
}

/// A snapshot of [`CallStats`], for the plugins route.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallFigures {
    pub calls: u64,
    /// Calls that ended in a plugin error of any kind (traps included).
    pub errors: u64,
    /// Calls that trapped, ran out of time or memory.
    pub traps: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl CallStats {
    fn new() -> CallStats {
        CallStats {
            calls: Default::default(),
            errors: Default::default(),
            traps: Default::default(),
            times: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("valid bounds"),
            ),
        }
    }

    fn record(&self, took: std::time::Duration, result: &Result<Verdict, PluginError>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        if let Err(e) = result {
            self.errors.fetch_add(1, Relaxed);
            if matches!(
                e,
                PluginError::Trap(_) | PluginError::Deadline(_) | PluginError::Memory(_)
            ) {
                self.traps.fetch_add(1, Relaxed);
            }
        }
        let _ = self
            .times
            .lock()
            .unwrap()
            .record((took.as_micros() as u64).max(1));
    }

    pub fn figures(&self) -> CallFigures {
        use std::sync::atomic::Ordering::Relaxed;
        let h = self.times.lock().unwrap();
        CallFigures {
            calls: self.calls.load(Relaxed),
            errors: self.errors.load(Relaxed),
            traps: self.traps.load(Relaxed),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
        }
    }
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
        let world = WORLDS
            .iter()
            .copied()
            .find(|w| exports.iter().any(|e| e == w.export))
            .ok_or_else(|| LoadError::NoWorld {
                found: if exports.is_empty() {
                    "none".into()
                } else {
                    exports.join(", ")
                },
                supported: WORLDS
                    .iter()
                    .map(|w| w.export)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch {
            version: world.as_str(),
            reason: one_line(&format!("{e:#}")),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(mismatch)?;
        let pre = (world.pre)(pre).map_err(mismatch)?;
        Ok(Plugin {
            file: file.to_string(),
            hash,
            world,
            imports,
            pre,
            warm: Mutex::new(HashMap::new()),
            loaded_at: crate::model::now_ms(),
            size: bytes.len(),
            stats: CallStats::new(),
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
        let instance = plugin
            .pre
            .instantiate(&mut store)
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
        let began = std::time::Instant::now();
        let result = self.call_in_instance(plugin, event, cx);
        let took = began.elapsed();
        plugin.stats.record(took, &result);
        crate::metrics::plugin_call(
            took,
            matches!(
                result,
                Err(PluginError::Trap(_) | PluginError::Deadline(_) | PluginError::Memory(_))
            ),
        );
        result
    }

    fn call_in_instance(
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
        let result = warm.instance.call(&mut warm.store, event, cx);
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
        match warm.instance.into_any().downcast::<v0_2::Plugin>() {
            Ok(i) => Ok(v0_2::Bare::new(warm.store, *i, event)),
            Err(_) => anyhow::bail!("the bare-call benchmark wants a 0.2.0 plugin"),
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
