use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Six clients: four with a plugin each, one without, one disabled.
fn six_clients(recv: &Receiver) -> Config {
    let feed_only = "events = [\"new_feed_entry\"]";
    Config::new()
        .client(
            Client::new("press-office", &recv.url("/press"))
                .plugin("chat-message.wasm")
                .key(feed_only)
                .secret(SECRET)
                .config("channel", "#press"),
        )
        .client(
            Client::new("public-site", &recv.url("/public"))
                .plugin("public-feeds-only.wasm")
                .key(feed_only),
        )
        .client(Client::new("archive", &recv.url("/archive")).plugin("redact-subscribers.wasm"))
        .client(
            Client::new("mirror", &recv.url("/mirror"))
                .plugin("passthrough.wasm")
                .key(feed_only),
        )
        .client(Client::new("raw", &recv.url("/raw")))
        .client(Client::new("off", &recv.url("/off")).key("enabled = false"))
        .install("chat-message")
        .install("public-feeds-only")
        .install("redact-subscribers")
        .install("passthrough")
}

#[tokio::test(flavor = "multi_thread")]
async fn both_formats_reach_each_client_transformed_by_its_plugin() {
    let recv = Receiver::start().await;
    let host = six_clients(&recv).start().await;
    let current = fixture(CURRENT);
    let documented = fixture(DOCUMENTED);

    let (s1, a1) = host.post(current.clone()).await;
    let (s2, a2) = host.post(documented.clone()).await;
    assert_eq!((s1, s2), (202, 202), "{a1} {a2}");
    assert!(a1["id"].as_str().unwrap().starts_with("evt_"));
    assert_ne!(a1["id"], a2["id"]);
    let (s3, _) = host.post(fixture("record.created.json")).await;
    assert_eq!(s3, 202);

    // press-office: a chat message per entry, signed.
    let press = recv.wait_for("/press", 2, WAIT).await;
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    for got in &press {
        assert_eq!(got.json()["channel"], "#press");
        let text = got.json()["text"].as_str().unwrap().to_string();
        assert!(
            text.starts_with(
                "New in Cannes Festival: PRESS CONFERENCE - Winners \u{2014} At the end"
            ),
            "{text}"
        );
        wh.verify(&got.body, &got.headers)
            .expect("signature verifies with the reference library");
    }
    // archive: every event, subscribers' addresses masked in both formats.
    let archive = recv.wait_for("/archive", 3, WAIT).await;
    let bodies: Vec<String> = archive
        .iter()
        .map(|g| String::from_utf8(g.body.to_vec()).unwrap())
        .collect();
    let all = bodies.join("\n");
    assert!(
        !all.contains("bradley72@yahoo.com") && !all.contains("king.benett@movie-news.org"),
        "{all}"
    );
    assert!(
        all.contains("\"email\":\"b********@yahoo.com\"")
            && all.contains("\"mail\":\"b********@yahoo.com\""),
        "{all}"
    );
    // mirror and the plugin-less client: the original bytes, untouched.
    let mirror = recv.wait_for("/mirror", 2, WAIT).await;
    let raw = recv.wait_for("/raw", 3, WAIT).await;
    for got in mirror.iter().chain(&raw) {
        assert!(
            [
                &current[..],
                &documented[..],
                &fixture("record.created.json")[..]
            ]
            .contains(&&got.body[..])
        );
    }
    // public-site: the documented entry's feed is not public.
    let public = recv.wait_for("/public", 1, WAIT).await;
    assert_eq!(&public[0].body[..], &current[..]);

    // The contract's headers on every delivery.
    for got in recv.all() {
        assert_eq!(got.header("content-type"), "application/json");
        assert_eq!(
            got.header("user-agent"),
            format!("hookwasm/{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(got.header("webhook-id").starts_with("msg_"));
        let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
        assert!((ts - hookwasm::model::now_ms() / 1000).abs() < 120);
    }
    // Nothing more arrives: one delivery per subscribed client, none for `off`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |p: &str| recv.got(p).len();
    assert_eq!(
        (
            count("/press"),
            count("/public"),
            count("/archive"),
            count("/mirror"),
            count("/raw"),
            count("/off")
        ),
        (2, 1, 3, 2, 3, 0)
    );
    let ids: std::collections::HashSet<String> = recv
        .all()
        .iter()
        .map(|g| g.header("webhook-id").to_string())
        .collect();
    assert_eq!(
        ids.len(),
        recv.all().len(),
        "every delivery has its own webhook-id"
    );

    // The skip is recorded with its reason and the plugin version.
    let public = host.wait_state("public-site", 1, "skipped").await;
    let skipped: Vec<_> = public.iter().filter(|d| d["state"] == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{public:?}");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not public")
    );
    assert!(
        skipped[0]["plugin"]
            .as_str()
            .unwrap()
            .starts_with("public-feeds-only.wasm@")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_events_are_refused_with_a_reason() {
    let recv = Receiver::start().await;
    let host = Config::new().client(Client::to(&recv, "raw")).start().await;
    for (body, needle) in [
        ("null", "null"),
        ("[1,2]", "array"),
        ("\"new_feed_entry\"", "string"),
        ("{\"event\": ", "not JSON"),
        ("{}", "names no event"),
        (r#"{"event": 12}"#, "`event` must be a string"),
        (
            r#"{"event":"record.created","webhookId":"12","url":"u","instance_name":"i"}"#,
            "`webhookId` must be an integer",
        ),
        (
            r#"{"name":"new_feed_entry","feed":{"title":4},"entry":{"title":"t","author":{}}}"#,
            "`feed.title`",
        ),
        (r#"{"name":"new_feed_entry","feed":{"title":"t"}}"#, "entry"),
    ] {
        let (status, answer) = host.post(body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (status, answer) = host.post_with(fixture(CURRENT), "text/plain", None).await;
    assert_eq!(status, 415, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    let (status, _) = host
        .post_with(
            fixture(CURRENT),
            "application/vnd.phraseanet.event+json",
            None,
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = host
        .post_with(fixture(CURRENT), "application/json; charset=utf-8", None)
        .await;
    assert_eq!(status, 202);
    let huge = format!(
        "{{\"event\":\"record.created\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let (status, answer) = host.post(huge).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("server.max_body")
    );

    // Only the accepted events were delivered.
    recv.wait_for("/raw", 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/raw").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingest_token_is_required_when_set() {
    let recv = Receiver::start().await;
    let mut host = Config::new().client(Client::to(&recv, "raw")).start().await;
    // Add the token and restart: the config is read at start.
    host.restart_with(|c| c.server("ingest_token = \"s3cret\""))
        .await;

    let (status, answer) = host.post(fixture(CURRENT)).await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = host
        .post_with(fixture(CURRENT), "application/json", Some("wrong"))
        .await;
    assert_eq!(status, 401);
    let (status, _) = host
        .post_with(fixture(CURRENT), "application/json", Some("s3cret"))
        .await;
    assert_eq!(status, 202);
    let resp = reqwest::Client::new()
        .post(host.url("/v1/events?token=s3cret"))
        .header("content-type", "application/json")
        .body(fixture(CURRENT))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        202,
        "Phraseanet can only be given a URL: ?token= must work"
    );
    // The batch route takes the same token, the same ways.
    let batch = |query: &'static str| {
        let req = reqwest::Client::new()
            .post(host.url(&format!("/v1/events:batch{query}")))
            .header("content-type", "application/x-ndjson")
            .body(
                String::from_utf8(fixture("record.created.json"))
                    .unwrap()
                    .replace('\n', ""),
            );
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(batch("").await, 401);
    assert_eq!(batch("?token=wrong").await, 401);
    assert_eq!(batch("?token=s3cret").await, 202);
    recv.wait_for("/raw", 3, WAIT).await;

    // The status names every client and plugin: it takes an operator token,
    // which the ingest token is not.
    let status = |token: Option<&'static str>| {
        let mut req = reqwest::Client::new().get(host.url("/v1/status"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };
    assert_eq!(status(None).await.status(), 401);
    assert_eq!(status(Some("wrong")).await.status(), 401);
    assert_eq!(status(Some("s3cret")).await.status(), 401);
    let ok = status(Some(OPERATOR)).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("\"raw\""));
}

/// JSON is UTF-8: invalid bytes anywhere in the body, even in a field the parser
/// skips, are a 400, so they never reach a client (raw) or a plugin.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_anywhere_in_the_body_is_a_400() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(Client::to(&recv, "raw"))
        .client(Client::to(&recv, "chat").plugin("chat-message.wasm"))
        .install("chat-message")
        .start()
        .await;
    let good = fixture(CURRENT);
    let head = &good[..good.iter().rposition(|&b| b == b'}').unwrap()];
    for bad in [
        &b"\xff\xfe junk"[..],
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xe2\x82",
    ] {
        let mut body = head.to_vec();
        body.extend_from_slice(b",\"x_unknown\":\"");
        body.extend_from_slice(bad);
        body.extend_from_slice(b"\"}");
        let (status, answer) = host.post(body).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("UTF-8"),
            "{answer}"
        );
    }
    assert_eq!(host.post(good).await.0, 202);
    recv.wait_for("/raw", 1, WAIT).await;
    recv.wait_for("/chat", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.all().len(), 2, "only the valid event went out");
    let rows = host.wait_state("chat", 1, "delivered").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
}

/// Sends `request` on a fresh connection and returns what comes back until the
/// server closes it (or 10 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the server closes `s` (a read returns 0 or fails); panics after
/// `within`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let closed = async {
        // A response (a 408, say) may come first, then the close.
        while let Ok(n) = s.read(&mut buf).await
            && n > 0
        {}
    };
    if tokio::time::timeout(within, closed).await.is_err() {
        panic!("the server kept the connection open for {within:?}");
    }
}

/// A refused request with a body may leave that body unread, so its answer
/// closes the connection, whichever route refused it; an accepted one, or a
/// refusal without a body, keeps it open for the next request.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_body_closes_the_connection() {
    let host = Config::new().start().await;
    let http = reqwest::Client::new();
    let post = |body: String| {
        http.post(host.url("/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let closes = |r: &reqwest::Response| {
        r.headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    };
    let refused = post("{\"name\":\"new_feed_entry\"}".into()).await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(closes(&refused), "{:?}", refused.headers());
    let huge = post("x".repeat(2 << 20)).await.unwrap();
    assert_eq!(huge.status(), 413);
    assert!(closes(&huge), "{:?}", huge.headers());
    let accepted = post(String::from_utf8(fixture(CURRENT)).unwrap())
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    assert!(!closes(&accepted), "{:?}", accepted.headers());
    let no_body = http
        .get(host.url("/v1/no-such-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_body.status(), 404);
    assert!(!closes(&no_body), "{:?}", no_body.headers());
    // Any route's refusal: a body sent to no route at all is not read either.
    let nowhere = http
        .post(host.url("/v1/no-such-route"))
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);
    assert!(closes(&nowhere), "{:?}", nowhere.headers());
}

/// Only size is a 413: a body that cannot be read (a malformed chunk) is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunked_body_is_a_400_not_a_413() {
    let host = Config::new().start().await;
    let answer = raw_exchange(
        host.addr,
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("max_body"), "{answer}");
}

/// Stalled and idle connections are closed, a slow body gets a 408, and no more
/// than `max_connections` are open at once.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_idle_and_surplus_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut host = Config::new().start().await;
    host.restart_with(|c| {
        c.server("header_timeout = \"2s\"")
            .server("body_timeout = \"2s\"")
            .server("idle_timeout = \"3s\"")
            .server("max_connections = 4")
    })
    .await;

    // Half a request line, then nothing: cut off after the header timeout.
    let mut half = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    half.write_all(b"POST /v1/ev").await.unwrap();
    closed_by_server(&mut half, Duration::from_secs(15)).await;

    // A byte a second keeps no connection alive past the header timeout either.
    let mut slow = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), trickle)
        .await
        .unwrap();
    closed_by_server(&mut slow, Duration::from_secs(15)).await;

    // A kept-alive connection left idle is closed after the idle timeout.
    let mut idle = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    closed_by_server(&mut idle, Duration::from_secs(15)).await;

    // A body that stops coming: 408.
    let mut body = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    body.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), body.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_timeout"), "{answer}");

    // Four connections that say nothing fill the host; a fifth is not served
    // until they are gone, and then it is.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(host.addr).await.unwrap();
        c.write_all(b"G").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fifth = tokio::spawn(raw_exchange(
        host.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !fifth.is_finished(),
        "a fifth connection was served beside four"
    );
    let answer = fifth.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for mut c in held {
        closed_by_server(&mut c, Duration::from_secs(15)).await;
    }
    // And the host still serves.
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_posts_a_file_of_events_to_the_running_host() {
    const WAIT: Duration = Duration::from_secs(30);
    let recv = Receiver::start().await;
    let host = Config::new().client(Client::to(&recv, "c")).start().await;
    let mut lines: Vec<String> = (0..20).map(numbered).collect();
    lines.insert(5, "{\"not\": \"an event\"}".into());
    let file = host.dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, out, err) = host.cli(&["ingest", file.to_str().unwrap()]);
    assert_eq!(code, 1, "one line was refused: {out} {err}");
    assert!(out.contains("20 events accepted, 1 refused"), "{out}");
    assert!(err.contains("line 6: 400"), "{err}");
    recv.wait_for("/c", 20, WAIT).await;
}

/// One event of a fixture as one NDJSON line.
fn line(body: &[u8]) -> String {
    serde_json::to_string(&serde_json::from_slice::<serde_json::Value>(body).unwrap()).unwrap()
}

async fn post_batch(host: &Host, body: String, content_type: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(host.url("/v1/events:batch"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// `POST /v1/events:batch`: a back-fill in one request. Every line is checked
/// before any is stored, so a batch with a bad line stores nothing; a good one
/// is answered once every event is on disk, each as if POSTed alone (the
/// de-duplication window included), and its deliveries keep the lines' order.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_events_is_stored_whole_or_refused_whole() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .server("dedup_window = \"10m\"")
        .server("max_batch_events = 4")
        // One at a time: what arrives shows the order the deliveries were made in.
        .client(Client::to(&recv, "raw").max_in_flight(1))
        .start()
        .await;
    let ndjson = |lines: &[String]| lines.join("\n") + "\n";

    let batch = ndjson(&[
        line(numbered(1).as_bytes()),
        line(numbered(2).as_bytes()),
        "  ".into(),
        line(&fixture("record.created.json")),
        line(numbered(1).as_bytes()),
    ]);
    let (status, answer) = post_batch(&host, batch, "application/x-ndjson").await;
    assert_eq!(status, 202, "{answer}");
    let events = answer["events"].as_array().unwrap();
    let lines: Vec<u64> = events.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 2, 4, 5], "{answer}");
    assert_eq!(answer["deliveries"], 3, "{answer}");
    assert_eq!(events[3]["duplicate"], true, "{answer}");
    assert_eq!(events[3]["id"], events[0]["id"], "the copy names the first");
    assert_eq!(events[3]["deliveries"], 0);
    assert!(
        events[..3]
            .iter()
            .all(|e| e["id"].as_str().unwrap().starts_with("evt_"))
    );

    let got = recv.wait_for("/raw", 3, WAIT).await;
    let order: Vec<serde_json::Value> = got.iter().map(|g| g.json()["webhookId"].clone()).collect();
    assert_eq!(
        order[..2],
        [serde_json::json!(1), serde_json::json!(2)],
        "in the lines' order"
    );
    assert_eq!(got[2].json()["event"], "record.created");

    // A bad line: nothing of the batch is stored.
    let batch = ndjson(&[
        line(numbered(3).as_bytes()),
        "{\"event\": ".into(),
        line(numbered(4).as_bytes()),
        "null".into(),
    ]);
    let (status, answer) = post_batch(&host, batch, "application/jsonl").await;
    assert_eq!(status, 400, "{answer}");
    let refused: Vec<u64> = answer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(refused, [2, 4], "{answer}");
    let msg = answer["error"].as_str().unwrap();
    assert!(
        msg.contains("nothing was stored") && msg.contains("line 2"),
        "{msg}"
    );

    // CRLF lines are events like any other; a line over server.max_body is
    // refused with the others.
    let crlf = format!(
        "{}\r\n{}\r\n",
        line(numbered(5).as_bytes()),
        line(numbered(6).as_bytes())
    );
    let (status, answer) = post_batch(&host, crlf, "application/x-ndjson").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliveries"], 2, "{answer}");
    let long = format!(
        "{{\"event\":\"record.created\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let batch = ndjson(&[line(numbered(7).as_bytes()), long]);
    let (status, answer) = post_batch(&host, batch, "application/x-ndjson").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["lines"][0]["line"], 2, "{answer}");
    assert!(
        answer["lines"][0]["error"]
            .as_str()
            .unwrap()
            .contains("server.max_body")
    );

    // Too many events, no event, the wrong type.
    let five = ndjson(
        &(10..15)
            .map(|n| line(numbered(n).as_bytes()))
            .collect::<Vec<_>>(),
    );
    let (status, answer) = post_batch(&host, five, "application/x-ndjson").await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("server.max_batch_events")
    );
    let (status, answer) = post_batch(&host, "\n \n".into(), "application/x-ndjson").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no event"));
    let (status, answer) =
        post_batch(&host, line(numbered(20).as_bytes()), "application/json").await;
    assert_eq!(status, 415, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson")
    );

    recv.wait_for("/raw", 5, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/raw").len(), 5, "nothing refused was delivered");
    // And the store holds the good batches' five deliveries, no more.
    let (status, all) = host
        .api(
            "GET",
            "/v1/admin/deliveries?client=raw",
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["deliveries"].as_array().unwrap().len(), 5, "{all}");
}
