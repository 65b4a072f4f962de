//! hookwasm: Phraseanet events in, per-client WebAssembly plugins, signed HTTP
//! deliveries out.
//!
//! The modules follow an event's path: [`ingest`] (HTTP in) → [`store`] (durable)
//! → [`plugin`] (render) → [`deliver`] (HTTP out). [`config`] and [`event`] are
//! shared by all of them; [`serve`] runs them together until told to stop.

pub mod config;
pub mod deliver;
pub mod event;
pub mod ingest;
pub mod listen;
pub mod plugin;
pub mod store;
pub mod text;

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};

/// Runs the host on `listener` until `shutdown` completes, then stops taking
/// events, lets attempts in flight finish, and returns once all is recorded.
pub async fn serve(
    config: config::Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = store::Store::open(&config.store.path)?;
    let runtime = Arc::new(
        plugin::Runtime::new(plugin::RuntimeOptions {
            cache_dir: Some(config.plugins.cache_dir.clone()),
            cache_key: Some(config.plugins.cache_key.clone()),
            warm_instances: config.plugins.warm_instances,
            recycle_after: config.plugins.recycle_after,
        })
        .context("cannot start the WebAssembly engine")?,
    );
    let registry = Arc::new(plugin::registry::Registry::new(
        &config.plugins.dir,
        config.plugins.max_file_size,
        runtime,
    ));
    registry.load_all().await?;
    let _watch = registry.watch()?;
    for c in &config.clients {
        if let Some(file) = &c.plugin
            && let plugin::registry::Lookup::Missing = registry.get(file)
        {
            tracing::warn!(client = %c.id, "plugin {file} is not in {}: the client's deliveries are held until it is", config.plugins.dir.display());
        }
    }

    let dispatcher = Arc::new(deliver::Dispatcher::new(
        &config.clients,
        &store,
        &registry,
    )?);
    dispatcher.start(&store);

    let app = ingest::router(Arc::new(ingest::Ingest {
        token: config.server.ingest_token.clone(),
        max_body: config.server.max_body,
        body_timeout: config.server.body_timeout,
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        registry: registry.clone(),
    }));
    tracing::info!(
        listen = %listener.local_addr()?, clients = config.clients.len(),
        plugins = %config.plugins.dir.display(), store = %config.store.path.display(),
        "hookwasm {} serving", env!("CARGO_PKG_VERSION")
    );
    let limits = listen::Limits {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
    };
    listen::raise_fd_limit(limits.max_connections);
    listen::serve(listener, app, limits, shutdown).await;

    tracing::info!("stopping: finishing the attempts in flight");
    dispatcher.shutdown().await;
    store.flush().await;
    tracing::info!("stopped");
    Ok(())
}
