//! asyncio's `windows_utils`: pipes that can be overlapped.
//!
//! Anonymous pipes (`CreatePipe`) cannot do overlapped I/O, so a completion
//! port never hears of them. asyncio makes every pipe a named pipe with a
//! unique name instead, connects both ends at once, and chooses per end
//! whether it is overlapped: the loop's end is, a child's end is not (a
//! child reads its stdin with plain `ReadFile`). [`pipe`] does the same.

use std::fs::File;
use std::io;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use windows_sys::Win32::Foundation::{
    ERROR_PIPE_CONNECTED, GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_WAIT,
};

/// Each end's buffer (asyncio's `BUFSIZE`).
const BUFSIZE: u32 = 8192;

/// Names pipes apart within this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Which ends of a [`pipe`] are opened for overlapped I/O.
#[derive(Clone, Copy, Debug)]
pub struct Overlapped {
    /// The read end (the pipe's server end).
    pub read: bool,
    /// The write end.
    pub write: bool,
}

/// A connected pipe, `(read end, write end)`, both not inheritable.
///
/// With `duplex`, both ends can also go the other way; asyncio makes a
/// child's stdin duplex so that the loop's (write) end can wait on a read,
/// which completes when the child closes its end. `overlapped` chooses
/// which ends take overlapped I/O: those must be used only with it (a
/// completion port), the others only with plain `ReadFile`/`WriteFile`.
pub fn pipe(duplex: bool, overlapped: Overlapped) -> io::Result<(File, File)> {
    let name = format!(
        r"\\.\pipe\asyncio-rs-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        // Another process with the same pid (a recycled one) cannot hold
        // the name: FILE_FLAG_FIRST_PIPE_INSTANCE refuses it; the time
        // makes that unlikely to start with.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let wide: Vec<u16> = name.encode_utf16().chain(Some(0)).collect();
    let (mut open_mode, access, out_size) = if duplex {
        (PIPE_ACCESS_DUPLEX, GENERIC_READ | GENERIC_WRITE, BUFSIZE)
    } else {
        (PIPE_ACCESS_INBOUND, GENERIC_WRITE, 0)
    };
    open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    if overlapped.read {
        open_mode |= FILE_FLAG_OVERLAPPED;
    }
    // SAFETY: `wide` is a NUL-terminated name that outlives the call; no
    // security attributes (not inheritable).
    let server = unsafe {
        CreateNamedPipeW(
            wide.as_ptr(),
            open_mode,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            out_size,
            BUFSIZE,
            0,
            ptr::null(),
        )
    };
    if server == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let server = unsafe { OwnedHandle::from_raw_handle(server) };
    let flags = if overlapped.write {
        FILE_FLAG_OVERLAPPED
    } else {
        0
    };
    // SAFETY: as above; the client end opens the pipe just created.
    let client = unsafe {
        CreateFileW(
            wide.as_ptr(),
            access,
            0,
            ptr::null(),
            OPEN_EXISTING,
            flags,
            ptr::null_mut(),
        )
    };
    if client == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let client = unsafe { OwnedHandle::from_raw_handle(client) };
    // The client is connected already, so this returns at once (with
    // ERROR_PIPE_CONNECTED); an overlapped server end needs an OVERLAPPED
    // for the call, which then cannot stay pending either.
    let mut ov: windows_sys::Win32::System::IO::OVERLAPPED =
        // SAFETY: OVERLAPPED is plain data; all zeroes is its initial state.
        unsafe { std::mem::zeroed() };
    let ov_ptr = if overlapped.read {
        &raw mut ov
    } else {
        ptr::null_mut()
    };
    // SAFETY: the server handle is open; `ov` outlives the call, which
    // cannot stay pending since the client is connected.
    let ok = unsafe {
        ConnectNamedPipe(
            std::os::windows::io::AsRawHandle::as_raw_handle(&server),
            ov_ptr,
        )
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(ERROR_PIPE_CONNECTED as i32) {
            return Err(e);
        }
    }
    Ok((File::from(server), File::from(client)))
}
