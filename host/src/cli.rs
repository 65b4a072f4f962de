//! What each command does, on top of the library. Errors are `anyhow` here and
//! become one line in `main`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hookwasm::config::{Config, PluginLimits, Secret};
use hookwasm::event::{Event, new_event_id};
use hookwasm::plugin::{CallContext, Runtime, RuntimeOptions, Verdict};
use hookwasm::store::{Store, inspect::Inspector, now_ms};

pub fn init_logging(plugin_command: bool) {
    use tracing_subscriber::EnvFilter;
    // `plugin test` shows the guest's own log lines; the host's are noise there.
    let default = if plugin_command {
        "warn,plugin=trace"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("HOOKWASM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// An error chain on one line: `context: cause: cause`.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

pub async fn serve(
    config_path: &Path,
    inherited: Option<std::net::TcpListener>,
) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let listener = match inherited {
        Some(l) => tokio::net::TcpListener::from_std(l)
            .map_err(|e| anyhow!("the socket handed over (LISTEN_FDS) cannot be used: {e}"))?,
        None => tokio::net::TcpListener::bind(config.server.listen).await.map_err(|e| {
            anyhow!(
                "cannot listen on {} ({e}); is another hookwasm running there? change server.listen in {}",
                config.server.listen,
                config_path.display()
            )
        })?,
    };
    hookwasm::serve(config, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The listening socket handed over by systemd's socket activation (or a test
/// harness): `LISTEN_FDS=1` and the socket on descriptor 3. `LISTEN_PID`, when
/// set, must be this process. `server.listen` is then not bound: the socket is
/// open before the host starts, so no one can take the port in between. Call it
/// before any thread starts: it clears those variables.
pub fn inherited_listener() -> Result<Option<std::net::TcpListener>> {
    use std::os::fd::FromRawFd;
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    // SAFETY: called from `main` before the runtime starts: no other thread.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
    }
    let Some(fds) = fds else { return Ok(None) };
    if pid.is_some_and(|p| p.trim() != std::process::id().to_string()) {
        return Ok(None);
    }
    if fds.trim() != "1" {
        bail!("LISTEN_FDS={fds}: the host takes exactly one listening socket (descriptor 3)");
    }
    // SAFETY: by the socket-activation protocol descriptor 3 is ours, open, and
    // nothing else in this process owns it.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    std_listener
        .set_nonblocking(true)
        .and(std_listener.local_addr())
        .map(|_| Some(std_listener))
        .map_err(|e| anyhow!("LISTEN_FDS=1, but descriptor 3 is not a listening TCP socket ({e})"))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

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
        let current = crate::scaffold::sdk_version();
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

pub async fn receive(listen: &str, secret: Option<&str>, status: u16) -> Result<ExitCode> {
    let secret = secret
        .map(Secret::parse)
        .transpose()
        .map_err(|e| anyhow!("--secret: {e}"))?;
    let status = axum::http::StatusCode::from_u16(status)
        .map_err(|_| anyhow!("--status {status} is not an HTTP status"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {listen} ({e}); pick another --listen address"))?;
    eprintln!(
        "hookwasm receive: listening on http://{}",
        listener.local_addr()?
    );
    let secret = Arc::new(secret);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let secret = secret.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 << 20)
                .await
                .unwrap_or_default();
            print_delivery(&parts, &body, secret.as_ref().as_ref());
            status
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn print_delivery(parts: &axum::http::request::Parts, body: &[u8], secret: Option<&Secret>) {
    use std::io::Write;
    let mut out = String::new();
    out.push_str(&format!("── {} {}\n", parts.method, parts.uri));
    for (k, v) in &parts.headers {
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    match (
        secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) {
        (None, ..) => {}
        (Some(s), Some(id), Some(ts), Some(sig)) => {
            let ts_num: i64 = ts.parse().unwrap_or(0);
            let age = (now_ms() / 1000 - ts_num).abs();
            let ok = hookwasm::deliver::sign::verify(s, id, ts_num, body, sig);
            out.push_str(&match (ok, age <= 300) {
                (true, true) => "signature: verified\n".to_string(),
                (true, false) => format!(
                    "signature: valid but the timestamp is {age}s off (receivers allow 300s)\n"
                ),
                (false, _) => "signature: DOES NOT VERIFY with the given secret\n".to_string(),
            });
        }
        (Some(_), _, _, None) => {
            out.push_str("signature: none (this delivery was sent unsigned)\n")
        }
        (Some(_), ..) => out.push_str(
            "signature: MALFORMED (webhook-signature without webhook-id or webhook-timestamp)\n",
        ),
    }
    out.push('\n');
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => out.push_str(&String::from_utf8_lossy(body)),
    }
    out.push_str("\n\n");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

pub fn deliveries(
    config: &Path,
    client: Option<&str>,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode> {
    let config = Config::load(config)?;
    if let Some(c) = client
        && config.client(c).is_none()
    {
        bail!("no client {c:?} in the config");
    }
    if let Some(s) = state
        && hookwasm::store::State::parse(s).is_none()
    {
        bail!(
            "--state {s:?} is not one of pending, held, plugin_error, retrying, delivered, skipped, failed"
        );
    }
    let rows = Inspector::open(&config.store.path)?.deliveries(client, state, limit)?;
    for d in &rows {
        if json {
            println!("{}", serde_json::to_string(d)?);
            continue;
        }
        println!(
            "{}  {:<14} {:<16} {:<13} {}  {}",
            d.id,
            d.client_id,
            d.event,
            d.state,
            format_ms(d.created_at),
            d.reason.as_deref().unwrap_or("")
        );
        if let Some(p) = &d.plugin {
            println!("    plugin {p}");
        }
        for a in &d.attempts {
            let what = match (a.status, &a.error_kind) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(k)) => format!("{k}: {}", a.error.as_deref().unwrap_or("")),
                _ => "?".into(),
            };
            println!(
                "    attempt {} at {} took {} ms: {what}",
                a.n,
                format_ms(a.started_at),
                a.duration_ms
            );
        }
        if let (Some(at), "retrying") = (d.next_attempt_at, d.state.as_str()) {
            println!("    next attempt at {}", format_ms(at));
        }
    }
    if rows.is_empty() && !json {
        eprintln!("no deliveries");
    }
    Ok(ExitCode::SUCCESS)
}

fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn replay(
    config: &Path,
    delivery: Option<&str>,
    client: Option<&str>,
    since: Option<&str>,
) -> Result<ExitCode> {
    let config = Config::load(config)?;
    if delivery.is_none() && client.is_none() {
        bail!("say what to replay: --delivery msg_… or --client ID --since TIME");
    }
    if let Some(c) = client
        && config.client(c).is_none()
    {
        bail!("no client {c:?} in the config");
    }
    let since_ms = since.map(parse_since).transpose()?;
    let seqs = Inspector::open(&config.store.path)?.select(delivery, client, since_ms)?;
    if seqs.is_empty() {
        bail!("no delivery matches");
    }
    let store = Store::open(&config.store.path)?;
    let n = store.replay(seqs).await.map_err(|e| anyhow!(e))?;
    println!("{n} deliveries will be sent again by the running host");
    Ok(ExitCode::SUCCESS)
}

/// RFC 3339, or a duration meaning that long ago.
fn parse_since(s: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64);
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        anyhow!("--since {s:?} is neither a time (2026-05-24T21:00:00Z) nor a duration (2h)")
    })?;
    Ok(now_ms() - ago.as_millis() as i64)
}

/// Posts each line of `file` to the running host, a few at a time, with a bar.
pub async fn ingest(config: &Path, file: &Path) -> Result<ExitCode> {
    use futures_util::StreamExt;
    let config = Config::load(config)?;
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let lines: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect();
    let addr = config.server.listen;
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let url = format!("http://{host}/v1/events");
    let http = reqwest::Client::new();
    let bar = indicatif::ProgressBar::new(lines.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let token = config.server.ingest_token.clone();
    let results: Vec<(usize, Result<(), String>)> = futures_util::stream::iter(lines)
        .map(|(n, line)| {
            let (http, url, token, bar) = (http.clone(), url.clone(), token.clone(), bar.clone());
            async move {
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(line);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let r = match req.send().await {
                    Ok(resp) if resp.status().as_u16() == 202 => Ok(()),
                    Ok(resp) => {
                        let status = resp.status();
                        Err(format!(
                            "{status}: {}",
                            resp.text().await.unwrap_or_default().trim()
                        ))
                    }
                    Err(e) if e.is_connect() => Err(format!(
                        "no host answers at {url}; start it with `hookwasm serve`"
                    )),
                    Err(e) => Err(e.to_string()),
                };
                bar.inc(1);
                (n, r)
            }
        })
        .buffered(16)
        .collect()
        .await;
    bar.finish();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    for (n, r) in failed.iter().take(20) {
        eprintln!("line {n}: {}", r.as_ref().unwrap_err());
    }
    println!(
        "{} events accepted, {} refused",
        results.len() - failed.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn clients_list(config: &Path) -> Result<ExitCode> {
    let config = Config::load(config)?;
    let ids: Vec<String> = config.clients.iter().map(|c| c.id.clone()).collect();
    for c in Inspector::open(&config.store.path)?.clients(&ids)? {
        let health = match (&c.disabled_reason, c.failing_since) {
            (Some(r), _) => format!("DISABLED: {r}"),
            (None, Some(t)) => format!("failing since {}", format_ms(t)),
            (None, None) => "ok".into(),
        };
        let counts: Vec<String> = c.counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!("{:<16} {health}   {}", c.client_id, counts.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn clients_enable(config: &Path, id: &str) -> Result<ExitCode> {
    let config = Config::load(config)?;
    if config.client(id).is_none() {
        bail!("no client {id:?} in the config");
    }
    let store = Store::open(&config.store.path)?;
    store.set_client(id, None, None);
    store.flush().await;
    println!("client {id} enabled; the running host resumes its deliveries within seconds");
    Ok(ExitCode::SUCCESS)
}
