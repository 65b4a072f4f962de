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

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::event::Event;
use crate::model::{NewDelivery, Update, now_ms};
use crate::store::StoreError;

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;
/// Transactions in flight at once: while one commits, the next gathers.
pub(super) const WRITERS: usize = 3;

/// How the writers' statements are planned: once per connection, see
/// [`super::PgStore::open`].
pub(super) const PLANS: &[&str] = &["plan_cache_mode=force_generic_plan"];

/// For the event path's statements and the claims: a plan is often made
/// while the tables are still small, when reading a whole table looks
/// cheapest, and kept once they are large; every one of these statements
/// finds its rows of the large tables by key or through an index. Without
/// JIT: the planner prices a refused full read so high that it would compile
/// (~150 ms) any statement that has no other way (the few-row `hosts`), and
/// a short statement never gains by it.
pub(super) const NO_SCANS: &[&str] = &["enable_seqscan=off", "jit=off"];

/// Events and their deliveries. A delivery this host asks for ($8, its
/// client's lease held here) is leased to it ($9, for $10 ms) at once, to be
/// handed to its worker without a claim — unless some pending delivery of
/// that client lies outside this host's leases (another host's ingest not
/// yet claimed, a dead host's work, one given back): then order asks that
/// those go first, and this one waits for a claim like them. The question is
/// three ranges of `deliveries_fresh`, each read only up to its first live
/// row: one range with `OR` (`!=`) would be read whole.
///
/// The events come as arrays ($1–$4), their deliveries too ($5–$8, each
/// with the index of its event in $1–$4, from 1): a transaction's ingests
/// cost one statement, not one each. The events' seqs follow their order
/// (inserted sorted, numbered in seq order), and so do the deliveries'. Each
/// delivery's question sees the rows of earlier statements only, not those
/// of the events before it in the same call: the caller asks for no lease
/// after a delivery of the same client it did not ask one for
/// ([`IngestArgs::push`]).
pub(super) const INGEST: &str = concat!(
    "WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bigint[]) \
       WITH ORDINALITY AS x(id, name, body, received_at, n)), \
     e AS (INSERT INTO events (id, name, body, received_at) \
       SELECT x.id, x.name, x.body, x.received_at FROM x ORDER BY x.n RETURNING seq), \
     en AS (SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM e) \
     INSERT INTO deliveries (id, event_seq, client_id, state, created_at, updated_at, lease_owner, lease_until) \
     SELECT d.id, en.seq, d.client_id, 'pending', x.received_at, x.received_at, \
       CASE WHEN f.ok THEN $9 END, CASE WHEN f.ok THEN ",
    now_sql!(),
    " + $10 END \
     FROM unnest($5::bigint[], $6::text[], $7::text[], $8::bool[]) WITH ORDINALITY AS d(ev, id, client_id, mine, k) \
     JOIN en ON en.n = d.ev JOIN x ON x.n = d.ev \
     CROSS JOIN LATERAL (SELECT CASE WHEN d.mine THEN NOT ( \
       EXISTS (SELECT 1 FROM deliveries o WHERE o.client_id = d.client_id AND o.state = 'pending' AND o.lease_owner IS NULL) \
       OR EXISTS (SELECT 1 FROM deliveries o WHERE o.client_id = d.client_id AND o.state = 'pending' AND o.lease_owner < $9) \
       OR EXISTS (SELECT 1 FROM deliveries o WHERE o.client_id = d.client_id AND o.state = 'pending' AND o.lease_owner > $9)) \
       ELSE false END OFFSET 0) AS f(ok) \
     ORDER BY d.k \
     RETURNING seq, id, lease_owner IS NOT NULL"
);

/// Outcomes and their attempts, the leases ended, each parameter an array
/// with one element per outcome; only by the lease's owner ($19): a host
/// whose lease ran out records its attempt but leaves the state. All of a
/// transaction's outcomes go in one statement, not one each — most of a
/// statement's price in the server is starting it, not the rows it writes.
/// Never given one delivery twice (the update would take only one of its
/// outcomes).
const COMPLETE: &str = "WITH u AS ( \
       SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], \
         $7::text[], $8::bool[], $9::text[], $10::text[], $11::bytea[], $12::bigint[], $13::bigint[], \
         $14::bigint[], $15::text[], $16::text[], $17::text[], $18::bool[]) \
       AS u(seq, state, reason, next_attempt_at, updated_at, attempted, plugin, rendered, content_type, \
         headers, body, started_at, duration_ms, status, error_kind, error, response, has_attempt)), \
     a AS ( \
       INSERT INTO attempts (delivery_seq, n, started_at, duration_ms, status, error_kind, error, response) \
       SELECT u.seq, COALESCE((SELECT MAX(n) FROM attempts WHERE delivery_seq = u.seq), 0) + 1, \
         u.started_at, u.duration_ms, u.status, u.error_kind, u.error, u.response \
       FROM u WHERE u.has_attempt) \
     UPDATE deliveries d SET state = u.state, reason = u.reason, next_attempt_at = u.next_attempt_at, \
       updated_at = u.updated_at, attempts = d.attempts + u.attempted, plugin = COALESCE(u.plugin, d.plugin), \
       rendered = d.rendered OR u.rendered, \
       content_type = CASE WHEN u.rendered THEN u.content_type ELSE d.content_type END, \
       headers = CASE WHEN u.rendered THEN u.headers ELSE d.headers END, \
       body = CASE WHEN u.rendered THEN u.body ELSE d.body END, \
       lease_owner = NULL, lease_until = NULL \
     FROM u WHERE d.seq = ANY($1) AND d.seq = u.seq AND d.lease_owner = $19 \
     RETURNING d.seq";

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
    /// `lost` learns of every transaction whose outcome is unknown: its
    /// ingests may have leased deliveries this host does not know of.
    pub fn start(pool: Pool, host: String, lease_ms: i64, lost: Arc<super::LostTrack>) -> Batcher {
        let (queue, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(
                pool.clone(),
                host.clone(),
                lease_ms,
                rx.clone(),
                lost.clone(),
            ));
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
    lost: Arc<super::LostTrack>,
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
                    match &alone {
                        Ok(d) => committed(w, d),
                        Err(Failed::Other(_)) => lost.now(),
                        Err(Failed::Statement(_)) => {}
                    }
                    let _ = reply.send(alone.map_err(Failed::into));
                }
            }
            Err(e) => {
                if let Failed::Other(_) = e {
                    lost.now();
                }
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
    let outcomes: Vec<&Update> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Complete(u) => Some(&**u),
            Write::Ingest { .. } => None,
        })
        .collect();
    // One statement for all the outcomes, or one each should a delivery
    // have two (see [`COMPLETE`]).
    let distinct = {
        let mut seqs: Vec<i64> = outcomes.iter().map(|u| u.seq).collect();
        seqs.sort_unstable();
        seqs.windows(2).all(|w| w[0] != w[1])
    };
    let groups: Vec<Vec<&Update>> = if outcomes.is_empty() {
        Vec::new()
    } else if distinct {
        vec![outcomes]
    } else {
        outcomes.into_iter().map(|u| vec![u]).collect()
    };
    let mut ingests = IngestArgs::default();
    for w in writes {
        if let Write::Ingest {
            event,
            deliveries,
            mine,
            ..
        } = w
        {
            ingests.push(event, deliveries, mine);
        }
    }
    let all = futures_util::future::try_join_all(groups.iter().map(|g| async {
        let complete = tx.prepare_cached(COMPLETE).await?;
        let args = CompleteArgs::of(g, host);
        let rows = tx.query(&complete, &args.refs()).await?;
        Ok::<_, StoreError>(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
    }));
    let stored = async {
        if ingests.ids.is_empty() {
            return Ok(Vec::new());
        }
        ingests.run(&tx, (host, lease_ms)).await
    };
    // Pipelined on the one connection.
    let (changed, seqs) =
        futures_util::future::try_join(all, stored)
            .await
            .map_err(|e| match &e {
                StoreError::Postgres(_) if is_statement(&e) => Failed::Statement(e),
                _ => Failed::Other(e),
            })?;
    let mut seqs = seqs.into_iter();
    // Each write's answer. The groups hold the outcomes in writes' order:
    // whether an outcome's row changed (not when its lease was lost) is in
    // its group's answer.
    let mut changed = changed.into_iter();
    let mut group: Option<std::collections::HashSet<i64>> = None;
    let mut done = Vec::with_capacity(writes.len());
    for w in writes {
        done.push(match w {
            Write::Ingest { deliveries, .. } => {
                Done::Stored(seqs.by_ref().take(deliveries.len()).collect())
            }
            Write::Complete(u) => {
                if !distinct || group.is_none() {
                    group = Some(changed.next().unwrap_or_default().into_iter().collect());
                }
                Done::Completed(group.as_ref().is_some_and(|g| g.contains(&u.seq)) as u64)
            }
        });
    }
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
    client: &deadpool_postgres::Transaction<'_>,
    who: (&str, i64),
    event: &Event,
    deliveries: &[NewDelivery],
    mine: &[bool],
) -> Result<Vec<(i64, bool)>, StoreError> {
    let mut args = IngestArgs::default();
    args.push(event, deliveries, mine);
    args.run(client, who).await
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

/// The parameters of [`INGEST`] but the host's.
#[derive(Default)]
pub(super) struct IngestArgs<'a> {
    ids: Vec<std::borrow::Cow<'a, str>>,
    names: Vec<std::borrow::Cow<'a, str>>,
    bodies: Vec<&'a [u8]>,
    received_at: Vec<i64>,
    event_of: Vec<i64>,
    delivery_ids: Vec<&'a str>,
    clients: Vec<&'a str>,
    mine: Vec<bool>,
    /// Clients with a delivery not to be leased here.
    unleased: std::collections::HashSet<&'a str>,
}

impl<'a> IngestArgs<'a> {
    /// Adds an event and its deliveries, `mine` saying which to lease here.
    /// A client with a delivery not to be leased here leases none of its
    /// later ones in the call: they must not go before it, and the call's
    /// questions do not see it (see [`INGEST`]).
    pub fn push(&mut self, event: &'a Event, deliveries: &'a [NewDelivery], mine: &[bool]) {
        self.ids.push(text(&event.id));
        self.names.push(text(&event.name));
        self.bodies.push(&event.raw[..]);
        self.received_at.push(event.received_at);
        let n = self.ids.len() as i64;
        for (i, d) in deliveries.iter().enumerate() {
            let asked = mine.get(i).copied().unwrap_or(false);
            let asked = asked && !self.unleased.contains(d.client_id.as_str());
            if !asked {
                self.unleased.insert(&d.client_id);
            }
            self.event_of.push(n);
            self.delivery_ids.push(&d.id);
            self.clients.push(&d.client_id);
            self.mine.push(asked);
        }
    }

    /// Runs [`INGEST`]: each delivery's seq and whether it is leased to
    /// `host`, in the order they were pushed.
    pub async fn run(
        &self,
        client: &deadpool_postgres::Transaction<'_>,
        (host, lease_ms): (&str, i64),
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        let stmt = client.prepare_cached(INGEST).await?;
        let params: [&(dyn ToSql + Sync); 10] = [
            &self.ids,
            &self.names,
            &self.bodies,
            &self.received_at,
            &self.event_of,
            &self.delivery_ids,
            &self.clients,
            &self.mine,
            &host,
            &lease_ms,
        ];
        let mut rows: Vec<(i64, String, bool)> = client
            .query(&stmt, &params)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // In seq order, which is the order they were pushed in (see
        // [`INGEST`]); each one's id says so.
        rows.sort_unstable_by_key(|r| r.0);
        let in_order = rows.len() == self.delivery_ids.len()
            && rows
                .iter()
                .zip(&self.delivery_ids)
                .all(|(r, id)| r.1 == *id);
        if !in_order {
            // A statement's answer, not the connection's: the batch's
            // writes are tried again one by one.
            return Err(StoreError::Postgres(
                "XX000: the ingest's deliveries came back out of order".into(),
            ));
        }
        Ok(rows
            .into_iter()
            .map(|(seq, _, leased)| (seq, leased))
            .collect())
    }
}

/// The parameters of [`COMPLETE`]: each [`Outcome`]'s columns, as arrays.
struct CompleteArgs<'a> {
    host: &'a str,
    seq: Vec<i64>,
    state: Vec<&'static str>,
    reason: Vec<Option<std::borrow::Cow<'a, str>>>,
    next_attempt_at: Vec<Option<i64>>,
    now: Vec<i64>,
    attempted: Vec<i64>,
    plugin: Vec<Option<std::borrow::Cow<'a, str>>>,
    rendered: Vec<bool>,
    content_type: Vec<Option<std::borrow::Cow<'a, str>>>,
    headers: Vec<Option<String>>,
    body: Vec<Option<&'a [u8]>>,
    started_at: Vec<i64>,
    duration_ms: Vec<i64>,
    status: Vec<Option<i64>>,
    error_kind: Vec<Option<std::borrow::Cow<'a, str>>>,
    error: Vec<Option<std::borrow::Cow<'a, str>>>,
    response: Vec<Option<std::borrow::Cow<'a, str>>>,
    has_attempt: Vec<bool>,
}

impl<'a> CompleteArgs<'a> {
    fn of(updates: &[&'a Update], host: &'a str) -> CompleteArgs<'a> {
        let mut m = CompleteArgs {
            host,
            seq: Vec::new(),
            state: Vec::new(),
            reason: Vec::new(),
            next_attempt_at: Vec::new(),
            now: Vec::new(),
            attempted: Vec::new(),
            plugin: Vec::new(),
            rendered: Vec::new(),
            content_type: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            started_at: Vec::new(),
            duration_ms: Vec::new(),
            status: Vec::new(),
            error_kind: Vec::new(),
            error: Vec::new(),
            response: Vec::new(),
            has_attempt: Vec::new(),
        };
        for u in updates {
            let a = Outcome::of(u);
            m.seq.push(u.seq);
            m.state.push(a.state);
            m.reason.push(a.reason);
            m.next_attempt_at.push(u.next_attempt_at);
            m.now.push(a.now);
            m.attempted.push(a.attempted);
            m.plugin.push(a.plugin);
            m.rendered.push(a.rendered);
            m.content_type.push(a.content_type);
            m.headers.push(a.headers);
            m.body.push(a.body);
            m.started_at.push(a.started_at);
            m.duration_ms.push(a.duration_ms);
            m.status.push(a.status);
            m.error_kind.push(a.error_kind);
            m.error.push(a.error);
            m.response.push(a.response);
            m.has_attempt.push(a.has_attempt);
        }
        m
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.seq,
            &self.state,
            &self.reason,
            &self.next_attempt_at,
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

/// One outcome's columns (see [`CompleteArgs`]).
struct Outcome<'a> {
    reason: Option<std::borrow::Cow<'a, str>>,
    error_kind: Option<std::borrow::Cow<'a, str>>,
    error: Option<std::borrow::Cow<'a, str>>,
    response: Option<std::borrow::Cow<'a, str>>,
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

impl<'a> Outcome<'a> {
    fn of(u: &'a Update) -> Outcome<'a> {
        let crate::store::schema::RenderColumns {
            rendered,
            content_type,
            headers,
            body,
            plugin,
        } = crate::store::schema::RenderColumns::of(u);
        let a = u.attempt.as_ref();
        Outcome {
            reason: u.reason.as_deref().map(text),
            error_kind: a.and_then(|a| a.error_kind.as_deref()).map(text),
            error: a.and_then(|a| a.error.as_deref()).map(text),
            response: a.and_then(|a| a.response.as_deref()).map(text),
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
}
