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
pub mod plugin;
pub mod store;

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
            warm_instances: config.plugins.warm_instances,
            recycle_after: config.plugins.recycle_after,
        })
        .context("cannot start the WebAssembly engine")?,
    );
    let registry = Arc::new(plugin::registry::Registry::new(
        &config.plugins.dir,
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
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        registry: registry.clone(),
    }));
    tracing::info!(
        listen = %listener.local_addr()?, clients = config.clients.len(),
        plugins = %config.plugins.dir.display(), store = %config.store.path.display(),
        "hookwasm {} serving", env!("CARGO_PKG_VERSION")
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;

    tracing::info!("stopping: finishing the attempts in flight");
    dispatcher.shutdown().await;
    store.flush().await;
    tracing::info!("stopped");
    Ok(())
}
