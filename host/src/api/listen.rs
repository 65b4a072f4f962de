//! Accepting HTTP connections, with the limits a server facing the network needs.
//!
//! A connection that sends half a request and stops, or stays open doing
//! nothing, costs a file descriptor for as long as it lasts; a few thousand of
//! them would leave none for the store, the plugins or the deliveries. So:
//! - at most `server.max_connections` are open at once; the next ones wait in the
//!   kernel's backlog until one closes;
//! - a request's line and headers must arrive within `server.header_timeout` of
//!   their first byte (a slow sender is cut off, however steadily it trickles);
//! - a kept-alive connection with no request for `server.idle_timeout` is closed;
//! - a request's body must arrive within `server.body_timeout` (checked where the
//!   body is read, in `events`, which answers 408);
//! - a request with a body that is refused (4xx, by any route, the console's
//!   and "no such route" included) may leave the body unread, and the
//!   connection cannot carry another request then: the answer says
//!   `Connection: close` rather than let the client reuse it and fail. (Here,
//!   not as a router layer: a layer boxes every request's future and clones
//!   the route's service, a cost on each event.)
//!
//! On shutdown no new connection is taken, idle ones are closed, and requests in
//! flight are finished before [`serve`] returns.
//!
//! Not here: routes and what they answer (the rest of `api`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// The connection limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned_full = false;
    loop {
        if permits.available_permits() == 0 && !warned_full {
            warned_full = true;
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached: new connections wait (server.max_connections)"
            );
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    tracing::error!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if permits.available_permits() > 0 {
            warned_full = false;
        }
        let _ = stream.set_nodelay(true);
        let (app, limits, stop) = (app.clone(), limits.clone(), stop_rx.clone());
        tokio::spawn(async move {
            connection(stream, app, limits, stop).await;
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // New connections are refused from now on, not left waiting in the backlog.
    drop(listener);
    // Every connection holds a permit until it is gone.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
}

/// Raises the soft limit on open files towards the hard one, so that
/// `max_connections` sockets leave room for the store, plugins and deliveries;
/// warns when even the hard limit is too low for that.
pub fn raise_fd_limit(max_connections: usize) {
    // Room for the store, the plugin folder and the clients' connection pools.
    let wanted = max_connections as u64 + 1024;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur < wanted {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections,
            "the open-file limit is low for server.max_connections; raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
}

/// One connection, watched for the header and idle timeouts.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let clock = Arc::new(ConnClock::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        clock: clock.clone(),
    });
    let svc = {
        let clock = clock.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            use tower::Service as _;
            clock.request_started();
            let (mut app, clock) = (app.clone(), clock.clone());
            let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
                || req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0");
            async move {
                let mut answer = app.call(req).await;
                if has_body
                    && let Ok(r) = &mut answer
                    && r.status().is_client_error()
                {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                clock.request_done();
                answer
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are kept below, where idle and half-sent heads are told apart.
    builder.header_read_timeout(None);
    let mut conn = std::pin::pin!(builder.serve_connection(io, svc));
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(clock.next_check(&limits)) => {}
            _ = stop.wait_for(|s| *s), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
        }
        match clock.expired(&limits) {
            Expired::Head => {
                tracing::debug!(
                    "closing a connection whose request head did not arrive within server.header_timeout"
                );
                return; // dropping the connection closes the socket
            }
            Expired::Idle if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            // Asked to close, nothing in flight, and still open: a client that
            // began a head and stalls. It gets no more time than a head would.
            _ if closing_since.is_some_and(|t| t.elapsed() >= limits.header_timeout)
                && clock.in_flight.load(Ordering::Relaxed) == 0 =>
            {
                return;
            }
            _ => {}
        }
    }
}

enum Expired {
    None,
    /// A request head was begun and not finished in time.
    Head,
    /// No request for the idle timeout.
    Idle,
}

/// What a connection is doing, as seen from its reads and its requests. Times are
/// ms since the connection opened.
struct ConnClock {
    opened: Instant,
    /// When the connection last became idle (opened, or a response was ready).
    idle_since: AtomicU64,
    /// 1 + when the first byte of the next request head arrived; 0 if none has.
    head_since: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnClock {
    fn new() -> ConnClock {
        ConnClock {
            opened: Instant::now(),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    fn request_done(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn due(&self, limits: &Limits) -> Option<u64> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(match self.head_since.load(Ordering::Relaxed) {
            0 => self.idle_since.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64,
            h => h - 1 + limits.header_timeout.as_millis() as u64,
        })
    }

    fn expired(&self, limits: &Limits) -> Expired {
        match self.due(limits) {
            Some(due) if due <= self.now() => {
                if self.head_since.load(Ordering::Relaxed) == 0 {
                    Expired::Idle
                } else {
                    Expired::Head
                }
            }
            _ => Expired::None,
        }
    }

    /// How long to sleep before looking again.
    fn next_check(&self, limits: &Limits) -> Duration {
        let wait = match self.due(limits) {
            Some(due) => due.saturating_sub(self.now()),
            None => 1000,
        };
        Duration::from_millis(wait.clamp(10, 1000))
    }
}

/// The socket, telling the clock when bytes arrive.
struct Watched {
    inner: TcpStream,
    clock: Arc<ConnClock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
