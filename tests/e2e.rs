//! The host end to end: Phraseanet events in, each client's plugin, deliveries out,
//! hot reload. Real binary, real plugins built from source, real receiver.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const CURRENT: &str = "new_feed_entry.json";
const DOCUMENTED: &str = "new_feed_entry.documented.json";

fn clients(recv: &Receiver) -> String {
    format!(
        r##"
[delivery]
allowed_networks = ["127.0.0.0/8"]

[[clients]]
id = "press-office"
url = "{press}"
plugin = "chat-message.wasm"
events = ["new_feed_entry"]
secret = "{SECRET}"
[clients.config]
channel = "#press"

[[clients]]
id = "public-site"
url = "{public}"
plugin = "public-feeds-only.wasm"
events = ["new_feed_entry"]

[[clients]]
id = "archive"
url = "{archive}"
plugin = "redact-subscribers.wasm"

[[clients]]
id = "mirror"
url = "{mirror}"
plugin = "passthrough.wasm"
events = ["new_feed_entry"]

[[clients]]
id = "raw"
url = "{raw}"

[[clients]]
id = "off"
url = "{off}"
enabled = false
"##,
        press = recv.url("/press"),
        public = recv.url("/public"),
        archive = recv.url("/archive"),
        mirror = recv.url("/mirror"),
        raw = recv.url("/raw"),
        off = recv.url("/off"),
    )
}

fn examples() -> Vec<(&'static str, std::path::PathBuf)> {
    [
        "chat-message",
        "public-feeds-only",
        "redact-subscribers",
        "passthrough",
    ]
    .into_iter()
    .map(|p| {
        (
            Box::leak(format!("{p}.wasm").into_boxed_str()) as &str,
            plugin(p),
        )
    })
    .collect()
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn both_formats_reach_each_client_transformed_by_its_plugin() {
    let recv = Receiver::start().await;
    let host = Host::start(&clients(&recv), &examples()).await;
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
    let public = host.deliveries("public-site");
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
    let host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n[[clients]]\nid = \"raw\"\nurl = \"{}\"\n",
            recv.url("/raw")
        ),
        &[],
    )
    .await;
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
    let mut host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n[[clients]]\nid = \"raw\"\nurl = \"{}\"\n",
            recv.url("/raw")
        ),
        &[],
    )
    .await;
    // Add the token and restart: the config is read at start.
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace("[server]\n", "[server]\ningest_token = \"s3cret\"\n"),
    )
    .unwrap();
    assert!(host.sigterm().success());
    host.restart().await;

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
    recv.wait_for("/raw", 2, WAIT).await;

    // The status names every client and plugin: it takes the token too.
    let status = |token: Option<&'static str>| {
        let mut req = reqwest::Client::new().get(host.url("/v1/status"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };
    assert_eq!(status(None).await.status(), 401);
    assert_eq!(status(Some("wrong")).await.status(), 401);
    let ok = status(Some("s3cret")).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("\"raw\""));
}

/// Replacing a plugin under steady traffic: every event delivered exactly once,
/// each by the old or the new version, never raw, and the switch is one-way.
#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_plugin_under_traffic_loses_and_doubles_nothing() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n[[clients]]\nid = \"c\"\nurl = \"{}\"\nplugin = \"p.wasm\"\n\
             [clients.config]\ndo = \"count\"\n",
            recv.url("/c")
        ),
        &[("p.wasm", plugin("misbehave"))],
    )
    .await;
    let old = hash_of(&plugin("misbehave"));
    let new = hash_of(&plugin("chat-message"));
    let total = 300;
    let mut swapped_at = None;
    for i in 0..total {
        let body = String::from_utf8(fixture(CURRENT))
            .unwrap()
            .replace("\"webhookId\":12", &format!("\"webhookId\":{i}"));
        let (status, _) = host.post(body).await;
        assert_eq!(status, 202);
        if i == total / 3 {
            host.install_plugin("p.wasm", &plugin("chat-message"));
            swapped_at = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    host.wait_serving("p.wasm", &new).await;
    let got = recv.wait_for("/c", total, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recv.got("/c").len(), total, "no delivery doubled");

    // In event order, the versions go old… then new…, and each body is that version's.
    let mut rows = host.deliveries("c");
    rows.reverse(); // the listing is newest first
    assert_eq!(rows.len(), total);
    let by_id: std::collections::HashMap<String, &Got> = got
        .iter()
        .map(|g| (g.header("webhook-id").to_string(), g))
        .collect();
    let mut switched = false;
    for row in &rows {
        assert_eq!(row["state"], "delivered", "{row}");
        let version = row["plugin"].as_str().unwrap();
        let body = by_id[row["id"].as_str().unwrap()].json();
        if version.ends_with(&new) {
            switched = true;
            assert!(
                body["text"].as_str().unwrap().starts_with("New in"),
                "{body}"
            );
        } else {
            assert!(version.ends_with(&old), "{version}");
            assert!(!switched, "an old-version delivery after the switch: {row}");
            assert!(body["calls"].as_u64().is_some(), "{body}");
        }
    }
    assert!(switched, "the new version never served");
    let first_new = got
        .iter()
        .filter(|g| g.json().get("text").is_some())
        .map(|g| g.at)
        .min()
        .unwrap();
    assert!(first_new.duration_since(swapped_at.unwrap()) < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_leaves_the_previous_version_serving() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n[[clients]]\nid = \"c\"\nurl = \"{}\"\nplugin = \"p.wasm\"\n",
            recv.url("/c")
        ),
        &[("p.wasm", plugin("chat-message"))],
    )
    .await;
    let good = hash_of(&plugin("chat-message"));
    // A truncated copy: what a half-finished upload looks like.
    let bytes = std::fs::read(plugin("passthrough")).unwrap();
    let truncated = host.dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    host.install_plugin("p.wasm", &truncated);

    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st = host.status().await;
        let p = &st["plugins"][0];
        if p["error"].is_string() {
            assert!(p["serving"].as_str().unwrap().ends_with(&good), "{st}");
            assert!(p["error"].as_str().unwrap().contains("p.wasm"), "{st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bad file was never reported: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(host.log().contains("plugin rejected"), "{}", host.log());
    let (status, _) = host.post(fixture(CURRENT)).await;
    assert_eq!(status, 202);
    let got = recv.wait_for("/c", 1, WAIT).await;
    assert!(
        got[0].json()["text"].is_string(),
        "still the chat-message version"
    );
    // A rejected file is reported once, not reloaded in a loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        host.log().matches("plugin rejected").count(),
        1,
        "{}",
        host.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_plugin_holds_deliveries_until_it_arrives() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\nmax_in_flight = 1\n\
             [[clients]]\nid = \"c\"\nurl = \"{}\"\nplugin = \"late.wasm\"\n",
            recv.url("/c")
        ),
        &[],
    )
    .await;
    for i in 0..5 {
        let body = String::from_utf8(fixture(CURRENT))
            .unwrap()
            .replace("\"webhookId\":12", &format!("\"webhookId\":{i}"));
        assert_eq!(host.post(body).await.0, 202);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        recv.got("/c").is_empty(),
        "fail closed: nothing is sent without the plugin"
    );
    let rows = host.deliveries("c");
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["state"] == "held"), "{rows:?}");
    assert!(rows[0]["reason"].as_str().unwrap().contains("late.wasm"));

    host.install_plugin("late.wasm", &plugin("passthrough"));
    let got = recv.wait_for("/c", 5, WAIT).await;
    let order: Vec<i64> = got
        .iter()
        .map(|g| g.json()["webhookId"].as_i64().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![0, 1, 2, 3, 4],
        "held work resumes in event order"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/c").len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_error_holds_that_delivery_and_never_sends_raw() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n\
             [[clients]]\nid = \"c\"\nurl = \"{}\"\nplugin = \"p.wasm\"\n[clients.config]\ndo = \"error\"\nonly_event = \"record.created\"\n",
            recv.url("/c")
        ),
        &[("p.wasm", plugin("misbehave"))],
    )
    .await;
    assert_eq!(host.post(fixture("record.created.json")).await.0, 202);
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    // The good event goes through; the bad one is held, not sent raw.
    let got = recv.wait_for("/c", 1, WAIT).await;
    assert_eq!(
        got[0].json(),
        json!({"ok": true, "event": "new_feed_entry"})
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recv.got("/c").len(), 1);
    let rows = host.deliveries("c");
    let err = rows
        .iter()
        .find(|r| r["event"] == "record.created")
        .unwrap();
    assert_eq!(err["state"], "plugin_error", "{err}");
    assert!(
        err["reason"].as_str().unwrap().contains("asked to fail"),
        "{err}"
    );

    // A new version arrives: the held delivery is rendered by it and sent.
    host.install_plugin("p.wasm", &plugin("passthrough"));
    let got = recv.wait_for("/c", 2, WAIT).await;
    assert_eq!(&got[1].body[..], &fixture("record.created.json")[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_attempts_in_flight_and_exits_zero() {
    let recv = Receiver::start().await;
    recv.set_delay("/slow", Duration::from_millis(1500));
    let mut host = Host::start(
        &format!("[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n[[clients]]\nid = \"slow\"\nurl = \"{}\"\n", recv.url("/slow")),
        &[],
    )
    .await;
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await; // the attempt is in flight
    let status = host.sigterm();
    assert!(status.success(), "{status}\n{}", host.log());
    assert_eq!(recv.got("/slow").len(), 1);
    let rows = host.deliveries("slow");
    assert_eq!(
        rows[0]["state"], "delivered",
        "the outcome was recorded before exit: {rows:?}"
    );
}

// ---- The command line -------------------------------------------------------

fn event_path(name: &str) -> String {
    repo()
        .join("tests/fixtures/events")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn plugin_test_prints_the_verdict() {
    let chat = plugin("chat-message");
    let (code, out, err) = run(&[
        "plugin",
        "test",
        chat.to_str().unwrap(),
        "--event",
        &event_path(CURRENT),
        "--config",
        "channel=#news",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "deliver");
    assert_eq!(v["content_type"], "application/json");
    assert_eq!(v["headers"], json!([]));
    let body: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["channel"], "#news");
    assert_eq!(
        body["text"],
        "New in Cannes Festival: PRESS CONFERENCE - Winners \u{2014} At the end of the Closing Ceremony, the winners \
         have come, each in turn, speak to the press. Palme d\u{2019}or: \u{c9}lise"
    );
    assert!(out.starts_with("{\"verdict\":\"deliver\""), "{out}");
    assert!(
        err.contains("chat message for feed"),
        "guest log lines show: {err}"
    );

    let public = plugin("public-feeds-only");
    let (code, out, _) = run(&[
        "plugin",
        "test",
        public.to_str().unwrap(),
        "--event",
        &event_path(DOCUMENTED),
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"verdict": "skip", "reason": "feed \"Cannes Festival\" is not public"})
    );

    let (code, out, _) = run(&[
        "plugin",
        "test",
        public.to_str().unwrap(),
        "--event",
        &event_path(CURRENT),
        "--config",
        "exclude_titles=Internal*, cannes*",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("matches exclude_titles pattern"), "{out}");

    let redact = plugin("redact-subscribers");
    let (code, out, _) = run(&[
        "plugin",
        "test",
        redact.to_str().unwrap(),
        "--event",
        &event_path(CURRENT),
        "--config",
        "mode=remove",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let body: serde_json::Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["users"][0],
        json!({"firstname": "John", "lastname": "Bradley"})
    );
    assert_eq!(
        body["entry"]["author"]["email"], "nicolas@fdc.fr",
        "only subscribers are redacted"
    );

    let misbehave = plugin("misbehave");
    let (code, out, err) = run(&[
        "plugin",
        "test",
        misbehave.to_str().unwrap(),
        "--event",
        &event_path(CURRENT),
        "--config",
        "do=error",
    ]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("asked to fail"), "{err}");
}

#[test]
fn plugin_check_tells_a_plugin_from_anything_else() {
    let chat = plugin("chat-message");
    let (code, out, _) = run(&["plugin", "check", chat.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hookwasm:plugin/plugin@0.2.0"), "{out}");
    assert!(
        out.contains("hookwasm:plugin/host@0.2.0"),
        "imports are listed: {out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&chat).unwrap();
    let truncated = dir.path().join("t.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let (code, _, err) = run(&["plugin", "check", truncated.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("hookwasm: t.wasm: not a WebAssembly component"),
        "{err}"
    );
    let text = dir.path().join("x.wasm");
    std::fs::write(&text, "hello").unwrap();
    let (code, _, err) = run(&["plugin", "check", text.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("\\0asm"), "{err}");
    let (code, _, err) = run(&["plugin", "check", "/nonexistent.wasm"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("hookwasm: cannot read the plugin /nonexistent.wasm"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn config_mistakes_end_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let base =
        "[server]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndir = \"p\"\n[store]\npath = \"s.db\"\n";
    for (extra, needle) in [
        (
            "[[clients]]\nid = \"a\"\nurl = \"http://x.org\"\ntimout = \"1s\"\n",
            "timout",
        ),
        ("[delivery]\ntimeout = \"soon\"\n", "soon"),
        ("[surprise]\n", "surprise"),
        (
            "[[clients]]\nid = \"a\"\nurl = \"http://x.org\"\nsecret = \"nope\"\n",
            "whsec_",
        ),
    ] {
        std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
        let (code, out, err) = run(&["serve", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{extra}: {out} {err}");
        assert!(err.contains(needle), "{extra}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"));
    }
    let (code, _, err) = run(&["serve", "--config", "/nonexistent/hookwasm.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the config file /nonexistent/hookwasm.toml"),
        "{err}"
    );

    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(&cfg, base.replace("127.0.0.1:0", &addr.to_string())).unwrap();
    let (code, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("server.listen"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_receiver_prints_and_verifies_deliveries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let receiver = std::process::Command::new(bin())
        .args(["receive", "--listen", &addr.to_string(), "--secret", SECRET])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let host = Host::start(
        &format!(
            "[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n[[clients]]\nid = \"c\"\nurl = \"http://{addr}/hook\"\n\
             plugin = \"chat-message.wasm\"\nsecret = \"{SECRET}\"\n"
        ),
        &[("chat-message.wasm", plugin("chat-message"))],
    )
    .await;
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    let deadline = std::time::Instant::now() + WAIT;
    while host
        .deliveries("c")
        .first()
        .is_none_or(|d| d["state"] != "delivered")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe_term(receiver.id());
    let out = receiver.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("── POST /hook"), "{text}");
    assert!(text.contains("signature: verified"), "{text}");
    assert!(
        text.contains("\"text\": \"New in Cannes Festival"),
        "pretty body: {text}"
    );
}

fn unsafe_term(pid: u32) {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

// ---- Hardening: bad input, stalled connections, private files -------------------

/// JSON is UTF-8: invalid bytes anywhere in the body, even in a field the parser
/// skips, are a 400, so they never reach a client (raw) or a plugin.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_anywhere_in_the_body_is_a_400() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}{}",
            client("raw", &recv.url("/raw"), ""),
            client("chat", &recv.url("/chat"), "plugin = \"chat-message.wasm\"")
        ),
        &[("chat-message.wasm", plugin("chat-message"))],
    )
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
    assert!(
        host.deliveries("chat")
            .iter()
            .all(|r| r["state"] == "delivered")
    );
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
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // a response (a 408, say), then the close
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

/// Only size is a 413: a body that cannot be read (a malformed chunk) is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunked_body_is_a_400_not_a_413() {
    let host = Host::start("", &[]).await;
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
    let host = Host::start("", &[]).await;
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace(
            "[server]\n",
            "[server]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\nidle_timeout = \"3s\"\nmax_connections = 4\n",
        ),
    )
    .unwrap();
    let mut host = host;
    assert!(host.sigterm().success());
    host.restart().await;

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

/// Under umask 022 the store's folder is 0700 and its files 0600: every event,
/// subscribers' e-mail addresses included, is in them.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_private_to_the_host_user() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let host = Host::start("", &[]).await;
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    let data = host.dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the store's folder");
    for f in [
        "hookwasm.db",
        "hookwasm.db-wal",
        "hookwasm.db-shm",
        "plugin-cache.key",
    ] {
        let path = data.join(f);
        if f == "plugin-cache.key" {
            // The tests keep the key beside their shared cache instead.
            assert_eq!(mode(&repo().join("target/test-plugin-cache.key")), 0o600);
            continue;
        }
        assert_eq!(mode(&path), 0o600, "{f}");
    }
}

/// Numbers far out of any sensible range end in one line naming the key, not
/// a panic (exit 101) or a wrapped value.
#[test]
fn absurd_numbers_in_the_config_are_named_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        (
            "[delivery]\nmax_in_flight = 9223372036854775807\n",
            "max_in_flight",
        ),
        (
            "[delivery]\nretry_schedule = [\"500000000000years\"]\n",
            "retry_schedule",
        ),
        (
            "[delivery]\nretry_schedule = [\"5000years\"]\n",
            "retry_schedule",
        ),
        (
            "[[clients]]\nid = \"a\"\nurl = \"http://x.org\"\nmax_in_flight = 9223372036854775807\n",
            "max_in_flight",
        ),
        ("[plugins.limits]\nmemory = \"1000GiB\"\n", "memory"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[server]\nlisten = \"127.0.0.1:1\"\n[plugins]\ndir = \"p\"\n[store]\npath = \"s.db\"\n{extra}"),
        )
        .unwrap();
        let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{extra}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra}: {err}");
        assert!(
            err.contains(key) && !err.contains("panicked"),
            "{extra}: {err}"
        );
    }
}

/// What sits in the plugins folder can be anything: a FIFO, a link to a device,
/// a folder, a link loop, a huge file, an empty file, a name with a newline. The
/// host starts and stops without blocking, reports each in its status, and logs
/// names escaped.
#[tokio::test(flavor = "multi_thread")]
async fn special_files_in_the_plugins_folder_are_reported_not_read() {
    let recv = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let fifo = std::ffi::CString::new(plugins.join("fifo.wasm").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink(plugins.join("fifo.wasm"), plugins.join("to-fifo.wasm")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm")).unwrap();
    std::fs::create_dir(plugins.join("folder.wasm")).unwrap();
    std::os::unix::fs::symlink(plugins.join("loop.wasm"), plugins.join("loop.wasm")).unwrap();
    std::fs::write(plugins.join("empty.wasm"), b"").unwrap();
    std::fs::write(plugins.join("huge.wasm"), vec![0u8; 2 << 20]).unwrap();
    std::fs::copy(
        plugin("passthrough"),
        plugins.join("evil\nINFO forged line.wasm"),
    )
    .unwrap();

    let config = format!(
        "{LOOPBACK}{}{}",
        client("empty", &recv.url("/empty"), "plugin = \"empty.wasm\""),
        client("zero", &recv.url("/zero"), "plugin = \"zero.wasm\""),
    );
    let mut host = Host::start_in(dir, &config, "max_file_size = \"1MiB\"\n").await;
    let st = host.status().await;
    let error_of = |file: &str| -> String {
        st["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["file"] == file)
            .and_then(|p| p["error"].as_str())
            .unwrap_or_else(|| panic!("{file} is not in the status: {st}"))
            .to_string()
    };
    assert!(error_of("fifo.wasm").contains("FIFO"), "{st}");
    assert!(error_of("to-fifo.wasm").contains("FIFO"), "{st}");
    assert!(error_of("zero.wasm").contains("device"), "{st}");
    assert!(error_of("folder.wasm").contains("folder"), "{st}");
    assert!(error_of("loop.wasm").contains("cannot be read"), "{st}");
    assert!(error_of("huge.wasm").contains("max_file_size"), "{st}");
    assert!(error_of("empty.wasm").contains("empty"), "{st}");

    // A held client says why: its plugin file is there, but empty.
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    let rows = wait_rows(&host, "empty", 1, |r| r["state"] == "held").await;
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("empty") && !reason.contains("not in plugins.dir"),
        "{reason}"
    );

    // A newline in a file name cannot forge a log line.
    let log = host.log();
    assert!(log.contains("evil\\nINFO forged line.wasm"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("INFO forged")), "{log}");

    // And a FIFO does not hold the shutdown either.
    assert!(host.sigterm().success());
}
