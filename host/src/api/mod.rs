//! The HTTP side: the routes, and the state they share. One [`Api`] value holds
//! what every route may use.
//!
//! - [`events`]: `POST /v1/events`, Phraseanet's events in;
//! - [`status`]: `GET /v1/status`, for operators; `GET /healthz` for probes;
//! - [`auth`]: who is calling (an operator token, a client's token, none);
//! - [`admin`]: `/v1/admin/…`, the operator's routes: clients, tokens,
//!   deliveries, replays, plugins;
//! - [`clients`]: `/v1/clients/{id}/…`, a client's own: settings, pause,
//!   deliveries, secret rotation;
//! - [`plugins`]: `/v1/clients/{id}/plugin…`, upload, versions, activation,
//!   dry run;
//! - [`openapi`]: the OpenAPI document of all of it, from the code;
//! - [`listen`]: accepting connections, with timeouts and a connection cap.
//!
//! Every answer of the API is JSON; every refusal `{"error": …}` with a 4xx that
//! fits ([`ApiError`]).

mod admin;
pub mod auth;
mod clients;
mod events;
pub mod listen;
mod openapi;
mod plugins;
mod status;

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::deliver::Dispatcher;
use crate::directory::{DirError, Directory};
use crate::plugin::registry::Registry;
use crate::queue::Queue;
use crate::route::Routes;
use crate::store::{Store, StoreError};

/// What the routes share.
pub struct Api {
    pub max_body: usize,
    /// The largest plugin upload (`plugins.max_file_size`).
    pub max_upload: usize,
    pub body_timeout: std::time::Duration,
    pub routes: Routes,
    pub queue: Arc<dyn Queue>,
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
    pub directory: Arc<Directory>,
    pub store: Store,
    pub auth: auth::Auth,
    /// When `/metrics` last read the queue's depth from the store.
    pub depth_read: std::sync::Mutex<Option<std::time::Instant>>,
    /// Clients with an upload being compiled: one at a time each.
    pub uploading: std::sync::Mutex<std::collections::HashSet<String>>,
}

pub fn router(state: Arc<Api>) -> axum::Router {
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    let (routes, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(events::post_event))
        .routes(routes!(events::post_events_batch))
        .routes(routes!(events::post_client_event))
        .routes(routes!(status::status))
        .routes(routes!(status::metrics))
        .routes(routes!(status::ready))
        .routes(routes!(status::overview))
        .merge(admin::routes())
        .merge(clients::routes())
        .merge(plugins::routes())
        .split_for_parts();
    let doc = Bytes::from(doc.to_json().expect("the document serialises"));
    routes
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/v1/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        // Bodies are read with our own limits, so a 413 says what the limit is.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route; events go to POST /v1/events, the API is described at GET /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method")
        })
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// A refusal: its status and what to say.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError(status, msg.into())
    }
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }
    fn unprocessable(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg)
    }
    fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

impl From<DirError> for ApiError {
    fn from(e: DirError) -> ApiError {
        let status = match &e {
            DirError::NotFound(_) => StatusCode::NOT_FOUND,
            DirError::ManagedByFile(_) | DirError::Exists(_) | DirError::OperatorPlugin(..) => {
                StatusCode::CONFLICT
            }
            DirError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DirError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!("an API call could not use the store: {e}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is not available: {e}"),
        )
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is not available: {e}"),
        )
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

/// axum's `Path`, refusing with a JSON error like every other refusal.
pub struct P<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for P<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| P(t))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// axum's `Query`, refusing with a JSON error.
pub struct Q<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Q<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| Q(t))
            .map_err(|e| ApiError::bad(e.body_text()))
    }
}

/// Waits until a change of the clients is in force in the workers, so that an
/// answer means what it says (the next delivery uses the change).
async fn in_force(st: &Api) {
    if let Err(e) = st.dispatcher.reconcile().await {
        tracing::error!("cannot apply a change of clients: {e:#}");
    }
}

/// Reads a request body of at most `limit` bytes (the config's `key`), within
/// the body timeout: 413 over the limit, 408 too slow, 400 a broken body.
async fn read_body(st: &Api, body: axum::body::Body, limit: usize, key: &str) -> ApiResult<Bytes> {
    let read = tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, limit));
    match read.await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over the limit of {limit} bytes ({key})"),
                ))
            } else {
                Err(ApiError::bad(format!("the body could not be read: {e}")))
            }
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} (server.body_timeout)",
                humantime::format_duration(st.body_timeout)
            ),
        )),
    }
}

/// A JSON request body as `T`; an empty body is `{}`.
async fn json_body<T: serde::de::DeserializeOwned>(
    st: &Api,
    body: axum::body::Body,
) -> ApiResult<T> {
    let bytes = read_body(st, body, st.max_body, "server.max_body").await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad(format!("the body is not the JSON expected: {inner}"))
        } else {
            ApiError::bad(format!("{path}: {inner}"))
        }
    })
}

/// The query string's pairs; a key given twice keeps the last.
fn query_pairs(raw: Option<String>) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The 401 to answer when the ingest token is configured and not given.
fn token_refusal(st: &Api, q: &TokenQuery, headers: &HeaderMap) -> Option<Response> {
    let config = st.directory.config();
    let expected = config.server.ingest_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(q.token.as_deref());
    match given {
        Some(t) if auth::constant_time_eq(t.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "wrong token")),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "a token is required: `Authorization: Bearer <token>` or `?token=<token>`",
        )),
    }
}

/// Milliseconds from an RFC 3339 time or a duration meaning that long ago.
fn parse_time(key: &str, s: &str) -> ApiResult<i64> {
    crate::model::parse_time(s).ok_or_else(|| {
        ApiError::bad(format!(
            "{key}={s:?} is neither a time (2026-05-24T21:00:00Z), milliseconds since 1970, nor a duration ago (2h)"
        ))
    })
}
