//! The IOCP loop end to end: readiness through AFD, cross-thread wakeups and
//! timers, on `BaseEventLoop<IocpDriver>` (Windows only). The conformance
//! suite's readiness cases use Unix socketpairs and skip on Windows; these
//! cover the same ground with a loopback TCP pair.
#![cfg(windows)]

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::windows::io::AsRawSocket;
use std::rc::Rc;

use loop_api::Loop;

use conformance::util::safety_net;

/// Safety net: a case that has not finished by then stops and fails.
const NET: f64 = 10.0;

fn new_loop() -> Loop {
    backend_iocp::loop_factory().expect("iocp loop")
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    (c, s)
}

#[test]
fn backend_name_is_iocp() {
    let lp = new_loop();
    assert_eq!(lp.backend_name(), "iocp");
    lp.close().unwrap();
}

#[test]
fn reader_sees_data_then_eof_and_removes_itself() {
    let lp = new_loop();
    let (c, mut s) = pair();
    let fd = s.as_raw_socket();
    let got = Rc::new(RefCell::new(Vec::new()));
    let c = Rc::new(RefCell::new(Some(c)));
    let (g, l, c2) = (got.clone(), lp.clone(), c.clone());
    lp.add_reader_dyn(
        fd,
        Box::new(move || {
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => {
                    assert!(l.remove_reader(fd).unwrap());
                    l.stop();
                }
                Ok(n) => {
                    g.borrow_mut().extend_from_slice(&buf[..n]);
                    if g.borrow().len() == 3 {
                        c2.borrow_mut().as_mut().unwrap().write_all(b"def").unwrap();
                    } else if g.borrow().len() == 6 {
                        c2.borrow_mut().take(); // EOF
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }),
    )
    .unwrap();
    let c3 = c.clone();
    lp.call_soon_dyn(
        Box::new(move || c3.borrow_mut().as_mut().unwrap().write_all(b"abc").unwrap()),
        None,
    )
    .unwrap();
    let fired = safety_net(&lp, NET).unwrap();
    lp.run_forever().unwrap();
    assert!(!fired.get(), "safety net fired");
    assert_eq!(&*got.borrow(), b"abcdef");
    assert!(!lp.remove_reader(fd).unwrap());
    lp.close().unwrap();
}

#[test]
fn reader_is_level_triggered() {
    let lp = new_loop();
    let (mut c, s) = pair();
    let fd = s.as_raw_socket();
    c.write_all(b"x").unwrap();
    let runs = Rc::new(Cell::new(0));
    let (r, l) = (runs.clone(), lp.clone());
    // Never reads: the socket stays readable, so the reader runs on every
    // iteration until it has run three times.
    lp.add_reader_dyn(
        fd,
        Box::new(move || {
            r.set(r.get() + 1);
            if r.get() == 3 {
                l.remove_reader(fd).unwrap();
                l.stop();
            }
        }),
    )
    .unwrap();
    let fired = safety_net(&lp, NET).unwrap();
    lp.run_forever().unwrap();
    assert!(!fired.get(), "safety net fired");
    assert_eq!(runs.get(), 3);
    drop(s);
    lp.close().unwrap();
}

#[test]
fn writer_runs_when_writable() {
    let lp = new_loop();
    let (c, _s) = pair();
    let fd = c.as_raw_socket();
    let ran = Rc::new(Cell::new(false));
    let (r, l) = (ran.clone(), lp.clone());
    lp.add_writer_dyn(
        fd,
        Box::new(move || {
            r.set(true);
            assert!(l.remove_writer(fd).unwrap());
            l.stop();
        }),
    )
    .unwrap();
    let fired = safety_net(&lp, NET).unwrap();
    lp.run_forever().unwrap();
    assert!(!fired.get(), "safety net fired");
    assert!(ran.get());
    lp.close().unwrap();
}

#[test]
fn closing_the_loop_with_readers_registered() {
    let lp = new_loop();
    let (c, s) = pair();
    lp.add_reader_dyn(s.as_raw_socket(), Box::new(|| {}))
        .unwrap();
    lp.add_writer_dyn(c.as_raw_socket(), Box::new(|| {}))
        .unwrap();
    // One iteration, so that AFD polls are in flight when the loop closes.
    let l = lp.clone();
    lp.call_soon_dyn(Box::new(move || l.stop()), None).unwrap();
    lp.run_forever().unwrap();
    lp.close().unwrap();
    drop(lp);
}

#[test]
fn call_soon_threadsafe_wakes_an_idle_loop() {
    let lp = new_loop();
    let remote = lp.remote();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // Sent once the loop is running (it may or may not be blocked yet:
        // either way the callback must wake it).
        rx.recv().unwrap();
        remote.stop().unwrap();
    });
    lp.call_soon_dyn(Box::new(move || tx.send(()).unwrap()), None)
        .unwrap();
    // Nothing else is scheduled: without the wakeup the loop would block
    // for ever (the safety net aside).
    let fired = safety_net(&lp, NET).unwrap();
    lp.run_forever().unwrap();
    assert!(!fired.get(), "the cross-thread stop never woke the loop");
    t.join().unwrap();
    lp.close().unwrap();
}

#[test]
fn timers_never_run_early() {
    let lp = new_loop();
    let t0 = lp.time();
    let at = Rc::new(Cell::new(0.0));
    for delay in [0.001, 0.0155, 0.05] {
        let (a, l) = (at.clone(), lp.clone());
        lp.call_later_dyn(
            delay,
            Box::new(move || {
                a.set(l.time());
                l.stop();
            }),
            None,
        )
        .unwrap();
        let start = lp.time();
        lp.run_forever().unwrap();
        assert!(
            at.get() - start >= delay,
            "call_later({delay}) ran after {}",
            at.get() - start
        );
    }
    assert!(lp.time() > t0);
    lp.close().unwrap();
}
