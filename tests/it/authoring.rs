use serde_json::json;

use crate::common::*;

#[test]
fn plugin_test_prints_the_verdict() {
    let chat = plugin("chat-message");
    let (code, out, err) = plugin_test(
        &chat,
        &fixture_path(CURRENT),
        &["--config", "channel=#news"],
    );
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
    let (code, out, _) = plugin_test(&public, &fixture_path(DOCUMENTED), &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"verdict": "skip", "reason": "feed \"Cannes Festival\" is not public"})
    );

    let (code, out, _) = plugin_test(
        &public,
        &fixture_path(CURRENT),
        &["--config", "exclude_titles=Internal*, cannes*"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("matches exclude_titles pattern"), "{out}");

    let redact = plugin("redact-subscribers");
    let (code, out, _) = plugin_test(
        &redact,
        &fixture_path(CURRENT),
        &["--config", "mode=remove"],
    );
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
    let (code, out, err) = plugin_test(
        &misbehave,
        &fixture_path(CURRENT),
        &["--config", "do=error"],
    );
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
        let (code, out, err) = plugin_test(&wasm, &event, &["--client", client]);
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
        fixture_path("new_feed_entry.json"),
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
    let event = fixture_path("new_feed_entry.json");
    let (code, _, err) = plugin_test(&chat, &event, &[]);
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
