//! `asyncio.Server` and `loop.create_server`, written once over the backend
//! plumbing hooks (`_start_serving`, `_stop_serving`,
//! `_make_socket_transport`).
//!
//! # As in asyncio
//! - A server accepts on every socket it holds until [`Server::close`]
//!   (or `start_serving=false` until [`AbstractServer::start_serving`]).
//! - Closing stops listening and closes the listening sockets; connections
//!   already accepted stay open. (A clone of a socket from
//!   [`AbstractServer::sockets`] keeps the descriptor open: on Unix the
//!   listener is shut down anyway and refuses connections; Windows keeps it
//!   listening until the last handle goes.) [`AbstractServer::close_clients`] and
//!   [`AbstractServer::abort_clients`] close or abort them.
//! - [`AbstractServer::wait_closed`] completes once the server is closed
//!   and every accepted connection is gone; called on a server that is
//!   already fully closed it returns at once.
//! - [`AbstractServer::serve_forever`] runs until the server is closed or
//!   the awaiting task is cancelled (which closes the server); a second
//!   concurrent call is a `RuntimeError`.
//! - A server that is not closed keeps serving even if every `Rc` to it is
//!   dropped, as a Python server object kept alive by its loop does.
//! - `async with server:` is [`ServerScope`]: it closes the server when it
//!   goes out of scope, and [`ServerScope::close`] also waits for it.

use std::cell::{Cell, RefCell};
use std::ops::Deref;
#[cfg(unix)]
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use socket2::{Domain, Socket, Type};

use super::resolver::ensure_resolved;
use super::sockets::{bind_error, domain_of, set_reuse_port, sock_stream};
use super::tls_options::{self, Tls};
use super::BaseLoop;
use crate::events::options::{CreateServerOptions, Hosts};
use crate::events::{AbstractServer, EventLoopExt, LocalBoxFuture, Loop};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::ProtocolFactory;
use crate::transports::Transport;

/// `asyncio.Server`.
pub struct Server {
    lp: Rc<dyn BaseLoop>,
    this: Weak<Server>,
    /// `None` once closed.
    sockets: RefCell<Option<Vec<Rc<Socket>>>>,
    protocol_factory: ProtocolFactory,
    backlog: i32,
    serving: Cell<bool>,
    /// Accepted connections still open (asyncio's `_clients`).
    clients: RefCell<Vec<Weak<dyn Transport>>>,
    active_count: Cell<usize>,
    /// `wait_closed` waiters; `None` once the server is closed and empty.
    waiters: RefCell<Option<Vec<Future<()>>>>,
    serving_forever: RefCell<Option<Future<()>>>,
    /// TLS for the connections it accepts.
    tls: RefCell<Option<Tls>>,
    /// A Unix server's socket file, removed on close (`cleanup_socket`).
    #[cfg(unix)]
    unix_cleanup: RefCell<Option<UnixCleanup>>,
}

/// The socket file a Unix server made, and its identity, so that close
/// removes that file and not one someone else put at the same path since.
#[cfg(unix)]
pub(crate) struct UnixCleanup {
    pub(crate) path: PathBuf,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl Server {
    /// A server over listening (or about to listen) `sockets`.
    pub fn new(
        lp: Rc<dyn BaseLoop>,
        sockets: Vec<Rc<Socket>>,
        protocol_factory: ProtocolFactory,
        backlog: i32,
    ) -> Rc<Server> {
        Rc::new_cyclic(|this| Server {
            lp,
            this: this.clone(),
            sockets: RefCell::new(Some(sockets)),
            protocol_factory,
            backlog,
            serving: Cell::new(false),
            clients: RefCell::new(Vec::new()),
            active_count: Cell::new(0),
            waiters: RefCell::new(Some(Vec::new())),
            serving_forever: RefCell::new(None),
            tls: RefCell::new(None),
            #[cfg(unix)]
            unix_cleanup: RefCell::new(None),
        })
    }

    /// Wraps the connections it accepts in TLS.
    pub(crate) fn set_tls(&self, tls: Option<Tls>) {
        *self.tls.borrow_mut() = tls;
    }

    /// The TLS setup of its connections, if any.
    pub(crate) fn tls(&self) -> Option<Tls> {
        self.tls.borrow().clone()
    }

    #[cfg(unix)]
    pub(crate) fn set_unix_cleanup(&self, cleanup: UnixCleanup) {
        *self.unix_cleanup.borrow_mut() = Some(cleanup);
    }

    /// Called by a transport the server accepted, when it is made.
    pub fn _attach(&self, transport: Weak<dyn Transport>) {
        self.active_count.set(self.active_count.get() + 1);
        self.clients.borrow_mut().push(transport);
    }

    /// Called by a transport the server accepted, once its connection is lost.
    pub fn _detach(&self, transport: &Weak<dyn Transport>) {
        self.active_count
            .set(self.active_count.get().saturating_sub(1));
        self.clients
            .borrow_mut()
            .retain(|t| !Weak::ptr_eq(t, transport) && t.strong_count() > 0);
        if self.active_count.get() == 0 && self.sockets.borrow().is_none() {
            self.wakeup();
        }
    }

    /// True while `sock` is one of this server's open listening sockets
    /// (the accept-retry timer checks it before accepting again).
    pub fn _is_listening_on(&self, sock: &Rc<Socket>) -> bool {
        self.serving.get()
            && self
                .sockets
                .borrow()
                .as_ref()
                .is_some_and(|v| v.iter().any(|s| Rc::ptr_eq(s, sock)))
    }

    /// The protocol factory, for the accept loop.
    pub fn protocol_factory(&self) -> ProtocolFactory {
        self.protocol_factory.clone()
    }

    fn wakeup(&self) {
        let waiters = self.waiters.borrow_mut().take();
        for w in waiters.into_iter().flatten() {
            if !w.done() {
                let _ = w.set_result(());
            }
        }
    }

    fn start(&self) -> Result<()> {
        if self.serving.get() {
            return Ok(());
        }
        let sockets = match &*self.sockets.borrow() {
            Some(s) => s.clone(),
            None => return Err(Error::runtime(format!("server {} is closed", self.repr()))),
        };
        let me = self
            .this
            .upgrade()
            .expect("a server is used through its Rc");
        self.serving.set(true);
        for sock in sockets {
            sock.listen(self.backlog)?;
            self.lp._start_serving(
                self.protocol_factory.clone(),
                sock,
                me.clone(),
                self.backlog,
            )?;
        }
        Ok(())
    }

    fn repr(&self) -> String {
        let socks = self.sockets.borrow();
        let names: Vec<String> = socks
            .iter()
            .flatten()
            .map(|s| match s.local_addr().ok().and_then(|a| a.as_socket()) {
                Some(a) => a.to_string(),
                None => "?".to_string(),
            })
            .collect();
        format!("<Server sockets=({})>", names.join(", "))
    }

    fn live_clients(&self) -> Vec<Rc<dyn Transport>> {
        self.clients
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repr())
    }
}

impl AbstractServer for Server {
    fn close(&self) {
        let Some(sockets) = self.sockets.borrow_mut().take() else {
            return;
        };
        for sock in &sockets {
            self.lp._stop_serving(sock);
        }
        self.serving.set(false);
        #[cfg(unix)]
        if let Some(c) = self.unix_cleanup.borrow_mut().take() {
            super::unix::remove_socket_file(&c);
        }
        let fut = self.serving_forever.borrow_mut().take();
        if let Some(f) = fut {
            f.cancel(None);
        }
        if self.active_count.get() == 0 {
            self.wakeup();
        }
    }

    fn close_clients(&self) {
        for t in self.live_clients() {
            t.close();
        }
    }

    fn abort_clients(&self) {
        for t in self.live_clients() {
            t.abort();
        }
    }

    fn get_loop(&self) -> Loop {
        self.lp.clone()
    }

    fn is_serving(&self) -> bool {
        self.serving.get()
    }

    fn start_serving(&self) -> LocalBoxFuture<'static, Result<()>> {
        let me = self
            .this
            .upgrade()
            .expect("a server is used through its Rc");
        let lp: Loop = self.lp.clone();
        Box::pin(async move {
            me.start()?;
            // One iteration, so that the accept readers are in place.
            crate::tasks::sleep_on(&lp, 0.0).await
        })
    }

    fn serve_forever(&self) -> LocalBoxFuture<'static, Result<()>> {
        let me = self
            .this
            .upgrade()
            .expect("a server is used through its Rc");
        Box::pin(async move {
            if me.serving_forever.borrow().is_some() {
                return Err(Error::runtime(format!(
                    "server {} is already being awaited on serve_forever()",
                    me.repr()
                )));
            }
            if me.sockets.borrow().is_none() {
                return Err(Error::runtime(format!("server {} is closed", me.repr())));
            }
            me.start()?;
            let fut = me.lp.create_future::<()>();
            *me.serving_forever.borrow_mut() = Some(fut.clone());
            // Cleared however this ends, the task's cancellation included
            // (then the future is dropped mid-await and the server closes).
            struct Reset(Rc<Server>, bool);
            impl Drop for Reset {
                fn drop(&mut self) {
                    self.0.serving_forever.borrow_mut().take();
                    if !self.1 {
                        self.0.close();
                    }
                }
            }
            let mut reset = Reset(me.clone(), false);
            let r = (&fut).await;
            if let Err(e) = &r {
                if e.is_cancelled() {
                    me.close();
                    me.wait_closed().await?;
                }
            }
            reset.1 = true;
            r
        })
    }

    fn wait_closed(&self) -> LocalBoxFuture<'static, Result<()>> {
        let waiter = self.waiters.borrow_mut().as_mut().map(|w| {
            let f = self.lp.create_future::<()>();
            w.push(f.clone());
            f
        });
        Box::pin(async move {
            match waiter {
                Some(w) => w.await,
                None => Ok(()),
            }
        })
    }

    fn sockets(&self) -> Vec<Rc<Socket>> {
        self.sockets.borrow().clone().unwrap_or_default()
    }
}

/// `async with server:` — closes the server when dropped;
/// [`close`](ServerScope::close) closes it and waits for its connections
/// to go, as `__aexit__` does.
pub struct ServerScope(Rc<dyn AbstractServer>);

impl ServerScope {
    /// Takes charge of closing `server`.
    pub fn new(server: Rc<dyn AbstractServer>) -> Self {
        ServerScope(server)
    }

    /// Closes the server and waits until it is closed and every connection
    /// is gone.
    pub async fn close(self) -> Result<()> {
        self.0.close();
        self.0.wait_closed().await
    }
}

impl Deref for ServerScope {
    type Target = Rc<dyn AbstractServer>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for ServerScope {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// `loop.create_server`.
pub fn create_server(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    host: Hosts,
    port: Option<u16>,
    options: CreateServerOptions,
) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
    Box::pin(async move {
        let tls = tls_options::server(
            options.ssl.clone(),
            options.ssl_handshake_timeout,
            options.ssl_shutdown_timeout,
        )?;
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        let host_given = !matches!(host, Hosts::All) || port.is_some();
        let sockets = if host_given {
            if options.sock.is_some() {
                return Err(Error::value(
                    "host/port and sock can not be specified at the same time",
                ));
            }
            bind_all(&(lp.clone() as Loop), host, port.unwrap_or(0), &options).await?
        } else {
            let Some(sock) = options.sock.clone() else {
                return Err(Error::value("Neither host/port nor sock were specified"));
            };
            if sock.r#type()? != Type::STREAM {
                return Err(Error::value(format!(
                    "A Stream Socket was expected, got {sock:?}"
                )));
            }
            vec![sock]
        };
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        let server = Server::new(lp.clone(), sockets, protocol_factory, options.backlog);
        server.set_tls(tls);
        if options.keep_alive {
            // On every listener, bound here or given: accepted sockets
            // inherit SO_KEEPALIVE from it on the platforms we run on;
            // asyncio sets it on the listener too.
            for s in server.sockets() {
                s.set_keepalive(true)?;
            }
        }
        if options.start_serving {
            server.start()?;
            crate::tasks::sleep_on(&(lp.clone() as Loop), 0.0).await?;
        }
        Ok(server as Rc<dyn AbstractServer>)
    })
}

/// Resolves every host and binds one listening socket per address.
async fn bind_all(
    lp: &Loop,
    host: Hosts,
    port: u16,
    options: &CreateServerOptions,
) -> Result<Vec<Rc<Socket>>> {
    let hosts: Vec<Option<String>> = match host {
        Hosts::All => vec![None],
        Hosts::One(h) if h.is_empty() => vec![None],
        Hosts::One(h) => vec![Some(h)],
        Hosts::Many(v) => v
            .into_iter()
            .map(|h| (!h.is_empty()).then_some(h))
            .collect(),
    };
    let reuse_address = options.reuse_address.unwrap_or(cfg!(unix));
    let mut infos = Vec::new();
    for h in hosts {
        let got = ensure_resolved(
            lp,
            h,
            port,
            options.family,
            sock_stream(),
            0,
            options.flags | passive_flag(),
        )
        .await?;
        for info in got {
            if !infos
                .iter()
                .any(|i: &crate::events::options::AddrInfo| i.addr == info.addr)
            {
                infos.push(info);
            }
        }
    }
    let mut sockets = Vec::new();
    for info in &infos {
        let domain = domain_of(info.family, &info.addr);
        let Ok(sock) = Socket::new(domain, Type::STREAM, None) else {
            // A family this host does not have: asyncio skips it too.
            continue;
        };
        if reuse_address {
            sock.set_reuse_address(true)?;
        }
        if options.reuse_port {
            set_reuse_port(&sock)?;
        }
        if domain == Domain::IPV6 {
            // One socket per family, as asyncio: no dual-stack listener.
            sock.set_only_v6(true)?;
        }
        if let Err(e) = sock.bind(&info.addr.into()) {
            if is_addr_not_avail(&e) {
                // The family is not enabled here (bpo-30945): skip it.
                continue;
            }
            return Err(bind_error(&info.addr, &e));
        }
        sockets.push(Rc::new(sock));
    }
    if sockets.is_empty() {
        let addrs: Vec<String> = infos.iter().map(|i| i.addr.to_string()).collect();
        return Err(std::io::Error::other(format!(
            "could not bind on any address out of [{}]",
            addrs.join(", ")
        ))
        .into());
    }
    Ok(sockets)
}

fn is_addr_not_avail(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
}

/// `AI_PASSIVE`.
fn passive_flag() -> i32 {
    #[cfg(unix)]
    {
        libc::AI_PASSIVE
    }
    #[cfg(windows)]
    {
        1
    }
}
