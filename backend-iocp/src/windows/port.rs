//! An owned I/O completion port and the completion keys the driver uses.
//!
//! # Completion keys
//! Every packet the port delivers carries the key its handle was associated
//! with (or that `PostQueuedCompletionStatus` was given):
//!
//! * [`Key::Wake`] — posted by the loop's notifier; `lpOverlapped` is null.
//! * [`Key::Afd`] — an `IOCTL_AFD_POLL` finished; `lpOverlapped` is the
//!   `ApcContext` the poll was issued with, the address of the driver's
//!   per-socket state (see `afd.rs`).
//! * [`Key::Operation`] — an overlapped socket operation (`WSARecv`,
//!   `WSASend`, `ConnectEx`, `AcceptEx`) finished or was cancelled: sockets
//!   are associated with this key, and each operation's `OVERLAPPED` is the
//!   first field of a `#[repr(C)]`, heap-pinned header that the driver owns
//!   until this packet arrives (see `ops.rs`). A packet whose
//!   `lpOverlapped` is not one of the driver's operations is ignored.

use std::io;
use std::ptr;
use std::time::Duration;

use windows_sys::Win32::Foundation::{CloseHandle, GetLastError, HANDLE, WAIT_TIMEOUT};
use windows_sys::Win32::System::Threading::INFINITE;
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus,
    OVERLAPPED_ENTRY,
};

/// What a completion packet is about, by its completion key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Key {
    /// A wakeup from [`loop_api::driver::Notify::notify`].
    Wake = 1,
    /// An AFD poll completed (readiness).
    Afd = 2,
    /// An overlapped socket operation completed.
    Operation = 3,
}

impl Key {
    pub(crate) fn of(raw: usize) -> Option<Key> {
        match raw {
            1 => Some(Key::Wake),
            2 => Some(Key::Afd),
            3 => Some(Key::Operation),
            _ => None,
        }
    }
}

/// An I/O completion port, closed on drop.
pub(crate) struct CompletionPort {
    handle: HANDLE,
}

// SAFETY: a completion port handle may be used from any thread at once:
// posting, waiting and associating are all thread-safe kernel calls, and
// `CompletionPort` exposes nothing else. The handle is closed only in
// `drop`, when no other reference remains.
unsafe impl Send for CompletionPort {}
// SAFETY: as for `Send`: every method takes `&self` and is a thread-safe
// kernel call on the handle.
unsafe impl Sync for CompletionPort {}

impl CompletionPort {
    /// A new port; one thread (the loop's) dequeues from it.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: INVALID_HANDLE_VALUE with no existing port creates a new
        // port; no pointers are passed.
        let handle = unsafe {
            CreateIoCompletionPort(
                windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE,
                ptr::null_mut(),
                0,
                1,
            )
        };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(CompletionPort { handle })
    }

    /// Associates `handle` with this port: its completions arrive with `key`.
    ///
    /// # Safety
    /// `handle` must be a valid handle opened for overlapped I/O, and every
    /// operation later issued on it with a non-null `OVERLAPPED`/`ApcContext`
    /// must keep that memory alive until its packet is dequeued here.
    pub(crate) unsafe fn associate(&self, handle: HANDLE, key: Key) -> io::Result<()> {
        // SAFETY: the caller guarantees `handle` is valid; `self.handle` is
        // a live port (closed only on drop).
        let r = unsafe { CreateIoCompletionPort(handle, self.handle, key as usize, 0) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Queues a packet with `key` and a null `OVERLAPPED`.
    pub(crate) fn post(&self, key: Key) -> io::Result<()> {
        // SAFETY: `self.handle` is a live port; a null OVERLAPPED is allowed
        // and the packet carries no memory the kernel could write.
        let ok = unsafe { PostQueuedCompletionStatus(self.handle, 0, key as usize, ptr::null()) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Dequeues up to `entries.len()` packets, waiting up to `timeout_ms`
    /// (`INFINITE` for no limit). Returns how many were dequeued; a timeout
    /// is `Ok(0)`, not an error.
    pub(crate) fn wait(
        &self,
        entries: &mut [OVERLAPPED_ENTRY],
        timeout_ms: u32,
    ) -> io::Result<usize> {
        let mut n: u32 = 0;
        let len = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        // SAFETY: `entries` is valid for `len` writes of OVERLAPPED_ENTRY and
        // `n` for one u32; not alertable, so no APC runs inside the call.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.handle,
                entries.as_mut_ptr(),
                len,
                &mut n,
                timeout_ms,
                0,
            )
        };
        if ok == 0 {
            // SAFETY: reads this thread's last-error value; no preconditions.
            let code = unsafe { GetLastError() };
            if code == WAIT_TIMEOUT {
                return Ok(0);
            }
            return Err(io::Error::from_raw_os_error(code as i32));
        }
        Ok(n as usize)
    }
}

impl Drop for CompletionPort {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateIoCompletionPort and this is
        // the only place it is closed.
        unsafe { CloseHandle(self.handle) };
    }
}

/// `timeout` as whole milliseconds for `GetQueuedCompletionStatusEx`,
/// rounded up so that a wait never ends before a timer is due; `None` (and
/// anything too long to express) is `INFINITE`.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => INFINITE,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            // INFINITE itself means "no limit"; stop one short of it.
            u32::try_from(ms).map_or(INFINITE - 1, |ms| ms.min(INFINITE - 1))
        }
    }
}

/// A zeroed entry array for [`CompletionPort::wait`].
pub(crate) fn entries(n: usize) -> Vec<OVERLAPPED_ENTRY> {
    vec![OVERLAPPED_ENTRY::default(); n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(None), INFINITE);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(timeout_ms(Some(Duration::from_secs(86_400))), 86_400_000);
        assert_eq!(timeout_ms(Some(Duration::MAX)), INFINITE - 1);
    }
}
