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

#[utoipa::path(get, path = "/metrics", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "no token, or one that is not known (unless `server.open_metrics`)", body = ErrorBody),
        (status = 403, description = "a client token", body = ErrorBody)))]
pub(super) async fn metrics(State(st): State<Arc<Api>>, headers: HeaderMap) -> ApiResult {
    if !st.directory.config().server.open_metrics {
        Operator::check(&st, &headers)?;
    }
    let (depth, oldest) = st.store.read(crate::store::rows::queue_depth).await?;
    let age = oldest.map_or(0, |t| (crate::model::now_ms() - t).max(0));
    crate::metrics::queue_depth(&depth, Duration::from_millis(age as u64));
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
    let probe = st.store.write(|c| c.execute_batch("SELECT 1"));
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
        "config": config.error.as_deref().map_or("ok".to_string(), |e| format!("serving the last good one; the file: {e}")),
    });
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
