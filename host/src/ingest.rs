//! The HTTP front: Phraseanet's events come in, and operators look at the host.
//!
//! `POST /v1/events` checks the token, the content type and the size, parses the
//! event, fans it out to the clients that want it, and answers 202 only once the
//! event and its deliveries are committed to the store. Everything it refuses gets
//! a JSON `{"error": …}` that says why: 413 only for a body over the size limit,
//! 400 for one that is malformed (a bad chunk, invalid UTF-8, not an event), 408
//! for one that does not arrive within `server.body_timeout`. `GET /healthz` is
//! for probes; `GET /v1/status` names every client and plugin, so it takes the
//! ingest token too when one is configured.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::deliver::Dispatcher;
use crate::event::{Event, new_event_id};
use crate::plugin::registry::Registry;
use crate::store::Store;

pub struct Ingest {
    pub token: Option<String>,
    pub max_body: usize,
    pub body_timeout: std::time::Duration,
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
}

pub fn router(state: Arc<Ingest>) -> axum::Router {
    axum::Router::new()
        .route("/v1/events", post(post_event))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
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

/// `Err` with the 401 to answer when a token is configured and not given.
fn check_token(st: &Ingest, q: &TokenQuery, headers: &HeaderMap) -> Result<(), Response> {
    let Some(expected) = &st.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(q.token.as_deref());
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(error(StatusCode::UNAUTHORIZED, "wrong token")),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "a token is required: `Authorization: Bearer <token>` or `?token=<token>`",
        )),
    }
}

async fn post_event(
    State(st): State<Arc<Ingest>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(refused) = check_token(&st, &q, &headers) {
        return refused;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && mime != "application/vnd.phraseanet.event+json" {
        let got = if ct.is_empty() {
            "none".to_string()
        } else {
            format!("{ct:?}")
        };
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {got}; send application/json or application/vnd.phraseanet.event+json"
            ),
        );
    }
    let read = tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, st.max_body));
    let bytes: Bytes = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body is over the limit of {} bytes (server.max_body)",
                        st.max_body
                    ),
                );
            }
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} (server.body_timeout)",
                    humantime::format_duration(st.body_timeout)
                ),
            );
        }
    };
    let event = match Event::parse(new_event_id(), bytes) {
        Ok(e) => Arc::new(e),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let deliveries = st.dispatcher.fan_out(&event.name);
    let count = deliveries.len();
    let (dispatcher, ev, ds) = (st.dispatcher.clone(), event.clone(), deliveries.clone());
    let after = Box::new(move |seqs: &[i64]| dispatcher.enqueue(&ev, &ds, seqs));
    match st
        .store
        .ingest(event.clone(), deliveries, Some(after))
        .await
    {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": event.id, "deliveries": count })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!("event not stored: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the event could not be stored, send it again: {e}"),
            )
        }
    }
}

async fn status(
    State(st): State<Arc<Ingest>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = check_token(&st, &q, &headers) {
        return refused;
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "plugins": st.registry.status(),
        "clients": st.dispatcher.status(),
    }))
    .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
