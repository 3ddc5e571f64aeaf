//! A loop for deterministic tests: the generic core on a driver with
//! virtual time (asyncio's test `TestLoop`, tokio's `time::pause()`).
//!
//! [`TestDriver`] does no OS I/O. Its clock starts at 0 and moves only when
//! the loop would block: when nothing is ready, `poll` jumps the clock to
//! the next timer's deadline and returns at once, so timers fire in order,
//! exactly at their deadlines, without sleeping. A protocol's timeouts, a
//! task's `sleep(3600.0)` or a retry back-off run in microseconds of real
//! time, and run the same way every time.
//!
//! ```
//! use loop_api::{sleep, AbstractEventLoop, EventLoopExt};
//!
//! let lp = loop_api::test_utils::new_test_loop();
//! let slept = lp.run_until_complete(async {
//!     sleep(3600.0).await?; // an hour of loop time, no real waiting
//!     Ok(loop_api::get_running_loop()?.time())
//! });
//! assert_eq!(slept.unwrap(), 3600.0);
//! lp.close().unwrap();
//! ```
//!
//! # Ground rules
//! - Time moves only inside the loop's wait: never during a callback, and
//!   never while callbacks are ready. Tests can also move it by hand:
//!   `lp.with_driver(|d| d.advance(5.0))` (asyncio's `advance_time`).
//! - With nothing scheduled at all, the loop really waits, for a
//!   `call_soon_threadsafe` from another thread (the executor's results
//!   arrive that way). Work on other threads does not hold the clock back:
//!   a pending timer fires as soon as the loop would block, whether or not
//!   a worker thread is still busy, so await such work before relying on a
//!   timer that races it.
//! - There is no readiness: `add_reader`, `add_writer` and everything built
//!   on them (socket transports, the `sock_*` methods) fail with
//!   [`Error::NotSupported`]. Drive protocols by hand, from callbacks.

use std::io;
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::base_events::BaseEventLoop;
use crate::driver::{Driver, IoEvent, Notify, VirtualClock};
use crate::events::{Loop, RawFd};
use crate::exceptions::{Error, Result};
use crate::selector_events::SelectorIo;

/// The test loop's type.
pub type TestEventLoop = BaseEventLoop<TestDriver>;

/// A new test loop, its clock at 0.
pub fn new_test_loop() -> Rc<TestEventLoop> {
    BaseEventLoop::new(TestDriver::new())
}

/// A new test loop as a `dyn` [`Loop`] (a `loop_factory`).
pub fn test_loop_factory() -> Result<Loop> {
    Ok(new_test_loop())
}

/// The cross-thread wakeup: a flag and a condition variable.
#[derive(Default)]
struct Wake {
    notified: Mutex<bool>,
    cond: Condvar,
}

impl Notify for Wake {
    fn notify(&self) -> io::Result<()> {
        *self.notified.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cond.notify_one();
        Ok(())
    }
}

/// A driver with virtual time and no OS I/O. See the module docs.
pub struct TestDriver {
    clock: Rc<VirtualClock>,
    wake: Arc<Wake>,
}

impl Default for TestDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDriver {
    /// A driver whose clock reads 0.
    pub fn new() -> Self {
        TestDriver {
            clock: VirtualClock::new(0.0),
            wake: Arc::default(),
        }
    }

    /// Moves the loop's clock forward by `seconds` (asyncio's
    /// `TestLoop.advance_time`); timers now due run in the next iteration.
    pub fn advance(&self, seconds: f64) {
        self.clock.advance(seconds);
    }

    /// The loop's clock.
    pub fn now(&self) -> f64 {
        self.clock.now()
    }
}

impl Driver for TestDriver {
    type Io = SelectorIo;

    fn name(&self) -> &'static str {
        "test"
    }

    fn poll(&mut self, timeout: Option<Duration>, _events: &mut Vec<IoEvent>) -> io::Result<()> {
        let mut notified = self
            .wake
            .notified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if std::mem::take(&mut *notified) {
            return Ok(());
        }
        match timeout {
            Some(t) if t.is_zero() => {}
            // The loop would block until a timer: it is due now, to the
            // nanosecond (its deadline, not now + a rounded timeout).
            Some(t) => match self.clock.deadline() {
                Some(when) => self.clock.advance_to(when),
                None => self.clock.advance(t.as_secs_f64()),
            },
            // Nothing scheduled: only another thread can bring work.
            None => {
                while !*notified {
                    notified = self
                        .wake
                        .cond
                        .wait(notified)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                *notified = false;
            }
        }
        Ok(())
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        self.wake.clone()
    }

    fn set_interest(&mut self, _fd: RawFd, readable: bool, writable: bool) -> Result<()> {
        if !readable && !writable {
            return Ok(());
        }
        Err(Error::NotSupported {
            feature: "readiness",
            reason: "the test loop does no OS I/O: it runs callbacks and timers in virtual time"
                .into(),
        })
    }

    fn clock(&self) -> Option<Rc<VirtualClock>> {
        Some(self.clock.clone())
    }
}
