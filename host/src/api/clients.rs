//! `/v1/clients/{id}/…`: what a client may see and do with its own token (an
//! operator may too): its settings, pause and resume, its deliveries and their
//! replay, and a new signing secret. The plugin routes are in `plugins`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::{Caller, ClientAccess};
use super::openapi::*;
use super::{Api, ApiError, ApiResult, P, json_body};
use crate::config::Client;
use crate::deliver::ssrf::AddressPolicy;
use crate::directory::Entry;

/// The keys a client may change itself; the rest (plugin file, delivery
/// settings, limits) are the operator's.
const CLIENT_KEYS: &[&str] = &["url", "events", "config", "enabled"];

pub(super) fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(get_own, patch_own))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(list_own))
        .routes(routes!(activity))
        .routes(routes!(get_own_delivery))
        .routes(routes!(replay_own))
        .routes(routes!(rotate))
}

#[utoipa::path(get, path = "/v1/clients/{id}", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "the client's settings (no secret), plugin and health", body = ClientView), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn get_own(access: ClientAccess, State(st): State<Arc<Api>>) -> ApiResult {
    Ok(Json(super::admin::client_view(&st, &access.entry).await?).into_response())
}

#[utoipa::path(patch, path = "/v1/clients/{id}", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    request_body(content = ClientChange, description = "a client changes `url`, `events`, `config`, `enabled`; an operator any key"),
    responses((status = 200, description = "the changed client, in force", body = ClientView),
        (status = 403, description = "a key only an operator may change", body = ErrorBody),
        (status = 409, description = "the client is the config file's", body = ErrorBody),
        (status = 422, description = "the change is invalid, or the URL is refused (the answer says why)", body = ErrorBody), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn patch_own(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    body: axum::body::Body,
) -> ApiResult {
    let patch: Map<String, Value> = json_body(&st, body).await?;
    if access.caller != Caller::Operator
        && let Some(k) = patch.keys().find(|k| !CLIENT_KEYS.contains(&k.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a client may change {} only; {k} is the operator's",
                CLIENT_KEYS.join(", ")
            ),
        ));
    }
    let entry = apply_patch(&st, access.id(), patch).await?;
    Ok(Json(super::admin::client_view(&st, &entry).await?).into_response())
}

/// Checks and applies a change to an API client; a new URL must pass the
/// address rules first.
pub(super) async fn apply_patch(
    st: &Api,
    id: &str,
    patch: Map<String, Value>,
) -> ApiResult<Arc<Entry>> {
    let current = st.directory.entry(id)?;
    if let Some(url) = patch.get("url").and_then(Value::as_str)
        && current.origin == crate::directory::Origin::Api
    {
        let mut spec = current.spec.clone();
        spec.extend(patch.clone());
        if let Ok(c) = st.directory.config().client_from_json(&spec) {
            check_url(&c, url).await?;
        }
    }
    let entry = st.directory.update(id, patch).await?;
    super::in_force(st).await;
    tracing::info!(client = %id, "client changed through the API");
    Ok(entry)
}

/// Whether `client` may be delivered to `url` under its address rules, checked
/// now so that the answer says why a URL is refused. (Deliveries check again at
/// every connection: a name may resolve elsewhere later.)
pub(super) async fn check_url(client: &Client, url: &str) -> ApiResult<()> {
    let policy = AddressPolicy::new(&client.delivery);
    let refuse = |why: String| ApiError::unprocessable(format!("url {url:?} is refused: {why}"));
    let private = |ip: std::net::IpAddr| {
        refuse(format!(
            "{ip} is a private, loopback or reserved address; an operator can open it with \
             allow_private_networks or allowed_networks"
        ))
    };
    let parsed = &client.url;
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) if !policy.allows(ip.into()) => Err(private(ip.into())),
        Some(url::Host::Ipv6(ip)) if !policy.allows(ip.into()) => Err(private(ip.into())),
        Some(url::Host::Domain(name)) => {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((name, port)),
            )
            .await
            .map_err(|_| refuse(format!("{name} did not resolve within 5 s")))?
            .map_err(|e| refuse(format!("{name} does not resolve: {e}")))?;
            for a in addrs {
                if !policy.allows(a.ip()) {
                    return Err(refuse(format!(
                        "{name} resolves to {}, a private, loopback or reserved address; an operator can \
                         open it with allow_private_networks or allowed_networks",
                        a.ip()
                    )));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[utoipa::path(post, path = "/v1/clients/{id}/pause", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "paused: events are kept, nothing is sent until resumed", body = ClientView), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn pause(access: ClientAccess, State(st): State<Arc<Api>>) -> ApiResult {
    let who = match access.caller {
        Caller::Operator => "an operator",
        Caller::Client(_) => "the client",
    };
    st.dispatcher
        .set_paused(
            access.id(),
            Some(format!("paused by {who} through the API")),
        )
        .await?;
    tracing::info!(client = %access.id(), "client paused through the API");
    Ok(Json(super::admin::client_view(&st, &access.entry).await?).into_response())
}

#[utoipa::path(post, path = "/v1/clients/{id}/resume", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "resumed (also after a 410 or `disable_after`): the kept events go out, in order", body = ClientView), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn resume(access: ClientAccess, State(st): State<Arc<Api>>) -> ApiResult {
    st.dispatcher.set_paused(access.id(), None).await?;
    tracing::info!(client = %access.id(), "client resumed through the API");
    Ok(Json(super::admin::client_view(&st, &access.entry).await?).into_response())
}

#[utoipa::path(get, path = "/v1/clients/{id}/deliveries", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id"), ("state" = Option<String>, Query, description = "pending, held, plugin_error, retrying, delivered, skipped or failed"),
        ("event" = Option<String>, Query, description = "only events of this name"),
        ("since" = Option<String>, Query, description = "created at or after: RFC 3339, ms since 1970, or a duration ago (`2h`)"),
        ("until" = Option<String>, Query, description = "created before, as `since`"),
        ("limit" = Option<u32>, Query, description = "1 to 500, 50 by default"),
        ("cursor" = Option<String>, Query, description = "the `next_cursor` of the page before")),
    responses((status = 200, description = "the client's deliveries, newest first", body = DeliveryPage), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn list_own(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    super::admin::deliveries_page(&st, raw, Some(access.id())).await
}

#[utoipa::path(get, path = "/v1/clients/{id}/activity", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "the client's last hour: deliveries made and attempts per minute, deliveries by state, the last success", body = crate::store::inspect::Activity), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn activity(access: ClientAccess, State(st): State<Arc<Api>>) -> ApiResult {
    let (id, now) = (access.id().to_string(), crate::model::now_ms());
    let activity = st.store.activity(now, 60, Some(&id)).await?;
    Ok(Json(activity).into_response())
}

#[utoipa::path(get, path = "/v1/clients/{id}/deliveries/{did}", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id"), ("did" = String, Path, description = "the delivery's id (`msg_…`, its `webhook-id`)")),
    responses((status = 200, description = "the delivery, its event, its rendering and every attempt", body = DeliveryDetail), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn get_own_delivery(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    P((_, did)): P<(String, String)>,
) -> ApiResult {
    // Behind the operator's plugin the client sees what it was sent, not the
    // event the plugin may have redacted.
    let hide = access.caller != Caller::Operator && access.entry.client.plugin.is_some();
    super::admin::delivery(&st, did, Some(access.id()), hide).await
}

#[utoipa::path(post, path = "/v1/clients/{id}/deliveries/{did}/replay", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id"), ("did" = String, Path, description = "the delivery's id (`msg_…`, its `webhook-id`)")),
    responses((status = 202, description = "due again", body = Replayed), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn replay_own(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    P((_, did)): P<(String, String)>,
) -> ApiResult {
    super::admin::replay_answer(&st, Some(did), Some(access.id().to_string()), None, None).await
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the secrets before keep signing: `"24h"` (the default), at most 30 days.
    overlap: Option<String>,
}

#[utoipa::path(post, path = "/v1/clients/{id}/secret/rotate", tag = "client", security(("operator" = []), ("client" = [])), params(("id" = String, Path, description = "the client's id")),
    request_body(content = Rotate),
    responses((status = 200, description = "the new secret, shown this once; the ones before sign until the overlap ends", body = Rotated),
        (status = 409, description = "the client's secret is set in the config file", body = ErrorBody), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody)))]
async fn rotate(
    access: ClientAccess,
    State(st): State<Arc<Api>>,
    body: axum::body::Body,
) -> ApiResult {
    let req: Rotate = json_body(&st, body).await?;
    let overlap = match &req.overlap {
        None => Duration::from_secs(24 * 3600),
        Some(s) => humantime::parse_duration(s)
            .ok()
            .filter(|d| *d <= Duration::from_secs(30 * 24 * 3600))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "overlap {s:?} must be a duration (\"24h\") of at most 30 days"
                ))
            })?,
    };
    let secret = st.directory.rotate_secret(access.id(), overlap).await?;
    super::in_force(&st).await;
    tracing::info!(client = %access.id(), overlap = %humantime::format_duration(overlap), "signing secret rotated");
    Ok(Json(json!({
        "secret": secret,
        "previous_sign_until": crate::model::now_ms() + overlap.as_millis() as i64,
    }))
    .into_response())
}
