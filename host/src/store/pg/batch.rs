//! The event path's writes, gathered: ingests (without a de-duplication key)
//! and recorded outcomes from every worker queue up here, and each of a few
//! writers takes what has queued and runs it as one transaction, its
//! statements pipelined on one connection. One commit — one WAL flush, one
//! round trip for the lot — then covers many events, as the SQLite writer's
//! group commit does; each caller still learns when *its* write is committed.
//! Should a statement fail, the transaction is rolled back and each write
//! runs again alone, so it fails alone. Should anything else fail (the
//! connection, the commit itself), every write of the batch is answered with
//! the error: a commit whose outcome is unknown is not run twice here (the
//! callers' own retries are at-least-once, as after a crash).

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::event::Event;
use crate::model::{NewDelivery, Update, now_ms};
use crate::store::StoreError;

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;
/// Transactions in flight at once: while one commits, the next gathers.
pub(super) const WRITERS: usize = 3;

/// How the writers' statements are planned: see [`super::PgStore::open`].
pub(super) const PLANS: &str = "plan_cache_mode=force_generic_plan";

/// An event and its deliveries. A delivery this host asks for ($7, its
/// client's lease held here) is leased to it ($8, for $9 ms) at once, to be
/// handed to its worker without a claim — unless some pending delivery of
/// that client lies outside this host's leases (another host's ingest not
/// yet claimed, a dead host's work, one given back): then order asks that
/// those go first, and this one waits for a claim like them. The question is
/// three ranges of `deliveries_fresh`, each read only up to its first live
/// row: one range with `OR` (`!=`) would be read whole.
pub(super) const INGEST: &str = concat!(
    "WITH e AS (INSERT INTO events (id, name, body, received_at) VALUES ($1, $2, $3, $4) RETURNING seq) \
     INSERT INTO deliveries (id, event_seq, client_id, state, created_at, updated_at, lease_owner, lease_until) \
     SELECT d.id, e.seq, d.client_id, 'pending', $4, $4, \
       CASE WHEN f.ok THEN $8 END, CASE WHEN f.ok THEN ",
    now_sql!(),
    " + $9 END \
     FROM e, unnest($5::text[], $6::text[], $7::bool[]) WITH ORDINALITY AS d(id, client_id, mine, n) \
     CROSS JOIN LATERAL (SELECT CASE WHEN d.mine THEN NOT ( \
       EXISTS (SELECT 1 FROM deliveries o WHERE o.client_id = d.client_id AND o.state = 'pending' AND o.lease_owner IS NULL) \
       OR EXISTS (SELECT 1 FROM deliveries o WHERE o.client_id = d.client_id AND o.state = 'pending' AND o.lease_owner < $8) \
       OR EXISTS (SELECT 1 FROM deliveries o WHERE o.client_id = d.client_id AND o.state = 'pending' AND o.lease_owner > $8)) \
       ELSE false END OFFSET 0) AS f(ok) \
     ORDER BY d.n \
     RETURNING seq, id, lease_owner IS NOT NULL"
);

/// An outcome and its attempt, the lease ended; only by the lease's owner
/// ($19): a host whose lease ran out records its attempt but leaves the state.
const COMPLETE: &str = "WITH a AS ( \
       INSERT INTO attempts (delivery_seq, n, started_at, duration_ms, status, error_kind, error, response) \
       SELECT $1, COALESCE((SELECT MAX(n) FROM attempts WHERE delivery_seq = $1), 0) + 1, $12, $13, $14, $15, $16, $17 \
       WHERE $18) \
     UPDATE deliveries SET state = $2, reason = $3, next_attempt_at = $4, updated_at = $5, \
       attempts = attempts + $6, plugin = COALESCE($7, plugin), rendered = rendered OR $8, \
       content_type = CASE WHEN $8 THEN $9 ELSE content_type END, \
       headers = CASE WHEN $8 THEN $10 ELSE headers END, \
       body = CASE WHEN $8 THEN $11 ELSE body END, \
       lease_owner = NULL, lease_until = NULL \
     WHERE seq = $1 AND lease_owner = $19";

pub(super) enum Write {
    Ingest {
        event: Arc<Event>,
        deliveries: Vec<NewDelivery>,
        /// Per delivery: lease it to this host at once, if order allows.
        mine: Vec<bool>,
        /// Runs right after the commit, before the writer's next commit.
        after: Option<AfterCommit>,
    },
    Complete(Box<Update>),
}

/// Told, right after an ingest's commit, each delivery's seq and whether it
/// is leased to this host: work handed out from here stays in commit order.
pub type AfterCommit = Box<dyn FnOnce(&[(i64, bool)]) + Send + Sync>;

pub(super) enum Done {
    /// The event's deliveries, in order: seq, and leased to this host.
    Stored(Vec<(i64, bool)>),
    /// Rows the outcome changed: 0 when the lease was lost.
    Completed(u64),
}

type Reply = oneshot::Sender<Result<Done, StoreError>>;

pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<(Write, Reply)>,
}

impl Batcher {
    pub fn start(pool: Pool, host: String, lease_ms: i64) -> Batcher {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(pool.clone(), host.clone(), lease_ms, rx.clone()));
        }
        Batcher { queue }
    }

    /// Runs `write` in a shared transaction; returns once it is committed.
    pub async fn run(&self, write: Write) -> Result<Done, StoreError> {
        let (reply, done) = oneshot::channel();
        self.queue
            .send((write, reply))
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }
}

async fn writer(
    pool: Pool,
    host: String,
    lease_ms: i64,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<(Write, Reply)>>>,
) {
    loop {
        let mut batch = Vec::new();
        {
            // One writer gathers at a time; the others commit meanwhile.
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(w) => batch.push(w),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
        }
        let began = std::time::Instant::now();
        let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
        match run(&pool, (&host, lease_ms), &writes).await {
            Ok(done) => {
                crate::metrics::store_commit(began.elapsed(), batch.len());
                for ((w, reply), d) in batch.into_iter().zip(done) {
                    committed(w, &d);
                    let _ = reply.send(Ok(d));
                }
            }
            Err(Failed::Statement(e)) if batch.len() > 1 => {
                tracing::warn!("a write of a batch failed ({e}); its writes run again one by one");
                for (w, reply) in batch {
                    let alone = run(&pool, (&host, lease_ms), &[&w])
                        .await
                        .map(|mut d| d.remove(0));
                    if let Ok(d) = &alone {
                        committed(w, d);
                    }
                    let _ = reply.send(alone.map_err(Failed::into));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Postgres(e.clone())));
                }
            }
        }
    }
}

/// Runs a committed ingest's [`AfterCommit`].
fn committed(w: Write, done: &Done) {
    if let (
        Write::Ingest {
            after: Some(after), ..
        },
        Done::Stored(rows),
    ) = (w, done)
    {
        after(rows);
    }
}

/// Why a batch did not commit.
enum Failed {
    /// The database refused a statement (nothing was committed): the
    /// others may go without it.
    Statement(StoreError),
    /// Anything else: no connection, or the commit's outcome is unknown.
    Other(StoreError),
}

impl From<Failed> for StoreError {
    fn from(f: Failed) -> StoreError {
        match f {
            Failed::Statement(e) | Failed::Other(e) => e,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Statement(e) | Failed::Other(e) => e.fmt(f),
        }
    }
}

/// `writes` in one transaction, pipelined; each one's result, in order.
async fn run(
    pool: &Pool,
    (host, lease_ms): (&str, i64),
    writes: &[&Write],
) -> Result<Vec<Done>, Failed> {
    let other = |e: StoreError| Failed::Other(e);
    let mut conn = pool.get().await.map_err(|e| other(e.into()))?;
    let tx = conn.transaction().await.map_err(|e| other(e.into()))?;
    let ingest = tx
        .prepare_cached(INGEST)
        .await
        .map_err(|e| other(e.into()))?;
    let complete = tx
        .prepare_cached(COMPLETE)
        .await
        .map_err(|e| other(e.into()))?;
    let each = writes.iter().map(|w| async {
        match w {
            Write::Ingest {
                event,
                deliveries,
                mine,
                ..
            } => ingest_rows(&*tx, &ingest, (host, lease_ms), event, deliveries, mine)
                .await
                .map(Done::Stored),
            Write::Complete(u) => {
                let args = CompleteArgs::of(u, host);
                Ok(Done::Completed(tx.execute(&complete, &args.refs()).await?))
            }
        }
    });
    let done = futures_util::future::try_join_all(each)
        .await
        .map_err(|e| match &e {
            StoreError::Postgres(_) if is_statement(&e) => Failed::Statement(e),
            _ => Failed::Other(e),
        })?;
    tx.commit().await.map_err(|e| other(e.into()))?;
    Ok(done)
}

/// Whether a statement's error came from the database refusing it (a SQLSTATE),
/// not from the connection.
fn is_statement(e: &StoreError) -> bool {
    // StoreError keeps the server's code first ("22021: …"); a lost
    // connection has none.
    matches!(e, StoreError::Postgres(m) if m.len() > 6 && m.as_bytes()[5] == b':' && m[..5].bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Inserts an event and its deliveries (one statement, [`INGEST`]); their
/// seqs, in order, and whether each is leased to `host`.
pub(super) async fn ingest_rows(
    client: &impl GenericClient,
    stmt: &tokio_postgres::Statement,
    (host, lease_ms): (&str, i64),
    event: &Event,
    deliveries: &[NewDelivery],
    mine: &[bool],
) -> Result<Vec<(i64, bool)>, StoreError> {
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let clients: Vec<&str> = deliveries.iter().map(|d| d.client_id.as_str()).collect();
    let rows = client
        .query(
            stmt,
            &[
                &text(&event.id),
                &text(&event.name),
                &&event.raw[..],
                &event.received_at,
                &ids,
                &clients,
                &mine,
                &host,
                &lease_ms,
            ],
        )
        .await?;
    let seq_of: HashMap<String, (i64, bool)> = rows
        .iter()
        .map(|r| (r.get(1), (r.get(0), r.get(2))))
        .collect();
    Ok(deliveries.iter().map(|d| seq_of[&d.id]).collect())
}

/// Text as PostgreSQL takes it: it refuses the NUL character (SQLite keeps
/// it), which a receiver's answer or a plugin's reason may hold; U+FFFD in
/// its place, as for any other byte that is not text.
pub fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The parameters of [`COMPLETE`].
struct CompleteArgs<'a> {
    u: &'a Update,
    reason: Option<std::borrow::Cow<'a, str>>,
    error_kind: Option<std::borrow::Cow<'a, str>>,
    error: Option<std::borrow::Cow<'a, str>>,
    response: Option<std::borrow::Cow<'a, str>>,
    host: &'a str,
    state: &'static str,
    has_attempt: bool,
    now: i64,
    attempted: i64,
    rendered: bool,
    content_type: Option<std::borrow::Cow<'a, str>>,
    headers: Option<String>,
    body: Option<&'a [u8]>,
    plugin: Option<std::borrow::Cow<'a, str>>,
    started_at: i64,
    duration_ms: i64,
    status: Option<i64>,
}

impl<'a> CompleteArgs<'a> {
    fn of(u: &'a Update, host: &'a str) -> CompleteArgs<'a> {
        let crate::store::schema::RenderColumns {
            rendered,
            content_type,
            headers,
            body,
            plugin,
        } = crate::store::schema::RenderColumns::of(u);
        let a = u.attempt.as_ref();
        CompleteArgs {
            u,
            reason: u.reason.as_deref().map(text),
            error_kind: a.and_then(|a| a.error_kind.as_deref()).map(text),
            error: a.and_then(|a| a.error.as_deref()).map(text),
            response: a.and_then(|a| a.response.as_deref()).map(text),
            host,
            state: u.state.as_str(),
            has_attempt: u.attempt.is_some(),
            now: now_ms(),
            attempted: u.attempt.is_some() as i64,
            rendered,
            content_type: content_type.map(text),
            headers,
            body,
            plugin: plugin.map(text),
            started_at: a.map_or(0, |a| a.started_at),
            duration_ms: a.map_or(0, |a| a.duration_ms),
            status: a.and_then(|a| a.status).map(i64::from),
        }
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.u.seq,
            &self.state,
            &self.reason,
            &self.u.next_attempt_at,
            &self.now,
            &self.attempted,
            &self.plugin,
            &self.rendered,
            &self.content_type,
            &self.headers,
            &self.body,
            &self.started_at,
            &self.duration_ms,
            &self.status,
            &self.error_kind,
            &self.error,
            &self.response,
            &self.has_attempt,
            &self.host,
        ]
    }
}
