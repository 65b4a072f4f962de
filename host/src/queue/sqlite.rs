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
use std::sync::{Arc, Mutex, RwLock};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use super::{Enqueue, Health, Page, Queue, QueueError, Sweep};
use crate::event::Event;
use crate::model::{Job, NewDelivery, Update};
use crate::store::sqlite::SqliteStore as Store;
use crate::store::{Ingested, StoreError};

/// Jobs a client's inbox keeps in memory; beyond, the store holds them.
const INBOX: usize = 8192;
/// Lately finished deliveries kept per client; reads take milliseconds.
const FINISHED_KEPT: usize = 1 << 16;

pub struct SqliteQueue {
    store: Store,
    /// Every client that was delivered to, by id: made on first use, when it
    /// starts from the store (clients come and go while the host runs).
    clients: Arc<RwLock<HashMap<String, Arc<Intake>>>>,
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
    /// Bumped by every rewind: a claim whose store read overlapped one gives its
    /// page back and starts again from the rewound cursor.
    rewinds: u64,
}

/// Deliveries whose outcome was committed lately, with the order of that commit.
#[derive(Default)]
struct Finished {
    count: u64,
    recent: VecDeque<(i64, u64)>,
}

impl SqliteQueue {
    /// A queue on `store`.
    pub fn new(store: Store) -> SqliteQueue {
        SqliteQueue {
            store,
            clients: Arc::default(),
        }
    }

    fn intake(&self, client: &str) -> Arc<Intake> {
        if let Some(i) = self.clients.read().unwrap().get(client) {
            return i.clone();
        }
        self.clients
            .write()
            .unwrap()
            .entry(client.to_string())
            .or_insert_with(|| {
                Arc::new(Intake {
                    // Start from the store: it may hold work from before.
                    inbox: Mutex::new(Inbox {
                        queue: VecDeque::new(),
                        overflow: true,
                        cursor: 0,
                        rewinds: 0,
                    }),
                    claimed: Mutex::new(HashSet::new()),
                    finished: Mutex::new(Finished::default()),
                    wake: Arc::new(Notify::new()),
                })
            })
            .clone()
    }

    /// Runs a store read on the blocking pool and leaves out what is claimed or
    /// finished while the read ran; what is left is claimed. A failed read is
    /// `None` (and logged): never mistaken for "nothing to do", which would
    /// leave a backlog behind.
    async fn read(
        &self,
        client: &str,
        read: impl FnOnce(&Store, &str) -> Result<Vec<Job>, StoreError> + Send + 'static,
    ) -> Option<Page> {
        let intake = self.intake(client);
        let store = self.store.clone();
        let id = client.to_string();
        let began = intake.finished.lock().unwrap().count;
        let rows = match tokio::task::spawn_blocking(move || read(&store, &id)).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(client, "cannot read work from the store: {e}");
                return None;
            }
            Err(e) => {
                tracing::error!(client, "store read crashed: {e}");
                return None;
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
        Some(Page {
            jobs,
            read,
            last_seq,
        })
    }

    /// Ends the claims of `jobs` without any other effect.
    fn unclaim(&self, client: &str, jobs: &[Job]) {
        let intake = self.intake(client);
        let mut claimed = intake.claimed.lock().unwrap();
        for j in jobs {
            claimed.remove(&j.seq);
        }
    }

    /// After a failed read: let the worker try again in a moment.
    async fn retry_later(&self, client: &str) {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        self.intake(client).wake.notify_one();
    }

    /// The outcome of `seq` is committed: its claim ends, and reads that began
    /// earlier will not return it.
    fn finished(&self, client: &str, seq: i64) {
        let intake = self.intake(client);
        let mut finished = intake.finished.lock().unwrap();
        finished.count += 1;
        let n = finished.count;
        if finished.recent.len() >= FINISHED_KEPT {
            finished.recent.pop_front();
        }
        finished.recent.push_back((seq, n));
        drop(finished);
        intake.claimed.lock().unwrap().remove(&seq);
    }

    /// Fresh jobs from `seq` on go back to the store's hands: the cursor moves
    /// back before them, so they are read again, in order.
    fn rewind(&self, client: &str, seq: i64) {
        let intake = self.intake(client);
        let mut inbox = intake.inbox.lock().unwrap();
        inbox.cursor = inbox.cursor.min(seq - 1);
        inbox.overflow = true;
        inbox.queue.clear();
        inbox.rewinds += 1;
    }

    /// Hands committed deliveries to their clients' inboxes. Runs on the store's
    /// writer thread, in commit order.
    fn push(
        clients: &RwLock<HashMap<String, Arc<Intake>>>,
        event: &Arc<Event>,
        ds: Vec<NewDelivery>,
        seqs: &[i64],
    ) {
        let clients = clients.read().unwrap();
        for (d, &seq) in ds.into_iter().zip(seqs) {
            // A client without an intake yet reads its work from the store.
            let Some(intake) = clients.get(&d.client_id) else {
                continue;
            };
            let mut inbox = intake.inbox.lock().unwrap();
            if !inbox.overflow && inbox.queue.len() < INBOX {
                inbox.queue.push_back(Job::fresh(seq, d, event));
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
        dedup: Option<(String, i64)>,
    ) -> BoxFuture<'_, Result<Ingested, QueueError>> {
        let clients = self.clients.clone();
        let ev = event.clone();
        let after =
            Box::new(move |ds: Vec<NewDelivery>, seqs: &[i64]| Self::push(&clients, &ev, ds, seqs));
        // Sent now: see `enqueue_all`.
        let stored = self.store.ingest(event, deliveries, dedup, Some(after));
        async move { Ok(stored.await?) }.boxed()
    }

    /// All sent to the one writer now, in order, so they are committed in that
    /// order and share its commits.
    fn enqueue_all(
        &self,
        events: Vec<Enqueue>,
    ) -> BoxFuture<'_, Vec<Result<Ingested, QueueError>>> {
        let stored: Vec<_> = events
            .into_iter()
            .map(|(event, deliveries, dedup)| self.enqueue(event, deliveries, dedup))
            .collect();
        futures_util::future::join_all(stored).boxed()
    }

    fn claim_fresh(&self, client: &str, limit: usize) -> BoxFuture<'_, Vec<Job>> {
        let client = client.to_string();
        async move {
            let intake = self.intake(&client);
            let (mut after, rewinds) = {
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
                (inbox.cursor, inbox.rewinds)
            };
            // Parking writes are sent without waiting: make them visible first, so
            // a job parked a moment ago is not read back as still pending.
            self.store.flush().await;
            loop {
                let load = move |s: &Store, id: &str| s.load_pending(id, after, limit);
                let Some(mut page) = self.read(&client, load).await else {
                    self.retry_later(&client).await;
                    return Vec::new();
                };
                if page.read == 0 {
                    // Caught up: back to the inbox. Rows committed between that
                    // read and the switch were not pushed, so look once more.
                    {
                        let mut inbox = intake.inbox.lock().unwrap();
                        if inbox.rewinds != rewinds {
                            return Vec::new(); // a rewind meanwhile: start again from it
                        }
                        inbox.overflow = false;
                    }
                    let Some(again) = self.read(&client, load).await else {
                        intake.inbox.lock().unwrap().overflow = true;
                        self.retry_later(&client).await;
                        return Vec::new();
                    };
                    page = again;
                    if page.read > 0 {
                        // Not caught up after all: the store has every row, those
                        // pushed meanwhile included, so it stays the source until
                        // caught up.
                        let mut inbox = intake.inbox.lock().unwrap();
                        inbox.overflow = true;
                        inbox.queue.clear();
                    }
                }
                let mut inbox = intake.inbox.lock().unwrap();
                if inbox.rewinds != rewinds {
                    // A released job went back before this read's start: give the
                    // page back, and claim again from the rewound cursor.
                    drop(inbox);
                    self.unclaim(&client, &page.jobs);
                    intake.wake.notify_one();
                    return Vec::new();
                }
                if page.read > 0 {
                    inbox.cursor = inbox.cursor.max(page.last_seq);
                }
                // A full page of rows all claimed already: read on past them.
                if page.jobs.is_empty() && page.read == limit {
                    after = page.last_seq;
                    continue;
                }
                return page.jobs;
            }
        }
        .boxed()
    }

    fn claim_due(&self, client: &str, now: i64, limit: usize) -> BoxFuture<'_, Page> {
        let client = client.to_string();
        async move {
            self.read(&client, move |s, id| s.load_due_retries(id, now, limit))
                .await
                .unwrap_or_default()
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
            .unwrap_or_default()
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
        self.unclaim(client, jobs);
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

    fn forget(&self, client: &str) {
        self.clients.write().unwrap().remove(client);
    }

    fn not_claimed(&self, mut seqs: Vec<i64>) -> Vec<i64> {
        for intake in self.clients.read().unwrap().values() {
            let claimed = intake.claimed.lock().unwrap();
            seqs.retain(|s| !claimed.contains(s));
        }
        seqs
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

    fn health(&self, client: &str) -> BoxFuture<'_, Result<Option<Health>, QueueError>> {
        let client = client.to_string();
        async move {
            let store = self.store.clone();
            let state = tokio::task::spawn_blocking(move || store.client_state(&client))
                .await
                .map_err(|e| QueueError::Crashed(e.to_string()))??;
            Ok(state.map(|(disabled, failing_since)| Health {
                disabled,
                failing_since,
            }))
        }
        .boxed()
    }

    // One host: its worker's view is the whole truth, whoever changes it.
    fn set_health(&self, client: &str, health: &Health, _by: super::HealthBy) {
        self.store
            .set_client(client, health.disabled.clone(), health.failing_since);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        self.store.flush().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{State, new_delivery_id, new_event_id};
    use bytes::Bytes;

    const EVENT: &str = include_str!("../../../tests/fixtures/events/new_feed_entry.json");

    async fn queue_with(n: usize) -> (tempfile::TempDir, SqliteQueue) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q.db")).unwrap();
        let q = SqliteQueue::new(store);
        for _ in 0..n {
            let event = Event::parse(new_event_id(), Bytes::from_static(EVENT.as_bytes())).unwrap();
            let d = NewDelivery {
                id: new_delivery_id(),
                client_id: "a".into(),
            };
            q.enqueue(Arc::new(event), vec![d], None).await.unwrap();
        }
        (dir, q)
    }

    fn seqs(jobs: &[Job]) -> Vec<i64> {
        jobs.iter().map(|j| j.seq).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fresh_work_is_claimed_once_in_commit_order_from_the_store_and_the_inbox() {
        // At start the queue reads from the store (work of a previous run)...
        let (_dir, q) = queue_with(5).await;
        assert_eq!(seqs(&q.claim_fresh("a", 2).await), [1, 2]);
        assert_eq!(seqs(&q.claim_fresh("a", 2).await), [3, 4]);
        assert_eq!(seqs(&q.claim_fresh("a", 2).await), [5]);
        assert!(q.claim_fresh("a", 2).await.is_empty(), "caught up");
        // ...then from the inbox, fed in commit order.
        let event = Event::parse(new_event_id(), Bytes::from_static(EVENT.as_bytes())).unwrap();
        let d = NewDelivery {
            id: new_delivery_id(),
            client_id: "a".into(),
        };
        q.enqueue(Arc::new(event), vec![d], None).await.unwrap();
        assert_eq!(seqs(&q.claim_fresh("a", 2).await), [6]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn released_fresh_work_comes_back_first_and_completed_work_never() {
        let (_dir, q) = queue_with(4).await;
        let first = q.claim_fresh("a", 4).await;
        assert_eq!(seqs(&first), [1, 2, 3, 4]);
        // 1 is delivered; 2 and later were not attempted (the host stopped).
        q.complete("a", &first[0], Update::new(1, State::Delivered))
            .await
            .unwrap();
        q.release("a", &first[1..]);
        assert_eq!(seqs(&q.claim_fresh("a", 10).await), [2, 3, 4]);
        assert!(q.claim_fresh("a", 10).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_page_of_claimed_rows_does_not_hide_the_rows_after_it() {
        let (_dir, q) = queue_with(5).await;
        let first = q.claim_fresh("a", 2).await;
        assert_eq!(seqs(&first), [1, 2]);
        // Put the cursor back before rows that are still claimed: the next claim
        // reads a page of them only, and must read on past it.
        q.rewind("a", 1);
        assert_eq!(seqs(&q.claim_fresh("a", 2).await), [3, 4]);
    }

    /// A worker ends a pause only on a record that says "enabled": a client
    /// with no record (never paused, or deleted) reads as none at all, and a
    /// deleted one reads as disabled until its waiting deliveries are failed.
    #[tokio::test(flavor = "multi_thread")]
    async fn health_is_none_until_recorded_and_after_the_client_is_deleted() {
        let (_dir, q) = queue_with(0).await;
        assert_eq!(q.health("a").await.unwrap(), None);
        let paused = Health {
            disabled: Some("paused".into()),
            failing_since: None,
        };
        q.set_health("a", &paused, crate::queue::HealthBy::Operator);
        q.flush().await;
        assert_eq!(q.health("a").await.unwrap(), Some(paused.clone()));
        q.set_health("a", &Health::default(), crate::queue::HealthBy::Operator);
        q.flush().await;
        assert_eq!(q.health("a").await.unwrap(), Some(Health::default()));
        let store = crate::store::Store::Sqlite(q.store.clone());
        assert!(
            !store.delete_api_client("a").await.unwrap(),
            "not an API client"
        );
        store
            .create_api_client("b", "{}".into(), "whsec_x".into())
            .await
            .unwrap();
        q.set_health("b", &paused, crate::queue::HealthBy::Operator);
        q.flush().await;
        assert!(store.delete_api_client("b").await.unwrap());
        let deleted = Health {
            disabled: Some(crate::store::rows::DELETED.into()),
            failing_since: None,
        };
        assert_eq!(q.health("b").await.unwrap(), Some(deleted));
        store.fail_unfinished("b").await.unwrap();
        assert_eq!(q.health("b").await.unwrap(), None);
    }
}
