//! One HTTP attempt: build the request, guard the address, send, classify.
//!
//! The SSRF guard sits in the DNS resolver, so the addresses checked are the ones
//! connected to (no gap for DNS rebinding), plus a check of IP-literal URLs, which
//! never reach a resolver. Proxies from the environment are ignored: they would
//! connect on our behalf to addresses we never see.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::sign;
use crate::config::{Client, Delivery};
use crate::plugin::Rendered;
use crate::store::Attempt;

/// Bytes of a response body kept with the attempt.
const RESPONSE_KEEP: usize = 4096;

pub const USER_AGENT: &str = concat!("hookwasm/", env!("CARGO_PKG_VERSION"));

/// Which addresses a client may be delivered to.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(d: &Delivery) -> AddressPolicy {
        AddressPolicy {
            allow_private: d.allow_private_networks,
            allowed: d.allowed_networks.clone(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow_private || is_global(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }
}

/// Whether `ip` is an ordinary public address: not loopback, private, link-local
/// (cloud metadata lives at 169.254.169.254), shared, multicast or reserved.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64, may reach private IPv4
        }
    }
}

/// Resolves names and drops the addresses the policy refuses.
struct GuardedResolver {
    policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(Box::new(Blocked(format!(
                    "{host} resolves only to private or reserved addresses ({}); allow them with \
                     allow_private_networks or allowed_networks",
                    addrs
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Blocked(String);

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
        let started_at = crate::store::now_ms();
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
        let timestamp = crate::store::now_ms() / 1000;
        let mut headers = HeaderMap::with_capacity(req.headers.len() + 6);
        // Plugin headers first: the host's own, set after, always win.
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
            "content-type",
            HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/json")),
        );
        headers.insert("user-agent", HeaderValue::from_static(USER_AGENT));
        headers.insert(
            "webhook-id",
            HeaderValue::from_str(msg_id).expect("ids are ASCII"),
        );
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        if !client.secrets.is_empty() {
            let sig = sign::sign(&client.secrets, msg_id, timestamp, &req.body);
            headers.insert(
                "webhook-signature",
                HeaderValue::from_str(&sig).expect("base64 is ASCII"),
            );
        }
        let response = self
            .http
            .post(client.url.clone())
            .headers(headers)
            .body(req.body.clone())
            .send()
            .await
            .map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(parse_retry_after);
        let body = read_capped(response).await;
        Ok((status, retry_after, body))
    }
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

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let strict = AddressPolicy {
            allow_private: false,
            allowed: vec![],
        };
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(!strict.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert!(strict.allows(ip.parse().unwrap()), "{ip}");
        }
        let lo = AddressPolicy {
            allow_private: false,
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(lo.allows("127.0.0.1".parse().unwrap()));
        assert!(lo.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.allows("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn retry_after() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
