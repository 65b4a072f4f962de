//! The plugin folder, watched: which version of which file serves right now.
//!
//! Every `.wasm` file in `plugins.dir` (dotfiles and other names are ignored, so
//! `cp x.wasm .x.tmp && mv .x.tmp x.wasm` is the safe way to replace one) is
//! compiled on the blocking pool, never on an async worker, and swapped in
//! atomically under a short lock. Callers hold an `Arc<Plugin>`, so calls already
//! running finish on the version they started with.
//!
//! Changes are debounced: a file is read once it has been quiet for [`QUIET`]. A
//! file that does not compile or does not fit the world is reported (log and
//! status) and the previous good version keeps serving; an empty file is taken to
//! be still being written and is left alone. A deleted file is unloaded: its
//! clients are held (fail closed) until a good file is back. Every change bumps a
//! generation counter that the delivery workers watch, so held work resumes by
//! itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{Plugin, Runtime, content_hash};

/// How long a file must be left alone before it is read.
pub const QUIET: Duration = Duration::from_millis(100);

/// What a client's plugin file gives right now.
#[derive(Debug, Clone)]
pub enum Lookup {
    Ready(Arc<Plugin>),
    /// No file of that name, or it was deleted.
    Missing,
    /// The file exists but never loaded; the reason.
    Broken(String),
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Plugin>>,
    /// The last load failure, kept while the file is what failed.
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
}

pub struct Registry {
    dir: PathBuf,
    runtime: Arc<Runtime>,
    slots: RwLock<HashMap<String, Slot>>,
    reads: AtomicU64,
    generation: watch::Sender<u64>,
    /// Compilations at once: one per core. Cranelift already spreads one
    /// component over the cores; two hundred at a time would only pile up memory.
    compiling: tokio::sync::Semaphore,
}

impl Registry {
    pub fn new(dir: &Path, runtime: Arc<Runtime>) -> Registry {
        Registry {
            dir: dir.to_path_buf(),
            runtime,
            slots: RwLock::new(HashMap::new()),
            reads: AtomicU64::new(0),
            generation: watch::channel(0).0,
            compiling: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
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

    /// Watches the folder until the returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<WatchGuard> {
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
        let task = tokio::spawn(self.clone().debounce(rx));
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }

    async fn debounce(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        while let Some(first) = rx.recv().await {
            let mut changed: HashSet<String> = HashSet::from([first]);
            // Wait for the folder to be quiet, then look at each file once.
            loop {
                match tokio::time::timeout(QUIET, rx.recv()).await {
                    Ok(Some(name)) => {
                        changed.insert(name);
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            for name in changed {
                tokio::spawn(self.clone().refresh(name));
            }
        }
    }

    /// Brings `file`'s slot in line with the folder: load, replace or unload.
    pub async fn refresh(self: Arc<Self>, file: String) {
        let path = self.dir.join(&file);
        let read_seq = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.unload(&file, read_seq);
                return;
            }
            Err(e) => {
                tracing::error!(plugin = %file, "cannot read the plugin file: {e}");
                return;
            }
        };
        if bytes.is_empty() {
            tracing::debug!(plugin = %file, "empty plugin file, taken to be still being written");
            return;
        }
        let hash = content_hash(&bytes);
        {
            // Bytes already known (serving, or rejected): nothing to compile, but
            // this read is the newest, so a slower load of older bytes must not win.
            let mut slots = self.slots.write().unwrap();
            let slot = slots.entry(file.clone()).or_default();
            if slot.current.as_ref().is_some_and(|p| p.hash == hash)
                || slot.rejected.as_ref() == Some(&hash)
            {
                slot.read_seq = slot.read_seq.max(read_seq);
                return;
            }
        }
        let runtime = self.runtime.clone();
        let name = file.clone();
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
        match loaded {
            Ok(Ok(plugin)) => {
                let previous = slot.current.as_ref().map(|p| p.hash.clone());
                tracing::info!(
                    plugin = %file, version = %plugin.hash, world = plugin.world.as_str(),
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
                tracing::error!(
                    plugin = %file, version = %hash,
                    still_serving = serving.as_deref().unwrap_or("nothing: its clients are held"),
                    "plugin rejected: {e}"
                );
                slot.error = Some(format!("{file} (version {hash}) was rejected: {e}"));
                slot.rejected = Some(hash);
            }
            Err(join) => {
                tracing::error!(plugin = %file, "plugin compilation crashed: {join}");
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
            tracing::warn!(plugin = %file, "plugin file removed: its clients are held until it is back");
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

/// Keeps the folder watched while alive.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
