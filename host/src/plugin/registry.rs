//! The plugin folder, watched: which version of which file serves right now.
//!
//! Every `.wasm` file in `plugins.dir` (dotfiles and other names are ignored, so
//! `cp x.wasm .x.tmp && mv .x.tmp x.wasm` is the safe way to replace one) is
//! compiled on the blocking pool, never on an async worker, and swapped in
//! atomically under a short lock. Callers hold an `Arc<Plugin>`, so calls already
//! running finish on the version they started with.
//!
//! Changes are debounced per file: a file is read once it has been quiet for
//! [`QUIET`], or at the latest [`MAX_WAIT`] after its first change, so a file that
//! is rewritten without pause next to it never starves another's reload. Only
//! regular files (after following links) are read, and at most
//! `plugins.max_file_size` of them: a FIFO, a device or a symlink to one is
//! refused without blocking. A file that cannot be read, does not compile or does
//! not fit the world is reported (log and status) and the previous good version
//! keeps serving; an empty file is taken to be still being written (and said so
//! in the status). A deleted file is unloaded: its clients are held (fail closed)
//! until a good file is back. Every change bumps a generation counter that the
//! delivery workers watch, so held work resumes by itself.
//!
//! File names come from whoever can write to the folder: they are logged escaped.
//!
//! Beside the folder, the registry keeps the plugins clients uploaded through the
//! API, compiled by content hash (the store keeps their bytes). A client's
//! [`Source`] says which of the two serves it; [`Registry::lookup`] answers for
//! both.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{Plugin, Runtime, content_hash};
use crate::text::escape;

/// How long a file must be left alone before it is read.
pub const QUIET: Duration = Duration::from_millis(100);
/// The longest a changed file waits to be read, however busy it stays.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// What a client's plugin file gives right now.
#[derive(Debug, Clone)]
pub enum Lookup {
    Ready(Arc<Plugin>),
    /// No file of that name, or it was deleted.
    Missing,
    /// The file exists but never loaded; the reason.
    Broken(String),
}

/// Where a client's plugin comes from. One rule decides (see `directory`): an
/// upload made active serves; else the config's `plugin` file; else none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    None,
    /// A file in `plugins.dir`.
    File(String),
    /// An uploaded version (content hash).
    Upload(String),
}

impl Source {
    /// `file`, `upload` or `none`, for the status.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::None => "none",
            Source::File(_) => "file",
            Source::Upload(_) => "upload",
        }
    }
}

/// Compiled uploads kept beside the active ones.
pub const KEPT_COMPILED: usize = 16;

/// The file name of every uploaded plugin: a delivery it rendered records
/// `upload@<version>`.
pub const UPLOAD: &str = "upload";

#[derive(Default)]
struct Slot {
    current: Option<Arc<Plugin>>,
    /// Why the file on disk is not what serves (a load failure, a read error, an
    /// empty file), kept while the file is so.
    error: Option<String>,
    /// The content hash of the bytes that failed, not to compile them twice.
    rejected: Option<String>,
    /// Read order of the bytes behind `current`/`error`: a slow compile of older
    /// bytes never replaces the result of newer ones.
    read_seq: u64,
    loaded_at: Option<SystemTime>,
}

/// One file's state, for the status route.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub file: String,
    /// `file@hash` of the version serving, if one is.
    pub serving: Option<String>,
    pub world: Option<&'static str>,
    /// Why the file on disk is not serving, when it is not.
    pub error: Option<String>,
    pub loaded_at: Option<String>,
    /// The serving version's size in bytes, imports and call figures.
    pub size: Option<usize>,
    pub imports: Option<Vec<String>>,
    pub calls: Option<super::CallFigures>,
}

pub struct Registry {
    dir: PathBuf,
    max_file_size: u64,
    runtime: Arc<Runtime>,
    slots: RwLock<HashMap<String, Slot>>,
    /// Uploaded versions compiled so far, by version, oldest first; or why one
    /// did not load. Bounded: see [`Registry::trim_uploads`].
    uploads: RwLock<indexmap::IndexMap<String, Result<Arc<Plugin>, String>>>,
    reads: AtomicU64,
    generation: watch::Sender<u64>,
    /// Compilations at once: one per core. Cranelift already spreads one
    /// component over the cores; two hundred at a time would only pile up memory.
    compiling: Arc<tokio::sync::Semaphore>,
}

impl Registry {
    pub fn new(dir: &Path, max_file_size: u64, runtime: Arc<Runtime>) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
            max_file_size,
            runtime,
            slots: RwLock::new(HashMap::new()),
            uploads: RwLock::default(),
            reads: AtomicU64::new(0),
            generation: watch::channel(0).0,
            compiling: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The version of `file` serving now.
    pub fn get(&self, file: &str) -> Lookup {
        match self.slots.read().unwrap().get(file) {
            Some(Slot {
                current: Some(p), ..
            }) => Lookup::Ready(p.clone()),
            Some(Slot { error: Some(e), .. }) => Lookup::Broken(e.clone()),
            _ => Lookup::Missing,
        }
    }

    /// What serves a client whose plugin comes from `source`; `None` for a
    /// client without one.
    pub fn lookup(&self, source: &Source) -> Option<Lookup> {
        match source {
            Source::None => None,
            Source::File(f) => Some(self.get(f)),
            Source::Upload(v) => Some(match self.uploads.read().unwrap().get(v) {
                Some(Ok(p)) => Lookup::Ready(p.clone()),
                Some(Err(e)) => Lookup::Broken(e.clone()),
                None => Lookup::Missing,
            }),
        }
    }

    /// Compiles an uploaded plugin on the blocking pool, or finds it compiled.
    /// A version that does not load is remembered as such (not compiled twice).
    ///
    /// The compilation holds its turn (one per core) until it ends, even if the
    /// caller stops waiting: a client that hangs up cannot pile up compilations.
    pub async fn compile_upload(self: &Arc<Self>, bytes: Vec<u8>) -> Result<Arc<Plugin>, String> {
        let version = content_hash(&bytes);
        if let Some(done) = self.uploads.read().unwrap().get(&version) {
            return done.clone();
        }
        let me = self.clone();
        let work = tokio::spawn(async move {
            let turn = me.compiling.clone().acquire_owned().await;
            let runtime = me.runtime.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                runtime.load(UPLOAD, &bytes)
            })
            .await
            .map_err(|e| format!("compiling it crashed: {e}"))
            .and_then(|r| r.map(Arc::new).map_err(|e| e.to_string()));
            crate::metrics::plugin_load(loaded.is_ok());
            me.uploads
                .write()
                .unwrap()
                .entry(version)
                .or_insert(loaded)
                .clone()
        });
        work.await
            .unwrap_or_else(|e| Err(format!("compiling it crashed: {e}")))
    }

    /// Forgets compiled uploads beyond the newest [`KEPT_COMPILED`], except the
    /// versions in `keep` (the active ones): a version forgotten is compiled
    /// again, from the code cache, when it is asked for.
    pub fn trim_uploads(&self, keep: &std::collections::HashSet<String>) {
        let mut uploads = self.uploads.write().unwrap();
        let mut surplus = uploads.len().saturating_sub(KEPT_COMPILED);
        uploads.retain(|version, _| {
            let drop = surplus > 0 && !keep.contains(version);
            if drop {
                surplus -= 1;
            }
            !drop
        });
    }

    /// Tells the workers that what serves a client changed (an upload made
    /// active): held work is looked at again.
    pub fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Every uploaded version compiled lately, and why those that did not
    /// load did not, for the plugins route.
    pub fn uploads(&self) -> Vec<(String, Result<Arc<Plugin>, String>)> {
        let mut out: Vec<_> = self
            .uploads
            .read()
            .unwrap()
            .iter()
            .map(|(v, r)| (v.clone(), r.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Changes whenever any plugin is loaded, replaced or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        let slots = self.slots.read().unwrap();
        let mut out: Vec<PluginStatus> = slots
            .iter()
            .filter(|(_, s)| s.current.is_some() || s.error.is_some())
            .map(|(file, s)| PluginStatus {
                file: file.clone(),
                serving: s.current.as_ref().map(|p| format!("{}@{}", p.file, p.hash)),
                world: s.current.as_ref().map(|p| p.world.as_str()),
                error: s.error.clone(),
                loaded_at: s
                    .loaded_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                size: s.current.as_ref().map(|p| p.size),
                imports: s.current.as_ref().map(|p| p.imports.clone()),
                calls: s.current.as_ref().map(|p| p.stats.figures()),
            })
            .collect();
        out.sort_by(|a, b| a.file.cmp(&b.file));
        out
    }

    /// Loads every plugin file in the folder, creating the folder if need be.
    pub async fn load_all(self: &Arc<Self>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            anyhow::anyhow!("cannot create plugins.dir {}: {e}", self.dir.display())
        })?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot read plugins.dir {}: {e}", self.dir.display()))?
        {
            if let Some(name) = entry?.file_name().to_str().filter(|n| is_plugin_file(n)) {
                names.push(name.to_string());
            }
        }
        // Compile them side by side: a Python plugin takes seconds.
        let tasks: Vec<_> = names
            .into_iter()
            .map(|n| tokio::spawn(self.clone().refresh(n)))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }

    /// Watches the folder until `cancel` is cancelled.
    pub fn watch(
        self: &Arc<Self>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            anyhow::anyhow!("cannot create plugins.dir {}: {e}", self.dir.display())
        })?;
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res
                    && changes_content(&ev.kind)
                {
                    for path in ev.paths {
                        if let Some(name) = path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .filter(|n| is_plugin_file(n))
                        {
                            let _ = tx.send(name.to_string());
                        }
                    }
                }
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|e| anyhow::anyhow!("cannot watch plugins.dir {}: {e}", self.dir.display()))?;
        let me = self.clone();
        tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            tokio::select! {
                _ = me.debounce(rx) => {}
                _ = cancel.cancelled() => {}
            }
        });
        Ok(())
    }

    /// Reads each changed file once it is quiet, or once it has waited
    /// [`MAX_WAIT`]: every file has its own clock.
    async fn debounce(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        // name → (first change not yet read, latest change)
        let mut pending: HashMap<String, (Instant, Instant)> = HashMap::new();
        let due = |&(first, last): &(Instant, Instant)| (last + QUIET).min(first + MAX_WAIT);
        loop {
            let next = pending.values().map(due).min();
            let received = match next {
                Some(at) => tokio::time::timeout_at(at.into(), rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            };
            match received {
                Some(Some(name)) => {
                    let now = Instant::now();
                    pending
                        .entry(name)
                        .and_modify(|(_, last)| *last = now)
                        .or_insert_with_key(|name| {
                            tracing::info!(plugin = ?name, "plugin file changed; reading it once it is written");
                            (now, now)
                        });
                }
                Some(None) => return,
                None => {}
            }
            let now = Instant::now();
            let ready: Vec<String> = pending
                .iter()
                .filter(|(_, t)| due(t) <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for name in ready {
                pending.remove(&name);
                tokio::spawn(self.clone().refresh(name));
            }
        }
    }

    /// Brings `file`'s slot in line with the folder: load, replace or unload.
    pub async fn refresh(self: Arc<Self>, file: String) {
        let path = self.dir.join(&file);
        let read_seq = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        let max = self.max_file_size;
        let read = tokio::task::spawn_blocking(move || read_plugin_file(&path, max)).await;
        let bytes = match read {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => {
                self.unload(&file, read_seq);
                return;
            }
            Ok(Err(e)) => return self.not_loadable(&file, read_seq, &e),
            Err(e) => {
                return self.not_loadable(&file, read_seq, &format!("reading it crashed: {e}"));
            }
        };
        if bytes.is_empty() {
            return self.not_loadable(
                &file,
                read_seq,
                "is empty (0 bytes), taken to be still being written",
            );
        }
        let hash = content_hash(&bytes);
        {
            // Bytes already known (serving, or rejected): nothing to compile, but
            // this read is the newest, so a slower load of older bytes must not win.
            let mut slots = self.slots.write().unwrap();
            let slot = slots.entry(file.clone()).or_default();
            if slot.current.as_ref().is_some_and(|p| p.hash == hash) {
                slot.read_seq = slot.read_seq.max(read_seq);
                // The file is back to the bytes serving: whatever was said of the
                // file in between (rejected, empty, unreadable) is no longer true.
                if slot.error.take().is_some() {
                    slot.rejected = None;
                    tracing::info!(plugin = ?file, version = %hash, "plugin file is the serving version again");
                    drop(slots);
                    self.generation.send_modify(|g| *g += 1);
                }
                return;
            }
            if slot.rejected.as_ref() == Some(&hash) {
                slot.read_seq = slot.read_seq.max(read_seq);
                return;
            }
        }
        let runtime = self.runtime.clone();
        let name = file.clone();
        tracing::info!(plugin = ?file, version = %hash, bytes = bytes.len(), "compiling plugin");
        let permit = self.compiling.acquire().await.expect("never closed");
        let started = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || runtime.load(&name, &bytes)).await;
        drop(permit);
        let took = started.elapsed();

        let mut slots = self.slots.write().unwrap();
        let slot = slots.entry(file.clone()).or_default();
        if slot.read_seq > read_seq {
            return; // a newer read of the file has already been applied
        }
        slot.read_seq = read_seq;
        crate::metrics::plugin_load(matches!(loaded, Ok(Ok(_))));
        match loaded {
            Ok(Ok(plugin)) => {
                let previous = slot.current.as_ref().map(|p| p.hash.clone());
                tracing::info!(
                    plugin = ?file, version = %plugin.hash, world = plugin.world.as_str(),
                    previous = previous.as_deref().unwrap_or("none"), compile_ms = took.as_millis() as u64,
                    "plugin loaded"
                );
                slot.current = Some(Arc::new(plugin));
                slot.error = None;
                slot.rejected = None;
                slot.loaded_at = Some(SystemTime::now());
            }
            Ok(Err(e)) => {
                let serving = slot.current.as_ref().map(|p| p.hash.clone());
                let e = escape(&e.to_string()).into_owned();
                tracing::error!(
                    plugin = ?file, version = %hash,
                    still_serving = serving.as_deref().unwrap_or("nothing: its clients are held"),
                    "plugin rejected: {e}"
                );
                slot.error = Some(format!("{file} (version {hash}) was rejected: {e}"));
                slot.rejected = Some(hash);
            }
            Err(join) => {
                tracing::error!(plugin = ?file, "plugin compilation crashed: {join}");
                slot.error = Some(format!("{file} (version {hash}): compilation crashed"));
            }
        }
        drop(slots);
        self.generation.send_modify(|g| *g += 1);
    }

    fn unload(&self, file: &str, read_seq: u64) {
        let mut slots = self.slots.write().unwrap();
        // A slot even for a file never loaded: a slow load of it must not revive it.
        let slot = slots.entry(file.to_string()).or_default();
        if slot.read_seq > read_seq {
            return;
        }
        if slot.current.is_some() || slot.error.is_some() {
            tracing::warn!(plugin = ?file, "plugin file removed: its clients are held until it is back");
        }
        // Keep the slot (empty) so a slower load of older bytes cannot revive it.
        *slot = Slot {
            read_seq,
            ..Slot::default()
        };
        drop(slots);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Registry {
    /// The file is there but cannot be loaded as it is: say so in the status (and
    /// to held clients), and keep serving what served.
    fn not_loadable(&self, file: &str, read_seq: u64, why: &str) {
        let mut slots = self.slots.write().unwrap();
        let slot = slots.entry(file.to_string()).or_default();
        if slot.read_seq > read_seq {
            return;
        }
        slot.read_seq = read_seq;
        slot.rejected = None;
        let serving = slot.current.as_ref().map(|p| p.hash.clone());
        tracing::warn!(
            plugin = ?file,
            still_serving = serving.as_deref().unwrap_or("nothing: its clients are held"),
            "plugin file not loaded: it {}", escape(why)
        );
        slot.error = Some(match &serving {
            Some(v) => format!("{file} {why}; version {v} keeps serving"),
            None => format!("{file} {why}"),
        });
        drop(slots);
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A plugin file's bytes; `None` when there is no such file. Only a regular file
/// (links followed) is read, and no more than `max` bytes of it: opening does not
/// block on a FIFO, and the type is checked on the opened file itself, so it
/// cannot be swapped between the check and the read.
fn read_plugin_file(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be read: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let kind = if t.is_dir() {
            "a folder"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(format!("is {kind}, not a regular file"));
    }
    let too_big = |n: u64| format!("is {n} bytes, over plugins.max_file_size ({max} bytes)");
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// Whether an event can change what a file holds. Reads (our own included) and
/// metadata changes cannot; reacting to them would loop on a rejected file.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        K::Create(_) | K::Remove(_) | K::Any | K::Other => true,
        K::Modify(ModifyKind::Metadata(_)) => false,
        K::Modify(_) => true,
        K::Access(AccessKind::Close(AccessMode::Write)) => true,
        K::Access(_) => false,
    }
}

fn is_plugin_file(name: &str) -> bool {
    name.ends_with(".wasm") && !name.starts_with('.')
}
