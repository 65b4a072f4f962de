use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);
const EVENT: &str = "new_feed_entry.json";

/// A client added to the file is served without a restart; a broken file
/// changes nothing but a reported error while events keep flowing; the fixed
/// file is applied again; a removed client gets no more events.
#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_is_applied_live_and_a_broken_one_changes_nothing() {
    let recv = Receiver::start().await;
    let mut host = Config::new().client(Client::to(&recv, "a")).start().await;
    let good = host.rewrite_config(|c| c.client(Client::to(&recv, "b").config("channel", "#b")));
    host.wait_client("b").await;
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/b", 1, WAIT).await;
    recv.wait_for("/a", 1, WAIT).await;

    host.write_config(&format!("{good}\n[[clients]]\nid = \"c\"\nurl = 42\n"));
    let st = eventually(WAIT, "the broken file to be reported")
        .log(&host)
        .until(async || {
            let st = host.status().await;
            st["config"]["error"].is_string().then_some(st)
        })
        .await;
    assert!(
        st["config"]["error"].as_str().unwrap().contains("url"),
        "{st}"
    );
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/a", 2, WAIT).await;
    recv.wait_for("/b", 2, WAIT).await;
    assert!(
        host.log()
            .contains("the last good configuration keeps serving")
    );
    let (_, metrics) = host.api_text("/metrics").await;
    assert!(
        metrics.contains("hookwasm_config_reloads_total{result=\"failed\"}"),
        "{metrics}"
    );

    // Without b: it gets nothing more.
    host.rewrite_config(|c| c.without_client("b"));
    eventually(WAIT, "client b to be gone and the error cleared")
        .log(&host)
        .until(async || {
            let st = host.status().await;
            let gone = !st["clients"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == "b");
            (gone && st["config"]["error"].is_null()).then_some(())
        })
        .await;
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/a", 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recv.got("/b").len(),
        2,
        "a removed client gets no more events"
    );
}

/// A file that would take the id of a client made through the API, or make one
/// invalid, is refused as a whole: that client keeps its settings.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_would_drop_an_api_client_is_refused() {
    let recv = Receiver::start().await;
    let mut host = Config::new().start().await;
    host.api_client("made", &recv.url("/made"), json!({})).await;
    host.rewrite_config(|c| c.client(Client::new("made", &recv.url("/file"))));
    let st = eventually(WAIT, "the clash to be reported")
        .log(&host)
        .until(async || {
            let st = host.status().await;
            let error = st["config"]["error"].as_str().unwrap_or("").to_string();
            error.contains("created through the API").then_some(st)
        })
        .await;
    assert!(
        st["config"]["error"].as_str().unwrap().contains("\"made\""),
        "{st}"
    );
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/made", 1, WAIT).await;
    assert!(
        recv.got("/file").is_empty(),
        "the API's client kept its URL"
    );
}

/// A config that is a link (as a Kubernetes ConfigMap mounts it) is followed: a
/// change to the file it points to, in another folder, is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_linked_config_is_followed() {
    let recv = Receiver::start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let mut host = Config::new().client(Client::to(&recv, "a")).start().await;
    let real = elsewhere.path().join("real.toml");
    std::fs::copy(&host.config, &real).unwrap();
    std::fs::remove_file(&host.config).unwrap();
    std::os::unix::fs::symlink(&real, &host.config).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let text = host.setup_with(|c| c.client(Client::to(&recv, "late")));
    std::fs::write(&real, text).unwrap();
    host.wait_client("late").await;
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/late", 1, WAIT).await;
}

/// SIGHUP reads the file again, even where no change was seen: here the file
/// is rewritten in place with its size and modification time kept, which the
/// host's look at its metadata cannot tell from no change.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let recv = Receiver::start().await;
    let host = Config::new().client(Client::to(&recv, "a")).start().await;
    let text = std::fs::read_to_string(&host.config).unwrap();
    let (from, to) = (recv.url("/a"), recv.url("/z"));
    assert!(text.contains(&format!("\"{from}\"")), "{text}");
    let changed = text.replace(&format!("\"{from}\""), &format!("\"{to}\""));
    assert_eq!(changed.len(), text.len());
    let kept = std::fs::metadata(&host.config).unwrap().modified().unwrap();
    // A look at the file between these two calls, microseconds apart, would
    // see the new time and apply the change: a once-a-second poll all but
    // never lands there.
    std::fs::write(&host.config, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&host.config)
        .unwrap()
        .set_modified(kept)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // two looks at the file
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/a", 1, WAIT).await;
    assert!(
        recv.got("/z").is_empty(),
        "the change is not seen without SIGHUP"
    );

    unsafe { libc::kill(host.pid() as i32, libc::SIGHUP) };
    eventually(WAIT, "SIGHUP to apply the file")
        .log(&host)
        .until(async || host.log().contains("reason=\"SIGHUP\"").then_some(()))
        .await;
    assert_eq!(host.post(fixture(EVENT)).await.0, 202);
    recv.wait_for("/z", 1, WAIT).await;
}

/// Phraseanet's own model: an application pointed at
/// `/v1/clients/{id}/events?token=…` reaches that client only.
#[tokio::test(flavor = "multi_thread")]
async fn the_per_client_route_delivers_to_that_client_only() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .server("ingest_token = \"s3cret-ingest\"")
        .client(Client::to(&recv, "a"))
        .client(Client::to(&recv, "b"))
        .start()
        .await;
    let post = |path: &str| {
        reqwest::Client::new()
            .post(host.url(path))
            .header("content-type", "application/json")
            .body(fixture(EVENT))
            .send()
    };
    let r = post("/v1/clients/a/events?token=s3cret-ingest")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["deliveries"], 1, "{answer}");
    recv.wait_for("/a", 1, WAIT).await;
    assert_eq!(post("/v1/clients/a/events").await.unwrap().status(), 401);
    assert_eq!(
        post("/v1/clients/a/events?token=nope")
            .await
            .unwrap()
            .status(),
        401
    );
    let r = post("/v1/clients/nobody/events?token=s3cret-ingest")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(recv.got("/b").is_empty(), "b never got a's event");
    assert_eq!(recv.got("/a").len(), 1);
}

/// With a de-duplication window, the same Phraseanet event posted twice (as
/// two applications pointed at /v1/events would) fans out once.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_inside_the_window_is_delivered_once() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .server("dedup_window = \"10m\"")
        .client(Client::to(&recv, "a"))
        .start()
        .await;
    let (status, first) = host.post(fixture(EVENT)).await;
    assert_eq!(status, 202);
    let (status, again) = host.post(fixture(EVENT)).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"], "the answer names the first event");
    // An event with an envelope is keyed on its instance, URL and webhookId.
    let (_, other) = host.post(numbered(1)).await;
    assert_eq!(other["deliveries"], 1, "{other}");
    let (_, same) = host.post(numbered(1)).await;
    assert_eq!(same["duplicate"], true, "{same}");
    recv.wait_for("/a", 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recv.got("/a").len(), 2, "each event once");
}

/// A client's rate limit holds: no second of its deliveries has more than its rate.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_client_never_exceeds_its_rate() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "slow")
                .key("rate_limit = 5")
                .max_in_flight(8),
        )
        .client(Client::to(&recv, "fast"))
        .start()
        .await;
    for n in 0..15 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    recv.wait_for("/fast", 15, WAIT).await;
    let got = recv.wait_for("/slow", 15, WAIT).await;
    let times: Vec<Instant> = got.iter().map(|g| g.at).collect();
    // The host spaces attempts 200 ms apart; the receiver sees them with the
    // network's jitter, so a second is counted as 950 ms here.
    for (i, t) in times.iter().enumerate() {
        let in_a_second = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < Duration::from_millis(950))
            .count();
        assert!(
            in_a_second <= 5,
            "{in_a_second} deliveries within a second of delivery {i}"
        );
    }
    let span = times.last().unwrap().duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(2700),
        "15 at 5/s take about 3 s, not {span:?}"
    );
}

/// Retention: finished deliveries, their attempts and their events go once
/// older than the period; unfinished ones stay.
#[tokio::test(flavor = "multi_thread")]
async fn finished_deliveries_older_than_the_retention_are_pruned() {
    let recv = Receiver::start().await;
    recv.set_statuses("/down", &[500]);
    let host = Config::new()
        .client(Client::to(&recv, "up"))
        .client(Client::to(&recv, "down").retry_schedule(&["1h"]))
        .store("retention = \"2s\"")
        .start()
        .await;
    for n in 0..3 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    recv.wait_for("/up", 3, WAIT).await;
    host.wait_state("down", 3, "retrying").await;
    // Past the period, one more: the newest row of a table is always kept
    // (its seq would be given again), so the three old ones are the ones to go.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(host.post(numbered(3)).await.0, 202);
    recv.wait_for("/up", 4, WAIT).await;
    let op = Some(OPERATOR);
    eventually(WAIT, "the old delivered ones to be pruned")
        .log(&host)
        .until(async || {
            let (_, page) = host
                .api("GET", "/v1/admin/deliveries?client=up", op, None)
                .await;
            let left = page["deliveries"].as_array().unwrap().clone();
            (left.len() == 1).then_some(())
        })
        .await;
    let (_, down) = host
        .api("GET", "/v1/admin/deliveries?client=down", op, None)
        .await;
    assert_eq!(
        down["deliveries"].as_array().unwrap().len(),
        4,
        "unfinished ones stay: {down}"
    );
    assert!(
        host.log().contains("retention: old finished deliveries"),
        "{}",
        host.log()
    );
}

/// /metrics: Prometheus text that a parser reads, whose counters match what
/// was sent, per client; it needs an operator token unless opened. /readyz.
/// JSON logs.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_sent_and_readyz_answers() {
    let recv = Receiver::start().await;
    recv.set_statuses("/down", &[500]);
    let host = Config::new()
        .env("HOOKWASM_LOG_FORMAT", "json")
        .client(Client::to(&recv, "up"))
        .client(Client::to(&recv, "down").retry_schedule(&[]))
        .start()
        .await;
    for n in 0..4 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    assert_eq!(host.post(b"{}".to_vec()).await.0, 400);
    host.wait_state("up", 4, "delivered").await;
    host.wait_state("down", 4, "failed").await;

    let plain = reqwest::get(host.url("/metrics")).await.unwrap();
    assert_eq!(plain.status(), 401, "metrics need a token unless opened");
    let (status, text) = host.api_text("/metrics").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("hookwasm_events_ingested_total", &[("status", "202")]),
        4.0,
        "{text}"
    );
    assert_eq!(
        value("hookwasm_events_ingested_total", &[("status", "400")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            "hookwasm_deliveries_total",
            &[("client", "up"), ("state", "delivered")]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            "hookwasm_deliveries_total",
            &[("client", "down"), ("state", "failed")]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            "hookwasm_attempts_total",
            &[("client", "down"), ("outcome", "failed")]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value("hookwasm_queue_depth", &[("state", "pending")]),
        0.0,
        "{text}"
    );
    assert!(
        text.contains("hookwasm_attempt_duration_seconds_bucket"),
        "a histogram: {text}"
    );
    assert!(
        text.contains("hookwasm_store_commit_duration_seconds_bucket"),
        "{text}"
    );

    let ready = reqwest::get(host.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body, json!({ "store": "ok", "config": "ok" }));

    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("serving"))
        .expect("a start line");
    let parsed: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["level"], "INFO", "{parsed}");
}
