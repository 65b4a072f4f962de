//! Read-side queries on the embedded store: what happened to which delivery.
//! The functions take a connection (the store's own read connection, beside
//! the writer); the row types are both back ends'.

use rusqlite::{Connection, params};
use serde::Serialize;

/// A delivery as the API and `hookwasm deliveries --json` show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryRow {
    /// `msg_…`, the `webhook-id`.
    pub id: String,
    /// Its place in the store: the paging order.
    pub seq: i64,
    pub event_id: String,
    /// The event's name.
    pub event: String,
    pub client_id: String,
    /// pending, held, plugin_error, retrying, delivered, skipped, failed.
    pub state: String,
    pub reason: Option<String>,
    /// `file@hash` or `upload@version` of the plugin that rendered it.
    pub plugin: Option<String>,
    pub attempts: Vec<AttemptRow>,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
}

/// The stored rendering and the original event, for one delivery's page.
#[derive(Debug, Serialize)]
pub struct Detail {
    /// The event as received (lossy UTF-8: it was checked UTF-8 at ingest).
    pub event_body: String,
    pub received_at: i64,
    /// What is sent on every attempt, once rendered.
    pub rendered: Option<RenderedRow>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenderedRow {
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Which deliveries to list: every field narrows; newest first, before `cursor`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub client: Option<String>,
    pub state: Option<String>,
    pub event: Option<String>,
    /// Created at or after (ms).
    pub since: Option<i64>,
    /// Created before (ms).
    pub until: Option<i64>,
    /// Only seqs below this one: the previous page's last.
    pub cursor: Option<i64>,
    pub limit: usize,
}

/// Deliveries matching `f`, newest first, each with its attempts.
pub fn list(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<DeliveryRow>> {
    use rusqlite::types::Value;
    // Built clause by clause, so that a client's listing walks the
    // (client_id, seq) index instead of every delivery.
    let mut sql = String::from(
        "SELECT d.id, d.seq, e.id, e.name, d.client_id, d.state, d.reason, d.plugin, d.next_attempt_at, d.created_at \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE 1",
    );
    let mut args: Vec<Value> = Vec::new();
    let mut clause = |sql_part: &str, v: Value| {
        args.push(v);
        sql.push_str(&format!(" AND {sql_part} ?{}", args.len()));
    };
    if let Some(c) = &f.client {
        clause("d.client_id =", Value::Text(c.clone()));
    }
    if let Some(s) = &f.state {
        clause("d.state =", Value::Text(s.clone()));
    }
    if let Some(e) = &f.event {
        clause("e.name =", Value::Text(e.clone()));
    }
    if let Some(t) = f.since {
        clause("d.created_at >=", Value::Integer(t));
    }
    if let Some(t) = f.until {
        clause("d.created_at <", Value::Integer(t));
    }
    if let Some(c) = f.cursor {
        clause("d.seq <", Value::Integer(c));
    }
    args.push(Value::Integer(f.limit as i64));
    sql.push_str(&format!(" ORDER BY d.seq DESC LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row)?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    for d in &mut out {
        d.attempts = attempts(conn, d.seq)?;
    }
    Ok(out)
}

/// One delivery by id (and of `client`, when given), with its attempts, its
/// event and its rendering.
pub fn one(
    conn: &Connection,
    id: &str,
    client: Option<&str>,
) -> rusqlite::Result<Option<(DeliveryRow, Detail)>> {
    use rusqlite::OptionalExtension;
    let found = conn
        .query_row(
            "SELECT d.id, d.seq, e.id, e.name, d.client_id, d.state, d.reason, d.plugin, d.next_attempt_at, d.created_at, \
                    e.body, e.received_at, d.rendered, d.content_type, d.headers, d.body \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE d.id = ?1 AND (?2 IS NULL OR d.client_id = ?2)",
            params![id, client],
            |r| {
                let event_body: Vec<u8> = r.get(10)?;
                let event_body = String::from_utf8_lossy(&event_body).into_owned();
                let rendered = r.get::<_, bool>(12)?.then(|| -> rusqlite::Result<RenderedRow> {
                    let body: Option<Vec<u8>> = r.get(15)?;
                    let headers: Option<String> = r.get(14)?;
                    Ok(RenderedRow {
                        content_type: r
                            .get::<_, Option<String>>(13)?
                            .unwrap_or_else(|| "application/json".into()),
                        headers: headers
                            .and_then(|h| serde_json::from_str(&h).ok())
                            .unwrap_or_default(),
                        // NULL: the event's own bytes went out.
                        body: body
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_else(|| event_body.clone()),
                    })
                });
                Ok((
                    row(r)?,
                    Detail {
                        rendered: rendered.transpose()?,
                        event_body,
                        received_at: r.get(11)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some((mut d, detail)) = found else {
        return Ok(None);
    };
    d.attempts = attempts(conn, d.seq)?;
    Ok(Some((d, detail)))
}

/// The seqs of the deliveries to replay: one by id, or those of a client, a
/// time and a state; every filter given narrows.
pub fn select(
    conn: &Connection,
    delivery: Option<&str>,
    client: Option<&str>,
    since_ms: Option<i64>,
    state: Option<&str>,
) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM deliveries WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR client_id = ?2) \
         AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR state = ?4) ORDER BY seq",
    )?;
    stmt.query_map(params![delivery, client, since_ms, state], |r| r.get(0))?
        .collect()
}

/// What happened over a recent window, minute by minute: for the console's
/// overview and a client's page.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Activity {
    /// The window's start (ms since 1970), on a minute.
    pub since: i64,
    /// One per minute of the window, oldest first.
    pub minutes: Vec<Minute>,
    /// The window's deliveries by state (deliveries made in it).
    pub by_state: std::collections::BTreeMap<String, i64>,
    /// The same, per client.
    pub by_client: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
    /// When the window's last successful attempt (2xx) ended, per client.
    pub last_success: std::collections::BTreeMap<String, i64>,
    /// Failed attempts since the last success in the window (or since the
    /// window's start), per client with any.
    pub failures_in_a_row: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Minute {
    /// The minute's start (ms since 1970).
    pub at: i64,
    /// Events received (for a client: its deliveries made).
    pub events: i64,
    /// Attempts answered 2xx.
    pub delivered: i64,
    /// Attempts that failed (any other answer, or none).
    pub failed: i64,
}

/// The last `minutes` minutes up to `now` (ms), of every client or of one.
///
/// Events and deliveries are found by their ids, which are ULIDs and so start
/// with their time: the window is a range of the id indexes, however long the
/// history (`INDEXED BY`: left to itself, SQLite walks a client's whole
/// history in `deliveries_client` to save a sort). Attempts are those of the window's deliveries (a retry of an older
/// delivery is not counted).
pub fn activity(
    conn: &Connection,
    now: i64,
    minutes: i64,
    client: Option<&str>,
) -> rusqlite::Result<Activity> {
    const MINUTE: i64 = 60_000;
    let since = (now / MINUTE - minutes + 1) * MINUTE;
    let floor = |prefix: &str| {
        format!(
            "{prefix}{}",
            ulid::Ulid::from_parts(since as u64, 0)
                .to_string()
                .to_lowercase()
        )
    };
    let mut out = Activity {
        since,
        minutes: (0..minutes)
            .map(|i| Minute {
                at: since + i * MINUTE,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let slot = |at: i64| {
        (at >= since)
            .then(|| usize::try_from((at - since) / MINUTE).ok())
            .flatten()
    };
    // Received events, or for one client the deliveries made for it.
    let arrivals = match client {
        None => conn
            .prepare_cached("SELECT received_at FROM events WHERE id >= ?1")?
            .query_map([floor("evt_")], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?,
        Some(c) => conn
            .prepare_cached(
                "SELECT created_at FROM deliveries INDEXED BY deliveries_id WHERE id >= ?1 AND client_id = ?2",
            )?
            .query_map(params![floor("msg_"), c], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?,
    };
    for at in arrivals {
        if let Some(m) = slot(at).and_then(|i| out.minutes.get_mut(i)) {
            m.events += 1;
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT client_id, state, COUNT(*) FROM deliveries INDEXED BY deliveries_id \
         WHERE id >= ?1 AND (?2 IS NULL OR client_id = ?2) \
         GROUP BY client_id, state",
    )?;
    let counts = stmt.query_map(params![floor("msg_"), client], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in counts {
        let (c, state, n) = row?;
        *out.by_state.entry(state.clone()).or_default() += n;
        out.by_client.entry(c).or_default().insert(state, n);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT d.client_id, a.started_at + a.duration_ms, a.status BETWEEN 200 AND 299 \
         FROM deliveries d INDEXED BY deliveries_id JOIN attempts a ON a.delivery_seq = d.seq \
         WHERE d.id >= ?1 AND (?2 IS NULL OR d.client_id = ?2)",
    )?;
    let attempts = stmt.query_map(params![floor("msg_"), client], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<bool>>(2)?.unwrap_or(false),
        ))
    })?;
    let mut failures: Vec<(String, i64)> = Vec::new();
    for a in attempts {
        let (c, ended, ok) = a?;
        if !ok {
            failures.push((c.clone(), ended));
        }
        if ok {
            let last = out.last_success.entry(c).or_default();
            *last = (*last).max(ended);
        }
        if let Some(m) = slot(ended).and_then(|i| out.minutes.get_mut(i)) {
            if ok {
                m.delivered += 1;
            } else {
                m.failed += 1;
            }
        }
    }
    for (c, ended) in failures {
        if out.last_success.get(&c).is_none_or(|t| ended > *t) {
            *out.failures_in_a_row.entry(c).or_default() += 1;
        }
    }
    Ok(out)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
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
}

fn attempts(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<AttemptRow>> {
    conn.prepare_cached(
        "SELECT n, started_at, duration_ms, status, error_kind, error, response FROM attempts \
         WHERE delivery_seq = ?1 ORDER BY n",
    )?
    .query_map([seq], |r| {
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
    .collect()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptRow {
    pub n: i64,
    /// ms since 1970
    pub started_at: i64,
    pub duration_ms: i64,
    /// The HTTP status, when there was an answer.
    pub status: Option<i64>,
    /// `status`, `timeout`, `connect`, `blocked`, `network`.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first 4 KiB of the answer.
    pub response: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClientRow {
    pub client_id: String,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<i64>,
    pub counts: Vec<(String, i64)>,
}

/// Each client's recorded health and its deliveries by state.
pub fn client_rows(conn: &Connection, ids: &[String]) -> rusqlite::Result<Vec<ClientRow>> {
    use rusqlite::OptionalExtension;
    let mut out = Vec::new();
    for id in ids {
        let (disabled_reason, failing_since) = conn
            .query_row(
                "SELECT disabled_reason, failing_since FROM client_state WHERE client_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((None, None));
        let counts = conn
            .prepare_cached(
                "SELECT state, COUNT(*) FROM deliveries WHERE client_id = ?1 GROUP BY state ORDER BY state",
            )?
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
