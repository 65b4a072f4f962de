//! `GET /v1/status`: every plugin (version serving, last load error) and client
//! (plugin state, health, requests in flight). It names them all, so it takes the
//! ingest token too when one is configured.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Api, TokenQuery, token_refusal};

pub(super) async fn status(
    State(st): State<Arc<Api>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = token_refusal(&st, &q, &headers) {
        return refused;
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "plugins": st.registry.status(),
        "clients": st.dispatcher.status(),
    }))
    .into_response()
}
