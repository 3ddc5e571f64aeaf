//! The accept loop of a listening socket on readiness (asyncio's
//! `_SelectorSocketTransport`-side `_accept_connection`).
//!
//! Each readiness event accepts up to `backlog` connections and wraps
//! each in a socket transport attached to the server. When the process
//! or system is out of descriptors or memory (`EMFILE`, `ENFILE`,
//! `ENOBUFS`, `ENOMEM`) the error goes to the exception handler
//! ("socket.accept() out of system resource"), accepting pauses for
//! [`ACCEPT_RETRY_DELAY`] seconds (the listener would otherwise stay ready
//! and spin), and then resumes; the listener stays open throughout.

use std::io;
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use socket2::Socket;

use super::{is_retry, raw_fd};
use crate::base_events::server::Server;
use crate::events::{ExceptionContext, Loop};
use crate::exceptions::{Error, Result};
use crate::log::{self, Level};
use crate::protocols::ProtocolFactory;

/// asyncio's `ACCEPT_RETRY_DELAY`, in seconds.
pub const ACCEPT_RETRY_DELAY: f64 = 1.0;

/// Watches `sock` and accepts connections for `server`.
pub fn start_serving(
    lp: Loop,
    protocol_factory: ProtocolFactory,
    sock: Rc<Socket>,
    server: Rc<Server>,
    backlog: i32,
) -> Result<()> {
    let fd = raw_fd(&sock);
    let l = lp.clone();
    lp._add_reader(
        fd,
        Box::new(move || accept_connections(&l, &protocol_factory, &sock, &server, backlog)),
    )
}

/// Stops accepting on `sock` and shuts the listener down, so that new
/// connections are refused even while someone still holds a clone of it.
pub fn stop_serving(lp: &Loop, sock: &Socket) {
    let _ = lp._remove_reader(raw_fd(sock));
    let _ = sock.shutdown(Shutdown::Both);
}

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

fn accept_connections(
    lp: &Loop,
    factory: &ProtocolFactory,
    sock: &Rc<Socket>,
    server: &Rc<Server>,
    backlog: i32,
) {
    for _ in 0..backlog.max(1) {
        match sock.accept() {
            Ok((conn, _addr)) => accept_one(lp, factory, conn, server),
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) if is_retry(&e) => return,
            Err(e) if out_of_resources(&e) => {
                lp.call_exception_handler(
                    ExceptionContext::new("socket.accept() out of system resource")
                        .with_exception(e.into())
                        .with_socket(raw_fd(sock)),
                );
                let _ = lp._remove_reader(raw_fd(sock));
                let (l, f, s, srv) = (lp.clone(), factory.clone(), sock.clone(), server.clone());
                let _ = lp.call_later(
                    ACCEPT_RETRY_DELAY,
                    Box::new(move || {
                        if srv._is_listening_on(&s) {
                            let _ = start_serving(l, f, s, srv, backlog);
                        }
                    }),
                    None,
                );
                return;
            }
            Err(e) => {
                // asyncio lets it reach the loop's handler and goes on.
                lp.call_exception_handler(
                    ExceptionContext::new("Error accepting a connection")
                        .with_exception(e.into())
                        .with_socket(raw_fd(sock)),
                );
                return;
            }
        }
    }
}

/// Wraps one accepted connection (asyncio's `_accept_connection2`).
pub fn accept_one(lp: &Loop, factory: &ProtocolFactory, conn: Socket, server: &Rc<Server>) {
    let made = catch_unwind(AssertUnwindSafe(|| factory()))
        .map_err(Error::from_panic)
        .and_then(|protocol| {
            lp._make_socket_transport(Rc::new(conn), protocol, None, Some(server.clone()))
        });
    if let Err(e) = made {
        // asyncio reports these in debug mode only; the connection is
        // closed (dropped) either way.
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
