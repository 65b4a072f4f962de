//! `hookwasm plugin new`: a ready-to-build plugin project in Rust, Python or
//! JavaScript, with its README, the plugin interface, sample events and the
//! verdicts they are expected to give.
//!
//! The templates live in `plugins/templates/` and are compiled into the binary, as
//! are the WIT and (for Rust) the SDK, so the project builds on its own, far from
//! this repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const WIT: &str = include_str!("../../wit/plugin-0.2.0/plugin.wit");
const SDK: &str = include_str!("../../plugins/sdk/src/lib.rs");
const SDK_MANIFEST: &str = r#"[package]
name = "hookwasm-plugin"
description = "Write hookwasm plugins in Rust"
version = "0.2.0"
edition = "2024"
publish = false

[dependencies]
wit-bindgen = "0.61"
serde = "1"
serde_json = "1"
"#;

const EVENTS: &[(&str, &str)] = &[
    (
        "events/new_feed_entry.json",
        include_str!("../../plugins/templates/events/new_feed_entry.json"),
    ),
    (
        "events/new_feed_entry.expected.json",
        include_str!("../../plugins/templates/events/new_feed_entry.expected.json"),
    ),
    (
        "events/record.created.json",
        include_str!("../../plugins/templates/events/record.created.json"),
    ),
    (
        "events/record.created.expected.json",
        include_str!("../../plugins/templates/events/record.created.expected.json"),
    ),
];

const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../plugins/templates/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../plugins/templates/rust/src/lib.rs"),
    ),
    (
        "README.md",
        include_str!("../../plugins/templates/rust/README.md"),
    ),
];

const PYTHON: &[(&str, &str)] = &[
    (
        "app.py",
        include_str!("../../plugins/templates/python/app.py"),
    ),
    (
        "build.sh",
        include_str!("../../plugins/templates/python/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../plugins/templates/python/README.md"),
    ),
];

const JS: &[(&str, &str)] = &[
    (
        "plugin.js",
        include_str!("../../plugins/templates/js/plugin.js"),
    ),
    (
        "build.mjs",
        include_str!("../../plugins/templates/js/build.mjs"),
    ),
    (
        "package.json",
        include_str!("../../plugins/templates/js/package.json"),
    ),
    (
        "README.md",
        include_str!("../../plugins/templates/js/README.md"),
    ),
];

/// Writes a new plugin project `name` in language `lang` under `parent`; returns
/// its folder.
pub fn new_plugin(name: &str, lang: &str, parent: &Path) -> Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("the plugin name {name:?} must use only lowercase letters, digits and `-`");
    }
    let files = match lang {
        "rust" => RUST,
        "python" => PYTHON,
        "js" | "javascript" => JS,
        other => bail!("--lang {other:?}: choose rust, python or js"),
    };
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists; pick another name or remove it",
            dir.display()
        );
    }
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
    };
    let mut all: Vec<(String, String)> = files
        .iter()
        .chain(EVENTS)
        .map(|(path, text)| (path.to_string(), fill(text)))
        .collect();
    all.push(("wit/plugin-0.2.0/plugin.wit".into(), WIT.to_string()));
    if lang == "rust" {
        // The SDK finds the WIT two folders up in this repository; one up here.
        all.push((
            "hookwasm-plugin/src/lib.rs".into(),
            SDK.replace("../../wit/plugin-0.2.0", "../wit/plugin-0.2.0"),
        ));
        all.push((
            "hookwasm-plugin/Cargo.toml".into(),
            SDK_MANIFEST.to_string(),
        ));
        all.push((".gitignore".into(), "/target\n".into()));
    } else {
        all.push((
            ".gitignore".into(),
            "*.wasm\n.venv/\nnode_modules/\n".into(),
        ));
    }
    for (path, text) in all {
        let target = dir.join(&path);
        std::fs::create_dir_all(target.parent().expect("a file in a folder"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    #[cfg(unix)]
    if lang == "python" {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("build.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}
