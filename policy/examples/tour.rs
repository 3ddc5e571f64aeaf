//! A tour of the examples in asyncio's event-loop documentation, run with
//! `policy::run()` on the default backend:
//!
//! 1. Hello World with `call_soon`
//! 2. a clock with `call_later`
//! 3. watching a socket with `add_reader`
//! 4. SIGINT and SIGTERM handlers with `add_signal_handler`
//!
//! Run it from the workspace root: `cargo run --example tour`.

#[cfg(unix)]
fn main() {
    // asyncio.run(main()): a new loop of the default backend, closed at the end.
    if let Err(e) = policy::run(tour::main(), None, None) {
        eprintln!("tour failed: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(unix))]
fn main() {
    println!("this tour uses Unix sockets and POSIX signals");
}

#[cfg(unix)]
mod tour {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use policy::prelude::*;

    pub async fn main() -> Result<()> {
        let lp = get_running_loop()?;
        println!("policy::run() made a {:?} loop", lp.backend_name());
        hello_world(&lp).await?;
        clock(&lp).await?;
        watch_socket(&lp).await?;
        signals(&lp).await?;
        println!("done: run() now cancels leftovers, shuts the executor down, closes the loop");
        Ok(())
    }

    /// Each example finishes by setting a future that the tour awaits
    /// (the docs stop the loop instead; here the loop belongs to run()).
    fn finished(fut: &Future<()>) {
        let _ = fut.set_result(());
    }

    /// "Hello World with call_soon()": a callback scheduled for the next
    /// iteration of the loop.
    async fn hello_world(lp: &Loop) -> Result<()> {
        println!("\n1. call_soon");
        let done = lp.create_future::<()>();
        let d = done.clone();
        lp.call_soon(move || {
            println!("   Hello World (a callback run by the loop)");
            finished(&d);
        })?;
        done.await
    }

    /// "Display the current date with call_later()": a callback that
    /// re-schedules itself every 0.2 s until a second has passed.
    async fn clock(lp: &Loop) -> Result<()> {
        println!("\n2. call_later: a tick every 0.2 s for a second");
        let done = lp.create_future::<()>();
        let start = lp.time();
        tick(lp.clone(), start, start + 1.0, done.clone());
        done.await
    }

    fn tick(lp: Loop, start: f64, end: f64, done: Future<()>) {
        let now = lp.time();
        println!("   tick at +{:.2} s of loop time", now - start);
        if now + 0.2 < end {
            let again = lp.clone();
            if let Err(e) = lp.call_later(0.2, move || tick(again, start, end, done)) {
                eprintln!("   call_later failed: {e}");
            }
        } else {
            finished(&done);
        }
    }

    /// "Watch a file descriptor for read events": a socket pair; the loop
    /// calls the reader when data arrives; the reader reads it, prints it,
    /// and stops watching.
    async fn watch_socket(lp: &Loop) -> Result<()> {
        println!("\n3. add_reader on one end of a UnixStream::pair()");
        let (rsock, wsock) = UnixStream::pair()?;
        rsock.set_nonblocking(true)?;
        let fd = rsock.as_raw_fd();
        let done = lp.create_future::<()>();
        let (d, reader_loop) = (done.clone(), lp.clone());
        lp.add_reader(fd, move || {
            let mut buf = [0u8; 100];
            match (&rsock).read(&mut buf) {
                Ok(n) => println!(
                    "   reader callback: received {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) => println!("   reader callback: {e}"),
            }
            // We are done: unregister the file descriptor.
            let removed = reader_loop.remove_reader(fd);
            println!("   remove_reader -> {removed:?}");
            finished(&d);
        })?;
        // Simulate the reception of data from the network, as the docs do
        // with loop.call_soon(wsock.send, 'abc'.encode()).
        lp.call_soon(move || {
            println!("   writing b\"abc\" to the other end");
            let _ = (&wsock).write_all(b"abc");
        })?;
        done.await
    }

    /// "Set signal handlers for SIGINT and SIGTERM": the handlers run on the
    /// loop, as ordinary callbacks, not in signal context. The process
    /// sends itself each signal.
    async fn signals(lp: &Loop) -> Result<()> {
        println!("\n4. add_signal_handler for SIGINT and SIGTERM");
        let done = lp.create_future::<()>();
        let remaining = Rc::new(Cell::new(2));
        for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
            let (d, left) = (done.clone(), remaining.clone());
            lp.add_signal_handler(sig, move || {
                println!("   got signal {name}: its handler ran on the loop");
                left.set(left.get() - 1);
                if left.get() == 0 {
                    finished(&d);
                }
            })?;
        }
        for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
            println!("   sending {name} to myself");
            // SAFETY: kill(2) on our own pid with a valid signal; a handler
            // is installed for it, so the process is not terminated.
            if unsafe { libc::kill(libc::getpid(), sig) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        done.await?;
        // Give both signals their previous dispositions back.
        for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
            println!(
                "   remove_signal_handler({name}) -> {:?}",
                lp.remove_signal_handler(sig)?
            );
        }
        Ok(())
    }
}
