//! Read-side queries for the command line: what happened to which delivery.
//! They open their own connection, so they work beside a running host.

use std::path::Path;

use anyhow::{Result, bail};
use rusqlite::{Connection, params};
use serde::Serialize;

use super::schema;

#[derive(Debug, Serialize)]
pub struct DeliveryRow {
    pub id: String,
    pub seq: i64,
    pub event_id: String,
    pub event: String,
    pub client_id: String,
    pub state: String,
    pub reason: Option<String>,
    pub plugin: Option<String>,
    pub attempts: Vec<AttemptRow>,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Serialize)]
pub struct AttemptRow {
    pub n: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<i64>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClientRow {
    pub client_id: String,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<i64>,
    pub counts: Vec<(String, i64)>,
}

pub struct Inspector {
    conn: Connection,
}

impl Inspector {
    pub fn open(path: &Path) -> Result<Inspector> {
        if !path.exists() {
            bail!(
                "no store at {}: the host has not run with this config yet",
                path.display()
            );
        }
        Ok(Inspector {
            conn: schema::open(path, false)?,
        })
    }

    /// Newest first.
    pub fn deliveries(
        &self,
        client: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT d.id, d.seq, e.id, e.name, d.client_id, d.state, d.reason, d.plugin, d.next_attempt_at, d.created_at \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE (?1 IS NULL OR d.client_id = ?1) AND (?2 IS NULL OR d.state = ?2) \
             ORDER BY d.seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![client, state, limit as i64], |r| {
            Ok(DeliveryRow {
                id: r.get(0)?,
                seq: r.get(1)?,
                event_id: r.get(2)?,
                event: r.get(3)?,
                client_id: r.get(4)?,
                state: r.get(5)?,
                reason: r.get(6)?,
                plugin: r.get(7)?,
                next_attempt_at: r.get(8)?,
                created_at: r.get(9)?,
                attempts: Vec::new(),
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let mut att = self.conn.prepare(
            "SELECT n, started_at, duration_ms, status, error_kind, error, response FROM attempts \
             WHERE delivery_seq = ?1 ORDER BY n",
        )?;
        for d in &mut out {
            d.attempts = att
                .query_map([d.seq], |r| {
                    Ok(AttemptRow {
                        n: r.get(0)?,
                        started_at: r.get(1)?,
                        duration_ms: r.get(2)?,
                        status: r.get(3)?,
                        error_kind: r.get(4)?,
                        error: r.get(5)?,
                        response: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(out)
    }

    /// The seqs of one delivery by id, or of a client's deliveries since a time.
    pub fn select(
        &self,
        delivery: Option<&str>,
        client: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare(
            "SELECT seq FROM deliveries WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR client_id = ?2) \
             AND (?3 IS NULL OR created_at >= ?3) ORDER BY seq",
        )?;
        let seqs = stmt
            .query_map(params![delivery, client, since_ms], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(seqs)
    }

    pub fn clients(&self, ids: &[String]) -> Result<Vec<ClientRow>> {
        let mut out = Vec::new();
        for id in ids {
            let (disabled_reason, failing_since) = self
                .conn
                .query_row(
                    "SELECT disabled_reason, failing_since FROM client_state WHERE client_id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap_or((None, None));
            let mut stmt =
                self.conn.prepare("SELECT state, COUNT(*) FROM deliveries WHERE client_id = ?1 GROUP BY state ORDER BY state")?;
            let counts = stmt
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(ClientRow {
                client_id: id.clone(),
                disabled_reason,
                failing_since,
                counts,
            });
        }
        Ok(out)
    }
}
