//! The PostgreSQL store: several hosts on one database.
//!
//! Every host keeps a pool of connections (`deadpool-postgres`) and one more
//! that `LISTEN`s: `hookwasm_work` names a client with new work (sent once
//! the ingest has committed, so it arrives once the rows are visible), and
//! `hookwasm_clients` says the API changed a client, a token, a secret or an
//! uploaded plugin, which every host then reads again (see `lib.rs`). A lost
//! connection loses signals, so after a reconnect every worker is woken and
//! the clients are read again; the queue's sweep is the fallback besides.
//!
//! An ingest is committed before the 202, like SQLite's: its event and its
//! deliveries in one transaction, shared with other ingests and outcomes
//! (`batch.rs`), or alone with its de-duplication key. Claims are
//! `FOR UPDATE SKIP LOCKED` with a lease in the database's clock; the queue
//! (`queue/pg.rs`) decides what to claim and when.

/// The database's clock in ms, as SQL: leases are compared with it, never
/// with a host's own clock. A macro, for statements put together by `concat!`.
macro_rules! now_sql {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

mod access;
mod batch;
mod schema;

pub use batch::{AfterCommit, text};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::{NoTls, Row};

use super::{DueRetries, Ingested, StoreError};
use crate::event::Event;
use crate::model::{Job, NewDelivery, Rendered, StoredRender, Update, now_ms};
use batch::{Batcher, Done, Write};

/// The database's clock in ms (see [`now_sql`]).
const NOW: &str = now_sql!();

/// Connections per host: the ingests and outcomes, the API.
const POOL: usize = 16;
/// Connections per host for the lease traffic (claims, renewals).
const LEASE_POOL: usize = 8;

/// The columns a claim returns, in the order [`job`] reads them.
const JOB_COLUMNS: &str = "d.seq, d.id, d.client_id, d.attempts, d.rendered, d.plugin, \
     d.content_type, d.headers, d.body, e.id, e.body, e.received_at";

/// The handle to the PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore(Arc<Inner>);

struct Inner {
    pool: Pool,
    /// This process: the owner of its leases.
    host: String,
    /// How long a lease lasts unless renewed (ms).
    lease_ms: i64,
    /// The url without its password, for the log.
    shown: String,
    /// Each client's waker: a `hookwasm_work` signal for the client wakes it.
    wakers: RwLock<HashMap<String, Arc<Notify>>>,
    /// Notified on `hookwasm_clients`.
    changes: Arc<Notify>,
    /// Clients with new work, for the other hosts (see [`signal`]).
    signals: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// How many other hosts were alive when last counted; -1 before that.
    others: std::sync::atomic::AtomicI64,
    /// The event path's writes, gathered.
    batcher: Batcher,
    /// Connections for the lease traffic (see [`PgStore::lease_conn`]).
    leases: Pool,
    lost: Arc<LostTrack>,
    /// When leases were last renewed (ms); 0 before the first renewal.
    renewed_at: std::sync::atomic::AtomicI64,
}

/// When this host last may have lost track of leases it holds: a write
/// whose outcome is unknown (an ingest's leases), a release or a renewal that
/// failed, renewals that came later than a lease. Such leases run out unseen
/// and, being this host's own, are not a barrier to its fresh claims; while
/// this may be so, those end them first, as they do other hosts'.
#[derive(Default)]
pub(super) struct LostTrack {
    at: std::sync::atomic::AtomicI64,
}

impl LostTrack {
    pub fn now(&self) {
        self.at
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether leases lost track of may still be out there: until two
    /// leases after the loss (the sweep ends any left after that).
    fn recent(&self, lease_ms: i64) -> bool {
        let at = self.at.load(std::sync::atomic::Ordering::Relaxed);
        at > 0 && now_ms() < at + 2 * lease_ms
    }
}

/// What a claim looks for.
pub enum Claim<'a> {
    /// Pending deliveries, in seq order.
    Fresh,
    /// Retries due, soonest first.
    Due,
    /// Held deliveries, and the `plugin_error` ones of another plugin version
    /// than this one, after a seq, in seq order.
    Parked { plugin: &'a str, after: i64 },
}

impl PgStore {
    /// Connects, migrates, and starts listening for the other hosts' signals.
    /// `as_host`: this process serves (its heartbeat counts it among the
    /// hosts sharing the work); the command line's tools do not.
    pub async fn open(url: &str, lease: Duration, as_host: bool) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = url.parse().context("the store url")?;
        // A connection that died without a word (a network cut) is noticed
        // in seconds, not hours: the listening one above all.
        config.keepalives_idle(Duration::from_secs(10));
        config.connect_timeout(Duration::from_secs(10));
        // A host cut off inside a transaction must not hold its row locks
        // until the server's own keepalive gives up (hours): the server ends
        // such a session.
        config.options("-c idle_in_transaction_session_timeout=60s");
        let pool = pool_of(config.clone(), POOL)?;
        let mut fast = config.clone();
        // Claims too find their rows through indexes, and keep their plans
        // once the table has grown (see `batch::PLANS`).
        fast.options(format!(
            "-c idle_in_transaction_session_timeout=60s -c synchronous_commit=off -c {}",
            batch::NO_SCANS.join(" -c ")
        ));
        let leases = pool_of(fast, LEASE_POOL)?;
        // The event path's writes plan their statements once per connection:
        // left to choose, PostgreSQL planned every ingest afresh (an array's
        // length is known only to a custom plan, so the generic one looked
        // dearer), which cost more of its CPU than running them.
        let mut writes = config.clone();
        writes.options(format!(
            "-c idle_in_transaction_session_timeout=60s -c {} -c {}",
            batch::PLANS.join(" -c "),
            batch::NO_SCANS.join(" -c ")
        ));
        let writes = pool_of(writes, batch::WRITERS)?;
        let shown = shown(&config);
        let mut first = pool
            .get()
            .await
            .with_context(|| format!("cannot connect to the PostgreSQL store {shown}"))?;
        schema::migrate(&mut first)
            .await
            .with_context(|| format!("cannot migrate the PostgreSQL store {shown}"))?;
        drop(first);
        let host = format!("host_{}", ulid::Ulid::new().to_string().to_lowercase());
        let (signals, pending) = tokio::sync::mpsc::unbounded_channel();
        let lost = Arc::new(LostTrack::default());
        let store = PgStore(Arc::new(Inner {
            signals: as_host.then_some(signals),
            others: std::sync::atomic::AtomicI64::new(-1),
            batcher: Batcher::start(writes, host.clone(), lease.as_millis() as i64, lost.clone()),
            lost,
            renewed_at: std::sync::atomic::AtomicI64::new(0),
            leases,
            pool,
            host,
            lease_ms: lease.as_millis() as i64,
            shown,
            wakers: RwLock::default(),
            changes: Arc::new(Notify::new()),
        }));
        if as_host {
            store.heartbeat().await?;
            tokio::spawn(listen(config, Arc::downgrade(&store.0)));
            tokio::spawn(signal(store.0.pool.clone(), pending));
        }
        Ok(store)
    }

    pub fn describe(&self) -> String {
        self.0.shown.clone()
    }

    /// This process's name in the leases.
    pub fn host(&self) -> &str {
        &self.0.host
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.0.lease_ms as u64)
    }

    /// Notified when another host (or this one) changed the API's rows.
    pub fn changes(&self) -> Arc<Notify> {
        self.0.changes.clone()
    }

    /// `client`'s waker, woken by its `hookwasm_work` signals.
    pub fn waker(&self, client: &str) -> Arc<Notify> {
        if let Some(w) = self.0.wakers.read().unwrap().get(client) {
            return w.clone();
        }
        self.0
            .wakers
            .write()
            .unwrap()
            .entry(client.to_string())
            .or_default()
            .clone()
    }

    pub fn forget(&self, client: &str) {
        self.0.wakers.write().unwrap().remove(client);
    }

    fn wake_all(&self) {
        for w in self.0.wakers.read().unwrap().values() {
            w.notify_one();
        }
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.0.pool.get().await?)
    }

    /// A connection for the lease traffic (claims, renewals, releases, the
    /// sweep): its commits do not wait for the disk. A lease lost in a crash
    /// of the database only makes a delivery claimable again — the
    /// at-least-once rule covers it — while every outcome's and every
    /// ingest's commit, which flushes the log, makes the leases before it
    /// durable too. Claims are then as cheap as reads.
    async fn lease_conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.0.leases.get().await?)
    }

    /// A pooled connection, for `hookwasm migrate`'s copy.
    pub(in crate::store) async fn connection(
        &self,
    ) -> Result<deadpool_postgres::Object, StoreError> {
        self.conn().await
    }

    // ---- the event path ----

    /// Stores `event` and its deliveries, with the de-duplication key when
    /// asked, and signals the clients' workers. Without a key the write
    /// shares a transaction with others (see `batch.rs`). The deliveries
    /// `mine` says are leased to this host at once where order allows
    /// ([`batch::INGEST`]); `after` learns which, right after the commit.
    pub async fn ingest(
        &self,
        event: Arc<Event>,
        deliveries: Vec<NewDelivery>,
        dedup: Option<&(String, i64)>,
        mine: Vec<bool>,
        after: Option<AfterCommit>,
    ) -> Result<Ingested, StoreError> {
        let clients: Vec<String> = deliveries.iter().map(|d| d.client_id.clone()).collect();
        let rows = match dedup {
            None => match self
                .0
                .batcher
                .run(Write::Ingest {
                    event,
                    deliveries,
                    mine,
                    after,
                })
                .await?
            {
                Done::Stored(rows) => rows,
                Done::Completed(_) => unreachable!("an ingest stores"),
            },
            Some(key) => match self
                .ingest_once(&event, &deliveries, &mine, key)
                .await
                .inspect_err(|_| {
                    // Its commit's outcome may be unknown, and its leases with it.
                    if mine.contains(&true) {
                        self.0.lost.now();
                    }
                })? {
                Ok(rows) => {
                    if let Some(after) = after {
                        after(&rows);
                    }
                    rows
                }
                Err(first) => return Ok(Ingested::Duplicate(first)),
            },
        };
        let seqs = rows.iter().map(|(seq, _)| *seq).collect();
        // After the commit, not in it: a NOTIFY in the transaction would hold
        // PostgreSQL's one notify lock through the commit's fsync, and so
        // serialise every ingest. None while no other host is alive: this
        // host's own workers are woken directly, and a host that starts
        // meanwhile looks at all the work there is (and at anything it
        // missed within a sweep) until it is counted here, within a renewal.
        let others = self.0.others.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(signals) = self.0.signals.as_ref().filter(|_| others != 0) {
            for c in clients {
                let _ = signals.send(c);
            }
        }
        Ok(Ingested::Stored(seqs))
    }

    /// An ingest inside a de-duplication window: in a transaction of its own.
    /// A duplicate is `Err` with the id of its key's first event.
    async fn ingest_once(
        &self,
        event: &Event,
        deliveries: &[NewDelivery],
        mine: &[bool],
        (key, until): &(String, i64),
    ) -> Result<Result<Vec<(i64, bool)>, String>, StoreError> {
        let began = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // As the writers' connections are (see `open`).
        let settings = [batch::PLANS, batch::NO_SCANS].concat();
        tx.batch_execute(&format!("SET LOCAL {}", settings.join("; SET LOCAL ")))
            .await?;
        // A key inside its window is not replaced (the WHERE), and then names
        // the first event; a concurrent ingest of the same key waits here for
        // the first one's commit.
        let taken = tx
            .query_opt(
                "INSERT INTO event_keys (key, event_id, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET event_id = EXCLUDED.event_id, expires_at = EXCLUDED.expires_at \
                 WHERE event_keys.expires_at <= $4 RETURNING event_id",
                &[key, &event.id, until, &event.received_at],
            )
            .await?;
        if taken.is_none() {
            let first: String = tx
                .query_one("SELECT event_id FROM event_keys WHERE key = $1", &[key])
                .await?
                .get(0);
            return Ok(Err(first));
        }
        let who = (self.0.host.as_str(), self.0.lease_ms);
        let rows = batch::ingest_rows(&tx, who, event, deliveries, mine).await?;
        tx.commit().await?;
        crate::metrics::store_commit(began.elapsed(), 1);
        Ok(Ok(rows))
    }

    /// Records a claimed delivery's outcome (and its attempt) and ends its
    /// lease; returns once committed (in a transaction shared with others).
    pub async fn complete(&self, u: Update) -> Result<(), StoreError> {
        let seq = u.seq;
        let n = match self.0.batcher.run(Write::Complete(Box::new(u))).await? {
            Done::Completed(n) => n,
            Done::Stored(_) => unreachable!("an outcome completes"),
        };
        if n == 0 {
            // The lease ran out and another host has the delivery now (or it
            // was ended, its client deleted): its outcome is that host's to
            // record. The attempt made here is recorded all the same.
            tracing::warn!(
                seq,
                "an outcome came after this host's lease on the delivery ran out; the delivery's state is left to its new holder"
            );
        }
        Ok(())
    }

    /// An operator's pause or resume: replaces what is recorded, and a
    /// resumed client's work is signalled to every host.
    pub async fn set_client(
        &self,
        client_id: &str,
        disabled: Option<String>,
        failing_since: Option<i64>,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO client_state (client_id, disabled_at, disabled_reason, failing_since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (client_id) DO UPDATE SET disabled_at = EXCLUDED.disabled_at, \
             disabled_reason = EXCLUDED.disabled_reason, failing_since = EXCLUDED.failing_since",
            &[&client_id, &disabled.as_ref().map(|_| now_ms()), &disabled, &failing_since],
        )
        .await?;
        if disabled.is_none() {
            conn.execute("SELECT pg_notify('hookwasm_work', $1)", &[&client_id])
                .await?;
        }
        Ok(())
    }

    /// What attempts say of a client's health, merged with what is recorded:
    /// never enables a disabled client (a pause made on another host stays),
    /// and failing-since keeps the earliest failure any host saw.
    pub async fn note_health(
        &self,
        client_id: &str,
        disabled: Option<String>,
        failing_since: Option<i64>,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO client_state (client_id, disabled_at, disabled_reason, failing_since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (client_id) DO UPDATE SET \
               disabled_at = COALESCE(client_state.disabled_at, EXCLUDED.disabled_at), \
               disabled_reason = COALESCE(client_state.disabled_reason, EXCLUDED.disabled_reason), \
               failing_since = CASE WHEN EXCLUDED.failing_since IS NULL THEN NULL \
                 ELSE LEAST(COALESCE(client_state.failing_since, EXCLUDED.failing_since), EXCLUDED.failing_since) END",
            &[&client_id, &disabled.as_ref().map(|_| now_ms()), &disabled, &failing_since],
        )
        .await?;
        Ok(())
    }

    /// A client's recorded health, if the store holds any.
    pub async fn client_state(
        &self,
        client_id: &str,
    ) -> Result<Option<crate::store::ClientState>, StoreError> {
        let conn = self.conn().await?;
        Ok(conn
            .query_opt(
                "SELECT disabled_reason, failing_since FROM client_state WHERE client_id = $1",
                &[&client_id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
    }

    /// As SQLite's: rendered ones are resent as stored, now; the others are
    /// parked as `held`, to be rendered afresh. Pending ones are on their way,
    /// and so are those a live lease holds: a host has them claimed, and the
    /// outcome it records would undo the replay. A lease run out is ended: its
    /// host's late outcome then leaves the replay be.
    pub async fn replay(&self, seqs: Vec<i64>) -> Result<usize, StoreError> {
        let conn = self.conn().await?;
        let now = now_ms();
        let n = conn
            .execute(
                &format!(
                    "UPDATE deliveries SET state = CASE WHEN rendered THEN 'retrying' ELSE 'held' END, \
                     plugin = CASE WHEN rendered THEN plugin ELSE NULL END, \
                     next_attempt_at = $2, reason = 'replayed', updated_at = $2, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE seq = ANY($1) AND state != 'pending' \
                     AND (lease_owner IS NULL OR lease_until < {NOW})"
                ),
                &[&seqs, &now],
            )
            .await?;
        Ok(n as usize)
    }

    // ---- leases (the queue's) ----

    /// Takes or renews the lease on `client`'s work; false when another live
    /// host holds it, or the client is disabled (a pause made on any host
    /// stops every host's claims).
    pub async fn hold_client(&self, client: &str) -> Result<bool, StoreError> {
        let conn = self.lease_conn().await?;
        let stmt = conn
            .prepare_cached(&format!(
                "INSERT INTO client_leases (client_id, owner, until) \
                 SELECT $1, $2, {NOW} + $3 \
                 WHERE NOT EXISTS (SELECT 1 FROM client_state WHERE client_id = $1 AND disabled_reason IS NOT NULL) \
                 ON CONFLICT (client_id) DO UPDATE SET owner = EXCLUDED.owner, until = EXCLUDED.until \
                 WHERE client_leases.owner = EXCLUDED.owner OR client_leases.until < {NOW} \
                 RETURNING owner"
            ))
            .await?;
        let held = conn
            .query_opt(&stmt, &[&client, &self.0.host, &self.0.lease_ms])
            .await?
            .is_some();
        if !held {
            // Disabled while this host held it: the lease goes, so that a
            // resume made on any host is served by whichever claims first.
            conn.execute(
                "DELETE FROM client_leases WHERE client_id = $1 AND owner = $2",
                &[&client, &self.0.host],
            )
            .await?;
        }
        Ok(held)
    }

    /// Gives up the lease on `client`'s work and tells the other hosts.
    pub async fn drop_client(&self, client: &str) -> Result<(), StoreError> {
        let conn = self.lease_conn().await?;
        conn.execute(
            "WITH d AS (DELETE FROM client_leases WHERE client_id = $1 AND owner = $2) \
             SELECT pg_notify('hookwasm_work', $1)",
            &[&client, &self.0.host],
        )
        .await?;
        Ok(())
    }

    /// Claims up to `limit` of `client`'s deliveries of one kind: those
    /// whose lease is free or ran out (its host died) get this host's.
    pub async fn claim(
        &self,
        client: &str,
        kind: Claim<'_>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let conn = self.lease_conn().await?;
        if let Claim::Fresh = kind {
            // A dead host's leases on this client's pending rows end now, so
            // that they are claimed first (rows being written are left).
            // Other hosts' ones: the ranges of `deliveries_fresh` around this
            // host's own, which holds every row this host finished since the
            // last vacuum. This host's own only while it may have lost track
            // of some ([`LostTrack`]); the sweep ends any left within a second.
            let others = "seq = ANY(ARRAY(SELECT seq FROM deliveries WHERE client_id = $1 AND state = 'pending' \
                  AND lease_owner < $2 AND lease_until < {NOW} FOR UPDATE SKIP LOCKED)) \
                OR seq = ANY(ARRAY(SELECT seq FROM deliveries WHERE client_id = $1 AND state = 'pending' \
                  AND lease_owner > $2 AND lease_until < {NOW} FOR UPDATE SKIP LOCKED))";
            let own = if self.0.lost.recent(self.0.lease_ms) {
                " OR seq = ANY(ARRAY(SELECT seq FROM deliveries WHERE client_id = $1 AND state = 'pending' \
                  AND lease_owner = $2 AND lease_until < {NOW} FOR UPDATE SKIP LOCKED))"
            } else {
                ""
            };
            let end = format!(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE {others}{own}"
            )
            .replace("{NOW}", NOW);
            let end = conn.prepare_cached(&end).await?;
            conn.execute(&end, &[&client, &self.0.host]).await?;
        }
        let free = format!("(d.lease_until IS NULL OR d.lease_until < {NOW})");
        let (filter, order) = match kind {
            // Unleased ones, in seq order, from `deliveries_unleased` (other
            // hosts' leases on them that ran out are ended just before); never past
            // a pending row another host leases (its lease on the client ran
            // out first, or one being ended meanwhile): first attempts keep
            // their order. (`<` and `>` rather than `!=`: ranges of
            // `deliveries_fresh` that leave this host's own leases, the bulk
            // of a backlog, unread. `seq + 0`: with `MIN(seq)` the planner
            // may walk the primary key from the lowest seq, through the
            // whole history, for a row that is rarely there.)
            Claim::Fresh => (
                String::from(
                    "d.client_id = $1 AND d.state = 'pending' AND d.lease_owner IS NULL \
                     AND d.seq < COALESCE(LEAST( \
                       (SELECT MIN(o.seq + 0) FROM deliveries o WHERE o.client_id = $1 AND o.state = 'pending' \
                         AND o.lease_owner < $3), \
                       (SELECT MIN(o.seq + 0) FROM deliveries o WHERE o.client_id = $1 AND o.state = 'pending' \
                         AND o.lease_owner > $3)), 9223372036854775807)",
                ),
                "d.seq",
            ),
            Claim::Due => (
                format!(
                    "d.client_id = $1 AND d.state = 'retrying' AND d.next_attempt_at <= $5 AND {free}"
                ),
                "d.next_attempt_at, d.seq",
            ),
            Claim::Parked { .. } => (
                format!(
                    "d.client_id = $1 AND d.state IN ('held', 'plugin_error') \
                     AND (d.state = 'held' OR (d.state = 'plugin_error' AND COALESCE(d.plugin, '') != $5)) \
                     AND d.seq > $6 AND {free}"
                ),
                "d.seq",
            ),
        };
        let sql = format!(
            "WITH c AS (SELECT d.seq FROM deliveries d WHERE {filter} ORDER BY {order} LIMIT $2 FOR UPDATE SKIP LOCKED), \
             u AS (UPDATE deliveries d SET lease_owner = $3, lease_until = {NOW} + $4 FROM c WHERE d.seq = c.seq RETURNING d.*) \
             SELECT {JOB_COLUMNS} FROM u d JOIN events e ON e.seq = d.event_seq ORDER BY {order}"
        );
        let stmt = conn.prepare_cached(&sql).await?;
        let limit = limit as i64;
        let (host, lease) = (&self.0.host, &self.0.lease_ms);
        let rows = match kind {
            Claim::Fresh => conn.query(&stmt, &[&client, &limit, host, lease]).await?,
            Claim::Due => {
                conn.query(&stmt, &[&client, &limit, host, lease, &now_ms()])
                    .await?
            }
            Claim::Parked { plugin, after } => {
                conn.query(&stmt, &[&client, &limit, host, lease, &plugin, &after])
                    .await?
            }
        };
        rows.iter().map(job).collect()
    }

    /// Ends this host's leases on `seqs` without any other change.
    pub async fn release(&self, seqs: &[i64]) -> Result<(), StoreError> {
        let released = async {
            let conn = self.lease_conn().await?;
            conn.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE seq = ANY($1) AND lease_owner = $2",
                &[&seqs, &self.0.host],
            )
            .await?;
            Ok(())
        };
        let released = released.await;
        if released.is_err() {
            self.0.lost.now();
        }
        released
    }

    /// Renews the leases on `seqs` (what this host is working on), on the
    /// clients' work it holds, and its heartbeat. A delivery this host lost
    /// track of (a write that failed) is not renewed: its lease runs out and
    /// it is claimed again.
    ///
    /// Rows being written at this moment (an outcome's transaction) are
    /// skipped, not waited for: waiting could deadlock with that transaction,
    /// and its outcome ends the lease anyway.
    pub async fn renew(&self, seqs: &[i64], clients: &[String]) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.0.renewed_at.load(Relaxed);
        let renewed = self.renew_now(seqs, clients).await;
        let now = now_ms();
        if renewed.is_err() || (last > 0 && now - last > self.0.lease_ms) {
            self.0.lost.now();
        }
        if renewed.is_ok() {
            self.0.renewed_at.store(now, Relaxed);
        }
        renewed
    }

    async fn renew_now(&self, seqs: &[i64], clients: &[String]) -> Result<(), StoreError> {
        let conn = self.lease_conn().await?;
        let (host, lease) = (&self.0.host, &self.0.lease_ms);
        conn.execute(
            &format!(
                "UPDATE deliveries SET lease_until = {NOW} + $2 WHERE seq IN \
                 (SELECT seq FROM deliveries WHERE seq = ANY($3) AND lease_owner = $1 FOR UPDATE SKIP LOCKED)"
            ),
            &[host, lease, &seqs],
        )
        .await?;
        conn.execute(
            &format!(
                "UPDATE client_leases SET until = {NOW} + $2 WHERE owner = $1 AND client_id = ANY($3)"
            ),
            &[host, lease, &clients],
        )
        .await?;
        drop(conn);
        self.heartbeat().await
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let conn = self.lease_conn().await?;
        let name = format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "hookwasm".into()),
            std::process::id()
        );
        conn.execute(
            &format!(
                "INSERT INTO hosts (id, name, started_at, seen_at) VALUES ($1, $2, {NOW}, {NOW}) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at"
            ),
            &[&self.0.host, &name],
        )
        .await?;
        // Hosts not seen for a long while are gone: their rows only mislead.
        conn.execute(
            &format!("DELETE FROM hosts WHERE seen_at < {NOW} - 100 * $1::bigint"),
            &[&self.0.lease_ms],
        )
        .await?;
        Ok(())
    }

    /// How many other hosts renewed their heartbeat within a lease.
    pub async fn other_hosts(&self) -> Result<i64, StoreError> {
        let conn = self.lease_conn().await?;
        let n = conn
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM hosts WHERE id != $1 AND seen_at > {NOW} - $2::bigint"
                ),
                &[&self.0.host, &self.0.lease_ms],
            )
            .await?
            .get(0);
        self.0.others.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    /// A host stopping: its leases end now, so the others need not wait.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        let host = &self.0.host;
        // Only unfinished rows are ever leased; each state is read through
        // its own index (there is none of leases by owner).
        conn.execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE seq = ANY(ARRAY( \
               SELECT seq FROM deliveries WHERE state = 'pending' AND lease_owner = $1 \
               UNION ALL SELECT seq FROM deliveries WHERE state = 'retrying' AND lease_owner = $1 \
               UNION ALL SELECT seq FROM deliveries WHERE state IN ('held', 'plugin_error') AND lease_owner = $1)) \
             AND lease_owner = $1",
            &[host],
        )
        .await?;
        conn.execute("DELETE FROM client_leases WHERE owner = $1", &[host])
            .await?;
        conn.execute("DELETE FROM hosts WHERE id = $1", &[host])
            .await?;
        conn.execute("SELECT pg_notify('hookwasm_work', '*')", &[])
            .await?;
        Ok(())
    }

    /// Retries scheduled per client, clients with held deliveries, and
    /// clients with pending work no live host holds (its host died, or a
    /// signal was lost).
    pub async fn sweep(&self) -> Result<(DueRetries, Vec<String>, Vec<String>), StoreError> {
        let conn = self.lease_conn().await?;
        // Fresh claims take unleased rows only (an index range in seq
        // order): a lease on a pending row that ran out (its host died or
        // stalled) ends here. Rows being written are skipped, as by renewals.
        conn.execute(
            &format!(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE seq IN \
                 (SELECT seq FROM deliveries WHERE lease_owner IS NOT NULL AND state = 'pending' \
                  AND lease_until < {NOW} FOR UPDATE SKIP LOCKED)"
            ),
            &[],
        )
        .await?;
        let retries = conn
            .query(
                "SELECT client_id, MIN(next_attempt_at) FROM deliveries WHERE state = 'retrying' GROUP BY client_id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // plugin_error too: a holder that paged them while handing the
        // client over left some; looking again costs a claim that finds none.
        let held = conn
            .query(
                "SELECT DISTINCT client_id FROM deliveries \
                 WHERE state IN ('held', 'plugin_error')",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let orphaned = conn
            .query(
                &format!(
                    "SELECT DISTINCT d.client_id FROM deliveries d \
                     WHERE d.state = 'pending' \
                     AND (d.lease_until IS NULL OR d.lease_until < {NOW}) \
                     AND NOT EXISTS (SELECT 1 FROM client_leases l WHERE l.client_id = d.client_id \
                       AND l.until >= {NOW} AND l.owner != $1)"
                ),
                &[&self.0.host],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok((retries, held, orphaned))
    }

    // ---- housekeeping ----

    /// Retention and the end of de-duplication windows, now and then, until
    /// `cancel`. Every host runs it; the deletes are idempotent, and the
    /// batches small, so they never hold rows long.
    pub async fn housekeeping(
        self,
        retention: Option<Duration>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Err(e) = self.prune(retention).await {
                tracing::error!("retention: {e}");
            }
            // As on SQLite: a short period is kept to more closely.
            let every = retention.map_or(Duration::from_secs(60), |r| {
                (r / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
            });
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    async fn prune(&self, retention: Option<Duration>) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "DELETE FROM event_keys WHERE expires_at <= $1",
            &[&now_ms()],
        )
        .await?;
        let Some(retention) = retention else {
            return Ok(());
        };
        let cutoff = now_ms() - retention.as_millis() as i64;
        let (mut deliveries, mut events) = (0, 0);
        loop {
            // Attempts first, then their deliveries, in one statement a batch.
            let n = conn
                .execute(
                    "WITH d AS (SELECT seq FROM deliveries WHERE state IN ('delivered', 'skipped', 'failed') \
                       AND updated_at < $1 LIMIT 500), \
                     a AS (DELETE FROM attempts WHERE delivery_seq IN (SELECT seq FROM d)) \
                     DELETE FROM deliveries WHERE seq IN (SELECT seq FROM d)",
                    &[&cutoff],
                )
                .await?;
            deliveries += n;
            if n < 500 {
                break;
            }
        }
        loop {
            let n = conn
                .execute(
                    "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.received_at < $1 \
                     AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq) LIMIT 500)",
                    &[&cutoff],
                )
                .await?;
            events += n;
            if n < 500 {
                break;
            }
        }
        if deliveries + events > 0 {
            tracing::info!(
                deliveries,
                events,
                "retention: old finished deliveries and their events deleted"
            );
        }
        Ok(())
    }
}

/// A pool of connections made with `config`. Waiting for one is bounded: an
/// unreachable database is an error to report, not a hang.
fn pool_of(config: tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .context("cannot make the PostgreSQL pool")
}

/// A claimed row as a job; its event parsed once here, as SQLite's loaders do.
fn job(r: &Row) -> Result<Job, StoreError> {
    let id: String = r.get(1);
    let mut event = Event::parse(r.get::<_, String>(9), Bytes::from(r.get::<_, Vec<u8>>(10)))
        .map_err(|e| StoreError::Corrupt {
            id: id.clone(),
            reason: e.to_string(),
        })?;
    event.received_at = r.get(11);
    let headers: Option<String> = r.get(7);
    let body: Option<Vec<u8>> = r.get(8);
    let rendered = r.get::<_, bool>(4).then(|| StoredRender {
        request: Rendered {
            body: body.unwrap_or_else(|| event.raw.to_vec()),
            content_type: r.get(6),
            headers: headers
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or_default(),
        },
        plugin: r.get(5),
    });
    Ok(Job {
        seq: r.get(0),
        id,
        client_id: r.get(2),
        attempts: r.get::<_, i64>(3) as u32,
        event: Arc::new(event),
        rendered,
    })
}

/// The url as the log may show it: user, host, port, database; no password.
fn shown(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// The listening connection: forwards the signals while the store lives,
/// reconnecting when the connection is lost.
async fn listen(config: tokio_postgres::Config, store: std::sync::Weak<Inner>) {
    use futures_util::StreamExt;
    let mut wait = Duration::from_millis(100);
    loop {
        if store.strong_count() == 0 {
            return;
        }
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client
                        .batch_execute("LISTEN hookwasm_work; LISTEN hookwasm_clients")
                        .await
                };
                // The connection must be polled for the LISTEN to be answered.
                let mut listening = std::pin::pin!(listening);
                // An error from the connection ends it (tokio-postgres says so).
                let ready = loop {
                    tokio::select! {
                        r = &mut listening => break r.is_ok(),
                        m = messages.next() => if !matches!(m, Some(Ok(_))) { break false },
                    }
                };
                if ready {
                    wait = Duration::from_millis(100);
                    // Whatever was signalled while not listening is looked at.
                    if let Some(inner) = store.upgrade() {
                        let s = PgStore(inner);
                        s.wake_all();
                        s.0.changes.notify_one();
                    }
                    while let Some(Ok(message)) = messages.next().await {
                        let Some(inner) = store.upgrade() else { return };
                        if let tokio_postgres::AsyncMessage::Notification(n) = message {
                            let s = PgStore(inner);
                            match (n.channel(), n.payload()) {
                                ("hookwasm_clients", _) => s.0.changes.notify_one(),
                                (_, "*") => s.wake_all(),
                                (_, client) => {
                                    if let Some(w) = s.0.wakers.read().unwrap().get(client) {
                                        w.notify_one();
                                    }
                                }
                            }
                        }
                    }
                }
                tracing::warn!("the PostgreSQL store's signals were lost; listening again");
            }
            Err(e) => tracing::error!("cannot listen to the PostgreSQL store: {e}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Sends the `hookwasm_work` signals for committed ingests, a batch at a
/// time: under load one statement signals many events' clients.
async fn signal(pool: Pool, mut pending: tokio::sync::mpsc::UnboundedReceiver<String>) {
    while let Some(first) = pending.recv().await {
        let mut clients = std::collections::BTreeSet::from([first]);
        while let Ok(c) = pending.try_recv() {
            clients.insert(c);
        }
        let clients: Vec<String> = clients.into_iter().collect();
        let sent = async {
            let conn = pool.get().await.map_err(StoreError::from)?;
            conn.execute(
                "SELECT pg_notify('hookwasm_work', c) FROM unnest($1::text[]) AS c",
                &[&clients],
            )
            .await?;
            Ok::<_, StoreError>(())
        };
        // A lost signal delays the other hosts by a sweep (a second).
        if let Err(e) = sent.await {
            tracing::warn!("cannot signal new work to the other hosts: {e}");
        }
    }
}
