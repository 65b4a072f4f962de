//! The queue on the embedded store: one host, so a claim is a mark in memory.
//!
//! Fresh work reaches a client's in-memory inbox in commit order, from the
//! store's after-commit hook. The inbox holds at most [`INBOX`] jobs; when it is
//! full, later jobs stay only in the store, and the client's claims read them
//! back in order (`seq > cursor`) until caught up — the same path serves the work
//! left from a previous run at start-up. With one writer, seqs commit in order,
//! which is what makes that cursor sound here (see the trait's header for
//! PostgreSQL).
//!
//! Reads run beside the writer (WAL), so a read that began before a commit may
//! still see the old state: a delivery whose outcome committed a moment ago could
//! be read as due again. Two marks prevent that: the claimed set (claimed, outcome
//! not yet committed) and a ring of the lately finished with the order of their
//! commit; a row in either is left out of what a read returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use super::{Health, Page, Queue, QueueError, Sweep};
use crate::event::Event;
use crate::model::{Job, NewDelivery, Update};
use crate::store::{Store, StoreError};

/// Jobs a client's inbox keeps in memory; beyond, the store holds them.
const INBOX: usize = 8192;
/// Lately finished deliveries kept per client; reads take milliseconds.
const FINISHED_KEPT: usize = 1 << 16;

pub struct SqliteQueue {
    store: Store,
    /// Every client that may be delivered to, by id. Fixed at start.
    clients: Arc<HashMap<String, Intake>>,
}

/// One client's side of the queue.
struct Intake {
    inbox: Mutex<Inbox>,
    /// Deliveries between "claimed" and "outcome committed".
    claimed: Mutex<HashSet<i64>>,
    finished: Mutex<Finished>,
    wake: Arc<Notify>,
}

struct Inbox {
    queue: VecDeque<Job>,
    /// Jobs were left in the store only; read them back before the queue again.
    overflow: bool,
    /// The highest seq of a fresh job claimed so far: the next ones come after it.
    cursor: i64,
}

/// Deliveries whose outcome was committed lately, with the order of that commit.
#[derive(Default)]
struct Finished {
    count: u64,
    recent: VecDeque<(i64, u64)>,
}

impl SqliteQueue {
    /// A queue on `store` for the clients `ids`.
    pub fn new<'a>(store: Store, ids: impl IntoIterator<Item = &'a str>) -> SqliteQueue {
        let clients = ids
            .into_iter()
            .map(|id| {
                let intake = Intake {
                    // Start from the store: it may hold work from a previous run.
                    inbox: Mutex::new(Inbox {
                        queue: VecDeque::new(),
                        overflow: true,
                        cursor: 0,
                    }),
                    claimed: Mutex::new(HashSet::new()),
                    finished: Mutex::new(Finished::default()),
                    wake: Arc::new(Notify::new()),
                };
                (id.to_string(), intake)
            })
            .collect();
        SqliteQueue {
            store,
            clients: Arc::new(clients),
        }
    }

    fn intake(&self, client: &str) -> &Intake {
        self.clients
            .get(client)
            .unwrap_or_else(|| panic!("client {client:?} is not one of the queue's"))
    }

    /// Runs a store read on the blocking pool and leaves out what is claimed or
    /// finished while the read ran; what is left is claimed.
    async fn read(
        &self,
        client: &str,
        read: impl FnOnce(&Store, &str) -> Result<Vec<Job>, StoreError> + Send + 'static,
    ) -> Page {
        let intake = self.intake(client);
        let store = self.store.clone();
        let id = client.to_string();
        let began = intake.finished.lock().unwrap().count;
        let rows = match tokio::task::spawn_blocking(move || read(&store, &id)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(client, "cannot read work from the store: {e}");
                return Page::default();
            }
            Err(e) => {
                tracing::error!(client, "store read crashed: {e}");
                return Page::default();
            }
        };
        let read = rows.len();
        let last_seq = rows.iter().map(|j| j.seq).max().unwrap_or(0);
        let mut claimed = intake.claimed.lock().unwrap();
        let finished = intake.finished.lock().unwrap();
        let since: HashSet<i64> = finished
            .recent
            .iter()
            .rev()
            .take_while(|(_, n)| *n > began)
            .map(|(seq, _)| *seq)
            .collect();
        let jobs: Vec<Job> = rows
            .into_iter()
            .filter(|j| !claimed.contains(&j.seq) && !since.contains(&j.seq))
            .collect();
        claimed.extend(jobs.iter().map(|j| j.seq));
        Page {
            jobs,
            read,
            last_seq,
        }
    }

    /// The outcome of `seq` is committed: its claim ends, and reads that began
    /// earlier will not return it.
    fn finished(&self, client: &str, seq: i64) {
        let intake = self.intake(client);
        let mut finished = intake.finished.lock().unwrap();
        finished.count += 1;
        let n = finished.count;
        finished.recent.push_back((seq, n));
        if finished.recent.len() > FINISHED_KEPT {
            finished.recent.pop_front();
        }
        drop(finished);
        intake.claimed.lock().unwrap().remove(&seq);
    }

    /// Fresh jobs from `seq` on go back to the store's hands: the cursor moves
    /// back before them, so they are read again, in order.
    fn rewind(&self, client: &str, seq: i64) {
        let mut inbox = self.intake(client).inbox.lock().unwrap();
        inbox.cursor = inbox.cursor.min(seq - 1);
        inbox.overflow = true;
        inbox.queue.clear();
    }

    /// Hands committed deliveries to their clients' inboxes. Runs on the store's
    /// writer thread, in commit order.
    fn push(
        clients: &HashMap<String, Intake>,
        event: &Arc<Event>,
        ds: &[NewDelivery],
        seqs: &[i64],
    ) {
        for (d, &seq) in ds.iter().zip(seqs) {
            let Some(intake) = clients.get(&d.client_id) else {
                continue;
            };
            let mut inbox = intake.inbox.lock().unwrap();
            if !inbox.overflow && inbox.queue.len() < INBOX {
                inbox.queue.push_back(Job {
                    seq,
                    id: d.id.clone(),
                    client_id: d.client_id.clone(),
                    event: event.clone(),
                    attempts: 0,
                    rendered: None,
                });
            } else {
                inbox.overflow = true;
            }
            drop(inbox);
            intake.wake.notify_one();
        }
    }
}

impl Queue for SqliteQueue {
    fn enqueue(
        &self,
        event: Arc<Event>,
        deliveries: Vec<NewDelivery>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let clients = self.clients.clone();
        let (ev, ds) = (event.clone(), deliveries.clone());
        let after = Box::new(move |seqs: &[i64]| Self::push(&clients, &ev, &ds, seqs));
        async move {
            self.store.ingest(event, deliveries, Some(after)).await?;
            Ok(())
        }
        .boxed()
    }

    fn claim_fresh(&self, client: &str, limit: usize) -> BoxFuture<'_, Vec<Job>> {
        let client = client.to_string();
        async move {
            let intake = self.intake(&client);
            let after = {
                let mut inbox = intake.inbox.lock().unwrap();
                let mut batch = Vec::new();
                while batch.len() < limit {
                    match inbox.queue.pop_front() {
                        Some(job) if job.seq > inbox.cursor => batch.push(job),
                        Some(_) => {} // already read back from the store
                        None => break,
                    }
                }
                if let Some(last) = batch.last() {
                    inbox.cursor = last.seq;
                    intake
                        .claimed
                        .lock()
                        .unwrap()
                        .extend(batch.iter().map(|j| j.seq));
                    return batch;
                }
                if !inbox.overflow {
                    return batch;
                }
                inbox.cursor
            };
            // Parking writes are sent without waiting: make them visible first, so
            // a job parked a moment ago is not read back as still pending.
            self.store.flush().await;
            let load = move |s: &Store, id: &str| s.load_pending(id, after, limit);
            let mut page = self.read(&client, load).await;
            if page.read == 0 {
                // Caught up: back to the inbox. Rows committed between that read
                // and the switch were not pushed, so look once more.
                intake.inbox.lock().unwrap().overflow = false;
                page = self.read(&client, load).await;
                if page.read > 0 {
                    // Not caught up after all: the store has every row, those
                    // pushed meanwhile included, so it stays the source until
                    // caught up.
                    let mut inbox = intake.inbox.lock().unwrap();
                    inbox.overflow = true;
                    inbox.queue.clear();
                }
            }
            if page.read > 0 {
                let mut inbox = intake.inbox.lock().unwrap();
                inbox.cursor = inbox.cursor.max(page.last_seq);
            }
            page.jobs
        }
        .boxed()
    }

    fn claim_due(&self, client: &str, now: i64, limit: usize) -> BoxFuture<'_, Page> {
        let client = client.to_string();
        async move {
            self.read(&client, move |s, id| s.load_due_retries(id, now, limit))
                .await
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
            self.store.flush().await;
            self.read(&client, move |s, id| {
                s.load_parked(id, &plugin, after, limit)
            })
            .await
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
            match self.store.update(update).await {
                Ok(()) => {
                    // Only now, with the outcome committed, may a read see it again.
                    self.finished(client, job.seq);
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
        // Safe before the commit: fresh ones are behind the cursor, and parked
        // ones are read only after a flush.
        self.intake(client)
            .claimed
            .lock()
            .unwrap()
            .remove(&update.seq);
        self.store.update_later(update);
    }

    fn release(&self, client: &str, jobs: &[Job]) {
        let intake = self.intake(client);
        let mut claimed = intake.claimed.lock().unwrap();
        for j in jobs {
            claimed.remove(&j.seq);
        }
        drop(claimed);
        if let Some(first) = jobs
            .iter()
            .filter(|j| j.rendered.is_none() && j.attempts == 0)
            .map(|j| j.seq)
            .min()
        {
            self.rewind(client, first);
        }
        intake.wake.notify_one();
    }

    fn waker(&self, client: &str) -> Arc<Notify> {
        self.intake(client).wake.clone()
    }

    fn sweep(&self) -> BoxFuture<'_, Result<Sweep, QueueError>> {
        async move {
            let store = self.store.clone();
            let (retries, held) = tokio::task::spawn_blocking(move || store.sweep())
                .await
                .map_err(|e| QueueError::Crashed(e.to_string()))??;
            Ok(Sweep { retries, held })
        }
        .boxed()
    }

    fn health(&self, client: &str) -> BoxFuture<'_, Result<Health, QueueError>> {
        let client = client.to_string();
        async move {
            let store = self.store.clone();
            let (disabled, failing_since) =
                tokio::task::spawn_blocking(move || store.client_state(&client))
                    .await
                    .map_err(|e| QueueError::Crashed(e.to_string()))??;
            Ok(Health {
                disabled,
                failing_since,
            })
        }
        .boxed()
    }

    fn set_health(&self, client: &str, health: &Health) {
        self.store
            .set_client(client, health.disabled.clone(), health.failing_since);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        self.store.flush().boxed()
    }
}
