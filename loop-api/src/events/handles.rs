//! `Handle` and `TimerHandle`: a scheduled callback, cancellable.
//!
//! Three representations share one public type:
//!
//! * a [`OnceCell`]: a one-shot closure and its handle's state in one
//!   reference-counted allocation, for [`Handle::new`] and the generic
//!   `call_soon` (an unboxed closure costs one allocation, as boxing it
//!   alone would);
//! * a reference-counted [`HandleInner`], for timers and repeating handles
//!   (readers, writers, signals);
//! * an entry of the loop's [`SoonSlab`], for callbacks that come boxed
//!   already (`call_soon_dyn`, `call_soon_threadsafe`): no allocation per
//!   callback besides the box. The entry counts its references by hand
//!   (every `Handle` to it and the ready queue's item each hold one) and its
//!   slot is reused once the last one is gone.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::contextvars::{Context, Snapshot};
use crate::exceptions::Error;
use crate::idle_memory::IDLE_KEEP;

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
    /// Moved out of a slab entry that no handle refers to any more.
    Taken,
}

impl HandleContext {
    #[inline]
    fn new(context: Option<Context>) -> Self {
        match context {
            Some(c) => HandleContext::Explicit(c),
            None => HandleContext::Snapshot(Snapshot::capture()),
        }
    }

    /// Turns a snapshot into a `Context` (once: later calls see the same
    /// one) and returns it.
    fn get_context(&mut self) -> Context {
        if let HandleContext::Snapshot(s) = self {
            *self = HandleContext::Explicit(Context::from_snapshot(s.clone()));
        }
        match self {
            HandleContext::Explicit(c) => c.clone(),
            HandleContext::Snapshot(_) | HandleContext::Taken => {
                unreachable!("made explicit above; a handle's context is never taken")
            }
        }
    }

    /// Another reference to the same context, to run in without holding a
    /// borrow of the handle.
    fn share(&self) -> HandleContext {
        match self {
            HandleContext::Snapshot(s) => HandleContext::Snapshot(s.clone()),
            HandleContext::Explicit(c) => HandleContext::Explicit(c.clone()),
            HandleContext::Taken => HandleContext::Taken,
        }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R, Error> {
        match self {
            HandleContext::Snapshot(s) => Ok(s.run(f)),
            HandleContext::Explicit(c) => c.run(f),
            HandleContext::Taken => unreachable!("a handle's context is never taken"),
        }
    }

    /// Runs a callback in this context; a panic becomes [`Error::Panic`], as
    /// does failing to enter the context.
    fn run_callback(&self, f: impl FnOnce()) -> Result<(), Error> {
        self.run(move || catch_unwind(AssertUnwindSafe(f)))?
            .map_err(Error::from_panic)
    }
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

// ----- one-shot handles in one allocation ---------------------------------------

/// A one-shot callback with its handle's state, in one allocation.
pub(crate) struct OnceCell<F> {
    cancelled: Cell<bool>,
    /// `None` once taken to run, or cancelled.
    body: Cell<Option<F>>,
    context: RefCell<HandleContext>,
}

/// What the loop and [`Handle`] ask of a [`OnceCell`], whatever its closure.
pub(crate) trait OnceEntry {
    fn cancel(&self);
    fn cancelled(&self) -> bool;
    fn get_context(&self) -> Context;
    fn run(&self) -> Result<(), Error>;
    /// Runs the callback for the ready queue, which gives up its reference.
    /// When no [`Handle`] is left the allocation is freed before the call
    /// (nobody can cancel it or ask for its context any more). On a panic,
    /// the error and a handle for the exception handler's context.
    fn run_queued(self: Rc<Self>) -> Result<(), (Error, Handle)>;
}

impl<F: FnOnce() + 'static> OnceEntry for OnceCell<F> {
    fn cancel(&self) {
        if !self.cancelled.replace(true) {
            drop(self.body.take());
        }
    }

    fn cancelled(&self) -> bool {
        self.cancelled.get()
    }

    fn get_context(&self) -> Context {
        self.context.borrow_mut().get_context()
    }

    fn run(&self) -> Result<(), Error> {
        // `cancel()` takes the body: a cancelled cell has none.
        let Some(f) = self.body.take() else {
            return Ok(());
        };
        let ctx = self.context.borrow().share();
        ctx.run_callback(f)
    }

    fn run_queued(self: Rc<Self>) -> Result<(), (Error, Handle)> {
        match Rc::try_unwrap(self) {
            Ok(cell) => {
                let Some(f) = cell.body.into_inner() else {
                    return Ok(());
                };
                let ctx = cell.context.into_inner();
                ctx.run_callback(f).map_err(|e| (e, Handle::spent(ctx)))
            }
            Err(shared) => shared.run().map_err(|e| (e, Handle(Repr::Once(shared)))),
        }
    }
}

// ----- the loop's slab of one-shot entries -------------------------------------

/// One `call_soon` callback, stored in the loop's [`SoonSlab`].
struct SoonEntry {
    /// Live references: every [`SoonRef`] (in a `Handle`) and the ready
    /// queue's [`SoonKey`] count one each. The entry is freed when this
    /// drops to zero.
    refs: u32,
    cancelled: bool,
    /// `None` once run (it is taken out while it runs) or cancelled.
    body: Option<Callback>,
    context: HandleContext,
}

enum Slot {
    /// Unused; `next` links the free list (`NO_SLOT` ends it).
    Free {
        next: u32,
    },
    Used(SoonEntry),
}

const NO_SLOT: u32 = u32::MAX;

struct SlabInner {
    slots: Vec<Slot>,
    /// Head of the free list.
    free: u32,
    /// How many slots are `Used`.
    used: usize,
}

/// A loop's store of one-shot callbacks (`call_soon`): [`Handle`]s to them
/// are a key into it, so scheduling allocates nothing of its own once the
/// slab has grown to the number of callbacks alive at a time.
///
/// Invariant: a slot is `Used` exactly while its `refs` is non-zero, that is
/// while a [`SoonRef`] or a [`SoonKey`] names it; a slot is freed only when
/// its last reference is given back.
pub(crate) struct SoonSlab {
    inner: RefCell<SlabInner>,
}

/// The ready queue's reference to a slab entry: one count of its `refs`,
/// without a pointer to the slab (the loop holds that). Neither `Clone` nor
/// `Drop`: the queue gives it back with [`SoonSlab::run_queued`],
/// [`SoonSlab::into_handle`] or [`SoonSlab::release`].
pub(crate) struct SoonKey(u32);

impl SoonSlab {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(SoonSlab {
            inner: RefCell::new(SlabInner {
                slots: Vec::new(),
                free: NO_SLOT,
                used: 0,
            }),
        })
    }

    /// Stores a new one-shot callback with one reference: the ready
    /// queue's (`call_soon_threadsafe` callbacks, whose handle nobody sees).
    #[inline]
    pub(crate) fn push(&self, body: Callback, context: Option<Context>) -> SoonKey {
        SoonKey(self.insert(SoonEntry {
            refs: 1,
            cancelled: false,
            body: Some(body),
            context: HandleContext::new(context),
        }))
    }

    /// Stores a new one-shot callback with two references: one for the
    /// ready queue and the [`Handle`] given to the caller.
    #[inline]
    pub(crate) fn push_with_handle(
        self: &Rc<Self>,
        body: Callback,
        context: Option<Context>,
    ) -> (SoonKey, Handle) {
        let key = self.insert(SoonEntry {
            refs: 2,
            cancelled: false,
            body: Some(body),
            context: HandleContext::new(context),
        });
        let h = Handle(Repr::Soon(SoonRef {
            slab: self.clone(),
            key,
        }));
        (SoonKey(key), h)
    }

    /// Stores `entry`, whose `refs` counts the references the caller makes.
    #[inline]
    fn insert(&self, entry: SoonEntry) -> u32 {
        let mut inner = self.inner.borrow_mut();
        inner.used += 1;
        if inner.free != NO_SLOT {
            let key = inner.free;
            let slot = &mut inner.slots[key as usize];
            let Slot::Free { next } = *slot else {
                unreachable!("the free list links free slots only")
            };
            *slot = Slot::Used(entry);
            inner.free = next;
            key
        } else {
            let key = u32::try_from(inner.slots.len())
                .ok()
                .filter(|&k| k != NO_SLOT)
                .expect("too many pending callbacks");
            inner.slots.push(Slot::Used(entry));
            key
        }
    }

    /// Runs `f` on entry `key`, with the slab borrowed: `f` must not run
    /// user code nor drop anything user-owned (which could re-enter the
    /// slab).
    #[inline]
    fn with<R>(&self, key: u32, f: impl FnOnce(&mut SoonEntry) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        match &mut inner.slots[key as usize] {
            Slot::Used(e) => f(e),
            Slot::Free { .. } => unreachable!("a referenced slot is in use"),
        }
    }

    /// Gives back one reference to entry `key`; frees the entry with the last.
    #[inline]
    fn release_key(&self, key: u32) {
        let last = self.with(key, |e| {
            e.refs -= 1;
            e.refs == 0
        });
        if last {
            self.free_slot(key);
        }
    }

    /// Frees entry `key`, whose last reference is gone.
    #[inline(never)]
    fn free_slot(&self, key: u32) {
        let freed = {
            let mut inner = self.inner.borrow_mut();
            let free = inner.free;
            let old = std::mem::replace(&mut inner.slots[key as usize], Slot::Free { next: free });
            inner.free = key;
            inner.used -= 1;
            old
        };
        // The callback and context are dropped with the slab released: their
        // destructors may schedule or drop other handles.
        drop(freed);
    }

    /// Gives the slots of a past burst back: once no entry is in use, at
    /// most [`IDLE_KEEP`] slots' memory is kept. An entry still referenced
    /// (a kept [`Handle`], a queued callback) holds the slab at its length,
    /// since keys cannot move.
    pub(crate) fn trim(&self) {
        let mut inner = self.inner.borrow_mut();
        if inner.used == 0 && inner.slots.capacity() > IDLE_KEEP {
            // Every slot is free: nothing to drop but the free list.
            inner.slots.clear();
            inner.slots.shrink_to(IDLE_KEEP);
            inner.free = NO_SLOT;
        }
    }

    /// The slots' memory, in slots (for tests).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.inner.borrow().slots.capacity()
    }

    /// Gives back the queue's reference without running the callback.
    #[inline]
    pub(crate) fn release(&self, key: SoonKey) {
        self.release_key(key.0)
    }

    /// Turns the queue's reference into a [`Handle`].
    pub(crate) fn into_handle(self: &Rc<Self>, key: SoonKey) -> Handle {
        Handle(Repr::Soon(SoonRef {
            slab: self.clone(),
            key: key.0,
        }))
    }

    /// Runs the callback for the ready queue, which gives up its reference:
    /// as [`Handle::run`], then dropping the reference, but when no
    /// [`Handle`] to the entry is left the entry is freed before the call
    /// (nobody can cancel it or ask for its context any more) and its context
    /// is moved out rather than shared. On a panic, `on_error` gets the error
    /// and a handle for the exception handler's context.
    pub(crate) fn run_queued(self: &Rc<Self>, key: SoonKey, on_error: impl FnOnce(Error, Handle)) {
        let key = key.0;
        let (body, ctx, sole) = {
            let mut inner = self.inner.borrow_mut();
            let free = inner.free;
            let slot = &mut inner.slots[key as usize];
            let Slot::Used(e) = slot else {
                unreachable!("a referenced slot is in use")
            };
            // `cancel()` drops the body: a cancelled entry has none.
            let body = e.body.take();
            if e.refs == 1 {
                let ctx = std::mem::replace(&mut e.context, HandleContext::Taken);
                // The entry holds nothing any more (its body and context are
                // out, the rest is plain data): forgetting it leaks nothing
                // and skips the generic drop glue on this hot path.
                std::mem::forget(std::mem::replace(slot, Slot::Free { next: free }));
                inner.free = key;
                inner.used -= 1;
                (body, ctx, true)
            } else if body.is_some() {
                (body, e.context.share(), false)
            } else {
                (None, HandleContext::Taken, false)
            }
        };
        let Some(f) = body else {
            if !sole {
                self.release_key(key);
            }
            return;
        };
        let e = match ctx.run_callback(f) {
            Ok(()) => {
                if !sole {
                    self.release_key(key);
                }
                return;
            }
            Err(e) => e,
        };
        let (e, h) = self.failed(key, e, ctx, sole);
        on_error(e, h);
    }

    /// The error path of [`run_queued`](SoonSlab::run_queued): the handle to
    /// report, which takes over the queue's reference. When the entry was
    /// freed, a fresh one stands for it: no reference to the old key is
    /// left, so the change is invisible.
    #[cold]
    fn failed(
        self: &Rc<Self>,
        key: u32,
        e: Error,
        ctx: HandleContext,
        sole: bool,
    ) -> (Error, Handle) {
        let key = if sole {
            self.insert(SoonEntry {
                refs: 1,
                cancelled: false,
                body: None,
                context: ctx,
            })
        } else {
            key
        };
        (e, self.into_handle(SoonKey(key)))
    }
}

/// A [`Handle`]'s counted reference to an entry of a [`SoonSlab`].
pub(crate) struct SoonRef {
    slab: Rc<SoonSlab>,
    key: u32,
}

impl SoonRef {
    fn with<R>(&self, f: impl FnOnce(&mut SoonEntry) -> R) -> R {
        self.slab.with(self.key, f)
    }

    fn cancel(&self) {
        let body = self.with(|e| {
            if e.cancelled {
                return None;
            }
            e.cancelled = true;
            e.body.take()
        });
        drop(body);
    }

    fn cancelled(&self) -> bool {
        self.with(|e| e.cancelled)
    }

    fn get_context(&self) -> Context {
        self.with(|e| e.context.get_context())
    }

    fn run(&self) -> Result<(), Error> {
        let taken = self.with(|e| {
            if e.cancelled {
                return None;
            }
            let body = e.body.take()?;
            Some((body, e.context.share()))
        });
        let Some((f, ctx)) = taken else {
            return Ok(());
        };
        ctx.run_callback(f)
    }
}

impl Clone for SoonRef {
    fn clone(&self) -> Self {
        self.with(|e| {
            // As `Rc` does: overflow is only reachable by leaking handles.
            e.refs = e
                .refs
                .checked_add(1)
                .unwrap_or_else(|| std::process::abort());
        });
        SoonRef {
            slab: self.slab.clone(),
            key: self.key,
        }
    }
}

impl Drop for SoonRef {
    #[inline]
    fn drop(&mut self) {
        self.slab.release_key(self.key);
    }
}

// ----- Handle ----------------------------------------------------------------

#[derive(Clone)]
pub(crate) enum Repr {
    Once(Rc<dyn OnceEntry>),
    Shared(Rc<HandleInner>),
    Soon(SoonRef),
}

/// `asyncio.Handle`: returned by `call_soon`, `add_reader`, ...
///
/// Cloning gives another reference to the same handle.
#[derive(Clone)]
pub struct Handle(pub(crate) Repr);

/// `asyncio.TimerHandle`: returned by `call_later` and `call_at`.
#[derive(Clone)]
pub struct TimerHandle(pub(crate) Handle);

impl Handle {
    fn build(body: Body, context: Option<Context>, timer: Option<TimerInfo>) -> Self {
        Handle(Repr::Shared(Rc::new(HandleInner {
            body: RefCell::new(Some(body)),
            cancelled: Cell::new(false),
            context: RefCell::new(HandleContext::new(context)),
            timer,
        })))
    }

    /// A one-shot handle, run in `context` (a copy of the current one if
    /// `None`). The closure and the handle's state share one allocation.
    #[inline]
    pub fn new(callback: impl FnOnce() + 'static, context: Option<Context>) -> Self {
        let mut cell = Rc::new_uninit();
        Rc::get_mut(&mut cell)
            .expect("a new Rc is unique")
            .write(OnceCell {
                cancelled: Cell::new(false),
                body: Cell::new(Some(callback)),
                context: RefCell::new(HandleContext::new(context)),
            });
        // SAFETY: written just above.
        Handle(Repr::Once(unsafe { cell.assume_init() }))
    }

    /// A handle whose one-shot callback has run, in `context`: what stands
    /// for a [`OnceCell`] freed before its callback ran, when that callback
    /// panicked and the exception handler needs the handle.
    #[cold]
    fn spent(context: HandleContext) -> Self {
        Handle(Repr::Shared(Rc::new(HandleInner {
            body: RefCell::new(None),
            cancelled: Cell::new(false),
            context: RefCell::new(context),
            timer: None,
        })))
    }

    /// A handle that can run repeatedly until cancelled (readers, writers, signals).
    pub fn new_repeating(callback: RepeatCallback, context: Option<Context>) -> Self {
        Self::build(Body::Repeat(callback), context, None)
    }

    /// Cancels the callback; a cancelled handle never runs again. The
    /// callback (and what it captured) is dropped at once unless it is
    /// running right now.
    pub fn cancel(&self) {
        let inner = match &self.0 {
            Repr::Shared(inner) => inner,
            Repr::Once(o) => return o.cancel(),
            Repr::Soon(s) => return s.cancel(),
        };
        if inner.cancelled.replace(true) {
            return;
        }
        if let Some(t) = &inner.timer {
            if t.scheduled.get() {
                t.cancelled_count.set(t.cancelled_count.get() + 1);
            }
        }
        let body = inner.body.borrow_mut().take();
        drop(body);
    }

    /// True once [`cancel`](Handle::cancel) was called.
    pub fn cancelled(&self) -> bool {
        match &self.0 {
            Repr::Once(o) => o.cancelled(),
            Repr::Shared(inner) => inner.cancelled.get(),
            Repr::Soon(s) => s.cancelled(),
        }
    }

    /// The context the callback runs in.
    pub fn get_context(&self) -> Context {
        match &self.0 {
            Repr::Once(o) => o.get_context(),
            Repr::Shared(inner) => inner.context.borrow_mut().get_context(),
            Repr::Soon(s) => s.get_context(),
        }
    }

    /// True when both name the same handle.
    pub fn ptr_eq(&self, other: &Handle) -> bool {
        match (&self.0, &other.0) {
            (Repr::Once(a), Repr::Once(b)) => std::ptr::addr_eq(Rc::as_ptr(a), Rc::as_ptr(b)),
            (Repr::Shared(a), Repr::Shared(b)) => Rc::ptr_eq(a, b),
            // A key is reused only after every reference to it is gone, so
            // two live references with one key name one entry.
            (Repr::Soon(a), Repr::Soon(b)) => Rc::ptr_eq(&a.slab, &b.slab) && a.key == b.key,
            _ => false,
        }
    }

    /// Runs the callback in its context, catching a panic.
    ///
    /// A one-shot body is consumed; a repeating one is put back unless the
    /// handle was cancelled while it ran.
    pub fn run(&self) -> Result<(), Error> {
        let inner = match &self.0 {
            Repr::Shared(inner) => inner,
            Repr::Once(o) => return o.run(),
            Repr::Soon(s) => return s.run(),
        };
        if inner.cancelled.get() {
            return Ok(());
        }
        let Some(body) = inner.body.borrow_mut().take() else {
            return Ok(());
        };
        let ctx = inner.context.borrow().share();
        match body {
            Body::Once(f) => ctx.run_callback(f),
            Body::Repeat(mut f) => {
                let r = ctx.run_callback(&mut f);
                if !inner.cancelled.get() {
                    *inner.body.borrow_mut() = Some(Body::Repeat(f));
                }
                r
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
        match &self.0 .0 {
            Repr::Shared(inner) => inner.timer.as_ref(),
            Repr::Once(_) | Repr::Soon(_) => None,
        }
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
        match &self.0 {
            Repr::Shared(inner) => match &inner.timer {
                Some(t) => write!(
                    f,
                    "<TimerHandle{state} when={:.6} {:p}>",
                    t.when,
                    Rc::as_ptr(inner)
                ),
                None => write!(f, "<Handle{state} {:p}>", Rc::as_ptr(inner)),
            },
            Repr::Once(o) => write!(f, "<Handle{state} {:p}>", Rc::as_ptr(o).cast::<()>()),
            Repr::Soon(s) => write!(f, "<Handle{state} {:p}#{}>", Rc::as_ptr(&s.slab), s.key),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets a flag when dropped, to see when a callback is dropped.
    struct Dropped(Rc<Cell<bool>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    /// (slots in use, slots in all).
    fn slots(slab: &SoonSlab) -> (usize, usize) {
        let inner = slab.inner.borrow();
        let used = inner
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Used(_)))
            .count();
        assert_eq!(used, inner.used, "the count of used slots is kept");
        (used, inner.slots.len())
    }

    /// `call_soon`'s part: the queue's key and the caller's handle.
    fn push_with_handle(slab: &Rc<SoonSlab>, body: Callback) -> (SoonKey, Handle) {
        slab.push_with_handle(body, None)
    }

    /// Runs `k` as the loop does; the error, if any.
    fn run(slab: &Rc<SoonSlab>, k: SoonKey) -> Option<(Error, Handle)> {
        let mut out = None;
        slab.run_queued(k, |e, h| out = Some((e, h)));
        out
    }

    #[test]
    fn queue_reference_alone_frees_before_running() {
        let slab = SoonSlab::new();
        let ran = Rc::new(Cell::new(false));
        let r2 = ran.clone();
        let (k, h) = push_with_handle(&slab, Box::new(move || r2.set(true)));
        drop(h);
        // Another entry: freed with its last reference.
        let (k2, h2) = push_with_handle(&slab, Box::new(|| {}));
        slab.release(k2);
        drop(h2);
        assert_eq!(slots(&slab), (1, 2));
        // A running entry with no handle left has its slot free already:
        // what the callback schedules may reuse it.
        let s2 = slab.clone();
        let k3 = slab.push(
            Box::new(move || {
                assert_eq!(slots(&s2), (0, 2));
                let k = s2.push(Box::new(|| {}), None);
                assert_eq!(slots(&s2), (1, 2));
                s2.release(k);
            }),
            None,
        );
        assert!(run(&slab, k).is_none());
        assert!(ran.get());
        assert_eq!(slots(&slab), (1, 2));
        assert!(run(&slab, k3).is_none());
        assert_eq!(slots(&slab), (0, 2));
    }

    #[test]
    fn handle_keeps_entry_and_state() {
        let slab = SoonSlab::new();
        let (k, h) = push_with_handle(&slab, Box::new(|| {}));
        let h2 = h.clone();
        assert!(h.ptr_eq(&h2));
        assert!(run(&slab, k).is_none());
        assert_eq!(slots(&slab), (1, 1));
        h.cancel();
        assert!(h2.cancelled());
        let c = h.get_context();
        assert!(c.ptr_eq(&h2.get_context()));
        drop(h);
        assert_eq!(slots(&slab), (1, 1));
        drop(h2);
        assert_eq!(slots(&slab), (0, 1));
        // The free slot is reused.
        let (k, h) = push_with_handle(&slab, Box::new(|| {}));
        assert_eq!(slots(&slab), (1, 1));
        slab.release(k);
        drop(h);
        assert_eq!(slots(&slab), (0, 1));
    }

    #[test]
    fn cancel_drops_callback_at_once_and_queue_skips_it() {
        let slab = SoonSlab::new();
        let dropped = Rc::new(Cell::new(false));
        let d = Dropped(dropped.clone());
        let (k, h) = push_with_handle(
            &slab,
            Box::new(move || {
                let _d = &d;
                panic!("must not run");
            }),
        );
        h.cancel();
        assert!(dropped.get());
        assert!(run(&slab, k).is_none());
        assert!(h.cancelled());
        drop(h);
        assert_eq!(slots(&slab), (0, 1));
    }

    #[test]
    fn panic_reports_a_handle() {
        let slab = SoonSlab::new();
        // No handle left: a fresh entry stands for the freed one.
        let (k, h) = push_with_handle(&slab, Box::new(|| panic!("boom")));
        drop(h);
        let (e, h) = run(&slab, k).expect("panicked");
        assert!(matches!(e, Error::Panic(_)));
        assert!(!h.cancelled());
        let _ = h.get_context();
        assert_eq!(slots(&slab), (1, 1));
        drop(h);
        assert_eq!(slots(&slab), (0, 1));
        // A handle left: the same entry.
        let (k, h) = push_with_handle(&slab, Box::new(|| panic!("boom")));
        let (_, h2) = run(&slab, k).expect("panicked");
        assert!(h.ptr_eq(&h2));
        drop(h);
        drop(h2);
        assert_eq!(slots(&slab), (0, 1));
    }

    #[test]
    fn handle_outlives_queue_and_loop() {
        let dropped = Rc::new(Cell::new(false));
        let d = Dropped(dropped.clone());
        let h = {
            let slab = SoonSlab::new();
            let (k, h) = push_with_handle(
                &slab,
                Box::new(move || {
                    let _d = &d;
                }),
            );
            slab.release(k); // the queue goes away without running it
            assert!(!dropped.get());
            h
        };
        assert!(!h.cancelled());
        drop(h);
        assert!(dropped.get());
    }

    /// The ready queue's reference to a [`Handle::new`] handle, as the
    /// generic `call_soon` queues it.
    fn queued(h: &Handle) -> Rc<dyn OnceEntry> {
        match &h.0 {
            Repr::Once(o) => o.clone(),
            _ => unreachable!("Handle::new makes a OnceCell"),
        }
    }

    #[test]
    fn once_cell_alone_is_freed_before_its_callback_runs() {
        type Slot = Rc<RefCell<Option<std::rc::Weak<dyn OnceEntry>>>>;
        let cell: Slot = Rc::new(RefCell::new(None));
        let alive_while_running = Rc::new(Cell::new(None));
        let (c, alive) = (cell.clone(), alive_while_running.clone());
        let h = Handle::new(
            move || {
                let weak = c.borrow().clone().expect("set before running");
                alive.set(Some(weak.upgrade().is_some()));
            },
            None,
        );
        let q = queued(&h);
        *cell.borrow_mut() = Some(Rc::downgrade(&q));
        drop(h);
        assert!(q.run_queued().is_ok());
        assert_eq!(alive_while_running.get(), Some(false));
    }

    #[test]
    fn once_cell_keeps_handle_state_after_running() {
        let ran = Rc::new(Cell::new(0));
        let r = ran.clone();
        let h = Handle::new(move || r.set(r.get() + 1), None);
        let h2 = h.clone();
        assert!(h.ptr_eq(&h2));
        let c = h.get_context();
        assert!(queued(&h).run_queued().is_ok());
        assert_eq!(ran.get(), 1);
        // Running again (a second reference, or `Handle::run`) is a no-op.
        assert!(h.run().is_ok());
        assert_eq!(ran.get(), 1);
        assert!(!h2.cancelled());
        h.cancel();
        assert!(h2.cancelled());
        assert!(c.ptr_eq(&h2.get_context()));
    }

    #[test]
    fn once_cell_cancel_drops_the_callback_at_once() {
        let dropped = Rc::new(Cell::new(false));
        let d = Dropped(dropped.clone());
        let h = Handle::new(
            move || {
                let _d = &d;
                panic!("must not run");
            },
            None,
        );
        let q = queued(&h);
        h.cancel();
        assert!(dropped.get());
        assert!(h.cancelled());
        assert!(q.run_queued().is_ok());
    }

    #[test]
    fn once_cell_panic_reports_a_handle() {
        // No handle left: a spent handle with the same context stands for it.
        let h = Handle::new(|| panic!("boom"), None);
        let c = h.get_context();
        let q = queued(&h);
        drop(h);
        let Err((e, spent)) = q.run_queued() else {
            panic!("the panic was lost")
        };
        assert!(matches!(e, Error::Panic(_)));
        assert!(!spent.cancelled());
        assert!(c.ptr_eq(&spent.get_context()));
        // A handle left: that very handle.
        let h = Handle::new(|| panic!("boom"), None);
        let Err((_, same)) = queued(&h).run_queued() else {
            panic!("the panic was lost")
        };
        assert!(h.ptr_eq(&same));
    }
}
