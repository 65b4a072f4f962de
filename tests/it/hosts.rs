//! Several hosts on one PostgreSQL store: they start together, share the
//! work, lose nothing when one is killed, keep a client's order, let a host
//! started later take a share, and serve what one's API changed. Only on
//! PostgreSQL (`HOOKWASM_TEST_PG`): without it, each test says so and passes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(120);

/// Whether to pass at once: several hosts share a store only on PostgreSQL.
fn without_postgres() -> bool {
    if !on_postgres() {
        eprintln!("skipped: several hosts share a store only on PostgreSQL (HOOKWASM_TEST_PG)");
    }
    !on_postgres()
}

/// The config every host of a test is a clone of: one database; a lease (how
/// long a host's claim on work lasts unrenewed) of 2 s, so that a killed
/// host's work goes to the others soon.
fn shared() -> Config {
    Config::new().store("lease = \"2s\"")
}

/// The deliveries `host` made, as its /metrics count them.
async fn delivered(host: &Host) -> f64 {
    host.metric("hookwasm_deliveries_total", &[("state", "delivered")])
        .await
}

/// The Phraseanet `webhookId` of a delivery that arrived whole: the event it
/// carries (no plugin: the event as posted). None for a request cut off by a kill.
fn number(got: &Got) -> Option<u64> {
    let body: Value = serde_json::from_slice(&got.body).ok()?;
    Some(body["webhookId"].as_u64().expect("a numbered event"))
}

/// Three hosts started at once on a fresh database take 600 events posted to
/// all three together, and the busiest is killed with SIGKILL mid-way. Every
/// event a host answered 202 reaches every client; each client gets one
/// delivery per event stored, under one webhook-id, however often it was sent
/// (a kill leaves attempts unrecorded, which are sent again: counted and
/// reported); and a client taking one request at a time gets the events of
/// each sequence of posts in the order they were posted.
#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_lose_nothing_and_keep_order_when_one_is_killed() {
    if without_postgres() {
        return;
    }
    const SEQUENCES: usize = 6;
    const PER_SEQUENCE: usize = 100;
    let recv = Receiver::start().await;
    let config = shared()
        .client(Client::to(&recv, "one").max_in_flight(1))
        .client(Client::to(&recv, "two").max_in_flight(1))
        .client(Client::to(&recv, "many").max_in_flight(8));
    let clients = ["one", "two", "many"];
    // At once on an empty database: the migrations must take turns.
    let (h0, h1, h2) = tokio::join!(
        config.clone().start(),
        config.clone().start(),
        config.clone().start()
    );
    let mut hosts = [h0, h1, h2];

    // Each sequence posts its events one after the other, each once the last
    // was answered, to one host: event `s * 1000 + i` is sequence s's i-th.
    // Events of different sequences have no order between them.
    // Once its host is killed, a new connection waits in the queue of the
    // socket the test keeps: the timeout ends it as a refused one would.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let mut posting = Vec::new();
    for s in 0..SEQUENCES {
        let url = hosts[s % hosts.len()].url("/v1/events");
        let (http, accepted) = (http.clone(), accepted.clone());
        // Whether the sequence was posted to its end.
        posting.push(tokio::spawn(async move {
            for i in 0..PER_SEQUENCE {
                let n = s * 1000 + i;
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(numbered(n))
                    .send()
                    .await;
                let Ok(answer) = answer else {
                    return false; // its host is gone
                };
                assert_eq!(answer.status(), 202, "event {n}");
                accepted.lock().unwrap().insert(n as u64);
            }
            true
        }));
    }
    eventually(WAIT, "200 accepted events")
        .every(Duration::from_millis(5))
        .log(&hosts[0])
        .until(async || {
            let n = accepted.lock().unwrap().len();
            if n >= 200 { Ok(()) } else { Err(n) }
        })
        .await;
    // The host that delivered most so far holds work: it dies mid-flight.
    let mut victim = 0;
    let mut most = -1.0;
    for (i, host) in hosts.iter().enumerate() {
        let made = delivered(host).await;
        if made > most {
            (victim, most) = (i, made);
        }
    }
    hosts[victim].kill9().await;
    for (s, p) in posting.into_iter().enumerate() {
        let finished = p.await.unwrap();
        assert!(
            finished || s % hosts.len() == victim,
            "sequence {s}, to a host that lives, was cut short"
        );
    }
    let accepted = accepted.lock().unwrap().clone();
    let survivors: Vec<&Host> = hosts
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, host)| host)
        .collect();
    let survivor = survivors[0];

    // Every delivery stored, those of events whose answer died with the host
    // included, ends delivered.
    eventually(WAIT, "every stored delivery delivered")
        .every(Duration::from_millis(500))
        .log(survivor)
        .until(async || {
            let mut waiting = Vec::new();
            for c in clients {
                let rows = survivor.deliveries(c);
                let left = rows.iter().filter(|r| r["state"] != "delivered").count();
                if left > 0 {
                    waiting.push(format!("{c}: {left} of {}", rows.len()));
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("not delivered yet: {}", waiting.join(", ")))
            }
        })
        .await;

    let mut sent_again = 0;
    for c in clients {
        let got = recv.got(&format!("/{c}"));
        let rows = survivor.deliveries(c);
        let stored: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        let arrived: HashSet<&str> = got.iter().map(|g| g.header("webhook-id")).collect();
        assert_eq!(
            arrived, stored,
            "{c}: what arrived is the deliveries stored, no others"
        );
        // One event per webhook-id, one webhook-id per event.
        let mut event_of: HashMap<&str, u64> = HashMap::new();
        for g in &got {
            if let Some(n) = number(g) {
                let id = g.header("webhook-id");
                let before = event_of.insert(id, n);
                assert!(
                    before.is_none_or(|m| m == n),
                    "{c}: {id} carried events {before:?} and {n}"
                );
            }
        }
        assert_eq!(
            event_of.len(),
            stored.len(),
            "{c}: every delivery arrived whole"
        );
        let events: HashSet<u64> = event_of.values().copied().collect();
        assert_eq!(events.len(), event_of.len(), "{c}: one delivery per event");
        let mut lost: Vec<u64> = accepted.difference(&events).copied().collect();
        lost.sort_unstable();
        assert!(lost.is_empty(), "{c}: accepted, never delivered: {lost:?}");
        sent_again += got.len() - stored.len();

        // First attempts in the order of each sequence's posts: a client with
        // one request at a time receives them in the order they were made.
        if c == "many" {
            continue;
        }
        let mut seen = HashSet::new();
        let firsts: Vec<u64> = got
            .iter()
            .map(|g| g.header("webhook-id"))
            .filter(|id| seen.insert(*id))
            .map(|id| event_of[id])
            .collect();
        for s in 0..SEQUENCES as u64 {
            let sequence: Vec<u64> = firsts.iter().copied().filter(|n| n / 1000 == s).collect();
            assert!(
                sequence.is_sorted(),
                "{c}: sequence {s} arrived out of order: {sequence:?}"
            );
        }
    }
    let mut shares = Vec::new();
    for host in &survivors {
        shares.push(delivered(host).await);
    }
    eprintln!(
        "{} events accepted; host {victim} killed after {most} deliveries; the others \
         made {shares:?}; {sent_again} requests sent again (attempts the kill left \
         unrecorded, or cut off)",
        accepted.len()
    );
}

/// A host killed with work in hand for a slow client (leased to it as it was
/// ingested) leaves that work to the next holder, which sends it before the
/// events posted to it afterwards: the leases that ran out are ended and
/// claimed in order, not skipped until a sweep ends them.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_hosts_waiting_work_goes_out_before_later_work() {
    if without_postgres() {
        return;
    }
    let recv = Receiver::start().await;
    recv.set_delay("/slow", Duration::from_millis(20));
    let config = shared().client(Client::to(&recv, "slow").max_in_flight(1));
    let mut first = config.clone().start().await;
    for n in 0..20 {
        assert_eq!(first.post(numbered(n)).await.0, 202, "event {n}");
    }
    let second = config.start().await;
    first.kill9().await;
    // Posted one at a time over more than a lease, so that one of them wakes
    // the second host's worker as the killed one's leases run out.
    for n in 100..200 {
        assert_eq!(second.post(numbered(n)).await.0, 202, "event {n}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eventually(WAIT, "every delivery delivered")
        .every(Duration::from_millis(200))
        .log(&second)
        .until(async || {
            let rows = second.deliveries("slow");
            let left = rows.iter().filter(|r| r["state"] != "delivered").count();
            if rows.len() == 120 && left == 0 {
                Ok(())
            } else {
                Err(format!("{left} of {} not delivered", rows.len()))
            }
        })
        .await;
    // First attempts, by the event each one carried (a request the kill cut
    // off carries none and is sent again whole).
    let mut seen = HashSet::new();
    let firsts: Vec<u64> = recv
        .got("/slow")
        .iter()
        .filter(|g| seen.insert(g.header("webhook-id").to_string()))
        .filter_map(number)
        .collect();
    assert!(
        firsts.is_sorted(),
        "the killed host's events first, then the later ones, in order: {firsts:?}"
    );
}

/// A host started while events keep coming takes a share of the work: its own
/// /metrics count deliveries it made. Together the two make each delivery once.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_started_under_load_takes_a_share_of_the_work() {
    if without_postgres() {
        return;
    }
    let recv = Receiver::start().await;
    let clients = ["a", "b", "c", "d"];
    let mut config = shared();
    for c in clients {
        config = config.client(Client::to(&recv, c));
    }
    let first = config.clone().start().await;

    // A steady stream of events, spread over the hosts running as a load
    // balancer would: no client is idle for more than a moment.
    let targets = Arc::new(Mutex::new(vec![first.url("/v1/events")]));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (targets, stop) = (targets.clone(), stop.clone());
        async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = {
                    let targets = targets.lock().unwrap();
                    targets[n % targets.len()].clone()
                };
                let answer = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(numbered(n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 202, "event {n} to {url}");
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        }
    });
    eventually(WAIT, "the first host to deliver")
        .log(&first)
        .until(async || delivered(&first).await > 0.0)
        .await;

    let second = config.clone().start().await;
    targets.lock().unwrap().push(second.url("/v1/events"));
    eventually(WAIT, "the second host to deliver")
        .every(Duration::from_millis(200))
        .log(&second)
        .until(async || delivered(&second).await > 0.0)
        .await;
    stop.store(true, Ordering::Relaxed);
    let posted = load.await.unwrap();

    for c in clients {
        first.wait_state(c, posted, "delivered").await;
        let got: Vec<u64> = recv
            .got(&format!("/{c}"))
            .iter()
            .map(|g| number(g).unwrap())
            .collect();
        let events: HashSet<u64> = got.iter().copied().collect();
        let every: HashSet<u64> = (0..posted as u64).collect();
        assert_eq!(events, every, "{c}: every event");
        assert_eq!(got.len(), posted, "{c}: each once");
    }
    // A host counts a delivery once it is recorded, maybe just after.
    let all = posted * clients.len();
    let made = eventually(WAIT, "each delivery counted once, by the host that made it")
        .log(&second)
        .until(async || {
            let made = (delivered(&first).await, delivered(&second).await);
            if (made.0 + made.1) as usize == all {
                Ok(made)
            } else {
                Err(format!("{made:?}, for {all} deliveries"))
            }
        })
        .await;
    eprintln!(
        "{posted} events to {} clients: the first host made {}, the second {}",
        clients.len(),
        made.0,
        made.1
    );
}

/// A client made through one host's API is served by another: an event posted
/// to the second host reaches it; and the plugin it uploads through the first
/// host renders what the second one delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_change_through_one_hosts_api_reaches_the_others() {
    if without_postgres() {
        return;
    }
    let recv = Receiver::start().await;
    let config = shared();
    let (mut first, second) = tokio::join!(config.clone().start(), config.clone().start());
    let spec = json!({ "config": { "channel": "#made" } });
    let (_, token) = first.api_client("made", &recv.url("/made"), spec).await;

    // The second host fans an event out to the new client once it knows it
    // (within a second): then an event posted to it reaches the client.
    let made = Instant::now();
    let mut n = 0;
    eventually(WAIT, "an event to the second host to reach the client")
        .every(Duration::from_millis(100))
        .log(&second)
        .until(async || {
            assert_eq!(second.post(numbered(n)).await.0, 202);
            n += 1;
            !recv.got("/made").is_empty()
        })
        .await;
    eprintln!(
        "the second host served the new client {:?} after it was made",
        made.elapsed()
    );

    // Nothing of the new client's is left for the first host to render with
    // the upload: from here on, only the second host delivers.
    eventually(WAIT, "the new client's deliveries to be delivered")
        .log(&second)
        .until(async || {
            let rows = second.deliveries("made");
            let left = rows.iter().filter(|r| r["state"] != "delivered").count();
            if left == 0 { Ok(()) } else { Err(left) }
        })
        .await;
    let before = recv.got("/made").len();
    let chat = std::fs::read(plugin("chat-message")).unwrap();
    let (status, up) = first
        .api_bytes("PUT", "/v1/clients/made/plugin", Some(&token), Some(chat))
        .await;
    assert_eq!(status, 201, "{up}");
    let status = first.sigterm().await;
    assert!(status.success(), "{status}\n{}", first.log());
    eventually(WAIT, "the second host to deliver with the upload")
        .every(Duration::from_millis(100))
        .log(&second)
        .until(async || {
            assert_eq!(second.post(numbered(n)).await.0, 202);
            n += 1;
            recv.got("/made")[before..].iter().any(|g| {
                serde_json::from_slice::<Value>(&g.body).is_ok_and(|b| b["channel"] == "#made")
            })
        })
        .await;
}

/// `hookwasm migrate` moves an embedded store into PostgreSQL whole: the
/// history (deliveries, attempts), the work still due (a retry), the clients
/// made through the API with their tokens and secrets. A host on the copy
/// serves all of it, and new events get new seqs after the copied ones.
#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_store_moves_into_postgres_with_its_history_and_its_work() {
    if without_postgres() {
        return;
    }
    let recv = Receiver::start().await;
    recv.set_statuses("/later", &[500]);
    let mut host = Config::new()
        .embedded()
        .client(Client::to(&recv, "up"))
        .client(Client::to(&recv, "later").retry_schedule(&["2s"]))
        .start()
        .await;
    let op = Some(OPERATOR);
    let (status, made) = host
        .api(
            "POST",
            "/v1/admin/clients",
            op,
            Some(json!({ "id": "made", "url": recv.url("/made") })),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let (status, tok) = host
        .api("POST", "/v1/admin/clients/made/tokens", op, None)
        .await;
    assert_eq!(status, 201, "{tok}");
    let token = tok["token"].as_str().unwrap().to_string();
    host.wait_client("made").await;
    for n in 0..5 {
        assert_eq!(host.post(numbered(n)).await.0, 202);
    }
    recv.wait_for("/up", 5, WAIT).await;
    recv.wait_for("/made", 5, WAIT).await;
    host.wait_state("later", 5, "retrying").await;
    let before: Vec<Value> = host.wait_state("up", 5, "delivered").await;
    let status = host.sigterm().await;
    assert!(status.success(), "{status}\n{}", host.log());

    let url = fresh_database();
    let db = host.dir.path().join("data/hookwasm.db");
    let (code, out, err) = run(&["migrate", "--from", db.to_str().unwrap(), "--to", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    for table in ["events", "deliveries", "attempts", "client_tokens"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(table))
            .unwrap_or_else(|| panic!("{table} counted: {out}"));
        assert!(!line.contains("DIFFERS"), "{out}");
    }
    // The copy is analysed: the hosts' first plans have statistics to go by
    // (a table never analysed nor vacuumed counts -1 rows).
    let counted = query(
        &url,
        "SELECT reltuples FROM pg_class WHERE relname = 'deliveries'",
    );
    assert!(counted.parse::<f64>().unwrap() > 0.0, "{counted}");
    // A second copy into the same database is refused: it is not empty.
    let (code, _, err) = run(&["migrate", "--from", db.to_str().unwrap(), "--to", &url]);
    assert_eq!(code, 1);
    assert!(err.contains("empty database"), "{err}");

    // The same host on the copy: the same history, the retry goes on.
    recv.set_statuses("/later", &[200]);
    host.rewrite_config(|c| c.database(&url));
    host.restart().await;
    let database = url.rsplit('/').next().unwrap();
    assert!(host.log().contains(database), "{}", host.log());
    let after: Vec<Value> = host.deliveries("up");
    let ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(after[0]["attempts"], before[0]["attempts"]);
    host.wait_state("later", 5, "delivered").await;
    let (status, mine) = host
        .api("GET", "/v1/clients/made/deliveries", Some(&token), None)
        .await;
    assert_eq!(status, 200, "the copied token is known: {mine}");
    assert_eq!(mine["deliveries"].as_array().unwrap().len(), 5, "{mine}");
    // New events continue after the copied seqs.
    assert_eq!(host.post(numbered(5)).await.0, 202);
    recv.wait_for("/made", 6, WAIT).await;
    let rows = host.deliveries("up");
    assert!(
        rows[0]["seq"].as_i64() > before[0]["seq"].as_i64(),
        "{rows:?}"
    );
}
