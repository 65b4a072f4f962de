//! For operators and their tools: `GET /v1/status` (every plugin and client,
//! with health, and how the config file was loaded), `GET /metrics`
//! (Prometheus text), `GET /readyz` and `GET /healthz` (probes). Status and
//! metrics name every client, so they take an operator token unless the
//! operator opened them (`server.open_status`, `server.open_metrics`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Operator;
use super::openapi::*;
use super::{Api, ApiResult};

#[utoipa::path(get, path = "/v1/status", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "every plugin and client, with health, and the config file's state", body = serde_json::Value),
        (status = 401, description = "no token, or one that is not known (unless `server.open_status`)", body = ErrorBody),
        (status = 403, description = "a client token", body = ErrorBody)))]
pub(super) async fn status(State(st): State<Arc<Api>>, headers: HeaderMap) -> ApiResult {
    if !st.directory.config().server.open_status {
        Operator::check(&st, &headers)?;
    }
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": st.directory.config_status(),
        "plugins": st.registry.status(),
        "clients": st.dispatcher.status(),
    }))
    .into_response())
}

/// The last hour, minute by minute, with what waits and what is wrong now:
/// the console's overview, for any dashboard.
#[utoipa::path(get, path = "/v1/admin/overview", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "the last hour's events and attempts per minute, its deliveries by state and client, the queue's depth, plugins that do not load and the config file's state", body = serde_json::Value),
        (status = 401, description = "no token, or one that is not known", body = ErrorBody),
        (status = 403, description = "a client token", body = ErrorBody)))]
pub(super) async fn overview(_: Operator, State(st): State<Arc<Api>>) -> ApiResult {
    let now = crate::model::now_ms();
    let activity = st.store.activity(now, 60, None).await?;
    let (depth, oldest) = st.store.queue_depth().await?;
    let queue: serde_json::Map<String, serde_json::Value> =
        depth.into_iter().map(|(k, n)| (k, n.into())).collect();
    let broken: Vec<_> = st
        .registry
        .status()
        .into_iter()
        .filter(|p| p.error.is_some())
        .collect();
    Ok(Json(json!({
        "activity": activity,
        "queue": queue,
        "oldest_pending_at": oldest,
        "plugin_errors": broken,
        "config": st.directory.config_status(),
        "clients": st.dispatcher.status(),
    }))
    .into_response())
}

/// How often `/metrics` reads the queue's depth from the store at most.
const DEPTH_EVERY: Duration = Duration::from_secs(5);

#[utoipa::path(get, path = "/metrics", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "no token, or one that is not known (unless `server.open_metrics`)", body = ErrorBody),
        (status = 403, description = "a client token", body = ErrorBody)))]
pub(super) async fn metrics(State(st): State<Arc<Api>>, headers: HeaderMap) -> ApiResult {
    if !st.directory.config().server.open_metrics {
        Operator::check(&st, &headers)?;
    }
    // What the store says costs a read proportional to the backlog: done at
    // most every few seconds, however often the route is called. A read that
    // fails leaves the last figures (and is logged), not a failed scrape.
    let due = {
        let mut last = st.depth_read.lock().unwrap();
        let due = last.is_none_or(|t| t.elapsed() >= DEPTH_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    };
    if due {
        match st.store.queue_depth().await {
            Ok((depth, oldest)) => {
                let age = oldest.map_or(0, |t| (crate::model::now_ms() - t).max(0));
                crate::metrics::queue_depth(&depth, Duration::from_millis(age as u64));
            }
            Err(e) => tracing::error!("metrics: cannot read the queue's depth: {e}"),
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/readyz", tag = "operator",
    responses((status = 200, description = "the store takes writes and a configuration is loaded", body = serde_json::Value),
        (status = 503, description = "the store does not take writes", body = serde_json::Value)))]
pub(super) async fn ready(State(st): State<Arc<Api>>) -> Response {
    // A write through the store's one writer: it must be alive and the file
    // writable, not merely open.
    let probe = st.store.probe();
    let store = match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no commit within 2 s".to_string()),
    };
    let config = st.directory.config_status();
    let body = json!({
        "store": store.as_ref().err().map_or("ok", |e| e.as_str()),
        // The last good configuration serves; a file that does not check is
        // said here, and does not make the host unready.
        "config": if config.error.is_some() { "error: the last good configuration serves (see /v1/status)" } else { "ok" },
    });
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
