//! hookwasm: Phraseanet events in, per-client WebAssembly plugins, signed HTTP
//! deliveries out.
//!
//! The modules follow an event's path, each entered once:
//!
//! ```text
//! api (HTTP in) → event (parse) → route (which clients) → queue/store (durable)
//!   → deliver: claim (queue) → render (plugin) → attempt (http, sign, retry)
//! ```
//!
//! [`console`] is the web console, a client of the API in the same process.
//! [`model`] holds the types the stages share, [`config`] the checked
//! configuration; [`run`] wires the stages together under one cancellation
//! token until told to stop.

pub mod api;
pub mod config;
pub mod console;
pub mod deliver;
pub mod directory;
pub mod event;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod queue;
pub mod reload;
pub mod route;
pub mod store;
pub mod text;

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// Runs the host on `listener` until `shutdown` completes, then stops taking
/// events, lets attempts in flight finish, and returns once all is recorded.
///
/// One token carries the stop to every stage: the HTTP side stops accepting and
/// finishes its requests, the plugin folder is no longer watched, and the
/// workers take no new attempt and wait for the ones in flight. What is left
/// ends with its owner: the store's writer when the last handle is dropped
/// (after a final flush), the engine's epoch ticker with the engine — plugin
/// calls still running need their deadlines until then.
pub async fn run(
    config: config::Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cancel = CancellationToken::new();
    // First: what starting up does (plugin loads) is counted too.
    metrics::install();
    let runtime = Arc::new(
        plugin::Runtime::new(plugin::RuntimeOptions {
            cache_dir: Some(config.plugins.cache_dir.clone()),
            cache_key: Some(config.plugins.cache_key.clone()),
            warm_instances: config.plugins.warm_instances,
            recycle_after: config.plugins.recycle_after,
        })
        .context("cannot start the WebAssembly engine")?,
    );
    // After the engine: a config it refuses is named before any database is touched.
    let store = store::Store::open(&config.store).await?;
    let registry = Arc::new(plugin::registry::Registry::new(
        &config.plugins.dir,
        config.plugins.max_file_size,
        runtime,
    ));
    // Watch first: a file replaced while the others load is not missed.
    registry.watch(cancel.clone())?;
    registry.load_all().await?;

    let directory = Arc::new(
        directory::Directory::open(config.clone(), store.clone())
            .await
            .context("cannot read the clients from the store")?,
    );
    load_active_uploads(&store, &registry, &directory).await?;
    if let Err(e) = reload::watch(directory.clone(), cancel.clone()) {
        tracing::error!(
            "the config file is not looked after ({e:#}): a change to it needs a restart"
        );
    }
    tokio::spawn(store::retention::run(
        store.clone(),
        config.store.retention,
        cancel.clone(),
    ));
    // Leases are renewed until the attempts in flight are recorded, after
    // the serving stops: another host must not take them over meanwhile.
    let leases = CancellationToken::new();
    let queue: Arc<dyn queue::Queue> = match &store {
        store::Store::Sqlite(s) => Arc::new(queue::sqlite::SqliteQueue::new(s.clone())),
        store::Store::Pg(p) => Arc::new(queue::pg::PgQueue::start(p.clone(), leases.clone())),
    };
    let dispatcher = Arc::new(deliver::Dispatcher::new(
        directory.clone(),
        queue.clone(),
        registry.clone(),
        cancel.clone(),
    ));
    dispatcher.start().await?;

    let api_state = Arc::new(api::Api {
        max_body: config.server.max_body,
        max_upload: config.plugins.max_file_size as usize,
        body_timeout: config.server.body_timeout,
        routes: route::Routes::new(directory.clone()),
        queue: queue.clone(),
        dispatcher: dispatcher.clone(),
        registry: registry.clone(),
        auth: api::auth::Auth::load(store.clone())
            .await
            .context("cannot read the API tokens from the store")?,
        directory: directory.clone(),
        store: store.clone(),
        uploading: Default::default(),
        depth_read: Default::default(),
    });
    if let store::Store::Pg(p) = &store {
        // Other hosts change clients, tokens and plugins through their API.
        tokio::spawn(follow_other_hosts(
            p.changes(),
            api_state.clone(),
            cancel.clone(),
        ));
    }
    let app = api::router(api_state.clone());
    // The console calls the API's routes in process (see console/mod.rs).
    let app = app.clone().merge(console::router(app, api_state));
    tracing::info!(
        listen = %listener.local_addr()?, clients = directory.current().entries.len(),
        plugins = %config.plugins.dir.display(), store = %store.describe(&config.store),
        "hookwasm {} serving", env!("CARGO_PKG_VERSION")
    );
    let limits = api::listen::Limits {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
    };
    api::listen::raise_fd_limit(limits.max_connections);
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    api::listen::serve(listener, app, limits, cancel.cancelled()).await;

    tracing::info!("stopping: finishing the attempts in flight");
    dispatcher.finished().await;
    queue.flush().await;
    if let store::Store::Pg(p) = &store {
        // The other hosts need not wait for this one's leases to run out.
        if let Err(e) = p.leave().await {
            tracing::error!("cannot give this host's leases up: {e}");
        }
    }
    leases.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// Compiles the uploaded plugins that are active, before the workers start, so
/// their clients are not held for the time it takes. One that no longer loads
/// (an engine change, say) is reported; its client is held until a good one is
/// made active.
async fn load_active_uploads(
    store: &store::Store,
    registry: &Arc<plugin::registry::Registry>,
    directory: &directory::Directory,
) -> Result<()> {
    for entry in &directory.current().entries {
        let plugin::registry::Source::Upload(version) = &entry.plugin else {
            continue;
        };
        let bytes = store
            .upload_bytes(&entry.client.id, version)
            .await
            .context("cannot read the uploaded plugins from the store")?;
        match bytes {
            None => {
                tracing::error!(client = %entry.client.id, version, "the active uploaded plugin is not in the store; the client is held")
            }
            Some(b) => {
                if let Err(e) = registry.compile_upload(b).await {
                    tracing::error!(client = %entry.client.id, version, "the active uploaded plugin does not load; the client is held: {e}");
                }
            }
        }
    }
    Ok(())
}

/// With several hosts on one database: a change another host made through its
/// API (a client, a token, a secret, an uploaded plugin made active) is read
/// again here, so every host serves it within moments. The store signals each
/// change (`LISTEN`), and now and then anyway, in case a signal was lost with
/// a connection.
async fn follow_other_hosts(
    changes: Arc<tokio::sync::Notify>,
    api: Arc<api::Api>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = changes.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            _ = cancel.cancelled() => return,
        }
        let reread = async {
            api.directory.reload().await?;
            load_active_uploads(&api.store, &api.registry, &api.directory).await?;
            api.auth.reload().await?;
            anyhow::Ok(())
        };
        if let Err(e) = reread.await {
            tracing::error!("cannot read the clients other hosts changed: {e:#}");
        }
    }
}
