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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Client;
use crate::model::{Job, now_ms};
use crate::plugin::registry::{Lookup, Registry};
use crate::queue::{Health, Queue};

use render::Outcome;

/// Jobs claimed and rendered per trip to the queue and the blocking pool.
const BATCH: usize = 64;
/// How often the store is swept for work the workers cannot know of: retries
/// scheduled before a restart, and deliveries replayed from the command line.
const SWEEP: Duration = Duration::from_secs(1);

/// All the workers.
pub struct Dispatcher {
    workers: Arc<HashMap<String, Arc<Worker>>>,
    queue: Arc<dyn Queue>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    cancel: CancellationToken,
}

/// One client's delivery state.
struct Worker {
    client: Client,
    sender: http::Sender,
    queue: Arc<dyn Queue>,
    registry: Arc<Registry>,
    wake: Arc<Notify>,
    permits: Arc<Semaphore>,
    health: Mutex<Health>,
    /// Cancelled when the host stops: take no new attempt.
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
    /// `ready file@hash`, `missing`, `broken: …`, or `none` without a plugin.
    pub plugin_state: String,
    pub disabled: Option<String>,
    pub failing_since: Option<i64>,
    /// Requests being made right now.
    pub in_flight: usize,
}

impl Dispatcher {
    /// Builds a worker for every enabled client; `cancel` stops them.
    pub async fn new(
        clients: &[Client],
        queue: Arc<dyn Queue>,
        registry: &Arc<Registry>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Dispatcher> {
        let mut workers = HashMap::new();
        for c in clients.iter().filter(|c| c.enabled) {
            let health = queue.health(&c.id).await?;
            let worker = Worker {
                sender: http::Sender::new(c)?,
                client: c.clone(),
                queue: queue.clone(),
                registry: registry.clone(),
                wake: queue.waker(&c.id),
                permits: Arc::new(Semaphore::new(c.delivery.max_in_flight)),
                health: Mutex::new(health),
                cancel: cancel.clone(),
                soonest_retry: Mutex::new(None),
                parked_hint: AtomicBool::new(false),
            };
            workers.insert(c.id.clone(), Arc::new(worker));
        }
        Ok(Dispatcher {
            workers: Arc::new(workers),
            queue,
            tasks: Mutex::new(Vec::new()),
            cancel,
        })
    }

    /// Starts the workers, and the sweeper that tells them about work that
    /// reached the store some other way (retries due from before a restart,
    /// replays from the command line).
    pub fn start(&self) {
        let mut tasks = self.tasks.lock().unwrap();
        for w in self.workers.values() {
            tasks.push(tokio::spawn(w.clone().run()));
        }
        let (workers, queue, cancel) = (
            self.workers.clone(),
            self.queue.clone(),
            self.cancel.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match queue.sweep().await {
                    Ok(sweep) => {
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
        }));
    }

    /// Waits, once the token is cancelled, for the attempts in flight to finish
    /// and be recorded.
    pub async fn finished(&self) {
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
            in_flight: self.client.delivery.max_in_flight - self.permits.available_permits(),
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
            let fresh = self.queue.claim_fresh(&self.client.id, BATCH).await;
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
        let _ = self
            .permits
            .acquire_many(self.client.delivery.max_in_flight as u32)
            .await;
    }

    /// While disabled, look now and then whether someone enabled the client again.
    async fn wait_enabled(&self) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = self.cancel.cancelled() => return,
        }
        if let Ok(Health { disabled: None, .. }) = self.queue.health(&self.client.id).await {
            tracing::info!(client = %self.client.id, "client enabled again");
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
            let plugin = match &self.client.plugin {
                None => String::new(),
                Some(file) => match self.registry.get(file) {
                    Lookup::Ready(p) => format!("{}@{}", p.file, p.hash),
                    _ => return,
                },
            };
            let page = self
                .queue
                .claim_parked(&self.client.id, &plugin, after, BATCH)
                .await;
            if page.read == 0 {
                return;
            }
            // Past the rows read, claimed by us or not: a page of rows all
            // claimed already does not end the paging.
            after = after.max(page.last_seq);
            if !page.jobs.is_empty() {
                tracing::info!(client = %self.client.id, count = page.jobs.len(), "resuming parked deliveries");
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
        let page = self.queue.claim_due(&self.client.id, now_ms(), BATCH).await;
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
        let outcomes = render::render(&self.client, &self.registry, &to_render).await;
        let mut sends = Vec::new();
        for (job, outcome) in to_render.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Send(render) => sends.push((job, render, true)),
                Outcome::Park(update) => self.queue.park(&self.client.id, update),
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
            let permit = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => None,
                p = self.permits.clone().acquire_owned() => Some(p.expect("never closed")),
            };
            // Stopping, or the client was disabled meanwhile (a 410 in this very
            // batch, say): these are not attempted. They stay due in the store;
            // fresh ones are claimed again when the client is enabled.
            let halted = permit.is_none() || self.health.lock().unwrap().disabled.is_some();
            let Some(permit) = permit.filter(|_| !halted) else {
                let rest: Vec<Job> = std::iter::once(job).chain(sends.map(|(j, ..)| j)).collect();
                self.queue.release(&self.client.id, &rest);
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.attempt(job, render, first_render).await;
                drop(permit);
            });
        }
    }
}
