//! `hookwasm receive`: a small receiver that prints each delivery and checks its
//! signature, for trying a configuration out.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use hookwasm::config::Secret;
use hookwasm::model::now_ms;

pub async fn receive(listen: &str, secret: Option<&str>, status: u16) -> Result<ExitCode> {
    let secret = secret
        .map(Secret::parse)
        .transpose()
        .map_err(|e| anyhow!("--secret: {e}"))?;
    let status = axum::http::StatusCode::from_u16(status)
        .map_err(|_| anyhow!("--status {status} is not an HTTP status"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {listen} ({e}); pick another --listen address"))?;
    eprintln!(
        "hookwasm receive: listening on http://{}",
        listener.local_addr()?
    );
    let secret = Arc::new(secret);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let secret = secret.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 << 20)
                .await
                .unwrap_or_default();
            print_delivery(&parts, &body, secret.as_ref().as_ref());
            status
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(super::serve::shutdown_signal()?)
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn print_delivery(parts: &axum::http::request::Parts, body: &[u8], secret: Option<&Secret>) {
    use std::io::Write;
    let mut out = String::new();
    out.push_str(&format!("── {} {}\n", parts.method, parts.uri));
    for (k, v) in &parts.headers {
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    match (
        secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) {
        (None, ..) => {}
        (Some(s), Some(id), Some(ts), Some(sig)) => {
            let ts_num: i64 = ts.parse().unwrap_or(0);
            let age = (now_ms() / 1000 - ts_num).abs();
            let ok = hookwasm::deliver::sign::verify(s, id, ts_num, body, sig);
            out.push_str(&match (ok, age <= 300) {
                (true, true) => "signature: verified\n".to_string(),
                (true, false) => format!(
                    "signature: valid but the timestamp is {age}s off (receivers allow 300s)\n"
                ),
                (false, _) => "signature: DOES NOT VERIFY with the given secret\n".to_string(),
            });
        }
        (Some(_), _, _, None) => {
            out.push_str("signature: none (this delivery was sent unsigned)\n")
        }
        (Some(_), ..) => out.push_str(
            "signature: MALFORMED (webhook-signature without webhook-id or webhook-timestamp)\n",
        ),
    }
    out.push('\n');
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => out.push_str(&String::from_utf8_lossy(body)),
    }
    out.push_str("\n\n");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
