//! The embedded store: events, deliveries and attempts, in SQLite (WAL).
//!
//! An event is answered 202 only after it and its fan-out (one delivery row per
//! client) are committed. Writes go through one writer thread that commits
//! whatever has queued up in a single transaction (group commit): under load one
//! fsync covers hundreds of events, and each caller still learns when *its* write
//! is on disk. Reads use their own connection; WAL lets them run beside the writer,
//! and lets the command line inspect a store a running host is using.
//!
//! A delivery moves through these states (see [`crate::model::State`]):
//!
//! ```text
//! pending ─┬─> delivered | skipped           (rendered and sent, or the plugin said skip)
//!          ├─> retrying ──> delivered | failed
//!          ├─> held          (plugin missing or broken: waits for a good plugin)
//!          └─> plugin_error  (the plugin failed on this event: waits for a new version)
//! ```
//!
//! The plugin's output is stored with the first attempt, with the plugin version
//! (content hash) that produced it, so every retry resends the same bytes.
//!
//! The store knows rows, not work: which deliveries a worker may take, and in
//! what order, is the queue's business (`crate::queue`), whose SQLite
//! implementation reads through the loaders here. It knows nothing of plugins or
//! HTTP either.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::model::{Job, NewDelivery, Rendered, StoredRender, Update};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::event::Event;

use super::{DueRetries, Ingested, StoreError, schema};

/// Makes the store private to the host's user, whatever the umask: every event
/// (subscribers' e-mail addresses included) is in it. A new folder is created
/// 0700; the database is created 0600 before SQLite opens it, and SQLite gives its
/// `-wal` and `-shm` files the database's mode. Files left more open by an older
/// hookwasm are closed down to 0600.
fn private_files(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the store's folder {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the store {}", path.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).with_context(
                || {
                    format!(
                        "cannot make {} private (0600)",
                        std::path::Path::new(&file).display()
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// Runs on the writer thread right after an ingest commits, in commit order: how
/// the queue learns of new work in the order it was committed. It is handed the
/// ingest's deliveries (the writer has no more use for them) with their seqs. It
/// must be quick (it holds up the next commit) and must not call the store.
pub type AfterCommit = Box<dyn FnOnce(Vec<NewDelivery>, &[i64]) + Send>;

/// A value a [`SqliteStore::write`] returns, through the writer thread.
type AnyValue = Box<dyn std::any::Any + Send>;
/// A write from elsewhere than the event path.
type AnyWrite = Box<dyn Fn(&Connection) -> rusqlite::Result<AnyValue> + Send>;

enum Op {
    Ingest {
        event: Arc<Event>,
        received_at: i64,
        deliveries: Vec<NewDelivery>,
        /// (key, until when): the de-duplication window, when one is asked.
        dedup: Option<(String, i64)>,
        after: Option<AfterCommit>,
        done: oneshot::Sender<Result<Ingested, StoreError>>,
    },
    Update(Box<Update>, Option<oneshot::Sender<Result<(), StoreError>>>),
    Client {
        client_id: String,
        disabled: Option<String>,
        failing_since: Option<i64>,
    },
    Replay {
        seqs: Vec<i64>,
        done: oneshot::Sender<Result<usize, StoreError>>,
    },
    Flush(oneshot::Sender<()>),
    /// A write from elsewhere in the host (the API's clients, tokens, plugins):
    /// run by the one writer like any other, so it never races an ingest. It
    /// may run twice (a batch retried op by op), so it is `Fn`.
    Run {
        write: AnyWrite,
        done: oneshot::Sender<Result<AnyValue, StoreError>>,
    },
}

/// A connection to a database of the caller's, set up as the store's writer
/// is: WAL, `synchronous=FULL`, a commit's WAL writes gathered into one system
/// call, the writer's page cache. For the throughput bench's floor
/// (`benches/floor.rs`), which is to pay per commit what the host's writer
/// pays, no more.
pub fn writer_connection(path: &std::path::Path) -> Result<Connection> {
    let conn = schema::open_writer(path)?;
    schema::shrink_writer_cache(&conn)?;
    Ok(conn)
}

/// The embedded store's handle; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<Op>,
    /// The workers' reads (claims, sweeps).
    reader: Arc<Mutex<Connection>>,
    /// Everyone else's reads (the API, start-up): never queued behind a claim.
    other: Arc<Mutex<Connection>>,
}

/// Ops taken into one transaction at most.
const MAX_BATCH: usize = 2048;

impl SqliteStore {
    /// Opens (creating if need be) the store at `path` and migrates it.
    pub fn open(path: &std::path::Path) -> Result<SqliteStore> {
        private_files(path)?;
        let mut writer = schema::open_writer(path)?;
        schema::migrate(&mut writer)
            .with_context(|| format!("cannot migrate the store {}", path.display()))?;
        schema::shrink_writer_cache(&writer)?;
        let reader = schema::open(path, false)?;
        let other = schema::open(path, false)?;
        let (tx, rx) = mpsc::channel();
        // The writer says whether it could prepare its statements before it
        // takes any write: a store it cannot write to stops the host here, with
        // the reason, rather than failing every write afterwards.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, rx, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!(
                "the store's writer cannot prepare its statements on {}: {e}",
                path.display()
            ),
            Err(_) => anyhow::bail!("the store's writer stopped as it started"),
        }
        Ok(SqliteStore {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            other: Arc::new(Mutex::new(other)),
        })
    }

    /// Runs `write` in the writer's next transaction; returns its result once
    /// committed. For the few writes outside the event path (see `store/access.rs`).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        write: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, rx) = oneshot::channel();
        let write = Box::new(move |c: &Connection| write(c).map(|t| Box::new(t) as AnyValue));
        self.tx
            .send(Op::Run { write, done })
            .map_err(|_| StoreError::Closed)?;
        let out = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(*out.downcast::<T>().expect("the closure's own type"))
    }

    /// Runs `read` on a connection of its own, on the blocking pool.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.other.clone();
        tokio::task::spawn_blocking(move || read(&conn.lock().unwrap()))
            .await
            .map_err(|e| StoreError::Write(format!("a store read crashed: {e}")))?
            .map_err(StoreError::Read)
    }

    /// Stores `event` and its deliveries; returns their seqs once committed.
    /// `after` runs on the writer thread right after the commit, before any later
    /// commit, so work handed out from it stays in commit order. With `dedup`
    /// (key, until), an event whose key is in its window is not stored again.
    ///
    /// The write is sent to the writer when this is called, not when the future
    /// is first polled: ingests called one after another are committed in that
    /// order, however their futures are then awaited.
    pub fn ingest(
        &self,
        event: Arc<Event>,
        deliveries: Vec<NewDelivery>,
        dedup: Option<(String, i64)>,
        after: Option<AfterCommit>,
    ) -> impl Future<Output = Result<Ingested, StoreError>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let op = Op::Ingest {
            received_at: event.received_at,
            event,
            deliveries,
            dedup,
            after,
            done,
        };
        let sent = self.tx.send(op).map_err(|_| StoreError::Closed);
        async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Records `update`; returns once it is committed.
    pub async fn update(&self, update: Update) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Update(Box::new(update), Some(done)))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Records `update` without waiting for the commit.
    pub fn update_later(&self, update: Update) {
        let _ = self.tx.send(Op::Update(Box::new(update), None));
    }

    /// Records a client's health: disabled (with the reason) or not, and since
    /// when its deliveries have been failing.
    pub fn set_client(
        &self,
        client_id: &str,
        disabled: Option<String>,
        failing_since: Option<i64>,
    ) {
        let _ = self.tx.send(Op::Client {
            client_id: client_id.to_string(),
            disabled,
            failing_since,
        });
    }

    /// Puts deliveries back to be sent again: their stored rendering is kept and a
    /// new attempt is due now. Returns how many were found.
    pub async fn replay(&self, seqs: Vec<i64>) -> Result<usize, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Replay { seqs, done })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once everything sent to the store before the call is committed.
    pub async fn flush(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(done)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Blocking: a client's pending deliveries with `seq > after`, in order.
    //
    // The loaders' predicates repeat the partial indexes' own (`unfinished!()`
    // beside `state = 'pending'`, say): SQLite uses a partial index only when the
    // query's WHERE implies the index's, and these reads must stay on the small
    // indexes of unfinished work. One exception, `PARKED`: see there.
    pub fn load_pending(
        &self,
        client_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.load_jobs(PENDING, params![client_id, after, limit as i64])
    }

    /// Blocking: a client's deliveries parked until a plugin changes: every `held`
    /// one, and the `plugin_error` ones made by another version than `plugin`.
    pub fn load_parked(
        &self,
        client_id: &str,
        plugin: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.load_jobs(PARKED, params![client_id, plugin, after, limit as i64])
    }

    /// Blocking: a client's retries due at `now`, soonest first.
    pub fn load_due_retries(
        &self,
        client_id: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.load_jobs(
            "d.client_id = ?1 AND d.state = 'retrying' AND d.next_attempt_at <= ?2 ORDER BY d.next_attempt_at, d.seq LIMIT ?3",
            params![client_id, now, limit as i64],
        )
    }

    /// Blocking: for each client, its soonest retry, and whether it has held
    /// deliveries. Both read partial indexes of unfinished work only.
    pub fn sweep(&self) -> Result<(DueRetries, Vec<String>), StoreError> {
        let conn = self.reader.lock().unwrap();
        let retries = conn
            .prepare_cached(
                "SELECT client_id, MIN(next_attempt_at) FROM deliveries WHERE state = 'retrying' GROUP BY client_id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
        let held = conn
            .prepare_cached(HELD_CLIENTS)?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok((retries, held))
    }

    /// Blocking: a client's recorded health, if the store holds any.
    pub fn client_state(&self, client_id: &str) -> Result<Option<super::ClientState>, StoreError> {
        let conn = self.reader.lock().unwrap();
        Ok(conn
            .query_row(
                "SELECT disabled_reason, failing_since FROM client_state WHERE client_id = ?1",
                [client_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn load_jobs(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Job>, StoreError> {
        let conn = self.reader.lock().unwrap();
        let mut stmt = conn.prepare_cached(&jobs_sql(filter))?;
        let rows = stmt.query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<Vec<u8>>>(8)?,
                r.get::<_, String>(9)?,
                r.get::<_, Vec<u8>>(10)?,
                r.get::<_, i64>(11)?,
            ))
        })?;
        let mut jobs = Vec::new();
        for row in rows {
            let (
                seq,
                id,
                client_id,
                attempts,
                rendered,
                plugin,
                ct,
                headers,
                body,
                event_id,
                event_body,
                received_at,
            ) = row?;
            // The event was valid when it was stored; the same parser accepts it again.
            let mut event = Event::parse(event_id, Bytes::from(event_body)).map_err(|e| {
                StoreError::Corrupt {
                    id: id.clone(),
                    reason: e.to_string(),
                }
            })?;
            event.received_at = received_at;
            let rendered = rendered.then(|| StoredRender {
                request: Rendered {
                    body: body.unwrap_or_else(|| event.raw.to_vec()),
                    content_type: ct,
                    headers: headers
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or_default(),
                },
                plugin,
            });
            jobs.push(Job {
                seq,
                id,
                client_id,
                event: Arc::new(event),
                attempts: attempts as u32,
                rendered,
            });
        }
        Ok(jobs)
    }
}

/// The loaders' query, `filter` its WHERE and order.
fn jobs_sql(filter: &str) -> String {
    format!(
        "SELECT d.seq, d.id, d.client_id, d.attempts, d.rendered, d.plugin, d.content_type, d.headers, d.body, \
                e.id, e.body, e.received_at \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE {filter}"
    )
}

/// A client's pending deliveries after a seq, in order.
const PENDING: &str = concat!(
    "d.client_id = ?1 AND d.state = 'pending' AND ",
    schema::unfinished!(),
    " AND d.seq > ?2 ORDER BY d.seq LIMIT ?3"
);

/// A client's parked deliveries (held, or failed on another plugin version)
/// after a seq, in order. For this one SQLite walks the client's deliveries in
/// seq order from the cursor (`deliveries_client`), which needs no sort, rather
/// than the work index: a reload's pages read the client's history from its
/// first parked delivery on, once.
const PARKED: &str = concat!(
    "d.client_id = ?1 AND ",
    schema::unfinished!(),
    " AND (d.state = 'held' OR (d.state = 'plugin_error' AND IFNULL(d.plugin, '') != ?2)) \
     AND d.seq > ?3 ORDER BY d.seq LIMIT ?4"
);

/// The clients with held deliveries.
const HELD_CLIENTS: &str = concat!(
    "SELECT DISTINCT client_id FROM deliveries WHERE ",
    schema::unfinished!(),
    " AND state = 'held'"
);

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Op>,
    ready: mpsc::SyncSender<Result<(), String>>,
) {
    let mut statements = match schema::Statements::prepare(&conn) {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let began = std::time::Instant::now();
        let result = apply(&conn, &mut statements, &mut batch);
        crate::metrics::store_commit(began.elapsed(), batch.len());
        finish(batch, result);
    }
    drop(statements);
    // Every batch commits or rolls back, so this is a guard: closed inside a
    // transaction, the connection could no longer tell the gathering VFS to
    // forget that transaction's frames (see `super::vfs`).
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// What each op of a batch produced, in batch order.
enum Outcome {
    Ingested(Ingested),
    Count(usize),
    Value(AnyValue),
    Nothing,
}

/// Runs one op on `conn`: a transaction, or a savepoint within one.
fn apply_op(conn: &Connection, st: &mut schema::Statements, op: &Op) -> rusqlite::Result<Outcome> {
    match op {
        Op::Ingest {
            event,
            received_at,
            deliveries,
            dedup,
            ..
        } => schema::insert_event(st, event, *received_at, deliveries, dedup.as_ref())
            .map(Outcome::Ingested),
        Op::Update(u, _) => schema::apply_update(st, u).map(|_| Outcome::Nothing),
        Op::Client {
            client_id,
            disabled,
            failing_since,
        } => schema::set_client(conn, client_id, disabled.as_deref(), *failing_since)
            .map(|_| Outcome::Nothing),
        Op::Replay { seqs, .. } => schema::replay(conn, seqs).map(Outcome::Count),
        Op::Flush(_) => Ok(Outcome::Nothing),
        Op::Run { write, .. } => write(conn).map(Outcome::Value),
    }
}

/// Run the batch again, op by op: an op failed while it ran without
/// savepoints, or one failed in a way that lost the whole transaction.
#[derive(Debug)]
struct Retry;

fn apply(
    conn: &Connection,
    st: &mut schema::Statements,
    batch: &mut [Op],
) -> Result<Vec<Result<Outcome, String>>, String> {
    // The quick way: the whole batch in one transaction. Should an op fail (a
    // constraint, say), the batch is rolled back and run again with a savepoint
    // per op, so that op fails alone and the rest commits.
    //
    // Some failures (a full disk, an I/O error) make SQLite roll the whole
    // transaction back, savepoints and all; a later SAVEPOINT would then start
    // a transaction of its own and commit that op alone, and the batch's
    // COMMIT would fail, reporting as failed ops that were written. So such an
    // op is set aside as failed (`refused`) and the batch run again without it.
    //
    // A second lost transaction in one batch means the cause is lasting (the
    // disk stays full): the ops not yet tried are then failed untried, so a
    // batch runs at most four times (whole, then op by op up to three times)
    // rather than once per op.
    let mut refused: Vec<Option<String>> = vec![None; batch.len()];
    let mut lost = 0;
    let mut run = |isolate: bool,
                   refused: &mut Vec<Option<String>>|
     -> Result<Vec<Result<Outcome, String>>, Result<rusqlite::Error, Retry>> {
        // Unchecked: the statements borrow the connection too. The writer runs
        // one transaction at a time, so none is ever nested.
        let mut tx = conn.unchecked_transaction().map_err(Ok)?;
        let mut out = Vec::with_capacity(batch.len());
        for (i, op) in batch.iter().enumerate() {
            if let Some(why) = &refused[i] {
                out.push(Err(why.clone()));
                continue;
            }
            if !isolate {
                out.push(Ok(apply_op(&tx, st, op).map_err(|_| Err(Retry))?));
                continue;
            }
            let sp = tx.savepoint().map_err(Ok)?;
            match apply_op(&sp, st, op) {
                Ok(o) => {
                    sp.commit().map_err(Ok)?;
                    out.push(Ok(o));
                }
                Err(e) => {
                    tracing::error!(error = %e, "a store write failed and was undone");
                    refused[i] = Some(format!("the store refused the write: {e}"));
                    if sp.is_autocommit() {
                        // The whole transaction is gone: run the rest again.
                        lost += 1;
                        if lost >= 2 {
                            let why = format!("the store could not take this write: {e}");
                            let mut untried = 0;
                            for r in refused.iter_mut().skip(i + 1).filter(|r| r.is_none()) {
                                *r = Some(why.clone());
                                untried += 1;
                            }
                            // Some of these have no caller waiting (a client's
                            // health, a parked delivery): say they were lost.
                            tracing::error!(error = %e, untried,
                                "the store keeps refusing writes; the rest of this batch fails untried");
                        }
                        return Err(Err(Retry));
                    }
                    // Undone explicitly: should the undo itself fail, part of
                    // the op could commit while it is reported failed, so then
                    // the batch fails whole.
                    let mut sp = sp;
                    sp.rollback().map_err(Ok)?;
                    drop(sp);
                    out.push(Err(refused[i].clone().expect("just set")));
                }
            }
        }
        tx.commit().map_err(Ok)?;
        Ok(out)
    };
    // A busy database (a long read elsewhere) is worth a few more tries; a full
    // disk or a broken file is not. Each run again after a lost transaction
    // has set one more op aside, the second all the untried ones.
    let (mut tries, mut isolate) = (0, false);
    loop {
        match run(isolate, &mut refused) {
            Ok(out) => return Ok(out),
            Err(Err(Retry)) => isolate = true,
            Err(Ok(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 50 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Ok(e)) => {
                tracing::error!(error = %e, "the store could not commit a batch of {} writes", batch.len());
                return Err(format!("the store could not commit: {e}"));
            }
        }
    }
}

fn finish(batch: Vec<Op>, result: Result<Vec<Result<Outcome, String>>, String>) {
    let mut outcomes = match result {
        Ok(o) => o,
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
    .into_iter();
    for op in batch {
        let outcome = outcomes
            .next()
            .expect("one outcome per op")
            .map_err(StoreError::Write);
        match op {
            Op::Ingest {
                after,
                done,
                deliveries,
                ..
            } => {
                let ingested = outcome.map(|o| match o {
                    Outcome::Ingested(i) => i,
                    _ => unreachable!("ingest yields its outcome"),
                });
                if let (Ok(Ingested::Stored(seqs)), Some(after)) = (&ingested, after) {
                    after(deliveries, seqs);
                }
                let _ = done.send(ingested);
            }
            Op::Update(_, done) => {
                if let Some(done) = done {
                    let _ = done.send(outcome.map(|_| ()));
                }
            }
            Op::Replay { done, .. } => {
                let _ = done.send(outcome.map(|o| match o {
                    Outcome::Count(n) => n,
                    _ => 0,
                }));
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
            Op::Run { done, .. } => {
                let _ = done.send(outcome.map(|o| match o {
                    Outcome::Value(v) => v,
                    _ => unreachable!("a write yields its value"),
                }));
            }
            Op::Client { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::tests::{column, store};

    /// How SQLite would run `sql`, its plan's lines joined.
    fn plan(conn: &Connection, sql: &str) -> String {
        column::<String>(conn, &format!("EXPLAIN QUERY PLAN {sql}"), 3).join("; ")
    }

    #[test]
    fn reads_of_unfinished_work_use_its_partial_index() {
        let (_dir, conn) = store();
        for sql in [
            jobs_sql(PENDING),
            HELD_CLIENTS.to_string(),
            crate::store::rows::QUEUE_BY_STATE.to_string(),
            crate::store::rows::OLDEST_PENDING.to_string(),
        ] {
            let plan = plan(&conn, &sql);
            assert!(plan.contains("deliveries_work"), "{sql}: {plan}");
        }
        // The parked ones go through the client's deliveries in order (see PARKED).
        let plan = plan(&conn, &jobs_sql(PARKED));
        assert!(plan.contains("deliveries_client"), "{plan}");
    }

    /// A writer's store with a table `t (b BLOB)` and room for 8 more pages: a
    /// write of a MiB fills the disk.
    fn nearly_full_store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("s.db")).unwrap();
        schema::migrate(&mut conn).unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 8))
            .unwrap();
        (dir, conn)
    }

    /// A batch whose middle write fills the disk (here: the store's page
    /// limit), which makes SQLite roll the whole transaction back. What `apply`
    /// reports must be what the store holds (no write it calls failed may be
    /// there, every one it calls done must be), and the others still commit.
    #[test]
    fn a_batch_that_fills_the_disk_reports_what_it_wrote() {
        let (_dir, conn) = nearly_full_store();
        let insert = |n: usize| -> AnyWrite {
            Box::new(move |c: &Connection| {
                c.execute("INSERT INTO t VALUES (zeroblob(?1))", [n as i64])?;
                Ok(Box::new(()) as AnyValue)
            })
        };
        let mut batch: Vec<Op> = [100, 1 << 20, 100]
            .into_iter()
            .map(|n| Op::Run {
                write: insert(n),
                done: oneshot::channel().0,
            })
            .collect();
        let mut st = schema::Statements::prepare(&conn).unwrap();
        let done: Vec<bool> = match apply(&conn, &mut st, &mut batch) {
            Ok(outcomes) => outcomes.iter().map(Result::is_ok).collect(),
            Err(_) => vec![false; 3],
        };
        let sizes: Vec<i64> = conn
            .prepare("SELECT length(b) FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let reported: Vec<i64> = [100, 1 << 20, 100]
            .into_iter()
            .zip(&done)
            .filter(|(_, ok)| **ok)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(sizes, reported, "reported done: {done:?}");
        assert_eq!(
            done,
            [true, false, true],
            "only the write that filled the disk failed"
        );
        assert!(conn.is_autocommit(), "no transaction left open");
    }

    #[test]
    fn a_disk_that_stays_full_fails_the_untried_writes_of_a_batch() {
        let (_dir, conn) = nearly_full_store();
        let sizes_in = [100, 1 << 20, 1 << 20, 100, 100];
        let mut batch: Vec<Op> = sizes_in
            .into_iter()
            .map(|n: i64| Op::Run {
                write: Box::new(move |c: &Connection| {
                    c.execute("INSERT INTO t VALUES (zeroblob(?1))", [n])?;
                    Ok(Box::new(()) as AnyValue)
                }),
                done: oneshot::channel().0,
            })
            .collect();
        let mut st = schema::Statements::prepare(&conn).unwrap();
        let outcomes = apply(&conn, &mut st, &mut batch).expect("the batch commits");
        let done: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
        // Two lost transactions: the two writes after the second are not tried,
        // though each would fit (a disk that stays full would fail them all, one
        // rerun of the batch each).
        assert_eq!(done, [true, false, false, false, false]);
        let untried = outcomes[3].as_ref().err().unwrap();
        assert!(untried.contains("could not take this write"), "{untried}");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "only what was reported done is stored");
    }

    #[test]
    fn a_store_whose_writer_cannot_prepare_its_statements_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE attempts")
            .unwrap();
        let err = SqliteStore::open(&path).err().expect("refused");
        let msg = format!("{err:#}");
        assert!(msg.contains("cannot prepare its statements"), "{msg}");
        assert!(msg.contains("attempts"), "{msg}");
    }
}
