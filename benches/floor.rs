//! The floor under the throughput bench: the least a durable webhook relay can
//! do per event with hookwasm's own stack, measured on the same machine in the
//! same run. The throughput bench (`HOOKWASM_BENCH_FLOOR=1`) starts this
//! program as a server in place of `hookwasm serve`; run by `cargo bench` on
//! its own it does nothing.
//!
//! Per event it does what no webhook host can leave out, with the crates
//! hookwasm uses and no more: axum and hyper take the POST; the event and its
//! delivery are inserted and committed by one writer thread in group commits
//! (SQLite, WAL, `synchronous=FULL`) before the 202; reqwest POSTs the body,
//! signed (Standard Webhooks), at most `max_in_flight` at once; the answer is
//! recorded (the delivery's state and an attempt row). Left out, so that the
//! difference to hookwasm is what hookwasm adds: parsing and routing the
//! event, plugins, the store's indexes for the API, retries, ordering, health,
//! metrics, the queue's bookkeeping.
//!
//! `HOOKWASM_FLOOR_SERVE="LISTEN RECEIVER_URL DB_PATH MAX_IN_FLIGHT SECRET"`
//! starts it; it serves until killed. `HOOKWASM_FLOOR_INDEXES=1` adds four of
//! the indexes hookwasm's store keeps on these tables (by id, by event, and of
//! the pending work), to price them apart.

// As hookwasm's own binary: the floor is to differ from the host in what it
// does, not in its allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::mpsc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use hookwasm::config::Secret;
use hookwasm::model::now_ms;
use rusqlite::params;
use tokio::sync::{Semaphore, oneshot};

/// What the writer thread is asked to write.
enum Op {
    /// An event and its one delivery; answered with the delivery (its row
    /// and id) once committed.
    Ingest {
        event_id: String,
        delivery_id: String,
        body: Bytes,
        done: oneshot::Sender<(i64, String)>,
    },
    /// An attempt's outcome; committed with the next group, answered by no one
    /// (hookwasm does wait for it before it lets the client's next attempts
    /// pile up, which costs a wake-up it does not count here).
    Outcome {
        delivery: i64,
        status: Option<u16>,
        at: i64,
        duration_ms: i64,
    },
}

struct Relay {
    writer: mpsc::Sender<Op>,
    http: reqwest::Client,
    receiver: reqwest::Url,
    permits: Arc<Semaphore>,
    secret: Secret,
}

/// The writer thread: takes what is waiting, writes it in one transaction,
/// commits, answers. One fsync serves every write that came in meanwhile.
fn writer(path: &str, indexes: bool, ops: mpsc::Receiver<Op>) {
    // The host's own writer connection (WAL, synchronous=FULL, a commit's WAL
    // writes in one system call, its page cache): the floor pays per commit
    // what the host does.
    let conn = hookwasm::store::sqlite::writer_connection(std::path::Path::new(path)).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, \
           body BLOB NOT NULL, received_at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS deliveries (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, \
           event_seq INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
           updated_at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS attempts (delivery_seq INTEGER NOT NULL, n INTEGER NOT NULL, \
           started_at INTEGER NOT NULL, duration_ms INTEGER NOT NULL, status INTEGER, \
           PRIMARY KEY (delivery_seq, n)) WITHOUT ROWID;",
    )
    .unwrap();
    if indexes {
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS events_id ON events (id);
             CREATE INDEX IF NOT EXISTS deliveries_id ON deliveries (id);
             CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_seq);
             CREATE INDEX IF NOT EXISTS deliveries_work ON deliveries (state, seq) \
               WHERE state = 'pending';",
        )
        .unwrap();
    }
    let mut insert_event = conn
        .prepare("INSERT INTO events (id, body, received_at) VALUES (?1, ?2, ?3)")
        .unwrap();
    let mut insert_delivery = conn
        .prepare(
            "INSERT INTO deliveries (id, event_seq, state, updated_at) VALUES (?1, ?2, 'pending', ?3)",
        )
        .unwrap();
    let mut insert_attempt = conn
        .prepare(
            "INSERT INTO attempts (delivery_seq, n, started_at, duration_ms, status) \
             VALUES (?1, 1, ?2, ?3, ?4)",
        )
        .unwrap();
    let mut update_delivery = conn
        .prepare(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, updated_at = ?3 WHERE seq = ?1",
        )
        .unwrap();
    let mut begin = conn.prepare("BEGIN").unwrap();
    let mut commit = conn.prepare("COMMIT").unwrap();
    let mut answers = Vec::new();
    while let Ok(first) = ops.recv() {
        begin.execute([]).unwrap();
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Ingest {
                    event_id,
                    delivery_id,
                    body,
                    done,
                } => {
                    let at = now_ms();
                    let event = insert_event
                        .insert(params![event_id, &body[..], at])
                        .unwrap();
                    let delivery = insert_delivery
                        .insert(params![delivery_id, event, at])
                        .unwrap();
                    answers.push((done, (delivery, delivery_id)));
                }
                Op::Outcome {
                    delivery,
                    status,
                    at,
                    duration_ms,
                } => {
                    insert_attempt
                        .execute(params![delivery, at, duration_ms, status])
                        .unwrap();
                    let state = match status {
                        Some(200..=299) => "delivered",
                        _ => "retrying",
                    };
                    update_delivery
                        .execute(params![delivery, state, now_ms()])
                        .unwrap();
                }
            }
            next = ops.try_recv().ok();
        }
        commit.execute([]).unwrap();
        for (done, delivery) in answers.drain(..) {
            let _ = done.send(delivery);
        }
    }
}

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// One delivery: signed, POSTed, its answer read and recorded.
async fn deliver(relay: Arc<Relay>, delivery: i64, msg_id: String, body: Bytes) {
    let _permit = relay.permits.acquire().await.unwrap();
    let timestamp = now_ms() / 1000;
    // The host's own signing.
    let signature = hookwasm::deliver::sign::sign(
        std::slice::from_ref(&relay.secret),
        &msg_id,
        timestamp,
        &body,
    );
    let mut request = reqwest::Request::new(reqwest::Method::POST, relay.receiver.clone());
    let headers = request.headers_mut();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(WEBHOOK_ID, HeaderValue::from_str(&msg_id).unwrap());
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    headers.insert(
        WEBHOOK_SIGNATURE,
        HeaderValue::from_maybe_shared(Bytes::from(signature)).unwrap(),
    );
    *request.body_mut() = Some(body.into());
    let at = now_ms();
    let clock = std::time::Instant::now();
    let status = match relay.http.execute(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            Some(status)
        }
        Err(_) => None,
    };
    let _ = relay.writer.send(Op::Outcome {
        delivery,
        status,
        at,
        duration_ms: clock.elapsed().as_millis() as i64,
    });
}

async fn ingest(State(relay): State<Arc<Relay>>, body: Bytes) -> (StatusCode, String) {
    // The host's own ids.
    let event_id = hookwasm::model::new_event_id();
    let answer = format!("{{\"id\":\"{event_id}\",\"deliveries\":1}}");
    let (done, stored) = oneshot::channel();
    relay
        .writer
        .send(Op::Ingest {
            event_id,
            delivery_id: hookwasm::model::new_delivery_id(),
            body: body.clone(),
            done,
        })
        .unwrap();
    // The 202 only once the event and its delivery are committed.
    let (delivery, delivery_id) = stored.await.unwrap();
    tokio::spawn(deliver(relay, delivery, delivery_id, body));
    (StatusCode::ACCEPTED, answer)
}

fn main() {
    let Ok(spec) = std::env::var("HOOKWASM_FLOOR_SERVE") else {
        // `cargo bench` runs every bench: this one is the throughput bench's.
        println!("floor: a server for the throughput bench (HOOKWASM_BENCH_FLOOR=1)");
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [listen, receiver, db, max_in_flight, secret] = parts[..] else {
        panic!("HOOKWASM_FLOOR_SERVE: LISTEN RECEIVER_URL DB_PATH MAX_IN_FLIGHT SECRET");
    };
    let indexes = std::env::var("HOOKWASM_FLOOR_INDEXES").as_deref() == Ok("1");
    let (tx, rx) = mpsc::channel();
    let db = db.to_string();
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer(&db, indexes, rx))
        .unwrap();
    let max_in_flight: usize = max_in_flight.parse().unwrap();
    let secret = Secret::parse(secret).unwrap();
    let relay = Arc::new(Relay {
        writer: tx,
        // The host's client settings (deliver/http.rs), its address guard
        // aside (it acts at connect time only).
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(max_in_flight)
            .build()
            .unwrap(),
        receiver: receiver.parse().unwrap(),
        permits: Arc::new(Semaphore::new(max_in_flight)),
        secret,
    });
    let app = axum::Router::new()
        .route("/v1/events", axum::routing::post(ingest))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(relay);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            // Small answers go out at once, as the host's do (api/listen.rs).
            use axum::serve::ListenerExt as _;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .unwrap()
                .tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
            axum::serve(listener, app).await.unwrap();
        });
}
