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
        assert!((ts - hookwasm::store::now_ms() / 1000).abs() < 120);
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
