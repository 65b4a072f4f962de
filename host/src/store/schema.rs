//! The SQLite schema, its migrations, and the statements the writer runs.
//!
//! Migrations are numbered by `PRAGMA user_version`; each runs once, in order, in
//! a transaction. A released migration is never edited: add the next one.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::event::Event;
use crate::model::{NewDelivery, Update, now_ms};

const MIGRATIONS: &[&str] = &[
    // 1: events, deliveries, attempts, client health.
    r#"
    -- Ids (evt_…, msg_…) are ULIDs, unique by construction: they are not indexed,
    -- so ingest writes one B-tree per table. Lookups by id are for the command
    -- line, which can afford a scan.
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        id          TEXT NOT NULL,
        name        TEXT NOT NULL,
        body        BLOB NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE TABLE deliveries (
        seq             INTEGER PRIMARY KEY,
        id              TEXT NOT NULL,
        event_seq       INTEGER NOT NULL REFERENCES events(seq),
        client_id       TEXT NOT NULL,
        state           TEXT NOT NULL,
        reason          TEXT,
        plugin          TEXT,
        rendered        INTEGER NOT NULL DEFAULT 0,
        content_type    TEXT,
        headers         TEXT,
        body            BLOB,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    -- Partial indexes: only unfinished deliveries are in them, so they stay small
    -- however long the history, and finishing one costs a delete, not a move.
    CREATE INDEX deliveries_work ON deliveries (client_id, state, seq)
        WHERE state IN ('pending', 'held', 'plugin_error');
    CREATE INDEX deliveries_retry ON deliveries (client_id, next_attempt_at) WHERE state = 'retrying';
    CREATE TABLE attempts (
        delivery_seq INTEGER NOT NULL REFERENCES deliveries(seq),
        n            INTEGER NOT NULL,
        started_at   INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        status       INTEGER,
        error_kind   TEXT,
        error        TEXT,
        response     TEXT,
        PRIMARY KEY (delivery_seq, n)
    ) WITHOUT ROWID;
    CREATE TABLE client_state (
        client_id       TEXT PRIMARY KEY,
        disabled_at     INTEGER,
        disabled_reason TEXT,
        failing_since   INTEGER
    );
    "#,
    // 2: what the HTTP API manages (clients, their tokens, secrets and uploaded
    // plugins), and the lookups it makes by id and by client.
    r#"
    -- The lookups of the API. The ids are time-ordered, so each of these grows
    -- at its right edge: a cheap append per event, not a random B-tree insert.
    CREATE INDEX events_id ON events (id);
    CREATE INDEX deliveries_id ON deliveries (id);
    CREATE INDEX deliveries_client ON deliveries (client_id, seq);
    -- Clients created through the API; those of the config file are not here.
    -- `spec` is the client's [[clients]] table as JSON, secrets left out. A
    -- deleted one stays as a tombstone (deleted_at): its id is not given again,
    -- so no later client inherits its history.
    CREATE TABLE api_clients (
        id         TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    -- Signing secrets of API clients; a rotated-out one signs until it expires.
    CREATE TABLE client_secrets (
        client_id  TEXT NOT NULL,
        secret     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    );
    CREATE INDEX client_secrets_client ON client_secrets (client_id);
    -- A client's API tokens, by the SHA-256 of the token: the token itself is
    -- shown once and never stored.
    CREATE TABLE client_tokens (
        id         TEXT PRIMARY KEY,
        client_id  TEXT NOT NULL,
        hash       TEXT NOT NULL UNIQUE,
        label      TEXT,
        created_at INTEGER NOT NULL
    );
    -- Uploaded plugins by content hash, shared by whoever uploads the same bytes,
    -- and which client uploaded which; client_state says which one is active.
    CREATE TABLE plugin_blobs (
        version    TEXT PRIMARY KEY,
        bytes      BLOB NOT NULL,
        world      TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE client_plugins (
        client_id   TEXT NOT NULL,
        version     TEXT NOT NULL,
        uploaded_at INTEGER NOT NULL,
        PRIMARY KEY (client_id, version)
    ) WITHOUT ROWID;
    ALTER TABLE client_state ADD COLUMN plugin_version TEXT;
    -- The de-duplication window of POST /v1/events: an event's own identity
    -- (the envelope's instance, URL and webhookId, or a hash of the body) and
    -- the event that first came with it, until the window ends.
    CREATE TABLE event_keys (
        key        TEXT PRIMARY KEY,
        event_id   TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX event_keys_expiry ON event_keys (expires_at);
    -- Retention finds whether an event still has deliveries. event_seq grows
    -- with every ingest, so this index too grows at its right edge.
    CREATE INDEX deliveries_event ON deliveries (event_seq);
    -- /readyz writes here: a probe that the store takes writes.
    CREATE TABLE probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
    "#,
    // 3: the index of unfinished work, the same rows, its WHERE written without an
    // IN list of three (see `unfinished!`).
    r#"
    DROP INDEX IF EXISTS deliveries_work;
    CREATE INDEX deliveries_work ON deliveries (client_id, state, seq)
        WHERE (state IN ('pending', 'held') OR state = 'plugin_error');
    "#,
];

/// The WHERE of `deliveries_work`, the partial index of unfinished deliveries. A
/// query uses a partial index only when its own WHERE implies the index's, which
/// SQLite checks term by term, so the queries of unfinished work include this
/// predicate whole (`concat!(…, unfinished!(), …)`, so they stay `&'static str`).
///
/// Not `state IN ('pending', 'held', 'plugin_error')`: SQLite tests a row against
/// an IN list of more than two constants through a temporary B-tree, which it
/// builds afresh each time a statement runs. Every insert of a delivery and every
/// update of one evaluates this WHERE (twice for an update: the row before and
/// after), so that was three temporary B-trees per event, each with its own page
/// cache, 2.6 % of the host's CPU under load (issue #15, BENCHMARKS.md).
macro_rules! unfinished {
    () => {
        "(state IN ('pending', 'held') OR state = 'plugin_error')"
    };
}
pub(super) use unfinished;

/// The writer's page cache, in KiB as `PRAGMA cache_size` takes it (negative).
const WRITER_CACHE_KIB: i64 = -2000;

/// Opens a connection with the settings every connection needs.
pub fn open(path: &Path, create: bool) -> Result<Connection> {
    open_with(path, create, None)
}

/// Opens the store's writer connection, creating the store if need be: its WAL
/// writes go out in one system call per commit, or a few for a big one (see
/// [`super::vfs`]), which is sound only with `synchronous=FULL`.
pub fn open_writer(path: &Path) -> Result<Connection> {
    let conn = open_with(path, true, super::vfs::gathering())?;
    let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    anyhow::ensure!(
        synchronous >= 2,
        "the store's writer must sync every commit (synchronous=FULL)"
    );
    // SQLite's own default; a build or URI without it would pad commits and
    // write past the sync the gathering VFS relies on.
    let mut psow: std::ffi::c_int = -1;
    // SAFETY: the connection is open; the op reads and sets one int.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_POWERSAFE_OVERWRITE,
            (&mut psow as *mut std::ffi::c_int).cast(),
        )
    };
    anyhow::ensure!(
        rc == rusqlite::ffi::SQLITE_OK && psow == 1,
        "the store's writer needs SQLite's powersafe overwrite (psow=1)"
    );
    super::vfs::forget_on_rollback(&conn);
    Ok(conn)
}

/// Gives the writer, once migrated, a smaller page cache than the readers'.
/// (After the migrations: an index they create sorts in runs the size of the
/// cache.)
pub fn shrink_writer_cache(conn: &Connection) -> Result<()> {
    // A smaller page cache than the readers': the writer touches the right
    // edges of a few tables and indexes, and at every commit SQLite walks this
    // cache's whole hash table (pcache1TruncateUnsafe), at 16 MiB about 1 % of
    // the host's CPU under load (issue #15, BENCHMARKS.md). A batch bigger than
    // the cache spills to the WAL early, which costs writes, not correctness.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    Ok(())
}

fn open_with(path: &Path, create: bool, vfs: Option<&std::ffi::CStr>) -> Result<Connection> {
    use rusqlite::OpenFlags as F;
    let mut flags = F::SQLITE_OPEN_READ_WRITE | F::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= F::SQLITE_OPEN_CREATE;
    }
    let conn = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
        None => Connection::open_with_flags(path, flags),
    }
    .with_context(|| format!("cannot open the store {}", path.display()))?;
    // WAL: readers never block the writer. synchronous=FULL: a commit is on disk
    // (fsync'd) before the host says 202; group commit keeps that affordable.
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("{} is not a usable SQLite database", path.display()))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The host is the only writer and keeps references sound itself; enforcing
    // them would cost a lookup per insert on the hot path.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -16384)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "the store is at schema version {version}, newer than this hookwasm knows ({}); run a newer hookwasm",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        if version > 0 {
            tracing::info!("migrating the store to schema version {}", i + 1);
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// What an ingest did.
pub enum Ingested {
    /// Stored, with the seqs of its deliveries.
    Stored(Vec<i64>),
    /// Inside the de-duplication window of this earlier event: nothing stored.
    Duplicate(String),
}

const INSERT_DELIVERY: &str = "INSERT INTO deliveries (id, event_seq, client_id, state, created_at, updated_at) \
     VALUES (?1, ?2, ?3, 'pending', ?4, ?4)";

const UPDATE_DELIVERY: &str = "UPDATE deliveries SET state = ?2, reason = ?3, next_attempt_at = ?4, updated_at = ?5, \
     attempts = attempts + ?6, plugin = COALESCE(?7, plugin), rendered = rendered OR ?8, \
     content_type = CASE WHEN ?8 THEN ?9 ELSE content_type END, \
     headers = CASE WHEN ?8 THEN ?10 ELSE headers END, \
     body = CASE WHEN ?8 THEN ?11 ELSE body END \
     WHERE seq = ?1";

/// The writer's statements on the event path, prepared once for its life.
/// rusqlite's statement cache finds a statement by hashing and comparing its
/// whole text, and takes it out and puts it back, at every use: 4.6 % of the
/// writer's CPU under load (issue #15, BENCHMARKS.md).
pub struct Statements<'c> {
    seen_key: rusqlite::Statement<'c>,
    keep_key: rusqlite::Statement<'c>,
    insert_event: rusqlite::Statement<'c>,
    insert_delivery: rusqlite::Statement<'c>,
    insert_attempt: rusqlite::Statement<'c>,
    update_delivery: rusqlite::Statement<'c>,
}

impl<'c> Statements<'c> {
    pub fn prepare(conn: &'c Connection) -> rusqlite::Result<Statements<'c>> {
        Ok(Statements {
            seen_key: conn
                .prepare("SELECT event_id FROM event_keys WHERE key = ?1 AND expires_at > ?2")?,
            keep_key: conn.prepare(
                "INSERT INTO event_keys (key, event_id, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET event_id = ?2, expires_at = ?3",
            )?,
            insert_event: conn.prepare(
                "INSERT INTO events (id, name, body, received_at) VALUES (?1, ?2, ?3, ?4)",
            )?,
            insert_delivery: conn.prepare(INSERT_DELIVERY)?,
            insert_attempt: conn.prepare(
                "INSERT INTO attempts (delivery_seq, n, started_at, duration_ms, status, error_kind, error, response) \
                 VALUES (?1, (SELECT IFNULL(MAX(n), 0) + 1 FROM attempts WHERE delivery_seq = ?1), ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            update_delivery: conn.prepare(UPDATE_DELIVERY)?,
        })
    }
}

pub fn insert_event(
    st: &mut Statements,
    event: &Event,
    received_at: i64,
    deliveries: &[NewDelivery],
    dedup: Option<&(String, i64)>,
) -> rusqlite::Result<Ingested> {
    if let Some((key, until)) = dedup {
        let seen: Option<String> = st
            .seen_key
            .query_row(params![key, received_at], |r| r.get(0))
            .optional()?;
        if let Some(first) = seen {
            return Ok(Ingested::Duplicate(first));
        }
        st.keep_key.execute(params![key, event.id, until])?;
    }
    let event_seq =
        st.insert_event
            .insert(params![event.id, event.name, &event.raw[..], received_at])?;
    let mut seqs = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        seqs.push(
            st.insert_delivery
                .insert(params![d.id, event_seq, d.client_id, received_at])?,
        );
    }
    Ok(Ingested::Stored(seqs))
}

pub fn apply_update(st: &mut Statements, u: &Update) -> rusqlite::Result<()> {
    if let Some(a) = &u.attempt {
        st.insert_attempt.execute(params![
            u.seq,
            a.started_at,
            a.duration_ms,
            a.status,
            a.error_kind,
            a.error,
            a.response
        ])?;
    }
    let RenderColumns {
        rendered,
        content_type,
        headers,
        body,
        plugin,
    } = RenderColumns::of(u);
    st.update_delivery.execute(params![
        u.seq,
        u.state.as_str(),
        u.reason,
        u.next_attempt_at,
        now_ms(),
        u.attempt.is_some() as i64,
        plugin,
        rendered,
        content_type,
        headers,
        body,
    ])?;
    Ok(())
}

/// What an update stores of its rendering, in both back ends' columns.
pub(super) struct RenderColumns<'a> {
    pub rendered: bool,
    pub content_type: Option<&'a str>,
    /// The headers as JSON.
    pub headers: Option<String>,
    /// `None`: the event's own body went out.
    pub body: Option<&'a [u8]>,
    pub plugin: Option<&'a str>,
}

impl<'a> RenderColumns<'a> {
    pub fn of(u: &'a Update) -> RenderColumns<'a> {
        match &u.render {
            // A body equal to the event's own is not stored twice (NULL means "the
            // event's body"): passthrough plugins and plugin-less clients cost nothing.
            Some(r) => RenderColumns {
                rendered: true,
                content_type: r.request.content_type.as_deref(),
                headers: Some(
                    serde_json::to_string(&r.request.headers).unwrap_or_else(|_| "[]".into()),
                ),
                body: (!u.render_is_event_body).then_some(&r.request.body[..]),
                plugin: r.plugin.as_deref().or(u.plugin.as_deref()),
            },
            None => RenderColumns {
                rendered: false,
                content_type: None,
                headers: None,
                body: None,
                plugin: u.plugin.as_deref(),
            },
        }
    }
}

pub fn set_client(
    tx: &Connection,
    client_id: &str,
    disabled: Option<&str>,
    failing_since: Option<i64>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO client_state (client_id, disabled_at, disabled_reason, failing_since) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (client_id) DO UPDATE SET disabled_at = ?2, disabled_reason = ?3, failing_since = ?4",
    )?
    .execute(params![client_id, disabled.map(|_| now_ms()), disabled, failing_since])?;
    Ok(())
}

/// Makes deliveries due again. Rendered ones are resent as stored, now; the
/// others are parked as `held`, so the client's worker renders them afresh with
/// the plugin it has. Pending ones are left alone: they are on their way.
pub fn replay(tx: &Connection, seqs: &[i64]) -> rusqlite::Result<usize> {
    let now = now_ms();
    let mut n = 0;
    let mut stmt = tx.prepare_cached(
        "UPDATE deliveries SET state = CASE WHEN rendered = 1 THEN 'retrying' ELSE 'held' END, \
         plugin = CASE WHEN rendered = 1 THEN plugin ELSE NULL END, \
         next_attempt_at = ?2, reason = 'replayed', updated_at = ?2 \
         WHERE seq = ?1 AND state != 'pending'",
    )?;
    for seq in seqs {
        n += stmt.execute(params![seq, now])?;
    }
    Ok(n)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::store) fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("s.db"), true).unwrap();
        migrate(&mut conn).unwrap();
        (dir, conn)
    }

    /// Column `col` of every row of `sql`, its parameters all NULL: with
    /// `EXPLAIN` in front, the opcodes SQLite would run (column 1) or, with
    /// `EXPLAIN QUERY PLAN`, its plan (column 3).
    pub(in crate::store) fn column<T: rusqlite::types::FromSql>(
        conn: &Connection,
        sql: &str,
        col: usize,
    ) -> Vec<T> {
        let mut stmt = conn.prepare(sql).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get(col))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn the_event_path_builds_no_temporary_btree() {
        let (_dir, conn) = store();
        for sql in [INSERT_DELIVERY, UPDATE_DELIVERY] {
            let ops: Vec<String> = column(&conn, &format!("EXPLAIN {sql}"), 1);
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql} builds a temporary B-tree: {ops:?}"
            );
        }
    }

    /// `.cargo/config.toml` builds the bundled SQLite without the global page
    /// cache mutex and the memory statistics; a build that missed it (run from
    /// outside the project, or with `LIBSQLITE3_FLAGS` set by hand) shows here.
    #[test]
    fn sqlite_is_built_with_the_projects_flags() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = column(&conn, "PRAGMA compile_options", 0);
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    #[test]
    fn migration_3_keeps_the_unfinished_deliveries_in_the_work_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("s.db"), true).unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        for (seq, state) in [
            (1, "pending"),
            (2, "delivered"),
            (3, "held"),
            (4, "plugin_error"),
            (5, "retrying"),
        ] {
            conn.execute(
                "INSERT INTO deliveries (seq, id, event_seq, client_id, state, created_at, updated_at) \
                 VALUES (?1, 'msg', 1, 'c', ?2, 0, 0)",
                params![seq, state],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let sql = concat!(
            "SELECT seq FROM deliveries INDEXED BY deliveries_work WHERE ",
            unfinished!(),
            " ORDER BY seq"
        );
        let seqs: Vec<i64> = column(&conn, sql, 0);
        assert_eq!(seqs, [1, 3, 4]);
    }
}
