//! `GET /v1/status`: every plugin (version serving, last load error) and client
//! (where its plugin comes from, its state, health, requests in flight). It
//! names them all, so it takes an operator token.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Api;
use super::auth::Operator;
use super::openapi::*;

#[utoipa::path(get, path = "/v1/status", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "every plugin and client, with health", body = serde_json::Value), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
pub(super) async fn status(_: Operator, State(st): State<Arc<Api>>) -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "plugins": st.registry.status(),
        "clients": st.dispatcher.status(),
    }))
    .into_response()
}
