//! Overlapped operations on the IOCP loop (Windows only): storms of
//! cancelled `sock_recv`s and `sock_accept`s leave the sockets working and
//! nothing in flight; operations that finish before their cancellation
//! lose no data and no connection; serving with `AcceptEx` and stopping;
//! closing the loop with operations in flight does not hang; sockets the
//! overlapped operations do not fit fall back to readiness.
#![cfg(windows)]

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use backend_iocp::{new_event_loop, IocpEventLoop, ACCEPTS_IN_FLIGHT};
use loop_api::events::options::{CreateServerOptions, Hosts};
use loop_api::{AbstractEventLoop, EventLoopExt, Result};
use socket2::{Domain, SockAddr, Socket, Type};

use conformance::util::{echo_factory, pending, poll_once, poll_until, turn, Transports};

fn in_flight(lp: &IocpEventLoop) -> usize {
    lp.with_driver(|d| d.ops_in_flight())
}

/// A connected pair of non-blocking loopback TCP sockets.
fn pair() -> (Rc<Socket>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    (Rc::new(Socket::from(s)), c)
}

/// A non-blocking loopback listener and its address.
fn listener() -> (Rc<Socket>, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (Rc::new(Socket::from(l)), addr)
}

/// 100 cancelled `sock_recv`s, 100 cancelled `sock_accept`s and a
/// cancelled 16 MiB `sock_sendall`: every operation's packet arrives,
/// nothing stays in flight, and the sockets still work (nothing was
/// consumed by a cancelled receive or accept).
#[test]
fn cancelled_sock_ops_storm() -> Result<()> {
    let lp = new_event_loop()?;
    let (lsock, addr) = listener();
    let (x, mut y) = pair();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(lp.create_task(lp.sock_recv(x.clone(), 100))?.as_obj());
        tasks.push(lp.create_task(lp.sock_accept(lsock.clone()))?.as_obj());
    }
    // A send that cannot finish: nobody reads its peer.
    let (p, _q) = pair();
    let big = lp.create_task(lp.sock_sendall(p, vec![7u8; 16 << 20]))?;
    poll_until(&lp.as_loop(), "the operations to start", || {
        in_flight(&lp) >= 201
    });
    for t in &tasks {
        t.cancel(None);
    }
    big.cancel(None);
    poll_until(&lp.as_loop(), "the cancellations", || {
        tasks.iter().all(|t| t.done()) && big.done() && in_flight(&lp) == 0
    });
    assert!(tasks.iter().all(|t| t.cancelled()));
    y.write_all(b"still here")?;
    let got = lp.run_until_complete(lp.sock_recv(x.clone(), 100))?;
    assert_eq!(got, b"still here");
    let client = TcpStream::connect(addr)?;
    let (conn, peer) = lp.run_until_complete(lp.sock_accept(lsock.clone()))?;
    assert_eq!(peer.as_socket(), Some(client.local_addr()?));
    // The accepted socket works with the loop.
    let conn = Rc::new(conn);
    lp.run_until_complete(lp.sock_sendall(conn.clone(), b"hi".to_vec()))?;
    let mut client = client;
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf)?;
    assert_eq!(&buf, b"hi");
    assert_eq!(in_flight(&lp), 0);
    lp.close()
}

/// A pending `sock_recv` whose data arrives just before it is dropped
/// took nothing: the next `sock_recv` gets the data. Twenty rounds, so
/// that both orders (cancel first, completion first) are likely met.
#[test]
fn a_receive_cancelled_late_loses_no_data() -> Result<()> {
    let lp = new_event_loop()?;
    let (x, mut y) = pair();
    for round in 0..20u8 {
        let l = lp.clone();
        let s = x.clone();
        let first = lp.run_until_complete(async move {
            let fut = pending(poll_once(l.sock_recv(s, 10)).await, "sock_recv");
            Ok(fut)
        })?;
        y.write_all(&[round; 3])?;
        // Give the zero-byte receive its chance to complete first.
        turn(&lp.as_loop());
        drop(first);
        let got = lp.run_until_complete(lp.sock_recv(x.clone(), 10))?;
        assert_eq!(got, [round; 3], "round {round}");
    }
    poll_until(&lp.as_loop(), "the cancellations", || in_flight(&lp) == 0);
    lp.close()
}

/// A pending `sock_accept` whose `AcceptEx` took a connection just before
/// it was dropped does not lose it: the next `sock_accept` on that
/// listener returns it, and a second one already pending is woken for it.
#[test]
fn an_accept_cancelled_late_loses_no_connection() -> Result<()> {
    let lp = new_event_loop()?;
    let (lsock, addr) = listener();
    for round in 0..10 {
        // One pending accept, dropped after the connection is transports.
        let l = lp.clone();
        let s = lsock.clone();
        let first = lp.run_until_complete(async move {
            Ok(pending(poll_once(l.sock_accept(s)).await, "sock_accept"))
        })?;
        let client = TcpStream::connect(addr)?;
        turn(&lp.as_loop());
        drop(first);
        let (_conn, peer) = lp.run_until_complete(lp.sock_accept(lsock.clone()))?;
        assert_eq!(
            peer.as_socket(),
            Some(client.local_addr()?),
            "round {round}"
        );

        // Two pending accepts; the first is dropped once the connection
        // is transports: the second gets it, whichever of the two took it.
        let l = lp.clone();
        let s = lsock.clone();
        let client = Rc::new(RefCell::new(None));
        let c = client.clone();
        let (_conn, peer) = lp.run_until_complete(async move {
            let first = pending(poll_once(l.sock_accept(s.clone())).await, "first");
            let second = pending(poll_once(l.sock_accept(s)).await, "second");
            *c.borrow_mut() = Some(TcpStream::connect(addr).expect("connect"));
            drop(first);
            second.await
        })?;
        let client = client.borrow_mut().take().expect("connected");
        assert_eq!(
            peer.as_socket(),
            Some(client.local_addr()?),
            "round {round}"
        );
    }
    poll_until(&lp.as_loop(), "the cancellations", || in_flight(&lp) == 0);
    lp.close()
}

/// A server accepts with `AcceptEx` (a fixed number outstanding), hands
/// each connection to a working transport, and once closed refuses new
/// connections at once, with its cancelled accepts' packets all back.
#[test]
fn serving_with_acceptex_and_stopping() -> Result<()> {
    let lp = new_event_loop()?;
    let transports: Transports = Rc::default();
    let server = lp.run_until_complete(lp.create_server_dyn(
        echo_factory(&transports),
        Hosts::One("127.0.0.1".into()),
        Some(0),
        CreateServerOptions::default(),
    ))?;
    let addr = server.sockets()[0].local_addr()?.as_socket().unwrap();
    assert_eq!(in_flight(&lp), ACCEPTS_IN_FLIGHT);
    const N: usize = 20;
    let clients: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(addr))
        .collect::<std::io::Result<_>>()?;
    poll_until(&lp.as_loop(), "every connection", || {
        transports.borrow().len() == N
    });
    // The accepts, and one overlapped receive per connection's transport.
    poll_until(&lp.as_loop(), "the transports' receives", || {
        in_flight(&lp) == ACCEPTS_IN_FLIGHT + N
    });
    // Each connection echoes (the clients check from another thread, so
    // that the loop runs meanwhile).
    let check = std::thread::spawn(move || {
        for (i, mut c) in clients.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = [i as u8; 5];
            c.write_all(&msg).unwrap();
            let mut got = [0u8; 5];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg, "connection {i}");
        }
    });
    poll_until(&lp.as_loop(), "the echoes", || check.is_finished());
    check.join().expect("echo check");
    server.close();
    server.close_clients();
    lp.run_until_complete(server.wait_closed())?;
    // Closed: the listener is gone, not just no longer accepted on.
    let refused = TcpStream::connect(addr).expect_err("connected to a closed server");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    poll_until(&lp.as_loop(), "the cancelled accepts", || {
        in_flight(&lp) == 0
    });
    lp.close()
}

/// Closing the loop with a server's accepts, a `sock_recv`, a
/// `sock_accept` and a 16 MiB `sock_sendall` in flight cancels and drains
/// them at once (well under the 2 s limit), and leaves nothing in flight.
#[test]
fn closing_with_operations_in_flight() -> Result<()> {
    let lp = new_event_loop()?;
    let transports: Transports = Rc::default();
    let server = lp.run_until_complete(lp.create_server_dyn(
        echo_factory(&transports),
        Hosts::One("127.0.0.1".into()),
        Some(0),
        CreateServerOptions::default(),
    ))?;
    let (x, _y) = pair();
    let (lsock, _) = listener();
    let (p, _q) = pair();
    let recv = lp.create_task(lp.sock_recv(x, 10))?;
    let accept = lp.create_task(lp.sock_accept(lsock))?;
    let send = lp.create_task(lp.sock_sendall(p, vec![1u8; 16 << 20]))?;
    poll_until(&lp.as_loop(), "the operations to start", || {
        in_flight(&lp) >= ACCEPTS_IN_FLIGHT + 3
    });
    let t0 = Instant::now();
    lp.close()?;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "close took {took:?}");
    assert_eq!(in_flight(&lp), 0, "close left operations in flight");
    drop((recv, accept, send, server));
    Ok(())
}

/// A socket a closed loop associated with its port cannot be associated
/// with another's: the `sock_*` methods of the next loop fall back to
/// readiness and still work.
#[test]
fn a_socket_from_a_closed_loop_still_works() -> Result<()> {
    let (x, mut y) = pair();
    let first = new_event_loop()?;
    y.write_all(b"one")?;
    assert_eq!(
        first.run_until_complete(first.sock_recv(x.clone(), 10))?,
        b"one"
    );
    first.close()?;

    let lp = new_event_loop()?;
    let task = lp.create_task(lp.sock_recv(x.clone(), 10))?;
    turn(&lp.as_loop());
    assert_eq!(
        in_flight(&lp),
        0,
        "an overlapped receive on another port's socket"
    );
    y.write_all(b"two")?;
    assert_eq!(lp.run_until_complete(task)?, b"two");
    lp.run_until_complete(lp.sock_sendall(x.clone(), b"back".to_vec()))?;
    let mut buf = [0u8; 4];
    y.read_exact(&mut buf)?;
    assert_eq!(&buf, b"back");
    lp.close()
}

/// `sock_connect` binds an unbound TCP socket for `ConnectEx` and leaves it
/// connected (peer and local names known); a UDP socket connects through
/// the readiness version.
#[test]
fn connect_binds_and_udp_falls_back() -> Result<()> {
    let lp = new_event_loop()?;
    let (lsock, addr) = listener();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    let s = Rc::new(s);
    lp.run_until_complete(lp.sock_connect(s.clone(), SockAddr::from(addr)))?;
    assert_eq!(s.peer_addr()?.as_socket(), Some(addr));
    let local = s.local_addr()?.as_socket().unwrap();
    assert!(local.ip().is_loopback(), "{local}");
    let (_conn, peer) = lp.run_until_complete(lp.sock_accept(lsock))?;
    assert_eq!(peer.as_socket(), Some(local));

    let server = UdpSocket::bind("127.0.0.1:0")?;
    let u = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    u.set_nonblocking(true)?;
    let u = Rc::new(u);
    let to = server.local_addr()?;
    lp.run_until_complete(lp.sock_connect(u.clone(), SockAddr::from(to)))?;
    assert_eq!(u.peer_addr()?.as_socket(), Some(to));
    assert_eq!(in_flight(&lp), 0);
    lp.close()
}
