//! `hookwasm plugin new`: a ready-to-build plugin project in Rust, Python or
//! JavaScript, with its README, the plugin interface, sample events and the
//! verdicts they are expected to give; and `hookwasm plugin update-sdk`, which
//! brings a Rust project's copy of the SDK up to this hookwasm's.
//!
//! The templates live in `plugins/templates/` and are compiled into the binary, as
//! are the WIT and (for Rust) the SDK crate exactly as it is in `plugins/sdk/`, so
//! the project builds on its own, far from this repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const WIT: &str = include_str!("../../../wit/plugin-0.2.0/plugin.wit");

/// The SDK crate, file by file, as `plugin new` and `plugin update-sdk` write it
/// under `hookwasm-plugin/`. Its WIT is its own copy, byte for byte `WIT`.
const SDK: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "wit/plugin.wit",
        include_str!("../../../plugins/sdk/wit/plugin.wit"),
    ),
];

/// The folder of a Rust project that holds its copy of the SDK.
const SDK_DIR: &str = "hookwasm-plugin";

const EVENTS: &[(&str, &str)] = &[
    (
        "events/new_feed_entry.json",
        include_str!("../../../plugins/templates/events/new_feed_entry.json"),
    ),
    (
        "events/new_feed_entry.expected.json",
        include_str!("../../../plugins/templates/events/new_feed_entry.expected.json"),
    ),
    (
        "events/record.created.json",
        include_str!("../../../plugins/templates/events/record.created.json"),
    ),
    (
        "events/record.created.expected.json",
        include_str!("../../../plugins/templates/events/record.created.expected.json"),
    ),
];

// The `.gitignore` files are `gitignore` in the templates, so that they do not
// apply to the templates' own folders in this repository.
const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/templates/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/templates/rust/src/lib.rs"),
    ),
    (
        "README.md",
        include_str!("../../../plugins/templates/rust/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugins/templates/rust/gitignore"),
    ),
];

const PYTHON: &[(&str, &str)] = &[
    (
        "app.py",
        include_str!("../../../plugins/templates/python/app.py"),
    ),
    (
        "build.sh",
        include_str!("../../../plugins/templates/python/build.sh"),
    ),
    (
        "README.md",
        include_str!("../../../plugins/templates/python/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugins/templates/python/gitignore"),
    ),
];

const JS: &[(&str, &str)] = &[
    (
        "plugin.js",
        include_str!("../../../plugins/templates/js/plugin.js"),
    ),
    (
        "build.mjs",
        include_str!("../../../plugins/templates/js/build.mjs"),
    ),
    (
        "package.json",
        include_str!("../../../plugins/templates/js/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../plugins/templates/js/package-lock.json"),
    ),
    (
        "README.md",
        include_str!("../../../plugins/templates/js/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../plugins/templates/js/gitignore"),
    ),
];

/// The version of the Rust SDK this hookwasm writes: `version` in the SDK's
/// `Cargo.toml`.
pub fn sdk_version() -> &'static str {
    manifest_version(SDK[0].1).expect("the SDK's Cargo.toml names its version")
}

/// The `version = "…"` of a `[package]` in a Cargo.toml, read line by line (the
/// SDK's manifest keeps it on a line of its own).
fn manifest_version(manifest: &str) -> Option<&str> {
    manifest.lines().find_map(|l| {
        let v = l.trim().strip_prefix("version")?.trim_start();
        v.strip_prefix('=')?
            .trim()
            .strip_prefix('"')?
            .split('"')
            .next()
    })
}

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
    if lang == "rust" {
        // The interface is in the SDK's folder, the one copy the build reads.
        all.extend(
            SDK.iter()
                .map(|(path, text)| (format!("{SDK_DIR}/{path}"), text.to_string())),
        );
    } else {
        all.push(("wit/plugin-0.2.0/plugin.wit".into(), WIT.to_string()));
    }
    write_all(&dir, &all)?;
    #[cfg(unix)]
    if lang == "python" {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("build.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// Replaces the SDK copy in the Rust plugin project `dir` with this hookwasm's;
/// returns the versions before and after. Any change made to the copy is lost:
/// the SDK is meant to be used, not edited, in a project.
pub fn update_sdk(dir: &Path) -> Result<(String, &'static str)> {
    let sdk = dir.join(SDK_DIR);
    let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a Rust plugin project (no {SDK_DIR}/Cargo.toml); give the folder `hookwasm plugin new` made",
            dir.display()
        )
    })?;
    let before = manifest_version(&manifest).unwrap_or("unknown").to_string();
    let files: Vec<(String, String)> = SDK
        .iter()
        .map(|(path, text)| (format!("{SDK_DIR}/{path}"), text.to_string()))
        .collect();
    write_all(dir, &files)?;
    Ok((before, sdk_version()))
}

fn write_all(dir: &Path, files: &[(String, String)]) -> Result<()> {
    for (path, text) in files {
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().expect("a file in a folder"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_binds_the_released_world_and_has_its_version() {
        assert_eq!(
            SDK[2].1, WIT,
            "plugins/sdk/wit/plugin.wit is wit/plugin-0.2.0/plugin.wit"
        );
        assert_eq!(
            sdk_version(),
            "0.2.0",
            "the SDK's version follows its world"
        );
        assert!(WIT.contains("package hookwasm:plugin@0.2.0;"));
    }

    #[test]
    fn reads_a_manifest_version() {
        assert_eq!(
            manifest_version("[package]\nname = \"x\"\nversion = \"1.2.3\"\n"),
            Some("1.2.3")
        );
        assert_eq!(
            manifest_version("[package]\nversion.workspace = true\n"),
            None
        );
    }
}
