//! What every accept loop shares, readiness or completion (asyncio's
//! `_accept_connection` and `_accept_connection2`): wrapping an accepted
//! connection in a transport attached to its server, reporting accept
//! errors, and the back-off when the process runs out of descriptors.
//!
//! When the process or system is out of descriptors or memory (`EMFILE`,
//! `ENFILE`, `ENOBUFS`, `ENOMEM`; `WSAEMFILE`, `WSAENOBUFS`), the error
//! goes to the exception handler ("socket.accept() out of system
//! resource") and accepting pauses for [`ACCEPT_RETRY_DELAY`] seconds (a
//! listener would otherwise stay ready and spin); it resumes if the server
//! still listens on that socket. The listener stays open throughout.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use socket2::Socket;

use super::server::Server;
use super::tls_options::make_transport;
use super::BaseLoop;
use crate::events::{ExceptionContext, RawFd};
use crate::exceptions::{Error, Result};
use crate::log::{self, Level};
use crate::protocols::ProtocolFactory;

/// asyncio's `ACCEPT_RETRY_DELAY`, in seconds.
pub const ACCEPT_RETRY_DELAY: f64 = 1.0;

/// Out of descriptors or memory: pause accepting and retry later.
pub fn out_of_resources(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(windows)]
    {
        // WSAEMFILE, WSAENOBUFS.
        matches!(e.raw_os_error(), Some(10024 | 10055))
    }
}

/// Reports an accept error that ends nothing (asyncio lets it reach the
/// loop's handler and goes on).
pub fn report_accept_error(lp: &dyn BaseLoop, e: Error, fd: RawFd) {
    lp.call_exception_handler(
        ExceptionContext::new("Error accepting a connection")
            .with_exception(e)
            .with_socket(fd),
    );
}

/// Out of resources: reports `e`, and calls `resume` after
/// [`ACCEPT_RETRY_DELAY`] seconds if `server` still listens on `sock`.
/// The caller stops accepting meanwhile.
pub fn back_off(
    lp: &dyn BaseLoop,
    e: Error,
    server: &Rc<Server>,
    sock: &Rc<Socket>,
    resume: impl FnOnce() + 'static,
) {
    lp.call_exception_handler(
        ExceptionContext::new("socket.accept() out of system resource")
            .with_exception(e)
            .with_socket(super::sockets::raw_fd(sock)),
    );
    let (server, sock) = (server.clone(), sock.clone());
    let _ = lp.call_later_dyn(
        ACCEPT_RETRY_DELAY,
        Box::new(move || {
            if server._is_listening_on(&sock) {
                resume();
            }
        }),
        None,
    );
}

/// Wraps one accepted connection in this loop's transport, attached to
/// `server`, under TLS if the server serves TLS (asyncio's
/// `_accept_connection2`). A protocol factory that
/// fails or panics closes the connection; asyncio reports that in debug
/// mode only.
pub fn accept_one(lp: &dyn BaseLoop, factory: &ProtocolFactory, conn: Socket, server: &Rc<Server>) {
    let base = lp.as_base();
    let made: Result<_> = catch_unwind(AssertUnwindSafe(|| factory()))
        .map_err(Error::from_panic)
        .and_then(|protocol| {
            let tls = server.tls();
            make_transport(
                &base,
                Rc::new(conn),
                protocol,
                tls.as_ref(),
                None,
                Some(server.clone()),
            )
        });
    if let Err(e) = made {
        if lp.get_debug() {
            lp.call_exception_handler(
                ExceptionContext::new("Error on transport creation for incoming connection")
                    .with_exception(e),
            );
        } else {
            log::log(
                Level::Debug,
                &format!("Error on transport creation for incoming connection: {e}"),
            );
        }
    }
}
