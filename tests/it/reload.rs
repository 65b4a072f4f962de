use std::time::Duration;

use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

/// Replacing a plugin under steady traffic: every event delivered exactly once,
/// each by the old or the new version, never raw, and the switch is one-way.
#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_plugin_under_traffic_loses_and_doubles_nothing() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "c")
                .plugin("p.wasm")
                .config("do", "count"),
        )
        .install_as("p.wasm", plugin("misbehave"))
        .start()
        .await;
    let old = hash_of(&plugin("misbehave"));
    let new = hash_of(&plugin("chat-message"));
    let total = 300;
    let mut swapped_at = None;
    for i in 0..total {
        let (status, _) = host.post(numbered(i)).await;
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

    // In event order, the versions go old… then new…, and each body is that
    // version's (as recorded: the receiver has each before the host records it).
    let mut rows = host.wait_state("c", total, "delivered").await;
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
    let host = Config::new()
        .client(Client::to(&recv, "c").plugin("p.wasm"))
        .install_as("p.wasm", plugin("chat-message"))
        .start()
        .await;
    let good = hash_of(&plugin("chat-message"));
    // A truncated copy: what a half-finished upload looks like.
    let bytes = std::fs::read(plugin("passthrough")).unwrap();
    let truncated = host.dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    host.install_plugin("p.wasm", &truncated);

    let st = eventually(WAIT, "the bad file to be reported")
        .until(async || {
            let st = host.status().await;
            if st["plugins"][0]["error"].is_string() {
                Ok(st)
            } else {
                Err(st)
            }
        })
        .await;
    let p = &st["plugins"][0];
    assert!(p["serving"].as_str().unwrap().ends_with(&good), "{st}");
    assert!(p["error"].as_str().unwrap().contains("p.wasm"), "{st}");
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
    let host = Config::new()
        .delivery("max_in_flight = 1")
        .client(Client::to(&recv, "c").plugin("late.wasm"))
        .start()
        .await;
    for i in 0..5 {
        assert_eq!(host.post(numbered(i)).await.0, 202);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        recv.got("/c").is_empty(),
        "fail closed: nothing is sent without the plugin"
    );
    // Each is held once the worker found no plugin for it.
    let rows = host.wait_state("c", 5, "held").await;
    assert_eq!(rows.len(), 5);
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
    let host = Config::new()
        .client(
            Client::to(&recv, "c")
                .plugin("p.wasm")
                .config("do", "error")
                .config("only_event", "record.created"),
        )
        .install_as("p.wasm", plugin("misbehave"))
        .start()
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
    // Recorded once the plugin's error is (the good one's record may come first).
    let rows = host
        .wait_rows("c", 1, |r| {
            r["event"] == "record.created" && r["state"] != "pending"
        })
        .await;
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

/// More parked deliveries than one page, a new version that fails on them too,
/// then a working one: the worker pages through them each time, keeps taking new
/// events meanwhile, and finally delivers every one, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_parked_backlog_is_paged_through_and_delivered_in_order() {
    const WAIT: Duration = Duration::from_secs(60);
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "c")
                .plugin("p.wasm")
                .max_in_flight(1)
                .config("do", "error"),
        )
        .install_as("p.wasm", plugin("misbehave"))
        .start()
        .await;
    for n in 0..150 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    host.wait_rows("c", 150, |r| r["state"] == "plugin_error")
        .await;

    // Another version that fails as well: the backlog is tried again, once.
    let other = variant(&plugin("misbehave"), "second");
    host.install_plugin("p.wasm", &other);
    let second = hash_of(&other);
    host.wait_rows("c", 150, |r| {
        r["plugin"].as_str().unwrap().ends_with(&second)
    })
    .await;
    assert_eq!(
        host.post(numbered(150)).await.0,
        202,
        "the worker still takes new events"
    );
    host.wait_rows("c", 151, |r| {
        r["state"] == "plugin_error" && r["plugin"].as_str().unwrap().ends_with(&second)
    })
    .await;

    // A working version: all 151 go out, in event order.
    host.install_plugin("p.wasm", &plugin("passthrough"));
    let got = recv.wait_for("/c", 151, WAIT).await;
    let order: Vec<u64> = got
        .iter()
        .map(|g| g.json()["webhookId"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..151).collect::<Vec<u64>>());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recv.got("/c").len(), 151, "nothing sent twice");
}

/// A file rewritten without pause next to a replaced plugin does not keep the
/// replacement from being loaded: each file has its own debounce.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_file_does_not_starve_another_files_reload() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(Client::to(&recv, "c").plugin("chat-message.wasm"))
        .install("chat-message")
        .start()
        .await;
    let busy = host.plugins().join("busy.wasm");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(30)
            {
                std::fs::write(&busy, format!("not wasm {n}")).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = variant(&plugin("chat-message"), "busy-neighbour");
    host.install_plugin("chat-message.wasm", &v2);
    host.wait_serving("chat-message.wasm", &hash_of(&v2)).await;
    assert!(
        !writer.is_finished(),
        "served only after the busy writer stopped"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
}

/// The status tells the truth about the file on disk: a rejection is forgotten
/// once the good bytes are back, and a 0-byte file renamed over a serving plugin
/// is said (status and a warning) while the previous version keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_follows_the_file_on_disk() {
    const WAIT: Duration = Duration::from_secs(60);
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(Client::to(&recv, "c").plugin("chat-message.wasm"))
        .install("chat-message")
        .start()
        .await;
    let good = plugin("chat-message");
    let error = |st: &serde_json::Value| -> Option<String> {
        st["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["file"] == "chat-message.wasm")?["error"]
            .as_str()
            .map(str::to_string)
    };
    let wait_error = async |want: Option<&'static str>| {
        eventually(WAIT, format_args!("the status error {want:?}"))
            .until(async || {
                let st = host.status().await;
                let e = error(&st);
                let ok = match want {
                    None => e.is_none(),
                    Some(needle) => e.as_deref().is_some_and(|e| e.contains(needle)),
                };
                if ok { Ok(st) } else { Err(format!("{e:?}")) }
            })
            .await
    };
    let broken = std::env::temp_dir().join(format!("hookwasm-broken-{}.wasm", std::process::id()));
    std::fs::write(&broken, b"\0asm broken").unwrap();
    host.install_plugin("chat-message.wasm", &broken);
    wait_error(Some("rejected")).await;
    host.install_plugin("chat-message.wasm", &good);
    wait_error(None).await;

    let empty = std::env::temp_dir().join(format!("hookwasm-empty-{}.wasm", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    host.install_plugin("chat-message.wasm", &empty);
    let st = wait_error(Some("empty")).await;
    assert!(error(&st).unwrap().contains("keeps serving"), "{st}");
    assert!(
        host.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("empty")),
        "{}",
        host.log()
    );
    assert_eq!(host.post(numbered(1)).await.0, 202);
    recv.wait_for("/c", 1, WAIT).await;
}
