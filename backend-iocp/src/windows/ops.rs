//! Overlapped socket operations: the memory the kernel may touch while one
//! is in flight, how each is issued, and what its owner hears (the table
//! of operations in flight and the owners are the shared
//! [`loop_api::proactor_events::ops`]).
//!
//! # Memory
//! An operation is an [`OpHeader`] on the heap: a `#[repr(C)]` struct whose
//! first field is the `OVERLAPPED` the kernel completes, followed by
//! everything else the kernel may read or write until then (the `WSABUF`
//! array, the receive flags, and the [`Request`]'s buffers, address or
//! pre-created socket). The driver turns the box into a raw pointer when it
//! issues the operation and keeps that pointer, keyed by its address, until
//! the completion packet whose `lpOverlapped` is that address is dequeued
//! (a cancelled operation's packet included: `CancelIoEx` is a request, and
//! only the packet says the kernel is done). Only then is the box rebuilt
//! and its [`Request`] handed back to the operation's owner. While an operation is
//! in flight nothing on our side reads or writes the header; the driver's
//! bookkeeping for it (owner, socket, cancellation) lives apart, in the
//! driver's table.
//!
//! An operation that fails to start (the issuing call fails with anything
//! but `WSA_IO_PENDING`) queues no packet, so its header is freed at once.
//! One that succeeds at once still queues a packet: the driver never sets
//! `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`, so every started operation ends
//! with exactly one packet.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::ptr;
use std::rc::Rc;
use std::sync::OnceLock;

use loop_api::proactor_events::ops::OpId;

use socket2::{SockAddr, Socket};
use windows_sys::core::{BOOL, GUID};
use windows_sys::Win32::Foundation::{
    RtlNtStatusToDosError, ERROR_IO_PENDING, ERROR_OPERATION_ABORTED, HANDLE, NTSTATUS,
};
use windows_sys::Win32::Networking::WinSock::{
    WSAGetLastError, WSAGetOverlappedResult, WSAIoctl, WSARecv, WSASend, LPFN_ACCEPTEX,
    LPFN_CONNECTEX, LPFN_GETACCEPTEXSOCKADDRS, LPFN_TRANSMITFILE,
    SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKADDR, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR,
    TRANSMIT_FILE_BUFFERS, WSABUF, WSAENOTSOCK, WSAID_ACCEPTEX, WSAID_CONNECTEX,
    WSAID_GETACCEPTEXSOCKADDRS, WSAID_TRANSMITFILE, WSA_IO_PENDING,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::IO::OVERLAPPED;

/// `STATUS_CANCELLED`: what a packet of a cancelled operation carries.
const STATUS_CANCELLED: NTSTATUS = 0xC000_0120_u32 as NTSTATUS;

/// Bytes AcceptEx wants for each of the two addresses it writes: the
/// largest address plus 16, as its documentation asks.
pub(crate) const ACCEPT_ADDR_LEN: u32 = size_of::<SOCKADDR_STORAGE>() as u32 + 16;

/// What an operation does, with the memory it lends the kernel.
pub enum Request {
    /// `WSARecv` into all of `buf`. An empty `buf` is a zero-byte receive,
    /// which completes once data (or EOF, or an error) is there and takes
    /// nothing: readiness, as an overlapped operation.
    Recv { buf: Vec<u8> },
    /// `WSASend` of the chunks, in order, the first from `head` on.
    Send {
        chunks: VecDeque<Vec<u8>>,
        head: usize,
    },
    /// `ConnectEx` to `addr` (the socket must be bound).
    Connect { addr: SockAddr },
    /// `TransmitFile` of `len` bytes of `file` from `offset` (set in the
    /// `OVERLAPPED`), on a connected stream socket.
    TransmitFile {
        file: Rc<File>,
        offset: u64,
        len: u32,
    },
    /// `ReadFile` into all of `buf`, on a pipe (or any handle opened for
    /// overlapped I/O).
    ReadFile { buf: Vec<u8> },
    /// `WriteFile` of all of `data`.
    WriteFile { data: Vec<u8> },
    /// `AcceptEx` on the listener the operation is issued on, into `conn`
    /// (a fresh socket of the listener's family and type); `addrs` receives
    /// the local and remote addresses.
    Accept {
        conn: Socket,
        addrs: Box<[u8; 2 * ACCEPT_ADDR_LEN as usize]>,
    },
}

impl Request {
    /// An accept into `conn`.
    pub(crate) fn accept(conn: Socket) -> Request {
        Request::Accept {
            conn,
            addrs: Box::new([0; 2 * ACCEPT_ADDR_LEN as usize]),
        }
    }
}

/// One operation in flight. `overlapped` must stay the first field: the
/// completion packet's `lpOverlapped` is the header's address.
#[repr(C)]
pub(crate) struct OpHeader {
    overlapped: OVERLAPPED,
    /// What `WSARecv`/`WSASend` were given (Winsock copies it, but it is
    /// kept anyway: nothing the kernel was pointed at moves or goes early).
    wsabufs: Vec<WSABUF>,
    /// `WSARecv`'s in/out flags.
    flags: u32,
    /// Where an empty receive buffer points.
    scratch: [u8; 1],
    request: Request,
}

impl OpHeader {
    /// A header for `request`, not issued yet.
    pub(crate) fn new(request: Request) -> Box<OpHeader> {
        Box::new(OpHeader {
            overlapped: OVERLAPPED::default(),
            wsabufs: Vec::new(),
            flags: 0,
            scratch: [0],
            request,
        })
    }

    /// The request back, once the kernel is done with the header.
    pub(crate) fn into_request(self) -> Request {
        self.request
    }

    /// The operation's outcome, read from a completed header: the bytes
    /// transferred, or the Winsock error.
    pub(crate) fn result(&self, socket: SOCKET, bytes: u32) -> io::Result<usize> {
        let status = self.overlapped.Internal as NTSTATUS;
        if status >= 0 {
            return Ok(bytes as usize);
        }
        if status == STATUS_CANCELLED {
            return Err(io::Error::from_raw_os_error(ERROR_OPERATION_ABORTED as i32));
        }
        if matches!(
            self.request,
            Request::ReadFile { .. } | Request::WriteFile { .. }
        ) {
            // Not a socket: the status says it all.
            // SAFETY: a pure mapping from NTSTATUS to a Win32 error code.
            let code = unsafe { RtlNtStatusToDosError(status) };
            return Err(io::Error::from_raw_os_error(code as i32));
        }
        let mut n: u32 = 0;
        let mut flags: u32 = 0;
        // SAFETY: the operation is complete (its packet was dequeued), so
        // the call only reads `overlapped`, which is live for the borrow;
        // `n` and `flags` are valid for writes; no wait is asked for.
        let ok = unsafe { WSAGetOverlappedResult(socket, &self.overlapped, &mut n, 0, &mut flags) };
        if ok != 0 {
            return Ok(n as usize);
        }
        let code = last_wsa_error();
        if code == WSAENOTSOCK {
            // The socket was closed since: translate the status ourselves.
            // SAFETY: a pure mapping from NTSTATUS to a Win32 error code.
            let code = unsafe { RtlNtStatusToDosError(status) };
            return Err(io::Error::from_raw_os_error(code as i32));
        }
        Err(io::Error::from_raw_os_error(code))
    }
}

/// Starts the operation `header` describes on `socket` (for an accept, the
/// listener). `Ok` means a completion packet will come for it; `Err` means
/// none will, and the caller may free the header at once.
///
/// # Safety
/// `header` comes from `Box::into_raw`, and unless this returns `Err` it
/// stays allocated, unmoved and untouched until the packet whose
/// `lpOverlapped` is `header` has been dequeued from the port `socket` is
/// associated with.
pub(crate) unsafe fn issue(header: *mut OpHeader, socket: SOCKET) -> io::Result<()> {
    // SAFETY: `header` is a live, exclusive allocation (the caller's
    // promise) that nothing else refers to until the call below hands it
    // to the kernel; this is the last Rust reference to it until then.
    let h = unsafe { &mut *header };
    let ov: *mut OVERLAPPED = &raw mut h.overlapped;
    let r = match &mut h.request {
        Request::Recv { buf } => {
            let ptr = if buf.is_empty() {
                h.scratch.as_mut_ptr()
            } else {
                buf.as_mut_ptr()
            };
            h.wsabufs = vec![WSABUF {
                len: u32::try_from(buf.len()).unwrap_or(u32::MAX),
                buf: ptr,
            }];
            h.flags = 0;
            let mut n: u32 = 0;
            // SAFETY: the WSABUF points into `buf` (or `scratch`), and it,
            // the flags and the OVERLAPPED live in the header, which stays
            // put until the packet (caller's promise); no completion
            // routine, so the packet goes to the port.
            let r = unsafe {
                WSARecv(
                    socket,
                    h.wsabufs.as_ptr(),
                    1,
                    &mut n,
                    &raw mut h.flags,
                    ov,
                    None,
                )
            };
            started(r == 0)
        }
        Request::Send { chunks, head } => {
            let head = *head;
            h.wsabufs = chunks
                .iter_mut()
                .enumerate()
                .map(|(i, c)| {
                    let c = if i == 0 { &mut c[head..] } else { &mut c[..] };
                    WSABUF {
                        len: u32::try_from(c.len()).unwrap_or(u32::MAX),
                        buf: c.as_mut_ptr(),
                    }
                })
                .collect();
            let count = u32::try_from(h.wsabufs.len()).unwrap_or(u32::MAX);
            let mut n: u32 = 0;
            // SAFETY: every WSABUF points into a chunk the header owns,
            // which stays put until the packet (caller's promise); the
            // kernel only reads them.
            let r = unsafe { WSASend(socket, h.wsabufs.as_ptr(), count, &mut n, 0, ov, None) };
            started(r == 0)
        }
        Request::Connect { addr } => {
            let connect_ex = extensions(socket)?.connect_ex;
            let mut n: u32 = 0;
            // SAFETY: `connect_ex` is ConnectEx for this provider; the
            // address lives in the header (kept until the packet), no send
            // buffer.
            let ok = unsafe {
                connect_ex(
                    socket,
                    addr.as_ptr().cast::<SOCKADDR>(),
                    addr.len(),
                    ptr::null(),
                    0,
                    &mut n,
                    ov,
                )
            };
            started(ok != 0)
        }
        Request::TransmitFile { file, offset, len } => {
            let transmit_file = extensions(socket)?.transmit_file;
            // TransmitFile reads the file from the position the OVERLAPPED
            // names, not the file's own.
            h.overlapped.Anonymous.Anonymous.Offset = *offset as u32;
            h.overlapped.Anonymous.Anonymous.OffsetHigh = (*offset >> 32) as u32;
            let handle = std::os::windows::io::AsRawHandle::as_raw_handle(&**file);
            // SAFETY: `transmit_file` is TransmitFile for this provider; the
            // file stays open while the header (which holds an `Rc` of it)
            // lives, until the packet; no head or tail buffers.
            let ok = unsafe { transmit_file(socket, handle, *len, 0, ov, ptr::null(), 0) };
            started(ok != 0)
        }
        Request::ReadFile { buf } => {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            // SAFETY: `buf` and the OVERLAPPED live in the header, which
            // stays put until the packet (caller's promise); the handle
            // was opened for overlapped I/O, so no byte count is written.
            let ok =
                unsafe { ReadFile(socket as HANDLE, buf.as_mut_ptr(), len, ptr::null_mut(), ov) };
            started_file(ok != 0)
        }
        Request::WriteFile { data } => {
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            // SAFETY: as for ReadFile; the kernel only reads `data`.
            let ok =
                unsafe { WriteFile(socket as HANDLE, data.as_ptr(), len, ptr::null_mut(), ov) };
            started_file(ok != 0)
        }
        Request::Accept { conn, addrs } => {
            let accept_ex = extensions(socket)?.accept_ex;
            let mut n: u32 = 0;
            // SAFETY: `accept_ex` is AcceptEx for this provider; the address
            // buffer (2 * ACCEPT_ADDR_LEN bytes, no data) and the accept
            // socket live in the header, kept until the packet.
            let ok = unsafe {
                accept_ex(
                    socket,
                    std::os::windows::io::AsRawSocket::as_raw_socket(conn) as SOCKET,
                    addrs.as_mut_ptr().cast(),
                    0,
                    ACCEPT_ADDR_LEN,
                    ACCEPT_ADDR_LEN,
                    &mut n,
                    ov,
                )
            };
            started(ok != 0)
        }
    };
    r
}

/// The outcome of an issuing call: success, or `WSA_IO_PENDING`, both of
/// which queue a packet; any other error queues none.
fn started(succeeded: bool) -> io::Result<()> {
    if succeeded {
        return Ok(());
    }
    match last_wsa_error() {
        WSA_IO_PENDING => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

/// [`started`] for `ReadFile`/`WriteFile`, whose error is `GetLastError`'s.
fn started_file(succeeded: bool) -> io::Result<()> {
    if succeeded {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(ERROR_IO_PENDING as i32) {
        Ok(())
    } else {
        Err(e)
    }
}

fn last_wsa_error() -> i32 {
    // SAFETY: reads this thread's last Winsock error; no preconditions.
    unsafe { WSAGetLastError() }
}

/// One completion, as the owner hears it.
pub struct Completion {
    /// Which operation, so an owner with several in flight knows which one
    /// ended.
    pub id: OpId,
    /// The owner's own tag for the operation. Read by owners with more
    /// than one kind of operation in flight (the stream transport); the
    /// `sock_*` methods and the accept loop have one kind each.
    pub kind: u8,
    /// Bytes transferred, or the Winsock error (`ERROR_OPERATION_ABORTED`
    /// for a cancelled operation).
    pub result: io::Result<usize>,
    /// The memory the operation lent the kernel, handed back.
    pub request: Request,
}

/// The Winsock extension functions, looked up once.
pub(crate) struct Extensions {
    pub connect_ex: unsafe extern "system" fn(
        SOCKET,
        *const SOCKADDR,
        i32,
        *const std::ffi::c_void,
        u32,
        *mut u32,
        *mut OVERLAPPED,
    ) -> i32,
    pub accept_ex: unsafe extern "system" fn(
        SOCKET,
        SOCKET,
        *mut std::ffi::c_void,
        u32,
        u32,
        u32,
        *mut u32,
        *mut OVERLAPPED,
    ) -> i32,
    pub transmit_file: unsafe extern "system" fn(
        SOCKET,
        HANDLE,
        u32,
        u32,
        *mut OVERLAPPED,
        *const TRANSMIT_FILE_BUFFERS,
        u32,
    ) -> BOOL,
    pub get_accept_ex_sockaddrs: unsafe extern "system" fn(
        *const std::ffi::c_void,
        u32,
        u32,
        u32,
        *mut *mut SOCKADDR,
        *mut i32,
        *mut *mut SOCKADDR,
        *mut i32,
    ),
}

/// ConnectEx, AcceptEx, GetAcceptExSockaddrs and TransmitFile, asked of `socket`'s
/// provider with `SIO_GET_EXTENSION_FUNCTION_POINTER` the first time and
/// kept for the process (the TCP/IP provider serves IPv4 and IPv6 alike).
pub(crate) fn extensions(socket: SOCKET) -> io::Result<&'static Extensions> {
    static EXT: OnceLock<Extensions> = OnceLock::new();
    if let Some(e) = EXT.get() {
        return Ok(e);
    }
    let connect: LPFN_CONNECTEX = extension(socket, WSAID_CONNECTEX)?;
    let accept: LPFN_ACCEPTEX = extension(socket, WSAID_ACCEPTEX)?;
    let sockaddrs: LPFN_GETACCEPTEXSOCKADDRS = extension(socket, WSAID_GETACCEPTEXSOCKADDRS)?;
    let transmit: LPFN_TRANSMITFILE = extension(socket, WSAID_TRANSMITFILE)?;
    let missing = || io::Error::new(io::ErrorKind::Unsupported, "no Winsock extension function");
    let e = Extensions {
        connect_ex: connect.ok_or_else(missing)?,
        accept_ex: accept.ok_or_else(missing)?,
        get_accept_ex_sockaddrs: sockaddrs.ok_or_else(missing)?,
        transmit_file: transmit.ok_or_else(missing)?,
    };
    Ok(EXT.get_or_init(|| e))
}

/// One extension function pointer, as the `Option<fn>` type `F`.
fn extension<F: Copy>(socket: SOCKET, guid: GUID) -> io::Result<Option<F>> {
    debug_assert_eq!(size_of::<Option<F>>(), size_of::<usize>());
    let mut f = MaybeUninit::<Option<F>>::zeroed();
    let mut n: u32 = 0;
    // SAFETY: the input is the GUID (16 bytes, live for the call), the
    // output a pointer-sized slot; synchronous (no OVERLAPPED).
    let r = unsafe {
        WSAIoctl(
            socket,
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            (&raw const guid).cast(),
            size_of::<GUID>() as u32,
            f.as_mut_ptr().cast(),
            size_of::<usize>() as u32,
            &mut n,
            ptr::null_mut(),
            None,
        )
    };
    if r == SOCKET_ERROR {
        return Err(io::Error::from_raw_os_error(last_wsa_error()));
    }
    // SAFETY: zeroed is `None` for an `Option` of a function pointer, and
    // the ioctl wrote either nothing or a pointer to the function `F` types.
    Ok(unsafe { f.assume_init() })
}

/// The remote address AcceptEx wrote into `addrs`.
pub(crate) fn accepted_peer(
    listener: SOCKET,
    addrs: &[u8; 2 * ACCEPT_ADDR_LEN as usize],
) -> io::Result<SockAddr> {
    let get = extensions(listener)?.get_accept_ex_sockaddrs;
    let mut local: *mut SOCKADDR = ptr::null_mut();
    let mut remote: *mut SOCKADDR = ptr::null_mut();
    let mut local_len: i32 = 0;
    let mut remote_len: i32 = 0;
    // SAFETY: `addrs` is the buffer a completed AcceptEx filled with the
    // same lengths; the function only sets the out-pointers to point into
    // it (or leaves them null).
    unsafe {
        get(
            addrs.as_ptr().cast(),
            0,
            ACCEPT_ADDR_LEN,
            ACCEPT_ADDR_LEN,
            &mut local,
            &mut local_len,
            &mut remote,
            &mut remote_len,
        )
    };
    let cap = size_of::<SOCKADDR_STORAGE>();
    let len = usize::try_from(remote_len).unwrap_or(0);
    if remote.is_null() || len == 0 || len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "AcceptEx returned no peer address",
        ));
    }
    let src = remote.cast::<u8>().cast_const();
    // SAFETY: `src..src+len` lies inside `addrs` (GetAcceptExSockaddrs
    // points into the buffer it was given) and `len` fits the storage; the
    // address family and length come together from the kernel.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, storage_len| {
            ptr::copy_nonoverlapping(src, storage.cast::<u8>(), len);
            *storage_len = len as i32;
            Ok(())
        })
    }?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    //! The operation API the stream transport builds on, driven directly:
    //! receives into and sends from owned buffers, cancellation, and
    //! dropping the driver with operations in flight.

    use std::cell::RefCell;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::windows::io::AsRawSocket;
    use std::time::{Duration, Instant};

    use loop_api::driver::Driver;
    use loop_api::proactor_events::ops::{Owner, Proactor};
    use windows_sys::Win32::Foundation::ERROR_OPERATION_ABORTED;

    use super::*;
    use crate::windows::driver::IocpDriver;

    #[derive(Default)]
    struct Record(RefCell<Vec<Completion>>);

    impl Owner<Completion> for Record {
        fn complete(self: Rc<Self>, c: Completion) {
            self.0.borrow_mut().push(c);
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn raw(s: &TcpStream) -> SOCKET {
        s.as_raw_socket() as SOCKET
    }

    /// Polls until `rec` holds `n` completions (10 s safety net).
    fn poll_until(d: &mut IocpDriver, rec: &Record, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while rec.0.borrow().len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no completion within 10 s");
            d.poll(Some(left), &mut Vec::new()).unwrap();
        }
    }

    #[test]
    fn receive_and_vectored_send_with_owned_buffers() {
        let mut d = IocpDriver::new().unwrap();
        let (a, b) = pair();
        let rec = Rc::new(Record::default());
        let recv = Request::Recv { buf: vec![0; 64] };
        d.submit(raw(&b), recv, rec.clone(), 1).unwrap();
        let send = Request::Send {
            chunks: VecDeque::from([b"--hello".to_vec(), b" world".to_vec()]),
            head: 2,
        };
        d.submit(raw(&a), send, rec.clone(), 2).unwrap();
        assert_eq!(d.ops_in_flight(), 2);
        poll_until(&mut d, &rec, 2);
        assert_eq!(d.ops_in_flight(), 0);
        for c in rec.0.borrow_mut().drain(..) {
            match (c.kind, c.result.unwrap(), c.request) {
                (1, n, Request::Recv { buf }) => {
                    assert!(n > 0 && b"hello world".starts_with(&buf[..n]), "{n}");
                }
                (2, n, Request::Send { chunks, head }) => {
                    assert_eq!((n, head, chunks.len()), (11, 2, 2));
                }
                (k, n, _) => panic!("kind {k}, {n} bytes"),
            }
        }
    }

    #[test]
    fn a_cancelled_receive_hands_its_buffer_back() {
        let mut d = IocpDriver::new().unwrap();
        let (mut a, b) = pair();
        let rec = Rc::new(Record::default());
        let id = d
            .submit(raw(&b), Request::Recv { buf: vec![7; 16] }, rec.clone(), 0)
            .unwrap();
        d.poll(Some(Duration::ZERO), &mut Vec::new()).unwrap();
        assert_eq!(d.ops_in_flight(), 1, "completed with nothing sent");
        d.cancel(id);
        d.cancel(id); // once is enough; twice does nothing more
        poll_until(&mut d, &rec, 1);
        let c = rec.0.borrow_mut().pop().unwrap();
        let e = c.result.unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(ERROR_OPERATION_ABORTED as i32),
            "{e}"
        );
        let Request::Recv { buf } = c.request else {
            panic!("not the receive")
        };
        assert_eq!(buf, [7; 16], "a cancelled receive wrote into its buffer");
        assert_eq!(d.ops_in_flight(), 0);
        d.cancel(id); // stale: names nothing
                      // The socket still works.
        a.write_all(b"after").unwrap();
        d.submit(raw(&b), Request::Recv { buf: vec![0; 16] }, rec.clone(), 0)
            .unwrap();
        poll_until(&mut d, &rec, 1);
        let c = rec.0.borrow_mut().pop().unwrap();
        let n = c.result.unwrap();
        let Request::Recv { buf } = c.request else {
            panic!("not the receive")
        };
        assert_eq!(&buf[..n], b"after");
    }

    #[test]
    fn dropping_the_driver_with_operations_in_flight_is_prompt() {
        let mut d = IocpDriver::new().unwrap();
        let (_a, b) = pair();
        let rec = Rc::new(Record::default());
        for _ in 0..10 {
            let recv = Request::Recv { buf: vec![0; 1024] };
            d.submit(raw(&b), recv, rec.clone(), 0).unwrap();
        }
        let t0 = Instant::now();
        drop(d);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(
            rec.0.borrow().is_empty(),
            "owners hear nothing once closing"
        );
    }
}
