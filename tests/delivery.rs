//! Deliveries that are never lost: retries, Retry-After, 410, disabling, isolation,
//! signatures, the SSRF guard, replay and ingest from the command line, and crash
//! safety under kill -9. Real binary, real receiver, real SQLite file.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(30);

async fn wait_state(host: &Host, client: &str, n: usize, state: &str) -> Vec<serde_json::Value> {
    wait_rows(host, client, n, |r| r["state"] == state).await
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_attempts_are_retried_with_the_same_id_and_bytes() {
    let recv = Receiver::start().await;
    recv.set_statuses("/flaky", &[500, 302, 503, 200]);
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client("flaky", &recv.url("/flaky"), "retry_schedule = [\"100ms\", \"100ms\", \"100ms\", \"100ms\"]\nplugin = \"chat-message.wasm\"")
        ),
        &[("chat-message.wasm", plugin("chat-message"))],
    )
    .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/flaky", 4, WAIT).await;
    let ids: HashSet<&str> = got.iter().map(|g| g.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "webhook-id is stable across retries");
    assert!(
        got.iter().all(|g| g.body == got[0].body),
        "every retry resends the rendered bytes"
    );
    let rows = wait_state(&host, "flaky", 1, "delivered").await;
    let statuses: Vec<i64> = rows[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![500, 302, 503, 200],
        "every attempt is recorded; a redirect is a failure"
    );
    assert_eq!(
        rows[0]["attempts"][0]["response"], "answer from the test receiver",
        "{:#}",
        rows[0]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(recv.got("/flaky").len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_and_the_schedule_ends() {
    let recv = Receiver::start().await;
    recv.set_statuses("/busy", &[429, 200]);
    recv.set_header("/busy", "retry-after", "2");
    recv.set_statuses("/down", &[500]);
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}{}",
            client("busy", &recv.url("/busy"), "retry_schedule = [\"50ms\"]"),
            client(
                "down",
                &recv.url("/down"),
                "retry_schedule = [\"50ms\", \"50ms\"]"
            )
        ),
        &[],
    )
    .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/busy", 2, WAIT).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 waited only {gap:?}"
    );

    let rows = wait_state(&host, "down", 1, "failed").await;
    assert_eq!(
        rows[0]["attempts"].as_array().unwrap().len(),
        3,
        "1 attempt + 2 retries"
    );
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 3 attempts"),
        "{}",
        rows[0]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.got("/down").len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn gone_disables_the_client_and_keeps_its_new_events_until_enabled() {
    let recv = Receiver::start().await;
    recv.set_statuses("/gone", &[410, 200]);
    // One request at a time, so that the order of receipt is the event order.
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client("gone", &recv.url("/gone"), "max_in_flight = 1")
        ),
        &[],
    )
    .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    wait_state(&host, "gone", 1, "failed").await;
    let (_, out, _) = host.cli(&["clients", "list"]);
    assert!(out.contains("DISABLED") && out.contains("410"), "{out}");
    assert!(
        host.log().contains("client disabled"),
        "reported: {}",
        host.log()
    );

    for n in 2..5 {
        assert_eq!(
            host.post(numbered(n)).await.0,
            202,
            "a disabled client's events are still accepted"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(recv.got("/gone").len(), 1, "nothing is sent while disabled");
    let rows = host.deliveries("gone");
    assert_eq!(
        rows.iter().filter(|r| r["state"] == "pending").count(),
        3,
        "kept, not lost: {rows:#?}"
    );

    let (code, out, err) = host.cli(&["clients", "enable", "gone"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("enabled"));
    let got = recv.wait_for("/gone", 4, WAIT).await;
    let order: Vec<i64> = got[1..]
        .iter()
        .map(|g| g.json()["webhookId"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![2, 3, 4]);
}

/// Several requests in flight all answered 410: only the one that disabled the
/// client fails; the others are kept and go out once it is enabled again.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_gone_answers_fails_one_delivery_and_keeps_the_rest() {
    let recv = Receiver::start().await;
    recv.set_statuses("/gone", &[410]);
    recv.set_delay("/gone", Duration::from_millis(300));
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client("gone", &recv.url("/gone"), "max_in_flight = 4")
        ),
        &[],
    )
    .await;
    for n in 0..8 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    wait_state(&host, "gone", 1, "failed").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = host.deliveries("gone");
    assert_eq!(
        rows.iter().filter(|r| r["state"] == "failed").count(),
        1,
        "{rows:#?}"
    );
    assert!(
        recv.got("/gone").len() >= 2,
        "several were in flight together"
    );

    recv.set_statuses("/gone", &[200]);
    recv.set_delay("/gone", Duration::ZERO);
    let (code, _, err) = host.cli(&["clients", "enable", "gone"]);
    assert_eq!(code, 0, "{err}");
    // Every kept delivery goes out: the 7 that were not the failed one.
    wait_state(&host, "gone", 7, "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_failing_past_its_window_is_disabled() {
    let recv = Receiver::start().await;
    recv.set_statuses("/bad", &[500]);
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client("bad", &recv.url("/bad"), "retry_schedule = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\ndisable_after = \"1s\"")
        ),
        &[],
    )
    .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, _) = host.cli(&["clients", "list"]);
        if out.contains("DISABLED: every delivery failed for 1s") {
            break;
        }
        assert!(Instant::now() < deadline, "never disabled: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = recv.got("/bad").len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(recv.got("/bad").len(), n, "no attempt after disabling");
}

/// One healthy client among a hanging one, a closed port and a failing one: the
/// healthy one gets everything while the hanging one has not even finished a try.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_or_failing_client_does_not_hold_up_a_healthy_one() {
    let recv = Receiver::start().await;
    recv.set_delay("/hang", Duration::from_secs(3600));
    recv.set_statuses("/fail", &[500]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}{}{}{}",
            client("healthy", &recv.url("/ok"), ""),
            client(
                "hang",
                &recv.url("/hang"),
                "timeout = \"60s\"\nmax_in_flight = 2"
            ),
            client(
                "down",
                &format!("http://{closed}/x"),
                "retry_schedule = [\"100ms\"]"
            ),
            client("fail", &recv.url("/fail"), "retry_schedule = [\"100ms\"]"),
        ),
        &[],
    )
    .await;
    for n in 0..100 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    recv.wait_for("/ok", 100, WAIT).await;
    let hang = host.deliveries("hang");
    assert!(
        hang.iter()
            .all(|d| d["attempts"].as_array().unwrap().is_empty()),
        "the healthy client finished before the hanging one completed any attempt"
    );
    let st = host.status().await;
    let hang = st["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "hang")
        .unwrap();
    assert_eq!(
        hang["in_flight"].as_u64().unwrap(),
        2,
        "bounded by its max_in_flight: {hang}"
    );
    let order: Vec<i64> = recv
        .got("/ok")
        .iter()
        .map(|g| g.json()["webhookId"].as_i64().unwrap())
        .collect();
    assert_eq!(order.len(), 100);
    let down = wait_state(&host, "down", 1, "failed").await;
    assert_eq!(down.last().unwrap()["attempts"][0]["error_kind"], "connect");
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_verify_with_the_reference_library_during_rotation() {
    let recv = Receiver::start().await;
    let old = SECRET;
    let new = "whsec_dGhpcyBpcyB0aGUgbmV3IHNlY3JldCBrZXkgISE=";
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client(
                "c",
                &recv.url("/c"),
                &format!("secret = [\"{new}\", \"{old}\"]")
            )
        ),
        &[],
    )
    .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/c", 1, WAIT).await;
    let sig = got[0].header("webhook-signature");
    assert_eq!(sig.split(' ').count(), 2, "one signature per secret: {sig}");
    assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    for secret in [new, old] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got[0].body, &got[0].headers)
            .expect("verifies");
    }
    let other = "whsec_c29tZSBvdGhlciBzZWNyZXQgdGhhdCBpcyBsb25n";
    assert!(
        standardwebhooks::Webhook::new(other)
            .unwrap()
            .verify(&got[0].body, &got[0].headers)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn private_addresses_are_refused_unless_allowed() {
    let recv = Receiver::start().await;
    let port = recv.addr.port();
    let host = Host::start(
        &format!(
            "{}{}{}{}",
            client(
                "literal",
                &format!("http://127.0.0.1:{port}/literal"),
                "retry_schedule = []"
            ),
            client(
                "named",
                &format!("http://localhost:{port}/named"),
                "retry_schedule = []"
            ),
            client(
                "metadata",
                "http://169.254.169.254/latest/meta-data/",
                "retry_schedule = []"
            ),
            client(
                "allowed",
                &format!("http://localhost:{port}/allowed"),
                "allow_private_networks = true"
            ),
        ),
        &[],
    )
    .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    recv.wait_for("/allowed", 1, WAIT).await;
    for c in ["literal", "named", "metadata"] {
        let rows = wait_state(&host, c, 1, "failed").await;
        let a = &rows[0]["attempts"][0];
        assert_eq!(a["error_kind"], "blocked", "{c}: {a}");
        assert!(
            a["error"].as_str().unwrap().contains("allowed_networks"),
            "{a}"
        );
    }
    assert!(recv.got("/literal").is_empty() && recv.got("/named").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_resends_one_delivery_or_a_clients_since_a_time() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!("{LOOPBACK}{}", client("c", &recv.url("/c"), "")),
        &[],
    )
    .await;
    for n in 0..3 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    let first = recv.wait_for("/c", 3, WAIT).await;
    let id = first[0].header("webhook-id").to_string();

    let (code, out, err) = host.cli(&["replay", "--delivery", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 deliveries"), "{out}");
    let got = recv.wait_for("/c", 4, WAIT).await;
    assert_eq!(
        got[3].header("webhook-id"),
        id,
        "a replay keeps the webhook-id"
    );
    assert_eq!(got[3].body, first[0].body);

    let (code, out, err) = host.cli(&["replay", "--client", "c", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 deliveries"), "{out}");
    recv.wait_for("/c", 7, WAIT).await;

    let (code, _, err) = host.cli(&["replay", "--delivery", "msg_nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no delivery matches"), "{err}");
    let (code, _, err) = host.cli(&["replay", "--client", "nobody", "--since", "1h"]);
    assert_eq!(code, 1);
    assert!(err.contains("no client \"nobody\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_posts_a_file_of_events_to_the_running_host() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!("{LOOPBACK}{}", client("c", &recv.url("/c"), "")),
        &[],
    )
    .await;
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

/// The host is killed with SIGKILL while events pour in, then restarted: every
/// event it answered 202 is delivered, duplicates only with the same webhook-id.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_accepted_event() {
    let recv = Receiver::start().await;
    let mut host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client("c", &recv.url("/c"), "plugin = \"passthrough.wasm\"")
        ),
        &[("passthrough.wasm", plugin("passthrough"))],
    )
    .await;
    let url = host.url("/v1/events");
    let http = reqwest::Client::new();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..400 {
                let n = w * 1000 + i;
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(numbered(n))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        accepted.lock().unwrap().insert(n);
                    }
                    _ => return, // the host is gone
                }
            }
        }));
    }
    // Kill it mid-stream.
    while accepted.lock().unwrap().len() < 600 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    host.restart().await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<usize> = recv
            .got("/c")
            .iter()
            .map(|g| g.json()["webhookId"].as_u64().unwrap() as usize)
            .collect();
        let missing = accepted.difference(&seen).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} accepted events never delivered\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids: HashMap<u64, HashSet<String>> = HashMap::new();
    for g in recv.got("/c") {
        ids.entry(g.json()["webhookId"].as_u64().unwrap())
            .or_default()
            .insert(g.header("webhook-id").to_string());
    }
    assert!(
        ids.values().all(|s| s.len() == 1),
        "a duplicate always carries the same webhook-id"
    );
    let rows = host.deliveries("c");
    assert!(
        rows.iter().all(|r| r["state"] == "delivered"),
        "all delivered after restart"
    );
}

/// SIGTERM mid-stream, then a restart: nothing lost, nothing sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_loses_and_resends_nothing() {
    let recv = Receiver::start().await;
    recv.set_delay("/c", Duration::from_millis(20));
    let mut host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client("c", &recv.url("/c"), "max_in_flight = 4")
        ),
        &[],
    )
    .await;
    for n in 0..300 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    assert!(host.sigterm().success());
    let before = recv.got("/c").len();
    assert!(
        before < 300,
        "the restart happens mid-way ({before} delivered)"
    );
    host.restart().await;
    let got = recv.wait_for("/c", 300, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = recv.got("/c");
    assert_eq!(
        got_now.len(),
        300,
        "nothing resent: {} deliveries for 300 events",
        got_now.len()
    );
    let ids: HashSet<&str> = got.iter().map(|g| g.header("webhook-id")).collect();
    assert_eq!(ids.len(), 300);
    let order: Vec<i64> = got
        .iter()
        .map(|g| g.json()["webhookId"].as_i64().unwrap())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..300).collect::<Vec<_>>());
}
