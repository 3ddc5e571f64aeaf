//! The accept loop of a listening socket on readiness (asyncio's
//! `_SelectorSocketTransport`-side `_accept_connection`).
//!
//! Each readiness event accepts up to `backlog` connections and wraps each
//! in a socket transport attached to the server
//! ([`accept_one`]). Out of
//! descriptors, it stops watching the listener and resumes after the
//! shared back-off ([`crate::base_events::serving`]).

use std::io;
use std::net::Shutdown;
use std::rc::Rc;

use socket2::Socket;

use crate::base_events::server::Server;
use crate::base_events::serving::{accept_one, back_off, out_of_resources, report_accept_error};
use crate::base_events::sockets::{is_retry, raw_fd};
use crate::base_events::BaseLoop;
use crate::exceptions::Result;
use crate::protocols::ProtocolFactory;

/// Watches `sock` and accepts connections for `server`.
pub fn start_serving(
    lp: Rc<dyn BaseLoop>,
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
pub fn stop_serving(lp: &Rc<dyn BaseLoop>, sock: &Socket) {
    let _ = lp._remove_reader(raw_fd(sock));
    let _ = sock.shutdown(Shutdown::Both);
}

fn accept_connections(
    lp: &Rc<dyn BaseLoop>,
    factory: &ProtocolFactory,
    sock: &Rc<Socket>,
    server: &Rc<Server>,
    backlog: i32,
) {
    for _ in 0..backlog.max(1) {
        match sock.accept() {
            Ok((conn, _addr)) => accept_one(&**lp, factory, conn, server),
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) if is_retry(&e) => return,
            Err(e) if out_of_resources(&e) => {
                let _ = lp._remove_reader(raw_fd(sock));
                let (l, f, s, srv) = (lp.clone(), factory.clone(), sock.clone(), server.clone());
                back_off(&**lp, e.into(), server, sock, move || {
                    let _ = start_serving(l, f, s, srv, backlog);
                });
                return;
            }
            Err(e) => {
                report_accept_error(&**lp, e.into(), raw_fd(sock));
                return;
            }
        }
    }
}
