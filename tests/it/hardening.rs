use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Under umask 022 the store's folder is 0700 and its files 0600: every event,
/// subscribers' e-mail addresses included, is in them.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_private_to_the_host_user() {
    use std::os::unix::fs::PermissionsExt;
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: the store is no file of the host's");
        return;
    }
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let host = Config::new().start().await;
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    let data = host.dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the store's folder");
    for f in [
        "hookwasm.db",
        "hookwasm.db-wal",
        "hookwasm.db-shm",
        "plugin-cache.key",
    ] {
        let path = data.join(f);
        if f == "plugin-cache.key" {
            // The tests keep the key beside their shared cache instead.
            assert_eq!(mode(&repo().join("target/test-plugin-cache.key")), 0o600);
            continue;
        }
        assert_eq!(mode(&path), 0o600, "{f}");
    }
}

/// The compiled-code cache is native code the host runs: a folder others can
/// write to is refused, and an entry the host did not write is compiled again,
/// never loaded.
#[tokio::test(flavor = "multi_thread")]
async fn the_compiled_code_cache_trusts_nothing_it_did_not_write() {
    use std::os::unix::fs::PermissionsExt;
    // A shared folder is refused, with one line, and left as it was.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = Config::minimal()
        .cache_dir(shared.path())
        .serve_in(dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("writable by other users") && err.trim().lines().count() == 1,
        "{err}"
    );
    let mode = std::fs::metadata(shared.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o777, "not chmod'ed behind the operator's back");

    // Plant, under the name chat-message's entry will have, the compiled code of
    // another plugin with a valid layout: the host must not run it.
    let recv = Receiver::start().await;
    let cache = tempfile::tempdir().unwrap();
    let other_cache = tempfile::tempdir().unwrap();
    let (code, _, err) = run_with(
        &[("HOOKWASM_CACHE_DIR", other_cache.path().to_str().unwrap())],
        &["plugin", "check", plugin("passthrough").to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let planted_from = std::fs::read_dir(other_cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let engine_key = planted_from
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .to_string();
    use sha2::Digest;
    let chat = std::fs::read(plugin("chat-message")).unwrap();
    let target = cache.path().join(format!(
        "{}-{engine_key}.cwasm",
        hex::encode(sha2::Sha256::digest(&chat))
    ));
    std::fs::copy(&planted_from, &target).unwrap();

    let host = Config::new()
        .client(
            Client::to(&recv, "c")
                .plugin("chat-message.wasm")
                .config("channel", "#c"),
        )
        .cache_dir(cache.path())
        .install("chat-message")
        .start()
        .await;
    assert!(
        host.log().contains("plugin cache entry is not authentic"),
        "{}",
        host.log()
    );
    assert_eq!(host.post(fixture("new_feed_entry.json")).await.0, 202);
    let got = recv.wait_for("/c", 1, WAIT).await;
    assert_eq!(
        got[0].json()["channel"],
        "#c",
        "chat-message rendered it, not the planted code"
    );
    // The key is beside the store's file by default, beside the config when
    // the store is in PostgreSQL.
    let key = if on_postgres() {
        host.dir.path().join("plugin-cache.key")
    } else {
        host.dir.path().join("data/plugin-cache.key")
    };
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// What sits in the plugins folder can be anything: a FIFO, a link to a device,
/// a folder, a link loop, a huge file, an empty file, a name with a newline. The
/// host starts and stops without blocking, reports each in its status, and logs
/// names escaped.
#[tokio::test(flavor = "multi_thread")]
async fn special_files_in_the_plugins_folder_are_reported_not_read() {
    let recv = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let fifo = std::ffi::CString::new(plugins.join("fifo.wasm").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink(plugins.join("fifo.wasm"), plugins.join("to-fifo.wasm")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm")).unwrap();
    std::fs::create_dir(plugins.join("folder.wasm")).unwrap();
    std::os::unix::fs::symlink(plugins.join("loop.wasm"), plugins.join("loop.wasm")).unwrap();
    std::fs::write(plugins.join("empty.wasm"), b"").unwrap();
    std::fs::write(plugins.join("huge.wasm"), vec![0u8; 2 << 20]).unwrap();
    std::fs::copy(
        plugin("passthrough"),
        plugins.join("evil\nINFO forged line.wasm"),
    )
    .unwrap();

    let mut host = Config::new()
        .client(Client::to(&recv, "empty").plugin("empty.wasm"))
        .client(Client::to(&recv, "zero").plugin("zero.wasm"))
        .plugins("max_file_size = \"1MiB\"")
        .start_in(dir)
        .await;
    let st = host.status().await;
    let error_of = |file: &str| -> String {
        st["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["file"] == file)
            .and_then(|p| p["error"].as_str())
            .unwrap_or_else(|| panic!("{file} is not in the status: {st}"))
            .to_string()
    };
    assert!(error_of("fifo.wasm").contains("FIFO"), "{st}");
    assert!(error_of("to-fifo.wasm").contains("FIFO"), "{st}");
    assert!(error_of("zero.wasm").contains("device"), "{st}");
    assert!(error_of("folder.wasm").contains("folder"), "{st}");
    assert!(error_of("loop.wasm").contains("cannot be read"), "{st}");
    assert!(error_of("huge.wasm").contains("max_file_size"), "{st}");
    assert!(error_of("empty.wasm").contains("empty"), "{st}");

    // A held client says why: its plugin file is there, but empty.
    assert_eq!(host.post(fixture(CURRENT)).await.0, 202);
    let rows = host.wait_rows("empty", 1, |r| r["state"] == "held").await;
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("empty") && !reason.contains("not in plugins.dir"),
        "{reason}"
    );

    // A newline in a file name cannot forge a log line.
    let log = host.log();
    assert!(log.contains("evil\\nINFO forged line.wasm"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("INFO forged")), "{log}");

    // And a FIFO does not hold the shutdown either.
    assert!(host.sigterm().await.success());
}
