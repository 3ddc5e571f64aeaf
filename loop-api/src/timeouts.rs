//! asyncio's `timeouts` and `wait_for`: bounding how long a coroutine may
//! take.
//!
//! ```no_run
//! # use loop_api::timeouts::{timeout, Timeout};
//! # async fn demo() -> loop_api::Result<()> {
//! // asyncio: `async with asyncio.timeout(1.0): await work()`
//! timeout(Some(1.0), loop_api::sleep(0.5)).await?;
//!
//! // A deadline the body moves (asyncio's `cm.reschedule(...)`):
//! let tm = Timeout::new(None);
//! let handle = tm.clone();
//! tm.run(async move {
//!     let lp = loop_api::get_running_loop()?;
//!     handle.reschedule(Some(lp.time() + 2.0))?;
//!     loop_api::sleep(1.0).await
//! })
//! .await?;
//! # Ok(()) }
//! ```
//!
//! When the deadline passes, the body is cancelled as asyncio cancels it
//! (see `cancel_scope`): a body waiting on a loop future sees
//! `Err(Cancelled)` there and may clean up; one waiting on anything else is
//! dropped. Either way the caller gets [`Error::Timeout`], unless the task
//! was also cancelled from outside, which stays `Err(Cancelled)`, or the
//! body caught the cancellation and returned something else, which is
//! returned.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use crate::cancel_scope::{Outcome, Scope, ScopeState};
use crate::events::{get_running_loop, EventLoopExt, Loop, TimerHandle};
use crate::exceptions::{Error, Result};

/// Where a [`Timeout`] is in its life (asyncio's `_State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Created,
    Entered,
    Expiring,
    Expired,
    Exited,
}

struct Inner {
    when: Cell<Option<f64>>,
    state: Cell<State>,
    timer: RefCell<Option<TimerHandle>>,
    /// The running body's scope, to cancel when the deadline passes.
    scope: RefCell<Option<Rc<ScopeState>>>,
    lp: RefCell<Option<Loop>>,
}

/// asyncio's `Timeout`: a deadline, in loop time, for one body, which the
/// body (or anyone holding a clone) may move.
#[derive(Clone)]
pub struct Timeout(Rc<Inner>);

impl Timeout {
    /// A deadline at loop time `when`; `None` for none yet.
    pub fn new(when: Option<f64>) -> Self {
        Timeout(Rc::new(Inner {
            when: Cell::new(when),
            state: Cell::new(State::Created),
            timer: RefCell::new(None),
            scope: RefCell::new(None),
            lp: RefCell::new(None),
        }))
    }

    /// The deadline.
    pub fn when(&self) -> Option<f64> {
        self.0.when.get()
    }

    /// True once the deadline passed while the body ran.
    pub fn expired(&self) -> bool {
        matches!(self.0.state.get(), State::Expiring | State::Expired)
    }

    /// Moves the deadline (`None`: no deadline). A deadline already past
    /// expires at the loop's next iteration. `RuntimeError` before the body
    /// runs or once the timeout expired or exited, as in asyncio.
    pub fn reschedule(&self, when: Option<f64>) -> Result<()> {
        match self.0.state.get() {
            State::Entered => {}
            State::Created => {
                return Err(Error::runtime("Timeout has not been entered"));
            }
            s => {
                return Err(Error::runtime(format!(
                    "Cannot change state of {} Timeout",
                    state_name(s)
                )))
            }
        }
        self.0.when.set(when);
        if let Some(t) = self.0.timer.borrow_mut().take() {
            t.cancel();
        }
        let Some(when) = when else { return Ok(()) };
        let lp = self
            .0
            .lp
            .borrow()
            .clone()
            .expect("an entered timeout has its loop");
        let me = Rc::downgrade(&self.0);
        let fire = move || {
            if let Some(inner) = me.upgrade() {
                Timeout(inner).on_timeout();
            }
        };
        let handle = if when <= lp.time() {
            // asyncio: call_soon, not call_at, for a deadline already past.
            lp.call_at(lp.time(), fire)?
        } else {
            lp.call_at(when, fire)?
        };
        *self.0.timer.borrow_mut() = Some(handle);
        Ok(())
    }

    fn on_timeout(&self) {
        if self.0.state.get() != State::Entered {
            return;
        }
        self.0.state.set(State::Expiring);
        self.0.timer.borrow_mut().take();
        if let Some(scope) = self.0.scope.borrow().clone() {
            scope.request_cancel();
        }
    }

    /// Runs `body` under this deadline. `RuntimeError` if this timeout
    /// already ran a body (asyncio: "Timeout has already been entered").
    pub async fn run<T>(&self, body: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if self.0.state.get() != State::Created {
            return Err(Error::runtime("Timeout has already been entered"));
        }
        let lp = get_running_loop()?;
        let scope = Scope::new(body);
        let st = scope.state.clone();
        *self.0.lp.borrow_mut() = Some(lp);
        *self.0.scope.borrow_mut() = Some(st.clone());
        self.0.state.set(State::Entered);
        let cancelling_before = current_cancelling();
        self.reschedule(self.0.when.get())?;
        let outcome = scope.await;
        if let Some(t) = self.0.timer.borrow_mut().take() {
            t.cancel();
        }
        self.0.scope.borrow_mut().take();
        let expiring = self.0.state.get() == State::Expiring;
        self.0.state.set(if expiring {
            State::Expired
        } else {
            State::Exited
        });
        match outcome {
            Outcome::Dropped => Err(Error::Timeout),
            Outcome::Returned(r) if st.delivered() => {
                let left = st.task().map_or(0, |t| t.uncancel());
                match r {
                    Err(Error::Cancelled(_)) if left <= cancelling_before => Err(Error::Timeout),
                    other => other,
                }
            }
            Outcome::Returned(r) => r,
        }
    }
}

/// The current task's pending cancellation requests.
fn current_cancelling() -> u32 {
    crate::tasks::current_task().map_or(0, |t| t.cancelling())
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Created => "created",
        State::Entered => "active",
        State::Expiring => "expiring",
        State::Expired => "expired",
        State::Exited => "finished",
    }
}

impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = state_name(self.0.state.get());
        match (self.0.state.get(), self.when()) {
            (State::Entered, Some(w)) => write!(f, "<Timeout [{state}] when={w:.3}>"),
            _ => write!(f, "<Timeout [{state}]>"),
        }
    }
}

/// `asyncio.timeout(delay)`: runs `body`, and cancels it after `delay`
/// seconds (`None`: no limit), which returns [`Error::Timeout`].
pub async fn timeout<T>(
    delay: Option<f64>,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lp = get_running_loop()?;
    Timeout::new(delay.map(|d| lp.time() + d)).run(body).await
}

/// `asyncio.timeout_at(when)`: as [`timeout`], with a deadline in loop
/// time.
pub async fn timeout_at<T>(
    when: Option<f64>,
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    Timeout::new(when).run(body).await
}

/// `asyncio.wait_for(aw, timeout)`: awaits `aw`, cancelling it after
/// `timeout` seconds (`None`: no limit) with [`Error::Timeout`].
///
/// A [`Task`](crate::Task) awaited this way is cancelled on timeout and
/// waited for, as in asyncio; a plain future is cancelled as a
/// [`timeout`] body is. With a timeout of zero or less the deadline has
/// passed already: a task that is done gives its result, anything else is
/// cancelled at its first wait.
pub async fn wait_for<T, A>(aw: A, timeout_secs: Option<f64>) -> Result<T>
where
    A: std::future::IntoFuture<Output = Result<T>>,
{
    timeout(timeout_secs, aw.into_future()).await
}
