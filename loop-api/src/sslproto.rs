//! TLS as a protocol layer (asyncio's `sslproto`, after uvloop's): an
//! [`SslProtocol`] sits on the raw transport as its protocol, runs the TLS
//! engine (rustls) over in-memory buffers, and hands the application a
//! transport of its own ([`SslTransport`]). It never touches a socket, so
//! it works unchanged over readiness and completion backends.
//!
//! # States
//! `Unwrapped → DoHandshake → Wrapped → Flushing → Shutdown`, and any state
//! back to `Unwrapped` when the connection ends, as in asyncio:
//! - **DoHandshake**: records flow until rustls is done; a timer of
//!   `ssl_handshake_timeout` (60 s) aborts with `ConnectionAbortedError`.
//!   EOF from the peer is a `ConnectionResetError`; a TLS failure
//!   (untrusted certificate, a name that does not match, garbage) is an
//!   `SSLError` (`SSLCertVerificationError` for certificates) and closes
//!   the connection. Then the application's `connection_made`, then the
//!   waiter (`create_connection`'s result).
//! - **Wrapped**: application data both ways. A `close_notify` from the
//!   peer is the application's `eof_received`, then our shutdown.
//! - **Flushing / Shutdown** (the application's `close`, or the peer's
//!   `close_notify` or EOF): what was written is flushed, incoming
//!   application data is dropped, our `close_notify` goes out and the
//!   peer's is awaited, for at most `ssl_shutdown_timeout` (30 s), past
//!   which the connection is force-closed ("SSL shutdown timed out").
//!   Writes made meanwhile are dropped and counted, as asyncio does.
//!   `abort` skips all of it.
//!
//! # Flow control, in both layers
//! - Writing: the application's `pause_writing`/`resume_writing` follow
//!   the write backlog plus the records not yet handed to the raw
//!   transport, against 512 KiB / 128 KiB marks (asyncio's SSL write
//!   marks). The raw transport's own `pause_writing` only holds records
//!   back here.
//! - Reading: undecrypted input waiting here past 256 KiB pauses the raw
//!   transport's reading; the application's `pause_reading` stops
//!   delivery (what is decrypted waits in rustls, the rest here).
//!
//! Received records are handed to rustls straight from the raw transport's
//! buffer; only what rustls does not take at once is copied.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::{Rc, Weak};

use rustls::pki_types::ServerName;

use crate::base_events::BaseLoop;
use crate::events::{EventLoopExt, ExceptionContext, TimerHandle};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::{BaseProtocol, Protocol};
use crate::ssl::SslContext;
use crate::transports::flow_control::limits_with;
use crate::transports::lifecycle::LOG_THRESHOLD_FOR_CONNLOST_WRITES;
use crate::transports::{
    BaseTransport, ExtraInfo, ReadTransport, TlsInfo, Transport, WriteTransport,
};

/// asyncio's `SSL_HANDSHAKE_TIMEOUT`, in seconds.
pub const SSL_HANDSHAKE_TIMEOUT: f64 = 60.0;
/// asyncio's `SSL_SHUTDOWN_TIMEOUT`, in seconds.
pub const SSL_SHUTDOWN_TIMEOUT: f64 = 30.0;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ` (KiB).
const READ_HIGH_WATER: usize = 256 * 1024;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_WRITE` (KiB).
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// The most plaintext handed to the application in one `data_received`.
const MAX_READ: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AppState {
    Init,
    ConMade,
    Eof,
    ConLost,
}

fn ssl_error(e: rustls::Error) -> Error {
    match e {
        rustls::Error::InvalidCertificate(c) => Error::SslCertVerification(format!(
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {c:?}"
        )),
        other => Error::Ssl(other.to_string()),
    }
}

fn connection_reset(msg: &str) -> Error {
    io::Error::new(io::ErrorKind::ConnectionReset, msg.to_string()).into()
}

/// asyncio's `SSLProtocol`: see the module docs.
pub struct SslProtocol {
    lp: Rc<dyn BaseLoop>,
    this: Weak<SslProtocol>,
    state: Cell<State>,
    app_state: Cell<AppState>,
    conn: RefCell<rustls::Connection>,
    context: SslContext,
    server_hostname: Option<String>,
    /// Records received and not yet taken by rustls.
    incoming: RefCell<Vec<u8>>,
    /// Records made and not yet handed to the raw transport.
    outgoing: RefCell<Vec<u8>>,
    /// Application writes rustls has not taken yet.
    backlog: RefCell<VecDeque<Vec<u8>>>,
    backlog_size: Cell<usize>,
    transport: RefCell<Option<Rc<dyn Transport>>>,
    app_protocol: RefCell<Option<Rc<dyn Protocol>>>,
    app_transport: RefCell<Option<Rc<SslTransport>>>,
    waiter: RefCell<Option<Future<()>>>,
    handshake_timeout: f64,
    shutdown_timeout: f64,
    handshake_timer: RefCell<Option<TimerHandle>>,
    shutdown_timer: RefCell<Option<TimerHandle>>,
    ssl_writing_paused: Cell<bool>,
    app_reading_paused: Cell<bool>,
    ssl_reading_paused: Cell<bool>,
    app_writing_paused: Cell<bool>,
    incoming_marks: Cell<(usize, usize)>,
    outgoing_marks: Cell<(usize, usize)>,
    eof_received: Cell<bool>,
    close_notify_sent: Cell<bool>,
    conn_lost: Cell<u32>,
    /// Set by a fatal error, for the `connection_lost` the abort brings.
    fatal: RefCell<Option<Error>>,
    info: RefCell<Option<TlsInfo>>,
}

impl SslProtocol {
    /// A TLS layer for `app_protocol`. With `call_connection_made` false
    /// (`start_tls`), the application is connected already and hears no
    /// second `connection_made`. `waiter` gets the handshake's outcome.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lp: Rc<dyn BaseLoop>,
        app_protocol: Rc<dyn Protocol>,
        context: SslContext,
        waiter: Option<Future<()>>,
        server_hostname: Option<String>,
        call_connection_made: bool,
        handshake_timeout: Option<f64>,
        shutdown_timeout: Option<f64>,
    ) -> Result<Rc<SslProtocol>> {
        let handshake_timeout = check_timeout(
            handshake_timeout.unwrap_or(SSL_HANDSHAKE_TIMEOUT),
            "ssl_handshake_timeout",
        )?;
        let shutdown_timeout = check_timeout(
            shutdown_timeout.unwrap_or(SSL_SHUTDOWN_TIMEOUT),
            "ssl_shutdown_timeout",
        )?;
        let conn: rustls::Connection = match &context {
            SslContext::Client(config) => {
                let Some(name) = server_hostname.clone().filter(|n| !n.is_empty()) else {
                    return Err(Error::value(
                        "You must set server_hostname when using ssl without a host",
                    ));
                };
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| Error::value(format!("invalid server_hostname {name:?}: {e}")))?;
                rustls::ClientConnection::new(config.clone(), name)
                    .map_err(ssl_error)?
                    .into()
            }
            SslContext::Server(config) => rustls::ServerConnection::new(config.clone())
                .map_err(ssl_error)?
                .into(),
        };
        let proto = Rc::new_cyclic(|this: &Weak<SslProtocol>| SslProtocol {
            lp,
            this: this.clone(),
            state: Cell::new(State::Unwrapped),
            app_state: Cell::new(if call_connection_made {
                AppState::Init
            } else {
                AppState::ConMade
            }),
            conn: RefCell::new(conn),
            context,
            server_hostname,
            incoming: RefCell::new(Vec::new()),
            outgoing: RefCell::new(Vec::new()),
            backlog: RefCell::new(VecDeque::new()),
            backlog_size: Cell::new(0),
            transport: RefCell::new(None),
            app_protocol: RefCell::new(Some(app_protocol)),
            app_transport: RefCell::new(None),
            waiter: RefCell::new(waiter),
            handshake_timeout,
            shutdown_timeout,
            handshake_timer: RefCell::new(None),
            shutdown_timer: RefCell::new(None),
            ssl_writing_paused: Cell::new(false),
            app_reading_paused: Cell::new(false),
            ssl_reading_paused: Cell::new(false),
            app_writing_paused: Cell::new(false),
            incoming_marks: Cell::new((READ_HIGH_WATER, READ_HIGH_WATER / 4)),
            outgoing_marks: Cell::new((WRITE_HIGH_WATER, WRITE_HIGH_WATER / 4)),
            eof_received: Cell::new(false),
            close_notify_sent: Cell::new(false),
            conn_lost: Cell::new(0),
            fatal: RefCell::new(None),
            info: RefCell::new(None),
        });
        *proto.app_transport.borrow_mut() = Some(Rc::new(SslTransport {
            proto: proto.clone(),
            closed: Cell::new(false),
        }));
        Ok(proto)
    }

    fn me(&self) -> Rc<SslProtocol> {
        self.this.upgrade().expect("used through its Rc")
    }

    /// The transport the application gets.
    pub fn app_transport(&self) -> Option<Rc<dyn Transport>> {
        self.app_transport
            .borrow()
            .clone()
            .map(|t| t as Rc<dyn Transport>)
    }

    fn raw(&self) -> Option<Rc<dyn Transport>> {
        self.transport.borrow().clone()
    }

    fn app(&self) -> Option<Rc<dyn Protocol>> {
        self.app_protocol.borrow().clone()
    }

    fn set_state(&self, new: State) {
        use State::*;
        let old = self.state.get();
        let allowed = new == Unwrapped
            || matches!(
                (old, new),
                (Unwrapped, DoHandshake)
                    | (DoHandshake, Wrapped)
                    | (Wrapped, Flushing)
                    | (Flushing, Shutdown)
            );
        assert!(allowed, "cannot switch state from {old:?} to {new:?}");
        self.state.set(new);
    }

    fn wakeup_waiter(&self, exc: Option<Error>) {
        let Some(w) = self.waiter.borrow_mut().take() else {
            return;
        };
        if !w.cancelled() {
            let _ = match exc {
                Some(e) => w.set_exception(e),
                None => w.set_result(()),
            };
        }
    }

    // ----- the engine ---------------------------------------------------------

    /// Hands received records to rustls and has it process them, as far as
    /// it takes them (it stops while its plaintext buffer is full).
    fn pump(&self) -> std::result::Result<(), rustls::Error> {
        let mut incoming = self.incoming.borrow_mut();
        let mut conn = self.conn.borrow_mut();
        let mut at = 0;
        while at < incoming.len() && conn.wants_read() {
            let mut rest = &incoming[at..];
            match conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(_) => break,
            }
            if let Err(e) = conn.process_new_packets() {
                incoming.drain(..at);
                return Err(e);
            }
        }
        incoming.drain(..at);
        Ok(())
    }

    /// Adds received records, handing them to rustls without a copy when
    /// nothing waits before them.
    fn receive(&self, data: &[u8]) -> std::result::Result<(), rustls::Error> {
        let rest = {
            let mut conn = self.conn.borrow_mut();
            if !self.incoming.borrow().is_empty() {
                data
            } else {
                let mut rest = data;
                while !rest.is_empty() && conn.wants_read() {
                    match conn.read_tls(&mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    conn.process_new_packets()?;
                }
                rest
            }
        };
        if !rest.is_empty() {
            self.incoming.borrow_mut().extend_from_slice(rest);
        }
        Ok(())
    }

    /// Moves the records rustls made to the raw transport (or holds them
    /// while it paused us), then updates the application's flow control.
    fn process_outgoing(&self) {
        {
            let mut conn = self.conn.borrow_mut();
            let mut out = self.outgoing.borrow_mut();
            while conn.wants_write() {
                if conn.write_tls(&mut *out).is_err() {
                    break;
                }
            }
        }
        if !self.ssl_writing_paused.get() {
            let data = std::mem::take(&mut *self.outgoing.borrow_mut());
            if !data.is_empty() {
                if let Some(t) = self.raw() {
                    let _ = t.write(&data);
                }
            }
        }
        self.control_app_writing();
    }

    // ----- the handshake ------------------------------------------------------

    fn start_handshake(&self) {
        self.set_state(State::DoHandshake);
        let me = self.this.clone();
        let timer = self.lp.call_later(self.handshake_timeout, move || {
            if let Some(p) = me.upgrade() {
                p.check_handshake_timeout();
            }
        });
        *self.handshake_timer.borrow_mut() = timer.ok();
        self.do_handshake();
    }

    fn check_handshake_timeout(&self) {
        if self.state.get() == State::DoHandshake {
            let msg = format!(
                "SSL handshake is taking longer than {} seconds: aborting the connection",
                self.handshake_timeout
            );
            self.fatal_error(
                io::Error::new(io::ErrorKind::ConnectionAborted, msg).into(),
                "Fatal error on transport",
            );
        }
    }

    fn do_handshake(&self) {
        let pumped = self.pump();
        self.process_outgoing();
        match pumped {
            Err(e) => self.on_handshake_complete(Some(ssl_error(e))),
            Ok(()) if !self.conn.borrow().is_handshaking() => self.on_handshake_complete(None),
            Ok(()) => {}
        }
    }

    fn on_handshake_complete(&self, exc: Option<Error>) {
        if let Some(t) = self.handshake_timer.borrow_mut().take() {
            t.cancel();
        }
        if let Some(exc) = exc {
            self.set_state(State::Unwrapped);
            let msg = if matches!(exc, Error::SslCertVerification(_)) {
                "SSL handshake failed on verifying the certificate"
            } else {
                "SSL handshake failed"
            };
            self.fatal_error(exc.clone(), msg);
            self.wakeup_waiter(Some(exc));
            return;
        }
        self.set_state(State::Wrapped);
        *self.info.borrow_mut() = Some(self.tls_info());
        if self.app_state.get() == AppState::Init {
            self.app_state.set(AppState::ConMade);
            if let (Some(app), Some(t)) = (self.app(), self.app_transport()) {
                app.connection_made(t);
            }
        }
        self.wakeup_waiter(None);
        self.do_read();
    }

    fn tls_info(&self) -> TlsInfo {
        let conn = self.conn.borrow();
        let peer_certificates = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
            .unwrap_or_default();
        let sni = match &*conn {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => self.server_hostname.clone(),
        };
        TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            sni,
            peer_certificates,
            server_side: self.context.is_server(),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }

    // ----- shutting down ------------------------------------------------------

    fn start_shutdown(&self) {
        if matches!(
            self.state.get(),
            State::Flushing | State::Shutdown | State::Unwrapped
        ) {
            return;
        }
        if let Some(t) = self.app_transport.borrow().as_ref() {
            t.closed.set(true);
        }
        if self.state.get() == State::DoHandshake {
            self.abort(None);
            return;
        }
        self.set_state(State::Flushing);
        let me = self.this.clone();
        let timer = self.lp.call_later(self.shutdown_timeout, move || {
            if let Some(p) = me.upgrade() {
                p.check_shutdown_timeout();
            }
        });
        *self.shutdown_timer.borrow_mut() = timer.ok();
        self.do_flush();
    }

    fn check_shutdown_timeout(&self) {
        if matches!(self.state.get(), State::Flushing | State::Shutdown) {
            *self.fatal.borrow_mut() =
                Some(io::Error::new(io::ErrorKind::TimedOut, "SSL shutdown timed out").into());
            if let Some(t) = self.raw() {
                t.abort();
            }
        }
    }

    fn do_flush(&self) {
        self.do_read();
        if self.state.get() == State::Flushing {
            self.set_state(State::Shutdown);
            self.do_shutdown();
        }
    }

    fn do_shutdown(&self) {
        if self.state.get() != State::Shutdown {
            return;
        }
        if !self.eof_received.get() {
            // Whatever the application wrote goes before our close_notify.
            self.do_write();
            if !self.close_notify_sent.replace(true) {
                self.conn.borrow_mut().send_close_notify();
            }
            if let Err(e) = self.pump() {
                self.process_outgoing();
                return self.on_shutdown_complete(Some(ssl_error(e)));
            }
            self.process_outgoing();
            if !self.discard_until_close_notify() {
                return; // the peer's close_notify is still to come
            }
        }
        self.process_outgoing();
        self.call_eof_received();
        self.on_shutdown_complete(None);
    }

    /// Drops application data that arrives while shutting down; true once
    /// the peer's `close_notify` has come.
    fn discard_until_close_notify(&self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.conn.borrow_mut().reader().read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    fn on_shutdown_complete(&self, exc: Option<Error>) {
        if let Some(t) = self.shutdown_timer.borrow_mut().take() {
            t.cancel();
        }
        match exc {
            Some(e) => self.fatal_error(e, "Fatal error on transport"),
            None => {
                if let Some(t) = self.raw() {
                    let _ = self.lp.call_soon(move || t.close());
                }
            }
        }
    }

    fn abort(&self, exc: Option<Error>) {
        self.set_state(State::Unwrapped);
        if let Some(e) = exc {
            *self.fatal.borrow_mut() = Some(e);
        }
        if let Some(t) = self.raw() {
            t.abort();
        }
    }

    // ----- writing --------------------------------------------------------------

    fn write_appdata(&self, chunks: &[&[u8]]) {
        if matches!(
            self.state.get(),
            State::Flushing | State::Shutdown | State::Unwrapped
        ) {
            if self.conn_lost.get() >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                log::log(Level::Warning, "SSL connection is closed");
            }
            self.conn_lost.set(self.conn_lost.get() + 1);
            return;
        }
        {
            let mut backlog = self.backlog.borrow_mut();
            for c in chunks.iter().filter(|c| !c.is_empty()) {
                backlog.push_back(c.to_vec());
                self.backlog_size.set(self.backlog_size.get() + c.len());
            }
        }
        if self.state.get() == State::Wrapped {
            self.do_write();
        }
    }

    fn do_write(&self) {
        loop {
            let front = self.backlog.borrow_mut().pop_front();
            let Some(mut data) = front else { break };
            let n = self.conn.borrow_mut().writer().write(&data).unwrap_or(0);
            self.backlog_size
                .set(self.backlog_size.get().saturating_sub(n));
            // Drain what rustls made, so it takes more.
            self.drain_records();
            if n < data.len() {
                data.drain(..n);
                self.backlog.borrow_mut().push_front(data);
                if n == 0 {
                    break;
                }
            }
        }
        self.process_outgoing();
    }

    fn drain_records(&self) {
        let mut conn = self.conn.borrow_mut();
        let mut out = self.outgoing.borrow_mut();
        while conn.wants_write() {
            if conn.write_tls(&mut *out).is_err() {
                break;
            }
        }
    }

    fn write_buffer_size(&self) -> usize {
        self.outgoing.borrow().len() + self.backlog_size.get()
    }

    fn control_app_writing(&self) {
        let size = self.write_buffer_size();
        let (high, low) = self.outgoing_marks.get();
        if size >= high && !self.app_writing_paused.get() {
            self.app_writing_paused.set(true);
            self.call_app("pause_writing", |a| a.pause_writing());
        } else if size <= low && self.app_writing_paused.get() {
            self.app_writing_paused.set(false);
            self.call_app("resume_writing", |a| a.resume_writing());
        }
    }

    /// Calls the application protocol, reporting a panic as asyncio reports
    /// an exception from `pause_writing`/`resume_writing`.
    fn call_app(&self, what: &str, f: impl FnOnce(&dyn Protocol)) {
        let Some(app) = self.app() else { return };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&*app)));
        if let Err(p) = r {
            self.lp.call_exception_handler(
                ExceptionContext::new(format!("protocol.{what}() failed"))
                    .with_exception(Error::from_panic(p)),
            );
        }
    }

    // ----- reading ------------------------------------------------------------------

    fn do_read(&self) {
        if !matches!(self.state.get(), State::Wrapped | State::Flushing) {
            return;
        }
        if !self.app_reading_paused.get() {
            let mut data = Vec::new();
            let close_notify = loop {
                if let Err(e) = self.pump() {
                    self.process_outgoing();
                    data.extend(self.read_plaintext().0);
                    self.deliver(data);
                    return self.fatal_error(ssl_error(e), "Fatal error on SSL protocol");
                }
                let (got, eof) = self.read_plaintext();
                let progress = !got.is_empty();
                data.extend(got);
                if eof || !progress || self.incoming.borrow().is_empty() || data.len() >= MAX_READ {
                    break eof;
                }
            };
            self.deliver(data);
            if close_notify {
                self.call_eof_received();
                self.start_shutdown();
            }
            if !self.backlog.borrow().is_empty() {
                self.do_write();
            } else {
                self.process_outgoing();
            }
            if matches!(self.state.get(), State::Wrapped)
                && !self.incoming.borrow().is_empty()
                && !self.app_reading_paused.get()
            {
                // More than one read's worth came: the rest next iteration.
                let me = self.me();
                let _ = self.lp.call_soon(move || me.do_read());
            }
        }
        self.control_ssl_reading();
    }

    /// The plaintext rustls holds, and whether the peer's `close_notify`
    /// came after it.
    fn read_plaintext(&self) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match self.conn.borrow_mut().reader().read(&mut buf) {
                Ok(0) => return (data, true),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (data, false),
                Err(_) => return (data, true),
            }
        }
    }

    fn deliver(&self, data: Vec<u8>) {
        if data.is_empty() || self.app_state.get() != AppState::ConMade {
            return;
        }
        let Some(app) = self.app() else { return };
        let delivered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match app.as_buffered() {
                Some(bp) => {
                    let mut at = 0;
                    while at < data.len() {
                        let buf = bp.get_buffer(data.len() - at)?;
                        let n = buf.len().min(data.len() - at);
                        if n == 0 {
                            return Err(Error::runtime("get_buffer() returned an empty buffer"));
                        }
                        let mut buf = buf;
                        buf[..n].copy_from_slice(&data[at..at + n]);
                        bp.buffer_updated(buf, n)?;
                        at += n;
                    }
                    Ok(())
                }
                None => {
                    app.data_received(&data);
                    Ok(())
                }
            }));
        let failure = match delivered {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(p) => Some(Error::from_panic(p)),
        };
        if let Some(e) = failure {
            self.fatal_error(e, "Fatal error: protocol.data_received() call failed.");
        }
    }

    fn call_eof_received(&self) {
        if self.app_state.get() != AppState::ConMade {
            return;
        }
        self.app_state.set(AppState::Eof);
        let Some(app) = self.app() else { return };
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match app.as_buffered() {
                Some(bp) => bp.eof_received(),
                None => app.eof_received(),
            }));
        match r {
            Ok(true) => log::log(
                Level::Warning,
                "returning true from eof_received() has no effect when using ssl",
            ),
            Ok(false) => {}
            Err(p) => self.fatal_error(Error::from_panic(p), "Error calling eof_received()"),
        }
    }

    fn pause_app_reading(&self) {
        self.app_reading_paused.set(true);
    }

    fn resume_app_reading(&self) {
        if !self.app_reading_paused.replace(false) {
            return;
        }
        let me = self.me();
        let _ = self.lp.call_soon(move || match me.state.get() {
            State::Wrapped => me.do_read(),
            State::Flushing => me.do_flush(),
            State::Shutdown => me.do_shutdown(),
            _ => {}
        });
    }

    fn control_ssl_reading(&self) {
        let size = self.incoming.borrow().len();
        let (high, low) = self.incoming_marks.get();
        let Some(t) = self.raw() else { return };
        if size >= high && !self.ssl_reading_paused.get() {
            self.ssl_reading_paused.set(true);
            t.pause_reading();
        } else if size <= low && self.ssl_reading_paused.get() {
            self.ssl_reading_paused.set(false);
            t.resume_reading();
        }
    }

    // ----- errors -----------------------------------------------------------------

    fn fatal_error(&self, exc: Error, message: &str) {
        *self.fatal.borrow_mut() = Some(exc.clone());
        if let Some(t) = self.raw() {
            match exc {
                // rustls has just queued an alert saying why: let it reach
                // the peer (close flushes; an abort would drop it on a
                // completion backend, where the write is still a request).
                Error::Ssl(_) | Error::SslCertVerification(_) => t.close(),
                _ => t.abort(),
            }
        }
        match &exc {
            Error::Io(_) => {
                if self.lp.get_debug() {
                    log::log(Level::Debug, &format!("{message}: {exc}"));
                }
            }
            Error::Cancelled(_) => {}
            _ => {
                let mut ctx = ExceptionContext::new(message).with_exception(exc);
                if let Some(t) = self.app_transport() {
                    ctx = ctx.with_transport(Rc::new(t));
                }
                self.lp.call_exception_handler(ctx);
            }
        }
    }
}

fn check_timeout(secs: f64, name: &str) -> Result<f64> {
    if secs <= 0.0 || secs.is_nan() {
        return Err(Error::value(format!(
            "{name} should be a positive number, got {secs}"
        )));
    }
    Ok(secs)
}

/// The raw transport's side: it calls these as it calls any protocol.
impl BaseProtocol for SslProtocol {
    fn connection_lost(&self, exc: Option<Error>) {
        self.backlog.borrow_mut().clear();
        self.backlog_size.set(0);
        self.outgoing.borrow_mut().clear();
        self.conn_lost.set(self.conn_lost.get() + 1);
        if let Some(t) = self.app_transport.borrow().as_ref() {
            t.closed.set(true);
        }
        let exc = exc.or_else(|| self.fatal.borrow_mut().take());
        if self.state.get() != State::DoHandshake
            && matches!(self.app_state.get(), AppState::ConMade | AppState::Eof)
        {
            self.app_state.set(AppState::ConLost);
            if let Some(app) = self.app() {
                let e = exc.clone();
                let _ = self.lp.call_soon(move || app.connection_lost(e));
            }
        }
        self.state.set(State::Unwrapped);
        self.transport.borrow_mut().take();
        self.app_transport.borrow_mut().take();
        self.app_protocol.borrow_mut().take();
        let waiter_exc =
            exc.unwrap_or_else(|| connection_reset("Connection lost during the SSL handshake"));
        self.wakeup_waiter(Some(waiter_exc));
        if let Some(t) = self.shutdown_timer.borrow_mut().take() {
            t.cancel();
        }
        if let Some(t) = self.handshake_timer.borrow_mut().take() {
            t.cancel();
        }
    }

    fn pause_writing(&self) {
        self.ssl_writing_paused.set(true);
    }

    fn resume_writing(&self) {
        self.ssl_writing_paused.set(false);
        self.process_outgoing();
    }
}

impl Protocol for SslProtocol {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        *self.transport.borrow_mut() = Some(transport);
        self.start_handshake();
    }

    fn data_received(&self, data: &[u8]) {
        if let Err(e) = self.receive(data) {
            self.process_outgoing(); // the alert, if rustls made one
            match self.state.get() {
                State::DoHandshake => self.on_handshake_complete(Some(ssl_error(e))),
                state => {
                    // What came before the bad record is the peer's: deliver it.
                    if state == State::Wrapped && !self.app_reading_paused.get() {
                        self.deliver(self.read_plaintext().0);
                    }
                    self.fatal_error(ssl_error(e), "Fatal error on SSL protocol")
                }
            }
            return;
        }
        match self.state.get() {
            State::DoHandshake => self.do_handshake(),
            State::Wrapped => self.do_read(),
            State::Flushing => self.do_flush(),
            State::Shutdown => self.do_shutdown(),
            State::Unwrapped => {}
        }
    }

    fn eof_received(&self) -> bool {
        self.eof_received.set(true);
        if self.lp.get_debug() {
            log::log(Level::Debug, "SSL protocol received EOF");
        }
        match self.state.get() {
            State::DoHandshake => self.on_handshake_complete(Some(connection_reset(
                "Connection lost during the SSL handshake",
            ))),
            State::Wrapped => {
                self.set_state(State::Flushing);
                if self.app_reading_paused.get() {
                    return true;
                }
                self.do_flush();
            }
            State::Flushing => {
                self.do_write();
                self.set_state(State::Shutdown);
                self.do_shutdown();
            }
            State::Shutdown => self.do_shutdown(),
            State::Unwrapped => {}
        }
        false
    }
}

/// The transport the application gets over TLS (asyncio's
/// `_SSLProtocolTransport`).
pub struct SslTransport {
    proto: Rc<SslProtocol>,
    closed: Cell<bool>,
}

impl BaseTransport for SslTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        let info = self.proto.info.borrow().clone();
        match name {
            "sslcontext" => Some(ExtraInfo::Text(format!("{:?}", self.proto.context))),
            "ssl_object" => info.map(ExtraInfo::Tls),
            "peercert" => info
                .and_then(|i| i.peer_certificates.first().cloned())
                .map(ExtraInfo::Bytes),
            "cipher" => info.map(|i| ExtraInfo::Text(i.cipher)),
            "compression" => None,
            "server_hostname" => self.proto.server_hostname.clone().map(ExtraInfo::Text),
            other => self.proto.raw()?.get_extra_info(other),
        }
    }

    fn is_closing(&self) -> bool {
        self.closed.get()
    }

    fn close(&self) {
        if !self.closed.replace(true) {
            self.proto.start_shutdown();
        }
    }
}

impl ReadTransport for SslTransport {
    fn is_reading(&self) -> bool {
        !self.closed.get() && !self.proto.app_reading_paused.get()
    }

    fn pause_reading(&self) {
        self.proto.pause_app_reading();
    }

    fn resume_reading(&self) {
        self.proto.resume_app_reading();
    }
}

impl WriteTransport for SslTransport {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.proto
            .outgoing_marks
            .set(limits_with(high, low, WRITE_HIGH_WATER)?);
        self.proto.control_app_writing();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        let (high, low) = self.proto.outgoing_marks.get();
        (low, high)
    }

    fn get_write_buffer_size(&self) -> usize {
        self.proto.write_buffer_size()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        self.proto.write_appdata(&[data]);
        Ok(())
    }

    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        self.proto.write_appdata(data);
        Ok(())
    }

    fn write_eof(&self) -> Result<()> {
        Err(Error::NotSupported {
            feature: "write_eof over TLS",
            reason: "SSL doesn't support half-closes".into(),
        })
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    fn abort(&self) {
        self.closed.set(true);
        self.proto.abort(None);
    }
}

impl Transport for SslTransport {
    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        *self.proto.app_protocol.borrow_mut() = Some(protocol);
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        match self.proto.app() {
            Some(p) => p,
            None => Rc::new(crate::transports::lifecycle::Detached),
        }
    }
}
