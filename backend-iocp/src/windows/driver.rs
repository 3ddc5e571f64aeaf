//! [`IocpDriver`]: the loop core's [`Driver`] on one I/O completion port.
//!
//! # Overlapped operations
//! [`IocpDriver::submit`] starts an operation (see `ops`) on a socket,
//! associating the socket with the port ([`Key::Operation`]) the first
//! time. The driver keeps each operation's header in the shared table of
//! operations ([`Operations`]) until its packet is dequeued; only then is
//! the memory rebuilt and handed back to the operation's owner. Cancelling
//! ([`Proactor::cancel`]) is `CancelIoEx` and nothing more: the packet (`ERROR_OPERATION_ABORTED`, or the real result
//! when the operation finished first) still comes, and the memory waits
//! for it.
//!
//! # Closing
//! [`Driver::flush`] (the loop's `close`) and dropping the driver cancel
//! every operation and AFD poll in flight and wait, for at most
//! [`DRAIN_LIMIT`], for their packets. Whatever has not come back by then
//! is leaked, never freed under the kernel.

use std::collections::{HashMap, HashSet};
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loop_api::base_events::server::Server;
use loop_api::base_events::BaseEventLoop;
use loop_api::driver::{Driver, IoEvent, IoModel, Notify};
use loop_api::events::{LocalBoxFuture, RawFd};
use loop_api::futures::Future;
use loop_api::idle_memory::trim_map;
use loop_api::proactor_events::accept::{self, Acceptors};
use loop_api::proactor_events::ops::{OpId, Operations, Owner, Proactor};
use loop_api::protocols::{Protocol, ProtocolFactory};
use loop_api::transports::Transport;
use loop_api::Error;
use socket2::{SockAddr, Socket};
use windows_sys::Win32::Foundation::{ERROR_INVALID_PARAMETER, HANDLE};
use windows_sys::Win32::Networking::WinSock::SOCKET;
use windows_sys::Win32::Storage::FileSystem::SetFileCompletionNotificationModes;
use windows_sys::Win32::System::WindowsProgramming::FILE_SKIP_SET_EVENT_ON_HANDLE;
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED, OVERLAPPED_ENTRY};

use super::afd::Afd;
use super::ops::{self, Completion, OpHeader, Request};
use super::port::{self, CompletionPort, Key};
use super::sock_ops::LateAccepts;

/// Packets dequeued per `GetQueuedCompletionStatusEx` call.
const ENTRIES: usize = 256;
/// How long closing or dropping a driver waits for cancelled operations
/// and AFD polls to come back before it leaks their memory instead.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// What an operation in flight lends the kernel: its header (from
/// `Box::into_raw`, owned by the table until its packet is dequeued; a raw
/// pointer, so dropping the table leaks it rather than free it under the
/// kernel), and the socket it was issued on (for an accept, the listener):
/// what `CancelIoEx` and `WSAGetOverlappedResult` are given.
pub(crate) struct Issued {
    header: *mut OpHeader,
    socket: SOCKET,
}

/// Why an operation could not be started.
#[derive(Debug)]
pub(crate) enum SubmitError {
    /// The socket is associated with another completion port (another
    /// loop's, or someone else's): overlapped operations on it would
    /// complete there, so the caller must do without them.
    ForeignPort,
    /// The loop is closed.
    Closed,
    /// The issuing call (or associating the socket) failed.
    Io(io::Error),
}

impl From<SubmitError> for Error {
    fn from(e: SubmitError) -> Error {
        match e {
            SubmitError::ForeignPort => {
                io::Error::other("the socket is associated with another completion port").into()
            }
            SubmitError::Closed => Error::loop_closed(),
            SubmitError::Io(e) => e.into(),
        }
    }
}

/// The loop core's driver on an I/O completion port.
///
/// See the crate docs for how `poll`, the wakeup and readiness map onto
/// the port.
pub struct IocpDriver {
    port: Arc<CompletionPort>,
    wake: Arc<PortNotify>,
    entries: Vec<OVERLAPPED_ENTRY>,
    /// Opened on the first `set_interest`, so a loop that never watches a
    /// socket never touches AFD.
    afd: Option<Afd>,
    /// Operations in flight.
    ops: Operations<Issued, Completion>,
    /// Their ids, by the address of their header (a packet's
    /// `lpOverlapped`).
    by_address: HashMap<usize, OpId>,
    /// Sockets this driver associated with the port (by handle value; see
    /// [`IocpDriver::associate`] for why a hit alone is not trusted).
    /// Entries stay after their socket closes (the driver is not told), so
    /// this holds one entry per handle value ever associated: Windows reuses
    /// values, which bounds it near the peak count of sockets open at once.
    associated: HashSet<SOCKET>,
    /// The loop is closing: no new operations; completions are dropped.
    closing: bool,
    /// The listeners being served.
    pub(crate) acceptors: Acceptors<IocpDriver>,
    /// Connections accepted by `sock_accept`s cancelled too late.
    pub(crate) late_accepts: Rc<LateAccepts>,
}

/// The notifier: posts a [`Key::Wake`] packet. `pending` coalesces
/// wakeups: while one packet is queued and not yet dequeued, further
/// notifications add nothing (that packet already makes `poll` return).
struct PortNotify {
    port: Arc<CompletionPort>,
    pending: AtomicBool,
}

impl Notify for PortNotify {
    fn notify(&self) -> io::Result<()> {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.port.post(Key::Wake) {
                self.pending.store(false, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl IocpDriver {
    /// A driver on a fresh completion port.
    pub fn new() -> io::Result<Self> {
        let port = Arc::new(CompletionPort::new()?);
        Ok(IocpDriver {
            wake: Arc::new(PortNotify {
                port: port.clone(),
                pending: AtomicBool::new(false),
            }),
            port,
            entries: port::entries(ENTRIES),
            afd: None,
            ops: Operations::new(u32::MAX),
            by_address: HashMap::new(),
            associated: HashSet::new(),
            closing: false,
            acceptors: Acceptors::default(),
            late_accepts: Rc::default(),
        })
    }

    /// Overlapped operations in flight: started, and whose completion
    /// packet has not been dequeued yet (cancelled ones included).
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Associates `socket` with the port for overlapped operations, unless
    /// this driver did so already.
    ///
    /// The association is asked for every time: socket handle values are
    /// reused, so "this value was associated once" does not mean the socket
    /// that has it now is. A handle can be associated with one port only:
    /// `ERROR_INVALID_PARAMETER` says it already is, which is this port's
    /// doing if this driver associated that value before (a socket closed
    /// and its value reused by one associated with another port is the one
    /// case this cannot tell apart), and another port's otherwise.
    pub(crate) fn associate(&mut self, socket: SOCKET) -> Result<(), SubmitError> {
        if self.closing {
            return Err(SubmitError::Closed);
        }
        // SAFETY: `associate` only registers the handle (an invalid one is
        // refused); every operation this driver issues on it keeps its
        // header alive until the packet is dequeued here (`submit`).
        match unsafe { self.port.associate(socket as HANDLE, Key::Operation) } {
            Ok(()) => {
                self.associated.insert(socket);
                // SAFETY: a valid handle (just associated); the flag only
                // stops the kernel signalling the handle as an event,
                // which nothing waits on. Completion packets are still
                // queued on success, which `ops::issue` relies on.
                unsafe {
                    SetFileCompletionNotificationModes(
                        socket as HANDLE,
                        FILE_SKIP_SET_EVENT_ON_HANDLE as u8,
                    )
                };
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) => {
                if self.associated.contains(&socket) {
                    Ok(())
                } else {
                    Err(SubmitError::ForeignPort)
                }
            }
            Err(e) => Err(SubmitError::Io(e)),
        }
    }

    /// Starts `request` on `socket` (for an accept, the listener); its
    /// completion goes to `owner.complete` with `kind`, with the request's
    /// memory handed back.
    pub(crate) fn submit(
        &mut self,
        socket: SOCKET,
        request: Request,
        owner: Rc<dyn Owner<Completion>>,
        kind: u8,
    ) -> Result<OpId, SubmitError> {
        self.associate(socket)?;
        let header = Box::into_raw(OpHeader::new(request));
        let id = self.ops.insert(Issued { header, socket }, owner, kind);
        self.by_address.insert(header as usize, id);
        // SAFETY: `header` is a fresh box's pointer, now owned by `ops`,
        // which frees it only when the packet for it is dequeued (or leaks
        // it); `socket` is associated with this port, so the packet comes
        // here.
        if let Err(e) = unsafe { ops::issue(header, socket) } {
            self.ops.remove(id);
            self.by_address.remove(&(header as usize));
            // SAFETY: the operation did not start, so no packet will come
            // and the kernel holds no pointer into the header.
            drop(unsafe { Box::from_raw(header) });
            return Err(SubmitError::Io(e));
        }
        Ok(id)
    }

    /// Handles one [`Key::Operation`] packet.
    fn complete_op(&mut self, entry: &OVERLAPPED_ENTRY) {
        let addr = entry.lpOverlapped as usize;
        // A packet for an OVERLAPPED that is not ours (someone else's
        // operation on a socket associated here) is not touched.
        let Some(id) = self.by_address.remove(&addr) else {
            return;
        };
        let op = self
            .ops
            .remove(id)
            .expect("in the table while its address is");
        // SAFETY: the header came from Box::into_raw in `submit`; its packet
        // is dequeued, so the kernel is done with it, and it left the table,
        // so nothing else will free it.
        let header = unsafe { Box::from_raw(op.memory.header) };
        if self.closing {
            return; // dropped: the kernel is done with its memory
        }
        let result = header.result(op.memory.socket, entry.dwNumberOfBytesTransferred);
        op.owner.complete(Completion {
            id,
            kind: op.kind,
            result,
            request: header.into_request(),
        });
    }

    /// Cancels every operation and AFD poll in flight and waits, up to
    /// `limit`, for their packets; what has not come back by then is
    /// leaked.
    fn cancel_all_and_drain(&mut self, limit: Duration) {
        self.closing = true;
        for id in self.ops.ids() {
            self.cancel(id);
        }
        if let Some(afd) = self.afd.as_mut() {
            afd.cancel_all();
        }
        let deadline = Instant::now() + limit;
        let mut sink = Vec::new();
        loop {
            let afd_left = self.afd.as_ref().map_or(0, Afd::in_flight);
            if self.ops.is_empty() && afd_left == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let n = match self
                .port
                .wait(&mut self.entries, port::timeout_ms(Some(left)))
            {
                Ok(n) => n,
                Err(_) => break,
            };
            for i in 0..n {
                let entry = self.entries[i];
                match Key::of(entry.lpCompletionKey) {
                    Some(Key::Afd) => {
                        if let Some(afd) = self.afd.as_mut() {
                            afd.complete(&entry, &mut sink);
                        }
                    }
                    Some(Key::Operation) => self.complete_op(&entry),
                    Some(Key::Wake) => self.wake.pending.store(false, Ordering::Release),
                    None => {}
                }
            }
        }
        // The kernel still holds these: leak their memory.
        self.ops.leak_all();
        self.by_address.clear();
        if let Some(afd) = self.afd.as_mut() {
            afd.leak_in_flight();
        }
    }

    fn dispatch(&mut self, n: usize, out: &mut Vec<IoEvent>) {
        for i in 0..n {
            let entry = self.entries[i];
            match Key::of(entry.lpCompletionKey) {
                Some(Key::Wake) => {
                    // Cleared once the packet is out of the port: a
                    // notification after this point posts a new one.
                    self.wake.pending.store(false, Ordering::Release);
                }
                Some(Key::Afd) => {
                    if let Some(afd) = self.afd.as_mut() {
                        afd.complete(&entry, out);
                    }
                }
                Some(Key::Operation) => self.complete_op(&entry),
                None => {}
            }
        }
    }
}

impl Driver for IocpDriver {
    type Io = Self;

    fn name(&self) -> &'static str {
        "iocp"
    }

    fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        if let Some(afd) = self.afd.as_mut() {
            afd.arm(out)?;
        }
        // A socket found closed while arming is an event already: don't block.
        let timeout = if out.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let n = self
            .port
            .wait(&mut self.entries, port::timeout_ms(timeout))?;
        self.dispatch(n, out);
        Ok(())
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        self.wake.clone()
    }

    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<(), Error> {
        if self.afd.is_none() {
            if !readable && !writable {
                return Ok(());
            }
            let afd = Afd::new(&self.port).map_err(|e| Error::NotSupported {
                feature: "add_reader",
                reason: format!("cannot open \\Device\\Afd for readiness polling: {e}"),
            })?;
            self.afd = Some(afd);
        }
        let afd = self.afd.as_mut().expect("opened above");
        afd.set_interest(fd, readable, writable)?;
        Ok(())
    }

    fn trim(&mut self) {
        self.ops.trim();
        trim_map(&mut self.by_address);
        if let Some(afd) = self.afd.as_mut() {
            afd.trim();
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // The loop is closing: nothing will dequeue packets any more, so
        // finish (cancel, and wait for) whatever is in flight now, and let
        // the listeners go.
        self.cancel_all_and_drain(DRAIN_LIMIT);
        self.acceptors.clear();
        Ok(())
    }
}

/// Stream transports, pipe transports, serving, `sendfile` and the stream
/// `sock_*` methods as overlapped operations; datagrams and `sendto`/`recvfrom` on AFD
/// readiness.
impl IoModel<IocpDriver> for IocpDriver {
    fn make_socket_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> loop_api::Result<Rc<dyn Transport>> {
        super::transport::create(lp, sock, protocol, waiter, server)
    }

    fn sock_sendfile_native(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        file: Rc<std::fs::File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, loop_api::Result<u64>> {
        super::sendfile::sock_sendfile_native(lp, sock, file, offset, count)
    }

    fn make_read_pipe_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        pipe: std::fs::File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> loop_api::Result<Rc<dyn Transport>> {
        super::pipe::create_read(lp, pipe, protocol, waiter)
    }

    fn make_write_pipe_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        pipe: std::fs::File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> loop_api::Result<Rc<dyn Transport>> {
        super::pipe::create_write(lp, pipe, protocol, waiter)
    }

    fn start_serving(
        lp: &Rc<BaseEventLoop<Self>>,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> loop_api::Result<()> {
        accept::start_serving(lp, protocol_factory, sock, server, backlog)
    }

    fn stop_serving(lp: &Rc<BaseEventLoop<Self>>, sock: &Socket) {
        accept::stop_serving(lp, sock)
    }

    fn sock_recv(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, loop_api::Result<Vec<u8>>> {
        Box::pin(super::sock_ops::sock_recv(lp.clone(), sock, nbytes))
    }

    fn sock_recv_into(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, loop_api::Result<(Vec<u8>, usize)>> {
        Box::pin(super::sock_ops::sock_recv_into(lp.clone(), sock, buf))
    }

    fn sock_sendall(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
    ) -> LocalBoxFuture<'static, loop_api::Result<()>> {
        Box::pin(super::sock_ops::sock_sendall(lp.clone(), sock, data))
    }

    fn sock_connect(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, loop_api::Result<()>> {
        Box::pin(super::sock_ops::sock_connect(lp.clone(), sock, address))
    }

    fn sock_accept(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
    ) -> LocalBoxFuture<'static, loop_api::Result<(Socket, SockAddr)>> {
        Box::pin(super::sock_ops::sock_accept(lp.clone(), sock))
    }

    loop_api::datagrams_on_readiness!();
}

impl Proactor for IocpDriver {
    type Completion = Completion;

    /// `CancelIoEx`. The packet still comes, and only then is the
    /// operation's memory released.
    fn cancel(&mut self, id: OpId) {
        if !self.ops.request_cancel(id) {
            return;
        }
        let Some(op) = self.ops.get(id) else { return };
        // SAFETY: the OVERLAPPED is only used to find the request; one that
        // completed already (or a socket closed since, whose requests were
        // cancelled by the close) is simply not found.
        unsafe {
            CancelIoEx(
                op.memory.socket as HANDLE,
                op.memory.header as *const OVERLAPPED,
            )
        };
    }
}

impl Drop for IocpDriver {
    fn drop(&mut self) {
        let afd_left = self.afd.as_ref().map_or(0, Afd::in_flight);
        if !self.ops.is_empty() || afd_left > 0 {
            // The kernel writes each operation's and poll's memory when it
            // completes, so wait for the cancelled ones to come back
            // before freeing it (or leak it).
            self.cancel_all_and_drain(DRAIN_LIMIT);
        }
        self.acceptors.clear();
    }
}
