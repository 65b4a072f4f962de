//! A thin SQLite VFS over the default one ("unix") that gathers a commit's WAL
//! writes into one write system call.
//!
//! Why: SQLite writes each WAL frame as two writes, its 24-byte header and then
//! the page, and every frame sits 24 bytes off the page grid, so each write
//! dirties two of the kernel's page-cache pages. A commit of 16 pages was 32
//! `pwrite` calls; under load they cost 4.5 % of the host's CPU (issue #15,
//! BENCHMARKS.md). Here a write that continues the one before it is kept in
//! memory, and the run goes out as one `pwrite` (or a few, see [`KEEP`]) when
//! SQLite next syncs, reads, measures or truncates the file.
//!
//! What keeps it safe:
//! - Only the WAL file of the store's writer connection goes through this; the
//!   database file, its shared memory and every lock go to the default VFS
//!   untouched.
//! - Kept bytes are written out before any other call on the file that reads or
//!   depends on its contents, so what SQLite reads back, measures or syncs is
//!   what it wrote, in the order it wrote it.
//! - It needs `synchronous=FULL` and powersafe overwrite (SQLite's default),
//!   which [`super::schema::open_writer`] sets and checks: a commit then syncs
//!   the WAL (writing the kept bytes out first) as its last write, before it
//!   publishes the new frames in the WAL index, so no reader sees a frame still
//!   kept here, and a commit is acknowledged only once its frames are on disk.
//!   (Without powersafe overwrite SQLite pads a commit to a sector boundary and
//!   may write the padding's tail after the sync.) So whatever is still kept
//!   was never committed.
//! - Hence a rollback forgets what is kept rather than write it: those frames
//!   are dead, and written out later they could land over frames another
//!   process (the command line) has committed at the same offsets since
//!   ([`forget_on_rollback`]). A rollback need not touch the WAL file, so a
//!   rollback hook does it; if the rollback does re-read a page from the WAL,
//!   the dead frames go out first, while this connection still holds the write
//!   lock, where no other writer can have committed: harmless. Closing drops
//!   what is kept for the same reason; the store's writer rolls back any open
//!   transaction before it closes, so the hook has run by then.
//! - A write that fails when it finally goes out fails that sync or read, and
//!   SQLite rolls the transaction back as it would for the write itself.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open the store with to get the gathering VFS.
pub const NAME: &CStr = c"hookwasm-gather";

/// The most bytes kept before they go out anyway. The default VFS writes at most
/// 128 KiB − 1 bytes per call (it masks the length with 0x1ffff: a longer write
/// would be cut short and reported as a full disk), so a run stays under that. A
/// commit at the bench's load is about 70 KiB of frames: one call, or two.
const KEEP: usize = 124 * 1024;

/// Registers the VFS once per process (not as the default); its name, to open
/// connections with. Falls back to nothing (`None`) if SQLite has no "unix" VFS.
pub fn gathering() -> Option<&'static CStr> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| unsafe {
        let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
        if unix.is_null() {
            return false;
        }
        // Leaked on purpose: SQLite keeps the pointer for the life of the process.
        let vfs = Box::into_raw(Box::new(ffi::sqlite3_vfs {
            iVersion: (*unix).iVersion,
            szOsFile: (*unix)
                .szOsFile
                .max(std::mem::size_of::<Gathered>() as c_int),
            mxPathname: (*unix).mxPathname,
            pNext: std::ptr::null_mut(),
            zName: NAME.as_ptr(),
            // Only `open` calls the default VFS's xOpen, which needs its own
            // pointer; the default VFS's other methods ignore which VFS called.
            pAppData: unix.cast(),
            xOpen: Some(open),
            ..*unix
        }));
        ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
    });
    registered.then_some(NAME)
}

/// A WAL file opened through this VFS: SQLite's file object, with the default
/// VFS's own file object beside it and the kept bytes.
#[repr(C)]
struct Gathered {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    kept: Vec<u8>,
    /// Where `kept` goes in the file.
    at: i64,
    /// Writes made on the default VFS's file: what the gathering saves shows
    /// in the tests as far fewer of these than SQLite's own writes.
    #[cfg(test)]
    writes: u64,
}

/// Opens a file through the default VFS; a WAL file gets the gathering methods.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    unsafe {
        let unix = (*vfs).pAppData as *mut ffi::sqlite3_vfs;
        let unix_open = (*unix).xOpen.expect("a VFS opens files");
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not the WAL: the default VFS's file object, methods and all, in
            // the space SQLite gave us (at least its size).
            return unix_open(unix, name, file, flags, out_flags);
        }
        let inner = ffi::sqlite3_malloc((*unix).szOsFile) as *mut ffi::sqlite3_file;
        if inner.is_null() {
            (*file).pMethods = std::ptr::null();
            return ffi::SQLITE_NOMEM;
        }
        std::ptr::write_bytes(inner.cast::<u8>(), 0, (*unix).szOsFile as usize);
        let rc = unix_open(unix, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
                close(inner);
            }
            ffi::sqlite3_free(inner.cast());
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        std::ptr::write(
            file as *mut Gathered,
            Gathered {
                base: ffi::sqlite3_file { pMethods: &METHODS },
                inner,
                kept: Vec::new(),
                at: 0,
                #[cfg(test)]
                writes: 0,
            },
        );
        ffi::SQLITE_OK
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: a WAL file is never memory-mapped nor given shared memory.
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// The file behind `file`, and its methods.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (&'a mut Gathered, &'a ffi::sqlite3_io_methods) {
    unsafe {
        let g = &mut *(file as *mut Gathered);
        let methods = &*(*g.inner).pMethods;
        (g, methods)
    }
}

/// Writes the kept bytes out, in one call.
unsafe fn write_out(g: &mut Gathered, methods: &ffi::sqlite3_io_methods) -> c_int {
    if g.kept.is_empty() {
        return ffi::SQLITE_OK;
    }
    let write = methods.xWrite.expect("a file is written");
    #[cfg(test)]
    {
        g.writes += 1;
    }
    let rc = unsafe { write(g.inner, g.kept.as_ptr().cast(), g.kept.len() as c_int, g.at) };
    g.kept.clear();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    n: c_int,
    at: i64,
) -> c_int {
    unsafe {
        let (g, methods) = parts(file);
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), n as usize);
        let continues = at == g.at + g.kept.len() as i64;
        if !g.kept.is_empty() && (!continues || g.kept.len() + bytes.len() > KEEP) {
            let rc = write_out(g, methods);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        // SQLite writes at most a page (64 KiB) at once to a WAL, so this is a
        // guard, never the way: a write that cannot be kept goes straight out.
        if bytes.len() >= KEEP {
            #[cfg(test)]
            {
                g.writes += 1;
            }
            return methods.xWrite.expect("a file is written")(g.inner, data, n, at);
        }
        if g.kept.is_empty() {
            g.at = at;
        }
        g.kept.extend_from_slice(bytes);
        ffi::SQLITE_OK
    }
}

/// Closes the file. What is still kept was never committed (see the module's
/// notes), so it is dropped, not written.
unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (g, methods) = parts(file);
        let closed = methods.xClose.expect("a file is closed")(g.inner);
        ffi::sqlite3_free(g.inner.cast());
        std::ptr::drop_in_place(file as *mut Gathered);
        closed
    }
}

/// Makes `conn` (opened through this VFS) forget its WAL's kept bytes whenever
/// a transaction rolls back. A rollback resets SQLite's idea of the WAL's end
/// and releases the write lock without a call on the WAL file, so kept frames
/// of the dead transaction would otherwise go out at the next read or sync,
/// perhaps over frames another process committed meanwhile.
pub fn forget_on_rollback(conn: &rusqlite::Connection) {
    unsafe extern "C" fn rolled_back(db: *mut c_void) {
        unsafe {
            if let Some(g) = gathered(db.cast()) {
                g.kept.clear();
            }
        }
    }
    // SAFETY: the hook lives as long as the connection, and is given the
    // connection's own handle.
    let before = unsafe {
        let db = conn.handle();
        ffi::sqlite3_rollback_hook(db, Some(rolled_back), db.cast())
    };
    // Nothing else may hook rollbacks on this connection: ours would be lost.
    debug_assert!(before.is_null(), "the writer had a rollback hook already");
}

/// The WAL file of `db`'s main database, when it is open through this VFS.
unsafe fn gathered<'a>(db: *mut ffi::sqlite3) -> Option<&'a mut Gathered> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    let rc = unsafe {
        ffi::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return None;
    }
    unsafe { std::ptr::eq((*file).pMethods, &METHODS).then(|| &mut *(file as *mut Gathered)) }
}

/// Every other method: write out what is kept, then ask the default VFS.
macro_rules! after_write_out {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            unsafe {
                let (g, methods) = parts(file);
                let rc = write_out(g, methods);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                methods.$method.expect(stringify!($method))(g.inner, $($arg),*)
            }
        }
    };
}

after_write_out!(read, xRead, (data: *mut c_void, n: c_int, at: i64));
after_write_out!(truncate, xTruncate, (size: i64));
after_write_out!(sync, xSync, (flags: c_int));
after_write_out!(file_size, xFileSize, (size: *mut i64));
after_write_out!(lock, xLock, (level: c_int));
after_write_out!(unlock, xUnlock, (level: c_int));
after_write_out!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int));
after_write_out!(file_control, xFileControl, (op: c_int, arg: *mut c_void));

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (g, methods) = parts(file);
        methods.xSectorSize.expect("xSectorSize")(g.inner)
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (g, methods) = parts(file);
        methods
            .xDeviceCharacteristics
            .expect("xDeviceCharacteristics")(g.inner)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::schema::{open, open_writer};

    /// A new store with table `t`, and its writer.
    fn store(setup: &str) -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let writer = open_writer(&path).unwrap();
        writer.execute_batch(setup).unwrap();
        writer
            .execute_batch("CREATE TABLE t (n INTEGER, b BLOB)")
            .unwrap();
        (dir, path, writer)
    }

    /// A fresh connection to the store at `path`, which must be intact.
    fn reopened(path: &std::path::Path) -> Connection {
        let fresh = Connection::open(path).unwrap();
        let check: String = fresh
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        fresh
    }

    /// Bytes kept for `conn`'s WAL; None when it does not go through this VFS.
    fn kept(conn: &Connection) -> Option<usize> {
        unsafe { super::gathered(conn.handle()).map(|g| g.kept.len()) }
    }

    /// Writes `conn`'s WAL has made on the default VFS.
    fn writes(conn: &Connection) -> u64 {
        unsafe { super::gathered(conn.handle()).map_or(0, |g| g.writes) }
    }

    /// A transaction too big for its page cache writes frames to the WAL before
    /// it ends; rolled back, they are dead. Another process (the command line's
    /// writer) then commits at the same WAL offsets. The writer's next read
    /// must not write the dead frames over that commit.
    #[test]
    fn a_rolled_back_transactions_frames_never_land_on_a_later_commit() {
        let (_dir, path, writer) = store("PRAGMA cache_size = 10");
        // Everything in the database file: the rollback then reads nothing back
        // from the WAL (which would have written the dead frames out at once).
        writer
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        writer.execute_batch("BEGIN").unwrap();
        for n in 0..25 {
            writer
                .execute(
                    "INSERT INTO t VALUES (?1, ?2)",
                    rusqlite::params![n, vec![9u8; 3000]],
                )
                .unwrap();
        }
        let spilled = kept(&writer).expect("the WAL goes through the VFS");
        assert!(spilled > 0, "the transaction spilled frames to the WAL");
        writer.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            kept(&writer),
            Some(0),
            "the rollback forgot the dead frames"
        );
        let other = open(&path, false).unwrap();
        other
            .execute("INSERT INTO t VALUES (1, x'01')", [])
            .unwrap();
        drop(other);
        let seen: i64 = writer
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 1);
        writer
            .execute("INSERT INTO t VALUES (2, x'02')", [])
            .unwrap();
        drop(writer);
        let fresh = reopened(&path);
        // Without the rollback hook, the dead transaction's first row comes
        // back from its frames and the other process's row is gone.
        let rows: Vec<(i64, i64)> = fresh
            .prepare("SELECT n, length(b) FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, [(1, 1), (2, 1)]);
    }

    /// Through the gathering VFS, commits land whole: another connection (the
    /// default VFS, as the host's readers) sees each one while the writer is
    /// open and the WAL not yet checkpointed, and a fresh connection after the
    /// writer closes finds an intact database with every row. Every tenth
    /// commit is about 900 KiB, over what one write of the default VFS takes.
    #[test]
    fn commits_through_gathered_writes_are_seen_and_kept() {
        let (_dir, path, writer) = store("PRAGMA wal_autocheckpoint = 0");
        assert_eq!(kept(&writer), Some(0), "the WAL goes through the VFS");
        let reader = open(&path, false).unwrap();
        let blob = vec![7u8; 3000];
        let mut rows = 0;
        for commit in 1..=50i64 {
            writer.execute_batch("BEGIN").unwrap();
            let n = if commit % 10 == 0 { 300 } else { 20 };
            for _ in 0..n {
                writer
                    .execute(
                        "INSERT INTO t VALUES (?1, ?2)",
                        rusqlite::params![commit, blob],
                    )
                    .unwrap();
            }
            writer.execute_batch("COMMIT").unwrap();
            rows += n;
            let seen: i64 = reader
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(seen, rows);
        }
        let wal = std::fs::metadata(path.with_extension("db-wal"))
            .unwrap()
            .len();
        assert!(
            wal as i64 > rows * 3000,
            "the rows went to the WAL: {wal} bytes"
        );
        // SQLite wrote each frame as two writes (header, page); they went out
        // gathered: one write per small commit, a few per big one.
        let frames = wal / (4096 + 24);
        let made = writes(&writer);
        assert!(
            made * 10 < frames * 2,
            "{made} writes for {frames} frames in 50 commits"
        );
        drop(writer);
        drop(reader);
        let fresh = reopened(&path);
        let (count, bytes): (i64, i64) = fresh
            .query_row("SELECT COUNT(*), SUM(length(b)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, bytes), (rows, rows * 3000));
    }
}
