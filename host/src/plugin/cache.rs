//! Compiled components on disk, so a restart with hundreds of plugins, or the
//! reload of a large Python plugin already seen, takes milliseconds, not seconds.
//!
//! An entry is named after the SHA-256 of the `.wasm` file and a key of the
//! engine's settings and version (`Engine::precompile_compatibility_hash`), so a
//! new hookwasm never loads code compiled by an old one. Entries are written to a
//! temporary name and renamed, so a crash never leaves half an entry behind.
//!
//! Trust: an entry is native code that wasmtime loads without validating it, so
//! whoever can write one can run code in the host. Two guards:
//! - the folder must belong to the host's user and be writable by no one else
//!   (a new one is created 0700; an existing one that is more open is refused,
//!   never silently chmod'ed, since it may be shared on purpose);
//! - every entry carries an HMAC-SHA256, under a key only the host's user can
//!   read (kept apart from the folder, beside the store), of the engine key, the
//!   `.wasm`'s digest and the code. A planted, renamed, truncated or corrupted
//!   entry fails the check and is compiled again from the `.wasm`, never loaded.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

const MAGIC: &[u8; 4] = b"HWC2";
const KEY_BYTES: usize = 32;

pub struct Cache {
    dir: PathBuf,
    engine_key: String,
    key: [u8; KEY_BYTES],
}

impl Cache {
    /// Opens the cache folder `dir` with the key in `key_file` (created if absent).
    pub fn open(dir: &Path, key_file: &Path, engine: &Engine) -> anyhow::Result<Cache> {
        if dir.exists() {
            check_private(dir, 0o022, "writable by other users")?;
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create the plugin cache {}", dir.display()))?;
        }
        let key = load_key(key_file)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Ok(Cache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", h.finish()),
            key,
        })
    }

    /// The entry's file name and the MAC it must carry for `payload`.
    fn path(&self, wasm_digest: &[u8]) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(wasm_digest),
            self.engine_key
        ))
    }

    fn mac(&self, wasm_digest: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(self.engine_key.as_bytes());
        mac.update(wasm_digest);
        mac.update(payload);
        mac
    }

    /// The compiled form of `bytes`: from the cache when an authentic entry is
    /// there, else from `compile`, which is then stored.
    pub fn get_or_insert(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Component, LoadError>,
    ) -> Result<Component, LoadError> {
        let digest = Sha256::digest(bytes);
        let path = self.path(&digest);
        if let Ok(entry) = std::fs::read(&path) {
            match self.authentic(&digest, &entry) {
                // SAFETY: the payload carries our MAC over this engine's key, this
                // `.wasm`'s digest and the code itself: it is what
                // `Component::serialize` wrote in this host's cache for these
                // bytes, unaltered.
                Some(payload) => match unsafe { Component::deserialize(engine, payload) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(entry = ?path, "plugin cache entry refused, rebuilding: {e}")
                    }
                },
                None => {
                    tracing::warn!(entry = ?path, "plugin cache entry is not authentic (corrupt, or not written by this host), rebuilding")
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        let component = compile()?;
        if let Err(e) = self.store(&path, &digest, &component) {
            tracing::warn!(entry = ?path, "cannot write the plugin cache: {e:#}");
        }
        Ok(component)
    }

    fn store(&self, path: &Path, wasm_digest: &[u8], component: &Component) -> anyhow::Result<()> {
        let payload = component.serialize()?;
        let tag = self.mac(wasm_digest, &payload).finalize().into_bytes();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&tag)?;
        file.write_all(&payload)?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The payload of an entry whose MAC checks out.
    fn authentic<'a>(&self, wasm_digest: &[u8], entry: &'a [u8]) -> Option<&'a [u8]> {
        let rest = entry.strip_prefix(MAGIC)?;
        if rest.len() < 32 {
            return None;
        }
        let (tag, payload) = rest.split_at(32);
        // `verify_slice` compares in constant time.
        self.mac(wasm_digest, payload)
            .verify_slice(tag)
            .ok()
            .map(|_| payload)
    }
}

/// Refuses `path` if another user owns it or its mode has any of `bad_bits`.
fn check_private(path: &Path, bad_bits: u32, what: &str) -> anyhow::Result<std::fs::Metadata> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "{} belongs to another user (uid {}); the plugin cache and its key must be this user's (uid {me})",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & bad_bits != 0 {
        bail!(
            "{} is {what} (mode {mode:o}): anyone who can write there could make the host run their code; `chmod go-rwx {}` or choose another folder",
            path.display(),
            path.display()
        );
    }
    Ok(meta)
}

/// The cache's key: read, or made and written 0600 on first use.
fn load_key(file: &Path) -> anyhow::Result<[u8; KEY_BYTES]> {
    if !file.exists() {
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Written whole under a private name, then linked into place: `link`
        // never replaces, so of several hosts starting together one wins and
        // the others read a complete key, never a half-written one.
        let key: [u8; KEY_BYTES] = rand::random();
        let tmp = file.with_extension(format!(
            "tmp.{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&key).and_then(|_| f.sync_all()))
            .with_context(|| format!("cannot write the plugin cache key {}", tmp.display()));
        let linked = written.and_then(|_| match std::fs::hard_link(&tmp, file) {
            Ok(()) => Ok(true),
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e)
                .with_context(|| format!("cannot create the plugin cache key {}", file.display())),
        });
        let _ = std::fs::remove_file(&tmp);
        if linked? {
            return Ok(key);
        }
    }
    check_private(file, 0o077, "readable or writable by other users")?;
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read the plugin cache key {}", file.display()))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "the plugin cache key {} is {} bytes, not {KEY_BYTES}; delete it and a new one is made",
            file.display(),
            b.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts starting together on one cache folder must agree on one key;
    /// none may read the file while another is still writing it.
    #[test]
    fn hosts_starting_together_share_one_whole_key() {
        for _ in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("keys").join("plugin-cache.key");
            let start = std::sync::Barrier::new(8);
            let keys: Vec<[u8; KEY_BYTES]> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            load_key(&file)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().unwrap())
                    .collect()
            });
            assert!(
                keys.iter().all(|k| *k == keys[0]),
                "the hosts made different keys"
            );
            assert_eq!(std::fs::read(&file).unwrap(), keys[0]);
            let left: Vec<_> = std::fs::read_dir(file.parent().unwrap()).unwrap().collect();
            assert_eq!(left.len(), 1, "temporary files were left behind: {left:?}");
        }
    }
}
