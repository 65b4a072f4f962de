//! The web console: HTML pages for operators and clients, served by the host
//! itself under `/ui` — templates compiled into the binary, one
//! stylesheet, no script, nothing fetched at run time.
//!
//! The console is a client of the HTTP API, in the same process: every page is
//! made from the answers of API routes called with the signed-in token, and
//! every form posts through them. So a page shows what that token may see
//! through the API and nothing more: another client's page is the API's 404,
//! an operator's page with a client token its 403, and both are shown as the
//! same "not found" as a page that does not exist.
//!
//! - [`session`]: signing in with a token, the session cookie, form tokens;
//! - [`pages`]: the pages and their forms;
//! - [`chart`]: the overview's chart, drawn here as SVG.

mod chart;
mod pages;
mod session;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::api::Api;

/// What the pages share.
pub struct Console {
    /// The API's routes, called in process.
    api: axum::Router,
    state: Arc<Api>,
    sessions: session::Sessions,
}

/// An API route's answer.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    /// The API's `{"error": …}`, or the status's name.
    fn error(&self) -> String {
        self.body["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| self.status.to_string())
    }
}

impl Console {
    /// Calls an API route as the holder of `token` would.
    async fn call(
        &self,
        token: &str,
        method: Method,
        uri: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let req = req.body(body).expect("a request of known parts");
        let response = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

/// The console's routes, beside `api` (the API's, which the pages call).
pub fn router(api: axum::Router, state: Arc<Api>) -> axum::Router {
    let max_upload = state.max_upload;
    let console = Arc::new(Console {
        api,
        state,
        sessions: session::Sessions::default(),
    });
    pages::routes(max_upload).with_state(console)
}
