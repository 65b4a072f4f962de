use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// A client whose plugin misbehaves as `what` says. Only the looping one runs
/// under the default 500 ms deadline; the others get 10 s, so that on a busy
/// machine each ends in the error of its own kind, not a deadline.
fn misbehaving(recv: &Receiver, what: &str) -> Client {
    let client = Client::to(recv, what)
        .plugin("misbehave.wasm")
        .config("do", what);
    if what == "loop" {
        client
    } else {
        client.limit("deadline", "10s")
    }
}

/// Every kind of misbehaviour, side by side with a well-behaved client: each ends
/// in a recorded, typed plugin error (or a sandboxed refusal) for its own delivery,
/// the host keeps serving, and the healthy client is not held up.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_hurt_only_their_own_deliveries() {
    let recv = Receiver::start().await;
    let kinds: &[(&str, &str)] = &[
        ("loop", "deadline"),
        ("alloc", "memory"),
        ("recurse", "trap"),
        ("panic", "trap"),
        ("big-output", "bad-output"),
        ("bad-utf8", "trap"),
        ("bad-header", "bad-output"),
        ("many-headers", "bad-output"),
        ("look-alike", "bad-output"),
        ("long-header", "bad-output"),
        ("long-error", "failed"),
        ("error", "failed"),
    ];
    let mut config = Config::new();
    for (what, _) in kinds {
        config = config.client(misbehaving(&recv, what));
    }
    for what in [
        "open-file",
        "env",
        "socket",
        "log-flood",
        "sleep",
        "long-reason",
    ] {
        config = config.client(misbehaving(&recv, what));
    }
    let host = config
        .client(Client::to(&recv, "good").plugin("passthrough.wasm"))
        .client(Client::to(&recv, "imports").plugin("bad-import.wasm"))
        .install("misbehave")
        .install("passthrough")
        .install("bad-import")
        .start()
        .await;
    // Memory is compared at rest: every delivery so far rendered or refused,
    // and none in flight. (A plugin at work holds memory of its own for a
    // moment: the one that allocates without end has tens of MiB.)
    let at_rest = async || {
        eventually(WAIT, "every delivery so far to settle")
            .every(Duration::from_millis(100))
            .until(async || {
                let (_, o) = host
                    .api("GET", "/v1/admin/overview", Some(OPERATOR), None)
                    .await;
                let pending = o["queue"]["pending"].as_u64().unwrap_or(0);
                let busy: u64 = o["clients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["in_flight"].as_u64().unwrap())
                    .sum();
                (pending == 0 && busy == 0).then_some(())
            })
            .await;
        rss(host.pid())
    };
    // Warm up, then take the host's memory as the baseline.
    assert_eq!(host.post(numbered(0)).await.0, 202);
    recv.wait_for("/good", 1, WAIT).await;
    host.wait_rows("alloc", 1, |r| r["state"] == "plugin_error")
        .await;
    let baseline = at_rest().await;

    for n in 1..=3 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    // The healthy client has all its deliveries while the looping one is still
    // working through its deadlines (500 ms an event).
    recv.wait_for("/good", 4, WAIT).await;
    let looped = host
        .deliveries("loop")
        .iter()
        .filter(|r| r["state"] == "plugin_error")
        .count();
    assert!(
        looped < 4,
        "the healthy client waited for the looping one ({looped} loops done)"
    );

    for (what, kind) in kinds {
        let rows = host
            .wait_rows(what, 4, |r| r["state"] == "plugin_error")
            .await;
        for r in &rows {
            let reason = r["reason"].as_str().unwrap();
            assert!(reason.starts_with(&format!("{kind}:")), "{what}: {reason}");
            assert!(
                r["plugin"].as_str().unwrap().starts_with("misbehave.wasm@"),
                "{r}"
            );
        }
        assert!(
            recv.got(&format!("/{what}")).is_empty(),
            "{what}: nothing is sent, not even raw"
        );
    }
    // A plugin's text is bounded like its body: a 1 MiB message or reason is
    // stored (and logged) cut to `max_reason`.
    let long = &host.deliveries("long-error")[0];
    assert!(
        long["reason"].as_str().unwrap().len() < 1200,
        "{}",
        long["reason"].as_str().unwrap().len()
    );
    let rows = host
        .wait_rows("long-reason", 4, |r| r["state"] == "skipped")
        .await;
    assert!(rows[0]["reason"].as_str().unwrap().len() <= 1024);
    assert!(
        !host.log().lines().any(|l| l.len() > 8192),
        "a log line over 8 KiB"
    );
    let look = &host.deliveries("look-alike")[0];
    assert!(
        look["reason"]
            .as_str()
            .unwrap()
            .contains("webhook_signature"),
        "{look}"
    );
    let panic = &host.deliveries("panic")[0];
    assert!(
        panic["reason"].as_str().unwrap().contains("asked to panic"),
        "the panic message is reported: {panic}"
    );

    // The sandbox: no files, no environment, no sockets.
    for what in ["open-file", "env", "socket"] {
        let rows = host.wait_rows(what, 4, |r| r["state"] == "skipped").await;
        assert!(
            rows[0]["reason"]
                .as_str()
                .unwrap()
                .contains("as it should be"),
            "{what}: {}",
            rows[0]
        );
    }
    // A sleep cannot hold the client: it returns at once (epochs cannot stop a
    // host call, so the host never blocks in one).
    let rows = host
        .wait_rows("sleep", 4, |r| r["state"] == "skipped")
        .await;
    assert_eq!(rows[0]["reason"], "woke up");
    // A log flood is cut to the per-call limit.
    recv.wait_for("/log-flood", 4, WAIT).await;
    let flood_lines = host.log().lines().filter(|l| l.contains("flood ")).count();
    assert!(
        flood_lines <= 4 * 32,
        "{flood_lines} flood lines reached the log"
    );
    assert!(host.log().contains("more log lines dropped"));
    // An import the host does not provide: refused at load, named, client held.
    let st = host.status().await;
    let bad = st["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"] == "bad-import.wasm")
        .unwrap();
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("evil:net/raw-socket"),
        "{bad}"
    );
    let held = host.wait_state("imports", 4, "held").await;
    assert!(held.iter().all(|r| r["state"] == "held"), "{held:?}");

    // Still serving, and memory back near where it was.
    assert_eq!(host.post(numbered(9)).await.0, 202);
    recv.wait_for("/good", 5, WAIT).await;
    let after = at_rest().await;
    assert!(
        after < baseline + (64 << 20),
        "memory grew from {baseline} to {after} bytes"
    );
}

/// An instance is reused for one client's calls, never shared with another
/// client, thrown away after a trap, and recycled after `recycle_after` calls.
#[tokio::test(flavor = "multi_thread")]
async fn warm_instances_are_per_client_and_replaced_after_a_trap() {
    let recv = Receiver::start().await;
    let counting = |id| {
        Client::to(&recv, id)
            .plugin("misbehave.wasm")
            .max_in_flight(1)
            .config("do", "count")
            .config("panic_on", "record.created")
    };
    let host = Config::new()
        .client(counting("a"))
        .client(counting("b"))
        .plugins("recycle_after = 4")
        .install("misbehave")
        .start()
        .await;
    let calls = |path: &str| -> Vec<u64> {
        recv.got(path)
            .iter()
            .map(|g| g.json()["calls"].as_u64().unwrap())
            .collect()
    };
    for n in 0..3 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
        recv.wait_for("/a", n + 1, WAIT).await;
        recv.wait_for("/b", n + 1, WAIT).await;
    }
    assert_eq!(
        calls("/a"),
        vec![1, 2, 3],
        "one warm instance serves a client's calls"
    );
    assert_eq!(calls("/b"), vec![1, 2, 3], "and another client has its own");

    // A trap poisons only that instance: the next call starts afresh.
    assert_eq!(host.post(fixture("record.created.json")).await.0, 202);
    host.wait_rows("a", 1, |r| r["state"] == "plugin_error")
        .await;
    for n in 3..8 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
        recv.wait_for("/a", n + 1, WAIT).await;
    }
    // After the trap: a fresh instance, recycled after 4 calls.
    assert_eq!(calls("/a")[3..], [1, 2, 3, 4, 1]);
}

/// A compiled plugin is cached on disk; a corrupt entry is noticed and rebuilt.
#[tokio::test(flavor = "multi_thread")]
async fn the_compiled_code_cache_survives_restarts_and_corruption() {
    let recv = Receiver::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut host = Config::new()
        .client(Client::to(&recv, "c").plugin("chat-message.wasm"))
        .cache_dir(cache.path())
        .install("chat-message")
        .start()
        .await;
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert!(entry.extension().unwrap() == "cwasm");
    let good = std::fs::read(entry).unwrap();

    // Corrupt it: flip bytes in the middle.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(entry, &bad).unwrap();
    assert!(host.sigterm().await.success());
    host.restart().await;
    assert!(
        host.log().contains("plugin cache entry is not authentic"),
        "{}",
        host.log()
    );
    assert_eq!(std::fs::read(entry).unwrap(), good, "the entry was rebuilt");
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/c", 1, WAIT).await;
    assert!(got[0].json()["text"].is_string());

    // Truncated to nothing useful: also rebuilt.
    std::fs::write(entry, &good[..100]).unwrap();
    assert!(host.sigterm().await.success());
    host.restart().await;
    assert_eq!(
        host.log()
            .matches("plugin cache entry is not authentic")
            .count(),
        2
    );
}

/// A plugin built against 0.1.0 before 0.2.0 existed keeps loading and behaves
/// the same; a 0.2.0 plugin sees every event typed.
#[tokio::test(flavor = "multi_thread")]
async fn old_and_new_world_versions_serve_side_by_side() {
    let legacy = repo().join("tests/fixtures/plugins/chat-message-0.1.0.wasm");
    let (code, out, _) = run(&["plugin", "check", legacy.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("plugin@0.1.0"), "{out}");
    let (code, out, _) = run(&["plugin", "check", plugin("chat-message").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("plugin@0.2.0"), "{out}");

    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "old")
                .plugin("old.wasm")
                .config("channel", "#c"),
        )
        .client(
            Client::to(&recv, "new")
                .plugin("new.wasm")
                .config("channel", "#c"),
        )
        .client(
            Client::to(&recv, "typed")
                .plugin("misbehave.wasm")
                .config("do", "describe"),
        )
        .install_as("old.wasm", legacy)
        .install_as("new.wasm", plugin("chat-message"))
        .install("misbehave")
        .start()
        .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let old = recv.wait_for("/old", 1, WAIT).await;
    let new = recv.wait_for("/new", 1, WAIT).await;
    assert_eq!(
        old[0].body, new[0].body,
        "the 0.1.0 plugin behaves as it did"
    );

    let mut expected: HashMap<String, String> = HashMap::new();
    for name in hookwasm::event::KNOWN_EVENTS {
        let kind = name.replace(['.', '_'], "-");
        expected.insert(name.to_string(), kind);
        assert_eq!(host.post(fixture(&format!("{name}.json"))).await.0, 202);
    }
    let got = recv
        .wait_for("/typed", 1 + hookwasm::event::KNOWN_EVENTS.len(), WAIT)
        .await;
    for g in &got[1..] {
        let v = g.json();
        let kind = v["payload"].as_str().unwrap();
        assert!(
            expected.values().any(|k| k == kind),
            "an unexpected payload kind {kind}"
        );
        assert_eq!(
            v["delivery_id"],
            g.header("webhook-id"),
            "plugins see the delivery id"
        );
        assert!(v["received_at"].as_u64().unwrap() > 1_700_000_000_000);
        if kind.starts_with("record-") {
            assert!(v["record_id"].as_i64().unwrap() > 0, "{v}");
        }
        if kind.starts_with("user-") || kind.starts_with("order-") {
            assert!(!v["login"].as_str().unwrap().is_empty(), "{v}");
        }
    }
    let kinds: std::collections::HashSet<String> = got[1..]
        .iter()
        .map(|g| g.json()["payload"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.len(),
        hookwasm::event::KNOWN_EVENTS.len(),
        "every event has its own typed record"
    );
}

/// The Python and JavaScript examples, built with componentize-py and
/// componentize-js, give byte for byte what the Rust ones give.
#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_plugins_match_the_rust_ones() {
    let events = [
        "new_feed_entry.json",
        "new_feed_entry.documented.json",
        "record.created.json",
    ];
    for behaviour in ["chat-message", "redact-subscribers"] {
        let rust = plugin(behaviour);
        for lang in ["python", "js"] {
            let other = foreign_plugin(&format!("{lang}-{behaviour}"));
            for event in events {
                let ev = fixture_path(event);
                let args = |p: &std::path::Path| {
                    run(&[
                        "plugin",
                        "test",
                        p.to_str().unwrap(),
                        "--event",
                        ev.to_str().unwrap(),
                        "--config",
                        "channel=#x",
                    ])
                };
                let (code_r, out_r, _) = args(&rust);
                let (code_o, out_o, err_o) = args(&other);
                assert_eq!(
                    (code_o, &out_o),
                    (code_r, &out_r),
                    "{lang}-{behaviour} on {event}: {err_o}"
                );
            }
        }
    }

    let recv = Receiver::start().await;
    let mut config = Config::new();
    for lang in ["rust", "python", "js"] {
        for behaviour in ["chat-message", "redact-subscribers"] {
            let id = format!("{lang}-{behaviour}");
            let file = format!("{id}.wasm");
            let src = if lang == "rust" {
                plugin(behaviour)
            } else {
                foreign_plugin(&id)
            };
            config = config
                .client(Client::to(&recv, &id).plugin(&file).config("channel", "#x"))
                .install_as(&file, src);
        }
    }
    let host = config.start().await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    assert_eq!(
        host.post(fixture("new_feed_entry.documented.json")).await.0,
        202
    );
    for behaviour in ["chat-message", "redact-subscribers"] {
        let rust = recv.wait_for(&format!("/rust-{behaviour}"), 2, WAIT).await;
        for lang in ["python", "js"] {
            let other = recv
                .wait_for(&format!("/{lang}-{behaviour}"), 2, WAIT)
                .await;
            let bodies = |g: &[Got]| {
                let mut b: Vec<Vec<u8>> = g.iter().map(|g| g.body.to_vec()).collect();
                b.sort();
                b
            };
            assert_eq!(
                bodies(&other),
                bodies(&rust),
                "{lang}-{behaviour} through the host"
            );
        }
    }
    assert!(
        host.log().contains("chat message for feed"),
        "guest log lines from every language reach the host log"
    );
}

/// A plugin's wall clock reads the event's `received-at` for the whole call, so
/// a rendering is the same in a replay or a dry-run.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_wall_clock_is_the_events_received_at() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "clock")
                .plugin("misbehave.wasm")
                .config("do", "clock"),
        )
        .install("misbehave")
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(host.post(numbered(2)).await.0, 202);
    let got = recv.wait_for("/clock", 2, WAIT).await;
    for g in &got {
        let v = g.json();
        assert_eq!(v["wall_ms"], v["received_at"], "{v}");
        assert_eq!(
            v["again_ms"], v["received_at"],
            "time stands still in a call: {v}"
        );
    }
    assert_ne!(
        got[0].json()["wall_ms"],
        got[1].json()["wall_ms"],
        "each event its own time"
    );
}

/// A client's `config` reaches the plugin in the order of the file, as the WIT
/// promises, not sorted.
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_config_reaches_the_plugin_in_the_order_of_the_file() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "ordered")
                .plugin("misbehave.wasm")
                .config("zeta", "1")
                .config("do", "config")
                .config("alpha", "2"),
        )
        .install("misbehave")
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    let got = recv.wait_for("/ordered", 1, WAIT).await;
    assert_eq!(
        got[0].json(),
        serde_json::json!([["zeta", "1"], ["do", "config"], ["alpha", "2"]])
    );
}

/// A plugin whose initial memory is over the client's cap fails as `memory`, not
/// as a trap.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_minimum_over_the_cap_is_a_memory_error() {
    let recv = Receiver::start().await;
    let host = Config::new()
        .client(
            Client::to(&recv, "small")
                .plugin("chat-message.wasm")
                .limit("memory", "1MiB"),
        )
        .install("chat-message")
        .start()
        .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    let rows = host
        .wait_rows("small", 1, |r| r["state"] == "plugin_error")
        .await;
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("memory:"), "{reason}");
}
