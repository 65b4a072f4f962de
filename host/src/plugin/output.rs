//! Checks of what a plugin answers, before anything is stored or sent: body size,
//! header count and total size, names the host sets or that a receiver could
//! take for them, hop-by-hop headers, values that are not visible ASCII. Skip
//! reasons are cut to `max_reason`.

use super::{PluginError, Verdict};
use crate::config::PluginLimits;
use crate::text::{cut, escape};

/// Headers the host sets itself, and those a receiver's stack reads as such.
const RESERVED_HEADERS: &[&str] = &["content-type", "content-length", "host", "user-agent"];

/// Hop-by-hop headers: they speak about the connection, not the delivery.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Why a plugin may not send header `name`, if it may not.
fn refused_header(name: &str) -> Option<&'static str> {
    // CGI, PHP and WSGI turn `-` and `_` into the same variable name, so
    // `webhook_signature` would reach a receiver as `webhook-signature`.
    let n = name.to_ascii_lowercase().replace('_', "-");
    if RESERVED_HEADERS.contains(&n.as_str()) || n.starts_with("webhook-") {
        Some("the host's to set (or reads as one of those once `_` is taken for `-`)")
    } else if HOP_BY_HOP.contains(&n.as_str()) || n.starts_with("proxy-") {
        Some("a hop-by-hop header")
    } else {
        None
    }
}

/// Visible ASCII, with spaces and tabs inside: what every receiver reads the same.
fn visible_ascii(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
}

/// Checks a plugin's answer against the client's limits and the header rules;
/// cuts a skip reason to `max_reason`.
pub(super) fn check_output(
    verdict: Verdict,
    limits: &PluginLimits,
) -> Result<Verdict, PluginError> {
    let r = match verdict {
        Verdict::Skip(reason) => return Ok(Verdict::Skip(cut(reason, limits.max_reason))),
        Verdict::Deliver(r) => r,
    };
    let refuse = |msg: String| Err(PluginError::BadOutput(cut(msg, limits.max_reason)));
    let shown = |s: &str| escape(&cut(s.to_string(), 64)).into_owned();
    if r.body.len() > limits.max_output {
        return refuse(format!(
            "the body is {} bytes, over the limit of {}",
            r.body.len(),
            limits.max_output
        ));
    }
    if r.headers.len() > limits.max_headers {
        return refuse(format!(
            "{} headers, over the limit of {}",
            r.headers.len(),
            limits.max_headers
        ));
    }
    let mut total = r.content_type.as_ref().map_or(0, String::len);
    for (name, value) in &r.headers {
        total += name.len() + value.len();
        if total > limits.max_header_bytes {
            return refuse(format!(
                "the headers are over the limit of {} bytes (max_header_bytes)",
                limits.max_header_bytes
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return refuse(format!("`{}` is not a valid header name", shown(name)));
        }
        if let Some(why) = refused_header(name) {
            return refuse(format!("header `{}` is {why}", shown(name)));
        }
        if !visible_ascii(value) {
            return refuse(format!(
                "the value of header `{}` is not visible ASCII",
                shown(name)
            ));
        }
    }
    if let Some(ct) = &r.content_type {
        if total > limits.max_header_bytes {
            return refuse(format!(
                "the content type is over the limit of {} bytes (max_header_bytes)",
                limits.max_header_bytes
            ));
        }
        if !visible_ascii(ct) || ct.trim().is_empty() {
            return refuse(format!("content type {:?} is not visible ASCII", shown(ct)));
        }
    }
    Ok(Verdict::Deliver(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rendered;

    fn deliver(headers: &[(&str, &str)], content_type: Option<&str>) -> Verdict {
        Verdict::Deliver(Rendered {
            body: b"{}".to_vec(),
            content_type: content_type.map(str::to_string),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    fn refused(v: Verdict) -> String {
        match check_output(v, &PluginLimits::default()) {
            Err(PluginError::BadOutput(m)) => m,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn look_alike_and_hop_by_hop_headers_are_refused() {
        for name in [
            "webhook_signature",
            "Webhook-Id",
            "webhook_id",
            "content_length",
            "Content-Type",
            "HOST",
            "user_agent",
            "connection",
            "upgrade",
            "te",
            "trailer",
            "keep-alive",
            "keep_alive",
            "expect",
            "proxy-authorization",
            "proxy_connection",
            "transfer-encoding",
        ] {
            let m = refused(deliver(&[(name, "x")], None));
            assert!(m.contains(name), "{name}: {m}");
        }
        assert!(
            check_output(
                deliver(&[("x-chat-channel", "#press")], None),
                &PluginLimits::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn header_values_must_be_visible_ascii_and_bounded() {
        assert!(refused(deliver(&[("x-a", "caf\u{e9}")], None)).contains("visible ASCII"));
        assert!(refused(deliver(&[("x-a", "a\u{1}b")], None)).contains("visible ASCII"));
        assert!(refused(deliver(&[], Some("text/plain\u{7f}"))).contains("content type"));
        let big = "v".repeat(9000);
        assert!(refused(deliver(&[("x-a", &big)], None)).contains("max_header_bytes"));
        assert!(refused(deliver(&[], Some(&big))).contains("max_header_bytes"));
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("x-{i}"), "v".repeat(500)))
            .collect();
        let v = Verdict::Deliver(Rendered {
            body: vec![],
            content_type: None,
            headers: many,
        });
        assert!(refused(v).contains("max_header_bytes"));
    }

    #[test]
    fn reasons_and_messages_are_cut() {
        let limits = PluginLimits::default();
        match check_output(Verdict::Skip("r".repeat(1 << 20)), &limits).unwrap() {
            Verdict::Skip(r) => assert!(r.len() <= limits.max_reason, "{}", r.len()),
            v => panic!("{v:?}"),
        }
        let e = PluginError::Failed("m".repeat(1 << 20)).capped(limits.max_reason);
        assert!(e.to_string().len() < limits.max_reason + 64);
    }
}
