//! The console's pages. Each handler finds the session, calls the API routes
//! it needs with the session's token, and fills a template (`templates/console`,
//! checked when the host is compiled). Forms post here, are checked for the
//! session's form token, go through the API, and redirect back with a message.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::chart::{self, Chart};
use super::session::{self, Flash, Session};
use super::{Answer, Console};
use crate::api::auth::Caller;

type St = State<Arc<Console>>;

pub fn routes(max_upload: usize) -> Router<Arc<Console>> {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(home))
        .route("/ui/console.css", get(css))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/overview", get(overview))
        .route("/ui/clients", get(clients))
        .route("/ui/plugins", get(plugins))
        .route("/ui/clients/{id}", get(client))
        .route("/ui/clients/{id}/deliveries/{did}", get(delivery))
        .route("/ui/clients/{id}/deliveries/{did}/replay", post(replay))
        .route("/ui/clients/{id}/plugin", get(plugin).post(upload))
        .route("/ui/clients/{id}/plugin/activate", post(activate))
        .route("/ui/clients/{id}/plugin/dry-run", post(dry_run))
        .route("/ui/{*rest}", get(|| async { Fail::NotFound }))
        // An upload's form: the plugin and a few fields.
        .layer(DefaultBodyLimit::max(max_upload + 64 * 1024))
        .layer(axum::middleware::map_response(page_headers))
}

/// No page is cached, framed, or allowed to load or send anything but to
/// this host; the console has no script at all.
async fn page_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    // Not `no-referrer`: with it, browsers send `Origin: null` on form
    // posts, and the forms' origin check needs the real one.
    set(h, "referrer-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("../../templates/console/console.css"),
    )
}

/// Why a page is not shown.
enum Fail {
    /// No session, or its token no longer works.
    Login,
    /// Not there, or not this token's to see: the same answer for both.
    NotFound,
    Message(StatusCode, String),
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Fail::Login => Redirect::to("/ui/login").into_response(),
            Fail::NotFound => page(
                StatusCode::NOT_FOUND,
                ErrorPage {
                    title: "Not found".into(),
                    text: "There is no such page here.".into(),
                },
            ),
            Fail::Message(status, text) => page(
                status,
                ErrorPage {
                    title: "Something went wrong".into(),
                    text,
                },
            ),
        }
    }
}

fn page(status: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be made: {e}"),
        )
            .into_response(),
    }
}

/// A successful answer's body, or the page that says why not.
fn ok(a: Answer) -> Result<Value, Fail> {
    match a.status {
        s if s.is_success() => Ok(a.body),
        StatusCode::UNAUTHORIZED => Err(Fail::Login),
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Err(Fail::NotFound),
        s => Err(Fail::Message(s, a.error())),
    }
}

fn view<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, Fail> {
    serde_json::from_value(v).map_err(|e| {
        Fail::Message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the API answered in a shape the console does not know: {e}"),
        )
    })
}

/// The signed-in session, or the sign-in page.
fn signed_in(c: &Console, headers: &HeaderMap) -> Result<(String, Session), Fail> {
    c.sessions.get(headers).ok_or(Fail::Login)
}

/// The top of every page: who is signed in, where they can go.
pub struct Nav {
    pub operator: bool,
    pub client: Option<String>,
    pub csrf: String,
    pub flash: Option<Flash>,
}

impl Nav {
    fn of(s: &Session) -> Nav {
        Nav {
            operator: s.caller == Caller::Operator,
            client: match &s.caller {
                Caller::Client(id) => Some(id.clone()),
                Caller::Operator => None,
            },
            csrf: s.csrf.clone(),
            flash: s.flash.clone(),
        }
    }
}

/// `ms` since 1970 as a UTC time to the second.
fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn when_opt(ms: Option<i64>) -> String {
    ms.map(when).unwrap_or_else(|| "—".into())
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---- signing in and out ----

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    error: Option<String>,
}

async fn home(State(c): St, headers: HeaderMap) -> Response {
    match c.sessions.get(&headers) {
        Some((_, s)) => match s.caller {
            Caller::Operator => Redirect::to("/ui/overview").into_response(),
            Caller::Client(id) => {
                Redirect::to(&format!("/ui/clients/{}", seg(&id))).into_response()
            }
        },
        None => Redirect::to("/ui/login").into_response(),
    }
}

async fn login_page() -> Response {
    page(StatusCode::OK, LoginPage { error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(c): St,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // Signing in from another site's form would sign the browser in as
    // whoever that site chose.
    if !session::same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            LoginPage {
                error: Some("This sign-in did not come from this console.".into()),
            },
        );
    }
    // A new sign-in ends the browser's previous session.
    if let Some((old, _)) = c.sessions.get(&headers) {
        c.sessions.end(&old);
    }
    let token = form.token.trim().to_string();
    let mut bearer = HeaderMap::new();
    let caller = HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .and_then(|v| {
            bearer.insert(header::AUTHORIZATION, v);
            let operators = c.state.directory.config().server.admin_tokens.clone();
            c.state.auth.identify(&bearer, &operators).ok()
        });
    let Some(caller) = caller else {
        tracing::info!("console: a sign-in with an unknown token");
        return page(
            StatusCode::UNAUTHORIZED,
            LoginPage {
                error: Some("That token is not known here.".into()),
            },
        );
    };
    tracing::info!(who = ?caller, "console: signed in");
    let id = c.sessions.start(token, caller);
    (
        [(header::SET_COOKIE, session::set_cookie(Some(&id), &headers))],
        Redirect::to("/ui/"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(c): St,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Result<Response, Fail> {
    let (id, s) = signed_in(&c, &headers)?;
    checked(&s, &form.csrf, &headers)?;
    c.sessions.end(&id);
    Ok((
        [(header::SET_COOKIE, session::set_cookie(None, &headers))],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

/// A form is acted on only with the session's form token and from this host.
fn checked(s: &Session, given: &str, headers: &HeaderMap) -> Result<(), Fail> {
    if session::form_allowed(s, given, headers) {
        Ok(())
    } else {
        Err(Fail::Message(
            StatusCode::FORBIDDEN,
            "This form is out of date or did not come from this console; open the page again."
                .into(),
        ))
    }
}

// ---- what the API answers, as far as the pages use it ----

#[derive(Deserialize)]
struct ApiClient {
    id: String,
    origin: String,
    settings: Value,
    enabled: bool,
    paused: bool,
    disabled_reason: Option<String>,
    failing_since: Option<i64>,
    in_flight: usize,
    plugin: ApiPluginRef,
}

#[derive(Deserialize)]
struct ApiPluginRef {
    source: String,
    file: Option<String>,
    version: Option<String>,
    state: Option<String>,
}

#[derive(Deserialize, Default)]
struct ApiActivity {
    minutes: Vec<crate::store::inspect::Minute>,
    by_state: std::collections::BTreeMap<String, i64>,
    by_client: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>>,
    last_success: std::collections::BTreeMap<String, i64>,
    failures_in_a_row: std::collections::BTreeMap<String, i64>,
}

#[derive(Deserialize)]
struct ApiDelivery {
    id: String,
    event_id: String,
    event: String,
    state: String,
    reason: Option<String>,
    plugin: Option<String>,
    attempts: Vec<ApiAttempt>,
    next_attempt_at: Option<i64>,
    created_at: i64,
    #[serde(default)]
    event_body: Option<String>,
    #[serde(default)]
    received_at: Option<i64>,
    #[serde(default)]
    rendered: Option<ApiRendered>,
}

#[derive(Deserialize)]
struct ApiAttempt {
    n: i64,
    started_at: i64,
    duration_ms: i64,
    status: Option<i64>,
    error_kind: Option<String>,
    error: Option<String>,
    response: Option<String>,
}

#[derive(Deserialize)]
struct ApiRendered {
    content_type: String,
    headers: Vec<(String, String)>,
    body: String,
}

// ---- views ----

/// A client as the lists and its own page show it.
pub struct ClientInfo {
    pub id: String,
    pub link: String,
    pub origin: String,
    pub url: String,
    pub healthy: bool,
    pub health: String,
    pub plugin: String,
    pub success: String,
    pub last_success: String,
    pub in_flight: usize,
}

impl ClientInfo {
    fn of(c: &ApiClient, activity: &ApiActivity) -> ClientInfo {
        let (healthy, health) = if !c.enabled {
            (false, "not enabled".to_string())
        } else if let Some(why) = &c.disabled_reason {
            (false, format!("paused: {why}"))
        } else if c.paused {
            (false, "paused".to_string())
        } else if let Some(t) = c.failing_since {
            let row = activity.failures_in_a_row.get(&c.id).copied().unwrap_or(0);
            (
                false,
                format!("failing since {} ({row} failed attempts in a row)", when(t)),
            )
        } else {
            (true, "healthy".to_string())
        };
        let plugin = match c.plugin.source.as_str() {
            "file" => format!(
                "file {} ({})",
                c.plugin.file.as_deref().unwrap_or("?"),
                c.plugin.state.as_deref().unwrap_or("?")
            ),
            "upload" => format!(
                "upload {} ({})",
                short(c.plugin.version.as_deref().unwrap_or("?")),
                c.plugin.state.as_deref().unwrap_or("?")
            ),
            _ => "none: events are sent as received".into(),
        };
        let states = activity.by_client.get(&c.id);
        let n = |s: &str| states.and_then(|m| m.get(s)).copied().unwrap_or(0);
        let (done, failed) = (n("delivered"), n("failed"));
        let success = if done + failed == 0 {
            "no finished delivery in the last hour".to_string()
        } else {
            format!(
                "{} % of {} finished in the last hour",
                done * 100 / (done + failed),
                done + failed
            )
        };
        ClientInfo {
            id: c.id.clone(),
            link: format!("/ui/clients/{}", seg(&c.id)),
            origin: c.origin.clone(),
            url: c.settings["url"].as_str().unwrap_or("").to_string(),
            healthy,
            health,
            plugin,
            success,
            last_success: activity
                .last_success
                .get(&c.id)
                .map(|t| when(*t))
                .unwrap_or_else(|| "none in the last hour".into()),
            in_flight: c.in_flight,
        }
    }
}

/// A version's first 12 hex digits: enough to tell them apart on a page.
fn short(v: &str) -> &str {
    v.get(..12).unwrap_or(v)
}

pub struct DeliveryLine {
    pub id: String,
    pub link: String,
    pub event: String,
    pub event_id: String,
    pub state: String,
    pub attempts: usize,
    pub last: String,
    pub created: String,
}

impl DeliveryLine {
    fn of(client: &str, d: &ApiDelivery) -> DeliveryLine {
        let last = d.attempts.last().map(outcome).unwrap_or_default();
        DeliveryLine {
            id: d.id.clone(),
            link: format!("/ui/clients/{}/deliveries/{}", seg(client), seg(&d.id)),
            event: d.event.clone(),
            event_id: d.event_id.clone(),
            state: d.state.clone(),
            attempts: d.attempts.len(),
            last,
            created: when(d.created_at),
        }
    }
}

fn outcome(a: &ApiAttempt) -> String {
    match (a.status, &a.error_kind) {
        (Some(s), _) => format!("HTTP {s}"),
        (None, Some(k)) => k.clone(),
        _ => "—".into(),
    }
}

// ---- the operator's pages ----

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    nav: Nav,
    chart: Chart,
    width: i64,
    height: i64,
    left: i64,
    since: String,
    by_state: Vec<(String, i64)>,
    queue: Vec<(String, i64)>,
    held: i64,
    plugin_error: i64,
    oldest_pending: String,
    plugin_errors: Vec<(String, String)>,
    config_file: String,
    config_error: Option<String>,
    config_reloads: u64,
    config_failures: u64,
}

async fn overview(State(c): St, headers: HeaderMap) -> Result<Response, Fail> {
    let (_, s) = signed_in(&c, &headers)?;
    let o = ok(c
        .call(&s.token, Method::GET, "/v1/admin/overview", None)
        .await)?;
    let activity: ApiActivity = view(o["activity"].clone())?;
    let count = |v: &Value| -> Vec<(String, i64)> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let queue = count(&o["queue"]);
    let of = |name: &str| queue.iter().find(|(k, _)| k == name).map_or(0, |(_, n)| *n);
    let (held, plugin_error) = (of("held"), of("plugin_error"));
    let plugin_errors = o["plugin_errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["file"].as_str().unwrap_or("?").to_string(),
                        p["error"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let since = activity
        .minutes
        .first()
        .map(|m| when(m.at))
        .unwrap_or_default();
    Ok(page(
        StatusCode::OK,
        OverviewPage {
            nav: Nav::of(&s),
            chart: chart::draw(&activity.minutes),
            width: chart::WIDTH,
            height: chart::HEIGHT,
            left: chart::LEFT,
            since,
            by_state: activity.by_state.into_iter().collect(),
            queue,
            held,
            plugin_error,
            oldest_pending: o["oldest_pending_at"]
                .as_i64()
                .map(when)
                .unwrap_or_else(|| "nothing pending".into()),
            plugin_errors,
            config_file: o["config"]["file"].as_str().unwrap_or("none").to_string(),
            config_error: o["config"]["error"].as_str().map(str::to_string),
            config_reloads: o["config"]["reloads"].as_u64().unwrap_or(0),
            config_failures: o["config"]["failures"].as_u64().unwrap_or(0),
        },
    ))
}

#[derive(Template)]
#[template(path = "console/clients.html")]
struct ClientsPage {
    nav: Nav,
    clients: Vec<ClientInfo>,
}

async fn clients(State(c): St, headers: HeaderMap) -> Result<Response, Fail> {
    let (_, s) = signed_in(&c, &headers)?;
    if let Caller::Client(id) = &s.caller {
        return Ok(Redirect::to(&format!("/ui/clients/{}", seg(id))).into_response());
    }
    let list = ok(c
        .call(&s.token, Method::GET, "/v1/admin/clients", None)
        .await)?;
    let o = ok(c
        .call(&s.token, Method::GET, "/v1/admin/overview", None)
        .await)?;
    let activity: ApiActivity = view(o["activity"].clone())?;
    let list: Vec<ApiClient> = view(list["clients"].clone())?;
    Ok(page(
        StatusCode::OK,
        ClientsPage {
            nav: Nav::of(&s),
            clients: list.iter().map(|x| ClientInfo::of(x, &activity)).collect(),
        },
    ))
}

#[derive(Template)]
#[template(path = "console/plugins.html")]
struct PluginsPage {
    nav: Nav,
    plugins: Vec<PluginLine>,
}

/// A plugin the host has compiled: a file of the folder or an upload.
pub struct PluginLine {
    pub kind: &'static str,
    pub name: String,
    pub world: String,
    pub serving: String,
    pub loaded: String,
    pub calls: String,
    pub error: Option<String>,
}

async fn plugins(State(c): St, headers: HeaderMap) -> Result<Response, Fail> {
    let (_, s) = signed_in(&c, &headers)?;
    let all = ok(c
        .call(&s.token, Method::GET, "/v1/admin/plugins", None)
        .await)?;
    let list = ok(c
        .call(&s.token, Method::GET, "/v1/admin/clients", None)
        .await)?;
    let clients: Vec<ApiClient> = view(list["clients"].clone())?;
    let served_by = |file: &str| -> Vec<&str> {
        clients
            .iter()
            .filter(|c| c.plugin.file.as_deref() == Some(file))
            .map(|c| c.id.as_str())
            .collect()
    };
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    // Files say when in RFC 3339, uploads in ms: both as the console writes times.
    let loaded = |v: &Value| match v {
        Value::Number(n) => when_opt(n.as_i64()),
        Value::String(t) => humantime::parse_rfc3339_weak(t)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(t.clone(), |d| when(d.as_millis() as i64)),
        _ => "—".into(),
    };
    let calls = |v: &Value| match v["calls"].as_u64() {
        None => "—".to_string(),
        Some(n) => format!(
            "{n} calls, {} errors, {} traps; p50 {} µs, p99 {} µs",
            v["errors"], v["traps"], v["p50_us"], v["p99_us"]
        ),
    };
    let mut lines = Vec::new();
    for f in all["files"].as_array().into_iter().flatten() {
        let file = text(&f["file"]);
        let users = served_by(&file);
        lines.push(PluginLine {
            kind: "file",
            world: text(&f["world"]),
            serving: format!(
                "{}; {}",
                f["serving"]
                    .as_str()
                    .unwrap_or("no version (its clients are held)"),
                if users.is_empty() {
                    "no client".to_string()
                } else {
                    format!("clients {}", users.join(", "))
                }
            ),
            loaded: loaded(&f["loaded_at"]),
            name: file,
            calls: calls(&f["calls"]),
            error: f["error"].as_str().map(str::to_string),
        });
    }
    for u in all["uploads"].as_array().into_iter().flatten() {
        let users: Vec<&str> = u["serving_clients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        lines.push(PluginLine {
            kind: "upload",
            name: text(&u["version"]),
            world: text(&u["world"]),
            serving: if users.is_empty() {
                "no client".into()
            } else {
                format!("clients {}", users.join(", "))
            },
            loaded: loaded(&u["loaded_at"]),
            calls: calls(&u["calls"]),
            error: u["error"].as_str().map(str::to_string),
        });
    }
    Ok(page(
        StatusCode::OK,
        PluginsPage {
            nav: Nav::of(&s),
            plugins: lines,
        },
    ))
}

// ---- a client's pages ----

#[derive(Template)]
#[template(path = "console/client.html")]
struct ClientPage {
    nav: Nav,
    client: ClientInfo,
    plugin_link: String,
    deliveries: Vec<DeliveryLine>,
    states: Vec<(&'static str, bool)>,
    event: String,
    since: String,
    until: String,
    older: Option<String>,
    newest: Option<String>,
    by_state: Vec<(String, i64)>,
}

const STATES: [&str; 7] = [
    "pending",
    "held",
    "plugin_error",
    "retrying",
    "delivered",
    "skipped",
    "failed",
];

async fn client(
    State(c): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Fail> {
    let (_, s) = signed_in(&c, &headers)?;
    let base = format!("/v1/clients/{}", seg(&id));
    let info: ApiClient = view(ok(c.call(&s.token, Method::GET, &base, None).await)?)?;
    let activity: ApiActivity = view(ok(c
        .call(&s.token, Method::GET, &format!("{base}/activity"), None)
        .await)?)?;
    // The filter form's fields, passed on to the API as they are: it says
    // what is wrong with one, and the page shows that.
    let q: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .filter(|(k, v)| {
            ["state", "event", "since", "until", "cursor"].contains(&k.as_str()) && !v.is_empty()
        })
        .collect();
    let get = |k: &str| {
        q.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let query = |extra: Option<(&str, &str)>| {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.iter().filter(|(k, _)| k != "cursor") {
            out.append_pair(k, v);
        }
        if let Some((k, v)) = extra {
            out.append_pair(k, v);
        }
        out.finish()
    };
    let cursor = get("cursor");
    let api_query = query((!cursor.is_empty()).then_some(("cursor", cursor.as_str())));
    let page_of = ok(c
        .call(
            &s.token,
            Method::GET,
            &format!("{base}/deliveries?limit=25&{api_query}"),
            None,
        )
        .await);
    let (deliveries, older, error) = match page_of {
        Ok(v) => {
            let list: Vec<ApiDelivery> = view(v["deliveries"].clone())?;
            let older = v["next_cursor"]
                .as_str()
                .map(|cur| format!("/ui/clients/{}?{}", seg(&id), query(Some(("cursor", cur)))));
            (
                list.iter().map(|d| DeliveryLine::of(&id, d)).collect(),
                older,
                None,
            )
        }
        // A filter the API refuses: the page, with why.
        Err(Fail::Message(status, text)) if status == StatusCode::BAD_REQUEST => {
            (Vec::new(), None, Some(text))
        }
        Err(f) => return Err(f),
    };
    let mut nav = Nav::of(&s);
    if let Some(text) = error {
        nav.flash = Some(Flash { ok: false, text });
    }
    let state = get("state");
    Ok(page(
        StatusCode::OK,
        ClientPage {
            nav,
            client: ClientInfo::of(&info, &activity),
            plugin_link: format!("/ui/clients/{}/plugin", seg(&id)),
            deliveries,
            states: STATES.iter().map(|st| (*st, *st == state)).collect(),
            event: get("event"),
            since: get("since"),
            until: get("until"),
            newest: (!get("cursor").is_empty())
                .then(|| format!("/ui/clients/{}?{}", seg(&id), query(None))),
            older,
            by_state: activity.by_state.into_iter().collect(),
        },
    ))
}

#[derive(Template)]
#[template(path = "console/delivery.html")]
struct DeliveryPage {
    nav: Nav,
    client_id: String,
    client_link: String,
    line: DeliveryLine,
    reason: Option<String>,
    plugin: String,
    next_attempt: Option<String>,
    received: String,
    event_body: Option<String>,
    rendered: Option<ApiRendered>,
    attempts: Vec<AttemptLine>,
    replay: String,
}

pub struct AttemptLine {
    pub n: i64,
    pub started: String,
    pub duration_ms: i64,
    pub outcome: String,
    pub ok: bool,
    pub error: String,
    pub response: String,
}

async fn delivery(
    State(c): St,
    headers: HeaderMap,
    Path((id, did)): Path<(String, String)>,
) -> Result<Response, Fail> {
    let (_, s) = signed_in(&c, &headers)?;
    let mut d: ApiDelivery = view(ok(c
        .call(
            &s.token,
            Method::GET,
            &format!("/v1/clients/{}/deliveries/{}", seg(&id), seg(&did)),
            None,
        )
        .await)?)?;
    Ok(page(
        StatusCode::OK,
        DeliveryPage {
            nav: Nav::of(&s),
            client_link: format!("/ui/clients/{}", seg(&id)),
            line: DeliveryLine::of(&id, &d),
            reason: d.reason.clone(),
            plugin: d.plugin.clone().unwrap_or_else(|| "none".into()),
            next_attempt: d.next_attempt_at.map(when),
            received: when_opt(d.received_at),
            event_body: d.event_body.as_deref().map(pretty),
            rendered: d.rendered.take().map(|r| ApiRendered {
                body: pretty(&r.body),
                ..r
            }),
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptLine {
                    n: a.n,
                    started: when(a.started_at),
                    duration_ms: a.duration_ms,
                    outcome: outcome(a),
                    ok: a.status.is_some_and(|s| (200..300).contains(&s)),
                    error: a.error.clone().unwrap_or_default(),
                    response: a.response.clone().unwrap_or_default(),
                })
                .collect(),
            replay: format!("/ui/clients/{}/deliveries/{}/replay", seg(&id), seg(&did)),
            client_id: id,
        },
    ))
}

/// JSON laid out to be read; anything else as it is.
fn pretty(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string())
}

async fn replay(
    State(c): St,
    headers: HeaderMap,
    Path((id, did)): Path<(String, String)>,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Result<Response, Fail> {
    let (sid, s) = signed_in(&c, &headers)?;
    checked(&s, &form.csrf, &headers)?;
    let path = format!("/v1/clients/{}/deliveries/{}", seg(&id), seg(&did));
    let a = c
        .call(&s.token, Method::POST, &format!("{path}/replay"), None)
        .await;
    match a.status {
        s if s.is_success() => c.sessions.flash(
            &sid,
            true,
            "Replayed: the delivery is due again, with the same id and bytes.",
        ),
        StatusCode::UNAUTHORIZED => return Err(Fail::Login),
        // Refused (one still on its way, say): the page says why; the page
        // itself is "not found" if the delivery is not this token's.
        _ => c
            .sessions
            .flash(&sid, false, format!("Not replayed: {}", a.error())),
    }
    Ok(Redirect::to(&format!("/ui{}", path.trim_start_matches("/v1"))).into_response())
}

// ---- a client's plugin ----

#[derive(Template)]
#[template(path = "console/plugin.html")]
struct PluginPage {
    nav: Nav,
    client_id: String,
    client_link: String,
    action: String,
    serving: String,
    /// The operator's file serves: uploads are refused for this client.
    operator_plugin: bool,
    versions: Vec<VersionLine>,
    events: Vec<(String, String)>,
    dry: Option<DryRunView>,
    /// The dry-run form as it was sent, to send again.
    sample: String,
    chosen_version: String,
    chosen_event: String,
}

pub struct VersionLine {
    pub version: String,
    pub short: String,
    pub world: String,
    pub size: i64,
    pub uploaded: String,
    pub active: bool,
}

pub struct DryRunView {
    pub plugin: String,
    pub event_id: String,
    pub original: Option<String>,
    pub verdict: String,
    pub detail: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Deserialize)]
struct ApiVersion {
    version: String,
    world: String,
    size: i64,
    uploaded_at: i64,
    active: bool,
}

async fn plugin(
    State(c): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    let (_, s) = signed_in(&c, &headers)?;
    plugin_page(&c, &s, &id, None, DryRunForm::default()).await
}

async fn plugin_page(
    c: &Console,
    s: &Session,
    id: &str,
    dry: Option<DryRunView>,
    form: DryRunForm,
) -> Result<Response, Fail> {
    let base = format!("/v1/clients/{}", seg(id));
    let info: ApiClient = view(ok(c.call(&s.token, Method::GET, &base, None).await)?)?;
    let v = ok(c
        .call(&s.token, Method::GET, &format!("{base}/plugin"), None)
        .await)?;
    let versions: Vec<ApiVersion> = view(v["versions"].clone())?;
    let recent = ok(c
        .call(
            &s.token,
            Method::GET,
            &format!("{base}/deliveries?limit=20"),
            None,
        )
        .await)?;
    let recent: Vec<ApiDelivery> = view(recent["deliveries"].clone())?;
    let mut events: Vec<(String, String)> = Vec::new();
    for d in &recent {
        if !events.iter().any(|(e, _)| *e == d.event_id) {
            events.push((
                d.event_id.clone(),
                format!("{} — {} ({})", d.event, when(d.created_at), d.event_id),
            ));
        }
    }
    let serving = match v["serving"]["source"].as_str() {
        Some("file") => format!(
            "the operator's plugin file {}",
            v["serving"]["file"].as_str().unwrap_or("?")
        ),
        Some("upload") => format!(
            "uploaded version {}",
            v["serving"]["version"].as_str().unwrap_or("?")
        ),
        _ => "no plugin: events are sent as received".into(),
    };
    Ok(page(
        StatusCode::OK,
        PluginPage {
            nav: Nav::of(s),
            client_link: format!("/ui/clients/{}", seg(id)),
            action: format!("/ui/clients/{}/plugin", seg(id)),
            serving,
            operator_plugin: info.plugin.source == "file",
            versions: versions
                .into_iter()
                .map(|x| VersionLine {
                    short: short(&x.version).to_string(),
                    version: x.version,
                    world: x.world,
                    size: x.size,
                    uploaded: when(x.uploaded_at),
                    active: x.active,
                })
                .collect(),
            events,
            dry,
            sample: form.event,
            chosen_version: form.version,
            chosen_event: form.event_id,
            client_id: id.to_string(),
        },
    ))
}

async fn upload(
    State(c): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    mut form: Multipart,
) -> Result<Response, Fail> {
    let (sid, s) = signed_in(&c, &headers)?;
    let (mut csrf, mut file, mut activate) = (String::new(), None, false);
    let bad = |e: axum::extract::multipart::MultipartError| {
        Fail::Message(
            e.status(),
            format!("the form could not be read: {}", e.body_text()),
        )
    };
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("csrf") => csrf = field.text().await.map_err(bad)?,
            Some("activate") => activate = true,
            Some("plugin") => file = Some(field.bytes().await.map_err(bad)?),
            _ => {}
        }
    }
    checked(&s, &csrf, &headers)?;
    let file: Bytes = file.filter(|f| !f.is_empty()).unwrap_or_default();
    let back = Redirect::to(&format!("/ui/clients/{}/plugin", seg(&id))).into_response();
    if file.is_empty() {
        c.sessions
            .flash(&sid, false, "Choose a .wasm file to upload.");
        return Ok(back);
    }
    let a = c
        .call(
            &s.token,
            Method::PUT,
            &format!("/v1/clients/{}/plugin?activate={activate}", seg(&id)),
            Some(("application/wasm", file)),
        )
        .await;
    if a.status.is_success() {
        let imports = a.body["imports"]
            .as_array()
            .map(|i| {
                i.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        c.sessions.flash(
            &sid,
            true,
            format!(
                "Uploaded version {} (world {}, {} bytes, imports: {}){}.",
                a.body["version"].as_str().unwrap_or("?"),
                a.body["world"].as_str().unwrap_or("?"),
                a.body["size"],
                if imports.is_empty() { "none" } else { &imports },
                if activate {
                    "; it serves from the next delivery on"
                } else {
                    "; not active"
                }
            ),
        );
    } else if matches!(a.status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND) {
        ok(a)?;
    } else {
        c.sessions
            .flash(&sid, false, format!("Refused: {}", a.error()));
    }
    Ok(back)
}

#[derive(Deserialize)]
struct ActivateForm {
    csrf: String,
    version: String,
}

async fn activate(
    State(c): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<ActivateForm>,
) -> Result<Response, Fail> {
    let (sid, s) = signed_in(&c, &headers)?;
    checked(&s, &form.csrf, &headers)?;
    let a = c
        .call(
            &s.token,
            Method::POST,
            &format!("/v1/clients/{}/plugin/activate", seg(&id)),
            Some((
                "application/json",
                Bytes::from(json!({ "version": form.version }).to_string()),
            )),
        )
        .await;
    if a.status.is_success() {
        c.sessions.flash(
            &sid,
            true,
            format!(
                "Version {} is active: it serves from the next delivery on.",
                form.version
            ),
        );
    } else if a.status == StatusCode::UNAUTHORIZED {
        ok(a)?;
    } else {
        c.sessions
            .flash(&sid, false, format!("Not activated: {}", a.error()));
    }
    Ok(Redirect::to(&format!("/ui/clients/{}/plugin", seg(&id))).into_response())
}

#[derive(Deserialize, Default)]
struct DryRunForm {
    csrf: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    event: String,
}

async fn dry_run(
    State(c): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    axum::Form(mut form): axum::Form<DryRunForm>,
) -> Result<Response, Fail> {
    let (_, mut s) = signed_in(&c, &headers)?;
    checked(&s, &form.csrf, &headers)?;
    let mut req = serde_json::Map::new();
    if !form.version.is_empty() {
        req.insert("version".into(), form.version.clone().into());
    }
    let sample = form.event.trim().to_string();
    form.event = sample.clone();
    if !sample.is_empty() {
        match serde_json::from_str::<Value>(&sample) {
            Ok(v) => req.insert("event".into(), v),
            Err(e) => {
                s.flash = Some(Flash {
                    ok: false,
                    text: format!("The sample event is not JSON: {e}"),
                });
                return plugin_page(&c, &s, &id, None, form).await;
            }
        };
    } else if !form.event_id.is_empty() {
        req.insert("event_id".into(), form.event_id.clone().into());
    }
    let a = c
        .call(
            &s.token,
            Method::POST,
            &format!("/v1/clients/{}/plugin/dry-run", seg(&id)),
            Some((
                "application/json",
                Bytes::from(Value::Object(req).to_string()),
            )),
        )
        .await;
    if !a.status.is_success() {
        if a.status == StatusCode::UNAUTHORIZED {
            return Err(Fail::Login);
        }
        s.flash = Some(Flash {
            ok: false,
            text: format!("The dry run did not run: {}", a.error()),
        });
        return plugin_page(&c, &s, &id, None, form).await;
    }
    let b = &a.body;
    let text = |k: &str| b[k].as_str().unwrap_or("").to_string();
    let verdict = text("verdict");
    let detail = match verdict.as_str() {
        "deliver" => format!("deliver, as {}", text("content_type")),
        "skip" => format!("skip: {}", text("reason")),
        _ => format!("error ({}): {}", text("kind"), text("error")),
    };
    let pairs = |k: &str| -> Vec<(String, String)> {
        serde_json::from_value(b[k].clone()).unwrap_or_default()
    };
    let dry = DryRunView {
        plugin: b["plugin"].as_str().unwrap_or("none").to_string(),
        event_id: text("event_id"),
        original: b["event_body"].as_str().map(pretty),
        verdict,
        detail,
        headers: pairs("request_headers"),
        body: b["body"]
            .as_str()
            .map(pretty)
            .unwrap_or_else(|| match b["body_base64"].as_str() {
                Some(b64) => format!("(binary, base64) {b64}"),
                None => String::new(),
            }),
    };
    plugin_page(&c, &s, &id, Some(dry), form).await
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    title: String,
    text: String,
}
