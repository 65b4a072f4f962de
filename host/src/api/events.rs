//! `POST /v1/events`: Phraseanet's events come in, for every client that wants
//! them; `POST /v1/clients/{id}/events`: for that one client (a Phraseanet
//! application whose webhook URL points at hookwasm: Phraseanet has applied that
//! application's rights and event list already).
//!
//! Checks the token, the content type and the size, parses the event, asks
//! `route` which clients get it, and answers 202 only once the event and its
//! deliveries are committed (`Queue::enqueue`). Everything it refuses gets a JSON
//! `{"error": …}` that says why: 413 only for a body over the size limit, 400 for
//! one that is malformed (a bad chunk, invalid UTF-8, not an event), 408 for one
//! that does not arrive within `server.body_timeout`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::openapi::*;
use super::{Api, P, Q, TokenQuery, error, token_refusal};
use crate::event::Event;
use crate::model::new_event_id;
use crate::store::Ingested;

#[utoipa::path(post, path = "/v1/events", tag = "ingest",
    params(("token" = Option<String>, Query, description = "the ingest token, for senders that can only be given a URL")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "one Phraseanet event, either format"),
    responses((status = 202, description = "stored durably, with one delivery per client that wants it", body = Accepted),
        (status = 400, description = "not a valid event", body = ErrorBody), (status = 401, description = "wrong or missing ingest token", body = ErrorBody),
        (status = 413, description = "over `server.max_body`", body = ErrorBody), (status = 415, description = "another content type", body = ErrorBody)))]
pub(super) async fn post_event(
    State(st): State<Arc<Api>>,
    Q(q): Q<TokenQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    take(&st, &q, &headers, body, None).await
}

#[utoipa::path(post, path = "/v1/clients/{id}/events", tag = "ingest",
    params(("id" = String, Path, description = "the one client to deliver to"),
        ("token" = Option<String>, Query, description = "the ingest token: Phraseanet can only be given a URL")),
    request_body(content = serde_json::Value, content_type = "application/json", description = "one Phraseanet event, either format"),
    responses((status = 202, description = "stored durably, with a delivery to this client alone (none if it is disabled or its `events` leave this one out)", body = Accepted),
        (status = 400, description = "not a valid event", body = ErrorBody), (status = 401, description = "wrong or missing ingest token", body = ErrorBody),
        (status = 404, description = "no such client", body = ErrorBody),
        (status = 413, description = "over `server.max_body`", body = ErrorBody), (status = 415, description = "another content type", body = ErrorBody)))]
pub(super) async fn post_client_event(
    State(st): State<Arc<Api>>,
    P(id): P<String>,
    Q(q): Q<TokenQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    take(&st, &q, &headers, body, Some(&id)).await
}

/// Takes one event in (for every client that wants it, or for `only`), and
/// counts it by name and answer.
async fn take(
    st: &Api,
    q: &TokenQuery,
    headers: &HeaderMap,
    body: axum::body::Body,
    only: Option<&str>,
) -> Response {
    let mut name = "invalid";
    let response = ingest(st, q, headers, body, only, &mut name).await;
    let answer = match response.extensions().get::<Duplicate>() {
        Some(_) => "duplicate",
        None => crate::metrics::status_label(response.status().as_u16()),
    };
    crate::metrics::event_ingested(name, answer);
    response
}

async fn ingest(
    st: &Api,
    q: &TokenQuery,
    headers: &HeaderMap,
    body: axum::body::Body,
    only: Option<&str>,
    name: &mut &'static str,
) -> Response {
    if let Some(refused) = token_refusal(st, q, headers) {
        return refused;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json")
        && !mime.eq_ignore_ascii_case("application/vnd.phraseanet.event+json")
    {
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
    *name = crate::metrics::event_label(&event.name);
    let deliveries = match only {
        None => st.routes.fan_out(&event.name),
        Some(id) => match st.routes.to_client(id, &event.name) {
            Some(d) => d,
            None => return error(StatusCode::NOT_FOUND, format!("no client {id:?}")),
        },
    };
    let count = deliveries.len();
    // Only the shared route de-duplicates: the per-client one gets one copy
    // per application by design.
    let dedup = match (only, st.directory.config().server.dedup_window) {
        (None, Some(window)) => Some((
            identity(&event),
            event.received_at + window.as_millis() as i64,
        )),
        _ => None,
    };
    match st.queue.enqueue(event.clone(), deliveries, dedup).await {
        Ok(Ingested::Stored(_)) => {
            // A struct, not `json!`: no map of new strings to serialise once.
            #[derive(serde::Serialize)]
            struct Accepted<'a> {
                id: &'a str,
                deliveries: usize,
            }
            let accepted = Accepted {
                id: &event.id,
                deliveries: count,
            };
            (StatusCode::ACCEPTED, Json(accepted)).into_response()
        }
        Ok(Ingested::Duplicate(first)) => (
            StatusCode::ACCEPTED,
            axum::Extension(Duplicate),
            Json(json!({ "id": first, "deliveries": 0, "duplicate": true })),
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

/// Marks the answer to a copy inside the de-duplication window (for the metrics).
#[derive(Clone, Copy)]
struct Duplicate;

/// An event's own identity, for the de-duplication window: where the 4.1
/// envelope has them, the sending instance, its URL and the webhook's id;
/// otherwise a hash of the body.
fn identity(event: &Event) -> String {
    use sha2::{Digest, Sha256};
    match &event.source {
        // As JSON: no field's text can pass for another field's.
        Some(s) => {
            serde_json::to_string(&(&s.instance_name, &s.url, s.webhook_id)).expect("plain data")
        }
        None => format!("sha256:{}", hex::encode(Sha256::digest(&event.raw))),
    }
}
