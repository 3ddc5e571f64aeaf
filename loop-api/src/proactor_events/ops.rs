//! Operations in flight on a completion-based driver, written once for
//! io_uring and IOCP: the table that keeps each operation's memory until
//! the kernel is done with it, who hears of its completion, and a future
//! that awaits one.
//!
//! # Ground rules
//! - A request that points into our memory is started together with the
//!   owned allocation it points into (the driver's `M`: buffers, iovecs,
//!   addresses, an `OVERLAPPED` header). [`Operations`] holds that memory
//!   until the request's last completion has been reaped, and only then
//!   hands it back. Moving a `Vec` or a `Box` into the table moves the
//!   handle, not the heap memory the kernel points at.
//! - Cancelling is a request too: [`Operations::request_cancel`] only
//!   marks the operation, and the driver asks the kernel. The completion
//!   still comes (with the operation's own result if it finished first),
//!   and the memory is released only then. Nothing here frees memory the
//!   kernel may hold.
//! - The driver hands each completion to the operation's [`Owner`] from
//!   inside its `poll`, with the driver borrowed: an owner records it and
//!   schedules work on the ready queue; it never runs user code or touches
//!   the driver there.
//! - An [`OpId`] names an operation by its slot and the slot's generation,
//!   so an id whose operation is gone (and whose slot a new one took)
//!   names nothing: cancelling it does nothing.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use crate::base_events::BaseEventLoop;
use crate::driver::Driver;
use crate::idle_memory::shrunk_capacity;

/// An operation in flight: its slot in the driver's [`Operations`] and the
/// slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId {
    /// The slot.
    pub key: u32,
    /// The slot's generation when the operation started.
    pub generation: u32,
}

/// Who hears of an operation's completions, of type `C`.
pub trait Owner<C> {
    /// Called from inside the driver's `poll`, with the driver borrowed:
    /// record the completion and schedule work on the ready queue; never
    /// run user code or touch the driver here.
    fn complete(self: Rc<Self>, completion: C);
}

/// One operation in the table.
pub struct Op<M, C> {
    generation: u32,
    /// The owner's tag for it (which of its operations this is).
    pub kind: u8,
    /// The memory the kernel may touch until the last completion.
    pub memory: M,
    /// Who hears of its completions.
    pub owner: Rc<dyn Owner<C>>,
    /// Cancellation was asked for.
    pub cancelled: bool,
}

/// A completion driver's operations in flight, with the memory each one
/// lent the kernel (`M`) and the owner that hears its completions (`C`).
pub struct Operations<M, C> {
    slots: Slab<Op<M, C>>,
    generation: u32,
    generation_mask: u32,
}

impl<M, C> Operations<M, C> {
    /// An empty table whose generations fit in `generation_mask` (what the
    /// driver can carry in a request's tag).
    pub fn new(generation_mask: u32) -> Self {
        Operations {
            slots: Slab::new(),
            generation: 0,
            generation_mask,
        }
    }

    /// Records an operation about to start; its id.
    pub fn insert(&mut self, memory: M, owner: Rc<dyn Owner<C>>, kind: u8) -> OpId {
        self.generation = self.generation.wrapping_add(1) & self.generation_mask;
        let generation = self.generation;
        let key = self.slots.insert(Op {
            generation,
            kind,
            memory,
            owner,
            cancelled: false,
        });
        OpId {
            key: key as u32,
            generation,
        }
    }

    /// The operation `id` names, if it is still in flight.
    pub fn get(&self, id: OpId) -> Option<&Op<M, C>> {
        self.slots
            .get(id.key as usize)
            .filter(|op| op.generation == id.generation)
    }

    /// Takes the operation out: at its last completion (its memory is the
    /// caller's again), or when it did not start.
    pub fn remove(&mut self, id: OpId) -> Option<Op<M, C>> {
        self.get(id)?;
        Some(self.slots.remove(id.key as usize))
    }

    /// Marks `id` cancelled. True the first time for an operation still in
    /// flight: the driver then asks the kernel to cancel it.
    pub fn request_cancel(&mut self, id: OpId) -> bool {
        match self.slots.get_mut(id.key as usize) {
            Some(op) if op.generation == id.generation && !op.cancelled => {
                op.cancelled = true;
                true
            }
            _ => false,
        }
    }

    /// Every operation in flight.
    pub fn ids(&self) -> Vec<OpId> {
        self.slots
            .iter()
            .map(|(key, op)| OpId {
                key: key as u32,
                generation: op.generation,
            })
            .collect()
    }

    /// How many operations are in flight.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Gives back the slots of a past burst (see
    /// [`idle_memory`](crate::idle_memory)). Only free slots past the last
    /// one in use can go: an id in flight keeps naming its operation.
    pub fn trim(&mut self) {
        if shrunk_capacity(self.slots.len(), self.slots.capacity()).is_some() {
            self.slots.shrink_to_fit();
        }
    }

    /// Gives up on every operation still in flight without freeing its
    /// memory: for a driver going away while the kernel may still write
    /// into it (better leaked than freed under the kernel).
    pub fn leak_all(&mut self) {
        for (_, op) in std::mem::take(&mut self.slots) {
            std::mem::forget(op.memory);
        }
    }
}

/// The side of a completion driver that [`OpFuture`] and the shared
/// acceptor ([`super::accept`]) use.
pub trait Proactor: Driver + Sized {
    /// What an owner hears of one completion.
    type Completion: 'static;

    /// Asks the kernel to cancel `id`. Its completion still comes, and only
    /// then is its memory released. An id whose operation is done, or that
    /// was cancelled already, is ignored.
    fn cancel(&mut self, id: OpId);

    /// Lets the kernel finish what cancelled requests still hold (a
    /// listener, a socket), so that closing it takes effect now rather
    /// than at the next `poll`.
    fn settle(&mut self) {}
}

/// What to do with a completion nobody awaits any more.
type Salvage<C> = Box<dyn FnOnce(C)>;

/// Where one awaited operation's completion lands.
struct OneShot<C> {
    done: RefCell<Option<C>>,
    waker: RefCell<Option<Waker>>,
    /// The future is gone: a completion goes to `salvage`, if any.
    abandoned: Cell<bool>,
    salvage: RefCell<Option<Salvage<C>>>,
}

impl<C> Owner<C> for OneShot<C> {
    fn complete(self: Rc<Self>, c: C) {
        if self.abandoned.get() {
            if let Some(salvage) = self.salvage.borrow_mut().take() {
                salvage(c);
            }
            return;
        }
        *self.done.borrow_mut() = Some(c);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// One operation, awaited: resolves to its completion.
///
/// Dropping it before then (cancelling the task that awaits it) asks the
/// kernel to cancel the operation; its memory stays with the driver until
/// the completion arrives, which goes to the salvage hook if one was set
/// ([`OpFuture::salvage_with`]: a connection an accept took anyway), else
/// is dropped.
pub struct OpFuture<D: Proactor> {
    lp: Rc<BaseEventLoop<D>>,
    /// `None` once the completion was returned.
    id: Option<OpId>,
    state: Rc<OneShot<D::Completion>>,
}

impl<D: Proactor> OpFuture<D> {
    /// Starts an operation with `start`, which submits it on the driver
    /// with the owner it is given, and awaits it.
    pub fn start<E>(
        lp: &Rc<BaseEventLoop<D>>,
        start: impl FnOnce(&mut D, Rc<dyn Owner<D::Completion>>) -> Result<OpId, E>,
    ) -> Result<Self, E> {
        let state = Rc::new(OneShot {
            done: RefCell::new(None),
            waker: RefCell::new(None),
            abandoned: Cell::new(false),
            salvage: RefCell::new(None),
        });
        let owner: Rc<dyn Owner<D::Completion>> = state.clone();
        let id = lp.with_driver(|d| start(d, owner))?;
        Ok(OpFuture {
            lp: lp.clone(),
            id: Some(id),
            state,
        })
    }

    /// What to do with the completion if this future is dropped before it.
    pub fn salvage_with(self, salvage: impl FnOnce(D::Completion) + 'static) -> Self {
        *self.state.salvage.borrow_mut() = Some(Box::new(salvage));
        self
    }
}

impl<D: Proactor> std::future::Future for OpFuture<D> {
    type Output = D::Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<D::Completion> {
        let done = self.state.done.borrow_mut().take();
        if let Some(c) = done {
            self.id = None;
            return Poll::Ready(c);
        }
        *self.state.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<D: Proactor> Drop for OpFuture<D> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        self.state.abandoned.set(true);
        if let Some(c) = self.state.done.borrow_mut().take() {
            // Completed, but never awaited to the end.
            if let Some(salvage) = self.state.salvage.borrow_mut().take() {
                salvage(c);
            }
            return;
        }
        // The driver keeps the memory until the cancelled operation's
        // completion; if the driver is busy (we are dropped from inside it,
        // as the loop closes) it is cancelling everything anyway.
        let _ = self.lp.try_with_driver(|d| d.cancel(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink;
    impl Owner<u32> for Sink {
        fn complete(self: Rc<Self>, _: u32) {}
    }

    #[test]
    fn trim_gives_back_free_slots_past_the_last_in_use() {
        use crate::idle_memory::IDLE_KEEP;
        let mut ops: Operations<u32, u32> = Operations::new(u32::MAX);
        let ids: Vec<_> = (0..20_000)
            .map(|i| ops.insert(i, Rc::new(Sink), 0))
            .collect();
        // Two stay in flight: a low id and one in the middle.
        let (low, mid) = (ids[3], ids[10_000]);
        for &id in &ids {
            if id != low && id != mid {
                ops.remove(id).expect("in flight");
            }
        }
        ops.trim();
        // The middle one holds the slots up to it; the rest went.
        let cap = ops.slots.capacity();
        assert!((10_001..20_000).contains(&cap), "capacity {cap}");
        assert_eq!(ops.get(mid).map(|op| op.memory), Some(10_000));
        ops.remove(mid).expect("still named by its id");
        ops.trim();
        assert!(
            ops.slots.capacity() <= IDLE_KEEP,
            "capacity {}",
            ops.slots.capacity()
        );
        assert_eq!(ops.get(low).map(|op| op.memory), Some(3));
        // Slots are handed out again after a trim, and old ids stay stale.
        let again = ops.insert(7, Rc::new(Sink), 0);
        assert!(ops.get(ids[5]).is_none());
        assert_eq!(ops.remove(again).map(|op| op.memory), Some(7));
        assert_eq!(ops.len(), 1);
    }

    #[test]
    fn a_stale_id_names_nothing() {
        let mut ops: Operations<Vec<u8>, u32> = Operations::new(u32::MAX);
        let a = ops.insert(vec![1], Rc::new(Sink), 0);
        assert_eq!(ops.remove(a).map(|op| op.memory), Some(vec![1]));
        // The slot is reused by the next operation, with a new generation.
        let b = ops.insert(vec![2], Rc::new(Sink), 0);
        assert_eq!(a.key, b.key);
        assert!(ops.get(a).is_none());
        assert!(!ops.request_cancel(a), "cancelling a stale id does nothing");
        assert!(ops.remove(a).is_none());
        assert_eq!(ops.get(b).map(|op| op.memory.clone()), Some(vec![2]));
    }

    #[test]
    fn cancel_is_asked_once_and_keeps_the_memory() {
        let mut ops: Operations<Vec<u8>, u32> = Operations::new(u32::MAX);
        let a = ops.insert(vec![7; 4], Rc::new(Sink), 3);
        assert!(ops.request_cancel(a));
        assert!(!ops.request_cancel(a), "the second request is not sent");
        let op = ops.get(a).expect("still in flight until its completion");
        assert!(op.cancelled);
        assert_eq!((op.kind, op.memory.len()), (3, 4));
        assert_eq!(ops.len(), 1);
    }

    #[test]
    fn generations_wrap_within_the_mask() {
        let mut ops: Operations<(), u32> = Operations::new(0b11);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let id = ops.insert((), Rc::new(Sink), 0);
            assert!(id.generation <= 0b11);
            seen.push(id.generation);
            ops.remove(id);
        }
        assert_eq!(seen, [1, 2, 3, 0, 1, 2]);
    }
}
