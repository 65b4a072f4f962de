//! A plugin that misbehaves on request, for the host's tests. Config key `do`:
//!
//! - `error`: answers a plugin error;
//! - `panic`: panics (a trap);
//! - `loop`: never returns;
//! - `alloc`: grows its memory without end;
//! - `recurse`: recurses until the stack overflows;
//! - `big-output`: answers a 100 MB body;
//! - `bad-utf8`: answers a skip reason that is not UTF-8;
//! - `bad-header`: tries to set `webhook-signature` itself;
//! - `many-headers`: answers 1,000 headers;
//! - `log-flood`: logs a million lines (host log and stdout);
//! - `open-file`: tries to read /etc/passwd and lists `/`;
//! - `env`: tries to read the host's environment;
//! - `count`: delivers `{"calls": n}`, n counting calls into this instance;
//! - `long-reason` / `long-error` / `long-header`: a 1 MiB skip reason, error
//!   message or header value;
//! - `look-alike`: sets `webhook_signature`, which CGI, PHP and WSGI read as
//!   `webhook-signature`;
//! - `config`: delivers the client's config entries as `[[key, value], …]`, in
//!   the order the plugin gets them;
//! - `clock`: delivers what its wall clock says, twice (after some work), beside
//!   the event's `received-at`;
//! - `socket`: tries to open a TCP connection;
//! - `sleep`: sleeps for an hour, then skips ("woke up");
//! - `describe`: delivers what the typed view says: payload kind, record id,
//!   user login, delivery id, received-at;
//! - anything else, or no `do`: delivers `{"ok": true, "event": <name>}`.
//!
//! With `only_event = ID`, misbehaves only for that event id (or name) and is good
//! otherwise. With `panic_on = NAME`, panics on events of that name whatever `do` says.

use std::sync::atomic::{AtomicU64, Ordering};

use hookwasm_plugin::{Client, ClientExt, Error, Event, EventExt, Level, Payload, Plugin, Verdict};

struct Misbehave;

static CALLS: AtomicU64 = AtomicU64::new(0);

impl Plugin for Misbehave {
    fn handle(event: Event, client: Client) -> Result<Verdict, Error> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if client.get("panic_on") == Some(event.name.as_str()) {
            panic!("asked to panic on {}", event.name);
        }
        let what = match client.get("only_event") {
            Some(id) if id != event.id && id != event.name => "",
            _ => client.get_or("do", ""),
        };
        match what {
            "error" => Err(Error::Failed("asked to fail".into())),
            "panic" => panic!("asked to panic"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(hookwasm_plugin::skip(format!("{}", recurse(1)))),
            "big-output" => Ok(hookwasm_plugin::deliver(vec![b'x'; 100 << 20], Some("text/plain"))),
            "bad-utf8" => {
                // Forged on purpose: the host must refuse to lift it as a string.
                let bad = unsafe { String::from_utf8_unchecked(vec![0xff, 0xfe, b'x']) };
                Ok(hookwasm_plugin::skip(bad))
            }
            "bad-header" => {
                let mut v = hookwasm_plugin::deliver(b"{}".to_vec(), None);
                if let Verdict::Deliver(d) = &mut v {
                    d.headers.push(("webhook-signature".into(), "v1,forged".into()));
                }
                Ok(v)
            }
            "many-headers" => {
                let mut v = hookwasm_plugin::deliver(b"{}".to_vec(), None);
                if let Verdict::Deliver(d) = &mut v {
                    d.headers = (0..1000).map(|i| (format!("x-h{i}"), "v".into())).collect();
                }
                Ok(v)
            }
            "log-flood" => {
                for i in 0..1_000_000 {
                    hookwasm_plugin::log(Level::Info, &format!("flood {i}"));
                    if i % 1000 == 0 {
                        println!("stdout flood {i}");
                    }
                }
                Ok(hookwasm_plugin::deliver(b"{\"flooded\":true}".to_vec(), None))
            }
            "open-file" => {
                let file = std::fs::read_to_string("/etc/passwd").map(|s| s.len());
                let dir = std::fs::read_dir("/").map(|d| d.count());
                match (file, dir) {
                    (Err(_), Err(_)) => Ok(hookwasm_plugin::skip("no file system, as it should be")),
                    (f, d) => Err(Error::Failed(format!("file system reachable: {f:?} {d:?}"))),
                }
            }
            "env" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                if vars.is_empty() {
                    Ok(hookwasm_plugin::skip("no environment, as it should be"))
                } else {
                    Err(Error::Failed(format!(
                        "environment reachable: {} variables",
                        vars.len()
                    )))
                }
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(hookwasm_plugin::skip("woke up"))
            }
            "socket" => match std::net::TcpStream::connect("127.0.0.1:80") {
                Err(e) => Ok(hookwasm_plugin::skip(format!("no network, as it should be: {e}"))),
                Ok(_) => Err(Error::Failed("network reachable".into())),
            },
            "describe" => {
                let kind = match &event.payload {
                    Payload::NewFeedEntry(_) => "new-feed-entry",
                    Payload::RecordCreated(_) => "record-created",
                    Payload::RecordEdited(_) => "record-edited",
                    Payload::RecordDeleted(_) => "record-deleted",
                    Payload::RecordMediaSubstituted(_) => "record-media-substituted",
                    Payload::RecordCollectionChanged(_) => "record-collection-changed",
                    Payload::RecordStatusChanged(_) => "record-status-changed",
                    Payload::RecordSubdefCreated(_) => "record-subdef-created",
                    Payload::RecordSubdefCreationFailed(_) => "record-subdef-creation-failed",
                    Payload::UserCreated(_) => "user-created",
                    Payload::UserDeleted(_) => "user-deleted",
                    Payload::UserRegistrationGranted(_) => "user-registration-granted",
                    Payload::UserRegistrationRejected(_) => "user-registration-rejected",
                    Payload::OrderCreated(_) => "order-created",
                    Payload::OrderDelivered(_) => "order-delivered",
                    Payload::OrderDenied(_) => "order-denied",
                    Payload::Other => "other",
                };
                let record = event.asset().map_or(-1, |a| a.record_id);
                let login = event.user().map_or("", |u| u.login.as_str());
                let body = format!(
                    "{{\"payload\":\"{kind}\",\"record_id\":{record},\"login\":\"{login}\",\"delivery_id\":\"{}\",\"received_at\":{}}}",
                    client.delivery_id, event.received_at
                );
                Ok(hookwasm_plugin::deliver(body.into_bytes(), None))
            }
            "long-reason" => Ok(hookwasm_plugin::skip("r".repeat(1 << 20))),
            "long-error" => Err(Error::Failed("m".repeat(1 << 20))),
            "long-header" | "look-alike" => {
                let mut v = hookwasm_plugin::deliver(b"{}".to_vec(), None);
                if let Verdict::Deliver(d) = &mut v {
                    d.headers.push(if what == "look-alike" {
                        ("webhook_signature".into(), "v1,forged".into())
                    } else {
                        ("x-big".into(), "v".repeat(1 << 20))
                    });
                }
                Ok(v)
            }
            "clock" => {
                let ms = || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                };
                let first = ms();
                let mut x = 0u64;
                for i in 0..2_000_000u64 {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                let body = format!(
                    "{{\"wall_ms\":{first},\"again_ms\":{},\"received_at\":{},\"work\":{}}}",
                    ms(),
                    event.received_at,
                    x % 2
                );
                Ok(hookwasm_plugin::deliver(body.into_bytes(), None))
            }
            "config" => hookwasm_plugin::deliver_json(&client.config),
            "count" => Ok(hookwasm_plugin::deliver(
                format!("{{\"calls\":{calls}}}").into_bytes(),
                None,
            )),
            _ => {
                let body = format!("{{\"ok\":true,\"event\":\"{}\"}}", event.name);
                Ok(hookwasm_plugin::deliver(body.into_bytes(), None))
            }
        }
    }
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    if n == 0 {
        buf[3]
    } else {
        recurse(n + 1).wrapping_add(buf[7])
    }
}

hookwasm_plugin::export!(Misbehave);
