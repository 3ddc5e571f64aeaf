//! Storms of cancelled operations, and closing a loop with operations in
//! flight, leave nothing behind: no descriptor, no operation, no provided
//! buffer, no lost byte. One test, so that no other test of this binary
//! opens descriptors while the count is taken.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use backend_uring::{new_event_loop, UringEventLoop};
use loop_api::events::options::{CreateServerOptions, Hosts};
use loop_api::{AbstractEventLoop, EventLoopExt, Result};
use socket2::Socket;

use conformance::util::{echo_factory, poll_until, turn, Transports};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn in_flight(lp: &UringEventLoop) -> usize {
    lp.with_driver(|d| d.ops_in_flight())
}

fn buffers_out(lp: &UringEventLoop) -> u32 {
    lp.with_driver(|d| d.buffers_outstanding())
}

/// 40 connections whose reading is paused and resumed 30 times each (every
/// pause cancels a multishot receive, every resume arms one) while their
/// clients keep sending: every byte comes back, in order, and once the
/// server is closed nothing is in flight and every buffer is back.
fn pause_resume_storm() {
    let lp = new_event_loop().expect("uring");
    let all: Transports = Rc::default();
    let factory = echo_factory(&all);
    let server = lp
        .run_until_complete(lp.create_server_dyn(
            factory,
            Hosts::One("127.0.0.1".into()),
            Some(0),
            CreateServerOptions::default(),
        ))
        .expect("server");
    let addr = server.sockets()[0]
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap();
    const N: usize = 40;
    let mut clients: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    poll_until(&lp.as_loop(), "every connection", || {
        all.borrow().len() == N
    });
    let mut sent = vec![Vec::new(); N];
    for round in 0..30u8 {
        for (i, c) in clients.iter_mut().enumerate() {
            let msg = [round, i as u8, 0xA5, round ^ 0xFF];
            c.write_all(&msg).expect("send");
            sent[i].extend_from_slice(&msg);
        }
        for t in all.borrow().iter() {
            t.pause_reading();
        }
        turn(&lp.as_loop());
        for t in all.borrow().iter() {
            t.resume_reading();
        }
        turn(&lp.as_loop());
    }
    poll_until(&lp.as_loop(), "the echoes", || {
        all.borrow().iter().all(|t| t.get_write_buffer_size() == 0)
    });
    let ecs = std::thread::spawn(move || {
        for (i, mut c) in clients.into_iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = vec![0u8; sent[i].len()];
            c.read_exact(&mut got).expect("echo");
            assert_eq!(got, sent[i], "connection {i}: bytes lost or reordered");
        }
    });
    poll_until(&lp.as_loop(), "the clients' checks", || ecs.is_finished());
    ecs.join().expect("echo check");
    server.close();
    server.close_clients();
    lp.run_until_complete(server.wait_closed()).expect("closed");
    poll_until(
        &lp.as_loop(),
        "every cancelled receive's completion",
        || in_flight(&lp) == 0,
    );
    assert_eq!(buffers_out(&lp), 0, "provided buffers not given back");
    all.borrow_mut().clear();
    lp.close().expect("close");
}

/// 200 cancelled `sock_recv`s, `sock_accept`s and `sock_sendall`s: each
/// request's completion arrives, nothing stays in flight, and the sockets
/// still work (nothing was consumed by a cancelled receive).
fn cancelled_sock_ops_storm() -> Result<()> {
    let lp = new_event_loop()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = Rc::new(Socket::from(listener));
    let (x, y) = std::os::unix::net::UnixStream::pair()?;
    x.set_nonblocking(true)?;
    y.set_nonblocking(true)?;
    let (x, y) = (Rc::new(Socket::from(x)), Rc::new(Socket::from(y)));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(lp.create_task(lp.sock_recv(x.clone(), 100))?.as_obj());
        tasks.push(lp.create_task(lp.sock_accept(listener.clone()))?.as_obj());
    }
    // A send that cannot finish: nobody reads `x`'s peer... but `y` is
    // read below, so this one goes to a fresh pair.
    let (p, _q) = std::os::unix::net::UnixStream::pair()?;
    p.set_nonblocking(true)?;
    let p = Rc::new(Socket::from(p));
    let big = lp.create_task(lp.sock_sendall(p, vec![7u8; 16 << 20]))?;
    poll_until(&lp.as_loop(), "the requests to be submitted", || {
        in_flight(&lp) >= 201
    });
    for t in &tasks {
        t.cancel(None);
    }
    big.cancel(None);
    poll_until(&lp.as_loop(), "the cancellations", || {
        tasks.iter().all(|t| t.done()) && big.done() && in_flight(&lp) == 0
    });
    // Nothing was taken by the cancelled requests.
    (&*y).write_all(b"still here")?;
    let got = lp.run_until_complete(lp.sock_recv(x.clone(), 100))?;
    assert_eq!(got, b"still here");
    let _client = TcpStream::connect(addr)?;
    let (conn, _) = lp.run_until_complete(lp.sock_accept(listener.clone()))?;
    drop(conn);
    assert_eq!(in_flight(&lp), 0);
    lp.close()
}

/// Closing the loop with a multishot accept, multishot receives and a
/// 16 MiB send in flight: `close` cancels and drains them (quickly, well
/// under the drain limit), and afterwards nothing is in flight.
fn close_with_operations_in_flight() -> Result<()> {
    let lp = new_event_loop()?;
    let all: Transports = Rc::default();
    let factory = echo_factory(&all);
    let server = lp.run_until_complete(lp.create_server_dyn(
        factory,
        Hosts::One("127.0.0.1".into()),
        Some(0),
        CreateServerOptions::default(),
    ))?;
    let addr = server.sockets()[0].local_addr()?.as_socket().unwrap();
    let clients: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(addr))
        .collect::<std::io::Result<_>>()?;
    poll_until(&lp.as_loop(), "the connections", || {
        all.borrow().len() == 10
    });
    all.borrow()[0].write(&vec![1u8; 16 << 20])?;
    poll_until(&lp.as_loop(), "the send to be in flight", || {
        in_flight(&lp) >= 12
    });
    drop(server);
    all.borrow_mut().clear();
    let t0 = Instant::now();
    lp.close()?;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "close took {took:?}");
    assert_eq!(in_flight(&lp), 0, "close left operations in flight");
    drop(clients);
    Ok(())
}

#[test]
fn storms_and_close_leave_nothing_behind() {
    let base = open_fds();
    pause_resume_storm();
    assert_eq!(open_fds(), base, "descriptors left after the pause storm");
    cancelled_sock_ops_storm().expect("sock ops storm");
    assert_eq!(open_fds(), base, "descriptors left after the sock_* storm");
    close_with_operations_in_flight().expect("close with operations in flight");
    assert_eq!(open_fds(), base, "descriptors left after closing the loop");
}
