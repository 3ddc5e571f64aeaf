//! Serving a listener with `AcceptEx`: the IOCP side of the shared
//! acceptor ([`loop_api::proactor_events::accept`]).
//!
//! [`ACCEPTS_IN_FLIGHT`] accepts are kept outstanding per listener, each
//! into a fresh socket of the listener's family. A completed accept
//! inherits the listener's context (`SO_UPDATE_ACCEPT_CONTEXT`) and goes
//! non-blocking before the shared acceptor wraps it. Creating the accept
//! socket can run out of sockets too (`WSAEMFILE`, `WSAENOBUFS`): that
//! takes the same back-off as a failed accept. A connection the peer reset
//! before it was accepted is skipped silently. Listeners the overlapped
//! accepts do not fit (non-IP, or associated with another port) are served
//! by the readiness accept loop instead.

use std::io;
use std::rc::Rc;

use loop_api::proactor_events::accept::{AcceptIo, Accepted, Acceptors};
use loop_api::proactor_events::ops::{OpId, Owner};
use loop_api::{Error, Result};
use socket2::{Domain, Socket, Type};
use windows_sys::Win32::Foundation::{
    ERROR_INVALID_HANDLE, ERROR_NETNAME_DELETED, ERROR_OPERATION_ABORTED,
};
use windows_sys::Win32::Networking::WinSock::{WSAEINVAL, WSAENOTSOCK};

use super::driver::{IocpDriver, SubmitError};
use super::ops::{Completion, Request};
use super::sock_ops::{finish_accept, raw};

/// Accepts kept outstanding per listener.
pub const ACCEPTS_IN_FLIGHT: usize = 2;

/// The family of accept sockets for `listener`, if overlapped accepts fit it.
fn accept_domain(listener: &Socket) -> Option<Domain> {
    let stream = matches!(listener.r#type(), Ok(t) if t == Type::STREAM);
    match listener.local_addr() {
        Ok(a) if stream && a.is_ipv4() => Some(Domain::IPV4),
        Ok(a) if stream && a.is_ipv6() => Some(Domain::IPV6),
        _ => None,
    }
}

impl AcceptIo for IocpDriver {
    const ACCEPTS_IN_FLIGHT: usize = ACCEPTS_IN_FLIGHT;

    fn can_accept_on(&mut self, listener: &Socket) -> Result<bool> {
        if accept_domain(listener).is_none() {
            return Ok(false);
        }
        match self.associate(raw(listener)) {
            Ok(()) => Ok(true),
            Err(SubmitError::Closed) => Err(Error::loop_closed()),
            Err(SubmitError::ForeignPort | SubmitError::Io(_)) => Ok(false),
        }
    }

    fn start_accept(
        &mut self,
        listener: &Socket,
        owner: Rc<dyn Owner<Completion>>,
    ) -> Result<OpId> {
        let domain = accept_domain(listener).ok_or_else(|| Error::value("not an IP listener"))?;
        let conn = Socket::new(domain, Type::STREAM, None)?;
        Ok(self.submit(raw(listener), Request::accept(conn), owner, 0)?)
    }

    fn accepted(listener: &Socket, c: Completion) -> (OpId, bool, Accepted) {
        let outcome = match c.result {
            Ok(_) => {
                let Request::Accept { conn, addrs } = c.request else {
                    unreachable!("an accept completes with its accept request")
                };
                match finish_accept(listener, conn, &addrs) {
                    Ok((conn, _peer)) => Accepted::Connection(conn),
                    Err(e) if is_reset(&e) => Accepted::Skip,
                    Err(e) => Accepted::Failed(e),
                }
            }
            Err(e) => {
                let code = e.raw_os_error().unwrap_or(0);
                let gone = [
                    ERROR_OPERATION_ABORTED as i32,
                    ERROR_INVALID_HANDLE as i32,
                    WSAENOTSOCK,
                    WSAEINVAL,
                ];
                if gone.contains(&code) {
                    // The listener was closed (or the accept cancelled)
                    // under us: nothing more to accept on it.
                    Accepted::Gone
                } else if is_reset(&e) {
                    Accepted::Skip
                } else {
                    Accepted::Failed(e)
                }
            }
        };
        (c.id, false, outcome)
    }

    fn acceptors(&mut self) -> &mut Acceptors<Self> {
        &mut self.acceptors
    }
}

/// The peer gave up on the connection before it was accepted.
fn is_reset(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_NETNAME_DELETED as i32)
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        )
}
