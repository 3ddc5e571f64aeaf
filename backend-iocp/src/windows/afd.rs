//! Readiness through AFD polling, the way mio and polling do it on Windows.
//!
//! Winsock sockets are files of the Ancillary Function Driver; an
//! `IOCTL_AFD_POLL` on a `\Device\Afd` handle asks AFD to complete when a
//! socket has any of a set of events. That handle is associated with the
//! loop's completion port ([`Key::Afd`]), so a finished poll is just another
//! completion packet, whose `lpOverlapped` is the `ApcContext` the poll was
//! issued with: the address of the socket's [`SockState`].
//!
//! One poll is in flight per watched socket. It is (re-)issued at the start
//! of every `Driver::poll` for each socket with interest and no poll in
//! flight, so a socket that stays readable completes again at once and is
//! reported on every iteration: level-triggered, as a selector is.
//!
//! # Memory
//! While a poll is in flight the kernel owns the state's `iosb` and `info`
//! and will write them on completion. A [`SockState`] is therefore a
//! heap allocation with a fixed address, freed only when no poll is in
//! flight on it: deregistering a socket with a poll in flight cancels the
//! poll and parks the state in `orphans` until its (cancelled) packet
//! arrives. States whose packets never arrive before the driver is dropped
//! are leaked rather than freed under the kernel.

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::ptr;

use loop_api::driver::IoEvent;
use loop_api::events::RawFd;
use loop_api::idle_memory::{trim_map, trim_set};
use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
use windows_sys::Wdk::Storage::FileSystem::{NtCancelIoFileEx, NtCreateFile, FILE_OPEN};
use windows_sys::Wdk::System::IO::NtDeviceIoControlFile;
use windows_sys::Win32::Foundation::{
    CloseHandle, RtlNtStatusToDosError, HANDLE, NTSTATUS, STATUS_CANCELLED, STATUS_NOT_FOUND,
    STATUS_PENDING, STATUS_SUCCESS, UNICODE_STRING,
};
use windows_sys::Win32::Networking::WinSock::{
    getsockopt, WSAGetLastError, WSAIoctl, INVALID_SOCKET, SIO_BASE_HANDLE, SIO_BSP_HANDLE_POLL,
    SOCKET, SOCKET_ERROR, SOL_SOCKET, SO_TYPE,
};
use windows_sys::Win32::Storage::FileSystem::{
    SetFileCompletionNotificationModes, FILE_SHARE_READ, FILE_SHARE_WRITE, SYNCHRONIZE,
};
use windows_sys::Win32::System::WindowsProgramming::FILE_SKIP_SET_EVENT_ON_HANDLE;
use windows_sys::Win32::System::IO::{IO_STATUS_BLOCK, IO_STATUS_BLOCK_0, OVERLAPPED_ENTRY};

use super::port::{CompletionPort, Key};

const IOCTL_AFD_POLL: u32 = 0x0001_2024;

const AFD_POLL_RECEIVE: u32 = 0x0001;
const AFD_POLL_SEND: u32 = 0x0004;
const AFD_POLL_DISCONNECT: u32 = 0x0008;
const AFD_POLL_ABORT: u32 = 0x0010;
const AFD_POLL_LOCAL_CLOSE: u32 = 0x0020;
const AFD_POLL_ACCEPT: u32 = 0x0080;
const AFD_POLL_CONNECT_FAIL: u32 = 0x0100;

/// Events that make a read not block (data, a connection to accept, EOF, error).
const READ_EVENTS: u32 = AFD_POLL_RECEIVE
    | AFD_POLL_ACCEPT
    | AFD_POLL_DISCONNECT
    | AFD_POLL_ABORT
    | AFD_POLL_CONNECT_FAIL;
/// Events that make a write not block (buffer space, error).
const WRITE_EVENTS: u32 = AFD_POLL_SEND | AFD_POLL_ABORT | AFD_POLL_CONNECT_FAIL;

#[repr(C)]
#[derive(Clone, Copy)]
struct AfdPollHandleInfo {
    handle: HANDLE,
    events: u32,
    status: NTSTATUS,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct AfdPollInfo {
    timeout: i64,
    number_of_handles: u32,
    exclusive: u32,
    handles: [AfdPollHandleInfo; 1],
}

/// One watched socket. `iosb` and `info` belong to the kernel while
/// `in_flight != 0`.
struct SockState {
    iosb: IO_STATUS_BLOCK,
    info: AfdPollInfo,
    fd: RawFd,
    /// The base provider socket AFD knows (past any layered providers).
    base: SOCKET,
    readable: bool,
    writable: bool,
    /// The AFD mask of the poll in flight; 0 when none is.
    in_flight: u32,
}

impl SockState {
    fn mask(&self) -> u32 {
        let mut m = AFD_POLL_LOCAL_CLOSE;
        if self.readable {
            m |= READ_EVENTS;
        }
        if self.writable {
            m |= WRITE_EVENTS;
        }
        m
    }
}

/// An open `\Device\Afd` handle associated with the port, and the sockets
/// polled through it.
pub(crate) struct Afd {
    handle: HANDLE,
    /// Watched sockets. Every pointer came from `Box::into_raw` and is
    /// owned by this map.
    states: HashMap<RawFd, *mut SockState>,
    /// Deregistered states whose cancelled poll has not completed yet.
    orphans: HashSet<*mut SockState>,
}

impl Afd {
    /// Opens `\Device\Afd` and associates it with `port`.
    pub(crate) fn new(port: &CompletionPort) -> io::Result<Afd> {
        let name: Vec<u16> = "\\Device\\Afd\\RustAsyncioIocp".encode_utf16().collect();
        let bytes = (name.len() * 2) as u16;
        let uname = UNICODE_STRING {
            Length: bytes,
            MaximumLength: bytes,
            Buffer: name.as_ptr() as *mut u16,
        };
        let attrs = OBJECT_ATTRIBUTES {
            Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
            RootDirectory: ptr::null_mut(),
            ObjectName: &uname,
            Attributes: 0,
            SecurityDescriptor: ptr::null(),
            SecurityQualityOfService: ptr::null(),
        };
        let mut handle: HANDLE = ptr::null_mut();
        let mut iosb = IO_STATUS_BLOCK::default();
        // SAFETY: every pointer refers to a local that outlives the
        // synchronous call (`name` backs `uname`, which backs `attrs`); no
        // EA buffer; the handle is written only on success.
        let status = unsafe {
            NtCreateFile(
                &mut handle,
                SYNCHRONIZE,
                &attrs,
                &mut iosb,
                ptr::null(),
                0,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                FILE_OPEN,
                0,
                ptr::null(),
                0,
            )
        };
        if status != STATUS_SUCCESS {
            return Err(nt_error(status));
        }
        let afd = Afd {
            handle,
            states: HashMap::new(),
            orphans: HashSet::new(),
        };
        // SAFETY: `handle` is the AFD handle just opened (closed only in
        // Drop, after every poll on it has completed or been leaked); every
        // poll issued on it passes a `SockState` that stays allocated until
        // its packet is dequeued (see the module docs).
        unsafe { port.associate(afd.handle, Key::Afd)? };
        // SAFETY: a valid handle; the flag only stops the kernel signalling
        // the handle as an event, which nothing waits on.
        // Failure is harmless (one wasted event signal per completion).
        unsafe {
            SetFileCompletionNotificationModes(afd.handle, FILE_SKIP_SET_EVENT_ON_HANDLE as u8)
        };
        Ok(afd)
    }

    /// Sets what `fd` is watched for; both false stops watching it.
    pub(crate) fn set_interest(
        &mut self,
        fd: RawFd,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        if !readable && !writable {
            if let Some(p) = self.states.remove(&fd) {
                self.retire(p);
            }
            return Ok(());
        }
        let p = match self.states.get(&fd) {
            Some(&p) => p,
            None => {
                let base = base_socket(fd as SOCKET)?;
                let p = Box::into_raw(Box::new(SockState {
                    iosb: IO_STATUS_BLOCK::default(),
                    info: AfdPollInfo {
                        timeout: i64::MAX,
                        number_of_handles: 0,
                        exclusive: 0,
                        handles: [AfdPollHandleInfo {
                            handle: ptr::null_mut(),
                            events: 0,
                            status: 0,
                        }],
                    },
                    fd,
                    base,
                    readable: false,
                    writable: false,
                    in_flight: 0,
                }));
                self.states.insert(fd, p);
                p
            }
        };
        // SAFETY: `p` is in `states`, so it is live; the fields touched here
        // are never written by the kernel.
        let st = unsafe { &mut *p };
        st.readable = readable;
        st.writable = writable;
        if st.in_flight != 0 && st.in_flight != st.mask() {
            // The poll in flight waits for the wrong events: cancel it; its
            // packet frees the slot and the next `Driver::poll` re-arms.
            self.cancel(p);
        }
        Ok(())
    }

    /// Issues a poll for every watched socket that has none in flight.
    /// Sockets found closed are dropped from the set, as epoll drops a
    /// closed descriptor.
    pub(crate) fn arm(&mut self, out: &mut Vec<IoEvent>) -> io::Result<()> {
        let mut closed = Vec::new();
        for (&fd, &p) in &self.states {
            // SAFETY: live (in `states`); with no poll in flight the kernel
            // does not touch the state, so this is the only reference.
            let st = unsafe { &mut *p };
            if st.in_flight != 0 {
                continue;
            }
            let mask = st.mask();
            st.info = AfdPollInfo {
                timeout: i64::MAX,
                number_of_handles: 1,
                exclusive: 0,
                handles: [AfdPollHandleInfo {
                    handle: st.base as HANDLE,
                    events: mask,
                    status: 0,
                }],
            };
            st.iosb = IO_STATUS_BLOCK {
                Anonymous: IO_STATUS_BLOCK_0 {
                    Status: STATUS_PENDING,
                },
                Information: 0,
            };
            let info = &raw mut st.info;
            // SAFETY: `self.handle` is the open AFD handle, associated with
            // the port; `iosb`, `info` and the ApcContext all point into the
            // boxed state, which stays allocated until this poll's packet is
            // dequeued (module docs); input and output are the same buffer,
            // as AFD expects.
            let status = unsafe {
                NtDeviceIoControlFile(
                    self.handle,
                    ptr::null_mut(),
                    None,
                    p as *const c_void,
                    &raw mut st.iosb,
                    IOCTL_AFD_POLL,
                    info as *const c_void,
                    size_of::<AfdPollInfo>() as u32,
                    info as *mut c_void,
                    size_of::<AfdPollInfo>() as u32,
                )
            };
            match status {
                // Both queue a packet: completions are not skipped on success.
                STATUS_SUCCESS | STATUS_PENDING => st.in_flight = mask,
                _ => {
                    let err = nt_error(status);
                    // A socket closed behind the loop's back: AFD refuses the
                    // handle. Report it once as ready (the callback's next
                    // read or write sees the error), then forget it.
                    if is_closed_socket(&err) {
                        closed.push(fd);
                        out.push(IoEvent {
                            fd,
                            readable: st.readable,
                            writable: st.writable,
                        });
                    } else {
                        return Err(err);
                    }
                }
            }
        }
        for fd in closed {
            if let Some(p) = self.states.remove(&fd) {
                self.retire(p);
            }
        }
        Ok(())
    }

    /// Handles one [`Key::Afd`] packet.
    pub(crate) fn complete(&mut self, entry: &OVERLAPPED_ENTRY, out: &mut Vec<IoEvent>) {
        let p = entry.lpOverlapped as *mut SockState;
        if self.orphans.remove(&p) {
            // SAFETY: this packet was the last use the kernel had for the
            // orphan; it came from Box::into_raw and is in no other set.
            drop(unsafe { Box::from_raw(p) });
            return;
        }
        // SAFETY: every AFD packet carries the ApcContext of a poll issued by
        // `arm`, i.e. a state in `states` or `orphans`; not an orphan, so it
        // is live in `states`, and its poll is done, so the kernel no longer
        // writes it.
        let st = unsafe { &mut *p };
        st.in_flight = 0;
        // SAFETY: the poll completed, so the kernel has written the status.
        let status = unsafe { st.iosb.Anonymous.Status };
        if status == STATUS_CANCELLED {
            return; // re-armed, with the current interest, by the next `arm`
        }
        let events = if status < 0 {
            // The poll itself failed: let the callbacks find the error.
            AFD_POLL_CONNECT_FAIL
        } else if st.info.number_of_handles < 1 {
            0
        } else {
            st.info.handles[0].events
        };
        if events & AFD_POLL_LOCAL_CLOSE != 0 {
            // Closed through this process: stop watching, as epoll does.
            let fd = st.fd;
            if let Some(p) = self.states.remove(&fd) {
                self.retire(p);
            }
            return;
        }
        let readable = st.readable && events & READ_EVENTS != 0;
        let writable = st.writable && events & WRITE_EVENTS != 0;
        if readable || writable {
            out.push(IoEvent {
                fd: st.fd,
                readable,
                writable,
            });
        }
    }

    /// How many states still wait for a packet.
    pub(crate) fn in_flight(&self) -> usize {
        let live = self
            .states
            .values()
            // SAFETY: live states; `in_flight` is never written by the kernel.
            .filter(|&&p| unsafe { (*p).in_flight } != 0)
            .count();
        live + self.orphans.len()
    }

    /// Gives back what a burst of sockets made the state maps grow to.
    pub(crate) fn trim(&mut self) {
        trim_map(&mut self.states);
        trim_set(&mut self.orphans);
    }

    /// Cancels every poll in flight (before the driver drains the port).
    pub(crate) fn cancel_all(&mut self) {
        for p in std::mem::take(&mut self.states).into_values() {
            self.retire(p);
        }
    }

    /// Forgets a state that left `states`: freed now if idle, else
    /// cancelled and kept until its packet arrives.
    fn retire(&mut self, p: *mut SockState) {
        // SAFETY: `p` just left `states`, so it is live and owned here.
        if unsafe { (*p).in_flight } == 0 {
            // SAFETY: no poll in flight: nobody else refers to it.
            drop(unsafe { Box::from_raw(p) });
        } else {
            self.cancel(p);
            self.orphans.insert(p);
        }
    }

    fn cancel(&self, p: *mut SockState) {
        let mut cancel_iosb = IO_STATUS_BLOCK::default();
        // SAFETY: `p` is live with a poll in flight; NtCancelIoFileEx only
        // uses the iosb address to find that request. A request that has
        // already completed is simply not found.
        let status = unsafe { NtCancelIoFileEx(self.handle, &raw mut (*p).iosb, &mut cancel_iosb) };
        debug_assert!(
            status == STATUS_SUCCESS || status == STATUS_NOT_FOUND,
            "NtCancelIoFileEx: {status:#x}"
        );
    }

    /// Leaks whatever the kernel may still write (called when draining gave up).
    pub(crate) fn leak_in_flight(&mut self) {
        self.orphans.clear();
        self.states.clear();
    }
}

impl Drop for Afd {
    fn drop(&mut self) {
        // The driver cancelled and drained before dropping us: what is left
        // is idle and can be freed.
        for p in self.states.drain().map(|(_, p)| p) {
            // SAFETY: idle states owned by the map.
            drop(unsafe { Box::from_raw(p) });
        }
        debug_assert!(self.orphans.is_empty());
        // SAFETY: opened in `new`, closed only here.
        unsafe { CloseHandle(self.handle) };
    }
}

fn nt_error(status: NTSTATUS) -> io::Error {
    // SAFETY: a pure mapping from NTSTATUS to a Win32 error code.
    io::Error::from_raw_os_error(unsafe { RtlNtStatusToDosError(status) } as i32)
}

fn is_closed_socket(e: &io::Error) -> bool {
    const ERROR_INVALID_HANDLE: i32 = 6;
    const WSAENOTSOCK: i32 = 10038;
    matches!(e.raw_os_error(), Some(ERROR_INVALID_HANDLE | WSAENOTSOCK))
}

/// The base service provider's socket for `sock`, which is what AFD polls.
fn base_socket(sock: SOCKET) -> io::Result<SOCKET> {
    check_is_socket(sock)?;
    match socket_ioctl(sock, SIO_BASE_HANDLE) {
        Ok(base) => Ok(base),
        // Some layered providers refuse SIO_BASE_HANDLE but answer this one.
        Err(e) => socket_ioctl(sock, SIO_BSP_HANDLE_POLL)
            .and_then(|s| socket_ioctl(s, SIO_BASE_HANDLE).or(Ok(s)))
            .map_err(|_| e),
    }
}

/// `WSAENOTSOCK` unless `sock` is an open socket. (Wine answers
/// `SIO_BASE_HANDLE` for any handle, so that alone does not tell.)
fn check_is_socket(sock: SOCKET) -> io::Result<()> {
    let mut ty: i32 = 0;
    let mut len = size_of::<i32>() as i32;
    // SAFETY: `ty` is valid for `len` bytes of writes and `len` for one
    // i32; getsockopt validates the handle itself.
    let r = unsafe { getsockopt(sock, SOL_SOCKET, SO_TYPE, (&raw mut ty).cast(), &mut len) };
    if r == SOCKET_ERROR {
        // SAFETY: reads this thread's last Winsock error; no preconditions.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    Ok(())
}

fn socket_ioctl(sock: SOCKET, code: u32) -> io::Result<SOCKET> {
    let mut out: SOCKET = INVALID_SOCKET;
    let mut bytes: u32 = 0;
    // SAFETY: `out` and `bytes` are valid for writes of their sizes; no
    // input buffer, no OVERLAPPED (the call is synchronous).
    let r = unsafe {
        WSAIoctl(
            sock,
            code,
            ptr::null(),
            0,
            (&raw mut out).cast(),
            size_of::<SOCKET>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if r == SOCKET_ERROR || out == INVALID_SOCKET {
        // SAFETY: reads this thread's last Winsock error; no preconditions.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    Ok(out)
}
