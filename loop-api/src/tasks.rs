//! `asyncio.Task`: a coroutine driven by the loop.
//!
//! # How asyncio's semantics map to Rust futures
//! - A task polls its coroutine (any `Future<Output = Result<T, Error>>`)
//!   in a *step*, scheduled in the ready queue like a callback, in the
//!   task's own [`Context`].
//! - `Err(Error::Cancelled(_))` returned by the coroutine makes the task
//!   cancelled, as an uncaught `CancelledError` does.
//! - [`Task::cancel`] first cancels the loop future the task is awaiting
//!   (`_fut_waiter`): the coroutine sees `Err(Cancelled)` from that await and
//!   may catch it, as in asyncio. If the task awaits nothing of this loop
//!   (a foreign future) or has not started, the next step drops the
//!   coroutine instead — Rust's native cancellation — and the task is
//!   cancelled.
//! - A panic while polling is caught: the task's exception becomes
//!   [`Error::Panic`]. Like any exception never retrieved, it reaches the
//!   exception handler when the task is dropped.
//! - The loop keeps every pending task alive (as a spawned tokio task is),
//!   so dropping the handle does not cancel it.

use std::cell::{Cell, OnceCell, RefCell, UnsafeCell};
use std::fmt;
use std::future::IntoFuture;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, RawWaker, RawWakerVTable, Wake, Waker};

use slab::Slab;

mod gather;
mod shield;

pub use gather::{gather, Gathering};
pub use shield::shield;

use crate::contextvars::{copy_context, Context};
use crate::events::{self, AbstractEventLoop, Loop, RemoteLoop, Step};
use crate::exceptions::{Error, Result};
use crate::futures::{Await, AwaitTarget, CallbackId, FutureObj, FutureState, State};

/// `create_task`'s keyword arguments, which a task factory may rewrite.
#[derive(Clone, Debug, Default)]
pub struct TaskOptions {
    /// `name=`; default `Task-N`.
    pub name: Option<String>,
    /// `context=`; default a copy of the current context.
    pub context: Option<Context>,
    /// `eager_start=` (3.14): run the first step inside `create_task` when
    /// the loop is running.
    pub eager_start: bool,
}

/// `loop.set_task_factory(factory)`.
///
/// asyncio's factory builds the task object itself. A Rust coroutine's type
/// cannot pass through a type-erased hook, so ours shapes the task instead:
/// it sees the loop and the options, and may rename it, set its context,
/// make it eager, or refuse it with an error.
pub type TaskFactory = Rc<dyn Fn(&dyn AbstractEventLoop, TaskOptions) -> Result<TaskOptions>>;

/// What the loop and the registry need of a task, whatever its result type.
pub trait TaskObj: FutureObj + Step {
    /// The task's name.
    fn get_name(&self) -> String;
    /// Sets the task's name.
    fn set_name(&self, name: String);
    /// How many cancellation requests are pending.
    fn cancelling(&self) -> u32;
    /// Decrements the pending cancellation requests; returns the new count.
    fn uncancel(&self) -> u32;
    /// The context the task runs in.
    fn get_context(&self) -> Context;
    #[doc(hidden)]
    fn set_fut_waiter(&self, fut: Option<Rc<dyn FutureObj>>);
    #[doc(hidden)]
    fn drop_coroutine(&self);
    /// Cancels the loop future the task awaits now, if it awaits one, as
    /// [`cancel`](FutureObj::cancel) does first, counting the request in
    /// [`cancelling`](TaskObj::cancelling); `false` if it awaits none (then
    /// nothing changes). What `timeout` and `TaskGroup` cancel their body
    /// with: the coroutine sees `Err(Cancelled)` at that await.
    #[doc(hidden)]
    fn cancel_waiter(&self, msg: Option<String>) -> bool;
    /// Schedules a step unless one is already scheduled (a wakeup).
    #[doc(hidden)]
    fn wake_step(&self) -> Result<()>;
}

/// The coroutine's slot in the task cell: the coroutine lives inline in
/// the task's one `Rc` allocation and is pinned there.
///
/// Like the `RefCell` it replaces, it refuses a second access while polled
/// (a panic); while its coroutine is being dropped, it reads as empty, as the
/// coroutine taken out of a `RefCell` to be dropped did.
struct CoroSlot<F> {
    coro: UnsafeCell<Option<F>>,
    state: Cell<SlotState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Idle,
    Polling,
    Dropping,
}

/// Puts a [`CoroSlot`] back to idle, also when unwinding.
struct SlotIdle<'a>(&'a Cell<SlotState>);

impl Drop for SlotIdle<'_> {
    fn drop(&mut self) {
        self.0.set(SlotState::Idle);
    }
}

impl<T, F: std::future::Future<Output = Result<T>>> CoroSlot<F> {
    fn new(coro: F) -> Self {
        CoroSlot {
            coro: UnsafeCell::new(Some(coro)),
            state: Cell::new(SlotState::Idle),
        }
    }

    /// Polls the coroutine (catching a panic); `None` if it is gone.
    ///
    /// The slot must not move while it holds a coroutine: it is a field of
    /// a task cell, which lives in an `Rc` allocation until dropped.
    fn poll(&self, cx: &mut TaskContext<'_>) -> Option<Poll<Result<T>>> {
        match self.state.get() {
            SlotState::Polling => panic!("already borrowed: the task's coroutine is being polled"),
            SlotState::Dropping => return None,
            SlotState::Idle => {}
        }
        self.state.set(SlotState::Polling);
        let _idle = SlotIdle(&self.state);
        // SAFETY: `state` is Polling until `_idle` drops, and every other
        // access to `coro` (poll, drop_coro) first checks that the state is
        // Idle, so this is the only reference to the slot's contents. The
        // task is single-threaded (`Rc`), so there is no concurrent access.
        let slot = unsafe { &mut *self.coro.get() };
        let coro = slot.as_mut()?;
        // SAFETY: pinning invariant: the coroutine lives in the task cell,
        // inside an `Rc` allocation that never moves, and it is never moved
        // out of the slot: it is only dropped in place (`drop_coro`, or the
        // cell's own drop).
        let coro = unsafe { Pin::new_unchecked(coro) };
        Some(
            catch_unwind(AssertUnwindSafe(|| coro.poll(cx)))
                .unwrap_or_else(|p| Poll::Ready(Err(Error::from_panic(p)))),
        )
    }

    /// Drops the coroutine in place (it is pinned: never moved out).
    fn drop_coro(&self) {
        match self.state.get() {
            SlotState::Polling => panic!("already borrowed: the task's coroutine is being polled"),
            SlotState::Dropping => return,
            SlotState::Idle => {}
        }
        self.state.set(SlotState::Dropping);
        let _idle = SlotIdle(&self.state);
        // SAFETY: the state is Dropping until `_idle` drops and no other
        // access touches `coro` meanwhile (a re-entrant poll or drop sees
        // Dropping and returns without touching it), so this is the only
        // reference to the contents. The value is dropped in place, never
        // moved (the pinning invariant of `poll`).
        let slot = unsafe { &mut *self.coro.get() };
        if slot.is_none() {
            return;
        }
        struct WriteNone<F>(*mut Option<F>);
        impl<F> Drop for WriteNone<F> {
            fn drop(&mut self) {
                // SAFETY: the pointer is the slot's, valid and exclusively
                // ours (state Dropping); its old value has just been dropped
                // in place (also when that drop unwound: drop glue still
                // drops every field), so it is overwritten without a drop.
                unsafe { std::ptr::write(self.0, None) };
            }
        }
        let ptr: *mut Option<F> = slot;
        let _none = WriteNone(ptr);
        // SAFETY: `ptr` holds an initialized `Some(coro)`, exclusively ours
        // (see above); `_none` marks it empty afterwards, even on unwind, so
        // it is never dropped twice.
        unsafe { std::ptr::drop_in_place(ptr) };
    }
}

/// A task seen with its result type but not its coroutine's: what a
/// [`Task`] handle holds.
trait TypedTask<T: 'static>: TaskObj {
    fn core(&self) -> &TaskCore<T>;
    fn into_task_obj(self: Rc<Self>) -> Rc<dyn TaskObj>;
    fn into_future_obj(self: Rc<Self>) -> Rc<dyn FutureObj>;
}

/// Everything of a task but its coroutine.
struct TaskCore<T: 'static> {
    st: FutureState<T, Task<T>>,
    number: u64,
    name: RefCell<Option<String>>,
    /// The task's own context, entered for every step. Always a `Context`
    /// object, so that `get_context()` (even from inside a step) names the
    /// one context the task's sets land in.
    context: Context,
    must_cancel: Cell<bool>,
    cancel_message: RefCell<Option<String>>,
    num_cancels_requested: Cell<u32>,
    fut_waiter: RefCell<Option<Rc<dyn FutureObj>>>,
    /// A step is in the ready queue.
    scheduled: Cell<bool>,
    /// How to wake the task, and its `Waker` once one was cloned.
    wake: WakeSlot,
}

struct TaskCell<T: 'static, F> {
    core: TaskCore<T>,
    this: Weak<TaskCell<T, F>>,
    coro: CoroSlot<F>,
}

impl<T: 'static, F> std::ops::Deref for TaskCell<T, F> {
    type Target = TaskCore<T>;
    fn deref(&self) -> &TaskCore<T> {
        &self.core
    }
}

/// `asyncio.Task`. Cloning gives another handle to the same task.
///
/// `task.await` moves the result out; `(&task).await` and
/// [`Task::result`] clone it.
pub struct Task<T: 'static>(Rc<dyn TypedTask<T>>);

impl<T> Clone for Task<T> {
    fn clone(&self) -> Self {
        Task(self.0.clone())
    }
}

thread_local! {
    static TASK_COUNTER: Cell<u64> = const { Cell::new(1) };
}

impl<T: 'static> Task<T> {
    /// Builds and schedules a task (what `create_task` does).
    pub fn spawn<F>(lp: Loop, coro: F, options: TaskOptions) -> Result<Task<T>>
    where
        F: std::future::Future<Output = Result<T>> + 'static,
    {
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        let options = match lp.get_task_factory() {
            Some(f) => f(&*lp, options)?,
            None => options,
        };
        let loop_id = lp.loop_id();
        let remote = lp.remote();
        let owner = this_thread_mark();
        let context = options.context.unwrap_or_else(copy_context);
        let number = TASK_COUNTER.with(|c| c.replace(c.get() + 1));
        let st = FutureState::new(lp.clone(), "Task");
        // The task takes the registry's next vacant slot; its key goes into
        // its waker data, so the cell is built with the registry borrowed
        // (building it runs no code that touches the registry).
        let cell = registry_insert_with(loop_id, |key| {
            let wake = WakeSlot {
                info: WakeInfo {
                    loop_id,
                    key,
                    remote,
                    owner,
                },
                waker: OnceCell::new(),
            };
            Rc::new_cyclic(|this: &Weak<TaskCell<T, F>>| TaskCell {
                core: TaskCore {
                    st,
                    number,
                    name: RefCell::new(options.name),
                    context,
                    must_cancel: Cell::new(false),
                    cancel_message: RefCell::new(None),
                    num_cancels_requested: Cell::new(0),
                    fut_waiter: RefCell::new(None),
                    scheduled: Cell::new(false),
                    wake,
                },
                this: this.clone(),
                coro: CoroSlot::new(coro),
            })
        });
        if options.eager_start && lp.is_running() {
            cell.clone().run_step();
        } else {
            cell.schedule()?;
        }
        Ok(Task(cell))
    }

    /// The loop the task runs on.
    pub fn get_loop(&self) -> Loop {
        self.0.core().st.lp.clone()
    }
    /// True once done.
    pub fn done(&self) -> bool {
        self.0.core().st.done()
    }
    /// True if cancelled.
    pub fn cancelled(&self) -> bool {
        self.0.core().st.cancelled()
    }
    /// Requests cancellation (see the module docs); false if already done.
    pub fn cancel(&self, msg: Option<String>) -> bool {
        self.0.cancel(msg)
    }
    /// Pending cancellation requests (3.11).
    pub fn cancelling(&self) -> u32 {
        self.0.cancelling()
    }
    /// Decrements the pending cancellation requests (3.11).
    pub fn uncancel(&self) -> u32 {
        self.0.uncancel()
    }
    /// The result, cloned; the exception; `Cancelled`; or
    /// `InvalidStateError` while pending.
    pub fn result(&self) -> Result<T>
    where
        T: Clone,
    {
        self.0.core().st.result()
    }
    /// The result, moved out.
    pub fn take_result(&self) -> Result<T> {
        self.0.core().st.take_result()
    }
    /// The exception, if the task ended with one.
    pub fn exception(&self) -> Result<Option<Error>> {
        self.0.core().st.exception()
    }
    /// Schedules `callback(task)` once done.
    pub fn add_done_callback(
        &self,
        callback: impl FnOnce(&Task<T>) + 'static,
        context: Option<Context>,
    ) -> CallbackId {
        self.0
            .core()
            .st
            .add_done_callback(Box::new(callback), context, self)
    }
    /// Removes a done callback; how many were removed.
    pub fn remove_done_callback(&self, id: CallbackId) -> usize {
        self.0.core().st.remove_done_callback(id)
    }
    /// The task's name (`Task-N` unless set).
    pub fn get_name(&self) -> String {
        self.0.get_name()
    }
    /// Renames the task.
    pub fn set_name(&self, name: impl Into<String>) {
        self.0.set_name(name.into())
    }
    /// The context the task's steps run in.
    pub fn get_context(&self) -> Context {
        self.0.get_context()
    }
    /// The erased view of this task.
    pub fn as_obj(&self) -> Rc<dyn TaskObj> {
        self.0.clone().into_task_obj()
    }
    /// True if both handles are the same task.
    pub fn ptr_eq(&self, other: &Task<T>) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl<T: 'static, F: std::future::Future<Output = Result<T>> + 'static> TaskCell<T, F> {
    fn me(&self) -> Task<T> {
        let me: Rc<dyn TypedTask<T>> = self.this.upgrade().expect("a live task has a strong count");
        Task(me)
    }

    fn schedule(&self) -> Result<()> {
        if self.scheduled.get() || self.st.done() {
            return Ok(());
        }
        self.scheduled.set(true);
        let step: Rc<dyn Step> = self.this.upgrade().expect("live task");
        self.st
            .lp
            .call_soon_step(step)
            .inspect_err(|_| self.scheduled.set(false))
    }

    fn finish(&self, outcome: State<T>) {
        self.set_coro_none();
        self.fut_waiter.borrow_mut().take();
        registry_remove(self.wake.info.loop_id, self.wake.info.key);
        let _ = self.st.complete(outcome, &self.me());
    }

    fn set_coro_none(&self) {
        // Dropped in place; meanwhile the slot reads as empty, since the
        // coroutine's destructors may run loop code.
        self.coro.drop_coro();
    }

    /// Runs `f` in the task's context.
    fn in_context<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.context.run(f) {
            Ok(r) => r,
            Err(_) => panic!("task context is already entered"),
        }
    }
}

impl<T: 'static, F: std::future::Future<Output = Result<T>> + 'static> Step for TaskCell<T, F> {
    fn describe(&self) -> String {
        self.repr()
    }

    fn run_step(self: Rc<Self>) {
        self.scheduled.set(false);
        if self.st.done() {
            return;
        }
        // If the loop future the coroutine awaits is already cancelled, the
        // coroutine sees Err(Cancelled) from that await when polled (as
        // asyncio throws CancelledError in): it may catch it, so poll
        // rather than drop it.
        let delivered = self
            .fut_waiter
            .borrow()
            .as_ref()
            .is_some_and(|w| w.cancelled());
        if self.must_cancel.replace(false) && !delivered {
            let msg = self.cancel_message.borrow().clone();
            self.in_context(|| self.set_coro_none());
            self.finish(State::Cancelled(msg));
            return;
        }
        self.fut_waiter.borrow_mut().take();
        let prev = enter_task(self.clone());
        let polled = self.in_context(|| {
            let polled = |waker: &Waker| {
                let mut cx = TaskContext::from_waker(waker);
                self.coro.poll(&mut cx).unwrap_or(Poll::Pending)
            };
            match self.wake.waker.get() {
                Some(w) => polled(w),
                None => polled(&self.wake.borrowed()),
            }
        });
        leave_task(prev);
        match polled {
            Poll::Ready(Ok(v)) => {
                if self.must_cancel.replace(false) {
                    let msg = self.cancel_message.borrow().clone();
                    self.finish(State::Cancelled(msg));
                } else {
                    self.finish(State::Finished(v));
                }
            }
            Poll::Ready(Err(Error::Cancelled(m))) => {
                self.must_cancel.set(false);
                self.finish(State::Cancelled(m));
            }
            Poll::Ready(Err(e)) => self.finish(State::Exception(e)),
            Poll::Pending => {
                if self.must_cancel.get() {
                    // cancel() was called during this step.
                    let waiter = self.fut_waiter.borrow().clone();
                    let msg = self.cancel_message.borrow().clone();
                    if let Some(w) = waiter {
                        if w.cancel(msg) {
                            self.must_cancel.set(false);
                        }
                    }
                    if self.must_cancel.get() {
                        let _ = self.schedule();
                    }
                }
            }
        }
    }
}

impl<T: 'static, F: std::future::Future<Output = Result<T>> + 'static> FutureObj
    for TaskCell<T, F>
{
    fn done(&self) -> bool {
        self.st.done()
    }
    fn cancelled(&self) -> bool {
        self.st.cancelled()
    }
    fn cancel(&self, msg: Option<String>) -> bool {
        if self.st.done() {
            return false;
        }
        self.num_cancels_requested
            .set(self.num_cancels_requested.get() + 1);
        let waiter = self.fut_waiter.borrow().clone();
        if let Some(w) = waiter {
            if w.cancel(msg.clone()) {
                // The waiter's cancellation wakes the task, and the
                // coroutine sees Err(Cancelled) from its await.
                return true;
            }
        }
        self.must_cancel.set(true);
        *self.cancel_message.borrow_mut() = msg;
        let _ = self.schedule();
        true
    }
    fn exception_erased(&self) -> Option<Error> {
        self.st.exception_erased()
    }
    fn add_done_callback_erased(&self, callback: Box<dyn FnOnce()>) -> CallbackId {
        self.st
            .add_done_callback(Box::new(move |_| callback()), None, &self.me())
    }
    fn remove_done_callback(&self, id: CallbackId) -> usize {
        self.st.remove_done_callback(id)
    }
    fn get_loop(&self) -> Loop {
        self.st.lp.clone()
    }
    fn repr(&self) -> String {
        format!("<Task {} name='{}'>", self.st.state_name(), self.get_name())
    }
}

impl<T: 'static, F: std::future::Future<Output = Result<T>> + 'static> TypedTask<T>
    for TaskCell<T, F>
{
    fn core(&self) -> &TaskCore<T> {
        &self.core
    }
    fn into_task_obj(self: Rc<Self>) -> Rc<dyn TaskObj> {
        self
    }
    fn into_future_obj(self: Rc<Self>) -> Rc<dyn FutureObj> {
        self
    }
}

impl<T: 'static, F: std::future::Future<Output = Result<T>> + 'static> TaskObj for TaskCell<T, F> {
    fn get_name(&self) -> String {
        match &*self.name.borrow() {
            Some(n) => n.clone(),
            None => format!("Task-{}", self.number),
        }
    }
    fn set_name(&self, name: String) {
        *self.name.borrow_mut() = Some(name);
    }
    fn cancelling(&self) -> u32 {
        self.num_cancels_requested.get()
    }
    fn uncancel(&self) -> u32 {
        let n = self.num_cancels_requested.get().saturating_sub(1);
        self.num_cancels_requested.set(n);
        if n == 0 {
            self.must_cancel.set(false);
        }
        n
    }
    fn get_context(&self) -> Context {
        self.context.clone()
    }
    fn set_fut_waiter(&self, fut: Option<Rc<dyn FutureObj>>) {
        *self.fut_waiter.borrow_mut() = fut;
    }
    fn drop_coroutine(&self) {
        self.set_coro_none();
        self.fut_waiter.borrow_mut().take();
    }
    fn cancel_waiter(&self, msg: Option<String>) -> bool {
        if self.st.done() {
            return false;
        }
        let waiter = self.fut_waiter.borrow().clone();
        match waiter {
            Some(w) if w.cancel(msg) => {
                self.num_cancels_requested
                    .set(self.num_cancels_requested.get() + 1);
                true
            }
            _ => false,
        }
    }
    fn wake_step(&self) -> Result<()> {
        self.schedule()
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.repr())
    }
}

// ----- awaiting a task ------------------------------------------------------

/// Awaits a [`Task`]. `TAKE` moves the result out.
pub type TaskWait<T, const TAKE: bool> = Await<Task<T>, T, TAKE>;

impl<T: 'static> crate::futures::sealed::Sealed for Task<T> {}

impl<T: 'static> AwaitTarget<T> for Task<T> {
    fn is_done(&self) -> bool {
        self.done()
    }
    fn register_awaiter(&self, cx: &TaskContext<'_>, first: bool) -> Result<()> {
        let me: Rc<dyn FutureObj> = self.0.clone().into_future_obj();
        self.0.core().st.register(cx, me, first)
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

impl<T: 'static> IntoFuture for Task<T> {
    type Output = Result<T>;
    type IntoFuture = TaskWait<T, true>;
    fn into_future(self) -> Self::IntoFuture {
        Await::new(self)
    }
}

impl<T: Clone + 'static> IntoFuture for &Task<T> {
    type Output = Result<T>;
    type IntoFuture = TaskWait<T, false>;
    fn into_future(self) -> Self::IntoFuture {
        Await::new(self.clone())
    }
}

// ----- the current task -------------------------------------------------------

thread_local! {
    static CURRENT: Cell<Option<Rc<dyn TaskObj>>> = const { Cell::new(None) };
}

fn enter_task(task: Rc<dyn TaskObj>) -> Option<Rc<dyn TaskObj>> {
    CURRENT.with(|c| c.replace(Some(task)))
}

fn leave_task(prev: Option<Rc<dyn TaskObj>>) {
    // The outgoing task is dropped after the thread-local is updated.
    drop(CURRENT.with(|c| c.replace(prev)));
}

/// `asyncio.current_task()`: the task running now on this thread, if any.
pub fn current_task() -> Option<Rc<dyn TaskObj>> {
    CURRENT.with(|c| {
        // Cloning an `Rc` runs no other code, so the slot is refilled
        // before anything else can look at it.
        let task = c.take();
        let copy = task.clone();
        c.set(task);
        copy
    })
}

// ----- the registry of pending tasks ------------------------------------------

type TaskSlab = Slab<Rc<dyn TaskObj>>;

thread_local! {
    /// Pending tasks per loop: `(loop_id, tasks)`. A thread usually has one loop.
    static REGISTRY: RefCell<Vec<(u64, TaskSlab)>> = const { RefCell::new(Vec::new()) };
}

/// Inserts the task `make(key)` builds into `loop_id`'s slot `key`, the
/// next vacant one; returns the task.
fn registry_insert_with<C: TaskObj + 'static>(
    loop_id: u64,
    make: impl FnOnce(usize) -> Rc<C>,
) -> Rc<C> {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let pos = match r.iter().position(|(id, _)| *id == loop_id) {
            Some(pos) => pos,
            None => {
                r.push((loop_id, Slab::new()));
                r.len() - 1
            }
        };
        let entry = r[pos].1.vacant_entry();
        let task = make(entry.key());
        entry.insert(task.clone());
        task
    })
}

fn registry_remove(loop_id: u64, key: usize) {
    let removed = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        r.iter_mut()
            .find(|(id, _)| *id == loop_id)
            .and_then(|(_, s)| s.try_remove(key))
    });
    drop(removed);
}

fn registry_get(loop_id: u64, key: usize) -> Option<Rc<dyn TaskObj>> {
    REGISTRY.with(|r| {
        r.borrow()
            .iter()
            .find(|(id, _)| *id == loop_id)
            .and_then(|(_, s)| s.get(key).cloned())
    })
}

/// `asyncio.all_tasks(loop)`: the loop's tasks not yet done.
pub fn all_tasks(lp: &dyn AbstractEventLoop) -> Vec<Rc<dyn TaskObj>> {
    let id = lp.loop_id();
    REGISTRY.with(|r| {
        r.borrow()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| {
                s.iter()
                    .map(|(_, t)| t.clone())
                    .filter(|t| !t.done())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Forgets the loop's pending tasks, dropping their coroutines (which
/// breaks the reference cycles a pending await makes). Loops call this from
/// `close()`.
pub fn _forget_loop_tasks(loop_id: u64) {
    let slab = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let pos = r.iter().position(|(id, _)| *id == loop_id)?;
        Some(r.swap_remove(pos).1)
    });
    if let Some(slab) = slab {
        for (_, t) in slab.iter() {
            t.drop_coroutine();
        }
        drop(slab);
    }
}

// ----- waking -------------------------------------------------------------------

/// What a task's waker needs; immutable, and `Sync`, so that a waker
/// borrowed from the task can be used from any thread.
#[derive(Clone)]
struct WakeInfo {
    loop_id: u64,
    key: usize,
    remote: RemoteLoop,
    /// [`this_thread_mark`] of the thread the task lives on.
    owner: usize,
}

impl WakeInfo {
    fn wake(&self) {
        if events::running_loop_id() == Some(self.loop_id) {
            wake_local(self.loop_id, self.key);
        } else {
            let (loop_id, key) = (self.loop_id, self.key);
            // A closed loop has no tasks left to wake.
            let _ = self
                .remote
                .call_soon_threadsafe(move || wake_local(loop_id, key));
        }
    }

    fn new_waker(&self) -> Waker {
        Waker::from(Arc::new(TaskWaker(self.clone())))
    }
}

/// A task's wake data, inline in the task cell. Steps poll with a `Waker`
/// borrowing this slot ([`WakeSlot::borrowed`]), so a task that never
/// clones its waker (every task awaiting only this loop's futures and
/// tasks) allocates none; the first clone makes the shared, owned
/// `Arc<TaskWaker>` waker, kept in `waker` and used by later steps.
struct WakeSlot {
    info: WakeInfo,
    /// Only touched on the owner thread.
    waker: OnceCell<Waker>,
}

thread_local! {
    static THREAD_MARK: u8 = const { 0 };
}

/// Distinguishes the live threads: the address of a thread-local.
fn this_thread_mark() -> usize {
    THREAD_MARK.with(|m| m as *const u8 as usize)
}

static BORROWED_VTABLE: RawWakerVTable = RawWakerVTable::new(
    borrowed_clone,
    borrowed_wake_by_ref,
    borrowed_wake_by_ref,
    borrowed_drop,
);

impl WakeSlot {
    /// A waker borrowing this slot, for one poll. It is never dropped
    /// (`ManuallyDrop`) and only lent out as `&Waker`, so it cannot outlive
    /// the poll, during which the task cell (and this slot) is alive.
    fn borrowed(&self) -> ManuallyDrop<Waker> {
        let raw = RawWaker::new(self as *const WakeSlot as *const (), &BORROWED_VTABLE);
        // SAFETY: the vtable's functions uphold `RawWaker`'s contract for
        // this data pointer: it points at a `WakeSlot` that stays valid as
        // long as the waker can be used (see above); the functions touch
        // only its `Sync` part off the owner thread; `clone` returns an
        // owned, independent `Arc` waker.
        ManuallyDrop::new(unsafe { Waker::from_raw(raw) })
    }
}

/// # Safety
/// `p` points at a live [`WakeSlot`] (the data of a borrowed waker).
unsafe fn borrowed_clone(p: *const ()) -> RawWaker {
    let slot = p as *const WakeSlot;
    // SAFETY: `p` is a live `WakeSlot` (caller's contract); `info` is
    // immutable and `Sync`, so reading it from any thread is sound.
    let info = unsafe { &(*slot).info };
    let waker = if info.owner == this_thread_mark() {
        // SAFETY: on the task's own thread (the owner is alive: it is
        // polling the task, which lent out this waker, and live threads'
        // marks differ), where every access to the cache happens; the task
        // is single-threaded, so nothing else touches it now.
        let cache = unsafe { &(*slot).waker };
        cache.get_or_init(|| info.new_waker()).clone()
    } else {
        // Another thread: an owned waker of its own, not cached.
        info.new_waker()
    };
    let waker = ManuallyDrop::new(waker);
    RawWaker::new(waker.data(), waker.vtable())
}

/// # Safety
/// `p` points at a live [`WakeSlot`].
unsafe fn borrowed_wake_by_ref(p: *const ()) {
    // SAFETY: `p` is a live `WakeSlot` (caller's contract); `info` is
    // immutable and `Sync`.
    let info = unsafe { &(*(p as *const WakeSlot)).info };
    info.wake();
}

/// Borrowed wakers own nothing.
unsafe fn borrowed_drop(_: *const ()) {}

/// A task's owned waker: what a foreign future keeps.
struct TaskWaker(WakeInfo);

fn wake_local(loop_id: u64, key: usize) {
    if let Some(t) = registry_get(loop_id, key) {
        // A stale waker of a finished task whose key was reused only costs
        // the new task a spurious poll.
        let _ = t.wake_step();
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.0.wake()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake()
    }
}

// ----- sleeping -------------------------------------------------------------------

/// `asyncio.sleep(delay)` on the running loop. `sleep(0.0)` yields once,
/// letting other ready callbacks run.
pub async fn sleep(delay: f64) -> Result<()> {
    let lp = events::get_running_loop()?;
    sleep_on(&lp, delay).await
}

/// `asyncio.sleep(delay)` on a given loop.
pub async fn sleep_on(lp: &Loop, delay: f64) -> Result<()> {
    if delay <= 0.0 {
        yield_now().await;
        return Ok(());
    }
    let fut = crate::futures::Future::<()>::new(lp.clone());
    let setter = fut.clone();
    let timer = lp.call_later_dyn(
        delay,
        Box::new(move || {
            if !setter.done() {
                let _ = setter.set_result(());
            }
        }),
        None,
    )?;
    let r = fut.await;
    timer.cancel();
    r
}

/// Yields to the loop once: the task's next step runs in the next
/// iteration, after the callbacks already ready (a bare `yield` in asyncio).
pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

/// The future returned by [`yield_now`].
pub struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        match current_task() {
            Some(t) => {
                let _ = t.wake_step();
            }
            None => cx.waker().wake_by_ref(),
        }
        Poll::Pending
    }
}
