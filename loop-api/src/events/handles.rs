//! `Handle` and `TimerHandle`: a scheduled callback, cancellable.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::contextvars::{Context, Snapshot};
use crate::exceptions::Error;

/// A callback that runs once (`call_soon`, `call_later`, ...). asyncio's
/// `callback, *args` become one closure that captures the arguments.
pub type Callback = Box<dyn FnOnce() + 'static>;
/// A callback that may run many times (`add_reader`, signal handlers).
pub type RepeatCallback = Box<dyn FnMut() + 'static>;
/// A callback handed in from another thread (`call_soon_threadsafe`).
pub type SendCallback = Box<dyn FnOnce() + Send + 'static>;

enum Body {
    Once(Callback),
    Repeat(RepeatCallback),
}

enum HandleContext {
    /// The caller's context, captured lazily as a cheap snapshot.
    Snapshot(Snapshot),
    /// A `Context` given by the caller, or made on `get_context()`.
    Explicit(Context),
}

pub(crate) struct TimerInfo {
    pub(crate) when: f64,
    pub(crate) scheduled: Cell<bool>,
    /// The loop's count of cancelled timers still in its heap.
    pub(crate) cancelled_count: Rc<Cell<usize>>,
}

pub(crate) struct HandleInner {
    body: RefCell<Option<Body>>,
    cancelled: Cell<bool>,
    context: RefCell<HandleContext>,
    pub(crate) timer: Option<TimerInfo>,
}

/// `asyncio.Handle`: returned by `call_soon`, `add_reader`, ...
///
/// Cloning gives another reference to the same handle.
#[derive(Clone)]
pub struct Handle(pub(crate) Rc<HandleInner>);

/// `asyncio.TimerHandle`: returned by `call_later` and `call_at`.
#[derive(Clone)]
pub struct TimerHandle(pub(crate) Handle);

impl Handle {
    fn build(body: Body, context: Option<Context>, timer: Option<TimerInfo>) -> Self {
        let context = match context {
            Some(c) => HandleContext::Explicit(c),
            None => HandleContext::Snapshot(Snapshot::capture()),
        };
        Handle(Rc::new(HandleInner {
            body: RefCell::new(Some(body)),
            cancelled: Cell::new(false),
            context: RefCell::new(context),
            timer,
        }))
    }

    /// A one-shot handle, run in `context` (a copy of the current one if `None`).
    pub fn new(callback: Callback, context: Option<Context>) -> Self {
        Self::build(Body::Once(callback), context, None)
    }

    /// A handle that can run repeatedly until cancelled (readers, writers, signals).
    pub fn new_repeating(callback: RepeatCallback, context: Option<Context>) -> Self {
        Self::build(Body::Repeat(callback), context, None)
    }

    /// Cancels the callback; a cancelled handle never runs again. The
    /// callback (and what it captured) is dropped at once unless it is
    /// running right now.
    pub fn cancel(&self) {
        if self.0.cancelled.replace(true) {
            return;
        }
        if let Some(t) = &self.0.timer {
            if t.scheduled.get() {
                t.cancelled_count.set(t.cancelled_count.get() + 1);
            }
        }
        let body = self.0.body.borrow_mut().take();
        drop(body);
    }

    /// True once [`cancel`](Handle::cancel) was called.
    pub fn cancelled(&self) -> bool {
        self.0.cancelled.get()
    }

    /// The context the callback runs in.
    pub fn get_context(&self) -> Context {
        let mut ctx = self.0.context.borrow_mut();
        if let HandleContext::Snapshot(s) = &*ctx {
            *ctx = HandleContext::Explicit(Context::from_snapshot(s.clone()));
        }
        match &*ctx {
            HandleContext::Explicit(c) => c.clone(),
            HandleContext::Snapshot(_) => unreachable!(),
        }
    }

    /// True when both name the same handle.
    pub fn ptr_eq(&self, other: &Handle) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Runs the callback in its context, catching a panic.
    ///
    /// A one-shot body is consumed; a repeating one is put back unless the
    /// handle was cancelled while it ran.
    pub fn run(&self) -> Result<(), Error> {
        if self.cancelled() {
            return Ok(());
        }
        let Some(body) = self.0.body.borrow_mut().take() else {
            return Ok(());
        };
        match body {
            Body::Once(f) => self.in_context(move || catch_unwind(AssertUnwindSafe(f)))?,
            Body::Repeat(mut f) => {
                let r = self.in_context(|| catch_unwind(AssertUnwindSafe(&mut f)));
                if !self.cancelled() {
                    *self.0.body.borrow_mut() = Some(Body::Repeat(f));
                }
                r?
            }
        }
        .map_err(Error::from_panic)
    }

    fn in_context<R>(&self, f: impl FnOnce() -> R) -> Result<R, Error> {
        let ctx = self.0.context.borrow();
        match &*ctx {
            HandleContext::Snapshot(s) => {
                let s = s.clone();
                drop(ctx);
                Ok(s.run(f))
            }
            HandleContext::Explicit(c) => {
                let c = c.clone();
                drop(ctx);
                c.run(f)
            }
        }
    }
}

impl TimerHandle {
    pub(crate) fn new(
        when: f64,
        callback: Callback,
        context: Option<Context>,
        cancelled_count: Rc<Cell<usize>>,
    ) -> Self {
        TimerHandle(Handle::build(
            Body::Once(callback),
            context,
            Some(TimerInfo {
                when,
                scheduled: Cell::new(false),
                cancelled_count,
            }),
        ))
    }

    /// The loop time at which the callback is due, in seconds.
    pub fn when(&self) -> f64 {
        self.timer().when
    }

    pub(crate) fn timer(&self) -> &TimerInfo {
        self.0
             .0
            .timer
            .as_ref()
            .expect("a TimerHandle has timer info")
    }

    /// Cancels the callback.
    pub fn cancel(&self) {
        self.0.cancel()
    }

    /// True once cancelled.
    pub fn cancelled(&self) -> bool {
        self.0.cancelled()
    }

    /// The context the callback runs in.
    pub fn get_context(&self) -> Context {
        self.0.get_context()
    }

    /// The plain [`Handle`] view of this timer.
    pub fn as_handle(&self) -> &Handle {
        &self.0
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.cancelled() { " cancelled" } else { "" };
        match &self.0.timer {
            Some(t) => write!(
                f,
                "<TimerHandle{state} when={:.6} {:p}>",
                t.when,
                Rc::as_ptr(&self.0)
            ),
            None => write!(f, "<Handle{state} {:p}>", Rc::as_ptr(&self.0)),
        }
    }
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for TimerHandle {
    fn eq(&self, other: &Self) -> bool {
        self.when() == other.when()
    }
}

impl PartialOrd for TimerHandle {
    /// asyncio orders timer handles by `when`.
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.when().partial_cmp(&other.when())
    }
}
