use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn config_mistakes_end_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = || Client::new("a", "http://x.org");
    for (config, needle) in [
        (
            Config::minimal().client(a().key("timout = \"1s\"")),
            "timout",
        ),
        (Config::minimal().delivery("timeout = \"soon\""), "soon"),
        (Config::minimal().toml("[surprise]"), "surprise"),
        (Config::minimal().client(a().secret("nope")), "whsec_"),
    ] {
        let (code, out, err) = config.serve_in(dir.path());
        assert_eq!(code, 1, "{config}: {out} {err}");
        assert!(err.contains(needle), "{config}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"));
    }
    let (code, _, err) = run(&["serve", "--config", "/nonexistent/hookwasm.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the config file /nonexistent/hookwasm.toml"),
        "{err}"
    );

    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, _, err) = Config::minimal().listen(addr).serve_in(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("server.listen"),
        "{err}"
    );
    drop(taken);
}

/// Numbers far out of any sensible range end in one line naming the key, not
/// a panic (exit 101) or a wrapped value.
#[test]
fn absurd_numbers_in_the_config_are_named_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let max = "max_in_flight = 9223372036854775807";
    for (config, key) in [
        (Config::minimal().delivery(max), "max_in_flight"),
        (
            Config::minimal().delivery("retry_schedule = [\"500000000000years\"]"),
            "retry_schedule",
        ),
        (
            Config::minimal().delivery("retry_schedule = [\"5000years\"]"),
            "retry_schedule",
        ),
        (
            Config::minimal().client(Client::new("a", "http://x.org").key(max)),
            "max_in_flight",
        ),
        (
            Config::minimal().toml("[plugins.limits]\nmemory = \"1000GiB\""),
            "memory",
        ),
    ] {
        let (code, _, err) = config.serve_in(dir.path());
        assert_eq!(code, 1, "{config}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{config}: {err}");
        assert!(
            err.contains(key) && !err.contains("panicked"),
            "{config}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_receiver_prints_and_verifies_deliveries() {
    // The receiver binds a free port itself and says which on stderr.
    let mut receiver = Command::new(bin())
        .args(["receive", "--listen", "127.0.0.1:0", "--secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kept open until the receiver exits: it may write more.
    let mut stderr = std::io::BufReader::new(receiver.stderr.take().unwrap());
    let mut said = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the receiver named no address: {said}"
        );
        if let Some(addr) = line
            .trim()
            .strip_prefix("hookwasm receive: listening on http://")
        {
            break addr.to_string();
        }
        said.push_str(&line);
    };
    let host = Config::new()
        .client(
            Client::new("c", &format!("http://{addr}/hook"))
                .plugin("chat-message.wasm")
                .secret(SECRET),
        )
        .install("chat-message")
        .start()
        .await;
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    eventually(WAIT, "the delivery to be delivered")
        .log(&host)
        .until(async || {
            let rows = host.deliveries("c");
            if rows.first().is_some_and(|d| d["state"] == "delivered") {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        })
        .await;
    // SAFETY: kill only sends a signal, to our own child.
    assert_eq!(
        unsafe { libc::kill(receiver.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = receiver.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("── POST /hook"), "{text}");
    assert!(text.contains("signature: verified"), "{text}");
    assert!(
        text.contains("\"text\": \"New in Cannes Festival"),
        "pretty body: {text}"
    );
    drop(stderr);
}
