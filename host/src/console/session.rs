//! Signing in: a token (an operator's or a client's) is checked once, and the
//! browser gets a session cookie — `HttpOnly` (no script reads it),
//! `SameSite=Strict` (no other site's page sends it), limited to `/ui`.
//! The token stays on the server, in memory, so the cookie is worth nothing
//! once the session ends, and a revoked token ends its sessions at their next
//! request (the API answers 401). Sessions do not survive a restart: one signs
//! in again.
//!
//! Every form carries the session's own random form token, checked before
//! anything is done, and a request whose `Origin` is another site is refused:
//! cross-site requests are stopped twice over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;

use crate::api::auth::{Caller, constant_time_eq};

pub const COOKIE: &str = "hookwasm_session";
/// A session ends this long after signing in, used or not.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions live at once; the oldest goes first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
pub struct Session {
    /// The token signed in with: the pages call the API with it.
    pub token: String,
    pub caller: Caller,
    /// The form token every form of this session carries.
    pub csrf: String,
    started: Instant,
    /// A message for the next page (after a form's redirect).
    pub flash: Option<Flash>,
}

#[derive(Clone)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

fn random() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl Sessions {
    /// A new session for `token`; its id, for the cookie.
    pub fn start(&self, token: String, caller: Caller) -> String {
        let id = random();
        let mut map = self.by_id.lock().unwrap();
        map.retain(|_, s| s.started.elapsed() < LIFETIME);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                token,
                caller,
                csrf: random(),
                started: Instant::now(),
                flash: None,
            },
        );
        id
    }

    /// The request's session, if its cookie names a live one; its flash
    /// message is taken (shown once).
    pub fn get(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers)?;
        let mut map = self.by_id.lock().unwrap();
        let s = map.get_mut(id)?;
        if s.started.elapsed() >= LIFETIME {
            map.remove(id);
            return None;
        }
        let out = s.clone();
        s.flash = None;
        Some((id.to_string(), out))
    }

    pub fn flash(&self, id: &str, ok: bool, text: impl Into<String>) {
        if let Some(s) = self.by_id.lock().unwrap().get_mut(id) {
            s.flash = Some(Flash {
                ok,
                text: text.into(),
            });
        }
    }

    pub fn end(&self, id: &str) {
        self.by_id.lock().unwrap().remove(id);
    }
}

/// The session id in the request's `Cookie` header(s).
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for session `id` (`None`: one that ends it). Marked
/// `Secure` when the request came through an HTTPS proxy.
pub fn set_cookie(id: Option<&str>, headers: &HeaderMap) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let (value, age) = match id {
        Some(id) => (id, LIFETIME.as_secs()),
        None => ("", 0),
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={age}{}",
        if secure { "; Secure" } else { "" }
    ))
    .expect("cookie of base64url characters")
}

/// Whether a form post may be acted on: it carries the session's form token,
/// and no `Origin` other than this host's.
pub fn form_allowed(session: &Session, given: &str, headers: &HeaderMap) -> bool {
    same_origin(headers) && constant_time_eq(session.csrf.as_bytes(), given.as_bytes())
}

/// Whether the request's `Origin`, if it has one, is this host: the one in
/// `Host`, or the one a proxy that rewrote `Host` names in
/// `X-Forwarded-Host` (a cross-site form cannot set either).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .any(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|host| !host.is_empty() && bare == host)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_form_needs_the_sessions_token_and_this_origin() {
        let sessions = Sessions::default();
        let id = sessions.start("t".into(), Caller::Operator);
        let (_, s) = sessions
            .get(&headers(&[("cookie", &format!("a=b; {COOKIE}={id}"))]))
            .expect("the cookie names the session");
        let here = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(form_allowed(&s, &s.csrf, &here));
        assert!(form_allowed(&s, &s.csrf, &headers(&[("host", "h")])));
        assert!(!form_allowed(&s, "forged", &here));
        let proxied = headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "hooks.example.org"),
            ("origin", "https://hooks.example.org"),
        ]);
        assert!(form_allowed(&s, &s.csrf, &proxied));
        let elsewhere = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!form_allowed(&s, &s.csrf, &elsewhere));
        sessions.end(&id);
        assert!(
            sessions
                .get(&headers(&[("cookie", &format!("{COOKIE}={id}"))]))
                .is_none()
        );
    }
}
