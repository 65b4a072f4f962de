//! The API's rows and the read-side queries, on PostgreSQL: the same list as
//! SQLite's (`store/access.rs`, `rows.rs`, `inspect.rs`), the same meaning.
//! A change other hosts must serve ends with `NOTIFY hookwasm_clients`, sent
//! at commit.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::model::now_ms;
use crate::store::StoreError;
use crate::store::access::ApiState;
use crate::store::inspect::{
    Activity, AttemptRow, ClientRow, DeliveryRow, Detail, Filter, Minute, RenderedRow,
};
use crate::store::rows::{ApiClientRow, DELETED, KEPT_VERSIONS, SecretRow, TokenRow, UploadRow};

type R<T> = Result<T, StoreError>;

const CHANGED: &str = "SELECT pg_notify('hookwasm_clients', '')";

impl PgStore {
    pub async fn api_state(&self) -> R<ApiState> {
        let conn = self.conn().await?;
        let clients = conn
            .query(
                "SELECT id, spec, created_at FROM api_clients WHERE deleted_at IS NULL ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| ApiClientRow {
                id: r.get(0),
                spec: r.get(1),
                created_at: r.get(2),
            })
            .collect();
        let secrets = conn
            .query(
                "SELECT client_id, secret, expires_at FROM client_secrets \
                 WHERE expires_at IS NULL OR expires_at > $1 ORDER BY client_id, created_at DESC, seq DESC",
                &[&now_ms()],
            )
            .await?
            .iter()
            .map(|r| SecretRow {
                client_id: r.get(0),
                secret: r.get(1),
                expires_at: r.get(2),
            })
            .collect();
        let active_uploads = conn
            .query(
                "SELECT client_id, plugin_version FROM client_state WHERE plugin_version IS NOT NULL",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(ApiState {
            clients,
            secrets,
            active_uploads,
        })
    }

    /// Runs `statements` (SQL and its parameters) in one transaction that
    /// ends with the signal to the other hosts; returns each one's row count.
    async fn change(&self, statements: &[(&str, &[&(dyn ToSql + Sync)])]) -> R<Vec<u64>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let mut counts = Vec::with_capacity(statements.len());
        for (sql, params) in statements {
            counts.push(tx.execute(*sql, params).await?);
        }
        tx.execute(CHANGED, &[]).await?;
        tx.commit().await?;
        Ok(counts)
    }

    pub async fn create_api_client(&self, id: &str, spec: &str, secret: &str) -> R<bool> {
        let now = now_ms();
        // The id is free only without any past (see rows::id_has_history);
        // the primary key settles two hosts creating the same id at once.
        let counts = self
            .change(&[
                (
                    "INSERT INTO api_clients (id, spec, created_at, updated_at) \
                     SELECT $1, $2, $3, $3 WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE client_id = $1) \
                     AND NOT EXISTS (SELECT 1 FROM client_tokens WHERE client_id = $1) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &spec, &now],
                ),
                (
                    "INSERT INTO client_secrets (client_id, secret, created_at) \
                     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM api_clients WHERE id = $1 AND created_at = $3 AND deleted_at IS NULL)",
                    &[&id, &secret, &now],
                ),
            ])
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn update_api_client(&self, id: &str, spec: &str) -> R<bool> {
        let counts = self
            .change(&[(
                "UPDATE api_clients SET spec = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL",
                &[&id, &spec, &now_ms()],
            )])
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn delete_api_client(&self, id: &str) -> R<bool> {
        let now = now_ms();
        let counts = self
            .change(&[
                (
                    "UPDATE api_clients SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                    &[&id, &now],
                ),
                ("DELETE FROM client_secrets WHERE client_id = $1", &[&id]),
                ("DELETE FROM client_tokens WHERE client_id = $1", &[&id]),
                ("DELETE FROM client_plugins WHERE client_id = $1", &[&id]),
                // Disabled until fail_unfinished: see the SQLite store's.
                (
                    "INSERT INTO client_state (client_id, disabled_at, disabled_reason) \
                     SELECT $1, $2, $3 FROM api_clients WHERE id = $1 AND deleted_at = $2 \
                     ON CONFLICT (client_id) DO UPDATE SET disabled_at = EXCLUDED.disabled_at, \
                       disabled_reason = EXCLUDED.disabled_reason, failing_since = NULL, plugin_version = NULL",
                    &[&id, &now, &DELETED],
                ),
                ("DELETE FROM client_leases WHERE client_id = $1", &[&id]),
            ])
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn add_secret(&self, client: &str, secret: &str, others_until: i64) -> R<()> {
        let now = now_ms();
        self.change(&[
            (
                "DELETE FROM client_secrets WHERE client_id = $1 AND expires_at <= $2",
                &[&client, &now],
            ),
            (
                "UPDATE client_secrets SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE client_id = $1",
                &[&client, &others_until],
            ),
            (
                "INSERT INTO client_secrets (client_id, secret, created_at) VALUES ($1, $2, $3)",
                &[&client, &secret, &now],
            ),
        ])
        .await?;
        Ok(())
    }

    pub async fn fail_unfinished(&self, client: &str) -> R<usize> {
        let counts = self
            .change(&[
                (
                    "UPDATE deliveries SET state = 'failed', reason = $3, updated_at = $2, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE client_id = $1 AND state IN ('pending', 'held', 'plugin_error', 'retrying')",
                    &[&client, &now_ms(), &DELETED],
                ),
                ("DELETE FROM client_state WHERE client_id = $1", &[&client]),
            ])
            .await?;
        Ok(counts[0] as usize)
    }

    pub async fn tokens(&self) -> R<Vec<TokenRow>> {
        let conn = self.conn().await?;
        Ok(conn
            .query(
                "SELECT id, client_id, hash, label, created_at FROM client_tokens ORDER BY created_at",
                &[],
            )
            .await?
            .iter()
            .map(|r| TokenRow {
                token_id: r.get(0),
                client_id: r.get(1),
                hash: r.get(2),
                label: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }

    pub async fn add_token(&self, t: &TokenRow) -> R<()> {
        self.change(&[(
            "INSERT INTO client_tokens (id, client_id, hash, label, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&t.token_id, &t.client_id, &t.hash, &t.label, &t.created_at],
        )])
        .await?;
        Ok(())
    }

    pub async fn delete_token(&self, client: &str, token_id: &str) -> R<bool> {
        let counts = self
            .change(&[(
                "DELETE FROM client_tokens WHERE client_id = $1 AND id = $2",
                &[&client, &token_id],
            )])
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn put_upload(
        &self,
        client: &str,
        version: &str,
        bytes: &[u8],
        world: &str,
    ) -> R<()> {
        let now = now_ms();
        self.change(&[
            (
                "INSERT INTO plugin_blobs (version, bytes, world, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (version) DO NOTHING",
                &[&version, &bytes, &world, &now],
            ),
            (
                "INSERT INTO client_plugins (client_id, version, uploaded_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, version) DO UPDATE SET uploaded_at = EXCLUDED.uploaded_at",
                &[&client, &version, &now],
            ),
            (
                "DELETE FROM client_plugins WHERE client_id = $1 \
                 AND version NOT IN (SELECT version FROM client_plugins WHERE client_id = $1 ORDER BY uploaded_at DESC LIMIT $2) \
                 AND version NOT IN (SELECT COALESCE(plugin_version, '') FROM client_state WHERE client_id = $1)",
                &[&client, &KEPT_VERSIONS],
            ),
            (
                "DELETE FROM plugin_blobs WHERE version NOT IN (SELECT version FROM client_plugins)",
                &[],
            ),
        ])
        .await?;
        Ok(())
    }

    pub async fn uploads(&self, client: &str) -> R<Vec<UploadRow>> {
        let conn = self.conn().await?;
        Ok(conn
            .query(
                "SELECT p.version, b.world, length(b.bytes)::bigint, p.uploaded_at FROM client_plugins p \
                 JOIN plugin_blobs b ON b.version = p.version WHERE p.client_id = $1 ORDER BY p.uploaded_at DESC",
                &[&client],
            )
            .await?
            .iter()
            .map(|r| UploadRow {
                version: r.get(0),
                world: r.get(1),
                size: r.get(2),
                uploaded_at: r.get(3),
            })
            .collect())
    }

    pub async fn upload_bytes(&self, client: &str, version: &str) -> R<Option<Vec<u8>>> {
        let conn = self.conn().await?;
        Ok(conn
            .query_opt(
                "SELECT b.bytes FROM client_plugins p JOIN plugin_blobs b ON b.version = p.version \
                 WHERE p.client_id = $1 AND p.version = $2",
                &[&client, &version],
            )
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn set_active_upload(&self, client: &str, version: Option<&str>) -> R<()> {
        self.change(&[(
            "INSERT INTO client_state (client_id, plugin_version) VALUES ($1, $2) \
             ON CONFLICT (client_id) DO UPDATE SET plugin_version = EXCLUDED.plugin_version",
            &[&client, &version],
        )])
        .await?;
        Ok(())
    }

    pub async fn event_of_client(
        &self,
        client: &str,
        event_id: &str,
    ) -> R<Option<(String, Vec<u8>, i64)>> {
        let conn = self.conn().await?;
        Ok(conn
            .query_opt(
                "SELECT e.id, e.body, e.received_at FROM events e WHERE e.id = $2 \
                 AND EXISTS (SELECT 1 FROM deliveries d WHERE d.client_id = $1 AND d.event_seq = e.seq)",
                &[&client, &event_id],
            )
            .await?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    #[allow(clippy::type_complexity)]
    pub async fn queue_depth(&self) -> R<(Vec<(String, i64)>, Option<i64>)> {
        let conn = self.conn().await?;
        let mut by_state: Vec<(String, i64)> = conn
            .query(
                "SELECT 'pending', COUNT(*) FROM deliveries WHERE state = 'pending' HAVING COUNT(*) > 0 \
                 UNION ALL SELECT state, COUNT(*) FROM deliveries WHERE state IN ('held', 'plugin_error') GROUP BY state",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let retrying: i64 = conn
            .query_one(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'retrying'",
                &[],
            )
            .await?
            .get(0);
        by_state.push(("retrying".into(), retrying));
        let oldest: Option<i64> = conn
            .query_one(
                "SELECT MIN(created_at) FROM deliveries WHERE state = 'pending'",
                &[],
            )
            .await?
            .get(0);
        Ok((by_state, oldest))
    }

    pub async fn deliveries(&self, f: &Filter) -> R<Vec<DeliveryRow>> {
        let conn = self.conn().await?;
        let mut sql = String::from(
            "SELECT d.id, d.seq, e.id, e.name, d.client_id, d.state, d.reason, d.plugin, d.next_attempt_at, d.created_at \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE true",
        );
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut clause = |part: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&format!(" AND {part} ${}", args.len()));
        };
        if let Some(c) = &f.client {
            clause("d.client_id =", Box::new(c.clone()));
        }
        if let Some(s) = &f.state {
            clause("d.state =", Box::new(s.clone()));
        }
        if let Some(e) = &f.event {
            clause("e.name =", Box::new(e.clone()));
        }
        if let Some(t) = f.since {
            clause("d.created_at >=", Box::new(t));
        }
        if let Some(t) = f.until {
            clause("d.created_at <", Box::new(t));
        }
        if let Some(c) = f.cursor {
            clause("d.seq <", Box::new(c));
        }
        args.push(Box::new(f.limit as i64));
        sql.push_str(&format!(" ORDER BY d.seq DESC LIMIT ${}", args.len()));
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = conn.query(&sql, &params).await?;
        let mut out: Vec<DeliveryRow> = rows.iter().map(delivery_row).collect();
        attach_attempts(&conn, &mut out).await?;
        Ok(out)
    }

    pub async fn delivery(
        &self,
        id: &str,
        client: Option<&str>,
    ) -> R<Option<(DeliveryRow, Detail)>> {
        let conn = self.conn().await?;
        let Some(r) = conn
            .query_opt(
                "SELECT d.id, d.seq, e.id, e.name, d.client_id, d.state, d.reason, d.plugin, d.next_attempt_at, d.created_at, \
                        e.body, e.received_at, d.rendered, d.content_type, d.headers, d.body \
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq \
                 WHERE d.id = $1 AND ($2::text IS NULL OR d.client_id = $2)",
                &[&id, &client],
            )
            .await?
        else {
            return Ok(None);
        };
        let event_body = String::from_utf8_lossy(&r.get::<_, Vec<u8>>(10)).into_owned();
        let rendered = r.get::<_, bool>(12).then(|| {
            let headers: Option<String> = r.get(14);
            let body: Option<Vec<u8>> = r.get(15);
            RenderedRow {
                content_type: r
                    .get::<_, Option<String>>(13)
                    .unwrap_or_else(|| "application/json".into()),
                headers: headers
                    .and_then(|h| serde_json::from_str(&h).ok())
                    .unwrap_or_default(),
                body: body
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|| event_body.clone()),
            }
        });
        let mut d = vec![delivery_row(&r)];
        attach_attempts(&conn, &mut d).await?;
        let detail = Detail {
            rendered,
            received_at: r.get(11),
            event_body,
        };
        Ok(d.pop().map(|d| (d, detail)))
    }

    pub async fn select(
        &self,
        delivery: Option<&str>,
        client: Option<&str>,
        since_ms: Option<i64>,
        state: Option<&str>,
    ) -> R<Vec<i64>> {
        let conn = self.conn().await?;
        Ok(conn
            .query(
                "SELECT seq FROM deliveries WHERE ($1::text IS NULL OR id = $1) AND ($2::text IS NULL OR client_id = $2) \
                 AND ($3::bigint IS NULL OR created_at >= $3) AND ($4::text IS NULL OR state = $4) ORDER BY seq",
                &[&delivery, &client, &since_ms, &state],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// As SQLite's `inspect::activity`: the window is a range of the
    /// time-ordered ids, so it costs the window's rows, not the history's.
    pub async fn activity(&self, now: i64, minutes: i64, client: Option<&str>) -> R<Activity> {
        const MINUTE: i64 = 60_000;
        let conn = self.conn().await?;
        let since = (now / MINUTE - minutes + 1) * MINUTE;
        let floor = |prefix: &str| {
            format!(
                "{prefix}{}",
                ulid::Ulid::from_parts(since as u64, 0)
                    .to_string()
                    .to_lowercase()
            )
        };
        let (evt, msg) = (floor("evt_"), floor("msg_"));
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
        let arrivals: Vec<i64> = match client {
            None => {
                conn.query("SELECT received_at FROM events WHERE id >= $1", &[&evt])
                    .await?
            }
            Some(c) => {
                conn.query(
                    "SELECT created_at FROM deliveries WHERE id >= $1 AND client_id = $2",
                    &[&msg, &c],
                )
                .await?
            }
        }
        .iter()
        .map(|r| r.get(0))
        .collect();
        for at in arrivals {
            if let Some(m) = slot(at).and_then(|i| out.minutes.get_mut(i)) {
                m.events += 1;
            }
        }
        for r in conn
            .query(
                "SELECT client_id, state, COUNT(*) FROM deliveries \
                 WHERE id >= $1 AND ($2::text IS NULL OR client_id = $2) GROUP BY client_id, state",
                &[&msg, &client],
            )
            .await?
        {
            let (c, state, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            *out.by_state.entry(state.clone()).or_default() += n;
            out.by_client.entry(c).or_default().insert(state, n);
        }
        let mut failures: Vec<(String, i64)> = Vec::new();
        for r in conn
            .query(
                "SELECT d.client_id, a.started_at + a.duration_ms, COALESCE(a.status BETWEEN 200 AND 299, false) \
                 FROM deliveries d JOIN attempts a ON a.delivery_seq = d.seq \
                 WHERE d.id >= $1 AND ($2::text IS NULL OR d.client_id = $2)",
                &[&msg, &client],
            )
            .await?
        {
            let (c, ended, ok): (String, i64, bool) = (r.get(0), r.get(1), r.get(2));
            if ok {
                let last = out.last_success.entry(c).or_default();
                *last = (*last).max(ended);
            } else {
                failures.push((c, ended));
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

    pub async fn client_rows(&self, ids: &[String]) -> R<Vec<ClientRow>> {
        let conn = self.conn().await?;
        let mut out = Vec::new();
        for id in ids {
            let (disabled_reason, failing_since) = conn
                .query_opt(
                    "SELECT disabled_reason, failing_since FROM client_state WHERE client_id = $1",
                    &[id],
                )
                .await?
                .map_or((None, None), |r| (r.get(0), r.get(1)));
            let counts = conn
                .query(
                    "SELECT state, COUNT(*) FROM deliveries WHERE client_id = $1 GROUP BY state ORDER BY state",
                    &[id],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            out.push(ClientRow {
                client_id: id.clone(),
                disabled_reason,
                failing_since,
                counts,
            });
        }
        Ok(out)
    }

    pub async fn probe(&self) -> R<()> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
            &[&now_ms()],
        )
        .await?;
        Ok(())
    }
}

fn delivery_row(r: &Row) -> DeliveryRow {
    DeliveryRow {
        id: r.get(0),
        seq: r.get(1),
        event_id: r.get(2),
        event: r.get(3),
        client_id: r.get(4),
        state: r.get(5),
        reason: r.get(6),
        plugin: r.get(7),
        next_attempt_at: r.get(8),
        created_at: r.get(9),
        attempts: Vec::new(),
    }
}

/// Every listed delivery's attempts, in one query.
async fn attach_attempts(conn: &tokio_postgres::Client, rows: &mut [DeliveryRow]) -> R<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rows.iter().map(|d| d.seq).collect();
    let attempts = conn
        .query(
            "SELECT delivery_seq, n, started_at, duration_ms, status, error_kind, error, response FROM attempts \
             WHERE delivery_seq = ANY($1) ORDER BY delivery_seq, n",
            &[&seqs],
        )
        .await?;
    for a in attempts {
        let seq: i64 = a.get(0);
        if let Some(d) = rows.iter_mut().find(|d| d.seq == seq) {
            d.attempts.push(AttemptRow {
                n: a.get(1),
                started_at: a.get(2),
                duration_ms: a.get(3),
                status: a.get(4),
                error_kind: a.get(5),
                error: a.get(6),
                response: a.get(7),
            });
        }
    }
    Ok(())
}
