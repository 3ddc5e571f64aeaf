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
            expect_value_error(lp.add_signal_handler(sig, Box::new(|| {})), &msg);
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
        lp.add_signal_handler(
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
                lp.add_signal_handler(s, Box::new(|| {})),
                &format!("sig {s} cannot be caught"),
            );
            assert!(!lp.remove_signal_handler(s)?);
        }
        expect_runtime(
            lp.add_signal_handler(9, Box::new(|| {})),
            "sig 9 cannot be caught",
        );
        let (calls, cb) = sig::counter(&lp, 1);
        lp.add_signal_handler(libc::SIGUSR2, cb)?;
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
        lp.add_signal_handler(libc::SIGHUP, Box::new(move || drop(c.clone())))?;
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
        lp.add_signal_handler(libc::SIGUSR2, cb)?;
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
        lp.add_signal_handler(libc::SIGUSR1, Box::new(move || drop(c.clone())))?;
        let c = captured.clone();
        lp.add_signal_handler(libc::SIGHUP, Box::new(move || drop(c.clone())))?;
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
        expect_closed(lp.add_signal_handler(libc::SIGUSR1, Box::new(|| {})));
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
        lp.add_signal_handler(libc::SIGUSR1, cb)?;
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
        lp.add_signal_handler(
            libc::SIGUSR2,
            Box::new(move || {
                let _keep = &c;
                l.push("old");
            }),
        )?;
        let (l, lp2) = (log.clone(), lp.clone());
        lp.add_signal_handler(
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
        lp.add_signal_handler(libc::SIGHUP, cb)?;
        let sender = std::rc::Rc::new(std::cell::RefCell::new(None));
        let s = sender.clone();
        lp.call_soon(
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
        lp.add_signal_handler(
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
