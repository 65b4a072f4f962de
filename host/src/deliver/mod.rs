//! Delivery: one worker per client claims its work from the queue, renders each
//! delivery with the client's plugin ([`render`]), POSTs it ([`http`], guarded by
//! [`ssrf`], signed by [`sign`]) and records the outcome with the next step
//! ([`attempt`], [`retry`]).
//!
//! Isolation: every client has its own task, its own HTTP connection pool and its
//! own bound on requests in flight; plugin calls run on the blocking pool. A client
//! whose receiver hangs or whose plugin loops only ever waits on itself.
//!
//! Order: fresh deliveries are claimed in commit order, rendered in that order,
//! and their first attempts start in that order. Retries are claimed when due.
//!
//! Fail closed: a client whose plugin is missing or broken gets nothing; its
//! deliveries are parked as `held` and resume, in order, when the plugin registry
//! changes. A plugin error parks that one delivery as `plugin_error` until a new
//! version of the plugin arrives. The raw event is never sent in a plugin's place.
//!
//! Not here: how work is found and claimed (`queue`), which clients get an event
//! (`route`).

mod attempt;
mod http;
mod render;
pub mod retry;
pub mod sign;
pub mod ssrf;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Client;
use crate::directory::{Directory, Entry};
use crate::model::{Job, now_ms};
use crate::plugin::registry::{Lookup, Registry, Source};
use crate::queue::{Health, HealthBy, Queue};

use render::Outcome;

pub use http::{USER_AGENT, request_headers};

/// Jobs claimed and rendered per trip to the queue and the blocking pool.
const BATCH: usize = 64;
/// How often the store is swept for work the workers cannot know of: retries
/// scheduled before a restart, and deliveries replayed from the command line.
const SWEEP: Duration = Duration::from_secs(1);

/// All the workers: one per enabled client of the directory, started, changed
/// and stopped as the directory changes.
pub struct Dispatcher {
    workers: Arc<RwLock<HashMap<String, Arc<Worker>>>>,
    directory: Arc<Directory>,
    queue: Arc<dyn Queue>,
    registry: Arc<Registry>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    cancel: CancellationToken,
    /// One reconciliation at a time: two could both start a new client's worker.
    reconciling: tokio::sync::Mutex<()>,
}

/// What a worker delivers with; swapped whole when the client changes, so an
/// attempt uses one consistent version of it.
struct Settings {
    client: Client,
    plugin: Source,
    sender: http::Sender,
    /// `rate_limit`: attempts spaced `1/rate` apart (no burst), so the
    /// client never gets more than its rate in any second.
    limiter: Option<Arc<governor::DefaultDirectRateLimiter>>,
}

/// One client's delivery state.
struct Worker {
    id: String,
    /// Its metrics' handles.
    metrics: crate::metrics::ClientMetrics,
    settings: RwLock<Arc<Settings>>,
    queue: Arc<dyn Queue>,
    registry: Arc<Registry>,
    wake: Arc<Notify>,
    permits: Arc<Semaphore>,
    /// The permits there are (`max_in_flight`); it follows the client's setting.
    capacity: Mutex<usize>,
    /// Requests being made: a permit is held for the request only, not while
    /// its outcome is committed, so `max_in_flight` bounds what the receiver
    /// sees, not the store's fsync (which would cap a client at max_in_flight
    /// deliveries per commit).
    in_flight: AtomicUsize,
    /// Attempts whose outcome is not committed yet, and a signal at each one
    /// committed: stopping waits for none to be left, and new attempts for
    /// fewer than [`UNRECORDED_PER_PERMIT`] per permit.
    unrecorded: AtomicUsize,
    recorded: Notify,
    health: Mutex<Health>,
    /// Cancelled when the host stops, or the client is removed or disabled:
    /// take no new attempt.
    cancel: CancellationToken,
    /// The soonest retry known to be due (ms): scheduled by this worker, or
    /// found in the store by the sweeper.
    soonest_retry: Mutex<Option<i64>>,
    /// The sweeper saw held deliveries (a replay from the command line, say).
    parked_hint: AtomicBool,
}

/// A client's state, for the status route.
#[derive(Debug, serde::Serialize)]
pub struct ClientStatus {
    pub id: String,
    pub plugin: Option<String>,
    /// Where the plugin comes from: `upload`, `file` or `none`.
    pub plugin_source: &'static str,
    /// `ready file@hash`, `missing`, `broken: …`, or `none` without a plugin.
    pub plugin_state: String,
    pub disabled: Option<String>,
    pub failing_since: Option<i64>,
    /// Requests being made right now.
    pub in_flight: usize,
}

impl Dispatcher {
    /// A dispatcher for the directory's clients; `cancel` stops it all.
    pub fn new(
        directory: Arc<Directory>,
        queue: Arc<dyn Queue>,
        registry: Arc<Registry>,
        cancel: CancellationToken,
    ) -> Dispatcher {
        Dispatcher {
            workers: Arc::default(),
            directory,
            queue,
            registry,
            tasks: Mutex::new(Vec::new()),
            cancel,
            reconciling: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts a worker per enabled client; then follows the directory, and
    /// sweeps the store for work that reached it some other way (retries due
    /// from before a restart, replays from the command line).
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.reconcile().await?;
        let me = self.clone();
        let mut changes = self.directory.subscribe();
        let follow = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = me.cancel.cancelled() => return,
                }
                if let Err(e) = me.reconcile().await {
                    tracing::error!("cannot apply a change of clients: {e:#}");
                }
            }
        });
        let (workers, queue, cancel) = (
            self.workers.clone(),
            self.queue.clone(),
            self.cancel.clone(),
        );
        let sweep = tokio::spawn(async move {
            loop {
                match queue.sweep().await {
                    Ok(sweep) => {
                        let workers = workers.read().unwrap();
                        for (client, at) in sweep.retries {
                            if let Some(w) = workers.get(&client) {
                                w.note_retry_at(at);
                            }
                        }
                        for client in sweep.held {
                            if let Some(w) = workers.get(&client) {
                                w.parked_hint.store(true, Ordering::Relaxed);
                                w.wake.notify_one();
                            }
                        }
                    }
                    Err(e) => tracing::error!("cannot sweep the store: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        });
        self.tasks.lock().unwrap().extend([follow, sweep]);
        Ok(())
    }

    /// Brings the workers in line with the directory: a worker for each enabled
    /// client, with its current settings; a removed or disabled client's worker
    /// stops taking work and finishes what it has in flight. It runs on every
    /// change of the directory; whoever changed it may call it too, to know the
    /// change is in force when this returns (the API does, before it answers).
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let _one = self.reconciling.lock().await;
        let snapshot = self.directory.current();
        let wanted: HashMap<&str, &Arc<Entry>> = snapshot
            .entries
            .iter()
            .filter(|e| e.client.enabled)
            .map(|e| (e.client.id.as_str(), e))
            .collect();
        let stale: Vec<Arc<Worker>> = {
            let mut workers = self.workers.write().unwrap();
            let gone: Vec<String> = workers
                .keys()
                .filter(|id| !wanted.contains_key(id.as_str()))
                .cloned()
                .collect();
            gone.iter().filter_map(|id| workers.remove(id)).collect()
        };
        for w in stale {
            tracing::info!(client = %w.id, "client removed or disabled: its worker stops");
            w.cancel.cancel();
        }
        for (id, entry) in wanted {
            let existing = self.workers.read().unwrap().get(id).cloned();
            match existing {
                // One client's settings that cannot be applied (its HTTP
                // client cannot be built) do not hold up the others'.
                Some(w) => {
                    if let Err(e) = w.update(entry) {
                        tracing::error!(client = %id, "cannot apply the client's new settings: {e:#}");
                    }
                }
                None => {
                    let health = self.queue.health(id).await?.unwrap_or_default();
                    let worker = Arc::new(Worker {
                        id: id.to_string(),
                        metrics: crate::metrics::ClientMetrics::new(id),
                        settings: RwLock::new(Arc::new(Settings::new(entry, None)?)),
                        queue: self.queue.clone(),
                        registry: self.registry.clone(),
                        wake: self.queue.waker(id),
                        permits: Arc::new(Semaphore::new(entry.client.delivery.max_in_flight)),
                        capacity: Mutex::new(entry.client.delivery.max_in_flight),
                        in_flight: AtomicUsize::new(0),
                        unrecorded: AtomicUsize::new(0),
                        recorded: Notify::new(),
                        health: Mutex::new(health),
                        cancel: self.cancel.child_token(),
                        soonest_retry: Mutex::new(None),
                        parked_hint: AtomicBool::new(false),
                    });
                    if let Some(Lookup::Missing) = self.registry.lookup(&entry.plugin) {
                        tracing::warn!(client = %id, "its plugin ({:?}) is not there: the client's deliveries are held until it is", entry.plugin);
                    }
                    self.workers
                        .write()
                        .unwrap()
                        .insert(id.to_string(), worker.clone());
                    let mut tasks = self.tasks.lock().unwrap();
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(tokio::spawn(worker.run()));
                }
            }
        }
        Ok(())
    }

    /// Waits, once the token is cancelled, for the attempts in flight to finish
    /// and be recorded.
    pub async fn finished(&self) {
        loop {
            let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
            if tasks.is_empty() {
                return;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    pub fn status(&self) -> Vec<ClientStatus> {
        let mut out: Vec<ClientStatus> = self
            .workers
            .read()
            .unwrap()
            .values()
            .map(|w| w.status())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One client's status, if it has a worker (it is enabled).
    pub fn client_status(&self, id: &str) -> Option<ClientStatus> {
        self.workers.read().unwrap().get(id).map(|w| w.status())
    }

    /// Pauses a client (`Some(reason)`) or resumes it (`None`). A paused client
    /// keeps getting its events; they wait, in order, for it to resume.
    pub async fn set_paused(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), crate::queue::QueueError> {
        let change = |health: &mut Health| {
            health.disabled = reason.clone();
            if health.disabled.is_none() {
                health.failing_since = None;
            }
        };
        let mut worker = self.workers.read().unwrap().get(id).cloned();
        // Without a worker, the change goes to the store, and a worker being
        // made at this moment (a client just created) may have read its health
        // from there already: under the reconcile lock no worker is being made,
        // and the change is committed before the next one is.
        let _no_new_worker = match worker {
            Some(_) => None,
            None => {
                let one = self.reconciling.lock().await;
                worker = self.workers.read().unwrap().get(id).cloned();
                Some(one)
            }
        };
        match worker {
            // Changed and sent to the store under the worker's own lock, so an
            // attempt's health update cannot come in between and undo it.
            Some(w) => {
                let mut health = w.health.lock().unwrap();
                change(&mut health);
                self.queue.set_health(id, &health, HealthBy::Operator);
                drop(health);
                w.wake.notify_one();
            }
            None => {
                let mut health = self.queue.health(id).await?.unwrap_or_default();
                change(&mut health);
                self.queue.set_health(id, &health, HealthBy::Operator);
            }
        }
        self.queue.flush().await;
        Ok(())
    }
}

impl Settings {
    /// The settings of `entry`; the rate limiter of `before` is kept when the
    /// rate did not change (a new one would allow a request at once).
    fn new(entry: &Entry, before: Option<&Settings>) -> anyhow::Result<Settings> {
        let rate = entry.client.delivery.rate_limit;
        let kept = before
            .filter(|b| b.client.delivery.rate_limit == rate)
            .and_then(|b| b.limiter.clone());
        let limiter = kept.or_else(|| {
            rate.map(|r| {
                let quota = governor::Quota::per_second(
                    std::num::NonZeroU32::new(r.max(1)).expect("at least 1"),
                )
                .allow_burst(std::num::NonZeroU32::MIN);
                Arc::new(governor::RateLimiter::direct(quota))
            })
        });
        Ok(Settings {
            limiter,
            sender: http::Sender::new(&entry.client)?,
            client: entry.client.clone(),
            plugin: entry.plugin.clone(),
        })
    }
}

impl Worker {
    fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap().clone()
    }

    /// Takes a changed client's settings: later claims and attempts use them.
    fn update(&self, entry: &Entry) -> anyhow::Result<()> {
        let old = self.settings();
        if old.client == entry.client && old.plugin == entry.plugin {
            return Ok(());
        }
        let plugin_changed = old.plugin != entry.plugin;
        *self.settings.write().unwrap() = Arc::new(Settings::new(entry, Some(&old))?);
        let want = entry.client.delivery.max_in_flight;
        let mut capacity = self.capacity.lock().unwrap();
        if want > *capacity {
            self.permits.add_permits(want - *capacity);
        } else if want < *capacity {
            // Take the surplus out of use as the attempts holding it end.
            let (permits, surplus) = (self.permits.clone(), (*capacity - want) as u32);
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(surplus).await {
                    p.forget();
                }
            });
        }
        *capacity = want;
        drop(capacity);
        tracing::info!(client = %self.id, "client changed; later attempts use the new settings");
        if plugin_changed {
            self.registry.changed();
        }
        self.wake.notify_one();
        Ok(())
    }

    fn status(&self) -> ClientStatus {
        let health = self.health.lock().unwrap().clone();
        let settings = self.settings();
        ClientStatus {
            id: self.id.clone(),
            plugin: match &settings.plugin {
                Source::None => None,
                Source::File(f) => Some(f.clone()),
                Source::Upload(v) => Some(format!("upload@{v}")),
            },
            plugin_source: settings.plugin.kind(),
            plugin_state: match self.registry.lookup(&settings.plugin) {
                None => "none".into(),
                Some(Lookup::Ready(p)) => format!("ready {}@{}", p.file, p.hash),
                Some(Lookup::Missing) => "missing".into(),
                Some(Lookup::Broken(e)) => format!("broken: {e}"),
            },
            disabled: health.disabled,
            failing_since: health.failing_since,
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    async fn run(self: Arc<Self>) {
        let mut plugins = self.registry.subscribe();
        let mut check_parked = true;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            if self.health.lock().unwrap().disabled.is_some() {
                self.wait_enabled().await;
                continue;
            }
            // A plugin change is noticed under steady traffic too, not only when idle.
            if plugins.has_changed().unwrap_or(false) {
                plugins.borrow_and_update();
                check_parked = true;
            }
            let retry_due = self
                .soonest_retry
                .lock()
                .unwrap()
                .is_some_and(|t| t <= now_ms());
            if retry_due {
                *self.soonest_retry.lock().unwrap() = None;
                if self.run_due_retries().await == BATCH {
                    // More are due than one batch: come back at once.
                    self.note_retry_at(now_ms());
                }
            }
            if check_parked || self.parked_hint.swap(false, Ordering::Relaxed) {
                check_parked = false;
                self.resume_parked().await;
            }
            let fresh = self.queue.claim_fresh(&self.id, BATCH).await;
            if !fresh.is_empty() && self.health.lock().unwrap().disabled.is_some() {
                // Paused while this claim ran (the check above came before it):
                // not attempted; claimed again, in order, once resumed.
                self.queue.release(&self.id, &fresh);
                continue;
            }
            if !fresh.is_empty() {
                self.process(fresh).await;
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = plugins.changed() => check_parked = true,
                _ = tokio::time::sleep_until(self.wake_at()) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
        // Let attempts in flight finish and their outcomes be committed.
        let capacity = *self.capacity.lock().unwrap();
        let _ = self.permits.acquire_many(capacity as u32).await;
        self.until_unrecorded_below(1).await;
    }

    /// Waits until fewer than `n` attempts are sent and not yet committed.
    /// Before each new attempt, `n` is [`UNRECORDED_PER_PERMIT`] ×
    /// `max_in_flight`: a permit comes back before its outcome's commit, and a
    /// stalled store must not let the worker go on sending (and hold, and after
    /// a crash resend) without bound.
    async fn until_unrecorded_below(&self, n: usize) {
        loop {
            // Created before the count is read: a notice sent in between is kept.
            let recorded = self.recorded.notified();
            if self.unrecorded.load(Ordering::Acquire) < n {
                return;
            }
            recorded.await;
        }
    }

    /// While disabled, look now and then whether someone enabled the client again.
    async fn wait_enabled(&self) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = self.wake.notified() => {}
            _ = self.cancel.cancelled() => return,
        }
        // A pause is sent to the store without waiting for its commit, and
        // its wake-up can bring us here at once: read the store only after
        // what was sent is committed, or a stale "enabled" undoes the pause.
        self.queue.flush().await;
        // Only a record that says "enabled" ends a pause. No record at all is
        // a client deleted and its work failed (its worker stops meanwhile),
        // or gone from the store some other way: taken for "enabled", it
        // would send what the pause kept.
        if let Ok(Some(Health { disabled: None, .. })) = self.queue.health(&self.id).await {
            tracing::info!(client = %self.id, "client enabled again");
            *self.health.lock().unwrap() = Health::default();
        }
    }

    /// Deliveries parked for a plugin: tried again, in order, while a plugin is
    /// serving. Pages forward through the store, so it always ends.
    async fn resume_parked(self: &Arc<Self>) {
        let mut after = 0i64;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            // Look again each page: the plugin may have changed or gone meanwhile.
            let plugin = match self.registry.lookup(&self.settings().plugin) {
                None => String::new(),
                Some(Lookup::Ready(p)) => format!("{}@{}", p.file, p.hash),
                Some(_) => return,
            };
            let page = self
                .queue
                .claim_parked(&self.id, &plugin, after, BATCH)
                .await;
            if page.read == 0 {
                return;
            }
            // Past the rows read, claimed by us or not: a page of rows all
            // claimed already does not end the paging.
            after = after.max(page.last_seq);
            if !page.jobs.is_empty() {
                tracing::info!(client = %self.id, count = page.jobs.len(), "resuming parked deliveries");
                self.process(page.jobs).await;
            }
            if page.read < BATCH {
                return;
            }
        }
    }

    /// Remembers that a retry is due at `at` (ms), so the worker wakes for it.
    fn note_retry_at(&self, at: i64) {
        let mut soonest = self.soonest_retry.lock().unwrap();
        if soonest.is_none_or(|t| at < t) {
            *soonest = Some(at);
        }
        drop(soonest);
        self.wake.notify_one();
    }

    /// When the worker's next retry is due; far away when it has none.
    fn wake_at(&self) -> tokio::time::Instant {
        let wait = match *self.soonest_retry.lock().unwrap() {
            Some(t) => Duration::from_millis((t - now_ms()).max(0) as u64),
            None => Duration::from_secs(3600),
        };
        tokio::time::Instant::now() + wait
    }

    /// Starts the retries due now; returns how many were claimed. (Counting rows
    /// read instead would spin while a full page of due retries is in flight;
    /// the sweeper brings back any left beyond a page of claimed ones.)
    async fn run_due_retries(self: &Arc<Self>) -> usize {
        let page = self.queue.claim_due(&self.id, now_ms(), BATCH).await;
        let claimed = page.jobs.len();
        self.process(page.jobs).await;
        claimed
    }

    /// Renders the claimed jobs that need it, then starts their attempts in order.
    async fn process(self: &Arc<Self>, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let (rendered, to_render): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.rendered.is_some());
        let settings = self.settings();
        let outcomes = render::render(
            &settings.client,
            &settings.plugin,
            &self.registry,
            &to_render,
        )
        .await;
        let mut sends = Vec::new();
        for (job, outcome) in to_render.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Send(render) => sends.push((job, render, true)),
                Outcome::Park(update) => {
                    self.metrics.delivery(update.state.as_str());
                    self.queue.park(&self.id, update)
                }
            }
        }
        for job in rendered {
            let render = job.rendered.clone().expect("partitioned on it");
            sends.push((job, render, false));
        }
        // Sends of fresh jobs start in commit order; retries after them.
        let mut sends = sends.into_iter();
        while let Some((job, render, first_render)) = sends.next() {
            // Stopping wins over a free permit: no new attempt once cancelled.
            // Attempts wait their turn of the rate limit in order, so first
            // attempts keep their order.
            let settings = self.settings();
            let permit = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => None,
                p = async {
                    let most = *self.capacity.lock().unwrap() * UNRECORDED_PER_PERMIT;
                    self.until_unrecorded_below(most).await;
                    let p = self.permits.clone().acquire_owned().await;
                    if let Some(l) = &settings.limiter {
                        l.until_ready().await;
                    }
                    p
                } => Some(p.expect("never closed")),
            };
            // Stopping, or the client was disabled meanwhile (a 410 in this very
            // batch, say): these are not attempted. They stay due in the store;
            // fresh ones are claimed again when the client is enabled.
            let halted = permit.is_none() || self.health.lock().unwrap().disabled.is_some();
            let Some(permit) = permit.filter(|_| !halted) else {
                let rest: Vec<Job> = std::iter::once(job).chain(sends.map(|(j, ..)| j)).collect();
                self.queue.release(&self.id, &rest);
                return;
            };
            let me = self.clone();
            let slot = Slot::new(self.clone(), permit);
            let unrecorded = Unrecorded::new(self.clone());
            tokio::spawn(async move {
                me.attempt(job, render, first_render, slot).await;
                drop(unrecorded);
            });
        }
    }
}

/// One request being made: a permit of the client's `max_in_flight`, and its
/// count in the status, both given back when dropped (a panicking attempt
/// included).
struct Slot {
    worker: Arc<Worker>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(worker: Arc<Worker>, permit: OwnedSemaphorePermit) -> Slot {
        worker.in_flight.fetch_add(1, Ordering::Relaxed);
        Slot {
            worker,
            _permit: permit,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Before the permit (a field, dropped after this): the status never
        // shows more than max_in_flight.
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Attempts sent and not yet committed, at most, per permit of the client's
/// `max_in_flight` (see [`Worker::until_unrecorded_below`]).
const UNRECORDED_PER_PERMIT: usize = 16;

/// One attempt whose outcome is not committed yet, counted until dropped (a
/// panicking attempt included), so that stopping never waits for it forever.
struct Unrecorded(Arc<Worker>);

impl Unrecorded {
    fn new(worker: Arc<Worker>) -> Unrecorded {
        worker.unrecorded.fetch_add(1, Ordering::AcqRel);
        Unrecorded(worker)
    }
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        self.0.unrecorded.fetch_sub(1, Ordering::AcqRel);
        // Stopping waits for none left, a new attempt for fewer than its bound.
        self.0.recorded.notify_waiters();
    }
}
