//! `/v1/admin/…`: the operator's routes. Clients (the file's are read-only here),
//! their API tokens, every delivery with its attempts, replays, and the plugins.
//! Each takes an operator token ([`Operator`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::auth::Operator;
use super::openapi::*;
use super::{Api, ApiError, ApiResult, P, json_body, parse_time, query_pairs};
use crate::directory::Entry;
use crate::model::State as DeliveryState;
use crate::store::inspect;

pub(super) fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::new()
        .routes(routes!(list_clients, create_client))
        .routes(routes!(get_client, patch_client, delete_client))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(replay_one))
        .routes(routes!(replay_many))
}

/// A client as the API shows it: its settings (never a secret), where it is
/// declared, where its plugin comes from, and its health.
pub(super) async fn client_view(st: &Api, entry: &Entry) -> ApiResult<Value> {
    use crate::plugin::registry::Source;
    let id = &entry.client.id;
    let (disabled, failing_since, in_flight, state) = match st.dispatcher.client_status(id) {
        Some(s) => (
            s.disabled,
            s.failing_since,
            s.in_flight,
            Some(s.plugin_state),
        ),
        None => {
            let h = st.queue.health(id).await?.unwrap_or_default();
            (h.disabled, h.failing_since, 0, None)
        }
    };
    let plugin = PluginRef {
        source: entry.plugin.kind().to_string(),
        file: match &entry.plugin {
            Source::File(f) => Some(f.clone()),
            _ => None,
        },
        version: match &entry.plugin {
            Source::Upload(v) => Some(v.clone()),
            _ => None,
        },
        state: state.filter(|_| entry.plugin != Source::None),
    };
    let now = crate::model::now_ms();
    let view = ClientView {
        id: id.clone(),
        origin: entry.origin,
        settings: Value::Object(entry.spec.clone()),
        enabled: entry.client.enabled,
        paused: disabled.is_some(),
        disabled_reason: disabled,
        failing_since,
        in_flight,
        plugin,
        signing_secrets: entry
            .client
            .secrets
            .iter()
            .filter(|s| s.signs_at(now))
            .count(),
    };
    Ok(serde_json::to_value(view).expect("plain data serialises"))
}

#[utoipa::path(get, path = "/v1/admin/clients", tag = "operator", security(("operator" = [])),
    responses((status = 200, description = "every client, the file's and the API's", body = ClientList), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn list_clients(_: Operator, State(st): State<Arc<Api>>) -> ApiResult {
    let snapshot = st.directory.current();
    let mut out = Vec::new();
    for e in &snapshot.entries {
        out.push(client_view(&st, e).await?);
    }
    Ok(Json(json!({ "clients": out })).into_response())
}

#[utoipa::path(post, path = "/v1/admin/clients", tag = "operator", security(("operator" = [])),
    request_body(content = ClientSpec, description = "the keys of a `[[clients]]` table; without `secret`, one is made"),
    responses((status = 201, description = "created; `secret` is shown this once", body = ClientCreated),
        (status = 409, description = "the id exists (in the store or the config file)", body = ErrorBody),
        (status = 422, description = "a key is wrong, or the URL is refused by the address rules", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn create_client(
    _: Operator,
    State(st): State<Arc<Api>>,
    body: axum::body::Body,
) -> ApiResult {
    let spec: Map<String, Value> = json_body(&st, body).await?;
    if let Some(url) = spec.get("url").and_then(Value::as_str) {
        // Checked with the defaults it would get: the operator may open
        // private networks per client in the same body.
        let probe = st.directory.config().client_from_json(&spec).ok();
        if let Some(c) = probe {
            super::clients::check_url(&c, url).await?;
        }
    }
    let (entry, secret) = st.directory.create(spec).await?;
    super::in_force(&st).await;
    tracing::info!(client = %entry.client.id, "client created through the API");
    let mut view = client_view(&st, &entry).await?;
    view["secret"] = secret.into();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/v1/admin/clients/{id}", tag = "operator", security(("operator" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "the client (no secret)", body = ClientView), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn get_client(_: Operator, State(st): State<Arc<Api>>, P(id): P<String>) -> ApiResult {
    let entry = st.directory.entry(&id)?;
    Ok(Json(client_view(&st, &entry).await?).into_response())
}

#[utoipa::path(patch, path = "/v1/admin/clients/{id}", tag = "operator", security(("operator" = [])), params(("id" = String, Path, description = "the client's id")),
    request_body(content = ClientSpec, description = "keys to replace; `null` removes one; not `id` nor `secret`"),
    responses((status = 200, description = "the changed client, in force", body = ClientView),
        (status = 409, description = "the client is the config file's", body = ErrorBody),
        (status = 422, description = "the change does not make a valid client", body = ErrorBody), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn patch_client(
    _: Operator,
    State(st): State<Arc<Api>>,
    P(id): P<String>,
    body: axum::body::Body,
) -> ApiResult {
    let patch: Map<String, Value> = json_body(&st, body).await?;
    let entry = super::clients::apply_patch(&st, &id, patch).await?;
    Ok(Json(client_view(&st, &entry).await?).into_response())
}

#[utoipa::path(delete, path = "/v1/admin/clients/{id}", tag = "operator", security(("operator" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 204, description = "deleted with its tokens, secrets and uploads; its unfinished deliveries fail"),
        (status = 409, description = "the client is the config file's", body = ErrorBody), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn delete_client(_: Operator, State(st): State<Arc<Api>>, P(id): P<String>) -> ApiResult {
    st.directory.delete(&id).await?;
    st.auth.forget_client(&id);
    // Its worker stops taking work before its deliveries are ended, so none
    // of them is sent after this answer (attempts in flight finish).
    super::in_force(&st).await;
    st.queue.forget(&id);
    let ended = st.directory.fail_unfinished(&id).await?;
    tracing::info!(client = %id, unfinished_deliveries_failed = ended, "client deleted through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// What the token is for (shown in the list).
    label: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/clients/{id}/tokens", tag = "operator", security(("operator" = [])), params(("id" = String, Path, description = "the client's id")),
    request_body(content = NewToken, description = "an optional label"),
    responses((status = 201, description = "the token, shown this once", body = TokenCreated), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn create_token(
    _: Operator,
    State(st): State<Arc<Api>>,
    P(id): P<String>,
    body: axum::body::Body,
) -> ApiResult {
    st.directory.entry(&id)?;
    let req: NewToken = json_body(&st, body).await?;
    let (row, token) = st.auth.create(&id, req.label).await?;
    tracing::info!(client = %id, token_id = %row.token_id, "client token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token_id": row.token_id,
            "token": token,
            "client_id": row.client_id,
            "label": row.label,
            "created_at": row.created_at,
        })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/admin/clients/{id}/tokens", tag = "operator", security(("operator" = [])), params(("id" = String, Path, description = "the client's id")),
    responses((status = 200, description = "the client's tokens, never their values", body = TokenList), (status = 404, description = "no such client, or another client's", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn list_tokens(_: Operator, State(st): State<Arc<Api>>, P(id): P<String>) -> ApiResult {
    st.directory.entry(&id)?;
    Ok(Json(json!({ "tokens": st.auth.list(&id) })).into_response())
}

#[utoipa::path(delete, path = "/v1/admin/clients/{id}/tokens/{token_id}", tag = "operator", security(("operator" = [])),
    params(("id" = String, Path, description = "the client's id"), ("token_id" = String, Path, description = "`tok_…`")),
    responses((status = 204, description = "revoked"), (status = 404, description = "no such token", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn revoke_token(
    _: Operator,
    State(st): State<Arc<Api>>,
    P((id, token_id)): P<(String, String)>,
) -> ApiResult {
    if !st.auth.revoke(&id, &token_id).await? {
        return Err(ApiError::not_found(format!(
            "client {id:?} has no token {token_id:?}"
        )));
    }
    tracing::info!(client = %id, token_id = %token_id, "client token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The deliveries matching the query, newest first, a page at a time. `client`
/// is forced for a client's own listing.
pub(super) async fn deliveries_page(
    st: &Api,
    raw: Option<String>,
    client: Option<&str>,
) -> ApiResult {
    let q = query_pairs(raw);
    let mut f = inspect::Filter {
        client: client
            .map(str::to_string)
            .or_else(|| q.get("client").cloned()),
        event: q.get("event").cloned(),
        limit: 50,
        ..Default::default()
    };
    if let Some(s) = q.get("state") {
        if DeliveryState::parse(s).is_none() {
            return Err(ApiError::bad(format!(
                "state={s:?} is not one of pending, held, plugin_error, retrying, delivered, skipped, failed"
            )));
        }
        f.state = Some(s.clone());
    }
    if let Some(s) = q.get("since") {
        f.since = Some(parse_time("since", s)?);
    }
    if let Some(s) = q.get("until") {
        f.until = Some(parse_time("until", s)?);
    }
    if let Some(s) = q.get("limit") {
        f.limit = s
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad(format!("limit={s:?} must be a number from 1 to 500")))?;
    }
    if let Some(s) = q.get("cursor") {
        f.cursor = Some(s.parse().map_err(|_| {
            ApiError::bad(format!(
                "cursor={s:?} is not one this API gave (next_cursor)"
            ))
        })?);
    }
    let limit = f.limit;
    let rows = st.store.deliveries(f).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|d| d.seq.to_string()))
        .flatten();
    Ok(Json(json!({ "deliveries": rows, "next_cursor": next })).into_response())
}

/// One delivery with its attempts, its event and its rendering; of `client`
/// only, when given (another's is "not found").
/// `hide_event`: the raw event is left out (a client whose operator plugin may
/// redact it).
pub(super) async fn delivery(
    st: &Api,
    id: String,
    client: Option<&str>,
    hide_event: bool,
) -> ApiResult {
    let found = st.store.delivery(&id, client).await?;
    let Some((row, detail)) = found else {
        return Err(ApiError::not_found(format!("no delivery {id:?}")));
    };
    let mut v = serde_json::to_value(&row).unwrap_or_default();
    v["event_body"] = if hide_event {
        Value::Null
    } else {
        detail.event_body.into()
    };
    v["received_at"] = detail.received_at.into();
    v["rendered"] = serde_json::to_value(&detail.rendered).unwrap_or_default();
    Ok(Json(v).into_response())
}

/// Makes deliveries due again; how many.
pub(super) async fn replay(
    st: &Api,
    delivery: Option<String>,
    client: Option<String>,
    since: Option<i64>,
    state: Option<String>,
) -> ApiResult<usize> {
    let seqs = st.store.select(delivery, client, since, state).await?;
    // One on its way is left alone, as a pending one is: the outcome of its
    // attempt, recorded after, would undo the replay.
    let seqs = st.queue.not_claimed(seqs);
    if seqs.is_empty() {
        return Ok(0);
    }
    Ok(st.store.replay(seqs).await?)
}

#[utoipa::path(get, path = "/v1/admin/deliveries", tag = "operator", security(("operator" = [])),
    params(("client" = Option<String>, Query, description = "only this client's"),
        ("state" = Option<String>, Query, description = "pending, held, plugin_error, retrying, delivered, skipped or failed"),
        ("event" = Option<String>, Query, description = "only events of this name"),
        ("since" = Option<String>, Query, description = "created at or after: RFC 3339, ms since 1970, or a duration ago (`2h`)"),
        ("until" = Option<String>, Query, description = "created before, as `since`"),
        ("limit" = Option<u32>, Query, description = "1 to 500, 50 by default"),
        ("cursor" = Option<String>, Query, description = "the `next_cursor` of the page before")),
    responses((status = 200, description = "newest first", body = DeliveryPage), (status = 400, description = "a bad filter", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn list_deliveries(
    _: Operator,
    State(st): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    deliveries_page(&st, raw, None).await
}

#[utoipa::path(get, path = "/v1/admin/deliveries/{id}", tag = "operator", security(("operator" = [])),
    params(("id" = String, Path, description = "`msg_…`")),
    responses((status = 200, description = "the delivery, its event, its rendering and every attempt", body = DeliveryDetail),
        (status = 404, description = "no such delivery", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn get_delivery(_: Operator, State(st): State<Arc<Api>>, P(id): P<String>) -> ApiResult {
    delivery(&st, id, None, false).await
}

#[utoipa::path(post, path = "/v1/admin/deliveries/{id}/replay", tag = "operator", security(("operator" = [])),
    params(("id" = String, Path, description = "`msg_…`")),
    responses((status = 202, description = "due again: sent as stored, or rendered afresh if it never was", body = Replayed),
        (status = 404, description = "no such delivery, or one on its way (pending, or an attempt in flight)", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn replay_one(_: Operator, State(st): State<Arc<Api>>, P(id): P<String>) -> ApiResult {
    replay_answer(&st, Some(id), None, None, None).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayMany {
    /// Only this client's.
    client: Option<String>,
    /// Created at or after: RFC 3339, ms since 1970, or a duration ago.
    since: Option<String>,
    /// Only those in this state: `failed`, `plugin_error`, …
    state: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/replay", tag = "operator", security(("operator" = [])),
    request_body(content = ReplayMany),
    responses((status = 202, description = "how many are due again", body = Replayed), (status = 400, description = "nothing named to replay", body = ErrorBody), (status = 401, description = "no token, or one that is not known", body = ErrorBody), (status = 403, description = "a client token on an operator route", body = ErrorBody)))]
async fn replay_many(_: Operator, State(st): State<Arc<Api>>, body: axum::body::Body) -> ApiResult {
    let req: ReplayMany = json_body(&st, body).await?;
    if req.client.is_none() && req.state.is_none() {
        return Err(ApiError::bad(
            "say what to replay: {\"client\": …, \"since\": …} and/or {\"state\": \"failed\"}",
        ));
    }
    if let Some(s) = &req.state
        && !matches!(DeliveryState::parse(s), Some(st) if st != DeliveryState::Pending)
    {
        return Err(ApiError::bad(format!(
            "state {s:?}: replay takes held, plugin_error, retrying, delivered, skipped or failed"
        )));
    }
    let since = req
        .since
        .as_deref()
        .map(|s| parse_time("since", s))
        .transpose()?;
    replay_answer(&st, None, req.client, since, req.state).await
}

pub(super) async fn replay_answer(
    st: &Api,
    delivery: Option<String>,
    client: Option<String>,
    since: Option<i64>,
    state: Option<String>,
) -> ApiResult {
    let one = delivery.clone();
    let n = replay(st, delivery, client, since, state).await?;
    if let (Some(id), 0) = (one, n) {
        return Err(ApiError::not_found(format!(
            "no delivery {id:?} that can be replayed (one pending, or with an attempt in flight, is on its way already)"
        )));
    }
    tracing::info!(count = n, "deliveries replayed through the API");
    Ok((StatusCode::ACCEPTED, Json(json!({ "replayed": n }))).into_response())
}
