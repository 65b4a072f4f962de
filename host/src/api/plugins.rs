//! A client's own plugin, through the API: upload a version, list the versions,
//! make one active (or go back to an earlier one), and dry-run one on an event;
//! and, for operators, every plugin the host runs.
//!
//! An upload is compiled off the request's task (the blocking pool, one
//! compilation per core) and checked against the plugin world before anything
//! is stored: bytes that do not load change nothing and are answered 422 with
//! why. Good bytes are stored by content hash (shared by whoever uploads the
//! same), and, unless `?activate=false`, become the client's active plugin: an
//! upload made active serves over the config's `plugin` file (see `directory`).
//! Earlier versions are kept, so activating one is the rollback.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::{ClientAccess, Operator};
use super::openapi::*;
use super::{Api, ApiError, ApiResult, json_body, query_pairs, read_body};
use crate::event::Event;
use crate::model::{new_delivery_id, new_event_id, now_ms};
use crate::plugin::registry::{Lookup, Source};
use crate::plugin::{CallContext, Plugin, Verdict};

pub(super) fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(versions, upload, deactivate))
        .routes(routes!(activate))
        .routes(routes!(dry_run))
        .routes(routes!(list_all))
}

#[utoipa::path(put, path = "/v1/clients/{id}/plugin", tag = "plugin", security(("operator" = []), ("client" = [])),
    params(("id" = String, Path, description = "the client's id"), ("activate" = Option<bool>, Query, description = "make it the active version (default true)")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "the component (`.wasm`)"),
    responses((status = 201, description = "stored; active unless `activate=false`", body = Uploaded),
        (status = 413, description = "over `plugins.max_file_size`", body = ErrorBody),
        (status = 422, description = "refused, and why: not a component, no supported world, a wrong import; nothing changed", body = ErrorBody), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn upload(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    body: axum::body::Body,
) -> ApiResult {
    let activate = match query_pairs(raw).get("activate").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(ApiError::bad(format!(
                "activate={v:?} must be true or false"
            )));
        }
    };
    // The body is read before any other refusal: the caller is known, and a
    // refusal that leaves a body unread makes most HTTP clients fail on the
    // write instead of showing the answer.
    let bytes = read_body(&st, body, st.max_upload, "plugins.max_file_size").await?;
    st.directory.uploads_allowed(access.id())?;
    let _one = Uploading::start(&st, access.id())?;
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "the body is empty; send the .wasm file as the body",
        ));
    }
    let plugin = st
        .registry
        .compile_upload(bytes.to_vec())
        .await
        .map_err(|e| {
            ApiError::unprocessable(format!("the plugin is refused, nothing changed: {e}"))
        })?;
    let (id, version, world) = (
        access.id().to_string(),
        plugin.hash.clone(),
        plugin.world.as_str().to_string(),
    );
    st.store.put_upload(&id, &version, bytes, &world).await?;
    if activate {
        st.directory.set_upload(&id, Some(version.clone())).await?;
        super::in_force(&st).await;
    }
    trim(&st);
    tracing::info!(client = %id, version = %version, world = plugin.world.as_str(), activate, "plugin uploaded");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "version": version,
            "world": plugin.world.as_str(),
            "imports": plugin.imports,
            "size": plugin.size,
            "active": activate,
        })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/clients/{id}/plugin", tag = "plugin", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "what serves, and every version uploaded", body = Versions), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn versions(access: ClientAccess, State(st): State<Arc<Api>>) -> ApiResult {
    let id = access.id().to_string();
    let uploads = st.store.uploads(&id).await?;
    let active = match &access.entry.plugin {
        Source::Upload(v) => Some(v.clone()),
        _ => None,
    };
    let versions: Vec<Value> = uploads
        .into_iter()
        .map(|u| {
            let mut v = serde_json::to_value(&u).unwrap_or_default();
            v["active"] = (Some(&u.version) == active.as_ref()).into();
            v
        })
        .collect();
    let serving = match &access.entry.plugin {
        Source::None => json!({ "source": "none" }),
        Source::File(f) => json!({ "source": "file", "file": f }),
        Source::Upload(v) => json!({ "source": "upload", "version": v }),
    };
    Ok(Json(json!({ "serving": serving, "versions": versions })).into_response())
}

/// One upload at a time per client: a second while one compiles is 429.
struct Uploading<'a> {
    st: &'a Api,
    id: String,
}

impl<'a> Uploading<'a> {
    fn start(st: &'a Api, id: &str) -> Result<Uploading<'a>, ApiError> {
        if !st.uploading.lock().unwrap().insert(id.to_string()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "an upload of this client's is being compiled; send the next when it is answered",
            ));
        }
        Ok(Uploading {
            st,
            id: id.to_string(),
        })
    }
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        self.st.uploading.lock().unwrap().remove(&self.id);
    }
}

/// Keeps the compiled uploads bounded, the active ones always.
fn trim(st: &Api) {
    let active = st
        .directory
        .current()
        .entries
        .iter()
        .filter_map(|e| match &e.plugin {
            Source::Upload(v) => Some(v.clone()),
            _ => None,
        })
        .collect();
    st.registry.trim_uploads(&active);
}

/// The compiled version `version` of `client`'s uploads: 404 if it uploaded no
/// such version, 422 if it does not load here.
async fn uploaded(st: &Api, client: &str, version: &str) -> ApiResult<Arc<Plugin>> {
    let bytes = st
        .store
        .upload_bytes(client, version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("client {client:?} uploaded no version {version:?}"))
        })?;
    st.registry
        .compile_upload(bytes)
        .await
        .map_err(|e| ApiError::unprocessable(format!("version {version} does not load: {e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Activate {
    /// An uploaded version of this client's.
    version: String,
}

#[utoipa::path(post, path = "/v1/clients/{id}/plugin/activate", tag = "plugin", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    request_body(content = Activate),
    responses((status = 200, description = "active from the next delivery on (rollback: an earlier version)", body = Activated),
        (status = 404, description = "no such version of this client's", body = ErrorBody),
        (status = 422, description = "the version does not load here", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn activate(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    body: axum::body::Body,
) -> ApiResult {
    let req: Activate = json_body(&st, body).await?;
    let plugin = uploaded(&st, access.id(), &req.version).await?;
    st.directory
        .set_upload(access.id(), Some(plugin.hash.clone()))
        .await?;
    super::in_force(&st).await;
    trim(&st);
    tracing::info!(client = %access.id(), version = %plugin.hash, "plugin version made active");
    Ok(
        Json(json!({ "version": plugin.hash, "world": plugin.world.as_str(), "active": true }))
            .into_response(),
    )
}

/// No upload serves any more: the config's `plugin` file does, or none.
#[utoipa::path(delete, path = "/v1/clients/{id}/plugin", tag = "plugin", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "no upload serves: the config's `plugin` file does, or none", body = Deactivated), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn deactivate(access: ClientAccess, State(st): State<Arc<Api>>) -> ApiResult {
    st.directory.set_upload(access.id(), None).await?;
    super::in_force(&st).await;
    tracing::info!(client = %access.id(), "uploaded plugin no longer active");
    let entry = st.directory.entry(access.id())?;
    Ok(Json(json!({ "serving": entry.plugin.kind() })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DryRun {
    /// An uploaded version; the one serving when absent.
    version: Option<String>,
    /// An event, as Phraseanet sends it.
    #[schema(value_type = Option<Object>)]
    event: Option<Box<serde_json::value::RawValue>>,
    /// Or a stored event one of the client's deliveries came from.
    event_id: Option<String>,
}

/// The verdict, as `plugin test` prints it, and the headers that would be sent.
#[derive(Serialize, utoipa::ToSchema)]
struct DryRunAnswer {
    /// The version that ran: `file@hash` or `upload@version`; none without a plugin.
    plugin: Option<String>,
    event_id: String,
    /// The event the plugin was given, as received; left out for a client
    /// behind the operator's plugin, which may exist to redact it.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_body: Option<String>,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    /// The plugin's own headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Vec<(String, String)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    /// Every header of the request that would be sent (signature included).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_headers: Option<Vec<(String, String)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[utoipa::path(post, path = "/v1/clients/{id}/plugin/dry-run", tag = "plugin", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    request_body(content = DryRun),
    responses((status = 200, description = "the verdict (`deliver`, `skip` or `error`) and what would be sent; nothing is delivered", body = DryRunAnswer),
        (status = 404, description = "no such version, or no such event among the client's", body = ErrorBody),
        (status = 422, description = "the event is not a Phraseanet event, or the plugin does not load", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn dry_run(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    body: axum::body::Body,
) -> ApiResult {
    let req: DryRun = json_body(&st, body).await?;
    let client = access.entry.client.clone();
    let event = match (&req.event, &req.event_id) {
        (Some(raw), None) => {
            let bytes = Bytes::copy_from_slice(raw.get().as_bytes());
            Event::parse(new_event_id(), bytes).map_err(|e| {
                ApiError::unprocessable(format!("event: not a Phraseanet event: {e}"))
            })?
        }
        (None, Some(id)) => {
            let (eid, body, received_at) = st
                .store
                .event_of_client(&client.id, id)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!("no event {id:?} among this client's deliveries"))
                })?;
            let mut event = Event::parse(eid, Bytes::from(body)).map_err(|e| {
                ApiError::unprocessable(format!("the stored event no longer parses: {e}"))
            })?;
            event.received_at = received_at;
            event
        }
        _ => {
            return Err(ApiError::bad(
                "give either \"event\" (an event) or \"event_id\" (a stored one)",
            ));
        }
    };
    let plugin = match &req.version {
        Some(v) => {
            // With the operator's plugin, only that one runs on the client's
            // events: an upload of its own could see what it redacts.
            st.directory.uploads_allowed(&client.id)?;
            Some(uploaded(&st, &client.id, v).await?)
        }
        None => match st.registry.lookup(&access.entry.plugin) {
            None => None,
            Some(Lookup::Ready(p)) => Some(p),
            Some(Lookup::Missing) => {
                return Err(ApiError::unprocessable(
                    "the client's plugin is not there: its deliveries are held; upload one or name a version",
                ));
            }
            Some(Lookup::Broken(e)) => {
                return Err(ApiError::unprocessable(format!(
                    "the client's plugin does not load: {e}"
                )));
            }
        },
    };
    let msg_id = new_delivery_id();
    let event = Arc::new(event);
    let (tag, result) = match plugin {
        None => (
            None,
            Ok(Verdict::Deliver(crate::model::Rendered {
                body: event.raw.to_vec(),
                content_type: None,
                headers: Vec::new(),
            })),
        ),
        Some(p) => {
            let runtime = st.registry.runtime().clone();
            let (c, ev, id) = (client.clone(), event.clone(), msg_id.clone());
            let tag = format!("{}@{}", p.file, p.hash);
            let result = tokio::task::spawn_blocking(move || {
                let cx = CallContext {
                    client_id: &c.id,
                    delivery_id: &id,
                    config: &c.config,
                    limits: &c.limits,
                };
                runtime.call(&p, &ev, &cx)
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the call crashed: {e}"),
                )
            })?;
            (Some(tag), result)
        }
    };
    let shown = req.event.is_some()
        || access.caller == super::auth::Caller::Operator
        || access.entry.client.plugin.is_none();
    let mut answer = DryRunAnswer {
        plugin: tag,
        event_id: event.id.clone(),
        event_body: shown.then(|| String::from_utf8_lossy(&event.raw).into_owned()),
        verdict: "deliver",
        content_type: None,
        headers: None,
        body: None,
        body_base64: None,
        request_headers: None,
        reason: None,
        kind: None,
        error: None,
    };
    match result {
        Ok(Verdict::Deliver(r)) => {
            use base64::Engine as _;
            let sent = crate::deliver::request_headers(&client, &msg_id, now_ms() / 1000, &r);
            // The signature is shown as what it would be, never its value: a
            // dry run must not sign bytes of the caller's choosing.
            answer.request_headers = Some(
                sent.iter()
                    .map(|(k, v)| {
                        let value = if k == "webhook-signature" {
                            let n = v.as_bytes().split(|b| *b == b' ').count();
                            format!(
                                "v1,<redacted> ({n} signature{})",
                                if n == 1 { "" } else { "s" }
                            )
                        } else {
                            String::from_utf8_lossy(v.as_bytes()).into_owned()
                        };
                        (k.to_string(), value)
                    })
                    .collect(),
            );
            answer.content_type = Some(
                r.content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            );
            match String::from_utf8(r.body) {
                Ok(text) => answer.body = Some(text),
                Err(e) => {
                    answer.body_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))
                }
            }
            answer.headers = Some(r.headers);
        }
        Ok(Verdict::Skip(reason)) => {
            answer.verdict = "skip";
            answer.reason = Some(reason);
        }
        Err(e) => {
            answer.verdict = "error";
            answer.kind = Some(e.kind());
            answer.error = Some(e.to_string());
        }
    }
    Ok(Json(answer).into_response())
}

/// `GET /v1/admin/plugins`: the folder's plugins and every uploaded version
/// compiled here, with their call figures.
#[utoipa::path(get, path = "/v1/admin/plugins", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "the folder's plugins and the uploaded versions, with calls, p50/p99 call time and traps", body = serde_json::Value), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
pub(super) async fn list_all(_: Operator, State(st): State<Arc<Api>>) -> ApiResult {
    let snapshot = st.directory.current();
    let uploads: Vec<Value> = st
        .registry
        .uploads()
        .into_iter()
        .map(|(version, loaded)| {
            let serving: Vec<&str> = snapshot
                .entries
                .iter()
                .filter(|e| e.plugin == Source::Upload(version.clone()))
                .map(|e| e.client.id.as_str())
                .collect();
            match loaded {
                Ok(p) => json!({
                    "version": version,
                    "world": p.world.as_str(),
                    "size": p.size,
                    "imports": p.imports,
                    "loaded_at": p.loaded_at,
                    "serving_clients": serving,
                    "calls": p.stats.figures(),
                }),
                Err(e) => json!({ "version": version, "error": e, "serving_clients": serving }),
            }
        })
        .collect();
    Ok(Json(json!({ "files": st.registry.status(), "uploads": uploads })).into_response())
}
