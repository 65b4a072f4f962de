//! The durable store: events, deliveries and attempts, and what the API
//! manages beside them (clients, tokens, secrets, uploaded plugins).
//!
//! Two back ends keep the same outside behaviour: the embedded SQLite store
//! ([`sqlite`], one host, the default) and PostgreSQL ([`pg`], any number of
//! hosts on one database). [`Store`] is the choice between them; the rest of
//! the host calls its typed methods (`access.rs`, and the few event-path ones
//! below) and never sees SQL. Claiming work is the queue's business
//! (`crate::queue`), which has one implementation per back end.
//!
//! A delivery moves through these states (see [`crate::model::State`]):
//!
//! ```text
//! pending ─┬─> delivered | skipped           (rendered and sent, or the plugin said skip)
//!          ├─> retrying ──> delivered | failed
//!          ├─> held          (plugin missing or broken: waits for a good plugin)
//!          └─> plugin_error  (the plugin failed on this event: waits for a new version)
//! ```
//!
//! The plugin's output is stored with the first attempt, with the plugin version
//! (content hash) that produced it, so every retry resends the same bytes.

mod access;
pub mod copy;
pub mod inspect;
pub mod pg;
pub mod retention;
pub mod rows;
mod schema;
pub mod sqlite;
mod vfs;

pub use access::ApiState;
pub use schema::Ingested;

use anyhow::Result;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is closed")]
    Closed,
    /// The write's transaction failed (the message is the database's).
    #[error("the store could not commit: {0}")]
    Write(String),
    #[error("the store could not be read: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("the store (PostgreSQL): {0}")]
    Postgres(String),
    #[error("delivery {id}: its stored event no longer parses: {reason}")]
    Corrupt { id: String, reason: String },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        // The server's own message (a constraint, a lost connection) says
        // more than the driver's one-line summary.
        StoreError::Postgres(match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Postgres(format!("no connection: {e}"))
    }
}

/// (client, soonest retry in ms) for every client with a retry scheduled.
pub type DueRetries = Vec<(String, i64)>;

/// A client's recorded health: why it is disabled, and since when (ms) every
/// delivery to it has failed.
pub type ClientState = (Option<String>, Option<i64>);

/// The store, on one back end or the other; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Pg(pg::PgStore),
}

impl Store {
    /// Opens the configured store, creating and migrating it as needed.
    pub async fn open(config: &crate::config::Store) -> Result<Store> {
        Store::open_as(config, true).await
    }

    /// `as_host`: see [`pg::PgStore::open`].
    async fn open_as(config: &crate::config::Store, as_host: bool) -> Result<Store> {
        Ok(match &config.url {
            Some(url) => Store::Pg(pg::PgStore::open(url, config.lease, as_host).await?),
            None => Store::Sqlite(sqlite::SqliteStore::open(&config.path)?),
        })
    }

    /// Opens the configured store for the command line: an embedded store
    /// must exist already (a typo in the path is not a new, empty store).
    pub async fn open_existing(config: &crate::config::Store) -> Result<Store> {
        if config.url.is_none() && !config.path.exists() {
            anyhow::bail!(
                "no store at {}: the host has not run with this config yet",
                config.path.display()
            );
        }
        Store::open_as(config, false).await
    }

    /// Where the store is, for the log: the file, or the database without
    /// its password.
    pub fn describe(&self, config: &crate::config::Store) -> String {
        match self {
            Store::Sqlite(_) => config.path.display().to_string(),
            Store::Pg(p) => p.describe(),
        }
    }

    /// Puts deliveries back to be sent again: their stored rendering is kept
    /// and a new attempt is due now. Returns how many were found.
    pub async fn replay(&self, seqs: Vec<i64>) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(s) => s.replay(seqs).await,
            Store::Pg(p) => p.replay(seqs).await,
        }
    }

    /// Records a client's health: disabled (with the reason) or not, and since
    /// when its deliveries have been failing; returns once committed.
    pub async fn set_client(
        &self,
        client_id: &str,
        disabled: Option<String>,
        failing_since: Option<i64>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.set_client(client_id, disabled, failing_since);
                s.flush().await;
                Ok(())
            }
            Store::Pg(p) => p.set_client(client_id, disabled, failing_since).await,
        }
    }
}
