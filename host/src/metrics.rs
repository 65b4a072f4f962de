//! Metrics: recorded where things happen, through the `metrics` facade, and
//! rendered as Prometheus text at `GET /metrics` by `metrics-exporter-prometheus`.
//! Until [`install`] runs (the library's own tests, `plugin test`), recording
//! costs nothing and goes nowhere.
//!
//! Every name starts `hookwasm_`. Labels stay bounded: a client id (the
//! operator's list), an event name (the known ones, else `other`), an outcome.
//! What the store knows (queue depth by state, the oldest pending delivery's
//! age) is read when scraped, not kept twice.
//!
//! What is recorded per event goes through handles kept after their first use
//! ([`Handles`], [`ClientMetrics`]): `counter!` and `histogram!` build, hash and
//! look up their key in the registry on every call, 1.5 % of the host's CPU under
//! load (issue #15, BENCHMARKS.md).

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics::SharedString;
use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds, from 100 µs to a minute: plugin calls, attempts, commits.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide recorder (once); the handle renders the text.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder already installed (a second host in one process)
        // keeps recording; this handle then renders nothing of its own.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text of everything recorded.
pub fn render() -> String {
    install().render()
}

/// Metric handles by the static values of their labels, each made on first
/// use. Before [`install`] nothing is kept: a handle made then would record
/// nowhere for good.
struct Handles<K, T>(RwLock<Vec<(K, T)>>);

impl<K: PartialEq + Copy, T> Handles<K, T> {
    const fn new() -> Self {
        Handles(RwLock::new(Vec::new()))
    }

    /// Runs `use_it` on the handle of `key`, made by `make` the first time.
    /// Shared reads: every ingest records through the same few handles.
    fn with(&self, key: K, make: impl FnOnce() -> T, use_it: impl FnOnce(&T)) {
        if HANDLE.get().is_none() {
            return use_it(&make());
        }
        if let Some((_, h)) = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
        {
            return use_it(h);
        }
        let mut handles = self.0.write().unwrap_or_else(|e| e.into_inner());
        if !handles.iter().any(|(k, _)| *k == key) {
            handles.push((key, make()));
        }
        let (_, h) = handles.iter().find(|(k, _)| *k == key).expect("just made");
        use_it(h)
    }
}

/// One client's metrics, recorded through handles its worker keeps.
pub struct ClientMetrics {
    client: SharedString,
    attempts: Handles<&'static str, Counter>,
    durations: Handles<(), Histogram>,
    deliveries: Handles<&'static str, Counter>,
}

impl ClientMetrics {
    pub fn new(client: &str) -> ClientMetrics {
        ClientMetrics {
            client: SharedString::from(client.to_string()),
            attempts: Handles::new(),
            durations: Handles::new(),
            deliveries: Handles::new(),
        }
    }

    /// An attempt made: how long it took and what it led to (`delivered`,
    /// `retry`, `failed`, `gone`).
    pub fn attempt(&self, outcome: &'static str, took: Duration) {
        let client = &self.client;
        self.attempts.with(
            outcome,
            || counter!("hookwasm_attempts_total", "client" => client.clone(), "outcome" => outcome),
            |c| c.increment(1),
        );
        self.durations.with(
            (),
            || histogram!("hookwasm_attempt_duration_seconds", "client" => client.clone()),
            |h| h.record(took.as_secs_f64()),
        );
    }

    /// A delivery that ended or was parked: `delivered`, `failed`, `skipped`,
    /// `held`, `plugin_error`.
    pub fn delivery(&self, state: &'static str) {
        let client = &self.client;
        self.deliveries.with(
            state,
            || counter!("hookwasm_deliveries_total", "client" => client.clone(), "state" => state),
            |c| c.increment(1),
        );
    }
}

/// An event's name as a label: one of the known ones, `invalid` (not parsed)
/// or `other`.
pub fn event_label(name: &str) -> &'static str {
    crate::event::KNOWN_EVENTS
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or(if name == "invalid" {
            "invalid"
        } else {
            "other"
        })
}

/// An event in: its name's label ([`event_label`]) and the answer (`202`,
/// `400`, …, or `duplicate`).
pub fn event_ingested(name: &'static str, answer: &'static str) {
    static INGESTED: Handles<(&str, &str), Counter> = Handles::new();
    INGESTED.with(
        (name, answer),
        || counter!("hookwasm_events_ingested_total", "event" => name, "status" => answer),
        |c| c.increment(1),
    );
}

/// A status code as a static label.
pub fn status_label(status: u16) -> &'static str {
    match status {
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        408 => "408",
        413 => "413",
        415 => "415",
        503 => "503",
        _ => "other",
    }
}

/// A plugin call: how long, and whether it trapped (or ran out of time or memory).
pub fn plugin_call(took: Duration, trapped: bool) {
    static CALLS: Handles<(), Histogram> = Handles::new();
    CALLS.with(
        (),
        || histogram!("hookwasm_plugin_call_duration_seconds"),
        |h| h.record(took.as_secs_f64()),
    );
    if trapped {
        counter!("hookwasm_plugin_traps_total").increment(1);
    }
}

/// A plugin loaded (`ok`) or refused (`failed`), from the folder or an upload.
pub fn plugin_load(ok: bool) {
    counter!("hookwasm_plugin_loads_total", "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}

/// One commit of the store's writer: how long, and how many writes it carried.
pub fn store_commit(took: Duration, writes: usize) {
    static COMMITS: Handles<(), (Histogram, Counter)> = Handles::new();
    COMMITS.with(
        (),
        || {
            (
                histogram!("hookwasm_store_commit_duration_seconds"),
                counter!("hookwasm_store_writes_total"),
            )
        },
        |(h, c)| {
            h.record(took.as_secs_f64());
            c.increment(writes as u64);
        },
    );
}

/// A reload of the config file, applied or refused.
pub fn config_reload(ok: bool) {
    counter!("hookwasm_config_reloads_total", "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}

/// What the store says, set just before rendering: unfinished deliveries by
/// state, and the age of the oldest pending one (0 without one).
pub fn queue_depth(by_state: &[(String, i64)], oldest_pending_age: Duration) {
    for state in ["pending", "retrying", "held", "plugin_error"] {
        let n = by_state
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        gauge!("hookwasm_queue_depth", "state" => state).set(n as f64);
    }
    gauge!("hookwasm_oldest_pending_age_seconds").set(oldest_pending_age.as_secs_f64());
}
