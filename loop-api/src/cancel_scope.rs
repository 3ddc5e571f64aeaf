//! Cancelling part of a task: the body of a `timeout` or a `TaskGroup`.
//!
//! asyncio cancels the whole task and lets the context manager turn the
//! `CancelledError` back into a result at its edge. Here the body is a
//! future the scope polls, and a cancellation is delivered the way asyncio
//! would, when it can be:
//!
//! - the body waits on a loop future (a stream read, `sleep`, another
//!   task): that future is cancelled, the body sees `Err(Cancelled)` at its
//!   await, and may clean up, even with more awaits, before it returns;
//! - the body waits on something else (a foreign future, the I/O traits):
//!   there is nowhere to deliver it, so the body is dropped, which is
//!   Rust's cancellation; its destructors run.
//!
//! The scope never cancels the task itself, so whatever encloses the scope
//! goes on.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::exceptions::Result;
use crate::tasks::{current_task, TaskObj};

/// How a scope's body ended.
pub(crate) enum Outcome<T> {
    /// It returned (maybe `Err(Cancelled)` after a delivered cancellation).
    Returned(Result<T>),
    /// It was dropped: a cancellation had nowhere to go.
    Dropped,
}

/// The handle that asks a scope to cancel its body.
#[derive(Default)]
pub(crate) struct ScopeState {
    requested: Cell<bool>,
    delivered: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    task: RefCell<Option<Rc<dyn TaskObj>>>,
}

impl ScopeState {
    /// Asks for the body to be cancelled; it happens at the scope's next
    /// poll, which this wakes. Once per scope.
    pub(crate) fn request_cancel(&self) {
        if self.requested.replace(true) {
            return;
        }
        let waker = self.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// True once a cancellation reached the body as `Err(Cancelled)`
    /// (counted in its task's `cancelling()`).
    pub(crate) fn delivered(&self) -> bool {
        self.delivered.get()
    }

    /// The task the scope runs in (known once polled).
    pub(crate) fn task(&self) -> Option<Rc<dyn TaskObj>> {
        self.task.borrow().clone()
    }
}

/// A body and the state that can cancel it.
pub(crate) struct Scope<F> {
    body: Option<Pin<Box<F>>>,
    pub(crate) state: Rc<ScopeState>,
}

impl<F: Future> Scope<F> {
    pub(crate) fn new(body: F) -> Self {
        Scope {
            body: Some(Box::pin(body)),
            state: Rc::new(ScopeState::default()),
        }
    }
}

impl<T, F: Future<Output = Result<T>>> Future for Scope<F> {
    type Output = Outcome<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let this = self.get_mut();
        let st = this.state.clone();
        if st.task.borrow().is_none() {
            *st.task.borrow_mut() = current_task();
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(Outcome::Dropped);
        };
        if let Poll::Ready(r) = body.as_mut().poll(cx) {
            this.body = None;
            return Poll::Ready(Outcome::Returned(r));
        }
        if st.requested.get() && !st.delivered.get() {
            // The body just parked; if on a loop future, cancel that.
            let delivered = st.task().is_some_and(|t| t.cancel_waiter(None));
            if delivered {
                st.delivered.set(true);
            } else {
                this.body = None;
                return Poll::Ready(Outcome::Dropped);
            }
        }
        *st.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
