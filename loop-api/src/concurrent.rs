//! What crosses threads: completing a loop's future from another thread
//! (asyncio's `loop.call_soon_threadsafe(fut.set_result, x)`), and running
//! a coroutine on a loop from another thread (asyncio's
//! `run_coroutine_threadsafe`, whose result is a `concurrent.futures.Future`).
//!
//! A loop's [`Future`] is not `Send`: it belongs to the loop's thread. A
//! [`FutureCompleter`] is its `Send` side: made on the loop's thread, moved
//! to any other, where [`set_result`](FutureCompleter::set_result) or
//! [`set_exception`](FutureCompleter::set_exception) schedules the
//! completion on the loop with `call_soon_threadsafe`. A completer dropped
//! unused lets go of the future (which stays pending).
//!
//! [`RemoteLoop::run_coroutine_threadsafe`] goes the other way: from any
//! thread it starts a task on the loop and returns a [`ConcurrentFuture`],
//! which that thread can block on ([`ConcurrentFuture::result`]) or await
//! from another executor (it is a `Send` `std::future::Future`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::events::{EventLoopExt, RemoteLoop};
use crate::exceptions::{Error, Result};
use crate::futures::Future;

thread_local! {
    /// The loop-side objects the `Send` handles of this thread name, by a
    /// key never reused (a late message names nothing rather than another
    /// object).
    static HELD: RefCell<HashMap<u64, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

fn hold(obj: Box<dyn Any>) -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    HELD.with(|h| h.borrow_mut().insert(key, obj));
    key
}

fn release(key: u64) -> Option<Box<dyn Any>> {
    HELD.with(|h| h.borrow_mut().remove(&key))
}

/// The `Send` side of a loop [`Future`]: completes it from any thread. See
/// the module docs.
pub struct FutureCompleter<T: Send + 'static> {
    remote: RemoteLoop,
    key: Option<u64>,
    _value: PhantomData<fn(T)>,
}

impl<T: Send + 'static> Future<T> {
    /// A `Send` handle that completes this future from any thread.
    pub fn completer(&self) -> FutureCompleter<T> {
        FutureCompleter {
            remote: self.get_loop().remote(),
            key: Some(hold(Box::new(self.clone()))),
            _value: PhantomData,
        }
    }
}

impl<T: Send + 'static> FutureCompleter<T> {
    /// Schedules `fut.set_result(value)` on the loop. Ignored if the future
    /// is done by then (cancelled, say); `RuntimeError` if the loop is
    /// closed.
    pub fn set_result(self, value: T) -> Result<()> {
        self.complete(Ok(value))
    }

    /// Schedules `fut.set_exception(exc)` on the loop.
    pub fn set_exception(self, exc: Error) -> Result<()> {
        self.complete(Err(exc))
    }

    fn complete(mut self, outcome: Result<T>) -> Result<()> {
        let key = self.key.take().expect("a completer completes once");
        self.remote.call_soon_threadsafe(move || {
            let Some(held) = release(key) else { return };
            let fut = held.downcast::<Future<T>>().expect("held as a Future<T>");
            if !fut.done() {
                let _ = match outcome {
                    Ok(v) => fut.set_result(v),
                    Err(e) => fut.set_exception(e),
                };
            }
        })
    }
}

impl<T: Send + 'static> Drop for FutureCompleter<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Unused: let go of the future, on its own thread.
            let _ = self.remote.call_soon_threadsafe(move || {
                release(key);
            });
        }
    }
}

/// What a [`ConcurrentFuture`] and its task share.
struct Shared<T> {
    state: Mutex<Slot<T>>,
    ready: Condvar,
}

struct Slot<T> {
    outcome: Option<Result<T>>,
    taken: bool,
    waker: Option<Waker>,
    /// The task's key on the loop's thread, to cancel it.
    task: Option<u64>,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, outcome: Result<T>) {
        let mut slot = self.lock();
        if slot.outcome.is_some() || slot.taken {
            return;
        }
        slot.outcome = Some(outcome);
        slot.task = None;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
        drop(slot);
        self.ready.notify_all();
    }
}

/// asyncio's `concurrent.futures.Future` for a coroutine run with
/// [`RemoteLoop::run_coroutine_threadsafe`]: `Send`, blocked on with
/// [`result`](Self::result), or awaited from any executor.
pub struct ConcurrentFuture<T> {
    shared: Arc<Shared<T>>,
    remote: RemoteLoop,
}

impl<T: Send + 'static> ConcurrentFuture<T> {
    /// Blocks until the coroutine is done and takes its result;
    /// `TimeoutError` after `timeout` (the coroutine goes on). Called once:
    /// a second call is an `InvalidStateError`.
    pub fn result(&self, timeout: Option<Duration>) -> Result<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = self.shared.lock();
        loop {
            if let Some(outcome) = slot.outcome.take() {
                slot.taken = true;
                return outcome;
            }
            if slot.taken {
                return Err(Error::invalid_state("Result was already taken"));
            }
            slot = match deadline {
                None => self
                    .shared
                    .ready
                    .wait(slot)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout);
                    }
                    self.shared
                        .ready
                        .wait_timeout(slot, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// True once the coroutine finished (or failed, or was cancelled).
    pub fn done(&self) -> bool {
        let slot = self.shared.lock();
        slot.outcome.is_some() || slot.taken
    }

    /// Cancels the task on the loop (asyncio's `Future.cancel()`); the
    /// result becomes `CancelledError` once the task has unwound. False if
    /// the coroutine is done already.
    pub fn cancel(&self) -> bool {
        let Some(key) = self.shared.lock().task else {
            return false;
        };
        self.remote
            .call_soon_threadsafe(move || {
                let cancel = HELD.with(|h| {
                    h.borrow()
                        .get(&key)
                        .and_then(|c| c.downcast_ref::<Rc<dyn Fn()>>())
                        .cloned()
                });
                if let Some(cancel) = cancel {
                    cancel();
                }
            })
            .is_ok()
    }
}

impl<T> std::future::Future for ConcurrentFuture<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut slot = self.shared.lock();
        if let Some(outcome) = slot.outcome.take() {
            slot.taken = true;
            return Poll::Ready(outcome);
        }
        if slot.taken {
            return Poll::Ready(Err(Error::invalid_state("Result was already taken")));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl RemoteLoop {
    /// asyncio's `run_coroutine_threadsafe(coro, loop)`, from any thread:
    /// `make` runs on the loop's thread and its coroutine becomes a task
    /// there; the returned [`ConcurrentFuture`] gets the task's result.
    /// `RuntimeError` if the loop is closed. (`make` builds the coroutine
    /// on the loop's thread because a coroutine using the loop is not
    /// `Send`.)
    pub fn run_coroutine_threadsafe<T, C, F>(&self, make: C) -> Result<ConcurrentFuture<T>>
    where
        T: Send + 'static,
        C: FnOnce() -> F + Send + 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(Slot {
                outcome: None,
                taken: false,
                waker: None,
                task: None,
            }),
            ready: Condvar::new(),
        });
        let s = shared.clone();
        self.call_soon_threadsafe(move || {
            let Some(lp) = crate::events::_get_running_loop() else {
                s.finish(Err(Error::runtime("no running event loop")));
                return;
            };
            let task = match lp.create_task(make()) {
                Ok(t) => t,
                Err(e) => return s.finish(Err(e)),
            };
            let t = task.clone();
            let cancel: Rc<dyn Fn()> = Rc::new(move || {
                t.cancel(None);
            });
            let key = hold(Box::new(cancel));
            s.lock().task = Some(key);
            let s2 = s.clone();
            task.add_done_callback(
                move |t| {
                    release(key);
                    s2.finish(t.take_result());
                },
                None,
            );
        })?;
        Ok(ConcurrentFuture {
            shared,
            remote: self.clone(),
        })
    }
}
