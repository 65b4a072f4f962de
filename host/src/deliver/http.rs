//! One HTTP attempt: build the request (headers, signature), send it through the
//! client's own connection pool with the address guard of [`super::ssrf`], and
//! classify the answer. Proxies from the environment are ignored: they would
//! connect on our behalf to addresses we never see.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::retry::parse_retry_after;
use super::sign;
use super::ssrf::{AddressPolicy, Blocked, GuardedResolver};
use crate::config::Client;
use crate::model::{Attempt, Rendered, now_ms};

/// Bytes of a response body kept with the attempt.
const RESPONSE_KEEP: usize = 4096;

pub const USER_AGENT: &str = concat!("hookwasm/", env!("CARGO_PKG_VERSION"));

/// What an attempt's answer means for the delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered,
    /// Try again later (no sooner than `retry_after`, when the receiver said).
    Retry {
        retry_after: Option<Duration>,
    },
    /// 410 Gone: the endpoint is no more; the client is to be disabled.
    Gone,
}

/// A client's HTTP side: its own connection pool, timeouts and address policy.
pub struct Sender {
    http: reqwest::Client,
    policy: AddressPolicy,
}

impl Sender {
    pub fn new(client: &Client) -> anyhow::Result<Sender> {
        let policy = AddressPolicy::new(&client.delivery);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Every attempt is ours to record and to schedule: no retry inside
            // reqwest (by default it resends on an HTTP/2 refusal, unrecorded).
            // `max_retries_per_request(0)` also spares each request the copy of
            // its headers that reqwest's retry layer otherwise makes in case.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .no_proxy()
            .timeout(client.delivery.timeout)
            .connect_timeout(client.delivery.connect_timeout)
            .pool_max_idle_per_host(client.delivery.max_in_flight)
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()?;
        Ok(Sender { http, policy })
    }

    /// Makes one attempt of delivery `msg_id` to `client`.
    pub async fn attempt(
        &self,
        client: &Client,
        msg_id: &str,
        req: &Rendered,
    ) -> (Attempt, Verdict) {
        let started_at = now_ms();
        let clock = Instant::now();
        let result = self.send(client, msg_id, req).await;
        let duration_ms = clock.elapsed().as_millis() as i64;
        let mut attempt = Attempt {
            started_at,
            duration_ms,
            status: None,
            error_kind: None,
            error: None,
            response: None,
        };
        let verdict = match result {
            Ok((status, retry_after, body)) => {
                attempt.status = Some(status);
                attempt.response = Some(body);
                if (200..300).contains(&status) {
                    Verdict::Delivered
                } else {
                    attempt.error_kind = Some("status".into());
                    attempt.error = Some(format!("the receiver answered {status}"));
                    if status == 410 {
                        Verdict::Gone
                    } else {
                        Verdict::Retry { retry_after }
                    }
                }
            }
            Err((kind, msg)) => {
                attempt.error_kind = Some(kind.into());
                attempt.error = Some(msg);
                Verdict::Retry { retry_after: None }
            }
        };
        (attempt, verdict)
    }

    async fn send(
        &self,
        client: &Client,
        msg_id: &str,
        req: &Rendered,
    ) -> Result<(u16, Option<Duration>, String), (&'static str, String)> {
        if let Some(host) = client.url.host() {
            let literal = match host {
                url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
                url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
                url::Host::Domain(_) => None,
            };
            if let Some(ip) = literal
                && !self.policy.allows(ip)
            {
                return Err((
                    "blocked",
                    format!(
                        "{ip} is a private or reserved address; allow it with allow_private_networks or allowed_networks"
                    ),
                ));
            }
        }
        // The request made whole, not through a builder, whose `headers()`
        // moves every header again into a new map. A URL with a user and
        // password does go through it: it moves them out of the URL (and so out
        // of any error message) into a Basic `Authorization` header, which a
        // plugin's own `Authorization` replaces, as the builder would.
        let credentials = !client.url.username().is_empty() || client.url.password().is_some();
        let mut request = if credentials {
            self.http
                .post(client.url.clone())
                .build()
                .map_err(classify)?
        } else {
            reqwest::Request::new(reqwest::Method::POST, client.url.clone())
        };
        let basic = request.headers_mut().remove(reqwest::header::AUTHORIZATION);
        *request.headers_mut() = request_headers(client, msg_id, now_ms() / 1000, req);
        if let Some(basic) = basic {
            request
                .headers_mut()
                .entry(reqwest::header::AUTHORIZATION)
                .or_insert(basic);
        }
        *request.body_mut() = Some(req.body.clone().into());
        let response = self.http.execute(request).await.map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(parse_retry_after);
        let body = read_capped(response).await;
        Ok((status, retry_after, body))
    }
}

// Standard Webhooks' headers, made once: a name given as a string that is not
// one of HTTP's standard headers is copied into a new allocation at every insert.
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The headers of an attempt made at `timestamp` (s): the plugin's, then the
/// host's own, which always win, and the signature of every secret that still
/// signs. The dry run shows the same.
pub fn request_headers(client: &Client, msg_id: &str, timestamp: i64, req: &Rendered) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 6);
    for (k, v) in &req.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let ct = req.content_type.as_deref().unwrap_or("application/json");
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/json")),
    );
    headers.insert(
        reqwest::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    headers.insert(
        WEBHOOK_ID,
        HeaderValue::from_str(msg_id).expect("ids are ASCII"),
    );
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    let now = now_ms();
    let signing: std::borrow::Cow<[crate::config::Secret]> =
        if client.secrets.iter().all(|s| s.signs_at(now)) {
            (&client.secrets[..]).into()
        } else {
            client
                .secrets
                .iter()
                .filter(|s| s.signs_at(now))
                .cloned()
                .collect::<Vec<_>>()
                .into()
        };
    if !signing.is_empty() {
        let sig = sign::sign(&signing, msg_id, timestamp, &req.body);
        headers.insert(
            WEBHOOK_SIGNATURE,
            // Takes the string's buffer, no copy.
            HeaderValue::from_maybe_shared(bytes::Bytes::from(sig)).expect("base64 is ASCII"),
        );
    }
    headers
}

/// The first [`RESPONSE_KEEP`] bytes of the body; the rest is not read.
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < RESPONSE_KEEP {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                kept.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_KEEP - kept.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn classify(e: reqwest::Error) -> (&'static str, String) {
    // Walk the source chain: the guard's refusal is buried under hyper's error.
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<Blocked>() {
            return ("blocked", b.0.clone());
        }
        source = s.source();
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "network"
    };
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    (kind, msg)
}
