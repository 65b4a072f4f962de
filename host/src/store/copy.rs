//! `hookwasm migrate`: an embedded store copied into PostgreSQL, whole.
//!
//! Every table is read inside one SQLite read transaction (a consistent
//! snapshot, even beside a running host) and written with `COPY … FROM STDIN
//! (FORMAT binary)` inside one PostgreSQL transaction: the copy is all there
//! or not at all. Seqs are kept, so ids, order and references stay as they
//! were; the identity sequences then continue after them. The target must
//! hold no events, deliveries or clients yet.

use std::path::Path;

use anyhow::{Context, Result, bail};
use futures_util::pin_mut;
use rusqlite::types::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::pg::PgStore;

/// A column's PostgreSQL type, as the copy writes it.
#[derive(Clone, Copy)]
enum Col {
    Int,
    Text,
    Bytes,
    Bool,
}

/// A table: its name, SQLite's select, PostgreSQL's columns.
type Table = (&'static str, &'static str, &'static [(&'static str, Col)]);

/// What is copied, in this order.
const TABLES: &[Table] = {
    use Col::*;
    &[
        (
            "events",
            "SELECT seq, id, name, body, received_at FROM events ORDER BY seq",
            &[
                ("seq", Int),
                ("id", Text),
                ("name", Text),
                ("body", Bytes),
                ("received_at", Int),
            ],
        ),
        (
            "deliveries",
            "SELECT seq, id, event_seq, client_id, state, reason, plugin, rendered, content_type, headers, body, \
             attempts, next_attempt_at, created_at, updated_at FROM deliveries ORDER BY seq",
            &[
                ("seq", Int),
                ("id", Text),
                ("event_seq", Int),
                ("client_id", Text),
                ("state", Text),
                ("reason", Text),
                ("plugin", Text),
                ("rendered", Bool),
                ("content_type", Text),
                ("headers", Text),
                ("body", Bytes),
                ("attempts", Int),
                ("next_attempt_at", Int),
                ("created_at", Int),
                ("updated_at", Int),
            ],
        ),
        (
            "attempts",
            "SELECT delivery_seq, n, started_at, duration_ms, status, error_kind, error, response FROM attempts",
            &[
                ("delivery_seq", Int),
                ("n", Int),
                ("started_at", Int),
                ("duration_ms", Int),
                ("status", Int),
                ("error_kind", Text),
                ("error", Text),
                ("response", Text),
            ],
        ),
        (
            "client_state",
            "SELECT client_id, disabled_at, disabled_reason, failing_since, plugin_version FROM client_state",
            &[
                ("client_id", Text),
                ("disabled_at", Int),
                ("disabled_reason", Text),
                ("failing_since", Int),
                ("plugin_version", Text),
            ],
        ),
        (
            "api_clients",
            "SELECT id, spec, created_at, updated_at, deleted_at FROM api_clients",
            &[
                ("id", Text),
                ("spec", Text),
                ("created_at", Int),
                ("updated_at", Int),
                ("deleted_at", Int),
            ],
        ),
        (
            "client_secrets",
            "SELECT rowid, client_id, secret, created_at, expires_at FROM client_secrets",
            &[
                ("seq", Int),
                ("client_id", Text),
                ("secret", Text),
                ("created_at", Int),
                ("expires_at", Int),
            ],
        ),
        (
            "client_tokens",
            "SELECT id, client_id, hash, label, created_at FROM client_tokens",
            &[
                ("id", Text),
                ("client_id", Text),
                ("hash", Text),
                ("label", Text),
                ("created_at", Int),
            ],
        ),
        (
            "plugin_blobs",
            "SELECT version, bytes, world, created_at FROM plugin_blobs",
            &[
                ("version", Text),
                ("bytes", Bytes),
                ("world", Text),
                ("created_at", Int),
            ],
        ),
        (
            "client_plugins",
            "SELECT client_id, version, uploaded_at FROM client_plugins",
            &[("client_id", Text), ("version", Text), ("uploaded_at", Int)],
        ),
        (
            "event_keys",
            "SELECT key, event_id, expires_at FROM event_keys",
            &[("key", Text), ("event_id", Text), ("expires_at", Int)],
        ),
    ]
};

/// Rows per trip from the SQLite reader to the copy.
const CHUNK: usize = 1000;

/// One table's rows before and after.
pub struct Counted {
    pub table: &'static str,
    pub from: i64,
    pub to: i64,
}

/// Copies the store at `from` into the PostgreSQL store at `to`; `total` is
/// told the number of rows once, `progress` each chunk copied. Returns each
/// table's counts on both sides, read after the commit.
pub async fn sqlite_to_pg(
    from: &Path,
    to: &str,
    total: impl Fn(u64),
    progress: impl Fn(u64),
) -> Result<Vec<Counted>> {
    if !from.is_file() {
        bail!("no store at {}", from.display());
    }
    // Brings an older file to the current schema first (as a host would).
    drop(super::sqlite::SqliteStore::open(from)?);
    let reader = super::schema::open(from, false)?;
    reader.execute_batch("BEGIN")?;
    let mut counts = Vec::new();
    for (table, _, _) in TABLES {
        let n: i64 =
            reader.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        counts.push(n);
    }
    total(counts.iter().sum::<i64>() as u64);

    let pg = PgStore::open(to, std::time::Duration::from_secs(15), false).await?;
    let mut conn = pg.connection().await?;
    let tx = conn.transaction().await?;
    let used: i64 = tx
        .query_one(
            "SELECT (SELECT COUNT(*) FROM events) + (SELECT COUNT(*) FROM deliveries) + (SELECT COUNT(*) FROM api_clients)",
            &[],
        )
        .await?
        .get(0);
    if used > 0 {
        bail!(
            "the PostgreSQL store {} already holds events, deliveries or clients: migrate into an empty database",
            pg.describe()
        );
    }
    for (table, select, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let types: Vec<Type> = cols
            .iter()
            .map(|(_, c)| match c {
                Col::Int => Type::INT8,
                Col::Text => Type::TEXT,
                Col::Bytes => Type::BYTEA,
                Col::Bool => Type::BOOL,
            })
            .collect();
        let sink = tx
            .copy_in(&format!(
                "COPY {table} ({}) FROM STDIN (FORMAT binary)",
                names.join(", ")
            ))
            .await
            .with_context(|| format!("copying {table}"))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let mut stmt = reader.prepare(select)?;
        let mut rows = stmt.query([])?;
        let mut done = 0u64;
        while let Some(row) = rows.next()? {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(cols.len());
            for (i, (name, col)) in cols.iter().enumerate() {
                values.push(value(row.get::<_, Value>(i)?, *col).with_context(|| {
                    format!("{table}.{name} of row {} does not fit its column", done + 1)
                })?);
            }
            let refs: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            writer.as_mut().write(&refs).await?;
            done += 1;
            if done.is_multiple_of(CHUNK as u64) {
                progress(CHUNK as u64);
            }
        }
        writer.finish().await?;
        progress(done % CHUNK as u64);
    }
    // The identities continue after the copied seqs.
    for (table, column) in [
        ("events", "seq"),
        ("deliveries", "seq"),
        ("client_secrets", "seq"),
    ] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )
        .await?;
    }
    tx.execute("SELECT pg_notify('hookwasm_clients', '')", &[])
        .await?;
    tx.commit().await?;
    reader.execute_batch("COMMIT")?;
    // The planner's statistics of what was copied, now rather than at
    // autovacuum's first pass: the hosts' plans are made on their first
    // statements, and without statistics a claim may read a client's history.
    conn.batch_execute("ANALYZE").await?;

    let mut out = Vec::new();
    for ((table, _, _), from) in TABLES.iter().zip(counts) {
        let to: i64 = conn
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await?
            .get(0);
        out.push(Counted { table, from, to });
    }
    Ok(out)
}

/// A SQLite value as its PostgreSQL column takes it.
fn value(v: Value, col: Col) -> Result<Box<dyn ToSql + Sync + Send>> {
    Ok(match (v, col) {
        (Value::Null, Col::Int) => Box::new(None::<i64>),
        (Value::Null, Col::Text) => Box::new(None::<String>),
        (Value::Null, Col::Bytes) => Box::new(None::<Vec<u8>>),
        (Value::Null, Col::Bool) => Box::new(None::<bool>),
        (Value::Integer(i), Col::Int) => Box::new(i),
        (Value::Integer(i), Col::Bool) => Box::new(i != 0),
        (Value::Text(t), Col::Text) => Box::new(super::pg::text(&t).into_owned()),
        (Value::Blob(b), Col::Bytes) => Box::new(b),
        // SQLite is loose about types; the host writes text as text, but a
        // body may have gone in as text through an older path.
        (Value::Text(t), Col::Bytes) => Box::new(t.into_bytes()),
        (Value::Blob(b), Col::Text) => {
            Box::new(super::pg::text(&String::from_utf8(b)?).into_owned())
        }
        (v, _) => bail!("unexpected {:?}", v.data_type()),
    })
}
