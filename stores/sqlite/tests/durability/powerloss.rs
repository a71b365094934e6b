use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::Path;
use std::ptr;
use std::sync::{LazyLock, Mutex, MutexGuard, Once, PoisonError};

use rusqlite::ffi;

/// The name the VFS is registered under.
pub const NAME: &CStr = c"oncely-powerloss";

/// What the power loss dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loss {
    /// Writes and truncations never synced.
    pub writes: usize,
    /// Bytes those writes held.
    pub bytes: usize,
}

/// The WAL's header: frames start past it.
const WAL_HEADER: u64 = 32;

enum Op {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Default)]
struct Pending {
    /// A WAL file (`SQLITE_OPEN_WAL`): where [`arm`] cuts.
    wal: bool,
    /// Writes and truncations since the last sync, in order.
    ops: Vec<Op>,
}

impl Pending {
    /// The file's size once the pending ops are applied to a real file of `size` bytes.
    fn size(&self, mut size: u64) -> u64 {
        for op in &self.ops {
            size = match op {
                Op::Write { offset, data } => size.max(offset + data.len() as u64),
                Op::Truncate(to) => *to,
            };
        }
        size
    }

    /// Applies the pending ops to `buf`, read from the real file at `offset`.
    fn overlay(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        for op in &self.ops {
            match op {
                Op::Write { offset: at, data } => {
                    let from = offset.max(*at);
                    let to = end.min(at + data.len() as u64);
                    if from < to {
                        buf[(from - offset) as usize..(to - offset) as usize]
                            .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
                    }
                }
                Op::Truncate(to) => {
                    // Bytes past the new end read as zeros if the file grows again.
                    if *to < end {
                        buf[to.saturating_sub(offset) as usize..].fill(0);
                    }
                }
            }
        }
    }
}

/// What a read sees: the real bytes with the pending writes and truncations, in order.
#[test]
fn pending_ops_apply_in_order() {
    let real = b"abcdefgh";
    let pending = Pending {
        wal: false,
        ops: vec![
            Op::Write {
                offset: 2,
                data: b"XY".to_vec(),
            },
            Op::Truncate(3),
            Op::Write {
                offset: 6,
                data: b"Z".to_vec(),
            },
        ],
    };
    assert_eq!(pending.size(real.len() as u64), 7);
    // A read of 10 bytes: what the unix VFS answers, zero-filled past the real end.
    let mut buf = [0u8; 10];
    buf[..8].copy_from_slice(real);
    pending.overlay(&mut buf, 0);
    assert_eq!(&buf, b"abX\0\0\0Z\0\0\0");
    let mut tail = *b"fgh";
    pending.overlay(&mut tail, 5);
    assert_eq!(&tail, b"\0Z\0");
}

struct Handle {
    /// The key of the file's pending list: its path, or a unique name for a temp file.
    path: Vec<u8>,
    /// Deleted on close (a temp file): its pending list goes with it.
    temp: bool,
}

#[derive(Default)]
struct State {
    files: HashMap<Vec<u8>, Pending>,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    armed: bool,
    off: bool,
    lost: Loss,
}

impl State {
    fn cut(&mut self) -> Loss {
        self.off = true;
        for pending in self.files.values_mut() {
            for op in pending.ops.drain(..) {
                self.lost.writes += 1;
                if let Op::Write { data, .. } = op {
                    self.lost.bytes += data.len();
                }
            }
        }
        self.lost
    }

    fn pending(&mut self, file: *mut ffi::sqlite3_file) -> &mut Pending {
        // SAFETY: `file` is one of this VFS's open files (SQLite calls its methods only
        // between a successful xOpen and xClose), so it is a `ShimFile` with `handle` set.
        let handle = unsafe { (*file.cast::<ShimFile>()).handle };
        let path = &self.handles[&handle].path;
        self.files.get_mut(path).expect("an open file has a list")
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

fn state() -> MutexGuard<'static, State> {
    // A panicking test must not wedge SQLite's callbacks of the next one.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers the VFS (once), waits for the other tests using it, and starts with the power
/// on and nothing pending. Hold the guard for the whole test.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    register();
    let mut state = state();
    assert!(state.handles.is_empty(), "a previous test left files open");
    *state = State::default();
    guard
}

/// A SQLite URI that opens `path` through this VFS.
pub fn uri(path: &Path) -> String {
    let path = path.to_str().expect("a UTF-8 temp path");
    let path = path
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    format!("file:{path}?vfs={}", NAME.to_str().unwrap())
}

/// Cuts the power as a WAL file is next synced with frames pending (see the module docs).
pub fn arm() {
    state().armed = true;
}

/// Whether the power is off.
pub fn is_off() -> bool {
    state().off
}

/// Cuts the power now: drops every write not synced. Answers everything dropped so far.
pub fn cut() -> Loss {
    state().cut()
}

/// Everything the power loss dropped.
pub fn lost() -> Loss {
    state().lost
}

/// Files open through the VFS.
pub fn open_files() -> usize {
    state().handles.len()
}

/// After the power loss and once every connection is closed: removes the shared-memory
/// index of `db` (memory, not disk: SQLite rebuilds it from the WAL), and checks that a
/// plain open (SQLite's default VFS, unix) reads the real files, which hold what was synced.
pub fn reboot(db: &Path) {
    assert!(is_off(), "reboot without a power loss");
    assert_eq!(open_files(), 0, "reboot with files still open");
    // SAFETY: NULL asks for the default VFS; SQLite's VFS objects live as long as it does.
    let default = unsafe { CStr::from_ptr((*ffi::sqlite3_vfs_find(ptr::null())).zName) };
    assert_eq!(default, c"unix", "the default VFS is the plain one");
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    match std::fs::remove_file(&shm) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("removing -shm: {e}"),
        _ => {}
    }
}

/// SQLite's file object for this VFS. SQLite allocates `szOsFile` bytes for it: this header,
/// then the unix VFS's own file object at `REAL_OFFSET`.
#[repr(C)]
struct ShimFile {
    /// First, so a `*mut sqlite3_file` from SQLite is a `*mut ShimFile`.
    base: ffi::sqlite3_file,
    /// Key of this handle in `State::handles`.
    handle: u64,
}

/// Where the unix file object starts: after the header, aligned for any field it has.
const REAL_OFFSET: usize = size_of::<ShimFile>().next_multiple_of(16);

/// The unix VFS's file object inside ours.
fn real(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // `wrapping_add` keeps this safe to call; the result is in bounds because SQLite
    // allocated `szOsFile = REAL_OFFSET + unix.szOsFile` bytes at `file`.
    file.cast::<u8>()
        .wrapping_add(REAL_OFFSET)
        .cast::<ffi::sqlite3_file>()
}

/// The unix file object's methods.
///
/// # Safety
/// `real` must be an open unix file object (one whose xOpen succeeded).
unsafe fn methods(real: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    // SAFETY: an open unix file points to the unix VFS's static method table.
    unsafe { &*(*real).pMethods }
}

/// The unix VFS, which this one wraps (kept in our `pAppData`).
///
/// # Safety
/// `vfs` must be this VFS, as SQLite passes it to each of its methods.
unsafe fn unix(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: `vfs` is ours; `register` set its `pAppData` to the unix VFS, which SQLite
    // never frees. Kept a raw pointer: SQLite may relink `pNext` under its own mutex.
    unsafe { (*vfs).pAppData.cast() }
}

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_vfs_find` takes a NUL-terminated name (or NULL) and initializes
        // SQLite if needed; "unix" is built into every Unix build of SQLite.
        let unix = unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) };
        assert!(!unix.is_null(), "SQLite has no unix VFS");
        // SAFETY: `unix` is a registered VFS, a static object of SQLite's.
        let (os_file, max_path) = unsafe { ((*unix).szOsFile, (*unix).mxPathname) };
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: REAL_OFFSET as c_int + os_file,
            mxPathname: max_path,
            pNext: ptr::null_mut(),
            zName: NAME.as_ptr(),
            pAppData: unix.cast(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // SAFETY: SQLite keeps the pointer for the life of the process, so the VFS is
        // leaked on purpose; its name and methods are 'static. Not the default VFS: only
        // connections that name it use it.
        let rc = unsafe { ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0) };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the power-loss VFS");
    });
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 2: shared memory (needed for WAL), no memory-mapped reads (xFetch), so every
    // read goes through xRead and sees the pending writes.
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

// ---- The VFS methods. SQLite calls each with this VFS as `vfs`, and a file's methods with
// a file this VFS opened (between a successful xOpen and its xClose), with buffers valid
// for the lengths given: the contract of sqlite3_vfs and sqlite3_io_methods. ----

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: `file` points to `szOsFile` writable bytes; setting `pMethods` to NULL first
    // means SQLite will not call xClose on it if this open fails.
    unsafe { (*file).pMethods = ptr::null() };
    // Held across the real open, so a power loss cannot come between it and the check.
    let mut state = state();
    if state.off {
        return ffi::SQLITE_CANTOPEN;
    }
    let real = real(file);
    // SAFETY: `unix` is the wrapped VFS; `real` is its file object, `szOsFile` bytes of
    // ours; the other arguments are SQLite's, passed through.
    let rc = unsafe {
        let unix = unix(vfs);
        ((*unix).xOpen.expect("unix xOpen"))(unix, name, real, flags, out_flags)
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: per the xOpen contract, a file object whose pMethods was set must be
        // closed even though the open failed.
        unsafe {
            if !(*real).pMethods.is_null() {
                (methods(real).xClose.expect("unix xClose"))(real);
            }
        }
        return rc;
    }
    let handle = state.next_handle;
    state.next_handle += 1;
    let temp = name.is_null() || flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0;
    let path = if name.is_null() {
        format!("<temp {handle}>").into_bytes()
    } else {
        // SAFETY: a non-NULL name is a NUL-terminated path.
        unsafe { CStr::from_ptr(name) }.to_bytes().to_vec()
    };
    state.files.entry(path.clone()).or_default().wal |= flags & ffi::SQLITE_OPEN_WAL != 0;
    state.handles.insert(handle, Handle { path, temp });
    // SAFETY: `file` is ours, `szOsFile` bytes with the header first; from here SQLite
    // calls METHODS on it, and xClose last.
    unsafe {
        (*file.cast::<ShimFile>()).handle = handle;
        (*file).pMethods = &METHODS;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let mut state = state();
    // SAFETY: `file` is an open file of ours (see above).
    let handle = unsafe { (*file.cast::<ShimFile>()).handle };
    if let Some(Handle { path, temp }) = state.handles.remove(&handle) {
        // A closed file keeps its pending writes (the page cache outlives the handle),
        // unless it is a temp file, deleted on close.
        if temp {
            state.files.remove(&path);
        }
    }
    let real = real(file);
    // SAFETY: `real` is the open unix file inside ours; closed once, here.
    unsafe { (methods(real).xClose.expect("unix xClose"))(real) }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let mut state = state();
    if state.off {
        return ffi::SQLITE_IOERR_READ;
    }
    let real = real(file);
    // SAFETY: `real` is the open unix file; `buf` holds `amount` bytes. The unix VFS
    // zero-fills what lies past the real end of the file and answers SHORT_READ.
    let rc = unsafe { (methods(real).xRead.expect("unix xRead"))(real, buf, amount, offset) };
    if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
        return rc;
    }
    let pending = state.pending(file);
    if pending.ops.is_empty() {
        return rc;
    }
    let mut real_size = 0;
    // SAFETY: `real` is the open unix file; `real_size` is a valid out-pointer.
    let rc = unsafe { (methods(real).xFileSize.expect("unix xFileSize"))(real, &mut real_size) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let (offset, amount) = (offset as u64, amount as usize);
    // SAFETY: SQLite passes a buffer of `amount` bytes, not otherwise borrowed here.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), amount) };
    pending.overlay(buf, offset);
    // Past the logical end the buffer is zeros: the real file's, or a truncation's.
    if offset + amount as u64 > pending.size(real_size as u64) {
        ffi::SQLITE_IOERR_SHORT_READ
    } else {
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let mut state = state();
    if state.off {
        return ffi::SQLITE_IOERR_WRITE;
    }
    // SAFETY: SQLite passes a buffer of `amount` readable bytes; copied before returning.
    let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), amount as usize) };
    state.pending(file).ops.push(Op::Write {
        offset: offset as u64,
        data: data.to_vec(),
    });
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let mut state = state();
    if state.off {
        return ffi::SQLITE_IOERR_TRUNCATE;
    }
    state.pending(file).ops.push(Op::Truncate(size as u64));
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // Held across the real writes and sync: a power loss comes before them or after.
    let mut state = state();
    if state.off {
        return ffi::SQLITE_IOERR_FSYNC;
    }
    let armed = state.armed;
    let pending = state.pending(file);
    let frames = |op: &Op| matches!(op, Op::Write { offset, .. } if *offset >= WAL_HEADER);
    if armed && pending.wal && pending.ops.iter().any(frames) {
        // The power fails as this sync is issued: nothing of it reaches the disk.
        state.cut();
        return ffi::SQLITE_IOERR_FSYNC;
    }
    let real = real(file);
    for op in &pending.ops {
        // SAFETY: `real` is the open unix file; `data` holds `data.len()` bytes.
        let rc = unsafe {
            match op {
                Op::Write { offset, data } => (methods(real).xWrite.expect("unix xWrite"))(
                    real,
                    data.as_ptr().cast(),
                    data.len() as c_int,
                    *offset as ffi::sqlite3_int64,
                ),
                Op::Truncate(size) => (methods(real).xTruncate.expect("unix xTruncate"))(
                    real,
                    *size as ffi::sqlite3_int64,
                ),
            }
        };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    pending.ops.clear();
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xSync.expect("unix xSync"))(real, flags) }
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    let mut state = state();
    if state.off {
        return ffi::SQLITE_IOERR_FSTAT;
    }
    let real = real(file);
    let mut real_size = 0;
    // SAFETY: `real` is the open unix file; `real_size` is a valid out-pointer.
    let rc = unsafe { (methods(real).xFileSize.expect("unix xFileSize"))(real, &mut real_size) };
    if rc == ffi::SQLITE_OK {
        let logical = state.pending(file).size(real_size as u64);
        // SAFETY: SQLite passes a valid out-pointer.
        unsafe { *size = logical as ffi::sqlite3_int64 };
    }
    rc
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    match op {
        // Hints that would have the unix VFS grow the real file past the VFS's back: an
        // optimisation SQLite does without.
        ffi::SQLITE_FCNTL_SIZE_HINT | ffi::SQLITE_FCNTL_CHUNK_SIZE => ffi::SQLITE_OK,
        _ => {
            let real = real(file);
            // SAFETY: `real` is the open unix file; `arg` is SQLite's, as the op defines.
            unsafe { (methods(real).xFileControl.expect("unix xFileControl"))(real, op, arg) }
        }
    }
}

// Locks, shared memory and device properties: passed through to the unix file, also after
// the power loss, so connections can still release their locks and close. None of it is
// durable (the -shm index is rebuilt from the WAL; `reboot` removes it).

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xLock.expect("unix xLock"))(real, lock) }
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, lock: c_int) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xUnlock.expect("unix xUnlock"))(real, lock) }
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file; `out` is SQLite's out-pointer.
    unsafe {
        (methods(real)
            .xCheckReservedLock
            .expect("unix xCheckReservedLock"))(real, out)
    }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xSectorSize.expect("unix xSectorSize"))(real) }
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe {
        (methods(real)
            .xDeviceCharacteristics
            .expect("unix xDeviceCharacteristics"))(real)
    }
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file; the arguments are SQLite's, passed through.
    unsafe { (methods(real).xShmMap.expect("unix xShmMap"))(real, region, size, extend, out) }
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xShmLock.expect("unix xShmLock"))(real, offset, n, flags) }
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xShmBarrier.expect("unix xShmBarrier"))(real) }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let real = real(file);
    // SAFETY: `real` is the open unix file.
    unsafe { (methods(real).xShmUnmap.expect("unix xShmUnmap"))(real, delete) }
}

// ---- VFS-level methods. ----

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let mut state = state();
    if state.off {
        return ffi::SQLITE_IOERR_DELETE;
    }
    // SAFETY: SQLite passes a NUL-terminated path.
    state
        .files
        .remove(unsafe { CStr::from_ptr(name) }.to_bytes());
    // SAFETY: passed through to the wrapped VFS, with itself as its VFS.
    unsafe {
        let unix = unix(vfs);
        ((*unix).xDelete.expect("unix xDelete"))(unix, name, sync_dir)
    }
}

/// Defines VFS methods that only pass the call through to the wrapped unix VFS, with itself
/// as its VFS: `fn x_sleep => xSleep(micros: c_int) -> c_int;` defines `x_sleep`, calling
/// the unix VFS's `xSleep` with `micros`.
macro_rules! pass_through {
    ($(fn $name:ident => $method:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {$(
        unsafe extern "C" fn $name(vfs: *mut ffi::sqlite3_vfs, $($arg: $ty),*) $(-> $ret)? {
            // SAFETY: passed through to the wrapped VFS, with itself as its VFS.
            unsafe {
                let unix = unix(vfs);
                ((*unix).$method.expect(concat!("unix ", stringify!($method))))(unix, $($arg),*)
            }
        }
    )*};
}

type DlSym = unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char);

pass_through! {
    fn x_access => xAccess(name: *const c_char, flags: c_int, out: *mut c_int) -> c_int;
    fn x_full_pathname => xFullPathname(name: *const c_char, n: c_int, out: *mut c_char) -> c_int;
    fn x_dl_open => xDlOpen(name: *const c_char) -> *mut c_void;
    fn x_dl_error => xDlError(n: c_int, out: *mut c_char);
    fn x_dl_sym => xDlSym(handle: *mut c_void, symbol: *const c_char) -> Option<DlSym>;
    fn x_dl_close => xDlClose(handle: *mut c_void);
    fn x_randomness => xRandomness(n: c_int, out: *mut c_char) -> c_int;
    fn x_sleep => xSleep(micros: c_int) -> c_int;
    fn x_current_time => xCurrentTime(out: *mut f64) -> c_int;
    fn x_get_last_error => xGetLastError(n: c_int, out: *mut c_char) -> c_int;
    fn x_current_time_int64 => xCurrentTimeInt64(out: *mut ffi::sqlite3_int64) -> c_int;
}
