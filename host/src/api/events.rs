//! `POST /v1/events`: Phraseanet's events come in, for every client that wants
//! them; `POST /v1/clients/{id}/events`: for that one client (a Phraseanet
//! application whose webhook URL points at hookwasm: Phraseanet has applied that
//! application's rights and event list already); `POST /v1/events:batch`: a
//! back-fill, events one per line, all checked before any is stored.
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
// The request whole, not a `HeaderMap` extractor, which copies every header.
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::openapi::*;
use super::{Api, P, Q, TokenQuery, error, read_body, token_refusal};
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
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    take(&st, &q, &parts.headers, body, None).await
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
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    take(&st, &q, &parts.headers, body, Some(&id)).await
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
    if let Some(refused) = content_type_refusal(headers, EVENT_TYPES) {
        return refused;
    }
    let bytes = match read_limited(st, body, st.max_body, "server.max_body").await {
        Ok(b) => b,
        Err(refused) => return refused,
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
    let dedup = match only {
        None => dedup_key(st, &event),
        Some(_) => None,
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

/// The body, whole, within `limit` bytes (named by the config `key`) and
/// `server.body_timeout`; or the refusal to answer.
async fn read_limited(
    st: &Api,
    body: axum::body::Body,
    limit: usize,
    key: &str,
) -> Result<Bytes, Response> {
    read_body(st, body, limit, key)
        .await
        .map_err(IntoResponse::into_response)
}

/// What one event's POST may be sent as.
const EVENT_TYPES: &[&str] = &["application/json", "application/vnd.phraseanet.event+json"];
/// What a batch may be sent as: one event per line.
const BATCH_TYPES: &[&str] = &["application/x-ndjson", "application/jsonl"];

/// The 415 to answer when the body's type is none of `accepted`.
fn content_type_refusal(headers: &HeaderMap, accepted: &[&str]) -> Option<Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if accepted.iter().any(|a| mime.eq_ignore_ascii_case(a)) {
        return None;
    }
    let got = if ct.is_empty() {
        "none".to_string()
    } else {
        format!("{ct:?}")
    };
    Some(error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("content type {got}; send {}", accepted.join(" or ")),
    ))
}

/// The de-duplication key of an event of the shared route, and until when it
/// holds; none without `server.dedup_window`.
fn dedup_key(st: &Api, event: &Event) -> Option<(String, i64)> {
    let window = st.directory.config().server.dedup_window?;
    Some((
        identity(event),
        event.received_at + window.as_millis() as i64,
    ))
}

#[utoipa::path(post, path = "/v1/events:batch", tag = "ingest",
    params(("token" = Option<String>, Query, description = "the ingest token")),
    request_body(content = String, content_type = "application/x-ndjson", description = "Phraseanet events, one per line, either format; blank lines are skipped"),
    responses((status = 202, description = "every event stored durably, each with one delivery per client that wants it, in the order of the lines", body = BatchAccepted),
        (status = 400, description = "lines that are not valid events, or no event at all: nothing was stored", body = BatchRefused),
        (status = 401, description = "wrong or missing ingest token", body = ErrorBody),
        (status = 413, description = "over `server.max_batch_body` or `server.max_batch_events` (a line over `server.max_body` is one of the 400's lines)", body = ErrorBody),
        (status = 415, description = "another content type", body = ErrorBody),
        (status = 503, description = "some events could not be stored: the answer says which lines to send again", body = BatchAccepted)))]
pub(super) async fn post_events_batch(
    State(st): State<Arc<Api>>,
    Q(q): Q<TokenQuery>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let response = batch(&st, &q, &parts.headers, body).await;
    if !response.status().is_success() && response.status() != StatusCode::SERVICE_UNAVAILABLE {
        crate::metrics::event_ingested(
            "invalid",
            crate::metrics::status_label(response.status().as_u16()),
        );
    }
    response
}

/// A back-fill: many events in one request, all checked before any is stored,
/// then stored together (they share the store's commits), answered once every
/// one is on disk. Each is an event of the shared route, as if POSTed alone.
async fn batch(st: &Api, q: &TokenQuery, headers: &HeaderMap, body: axum::body::Body) -> Response {
    if let Some(refused) = token_refusal(st, q, headers) {
        return refused;
    }
    if let Some(refused) = content_type_refusal(headers, BATCH_TYPES) {
        return refused;
    }
    let (max_bytes, max_events) = {
        let config = st.directory.config();
        (config.server.max_batch_body, config.server.max_batch_events)
    };
    let bytes = match read_limited(st, body, max_bytes, "server.max_batch_body").await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    // Every line first: a batch with one bad line stores nothing, so sending
    // it again, fixed, cannot store an event twice.
    let mut events = Vec::new();
    let mut refused = Vec::new();
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes); // a BOM
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        // CRLF lines too: the `\r` is not part of the event.
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if events.len() + refused.len() == max_events {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the batch holds more than {max_events} events (server.max_batch_events)"),
            );
        }
        let line_no = i + 1;
        if line.len() > st.max_body {
            refused.push(LineError {
                line: line_no,
                error: format!("over the limit of {} bytes (server.max_body)", st.max_body),
            });
            continue;
        }
        // Its own copy: an event outlives the batch's buffer (it waits in the
        // queue until delivered), and should not keep the whole batch alive.
        match Event::parse(new_event_id(), Bytes::copy_from_slice(line)) {
            Ok(e) => events.push((line_no, Arc::new(e))),
            Err(e) => refused.push(LineError {
                line: line_no,
                error: e.to_string(),
            }),
        }
    }
    drop(bytes); // each event has its own copy
    if !refused.is_empty() {
        let first = &refused[0];
        let summary = format!(
            "{} of {} lines are not events, so nothing was stored; line {}: {}",
            refused.len(),
            refused.len() + events.len(),
            first.line,
            first.error
        );
        refused.truncate(100);
        let body = BatchRefused {
            error: summary,
            lines: refused,
        };
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if events.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the batch holds no event: send one event per line",
        );
    }
    // Stored in the lines' order, so each client's deliveries keep it; on the
    // embedded store they share its commits.
    let mut counts = Vec::with_capacity(events.len());
    let all = events
        .iter()
        .map(|(_, event)| {
            let deliveries = st.routes.fan_out(&event.name);
            counts.push(deliveries.len());
            (event.clone(), deliveries, dedup_key(st, event))
        })
        .collect();
    // In a task of its own: a sender that hangs up does not cut the batch
    // short; what was sent to the store is stored, whoever hears about it.
    let queue = st.queue.clone();
    let stored = match tokio::spawn(async move { queue.enqueue_all(all).await }).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!("a batch of events was not stored: {e}");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the batch could not be stored, send it again",
            );
        }
    };
    let mut items = Vec::with_capacity(events.len());
    let (mut total, mut failed) = (0, Vec::new());
    for (((line, event), count), result) in events.iter().zip(counts).zip(stored) {
        let label = crate::metrics::event_label(&event.name);
        let mut item = BatchItem {
            line: *line,
            id: None,
            deliveries: 0,
            duplicate: false,
            error: None,
        };
        match result {
            Ok(Ingested::Stored(_)) => {
                crate::metrics::event_ingested(label, "202");
                item.id = Some(event.id.clone());
                item.deliveries = count;
                total += count;
            }
            Ok(Ingested::Duplicate(first)) => {
                crate::metrics::event_ingested(label, "duplicate");
                item.id = Some(first);
                item.duplicate = true;
            }
            Err(e) => {
                crate::metrics::event_ingested(label, "503");
                failed.push(*line);
                item.error = Some(format!("not stored, send it again: {e}"));
            }
        }
        items.push(item);
    }
    let status = if failed.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let error = (!failed.is_empty()).then(|| {
        let shown: Vec<String> = failed.iter().take(20).map(usize::to_string).collect();
        let more = if failed.len() > 20 { ", …" } else { "" };
        let said = format!(
            "{} of {} events could not be stored (lines {}{more}); send those lines again, \
             or the batch from line {} on with server.dedup_window set",
            failed.len(),
            items.len(),
            shown.join(", "),
            failed[0]
        );
        tracing::error!("{said}");
        said
    });
    let body = BatchAccepted {
        error,
        events: items,
        deliveries: total,
    };
    (status, Json(body)).into_response()
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
