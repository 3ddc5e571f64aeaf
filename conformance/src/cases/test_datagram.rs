//! From CPython's `test_events.py` and `test_selector_events.py`:
//! `create_datagram_endpoint` and the datagram transport, UDP and AF_UNIX.
//!
//! Also `test_base_events.py`'s `create_datagram_endpoint` argument checks,
//! run here on real sockets instead of mocks. Every case synchronises on
//! protocol callbacks (through [`Wakeup`]); the timeouts are safety nets.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::rc::Rc;

use loop_api::events::options::{CreateDatagramEndpointOptions as Opts, DatagramAddr, Family};
use loop_api::events::DatagramPair;
use loop_api::protocols::{BaseProtocol, DatagramProtocol, DatagramProtocolFactory};
use loop_api::transports::{BaseTransport, DatagramTransport, ExtraInfo};
use loop_api::{Error, EventLoopExt, Loop, Result};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::util::{capture_exceptions, run_until_done, same_obj, Log, RawOf, Wakeup};
#[allow(unused_imports)]
use crate::{Ctx, Feature};

/// Safety net for the cases that run the loop: never how they synchronise.
const NET: f64 = 10.0;

// ----- the recording protocol ---------------------------------------------------------

/// What a [`Dg`] protocol saw, in order.
#[derive(Clone, Debug)]
enum Ev {
    Made,
    Data(Vec<u8>, SockAddr),
    ErrorReceived(Error),
    Lost(Option<Error>),
}

type OnData = Rc<dyn Fn(&Dg, &[u8], &SockAddr)>;

/// A datagram protocol that records every callback and wakes the case.
struct Dg {
    wake: Wakeup,
    ev: Log<Ev>,
    transport: RefCell<Option<Rc<dyn DatagramTransport>>>,
    on_data: RefCell<Option<OnData>>,
}

impl Dg {
    fn new(wake: &Wakeup) -> Rc<Self> {
        Rc::new(Dg {
            wake: wake.clone(),
            ev: Log::new(),
            transport: RefCell::new(None),
            on_data: RefCell::new(None),
        })
    }

    /// A protocol that also runs `f` on each datagram, after recording it.
    fn with(wake: &Wakeup, f: impl Fn(&Dg, &[u8], &SockAddr) + 'static) -> Rc<Self> {
        let p = Dg::new(wake);
        *p.on_data.borrow_mut() = Some(Rc::new(f));
        p
    }

    /// `MyDatagramProto` with CPython's echo: answers `resp:<data>` to the sender.
    fn echo(wake: &Wakeup) -> Rc<Self> {
        Dg::with(wake, |p, data, addr| {
            let mut reply = b"resp:".to_vec();
            reply.extend_from_slice(data);
            p.transport()
                .sendto(&reply, Some(addr.clone()))
                .expect("echo sendto");
        })
    }

    fn factory(self: &Rc<Self>) -> DatagramProtocolFactory {
        let p = self.clone();
        Rc::new(move || p.clone() as Rc<dyn DatagramProtocol>)
    }

    fn record(&self, e: Ev) {
        self.ev.push(e);
        self.wake.wake();
    }

    /// The transport `datagram_connection_made` got (until `connection_lost`).
    fn transport(&self) -> Rc<dyn DatagramTransport> {
        self.transport
            .borrow()
            .clone()
            .expect("datagram_connection_made was called and connection_lost was not")
    }

    fn made(&self) -> usize {
        self.ev
            .get()
            .iter()
            .filter(|e| matches!(e, Ev::Made))
            .count()
    }

    fn data(&self) -> Vec<(Vec<u8>, SockAddr)> {
        self.ev
            .get()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Data(d, a) => Some((d, a)),
                _ => None,
            })
            .collect()
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.data().into_iter().map(|(d, _)| d).collect()
    }

    fn errors(&self) -> Vec<Error> {
        self.ev
            .get()
            .into_iter()
            .filter_map(|e| match e {
                Ev::ErrorReceived(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    fn lost(&self) -> Vec<Option<Error>> {
        self.ev
            .get()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Lost(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    /// Runs until `connection_lost`; checks it came once, with `None`, last.
    fn wait_lost(&self, lp: &Loop) -> Result<()> {
        crate::util::wait_lost_once(lp, &self.wake, NET, &self.ev, |e| match e {
            Ev::Lost(x) => Some(x.clone()),
            _ => None,
        })
    }
}

impl BaseProtocol for Dg {
    fn connection_lost(&self, exc: Option<Error>) {
        // Break the transport <-> protocol cycle.
        self.transport.borrow_mut().take();
        self.record(Ev::Lost(exc));
    }
}

impl DatagramProtocol for Dg {
    fn connection_made(&self, transport: Rc<dyn DatagramTransport>) {
        *self.transport.borrow_mut() = Some(transport);
        self.record(Ev::Made);
    }

    fn datagram_received(&self, data: &[u8], addr: &SockAddr) {
        self.record(Ev::Data(data.to_vec(), addr.clone()));
        let hook = self.on_data.borrow().clone();
        if let Some(f) = hook {
            f(self, data, addr);
        }
    }

    fn error_received(&self, exc: Error) {
        self.record(Ev::ErrorReceived(exc));
    }
}

// ----- helpers ----------------------------------------------------------------------------

fn inet(port: u16) -> DatagramAddr {
    DatagramAddr::Inet("127.0.0.1".into(), port)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `create_datagram_endpoint`, run to completion.
fn try_endpoint(lp: &Loop, factory: DatagramProtocolFactory, opts: Opts) -> Result<DatagramPair> {
    let fut = lp.create_datagram_endpoint_dyn(factory, opts);
    lp.run_until_complete(fut)
}

/// `create_datagram_endpoint` for `p`; checks the pair is `p` and its transport.
fn endpoint(lp: &Loop, p: &Rc<Dg>, opts: Opts) -> Result<Rc<dyn DatagramTransport>> {
    let (t, proto) = try_endpoint(lp, p.factory(), opts)?;
    assert!(same_obj(&proto, p), "the pair holds another protocol");
    assert_eq!(p.made(), 1, "datagram_connection_made before the result");
    assert!(
        same_obj(&t, &p.transport()),
        "datagram_connection_made got another transport"
    );
    Ok(t)
}

/// An endpoint bound to a free loopback port, and its address.
fn bound(lp: &Loop, p: &Rc<Dg>) -> Result<(Rc<dyn DatagramTransport>, SocketAddr)> {
    let t = endpoint(
        lp,
        p,
        Opts {
            local_addr: Some(inet(0)),
            ..Default::default()
        },
    )?;
    let a = sockname(&*t);
    Ok((t, a))
}

fn sockname(t: &dyn BaseTransport) -> SocketAddr {
    match t.get_extra_info("sockname") {
        Some(ExtraInfo::Addr(a)) => a,
        other => panic!("sockname: expected an IP address, got {other:?}"),
    }
}

/// A non-blocking UDP socket bound to a free loopback port.
fn udp_peer() -> Rc<Socket> {
    let s = UdpSocket::bind(loopback(0)).expect("bind udp");
    s.set_nonblocking(true).expect("non-blocking");
    Rc::new(Socket::from(s))
}

fn local(s: &Socket) -> SocketAddr {
    s.local_addr().expect("addr").as_socket().expect("inet")
}

/// Receives one datagram on `s` through the loop (`sock_recvfrom`).
fn recv_from(lp: &Loop, s: &Rc<Socket>) -> Result<(Vec<u8>, SockAddr)> {
    let task = lp.create_task(lp.sock_recvfrom(s.clone(), 65536))?;
    run_until_done(lp, &*task.as_obj(), NET)?;
    task.take_result()
}

/// Sends a datagram from a plain socket (loopback: never blocks).
fn send_from(s: &Socket, data: &[u8], to: SocketAddr) {
    let n = s.send_to(data, &SockAddr::from(to)).expect("send_to");
    assert_eq!(n, data.len());
}

/// The message of a `ValueError`, or a panic naming what came instead.
#[track_caller]
fn value_error<T>(r: Result<T>, what: &str) -> String {
    match r {
        Err(Error::Value(m)) => m,
        Err(e) => panic!("{what}: expected a ValueError, got {e}"),
        Ok(_) => panic!("{what}: expected a ValueError, got Ok"),
    }
}

#[track_caller]
fn os_error<T>(r: Result<T>, what: &str) -> std::io::Error {
    match r {
        Err(Error::Io(e)) => std::io::Error::new(e.kind(), e.to_string()),
        Err(e) => panic!("{what}: expected an OSError, got {e}"),
        Ok(_) => panic!("{what}: expected an OSError, got Ok"),
    }
}

/// Runs `f` on the socket behind a transport's `socket` extra info.
fn with_transport_socket<R>(t: &dyn BaseTransport, f: impl FnOnce(&Socket) -> R) -> R {
    let fd = match t.get_extra_info("socket") {
        Some(ExtraInfo::Fd(fd)) => fd,
        other => panic!("get_extra_info(\"socket\"): expected a descriptor, got {other:?}"),
    };
    #[cfg(unix)]
    // SAFETY: the transport owns `fd` and keeps it open for this call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    #[cfg(windows)]
    // SAFETY: the transport owns `fd` and keeps it open for this call.
    let b = unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(fd) };
    let s = socket2::SockRef::from(&b);
    f(&s)
}

// ----- UDP: creating endpoints --------------------------------------------------------------

/// `test_create_datagram_endpoint`: a bound server endpoint answers a
/// connected client endpoint; each sees the other's address; the client
/// closes with `connection_lost(None)`.
pub fn test_create_datagram_endpoint(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let server = Dg::echo(&w);
    let st = endpoint(
        &lp,
        &server,
        Opts {
            local_addr: Some(inet(0)),
            family: Family::Inet,
            ..Default::default()
        },
    )?;
    let saddr = sockname(&*st);
    assert_eq!(saddr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(saddr.port(), 0, "bound to port 0");
    let client = Dg::new(&w);
    let ct = endpoint(
        &lp,
        &client,
        Opts {
            remote_addr: Some(inet(saddr.port())),
            ..Default::default()
        },
    )?;
    let caddr = sockname(&*ct);
    ct.sendto(b"xxx", None)?;
    w.run_until(&lp, NET, "the echo", || !client.data().is_empty())?;
    let got = server.data();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"xxx");
    assert_eq!(got[0].1.as_socket(), Some(caddr), "the sender's address");
    let back = client.data();
    assert_eq!(back[0].0, b"resp:xxx");
    assert_eq!(back[0].1.as_socket(), Some(saddr));
    ct.close();
    client.wait_lost(&lp)?;
    st.close();
    server.wait_lost(&lp)?;
    lp.close()
}

/// `test_create_datagram_endpoint_ipv6`: the same on `::1` (skipped where
/// the host has no IPv6 loopback).
pub fn test_create_datagram_endpoint_ipv6(ctx: &Ctx) -> Result<()> {
    if UdpSocket::bind("[::1]:0").is_err() {
        return Err(Error::NotSupported {
            feature: "IPv6",
            reason: "this host cannot bind ::1".into(),
        });
    }
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let server = Dg::echo(&w);
    let st = endpoint(
        &lp,
        &server,
        Opts {
            local_addr: Some(DatagramAddr::Inet("::1".into(), 0)),
            family: Family::Inet6,
            ..Default::default()
        },
    )?;
    let saddr = sockname(&*st);
    assert!(saddr.is_ipv6() && saddr.ip().is_loopback(), "{saddr}");
    let client = Dg::new(&w);
    let ct = endpoint(
        &lp,
        &client,
        Opts {
            remote_addr: Some(DatagramAddr::Inet("::1".into(), saddr.port())),
            ..Default::default()
        },
    )?;
    ct.sendto(b"six", None)?;
    w.run_until(&lp, NET, "the echo", || !client.data().is_empty())?;
    assert_eq!(client.payloads(), vec![b"resp:six".to_vec()]);
    assert_eq!(server.data()[0].1.as_socket(), Some(sockname(&*ct)));
    ct.close();
    st.close();
    client.wait_lost(&lp)?;
    server.wait_lost(&lp)?;
    lp.close()
}

/// `test_create_datagram_endpoint_sock`: an existing bound UDP socket is
/// used as is: its address, its descriptor as the `socket` extra info.
pub fn test_create_datagram_endpoint_sock(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let sock = udp_peer();
    let addr = local(&sock);
    let fd = sock.raw();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            sock: Some(sock),
            ..Default::default()
        },
    )?;
    assert_eq!(sockname(&*t), addr);
    assert_eq!(t.get_extra_info("socket"), Some(ExtraInfo::Fd(fd)));
    assert_eq!(t.get_extra_info("peername"), None, "not connected");
    let peer = udp_peer();
    send_from(&peer, b"hello", addr);
    w.run_until(&lp, NET, "the datagram", || !p.data().is_empty())?;
    assert_eq!(p.payloads(), vec![b"hello".to_vec()]);
    assert_eq!(p.data()[0].1.as_socket(), Some(local(&peer)));
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `sockname` and `peername` extra info: a bound endpoint has no peer; a
/// connected one reports its peer and the address the OS bound it to.
pub fn test_create_datagram_endpoint_extra_info(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let a = Dg::new(&w);
    let (at, aaddr) = bound(&lp, &a)?;
    assert_eq!(at.get_extra_info("peername"), None);
    let b = Dg::new(&w);
    let bt = endpoint(
        &lp,
        &b,
        Opts {
            remote_addr: Some(inet(aaddr.port())),
            ..Default::default()
        },
    )?;
    assert_eq!(bt.get_extra_info("peername"), Some(ExtraInfo::Addr(aaddr)));
    let baddr = sockname(&*bt);
    assert_eq!(baddr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(baddr.port(), 0, "connect binds the socket");
    assert_eq!(at.get_extra_info("no-such-key"), None);
    at.close();
    bt.close();
    a.wait_lost(&lp)?;
    b.wait_lost(&lp)?;
    lp.close()
}

/// `local_addr` and `remote_addr` together: bound where asked, connected
/// to the peer; both directions work.
pub fn test_create_datagram_endpoint_local_and_remote(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let peer = udp_peer();
    // A port known to be free: bind, read it, release.
    let port = local(&udp_peer()).port();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            local_addr: Some(inet(port)),
            remote_addr: Some(inet(local(&peer).port())),
            ..Default::default()
        },
    )?;
    assert_eq!(sockname(&*t), loopback(port));
    assert_eq!(
        t.get_extra_info("peername"),
        Some(ExtraInfo::Addr(local(&peer)))
    );
    t.sendto(b"out", None)?;
    let (data, from) = recv_from(&lp, &peer)?;
    assert_eq!(
        (data.as_slice(), from.as_socket()),
        (&b"out"[..], Some(loopback(port)))
    );
    send_from(&peer, b"in", loopback(port));
    w.run_until(&lp, NET, "the reply", || !p.data().is_empty())?;
    assert_eq!(p.data()[0].0, b"in");
    assert_eq!(p.data()[0].1.as_socket(), Some(local(&peer)));
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// asyncio's order: `connection_made(transport)` runs before the
/// awaited `create_datagram_endpoint` returns, with the returned transport;
/// the factory is called once.
pub fn test_datagram_connection_made_before_result(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let calls = Rc::new(Cell::new(0));
    let (pp, c) = (p.clone(), calls.clone());
    let factory: DatagramProtocolFactory = Rc::new(move || {
        c.set(c.get() + 1);
        pp.clone() as Rc<dyn DatagramProtocol>
    });
    let (l, pp) = (lp.clone(), p.clone());
    let t = lp.run_until_complete(async move {
        let (t, _) = l
            .create_datagram_endpoint_dyn(
                factory,
                Opts {
                    local_addr: Some(inet(0)),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(pp.made(), 1, "datagram_connection_made not yet called");
        assert!(same_obj(&t, &pp.transport()));
        Ok(t)
    })?;
    assert_eq!(calls.get(), 1, "protocol_factory calls");
    assert!(!t.is_closing());
    t.close();
    assert!(t.is_closing());
    p.wait_lost(&lp)?;
    assert_eq!(p.made(), 1);
    lp.close()
}

// ----- UDP: sendto --------------------------------------------------------------------

/// `sendto(data, addr)` on an unconnected endpoint sends to `addr`, from
/// the endpoint's address.
pub fn test_sendto(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, addr) = bound(&lp, &p)?;
    let peer = udp_peer();
    t.sendto(b"to peer", Some(SockAddr::from(local(&peer))))?;
    let (data, from) = recv_from(&lp, &peer)?;
    assert_eq!(data, b"to peer");
    assert_eq!(from.as_socket(), Some(addr));
    // Several peers from the same endpoint.
    let other = udp_peer();
    t.sendto(b"to other", Some(SockAddr::from(local(&other))))?;
    assert_eq!(recv_from(&lp, &other)?.0, b"to other");
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// On a connected endpoint, `sendto` may name the peer's own address.
pub fn test_sendto_connected_same_address(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let peer = udp_peer();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            remote_addr: Some(inet(local(&peer).port())),
            ..Default::default()
        },
    )?;
    t.sendto(b"named", Some(SockAddr::from(local(&peer))))?;
    t.sendto(b"unnamed", None)?;
    assert_eq!(recv_from(&lp, &peer)?.0, b"named");
    assert_eq!(recv_from(&lp, &peer)?.0, b"unnamed");
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `test_sendto_connected_addr`: another address on a connected endpoint
/// is a `ValueError` (`"Invalid address: must be None or <peer>"`) and
/// nothing is sent.
pub fn test_sendto_connected_addr(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (peer, other) = (udp_peer(), udp_peer());
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            remote_addr: Some(inet(local(&peer).port())),
            ..Default::default()
        },
    )?;
    let msg = value_error(
        t.sendto(b"wrong", Some(SockAddr::from(local(&other)))),
        "sendto another address",
    );
    assert!(
        msg.starts_with("Invalid address: must be None or "),
        "message: {msg:?}"
    );
    assert!(
        msg.contains(&local(&peer).port().to_string()),
        "the message names the peer: {msg:?}"
    );
    assert!(!t.is_closing(), "a refused sendto closed the transport");
    // Still usable; the refused datagram went nowhere.
    t.sendto(b"right", None)?;
    assert_eq!(recv_from(&lp, &peer)?.0, b"right");
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16];
    let r = other.recv_from(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the refused datagram was sent: {r:?}"
    );
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `sendto(data, None)` on an unconnected endpoint has nowhere to go: a
/// `ValueError` (our trait's contract; asyncio's `socket.sendto(data, None)`
/// raises `TypeError`, which the transport turns into a fatal error).
pub fn test_sendto_no_address_unconnected(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, _) = bound(&lp, &p)?;
    value_error(t.sendto(b"nowhere", None), "sendto without an address");
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `test_sendto_no_data` (3.13): an empty datagram is sent, and an empty
/// datagram received is reported as `datagram_received(b"", addr)`.
pub fn test_sendto_no_data(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, addr) = bound(&lp, &p)?;
    let peer = udp_peer();
    t.sendto(b"", Some(SockAddr::from(local(&peer))))?;
    let (data, from) = recv_from(&lp, &peer)?;
    assert!(data.is_empty(), "got {data:?}");
    assert_eq!(from.as_socket(), Some(addr));
    send_from(&peer, b"", addr);
    w.run_until(&lp, NET, "the empty datagram", || !p.data().is_empty())?;
    assert_eq!(p.payloads(), vec![Vec::<u8>::new()]);
    assert_eq!(p.data()[0].1.as_socket(), Some(local(&peer)));
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `datagram_received` names each datagram's own sender.
pub fn test_datagram_received_sender_address(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, addr) = bound(&lp, &p)?;
    let (a, b) = (udp_peer(), udp_peer());
    send_from(&a, b"from a", addr);
    w.run_until(&lp, NET, "a's datagram", || p.data().len() == 1)?;
    send_from(&b, b"from b", addr);
    w.run_until(&lp, NET, "b's datagram", || p.data().len() == 2)?;
    let got: Vec<_> = p
        .data()
        .into_iter()
        .map(|(d, a)| (d, a.as_socket()))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"from a".to_vec(), Some(local(&a))),
            (b"from b".to_vec(), Some(local(&b))),
        ]
    );
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// A datagram of 9000 bytes (under macOS's default 9216 limit) goes out
/// and comes in whole.
pub fn test_large_datagram(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, addr) = bound(&lp, &p)?;
    let peer = udp_peer();
    let big: Vec<u8> = (0..9000).map(|i| (i % 251) as u8).collect();
    t.sendto(&big, Some(SockAddr::from(local(&peer))))?;
    assert_eq!(recv_from(&lp, &peer)?.0, big);
    send_from(&peer, &big, addr);
    w.run_until(&lp, NET, "the large datagram", || !p.data().is_empty())?;
    assert!(p.payloads()[0] == big, "the datagram arrived altered");
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

// ----- UDP: argument checks -----------------------------------------------------------

/// `reuse_address=True` is refused (bpo-37228), with asyncio's message.
pub fn test_create_datagram_endpoint_reuse_address(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let r = try_endpoint(
        &lp,
        p.factory(),
        Opts {
            local_addr: Some(inet(0)),
            reuse_address: Some(true),
            ..Default::default()
        },
    );
    crate::util::expect_value_error(
        r,
        "Passing `reuse_address=True` is no longer supported, as the usage of \
         SO_REUSEPORT in UDP poses a significant security concern.",
    );
    assert_eq!(p.made(), 0);
    lp.close()
}

/// `test_create_datagram_endpoint_sockopts`: no option is set unless asked
/// for; `reuse_port` sets `SO_REUSEPORT` and `allow_broadcast` sets
/// `SO_BROADCAST`, never `SO_REUSEADDR`. (Windows has no `SO_REUSEPORT`:
/// `reuse_port` is a `ValueError` there, as in asyncio.)
pub fn test_create_datagram_endpoint_sockopts(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, _) = bound(&lp, &p)?;
    with_transport_socket(&*t, |s| {
        assert!(!s.broadcast().expect("SO_BROADCAST"), "SO_BROADCAST set");
        #[cfg(unix)]
        assert!(!s.reuse_port().expect("SO_REUSEPORT"), "SO_REUSEPORT set");
    });
    t.close();
    p.wait_lost(&lp)?;

    let q = Dg::new(&w);
    let opts = Opts {
        local_addr: Some(inet(0)),
        reuse_port: cfg!(unix),
        allow_broadcast: true,
        ..Default::default()
    };
    let t = endpoint(&lp, &q, opts)?;
    with_transport_socket(&*t, |s| {
        assert!(s.broadcast().expect("SO_BROADCAST"), "SO_BROADCAST not set");
        assert!(
            !s.reuse_address().expect("SO_REUSEADDR"),
            "SO_REUSEADDR set"
        );
        #[cfg(unix)]
        assert!(
            s.reuse_port().expect("SO_REUSEPORT"),
            "SO_REUSEPORT not set"
        );
    });
    t.close();
    q.wait_lost(&lp)?;
    #[cfg(windows)]
    {
        let r = try_endpoint(
            &lp,
            Dg::new(&w).factory(),
            Opts {
                local_addr: Some(inet(0)),
                reuse_port: true,
                ..Default::default()
            },
        );
        crate::util::expect_value_error(r, "reuse_port not supported by socket module");
    }
    lp.close()
}

/// `reuse_port=True` lets two endpoints bind the same port (Unix).
pub fn test_create_datagram_endpoint_reuse_port(ctx: &Ctx) -> Result<()> {
    if cfg!(not(unix)) {
        return Err(Error::NotSupported {
            feature: "SO_REUSEPORT",
            reason: "Windows has no SO_REUSEPORT".into(),
        });
    }
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let (a, b) = (Dg::new(&w), Dg::new(&w));
    let opts = |port| Opts {
        local_addr: Some(inet(port)),
        reuse_port: true,
        ..Default::default()
    };
    let at = endpoint(&lp, &a, opts(0))?;
    let port = sockname(&*at).port();
    let bt = endpoint(&lp, &b, opts(port))?;
    assert_eq!(sockname(&*bt).port(), port);
    at.close();
    bt.close();
    a.wait_lost(&lp)?;
    b.wait_lost(&lp)?;
    lp.close()
}

/// `test_create_datagram_endpoint_allow_broadcast`: with `allow_broadcast`
/// the socket is not connected to `remote_addr` (no `peername`; datagrams
/// from anyone arrive), yet `sendto(data)` still goes to `remote_addr`.
pub fn test_create_datagram_endpoint_allow_broadcast(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let peer = udp_peer();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            local_addr: Some(inet(0)),
            remote_addr: Some(inet(local(&peer).port())),
            allow_broadcast: true,
            ..Default::default()
        },
    )?;
    assert_eq!(t.get_extra_info("peername"), None, "connected anyway");
    let addr = sockname(&*t);
    t.sendto(b"to remote", None)?;
    let (data, from) = recv_from(&lp, &peer)?;
    assert_eq!(data, b"to remote");
    assert_eq!(from.as_socket(), Some(addr));
    // Not connected: a third party's datagram is delivered.
    let third = udp_peer();
    send_from(&third, b"stranger", addr);
    w.run_until(&lp, NET, "the stranger's datagram", || !p.data().is_empty())?;
    assert_eq!(p.data()[0].1.as_socket(), Some(local(&third)));
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `test_create_datagram_endpoint_sock_sockopts`: with `sock=`, each socket
/// modifier is a `ValueError` naming it ("socket modifier keyword arguments
/// can not be used when sock is specified. (local_addr=...)").
pub fn test_create_datagram_endpoint_sock_sockopts(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let sock = udp_peer();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let with_sock = |o: Opts| Opts {
        sock: Some(sock.clone()),
        ..o
    };
    let cases: Vec<(&str, Opts)> = vec![
        (
            "local_addr",
            Opts {
                local_addr: Some(inet(0)),
                ..Default::default()
            },
        ),
        (
            "remote_addr",
            Opts {
                remote_addr: Some(inet(9)),
                ..Default::default()
            },
        ),
        (
            "family",
            Opts {
                family: Family::Inet,
                ..Default::default()
            },
        ),
        (
            "proto",
            Opts {
                proto: 17,
                ..Default::default()
            },
        ),
        (
            "flags",
            Opts {
                flags: 1,
                ..Default::default()
            },
        ),
        (
            "reuse_port",
            Opts {
                reuse_port: true,
                ..Default::default()
            },
        ),
        (
            "allow_broadcast",
            Opts {
                allow_broadcast: true,
                ..Default::default()
            },
        ),
    ];
    const PREFIX: &str =
        "socket modifier keyword arguments can not be used when sock is specified. (";
    for (name, opts) in cases {
        let msg = value_error(try_endpoint(&lp, p.factory(), with_sock(opts)), name);
        assert!(msg.starts_with(PREFIX), "{name}: {msg:?}");
        assert!(msg.contains(&format!("{name}=")), "{name}: {msg:?}");
        assert!(msg.ends_with(')'), "{name}: {msg:?}");
    }
    // Several at once, in asyncio's order.
    let msg = value_error(
        try_endpoint(
            &lp,
            p.factory(),
            with_sock(Opts {
                local_addr: Some(inet(0)),
                allow_broadcast: true,
                ..Default::default()
            }),
        ),
        "two modifiers",
    );
    let (i, j) = (msg.find("local_addr="), msg.find("allow_broadcast="));
    assert!(
        matches!((i, j), (Some(i), Some(j)) if i < j),
        "both, in order: {msg:?}"
    );
    assert_eq!(p.made(), 0);
    // The socket is still the caller's, and usable.
    let t = endpoint(&lp, &p, with_sock(Opts::default()))?;
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `test_create_datagram_endpoint_wrong_sock`: a stream socket is a
/// `ValueError` (`"A datagram socket was expected, got <socket>"`).
pub fn test_create_datagram_endpoint_wrong_sock(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let sock = Rc::new(Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket"));
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let msg = value_error(
        try_endpoint(
            &lp,
            p.factory(),
            Opts {
                sock: Some(sock),
                ..Default::default()
            },
        ),
        "a stream socket",
    );
    assert!(
        msg.starts_with("A datagram socket was expected, got "),
        "message: {msg:?}"
    );
    lp.close()
}

/// `test_create_datagram_endpoint_noaddr_nofamily`: no address and no
/// family is a `ValueError("unexpected address family")`.
pub fn test_create_datagram_endpoint_noaddr_nofamily(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let r = try_endpoint(&lp, p.factory(), Opts::default());
    crate::util::expect_value_error(r, "unexpected address family");
    lp.close()
}

/// A family and no address: an unbound socket, which the OS binds on the
/// first send; answers come back to it.
pub fn test_create_datagram_endpoint_family_only(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            family: Family::Inet,
            ..Default::default()
        },
    )?;
    assert_eq!(t.get_extra_info("peername"), None);
    let peer = udp_peer();
    t.sendto(b"hi", Some(SockAddr::from(local(&peer))))?;
    let (data, from) = recv_from(&lp, &peer)?;
    assert_eq!(data, b"hi");
    let from = from.as_socket().expect("inet sender");
    assert_ne!(from.port(), 0);
    send_from(&peer, b"back", from);
    w.run_until(&lp, NET, "the answer", || !p.data().is_empty())?;
    assert_eq!(p.payloads(), vec![b"back".to_vec()]);
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `test_create_datagram_endpoint_no_matching_family`: an IPv4 remote and
/// an IPv6 local address share no family: `ValueError("can not get address
/// information")`.
pub fn test_create_datagram_endpoint_no_matching_family(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let r = try_endpoint(
        &lp,
        p.factory(),
        Opts {
            remote_addr: Some(inet(9)),
            local_addr: Some(DatagramAddr::Inet("::1".into(), 0)),
            ..Default::default()
        },
    );
    crate::util::expect_value_error(r, "can not get address information");
    lp.close()
}

/// `test_create_datagram_endpoint_addr_error`-style: a local name that
/// does not resolve fails with the resolver's `OSError`.
pub fn test_create_datagram_endpoint_addr_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let r = try_endpoint(
        &lp,
        p.factory(),
        Opts {
            local_addr: Some(DatagramAddr::Inet("no-such-host.invalid".into(), 0)),
            ..Default::default()
        },
    );
    os_error(r, "an unresolvable local_addr");
    assert_eq!(p.made(), 0);
    lp.close()
}

/// `test_create_datagram_endpoint_cant_bind`: binding a port in use fails
/// with the OS's `EADDRINUSE`.
pub fn test_create_datagram_endpoint_cant_bind(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let holder = udp_peer();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let r = try_endpoint(
        &lp,
        p.factory(),
        Opts {
            local_addr: Some(inet(local(&holder).port())),
            ..Default::default()
        },
    );
    let e = os_error(r, "binding a port in use");
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    assert_eq!(p.made(), 0);
    lp.close()
}

// ----- UDP: errors --------------------------------------------------------------------

/// `test_datagram_send_to_non_listening_address` (gh-91227): after sending
/// to a port nobody listens on, an unconnected endpoint still receives.
pub fn test_datagram_send_to_non_listening_address(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let (one, two, three) = (Dg::new(&w), Dg::new(&w), Dg::new(&w));
    let (t1, a1) = bound(&lp, &one)?;
    let (t2, a2) = bound(&lp, &two)?;
    let (t3, a3) = bound(&lp, &three)?;
    t3.abort();
    three.wait_lost(&lp)?;

    t1.sendto(b"a", Some(SockAddr::from(a2)))?;
    w.run_until(&lp, NET, "a", || two.data().len() == 1)?;
    t2.sendto(b"b", Some(SockAddr::from(a1)))?;
    w.run_until(&lp, NET, "b", || one.data().len() == 1)?;
    // To an address that is not listening.
    t1.sendto(b"c", Some(SockAddr::from(a3)))?;
    crate::util::run_once(&lp)?;
    t2.sendto(b"d", Some(SockAddr::from(a1)))?;
    w.run_until(&lp, NET, "d", || one.data().len() == 2)?;
    assert_eq!(one.payloads(), vec![b"b".to_vec(), b"d".to_vec()]);
    assert!(!t1.is_closing(), "the ICMP error closed the endpoint");
    t1.close();
    t2.close();
    one.wait_lost(&lp)?;
    two.wait_lost(&lp)?;
    lp.close()
}

/// Whether a plain connected UDP socket sending to `port` (nobody there)
/// gets the ICMP error on its next `recv`: the OS's part of
/// [`test_error_received_connected`], probed without the loop (the 2 s
/// read timeout bounds the probe only).
fn os_reports_icmp_errors(port: u16) -> bool {
    let s = UdpSocket::bind(loopback(0)).expect("bind udp");
    s.connect(loopback(port)).expect("connect udp");
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("timeout");
    let _ = s.send(b"probe");
    let mut buf = [0u8; 8];
    matches!(
        s.recv(&mut buf),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset)
    )
}

/// `test_sendto_error_received_connected` on real sockets: a connected
/// endpoint sending to a closed port gets `error_received` with the ICMP
/// error (`ConnectionRefusedError`; Windows reports a reset) and stays
/// open: once something listens there, datagrams flow both ways.
pub fn test_error_received_connected(ctx: &Ctx) -> Result<()> {
    // A port with nobody on it: bind, read, release.
    let port = local(&udp_peer()).port();
    if !os_reports_icmp_errors(port) {
        return Err(Error::NotSupported {
            feature: "ICMP errors on UDP sockets",
            reason: "this OS does not report port-unreachable to a connected UDP socket \
                     (Wine does not)"
                .into(),
        });
    }
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            remote_addr: Some(inet(port)),
            ..Default::default()
        },
    )?;
    let addr = sockname(&*t);
    t.sendto(b"anyone?", None)?;
    w.run_until(&lp, NET, "error_received", || !p.errors().is_empty())?;
    let err = &p.errors()[0];
    let kind = match err {
        Error::Io(e) => e.kind(),
        other => panic!("error_received({other}): expected an OSError"),
    };
    assert!(
        matches!(
            kind,
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
        ),
        "error_received({err})"
    );
    assert!(p.lost().is_empty(), "the ICMP error closed the endpoint");
    assert!(!t.is_closing());
    // Someone listens there now: both directions work.
    let peer = match UdpSocket::bind(loopback(port)) {
        Ok(s) => s,
        Err(e) => panic!("rebinding the refused port {port}: {e}"),
    };
    peer.set_nonblocking(true).expect("non-blocking");
    let peer = Rc::new(Socket::from(peer));
    t.sendto(b"now?", None)?;
    assert_eq!(recv_from(&lp, &peer)?.0, b"now?");
    send_from(&peer, b"yes", addr);
    w.run_until(&lp, NET, "the answer", || !p.data().is_empty())?;
    assert_eq!(p.payloads(), vec![b"yes".to_vec()]);
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// A panic in `datagram_received` reaches the exception handler (asyncio:
/// the reader callback's exception is logged by its handle), and the
/// endpoint goes on receiving.
pub fn test_datagram_received_panic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let seen = capture_exceptions(&lp);
    let w = Wakeup::new();
    let p = Dg::with(&w, |_, data, _| {
        if data == b"boom" {
            panic!("datagram_received boom");
        }
    });
    let (t, addr) = bound(&lp, &p)?;
    let peer = udp_peer();
    send_from(&peer, b"boom", addr);
    w.run_until(&lp, NET, "the first datagram", || p.data().len() == 1)?;
    crate::util::run_once(&lp)?;
    assert!(
        !t.is_closing() && p.lost().is_empty(),
        "the panic closed the endpoint ({:?}); asyncio reports it through \
         the reader's handle and goes on reading",
        seen.get().first().map(|c| c.message.clone())
    );
    send_from(&peer, b"fine", addr);
    w.run_until(&lp, NET, "the second datagram", || p.data().len() == 2)?;
    assert_eq!(p.payloads(), vec![b"boom".to_vec(), b"fine".to_vec()]);
    let seen = seen.get();
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(|c| &c.message).collect::<Vec<_>>()
    );
    assert!(
        matches!(&seen[0].exception, Some(Error::Panic(m)) if m == "datagram_received boom"),
        "{:?}",
        seen[0].exception
    );
    assert!(!t.is_closing());
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

// ----- UDP: closing -------------------------------------------------------------------

/// `close()`: `is_closing` at once, reading stops at once (a datagram
/// arriving after `close` is not delivered), `connection_lost(None)`
/// exactly once on a later iteration; a second `close` does nothing.
pub fn test_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, addr) = bound(&lp, &p)?;
    assert!(!t.is_closing());
    t.close();
    assert!(t.is_closing());
    assert!(p.lost().is_empty(), "connection_lost called synchronously");
    let peer = udp_peer();
    send_from(&peer, b"late", addr);
    t.close();
    p.wait_lost(&lp)?;
    assert!(p.data().is_empty(), "a datagram was delivered after close");
    t.close();
    t.abort();
    crate::util::run_once(&lp)?;
    assert_eq!(p.lost().len(), 1);
    lp.close()
}

/// `abort()`: closes at once; `connection_lost(None)` once.
pub fn test_abort(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, _) = bound(&lp, &p)?;
    t.abort();
    assert!(t.is_closing());
    t.abort();
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `test_sendto_closing`: on a closing connected endpoint `sendto` is
/// silently dropped (asyncio counts it and warns after a few).
pub fn test_sendto_closing(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let peer = udp_peer();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            remote_addr: Some(inet(local(&peer).port())),
            ..Default::default()
        },
    )?;
    t.close();
    t.sendto(b"dropped", None)?;
    p.wait_lost(&lp)?;
    t.sendto(b"dropped too", None)?;
    // Whatever the endpoint sent came before this marker.
    let marker = udp_peer();
    send_from(&marker, b"marker", local(&peer));
    assert_eq!(
        recv_from(&lp, &peer)?.0,
        b"marker",
        "a dropped datagram was sent"
    );
    lp.close()
}

/// `get_write_buffer_size()` is 0 when every datagram went out at once.
pub fn test_get_write_buffer_size(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let (t, _) = bound(&lp, &p)?;
    assert_eq!(t.get_write_buffer_size(), 0);
    let peer = udp_peer();
    for _ in 0..3 {
        t.sendto(b"x", Some(SockAddr::from(local(&peer))))?;
    }
    for _ in 0..3 {
        recv_from(&lp, &peer)?;
    }
    assert_eq!(t.get_write_buffer_size(), 0);
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

// ----- UDP: volume --------------------------------------------------------------------

/// 1000 round trips, one datagram in flight at a time: every one arrives,
/// in order (the echo answers from inside `datagram_received`).
pub fn test_datagram_ping_pong(ctx: &Ctx) -> Result<()> {
    const N: u32 = 1000;
    let lp = ctx.new_loop();
    let w = Wakeup::new();
    let server = Dg::with(&w, |p, data, addr| {
        p.transport()
            .sendto(data, Some(addr.clone()))
            .expect("echo");
    });
    let (st, saddr) = bound(&lp, &server)?;
    let client = Dg::with(&w, |p, data, _| {
        let i = u32::from_be_bytes(data.try_into().expect("4 bytes"));
        if i + 1 < N {
            p.transport()
                .sendto(&(i + 1).to_be_bytes(), None)
                .expect("ping");
        }
    });
    let ct = endpoint(
        &lp,
        &client,
        Opts {
            remote_addr: Some(inet(saddr.port())),
            ..Default::default()
        },
    )?;
    ct.sendto(&0u32.to_be_bytes(), None)?;
    w.run_until(&lp, 60.0, "the last pong", || {
        client.data().len() == N as usize
    })?;
    let expect: Vec<Vec<u8>> = (0..N).map(|i| i.to_be_bytes().to_vec()).collect();
    assert!(client.payloads() == expect, "pongs out of order or altered");
    assert!(server.payloads() == expect, "pings out of order or altered");
    ct.close();
    st.close();
    client.wait_lost(&lp)?;
    server.wait_lost(&lp)?;
    lp.close()
}

/// A burst of 200 datagrams sent before the loop runs (into a receive
/// buffer large enough to hold them) is delivered whole and in order.
pub fn test_datagram_burst(ctx: &Ctx) -> Result<()> {
    const N: u16 = 200;
    let lp = ctx.new_loop();
    let sock = udp_peer();
    sock.set_recv_buffer_size(1 << 20).expect("SO_RCVBUF");
    let addr = local(&sock);
    let w = Wakeup::new();
    let p = Dg::new(&w);
    let t = endpoint(
        &lp,
        &p,
        Opts {
            sock: Some(sock),
            ..Default::default()
        },
    )?;
    let peer = udp_peer();
    for i in 0..N {
        send_from(&peer, &i.to_be_bytes(), addr);
    }
    w.run_until(&lp, NET, "the burst", || p.data().len() == N as usize)?;
    let expect: Vec<Vec<u8>> = (0..N).map(|i| i.to_be_bytes().to_vec()).collect();
    assert!(
        p.payloads() == expect,
        "the burst arrived out of order or altered"
    );
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

// ----- AF_UNIX datagrams ----------------------------------------------------------------

#[cfg(not(unix))]
fn no_unix() -> Error {
    Error::NotSupported {
        feature: "unix datagram sockets",
        reason: "Windows has no AF_UNIX datagram sockets".into(),
    }
}

/// The body on Unix; a visible skip naming Windows elsewhere.
macro_rules! on_unix {
    ($e:expr) => {{
        #[cfg(unix)]
        {
            $e
        }
        #[cfg(not(unix))]
        {
            Err(no_unix())
        }
    }};
}

#[cfg(unix)]
mod unix_dgram {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixDatagram;
    use std::path::Path;

    use super::*;
    use crate::util::TempPath;

    pub(super) fn unix(p: &Path) -> DatagramAddr {
        DatagramAddr::Unix(p.to_path_buf())
    }

    /// A non-blocking AF_UNIX datagram socket bound to `p`.
    pub(super) fn bound_peer(p: &Path) -> Rc<Socket> {
        let s = UnixDatagram::bind(p).expect("bind unix datagram");
        s.set_nonblocking(true).expect("non-blocking");
        Rc::new(Socket::from(s))
    }

    pub(super) fn path_of(a: &SockAddr) -> Option<std::path::PathBuf> {
        a.as_pathname().map(Path::to_path_buf)
    }

    pub(super) fn unix_name(t: &dyn BaseTransport, key: &str) -> Option<ExtraInfo> {
        t.get_extra_info(key)
    }

    pub(super) fn info(p: &Path) -> Option<ExtraInfo> {
        Some(ExtraInfo::UnixPath(p.to_str().expect("utf-8 path").into()))
    }

    pub(super) fn is_socket(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
    }

    pub(super) fn endpoint_unix(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let (sp, cp) = (TempPath::new("dgs"), TempPath::new("dgc"));
        let w = Wakeup::new();
        let server = Dg::echo(&w);
        let st = endpoint(
            &lp,
            &server,
            Opts {
                local_addr: Some(unix(sp.path())),
                family: Family::Unix,
                ..Default::default()
            },
        )?;
        assert!(is_socket(sp.path()), "no socket file at local_addr");
        assert_eq!(unix_name(&*st, "sockname"), info(sp.path()));
        let client = Dg::new(&w);
        let ct = endpoint(
            &lp,
            &client,
            Opts {
                local_addr: Some(unix(cp.path())),
                remote_addr: Some(unix(sp.path())),
                family: Family::Unix,
                ..Default::default()
            },
        )?;
        assert_eq!(unix_name(&*ct, "sockname"), info(cp.path()));
        assert_eq!(unix_name(&*ct, "peername"), info(sp.path()));
        ct.sendto(b"unix", None)?;
        w.run_until(&lp, NET, "the echo", || !client.data().is_empty())?;
        let got = server.data();
        assert_eq!(got[0].0, b"unix");
        assert_eq!(path_of(&got[0].1).as_deref(), Some(cp.path()), "sender");
        let back = client.data();
        assert_eq!(back[0].0, b"resp:unix");
        assert_eq!(path_of(&back[0].1).as_deref(), Some(sp.path()));
        ct.close();
        st.close();
        client.wait_lost(&lp)?;
        server.wait_lost(&lp)?;
        lp.close()
    }

    pub(super) fn family_only_unix(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let pp = TempPath::new("dgpeer");
        let peer = bound_peer(pp.path());
        let w = Wakeup::new();
        let p = Dg::new(&w);
        let t = endpoint(
            &lp,
            &p,
            Opts {
                family: Family::Unix,
                ..Default::default()
            },
        )?;
        with_transport_socket(&*t, |s| {
            assert!(s.local_addr().expect("sockname").is_unix(), "not AF_UNIX");
            assert_eq!(s.r#type().expect("SO_TYPE"), Type::DGRAM);
        });
        t.sendto(b"anon", Some(SockAddr::unix(pp.path()).expect("addr")))?;
        let (data, from) = recv_from(&lp, &peer)?;
        assert_eq!(data, b"anon");
        assert_eq!(path_of(&from), None, "an unbound sender has no name");
        t.close();
        p.wait_lost(&lp)?;
        lp.close()
    }

    pub(super) fn existing_sock_unix(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("dgstale");
        drop(UnixDatagram::bind(path.path()).expect("bind"));
        assert!(is_socket(path.path()), "the stale socket file is there");
        let w = Wakeup::new();
        let p = Dg::new(&w);
        let t = endpoint(
            &lp,
            &p,
            Opts {
                local_addr: Some(unix(path.path())),
                family: Family::Unix,
                ..Default::default()
            },
        )?;
        let sender = UnixDatagram::unbound().expect("socket");
        sender.send_to(b"fresh", path.path()).expect("send");
        w.run_until(&lp, NET, "the datagram", || !p.data().is_empty())?;
        assert_eq!(p.payloads(), vec![b"fresh".to_vec()]);
        t.close();
        p.wait_lost(&lp)?;
        lp.close()
    }

    pub(super) fn regular_file(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("dgfile");
        std::fs::write(path.path(), b"keep me").expect("write");
        let w = Wakeup::new();
        let p = Dg::new(&w);
        let r = try_endpoint(
            &lp,
            p.factory(),
            Opts {
                local_addr: Some(unix(path.path())),
                family: Family::Unix,
                ..Default::default()
            },
        );
        let e = os_error(r, "binding over a regular file");
        assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
        assert_eq!(std::fs::read(path.path()).expect("still there"), b"keep me");
        lp.close()
    }

    pub(super) fn unnamed_sender(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("dgunnamed");
        let w = Wakeup::new();
        let p = Dg::new(&w);
        let t = endpoint(
            &lp,
            &p,
            Opts {
                local_addr: Some(unix(path.path())),
                family: Family::Unix,
                ..Default::default()
            },
        )?;
        let unnamed = UnixDatagram::unbound().expect("socket");
        unnamed.send_to(b"who?", path.path()).expect("send");
        w.run_until(&lp, NET, "the unnamed datagram", || p.data().len() == 1)?;
        let np = TempPath::new("dgnamed");
        let named = UnixDatagram::bind(np.path()).expect("bind");
        named.send_to(b"me", path.path()).expect("send");
        w.run_until(&lp, NET, "the named datagram", || p.data().len() == 2)?;
        let got = p.data();
        assert_eq!(got[0].0, b"who?");
        // Empty: no path, no abstract name, no IP address (Linux reports
        // a zero-length address; asyncio passes `None` for it).
        assert_eq!(path_of(&got[0].1), None, "an unnamed sender");
        assert_eq!(got[0].1.as_abstract_namespace(), None);
        assert_eq!(got[0].1.as_socket(), None);
        assert_eq!(path_of(&got[1].1).as_deref(), Some(np.path()));
        // Answering a named sender by its address.
        let t2 = p.transport();
        t2.sendto(b"you", Some(got[1].1.clone()))?;
        named.set_nonblocking(true).expect("non-blocking");
        let named = Rc::new(Socket::from(named));
        assert_eq!(recv_from(&lp, &named)?.0, b"you");
        t.close();
        p.wait_lost(&lp)?;
        lp.close()
    }

    pub(super) fn sock_unix(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("dgsock");
        let sock = bound_peer(path.path());
        let fd = sock.raw();
        let w = Wakeup::new();
        let p = Dg::new(&w);
        let t = endpoint(
            &lp,
            &p,
            Opts {
                sock: Some(sock),
                ..Default::default()
            },
        )?;
        assert_eq!(t.get_extra_info("socket"), Some(ExtraInfo::Fd(fd)));
        assert_eq!(unix_name(&*t, "sockname"), info(path.path()));
        let sender = UnixDatagram::unbound().expect("socket");
        sender.send_to(b"via sock", path.path()).expect("send");
        w.run_until(&lp, NET, "the datagram", || !p.data().is_empty())?;
        assert_eq!(p.payloads(), vec![b"via sock".to_vec()]);
        t.close();
        p.wait_lost(&lp)?;
        lp.close()
    }

    pub(super) fn close_keeps_file(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("dgkeep");
        let w = Wakeup::new();
        let p = Dg::new(&w);
        let t = endpoint(
            &lp,
            &p,
            Opts {
                local_addr: Some(unix(path.path())),
                family: Family::Unix,
                ..Default::default()
            },
        )?;
        t.close();
        p.wait_lost(&lp)?;
        assert!(
            is_socket(path.path()),
            "asyncio leaves a datagram endpoint's socket file in place"
        );
        lp.close()
    }
}

/// `test_create_datagram_endpoint` over AF_UNIX: paths as `local_addr` and
/// `remote_addr`; each side sees the other's path as the address.
pub fn test_create_datagram_endpoint_unix(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::endpoint_unix(ctx))
}

/// `test_create_datagram_endpoint_sock_unix`: `family=AF_UNIX` alone makes
/// an unbound AF_UNIX datagram socket, which can send to a bound peer (who
/// sees an unnamed sender).
pub fn test_create_datagram_endpoint_sock_unix(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::family_only_unix(ctx))
}

/// `test_create_datagram_endpoint_existing_sock_unix`: a stale socket file
/// at `local_addr` is removed before binding.
pub fn test_create_datagram_endpoint_existing_sock_unix(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::existing_sock_unix(ctx))
}

/// A regular file at `local_addr` is not a stale socket: it is left alone
/// and binding fails with `EADDRINUSE`.
pub fn test_create_datagram_endpoint_unix_regular_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::regular_file(ctx))
}

/// `datagram_received` from an unbound AF_UNIX sender has an empty address;
/// from a bound one, its path, which `sendto` can answer.
pub fn test_create_datagram_endpoint_unix_sender_address(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::unnamed_sender(ctx))
}

/// `sock=` with a bound AF_UNIX datagram socket.
pub fn test_create_datagram_endpoint_unix_sock(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::sock_unix(ctx))
}

/// Closing an AF_UNIX datagram endpoint leaves its socket file (asyncio
/// cleans up only Unix *server* sockets).
pub fn test_create_datagram_endpoint_unix_close_keeps_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    on_unix!(unix_dgram::close_keeps_file(ctx))
}

/// The typed `create_datagram_endpoint` hands back the caller's own
/// protocol type: the very protocol the transport calls.
pub fn test_create_datagram_endpoint_typed(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let wake = Wakeup::new();
    let mine = Dg::new(&wake);
    let m = mine.clone();
    let (t, p): (Rc<dyn DatagramTransport>, Rc<Dg>) =
        lp.run_until_complete(lp.create_datagram_endpoint(
            move || m.clone(),
            Opts {
                local_addr: Some(inet(0)),
                ..Default::default()
            },
        ))?;
    assert!(
        Rc::ptr_eq(&p, &mine),
        "the typed result is the factory's protocol"
    );
    assert_eq!(p.made(), 1);
    assert!(same_obj(&t, &p.transport()));
    t.close();
    p.wait_lost(&lp)?;
    lp.close()
}

/// `DatagramTransport::set_protocol`/`get_protocol` (asyncio's
/// `BaseTransport` methods): after the switch, datagrams and
/// `connection_lost` go to the new protocol, none to the old one.
pub fn test_datagram_set_protocol(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let wake = Wakeup::new();
    let first = Dg::new(&wake);
    let (t, addr) = bound(&lp, &first)?;
    assert!(same_obj(&t.get_protocol(), &first));
    let second = Dg::new(&wake);
    t.set_protocol(second.clone());
    assert!(same_obj(&t.get_protocol(), &second));
    let peer = UdpSocket::bind(loopback(0)).expect("bind peer");
    peer.send_to(b"to the second", addr).expect("send");
    wake.run_until(&lp, NET, "the datagram", || !second.data().is_empty())?;
    assert_eq!(second.payloads(), [b"to the second".to_vec()]);
    assert!(first.data().is_empty(), "the old protocol heard a datagram");
    t.close();
    second.wait_lost(&lp)?;
    assert!(
        first.lost().is_empty(),
        "connection_lost went to the old protocol"
    );
    lp.close()
}
