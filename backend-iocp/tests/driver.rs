//! The driver contract, checked directly on the completion port (Windows only).
#![cfg(windows)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::windows::io::AsRawSocket;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backend_iocp::IocpDriver;
use loop_api::driver::{Driver, IoEvent};

/// Safety net for waits that must end by an event, never by this.
const NET: Duration = Duration::from_secs(10);

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Polls until an event for `fd` arrives (or the safety net fails the test).
fn wait_for(d: &mut IocpDriver, fd: u64) -> IoEvent {
    let deadline = Instant::now() + NET;
    loop {
        let mut evs = Vec::new();
        d.poll(
            Some(deadline.saturating_duration_since(Instant::now())),
            &mut evs,
        )
        .unwrap();
        if let Some(ev) = evs.into_iter().find(|e| e.fd == fd) {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "no event for {fd} within {NET:?}"
        );
    }
}

#[test]
fn notify_before_poll_is_not_lost() {
    let mut d = IocpDriver::new().unwrap();
    let n = d.notifier();
    n.notify().unwrap();
    n.notify().unwrap(); // coalesced
    let t0 = Instant::now();
    d.poll(None, &mut Vec::new()).unwrap();
    assert!(t0.elapsed() < NET);
    // The coalesced second notification left nothing behind.
    let mut evs = Vec::new();
    d.poll(Some(Duration::ZERO), &mut evs).unwrap();
    assert!(evs.is_empty());
}

#[test]
fn notify_from_another_thread_wakes_a_blocked_poll() {
    let mut d = IocpDriver::new().unwrap();
    let n = d.notifier();
    let (tx, rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // Notify once the main thread is about to block (it may already be
        // blocked or not yet: either way the poll must return).
        rx.recv().unwrap();
        n.notify().unwrap();
    });
    tx.send(()).unwrap();
    d.poll(None, &mut Vec::new()).unwrap();
    t.join().unwrap();
}

#[test]
fn timeouts_never_end_early() {
    let mut d = IocpDriver::new().unwrap();
    for ms in [1u64, 15, 40] {
        let want = Duration::from_millis(ms) + Duration::from_micros(300);
        let t0 = Instant::now();
        d.poll(Some(want), &mut Vec::new()).unwrap();
        let got = t0.elapsed();
        assert!(got >= want, "poll({want:?}) returned after {got:?}");
    }
}

#[test]
fn readable_is_level_triggered() {
    let mut d = IocpDriver::new().unwrap();
    let (mut c, mut s) = pair();
    let fd = s.as_raw_socket();
    d.set_interest(fd, true, false).unwrap();
    let mut evs = Vec::new();
    d.poll(Some(Duration::ZERO), &mut evs).unwrap();
    assert!(
        evs.iter().all(|e| e.fd != fd),
        "readable before any data: {evs:?}"
    );

    c.write_all(b"hello").unwrap();
    let ev = wait_for(&mut d, fd);
    assert!(ev.readable && !ev.writable, "{ev:?}");
    // Still unread: reported again.
    let ev = wait_for(&mut d, fd);
    assert!(ev.readable, "{ev:?}");

    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 5);
    let mut evs = Vec::new();
    d.poll(Some(Duration::ZERO), &mut evs).unwrap();
    assert!(
        evs.iter().all(|e| e.fd != fd),
        "readable after draining: {evs:?}"
    );

    // EOF is readable too.
    drop(c);
    let ev = wait_for(&mut d, fd);
    assert!(ev.readable, "{ev:?}");
    d.set_interest(fd, false, false).unwrap();
}

#[test]
fn writable_and_interest_changes() {
    let mut d = IocpDriver::new().unwrap();
    let (c, _s) = pair();
    let fd = c.as_raw_socket();
    // Read interest first (a poll is in flight), then widen it to writes:
    // the in-flight poll is re-issued with the new mask.
    d.set_interest(fd, true, false).unwrap();
    d.poll(Some(Duration::ZERO), &mut Vec::new()).unwrap();
    d.set_interest(fd, true, true).unwrap();
    let ev = wait_for(&mut d, fd);
    assert!(ev.writable && !ev.readable, "{ev:?}");
    // Narrow back to reads: no more writable events.
    d.set_interest(fd, true, false).unwrap();
    for _ in 0..3 {
        let mut evs = Vec::new();
        d.poll(Some(Duration::ZERO), &mut evs).unwrap();
        assert!(evs.iter().all(|e| e.fd != fd || !e.writable), "{evs:?}");
    }
    d.set_interest(fd, false, false).unwrap();
}

#[test]
fn dropping_with_polls_in_flight_is_clean() {
    let mut d = IocpDriver::new().unwrap();
    let (c, s) = pair();
    d.set_interest(c.as_raw_socket(), true, false).unwrap();
    d.set_interest(s.as_raw_socket(), true, false).unwrap();
    d.poll(Some(Duration::ZERO), &mut Vec::new()).unwrap();
    // One deregistered with its poll in flight, one still registered.
    d.set_interest(c.as_raw_socket(), false, false).unwrap();
    drop(d);
}

#[test]
fn a_socket_closed_while_watched_is_forgotten() {
    let mut d = IocpDriver::new().unwrap();
    let (c, s) = pair();
    let fd = s.as_raw_socket();
    d.set_interest(fd, true, false).unwrap();
    d.poll(Some(Duration::ZERO), &mut Vec::new()).unwrap();
    drop(s);
    drop(c);
    // The closed socket may be reported once; polling never fails and the
    // registration goes away.
    for _ in 0..3 {
        d.poll(Some(Duration::from_millis(1)), &mut Vec::new())
            .unwrap();
    }
}

#[test]
fn not_a_socket_is_an_error_not_a_crash() {
    let mut d = IocpDriver::new().unwrap();
    assert!(d.set_interest(0xdead_beef, true, false).is_err());
    d.poll(Some(Duration::ZERO), &mut Vec::new()).unwrap();
}

#[test]
fn wine_is_detected_consistently() {
    // Under Wine this names the version; on Windows it is None.
    if let Some(v) = backend_iocp::wine_version() {
        assert!(!v.is_empty());
        assert!(backend_iocp::running_under_wine());
    } else {
        assert!(!backend_iocp::running_under_wine());
    }
}
