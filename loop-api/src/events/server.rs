//! `asyncio.Server`'s interface.

use std::net::SocketAddr;
use std::rc::Rc;

use socket2::Socket;

use super::{LocalBoxFuture, Loop};
use crate::exceptions::Result;

/// `asyncio.AbstractServer`, returned by `create_server` and
/// `create_unix_server`.
pub trait AbstractServer {
    /// Stops listening; connections already accepted stay open.
    fn close(&self);
    /// Closes every connection the server accepted (3.13).
    fn close_clients(&self);
    /// Aborts every connection the server accepted (3.13).
    fn abort_clients(&self);
    /// The loop the server runs on.
    fn get_loop(&self) -> Loop;
    /// True while accepting.
    fn is_serving(&self) -> bool;
    /// Starts accepting if not already.
    fn start_serving(&self) -> LocalBoxFuture<'static, Result<()>>;
    /// Accepts until cancelled or closed; a second concurrent call is a
    /// `RuntimeError`.
    fn serve_forever(&self) -> LocalBoxFuture<'static, Result<()>>;
    /// Completes once the server is closed and every connection is gone.
    fn wait_closed(&self) -> LocalBoxFuture<'static, Result<()>>;
    /// The listening sockets.
    fn sockets(&self) -> Vec<Rc<Socket>>;

    /// The IP addresses the server listens on (`sockets()`'s names), e.g.
    /// to learn the port the OS picked for port 0.
    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets()
            .iter()
            .filter_map(|s| s.local_addr().ok()?.as_socket())
            .collect()
    }
}
