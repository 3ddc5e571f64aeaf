//! From CPython's `test_unix_events.py`: signal handlers.
//!
//! Signal dispositions are process-wide and cases run on parallel threads:
//! every case that installs a handler holds [`crate::util::signal_lock`],
//! and only SIGUSR1, SIGUSR2 and SIGHUP are used, but for the one case of
//! `add_interrupt_handler` (Runner's Ctrl-C), which raises SIGINT only once
//! its handler is installed.

#[allow(unused_imports)]
use loop_api::{Error, Result};

#[allow(unused_imports)]
use crate::util::{capture_exceptions, expect_closed, expect_runtime, expect_value_error, Log};
use crate::{Ctx, Feature};

#[cfg(not(unix))]
fn no_signals() -> Error {
    Error::NotSupported {
        feature: "signals",
        reason: "needs POSIX signals".into(),
    }
}

#[cfg(unix)]
mod sig {
    use std::cell::Cell;
    use std::rc::Rc;

    use loop_api::{Loop, Result};

    /// The current disposition of `sig` (`sa_sigaction`: `SIG_DFL`,
    /// `SIG_IGN` or a handler address).
    pub fn disposition(sig: i32) -> usize {
        // SAFETY: a zeroed sigaction is a valid out-parameter; a null new
        // action only reads the current disposition.
        unsafe {
            let mut cur: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut cur), 0);
            cur.sa_sigaction
        }
    }

    /// Sets `sig` to `SIG_DFL` or `SIG_IGN`.
    pub fn set_disposition(sig: i32, action: usize) {
        // SAFETY: `act` is fully initialised; SIG_DFL and SIG_IGN need no handler.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = action;
            libc::sigemptyset(&mut act.sa_mask);
            assert_eq!(libc::sigaction(sig, &act, std::ptr::null_mut()), 0);
        }
    }

    /// Puts a signal's disposition back as it was, when dropped.
    pub struct Restore(pub i32, pub usize);

    impl Drop for Restore {
        fn drop(&mut self) {
            set_disposition(self.0, self.1);
        }
    }

    /// Sends `sig` to this thread; only call with a handler installed.
    pub fn raise(sig: i32) {
        assert_ne!(
            disposition(sig),
            libc::SIG_DFL,
            "raising {sig} without a handler would kill the test process"
        );
        // SAFETY: raise has no memory-safety preconditions.
        assert_eq!(unsafe { libc::raise(sig) }, 0);
    }

    /// A handler that counts its calls and stops the loop at `stop_at`.
    pub fn counter(lp: &Loop, stop_at: u32) -> (Rc<Cell<u32>>, Box<dyn FnMut()>) {
        let n = Rc::new(Cell::new(0));
        let (n2, lp2) = (n.clone(), lp.clone());
        (
            n,
            Box::new(move || {
                n2.set(n2.get() + 1);
                if n2.get() == stop_at {
                    lp2.stop();
                }
            }),
        )
    }

    /// Runs `lp` until stopped, with a safety net.
    pub fn run(lp: &Loop) -> Result<()> {
        crate::util::stop_after(lp, 10.0);
        lp.run_forever()
    }
}

/// `SelectorEventLoopSignalTests.test_check_signal`: a signal number
/// outside `1..NSIG` is a `ValueError`, for adding and removing alike.
pub fn test_check_signal(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let lp = ctx.new_loop();
        let nsig = loop_api::NSIG;
        for sig in [0, -1, nsig, nsig + 1] {
            let msg = format!("sig {sig} out of range(1, {nsig})");
            expect_value_error(lp.add_signal_handler_dyn(sig, Box::new(|| {})), &msg);
            expect_value_error(lp.remove_signal_handler(sig), &msg);
        }
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// `SelectorEventLoopSignalTests.test_add_signal_handler`: the callback
/// runs in the loop (not in the signal handler), once per signal, and
/// stays installed.
pub fn test_add_signal_handler(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        use std::cell::Cell;
        use std::rc::Rc;
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let calls = Rc::new(Cell::new(0u32));
        let in_loop = Log::new();
        let (c, lp2, l) = (calls.clone(), lp.clone(), in_loop.clone());
        lp.add_signal_handler_dyn(
            libc::SIGUSR1,
            Box::new(move || {
                c.set(c.get() + 1);
                l.push(lp2.is_running());
                if c.get() == 2 || c.get() == 3 {
                    lp2.stop();
                }
            }),
        )?;
        sig::raise(libc::SIGUSR1);
        assert_eq!(calls.get(), 0, "the callback ran inside the signal handler");
        sig::raise(libc::SIGUSR1);
        sig::run(&lp)?;
        assert_eq!(calls.get(), 2, "one call per signal");
        sig::raise(libc::SIGUSR1);
        sig::run(&lp)?;
        assert_eq!(calls.get(), 3, "the handler stays installed");
        assert_eq!(in_loop.get(), vec![true, true, true]);
        assert!(lp.remove_signal_handler(libc::SIGUSR1)?);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// An uncatchable signal (SIGKILL, SIGSTOP) is a `RuntimeError`, and
/// leaves the loop able to handle other signals.
pub fn test_add_signal_handler_uncatchable(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        for s in [libc::SIGKILL, libc::SIGSTOP] {
            expect_runtime(
                lp.add_signal_handler_dyn(s, Box::new(|| {})),
                &format!("sig {s} cannot be caught"),
            );
            assert!(!lp.remove_signal_handler(s)?);
        }
        expect_runtime(
            lp.add_signal_handler_dyn(9, Box::new(|| {})),
            "sig 9 cannot be caught",
        );
        let (calls, cb) = sig::counter(&lp, 1);
        lp.add_signal_handler_dyn(libc::SIGUSR2, cb)?;
        sig::raise(libc::SIGUSR2);
        sig::run(&lp)?;
        assert_eq!(calls.get(), 1);
        assert!(lp.remove_signal_handler(libc::SIGUSR2)?);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// `SelectorEventLoopSignalTests.test_remove_signal_handler`: true, then
/// false; the signal's previous disposition is back.
pub fn test_remove_signal_handler(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let before = sig::disposition(libc::SIGHUP);
        let _restore = sig::Restore(libc::SIGHUP, before);
        assert!(!lp.remove_signal_handler(libc::SIGHUP)?);
        let captured = std::rc::Rc::new(());
        let c = captured.clone();
        lp.add_signal_handler_dyn(libc::SIGHUP, Box::new(move || drop(c.clone())))?;
        assert_ne!(sig::disposition(libc::SIGHUP), before);
        assert!(lp.remove_signal_handler(libc::SIGHUP)?);
        assert_eq!(sig::disposition(libc::SIGHUP), before);
        assert_eq!(std::rc::Rc::strong_count(&captured), 1, "callback kept");
        assert!(!lp.remove_signal_handler(libc::SIGHUP)?);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// Removing a handler restores whatever was there before, not the
/// default: an ignored signal is ignored again.
pub fn test_remove_signal_handler_restores_ignored(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let _restore = sig::Restore(libc::SIGUSR2, sig::disposition(libc::SIGUSR2));
        sig::set_disposition(libc::SIGUSR2, libc::SIG_IGN);
        let (calls, cb) = sig::counter(&lp, 1);
        lp.add_signal_handler_dyn(libc::SIGUSR2, cb)?;
        sig::raise(libc::SIGUSR2);
        sig::run(&lp)?;
        assert_eq!(calls.get(), 1);
        assert!(lp.remove_signal_handler(libc::SIGUSR2)?);
        assert_eq!(sig::disposition(libc::SIGUSR2), libc::SIG_IGN);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// `SelectorEventLoopSignalTests.test_close`: closing the loop removes its
/// signal handlers, restoring the dispositions and dropping the callbacks.
pub fn test_close(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let before1 = sig::disposition(libc::SIGUSR1);
        let before2 = sig::disposition(libc::SIGHUP);
        let _r1 = sig::Restore(libc::SIGUSR1, before1);
        let _r2 = sig::Restore(libc::SIGHUP, before2);
        let captured = std::rc::Rc::new(());
        let c = captured.clone();
        lp.add_signal_handler_dyn(libc::SIGUSR1, Box::new(move || drop(c.clone())))?;
        let c = captured.clone();
        lp.add_signal_handler_dyn(libc::SIGHUP, Box::new(move || drop(c.clone())))?;
        assert_ne!(sig::disposition(libc::SIGUSR1), before1);
        lp.close()?;
        assert_eq!(sig::disposition(libc::SIGUSR1), before1);
        assert_eq!(sig::disposition(libc::SIGHUP), before2);
        assert_eq!(
            std::rc::Rc::strong_count(&captured),
            1,
            "close() kept handlers"
        );
        assert!(!lp.remove_signal_handler(libc::SIGUSR1)?);
        Ok(())
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// A closed loop refuses signal handlers.
pub fn test_add_signal_handler_closed_loop(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let before = sig::disposition(libc::SIGUSR1);
        lp.close()?;
        expect_closed(lp.add_signal_handler_dyn(libc::SIGUSR1, Box::new(|| {})));
        assert_eq!(sig::disposition(libc::SIGUSR1), before);
        Ok(())
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// `SelectorEventLoopSignalTests.test_handle_signal_cancelled_handler`: a
/// signal that arrived but whose handler was removed before the loop got
/// to it runs nothing.
pub fn test_handle_signal_cancelled_handler(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let (calls, cb) = sig::counter(&lp, 1);
        lp.add_signal_handler_dyn(libc::SIGUSR1, cb)?;
        sig::raise(libc::SIGUSR1);
        assert!(lp.remove_signal_handler(libc::SIGUSR1)?);
        for _ in 0..3 {
            crate::util::run_once(&lp)?;
        }
        assert_eq!(calls.get(), 0);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// Adding a handler for a signal that has one replaces it: only the new
/// callback runs, the old one is dropped.
pub fn test_add_signal_handler_replaces(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let before = sig::disposition(libc::SIGUSR2);
        let old_captured = std::rc::Rc::new(());
        let (c, log) = (old_captured.clone(), Log::new());
        let l = log.clone();
        lp.add_signal_handler_dyn(
            libc::SIGUSR2,
            Box::new(move || {
                let _keep = &c;
                l.push("old");
            }),
        )?;
        let (l, lp2) = (log.clone(), lp.clone());
        lp.add_signal_handler_dyn(
            libc::SIGUSR2,
            Box::new(move || {
                l.push("new");
                lp2.stop();
            }),
        )?;
        assert_eq!(std::rc::Rc::strong_count(&old_captured), 1, "old kept");
        sig::raise(libc::SIGUSR2);
        sig::run(&lp)?;
        assert_eq!(log.get(), vec!["new"]);
        // One removal restores what was there before the first add.
        assert!(lp.remove_signal_handler(libc::SIGUSR2)?);
        assert_eq!(sig::disposition(libc::SIGUSR2), before);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// `EventLoopTestsMixin.test_signal_handling_while_selecting`: a signal
/// delivered on another thread wakes a loop blocked in poll with no timers.
pub fn test_signal_handling_while_selecting(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let (calls, cb) = sig::counter(&lp, 1);
        lp.add_signal_handler_dyn(libc::SIGHUP, cb)?;
        let sender = std::rc::Rc::new(std::cell::RefCell::new(None));
        let s = sender.clone();
        lp.call_soon_dyn(
            Box::new(move || {
                *s.borrow_mut() = Some(std::thread::spawn(|| sig::raise(libc::SIGHUP)));
            }),
            None,
        )?;
        let watchdog = crate::util::RemoteWatchdog::arm(&lp, 10.0);
        lp.run_forever()?;
        assert!(!watchdog.fired(), "the signal did not wake the loop");
        drop(watchdog);
        if let Some(t) = sender.borrow_mut().take() {
            t.join().expect("raising thread");
        }
        assert_eq!(calls.get(), 1);
        assert!(lp.remove_signal_handler(libc::SIGHUP)?);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// A panic in a signal callback goes to the exception handler; the
/// handler stays installed.
pub fn test_signal_callback_panic(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        use std::cell::Cell;
        use std::rc::Rc;
        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let errors = capture_exceptions(&lp);
        let calls = Rc::new(Cell::new(0));
        let (c, lp2) = (calls.clone(), lp.clone());
        lp.add_signal_handler_dyn(
            libc::SIGUSR1,
            Box::new(move || {
                c.set(c.get() + 1);
                lp2.stop();
                if c.get() == 1 {
                    panic!("signal callback failed");
                }
            }),
        )?;
        sig::raise(libc::SIGUSR1);
        sig::run(&lp)?;
        sig::raise(libc::SIGUSR1);
        sig::run(&lp)?;
        assert_eq!(calls.get(), 2);
        let errors = errors.get();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("Exception in callback"));
        assert!(
            matches!(&errors[0].exception, Some(Error::Panic(m)) if m == "signal callback failed")
        );
        assert!(lp.remove_signal_handler(libc::SIGUSR1)?);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

/// Runner's Ctrl-C support: a SIGINT that arrived but was not read when the
/// interrupt handler is removed (as `Runner.run` returns) must not fire the
/// interrupt handler installed by the next run.
pub fn test_interrupt_handler_removed_drops_pending_sigint(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Signals)?;
    #[cfg(unix)]
    {
        use std::cell::Cell;
        use std::rc::Rc;

        let _lock = crate::util::signal_lock();
        let lp = ctx.new_loop();
        let (first, second) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        let f = first.clone();
        if !lp.add_interrupt_handler(Box::new(move || f.set(true)))? {
            lp.close()?;
            return Err(Error::NotSupported {
                feature: "add_interrupt_handler",
                reason: "SIGINT does not have its default action in this process".into(),
            });
        }
        // Delivered (the kernel puts the default action back) but not read.
        sig::raise(libc::SIGINT);
        lp.remove_interrupt_handler()?;
        assert_eq!(sig::disposition(libc::SIGINT), libc::SIG_DFL);
        let s = second.clone();
        assert!(lp.add_interrupt_handler(Box::new(move || s.set(true)))?);
        crate::util::run_once(&lp)?;
        crate::util::run_once(&lp)?;
        assert!(!first.get(), "the removed handler ran");
        assert!(!second.get(), "a stale Ctrl-C fired the next handler");
        lp.remove_interrupt_handler()?;
        assert_eq!(sig::disposition(libc::SIGINT), libc::SIG_DFL);
        lp.close()
    }
    #[cfg(not(unix))]
    {
        Err(no_signals())
    }
}

// ----- Unix stream sockets: create_unix_server / create_unix_connection ---------
//
// From CPython's `test_unix_events.py` (`SelectorEventLoopUnixSocketTests`),
// `test_events.py` (`test_create_unix_server`, `test_create_unix_connection`)
// and `test_server.py` (`UnixServerCleanupTests`), on real sockets under the
// temporary directory. The bodies are in `unix_stream` below.

#[cfg(not(unix))]
fn no_unix_sockets() -> Error {
    Error::NotSupported {
        feature: "unix sockets",
        reason: "needs AF_UNIX stream sockets (not on Windows)".into(),
    }
}

/// Runs `unix_stream::$f(ctx)` on Unix; a visible skip elsewhere.
macro_rules! unix_stream_case {
    ($ctx:expr, $f:ident) => {{
        $ctx.require(Feature::UnixSockets)?;
        #[cfg(unix)]
        {
            unix_stream::$f($ctx)
        }
        #[cfg(not(unix))]
        {
            Err(no_unix_sockets())
        }
    }};
}

/// `test_create_unix_server`: a plain client connects to the path and
/// sends; the server's protocol gets `connection_made` and the bytes; its
/// transport closes with `connection_lost(None)` and the client reads EOF.
pub fn test_create_unix_server(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, create_unix_server)
}

/// `test_create_unix_connection`: a loop client and a loop server exchange
/// data both ways; closing the client ends both sides cleanly.
pub fn test_create_unix_connection(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, create_unix_connection)
}

/// `sockname`/`peername` of Unix stream transports: the server side is the
/// path and an unnamed (empty) peer; the client side the reverse.
pub fn test_create_unix_connection_extra_info(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, extra_info)
}

/// `test_create_unix_server_nopath_nosock`: `ValueError("path was not
/// specified, and no sock specified")`.
pub fn test_create_unix_server_nopath_nosock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_nopath_nosock)
}

/// `test_create_unix_server_path_socket_error`: a path and a sock is a
/// `ValueError("path and sock can not be specified at the same time")`.
pub fn test_create_unix_server_path_socket_error(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_path_and_sock)
}

/// `test_create_unix_connection_path_sock`: the same for connections.
pub fn test_create_unix_connection_path_sock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, connection_path_and_sock)
}

/// `test_create_unix_connection_nopath_nosock`: `ValueError("no path and
/// sock were specified")`.
pub fn test_create_unix_connection_nopath_nosock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, connection_nopath_nosock)
}

/// `test_create_unix_server_path_inetsock`: a TCP sock is a `ValueError("A
/// UNIX Domain Stream Socket was expected, got ...")`.
pub fn test_create_unix_server_path_inetsock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_inet_sock)
}

/// `test_create_unix_server_path_dgram`: so is an AF_UNIX datagram sock.
pub fn test_create_unix_server_path_dgram(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_dgram_sock)
}

/// `test_create_unix_connection_path_inetsock`: and a TCP sock given to
/// `create_unix_connection`.
pub fn test_create_unix_connection_path_inetsock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, connection_inet_sock)
}

/// `test_create_unix_server_existing_path_sock`: a stale socket file at the
/// path (its listener gone) is removed and the path bound again.
pub fn test_create_unix_server_existing_path_sock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_existing_path_sock)
}

/// `test_create_unix_server_existing_path_nonsock`: a regular file at the
/// path is left alone: `OSError(EADDRINUSE, "Address '<path>' is already
/// in use")`.
pub fn test_create_unix_server_existing_path_nonsock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_existing_path_nonsock)
}

/// `test_create_unix_connection_pathlike`: connecting to a path where
/// nothing exists is a `FileNotFoundError`.
pub fn test_create_unix_connection_missing_path(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, connection_missing_path)
}

/// `test_unix_server_addr_cleanup`: `close()` removes the socket file the
/// server created, before it returns.
pub fn test_unix_server_addr_cleanup(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_addr_cleanup)
}

/// `test_unix_server_sock_cleanup`: also for a socket bound by the caller
/// and passed as `sock=`.
pub fn test_unix_server_sock_cleanup(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_sock_cleanup)
}

/// `test_unix_server_cleanup_gone`: a file someone else removed already
/// is no error.
pub fn test_unix_server_cleanup_gone(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_cleanup_gone)
}

/// `test_unix_server_cleanup_replaced`: a file someone replaced with their
/// own socket (another inode) is left alone.
pub fn test_unix_server_cleanup_replaced(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_cleanup_replaced)
}

/// `test_unix_server_cleanup_prevented`: `cleanup_socket=False` leaves the
/// file.
pub fn test_unix_server_cleanup_prevented(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_cleanup_prevented)
}

/// Linux's abstract namespace: a path starting with NUL binds no file;
/// clients connect to it; `sockname` is the name, NUL included.
pub fn test_create_unix_server_abstract(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_abstract)
}

/// `Server.close()` stops accepting at once: with the file kept
/// (`cleanup_socket=False`), connecting is refused; connections already
/// made stay open.
pub fn test_unix_server_close_stops_accepting(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_close_stops_accepting)
}

/// Half-close over a Unix socket, as over TCP: the client's `write_eof`
/// reaches the server as `eof_received`; returning true keeps the server's
/// write side open, and its answer still reaches the client.
pub fn test_unix_eof_half_close(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, eof_half_close)
}

/// `eof_received` returning false closes the transport:
/// `connection_lost(None)` follows, and the peer sees EOF.
pub fn test_unix_eof_received_closes(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, eof_received_closes)
}

/// `Server.sockets` is the one listening socket, bound to the path;
/// `is_serving` is true until `close()`, and `wait_closed` completes.
pub fn test_create_unix_server_sockets(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_sockets)
}

/// `start_serving=False`: the socket is bound but not listening (asyncio
/// calls `listen()` in `_start_serving`), so connecting is refused until
/// `start_serving()`.
pub fn test_create_unix_server_start_serving_false(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_start_serving_false)
}

/// `create_unix_connection(sock=...)` wraps a connected AF_UNIX socket.
pub fn test_create_unix_connection_sock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, connection_sock)
}

/// `test_create_unix_server_path_stream_bittype`-style: `create_unix_server
/// (sock=...)` with a bound, non-listening AF_UNIX stream socket serves it.
pub fn test_create_unix_server_sock(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, server_sock)
}

/// A megabyte each way over a Unix connection arrives whole and in order.
pub fn test_unix_large_transfer(ctx: &Ctx) -> Result<()> {
    unix_stream_case!(ctx, large_transfer)
}

#[cfg(unix)]
mod unix_stream {
    use std::cell::{Cell, RefCell};
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use loop_api::events::options::{CreateUnixConnectionOptions, CreateUnixServerOptions};
    use loop_api::events::AbstractServer;
    use loop_api::protocols::{BaseProtocol, Protocol, ProtocolFactory};
    use loop_api::transports::{ExtraInfo, Transport};
    use loop_api::{Error, EventLoopExt, Loop, Result};
    use socket2::{Domain, SockAddr, Socket, Type};

    use crate::util::{expect_value_error, Log, TempPath, Wakeup};
    use crate::Ctx;

    /// Safety net for the cases that run the loop: never how they synchronise.
    const NET: f64 = 10.0;

    #[derive(Clone, Debug)]
    enum Ev {
        Made,
        Data(Vec<u8>),
        Eof,
        Lost(Option<Error>),
    }

    type OnData = Rc<dyn Fn(&Sp, &[u8])>;

    /// A stream protocol that records every callback and wakes the case.
    struct Sp {
        wake: Wakeup,
        ev: Log<Ev>,
        transport: RefCell<Option<Rc<dyn Transport>>>,
        keep_open: Cell<bool>,
        on_data: RefCell<Option<OnData>>,
    }

    impl Sp {
        fn new(wake: &Wakeup) -> Rc<Self> {
            Rc::new(Sp {
                wake: wake.clone(),
                ev: Log::new(),
                transport: RefCell::new(None),
                keep_open: Cell::new(false),
                on_data: RefCell::new(None),
            })
        }

        fn record(&self, e: Ev) {
            self.ev.push(e);
            self.wake.wake();
        }

        fn transport(&self) -> Rc<dyn Transport> {
            self.transport
                .borrow()
                .clone()
                .expect("connection_made was called and connection_lost was not")
        }

        fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
            self.ev.get().iter().filter(|e| f(e)).count()
        }

        fn made(&self) -> usize {
            self.count(|e| matches!(e, Ev::Made))
        }

        fn eofs(&self) -> usize {
            self.count(|e| matches!(e, Ev::Eof))
        }

        fn received(&self) -> Vec<u8> {
            let mut all = Vec::new();
            for e in self.ev.get() {
                if let Ev::Data(d) = e {
                    all.extend_from_slice(&d);
                }
            }
            all
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

        fn wait_received(&self, lp: &Loop, n: usize) -> Result<Vec<u8>> {
            self.wake
                .run_until(lp, NET, "data", || self.received().len() >= n)?;
            Ok(self.received())
        }
    }

    impl BaseProtocol for Sp {
        fn connection_lost(&self, exc: Option<Error>) {
            self.transport.borrow_mut().take();
            self.record(Ev::Lost(exc));
        }
    }

    impl Protocol for Sp {
        fn connection_made(&self, transport: Rc<dyn Transport>) {
            *self.transport.borrow_mut() = Some(transport);
            self.record(Ev::Made);
        }

        fn data_received(&self, data: &[u8]) {
            self.record(Ev::Data(data.to_vec()));
            let hook = self.on_data.borrow().clone();
            if let Some(f) = hook {
                f(self, data);
            }
        }
        fn eof_received(&self) -> bool {
            self.record(Ev::Eof);
            self.keep_open.get()
        }
    }

    /// The server side: one fresh [`Sp`] per accepted connection.
    struct Accepted {
        wake: Wakeup,
        protos: RefCell<Vec<Rc<Sp>>>,
        keep_open: bool,
        on_data: Option<OnData>,
    }

    impl Accepted {
        fn new(wake: &Wakeup) -> Rc<Self> {
            Accepted::with(wake, false, None)
        }

        fn with(wake: &Wakeup, keep_open: bool, on_data: Option<OnData>) -> Rc<Self> {
            Rc::new(Accepted {
                wake: wake.clone(),
                protos: RefCell::new(Vec::new()),
                keep_open,
                on_data,
            })
        }

        fn factory(self: &Rc<Self>) -> ProtocolFactory {
            let me = self.clone();
            Rc::new(move || {
                let p = Sp::new(&me.wake);
                p.keep_open.set(me.keep_open);
                *p.on_data.borrow_mut() = me.on_data.clone();
                me.protos.borrow_mut().push(p.clone());
                p as Rc<dyn Protocol>
            })
        }

        fn len(&self) -> usize {
            self.protos.borrow().len()
        }

        fn get(&self, i: usize) -> Rc<Sp> {
            self.protos.borrow()[i].clone()
        }

        /// Runs until `n` connections were made.
        fn wait(&self, lp: &Loop, n: usize) -> Result<()> {
            self.wake.run_until(lp, NET, "an accepted connection", || {
                self.protos.borrow().iter().filter(|p| p.made() > 0).count() >= n
            })
        }
    }

    fn proto_factory(p: &Rc<Sp>) -> ProtocolFactory {
        let p = p.clone();
        Rc::new(move || p.clone() as Rc<dyn Protocol>)
    }

    fn server_opts() -> CreateUnixServerOptions {
        CreateUnixServerOptions::default()
    }

    fn try_server(
        lp: &Loop,
        factory: ProtocolFactory,
        path: Option<PathBuf>,
        opts: CreateUnixServerOptions,
    ) -> Result<Rc<dyn AbstractServer>> {
        let fut = lp.create_unix_server_dyn(factory, path, opts);
        lp.run_until_complete(fut)
    }

    fn serve(lp: &Loop, acc: &Rc<Accepted>, path: &Path) -> Result<Rc<dyn AbstractServer>> {
        try_server(lp, acc.factory(), Some(path.to_path_buf()), server_opts())
    }

    fn try_connect(
        lp: &Loop,
        factory: ProtocolFactory,
        path: Option<PathBuf>,
        opts: CreateUnixConnectionOptions,
    ) -> Result<(Rc<dyn Transport>, Rc<dyn Protocol>)> {
        let fut = lp.create_unix_connection_dyn(factory, path, opts);
        lp.run_until_complete(fut)
    }

    /// A loop client connected to `path`; checks `connection_made` came first.
    fn connect(lp: &Loop, p: &Rc<Sp>, path: &Path) -> Result<Rc<dyn Transport>> {
        let (t, proto) = try_connect(
            lp,
            proto_factory(p),
            Some(path.to_path_buf()),
            CreateUnixConnectionOptions::default(),
        )?;
        assert!(
            crate::util::same_obj(&proto, p),
            "the pair holds another protocol"
        );
        assert_eq!(p.made(), 1, "connection_made before the result");
        assert!(crate::util::same_obj(&t, &p.transport()));
        Ok(t)
    }

    fn close_server(lp: &Loop, srv: &Rc<dyn AbstractServer>) -> Result<()> {
        srv.close();
        let fut = srv.wait_closed();
        let task = lp.create_task(fut)?;
        crate::util::run_until_done(lp, &*task.as_obj(), NET)?;
        task.result()
    }

    fn info(p: &Path) -> Option<ExtraInfo> {
        Some(ExtraInfo::UnixPath(p.as_os_str().to_owned()))
    }

    fn unnamed() -> Option<ExtraInfo> {
        Some(ExtraInfo::UnixPath(Default::default()))
    }

    fn is_socket(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
    }

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

    const WRONG_SOCK: &str = "A UNIX Domain Stream Socket was expected, got ";

    // ----- serving and connecting ----------------------------------------------------

    pub(super) fn create_unix_server(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("srv");
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = serve(&lp, &acc, path.path())?;
        assert!(is_socket(path.path()), "no socket file at the path");
        let mut client = UnixStream::connect(path.path()).expect("connect");
        client.write_all(b"xxx").expect("write");
        acc.wait(&lp, 1)?;
        let p = acc.get(0);
        assert_eq!(p.made(), 1);
        assert_eq!(p.wait_received(&lp, 3)?, b"xxx");
        p.transport().close();
        p.wait_lost(&lp)?;
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("EOF from the server");
        assert!(rest.is_empty());
        assert_eq!(acc.len(), 1);
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn create_unix_connection(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("conn");
        let w = Wakeup::new();
        let acc = Accepted::with(
            &w,
            false,
            Some(Rc::new(|p: &Sp, data: &[u8]| {
                let mut reply = b"pong:".to_vec();
                reply.extend_from_slice(data);
                p.transport().write(&reply).expect("write");
            })),
        );
        let srv = serve(&lp, &acc, path.path())?;
        let client = Sp::new(&w);
        let t = connect(&lp, &client, path.path())?;
        t.write(b"ping")?;
        assert_eq!(client.wait_received(&lp, 9)?, b"pong:ping");
        acc.wait(&lp, 1)?;
        assert_eq!(acc.get(0).received(), b"ping");
        t.close();
        client.wait_lost(&lp)?;
        // The server side sees EOF, and closes (eof_received returned false).
        let sp = acc.get(0);
        sp.wait_lost(&lp)?;
        assert_eq!(sp.eofs(), 1);
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn extra_info(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("info");
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = serve(&lp, &acc, path.path())?;
        let client = Sp::new(&w);
        let t = connect(&lp, &client, path.path())?;
        acc.wait(&lp, 1)?;
        let st = acc.get(0).transport();
        assert_eq!(
            t.get_extra_info("peername"),
            info(path.path()),
            "client peername"
        );
        assert_eq!(t.get_extra_info("sockname"), unnamed(), "client sockname");
        assert_eq!(
            st.get_extra_info("sockname"),
            info(path.path()),
            "server sockname"
        );
        assert_eq!(st.get_extra_info("peername"), unnamed(), "server peername");
        assert!(matches!(t.get_extra_info("socket"), Some(ExtraInfo::Fd(_))));
        t.close();
        client.wait_lost(&lp)?;
        acc.get(0).wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }

    // ----- argument checks ---------------------------------------------------------

    pub(super) fn server_nopath_nosock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let acc = Accepted::new(&Wakeup::new());
        let r = try_server(&lp, acc.factory(), None, server_opts());
        expect_value_error(r, "path was not specified, and no sock specified");
        lp.close()
    }

    pub(super) fn server_path_and_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let acc = Accepted::new(&Wakeup::new());
        let sock = Rc::new(Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket"));
        let path = TempPath::new("both");
        let r = try_server(
            &lp,
            acc.factory(),
            Some(path.0.clone()),
            CreateUnixServerOptions {
                sock: Some(sock),
                ..server_opts()
            },
        );
        expect_value_error(r, "path and sock can not be specified at the same time");
        assert!(!path.path().exists(), "bound anyway");
        lp.close()
    }

    pub(super) fn connection_path_and_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let (a, _b) = UnixStream::pair().expect("pair");
        let sock = Rc::new(Socket::from(a));
        let r = try_connect(
            &lp,
            proto_factory(&Sp::new(&Wakeup::new())),
            Some(PathBuf::from("/dev/null")),
            CreateUnixConnectionOptions {
                sock: Some(sock),
                ..Default::default()
            },
        );
        expect_value_error(r, "path and sock can not be specified at the same time");
        lp.close()
    }

    pub(super) fn connection_nopath_nosock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let r = try_connect(
            &lp,
            proto_factory(&Sp::new(&Wakeup::new())),
            None,
            CreateUnixConnectionOptions::default(),
        );
        expect_value_error(r, "no path and sock were specified");
        lp.close()
    }

    pub(super) fn server_inet_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let acc = Accepted::new(&Wakeup::new());
        let sock = Rc::new(Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket"));
        let msg = value_error(
            try_server(
                &lp,
                acc.factory(),
                None,
                CreateUnixServerOptions {
                    sock: Some(sock),
                    ..server_opts()
                },
            ),
            "a TCP sock",
        );
        assert!(msg.starts_with(WRONG_SOCK), "message: {msg:?}");
        lp.close()
    }

    pub(super) fn server_dgram_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let acc = Accepted::new(&Wakeup::new());
        let sock = Rc::new(Socket::from(UnixDatagram::unbound().expect("socket")));
        let msg = value_error(
            try_server(
                &lp,
                acc.factory(),
                None,
                CreateUnixServerOptions {
                    sock: Some(sock),
                    ..server_opts()
                },
            ),
            "an AF_UNIX datagram sock",
        );
        assert!(msg.starts_with(WRONG_SOCK), "message: {msg:?}");
        lp.close()
    }

    pub(super) fn connection_inet_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let sock = Rc::new(Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket"));
        let msg = value_error(
            try_connect(
                &lp,
                proto_factory(&Sp::new(&Wakeup::new())),
                None,
                CreateUnixConnectionOptions {
                    sock: Some(sock),
                    ..Default::default()
                },
            ),
            "a TCP sock",
        );
        assert!(msg.starts_with(WRONG_SOCK), "message: {msg:?}");
        lp.close()
    }

    // ----- the socket file ------------------------------------------------------------

    pub(super) fn server_existing_path_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("stale");
        drop(UnixListener::bind(path.path()).expect("bind"));
        assert!(is_socket(path.path()), "the stale socket file is there");
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = serve(&lp, &acc, path.path())?;
        let _client = UnixStream::connect(path.path()).expect("connect to the new server");
        acc.wait(&lp, 1)?;
        acc.get(0).transport().close();
        acc.get(0).wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn server_existing_path_nonsock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("file");
        std::fs::write(path.path(), b"keep me").expect("write");
        let acc = Accepted::new(&Wakeup::new());
        let e = os_error(
            try_server(&lp, acc.factory(), Some(path.0.clone()), server_opts()),
            "binding over a regular file",
        );
        assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
        let msg = e.to_string();
        let expect = format!("Address '{}' is already in use", path.path().display());
        assert!(
            msg.contains(&expect),
            "message {msg:?}, expected {expect:?}"
        );
        assert_eq!(std::fs::read(path.path()).expect("still there"), b"keep me");
        lp.close()
    }

    pub(super) fn connection_missing_path(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("missing");
        let client = Sp::new(&Wakeup::new());
        let e = os_error(
            try_connect(
                &lp,
                proto_factory(&client),
                Some(path.0.clone()),
                CreateUnixConnectionOptions::default(),
            ),
            "connecting to a missing path",
        );
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(client.made(), 0);
        lp.close()
    }

    pub(super) fn server_addr_cleanup(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("cleanup");
        let srv = serve(&lp, &Accepted::new(&Wakeup::new()), path.path())?;
        assert!(is_socket(path.path()));
        srv.close();
        assert!(!path.path().exists(), "close() left the socket file");
        close_server(&lp, &srv)?;
        lp.close()
    }

    /// An AF_UNIX stream socket bound to `p`, not listening.
    fn bound_stream(p: &Path) -> Rc<Socket> {
        let s = Socket::new(Domain::UNIX, Type::STREAM, None).expect("socket");
        s.bind(&SockAddr::unix(p).expect("addr")).expect("bind");
        Rc::new(s)
    }

    pub(super) fn server_sock_cleanup(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("sockclean");
        let sock = bound_stream(path.path());
        let srv = try_server(
            &lp,
            Accepted::new(&Wakeup::new()).factory(),
            None,
            CreateUnixServerOptions {
                sock: Some(sock),
                ..server_opts()
            },
        )?;
        srv.close();
        assert!(!path.path().exists(), "close() left the socket file");
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn server_cleanup_gone(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("gone");
        let sock = bound_stream(path.path());
        let srv = try_server(
            &lp,
            Accepted::new(&Wakeup::new()).factory(),
            None,
            CreateUnixServerOptions {
                sock: Some(sock),
                ..server_opts()
            },
        )?;
        std::fs::remove_file(path.path()).expect("unlink");
        srv.close();
        assert!(!path.path().exists());
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn server_cleanup_replaced(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("replaced");
        let srv = serve(&lp, &Accepted::new(&Wakeup::new()), path.path())?;
        let ino = std::fs::metadata(path.path()).expect("stat").ino();
        std::fs::remove_file(path.path()).expect("unlink");
        let theirs = UnixListener::bind(path.path()).expect("bind theirs");
        assert_ne!(std::fs::metadata(path.path()).expect("stat").ino(), ino);
        srv.close();
        assert!(
            is_socket(path.path()),
            "close() removed someone else's socket"
        );
        let _c = UnixStream::connect(path.path()).expect("theirs still works");
        drop(theirs);
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn server_cleanup_prevented(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("kept");
        let srv = try_server(
            &lp,
            Accepted::new(&Wakeup::new()).factory(),
            Some(path.0.clone()),
            CreateUnixServerOptions {
                cleanup_socket: false,
                ..server_opts()
            },
        )?;
        srv.close();
        close_server(&lp, &srv)?;
        assert!(
            is_socket(path.path()),
            "cleanup_socket=False removed the file"
        );
        lp.close()
    }

    pub(super) fn server_abstract(ctx: &Ctx) -> Result<()> {
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = ctx;
            Err(Error::NotSupported {
                feature: "abstract unix sockets",
                reason: "the abstract namespace is Linux-only".into(),
            })
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::unix::ffi::OsStringExt;

            let lp = ctx.new_loop();
            let tag = TempPath::new("abstract");
            let name = tag
                .path()
                .file_name()
                .expect("name")
                .to_str()
                .expect("utf-8")
                .to_string();
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(name.as_bytes());
            let path = PathBuf::from(std::ffi::OsString::from_vec(bytes));
            let w = Wakeup::new();
            let acc = Accepted::new(&w);
            let srv = serve(&lp, &acc, &path)?;
            let sockname = srv.sockets()[0].local_addr().expect("sockname");
            assert_eq!(
                sockname.as_abstract_namespace(),
                Some(name.as_bytes()),
                "bound in the abstract namespace"
            );
            let client = Sp::new(&w);
            let t = connect(&lp, &client, &path)?;
            acc.wait(&lp, 1)?;
            let expect = Some(ExtraInfo::UnixPath(format!("\0{name}").into()));
            assert_eq!(t.get_extra_info("peername"), expect, "client peername");
            assert_eq!(
                acc.get(0).transport().get_extra_info("sockname"),
                expect,
                "server sockname"
            );
            t.write(b"abs")?;
            assert_eq!(acc.get(0).wait_received(&lp, 3)?, b"abs");
            assert!(!tag.path().exists(), "a file was created");
            assert!(!Path::new(&name).exists(), "a file was created");
            t.close();
            client.wait_lost(&lp)?;
            acc.get(0).wait_lost(&lp)?;
            close_server(&lp, &srv)?;
            lp.close()
        }
    }

    // ----- serving ---------------------------------------------------------------------

    pub(super) fn server_close_stops_accepting(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("stop");
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = try_server(
            &lp,
            acc.factory(),
            Some(path.0.clone()),
            CreateUnixServerOptions {
                cleanup_socket: false,
                ..server_opts()
            },
        )?;
        let client = Sp::new(&w);
        let t = connect(&lp, &client, path.path())?;
        acc.wait(&lp, 1)?;
        assert!(srv.is_serving());
        srv.close();
        assert!(!srv.is_serving());
        let r = UnixStream::connect(path.path());
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "connecting after close: {r:?}"
        );
        // The connection made before is still open.
        t.write(b"still")?;
        assert_eq!(acc.get(0).wait_received(&lp, 5)?, b"still");
        assert!(acc.get(0).lost().is_empty());
        t.close();
        client.wait_lost(&lp)?;
        acc.get(0).wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        assert_eq!(acc.len(), 1);
        lp.close()
    }

    pub(super) fn eof_half_close(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("halfclose");
        let w = Wakeup::new();
        let acc = Accepted::with(&w, true, None);
        let srv = serve(&lp, &acc, path.path())?;
        let client = Sp::new(&w);
        let t = connect(&lp, &client, path.path())?;
        assert!(t.can_write_eof());
        t.write(b"request")?;
        t.write_eof()?;
        acc.wait(&lp, 1)?;
        let sp = acc.get(0);
        w.run_until(&lp, NET, "eof_received", || sp.eofs() == 1)?;
        assert_eq!(sp.received(), b"request");
        assert!(
            sp.lost().is_empty(),
            "eof_received returned true, yet it closed"
        );
        let st = sp.transport();
        assert!(!st.is_closing());
        st.write(b"response")?;
        st.close();
        assert_eq!(client.wait_received(&lp, 8)?, b"response");
        client.wait_lost(&lp)?;
        assert_eq!(client.eofs(), 1);
        sp.wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn eof_received_closes(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("eofclose");
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = serve(&lp, &acc, path.path())?;
        let client = Sp::new(&w);
        client.keep_open.set(true);
        let t = connect(&lp, &client, path.path())?;
        t.write_eof()?;
        acc.wait(&lp, 1)?;
        let sp = acc.get(0);
        sp.wait_lost(&lp)?;
        assert_eq!(sp.eofs(), 1);
        // The server's close is the client's EOF.
        w.run_until(&lp, NET, "the client's eof_received", || client.eofs() == 1)?;
        t.close();
        client.wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn server_sockets(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("sockets");
        let srv = serve(&lp, &Accepted::new(&Wakeup::new()), path.path())?;
        let socks = srv.sockets();
        assert_eq!(socks.len(), 1);
        let name = socks[0].local_addr().expect("sockname");
        assert_eq!(name.as_pathname(), Some(path.path()));
        assert_eq!(socks[0].r#type().expect("SO_TYPE"), Type::STREAM);
        assert!(srv.is_serving());
        close_server(&lp, &srv)?;
        assert!(!srv.is_serving());
        lp.close()
    }

    pub(super) fn server_start_serving_false(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("notyet");
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = try_server(
            &lp,
            acc.factory(),
            Some(path.0.clone()),
            CreateUnixServerOptions {
                start_serving: false,
                ..server_opts()
            },
        )?;
        assert!(!srv.is_serving());
        assert!(is_socket(path.path()), "bound at creation");
        let r = UnixStream::connect(path.path());
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "connecting before start_serving: {r:?}"
        );
        let fut = srv.start_serving();
        lp.run_until_complete(fut)?;
        assert!(srv.is_serving());
        let _c = UnixStream::connect(path.path()).expect("connect once serving");
        acc.wait(&lp, 1)?;
        acc.get(0).transport().close();
        acc.get(0).wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn connection_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let (a, mut b) = UnixStream::pair().expect("pair");
        let w = Wakeup::new();
        let client = Sp::new(&w);
        let (t, _) = try_connect(
            &lp,
            proto_factory(&client),
            None,
            CreateUnixConnectionOptions {
                sock: Some(Rc::new(Socket::from(a))),
                ..Default::default()
            },
        )?;
        assert_eq!(client.made(), 1);
        t.write(b"through sock")?;
        // A completion-based backend sends when the loop next runs.
        let empty = t._make_empty_waiter().expect("socket transports can tell");
        crate::util::run_until_done(&lp, &*empty.as_obj(), 10.0)?;
        b.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 12];
        b.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"through sock");
        b.write_all(b"back").expect("write");
        assert_eq!(client.wait_received(&lp, 4)?, b"back");
        drop(b);
        client.wait_lost(&lp)?;
        assert_eq!(client.eofs(), 1);
        lp.close()
    }

    pub(super) fn server_sock(ctx: &Ctx) -> Result<()> {
        let lp = ctx.new_loop();
        let path = TempPath::new("srvsock");
        let sock = bound_stream(path.path());
        let w = Wakeup::new();
        let acc = Accepted::new(&w);
        let srv = try_server(
            &lp,
            acc.factory(),
            None,
            CreateUnixServerOptions {
                sock: Some(sock),
                ..server_opts()
            },
        )?;
        let client = Sp::new(&w);
        let t = connect(&lp, &client, path.path())?;
        t.write(b"hi")?;
        acc.wait(&lp, 1)?;
        assert_eq!(acc.get(0).wait_received(&lp, 2)?, b"hi");
        t.close();
        client.wait_lost(&lp)?;
        acc.get(0).wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }

    pub(super) fn large_transfer(ctx: &Ctx) -> Result<()> {
        const SIZE: usize = 1 << 20;
        let lp = ctx.new_loop();
        let path = TempPath::new("large");
        let w = Wakeup::new();
        // The server answers with the same megabyte once it has it all.
        let acc = Accepted::with(
            &w,
            false,
            Some(Rc::new(|p: &Sp, _: &[u8]| {
                let all = p.received();
                if all.len() == SIZE {
                    p.transport().write(&all).expect("write back");
                }
            })),
        );
        let srv = serve(&lp, &acc, path.path())?;
        let client = Sp::new(&w);
        let t = connect(&lp, &client, path.path())?;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        t.write(&data)?;
        let back = client.wait_received(&lp, SIZE)?;
        assert_eq!(back.len(), SIZE);
        assert!(back == data, "the data came back altered");
        assert_eq!(t.get_write_buffer_size(), 0);
        t.close();
        client.wait_lost(&lp)?;
        acc.get(0).wait_lost(&lp)?;
        close_server(&lp, &srv)?;
        lp.close()
    }
}
