//! A real HTTP server on 127.0.0.1 that records every request, and answers as
//! the test sets it up (statuses, headers, delays per path).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;

use super::eventually;

#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

#[derive(Default)]
struct RecvState {
    got: Mutex<Vec<Got>>,
    /// Per path: the statuses to answer, in turn; the last one sticks.
    statuses: Mutex<HashMap<String, Vec<u16>>>,
    delays: Mutex<HashMap<String, Duration>>,
    headers: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Per path: the answer's body, instead of a line of text.
    bodies: Mutex<HashMap<String, Vec<u8>>>,
    /// Per path: requests being answered now, and the most there have been.
    open: Mutex<HashMap<String, (usize, usize)>>,
}

/// A real HTTP server on 127.0.0.1 that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<RecvState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener).await
    }

    pub async fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(RecvState::default());
        let st = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let st = st.clone();
            async move {
                let path = req.uri().path().to_string();
                {
                    let mut open = st.open.lock().unwrap();
                    let (now, peak) = open.entry(path.clone()).or_default();
                    *now += 1;
                    *peak = (*peak).max(*now);
                }
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 256 << 20)
                    .await
                    .unwrap_or_default();
                let delay = st.delays.lock().unwrap().get(&path).copied();
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let status = {
                    let mut s = st.statuses.lock().unwrap();
                    match s.get_mut(&path) {
                        Some(list) if list.len() > 1 => list.remove(0),
                        Some(list) => list[0],
                        None => 200,
                    }
                };
                let extra = st
                    .headers
                    .lock()
                    .unwrap()
                    .get(&path)
                    .cloned()
                    .unwrap_or_default();
                let body_out = st.bodies.lock().unwrap().get(&path).cloned();
                let body_out =
                    body_out.unwrap_or_else(|| b"answer from the test receiver".to_vec());
                if let Some((now, _)) = st.open.lock().unwrap().get_mut(&path) {
                    *now -= 1;
                }
                st.got.lock().unwrap().push(Got {
                    path,
                    headers,
                    body,
                    at: Instant::now(),
                });
                let mut resp = axum::http::Response::builder().status(status);
                for (k, v) in extra {
                    resp = resp.header(k, v);
                }
                resp.body(axum::body::Body::from(body_out)).unwrap()
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer these statuses on `path`, one per request; the last one sticks.
    pub fn set_statuses(&self, path: &str, statuses: &[u16]) {
        self.state
            .statuses
            .lock()
            .unwrap()
            .insert(path.to_string(), statuses.to_vec());
    }

    /// Answer with this body on `path` (binary, say).
    pub fn set_body(&self, path: &str, body: &[u8]) {
        self.state
            .bodies
            .lock()
            .unwrap()
            .insert(path.to_string(), body.to_vec());
    }

    /// Add this header to every answer on `path`.
    pub fn set_header(&self, path: &str, name: &str, value: &str) {
        self.state
            .headers
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push((name.into(), value.into()));
    }

    pub fn set_delay(&self, path: &str, d: Duration) {
        self.state
            .delays
            .lock()
            .unwrap()
            .insert(path.to_string(), d);
    }

    /// The most requests on `path` that were being answered at once.
    pub fn peak(&self, path: &str) -> usize {
        self.state
            .open
            .lock()
            .unwrap()
            .get(path)
            .map_or(0, |(_, peak)| *peak)
    }

    pub fn got(&self, path: &str) -> Vec<Got> {
        self.state
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Got> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until `path` has had `n` requests; panics after `within`.
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Got> {
        eventually(within, format_args!("{n} requests on {path}"))
            .every(Duration::from_millis(20))
            .until(async || {
                let got = self.got(path);
                if got.len() >= n {
                    Ok(got)
                } else {
                    Err(format!("{} requests", got.len()))
                }
            })
            .await
    }
}
