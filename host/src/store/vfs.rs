//! A thin SQLite VFS over the default one ("unix") that gathers a commit's WAL
//! writes into one write system call.
//!
//! Why: SQLite writes each WAL frame as two writes, its 24-byte header and then
//! the page, and every frame sits 24 bytes off the page grid, so each write
//! dirties two of the kernel's page-cache pages. A commit of 16 pages was 32
//! `pwrite` calls; under load they cost 4.5 % of the host's CPU (issue #15,
//! BENCHMARKS.md). Here a write that continues the one before it is kept in
//! memory, and the run goes out as one `pwrite` when anything else is asked of
//! the file.
//!
//! What it keeps safe: only the WAL file of the store's writer goes through this
//! (the database file, its shared memory and every lock go to the default VFS
//! untouched). Kept bytes are written out before any other call on the file —
//! a sync, a read, its size, a truncate, a file control, a lock, a close — so
//! what SQLite reads back, measures or syncs is exactly what it wrote, in the
//! order it wrote it. Under `synchronous=FULL` a commit syncs the WAL before it
//! updates the WAL index, so no reader can see a frame that is still kept here;
//! and nothing kept here was ever acknowledged: the commit's sync comes after.
//! A write that fails when it finally goes out fails that sync (or read), and
//! SQLite rolls the transaction back as it would for the write itself.

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
        if bytes.len() >= KEEP {
            return methods.xWrite.expect("a file is written")(g.inner, data, n, at);
        }
        if g.kept.is_empty() {
            g.at = at;
        }
        g.kept.extend_from_slice(bytes);
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let (g, methods) = parts(file);
        let written = write_out(g, methods);
        let closed = methods.xClose.expect("a file is closed")(g.inner);
        ffi::sqlite3_free(g.inner.cast());
        std::ptr::drop_in_place(file as *mut Gathered);
        if written != ffi::SQLITE_OK {
            written
        } else {
            closed
        }
    }
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

    /// Through the gathering VFS, commits land whole: another connection (the
    /// default VFS, as the host's readers) sees each one while the writer is
    /// open and the WAL not yet checkpointed, and a fresh connection after the
    /// writer closes finds an intact database with every row. Every tenth
    /// commit is about 900 KiB, over what one write of the default VFS takes.
    #[test]
    fn commits_through_gathered_writes_are_seen_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        assert_eq!(super::gathering(), Some(super::NAME));
        let writer = super::super::schema::open_writer(&path).unwrap();
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (n INTEGER, b BLOB)")
            .unwrap();
        let reader = super::super::schema::open(&path, false).unwrap();
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
        drop(writer);
        drop(reader);
        let fresh = Connection::open(&path).unwrap();
        let check: String = fresh
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let (count, bytes): (i64, i64) = fresh
            .query_row("SELECT COUNT(*), SUM(length(b)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, bytes), (rows, rows * 3000));
    }
}
