//! Plugin loading under real conditions, each figure beside a baseline taken in
//! the same run, all against a real `hookwasm serve` (release build):
//!
//! 1. hot swap: from the rename of a (cached) plugin file into plugins.dir to the
//!    first delivery rendered by it, against the plain delivery latency of one
//!    event with nothing being swapped;
//! 2. another client's delivery latency while a large (Python, uncached) plugin
//!    compiles in the background, against the same client's latency just before;
//! 3. start-up time with 200 plugins, compiled cold and from the cache, against
//!    start-up with none;
//! 4. peak memory (VmHWM) with 200 plugins loaded, against none.
//!
//! `cargo bench --bench reload` (the Python plugin comes from
//! `scripts/build-plugins python`; without it part 2 is left out).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_plugin(name: &str) -> Vec<u8> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
        .current_dir(repo().join("plugins"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(repo().join(format!(
        "plugins/target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    )))
    .unwrap()
}

#[path = "../tests/it/common/custom_section.rs"]
mod custom_section;

/// The same component under a new content hash: a new plugin version as far as
/// the host and its cache are concerned.
fn variant(wasm: &[u8], tag: &str) -> Vec<u8> {
    custom_section::with_custom_section(wasm, tag)
}

/// Arrival times of deliveries, by path, and bodies.
type Log = Arc<Mutex<Vec<(String, Instant, Vec<u8>)>>>;

async fn receiver() -> (std::net::SocketAddr, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let l = l.clone();
        async move {
            l.lock()
                .unwrap()
                .push((uri.path().to_string(), Instant::now(), body.to_vec()));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, log)
}

struct Host {
    child: Child,
    listen: std::net::SocketAddr,
    dir: PathBuf,
}

impl Host {
    /// Starts a host on `dir` (which holds plugins/ and maybe a cache), returns
    /// it and how long it took to answer /healthz.
    async fn start(dir: &Path, clients: &str) -> (Host, Duration) {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = format!(
            "[server]\nlisten = \"{listen}\"\n[plugins]\ndir = \"plugins\"\ncache_dir = \"cache\"\n[store]\npath = \"hookwasm.db\"\n\
             [delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n{clients}"
        );
        std::fs::write(dir.join("hookwasm.toml"), config).unwrap();
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_hookwasm"))
            .args(["serve", "--config"])
            .arg(dir.join("hookwasm.toml"))
            .env("HOOKWASM_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let health = format!("http://{listen}/healthz");
        loop {
            if let Ok(r) = reqwest::get(&health).await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (
            Host {
                child,
                listen,
                dir: dir.to_path_buf(),
            },
            started.elapsed(),
        )
    }

    fn peak_memory(&self) -> u64 {
        self.memory("VmHWM:")
    }

    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    async fn post(&self, body: &[u8]) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/v1/events", self.listen))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    fn install(&self, name: &str, bytes: &[u8]) {
        let tmp = self.dir.join("plugins").join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.dir.join("plugins").join(name)).unwrap();
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

async fn wait_for(log: &Log, path: &str, n: usize) -> Vec<(Instant, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got: Vec<_> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, ..)| p == path)
            .map(|(_, t, b)| (*t, b.clone()))
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{path}: {} of {n}", got.len());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[tokio::main]
async fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"reload".contains(a.as_str()))
    {
        return;
    }
    let event = std::fs::read(repo().join("tests/fixtures/events/new_feed_entry.json")).unwrap();
    let passthrough = rust_plugin("passthrough");
    let chat = rust_plugin("chat-message");
    let (raddr, log) = receiver().await;

    // 1. Hot swap of cached plugins.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("plugins/p.wasm"), &passthrough).unwrap();
    std::fs::write(dir.path().join("plugins/warm.wasm"), &chat).unwrap(); // puts chat in the cache
    std::fs::write(dir.path().join("plugins/steady.wasm"), &passthrough).unwrap();
    let clients = format!(
        "[[clients]]\nid = \"swap\"\nurl = \"http://{raddr}/swap\"\nplugin = \"p.wasm\"\n\
         [[clients]]\nid = \"steady\"\nurl = \"http://{raddr}/steady\"\nplugin = \"steady.wasm\"\nevents = [\"record.created\"]\n"
    );
    let (host, _) = Host::start(dir.path(), &clients).await;
    let mut plain = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        host.post(&event).await;
        let got = wait_for(&log, "/swap", i + 1).await;
        plain.push(got[i].0 - t);
    }
    let mut swaps = Vec::new();
    let mut count = 20;
    for round in 0..10 {
        let (next, is_chat) = if round % 2 == 0 {
            (&chat, true)
        } else {
            (&passthrough, false)
        };
        let renamed = Instant::now();
        host.install("p.wasm", next);
        // Events keep coming; the first one rendered by the new version ends the clock.
        loop {
            host.post(&event).await;
            count += 1;
            let got = wait_for(&log, "/swap", count).await;
            let body = &got[count - 1].1;
            if body.starts_with(b"{\"text\"") == is_chat {
                swaps.push(got[count - 1].0 - renamed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (plain_p50, swap_p50) = (median(plain), median(swaps));
    println!("reload: hot swap of a cached Rust plugin, rename to first delivery by it (10 swaps)");
    println!(
        "  plain delivery latency p50   {:>9.1} ms",
        plain_p50.as_secs_f64() * 1e3
    );
    println!(
        "  swap to first delivery p50   {:>9.1} ms   ({:.1} x plain)",
        swap_p50.as_secs_f64() * 1e3,
        swap_p50.as_secs_f64() / plain_p50.as_secs_f64()
    );

    // 2. Another client's latency while a large plugin compiles.
    let python = repo().join("plugins/dist/python-chat-message.wasm");
    if python.exists() {
        let record =
            std::fs::read(repo().join("tests/fixtures/events/record.created.json")).unwrap();
        let measure = async |n: usize| {
            let mut lat = Vec::new();
            let base = log
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, ..)| p == "/steady")
                .count();
            for i in 0..n {
                let t = Instant::now();
                host.post(&record).await;
                let got = wait_for(&log, "/steady", base + i + 1).await;
                lat.push(got[base + i].0 - t);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            lat
        };
        let before = measure(200).await;
        let big = variant(
            &std::fs::read(&python).unwrap(),
            &format!("{:?}", Instant::now()),
        );
        host.install("big.wasm", &big);
        let during = measure(200).await; // ~1.5 s of traffic while it compiles
        println!("reload: another client's delivery latency while an 18 MB Python plugin compiles");
        println!(
            "  before  p50 {:>6.2} ms  p99 {:>6.2} ms",
            median(before.clone()).as_secs_f64() * 1e3,
            pct(before.clone(), 0.99).as_secs_f64() * 1e3
        );
        println!(
            "  during  p50 {:>6.2} ms  p99 {:>6.2} ms   (p50 {:.2} x before)",
            median(during.clone()).as_secs_f64() * 1e3,
            pct(during.clone(), 0.99).as_secs_f64() * 1e3,
            median(during).as_secs_f64() / median(before).as_secs_f64()
        );
    } else {
        println!(
            "reload: plugins/dist/python-chat-message.wasm not built (scripts/build-plugins python); part 2 left out"
        );
    }
    host.stop();

    // 3 and 4. Start-up and memory with 200 plugins.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("plugins")).unwrap();
    let (h, none_time) = Host::start(empty.path(), "").await;
    let none_mem = h.peak_memory();
    h.stop();
    let many = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(many.path().join("plugins")).unwrap();
    let mut clients = String::new();
    for i in 0..200 {
        std::fs::write(
            many.path().join(format!("plugins/p{i}.wasm")),
            variant(&passthrough, &i.to_string()),
        )
        .unwrap();
        clients.push_str(&format!(
            "[[clients]]\nid = \"c{i}\"\nurl = \"http://{raddr}/c\"\nplugin = \"p{i}.wasm\"\n"
        ));
    }
    let (h, cold) = Host::start(many.path(), &clients).await;
    h.stop();
    let (h, cached) = Host::start(many.path(), &clients).await;
    let many_mem = h.peak_memory();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let many_rss = h.memory("VmRSS:");
    h.stop();
    println!("reload: start-up (spawn to /healthz)");
    println!(
        "  no plugins                   {:>9.0} ms",
        none_time.as_secs_f64() * 1e3
    );
    println!(
        "  200 plugins, cold            {:>9.0} ms",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "  200 plugins, cached          {:>9.0} ms   ({:.1} x no plugins)",
        cached.as_secs_f64() * 1e3,
        cached.as_secs_f64() / none_time.as_secs_f64()
    );
    println!("reload: peak memory (VmHWM)");
    println!(
        "  no plugins                   {:>9.1} MiB",
        none_mem as f64 / 1048576.0
    );
    println!(
        "  200 plugins loaded           {:>9.1} MiB   (+{:.0} KiB a plugin and its client)",
        many_mem as f64 / 1048576.0,
        (many_mem - none_mem) as f64 / 1024.0 / 200.0
    );
    println!(
        "  resident 2 s later           {:>9.1} MiB",
        many_rss as f64 / 1048576.0
    );
}
