//! The store as the rest of the host sees it: one typed async call per
//! question or change, outside the event path (which has its own, in
//! `mod.rs`). No SQL and no `rusqlite` type crosses this line, so the API, the
//! directory and the console do not know which database answers; a second back
//! end (PostgreSQL, issue #13) implements the same list.
//!
//! Each method names its arguments once and hands them to the back end: on
//! SQLite, reads run on the store's read connection and writes through its
//! one writer (ordered with the event path's, committed when it returns); on
//! PostgreSQL each is a statement or a transaction of its own, and a change
//! other hosts must see is announced to them (see `pg.rs`).

use super::inspect::{self, Activity, ClientRow, DeliveryRow, Detail, Filter};
use super::rows::{self, ApiClientRow, SecretRow, TokenRow, UploadRow};
use super::{Store, StoreError};

/// Runs `$sqlite` with the SQLite store as `$s`, or `$pg` with the PostgreSQL one as `$p`.
macro_rules! on {
    ($self:ident, $s:ident => $sqlite:expr, $p:ident => $pg:expr) => {
        match $self {
            Store::Sqlite($s) => $sqlite,
            Store::Pg($p) => $pg,
        }
    };
}

/// What the directory loads: the API's clients, every secret, and which
/// uploaded version serves which client.
pub struct ApiState {
    pub clients: Vec<ApiClientRow>,
    pub secrets: Vec<SecretRow>,
    pub active_uploads: Vec<(String, String)>,
}

type R<T> = Result<T, StoreError>;

impl Store {
    // ---- clients made through the API ----

    pub async fn api_state(&self) -> R<ApiState> {
        on!(self, s => s.read(|c| {
            Ok(ApiState {
                clients: rows::api_clients(c)?,
                secrets: rows::secrets(c)?,
                active_uploads: rows::active_uploads(c)?,
            })
        })
        .await, p => p.api_state().await)
    }

    /// Stores a new client with its first secret; false if the id is taken
    /// (or was ever used).
    pub async fn create_api_client(&self, id: &str, spec: String, secret: String) -> R<bool> {
        let id = id.to_string();
        on!(self, s => s.write(move |c| {
            let created = rows::put_api_client(c, &id, &spec, true)?;
            if created {
                rows::add_secret(c, &id, &secret, crate::model::now_ms())?;
            }
            Ok(created)
        })
        .await, p => p.create_api_client(&id, &spec, &secret).await)
    }

    /// Replaces a client's settings; false if there is no such client.
    pub async fn update_api_client(&self, id: &str, spec: String) -> R<bool> {
        let id = id.to_string();
        on!(self, s => s.write(move |c| rows::put_api_client(c, &id, &spec, false)).await,
            p => p.update_api_client(&id, &spec).await)
    }

    pub async fn delete_api_client(&self, id: &str) -> R<bool> {
        let id = id.to_string();
        on!(self, s => s.write(move |c| rows::delete_api_client(c, &id)).await,
            p => p.delete_api_client(&id).await)
    }

    /// A new secret for `client`; its others sign until `others_until` (ms).
    pub async fn add_secret(&self, client: &str, secret: String, others_until: i64) -> R<()> {
        let client = client.to_string();
        on!(self, s => s.write(move |c| rows::add_secret(c, &client, &secret, others_until)).await,
            p => p.add_secret(&client, &secret, others_until).await)
    }

    /// Fails a deleted client's unfinished deliveries; how many.
    pub async fn fail_unfinished(&self, client: &str) -> R<usize> {
        let client = client.to_string();
        on!(self, s => s.write(move |c| rows::fail_unfinished(c, &client)).await,
            p => p.fail_unfinished(&client).await)
    }

    // ---- client tokens ----

    pub async fn tokens(&self) -> R<Vec<TokenRow>> {
        on!(self, s => s.read(rows::tokens).await, p => p.tokens().await)
    }

    pub async fn add_token(&self, token: TokenRow) -> R<()> {
        on!(self, s => s.write(move |c| rows::add_token(c, &token)).await,
            p => p.add_token(&token).await)
    }

    /// Whether `client` had that token.
    pub async fn delete_token(&self, client: &str, token_id: &str) -> R<bool> {
        let (client, token_id) = (client.to_string(), token_id.to_string());
        on!(self, s => s.write(move |c| rows::delete_token(c, &client, &token_id)).await,
            p => p.delete_token(&client, &token_id).await)
    }

    // ---- uploaded plugins ----

    pub async fn put_upload(
        &self,
        client: &str,
        version: &str,
        bytes: bytes::Bytes,
        world: &str,
    ) -> R<()> {
        let (client, version, world) = (client.to_string(), version.to_string(), world.to_string());
        on!(self, s => s.write(move |c| rows::put_upload(c, &client, &version, &bytes, &world)).await,
            p => p.put_upload(&client, &version, &bytes, &world).await)
    }

    pub async fn uploads(&self, client: &str) -> R<Vec<UploadRow>> {
        let client = client.to_string();
        on!(self, s => s.read(move |c| rows::uploads(c, &client)).await,
            p => p.uploads(&client).await)
    }

    /// The bytes of a version `client` uploaded, if it did.
    pub async fn upload_bytes(&self, client: &str, version: &str) -> R<Option<Vec<u8>>> {
        let (client, version) = (client.to_string(), version.to_string());
        on!(self, s => s.read(move |c| rows::upload_bytes(c, &client, &version)).await,
            p => p.upload_bytes(&client, &version).await)
    }

    /// Which upload serves `client` (`None`: none does).
    pub async fn set_active_upload(&self, client: &str, version: Option<String>) -> R<()> {
        let client = client.to_string();
        on!(self, s => s.write(move |c| rows::set_active_upload(c, &client, version.as_deref())).await,
            p => p.set_active_upload(&client, version.as_deref()).await)
    }

    // ---- what happened ----

    /// A stored event, if one of `client`'s deliveries came from it: its id,
    /// bytes and time of receipt.
    pub async fn event_of_client(
        &self,
        client: &str,
        event_id: &str,
    ) -> R<Option<(String, Vec<u8>, i64)>> {
        let (client, event_id) = (client.to_string(), event_id.to_string());
        on!(self, s => s.read(move |c| rows::event_of_client(c, &client, &event_id)).await,
            p => p.event_of_client(&client, &event_id).await)
    }

    /// Unfinished deliveries by state, and when the oldest pending one was made.
    pub async fn queue_depth(&self) -> R<(Vec<(String, i64)>, Option<i64>)> {
        on!(self, s => s.read(rows::queue_depth).await, p => p.queue_depth().await)
    }

    pub async fn deliveries(&self, filter: Filter) -> R<Vec<DeliveryRow>> {
        on!(self, s => s.read(move |c| inspect::list(c, &filter)).await,
            p => p.deliveries(&filter).await)
    }

    /// One delivery (of `client`, when given) with its event and rendering.
    pub async fn delivery(
        &self,
        id: &str,
        client: Option<&str>,
    ) -> R<Option<(DeliveryRow, Detail)>> {
        let (id, client) = (id.to_string(), client.map(str::to_string));
        on!(self, s => s.read(move |c| inspect::one(c, &id, client.as_deref())).await,
            p => p.delivery(&id, client.as_deref()).await)
    }

    /// The seqs of the deliveries a replay names (see [`inspect::select`]).
    pub async fn select(
        &self,
        delivery: Option<String>,
        client: Option<String>,
        since_ms: Option<i64>,
        state: Option<String>,
    ) -> R<Vec<i64>> {
        on!(self, s => s.read(move |c| {
            inspect::select(
                c,
                delivery.as_deref(),
                client.as_deref(),
                since_ms,
                state.as_deref(),
            )
        })
        .await, p => p.select(delivery.as_deref(), client.as_deref(), since_ms, state.as_deref()).await)
    }

    /// The last `minutes` minutes up to `now` (see [`inspect::activity`]).
    pub async fn activity(&self, now: i64, minutes: i64, client: Option<&str>) -> R<Activity> {
        let client = client.map(str::to_string);
        on!(self, s => s.read(move |c| inspect::activity(c, now, minutes, client.as_deref())).await,
            p => p.activity(now, minutes, client.as_deref()).await)
    }

    /// Each client's recorded health and its deliveries by state, for
    /// `hookwasm clients`.
    pub async fn client_rows(&self, ids: Vec<String>) -> R<Vec<ClientRow>> {
        on!(self, s => s.read(move |c| inspect::client_rows(c, &ids)).await,
            p => p.client_rows(&ids).await)
    }

    /// A write through the writer, for `/readyz`: the store takes writes.
    pub async fn probe(&self) -> R<()> {
        on!(self, s => s.write(|c| {
            c.execute(
                "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = ?1",
                [crate::model::now_ms()],
            )
            .map(|_| ())
        })
        .await, p => p.probe().await)
    }
}
