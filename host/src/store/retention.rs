//! Housekeeping in the background. Retention (`[store] retention`): finished
//! deliveries (delivered, skipped, failed) last changed longer ago than the
//! period, their attempts, and the events no delivery refers to any more are
//! deleted. And the keys of the de-duplication window are dropped once it ended.
//!
//! It never holds the writer long: rows go in batches of [`BATCH`] through the
//! one writer, with a pause between batches, so ingest commits keep their turn.
//! Deliveries are walked in seq order, which is their creation order: the walk
//! stops at the first one created inside the period. Events are deleted below
//! the oldest delivery left, since a delivery is written with its event (with
//! one writer, in the same order); an event older than every delivery left has
//! none.

use std::time::Duration;

use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::model::now_ms;

/// Rows read, and at most deleted, per trip to the writer.
const BATCH: i64 = 1000;
/// The pause between batches: the writer's other work comes first.
const PAUSE: Duration = Duration::from_millis(20);
/// How often a pass runs.
const EVERY: Duration = Duration::from_secs(60);

/// Runs a pass now and then until `cancel`.
pub async fn run(store: Store, retention: Option<Duration>, cancel: CancellationToken) {
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
        // A short period is pruned more often (at most every second).
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
    let (mut deliveries, mut events, mut after) = (0, 0, 0i64);
    loop {
        if cancel.is_cancelled() {
            return Ok((deliveries, events));
        }
        let (n, last, done) = store
            .write(move |c| prune_deliveries(c, after, cutoff))
            .await?;
        deliveries += n;
        after = last;
        if done {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let n = store.write(move |c| prune_events(c, cutoff)).await?;
        events += n;
        if n < BATCH as usize {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok((deliveries, events))
}

/// Deletes the finished deliveries older than `cutoff` among the next batch
/// after seq `after`, with their attempts: (deleted, last seq read, done).
fn prune_deliveries(
    c: &Connection,
    after: i64,
    cutoff: i64,
) -> rusqlite::Result<(usize, i64, bool)> {
    let rows: Vec<(i64, String, i64, i64)> = c
        .prepare_cached(
            "SELECT seq, state, updated_at, created_at FROM deliveries WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![after, BATCH], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let last = rows.last().map_or(after, |r| r.0);
    let mut done = (rows.len() as i64) < BATCH;
    let mut n = 0;
    for (seq, state, updated_at, created_at) in rows {
        if created_at >= cutoff {
            done = true;
            break;
        }
        if matches!(state.as_str(), "delivered" | "skipped" | "failed") && updated_at < cutoff {
            c.prepare_cached("DELETE FROM attempts WHERE delivery_seq = ?1")?
                .execute([seq])?;
            n += c
                .prepare_cached("DELETE FROM deliveries WHERE seq = ?1")?
                .execute([seq])?;
        }
    }
    Ok((n, last, done))
}

/// Deletes a batch of events received before `cutoff` that are older than the
/// oldest delivery left; how many.
fn prune_events(c: &Connection, cutoff: i64) -> rusqlite::Result<usize> {
    let bound: Option<i64> = c
        .query_row(
            "SELECT event_seq FROM deliveries ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    c.prepare_cached(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ?1 AND received_at < ?2 ORDER BY seq LIMIT ?3)",
    )?
    .execute(params![bound.unwrap_or(i64::MAX), cutoff, BATCH])
}

/// Drops a batch of de-duplication keys whose window ended; how many.
fn prune_keys(c: &Connection) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "DELETE FROM event_keys WHERE key IN (SELECT key FROM event_keys WHERE expires_at <= ?1 LIMIT ?2)",
    )?
    .execute(params![now_ms(), BATCH])
}
