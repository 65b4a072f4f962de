//! Who the clients are right now: those the config file declares and those
//! created through the API (kept in the store), each with the secrets that sign
//! for it and where its plugin comes from.
//!
//! Readers take a [`Snapshot`] (an `Arc`, swapped whole on every change), so the
//! ingest path never waits on a change being made; the delivery side watches
//! [`Directory::subscribe`] and starts, changes or stops workers to match.
//!
//! Rules the API relies on:
//! - A client of the config file is managed by the file: changing or deleting
//!   it through the API is refused ([`DirError::ManagedByFile`]). Its plugin may
//!   still be uploaded, and its health (pause) is the queue's.
//! - Which plugin serves: the operator's `plugin` (a file in `plugins.dir`, set
//!   in the config file or by an operator through the API) when there is one —
//!   it may exist to redact what the client gets, so the client cannot replace
//!   it ([`DirError::OperatorPlugin`]); else the client's active upload; else
//!   none (the event's own bytes).
//! - Secrets: a file client's are the file's; an API client's are in the store,
//!   newest first, and a rotated-out one signs until its overlap ends.
//! - Changes are made one at a time (store write, re-read, swap), so two at
//!   once cannot undo each other; a deleted API client's id is never given again.

use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::config::{Client, Config, Secret};
use crate::model::now_ms;
use crate::plugin::registry::Source;
use crate::store::{Store, StoreError};

/// Where a client is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    File,
    Api,
}

/// One client as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub client: Client,
    pub origin: Origin,
    pub plugin: Source,
    /// The `[[clients]]` keys as given (JSON), secrets left out: what the API
    /// shows and changes. For a file client, rebuilt from the parsed client.
    pub spec: Map<String, Value>,
}

/// The configuration file's state.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    pub file: Option<String>,
    /// When the configuration serving was loaded (ms since 1970).
    pub loaded_at: i64,
    /// Reloads applied since the start.
    pub reloads: u64,
    /// Reloads refused since the start.
    pub failures: u64,
    /// Why the file as it is now is not what serves, if it is not.
    pub error: Option<String>,
}

/// Every client, sorted by id, disabled ones included.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub entries: Vec<Arc<Entry>>,
}

impl Snapshot {
    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.entries
            .binary_search_by(|e| e.client.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Why a change to the clients was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("no client {0:?}")]
    NotFound(String),
    #[error("client {0:?} is declared in the config file and managed by it; change it there")]
    ManagedByFile(String),
    #[error(
        "the id {0:?} is taken: a client has it, or had it (its history stays in the store); choose another"
    )]
    Exists(String),
    #[error(
        "client {0:?} has the plugin {1} set by the operator, which may exist to redact what it gets; an upload cannot replace it"
    )]
    OperatorPlugin(String, String),
    /// The spec does not make a valid client; the message names the key.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Directory {
    /// The configuration: the file's clients, and the defaults API clients
    /// start from. Swapped whole by a reload of the file.
    config: RwLock<Arc<Config>>,
    /// How the last reloads of the file went, for the status.
    reloads: std::sync::Mutex<ConfigStatus>,
    store: Store,
    current: RwLock<Arc<Snapshot>>,
    changes: watch::Sender<u64>,
    /// Held by every change from its store write to its swap.
    changing: tokio::sync::Mutex<()>,
}

impl Directory {
    /// The clients of `config` and of `store`.
    pub async fn open(config: Config, store: Store) -> Result<Directory, StoreError> {
        let dir = Directory {
            reloads: std::sync::Mutex::new(ConfigStatus {
                file: config.path.as_ref().map(|p| p.display().to_string()),
                loaded_at: now_ms(),
                ..ConfigStatus::default()
            }),
            config: RwLock::new(Arc::new(config)),
            store,
            current: RwLock::new(Arc::new(Snapshot::default())),
            changes: watch::channel(0).0,
            changing: tokio::sync::Mutex::new(()),
        };
        dir.reload().await?;
        Ok(dir)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.read().unwrap().clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Applies a new configuration (a reload of the file): its clients and
    /// defaults from now on. Keys that only a restart applies (`listen`, the
    /// store, the plugin folder…) are named in the answer, and not applied.
    pub async fn apply_config(&self, new: Config) -> Result<Vec<&'static str>, DirError> {
        let _one = self.changing.lock().await;
        let old = self.config();
        // The clients made through the API must stay valid under the new file:
        // a file that would drop one (a default it relied on, or a file client
        // taking its id) is refused as a whole, like a file with an error.
        for entry in self
            .current()
            .entries
            .iter()
            .filter(|e| e.origin == Origin::Api)
        {
            let id = &entry.client.id;
            if new.client(id).is_some() {
                return Err(DirError::Invalid(format!(
                    "client {id:?} is declared in the file and was created through the API; delete one of them first"
                )));
            }
            if let Err(e) = new.client_from_json(&entry.spec) {
                return Err(DirError::Invalid(format!(
                    "client {id:?}, created through the API, would no longer be valid: {e:#}"
                )));
            }
        }
        let mut at_restart = Vec::new();
        if new.server.listen != old.server.listen {
            at_restart.push("server.listen");
        }
        if new.server.max_body != old.server.max_body
            || new.server.header_timeout != old.server.header_timeout
            || new.server.body_timeout != old.server.body_timeout
            || new.server.idle_timeout != old.server.idle_timeout
            || new.server.max_connections != old.server.max_connections
        {
            at_restart.push("server limits (max_body, timeouts, max_connections)");
        }
        if new.store != old.store {
            at_restart.push("[store]");
        }
        if new.plugins.dir != old.plugins.dir
            || new.plugins.cache_dir != old.plugins.cache_dir
            || new.plugins.cache_key != old.plugins.cache_key
            || new.plugins.warm_instances != old.plugins.warm_instances
            || new.plugins.recycle_after != old.plugins.recycle_after
            || new.plugins.max_file_size != old.plugins.max_file_size
        {
            at_restart.push("[plugins] (but its limits)");
        }
        *self.config.write().unwrap() = Arc::new(new);
        if let Err(e) = self.reload_locked().await {
            // All of it or none of it: the old configuration serves on.
            *self.config.write().unwrap() = old;
            return Err(e.into());
        }
        let mut st = self.reloads.lock().unwrap();
        st.loaded_at = now_ms();
        st.reloads += 1;
        st.error = None;
        Ok(at_restart)
    }

    /// Records a reload of the file that was refused; the last good one serves.
    pub fn config_refused(&self, error: String) {
        let mut st = self.reloads.lock().unwrap();
        st.failures += 1;
        st.error = Some(error);
    }

    /// How the configuration file was loaded, for the status.
    pub fn config_status(&self) -> ConfigStatus {
        self.reloads.lock().unwrap().clone()
    }

    /// Changes whenever a client is added, changed or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads the API's clients from the store again and publishes the result if
    /// anything changed. A stored client that no longer checks (a default it
    /// relied on changed, say) is logged and left out, never half-served.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.changing.lock().await;
        self.reload_locked().await
    }

    async fn reload_locked(&self) -> Result<(), StoreError> {
        let crate::store::ApiState {
            clients,
            secrets,
            active_uploads: uploads,
        } = self.store.api_state().await?;
        let upload_of = |id: &str| {
            uploads
                .iter()
                .find(|(c, _)| c == id)
                .map(|(_, v)| Source::Upload(v.clone()))
        };
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        let config = self.config();
        for c in &config.clients {
            entries.push(Arc::new(Entry {
                plugin: source(c, upload_of(&c.id)),
                spec: spec_of(c),
                client: c.clone(),
                origin: Origin::File,
            }));
        }
        for row in clients {
            if config.client(&row.id).is_some() {
                tracing::warn!(client = %row.id, "a client of this id is in both the config file and the store; the file's serves");
                continue;
            }
            let spec: Map<String, Value> = match serde_json::from_str(&row.spec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(client = %row.id, "stored client does not parse, left out: {e}");
                    continue;
                }
            };
            let mut client = match config.client_from_json(&spec) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(client = %row.id, "stored client no longer checks, left out: {e:#}");
                    continue;
                }
            };
            client.secrets = secrets
                .iter()
                .filter(|s| s.client_id == row.id)
                .filter_map(|s| {
                    let mut secret = Secret::parse(&s.secret).ok()?;
                    secret.until = s.expires_at;
                    Some(secret)
                })
                .collect();
            entries.push(Arc::new(Entry {
                plugin: source(&client, upload_of(&row.id)),
                client,
                origin: Origin::Api,
                spec,
            }));
        }
        entries.sort_by(|a, b| a.client.id.cmp(&b.client.id));
        let changed = {
            let mut cur = self.current.write().unwrap();
            let same = cur.entries.len() == entries.len()
                && cur.entries.iter().zip(&entries).all(|(a, b)| a == b);
            if !same {
                *cur = Arc::new(Snapshot { entries });
            }
            !same
        };
        if changed {
            self.changes.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Creates a client from the keys of a `[[clients]]` table. Without a
    /// `secret`, one is made; the secret is returned, to be shown this once.
    pub async fn create(
        &self,
        mut spec: Map<String, Value>,
    ) -> Result<(Arc<Entry>, String), DirError> {
        let _one = self.changing.lock().await;
        let secret = match spec.remove("secret") {
            None | Some(Value::Null) => Secret::generate(),
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(DirError::Invalid(
                    "secret must be a string `whsec_…`".into(),
                ));
            }
        };
        let mut with_secret = spec.clone();
        with_secret.insert("secret".into(), Value::String(secret.clone()));
        let config = self.config();
        let client = config
            .client_from_json(&with_secret)
            .map_err(|e| DirError::Invalid(format!("{e:#}")))?;
        let id = client.id.clone();
        if config.client(&id).is_some() {
            return Err(DirError::ManagedByFile(id));
        }
        let text = Value::Object(spec).to_string();
        let created = self
            .store
            .create_api_client(&id, text, secret.clone())
            .await?;
        if !created {
            return Err(DirError::Exists(id));
        }
        self.reload_locked().await?;
        let entry = self
            .current()
            .get(&id)
            .cloned()
            .ok_or(DirError::NotFound(id))?;
        Ok((entry, secret))
    }

    /// Changes an API client: `patch`'s keys replace the spec's (a `null`
    /// removes one). The id cannot change; secrets change by rotation only.
    pub async fn update(
        &self,
        id: &str,
        patch: Map<String, Value>,
    ) -> Result<Arc<Entry>, DirError> {
        let _one = self.changing.lock().await;
        let entry = self.api_entry(id)?;
        let mut spec = entry.spec.clone();
        for (k, v) in patch {
            match k.as_str() {
                "id" if v.as_str() != Some(id) => {
                    return Err(DirError::Invalid(
                        "id cannot change; create a new client".into(),
                    ));
                }
                "secret" => {
                    return Err(DirError::Invalid(
                        "secret cannot be set by a change; rotate it (POST /v1/clients/{id}/secret/rotate)".into(),
                    ));
                }
                _ if v.is_null() => {
                    spec.remove(&k);
                }
                _ => {
                    spec.insert(k, v);
                }
            }
        }
        self.config()
            .client_from_json(&spec)
            .map_err(|e| DirError::Invalid(format!("{e:#}")))?;
        let text = Value::Object(spec).to_string();
        if !self.store.update_api_client(id, text).await? {
            return Err(DirError::NotFound(id.into()));
        }
        self.reload_locked().await?;
        self.current()
            .get(id)
            .cloned()
            .ok_or(DirError::NotFound(id.into()))
    }

    /// Deletes an API client with its tokens, secrets and uploads; its id is not
    /// given again. Its unfinished deliveries are the caller's to end once its
    /// worker stopped ([`Directory::fail_unfinished`]).
    pub async fn delete(&self, id: &str) -> Result<(), DirError> {
        let _one = self.changing.lock().await;
        self.api_entry(id)?;
        if !self.store.delete_api_client(id).await? {
            return Err(DirError::NotFound(id.into()));
        }
        self.reload_locked().await?;
        Ok(())
    }

    /// Gives an API client a new secret; the ones before sign for `overlap`
    /// more. Returns the new secret, to be shown this once.
    pub async fn rotate_secret(
        &self,
        id: &str,
        overlap: std::time::Duration,
    ) -> Result<String, DirError> {
        let _one = self.changing.lock().await;
        self.api_entry(id)?;
        let secret = Secret::generate();
        let until = now_ms() + overlap.as_millis() as i64;
        self.store.add_secret(id, secret.clone(), until).await?;
        self.reload_locked().await?;
        Ok(secret)
    }

    /// Fails a deleted client's unfinished deliveries; how many.
    pub async fn fail_unfinished(&self, id: &str) -> Result<usize, DirError> {
        Ok(self.store.fail_unfinished(id).await?)
    }

    /// Whether the client's own uploads may serve it: not when the operator
    /// set its `plugin`.
    pub fn uploads_allowed(&self, id: &str) -> Result<Arc<Entry>, DirError> {
        let entry = self.entry(id)?;
        match &entry.client.plugin {
            Some(file) => Err(DirError::OperatorPlugin(id.into(), file.clone())),
            None => Ok(entry),
        }
    }

    /// Makes `version` (or no upload) the client's active plugin.
    pub async fn set_upload(&self, id: &str, version: Option<String>) -> Result<(), DirError> {
        let _one = self.changing.lock().await;
        self.uploads_allowed(id)?;
        self.store.set_active_upload(id, version).await?;
        self.reload_locked().await?;
        Ok(())
    }

    pub fn entry(&self, id: &str) -> Result<Arc<Entry>, DirError> {
        self.current()
            .get(id)
            .cloned()
            .ok_or_else(|| DirError::NotFound(id.into()))
    }

    fn api_entry(&self, id: &str) -> Result<Arc<Entry>, DirError> {
        let entry = self.entry(id)?;
        match entry.origin {
            Origin::File => Err(DirError::ManagedByFile(id.into())),
            Origin::Api => Ok(entry),
        }
    }
}

/// Where a client's plugin comes from: the operator's `plugin` file first.
fn source(client: &Client, upload: Option<Source>) -> Source {
    match &client.plugin {
        Some(file) => Source::File(file.clone()),
        None => upload.unwrap_or(Source::None),
    }
}

/// A file client's settings as the API shows them (no secrets).
fn spec_of(c: &Client) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), c.id.clone().into());
    m.insert("url".into(), c.url.to_string().into());
    if let Some(p) = &c.plugin {
        m.insert("plugin".into(), p.clone().into());
    }
    m.insert("events".into(), c.events.clone().into());
    m.insert("enabled".into(), c.enabled.into());
    m.insert(
        "config".into(),
        Value::Object(
            c.config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect(),
        ),
    );
    m
}
