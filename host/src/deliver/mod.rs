//! Delivery: one worker per client renders each delivery with the client's plugin
//! and POSTs it, retrying on the client's schedule.
//!
//! Isolation: every client has its own task, its own HTTP connection pool and its
//! own bound on requests in flight; plugin calls run on the blocking pool. A client
//! whose receiver hangs or whose plugin loops only ever waits on itself.
//!
//! Order: fresh deliveries reach a worker in commit order (the store's after-commit
//! hook pushes them), are rendered in that order, and their first attempts start
//! in that order. Retries come from the store when due.
//!
//! Memory stays bounded: a worker's in-memory inbox holds at most [`INBOX`] jobs.
//! When it is full, later jobs stay only in the store and the worker reads them
//! back in order once it has caught up (the same path serves the work left over
//! from a previous run at start-up).
//!
//! Fail closed: a client whose plugin is missing or broken gets nothing; its
//! deliveries are parked as `held` and resume, in order, when the plugin registry
//! changes. A plugin error parks that one delivery as `plugin_error` until a new
//! version of the plugin arrives. The raw event is never sent in a plugin's place.

mod http;
pub mod sign;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Client;
use crate::event::Event;
use crate::plugin::registry::{Lookup, Registry};
use crate::plugin::{CallContext, PluginError, Rendered, Verdict};
use crate::store::{self, Job, NewDelivery, State, Store, StoredRender, Update};

/// Jobs a worker keeps in memory; beyond, the store holds them.
const INBOX: usize = 8192;
/// Jobs rendered per trip to the blocking pool.
const BATCH: usize = 64;
/// How often the store is swept for work the workers cannot know of: retries
/// scheduled before a restart, and deliveries replayed from the command line.
/// Two grouped queries on partial indexes, however many clients there are.
const SWEEP: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured; a receiver cannot park us for a week.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `d` give or take 20 %, so that failed deliveries do not come back in a herd.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// All the workers.
pub struct Dispatcher {
    workers: Arc<HashMap<String, Arc<Worker>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
}

/// One client's delivery state.
struct Worker {
    client: Client,
    sender: http::Sender,
    store: Store,
    registry: Arc<Registry>,
    inbox: Mutex<Inbox>,
    wake: Notify,
    permits: Arc<Semaphore>,
    /// Deliveries between "taken" and "outcome committed": never loaded twice.
    in_flight: Mutex<HashSet<i64>>,
    finished: Mutex<Finished>,
    health: Mutex<Health>,
    /// Turns true when the host stops: take no new attempt.
    stop: watch::Receiver<bool>,
    /// The soonest retry known to be due (ms): scheduled by this worker, or
    /// found in the store by the sweeper.
    soonest_retry: Mutex<Option<i64>>,
    /// The sweeper saw held deliveries (a replay from the command line, say).
    parked_hint: AtomicBool,
}

struct Inbox {
    queue: VecDeque<Job>,
    /// Jobs were left in the store only; read them back before the queue again.
    overflow: bool,
    /// The highest seq of a fresh job taken so far: the next ones come after it.
    cursor: i64,
}

/// Deliveries whose outcome was committed lately, with the order of that commit.
/// A store read that began before the commit may still see the old state; this
/// is how such a row is recognised and left out.
#[derive(Default)]
struct Finished {
    count: u64,
    recent: VecDeque<(i64, u64)>,
}

/// Lately finished deliveries kept for that check; reads take milliseconds.
const FINISHED_KEPT: usize = 1 << 16;

#[derive(Default, Clone)]
struct Health {
    disabled: Option<String>,
    failing_since: Option<i64>,
}

/// A client's state, for the status route.
#[derive(Debug, serde::Serialize)]
pub struct ClientStatus {
    pub id: String,
    pub plugin: Option<String>,
    /// `ready file@hash`, `missing`, `broken: …`, or `none` without a plugin.
    pub plugin_state: String,
    pub disabled: Option<String>,
    pub failing_since: Option<i64>,
    /// Fresh deliveries waiting in memory (more may wait in the store).
    pub queued: usize,
    /// Requests being made right now.
    pub in_flight: usize,
}

impl Dispatcher {
    /// Builds a worker for every enabled client.
    pub fn new(
        clients: &[Client],
        store: &Store,
        registry: &Arc<Registry>,
    ) -> anyhow::Result<Dispatcher> {
        let shutdown = watch::channel(false).0;
        let mut workers = HashMap::new();
        for c in clients.iter().filter(|c| c.enabled) {
            let (disabled, failing_since) = store.client_state(&c.id)?;
            let worker = Worker {
                sender: http::Sender::new(c)?,
                client: c.clone(),
                store: store.clone(),
                registry: registry.clone(),
                inbox: Mutex::new(Inbox {
                    queue: VecDeque::new(),
                    overflow: true,
                    cursor: 0,
                }),
                finished: Mutex::new(Finished::default()),
                wake: Notify::new(),
                permits: Arc::new(Semaphore::new(c.delivery.max_in_flight)),
                in_flight: Mutex::new(HashSet::new()),
                health: Mutex::new(Health {
                    disabled,
                    failing_since,
                }),
                stop: shutdown.subscribe(),
                soonest_retry: Mutex::new(None),
                parked_hint: AtomicBool::new(false),
            };
            workers.insert(c.id.clone(), Arc::new(worker));
        }
        Ok(Dispatcher {
            workers: Arc::new(workers),
            tasks: Mutex::new(Vec::new()),
            shutdown,
        })
    }

    /// The clients an event of this name goes to.
    pub fn fan_out(&self, event_name: &str) -> Vec<NewDelivery> {
        let mut out: Vec<NewDelivery> = self
            .workers
            .values()
            .filter(|w| w.client.wants(event_name))
            .map(|w| NewDelivery {
                id: store::new_delivery_id(),
                client_id: w.client.id.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    /// Hands committed deliveries to their workers. Runs on the store's writer
    /// thread, in commit order.
    pub fn enqueue(&self, event: &Arc<Event>, deliveries: &[NewDelivery], seqs: &[i64]) {
        for (d, &seq) in deliveries.iter().zip(seqs) {
            if let Some(w) = self.workers.get(&d.client_id) {
                let job = Job {
                    seq,
                    id: d.id.clone(),
                    client_id: d.client_id.clone(),
                    event: event.clone(),
                    attempts: 0,
                    rendered: None,
                };
                w.push(job);
            }
        }
    }

    /// Starts the workers, and the sweeper that tells them about work that
    /// reached the store some other way (retries due from before a restart,
    /// replays from the command line).
    pub fn start(&self, store: &Store) {
        let mut tasks = self.tasks.lock().unwrap();
        for w in self.workers.values() {
            tasks.push(tokio::spawn(w.clone().run(self.shutdown.subscribe())));
        }
        let workers = self.workers.clone();
        let (store, mut stop) = (store.clone(), self.shutdown.subscribe());
        tasks.push(tokio::spawn(async move {
            loop {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.sweep()).await {
                    Ok(Ok(sweep)) => {
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
                    Ok(Err(e)) => tracing::error!("cannot sweep the store: {e:#}"),
                    Err(e) => tracing::error!("store sweep crashed: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }));
    }

    /// Stops taking work, waits for attempts in flight to finish and be recorded.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            let _ = t.await;
        }
    }

    pub fn status(&self) -> Vec<ClientStatus> {
        let mut out: Vec<ClientStatus> = self.workers.values().map(|w| w.status()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

impl Worker {
    fn push(&self, job: Job) {
        let mut inbox = self.inbox.lock().unwrap();
        if !inbox.overflow && inbox.queue.len() < INBOX {
            inbox.queue.push_back(job);
        } else {
            inbox.overflow = true;
        }
        drop(inbox);
        self.wake.notify_one();
    }

    fn status(&self) -> ClientStatus {
        let health = self.health.lock().unwrap().clone();
        ClientStatus {
            id: self.client.id.clone(),
            plugin: self.client.plugin.clone(),
            plugin_state: match &self.client.plugin {
                None => "none".into(),
                Some(file) => match self.registry.get(file) {
                    Lookup::Ready(p) => format!("ready {}@{}", p.file, p.hash),
                    Lookup::Missing => "missing".into(),
                    Lookup::Broken(e) => format!("broken: {e}"),
                },
            },
            disabled: health.disabled,
            failing_since: health.failing_since,
            queued: self.inbox.lock().unwrap().queue.len(),
            in_flight: self.client.delivery.max_in_flight - self.permits.available_permits(),
        }
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut plugins = self.registry.subscribe();
        let mut check_parked = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.health.lock().unwrap().disabled.is_some() {
                self.wait_enabled(&mut shutdown).await;
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
                .is_some_and(|t| t <= store::now_ms());
            if retry_due {
                *self.soonest_retry.lock().unwrap() = None;
                if self.run_due_retries().await == BATCH {
                    // More are due than one batch: come back at once.
                    self.note_retry_at(store::now_ms());
                }
            }
            if check_parked || self.parked_hint.swap(false, Ordering::Relaxed) {
                check_parked = false;
                self.resume_parked().await;
            }
            let fresh = self.take_fresh().await;
            if !fresh.is_empty() {
                self.process(fresh).await;
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = plugins.changed() => check_parked = true,
                _ = tokio::time::sleep_until(self.wake_at()) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Let attempts in flight finish and their outcomes be committed.
        let _ = self
            .permits
            .acquire_many(self.client.delivery.max_in_flight as u32)
            .await;
    }

    /// While disabled, look now and then whether someone enabled the client again.
    async fn wait_enabled(&self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
        let store = self.store.clone();
        let id = self.client.id.clone();
        if let Ok(Ok((None, _))) =
            tokio::task::spawn_blocking(move || store.client_state(&id)).await
        {
            tracing::info!(client = %self.client.id, "client enabled again");
            *self.health.lock().unwrap() = Health::default();
        }
    }

    /// The next fresh jobs, in commit order: from the inbox, or from the store when
    /// the inbox overflowed (or at start-up, or after a rewind).
    async fn take_fresh(&self) -> Vec<Job> {
        let after = {
            let mut inbox = self.inbox.lock().unwrap();
            let mut batch = Vec::new();
            while batch.len() < BATCH {
                match inbox.queue.pop_front() {
                    Some(job) if job.seq > inbox.cursor => batch.push(job),
                    Some(_) => {} // already read back from the store
                    None => break,
                }
            }
            if let Some(last) = batch.last() {
                inbox.cursor = last.seq;
                return batch;
            }
            if !inbox.overflow {
                return batch;
            }
            inbox.cursor
        };
        // Parking writes are sent without waiting: make them visible first, so a
        // job parked a moment ago is not read back as still pending.
        self.store.flush().await;
        let (mut rows, _) = self
            .load(move |s, id| s.load_pending(id, after, BATCH))
            .await;
        if rows.is_empty() {
            // Caught up: back to the inbox. Rows committed between that read and
            // the switch were not pushed, so look once more.
            self.inbox.lock().unwrap().overflow = false;
            (rows, _) = self
                .load(move |s, id| s.load_pending(id, after, BATCH))
                .await;
            if !rows.is_empty() {
                // Not caught up after all: the store has every row, those pushed
                // meanwhile included, so it stays the source until caught up.
                let mut inbox = self.inbox.lock().unwrap();
                inbox.overflow = true;
                inbox.queue.clear();
            }
        }
        if let Some(last) = rows.last() {
            let mut inbox = self.inbox.lock().unwrap();
            inbox.cursor = inbox.cursor.max(last.seq);
        }
        rows
    }

    /// Takes fresh jobs that were not attempted back into the store's hands: the
    /// cursor goes back before them, so they are read again, in order.
    fn rewind(&self, seq: i64) {
        let mut inbox = self.inbox.lock().unwrap();
        inbox.cursor = inbox.cursor.min(seq - 1);
        inbox.overflow = true;
        inbox.queue.clear();
    }

    /// Runs a store read on the blocking pool and leaves out what is in flight or
    /// finished while the read ran. Returns the jobs and how many rows were read.
    async fn load(
        &self,
        read: impl FnOnce(&Store, &str) -> anyhow::Result<Vec<Job>> + Send + 'static,
    ) -> (Vec<Job>, usize) {
        let store = self.store.clone();
        let id = self.client.id.clone();
        let began = self.finished.lock().unwrap().count;
        match tokio::task::spawn_blocking(move || read(&store, &id)).await {
            Ok(Ok(jobs)) => {
                let read = jobs.len();
                let busy = self.in_flight.lock().unwrap();
                let finished = self.finished.lock().unwrap();
                let since: HashSet<i64> = finished
                    .recent
                    .iter()
                    .rev()
                    .take_while(|(_, n)| *n > began)
                    .map(|(seq, _)| *seq)
                    .collect();
                let jobs = jobs
                    .into_iter()
                    .filter(|j| !busy.contains(&j.seq) && !since.contains(&j.seq))
                    .collect();
                (jobs, read)
            }
            Ok(Err(e)) => {
                tracing::error!(client = %self.client.id, "cannot read work from the store: {e:#}");
                (Vec::new(), 0)
            }
            Err(e) => {
                tracing::error!(client = %self.client.id, "store read crashed: {e}");
                (Vec::new(), 0)
            }
        }
    }

    /// Marks a delivery's outcome as committed: it leaves the in-flight set, and
    /// reads that began earlier will not take it.
    fn finish(&self, seq: i64) {
        let mut finished = self.finished.lock().unwrap();
        finished.count += 1;
        let n = finished.count;
        finished.recent.push_back((seq, n));
        if finished.recent.len() > FINISHED_KEPT {
            finished.recent.pop_front();
        }
        drop(finished);
        self.in_flight.lock().unwrap().remove(&seq);
    }

    /// Deliveries parked for a plugin: tried again, in order, while a plugin is
    /// serving. Pages forward through the store, so it always ends.
    async fn resume_parked(self: &Arc<Self>) {
        let mut after = 0i64;
        let mut stop = self.stop.clone();
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            // Look again each page: the plugin may have changed or gone meanwhile.
            let plugin = match &self.client.plugin {
                None => String::new(),
                Some(file) => match self.registry.get(file) {
                    Lookup::Ready(p) => format!("{}@{}", p.file, p.hash),
                    _ => return,
                },
            };
            // Parking writes are sent without waiting; make sure they are visible.
            self.store.flush().await;
            let (jobs, read) = self
                .load(move |s, id| s.load_parked(id, &plugin, after, BATCH))
                .await;
            if read == 0 {
                return;
            }
            if let Some(last) = jobs.last() {
                after = after.max(last.seq);
            }
            if jobs.is_empty() {
                return; // everything read is in flight already
            }
            tracing::info!(client = %self.client.id, count = jobs.len(), "resuming parked deliveries");
            self.process(jobs).await;
            if read < BATCH {
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
            Some(t) => Duration::from_millis((t - store::now_ms()).max(0) as u64),
            None => Duration::from_secs(3600),
        };
        tokio::time::Instant::now() + wait
    }

    /// Starts the retries due now; returns how many it found.
    async fn run_due_retries(self: &Arc<Self>) -> usize {
        let now = store::now_ms();
        let (jobs, read) = self
            .load(move |s, id| s.load_due_retries(id, now, BATCH))
            .await;
        self.process(jobs).await;
        read
    }

    /// Renders the jobs that need it, then starts their attempts in order.
    async fn process(self: &Arc<Self>, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut busy = self.in_flight.lock().unwrap();
            busy.extend(jobs.iter().map(|j| j.seq));
        }
        let (rendered, to_render): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.rendered.is_some());
        let verdicts = self.render(&to_render).await;
        let mut sends = Vec::new();
        for (job, verdict) in to_render.into_iter().zip(verdicts) {
            match verdict {
                Outcome::Send(render) => sends.push((job, render, true)),
                Outcome::Park(update) => {
                    // Safe before the commit: fresh ones are behind the cursor,
                    // and parked ones are read only after a flush.
                    self.in_flight.lock().unwrap().remove(&job.seq);
                    self.store.update_later(update);
                }
            }
        }
        for job in rendered {
            let render = job.rendered.clone().expect("partitioned on it");
            sends.push((job, render, false));
        }
        // Sends of fresh jobs start in commit order; retries after them.
        let mut stop = self.stop.clone();
        let mut sends = sends.into_iter();
        while let Some((job, render, first_render)) = sends.next() {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => Some(p.expect("never closed")),
                _ = stop.wait_for(|s| *s) => None,
            };
            // Stopping, or the client was disabled meanwhile (a 410 in this very
            // batch, say): these are not attempted. They stay due in the store;
            // fresh ones are read again when the client is enabled.
            let halted = permit.is_none() || self.health.lock().unwrap().disabled.is_some();
            let Some(permit) = permit.filter(|_| !halted) else {
                let rest: Vec<Job> = std::iter::once(job).chain(sends.map(|(j, ..)| j)).collect();
                let mut busy = self.in_flight.lock().unwrap();
                for j in &rest {
                    busy.remove(&j.seq);
                }
                drop(busy);
                if let Some(first) = rest
                    .iter()
                    .filter(|j| j.rendered.is_none() && j.attempts == 0)
                    .map(|j| j.seq)
                    .min()
                {
                    self.rewind(first);
                }
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.attempt(job, render, first_render).await;
                drop(permit);
            });
        }
    }

    /// Makes one attempt and records it with the delivery's next state.
    async fn attempt(&self, job: Job, render: StoredRender, first_render: bool) {
        let (attempt, verdict) = self
            .sender
            .attempt(&self.client, &job.id, &render.request)
            .await;
        let attempts = job.attempts + 1;
        let schedule = &self.client.delivery.retry_schedule;
        let failed = verdict != http::Verdict::Delivered;
        let mut update = match verdict {
            http::Verdict::Delivered => Update::new(job.seq, State::Delivered),
            // The 410 that disables the client fails its delivery; the others of
            // the same burst are kept for when the client is enabled again.
            http::Verdict::Gone if self.disable("the receiver answered 410 Gone") => {
                let mut u = Update::new(job.seq, State::Failed);
                u.reason = Some("the receiver answered 410 Gone; the client is disabled".into());
                u
            }
            http::Verdict::Gone => {
                let mut u = Update::new(job.seq, State::Retrying);
                u.next_attempt_at = Some(store::now_ms());
                u.reason =
                    Some("the receiver answered 410 Gone while the client was disabled".into());
                u
            }
            http::Verdict::Retry { .. } if attempts as usize > schedule.len() => {
                let mut u = Update::new(job.seq, State::Failed);
                u.reason = Some(format!(
                    "gave up after {attempts} attempts: {}",
                    attempt.error.as_deref().unwrap_or("")
                ));
                u
            }
            http::Verdict::Retry { retry_after } => {
                let wait = jitter(schedule[attempts as usize - 1])
                    .max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
                let mut u = Update::new(job.seq, State::Retrying);
                u.next_attempt_at = Some(store::now_ms() + wait.as_millis() as i64);
                u.reason = attempt.error.clone();
                u
            }
        };
        if failed {
            tracing::debug!(client = %self.client.id, delivery = %job.id, attempt = attempts,
                error = attempt.error.as_deref().unwrap_or(""), "attempt failed");
        }
        self.note_health(!failed);
        update.attempt = Some(attempt);
        if first_render {
            update.render_is_event_body = render.request.body == job.event.raw;
            update.render = Some(render);
        }
        let retry_at = update
            .next_attempt_at
            .filter(|_| update.state == State::Retrying);
        if let Err(e) = self.store.update(update).await {
            // Not recorded: the store still says the delivery is due, so send it
            // again later (the receiver drops the duplicate by its webhook-id).
            tracing::error!(client = %self.client.id, delivery = %job.id, "cannot record an attempt: {e}");
            self.in_flight.lock().unwrap().remove(&job.seq);
            if job.rendered.is_none() && job.attempts == 0 {
                self.rewind(job.seq);
            } else {
                self.note_retry_at(store::now_ms() + 5_000);
            }
            self.wake.notify_one();
            return;
        }
        // Only now, with the outcome committed, may a store read see it again.
        self.finish(job.seq);
        if let Some(at) = retry_at {
            self.note_retry_at(at);
        }
    }

    /// Tracks how long the client has been failing; disables it past its window.
    fn note_health(&self, ok: bool) {
        let mut h = self.health.lock().unwrap();
        let now = store::now_ms();
        match (ok, h.failing_since) {
            (true, Some(_)) => {
                h.failing_since = None;
                self.store
                    .set_client(&self.client.id, h.disabled.clone(), None);
            }
            (false, None) => {
                h.failing_since = Some(now);
                self.store
                    .set_client(&self.client.id, h.disabled.clone(), Some(now));
            }
            (false, Some(since))
                if h.disabled.is_none()
                    && now - since >= self.client.delivery.disable_after.as_millis() as i64 =>
            {
                drop(h);
                self.disable(&format!(
                    "every delivery failed for {}",
                    humantime::format_duration(self.client.delivery.disable_after)
                ));
            }
            _ => {}
        }
    }

    /// Disables the client; true if this call did (it was enabled until now).
    fn disable(&self, why: &str) -> bool {
        let mut h = self.health.lock().unwrap();
        if h.disabled.is_some() {
            return false;
        }
        tracing::error!(client = %self.client.id, "client disabled: {why}; its new events are kept. \
            Enable it again with `hookwasm clients enable {}`", self.client.id);
        h.disabled = Some(why.to_string());
        self.store
            .set_client(&self.client.id, h.disabled.clone(), h.failing_since);
        true
    }

    /// What each job becomes: something to send, or a parking update.
    async fn render(&self, jobs: &[Job]) -> Vec<Outcome> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let Some(file) = &self.client.plugin else {
            // No plugin: the event goes out exactly as received.
            return jobs
                .iter()
                .map(|j| {
                    Outcome::Send(StoredRender {
                        request: Rendered {
                            body: j.event.raw.to_vec(),
                            content_type: None,
                            headers: Vec::new(),
                        },
                        plugin: None,
                    })
                })
                .collect();
        };
        let plugin = match self.registry.get(file) {
            Lookup::Ready(p) => p,
            other => {
                let reason = match other {
                    Lookup::Broken(e) => format!("plugin {file} does not load: {e}"),
                    _ => format!("plugin {file} is not in plugins.dir"),
                };
                return jobs
                    .iter()
                    .map(|j| {
                        let mut u = Update::new(j.seq, State::Held);
                        u.reason = Some(reason.clone());
                        Outcome::Park(u)
                    })
                    .collect();
            }
        };
        let tag = format!("{}@{}", plugin.file, plugin.hash);
        let runtime = self.registry.runtime().clone();
        let client = self.client.clone();
        let work: Vec<(Arc<Event>, String)> = jobs
            .iter()
            .map(|j| (j.event.clone(), j.id.clone()))
            .collect();
        let p = plugin.clone();
        let results = tokio::task::spawn_blocking(move || {
            work.iter()
                .map(|(event, delivery_id)| {
                    let cx = CallContext {
                        client_id: &client.id,
                        delivery_id,
                        config: &client.config,
                        limits: &client.limits,
                    };
                    runtime.call(&p, event, &cx)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| {
            jobs.iter()
                .map(|_| Err(PluginError::Trap(format!("the host's call crashed: {e}"))))
                .collect()
        });

        jobs.iter()
            .zip(results)
            .map(|(j, r)| match r {
                Ok(Verdict::Deliver(request)) => Outcome::Send(StoredRender { request, plugin: Some(tag.clone()) }),
                Ok(Verdict::Skip(reason)) => {
                    let mut u = Update::new(j.seq, State::Skipped);
                    u.reason = Some(reason);
                    u.plugin = Some(tag.clone());
                    Outcome::Park(u)
                }
                Err(e) => {
                    tracing::warn!(client = %self.client.id, plugin = ?tag, delivery = %j.id, event = %j.event.id,
                        kind = e.kind(), "plugin error, delivery held until a new version: {}", crate::text::escape(&e.to_string()));
                    let mut u = Update::new(j.seq, State::PluginError);
                    u.reason = Some(format!("{}: {e}", e.kind()));
                    u.plugin = Some(tag.clone());
                    Outcome::Park(u)
                }
            })
            .collect()
    }
}

enum Outcome {
    Send(StoredRender),
    Park(Update),
}
