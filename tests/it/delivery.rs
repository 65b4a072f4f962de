use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn failed_attempts_are_retried_with_the_same_id_and_bytes() {
    let recv = Receiver::start().await;
    recv.set_statuses("/flaky", &[500, 302, 503, 200]);
    let host = Config::new()
        .client(
            Client::to(&recv, "flaky")
                .retry_schedule(&["100ms"; 4])
                .plugin("chat-message.wasm"),
        )
        .install("chat-message")
        .start()
        .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/flaky", 4, WAIT).await;
    let ids: HashSet<&str> = got.iter().map(|g| g.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "webhook-id is stable across retries");
    assert!(
        got.iter().all(|g| g.body == got[0].body),
        "every retry resends the rendered bytes"
    );
    let rows = host.wait_state("flaky", 1, "delivered").await;
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
    let host = Config::new()
        .client(Client::to(&recv, "busy").retry_schedule(&["50ms"]))
        .client(Client::to(&recv, "down").retry_schedule(&["50ms", "50ms"]))
        .start()
        .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/busy", 2, WAIT).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 waited only {gap:?}"
    );

    let rows = host.wait_state("down", 1, "failed").await;
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
    let host = Config::new()
        .client(Client::to(&recv, "gone").max_in_flight(1))
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    host.wait_state("gone", 1, "failed").await;
    // (On PostgreSQL the health is written after the delivery's record.)
    eventually(WAIT, "the client to be disabled")
        .every(Duration::from_millis(100))
        .until(async || {
            let (_, out, _) = host.cli(&["clients", "list"]);
            if out.contains("DISABLED") && out.contains("410") {
                Ok(())
            } else {
                Err(out)
            }
        })
        .await;
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
    recv.set_delay("/gone", Duration::from_secs(1));
    let host = Config::new()
        .client(Client::to(&recv, "gone").max_in_flight(4))
        .start()
        .await;
    for n in 0..8 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    host.wait_state("gone", 1, "failed").await;
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
    host.wait_state("gone", 7, "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_failing_past_its_window_is_disabled() {
    let recv = Receiver::start().await;
    recv.set_statuses("/bad", &[500]);
    let host = Config::new()
        .client(
            Client::to(&recv, "bad")
                .retry_schedule(&["200ms"; 10])
                .key("disable_after = \"1s\""),
        )
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    eventually(WAIT, "the client to be disabled")
        .every(Duration::from_millis(100))
        .until(async || {
            let (_, out, _) = host.cli(&["clients", "list"]);
            if out.contains("DISABLED: every delivery failed for 1s") {
                Ok(())
            } else {
                Err(out)
            }
        })
        .await;
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
    let closed = closed_port();
    let host = Config::new()
        .client(Client::new("healthy", &recv.url("/ok")))
        .client(
            Client::to(&recv, "hang")
                .key("timeout = \"60s\"")
                .max_in_flight(2),
        )
        .client(Client::new("down", &format!("http://{closed}/x")).retry_schedule(&["100ms"]))
        .client(Client::to(&recv, "fail").retry_schedule(&["100ms"]))
        .start()
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
    // Its attempts start as the worker gets to them: wait for a second one,
    // then see, a moment later, that a third has not started.
    let in_flight = async || {
        let st = host.status().await;
        let hang = st["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "hang")
            .unwrap()
            .clone();
        hang["in_flight"].as_u64().unwrap()
    };
    eventually(WAIT, "two attempts in flight to the hanging client")
        .until(async || in_flight().await >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(in_flight().await, 2, "bounded by its max_in_flight");
    let order: Vec<i64> = recv
        .got("/ok")
        .iter()
        .map(|g| g.json()["webhookId"].as_i64().unwrap())
        .collect();
    assert_eq!(order.len(), 100);
    let down = host.wait_state("down", 1, "failed").await;
    assert_eq!(down.last().unwrap()["attempts"][0]["error_kind"], "connect");
}

/// `max_in_flight` bounds the requests a receiver is answering at once, and is
/// used whole: a permit comes back once the receiver has answered, before the
/// outcome's commit (what that gains under load, the throughput bench shows).
#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_bounds_the_requests_a_receiver_answers_at_once() {
    let recv = Receiver::start().await;
    recv.set_delay("/c", Duration::from_millis(200));
    let host = Config::new()
        .client(Client::to(&recv, "c").max_in_flight(3))
        .start()
        .await;
    // All posted at once: a backlog from the start, however slow the disk.
    let posts = (0..24).map(|n| host.post(numbered(n)));
    for (status, _) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 202);
    }
    recv.wait_for("/c", 24, WAIT).await;
    assert_eq!(recv.peak("/c"), 3, "three at once, never more");
    host.wait_state("c", 24, "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_verify_with_the_reference_library_during_rotation() {
    let recv = Receiver::start().await;
    let old = SECRET;
    let new = "whsec_dGhpcyBpcyB0aGUgbmV3IHNlY3JldCBrZXkgISE=";
    let host = Config::new()
        .client(Client::to(&recv, "c").key(&format!("secret = [\"{new}\", \"{old}\"]")))
        .start()
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
    let host = Config::new()
        .without_loopback()
        .client(
            Client::new("literal", &format!("http://127.0.0.1:{port}/literal")).retry_schedule(&[]),
        )
        .client(Client::new("named", &format!("http://localhost:{port}/named")).retry_schedule(&[]))
        .client(
            Client::new("metadata", "http://169.254.169.254/latest/meta-data/").retry_schedule(&[]),
        )
        .client(
            Client::new("allowed", &format!("http://localhost:{port}/allowed"))
                .key("allow_private_networks = true"),
        )
        .start()
        .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    recv.wait_for("/allowed", 1, WAIT).await;
    for c in ["literal", "named", "metadata"] {
        let rows = host.wait_state(c, 1, "failed").await;
        let a = &rows[0]["attempts"][0];
        assert_eq!(a["error_kind"], "blocked", "{c}: {a}");
        assert!(
            a["error"].as_str().unwrap().contains("allowed_networks"),
            "{a}"
        );
    }
    assert!(recv.got("/literal").is_empty() && recv.got("/named").is_empty());
}

/// A delivery with an attempt in flight is on its way, as a pending one is: a
/// replay then is refused (the attempt's outcome, recorded after, would undo
/// it, and the 202 would be a promise not kept); once recorded, it replays.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_with_an_attempt_in_flight_is_not_replayed_until_it_lands() {
    let recv = Receiver::start().await;
    recv.set_statuses("/c", &[500, 200]);
    let host = Config::new()
        .client(Client::to(&recv, "c").retry_schedule(&["3s"]))
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    let rows = host.wait_state("c", 1, "retrying").await;
    let id = rows[0]["id"].as_str().unwrap().to_string();
    // The retry, due in 3 s, hangs in the receiver for a while.
    recv.set_delay("/c", Duration::from_secs(4));
    eventually(WAIT, "the retry to be in flight")
        .until(async || host.status().await["clients"][0]["in_flight"] == 1)
        .await;
    let path = format!("/v1/admin/deliveries/{id}/replay");
    let (status, answer) = host.api("POST", &path, Some(OPERATOR), None).await;
    assert_eq!(status, 404, "on its way: {answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("on its way"),
        "{answer}"
    );

    host.wait_rows("c", 1, |r| r["state"] == "delivered").await;
    recv.set_delay("/c", Duration::ZERO);
    let (status, answer) = host.api("POST", &path, Some(OPERATOR), None).await;
    assert_eq!(status, 202, "{answer}");
    let got = recv.wait_for("/c", 3, WAIT).await;
    assert_eq!(got[2].header("webhook-id"), id);
    host.wait_rows("c", 1, |r| {
        r["state"] == "delivered" && r["attempts"].as_array().unwrap().len() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_resends_one_delivery_or_a_clients_since_a_time() {
    let recv = Receiver::start().await;
    let host = Config::new().client(Client::to(&recv, "c")).start().await;
    for n in 0..3 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    let first = recv.wait_for("/c", 3, WAIT).await;
    let id = first[0].header("webhook-id").to_string();
    // Recorded, not only received: a delivery on its way is not replayed.
    host.wait_state("c", 3, "delivered").await;

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
    host.wait_rows("c", 1, |r| {
        r["id"] == id.as_str()
            && r["state"] == "delivered"
            && r["attempts"].as_array().unwrap().len() == 2
    })
    .await;

    let (code, out, err) = host.cli(&["replay", "--client", "c", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 deliveries"), "{out}");
    recv.wait_for("/c", 7, WAIT).await;
    assert!(
        host.log().contains("deliveries replayed through the API"),
        "with a host running, the command goes through its API"
    );

    let (code, _, err) = host.cli(&["replay", "--delivery", "msg_nope"]);
    assert_eq!(code, 1);
    // With the host's reason, which names the delivery.
    assert!(
        err.contains("no delivery matches") && err.contains("msg_nope"),
        "{err}"
    );
    let (code, _, err) = host.cli(&["replay", "--client", "nobody", "--since", "1h"]);
    assert_eq!(code, 1);
    assert!(err.contains("no client \"nobody\""), "{err}");
}

/// A receiver's answer is kept (its start) with each attempt, whatever its
/// bytes: a binary one, NUL bytes and all, is recorded as text with the bytes
/// that are not replaced (PostgreSQL's text refuses NUL, SQLite's does not),
/// and the delivery goes on as it would: retried, then delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn a_binary_answer_is_recorded_and_the_delivery_goes_on() {
    let recv = Receiver::start().await;
    recv.set_statuses("/bin", &[500, 200]);
    recv.set_body("/bin", b"\x00\x01gzip?\x00\xff");
    let host = Config::new()
        .client(Client::to(&recv, "bin").retry_schedule(&["100ms"]))
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    let rows = host.wait_state("bin", 1, "delivered").await;
    let attempts = rows[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{rows:?}");
    assert_eq!(attempts[0]["status"], 500);
    let response = attempts[0]["response"].as_str().unwrap();
    assert!(response.contains("gzip?"), "{response:?}");
    assert_eq!(
        recv.got("/bin").len(),
        2,
        "sent once more, not again and again"
    );
}

/// A client URL with a user and password: the receiver gets them as HTTP Basic
/// authentication, and the request line carries no credentials.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_a_client_url_become_basic_auth() {
    let recv = Receiver::start().await;
    let url = recv
        .url("/basic")
        .replacen("http://", "http://hook:s3cret@", 1);
    let host = Config::new()
        .client(Client::new("basic", &url))
        .start()
        .await;
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    let got = recv.wait_for("/basic", 1, WAIT).await;
    // base64("hook:s3cret")
    assert_eq!(got[0].header("authorization"), "Basic aG9vazpzM2NyZXQ=");
}
