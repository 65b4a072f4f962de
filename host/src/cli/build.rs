//! `hookwasm plugin build [DIR]`: builds a plugin project as `plugin new` writes
//! them, with its language's own tools, and prints the path of the `.wasm` on
//! stdout — so that `hookwasm plugin test $(hookwasm plugin build) --events events`
//! works in any language. The tools' output goes to stderr.
//!
//! The language is read from the files: `Cargo.toml` (Rust: cargo for
//! wasm32-wasip2), `app.py` with `build.sh` (Python: the script, which installs
//! componentize-py), `package.json` with `plugin.js` (JavaScript: `npm ci` when
//! the tools are not installed yet, then `npm run build`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Result, anyhow, bail};

const TARGET: &str = "wasm32-wasip2";

/// Builds the project in `dir`; returns the `.wasm` files it made.
pub fn build(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!(
            "{} is not a folder; give a plugin project's folder (or none, for the current one)",
            dir.display()
        );
    }
    let has = |f: &str| dir.join(f).is_file();
    if has("Cargo.toml") {
        build_rust(dir)
    } else if has("app.py") && has("build.sh") {
        newest_wasm(dir, || {
            run(
                Command::new("bash").arg("build.sh").current_dir(dir),
                "bash build.sh",
                "the Python build (build.sh)",
            )
        })
    } else if has("package.json") && has("plugin.js") {
        newest_wasm(dir, || {
            if !dir
                .join("node_modules/@bytecodealliance/componentize-js")
                .is_dir()
            {
                // The lock file pins every tool; `npm ci` installs exactly that.
                let install = if has("package-lock.json") {
                    "ci"
                } else {
                    "install"
                };
                eprintln!("installing the build tools (npm {install}) …");
                run(
                    Command::new("npm")
                        .args([install, "--no-audit", "--no-fund"])
                        .current_dir(dir),
                    "npm",
                    &format!("npm {install}"),
                )?;
            }
            run(
                Command::new("npm").args(["run", "build"]).current_dir(dir),
                "npm",
                "the JavaScript build (npm run build)",
            )
        })
    } else {
        bail!(
            "{} is not a plugin project (no Cargo.toml, app.py with build.sh, or package.json with plugin.js); create one with `hookwasm plugin new NAME --lang rust|python|js`",
            dir.display()
        )
    }
}

/// Runs `cmd` with its stdout on our stderr (our stdout is for the `.wasm`'s path).
fn run(cmd: &mut Command, program: &str, what: &str) -> Result<()> {
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| missing_tool(program, e))?;
    if !status.success() {
        bail!("{what} failed ({status}); its messages are above");
    }
    Ok(())
}

fn missing_tool(program: &str, e: std::io::Error) -> anyhow::Error {
    let install = match program {
        "cargo" | "rustc" | "rustup" => "install Rust from https://rustup.rs",
        "npm" => "install Node.js 18 or later (with npm)",
        _ => "install it, or check your PATH",
    };
    anyhow!("cannot run {program} ({e}); {install}")
}

fn build_rust(dir: &Path) -> Result<Vec<PathBuf>> {
    ensure_target(dir)?;
    let out = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| missing_tool("cargo", e))?;
    if !out.status.success() {
        bail!(
            "cargo build --release --target {TARGET} failed ({}); its messages are above",
            out.status
        );
    }
    // Cargo names what it made in its JSON messages, wherever the target folder
    // is (CARGO_TARGET_DIR, a workspace): no guessing of paths.
    let mut wasm: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .filter(|f| f.extension().is_some_and(|e| e == "wasm"))
        .collect();
    wasm.dedup();
    if wasm.is_empty() {
        bail!(
            "cargo built no .wasm in {}; a plugin crate needs `crate-type = [\"cdylib\"]` under [lib]",
            dir.display()
        );
    }
    Ok(wasm)
}

/// Adds the wasm32-wasip2 target with rustup when the toolchain lacks it: the
/// step every new Rust author forgets once.
fn ensure_target(dir: &Path) -> Result<()> {
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| missing_tool("rustc", e))?;
    let path = String::from_utf8_lossy(&libdir.stdout).trim().to_string();
    if libdir.status.success() && !path.is_empty() && Path::new(&path).is_dir() {
        return Ok(());
    }
    eprintln!("adding the {TARGET} target (rustup target add {TARGET}) …");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(dir)
        .stdout(std::io::stderr())
        .status();
    match added {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "the Rust target {TARGET} is not installed and rustup could not add it; run `rustup target add {TARGET}`"
        ),
    }
}

/// Runs `build` and returns the `.wasm` files in `dir` it wrote: those new or
/// changed since, newest first (the Python and JavaScript builds name their
/// output after the project; the author may have renamed it).
fn newest_wasm(dir: &Path, build: impl FnOnce() -> Result<()>) -> Result<Vec<PathBuf>> {
    let scan = || -> HashMap<PathBuf, SystemTime> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .filter_map(|p| Some((p.clone(), p.metadata().ok()?.modified().ok()?)))
            .collect()
    };
    let before = scan();
    build()?;
    let mut made: Vec<(PathBuf, SystemTime)> = scan()
        .into_iter()
        .filter(|(p, t)| before.get(p) != Some(t))
        .collect();
    made.sort_by_key(|m| std::cmp::Reverse(m.1));
    if made.is_empty() {
        bail!(
            "the build wrote no .wasm in {}; check where build.sh or build.mjs writes it",
            dir.display()
        );
    }
    Ok(made.into_iter().map(|(p, _)| p).collect())
}

/// `path` as the author would type it: relative to the current folder when it is
/// inside it.
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().ok();
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else if let Some(c) = &cwd {
        c.join(path)
    } else {
        path.to_path_buf()
    };
    cwd.and_then(|c| abs.strip_prefix(&c).ok().map(Path::to_path_buf))
        .unwrap_or(abs)
        .display()
        .to_string()
}
