//! Finding and claiming work: the seam between the store and delivery.
//!
//! Delivery asks a [`Queue`] for a client's next work and tells it each outcome;
//! it never reads the store itself, and knows nothing of how work is found. The
//! embedded implementation is [`sqlite::SqliteQueue`]; a PostgreSQL one fits the
//! same trait (see the end of this header).
//!
//! ## The contract
//!
//! - **Durable before acknowledged.** [`Queue::enqueue`] returns only once the
//!   event and one delivery per client are committed; the HTTP 202 waits for it.
//! - **A claim.** Every `claim_*` hands out deliveries that are then this
//!   worker's alone: the same delivery is not handed out again until its claim
//!   ends, by [`Queue::complete`] (an attempt's outcome, committed), [`Queue::park`]
//!   (held, `plugin_error` or skipped) or [`Queue::release`] (not attempted after
//!   all). A claim never outlives the process that holds it.
//! - **Order.** Per client, fresh deliveries are claimed in commit order, and a
//!   released fresh delivery is claimed again before any later one. Retries are
//!   claimed soonest-due first; parked deliveries in commit order, page by page.
//! - **At least once.** A delivery is delivered, failed, or skipped, never
//!   dropped: whatever is claimed and not completed (a crash, a failed write) is
//!   still due in the store and is claimed again — so a receiver may see a
//!   delivery twice, with the same `webhook-id`, and never zero times.
//! - **Wake-ups.** [`Queue::waker`] is notified when a client may have new work;
//!   [`Queue::sweep`] finds work that reached the store otherwise (retries due
//!   from before a restart, replays from the command line).
//! - **Client health** (disabled, failing since) is kept by the queue, since it
//!   decides what may be claimed and must be shared by whoever delivers.
//!
//! ## PostgreSQL, several hosts
//!
//! A `PgQueue` keeps this trait; only the claims change. A claim is
//! `UPDATE deliveries SET lease_owner = $host, lease_until = now() + $lease
//! WHERE seq IN (SELECT seq FROM deliveries WHERE client_id = $1 AND <kind>
//! ORDER BY <order> LIMIT $n FOR UPDATE SKIP LOCKED) RETURNING …`, renewed while
//! an attempt runs; `complete`/`park` clear the lease with the new state, and
//! `release` clears it alone. Per-client order and `max_in_flight` across hosts
//! come from a client lease (one host holds a client's work at a time), taken
//! the same way on a `client_leases` row. Fresh work is then found by
//! `state = 'pending' AND lease expired or empty` rather than by a `seq > cursor`
//! read, because with concurrent writers a lower seq can commit after a higher
//! one. `enqueue` ends with `NOTIFY hookwasm_work, '<client>'`, which feeds the
//! wakers (with `sweep`'s poll as the fallback). A host that dies lets its leases
//! run out and another host takes the work over. Nothing in `deliver` changes.

pub mod pg;
pub mod sqlite;

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use crate::event::Event;
use crate::model::{Job, NewDelivery, Update};
use crate::store::{Ingested, StoreError};

/// Why the queue could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store read crashed: {0}")]
    Crashed(String),
    /// Not tried: an earlier write of the same list failed.
    #[error("not tried, after an earlier event of the batch could not be stored")]
    NotAttempted,
}

/// A page of claimed deliveries.
#[derive(Debug, Default)]
pub struct Page {
    /// What this worker may now work on.
    pub jobs: Vec<Job>,
    /// Rows the page read, claimed or not (some are already claimed): paging
    /// goes on while a page is full.
    pub read: usize,
    /// The highest seq read, where the next page starts.
    pub last_seq: i64,
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// (client, soonest retry in ms) for every client with a retry scheduled.
    pub retries: Vec<(String, i64)>,
    /// Clients with held deliveries.
    pub held: Vec<String>,
}

/// A client's recorded health.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Health {
    /// Why the client is disabled, if it is.
    pub disabled: Option<String>,
    /// Since when (ms) every delivery to it has failed.
    pub failing_since: Option<i64>,
}

/// Who changes a client's health, which says what the change may undo. On
/// one host the worker's view is the whole truth; with several, an attempt's
/// outcome on one host must not undo an operator's pause made on another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HealthBy {
    /// The outcome of attempts: failing since when, or disabled by its rules
    /// (a 410, the `disable_after` window). Never enables a disabled client.
    Attempts,
    /// An operator's pause or resume: replaces what is recorded.
    Operator,
}

/// One event to store: it, its deliveries, its de-duplication key and until when.
pub type Enqueue = (Arc<Event>, Vec<NewDelivery>, Option<(String, i64)>);

/// The operations delivery needs. See the module header for the guarantees.
pub trait Queue: Send + Sync + 'static {
    /// Stores `event` and its deliveries; returns once they are committed.
    /// With `dedup` (key, until when), an event whose key is inside its window
    /// is not stored: the answer names the first event of that key.
    fn enqueue(
        &self,
        event: Arc<Event>,
        deliveries: Vec<NewDelivery>,
        dedup: Option<(String, i64)>,
    ) -> BoxFuture<'_, Result<Ingested, QueueError>>;

    /// Stores events in the order given, each as [`Queue::enqueue`] would;
    /// returns once all are settled, each with its own outcome. By default one
    /// after another, and none after one that fails, so that what is stored is
    /// always a first part of the list; a back end whose writes sent together
    /// keep their order lets them share commits instead.
    fn enqueue_all(
        &self,
        events: Vec<Enqueue>,
    ) -> BoxFuture<'_, Vec<Result<Ingested, QueueError>>> {
        async move {
            let mut out = Vec::with_capacity(events.len());
            let mut failed = false;
            for (event, deliveries, dedup) in events {
                out.push(if failed {
                    Err(QueueError::NotAttempted)
                } else {
                    self.enqueue(event, deliveries, dedup).await
                });
                failed |= out.last().is_some_and(Result::is_err);
            }
            out
        }
        .boxed()
    }

    /// Claims up to `limit` of `client`'s fresh deliveries, in commit order.
    fn claim_fresh(&self, client: &str, limit: usize) -> BoxFuture<'_, Vec<Job>>;

    /// Claims up to `limit` of `client`'s retries due at `now` (ms).
    fn claim_due(&self, client: &str, now: i64, limit: usize) -> BoxFuture<'_, Page>;

    /// Claims a page of `client`'s parked deliveries after seq `after` that the
    /// plugin version `plugin` (`file@hash`, empty without a plugin) should try:
    /// every `held` one, and the `plugin_error` ones another version made.
    fn claim_parked(
        &self,
        client: &str,
        plugin: &str,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Page>;

    /// Records a claimed delivery's outcome; returns once it is committed, and
    /// the claim ends. On error the delivery is still due and is claimed again
    /// (a fresh one before later fresh ones).
    fn complete<'a>(
        &'a self,
        client: &'a str,
        job: &'a Job,
        update: Update,
    ) -> BoxFuture<'a, Result<(), QueueError>>;

    /// Parks (`held`, `plugin_error`) or ends (`skipped`) a claimed delivery,
    /// without waiting for the commit; the claim ends.
    fn park(&self, client: &str, update: Update);

    /// Ends the claims of deliveries that were not attempted (the host stops, or
    /// the client was disabled); fresh ones are claimed again, in order.
    fn release(&self, client: &str, jobs: &[Job]);

    /// Drops what the queue keeps in memory for `client` (a deleted client):
    /// its rows are the store's.
    fn forget(&self, client: &str);

    /// `seqs` without the deliveries this host has claimed: an attempt of
    /// theirs is on its way (or about to be), and its outcome, recorded after,
    /// would undo a replay made now.
    fn not_claimed(&self, seqs: Vec<i64>) -> Vec<i64>;

    /// Notified when `client` may have new work.
    fn waker(&self, client: &str) -> Arc<Notify>;

    /// Looks for work that reached the store some other way.
    fn sweep(&self) -> BoxFuture<'_, Result<Sweep, QueueError>>;

    /// `client`'s recorded health; `None` when the store holds none: the client
    /// was never paused nor failing, or it was deleted (which forgets it).
    fn health(&self, client: &str) -> BoxFuture<'_, Result<Option<Health>, QueueError>>;

    /// Records `client`'s health (not waiting for the commit).
    fn set_health(&self, client: &str, health: &Health, by: HealthBy);

    /// Returns once every write sent before the call is committed.
    fn flush(&self) -> BoxFuture<'_, ()>;
}
