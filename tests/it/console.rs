use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);
const EVENT: &str = "new_feed_entry.json";

/// A plain HTTP client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in over plain HTTP: the session cookie (`name=value`).
async fn session(host: &Host, token: &str) -> String {
    let r = http()
        .post(host.url("/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signing in redirects");
    let cookie = r
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    cookie.split(';').next().unwrap().to_string()
}

/// The form token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with its token")
        + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// The operator sees the overview (counts that match what was sent), every
/// client and every delivery; client A sees its own pages and client B's are
/// "not found" to it, exactly like a page that does not exist, and the other
/// way round. Sessions are HttpOnly, SameSite=Strict cookies; a form without
/// the session's form token, or from another origin, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn operators_see_everything_and_each_client_only_its_own() {
    let recv = Receiver::start().await;
    // d is the config file's, behind the operator's plugin.
    let host = Config::new()
        .install("passthrough")
        .client(Client::to(&recv, "d").plugin("passthrough.wasm"))
        .start()
        .await;
    let (status, tok) = host
        .api("POST", "/v1/admin/clients/d/tokens", Some(OPERATOR), None)
        .await;
    assert_eq!(status, 201, "{tok}");
    let d = tok["token"].as_str().unwrap().to_string();
    let (_, a) = host
        .api_client("a", &recv.url("/a"), serde_json::json!({}))
        .await;
    let (_, b) = host
        .api_client("b", &recv.url("/b"), serde_json::json!({}))
        .await;
    // c fails every attempt, and retries only in an hour.
    recv.set_statuses("/c", &[500]);
    let later = serde_json::json!({ "retry_schedule": ["1h"] });
    host.api_client("c", &recv.url("/c"), later).await;
    for n in 0..3 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    recv.wait_for("/a", 3, WAIT).await;
    recv.wait_for("/b", 3, WAIT).await;
    recv.wait_for("/d", 3, WAIT).await;
    host.wait_state("c", 3, "retrying").await;
    // Recorded, not only received: the overview counts the store's rows.
    for id in ["a", "b", "d"] {
        host.wait_state(id, 3, "delivered").await;
    }
    let id_of = |client: &str| {
        let d = host.deliveries(client);
        d[0]["id"].as_str().unwrap().to_string()
    };
    let (a_msg, b_msg, d_msg) = (id_of("a"), id_of("b"), id_of("d"));
    // The figures the pages show are the API's, with its rules.
    assert_eq!(
        host.api("GET", "/v1/admin/overview", Some(&a), None)
            .await
            .0,
        403
    );
    assert_eq!(
        host.api("GET", "/v1/clients/b/activity", Some(&a), None)
            .await
            .0,
        404
    );
    let (status, mine) = host
        .api("GET", "/v1/clients/a/activity", Some(&a), None)
        .await;
    assert_eq!(
        (status, &mine["by_state"]["delivered"]),
        (200, &Value::from(3)),
        "{mine}"
    );

    // Over plain HTTP: a wrong token gets no session; a form is acted on only
    // with the session's form token and from this origin.
    let r = http()
        .post(host.url("/ui/login"))
        .form(&[("token", "hwk_not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = http()
        .post(host.url("/ui/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", a.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another site cannot sign the browser in");
    assert!(r.headers().get("set-cookie").is_none());
    let cookie = session(&host, &a).await;
    let page = http()
        .get(host.url(&format!("/ui/clients/a/deliveries/{a_msg}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let csrf = csrf_of(&page.text().await.unwrap());
    let replay = host.url(&format!("/ui/clients/a/deliveries/{a_msg}/replay"));
    let forged = http()
        .post(&replay)
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "no form token, no replay");
    let cross = http()
        .post(&replay)
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403, "another site's form, no replay");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/a").len(), 3, "a refused form sent nothing");
    let done = http()
        .post(&replay)
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303, "the session's own form replays");
    let again = recv.wait_for("/a", 4, WAIT).await;
    assert_eq!(
        again[3].header("webhook-id"),
        a_msg,
        "the same delivery again"
    );
    // The receiver has it before the host records the attempt.
    eventually(WAIT, "the replay's attempt is recorded")
        .until(async || {
            let path = format!("/v1/admin/deliveries/{a_msg}");
            let (_, one) = host.api("GET", &path, Some(OPERATOR), None).await;
            one["state"] == "delivered" && one["attempts"].as_array().map(Vec::len) == Some(2)
        })
        .await;

    // The operator, in a browser.
    let web = Browser::start(&host.url("")).await;
    web.sign_in(OPERATOR).await;
    assert_eq!(web.path().await, "/ui/overview");
    assert_eq!(web.text("#events-in").await, "3");
    // Three events to three clients, and the one replay; c's three failed.
    assert_eq!(web.text("#delivered-out").await, "10");
    assert_eq!(web.text("#failed-out").await, "3");
    assert_eq!(web.text("td[data-state=delivered]").await, "9");
    assert_eq!(web.text("td[data-state=retrying]").await, "3");
    assert_eq!(web.text("#held").await, "0");
    assert!(web.text("#plugin-errors").await.contains("None"));
    web.screenshot("overview").await;
    web.click("nav a[href='/ui/clients']").await;
    let table = web.text("#clients").await;
    for id in ["a", "b", "c", "d"] {
        assert!(
            web.has(&format!("#clients a[href='/ui/clients/{id}']"))
                .await,
            "{id}"
        );
    }
    assert!(table.contains("healthy"), "{table}");
    assert!(
        table.contains("failing since") && table.contains("(3 failed attempts in a row)"),
        "{table}"
    );
    web.screenshot("clients").await;
    // An upload of a's, not active, beside d's file.
    let chat = std::fs::read(plugin("chat-message")).unwrap();
    let put = "/v1/clients/a/plugin?activate=false";
    assert_eq!(
        host.api_bytes("PUT", put, Some(OPERATOR), Some(chat))
            .await
            .0,
        201
    );
    web.click("nav a[href='/ui/plugins']").await;
    let rows = web.text("#plugins tbody").await;
    let row = |start: &str| {
        rows.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start} in {rows}"))
            .to_string()
    };
    let file = row("file passthrough.wasm");
    assert!(
        file.contains("clients d") && file.contains(" 3 calls, 0 errors, 0 traps"),
        "{file}"
    );
    let upload = row(&format!("upload {}", hash_of(&plugin("chat-message"))));
    assert!(
        upload.contains("no client") && upload.contains("UTC"),
        "{upload}"
    );
    assert!(upload.contains(" 0 calls"), "{upload}");
    web.open(&format!("/ui/clients/b/deliveries/{b_msg}")).await;
    assert!(web.text("#attempts").await.contains("HTTP 200"));
    assert!(web.text("#event-body").await.contains("new_feed_entry"));
    assert!(web.text("#rendered-body").await.contains("new_feed_entry"));
    web.screenshot("delivery").await;

    // Client a, in the same browser after signing out.
    web.click(".signout button").await;
    assert_eq!(web.path().await, "/ui/login");
    web.open("/ui/overview").await;
    assert_eq!(web.path().await, "/ui/login", "signed out is signed out");
    web.sign_in(&a).await;
    assert_eq!(web.path().await, "/ui/clients/a");
    assert!(web.text("#deliveries").await.contains(&a_msg));
    web.select("#f-state", "delivered").await;
    web.click(".filters button").await;
    assert!(web.path().await.contains("?state=delivered&"));
    assert!(web.text("#deliveries").await.contains(&a_msg));
    web.select("#f-state", "failed").await;
    web.click(".filters button").await;
    assert!(web.has("#no-deliveries").await, "no failed deliveries");
    // A filter the API refuses: the page says why.
    web.fill("#f-since", "soon").await;
    web.click(".filters button").await;
    let why = web.text("#flash").await;
    assert!(why.contains("since") && why.contains("soon"), "{why}");
    web.open("/ui/clients/a").await;
    web.screenshot("client").await;

    // What a does not own looks like what does not exist.
    web.open("/ui/clients/nobody").await;
    let missing = (web.text("h1").await, web.text("#why").await);
    assert_eq!(missing.0, "Not found");
    for path in [
        "/ui/clients/b".to_string(),
        "/ui/clients/b/plugin".to_string(),
        format!("/ui/clients/b/deliveries/{b_msg}"),
        "/ui/overview".to_string(),
        "/ui/plugins".to_string(),
        "/ui/clients".to_string(),
    ] {
        web.open(&path).await;
        if path == "/ui/clients" {
            // The list is the operator's: a client is taken to its own page.
            assert_eq!(web.path().await, "/ui/clients/a");
            continue;
        }
        assert_eq!(
            (web.text("h1").await, web.text("#why").await),
            missing,
            "{path} as a"
        );
        let html = web.html().await;
        assert!(
            !html.contains(&b_msg) && !html.contains("/b\""),
            "{path}: {html}"
        );
    }
    web.click(".signout button").await;
    web.sign_in(&b).await;
    assert_eq!(web.path().await, "/ui/clients/b");
    for path in [
        format!("/ui/clients/a/deliveries/{a_msg}"),
        "/ui/clients/a/plugin".to_string(),
    ] {
        web.open(&path).await;
        assert_eq!(
            (web.text("h1").await, web.text("#why").await),
            missing,
            "{path} as b"
        );
    }

    // d is behind the operator's plugin: what it was sent, never the event
    // the plugin may exist to redact; and no uploads.
    // Signing in again (from a "not found" page: no menu) ends b's session.
    web.sign_in(&d).await;
    web.open(&format!("/ui/clients/d/deliveries/{d_msg}")).await;
    assert!(!web.has("#event-body").await);
    assert!(web.html().await.contains("Not shown"));
    assert!(web.has("#rendered-body").await);
    web.open("/ui/clients/d/plugin").await;
    assert!(
        !web.has("#upload").await,
        "no uploads behind the operator's plugin"
    );
    web.click("#dry-run").await;
    assert!(web.text("#dry-verdict").await.starts_with("deliver"));
    assert!(
        !web.has("#dry-original").await,
        "the dry run hides the event too"
    );
    assert!(web.has("#dry-body").await);
    web.close().await;

    // A revoked token ends its sessions at their next request.
    let url = host.url("/ui/clients/a");
    let page = |cookie: String| {
        let url = url.clone();
        async move {
            http()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(page(cookie.clone()).await.status(), 200);
    let (_, list) = host
        .api("GET", "/v1/admin/clients/a/tokens", Some(OPERATOR), None)
        .await;
    let token_id = list["tokens"][0]["token_id"].as_str().unwrap().to_string();
    let path = format!("/v1/admin/clients/a/tokens/{token_id}");
    assert_eq!(host.api("DELETE", &path, Some(OPERATOR), None).await.0, 204);
    let gone = page(cookie).await;
    assert_eq!(gone.status(), 303);
    assert_eq!(gone.headers()["location"], "/ui/login");
}

/// A client makes its own payload in the browser: it uploads a plugin without
/// activating it, dry-runs it on a past event (the original and the rendering
/// side by side, nothing sent), makes it active, and its next delivery is that
/// rendering. A file that is not a plugin is refused and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_uploads_dry_runs_and_activates_its_plugin_in_the_console() {
    let recv = Receiver::start().await;
    let host = Config::new().start().await;
    let (_, token) = host
        .api_client("acme", &recv.url("/acme"), serde_json::json!({}))
        .await;
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/acme", 1, WAIT).await;

    let web = Browser::start(&host.url("")).await;
    web.sign_in(&token).await;
    assert_eq!(web.path().await, "/ui/clients/acme");
    web.click("#plugin a").await;
    assert_eq!(web.path().await, "/ui/clients/acme/plugin");
    assert!(web.text("#serving").await.contains("no plugin"));

    // Upload, not active.
    let chat = plugin("chat-message");
    web.fill("#plugin-file", chat.to_str().unwrap()).await;
    web.toggle("#activate-now").await;
    web.click("#upload").await;
    let flash = web.text("#flash").await;
    assert!(
        flash.starts_with("Uploaded version") && flash.contains("not active"),
        "{flash}"
    );
    let version = hash_of(&chat);
    assert!(flash.contains(&version), "{flash} names {version}");
    assert!(web.text("#serving").await.contains("no plugin"));

    // Dry run on the past event.
    web.select("#dry-version", &version).await;
    web.click("#dry-run").await;
    let verdict = web.text("#dry-verdict").await;
    assert!(verdict.starts_with("deliver"), "{verdict}");
    assert!(web.text("#dry-original").await.contains("new_feed_entry"));
    let rendered: Value = serde_json::from_str(&web.text("#dry-body").await).unwrap();
    assert!(rendered["text"].is_string(), "a chat message: {rendered}");
    web.screenshot("plugin-dry-run").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/acme").len(), 1, "a dry run sends nothing");

    // Active: the next delivery is what the dry run showed.
    web.click(&format!("#activate-{}", &version[..12])).await;
    assert!(web.text("#flash").await.contains("is active"));
    assert!(web.text("#serving").await.contains(&version));
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/acme", 2, WAIT).await;
    assert_eq!(got[1].json()["text"], rendered["text"]);

    // Not a plugin: refused, and the active version stays.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    web.fill("#plugin-file", junk.to_str().unwrap()).await;
    web.click("#upload").await;
    let flash = web.text("#flash").await;
    assert!(flash.starts_with("Refused:"), "{flash}");
    assert!(web.text("#serving").await.contains(&version));

    // Another version, active at once; then back to the first (rollback).
    let other = plugin("passthrough");
    web.fill("#plugin-file", other.to_str().unwrap()).await;
    web.click("#upload").await;
    assert!(
        web.text("#flash")
            .await
            .contains("serves from the next delivery")
    );
    assert!(web.text("#serving").await.contains(&hash_of(&other)));
    web.click(&format!("#activate-{}", &version[..12])).await;
    assert!(web.text("#serving").await.contains(&version));
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    let got = recv.wait_for("/acme", 3, WAIT).await;
    assert_eq!(got[2].json()["text"], rendered["text"], "rolled back");
    web.screenshot("plugin").await;
    web.close().await;
}
