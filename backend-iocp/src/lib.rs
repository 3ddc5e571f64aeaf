//! The IOCP backend: asyncio's `ProactorEventLoop` model on Windows I/O
//! completion ports. **Windows only.**
//!
//! On Windows, `IocpDriver` runs the generic core of `loop-api`
//! ([`loop_api::base_events::BaseEventLoop`]) on one completion port:
//!
//! * `poll` is `GetQueuedCompletionStatusEx`, its timeout rounded *up* to
//!   whole milliseconds so that timers never fire early (`INFINITE` when the
//!   loop has nothing scheduled);
//! * the cross-thread wakeup is `PostQueuedCompletionStatus` with a reserved
//!   completion key; the port queues the packet, so a wakeup sent before
//!   `poll` starts makes that `poll` return;
//! * readiness (`add_reader`/`add_writer`) is AFD polling, as in mio and
//!   polling: an `IOCTL_AFD_POLL` per watched socket on a `\Device\Afd`
//!   handle associated with the port, re-armed on every `poll` so that
//!   interest is level-triggered like a selector's;
//! * stream transports are the shared
//!   [`ProactorSocketTransport`](loop_api::proactor_events::ProactorSocketTransport)
//!   over overlapped `WSARecv` (into a 64 KiB buffer) and `WSASend` (the
//!   buffered chunks, one `WSABUF` each, moved with no copy);
//! * `sock_sendfile` and `loop.sendfile` send with `TransmitFile`;
//! * socket operations are overlapped I/O on the same port: `sock_sendall`
//!   is `WSASend`, `sock_connect` is `ConnectEx`, `sock_accept` and serving
//!   (`create_server`) are `AcceptEx`, and `sock_recv`/`sock_recv_into`
//!   wait with a zero-byte `WSARecv` and then receive, so that a cancelled
//!   receive never takes data. Each operation's `OVERLAPPED` heads a
//!   heap-pinned header (with its buffers, addresses, accept socket) that
//!   the driver owns until the kernel's packet for it is dequeued,
//!   cancelled operations included; closing the loop cancels and drains
//!   them (for at most `DRAIN_LIMIT`, 2 s) and leaks, never frees, what does
//!   not come back. Datagram sockets stay on AFD readiness.
//!
//! Completion packets are told apart by completion key (see
//! `windows::port`): wakeups, AFD polls, and overlapped operations.
//!
//! On every other OS this crate still compiles, so that the workspace
//! builds everywhere, but [`loop_factory`] returns
//! [`loop_api::Error::NotSupported`]: I/O completion ports exist only on
//! Windows.

#![warn(missing_docs)]

#[cfg(windows)]
mod windows;

#[cfg(windows)]
pub use windows::{
    running_under_wine, wine_version, IocpDriver, IocpEventLoop, ACCEPTS_IN_FLIGHT, DRAIN_LIMIT,
};

#[cfg(windows)]
/// A new IOCP loop.
pub fn new_event_loop() -> loop_api::Result<std::rc::Rc<IocpEventLoop>> {
    Ok(loop_api::base_events::BaseEventLoop::new(IocpDriver::new()?))
}

/// A new IOCP loop, as a `dyn` [`loop_api::Loop`] (a `loop_factory`).
///
/// Off Windows: `Err(NotSupported)`, since I/O completion ports exist only
/// on Windows.
pub fn loop_factory() -> loop_api::Result<loop_api::Loop> {
    #[cfg(windows)]
    {
        Ok(new_event_loop()?)
    }
    #[cfg(not(windows))]
    {
        Err(loop_api::Error::NotSupported {
            feature: "iocp backend",
            reason: "I/O completion ports exist only on Windows".into(),
        })
    }
}
