//! Plugins that cannot hurt the host, warm instances, the compiled-code cache,
//! world versions, and plugins in Python and JavaScript — all through the real
//! binary, with plugins built from source by this test run.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// A client whose plugin misbehaves as `what` says. Only the looping one runs
/// under the default 500 ms deadline; the others get 10 s, so that on a busy
/// machine each ends in the error of its own kind, not a deadline.
fn misbehaving(id: &str, recv: &Receiver, what: &str) -> String {
    let deadline = if what == "loop" {
        ""
    } else {
        "[clients.limits]\ndeadline = \"10s\"\n"
    };
    client(
        id,
        &recv.url(&format!("/{id}")),
        &format!("plugin = \"misbehave.wasm\"\n{deadline}[clients.config]\ndo = \"{what}\""),
    )
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
    let mut config = String::from(LOOPBACK);
    for (what, _) in kinds {
        config.push_str(&misbehaving(what, &recv, what));
    }
    for what in [
        "open-file",
        "env",
        "socket",
        "log-flood",
        "sleep",
        "long-reason",
    ] {
        config.push_str(&misbehaving(what, &recv, what));
    }
    config.push_str(&client(
        "good",
        &recv.url("/good"),
        "plugin = \"passthrough.wasm\"",
    ));
    config.push_str(&client(
        "imports",
        &recv.url("/imports"),
        "plugin = \"bad-import.wasm\"",
    ));
    let host = Host::start(
        &config,
        &[
            ("misbehave.wasm", plugin("misbehave")),
            ("passthrough.wasm", plugin("passthrough")),
            ("bad-import.wasm", plugin("bad-import")),
        ],
    )
    .await;
    // Warm up, then take the host's memory as the baseline.
    assert_eq!(host.post(numbered(0)).await.0, 202);
    recv.wait_for("/good", 1, WAIT).await;
    wait_rows(&host, "alloc", 1, |r| r["state"] == "plugin_error").await;
    let baseline = rss(host.pid());

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
        let rows = wait_rows(&host, what, 4, |r| r["state"] == "plugin_error").await;
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
    let rows = wait_rows(&host, "long-reason", 4, |r| r["state"] == "skipped").await;
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
        let rows = wait_rows(&host, what, 4, |r| r["state"] == "skipped").await;
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
    let rows = wait_rows(&host, "sleep", 4, |r| r["state"] == "skipped").await;
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
    assert!(
        host.deliveries("imports")
            .iter()
            .all(|r| r["state"] == "held")
    );

    // Still serving, and memory back near where it was.
    assert_eq!(host.post(numbered(9)).await.0, 202);
    recv.wait_for("/good", 5, WAIT).await;
    let after = rss(host.pid());
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
    let counting = "plugin = \"misbehave.wasm\"\nmax_in_flight = 1\n[clients.config]\ndo = \"count\"\npanic_on = \"record.created\"";
    let host = Host::start_with(
        &format!(
            "{LOOPBACK}{}{}",
            client("a", &recv.url("/a"), counting),
            client("b", &recv.url("/b"), counting)
        ),
        &[("misbehave.wasm", plugin("misbehave"))],
        "recycle_after = 4\n",
    )
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
    wait_rows(&host, "a", 1, |r| r["state"] == "plugin_error").await;
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
    let extra = format!("cache_dir = {:?}\n", cache.path().to_str().unwrap());
    let mut host = Host::start_with(
        &format!(
            "{LOOPBACK}{}",
            client("c", &recv.url("/c"), "plugin = \"chat-message.wasm\"")
        ),
        &[("chat-message.wasm", plugin("chat-message"))],
        &extra,
    )
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
    assert!(host.sigterm().success());
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
    assert!(host.sigterm().success());
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
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}{}{}",
            client(
                "old",
                &recv.url("/old"),
                "plugin = \"old.wasm\"\n[clients.config]\nchannel = \"#c\""
            ),
            client(
                "new",
                &recv.url("/new"),
                "plugin = \"new.wasm\"\n[clients.config]\nchannel = \"#c\""
            ),
            client(
                "typed",
                &recv.url("/typed"),
                "plugin = \"misbehave.wasm\"\n[clients.config]\ndo = \"describe\""
            ),
        ),
        &[
            ("old.wasm", legacy),
            ("new.wasm", plugin("chat-message")),
            ("misbehave.wasm", plugin("misbehave")),
        ],
    )
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
                let ev = repo().join("tests/fixtures/events").join(event);
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
    let mut config = String::from(LOOPBACK);
    let mut plugins = Vec::new();
    for lang in ["rust", "python", "js"] {
        for behaviour in ["chat-message", "redact-subscribers"] {
            let id = format!("{lang}-{behaviour}");
            let file = format!("{id}.wasm");
            let src = if lang == "rust" {
                plugin(behaviour)
            } else {
                foreign_plugin(&id)
            };
            config.push_str(&client(
                &id,
                &recv.url(&format!("/{id}")),
                &format!("plugin = \"{file}\"\n[clients.config]\nchannel = \"#x\""),
            ));
            plugins.push((Box::leak(file.into_boxed_str()) as &str, src));
        }
    }
    let host = Host::start(&config, &plugins).await;
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

/// `plugin new` writes projects that `plugin build` builds on the first try in
/// each language, printing the `.wasm`'s path, and whose sample events pass
/// `plugin test --events`; a changed expectation fails. Build outputs, tools and
/// generated bindings stay out of git; the JavaScript tools install quietly; a
/// JavaScript `throw new Error(…)` keeps its message.
#[test]
fn scaffolded_plugins_build_and_pass_their_own_tests() {
    let dir = tempfile::tempdir().unwrap();
    let sh = |cmd: &str, cwd: &std::path::Path| -> String {
        let out = std::process::Command::new("bash")
            .args(["-c", cmd])
            .current_dir(cwd)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{cmd}:\n{text}");
        text
    };
    // The Rust builds share one target folder, warm after the first test run.
    let target = repo().join("target/scaffold-target");
    let target_env = [("CARGO_TARGET_DIR", target.to_str().unwrap())];
    let build = |project: &std::path::Path| -> std::path::PathBuf {
        let (code, out, err) = run_in(project, &target_env, &["plugin", "build"]);
        assert_eq!(code, 0, "plugin build in {}: {err}", project.display());
        assert_eq!(out.lines().count(), 1, "only the path on stdout: {out}");
        let wasm = project.join(out.trim());
        assert!(wasm.is_file(), "plugin build printed {out}");
        wasm
    };
    for lang in ["rust", "python", "js"] {
        let name = format!("hello-{lang}");
        let (code, out, err) = run(&[
            "plugin",
            "new",
            &name,
            "--lang",
            lang,
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("created"), "{out}");
        let project = dir.path().join(&name);
        let interface = if lang == "rust" {
            "hookwasm-plugin/wit/plugin.wit"
        } else {
            "wit/plugin-0.2.0/plugin.wit"
        };
        assert!(project.join("README.md").exists() && project.join(interface).exists());
        if lang == "rust" {
            let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
            assert!(
                !lib.contains("#[cfg(test)]"),
                "no unit tests that make a first `cargo test` build everything again for the host"
            );
        }
        if lang == "js" {
            // The lock file's versions agree: nothing that looks like an error.
            let out = sh("npm install --no-audit --no-fund", &project);
            assert!(
                !out.contains("ERESOLVE") && !out.contains("npm warn"),
                "{out}"
            );
        }
        let wasm = build(&project);
        let expected = match lang {
            "rust" => target.join("wasm32-wasip2/release/hello_rust.wasm"),
            _ => project.join(format!("{name}.wasm")),
        };
        assert_eq!(
            wasm.canonicalize().unwrap(),
            expected.canonicalize().unwrap()
        );

        let events = project.join("events");
        let suite = |extra: &[&str]| {
            let mut args = vec![
                "plugin",
                "test",
                wasm.to_str().unwrap(),
                "--events",
                events.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            run(&args)
        };
        let (code, out, err) = suite(&[]);
        assert_eq!(code, 0, "{lang}: {out}{err}");
        assert!(
            out.trim_end().ends_with("2 passed, 0 failed"),
            "{lang}: {out}"
        );

        std::fs::write(
            events.join("record.created.expected.json"),
            "{\"verdict\":\"skip\",\"reason\":\"other\"}\n",
        )
        .unwrap();
        let (code, out, _) = suite(&[]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAILED   record.created") && out.contains("1 passed, 1 failed"),
            "{out}"
        );
        assert_eq!(suite(&["--update"]).0, 0);
        assert_eq!(suite(&[]).0, 0, "--update records the verdicts");

        if lang == "python" {
            // The README's command for reading the generated classes.
            sh(
                ".venv/bin/componentize-py -d wit/plugin-0.2.0 -w plugin bindings bindings",
                &project,
            );
            assert!(project.join("bindings/wit_world").is_dir());
        }
        let status = sh(
            "git init -q . && git status --porcelain --untracked-files=all",
            &project,
        );
        for junk in [
            ".wasm",
            "target/",
            "node_modules",
            ".venv",
            "bindings/",
            "wit_world",
        ] {
            assert!(
                !status.contains(junk),
                "{lang}: git would pick up {junk}:\n{status}"
            );
        }

        if lang == "js" {
            throws_keep_their_message(&project, &build);
        }
    }
    let (code, _, err) = run(&[
        "plugin",
        "new",
        "Bad Name",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("lowercase"), "{err}");
    let (code, _, err) = run(&[
        "plugin",
        "new",
        "hello-rust",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, out, err) = run_in(dir.path(), &[], &["plugin", "build"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.starts_with("hookwasm: ") && err.contains("is not a plugin project"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// The JavaScript template turns a `throw new Error(…)` into a `failed` error with
/// its message; thrown past it, the trap's one-line reason still names the error.
fn throws_keep_their_message(
    project: &std::path::Path,
    build: &dyn Fn(&std::path::Path) -> std::path::PathBuf,
) {
    let source = std::fs::read_to_string(project.join("plugin.js")).unwrap();
    let inner = "function handle(event, client) {\n";
    let outer = "  handle(event, client) {\n    try {";
    assert!(source.contains(inner) && source.contains(outer), "{source}");
    let source = source
        .replace(
            inner,
            &format!("{inner}  if (client.id === 'inner') throw new Error('plain error from js');\n"),
        )
        .replace(
            outer,
            "  handle(event, client) {\n    if (client.id === 'raw') throw new Error('raw error from js');\n    try {",
        );
    std::fs::write(project.join("plugin.js"), source).unwrap();
    let wasm = build(project);
    let event = project.join("events/record.created.json");
    let reason = |client: &str| {
        let (code, out, err) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--event",
            event.to_str().unwrap(),
            "--client",
            client,
        ]);
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        err.lines()
            .find(|l| l.starts_with("hookwasm: "))
            .unwrap_or_else(|| panic!("no error line: {err}"))
            .to_string()
    };
    let inner = reason("inner");
    assert!(
        inner.contains("the plugin failed: Error: plain error from js"),
        "{inner}"
    );
    let raw = reason("raw");
    assert!(
        raw.contains("trapped") && raw.contains("raw error from js"),
        "{raw}"
    );
}

/// Expectations are compared as JSON: a hand-written one with its keys in another
/// order, or spaced out, passes. Recorded verdicts, errors included, put `verdict`
/// first.
#[test]
fn hand_written_expectations_match_whatever_their_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path();
    std::fs::copy(
        repo().join("tests/fixtures/events/new_feed_entry.json"),
        events.join("feed.json"),
    )
    .unwrap();
    let wasm = plugin("misbehave");
    let suite = |extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--config",
            "do=error",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (code, _, err) = suite(&["--update"]);
    assert_eq!(code, 0, "{err}");
    let recorded = std::fs::read_to_string(events.join("feed.expected.json")).unwrap();
    assert!(
        recorded.starts_with("{\"verdict\":\"error\",\"reason\":\"failed: "),
        "{recorded}"
    );
    let value: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    let reason = value["reason"].as_str().unwrap();
    // The form the guide documents, written by hand: reason first, spaced out.
    std::fs::write(
        events.join("feed.expected.json"),
        format!(
            "{{ \"reason\": {}, \"verdict\": \"error\" }}\n",
            serde_json::to_string(reason).unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = suite(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    std::fs::write(
        events.join("feed.expected.json"),
        "{\"verdict\": \"error\", \"reason\": \"failed: something else\"}",
    )
    .unwrap();
    let (code, out, _) = suite(&[]);
    assert_eq!(code, 1, "a different reason still fails: {out}");
}

/// `plugin test` and `plugin check` say "compiling …" on stderr at once, and
/// report errors the same way: one `hookwasm:` line on stderr, exit code 1.
#[test]
fn plugin_commands_say_what_they_do_and_fail_in_one_style() {
    let chat = plugin("chat-message");
    let event = repo().join("tests/fixtures/events/new_feed_entry.json");
    let (code, _, err) = run(&[
        "plugin",
        "test",
        chat.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().next() == Some("compiling chat_message.wasm …"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    for file in [&text, &core] {
        let (code, out, err) = run(&["plugin", "check", file.to_str().unwrap()]);
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("hookwasm: ") && last.contains("not a WebAssembly component"),
            "{err}"
        );
    }
}

/// The SDK names its version in the plugins it builds; `plugin check` shows it,
/// and says when it is older than the host's. `plugin update-sdk` brings a
/// project's copy up to date: the SDK as it is in plugins/sdk, whose WIT is the
/// released one.
#[test]
fn the_sdk_version_is_checked_and_updated() {
    let sdk = repo().join("plugins/sdk");
    assert_eq!(
        std::fs::read(sdk.join("wit/plugin.wit")).unwrap(),
        std::fs::read(repo().join("wit/plugin-0.2.0/plugin.wit")).unwrap(),
        "the SDK's WIT is the released 0.2.0, byte for byte"
    );
    let (code, out, err) = run(&["plugin", "check", plugin("chat-message").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sdk: hookwasm-plugin 0.2.0\n"), "{out}");

    // Built without the SDK: nothing said. With an old SDK's mark: a word.
    let legacy = repo().join("tests/fixtures/plugins/chat-message-0.1.0.wasm");
    let (code, out, _) = run(&["plugin", "check", legacy.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!out.contains("sdk:"), "{out}");
    let old = with_section(&legacy, "hookwasm-plugin-sdk", "0.1.0");
    let (code, out, _) = run(&["plugin", "check", old.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("sdk: hookwasm-plugin 0.1.0, older than this hookwasm's 0.2.0")
            && out.contains("hookwasm plugin update-sdk"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[
        "plugin",
        "new",
        "old-one",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let project = dir.path().join("old-one");
    let copy = project.join("hookwasm-plugin");
    for file in ["Cargo.toml", "src/lib.rs", "wit/plugin.wit"] {
        assert_eq!(
            std::fs::read(copy.join(file)).unwrap(),
            std::fs::read(sdk.join(file)).unwrap(),
            "plugin new writes the SDK's {file} as is"
        );
    }
    let manifest = std::fs::read_to_string(copy.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("\nversion = \"0.2.0\"\n"), "{manifest}");
    std::fs::write(
        copy.join("Cargo.toml"),
        manifest.replace("version = \"0.2.0\"", "version = \"0.1.0\""),
    )
    .unwrap();
    std::fs::write(copy.join("src/lib.rs"), "// an old SDK\n").unwrap();
    let (code, out, err) = run_in(&project, &[], &["plugin", "update-sdk"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from 0.1.0 to 0.2.0"), "{out}");
    for file in ["Cargo.toml", "src/lib.rs", "wit/plugin.wit"] {
        assert_eq!(
            std::fs::read(copy.join(file)).unwrap(),
            std::fs::read(sdk.join(file)).unwrap(),
            "{file} is up to date"
        );
    }
    let (code, _, err) = run(&["plugin", "update-sdk", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("hookwasm: ") && err.contains("is not a Rust plugin project"),
        "{err}"
    );
}

/// More parked deliveries than one page, a new version that fails on them too,
/// then a working one: the worker pages through them each time, keeps taking new
/// events meanwhile, and finally delivers every one, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_parked_backlog_is_paged_through_and_delivered_in_order() {
    let recv = Receiver::start().await;
    let host = Host::start(
        &format!(
            "{LOOPBACK}{}",
            client(
                "c",
                &recv.url("/c"),
                "plugin = \"p.wasm\"\nmax_in_flight = 1\n[clients.config]\ndo = \"error\""
            )
        ),
        &[("p.wasm", plugin("misbehave"))],
    )
    .await;
    for n in 0..150 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    wait_rows(&host, "c", 150, |r| r["state"] == "plugin_error").await;

    // Another version that fails as well: the backlog is tried again, once.
    let other = variant(&plugin("misbehave"), "second");
    host.install_plugin("p.wasm", &other);
    let second = hash_of(&other);
    wait_rows(&host, "c", 150, |r| {
        r["plugin"].as_str().unwrap().ends_with(&second)
    })
    .await;
    assert_eq!(
        host.post(numbered(150)).await.0,
        202,
        "the worker still takes new events"
    );
    wait_rows(&host, "c", 151, |r| {
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

// ---- Hardening: the cache, the clock, reloads, status --------------------------

/// The compiled-code cache is native code the host runs: a folder others can
/// write to is refused, and an entry the host did not write is compiled again,
/// never loaded.
#[tokio::test(flavor = "multi_thread")]
async fn the_compiled_code_cache_trusts_nothing_it_did_not_write() {
    use std::os::unix::fs::PermissionsExt;
    // A shared folder is refused, with one line, and left as it was.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[plugins]\ndir = \"p\"\ncache_dir = {:?}\n[store]\npath = \"s.db\"\n",
            shared.path().to_str().unwrap()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("writable by other users") && err.trim().lines().count() == 1,
        "{err}"
    );
    let mode = std::fs::metadata(shared.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o777, "not chmod'ed behind the operator's back");

    // Plant, under the name chat-message's entry will have, the compiled code of
    // another plugin with a valid layout: the host must not run it.
    let recv = Receiver::start().await;
    let cache = tempfile::tempdir().unwrap();
    let other_cache = tempfile::tempdir().unwrap();
    let (code, _, err) = run_with_cache(
        other_cache.path(),
        &["plugin", "check", plugin("passthrough").to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let planted_from = std::fs::read_dir(other_cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let engine_key = planted_from
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .to_string();
    use sha2::Digest;
    let chat = std::fs::read(plugin("chat-message")).unwrap();
    let target = cache.path().join(format!(
        "{}-{engine_key}.cwasm",
        hex::encode(sha2::Sha256::digest(&chat))
    ));
    std::fs::copy(&planted_from, &target).unwrap();

    let extra = format!("cache_dir = {:?}\n", cache.path().to_str().unwrap());
    let host = Host::start_with(
        &format!(
            "{LOOPBACK}{}",
            client(
                "c",
                &recv.url("/c"),
                "plugin = \"chat-message.wasm\"\n[clients.config]\nchannel = \"#c\""
            )
        ),
        &[("chat-message.wasm", plugin("chat-message"))],
        &extra,
    )
    .await;
    assert!(
        host.log().contains("plugin cache entry is not authentic"),
        "{}",
        host.log()
    );
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/c", 1, WAIT).await;
    assert_eq!(
        got[0].json()["channel"],
        "#c",
        "chat-message rendered it, not the planted code"
    );
    let key = host.dir.path().join("data/plugin-cache.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// `run`, with the command line's compiled-code cache in `cache`.
fn run_with_cache(cache: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("HOOKWASM_CACHE_DIR", cache)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plugin's wall clock reads the event's `received-at` for the whole call, so
/// a rendering is the same in a replay or a dry-run.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_wall_clock_is_the_events_received_at() {
    let recv = Receiver::start().await;
    let host = host_with_client(
        &recv,
        "clock",
        "plugin = \"misbehave.wasm\"\n[clients.config]\ndo = \"clock\"",
        &[("misbehave.wasm", plugin("misbehave"))],
    )
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

/// A plugin whose initial memory is over the client's cap fails as `memory`, not
/// as a trap.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_minimum_over_the_cap_is_a_memory_error() {
    let recv = Receiver::start().await;
    let host = host_with_client(
        &recv,
        "small",
        "plugin = \"chat-message.wasm\"\n[clients.limits]\nmemory = \"1MiB\"",
        &[("chat-message.wasm", plugin("chat-message"))],
    )
    .await;
    assert_eq!(host.post(numbered(1)).await.0, 202);
    let rows = wait_rows(&host, "small", 1, |r| r["state"] == "plugin_error").await;
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("memory:"), "{reason}");
}

/// A file rewritten without pause next to a replaced plugin does not keep the
/// replacement from being loaded: each file has its own debounce.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_file_does_not_starve_another_files_reload() {
    let recv = Receiver::start().await;
    let host = host_with_client(
        &recv,
        "c",
        "plugin = \"chat-message.wasm\"",
        &[("chat-message.wasm", plugin("chat-message"))],
    )
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
    let recv = Receiver::start().await;
    let host = host_with_client(
        &recv,
        "c",
        "plugin = \"chat-message.wasm\"",
        &[("chat-message.wasm", plugin("chat-message"))],
    )
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
    let wait_error = |want: Option<&'static str>| {
        let host = &host;
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let st = host.status().await;
                let e = error(&st);
                let ok = match want {
                    None => e.is_none(),
                    Some(needle) => e.as_deref().is_some_and(|e| e.contains(needle)),
                };
                if ok {
                    return st;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "status error {e:?}, wanted {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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
