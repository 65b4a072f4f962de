//! The HTTP side: the routes, and the state they share. One [`Api`] value holds
//! what every route may use; the admin API and metrics will hang off it too.
//!
//! - [`events`]: `POST /v1/events`, Phraseanet's events in;
//! - [`status`]: `GET /v1/status`, for operators; `GET /healthz` for probes;
//! - [`listen`]: accepting connections, with timeouts and a connection cap.

mod events;
pub mod listen;
mod status;

use std::sync::Arc;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::deliver::Dispatcher;
use crate::plugin::registry::Registry;
use crate::queue::Queue;
use crate::route::Routes;

/// What the routes share.
pub struct Api {
    /// `server.ingest_token`: when set, events and the status need it.
    pub token: Option<String>,
    pub max_body: usize,
    pub body_timeout: std::time::Duration,
    pub routes: Routes,
    pub queue: Arc<dyn Queue>,
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
}

pub fn router(state: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route("/v1/events", post(events::post_event))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/status", get(status::status))
        // The body is read with our own limit so the 413 says what the limit is.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; events go to POST /v1/events",
            )
        })
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The 401 to answer when a token is configured and not given.
fn token_refusal(st: &Api, q: &TokenQuery, headers: &HeaderMap) -> Option<Response> {
    let expected = st.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(q.token.as_deref());
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "wrong token")),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "a token is required: `Authorization: Bearer <token>` or `?token=<token>`",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
