//! The queue on PostgreSQL: several hosts share the work.
//!
//! A claim marks rows with this host's lease (`FOR UPDATE SKIP LOCKED`, see
//! `store/pg`), renewed every third of a lease while the host works on them;
//! a host that dies lets its leases run out and the others claim the rows
//! again (the sweep looks for such orphans every second). So a delivery may
//! be attempted twice only when its lease ran out during an attempt.
//!
//! Per-client rules (order of first attempts, `max_in_flight`, the rate
//! limit, `disable_after`, the 410 decision) are one host's business at a
//! time: before any claim, the host takes or renews the client's lease, and a
//! client whose lease another live host holds gets no claim here. To spread
//! the clients over the hosts, a host that held a client for [`HOLD`] while
//! others are alive hands it over: it stops claiming for that client, waits
//! for its attempts in flight to be recorded, then gives the lease up and
//! signals the others (and stays away for [`GRACE`]). The new holder claims
//! in seq order from what is left, so first attempts keep their order.
//!
//! A claim costs a statement, and under load most fresh work is this host's
//! own ingests for clients it holds: those are leased to it by the ingest's
//! own statement and handed to the worker in memory (the client's inbox),
//! parsed already — unless a pending delivery of that client lies outside
//! this host's leases, which must go first (see `store/pg/batch.rs`). So the
//! inbox never runs ahead of older work; whatever stops this host from
//! working on a client (a handover, a pause, a release) gives the inbox's
//! deliveries back to the store, where the next claim finds them in order.
//!
//! Outcomes are committed before `complete` returns; parking, releasing and
//! health go through one background writer in order, and `flush` waits for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Health, HealthBy, Page, Queue, QueueError, Sweep};
use crate::event::Event;
use crate::model::{Job, NewDelivery, Update};
use crate::store::Ingested;
use crate::store::pg::{Claim, PgStore};

/// How long a host holds a client's work before handing it over, when other
/// hosts are alive.
const HOLD: Duration = Duration::from_secs(3);
/// How long a host that handed a client over leaves it to the others.
const GRACE: Duration = Duration::from_millis(500);
/// A client lease confirmed this recently is not asked for again: a pause
/// made on another host stops this one's claims within this long (or a third
/// of a lease, when that is shorter: a confirmation must not outlive it).
const CONFIRMED: Duration = Duration::from_secs(1);
/// Deliveries a client's inbox holds at most: beyond, ingests leave their
/// deliveries to claims, which read them from the store when the worker
/// catches up.
const INBOX: usize = 4096;

pub struct PgQueue {
    store: PgStore,
    clients: Arc<Mutex<HashMap<String, Holding>>>,
    writes: Arc<Writes>,
    done: watch::Receiver<u64>,
    /// Other live hosts, as of the last renewal.
    others: Arc<AtomicI64>,
}

/// The way to the background writer.
struct Writes {
    later: mpsc::UnboundedSender<Later>,
    /// Writes given to the background writer (it counts those it has done).
    sent: AtomicU64,
}

impl Writes {
    /// Sends `op`; the count the writer reaches once it is written.
    fn send(&self, op: Later) -> u64 {
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.later.send(op);
        n
    }
}

/// This host's side of one client.
#[derive(Default)]
struct Holding {
    /// When this host took the client's lease; `None` while it does not hold it.
    since: Option<Instant>,
    /// When the lease was last confirmed by the database.
    confirmed: Option<Instant>,
    /// A handover is under way: no claims until what is claimed is recorded.
    draining: bool,
    /// When this host last handed the client over.
    yielded: Option<Instant>,
    /// Deliveries claimed and not yet recorded (the inbox's among them).
    claimed: HashSet<i64>,
    /// Fresh deliveries this host's ingests leased to it, in commit order,
    /// not yet handed to the worker.
    inbox: VecDeque<Job>,
    /// Bumped by every release of this client's work: an ingest decided
    /// before one must not put its deliveries ahead of those released.
    releases: u64,
    /// The background writer's count once the last release is written:
    /// until then the store still shows those rows as this host's, and an
    /// ingest would take new ones in ahead of them.
    settle: u64,
}

impl Holding {
    /// Whether an ingest may lease this client's deliveries to this host:
    /// it holds the client, confirmed within a renewal period, and keeps it.
    /// (A pause made elsewhere is seen by the worker's next claim, which
    /// confirms the lease each [`CONFIRMED`] and gives the inbox back when
    /// refused; an ingest must not fall back to claims for lack of one.)
    fn takes_in(&self, lease: Duration, written: u64) -> bool {
        self.since.is_some()
            && self.confirmed.is_some_and(|t| t.elapsed() < lease / 3)
            && !self.draining
            && self.inbox.len() < INBOX
            && written >= self.settle
    }

    /// Releases `seqs` and the inbox's deliveries (no longer claimed here)
    /// through `writes`; ingests wait for the release before taking in again.
    fn give_back(&mut self, writes: &Writes, mut seqs: Vec<i64>) {
        for j in self.inbox.drain(..) {
            self.claimed.remove(&j.seq);
            seqs.push(j.seq);
        }
        self.releases += 1;
        if !seqs.is_empty() {
            self.settle = writes.send(Later::Release(seqs));
        }
    }
}

/// What [`PgQueue::may_claim`] decided under its lock.
enum Next {
    Answer(bool),
    HandOver,
    Ask,
}

/// What the background writer does, in the order it is asked.
enum Later {
    Park(Box<Update>),
    Release(Vec<i64>),
    Health(String, Health, HealthBy),
}

impl PgQueue {
    /// A queue on `store`, with its background writer and lease renewal.
    /// `stop` ends the lease renewal: cancel it only once this host's
    /// attempts are recorded and its leases given up.
    pub fn start(store: PgStore, stop: CancellationToken) -> PgQueue {
        let (later, mut rx) = mpsc::unbounded_channel::<Later>();
        let (done_tx, done) = watch::channel(0u64);
        let writer = store.clone();
        tokio::spawn(async move {
            // Counted here, in the channel's order: a flush that waits for
            // `n` done waits for every write sent before it (see `flush`).
            let mut processed = 0u64;
            while let Some(op) = rx.recv().await {
                let result = match op {
                    Later::Park(u) => writer.complete(*u).await,
                    Later::Release(seqs) => writer.release(&seqs).await,
                    Later::Health(client, h, HealthBy::Operator) => {
                        writer
                            .set_client(&client, h.disabled, h.failing_since)
                            .await
                    }
                    Later::Health(client, h, HealthBy::Attempts) => {
                        writer
                            .note_health(&client, h.disabled, h.failing_since)
                            .await
                    }
                };
                // A lost write leaves the row leased until its lease runs
                // out (nothing renews it): then it is claimed again.
                if let Err(e) = result {
                    tracing::error!("a store write failed: {e}");
                }
                processed += 1;
                let _ = done_tx.send(processed);
            }
        });
        let queue = PgQueue {
            store,
            clients: Arc::default(),
            writes: Arc::new(Writes {
                later,
                sent: AtomicU64::new(0),
            }),
            done,
            others: Arc::default(),
        };
        queue.renew_leases(stop);
        queue
    }

    fn renew_leases(&self, cancel: CancellationToken) {
        let store = self.store.clone();
        let others = self.others.clone();
        let every = store.lease() / 3;
        // A weak handle: the task ends with the queue.
        let clients = Arc::downgrade(&self.clients);
        let writes = self.writes.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = cancel.cancelled() => return,
                }
                let Some(clients) = clients.upgrade() else {
                    return;
                };
                // An inbox whose worker stopped claiming (it was stopped, is
                // paused, or waits on a slow receiver) goes back to the store:
                // kept, it would hold the client's lease for good.
                for h in clients.lock().unwrap().values_mut() {
                    if !h.inbox.is_empty() && h.confirmed.is_none_or(|t| t.elapsed() >= every) {
                        h.give_back(&writes, Vec::new());
                    }
                }
                let (seqs, held) = all_claimed(&clients, store.lease());
                drop(clients);
                match store.renew(&seqs, &held).await {
                    Ok(()) => {}
                    Err(e) => tracing::error!("cannot renew this host's leases: {e}"),
                }
                match store.other_hosts().await {
                    Ok(n) => others.store(n, Ordering::Relaxed),
                    Err(e) => tracing::error!("cannot count the other hosts: {e}"),
                }
            }
        });
    }

    fn send(&self, op: Later) {
        self.writes.send(op);
    }

    /// Right after an ingest's commit: the deliveries leased to this host go
    /// to their clients' inboxes, unless this host stopped taking the client
    /// meanwhile (then they are released, for whoever claims next).
    /// `gens`: each client's [`Holding::releases`] when the ingest was decided.
    fn take_in(
        clients: &Mutex<HashMap<String, Holding>>,
        writes: &Writes,
        event: &Arc<Event>,
        deliveries: &[NewDelivery],
        gens: &[u64],
        rows: &[(i64, bool)],
    ) {
        let mut back = Vec::new();
        let mut clients = clients.lock().unwrap();
        for ((d, &(seq, leased)), &asked) in deliveries.iter().zip(rows).zip(gens) {
            if !leased {
                continue;
            }
            match clients.get_mut(&d.client_id) {
                Some(h) if h.since.is_some() && !h.draining && h.releases == asked => {
                    h.claimed.insert(seq);
                    h.inbox.push_back(Job::fresh(seq, d.clone(), event));
                }
                Some(h) => h.give_back(writes, vec![seq]),
                None => back.push(seq),
            }
        }
        drop(clients);
        if !back.is_empty() {
            writes.send(Later::Release(back));
        }
    }

    /// Whether this host may claim `client`'s work now: it holds (or has just
    /// taken) the client's lease, no handover is under way, and the client is
    /// not disabled.
    async fn may_claim(&self, client: &str) -> bool {
        // What to do is decided under the lock; the database is asked after.
        let next = {
            let mut clients = self.clients.lock().unwrap();
            let h = clients.entry(client.to_string()).or_default();
            if h.draining {
                if h.claimed.is_empty() {
                    Next::HandOver
                } else {
                    Next::Answer(false)
                }
            } else if h.yielded.is_some_and(|t| t.elapsed() < GRACE) {
                Next::Answer(false)
            } else if h.since.is_some()
                && h.confirmed
                    .is_some_and(|t| t.elapsed() < CONFIRMED.min(self.store.lease() / 3))
            {
                self.keep_or_hand_over(h)
            } else {
                Next::Ask
            }
        };
        match next {
            Next::Answer(a) => return a,
            Next::HandOver => {
                self.hand_over(client).await;
                return false;
            }
            Next::Ask => {}
        }
        let held = match self.store.hold_client(client).await {
            Ok(held) => held,
            Err(e) => {
                tracing::error!(client, "cannot take the client's lease: {e}");
                false
            }
        };
        let next = {
            let mut clients = self.clients.lock().unwrap();
            let h = clients.entry(client.to_string()).or_default();
            if !held {
                h.since = None;
                h.confirmed = None;
                h.give_back(&self.writes, Vec::new());
                return false;
            }
            let now = Instant::now();
            h.since.get_or_insert(now);
            h.confirmed = Some(now);
            self.keep_or_hand_over(h)
        };
        match next {
            Next::Answer(a) => a,
            Next::HandOver => {
                self.hand_over(client).await;
                false
            }
            Next::Ask => unreachable!("asked already"),
        }
    }

    /// Claim on, or begin a handover: the lease was held long enough and
    /// another host could take it. With nothing claimed the handover is now
    /// (nothing else would wake the worker for it); otherwise when the last
    /// claim ends.
    fn keep_or_hand_over(&self, h: &mut Holding) -> Next {
        let long = h.since.is_some_and(|t| t.elapsed() >= HOLD);
        if long && self.others.load(Ordering::Relaxed) > 0 {
            h.draining = true;
            // Not attempted yet: the next holder takes them, in order.
            h.give_back(&self.writes, Vec::new());
            if h.claimed.is_empty() {
                return Next::HandOver;
            }
            return Next::Answer(false);
        }
        Next::Answer(true)
    }

    /// Gives `client`'s lease up; this host's worker comes back after GRACE.
    async fn hand_over(&self, client: &str) {
        {
            let mut clients = self.clients.lock().unwrap();
            let h = clients.entry(client.to_string()).or_default();
            h.draining = false;
            h.since = None;
            h.confirmed = None;
            h.yielded = Some(Instant::now());
        }
        // Released leases first, so the next holder sees those rows free.
        self.flush().await;
        if let Err(e) = self.store.drop_client(client).await {
            tracing::error!(client, "cannot hand the client's work over: {e}");
        }
        let wake = self.store.waker(client);
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            wake.notify_one();
        });
    }

    /// Notes `jobs` as claimed by this host, leaving out any this host is
    /// working on already (its lease ran out while the outcome was being
    /// written, and the claim took it again): one attempt at a time.
    fn claimed(&self, client: &str, jobs: Vec<Job>) -> Vec<Job> {
        let mut clients = self.clients.lock().unwrap();
        let h = clients.entry(client.to_string()).or_default();
        jobs.into_iter()
            .filter(|j| h.claimed.insert(j.seq))
            .collect()
    }

    /// `jobs`, claimed from the store, with the inbox's deliveries older than
    /// the newest of them, in seq order. Such a one reached the inbox while
    /// the store was asked (leased here by its ingest, so the claim passed it
    /// by), and rows after it were not: the next ingest of the same sequence of
    /// posts found older rows of another host unclaimed and left its own to a
    /// claim. Left in the inbox, it would go out after its successors.
    ///
    /// Should the inbox have been given back meanwhile (`releases` moved on),
    /// such a one may be on its way to the store: the claimed rows go back
    /// too, and the next claim takes them all in order.
    fn with_inbox(&self, client: &str, mut jobs: Vec<Job>, releases: u64) -> Vec<Job> {
        let Some(newest) = jobs.iter().map(|j| j.seq).max() else {
            return jobs;
        };
        let mut clients = self.clients.lock().unwrap();
        let Some(h) = clients.get_mut(client) else {
            return jobs;
        };
        if h.releases != releases {
            drop(clients);
            self.release(client, &jobs);
            return Vec::new();
        }
        if h.inbox.iter().any(|j| j.seq < newest) {
            let (older, newer): (VecDeque<Job>, VecDeque<Job>) =
                h.inbox.drain(..).partition(|j| j.seq < newest);
            h.inbox = newer;
            jobs.extend(older);
            jobs.sort_by_key(|j| j.seq);
        }
        jobs
    }

    /// The claims on `seqs` ended; a handover waiting for them may go on.
    fn ended(&self, client: &str, seqs: impl IntoIterator<Item = i64>) {
        let mut clients = self.clients.lock().unwrap();
        let Some(h) = clients.get_mut(client) else {
            return;
        };
        for s in seqs {
            h.claimed.remove(&s);
        }
        if h.draining && h.claimed.is_empty() {
            self.store.waker(client).notify_one();
        }
    }

    async fn claim(&self, client: &str, kind: Claim<'_>, limit: usize) -> Vec<Job> {
        if !self.may_claim(client).await {
            return Vec::new();
        }
        // For fresh work, the client's releases as the claim began.
        let mut fresh = None;
        if let Claim::Fresh = kind {
            // The inbox holds the oldest fresh work this host may take (see
            // the header); the store is asked only once it is empty, and what
            // reaches it meanwhile joins the claim in order (`with_inbox`).
            // (`may_claim` made the entry: no second key to allocate.)
            let mut clients = self.clients.lock().unwrap();
            fresh = match clients.get_mut(client) {
                Some(h) if !h.inbox.is_empty() => {
                    let n = limit.min(h.inbox.len());
                    return h.inbox.drain(..n).collect();
                }
                Some(h) => Some(h.releases),
                None => Some(0),
            };
        }
        match self.store.claim(client, kind, limit).await {
            Ok(jobs) if let Some(releases) = fresh => {
                let jobs = self.claimed(client, jobs);
                self.with_inbox(client, jobs, releases)
            }
            Ok(jobs) => self.claimed(client, jobs),
            Err(e) => {
                tracing::error!(client, "cannot claim work from the store: {e}");
                // Not "nothing to do": look again in a moment.
                let wake = self.store.waker(client);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    wake.notify_one();
                });
                Vec::new()
            }
        }
    }
}

impl Queue for PgQueue {
    fn enqueue(
        &self,
        event: Arc<Event>,
        deliveries: Vec<NewDelivery>,
        dedup: Option<(String, i64)>,
    ) -> BoxFuture<'_, Result<Ingested, QueueError>> {
        async move {
            let clients: Vec<String> = deliveries.iter().map(|d| d.client_id.clone()).collect();
            let lease = self.store.lease();
            let written = *self.done.borrow();
            let (mine, gens): (Vec<bool>, Vec<u64>) = {
                let holding = self.clients.lock().unwrap();
                deliveries
                    .iter()
                    .map(|d| match holding.get(&d.client_id) {
                        Some(h) => (h.takes_in(lease, written), h.releases),
                        None => (false, 0),
                    })
                    .unzip()
            };
            let after = mine.contains(&true).then(|| {
                let (holding, writes) = (self.clients.clone(), self.writes.clone());
                let (event, deliveries) = (event.clone(), deliveries.clone());
                Box::new(move |rows: &[(i64, bool)]| {
                    Self::take_in(&holding, &writes, &event, &deliveries, &gens, rows)
                }) as crate::store::pg::AfterCommit
            });
            let ingested = self
                .store
                .ingest(event, deliveries, dedup.as_ref(), mine, after)
                .await?;
            // The signal wakes every host's workers; this host's need not wait for it.
            if matches!(ingested, Ingested::Stored(_)) {
                for c in &clients {
                    self.store.waker(c).notify_one();
                }
            }
            Ok(ingested)
        }
        .boxed()
    }

    fn claim_fresh(&self, client: &str, limit: usize) -> BoxFuture<'_, Vec<Job>> {
        let client = client.to_string();
        async move {
            // A release sent a moment ago must be seen: those rows come first.
            self.flush().await;
            self.claim(&client, Claim::Fresh, limit).await
        }
        .boxed()
    }

    fn claim_due(&self, client: &str, _now: i64, limit: usize) -> BoxFuture<'_, Page> {
        let client = client.to_string();
        async move {
            let jobs = self.claim(&client, Claim::Due, limit).await;
            page(jobs)
        }
        .boxed()
    }

    fn claim_parked(
        &self,
        client: &str,
        plugin: &str,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Page> {
        let (client, plugin) = (client.to_string(), plugin.to_string());
        async move {
            // Parking writes are sent without waiting; make sure they are visible.
            self.flush().await;
            let jobs = self
                .claim(
                    &client,
                    Claim::Parked {
                        plugin: &plugin,
                        after,
                    },
                    limit,
                )
                .await;
            page(jobs)
        }
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        client: &'a str,
        job: &'a Job,
        update: Update,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        async move {
            match self.store.complete(update).await {
                Ok(()) => {
                    self.ended(client, [job.seq]);
                    Ok(())
                }
                Err(e) => {
                    // Not recorded: the store still says the delivery is due.
                    self.release(client, std::slice::from_ref(job));
                    Err(e.into())
                }
            }
        }
        .boxed()
    }

    fn park(&self, client: &str, update: Update) {
        let seq = update.seq;
        self.send(Later::Park(Box::new(update)));
        self.ended(client, [seq]);
    }

    fn release(&self, client: &str, jobs: &[Job]) {
        let seqs: Vec<i64> = jobs.iter().map(|j| j.seq).collect();
        // A released fresh delivery is claimed again before any later one:
        // the inbox's, later ones, go back to the store with it.
        self.clients
            .lock()
            .unwrap()
            .entry(client.to_string())
            .or_default()
            .give_back(&self.writes, seqs.clone());
        self.ended(client, seqs);
        self.store.waker(client).notify_one();
    }

    fn forget(&self, client: &str) {
        let held = self.clients.lock().unwrap().remove(client);
        if let Some(mut h) = held {
            h.give_back(&self.writes, Vec::new());
        }
        self.store.forget(client);
        let (store, client) = (self.store.clone(), client.to_string());
        tokio::spawn(async move {
            if let Err(e) = store.drop_client(&client).await {
                tracing::error!(client, "cannot give the client's lease up: {e}");
            }
        });
    }

    fn waker(&self, client: &str) -> Arc<Notify> {
        self.store.waker(client)
    }

    // This host's claims; another host's are its leases, which the store's
    // replay leaves alone.
    fn not_claimed(&self, mut seqs: Vec<i64>) -> Vec<i64> {
        for h in self.clients.lock().unwrap().values() {
            seqs.retain(|s| !h.claimed.contains(s));
        }
        seqs
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Sweep, QueueError>> {
        async move {
            let (retries, held, orphaned) = self.store.sweep().await?;
            // Work no live host holds: this host's workers try for it.
            for client in orphaned {
                self.store.waker(&client).notify_one();
            }
            Ok(Sweep { retries, held })
        }
        .boxed()
    }

    fn health(&self, client: &str) -> BoxFuture<'_, Result<Option<Health>, QueueError>> {
        let client = client.to_string();
        async move {
            self.flush().await;
            let state = self.store.client_state(&client).await?;
            Ok(state.map(|(disabled, failing_since)| Health {
                disabled,
                failing_since,
            }))
        }
        .boxed()
    }

    fn set_health(&self, client: &str, health: &Health, by: HealthBy) {
        self.send(Later::Health(client.to_string(), health.clone(), by));
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        async move {
            let target = self.writes.sent.load(Ordering::SeqCst);
            let mut done = self.done.clone();
            let _ = done.wait_for(|n| *n >= target).await;
        }
        .boxed()
    }
}

fn page(jobs: Vec<Job>) -> Page {
    Page {
        read: jobs.len(),
        last_seq: jobs.iter().map(|j| j.seq).max().unwrap_or(0),
        jobs,
    }
}

/// Every seq this host works on, and the clients whose lease it holds and
/// uses: one whose worker stopped (the client was removed from this host's
/// config) no longer confirms it, and its lease runs out for the others.
fn all_claimed(
    clients: &Mutex<HashMap<String, Holding>>,
    lease: Duration,
) -> (Vec<i64>, Vec<String>) {
    let clients = clients.lock().unwrap();
    let seqs = clients
        .values()
        .flat_map(|h| h.claimed.iter().copied())
        .collect();
    let held = clients
        .iter()
        .filter(|(_, h)| {
            !h.claimed.is_empty()
                || (h.since.is_some() && h.confirmed.is_some_and(|t| t.elapsed() < lease))
        })
        .map(|(id, _)| id.clone())
        .collect();
    (seqs, held)
}
