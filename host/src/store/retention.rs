//! Housekeeping in the background. Retention (`[store] retention`): finished
//! deliveries (delivered, skipped, failed) last changed longer ago than the
//! period, their attempts, and then the events no delivery refers to any more
//! are deleted. And the keys of the de-duplication window are dropped once it
//! ended.
//!
//! It never holds the writer long: rows go in small batches ([`BATCH`])
//! through the one writer, with a pause between batches, so ingest commits
//! keep their turn. Both tables are walked in seq order, their creation order:
//! a walk stops at the first row created inside the period. The newest row of
//! each table is never deleted: SQLite would give its seq to the next row, and
//! the queue's cursor (`seq > cursor`) would then miss that row.

use std::time::Duration;

use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use super::sqlite::SqliteStore as Store;
use crate::model::now_ms;

/// Rows read, and at most deleted, per trip to the writer.
const BATCH: i64 = 200;
/// The pause between batches: the writer's other work comes first.
const PAUSE: Duration = Duration::from_millis(10);
/// How often a pass runs (more often for a short period, at most every second).
const EVERY: Duration = Duration::from_secs(60);

/// Runs a pass now and then until `cancel`, on either back end.
pub async fn run(store: super::Store, retention: Option<Duration>, cancel: CancellationToken) {
    match store {
        super::Store::Sqlite(s) => run_sqlite(s, retention, cancel).await,
        super::Store::Pg(p) => p.housekeeping(retention, cancel).await,
    }
}

async fn run_sqlite(store: Store, retention: Option<Duration>, cancel: CancellationToken) {
    loop {
        if let Some(retention) = retention {
            match prune(&store, retention, &cancel).await {
                Ok((0, 0)) => {}
                Ok((deliveries, events)) => {
                    tracing::info!(
                        deliveries,
                        events,
                        "retention: old finished deliveries and their events deleted"
                    )
                }
                Err(e) => tracing::error!("retention: {e}"),
            }
        }
        loop {
            match store.write(prune_keys).await {
                Ok(n) if n as i64 == BATCH => tokio::time::sleep(PAUSE).await,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!("cannot drop the ended de-duplication keys: {e}");
                    break;
                }
            }
        }
        let every = retention.map_or(EVERY, |r| EVERY.min(r / 2).max(Duration::from_secs(1)));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One pass; how many deliveries and events it deleted.
pub async fn prune(
    store: &Store,
    retention: Duration,
    cancel: &CancellationToken,
) -> Result<(usize, usize), super::StoreError> {
    let cutoff = now_ms() - retention.as_millis() as i64;
    let mut counts = [0usize; 2];
    for (i, table) in [Table::Deliveries, Table::Events].into_iter().enumerate() {
        let mut after = 0i64;
        loop {
            if cancel.is_cancelled() {
                return Ok((counts[0], counts[1]));
            }
            let (n, last, done) = store.write(move |c| table.prune(c, after, cutoff)).await?;
            counts[i] += n;
            after = last;
            if done {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok((counts[0], counts[1]))
}

#[derive(Clone, Copy)]
enum Table {
    Deliveries,
    Events,
}

impl Table {
    /// Deletes what is prunable among the next batch after seq `after`:
    /// (deleted, last seq read, done).
    fn prune(
        self,
        c: &Connection,
        after: i64,
        cutoff: i64,
    ) -> rusqlite::Result<(usize, i64, bool)> {
        let sql = match self {
            Table::Deliveries => {
                "SELECT seq, created_at, state IN ('delivered', 'skipped', 'failed') AND updated_at < ?3 \
                 FROM deliveries WHERE seq > ?1 AND seq < (SELECT MAX(seq) FROM deliveries) ORDER BY seq LIMIT ?2"
            }
            Table::Events => {
                "SELECT seq, received_at, NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = events.seq) \
                 FROM events WHERE seq > ?1 AND seq < (SELECT MAX(seq) FROM events) ORDER BY seq LIMIT ?2"
            }
        };
        let rows: Vec<(i64, i64, bool)> = c
            .prepare_cached(sql)?
            .query_map(
                rusqlite::params_from_iter(match self {
                    Table::Deliveries => vec![after, BATCH, cutoff],
                    Table::Events => vec![after, BATCH],
                }),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let last = rows.last().map_or(after, |r| r.0);
        let mut done = (rows.len() as i64) < BATCH;
        let mut n = 0;
        for (seq, created, prunable) in rows {
            if created >= cutoff {
                done = true;
                break;
            }
            if !prunable {
                continue;
            }
            match self {
                Table::Deliveries => {
                    c.prepare_cached("DELETE FROM attempts WHERE delivery_seq = ?1")?
                        .execute([seq])?;
                    n += c
                        .prepare_cached("DELETE FROM deliveries WHERE seq = ?1")?
                        .execute([seq])?;
                }
                Table::Events => {
                    n += c
                        .prepare_cached("DELETE FROM events WHERE seq = ?1")?
                        .execute([seq])?;
                }
            }
        }
        Ok((n, last, done))
    }
}

/// Drops a batch of de-duplication keys whose window ended; how many.
fn prune_keys(c: &Connection) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "DELETE FROM event_keys WHERE key IN (SELECT key FROM event_keys WHERE expires_at <= ?1 LIMIT ?2)",
    )?
    .execute(params![now_ms(), BATCH])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::event::Event;
    use crate::model::{NewDelivery, State, Update, new_delivery_id, new_event_id};
    use crate::store::Ingested;

    const EVENT: &str = include_str!("../../../tests/fixtures/events/new_feed_entry.json");

    async fn ingest(store: &Store, client: &str) -> i64 {
        let event = Event::parse(new_event_id(), Bytes::from_static(EVENT.as_bytes())).unwrap();
        let d = NewDelivery {
            id: new_delivery_id(),
            client_id: client.into(),
        };
        match store
            .ingest(Arc::new(event), vec![d], None, None)
            .await
            .unwrap()
        {
            Ingested::Stored(seqs) => seqs[0],
            Ingested::Duplicate(_) => unreachable!(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn finished_rows_go_unfinished_ones_and_the_newest_stay_and_seqs_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        let mut seqs = Vec::new();
        for client in ["a", "b", "a", "a"] {
            seqs.push(ingest(&store, client).await);
        }
        // b's stays pending; a's are delivered.
        for (i, seq) in seqs.iter().enumerate() {
            if i != 1 {
                store
                    .update(Update::new(*seq, State::Delivered))
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (deliveries, events) =
            prune(&store, Duration::from_millis(1), &CancellationToken::new())
                .await
                .unwrap();
        // The newest delivery (and event) stay, whatever their state.
        assert_eq!((deliveries, events), (2, 2));
        let left: Vec<(i64, String)> = store
            .read(|c| {
                c.prepare("SELECT seq, state FROM deliveries ORDER BY seq")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await
            .unwrap();
        assert_eq!(
            left,
            [(seqs[1], "pending".into()), (seqs[3], "delivered".into())]
        );
        let events_left: i64 = store
            .read(|c| c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(
            events_left, 2,
            "the pending delivery's event and the newest"
        );
        // A new delivery takes a seq after every one given before.
        assert!(ingest(&store, "a").await > seqs[3]);
    }
}
