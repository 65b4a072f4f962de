//! Durable end-to-end throughput: events POSTed to a real `hookwasm serve`
//! (release build, SQLite store with synchronous=FULL, the passthrough plugin)
//! until the receiver has every delivery, against a bare reqwest POST loop to the
//! same receiver with the same concurrency, measured in the same run.
//!
//! `cargo bench --bench throughput` (HOOKWASM_BENCH_EVENTS, HOOKWASM_BENCH_CONCURRENCY
//! change the defaults of 20000 events, 64 at once; HOOKWASM_BENCH_MAX_IN_FLIGHT
//! the client's `delivery.max_in_flight`, as many as at once). The host's CPU per event is
//! printed with its store writer thread's share, which varies far less between
//! runs than the whole.
//!
//! HOOKWASM_BENCH_BATCH=B: the measured events go as back-fills instead,
//! `POST /v1/events:batch` with B events per request (at most 1000),
//! HOOKWASM_BENCH_BATCH_CONCURRENCY (4) requests at once; the baseline stays
//! the bare loop of single POSTs.
//!
//! HOOKWASM_BENCH_FLOOR=1: the same events then go, under the same load, to
//! the floor (benches/floor.rs: the least a durable, signing relay does with
//! hookwasm's crates; build it with `cargo bench --bench floor --no-run`),
//! and its rate and CPU per event are printed beside hookwasm's: what is left
//! above it is hookwasm's own work.
//!
//! Then light load: HOOKWASM_BENCH_LIGHT events (500; 0 skips) POSTed one at a
//! time, each waited for at the receiver: the time from the 202 to the delivery's
//! arrival, against a bare POST's round trip one at a time in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

/// The bench client's signing secret: every delivery is signed (Standard
/// Webhooks), as issue #15's target counts it.
const BENCH_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// CPU time (user + system) a process has used: `/proc/PID/stat`'s utime and
/// stime, in clock ticks.
fn cpu_of(pid: u32) -> Duration {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

/// The CPU time of process `pid`'s threads named `name` (the store's writer:
/// the part of the host's CPU that is the embedded store's own, apart from the
/// HTTP and plugin work around it). Zero when it has none.
fn thread_cpu(pid: u32, name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| stat_cpu(&stat))
        .sum()
}

/// Context switches (voluntary and not) of each of process `pid`'s threads so
/// far, by thread id: each is a thread that slept (or was preempted) and woke
/// again.
fn switches_of(pid: u32) -> std::collections::HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let switches = status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((t.file_name().to_string_lossy().into_owned(), switches))
        })
        .collect()
}

/// The context switches between two readings of [`switches_of`], of the
/// threads in both: a thread that ended between them (a blocking-pool thread
/// let go) took its count along.
fn switches_between(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .filter_map(|(tid, n)| Some(n.saturating_sub(*before.get(tid)?)))
        .sum()
}

/// utime + stime of a /proc stat line.
fn stat_cpu(stat: &str) -> Duration {
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// The CPU time of a PostgreSQL server running on this machine: its
/// postmaster's (with the backends that ended) and its live processes'. None
/// when the server is elsewhere.
fn pg_server_cpu(server: &str) -> Option<Duration> {
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .arg(format!("{server}/postgres"))
        .args(["-X", "-A", "-t", "-c"])
        .arg("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        .output()
        .ok()?;
    let child: u32 = String::from_utf8(out.stdout).ok()?.trim().parse().ok()?;
    let fields = |pid: u32| -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name: ppid is field 4, utime 14 … cstime 17.
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect())
    };
    let postmaster = fields(child)?[1] as u32;
    let pm = fields(postmaster)?;
    let mut ticks = pm[11] + pm[12] + pm[13] + pm[14];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(f) = fields(pid).filter(|f| f[1] == postmaster as u64) {
            ticks += f[11] + f[12];
        }
    }
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// What the receiver saw: how many requests, and when the last one arrived.
#[derive(Default)]
struct Seen {
    count: AtomicUsize,
    /// Requests that came with a `webhook-signature` (the host's deliveries).
    signed: AtomicUsize,
    last: std::sync::Mutex<Option<Instant>>,
    arrived: tokio::sync::Notify,
}

/// A receiver that counts requests and answers 200.
async fn receiver() -> (std::net::SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let c = seen.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let c = c.clone();
            async move {
                std::hint::black_box(body);
                if headers.contains_key("webhook-signature") {
                    c.signed.fetch_add(1, Ordering::SeqCst);
                }
                *c.last.lock().unwrap() = Some(Instant::now());
                c.count.fetch_add(1, Ordering::SeqCst);
                c.arrived.notify_one();
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Light load: `n` POSTs one at a time to `url`, each followed by waiting for
/// the receiver to count one more request. Returns, sorted, the time from the
/// answer to that request's arrival at the receiver (hookwasm's 202 → the
/// delivery; zero when the delivery came first), from the POST to it, and the
/// POST's own round trip.
async fn one_at_a_time(
    url: &str,
    body: &'static [u8],
    n: usize,
    seen: &Seen,
) -> [Vec<Duration>; 3] {
    // Whatever is still arriving from before would be taken for ours.
    let mut last = usize::MAX;
    while seen.count.load(Ordering::SeqCst) != last {
        last = seen.count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = reqwest::Client::new();
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..n {
        let before = seen.count.load(Ordering::SeqCst);
        let sent = Instant::now();
        let r = post_one(&http, url, body).await;
        let answered = Instant::now();
        let _ = r.bytes().await;
        while seen.count.load(Ordering::SeqCst) == before {
            let _ = tokio::time::timeout(Duration::from_millis(50), seen.arrived.notified()).await;
        }
        let arrived = seen.last.lock().unwrap().expect("a request arrived");
        times[0].push(arrived.saturating_duration_since(answered));
        times[1].push(arrived - sent);
        times[2].push(answered - sent);
    }
    assert_eq!(
        seen.count.load(Ordering::SeqCst),
        last + n,
        "one request arrived per POST"
    );
    for t in &mut times {
        t.sort();
    }
    times
}

/// One POST of `body` as JSON, which must succeed.
async fn post_one(http: &reqwest::Client, url: &str, body: &'static [u8]) -> reqwest::Response {
    post_typed(http, url, body, "application/json").await
}

/// One POST of `body` as `content_type`, which must succeed.
async fn post_typed(
    http: &reqwest::Client,
    url: &str,
    body: &'static [u8],
    content_type: &str,
) -> reqwest::Response {
    let r = http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r
}

/// Waits until the receiver has counted `total` requests; returns the time
/// since `start`. Fails after ten minutes: `who` stalled.
async fn until_received(count: &AtomicUsize, total: usize, start: Instant, who: &str) -> Duration {
    while count.load(Ordering::SeqCst) < total {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{who}: deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// The `q` quantile of sorted `times`, in ms.
fn quantile(times: &[Duration], q: f64) -> f64 {
    times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

async fn post_all(url: &str, body: &'static [u8], n: usize, concurrency: usize) -> Duration {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let start = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|_| {
            let http = http.clone();
            async move {
                post_one(&http, url, body).await;
            }
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
    start.elapsed()
}

/// `n` events (rounded down to whole batches) as `n / batch` back-fills of
/// `batch` lines each, `concurrency` requests at once.
async fn post_batches(
    url: &str,
    event: &[u8],
    n: usize,
    batch: usize,
    concurrency: usize,
) -> Duration {
    let line = serde_json::to_string(&serde_json::from_slice::<serde_json::Value>(event).unwrap())
        .unwrap();
    let body: &'static [u8] = (line + "\n").repeat(batch).into_bytes().leak();
    let url = url.replace("/v1/events", "/v1/events:batch");
    let http = reqwest::Client::new();
    let start = Instant::now();
    futures_util::stream::iter(0..n / batch)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                post_typed(&http, &url, body, "application/x-ndjson").await;
            }
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
    start.elapsed()
}

/// A perf recording of process `pid` into `file`: HOOKWASM_BENCH_PERF_ARGS
/// says what to record (by default call graphs from DWARF: release builds
/// keep no frame pointers).
fn perf_record(file: &str, pid: u32) -> std::process::Child {
    let what = std::env::var("HOOKWASM_BENCH_PERF_ARGS")
        .unwrap_or_else(|_| "-F 499 --call-graph dwarf,16384".into());
    Command::new("perf")
        .arg("record")
        .args(what.split_whitespace())
        .args(["-o", file, "-p"])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf (Debian's linux-perf)")
}

/// Ends a recording, its file written whole.
fn perf_stop(mut perf: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
}

/// The floor program (benches/floor.rs), built beside this bench: the newest
/// build there is, which must not be older than its source.
fn floor_exe() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let exe = std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("floor-") && p.extension().is_none()
        })
        .max_by_key(|p| modified(p))
        .expect("no floor built: cargo bench --bench floor --no-run");
    assert!(
        modified(&exe) >= modified(&repo().join("benches/floor.rs")),
        "{} is older than benches/floor.rs: cargo bench --bench floor --no-run",
        exe.display()
    );
    exe
}

/// A child process killed when dropped: a failed run leaves no server behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the floor did with the measured events.
struct Floor {
    rate: f64,
    cpu: Duration,
    writer_cpu: Duration,
    switches: u64,
}

/// The floor (benches/floor.rs) under the same load as hookwasm: `n` events
/// POSTed `concurrency` at once until the receiver has every delivery, signed.
async fn floor_run(
    raddr: std::net::SocketAddr,
    body: &'static [u8],
    n: usize,
    concurrency: usize,
    max_in_flight: usize,
    seen: &Seen,
) -> Floor {
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = Killed(
        Command::new(floor_exe())
            .env(
                "HOOKWASM_FLOOR_SERVE",
                format!(
                    "{listen} http://{raddr}/floor {} {max_in_flight} {BENCH_SECRET}",
                    dir.path().join("floor.db").display()
                ),
            )
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while reqwest::get(format!("http://{listen}/healthz"))
        .await
        .is_err()
    {
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "the floor stopped as it started"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the floor did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://{listen}/v1/events");
    let count = &seen.count;
    let warm = count.load(Ordering::SeqCst) + 2_000;
    post_all(&url, body, 2_000, concurrency).await;
    until_received(count, warm, Instant::now(), "the floor's warm-up").await;
    let (before, signed_before) = (warm, seen.signed.load(Ordering::SeqCst));
    let pid = server.0.id();
    let (cpu_before, writer_before) = (cpu_of(pid), thread_cpu(pid, "store-writer"));
    let switches_before = switches_of(pid);
    let perf = std::env::var("HOOKWASM_BENCH_FLOOR_PERF")
        .ok()
        .map(|file| perf_record(&file, pid));
    let start = Instant::now();
    post_all(&url, body, n, concurrency).await;
    let elapsed = until_received(count, before + n, start, "the floor").await;
    // Read as for the host: the figures first, then the recording stops.
    let floor = Floor {
        rate: n as f64 / elapsed.as_secs_f64(),
        cpu: cpu_of(pid) - cpu_before,
        switches: switches_between(&switches_before, &switches_of(pid)),
        writer_cpu: thread_cpu(pid, "store-writer") - writer_before,
    };
    if let Some(p) = perf {
        perf_stop(p);
    }
    assert_eq!(
        seen.signed.load(Ordering::SeqCst) - signed_before,
        n,
        "every delivery of the floor's measured run is signed"
    );
    floor
}

fn build_passthrough() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--quiet",
            "-p",
            "passthrough",
        ])
        .current_dir(repo().join("plugins"))
        // The plugins have their own workspace and target folder.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap();
    assert!(status.success());
    repo().join("plugins/target/wasm32-wasip2/release/passthrough.wasm")
}

/// This run's database on the PostgreSQL server at `server`.
fn database_name() -> String {
    format!("bench_{}", std::process::id())
}

/// Runs `sql` (one command per item) on the server's `postgres` database.
fn psql(server: &str, sql: &[String]) {
    let mut psql = Command::new("/usr/lib/postgresql/15/bin/psql");
    psql.arg(format!("{server}/postgres")).args(["-X", "-q"]);
    for command in sql {
        psql.args(["-c", command]);
    }
    let status = psql.status().expect("psql (Debian's PostgreSQL 15)");
    assert!(status.success());
}

/// A new database on the PostgreSQL server at `server`; its url.
fn fresh_database(server: &str) -> String {
    let name = database_name();
    psql(
        server,
        &[
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ],
    );
    format!("{server}/{name}")
}

/// Drops this run's database, once no host uses it.
fn drop_database(server: &str) {
    psql(
        server,
        &[format!("DROP DATABASE IF EXISTS {}", database_name())],
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name us means skip.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"throughput".contains(a.as_str()))
    {
        return;
    }
    let n = env_or("HOOKWASM_BENCH_EVENTS", 20_000);
    let concurrency = env_or("HOOKWASM_BENCH_CONCURRENCY", 64);
    // The client's deliveries in flight at once (`delivery.max_in_flight`); by
    // default as many as the events posted at once, 16 being the host's default.
    let max_in_flight = env_or("HOOKWASM_BENCH_MAX_IN_FLIGHT", concurrency);
    let batch = env_or("HOOKWASM_BENCH_BATCH", 0);
    let body: &'static [u8] =
        std::fs::read(repo().join("tests/fixtures/events/new_feed_entry.json"))
            .unwrap()
            .leak();
    let (raddr, seen) = receiver().await;
    let count = &seen.count;
    let light = env_or("HOOKWASM_BENCH_LIGHT", 500);
    // Light load's baseline: the bare POST's round trip, one at a time.
    let bare_light = match light {
        0 => Vec::new(),
        n => {
            let [_, _, round_trip] =
                one_at_a_time(&format!("http://{raddr}/light"), body, n, &seen).await;
            round_trip
        }
    };

    // Baseline: the bare POST loop.
    post_all(&format!("http://{raddr}/warm"), body, 2_000, concurrency).await;
    // This process is both the load client and the receiver: its CPU per
    // request is the price of one HTTP exchange on this machine.
    let own_before = cpu_of(std::process::id());
    let bare = post_all(&format!("http://{raddr}/bare"), body, n, concurrency).await;
    let bare_cpu = cpu_of(std::process::id()) - own_before;
    let bare_rate = n as f64 / bare.as_secs_f64();

    // hookwasm, end to end.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        build_passthrough(),
        dir.path().join("plugins/passthrough.wasm"),
    )
    .unwrap();
    // HOOKWASM_BENCH_RETENTION=1s: retention pruning runs under the load.
    let retention = std::env::var("HOOKWASM_BENCH_RETENTION")
        .map(|r| format!("retention = \"{r}\"\n"))
        .unwrap_or_default();
    // HOOKWASM_BENCH_PG=postgres://…@host:port (a server, as `scripts/pg
    // start` prints it): the store is a fresh database there, and
    // HOOKWASM_BENCH_HOSTS hosts share it, the events spread over them.
    let pg = std::env::var("HOOKWASM_BENCH_PG")
        .ok()
        .filter(|u| !u.is_empty());
    let hosts_n = if pg.is_some() {
        env_or("HOOKWASM_BENCH_HOSTS", 1)
    } else {
        1
    };
    let db = pg.as_deref().map(fresh_database);
    let store = match &db {
        None => "path = \"hookwasm.db\"".to_string(),
        Some(url) => format!("url = \"{url}\""),
    };
    // HOOKWASM_BENCH_BIN=FILE: another build of the host (an older commit's,
    // say), measured by this same bench against its own bare loop.
    let bin = std::env::var("HOOKWASM_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hookwasm").to_string());
    let mut hosts = Vec::new();
    let mut ingests = Vec::new();
    for i in 0..hosts_n {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = format!(
            "[server]\nlisten = \"{listen}\"\nopen_metrics = true\n[plugins]\ndir = \"plugins\"\n[store]\n{store}\n{retention}\
             [delivery]\nallowed_networks = [\"127.0.0.0/8\"]\nmax_in_flight = {max_in_flight}\n\
             [[clients]]\nid = \"bench\"\nurl = \"http://{raddr}/hook\"\nplugin = \"passthrough.wasm\"\n\
             secret = \"{BENCH_SECRET}\"\n"
        );
        let file = dir.path().join(format!("hookwasm-{i}.toml"));
        std::fs::write(&file, config).unwrap();
        hosts.push(
            Command::new(&bin)
                .args(["serve", "--config"])
                .arg(&file)
                .env("HOOKWASM_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let health = format!("http://{listen}/healthz");
        while reqwest::get(&health).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ingests.push(format!("http://{listen}/v1/events"));
    }
    let first = hosts[0].id();
    let ingest = ingests[0].clone();
    post_all(&ingest, body, 2_000, concurrency).await; // warm-up
    let total = 2_000 + light + n + 2_000;
    until_received(count, total, Instant::now(), "hookwasm's warm-up").await;
    // The planner's statistics of the tables after the warm-up, as
    // autovacuum gathers them on a running installation within a minute or
    // so of its first thousands of events: without any, the claims' plans
    // read a client's history where an index of its pending rows would do.
    // HOOKWASM_BENCH_ANALYZE=0: without them, as in a new database's first
    // minute.
    let analyze = std::env::var("HOOKWASM_BENCH_ANALYZE").as_deref() != Ok("0");
    if let Some(db) = db.as_ref().filter(|_| analyze) {
        let status = Command::new("/usr/lib/postgresql/15/bin/psql")
            .arg(db)
            .args(["-X", "-q", "-c", "ANALYZE"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let before = count.load(Ordering::Relaxed);
    let signed_before = seen.signed.load(Ordering::SeqCst);
    // HOOKWASM_BENCH_PERF=FILE: a perf profile of the host over the measured
    // run (HOOKWASM_BENCH_FLOOR_PERF: of the floor's). HOOKWASM_BENCH_PERF_ARGS:
    // what to record instead, such as "-e raw_syscalls:sys_enter" for the
    // system calls.
    let perf = std::env::var("HOOKWASM_BENCH_PERF")
        .ok()
        .map(|file| perf_record(&file, first));
    let ids: Vec<u32> = hosts.iter().map(|h| h.id()).collect();
    let cpu_all = || ids.iter().map(|id| cpu_of(*id)).sum::<Duration>();
    let server_cpu = || pg.as_deref().and_then(pg_server_cpu);
    let server_before = server_cpu();
    let writer_all = || {
        ids.iter()
            .map(|id| thread_cpu(*id, "store-writer"))
            .sum::<Duration>()
    };
    let host_before = cpu_all();
    let switches_all = || ids.iter().map(|id| switches_of(*id)).collect::<Vec<_>>();
    let switches_before = switches_all();
    let writer_before = writer_all();
    let start = Instant::now();
    // The events spread over the hosts, as a load balancer would.
    let (share, batch_conc) = match batch {
        0 => (n / hosts_n, 0),
        b => (
            n / hosts_n / b * b,
            env_or("HOOKWASM_BENCH_BATCH_CONCURRENCY", 4),
        ),
    };
    let posts = ingests.iter().map(|url| async move {
        match batch {
            0 => post_all(url, body, share, concurrency / hosts_n).await,
            b => post_batches(url, body, share, b, batch_conc).await,
        }
    });
    futures_util::future::join_all(posts).await;
    let posted = start.elapsed();
    let n = share * hosts_n;
    let end_to_end = until_received(count, before + n, start, "hookwasm").await;
    assert_eq!(
        seen.signed.load(Ordering::SeqCst) - signed_before,
        n,
        "every delivery of the measured run is signed"
    );
    let host_cpu = cpu_all() - host_before;
    let switches: u64 = switches_before
        .iter()
        .zip(switches_all())
        .map(|(before, after)| switches_between(before, &after))
        .sum();
    let writer_cpu = writer_all() - writer_before;
    let server = server_cpu().zip(server_before).map(|(a, b)| a - b);
    if let Some(p) = perf {
        perf_stop(p);
    }
    // The store's writes per commit on the first host: how well its writer
    // groups the event path's writes (each commit writes its pages once).
    let metrics = reqwest::get(ingest.replace("/v1/events", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let figure = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let commits = figure("hookwasm_store_commit_duration_seconds_count");
    let writes = figure("hookwasm_store_writes_total");
    // Light load, after the throughput run (and after its figures are read).
    let [after_202, after_post, _] = match light {
        0 => Default::default(),
        n => one_at_a_time(&ingest, body, n, &seen).await,
    };
    for host in &mut hosts {
        let _ = Command::new("kill")
            .args(["-TERM", &host.id().to_string()])
            .status();
        let _ = host.wait();
    }
    let rate = n as f64 / end_to_end.as_secs_f64();
    // HOOKWASM_BENCH_FLOOR=1: the floor under the same load, once hookwasm
    // has stopped (single POSTs to one host on SQLite only).
    let floor = match std::env::var("HOOKWASM_BENCH_FLOOR").as_deref() {
        Ok("1") if pg.is_none() && batch == 0 => {
            Some(floor_run(raddr, body, n, concurrency, max_in_flight, &seen).await)
        }
        Ok("1") => {
            println!("(no floor: it is measured for single POSTs on SQLite only)");
            None
        }
        _ => None,
    };

    if batch > 0 {
        println!(
            "(the measured events as back-fills: {batch} per POST /v1/events:batch, {batch_conc} at once; the bare loop as below)"
        );
    }
    match &pg {
        None => println!(
            "throughput: {n} events, {concurrency} at once, passthrough plugin, signed, SQLite synchronous=FULL"
        ),
        Some(_) => println!(
            "throughput: {n} events, {concurrency} at once, passthrough plugin, signed, PostgreSQL (synchronous_commit on), {hosts_n} host(s)"
        ),
    }
    println!("  bare reqwest POST loop      {bare_rate:>10.0} requests/s");
    println!(
        "  hookwasm ingest (202s)      {:>10.0} events/s",
        n as f64 / posted.as_secs_f64()
    );
    println!("  hookwasm end to end         {rate:>10.0} deliveries/s");
    println!("  ratio end to end / bare     {:>10.3}", rate / bare_rate);
    println!(
        "  host CPU per event          {:>10.1} µs (one HTTP exchange, client and receiver: {:.1} µs)",
        host_cpu.as_secs_f64() * 1e6 / n as f64,
        bare_cpu.as_secs_f64() * 1e6 / n as f64
    );
    if !writer_cpu.is_zero() {
        println!(
            "  of which the store writer   {:>10.1} µs per event",
            writer_cpu.as_secs_f64() * 1e6 / n as f64
        );
    }
    println!(
        "  context switches per event  {:>10.2} (the host's threads sleeping or preempted and waking again)",
        switches as f64 / n as f64
    );
    println!(
        "  store writes per commit     {:>10.1} ({writes} writes, {commits} commits, warm-up included, light load not)",
        writes / commits
    );
    if let Some(f) = &floor {
        println!(
            "  floor (benches/floor.rs)    {:>10.0} deliveries/s, ratio {:.3}, CPU per event {:.1} µs (writer {:.1} µs), {:.2} context switches per event; hookwasm / floor: rate {:.3}, CPU {:.2}",
            f.rate,
            f.rate / bare_rate,
            f.cpu.as_secs_f64() * 1e6 / n as f64,
            f.writer_cpu.as_secs_f64() * 1e6 / n as f64,
            f.switches as f64 / n as f64,
            rate / f.rate,
            host_cpu.as_secs_f64() / f.cpu.as_secs_f64(),
        );
    }
    if light > 0 {
        println!(
            "  light load, one at a time   POST -> delivery p50 {:.2} ms, p99 {:.2} ms; 202 -> delivery p50 {:.2} ms, p99 {:.2} ms ({light} events)",
            quantile(&after_post, 0.5),
            quantile(&after_post, 0.99),
            quantile(&after_202, 0.5),
            quantile(&after_202, 0.99),
        );
        println!(
            "                              a bare POST's round trip p50 {:.2} ms, p99 {:.2} ms",
            quantile(&bare_light, 0.5),
            quantile(&bare_light, 0.99),
        );
    }
    if let Some(server) = server {
        println!(
            "  PostgreSQL CPU per event     {:>10.1} µs (the server's processes, on the same cores)",
            server.as_secs_f64() * 1e6 / n as f64
        );
    }
    if let Some(server) = &pg {
        // The hosts have stopped: the run's database goes, so that runs one
        // after another (benches/compare.sh) do not pile up databases.
        drop_database(server);
        return;
    }
    // The store after a clean stop (its WAL checkpointed), per event stored.
    let bytes: u64 = ["hookwasm.db", "hookwasm.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    let events = (n + 2_000 + light) as f64; // the warm-up, the measured ones, light load
    println!(
        "  store size                  {:>10.1} MiB, {:.0} bytes/event, {:.0} MiB per million events{}",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / events,
        bytes as f64 / events * 1e6 / (1 << 20) as f64,
        if retention.is_empty() {
            ""
        } else {
            " (with retention pruning)"
        }
    );
}
