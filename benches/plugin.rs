//! The host's per-event plugin overhead: parse the event, call the plugin in a warm
//! instance under its limits, check the answer — for each example plugin, against
//! a bare call into an instantiated component with its arguments prepared in
//! advance (the same run, the same plugin). Also the call alone on an event
//! parsed once ("per delivery"): the worker's path, which parses each event at
//! ingest and shares it among its clients' deliveries.
//!
//! `cargo bench --bench plugin` (Rust plugins; with `scripts/build-plugins python js`
//! done first, the Python and JavaScript examples too). The summary table at the
//! end gives medians and ratios; criterion's own report is in target/criterion.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use hookwasm::config::PluginLimits;
use hookwasm::event::Event;
use hookwasm::model::new_event_id;
use hookwasm::plugin::{CallContext, Runtime, RuntimeOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_rust_examples() -> PathBuf {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
            .current_dir(repo().join("plugins"))
            .status()
            .unwrap();
    assert!(status.success());
    repo().join("plugins/target/wasm32-wasip2/release")
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let rust = build_rust_examples();
    let mut plugins: Vec<(String, PathBuf)> = [
        "passthrough",
        "chat-message",
        "public-feeds-only",
        "redact-subscribers",
    ]
    .iter()
    .map(|n| {
        (
            n.to_string(),
            rust.join(format!("{}.wasm", n.replace('-', "_"))),
        )
    })
    .collect();
    for foreign in ["python-chat-message", "js-chat-message"] {
        let path = repo().join("plugins/dist").join(format!("{foreign}.wasm"));
        if path.exists() {
            plugins.push((foreign.to_string(), path));
        } else {
            eprintln!("{foreign}: not built (scripts/build-plugins python js), left out");
        }
    }
    // Shared bytes, as the host gets them from the HTTP layer: no copy per event.
    let raw = Bytes::from(
        std::fs::read(repo().join("tests/fixtures/events/new_feed_entry.json")).unwrap(),
    );
    let cache = repo().join("target/bench-plugin-cache");
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache),
        ..RuntimeOptions::default()
    })
    .unwrap();
    let limits = PluginLimits::default();
    let config = vec![("channel".to_string(), "#bench".to_string())];
    let cx = CallContext {
        client_id: "bench",
        delivery_id: "msg_bench",
        config: &config,
        limits: &limits,
    };

    let mut group = c.benchmark_group("plugin");
    group.bench_function("parse-only", |b| {
        b.iter(|| std::hint::black_box(Event::parse("evt_bench".into(), raw.clone()).unwrap()))
    });
    for (name, path) in &plugins {
        let plugin = runtime.load(name, &std::fs::read(path).unwrap()).unwrap();
        let event = Event::parse(new_event_id(), raw.clone()).unwrap();
        let mut bare = runtime.bare_call(&plugin, &event).unwrap();
        group.bench_function(format!("{name}/bare-call"), |b| b.iter(|| bare.call()));
        group.bench_function(format!("{name}/host"), |b| {
            b.iter(|| {
                let event = Event::parse("evt_bench".into(), raw.clone()).unwrap();
                std::hint::black_box(runtime.call(&plugin, &event, &cx).unwrap());
            })
        });
        // What a worker does per delivery: the event was parsed once, at
        // ingest, and is shared by all of its clients' deliveries.
        group.bench_function(format!("{name}/host-call"), |b| {
            b.iter(|| std::hint::black_box(runtime.call(&plugin, &event, &cx).unwrap()))
        });
    }
    group.finish();
    c.final_summary();

    // The summary: medians from criterion's estimates, and the ratio host / bare.
    let median = |id: &str| -> Option<f64> {
        // Where criterion wrote them: CARGO_TARGET_DIR's, if the run had one.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let path = target
            .join("criterion/plugin")
            .join(id)
            .join("new/estimates.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    if let Some(p) = median("parse-only") {
        println!(
            "\nparsing the event alone (part of every host figure): p50 {:.2} µs",
            p / 1000.0
        );
    }
    println!(
        "\n{:<22} {:>12} {:>12} {:>8} {:>15} {:>8}",
        "plugin", "bare p50", "host p50", "ratio", "per delivery", "ratio"
    );
    for (name, _) in &plugins {
        if let (Some(b), Some(h), Some(d)) = (
            median(&format!("{name}_bare-call")),
            median(&format!("{name}_host")),
            median(&format!("{name}_host-call")),
        ) {
            println!(
                "{name:<22} {:>9.2} µs {:>9.2} µs {:>8.2} {:>12.2} µs {:>8.2}",
                b / 1000.0,
                h / 1000.0,
                h / b,
                d / 1000.0,
                d / b
            );
        }
    }
    println!(
        "\n\"host\": parse the event, then the call; \"per delivery\": the call only, on an\n\
         event parsed once at ingest, as a worker makes it for each of the event's clients."
    );
}
