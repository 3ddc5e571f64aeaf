//! From CPython's `test_sock_lowlevel.py` and `test_selector_events.py`:
//! `sock_recv`, `sock_sendall`, `sock_connect`, `sock_accept`, datagrams,
//! cancellation, and the resolver methods, on real loopback sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;

use loop_api::events::options::Family;
use loop_api::{Error, EventLoopExt, Loop, Result};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::util::{pending, poll_once, run_once, run_until_done, socketpair, RawOf};
use crate::{Ctx, Feature};

/// Safety net for the cases that run the loop: never how they synchronise.
const NET: f64 = 10.0;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A connected pair of non-blocking loopback TCP sockets, as `Rc<Socket>`.
fn sock_pair() -> (Rc<Socket>, Rc<Socket>) {
    let (a, b) = socketpair();
    (Rc::new(Socket::from(a)), Rc::new(Socket::from(b)))
}

/// A non-blocking TCP socket, not connected.
fn tcp_socket() -> Rc<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_nonblocking(true).expect("non-blocking");
    Rc::new(s)
}

/// A non-blocking UDP socket bound to a free loopback port.
fn udp_socket() -> Rc<Socket> {
    let s = UdpSocket::bind(loopback(0)).expect("bind udp");
    s.set_nonblocking(true).expect("non-blocking");
    Rc::new(Socket::from(s))
}

fn local(s: &Socket) -> SocketAddr {
    s.local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet")
}

#[track_caller]
fn expect_io<T>(r: Result<T>, what: &str) -> std::io::Error {
    match r {
        Err(Error::Io(e)) => std::io::Error::new(e.kind(), e.to_string()),
        Err(e) => panic!("{what}: expected an OSError, got {e}"),
        Ok(_) => panic!("{what}: expected an OSError, got Ok"),
    }
}

// ----- stream sockets ------------------------------------------------------------------

/// `BaseSockTestsMixin._basetest_sock_client_ops`: `sock_sendall` then
/// `sock_recv` round-trips bytes between two connected sockets.
pub fn test_sock_client_ops(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = sock_pair();
    let l = lp.clone();
    let (got, back) = lp.run_until_complete(async move {
        l.sock_sendall(a.clone(), b"GET / HTTP/1.0\r\n\r\n".to_vec())
            .await?;
        let got = l.sock_recv(b.clone(), 1024).await?;
        l.sock_sendall(b, b"HTTP/1.0 200 OK\r\n".to_vec()).await?;
        let back = l.sock_recv(a, 1024).await?;
        Ok((got, back))
    })?;
    assert_eq!(got, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(back, b"HTTP/1.0 200 OK\r\n");
    lp.close()
}

/// `test_sock_recv`-style: with nothing to read, `sock_recv` waits for the
/// data instead of returning empty, and gets it once it arrives.
pub fn test_sock_recv_waits_for_data(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let task = lp.create_task(lp.sock_recv(a.clone(), 100))?;
    run_once(&lp)?;
    run_once(&lp)?;
    assert!(!task.done(), "sock_recv returned with nothing to read");
    let mut b = b;
    lp.call_soon_dyn(Box::new(move || b.write_all(b"late").unwrap()), None)?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert_eq!(task.result()?, b"late");
    assert!(!lp.remove_reader(a.raw())?, "the reader was left behind");
    lp.close()
}

/// `test_sock_recv_into`-style: the owned buffer comes back with the count;
/// bytes past the count are untouched.
pub fn test_sock_recv_into(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = sock_pair();
    let l = lp.clone();
    let (buf, n) = lp.run_until_complete(async move {
        l.sock_sendall(a, b"abcde".to_vec()).await?;
        l.sock_recv_into(b, vec![b'.'; 16]).await
    })?;
    assert_eq!(n, 5);
    assert_eq!(buf.len(), 16);
    assert_eq!(&buf[..5], b"abcde");
    assert!(buf[5..].iter().all(|&x| x == b'.'));
    lp.close()
}

/// `test_sock_recv_into` waiting: `sock_recv_into` on an empty socket waits.
pub fn test_sock_recv_into_waits_for_data(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, mut b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let task = lp.create_task(lp.sock_recv_into(a, vec![0; 8]))?;
    run_once(&lp)?;
    assert!(!task.done());
    lp.call_soon_dyn(Box::new(move || b.write_all(b"xyz").unwrap()), None)?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    let (buf, n) = task.take_result()?;
    assert_eq!((&buf[..n], buf.len()), (&b"xyz"[..], 8));
    lp.close()
}

/// `test_sock_recv_eof`-style: a closed peer reads as an empty `Vec`.
pub fn test_sock_recv_eof(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let task = lp.create_task(lp.sock_recv(a, 100))?;
    run_once(&lp)?;
    assert!(!task.done());
    lp.call_soon_dyn(Box::new(move || drop(b)), None)?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert_eq!(task.result()?, Vec::<u8>::new());
    lp.close()
}

/// `test_huge_content`: 10 MB through `sock_sendall` to a reader that takes
/// it in small chunks arrives whole and in order; `sock_sendall` does not
/// finish before the reader has drained most of it.
pub fn test_huge_content(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = sock_pair();
    // Fixed small buffers (no autotuning): the kernel holds little of it.
    a.set_send_buffer_size(64 * 1024).expect("SO_SNDBUF");
    b.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    const SIZE: usize = 10 * 1024 * 1024;
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let received = Rc::new(std::cell::Cell::new(0usize));
    let l = lp.clone();
    let r = received.clone();
    let reader = lp.create_task(async move {
        let mut all = Vec::with_capacity(SIZE);
        while all.len() < SIZE {
            let chunk = l.sock_recv(b.clone(), 16 * 1024).await?;
            if chunk.is_empty() {
                break;
            }
            all.extend_from_slice(&chunk);
            r.set(all.len());
        }
        Ok(all)
    })?;
    let l = lp.clone();
    let r = received.clone();
    let sent_when = lp.run_until_complete(async move {
        l.sock_sendall(a, data).await?;
        Ok(r.get())
    })?;
    // The socket buffers hold far less than 10 MB: the sender had to wait
    // for the reader.
    assert!(
        sent_when > SIZE / 2,
        "sendall finished when only {sent_when} bytes were read"
    );
    let all = lp.run_until_complete(reader)?;
    assert_eq!(all.len(), SIZE);
    assert!(all == expected, "the data arrived altered");
    lp.close()
}

/// `test_sock_sendall` with no data: completes at once.
pub fn test_sock_sendall_empty(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let (l, s) = (lp.clone(), a.clone());
    lp.run_until_complete(async move { l.sock_sendall(s, Vec::new()).await })?;
    let mut buf = [0u8; 4];
    let mut b = b;
    let r = b.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "nothing was to be sent, got {r:?}"
    );
    lp.close()
}

/// `sock_sendall` to a peer that closed with data unread fails with the
/// OS error (broken pipe / connection reset) instead of hanging.
pub fn test_sock_sendall_peer_closed(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = socketpair();
    let a = Rc::new(Socket::from(a));
    // Unread data at close: the peer answers further data with a reset.
    (&*a).write_all(b"unread").expect("write");
    drop(b);
    let l = lp.clone();
    let r =
        lp.run_until_complete(async move { l.sock_sendall(a, vec![7u8; 8 * 1024 * 1024]).await });
    let e = expect_io(r, "sendall to a closed peer");
    assert!(
        matches!(
            e.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
        "unexpected error {e}"
    );
    lp.close()
}

/// `test_sock_connect`: connects to a listening loopback socket; the
/// listener sees the client's address.
pub fn test_sock_connect(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let listener = TcpListener::bind(loopback(0)).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let client = tcp_socket();
    let l = lp.clone();
    let c = client.clone();
    lp.run_until_complete(async move { l.sock_connect(c, SockAddr::from(addr)).await })?;
    let (_conn, peer) = listener.accept().expect("accept");
    assert_eq!(peer, local(&client));
    assert_eq!(
        client.peer_addr().expect("peer").as_socket(),
        Some(addr),
        "connected to the listener"
    );
    assert!(
        !lp.remove_writer(client.raw())?,
        "the writer was left behind"
    );
    lp.close()
}

/// `test_sock_connect_refused`-style: a port with no listener (bound, never
/// listening) refuses: `ConnectionRefusedError`.
pub fn test_sock_connect_refused(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    // Holding the port bound without listening makes the refusal certain.
    let holder = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    holder
        .bind(&SockAddr::from(loopback(0)))
        .expect("bind loopback");
    let addr = holder.local_addr().expect("addr");
    let client = tcp_socket();
    let l = lp.clone();
    let c = client.clone();
    let r = lp.run_until_complete(async move { l.sock_connect(c, addr).await });
    let e = expect_io(r, "connect to a closed port");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(!lp.remove_writer(client.raw())?);
    lp.close()
}

/// A non-blocking TCP listener on loopback, and its address.
fn nonblocking_listener() -> (Rc<Socket>, std::net::SocketAddr) {
    let listener = TcpListener::bind(loopback(0)).expect("listen");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("addr");
    (Rc::new(Socket::from(listener)), addr)
}

/// `test_sock_accept`: waits for a connection, returns a non-blocking
/// socket and the peer's address; the reader is removed.
pub fn test_sock_accept(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (listener, addr) = nonblocking_listener();
    let task = lp.create_task(lp.sock_accept(listener.clone()))?;
    run_once(&lp)?;
    assert!(!task.done(), "accepted with nobody connecting");
    let client = Rc::new(std::cell::RefCell::new(None));
    let c = client.clone();
    lp.call_soon_dyn(
        Box::new(move || *c.borrow_mut() = Some(TcpStream::connect(addr).expect("connect"))),
        None,
    )?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    let (conn, peer) = task.take_result()?;
    let client = client.borrow_mut().take().expect("client connected");
    assert_eq!(peer.as_socket(), Some(client.local_addr().expect("addr")));
    #[cfg(unix)]
    assert!(
        conn.nonblocking().expect("mode"),
        "accepted socket is blocking"
    );
    // The accepted socket works with the loop.
    let conn = Rc::new(conn);
    let mut client = client;
    client.write_all(b"hi").expect("write");
    let l = lp.clone();
    let got = lp.run_until_complete(async move { l.sock_recv(conn, 10).await })?;
    assert_eq!(got, b"hi");
    assert!(!lp.remove_reader(listener.raw())?);
    lp.close()
}

/// Cancelling a pending `sock_accept` removes the reader; a later
/// `sock_accept` on the same listener still works.
pub fn test_cancel_sock_accept(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (listener, addr) = nonblocking_listener();
    let task = lp.create_task(lp.sock_accept(listener.clone()))?;
    run_once(&lp)?;
    assert!(task.cancel(None));
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert!(task.cancelled());
    assert!(!lp.remove_reader(listener.raw())?, "cancel left the reader");
    let _client = TcpStream::connect(addr).expect("connect");
    let l = lp.clone();
    let (_conn, peer) = lp.run_until_complete(async move { l.sock_accept(listener).await })?;
    assert_eq!(peer.as_socket(), Some(_client.local_addr().expect("addr")));
    lp.close()
}

// ----- cancellation ------------------------------------------------------------------

/// `test_cancel_sock_accept`'s `sock_recv` twin (`test_sock_client_fail`
/// family): cancelling the task awaiting `sock_recv` removes the reader
/// and leaves the socket usable: a later `sock_recv` gets the data.
pub fn test_cancel_sock_recv(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, mut b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let task = lp.create_task(lp.sock_recv(a.clone(), 100))?;
    run_once(&lp)?;
    assert!(!task.done());
    assert!(task.cancel(None));
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert!(task.cancelled());
    assert!(!lp.remove_reader(a.raw())?, "cancel left the reader");
    b.write_all(b"after").expect("write");
    let l = lp.clone();
    let got = lp.run_until_complete(async move { l.sock_recv(a, 100).await })?;
    assert_eq!(got, b"after");
    lp.close()
}

/// Dropping a pending `sock_recv` future (Rust's way to cancel) removes the
/// reader it registered; dropping one never polled registers nothing.
pub fn test_drop_pending_sock_recv(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    ctx.require(Feature::ReadinessSockOps)?;
    let lp = ctx.new_loop();
    let (a, _b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let fd = a.raw();
    let l = lp.clone();
    let s = a.clone();
    let (registered, after_drop) = lp.run_until_complete(async move {
        // Polled once: pending, watching the socket.
        let fut = pending(poll_once(l.sock_recv(s.clone(), 10)).await, "sock_recv");
        drop(fut);
        let after_drop = l.remove_reader(fd)?;
        // Prove the poll did register: poll another, remove its reader by hand.
        let fut = pending(poll_once(l.sock_recv(s.clone(), 10)).await, "sock_recv");
        let registered = l.remove_reader(fd)?;
        drop(fut);
        drop(l.sock_recv(s, 10)); // never polled
        Ok((registered, after_drop))
    })?;
    assert!(registered, "a pending sock_recv watches its socket");
    assert!(!after_drop, "dropping the future left the reader");
    assert!(!lp.remove_reader(fd)?);
    lp.close()
}

/// A second `sock_recv` on the same socket replaces the first's reader (as
/// asyncio's `add_reader` does); dropping the first then leaves the
/// second's reader alone, and the second gets the data.
pub fn test_sock_recv_replaced_by_second(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, mut b) = socketpair();
    let a = Rc::new(Socket::from(a));
    let l = lp.clone();
    let s = a.clone();
    let got = lp.run_until_complete(async move {
        let first = pending(poll_once(l.sock_recv(s.clone(), 10)).await, "first");
        let second = pending(poll_once(l.sock_recv(s, 10)).await, "second");
        drop(first);
        b.write_all(b"two").expect("write");
        second.await
    })?;
    assert_eq!(got, b"two");
    assert!(!lp.remove_reader(a.raw())?);
    lp.close()
}

/// Cancelling a pending `sock_sendall` removes the writer and leaves the
/// socket usable.
pub fn test_cancel_sock_sendall(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (a, b) = sock_pair();
    let task = lp.create_task(lp.sock_sendall(a.clone(), vec![1u8; 16 * 1024 * 1024]))?;
    run_once(&lp)?;
    assert!(!task.done(), "16 MB fit in the socket buffers");
    assert!(task.cancel(None));
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert!(task.cancelled());
    assert!(!lp.remove_writer(a.raw())?, "cancel left the writer");
    // Still usable: a later sendall's bytes follow the part already sent,
    // in order.
    let l = lp.clone();
    let got = lp.run_until_complete(async move {
        let sender = l.create_task(l.sock_sendall(a, b"end".to_vec()))?;
        let mut all = Vec::new();
        while !all.ends_with(b"end") {
            let chunk = l.sock_recv(b.clone(), 1 << 20).await?;
            assert!(!chunk.is_empty(), "EOF before the end marker");
            all.extend_from_slice(&chunk);
        }
        sender.await?;
        Ok(all)
    })?;
    let (head, tail) = got.split_at(got.len() - 3);
    assert_eq!(tail, b"end");
    assert!(!head.is_empty() && head.len() < 16 * 1024 * 1024);
    assert!(head.iter().all(|&x| x == 1), "the stream was garbled");
    lp.close()
}

// ----- blocking sockets -----------------------------------------------------------------

/// `test_sock_nonblocking` family (asyncio's debug-mode check, always on
/// here): every `sock_*` method refuses a blocking socket. Unix only:
/// Windows cannot report a socket's blocking mode.
pub fn test_blocking_socket_refused(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    if cfg!(not(unix)) {
        return Err(Error::NotSupported {
            feature: "blocking-socket check",
            reason: "Windows cannot query a socket's blocking mode".into(),
        });
    }
    let lp = ctx.new_loop();
    let (a, _b) = socketpair();
    a.set_nonblocking(false).expect("blocking");
    let a = Rc::new(Socket::from(a));
    let u = udp_socket();
    u.set_nonblocking(false).expect("blocking");
    let to = SockAddr::from(loopback(9));
    let l = lp.clone();
    let results: Vec<Result<()>> = lp.run_until_complete(async move {
        Ok(vec![
            l.sock_recv(a.clone(), 1).await.map(drop),
            l.sock_recv_into(a.clone(), vec![0; 1]).await.map(drop),
            l.sock_sendall(a.clone(), b"x".to_vec()).await.map(drop),
            l.sock_connect(a.clone(), to.clone()).await.map(drop),
            l.sock_accept(a).await.map(drop),
            l.sock_recvfrom(u.clone(), 1).await.map(drop),
            l.sock_recvfrom_into(u.clone(), vec![0; 1], 0)
                .await
                .map(drop),
            l.sock_sendto(u, b"x".to_vec(), to).await.map(drop),
        ])
    })?;
    for r in results {
        crate::util::expect_value_error(r, "the socket must be non-blocking");
    }
    lp.close()
}

// ----- datagrams ------------------------------------------------------------------------

/// `test_sock_recvfrom` / `test_sock_sendto`: a datagram goes out with
/// `sock_sendto` and comes back with the sender's address.
pub fn test_sock_sendto_recvfrom(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (server, client) = (udp_socket(), udp_socket());
    let server_addr = SockAddr::from(local(&server));
    let client_addr = local(&client);
    let l = lp.clone();
    let (n, data, from) = lp.run_until_complete(async move {
        let n = l
            .sock_sendto(client, b"datagram".to_vec(), server_addr)
            .await?;
        let (data, from) = l.sock_recvfrom(server, 4096).await?;
        Ok((n, data, from))
    })?;
    assert_eq!(n, 8);
    assert_eq!(data, b"datagram");
    assert_eq!(from.as_socket(), Some(client_addr));
    lp.close()
}

/// `sock_recvfrom` on an empty UDP socket waits for the datagram.
pub fn test_sock_recvfrom_waits(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (server, client) = (udp_socket(), udp_socket());
    let to = SockAddr::from(local(&server));
    let task = lp.create_task(lp.sock_recvfrom(server.clone(), 100))?;
    run_once(&lp)?;
    assert!(!task.done());
    lp.call_soon_dyn(
        Box::new(move || {
            client.send_to(b"ping", &to).expect("send");
        }),
        None,
    )?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert_eq!(task.take_result()?.0, b"ping");
    assert!(!lp.remove_reader(server.raw())?);
    lp.close()
}

/// `test_sock_recvfrom_into` with `nbytes`: only `nbytes` of the datagram
/// land in the buffer and the rest of it is untouched (Unix); Windows
/// reports the longer datagram as WSAEMSGSIZE. `nbytes == 0` is the whole
/// buffer.
pub fn test_sock_recvfrom_into_nbytes(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let (server, client) = (udp_socket(), udp_socket());
    let to = SockAddr::from(local(&server));
    let client_addr = local(&client);
    let l = lp.clone();
    let (first, full) = lp.run_until_complete(async move {
        l.sock_sendto(client.clone(), b"0123456789".to_vec(), to.clone())
            .await?;
        let first = l
            .sock_recvfrom_into(server.clone(), vec![b'-'; 32], 4)
            .await;
        // nbytes == 0 means the whole buffer.
        l.sock_sendto(client, b"abc".to_vec(), to).await?;
        let full = l.sock_recvfrom_into(server, vec![0; 8], 0).await?;
        Ok((first, full))
    })?;
    // A datagram longer than nbytes: Unix truncates it silently; Windows
    // reports WSAEMSGSIZE, and CPython's recvfrom_into raises it there too.
    #[cfg(unix)]
    {
        let (buf, n, from) = first?;
        assert_eq!(n, 4);
        assert_eq!(&buf[..4], b"0123");
        assert!(buf[4..].iter().all(|&x| x == b'-'));
        assert_eq!(from.as_socket(), Some(client_addr));
    }
    #[cfg(windows)]
    {
        const WSAEMSGSIZE: i32 = 10040;
        match first {
            Err(e) => assert_eq!(e.raw_os_error(), Some(WSAEMSGSIZE), "{e}"),
            Ok(r) => panic!("expected WSAEMSGSIZE, got {} bytes", r.1),
        }
        let _ = client_addr;
    }
    assert_eq!((&full.0[..full.1], full.1), (&b"abc"[..], 3));
    lp.close()
}

/// `sock_recvfrom_into` refuses `nbytes` larger than the buffer (as
/// `socket.recvfrom_into` does): `ValueError`.
pub fn test_sock_recvfrom_into_nbytes_too_large(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    let lp = ctx.new_loop();
    let server = udp_socket();
    let l = lp.clone();
    let r = lp
        .run_until_complete(async move { Ok(l.sock_recvfrom_into(server, vec![0; 4], 5).await) })?;
    crate::util::expect_value_error(r, "nbytes is greater than the length of the buffer");
    lp.close()
}

// ----- the resolver ---------------------------------------------------------------------

fn sock_stream() -> i32 {
    Type::STREAM.into()
}

#[cfg(windows)]
const NI_NUMERICHOST: i32 = 0x02;
#[cfg(windows)]
const NI_NUMERICSERV: i32 = 0x08;
#[cfg(unix)]
const NI_NUMERICHOST: i32 = libc::NI_NUMERICHOST;
#[cfg(unix)]
const NI_NUMERICSERV: i32 = libc::NI_NUMERICSERV;
/// Same value on Unix and Windows.
const AI_NUMERICHOST: i32 = 0x04;

/// `test_getaddrinfo`: `localhost` resolves to loopback addresses with the
/// port asked for, on the default executor.
pub fn test_getaddrinfo_localhost(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let infos = lp.run_until_complete(async move {
        l.getaddrinfo_dyn(
            Some("localhost".into()),
            Some("8123".into()),
            Family::Unspec,
            sock_stream(),
            0,
            0,
        )
        .await
    })?;
    assert!(!infos.is_empty());
    for i in &infos {
        assert!(i.addr.ip().is_loopback(), "{:?} is not loopback", i.addr);
        assert_eq!(i.addr.port(), 8123);
        assert_eq!(i.socktype, sock_stream());
        let fam = if i.addr.is_ipv4() {
            Family::Inet
        } else {
            Family::Inet6
        };
        assert_eq!(i.family, fam);
    }
    lp.close()
}

/// `getaddrinfo` with `family=AF_INET` and a numeric host: exactly
/// 127.0.0.1, IPv4 only.
pub fn test_getaddrinfo_family(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let infos = lp.run_until_complete(async move {
        l.getaddrinfo_dyn(
            Some("127.0.0.1".into()),
            Some("80".into()),
            Family::Inet,
            sock_stream(),
            0,
            AI_NUMERICHOST,
        )
        .await
    })?;
    assert_eq!(
        infos.len(),
        1,
        "{:?}",
        infos.iter().map(|i| i.addr).collect::<Vec<_>>()
    );
    assert_eq!(infos[0].addr, loopback(80));
    assert_eq!(infos[0].family, Family::Inet);
    // Asking for IPv6 only of an IPv4 literal finds nothing: a resolver error.
    let l = lp.clone();
    let r = lp.run_until_complete(async move {
        Ok(l.getaddrinfo_dyn(
            Some("127.0.0.1".into()),
            None,
            Family::Inet6,
            sock_stream(),
            0,
            AI_NUMERICHOST,
        )
        .await)
    })?;
    expect_io(r, "an IPv4 literal asked as IPv6");
    lp.close()
}

/// `test_getnameinfo`: 127.0.0.1 with numeric flags is itself, the port as text.
pub fn test_getnameinfo(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let got = lp.run_until_complete(async move {
        l.getnameinfo(loopback(8123), NI_NUMERICHOST | NI_NUMERICSERV)
            .await
    })?;
    assert_eq!(got, ("127.0.0.1".to_string(), "8123".to_string()));
    lp.close()
}

/// `getaddrinfo` of a name that cannot resolve (`.invalid` is reserved,
/// RFC 2606) fails with the resolver's error (asyncio: `socket.gaierror`).
pub fn test_getaddrinfo_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let r = lp.run_until_complete(async move {
        Ok(l.getaddrinfo_dyn(
            Some("no-such-host.invalid".into()),
            Some("80".into()),
            Family::Unspec,
            0,
            0,
            0,
        )
        .await)
    })?;
    let e = expect_io(r, "resolving a .invalid name");
    assert!(!e.to_string().is_empty());
    lp.close()
}

/// The resolver methods refuse a closed loop (no executor to run on).
pub fn test_getaddrinfo_closed_loop(ctx: &Ctx) -> Result<()> {
    let lp: Loop = ctx.new_loop();
    let lp2: Loop = ctx.new_loop();
    let pending = lp.getaddrinfo_dyn(Some("localhost".into()), None, Family::Unspec, 0, 0, 0);
    lp.close()?;
    let r = lp2.run_until_complete(async move { Ok(pending.await) })?;
    crate::util::expect_closed(r);
    lp2.close()
}
