//! Plugin authors' tools: `plugin test` (one event, or a folder against expected
//! verdicts), `plugin check`. `plugin new` and `plugin build` are in
//! [`super::scaffold`] and [`super::build`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hookwasm::config::PluginLimits;
use hookwasm::event::Event;
use hookwasm::model::new_event_id;
use hookwasm::plugin::{CallContext, Runtime, RuntimeOptions, Verdict};

/// The runtime for `plugin test` and `plugin check`: compiled code is cached
/// under `$HOOKWASM_CACHE_DIR`, else `$XDG_CACHE_HOME/hookwasm/plugins`, else
/// `~/.cache/hookwasm/plugins`, so trying a large Python plugin again is quick.
fn cli_runtime_options() -> RuntimeOptions {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    let cache_dir = env("HOOKWASM_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("hookwasm/plugins")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/hookwasm/plugins")));
    RuntimeOptions {
        cache_dir,
        ..RuntimeOptions::default()
    }
}

fn read_plugin(path: &Path) -> Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the plugin {}", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plugin.wasm")
        .to_string();
    Ok((name, bytes))
}

pub async fn plugin_test(
    plugin: &Path,
    event: &Path,
    config: &[String],
    client: &str,
) -> Result<ExitCode> {
    let (name, bytes) = read_plugin(plugin)?;
    let raw = std::fs::read(event)
        .with_context(|| format!("cannot read the event {}", event.display()))?;
    let event = Event::parse(new_event_id(), Bytes::from(raw))
        .map_err(|e| anyhow!("{} is not an event: {e}", event.display()))?;
    let kv = parse_config_args(config)?;
    let client = client.to_string();
    let verdict = tokio::task::spawn_blocking(move || {
        with_plugin(&name, &bytes, &client, &kv, |runtime, plugin, cx| {
            runtime
                .call(plugin, &event, cx)
                .map_err(|e| (plugin.file.clone(), plugin.hash.clone(), e))
        })
    })
    .await??;
    match verdict {
        Ok(v) => {
            println!("{}", verdict_json(&v));
            Ok(ExitCode::SUCCESS)
        }
        Err((file, hash, e)) => {
            eprintln!("hookwasm: {file}@{hash}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The verdict as `plugin test` prints it, keys in the contract's order. A body
/// that is UTF-8 is a string; any other body is given as `body_base64`.
pub fn verdict_json(v: &Verdict) -> String {
    #[derive(serde::Serialize)]
    struct Deliver<'a> {
        verdict: &'static str,
        content_type: &'a str,
        headers: &'a [(String, String)],
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        body_base64: Option<String>,
    }
    #[derive(serde::Serialize)]
    struct Skip<'a> {
        verdict: &'static str,
        reason: &'a str,
    }
    let value = match v {
        Verdict::Deliver(r) => {
            use base64::Engine as _;
            let text = std::str::from_utf8(&r.body).ok();
            serde_json::to_string(&Deliver {
                verdict: "deliver",
                content_type: r.content_type.as_deref().unwrap_or("application/json"),
                headers: &r.headers,
                body: text,
                body_base64: text
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&r.body)),
            })
        }
        Verdict::Skip(reason) => serde_json::to_string(&Skip {
            verdict: "skip",
            reason,
        }),
    };
    value.expect("plain data serialises")
}

/// `plugin test --events DIR`: every `NAME.json` in `dir` against its
/// `NAME.expected.json`, a line each, then `N passed, M failed`.
pub async fn plugin_test_folder(
    plugin: &Path,
    dir: &Path,
    config: &[String],
    client: &str,
    update: bool,
) -> Result<ExitCode> {
    let (name, bytes) = read_plugin(plugin)?;
    let kv = parse_config_args(config)?;
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder of events {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let file = p.file_name()?.to_str()?.to_string();
            let stem = file.strip_suffix(".json")?;
            (!stem.ends_with(".expected")).then(|| (stem.to_string(), p))
        })
        .collect();
    cases.sort();
    if cases.is_empty() {
        bail!("no events (NAME.json) in {}", dir.display());
    }
    let client = client.to_string();
    let inputs: Vec<(String, PathBuf)> = cases.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        with_plugin(&name, &bytes, &client, &kv, |runtime, plugin, cx| {
            inputs
                .iter()
                .map(|(_, path)| {
                    let raw = match std::fs::read(path) {
                        Ok(r) => r,
                        Err(e) => return error_json(&format!("cannot read the event: {e}")),
                    };
                    match Event::parse(new_event_id(), Bytes::from(raw)) {
                        Err(e) => error_json(&format!("not an event: {e}")),
                        Ok(event) => match runtime.call(plugin, &event, cx) {
                            Ok(v) => verdict_json(&v),
                            Err(e) => error_json(&format!("{}: {e}", e.kind())),
                        },
                    }
                })
                .collect::<Vec<String>>()
        })
    })
    .await??;

    let (mut passed, mut failed) = (0, 0);
    for ((stem, _), actual) in cases.iter().zip(outputs) {
        let expected_path = dir.join(format!("{stem}.expected.json"));
        if update {
            std::fs::write(&expected_path, format!("{actual}\n"))
                .with_context(|| format!("cannot write {}", expected_path.display()))?;
            println!("recorded {stem}");
            passed += 1;
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if same_verdict(&expected, &actual) => {
                println!("ok       {stem}");
                passed += 1;
            }
            Ok(expected) => {
                println!(
                    "FAILED   {stem}\n  expected: {}\n  got:      {actual}",
                    expected.trim()
                );
                failed += 1;
            }
            Err(_) => {
                println!(
                    "FAILED   {stem}: no {stem}.expected.json (record it with --update)\n  got:      {actual}"
                );
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Loads `bytes` as a plugin in a fresh runtime and runs `f` with a test client's
/// context. Blocking: call it on the blocking pool.
fn with_plugin<T>(
    name: &str,
    bytes: &[u8],
    client: &str,
    config: &[(String, String)],
    f: impl FnOnce(&Runtime, &hookwasm::plugin::Plugin, &CallContext<'_>) -> T,
) -> Result<T> {
    let runtime = Runtime::new(cli_runtime_options())?;
    let plugin = load_saying_so(&runtime, name, bytes).map_err(|e| anyhow!("{name}: {e}"))?;
    let limits = PluginLimits::default();
    let cx = CallContext {
        client_id: client,
        delivery_id: "msg_plugin_test",
        config,
        limits: &limits,
    };
    Ok(f(&runtime, &plugin, &cx))
}

/// An error as `plugin test --events` records it: `verdict` first, as in every
/// verdict line (`json!` would sort the keys and put `reason` first).
fn error_json(reason: &str) -> String {
    #[derive(serde::Serialize)]
    struct Error<'a> {
        verdict: &'static str,
        reason: &'a str,
    }
    serde_json::to_string(&Error {
        verdict: "error",
        reason,
    })
    .expect("plain data")
}

/// Whether a recorded expectation says the same as the verdict line `actual`:
/// the same JSON, whatever the key order or spacing of the hand-written file.
fn same_verdict(expected: &str, actual: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(expected),
        serde_json::from_str::<serde_json::Value>(actual),
    ) {
        (Ok(e), Ok(a)) => e == a,
        _ => expected.trim() == actual.trim(),
    }
}

fn parse_config_args(config: &[String]) -> Result<Vec<(String, String)>> {
    config
        .iter()
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--config {entry:?} is not KEY=VALUE"))
        })
        .collect()
}

pub async fn plugin_check(plugin: &Path) -> Result<ExitCode> {
    let (name, bytes) = read_plugin(plugin)?;
    let outcome = tokio::task::spawn_blocking(move || -> Result<_> {
        let runtime = Runtime::new(cli_runtime_options())?;
        let sdk = sdk_version(&bytes);
        Ok(load_saying_so(&runtime, &name, &bytes)
            .map(|p| (p, sdk))
            .map_err(|e| format!("{name}: {e}")))
    })
    .await??;
    let (p, sdk) = outcome.map_err(|e| anyhow!(e))?;
    println!(
        "{}: ok, a hookwasm plugin for world hookwasm:plugin/plugin@{} (version {})",
        p.file,
        p.world.as_str(),
        p.hash
    );
    if let Some(version) = sdk {
        let current = super::scaffold::sdk_version();
        if older(&version, current) {
            println!(
                "sdk: hookwasm-plugin {version}, older than this hookwasm's {current}; \
                 bring the project's copy up to date with `hookwasm plugin update-sdk DIR` and rebuild"
            );
        } else {
            println!("sdk: hookwasm-plugin {version}");
        }
    }
    println!("imports:");
    for i in &p.imports {
        println!("  {i}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The version of the Rust SDK a plugin was built with: the SDK's `export!`
/// writes it into a custom section `hookwasm-plugin-sdk`. A byte search is
/// enough (the section's name, preceded by its length, then the version's
/// digits and dots); plugins built otherwise have none.
fn sdk_version(wasm: &[u8]) -> Option<String> {
    const NAME: &[u8] = b"\x13hookwasm-plugin-sdk";
    let at = wasm.windows(NAME.len()).position(|w| w == NAME)? + NAME.len();
    let version: String = wasm[at..]
        .iter()
        .take(32)
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|&b| b as char)
        .collect();
    (!version.is_empty()).then_some(version)
}

/// Whether version `a` is older than `b` (dotted numbers).
fn older(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

/// Loads a plugin, saying "compiling …" on stderr first: a Python or JavaScript
/// component takes tens of seconds to compile the first time, and silence that
/// long looks like a hang. On a terminal it is a spinner, cleared when done; to
/// a file or a pipe, one plain line. (Later runs hit the compiled-code cache.)
fn load_saying_so(
    runtime: &Runtime,
    name: &str,
    bytes: &[u8],
) -> Result<hookwasm::plugin::Plugin, hookwasm::plugin::LoadError> {
    use std::io::IsTerminal;
    if !bytes.starts_with(b"\0asm") {
        // Not WebAssembly at all: the load says so at once, nothing to wait for.
        return runtime.load(name, bytes);
    }
    let started = std::time::Instant::now();
    let spinner = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("compiling {name} …"));
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    });
    if spinner.is_none() {
        eprintln!("compiling {name} …");
    }
    let loaded = runtime.load(name, bytes);
    if let Some(bar) = spinner {
        bar.finish_and_clear();
        let took = started.elapsed();
        if took > std::time::Duration::from_secs(1) {
            eprintln!("compiled {name} in {:.1} s", took.as_secs_f64());
        }
    }
    loaded
}
