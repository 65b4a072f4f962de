use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);
const EVENT: &str = "new_feed_entry.json";

/// An operator creates a client and its token; the client creates its own
/// payloads: it uploads a plugin without activating it, dry-runs it on a past
/// event (nothing is sent), activates it and sees its next delivery change,
/// rolls back, replays a delivery, and a broken upload changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_uploads_dry_runs_activates_and_rolls_back_its_own_plugin() {
    let recv = Receiver::start().await;
    let host = Config::new().start().await;
    let op = Some(OPERATOR);

    let (status, created) = host
        .api(
            "POST",
            "/v1/admin/clients",
            op,
            Some(json!({ "id": "acme", "url": recv.url("/acme") })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api");
    let secret = created["secret"]
        .as_str()
        .expect("the secret, shown once")
        .to_string();
    assert!(secret.starts_with("whsec_"));
    let (status, tok) = host
        .api(
            "POST",
            "/v1/admin/clients/acme/tokens",
            op,
            Some(json!({ "label": "ci" })),
        )
        .await;
    assert_eq!(status, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_string();
    let me = Some(token.as_str());

    // Without a plugin the event goes out as received, signed.
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/acme", 1, WAIT).await;
    assert_eq!(&got[0].body[..], &fixture(EVENT)[..]);
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("signed with the secret the create answer showed");

    // Upload, not active.
    let chat = std::fs::read(plugin("chat-message")).unwrap();
    let (status, up) = host
        .api_bytes(
            "PUT",
            "/v1/clients/acme/plugin?activate=false",
            me,
            Some(chat.clone()),
        )
        .await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(up["active"], false);
    assert!(up["world"].as_str().unwrap().starts_with("0."), "{up}");
    assert!(up["imports"].is_array(), "{up}");
    let chat_version = up["version"].as_str().unwrap().to_string();

    // Dry-run it on the past event: the chat message, the headers that would be
    // sent; nothing is delivered.
    let (_, page) = host
        .api("GET", "/v1/clients/acme/deliveries", me, None)
        .await;
    let first = page["deliveries"][0].clone();
    let event_id = first["event_id"].as_str().unwrap().to_string();
    let (status, dry) = host
        .api(
            "POST",
            "/v1/clients/acme/plugin/dry-run",
            me,
            Some(json!({ "version": chat_version, "event_id": event_id })),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["verdict"], "deliver", "{dry}");
    let chat_body = dry["body"].as_str().unwrap().to_string();
    assert!(chat_body.contains("\"text\""), "{dry}");
    let sent: Vec<String> = dry["request_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_string())
        .collect();
    let signature = dry["request_headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "webhook-signature")
        .map(|h| h[1].as_str().unwrap().to_string())
        .unwrap();
    assert!(
        signature.contains("<redacted>"),
        "a dry run signs nothing: {signature}"
    );
    for h in [
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ] {
        assert!(sent.iter().any(|s| s == h), "{h} in {sent:?}");
    }
    // A dry run on an event given in the request, with the active (no) plugin.
    let (status, raw) = host
        .api(
            "POST",
            "/v1/clients/acme/plugin/dry-run",
            me,
            Some(json!({ "event": serde_json::from_slice::<Value>(&fixture(EVENT)).unwrap() })),
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["plugin"], Value::Null);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recv.got("/acme").len(), 1, "a dry run delivers nothing");

    // Activate: the next delivery is the chat message.
    let (status, act) = host
        .api(
            "POST",
            "/v1/clients/acme/plugin/activate",
            me,
            Some(json!({ "version": chat_version })),
        )
        .await;
    assert_eq!(status, 200, "{act}");
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/acme", 2, WAIT).await;
    assert_eq!(String::from_utf8_lossy(&got[1].body), chat_body);
    let (_, me_now) = host.api("GET", "/v1/clients/acme", me, None).await;
    assert_eq!(me_now["plugin"]["source"], "upload", "{me_now}");
    assert_eq!(
        me_now["plugin"]["version"],
        chat_version.as_str(),
        "{me_now}"
    );

    // A second version, then back to the first (rollback).
    let redact = std::fs::read(plugin("redact-subscribers")).unwrap();
    let (status, up2) = host
        .api_bytes("PUT", "/v1/clients/acme/plugin", me, Some(redact))
        .await;
    assert_eq!(status, 201, "{up2}");
    assert_eq!(up2["active"], true);
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/acme", 3, WAIT).await;
    assert_ne!(
        String::from_utf8_lossy(&got[2].body),
        chat_body,
        "the new version renders"
    );
    let (status, _) = host
        .api(
            "POST",
            "/v1/clients/acme/plugin/activate",
            me,
            Some(json!({ "version": chat_version })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, versions) = host.api("GET", "/v1/clients/acme/plugin", me, None).await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    assert_eq!(versions["serving"]["version"], chat_version.as_str());

    // Broken uploads change nothing.
    for (what, bytes) in [
        ("garbage", b"not wasm at all".to_vec()),
        ("a core module", b"\0asm\x01\0\0\0".to_vec()),
    ] {
        let (status, refused) = host
            .api_bytes("PUT", "/v1/clients/acme/plugin", me, Some(bytes))
            .await;
        assert_eq!(status, 422, "{what}: {refused}");
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("nothing changed"),
            "{refused}"
        );
    }
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/acme", 4, WAIT).await;
    assert_eq!(
        String::from_utf8_lossy(&got[3].body),
        chat_body,
        "rolled back, and still after bad uploads"
    );

    // Replay the first delivery: the same webhook-id, the same bytes.
    let first_id = recv.got("/acme")[0].header("webhook-id").to_string();
    let (status, rep) = host
        .api(
            "POST",
            &format!("/v1/clients/acme/deliveries/{first_id}/replay"),
            me,
            None,
        )
        .await;
    assert_eq!(status, 202, "{rep}");
    let got = recv.wait_for("/acme", 5, WAIT).await;
    assert_eq!(got[4].header("webhook-id"), first_id);
    assert_eq!(&got[4].body[..], &fixture(EVENT)[..]);

    // One delivery, with its event, its rendering and its attempts (the
    // receiver has the replay before the host records its attempt).
    let path = format!("/v1/clients/acme/deliveries/{first_id}");
    let one = eventually(WAIT, "the replay's attempt is recorded")
        .until(async || {
            let (status, one) = host.api("GET", &path, me, None).await;
            assert_eq!(status, 200, "{one}");
            (one["attempts"].as_array().map(Vec::len) == Some(2)).then_some(one)
        })
        .await;
    assert_eq!(one["attempts"][0]["status"], 200);
    assert!(one["rendered"]["body"].is_string(), "{one}");

    let log = host.log();
    assert!(
        !log.contains(&token) && !log.contains(&secret),
        "no token or secret in the log"
    );
}

/// Rotating a secret: both sign during the overlap, only the new one after.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_signs_beside_the_new_one_until_the_overlap_ends() {
    let recv = Receiver::start().await;
    let host = Config::new().start().await;
    let (old, token) = host.api_client("r", &recv.url("/r"), json!({})).await;
    let me = Some(token);

    let (status, rot) = host
        .api(
            "POST",
            "/v1/clients/r/secret/rotate",
            me.as_deref(),
            Some(json!({ "overlap": "3s" })),
        )
        .await;
    assert_eq!(status, 200, "{rot}");
    let new = rot["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let verifies = |secret: &str, got: &Got| {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got.body, &got.headers)
            .is_ok()
    };
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/r", 1, WAIT).await;
    assert!(
        verifies(&old, &got[0]) && verifies(&new, &got[0]),
        "both sign during the overlap"
    );

    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/r", 2, WAIT).await;
    assert!(verifies(&new, &got[1]), "the new secret signs");
    assert!(!verifies(&old, &got[1]), "the old one no longer does");
    let (_, shown) = host.api("GET", "/v1/clients/r", me.as_deref(), None).await;
    assert!(
        !shown.to_string().contains("whsec_"),
        "a secret is never shown again: {shown}"
    );
}

/// Every client route, tried with another client's token, a garbage token and
/// none: 401 or 404, and nothing of the client in the answer. Operator routes
/// refuse client tokens.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_token_reaches_its_own_routes_only() {
    let recv = Receiver::start().await;
    let host = Config::new().start().await;
    let op = Some(OPERATOR);
    let (_, a) = host.api_client("a", &recv.url("/a"), json!({})).await;
    let (_, b) = host.api_client("b", &recv.url("/b"), json!({})).await;
    let (a, b) = (a.as_str(), b.as_str());
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/a", 1, WAIT).await;
    let did = got[0].header("webhook-id").to_string();
    // Recorded, not only received: a delivery on its way is not replayed.
    host.wait_state("a", 1, "delivered").await;

    let routes: Vec<(&str, String, Option<Vec<u8>>)> = vec![
        ("GET", "/v1/clients/a".into(), None),
        (
            "PATCH",
            "/v1/clients/a".into(),
            Some(br#"{"config":{"x":"1"}}"#.to_vec()),
        ),
        ("POST", "/v1/clients/a/pause".into(), None),
        ("POST", "/v1/clients/a/resume".into(), None),
        ("GET", "/v1/clients/a/deliveries".into(), None),
        ("GET", format!("/v1/clients/a/deliveries/{did}"), None),
        (
            "POST",
            format!("/v1/clients/a/deliveries/{did}/replay"),
            None,
        ),
        // A refusal does not read the body: a small one, all written before it.
        (
            "PUT",
            "/v1/clients/a/plugin".into(),
            Some(b"\0asm\x0d\0\x01\0".to_vec()),
        ),
        ("GET", "/v1/clients/a/plugin".into(), None),
        ("DELETE", "/v1/clients/a/plugin".into(), None),
        (
            "POST",
            "/v1/clients/a/plugin/activate".into(),
            Some(br#"{"version":"0000"}"#.to_vec()),
        ),
        (
            "POST",
            "/v1/clients/a/plugin/dry-run".into(),
            Some(br#"{"event_id":"evt_x"}"#.to_vec()),
        ),
        (
            "POST",
            "/v1/clients/a/secret/rotate".into(),
            Some(b"{}".to_vec()),
        ),
    ];
    for (method, path, body) in &routes {
        for (who, token, want) in [
            ("b's token", Some(b), 404),
            ("a garbage token", Some("hwk_nope"), 401),
            ("no token", None, 401),
        ] {
            let (status, answer) = host.api_bytes(method, path, token, body.clone()).await;
            assert_eq!(status, want, "{method} {path} with {who}: {answer}");
            let text = answer.to_string();
            assert!(answer["error"].is_string(), "{method} {path}: {text}");
            assert!(
                !text.contains(&did) && !text.contains("recv") && !text.contains("/a\""),
                "{method} {path} with {who} leaks: {text}"
            );
        }
    }
    // Its own token works on each (a few answers are refusals of the body, not of the token).
    for (method, path, body) in &routes {
        let (status, answer) = host.api_bytes(method, path, Some(a), body.clone()).await;
        assert!(
            ![401, 403].contains(&status)
                && (status != 404 || path.contains("activate") || path.contains("dry-run")),
            "{method} {path} with a's token: {status} {answer}"
        );
    }
    for (method, path) in [
        ("GET", "/v1/admin/clients"),
        ("POST", "/v1/admin/clients"),
        ("GET", "/v1/admin/deliveries"),
        ("GET", "/v1/admin/plugins"),
        ("POST", "/v1/admin/clients/a/tokens"),
        ("POST", "/v1/admin/replay"),
        ("GET", "/v1/status"),
    ] {
        let (status, answer) = host.api(method, path, Some(a), None).await;
        assert_eq!(status, 403, "{method} {path} with a client token: {answer}");
        let (status, _) = host.api(method, path, None, None).await;
        assert_eq!(status, 401, "{method} {path} without a token");
    }
    // A path that cannot be read is refused in JSON like every refusal (the
    // helper panics on an answer that is not JSON).
    let (status, bad) = host.api("GET", "/v1/admin/clients/%FF", op, None).await;
    assert_eq!(status, 400, "{bad}");
    // A revoked token is a stranger.
    let (_, list) = host
        .api("GET", "/v1/admin/clients/b/tokens", op, None)
        .await;
    assert!(
        !list.to_string().contains(b),
        "token values are never listed: {list}"
    );
    let tid = list["tokens"][0]["token_id"].as_str().unwrap().to_string();
    let (status, _) = host
        .api(
            "DELETE",
            &format!("/v1/admin/clients/b/tokens/{tid}"),
            op,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(host.api("GET", "/v1/clients/b", Some(b), None).await.0, 401);
}

/// A client of the config file is the file's: the API refuses to change it
/// (409). The operator's `plugin` serves and the client cannot replace it, nor
/// see the events it may redact; a client without one may upload its own,
/// and taking the upload away gives the event as received again.
#[tokio::test(flavor = "multi_thread")]
async fn file_clients_are_the_files_and_an_operator_plugin_is_not_replaced() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(Client::to(&recv, "filed").plugin("chat-message.wasm"))
        .client(Client::to(&recv, "bare"))
        .install("chat-message")
        .start()
        .await;
    let op = Some(OPERATOR);
    for (method, path, body) in [
        (
            "PATCH",
            "/v1/admin/clients/filed",
            Some(json!({ "url": recv.url("/x") })),
        ),
        ("DELETE", "/v1/admin/clients/filed", None),
        (
            "PATCH",
            "/v1/clients/filed",
            Some(json!({ "enabled": false })),
        ),
        ("POST", "/v1/clients/filed/secret/rotate", None),
        (
            "POST",
            "/v1/admin/clients",
            Some(json!({ "id": "filed", "url": recv.url("/x") })),
        ),
    ] {
        let (status, answer) = host.api(method, path, op, body).await;
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("config file"),
            "{answer}"
        );
    }
    let (_, shown) = host.api("GET", "/v1/admin/clients/filed", op, None).await;
    assert_eq!(shown["origin"], "file");
    assert_eq!(shown["plugin"]["source"], "file");

    let redact = std::fs::read(plugin("redact-subscribers")).unwrap();
    let (status, refused) = host
        .api_bytes("PUT", "/v1/clients/filed/plugin", op, Some(redact.clone()))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("set by the operator"),
        "{refused}"
    );

    let (status, up) = host
        .api_bytes("PUT", "/v1/clients/bare/plugin", op, Some(redact))
        .await;
    assert_eq!(status, 201, "{up}");
    let st = host.status().await;
    let source = |id: &str| {
        st["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()["plugin_source"]
            .clone()
    };
    assert_eq!(source("bare"), "upload", "{st}");
    assert_eq!(source("filed"), "file", "{st}");
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let filed = recv.wait_for("/filed", 1, WAIT).await;
    let bare = recv.wait_for("/bare", 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&filed[0].body).contains("\"text\""),
        "the operator's plugin"
    );
    assert_ne!(&bare[0].body[..], &fixture(EVENT)[..], "the upload renders");

    // The client behind the operator's plugin sees what it was sent, not the event.
    let (_, tok) = host
        .api("POST", "/v1/admin/clients/filed/tokens", op, None)
        .await;
    let token = tok["token"].as_str().unwrap().to_string();
    // (The receiver has it before the host records the attempt and its rendering.)
    let path = format!(
        "/v1/clients/filed/deliveries/{}",
        filed[0].header("webhook-id")
    );
    let one = eventually(WAIT, "the attempt is recorded")
        .until(async || {
            let (status, one) = host.api("GET", &path, Some(&token), None).await;
            assert_eq!(status, 200, "{one}");
            (one["state"] == "delivered").then_some(one)
        })
        .await;
    assert_eq!(one["event_body"], Value::Null, "{one}");
    assert!(
        one["rendered"]["body"]
            .as_str()
            .unwrap()
            .contains("\"text\""),
        "{one}"
    );

    let (status, _) = host
        .api("DELETE", "/v1/clients/bare/plugin", op, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let bare = recv.wait_for("/bare", 2, WAIT).await;
    assert_eq!(
        &bare[1].body[..],
        &fixture(EVENT)[..],
        "no upload: the event as received"
    );
}

/// A deleted client stops at once: its waiting deliveries fail, its token is
/// refused, and its id is not given to a new client (which would see its past).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_client_stops_and_its_id_is_not_given_again() {
    let recv = Receiver::start().await;
    let host = Config::new().start().await;
    let op = Some(OPERATOR);
    let (_, token) = host.api_client("gone", &recv.url("/gone"), json!({})).await;
    let (status, _) = host
        .api("POST", "/v1/clients/gone/pause", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    }
    let (status, _) = host.api("DELETE", "/v1/admin/clients/gone", op, None).await;
    assert_eq!(status, 204);
    let (_, page) = host
        .api("GET", "/v1/admin/deliveries?client=gone", op, None)
        .await;
    let states: Vec<&str> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["failed", "failed"],
        "{page}\nhost log:\n{}",
        host.log()
    );
    assert_eq!(
        host.api("GET", "/v1/clients/gone", Some(&token), None)
            .await
            .0,
        401
    );
    let (status, again) = host
        .api(
            "POST",
            "/v1/admin/clients",
            op,
            Some(json!({ "id": "gone", "url": recv.url("/gone") })),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        recv.got("/gone").is_empty(),
        "nothing went to the deleted client; host log:\n{}",
        host.log()
    );
}

/// Clients, tokens and uploads live in the store: a restart keeps them, and
/// the active upload serves again at once.
#[tokio::test(flavor = "multi_thread")]
async fn api_clients_tokens_and_plugins_survive_a_restart() {
    let recv = Receiver::start().await;
    let mut host = Config::new().start().await;
    let spec = json!({ "config": { "channel": "#kept" } });
    let (_, token) = host.api_client("keep", &recv.url("/keep"), spec).await;
    let chat = std::fs::read(plugin("chat-message")).unwrap();
    let (status, _) = host
        .api_bytes("PUT", "/v1/clients/keep/plugin", Some(&token), Some(chat))
        .await;
    assert_eq!(status, 201);

    host.restart_with(|c| c).await;
    let (status, me) = host
        .api("GET", "/v1/clients/keep", Some(&token), None)
        .await;
    assert_eq!(status, 200, "the token still works: {me}");
    assert_eq!(me["plugin"]["source"], "upload");
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/keep", 1, WAIT).await;
    assert_eq!(
        got[0].json()["channel"],
        "#kept",
        "the upload serves with the stored config"
    );
}

/// The operator's views of deliveries: filters, pages, one with its attempts,
/// and a replay of every failed one.
#[tokio::test(flavor = "multi_thread")]
async fn operators_filter_page_and_replay_deliveries() {
    let recv = Receiver::start().await;
    recv.set_statuses("/down", &[500, 500, 500, 200]);
    let host = Config::new()
        .client(Client::to(&recv, "up"))
        .client(Client::to(&recv, "down").retry_schedule(&[]))
        .start()
        .await;
    let op = Some(OPERATOR);
    for _ in 0..3 {
        assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    }
    recv.wait_for("/up", 3, WAIT).await;
    host.wait_state("down", 3, "failed").await;

    let (status, all) = host
        .api("GET", "/v1/admin/deliveries?limit=4", op, None)
        .await;
    assert_eq!(status, 200, "{all}");
    let first = all["deliveries"].as_array().unwrap();
    assert_eq!(first.len(), 4);
    let cursor = all["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, rest) = host
        .api(
            "GET",
            &format!("/v1/admin/deliveries?limit=4&cursor={cursor}"),
            op,
            None,
        )
        .await;
    assert_eq!(rest["deliveries"].as_array().unwrap().len(), 2, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);

    let (_, failed) = host
        .api(
            "GET",
            "/v1/admin/deliveries?client=down&state=failed&since=1h",
            op,
            None,
        )
        .await;
    assert_eq!(
        failed["deliveries"].as_array().unwrap().len(),
        3,
        "{failed}"
    );
    let (_, none) = host
        .api("GET", "/v1/admin/deliveries?event=record.created", op, None)
        .await;
    assert_eq!(none["deliveries"].as_array().unwrap().len(), 0);
    let (status, bad) = host
        .api("GET", "/v1/admin/deliveries?state=lost", op, None)
        .await;
    assert_eq!(status, 400, "{bad}");

    let id = failed["deliveries"][0]["id"].as_str().unwrap();
    let (status, one) = host
        .api("GET", &format!("/v1/admin/deliveries/{id}"), op, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["attempts"][0]["status"], 500, "{one}");
    assert!(
        one["event_body"]
            .as_str()
            .unwrap()
            .contains("new_feed_entry")
    );

    let (status, rep) = host
        .api(
            "POST",
            "/v1/admin/replay",
            op,
            Some(json!({ "state": "failed" })),
        )
        .await;
    assert_eq!(status, 202, "{rep}");
    assert_eq!(rep["replayed"], 3);
    host.wait_state("down", 3, "delivered").await;
}

/// A URL a client sets is checked against the address rules, and the answer
/// says why it is refused. Pause keeps the events for the resume.
#[tokio::test(flavor = "multi_thread")]
async fn urls_are_checked_and_a_paused_client_gets_its_events_on_resume() {
    let recv = Receiver::start().await;
    let host = Config::new().without_loopback().start().await;
    let op = Some(OPERATOR);
    let (status, refused) = host
        .api(
            "POST",
            "/v1/admin/clients",
            op,
            Some(json!({ "id": "p", "url": "http://10.1.2.3/x" })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("private"),
        "{refused}"
    );
    // The operator may open a network per client.
    let spec = json!({ "allowed_networks": ["127.0.0.0/8"] });
    let (_, token) = host.api_client("p", &recv.url("/p"), spec).await;
    let me = Some(token.as_str());
    let (status, refused) = host
        .api(
            "PATCH",
            "/v1/clients/p",
            me,
            Some(json!({ "url": "http://169.254.169.254/latest" })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("169.254.169.254"),
        "{refused}"
    );
    let (status, refused) = host
        .api(
            "PATCH",
            "/v1/clients/p",
            me,
            Some(json!({ "allowed_networks": ["0.0.0.0/0"] })),
        )
        .await;
    assert_eq!(status, 403, "address rules are the operator's: {refused}");

    let (status, _) = host.api("POST", "/v1/clients/p/pause", me, None).await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(recv.got("/p").is_empty(), "nothing goes to a paused client");
    let (_, shown) = host.api("GET", "/v1/clients/p", me, None).await;
    assert_eq!(shown["paused"], true, "{shown}");
    let (status, _) = host.api("POST", "/v1/clients/p/resume", me, None).await;
    assert_eq!(status, 200);
    recv.wait_for("/p", 3, WAIT).await;
}

/// The OpenAPI document is served and names every route.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_the_api() {
    let host = Config::new().start().await;
    let (status, doc) = host.api("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/events",
        "/v1/admin/clients",
        "/v1/admin/clients/{id}",
        "/v1/admin/clients/{id}/tokens",
        "/v1/admin/deliveries",
        "/v1/admin/replay",
        "/v1/admin/plugins",
        "/v1/clients/{id}",
        "/v1/clients/{id}/plugin",
        "/v1/clients/{id}/plugin/dry-run",
        "/v1/clients/{id}/secret/rotate",
        "/v1/status",
    ] {
        assert!(paths.contains_key(p), "{p} is not in the document");
    }
}
