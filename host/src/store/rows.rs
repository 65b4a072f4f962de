//! The rows the HTTP API manages beside the event path: clients created through
//! it, their API tokens (hashed), their signing secrets, and the plugins they
//! uploaded (stored by content hash, so several hosts can share them later).
//!
//! Each function runs on a connection it is handed: writes inside the writer's
//! transaction ([`super::sqlite::SqliteStore::write`]), reads on the API's own connection
//! ([`super::sqlite::SqliteStore::read`]). None of them knows HTTP or what a row means.

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::now_ms;

/// A client created through the API.
#[derive(Debug, Clone)]
pub struct ApiClientRow {
    pub id: String,
    /// Its `[[clients]]` table as JSON, without secrets.
    pub spec: String,
    pub created_at: i64,
}

pub fn api_clients(c: &Connection) -> rusqlite::Result<Vec<ApiClientRow>> {
    c.prepare_cached(
        "SELECT id, spec, created_at FROM api_clients WHERE deleted_at IS NULL ORDER BY id",
    )?
    .query_map([], |r| {
        Ok(ApiClientRow {
            id: r.get(0)?,
            spec: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?
    .collect()
}

/// Whether `id` has a past in the store: a deleted API client of that id, or
/// deliveries or tokens. A new client may not take such an id: it would see
/// that past as its own.
pub fn id_has_history(c: &Connection, id: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM api_clients WHERE id = ?1) \
             OR EXISTS (SELECT 1 FROM deliveries WHERE client_id = ?1) \
             OR EXISTS (SELECT 1 FROM client_tokens WHERE client_id = ?1)",
        [id],
        |r| r.get(0),
    )
}

/// Creates (`create`) or replaces the spec of an API client. Creating one
/// whose id exists or has a past changes nothing and returns false.
pub fn put_api_client(
    c: &Connection,
    id: &str,
    spec: &str,
    create: bool,
) -> rusqlite::Result<bool> {
    let now = now_ms();
    if create && id_has_history(c, id)? {
        return Ok(false);
    }
    let n = if create {
        c.execute(
            "INSERT INTO api_clients (id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
            params![id, spec, now],
        )?
    } else {
        c.execute(
            "UPDATE api_clients SET spec = ?2, updated_at = ?3 WHERE id = ?1 AND deleted_at IS NULL",
            params![id, spec, now],
        )?
    };
    Ok(n == 1)
}

/// Deletes an API client: it leaves a tombstone (its id is not given again),
/// and its tokens, secrets and uploads go. Its history stays. Returns whether
/// it existed.
///
/// Its health says "disabled" until [`fail_unfinished`] ends its waiting
/// deliveries: a worker still running (here until it is stopped, or on another
/// host until that host hears of the deletion) must not take a missing record
/// for "enabled" and send what a pause kept.
pub fn delete_api_client(c: &Connection, id: &str) -> rusqlite::Result<bool> {
    let now = now_ms();
    let n = c.execute(
        "UPDATE api_clients SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
        params![id, now],
    )?;
    for table in ["client_secrets", "client_tokens", "client_plugins"] {
        c.execute(&format!("DELETE FROM {table} WHERE client_id = ?1"), [id])?;
    }
    if n == 1 {
        c.execute(
            "INSERT INTO client_state (client_id, disabled_at, disabled_reason) VALUES (?1, ?2, ?3) \
             ON CONFLICT (client_id) DO UPDATE SET disabled_at = ?2, disabled_reason = ?3, \
               failing_since = NULL, plugin_version = NULL",
            params![id, now, DELETED],
        )?;
    }
    Ok(n == 1)
}

/// Why a deleted client's deliveries failed, and its health until they did.
pub const DELETED: &str = "the client was deleted";

/// Ends a deleted client's unfinished deliveries (once its worker stopped),
/// and with them its health record.
pub fn fail_unfinished(c: &Connection, id: &str) -> rusqlite::Result<usize> {
    let n = c.execute(
        "UPDATE deliveries SET state = 'failed', reason = ?3, updated_at = ?2 \
         WHERE client_id = ?1 AND state IN ('pending', 'held', 'plugin_error', 'retrying')",
        params![id, now_ms(), DELETED],
    )?;
    c.execute("DELETE FROM client_state WHERE client_id = ?1", [id])?;
    Ok(n)
}

/// A signing secret of an API client; `expires_at` is set once rotated out.
#[derive(Debug, Clone)]
pub struct SecretRow {
    pub client_id: String,
    pub secret: String,
    pub expires_at: Option<i64>,
}

/// The secrets that still sign, newest first per client.
pub fn secrets(c: &Connection) -> rusqlite::Result<Vec<SecretRow>> {
    c.prepare_cached(
        "SELECT client_id, secret, expires_at FROM client_secrets \
         WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY client_id, created_at DESC, rowid DESC",
    )?
    .query_map([now_ms()], |r| {
        Ok(SecretRow {
            client_id: r.get(0)?,
            secret: r.get(1)?,
            expires_at: r.get(2)?,
        })
    })?
    .collect()
}

/// Adds `secret` as `client`'s current one; the ones before it sign until
/// `others_until` (ms), and the long expired are dropped.
pub fn add_secret(
    c: &Connection,
    client: &str,
    secret: &str,
    others_until: i64,
) -> rusqlite::Result<()> {
    let now = now_ms();
    c.execute(
        "DELETE FROM client_secrets WHERE client_id = ?1 AND expires_at <= ?2",
        params![client, now],
    )?;
    c.execute(
        "UPDATE client_secrets SET expires_at = MIN(IFNULL(expires_at, ?2), ?2) WHERE client_id = ?1",
        params![client, others_until],
    )?;
    c.execute(
        "INSERT INTO client_secrets (client_id, secret, created_at) VALUES (?1, ?2, ?3)",
        params![client, secret, now],
    )?;
    Ok(())
}

/// An API token, as stored: its hash, never the token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRow {
    pub token_id: String,
    pub client_id: String,
    #[serde(skip)]
    pub hash: String,
    pub label: Option<String>,
    pub created_at: i64,
}

pub fn tokens(c: &Connection) -> rusqlite::Result<Vec<TokenRow>> {
    c.prepare_cached(
        "SELECT id, client_id, hash, label, created_at FROM client_tokens ORDER BY created_at",
    )?
    .query_map([], |r| {
        Ok(TokenRow {
            token_id: r.get(0)?,
            client_id: r.get(1)?,
            hash: r.get(2)?,
            label: r.get(3)?,
            created_at: r.get(4)?,
        })
    })?
    .collect()
}

pub fn add_token(c: &Connection, t: &TokenRow) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO client_tokens (id, client_id, hash, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![t.token_id, t.client_id, t.hash, t.label, t.created_at],
    )?;
    Ok(())
}

/// Revokes one of `client`'s tokens; whether it existed.
pub fn delete_token(c: &Connection, client: &str, token_id: &str) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "DELETE FROM client_tokens WHERE client_id = ?1 AND id = ?2",
        params![client, token_id],
    )? == 1)
}

/// A plugin version a client uploaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UploadRow {
    pub version: String,
    pub world: String,
    pub size: i64,
    pub uploaded_at: i64,
}

/// Stores an uploaded plugin's bytes (once per content) and notes that `client`
/// uploaded it.
pub fn put_upload(
    c: &Connection,
    client: &str,
    version: &str,
    bytes: &[u8],
    world: &str,
) -> rusqlite::Result<()> {
    let now = now_ms();
    c.execute(
        "INSERT INTO plugin_blobs (version, bytes, world, created_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (version) DO NOTHING",
        params![version, bytes, world, now],
    )?;
    c.execute(
        "INSERT INTO client_plugins (client_id, version, uploaded_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (client_id, version) DO UPDATE SET uploaded_at = ?3",
        params![client, version, now],
    )?;
    // Keep the newest versions (and the active one), and the bytes someone uses.
    c.execute(
        "DELETE FROM client_plugins WHERE client_id = ?1 \
         AND version NOT IN (SELECT version FROM client_plugins WHERE client_id = ?1 ORDER BY uploaded_at DESC LIMIT ?2) \
         AND version NOT IN (SELECT IFNULL(plugin_version, '') FROM client_state WHERE client_id = ?1)",
        params![client, KEPT_VERSIONS],
    )?;
    c.execute(
        "DELETE FROM plugin_blobs WHERE version NOT IN (SELECT version FROM client_plugins)",
        [],
    )?;
    Ok(())
}

/// Uploaded versions kept per client (the active one besides).
pub const KEPT_VERSIONS: i64 = 20;

/// `client`'s uploads, newest first.
pub fn uploads(c: &Connection, client: &str) -> rusqlite::Result<Vec<UploadRow>> {
    c.prepare_cached(
        "SELECT p.version, b.world, LENGTH(b.bytes), p.uploaded_at FROM client_plugins p \
         JOIN plugin_blobs b ON b.version = p.version WHERE p.client_id = ?1 ORDER BY p.uploaded_at DESC",
    )?
    .query_map([client], |r| {
        Ok(UploadRow {
            version: r.get(0)?,
            world: r.get(1)?,
            size: r.get(2)?,
            uploaded_at: r.get(3)?,
        })
    })?
    .collect()
}

/// The bytes of a version `client` uploaded, if it did.
pub fn upload_bytes(
    c: &Connection,
    client: &str,
    version: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    c.query_row(
        "SELECT b.bytes FROM client_plugins p JOIN plugin_blobs b ON b.version = p.version \
         WHERE p.client_id = ?1 AND p.version = ?2",
        params![client, version],
        |r| r.get(0),
    )
    .optional()
}

/// Makes `version` (or no upload) `client`'s active plugin.
pub fn set_active_upload(
    c: &Connection,
    client: &str,
    version: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO client_state (client_id, plugin_version) VALUES (?1, ?2) \
         ON CONFLICT (client_id) DO UPDATE SET plugin_version = ?2",
        params![client, version],
    )?;
    Ok(())
}

/// (client, version) of every active upload.
pub fn active_uploads(c: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    c.prepare_cached(
        "SELECT client_id, plugin_version FROM client_state WHERE plugin_version IS NOT NULL",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect()
}

pub(super) const QUEUE_BY_STATE: &str = concat!(
    "SELECT state, COUNT(*) FROM deliveries WHERE ",
    super::schema::unfinished!(),
    " GROUP BY state"
);

pub(super) const OLDEST_PENDING: &str = concat!(
    "SELECT MIN(created_at) FROM deliveries WHERE state = 'pending' AND ",
    super::schema::unfinished!()
);

/// Unfinished deliveries by state, and when the oldest pending one was
/// created (ms). Both read the partial index of unfinished work only.
#[allow(clippy::type_complexity)]
pub fn queue_depth(c: &Connection) -> rusqlite::Result<(Vec<(String, i64)>, Option<i64>)> {
    let by_state = c
        .prepare_cached(QUEUE_BY_STATE)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
    let retrying: i64 = c.query_row(
        "SELECT COUNT(*) FROM deliveries WHERE state = 'retrying'",
        [],
        |r| r.get(0),
    )?;
    let oldest = c.query_row(OLDEST_PENDING, [], |r| r.get(0))?;
    let mut by_state = by_state;
    by_state.push(("retrying".into(), retrying));
    Ok((by_state, oldest))
}

/// A stored event, if one of `client`'s deliveries came from it.
pub fn event_of_client(
    c: &Connection,
    client: &str,
    event_id: &str,
) -> rusqlite::Result<Option<(String, Vec<u8>, i64)>> {
    c.query_row(
        "SELECT e.id, e.body, e.received_at FROM events e WHERE e.id = ?2 \
         AND EXISTS (SELECT 1 FROM deliveries d WHERE d.client_id = ?1 AND d.event_seq = e.seq)",
        params![client, event_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}
