//! [`BaseLoop`]: a [`BaseEventLoop`] of any driver, as the generic
//! networking code holds it.
//!
//! asyncio's `BaseEventLoop` reaches its selector or proactor subclass
//! through private methods (`_make_socket_transport`, `_start_serving`,
//! `_add_reader`, ...). Here those hooks are not on the user's
//! [`AbstractEventLoop`]: they are on this trait, which only
//! `BaseEventLoop<D>` implements (it is sealed), and which answers each
//! hook from its [`Driver`]. Servers, transports and the `create_*`
//! functions hold an `Rc<dyn BaseLoop>`, so they are written once, not
//! once per driver, and a backend extends the loop through its `Driver`
//! alone.

use std::fs::File;
use std::rc::{Rc, Weak};

use socket2::{SockAddr, Socket};

use super::server::Server;
use super::BaseEventLoop;
use crate::driver::{Driver, IoModel};
use crate::events::{AbstractEventLoop, Handle, LocalBoxFuture, RawFd, RepeatCallback};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::{DatagramProtocol, Protocol, ProtocolFactory};
use crate::transports::{BaseTransport, DatagramTransport, Transport};

mod sealed {
    pub trait Sealed {}
    impl<D: crate::driver::Driver> Sealed for super::BaseEventLoop<D> {}
}

/// A [`BaseEventLoop`] with its driver type erased: asyncio's private
/// loop hooks, which the generic code calls. Sealed: a backend supplies a
/// [`Driver`], never an implementation of this trait.
pub trait BaseLoop: AbstractEventLoop + sealed::Sealed {
    /// This loop, as the generic code keeps it.
    fn as_base(&self) -> Rc<dyn BaseLoop>;

    /// Sets (or with `None` clears) what runs around each wait for the OS.
    fn set_poll_hook(&self, hook: Option<Rc<dyn super::PollHook>>);

    /// `add_reader` without the check that no transport owns `fd`: what
    /// transports and `sock_*` methods use on their own descriptors.
    fn _add_reader(&self, fd: RawFd, callback: RepeatCallback) -> Result<()>;
    /// `remove_reader` without the transport check.
    fn _remove_reader(&self, fd: RawFd) -> Result<bool>;
    /// `add_writer` without the transport check.
    fn _add_writer(&self, fd: RawFd, callback: RepeatCallback) -> Result<()>;
    /// `remove_writer` without the transport check.
    fn _remove_writer(&self, fd: RawFd) -> Result<bool>;

    /// Records that `transport` owns `fd`, so that `add_reader`,
    /// `add_writer` and the `sock_*` methods refuse it until the transport
    /// is closing.
    fn _register_transport(&self, fd: RawFd, transport: Weak<dyn BaseTransport>);
    /// asyncio's `_ensure_fd_no_transport`: `RuntimeError("File descriptor
    /// N is used by transport ...")` while a transport that is not closing
    /// owns `fd`.
    fn _ensure_fd_no_transport(&self, fd: RawFd) -> Result<()>;

    /// Wraps a connected stream socket in this loop's transport
    /// ([`IoModel::make_socket_transport`]).
    fn _make_socket_transport(
        &self,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>>;
    /// Wraps a datagram socket ([`IoModel::make_datagram_transport`]).
    fn _make_datagram_transport(
        &self,
        sock: Rc<Socket>,
        protocol: Rc<dyn DatagramProtocol>,
        address: Option<SockAddr>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn DatagramTransport>>;
    /// Wraps the read end of a pipe
    /// ([`IoModel::make_read_pipe_transport`]).
    fn _make_read_pipe_transport(
        &self,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>>;
    /// `Err` if this loop has no pipe transports ([`IoModel::check_pipes`]).
    fn _check_pipes(&self) -> Result<()>;
    /// Wraps the write end of a pipe
    /// ([`IoModel::make_write_pipe_transport`]).
    fn _make_write_pipe_transport(
        &self,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>>;
    /// Starts accepting on a listening socket for `server`
    /// ([`IoModel::start_serving`]).
    fn _start_serving(
        &self,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()>;
    /// Stops accepting on `sock` ([`IoModel::stop_serving`]).
    fn _stop_serving(&self, sock: &Socket);
    /// The zero-copy path of `sock_sendfile` and of a transport's
    /// `_sendfile_native` ([`IoModel::sock_sendfile_native`]).
    fn _sock_sendfile_native(
        &self,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>>;
}

impl<D: Driver> BaseLoop for BaseEventLoop<D> {
    fn as_base(&self) -> Rc<dyn BaseLoop> {
        self.me()
    }

    fn set_poll_hook(&self, hook: Option<Rc<dyn super::PollHook>>) {
        *self.poll_hook.borrow_mut() = hook;
    }

    fn _add_reader(&self, fd: RawFd, callback: RepeatCallback) -> Result<()> {
        self.add_fd_callback(&self.readers, fd, Handle::new_repeating(callback, None))
    }

    fn _remove_reader(&self, fd: RawFd) -> Result<bool> {
        self.remove_fd_callback(&self.readers, fd)
    }

    fn _add_writer(&self, fd: RawFd, callback: RepeatCallback) -> Result<()> {
        self.add_fd_callback(&self.writers, fd, Handle::new_repeating(callback, None))
    }

    fn _remove_writer(&self, fd: RawFd) -> Result<bool> {
        self.remove_fd_callback(&self.writers, fd)
    }

    fn _register_transport(&self, fd: RawFd, transport: Weak<dyn BaseTransport>) {
        self.transports.borrow_mut().insert(fd, transport);
    }

    fn _ensure_fd_no_transport(&self, fd: RawFd) -> Result<()> {
        let owner = self.transports.borrow().get(&fd).and_then(Weak::upgrade);
        match owner {
            Some(t) if !t.is_closing() => Err(Error::runtime(format!(
                "File descriptor {fd} is used by transport {}",
                crate::transports::describe(&*t)
            ))),
            _ => Ok(()),
        }
    }

    fn _make_socket_transport(
        &self,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        D::Io::make_socket_transport(&self.me(), sock, protocol, waiter, server)
    }

    fn _make_datagram_transport(
        &self,
        sock: Rc<Socket>,
        protocol: Rc<dyn DatagramProtocol>,
        address: Option<SockAddr>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn DatagramTransport>> {
        D::Io::make_datagram_transport(&self.me(), sock, protocol, address, waiter)
    }

    fn _make_read_pipe_transport(
        &self,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        D::Io::make_read_pipe_transport(&self.me(), pipe, protocol, waiter)
    }

    fn _check_pipes(&self) -> Result<()> {
        D::Io::check_pipes()
    }

    fn _make_write_pipe_transport(
        &self,
        pipe: File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        D::Io::make_write_pipe_transport(&self.me(), pipe, protocol, waiter)
    }

    fn _start_serving(
        &self,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()> {
        D::Io::start_serving(&self.me(), protocol_factory, sock, server, backlog)
    }

    fn _stop_serving(&self, sock: &Socket) {
        D::Io::stop_serving(&self.me(), sock)
    }

    fn _sock_sendfile_native(
        &self,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        D::Io::sock_sendfile_native(&self.me(), sock, file, offset, count)
    }
}
