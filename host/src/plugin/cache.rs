//! Compiled components on disk, so a restart with hundreds of plugins, or the
//! reload of a large Python plugin already seen, takes milliseconds, not seconds.
//!
//! An entry is named after the SHA-256 of the `.wasm` file and a key of the
//! engine's settings and version (`Engine::precompile_compatibility_hash`), so a
//! new hookwasm never loads code compiled by an old one. Each entry carries the
//! SHA-256 of its own bytes: a truncated or corrupted entry is detected before
//! wasmtime sees it, removed, and rebuilt. Entries are written to a temporary
//! name and renamed, so a crash never leaves half an entry behind.
//!
//! Trust: deserialising skips wasmtime's validation, so the cache folder must be
//! as private as the plugin folder (it is created 0700).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

const MAGIC: &[u8; 4] = b"HWC1";

pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    pub fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Cache> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the plugin cache {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Ok(Cache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    fn path(&self, bytes: &[u8]) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(Sha256::digest(bytes)),
            self.engine_key
        ))
    }

    /// The compiled form of `bytes`: from the cache when a sound entry is there,
    /// else from `compile`, which is then stored.
    pub fn get_or_insert(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Component, LoadError>,
    ) -> Result<Component, LoadError> {
        let path = self.path(bytes);
        if let Ok(entry) = std::fs::read(&path) {
            match verified(&entry) {
                // SAFETY: the payload is what `Component::serialize` wrote for this
                // engine configuration (the key says so) and its digest matches, so
                // it is the bytes wasmtime produced, unaltered.
                Some(payload) => match unsafe { Component::deserialize(engine, payload) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(entry = %path.display(), "plugin cache entry refused, rebuilding: {e}")
                    }
                },
                None => {
                    tracing::warn!(entry = %path.display(), "plugin cache entry is corrupt, rebuilding")
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        let component = compile()?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(entry = %path.display(), "cannot write the plugin cache: {e:#}");
        }
        Ok(component)
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize()?;
        let mut entry = Vec::with_capacity(payload.len() + 36);
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&Sha256::digest(&payload));
        entry.extend_from_slice(&payload);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &entry)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The payload of an entry whose digest checks out.
fn verified(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(MAGIC)?;
    if rest.len() < 32 {
        return None;
    }
    let (digest, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == digest).then_some(payload)
}
