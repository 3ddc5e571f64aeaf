//! hyper 1.x on this loop (feature `hyper`): its runtime traits on the
//! loop's tasks and timers, and its I/O traits on a [`Stream`].
//!
//! ```no_run
//! # use loop_api::hyper_rt::{LoopExecutor, LoopTimer};
//! # async fn serve(stream: loop_api::streams::Stream) -> loop_api::Result<()> {
//! # use hyper::{Request, Response, body::Incoming};
//! let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new("Hello, World!".to_string()))
//! });
//! hyper::server::conn::http1::Builder::new()
//!     .timer(LoopTimer)
//!     .serve_connection(stream, service)
//!     .await
//!     .map_err(loop_api::Error::other)
//! # }
//! ```
//!
//! - [`LoopExecutor`] spawns hyper's background futures as tasks of the
//!   running loop. They need not be `Send`: the loop is single-threaded.
//! - [`LoopTimer`] is hyper's `Timer`: each sleep is a loop timer
//!   (`call_at`), cancelled when the sleep is dropped. hyper wants its
//!   sleeps `Send + Sync`; ours share their state through an `Arc` and
//!   must be created, and are only ever fired, on the loop's thread.
//! - [`Stream`] implements `hyper::rt::Read` and `Write` directly, with
//!   the same rules as its tokio traits (see [`crate::streams`]).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::events::{get_running_loop, EventLoopExt, TimerHandle};
use crate::streams::Stream;

/// hyper's `Executor` on the running loop: `execute` is `create_task`.
///
/// # Panics
/// `execute` panics outside a running loop, as spawning a task without a
/// runtime does in tokio.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopExecutor;

impl<F> hyper::rt::Executor<F> for LoopExecutor
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        let lp = get_running_loop().expect("LoopExecutor::execute needs a running loop");
        // A task's result is reported if it is an error nobody retrieves;
        // hyper's futures return `()`, so there is nothing to report.
        let _ = lp.create_task(async move {
            fut.await;
            Ok(())
        });
    }
}

/// hyper's `Timer` on the running loop's timers.
///
/// # Panics
/// `sleep` and `sleep_until` panic outside a running loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopTimer;

thread_local! {
    /// The loop timers of this thread's live sleeps.
    static TIMERS: RefCell<Slab<TimerHandle>> = const { RefCell::new(Slab::new()) };
}

/// What a sleep and its loop timer share.
#[derive(Default)]
struct SleepState {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// One of [`LoopTimer`]'s sleeps.
struct LoopSleep {
    state: Arc<SleepState>,
    /// Its timer's slot in `TIMERS` on `owner`'s thread.
    key: usize,
    owner: ThreadId,
}

impl LoopSleep {
    fn until(deadline: Instant) -> LoopSleep {
        let lp = get_running_loop().expect("LoopTimer needs a running loop");
        let state = Arc::new(SleepState::default());
        let when = lp.time()
            + deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
        let key = TIMERS.with(|t| {
            let mut timers = t.borrow_mut();
            let entry = timers.vacant_entry();
            let key = entry.key();
            let st = state.clone();
            let handle = lp
                .call_at(when, move || {
                    st.fired.store(true, Ordering::Release);
                    TIMERS.with(|t| {
                        t.borrow_mut().try_remove(key);
                    });
                    let waker = st.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(w) = waker {
                        w.wake();
                    }
                })
                .expect("the running loop schedules a timer");
            entry.insert(handle);
            key
        });
        LoopSleep {
            state,
            key,
            owner: std::thread::current().id(),
        }
    }
}

impl Future for LoopSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.state.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if self.state.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for LoopSleep {}

impl Drop for LoopSleep {
    fn drop(&mut self) {
        // A timer that fired removed itself (and its slot may be another
        // sleep's now); one that did not is cancelled, on its own thread.
        if self.state.fired.load(Ordering::Acquire) || std::thread::current().id() != self.owner {
            return;
        }
        let handle = TIMERS.with(|t| t.borrow_mut().try_remove(self.key));
        if let Some(h) = handle {
            h.cancel();
        }
    }
}

impl hyper::rt::Timer for LoopTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LoopSleep::until(Instant::now() + duration))
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LoopSleep::until(deadline))
    }
}

// ----- hyper's I/O traits -----------------------------------------------------------------

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        self.get_mut()
            .reader
            .poll_read_with(cx, room, |d| buf.put_slice(d))
            .map_ok(|_| ())
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(self, cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write_vectored(self, cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(self, cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(self, cx)
    }
}
