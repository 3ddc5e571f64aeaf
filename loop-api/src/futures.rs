//! `asyncio.Future`: a result that will be set later, bound to one loop.
//!
//! # Awaiting
//! Awaiting a [`Future`] yields `Result<T, Error>`: the result, the
//! exception, or `Err(Error::Cancelled)`. `fut.await` moves the result out
//! (no `Clone` needed); `(&fut).await` clones it, as does [`Future::result`].
//!
//! # Done callbacks
//! As in asyncio, done callbacks are never called inline: when the future
//! completes, each is scheduled with `call_soon`, in the order added.
//! `remove_done_callback` takes the id `add_done_callback` returned (Rust
//! closures have no identity to compare).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context as TaskContext, Poll, Waker};

use crate::contextvars::Context;
use crate::events::{ExceptionContext, Loop};
use crate::exceptions::{Error, Result};
use crate::tasks;

/// The id of a done callback, for `remove_done_callback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallbackId(u64);

/// What every future and task offers without its result type: used for
/// `all_tasks`, exception-handler contexts, and cancellation.
pub trait FutureObj {
    /// True once it has a result, an exception, or was cancelled.
    fn done(&self) -> bool;
    /// True if cancelled.
    fn cancelled(&self) -> bool;
    /// Requests cancellation with an optional message; false if already done.
    fn cancel(&self, msg: Option<String>) -> bool;
    /// The exception, marking it retrieved (`None` if none or not done;
    /// `Some(Cancelled)` if cancelled).
    fn exception_erased(&self) -> Option<Error>;
    /// Schedules `callback` once done, like `add_done_callback`.
    fn add_done_callback_erased(&self, callback: Box<dyn FnOnce()>) -> CallbackId;
    /// Removes a done callback; how many were removed.
    fn remove_done_callback(&self, id: CallbackId) -> usize;
    /// The owning loop.
    fn get_loop(&self) -> Loop;
    /// asyncio-like `repr()`.
    fn repr(&self) -> String;
}

pub(crate) enum State<T> {
    Pending,
    Finished(T),
    /// The result was moved out by an owning `await` or `run_until_complete`.
    Taken,
    Exception(Error),
    Cancelled(Option<String>),
}

impl<T> State<T> {
    fn name(&self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Cancelled(_) => "CANCELLED",
            _ => "FINISHED",
        }
    }
}

enum Waiter<H> {
    /// A user's done callback.
    Callback(CallbackId, Box<dyn FnOnce(&H)>, Option<Context>),
    /// A task of this loop awaiting the future: woken without a `Waker`,
    /// and only if no step of it is scheduled already.
    Task(Rc<dyn tasks::TaskObj>),
    /// Any other awaiter.
    Waker(Waker),
}

/// The waiters of a future, in the order added. Most futures have at most
/// one (the task awaiting it), which is stored inline: no allocation.
enum Waiters<H> {
    Empty,
    One(Waiter<H>),
    Many(Vec<Waiter<H>>),
}

impl<H> Waiters<H> {
    fn push(&mut self, w: Waiter<H>) {
        match std::mem::replace(self, Waiters::Empty) {
            Waiters::Empty => *self = Waiters::One(w),
            Waiters::One(first) => *self = Waiters::Many(vec![first, w]),
            Waiters::Many(mut v) => {
                v.push(w);
                *self = Waiters::Many(v);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Waiters::Empty => 0,
            Waiters::One(_) => 1,
            Waiters::Many(v) => v.len(),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Waiter<H>) -> bool) {
        match self {
            Waiters::Empty => {}
            Waiters::One(w) => {
                if !keep(w) {
                    *self = Waiters::Empty;
                }
            }
            Waiters::Many(v) => v.retain(keep),
        }
    }

    fn any(&self, mut f: impl FnMut(&Waiter<H>) -> bool) -> bool {
        match self {
            Waiters::Empty => false,
            Waiters::One(w) => f(w),
            Waiters::Many(v) => v.iter().any(f),
        }
    }

    /// Calls `f` on each waiter, in order, consuming them.
    fn for_each(self, mut f: impl FnMut(Waiter<H>)) {
        match self {
            Waiters::Empty => {}
            Waiters::One(w) => f(w),
            Waiters::Many(v) => v.into_iter().for_each(f),
        }
    }
}

/// The state shared by [`Future`] and [`crate::tasks::Task`]: the outcome
/// and the waiters. `H` is the handle passed to done callbacks.
pub(crate) struct FutureState<T, H> {
    pub(crate) lp: Loop,
    state: RefCell<State<T>>,
    waiters: RefCell<Waiters<H>>,
    next_id: Cell<u64>,
    /// Set with an exception; cleared once someone looks at it. Still set
    /// when dropped: "exception was never retrieved".
    log_traceback: Cell<bool>,
    /// "Future" or "Task", for reports.
    kind: &'static str,
}

impl<T, H: Clone + 'static> FutureState<T, H> {
    pub(crate) fn new(lp: Loop, kind: &'static str) -> Self {
        FutureState {
            lp,
            state: RefCell::new(State::Pending),
            waiters: RefCell::new(Waiters::Empty),
            next_id: Cell::new(0),
            log_traceback: Cell::new(false),
            kind,
        }
    }

    pub(crate) fn done(&self) -> bool {
        !matches!(*self.state.borrow(), State::Pending)
    }

    pub(crate) fn cancelled(&self) -> bool {
        matches!(*self.state.borrow(), State::Cancelled(_))
    }

    pub(crate) fn state_name(&self) -> &'static str {
        self.state.borrow().name()
    }

    /// Completes the future and schedules its waiters. `handle` is what
    /// done callbacks receive.
    pub(crate) fn complete(&self, outcome: State<T>, handle: &H) -> Result<()> {
        {
            let mut st = self.state.borrow_mut();
            if !matches!(*st, State::Pending) {
                return Err(Error::invalid_state(format!(
                    "invalid state: {}",
                    st.name()
                )));
            }
            if matches!(outcome, State::Exception(_)) {
                self.log_traceback.set(true);
            }
            *st = outcome;
        }
        self.schedule_waiters(handle);
        Ok(())
    }

    fn schedule_waiters(&self, handle: &H) {
        let waiters = std::mem::replace(&mut *self.waiters.borrow_mut(), Waiters::Empty);
        waiters.for_each(|w| {
            // A closed loop drops the callbacks, as asyncio's call_soon would raise.
            let _ = match w {
                Waiter::Callback(_, cb, ctx) => {
                    let h = handle.clone();
                    self.lp
                        .call_soon_dyn(Box::new(move || cb(&h)), ctx)
                        .map(drop)
                }
                Waiter::Task(task) => task.wake_step(),
                Waiter::Waker(w) => {
                    w.wake();
                    Ok(())
                }
            };
        });
    }

    pub(crate) fn add_done_callback(
        &self,
        cb: Box<dyn FnOnce(&H)>,
        context: Option<Context>,
        handle: &H,
    ) -> CallbackId {
        let id = CallbackId(self.next_id.get());
        self.next_id.set(id.0 + 1);
        // As asyncio's `context=None`: a copy of the context current now,
        // when the callback is added, not when the future completes.
        let context = context.or_else(|| Some(crate::contextvars::copy_context()));
        if self.done() {
            let h = handle.clone();
            let _ = self.lp.call_soon_dyn(Box::new(move || cb(&h)), context);
        } else {
            self.waiters
                .borrow_mut()
                .push(Waiter::Callback(id, cb, context));
        }
        id
    }

    pub(crate) fn remove_done_callback(&self, id: CallbackId) -> usize {
        let mut w = self.waiters.borrow_mut();
        let before = w.len();
        w.retain(|w| !matches!(w, Waiter::Callback(i, ..) if *i == id));
        before - w.len()
    }

    /// `result()`: clones the value.
    pub(crate) fn result(&self) -> Result<T>
    where
        T: Clone,
    {
        match &*self.state.borrow() {
            State::Pending => Err(Error::invalid_state("Result is not set.")),
            State::Finished(v) => Ok(v.clone()),
            State::Taken => Err(Error::invalid_state("Result was already taken.")),
            State::Exception(e) => {
                self.log_traceback.set(false);
                Err(e.clone())
            }
            State::Cancelled(m) => Err(Error::Cancelled(m.clone())),
        }
    }

    /// The outcome, moving a result out.
    pub(crate) fn take_result(&self) -> Result<T> {
        let mut st = self.state.borrow_mut();
        match &*st {
            State::Pending => Err(Error::invalid_state("Result is not set.")),
            State::Finished(_) => match std::mem::replace(&mut *st, State::Taken) {
                State::Finished(v) => Ok(v),
                _ => unreachable!(),
            },
            State::Taken => Err(Error::invalid_state("Result was already taken.")),
            State::Exception(e) => {
                self.log_traceback.set(false);
                Err(e.clone())
            }
            State::Cancelled(m) => Err(Error::Cancelled(m.clone())),
        }
    }

    /// `exception()`.
    pub(crate) fn exception(&self) -> Result<Option<Error>> {
        match &*self.state.borrow() {
            State::Pending => Err(Error::invalid_state("Exception is not set.")),
            State::Cancelled(m) => Err(Error::Cancelled(m.clone())),
            State::Exception(e) => {
                self.log_traceback.set(false);
                Ok(Some(e.clone()))
            }
            _ => Ok(None),
        }
    }

    pub(crate) fn exception_erased(&self) -> Option<Error> {
        match self.exception() {
            Ok(e) => e,
            Err(Error::Cancelled(m)) => Some(Error::Cancelled(m)),
            Err(_) => None,
        }
    }

    /// Registers the awaiter polling now. Inside a task of this loop the
    /// task itself is registered (no `Waker` clone) and becomes the task's
    /// `fut_waiter`, so that cancelling the task cancels this future.
    /// `first` is false on later polls of the same await.
    pub(crate) fn register(
        &self,
        cx: &TaskContext<'_>,
        me: Rc<dyn FutureObj>,
        first: bool,
    ) -> Result<()> {
        if let Some(task) = tasks::current_task() {
            if task.get_loop().loop_id() != self.lp.loop_id() {
                return Err(Error::runtime(format!(
                    "Task {} got Future {} attached to a different loop",
                    task.repr(),
                    me.repr()
                )));
            }
            if std::ptr::addr_eq(Rc::as_ptr(&task), Rc::as_ptr(&me)) {
                return Err(Error::runtime(format!(
                    "Task cannot await on itself: {}",
                    task.repr()
                )));
            }
            task.set_fut_waiter(Some(me));
            if first {
                self.waiters.borrow_mut().push(Waiter::Task(task));
            }
        } else {
            let mut w = self.waiters.borrow_mut();
            let known = w.any(|x| matches!(x, Waiter::Waker(k) if k.will_wake(cx.waker())));
            if !known {
                w.push(Waiter::Waker(cx.waker().clone()));
            }
        }
        Ok(())
    }
}

impl<T, H> Drop for FutureState<T, H> {
    fn drop(&mut self) {
        if !self.log_traceback.get() {
            return;
        }
        if let State::Exception(e) = &*self.state.borrow() {
            let ctx = ExceptionContext::new(format!("{} exception was never retrieved", self.kind))
                .with_exception(e.clone());
            self.lp.call_exception_handler(ctx);
        }
    }
}

pub(crate) struct FutureCore<T> {
    pub(crate) st: FutureState<T, Future<T>>,
    this: Weak<FutureCore<T>>,
}

/// `asyncio.Future`. Cloning gives another handle to the same future.
pub struct Future<T>(pub(crate) Rc<FutureCore<T>>);

impl<T> Clone for Future<T> {
    fn clone(&self) -> Self {
        Future(self.0.clone())
    }
}

impl<T: 'static> Future<T> {
    /// A pending future on `lp` (`loop.create_future()`).
    pub fn new(lp: Loop) -> Self {
        Future(Rc::new_cyclic(|this| FutureCore {
            st: FutureState::new(lp, "Future"),
            this: this.clone(),
        }))
    }

    /// The loop the future belongs to.
    pub fn get_loop(&self) -> Loop {
        self.0.st.lp.clone()
    }

    /// True once done.
    pub fn done(&self) -> bool {
        self.0.st.done()
    }

    /// True if cancelled.
    pub fn cancelled(&self) -> bool {
        self.0.st.cancelled()
    }

    /// Cancels the future and schedules its callbacks; false if already done.
    pub fn cancel(&self, msg: Option<String>) -> bool {
        self.0.st.complete(State::Cancelled(msg), self).is_ok()
    }

    /// Marks the future done with `value`; `InvalidStateError` if already done.
    pub fn set_result(&self, value: T) -> Result<()> {
        self.0.st.complete(State::Finished(value), self)
    }

    /// Marks the future done with an exception. Setting `Cancelled` is a
    /// `TypeError`, as in asyncio: use [`cancel`](Future::cancel).
    pub fn set_exception(&self, exc: Error) -> Result<()> {
        if exc.is_cancelled() {
            return Err(Error::Type(
                "CancelledError cannot be set as a future's exception; cancel() it".into(),
            ));
        }
        self.0.st.complete(State::Exception(exc), self)
    }

    /// The result (cloned); the exception; `Cancelled`; or
    /// `InvalidStateError` while pending.
    pub fn result(&self) -> Result<T>
    where
        T: Clone,
    {
        self.0.st.result()
    }

    /// The result, moved out of the future.
    pub fn take_result(&self) -> Result<T> {
        self.0.st.take_result()
    }

    /// The exception, `None` for a result; `Cancelled` or
    /// `InvalidStateError` as asyncio raises them.
    pub fn exception(&self) -> Result<Option<Error>> {
        self.0.st.exception()
    }

    /// Schedules `callback(future)` once done (at once if already done), in
    /// `context`, or in a copy of the context current when it is added.
    pub fn add_done_callback(
        &self,
        callback: impl FnOnce(&Future<T>) + 'static,
        context: Option<Context>,
    ) -> CallbackId {
        self.0
            .st
            .add_done_callback(Box::new(callback), context, self)
    }

    /// Removes a done callback; returns how many were removed.
    pub fn remove_done_callback(&self, id: CallbackId) -> usize {
        self.0.st.remove_done_callback(id)
    }

    /// The erased view of this future.
    pub fn as_obj(&self) -> Rc<dyn FutureObj> {
        self.0.clone()
    }

    /// True if both handles are the same future.
    pub fn ptr_eq(&self, other: &Future<T>) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl<T: 'static> FutureObj for FutureCore<T> {
    fn done(&self) -> bool {
        self.st.done()
    }
    fn cancelled(&self) -> bool {
        self.st.cancelled()
    }
    fn cancel(&self, msg: Option<String>) -> bool {
        self.me().cancel(msg)
    }
    fn exception_erased(&self) -> Option<Error> {
        self.st.exception_erased()
    }
    fn add_done_callback_erased(&self, callback: Box<dyn FnOnce()>) -> CallbackId {
        let me = self.me();
        self.st
            .add_done_callback(Box::new(move |_| callback()), None, &me)
    }
    fn remove_done_callback(&self, id: CallbackId) -> usize {
        self.st.remove_done_callback(id)
    }
    fn get_loop(&self) -> Loop {
        self.st.lp.clone()
    }
    fn repr(&self) -> String {
        format!("<Future {}>", self.st.state_name())
    }
}

impl<T: 'static> FutureCore<T> {
    /// A handle to this core; `&self` proves the `Rc` is alive.
    fn me(&self) -> Future<T> {
        Future(
            self.this
                .upgrade()
                .expect("a live FutureCore has a strong count"),
        )
    }
}

impl<T> fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Future {}>", self.0.st.state.borrow().name())
    }
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// What awaiting needs of a [`Future`] or a [`crate::tasks::Task`]; sealed.
pub trait AwaitTarget<T>: sealed::Sealed {
    /// True once done.
    fn is_done(&self) -> bool;
    /// Registers the awaiter polling now (see `FutureState::register`).
    fn register_awaiter(&self, cx: &TaskContext<'_>, first: bool) -> Result<()>;
    /// The outcome, moving a result out.
    fn take(&self) -> Result<T>;
    /// The outcome, cloning a result.
    fn cloned(&self) -> Result<T>
    where
        T: Clone;
}

impl<T> sealed::Sealed for Future<T> {}

/// Awaits a [`Future`] or a [`crate::tasks::Task`]: `TAKE` moves the
/// result out (`fut.await`), otherwise it is cloned (`(&fut).await`).
pub struct Await<A, T, const TAKE: bool> {
    target: A,
    registered: bool,
    _result: PhantomData<fn() -> T>,
}

/// Awaits a [`Future`].
pub type Wait<T, const TAKE: bool> = Await<Future<T>, T, TAKE>;

impl<A: AwaitTarget<T>, T, const TAKE: bool> Await<A, T, TAKE> {
    pub(crate) fn new(target: A) -> Self {
        Await {
            target,
            registered: false,
            _result: PhantomData,
        }
    }

    fn poll_with(
        &mut self,
        cx: &TaskContext<'_>,
        get: impl FnOnce(&A) -> Result<T>,
    ) -> Poll<Result<T>> {
        if self.target.is_done() {
            return Poll::Ready(get(&self.target));
        }
        if let Err(e) = self.target.register_awaiter(cx, !self.registered) {
            return Poll::Ready(Err(e));
        }
        self.registered = true;
        Poll::Pending
    }
}

impl<A: AwaitTarget<T> + Unpin, T> std::future::Future for Await<A, T, true> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        self.get_mut().poll_with(cx, |a| a.take())
    }
}

impl<A: AwaitTarget<T> + Unpin, T: Clone> std::future::Future for Await<A, T, false> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<T>> {
        self.get_mut().poll_with(cx, |a| a.cloned())
    }
}

impl<T: 'static> AwaitTarget<T> for Future<T> {
    fn is_done(&self) -> bool {
        self.done()
    }
    fn register_awaiter(&self, cx: &TaskContext<'_>, first: bool) -> Result<()> {
        self.0.st.register(cx, self.0.clone(), first)
    }
    fn take(&self) -> Result<T> {
        self.take_result()
    }
    fn cloned(&self) -> Result<T>
    where
        T: Clone,
    {
        self.result()
    }
}

impl<T: 'static> IntoFuture for Future<T> {
    type Output = Result<T>;
    type IntoFuture = Wait<T, true>;
    fn into_future(self) -> Self::IntoFuture {
        Await::new(self)
    }
}

impl<T: Clone + 'static> IntoFuture for &Future<T> {
    type Output = Result<T>;
    type IntoFuture = Wait<T, false>;
    fn into_future(self) -> Self::IntoFuture {
        Await::new(self.clone())
    }
}
