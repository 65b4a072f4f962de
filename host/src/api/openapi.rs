//! `GET /v1/openapi.json`: the OpenAPI document of the API, generated from the
//! code. Each handler carries its `#[utoipa::path]` (route, parameters, answers)
//! and is registered through `utoipa_axum`'s router, so a route cannot exist
//! without being in the document, nor the other way round. The answers the
//! handlers build as JSON values are described by the shapes below.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::store::inspect::{DeliveryRow, RenderedRow};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookwasm",
        description = "Phraseanet events in, per-client WebAssembly plugins, signed webhook deliveries out.\n\n\
            Operators (a token of `server.admin_tokens`) may call every route; a client token only its own \
            `/v1/clients/{id}/…` routes. Every refusal is `{\"error\": \"…\"}` with a 4xx that fits; another \
            client's resources answer 404, as a missing one does. Secrets and tokens are shown once, when created."
    ),
    modifiers(&Security),
    tags(
        (name = "ingest", description = "Phraseanet's events in"),
        (name = "operator", description = "clients, tokens, deliveries and plugins, for operators"),
        (name = "client", description = "a client's own settings, deliveries and secret"),
        (name = "plugin", description = "a client's own plugin: upload, versions, activation, dry run"),
    )
)]
pub(super) struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "operator",
                "an operator token (`server.admin_tokens`, `HOOKWASM_ADMIN_TOKEN`)",
            ),
            (
                "client",
                "a client's API token (`hwk_…`), made by an operator",
            ),
        ] {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_string());
            components.add_security_scheme(name, SecurityScheme::Http(http));
        }
    }
}

/// Every refusal.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    /// What is wrong, and where it can be said, what to do.
    pub error: String,
}

/// `202` to an event.
#[derive(Serialize, ToSchema)]
pub(super) struct Accepted {
    /// `evt_…`
    pub id: String,
    /// How many clients get it.
    pub deliveries: usize,
}

/// One event of a batch, in the answer, in the batch's order.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchItem {
    /// The event's line in the body (from 1).
    pub line: usize,
    /// `evt_…`: the event stored, or the first one stored with the same
    /// identity (a duplicate); absent when it could not be stored.
    pub id: Option<String>,
    /// How many clients get it.
    pub deliveries: usize,
    /// Inside `server.dedup_window` of an earlier event: nothing stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Why it could not be stored (a 503): send this line again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `202` (or `503`) to a batch of events.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchAccepted {
    /// On a 503: how many could not be stored, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub events: Vec<BatchItem>,
    /// Deliveries made, over all the events.
    pub deliveries: usize,
}

/// `400` to a batch with lines that are not events: nothing was stored.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchRefused {
    pub error: String,
    /// The first hundred lines refused, and why.
    pub lines: Vec<LineError>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct LineError {
    pub line: usize,
    pub error: String,
}

/// The keys of a `[[clients]]` table (see the config file), as JSON.
#[derive(Serialize, ToSchema)]
pub(super) struct ClientSpec {
    /// Letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// `http://` or `https://`; checked against the address rules.
    pub url: String,
    /// A file in `plugins.dir` (an upload made active serves over it).
    pub plugin: Option<String>,
    /// Event names it gets; absent or empty: every event.
    pub events: Option<Vec<String>>,
    /// `whsec_…`; made when absent on create; never changed by PATCH (rotate).
    pub secret: Option<String>,
    pub enabled: Option<bool>,
    /// Free string key/values handed to the plugin, in order.
    pub config: Option<BTreeMap<String, String>>,
    /// Any `[delivery]` key overrides the default for this client: `timeout`,
    /// `retry_schedule`, `max_in_flight`, `allowed_networks`, …
    #[serde(flatten)]
    pub delivery: BTreeMap<String, serde_json::Value>,
}

/// What a client may change itself.
#[derive(Serialize, ToSchema)]
pub(super) struct ClientChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub config: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
}

/// Where a client's plugin comes from.
#[derive(Serialize, ToSchema)]
pub(super) struct PluginRef {
    /// `upload`, `file` or `none`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ready file@hash`, `missing`, `broken: …`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A client, never with a secret.
#[derive(Serialize, ToSchema)]
pub(super) struct ClientView {
    pub id: String,
    /// `file` (the config file's, read-only here) or `api`.
    #[schema(value_type = String)]
    pub origin: crate::directory::Origin,
    /// Its `[[clients]]` keys, secrets left out.
    pub settings: serde_json::Value,
    /// Routed events at all (`enabled = false`: none are made for it).
    pub enabled: bool,
    /// Paused, or disabled after a 410 or `disable_after`: events wait.
    pub paused: bool,
    pub disabled_reason: Option<String>,
    /// Since when every attempt failed (ms since 1970).
    pub failing_since: Option<i64>,
    pub in_flight: usize,
    pub plugin: PluginRef,
    /// How many secrets sign right now (two during a rotation's overlap).
    pub signing_secrets: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ClientList {
    pub clients: Vec<ClientView>,
}

/// A created client, with its secret shown this once.
#[derive(Serialize, ToSchema)]
pub(super) struct ClientCreated {
    #[serde(flatten)]
    pub client: ClientView,
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenCreated {
    /// `tok_…`, to revoke it.
    pub token_id: String,
    /// `hwk_…`: shown this once, stored only as a hash.
    pub token: String,
    pub client_id: String,
    pub label: Option<String>,
    pub created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenInfo {
    pub token_id: String,
    pub client_id: String,
    pub label: Option<String>,
    pub created_at: i64,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct DeliveryPage {
    pub deliveries: Vec<DeliveryRow>,
    /// Give it as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryRow,
    /// The event as received.
    pub event_body: String,
    pub received_at: i64,
    /// What every attempt sends, once rendered.
    pub rendered: Option<RenderedRow>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Replayed {
    pub replayed: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Rotated {
    /// The new secret, shown this once.
    pub secret: String,
    /// Until when (ms since 1970) the secrets before it sign too.
    pub previous_sign_until: i64,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Uploaded {
    /// The content hash: the version.
    pub version: String,
    /// The plugin world it targets (`0.2.0`).
    pub world: String,
    pub imports: Vec<String>,
    pub size: usize,
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Version {
    pub version: String,
    pub world: String,
    pub size: i64,
    pub uploaded_at: i64,
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Versions {
    pub serving: PluginRef,
    pub versions: Vec<Version>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Activated {
    pub version: String,
    pub world: String,
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Deactivated {
    /// What serves now: `file` or `none`.
    pub serving: String,
}
