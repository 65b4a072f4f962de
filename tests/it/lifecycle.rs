use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_attempts_in_flight_and_exits_zero() {
    let recv = Receiver::start().await;
    recv.set_delay("/slow", Duration::from_millis(1500));
    let mut host = Config::new()
        .client(Client::to(&recv, "slow"))
        .start()
        .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    eventually(WAIT, "the attempt to be in flight")
        .until(async || host.status().await["clients"][0]["in_flight"] == 1)
        .await;
    let status = host.sigterm().await;
    assert!(status.success(), "{status}\n{}", host.log());
    assert_eq!(recv.got("/slow").len(), 1);
    let rows = host.deliveries("slow");
    assert_eq!(
        rows[0]["state"], "delivered",
        "the outcome was recorded before exit: {rows:?}"
    );
}

/// The host is killed with SIGKILL while events pour in, then restarted: every
/// event it answered 202 is delivered, duplicates only with the same webhook-id.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_accepted_event() {
    let recv = Receiver::start().await;
    let mut host = Config::new()
        .client(Client::to(&recv, "c").plugin("passthrough.wasm"))
        .install("passthrough")
        .start()
        .await;
    let url = host.url("/v1/events");
    // Once the host is gone, a new connection waits in the queue of the socket
    // the test keeps: the timeout ends it as a refused connection did.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
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
    eventually(Duration::from_secs(60), "600 accepted events")
        .every(Duration::from_millis(5))
        .log(&host)
        .until(async || {
            let n = accepted.lock().unwrap().len();
            if n >= 600 { Ok(()) } else { Err(n) }
        })
        .await;
    host.kill9().await;
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    host.restart().await;

    eventually(Duration::from_secs(60), "every accepted event delivered")
        .every(Duration::from_millis(100))
        .log(&host)
        .until(async || {
            let seen: HashSet<usize> = recv
                .got("/c")
                .iter()
                .map(|g| g.json()["webhookId"].as_u64().unwrap() as usize)
                .collect();
            let missing = accepted.difference(&seen).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} accepted events never delivered"))
            }
        })
        .await;
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
    // Events stored whose 202 was lost with the host are delivered too; they
    // were the last committed, so they may still be on their way here.
    eventually(Duration::from_secs(60), "every stored delivery delivered")
        .every(Duration::from_millis(100))
        .log(&host)
        .until(async || {
            let rows = host.deliveries("c");
            let not_yet: Vec<_> = rows
                .iter()
                .filter(|r| r["state"] != "delivered")
                .cloned()
                .collect();
            if not_yet.is_empty() {
                Ok(())
            } else {
                Err(format!("{not_yet:#?}"))
            }
        })
        .await;
}

/// SIGTERM mid-stream, then a restart: nothing lost, nothing sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_loses_and_resends_nothing() {
    let recv = Receiver::start().await;
    // At most 4 × 20 a second go out: the 300 posts outpace them even on a
    // busy machine.
    recv.set_delay("/c", Duration::from_millis(50));
    let mut host = Config::new()
        .client(Client::to(&recv, "c").max_in_flight(4))
        .start()
        .await;
    for n in 0..300 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    assert!(host.sigterm().await.success());
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
