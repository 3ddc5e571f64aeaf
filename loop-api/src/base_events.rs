//! The generic event loop (asyncio's `base_events.BaseEventLoop`), written
//! once over any [`Driver`].
//!
//! Everything that is not the OS mechanism lives here: the FIFO ready queue,
//! the timer heap, run/stop/close, the cross-thread queue, exception
//! handling, debug checks, the default executor, readiness callbacks and
//! Unix signals. The networking methods are in the submodules, written
//! once over [`BaseLoop`], the driver-erased face of this type that
//! answers asyncio's private hooks from the [`Driver`]:
//!
//! | module | what it holds |
//! |---|---|
//! | [`connect`] | `create_connection` (Happy Eyeballs), `connect_accepted_socket` |
//! | [`server`] | `Server`, `create_server` |
//! | [`serving`] | what every accept loop shares: `accept_one`, the 1 s back-off |
//! | [`unix`] | `create_unix_connection`, `create_unix_server` |
//! | [`datagram`] | `create_datagram_endpoint` |
//! | [`sendfile`] | `sendfile`, `sock_sendfile` and their read-and-send fallbacks |
//! | [`resolver`] | `getaddrinfo`, `getnameinfo` |
//! | [`sockets`] | socket helpers and asyncio's socket error messages |
//! | [`stream_base`] | what the readiness and the proactor stream transports share |

mod base_loop;
pub mod connect;
pub mod datagram;
#[cfg(test)]
mod idle_memory_tests;
pub(crate) mod pipe_base;
pub mod pipes;
pub mod resolver;
pub mod sendfile;
pub mod server;
pub mod serving;
pub mod sockets;
pub mod stream_base;
mod tls_options;
pub mod unix;
#[cfg(windows)]
#[doc(hidden)]
pub mod windows_console;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};

pub use base_loop::BaseLoop;

/// What an embedding runs around the loop's wait for the OS: the Python
/// front releases the interpreter lock for the wait and runs Python's
/// signal handlers after it. Set with [`BaseLoop::set_poll_hook`].
pub trait PollHook {
    /// Runs `poll`, the driver's wait, once; `timeout` is what it waits at
    /// most (`Some(Duration::ZERO)`: it only looks, `None`: until an event).
    fn around_poll(&self, timeout: Option<Duration>, poll: &mut dyn FnMut());
}

use crate::contextvars::Context;
use crate::driver::{Driver, IoEvent, IoModel, Notify, VirtualClock};
use crate::events::options::{
    AddrInfo, CreateConnectionOptions, CreateDatagramEndpointOptions, CreateServerOptions,
    CreateUnixConnectionOptions, CreateUnixServerOptions, Family, Hosts, SslContext,
    StartTlsOptions, SubprocessOptions,
};
use crate::events::{
    self, AbstractEventLoop, AbstractServer, Callback, DatagramPair, EventLoopExt,
    ExceptionContext, ExceptionHandler, Handle, LocalBoxFuture, Loop, OnceEntry, RawFd, RemoteLoop,
    RepeatCallback, Repr, SendCallback, SoonKey, SoonSlab, Step, StreamPair, SubprocessPair,
    ThreadsafeCaller, TimerHandle,
};
use crate::exceptions::{Error, Result};
use crate::executor::{Executor, Job, ThreadPoolExecutor};
use crate::futures::Future;
use crate::idle_memory::{shrunk_capacity, trim_map};
use crate::log::{self, Level};
use crate::protocols::{
    DatagramProtocolFactory, Protocol, ProtocolFactory, SubprocessProtocolFactory,
};
use crate::tasks::TaskFactory;
use crate::transports::{BaseTransport, Transport};

/// The poll timeout is capped at one day, as asyncio's `MAXIMUM_SELECT_TIMEOUT`.
pub const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
/// Purge cancelled timers once there are more than this many timers...
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
/// ...and more than this fraction of them is cancelled.
const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;
/// Environment variable that turns debug mode on for new loops (any
/// non-empty value), as `PYTHONASYNCIODEBUG` does.
pub const DEBUG_ENV: &str = "RUST_ASYNCIO_DEBUG";

/// The loop clock's origin, shared by every loop of the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn next_loop_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

enum Ready {
    Handle(Handle),
    /// A one-shot handle of its own allocation (the generic `call_soon`).
    Once(Rc<dyn OnceEntry>),
    /// A `call_soon` callback: one reference to its entry in the loop's
    /// slab, which the queue gives back (see [`ReadyQueue`]).
    Soon(SoonKey),
    Step(Rc<dyn Step>),
}

/// The FIFO ready queue. Its `Ready::Soon` items are references to entries
/// of `soon`: each one popped is given back by whoever runs it, and those
/// still queued when the queue is dropped (loop closed or dropped) are given
/// back here.
struct ReadyQueue {
    items: VecDeque<Ready>,
    soon: Rc<SoonSlab>,
}

impl ReadyQueue {
    fn new(soon: Rc<SoonSlab>, capacity: usize) -> Self {
        ReadyQueue {
            items: VecDeque::with_capacity(capacity),
            soon,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.items.len()
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[inline]
    fn push_back(&mut self, r: Ready) {
        self.items.push_back(r);
    }

    #[inline]
    fn pop_front(&mut self) -> Option<Ready> {
        self.items.pop_front()
    }

    /// Gives a past burst's memory back (see
    /// [`idle_memory`](crate::idle_memory)).
    fn trim(&mut self) {
        if let Some(keep) = shrunk_capacity(self.items.len(), self.items.capacity()) {
            self.items.shrink_to(keep);
        }
    }
}

impl Drop for ReadyQueue {
    fn drop(&mut self) {
        for item in self.items.drain(..) {
            if let Ready::Soon(k) = item {
                self.soon.release(k);
            }
        }
    }
}

struct TimerEntry {
    when: f64,
    seq: u64,
    handle: TimerHandle,
}

impl PartialEq for TimerEntry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == CmpOrdering::Equal
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for TimerEntry {
    /// Reversed, so that `BinaryHeap` pops the earliest deadline first, and
    /// equal deadlines in scheduling order.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.when
            .total_cmp(&self.when)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

/// The cross-thread side: `call_soon_threadsafe` pushes here and notifies.
struct Remote {
    loop_id: u64,
    queue: Mutex<VecDeque<SendCallback>>,
    /// True while a notification is on its way; saves a syscall per call
    /// when many arrive between two iterations.
    notified: AtomicBool,
    closed: AtomicBool,
    notify: Arc<dyn Notify>,
}

impl ThreadsafeCaller for Remote {
    fn call_soon_threadsafe(&self, callback: SendCallback) -> Result<()> {
        {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock: close() drains under it, so nothing
            // pushed after the drain can be lost silently.
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::loop_closed());
            }
            q.push_back(callback);
        }
        // Pushed before this swap, so the loop, which clears the flag before
        // it drains, either sees the callback or gets notified.
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.notify.notify()?;
        }
        Ok(())
    }

    fn loop_id(&self) -> u64 {
        self.loop_id
    }
}

impl Remote {
    /// Swaps what other threads queued with `out`, which must be empty: the
    /// callers go on pushing into `out`'s old buffer, so a steady stream of
    /// calls does not regrow a fresh queue (under the lock) after every
    /// drain. Clears `notified` first, so a call pushed after the swap
    /// notifies again.
    fn drain_into(&self, out: &mut VecDeque<SendCallback>) {
        debug_assert!(out.is_empty());
        self.notified.store(false, Ordering::Release);
        std::mem::swap(
            &mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner),
            out,
        );
    }
}

/// The largest remote-queue buffer kept between drains (entries); a burst's
/// bigger one is shrunk back.
const REMOTE_BUFFER_KEEP: usize = 1024;

/// The generic event loop over driver `D`. Backends wrap it:
/// `pub type SelectEventLoop = BaseEventLoop<EpollDriver>`.
pub struct BaseEventLoop<D: Driver> {
    this: Weak<Self>,
    id: u64,
    driver: RefCell<D>,
    events: RefCell<Vec<IoEvent>>,
    ready: RefCell<ReadyQueue>,
    /// Storage of the one-shot `call_soon` handles.
    soon: Rc<SoonSlab>,
    scheduled: RefCell<BinaryHeap<TimerEntry>>,
    timer_seq: Cell<u64>,
    timer_cancelled_count: Rc<Cell<usize>>,
    stopping: Cell<bool>,
    closed: Cell<bool>,
    running: Cell<bool>,
    debug: Cell<bool>,
    slow_callback_duration: Cell<f64>,
    clock_resolution: f64,
    /// The driver's virtual clock, if it has one; else the monotonic clock.
    clock: Option<Rc<VirtualClock>>,
    exception_handler: RefCell<Option<ExceptionHandler>>,
    task_factory: RefCell<Option<TaskFactory>>,
    default_executor: RefCell<Option<Arc<dyn Executor>>>,
    executor_shutdown_called: Cell<bool>,
    remote: Arc<Remote>,
    /// An empty buffer to swap with the remote queue on the next drain.
    remote_spare: RefCell<VecDeque<SendCallback>>,
    readers: RefCell<HashMap<RawFd, Handle>>,
    writers: RefCell<HashMap<RawFd, Handle>>,
    /// Which transport owns each descriptor (asyncio's `_transports`).
    transports: RefCell<HashMap<RawFd, Weak<dyn BaseTransport>>>,
    #[cfg(unix)]
    signals: RefCell<Option<crate::unix_signals::Signals>>,
    #[cfg(unix)]
    signal_handlers: RefCell<HashMap<i32, Handle>>,
    #[cfg(unix)]
    interrupt: RefCell<Option<Handle>>,
    poll_hook: RefCell<Option<Rc<dyn PollHook>>>,
}

impl<D: Driver> BaseEventLoop<D> {
    /// A new loop over `driver`. Debug mode starts on if [`DEBUG_ENV`] is set.
    pub fn new(driver: D) -> Rc<Self> {
        let id = next_loop_id();
        let notify = driver.notifier();
        let clock = driver.clock();
        let debug = std::env::var_os(DEBUG_ENV).is_some_and(|v| !v.is_empty());
        let soon = SoonSlab::new();
        Rc::new_cyclic(|this| BaseEventLoop {
            this: this.clone(),
            id,
            driver: RefCell::new(driver),
            events: RefCell::new(Vec::with_capacity(256)),
            ready: RefCell::new(ReadyQueue::new(soon.clone(), 64)),
            soon,
            scheduled: RefCell::new(BinaryHeap::new()),
            timer_seq: Cell::new(0),
            timer_cancelled_count: Rc::new(Cell::new(0)),
            stopping: Cell::new(false),
            closed: Cell::new(false),
            running: Cell::new(false),
            debug: Cell::new(debug),
            slow_callback_duration: Cell::new(0.1),
            clock_resolution: 1e-9,
            clock,
            exception_handler: RefCell::new(None),
            task_factory: RefCell::new(None),
            default_executor: RefCell::new(None),
            executor_shutdown_called: Cell::new(false),
            remote: Arc::new(Remote {
                loop_id: id,
                queue: Mutex::new(VecDeque::new()),
                notified: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                notify,
            }),
            remote_spare: RefCell::new(VecDeque::new()),
            readers: RefCell::new(HashMap::new()),
            writers: RefCell::new(HashMap::new()),
            transports: RefCell::new(HashMap::new()),
            #[cfg(unix)]
            signals: RefCell::new(None),
            #[cfg(unix)]
            signal_handlers: RefCell::new(HashMap::new()),
            #[cfg(unix)]
            interrupt: RefCell::new(None),
            poll_hook: RefCell::new(None),
        })
    }

    /// Runs `f` with the driver borrowed; backends use it to reach their own
    /// driver (transports, completions).
    ///
    /// # Panics
    /// If the driver is borrowed already: from inside `Driver::poll` (which
    /// runs no user code) or a nested `with_driver`.
    pub fn with_driver<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.driver.borrow_mut())
    }

    /// [`with_driver`](Self::with_driver), or `None` when the driver is
    /// borrowed already: for destructors, which may run anywhere.
    pub fn try_with_driver<R>(&self, f: impl FnOnce(&mut D) -> R) -> Option<R> {
        self.driver.try_borrow_mut().ok().map(|mut d| f(&mut d))
    }

    fn me(&self) -> Rc<Self> {
        self.this
            .upgrade()
            .expect("a running method has a strong count")
    }

    fn check_closed(&self) -> Result<()> {
        if self.closed.get() {
            return Err(Error::loop_closed());
        }
        Ok(())
    }

    #[inline]
    fn push_ready(&self, r: Ready) {
        self.ready.borrow_mut().push_back(r);
    }

    #[inline(never)]
    fn push_other_handle(&self, handle: &Handle) {
        self.push_ready(Ready::Handle(handle.clone()));
    }

    /// Moves the calls queued by other threads to the ready queue.
    ///
    /// Lock-free when nothing came (the common case): a caller pushes before
    /// it sets `notified`, and one that finds it unset notifies the driver,
    /// so a skipped drain is never a lost callback.
    #[inline]
    fn drain_remote(&self) {
        if self.remote.notified.load(Ordering::Acquire) {
            self.move_remote_calls();
        }
    }

    fn move_remote_calls(&self) {
        let mut batch = std::mem::take(&mut *self.remote_spare.borrow_mut());
        self.remote.drain_into(&mut batch);
        for cb in batch.drain(..) {
            self.push_ready(Ready::Soon(self.soon.push(cb, None)));
        }
        if batch.capacity() > REMOTE_BUFFER_KEEP {
            batch.shrink_to(REMOTE_BUFFER_KEEP);
        }
        *self.remote_spare.borrow_mut() = batch;
    }

    /// Scheduling on the loop's thread: calls queued by other threads come
    /// first, as in asyncio's one shared ready deque, so that a
    /// `call_soon_threadsafe` that happened before this call runs before it.
    #[inline]
    fn push_ready_after_remote(&self, r: Ready) {
        self.drain_remote();
        self.push_ready(r);
    }

    // ----- one iteration ----------------------------------------------------

    /// asyncio's `_run_once`: poll for I/O, move due timers to the ready
    /// queue, then run exactly the callbacks that were ready at that point.
    fn run_once(&self) -> Result<()> {
        self.purge_cancelled_timers();

        let nothing_ready = self.ready.borrow().is_empty();
        if nothing_ready {
            self.trim_idle();
        }
        let mut deadline = None;
        let timeout = if !nothing_ready || self.stopping.get() {
            Some(Duration::ZERO)
        } else if let Some(top) = self.scheduled.borrow().peek() {
            deadline = Some(top.when);
            let secs = (top.when - self.time()).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
            Some(Duration::from_secs_f64(secs))
        } else {
            None
        };
        if let Some(clock) = &self.clock {
            clock.set_deadline(deadline);
        }

        {
            // Only this function touches `events`, and it never runs nested
            // (a running loop cannot be run again), so the buffer stays
            // borrowed while the events are turned into ready callbacks.
            let mut events = self.events.borrow_mut();
            events.clear();
            let hook = self.poll_hook.borrow().clone();
            let mut polled = Ok(());
            let mut poll = || polled = self.driver.borrow_mut().poll(timeout, &mut events);
            match &hook {
                Some(h) => h.around_poll(timeout, &mut poll),
                None => poll(),
            }
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
            self.process_events(&events);
        }

        self.drain_remote();

        // The clock is read only when there is a timer that may be due: an
        // iteration with no timers needs no time().
        let mut end_time = None;
        loop {
            let mut heap = self.scheduled.borrow_mut();
            if heap.is_empty() {
                break;
            }
            let end = *end_time.get_or_insert_with(|| self.time() + self.clock_resolution);
            match heap.peek() {
                Some(top) if top.when < end => {}
                _ => break,
            }
            let entry = heap.pop().expect("peeked");
            drop(heap);
            let t = entry.handle.timer();
            t.scheduled.set(false);
            if entry.handle.cancelled() {
                self.timer_cancelled_count
                    .set(self.timer_cancelled_count.get().saturating_sub(1));
                continue;
            }
            self.push_ready(Ready::Handle(entry.handle.0));
        }

        // Only what is ready now runs in this iteration: callbacks scheduled
        // by these callbacks wait for the next one, after another poll.
        let ntodo = self.ready.borrow().len();
        for _ in 0..ntodo {
            let Some(item) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            self.run_ready(item);
        }
        Ok(())
    }

    /// Called when an iteration starts with nothing ready: gives back what a
    /// burst made the loop's stores and the driver's grow to (see
    /// [`idle_memory`](crate::idle_memory)). Cheap when there is nothing to
    /// give.
    fn trim_idle(&self) {
        self.ready.borrow_mut().trim();
        self.soon.trim();
        {
            let mut heap = self.scheduled.borrow_mut();
            if let Some(keep) = shrunk_capacity(heap.len(), heap.capacity()) {
                heap.shrink_to(keep);
            }
        }
        trim_map(&mut self.readers.borrow_mut());
        trim_map(&mut self.writers.borrow_mut());
        trim_map(&mut self.transports.borrow_mut());
        self.driver.borrow_mut().trim();
    }

    fn purge_cancelled_timers(&self) {
        let cancelled = self.timer_cancelled_count.get();
        let mut heap = self.scheduled.borrow_mut();
        let n = heap.len();
        if n > MIN_SCHEDULED_TIMER_HANDLES
            && (cancelled as f64) / (n as f64) > MIN_CANCELLED_TIMER_HANDLES_FRACTION
        {
            let old = std::mem::take(&mut *heap);
            let mut kept = Vec::with_capacity(n - cancelled);
            for e in old.into_vec() {
                if e.handle.cancelled() {
                    e.handle.timer().scheduled.set(false);
                } else {
                    kept.push(e);
                }
            }
            *heap = BinaryHeap::from(kept);
            self.timer_cancelled_count.set(0);
        } else {
            while heap.peek().is_some_and(|e| e.handle.cancelled()) {
                let e = heap.pop().expect("peeked");
                e.handle.timer().scheduled.set(false);
                self.timer_cancelled_count
                    .set(self.timer_cancelled_count.get().saturating_sub(1));
            }
        }
    }

    fn process_events(&self, events: &[IoEvent]) {
        for ev in events {
            if ev.readable {
                self.ready_fd_callback(&self.readers, ev.fd, true);
            }
            if ev.writable {
                self.ready_fd_callback(&self.writers, ev.fd, false);
            }
        }
    }

    fn ready_fd_callback(&self, map: &RefCell<HashMap<RawFd, Handle>>, fd: RawFd, reader: bool) {
        let h = map.borrow().get(&fd).cloned();
        match h {
            Some(h) if h.cancelled() => {
                let _ = if reader {
                    self.remove_reader(fd)
                } else {
                    self.remove_writer(fd)
                };
            }
            Some(h) => self.push_ready(Ready::Handle(h)),
            None => {}
        }
    }

    fn run_ready(&self, item: Ready) {
        let debug = self.debug.get();
        let item = match item {
            // The common case, without debug mode's timing and label.
            Ready::Soon(k) if !debug => {
                self.soon.run_queued(k, |e, h| {
                    self.call_exception_handler(
                        ExceptionContext::new(format!("Exception in callback {h:?}"))
                            .with_exception(e)
                            .with_handle(h),
                    );
                });
                return;
            }
            Ready::Once(o) if !debug => {
                if let Err((e, h)) = o.run_queued() {
                    self.call_exception_handler(
                        ExceptionContext::new(format!("Exception in callback {h:?}"))
                            .with_exception(e)
                            .with_handle(h),
                    );
                }
                return;
            }
            Ready::Soon(k) => Ready::Handle(self.soon.into_handle(k)),
            Ready::Once(o) => Ready::Handle(Handle(Repr::Once(o))),
            item => item,
        };
        let start = debug.then(Instant::now);
        let label = match item {
            Ready::Soon(_) | Ready::Once(_) => unreachable!("made a Handle above"),
            Ready::Handle(h) => {
                if h.cancelled() {
                    return;
                }
                if let Err(e) = h.run() {
                    self.call_exception_handler(
                        ExceptionContext::new(format!("Exception in callback {h:?}"))
                            .with_exception(e)
                            .with_handle(h.clone()),
                    );
                }
                start.map(|_| format!("{h:?}"))
            }
            Ready::Step(s) => {
                let label = start.map(|_| s.describe());
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| s.run_step())) {
                    self.call_exception_handler(
                        ExceptionContext::new("Exception in task step")
                            .with_exception(Error::from_panic(p)),
                    );
                }
                label
            }
        };
        if let (Some(t0), Some(label)) = (start, label) {
            let dt = t0.elapsed().as_secs_f64();
            if dt >= self.slow_callback_duration.get() {
                log::log(
                    Level::Warning,
                    &format!("Executing {label} took {dt:.3} seconds"),
                );
            }
        }
    }

    // ----- readiness --------------------------------------------------------

    fn update_interest(&self, fd: RawFd) -> Result<()> {
        let r = self.readers.borrow().contains_key(&fd);
        let w = self.writers.borrow().contains_key(&fd);
        self.driver.borrow_mut().set_interest(fd, r, w)
    }

    fn add_fd_callback(
        &self,
        map: &RefCell<HashMap<RawFd, Handle>>,
        fd: RawFd,
        handle: Handle,
    ) -> Result<()> {
        self.check_closed()?;
        let old = map.borrow_mut().insert(fd, handle);
        if let Err(e) = self.update_interest(fd) {
            // Leave things as they were.
            let mut m = map.borrow_mut();
            match old {
                Some(o) => m.insert(fd, o),
                None => m.remove(&fd),
            };
            return Err(e);
        }
        if let Some(o) = old {
            o.cancel();
        }
        Ok(())
    }

    fn remove_fd_callback(&self, map: &RefCell<HashMap<RawFd, Handle>>, fd: RawFd) -> Result<bool> {
        if self.closed.get() {
            return Ok(false);
        }
        let Some(h) = map.borrow_mut().remove(&fd) else {
            return Ok(false);
        };
        h.cancel();
        self.update_interest(fd)?;
        Ok(true)
    }

    // ----- signals -------------------------------------------------------------

    #[cfg(unix)]
    fn ensure_signals(&self) -> Result<()> {
        if self.signals.borrow().is_some() {
            return Ok(());
        }
        let s = crate::unix_signals::Signals::new()?;
        let fd = s.read_fd();
        *self.signals.borrow_mut() = Some(s);
        let weak = self.this.clone();
        let reader: RepeatCallback = Box::new(move || {
            if let Some(lp) = weak.upgrade() {
                lp.dispatch_signals();
            }
        });
        self.add_fd_callback(
            &self.readers,
            fd,
            Handle::new_repeating(reader, Some(Context::new())),
        )
    }

    #[cfg(unix)]
    fn dispatch_signals(&self) {
        let sigs = match self.signals.borrow_mut().as_mut() {
            Some(s) => s.drain(),
            None => return,
        };
        for sig in sigs {
            let h = self.signal_handlers.borrow().get(&sig).cloned();
            if let Some(h) = h {
                self.push_ready(Ready::Handle(h));
                continue;
            }
            if sig == libc::SIGINT {
                if let Some(h) = self.interrupt.borrow_mut().take() {
                    // SA_RESETHAND already put the default action back.
                    if let Some(s) = self.signals.borrow_mut().as_mut() {
                        s.forget(sig);
                    }
                    self.push_ready(Ready::Handle(h));
                }
            }
        }
    }

    #[cfg(unix)]
    fn close_signals(&self) {
        self.signal_handlers.borrow_mut().clear();
        self.interrupt.borrow_mut().take();
        let s = self.signals.borrow_mut().take();
        if let Some(s) = s {
            self.readers.borrow_mut().remove(&s.read_fd());
            let _ = self
                .driver
                .borrow_mut()
                .set_interest(s.read_fd(), false, false);
            drop(s); // restores every disposition
        }
    }

    #[cfg(windows)]
    fn close_signals(&self) {
        // Ctrl-C goes back to whoever had it; nothing to report from close.
        let _ = windows_console::remove(self.id);
    }

    #[cfg(not(any(unix, windows)))]
    fn close_signals(&self) {}

    fn default_executor(&self) -> Result<Arc<dyn Executor>> {
        if self.executor_shutdown_called.get() {
            return Err(Error::runtime("Executor shutdown has been called"));
        }
        let mut ex = self.default_executor.borrow_mut();
        Ok(ex
            .get_or_insert_with(|| Arc::new(ThreadPoolExecutor::new()))
            .clone())
    }
}

impl<D: Driver> AbstractEventLoop for BaseEventLoop<D> {
    fn loop_id(&self) -> u64 {
        self.id
    }

    fn as_loop(&self) -> Loop {
        self.me()
    }

    fn backend_name(&self) -> &'static str {
        self.driver.borrow().name()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn run_forever(&self) -> Result<()> {
        events::check_can_run(self)?;
        self.running.set(true);
        let prev = events::_set_running_loop(Some(self.as_loop()));
        struct Finish<'a, D: Driver>(&'a BaseEventLoop<D>, Option<Loop>);
        impl<D: Driver> Drop for Finish<'_, D> {
            fn drop(&mut self) {
                self.0.stopping.set(false);
                self.0.running.set(false);
                events::_set_running_loop(self.1.take());
            }
        }
        let _finish = Finish(self, prev);
        loop {
            self.run_once()?;
            if self.stopping.get() {
                return Ok(());
            }
        }
    }

    fn stop(&self) {
        self.stopping.set(true);
    }

    fn is_running(&self) -> bool {
        self.running.get()
    }

    fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn close(&self) -> Result<()> {
        if self.running.get() {
            return Err(Error::runtime("Cannot close a running event loop"));
        }
        if self.closed.get() {
            return Ok(());
        }
        if self.debug.get() {
            log::log(
                Level::Debug,
                &format!("Close <{} loop {}>", self.backend_name(), self.id),
            );
        }
        self.closed.set(true);
        self.close_signals();
        // Take everything out first: dropping callbacks and tasks runs user
        // destructors, which may call back into the loop.
        let ready = std::mem::replace(
            &mut *self.ready.borrow_mut(),
            ReadyQueue::new(self.soon.clone(), 0),
        );
        let timers = std::mem::take(&mut *self.scheduled.borrow_mut());
        let readers = std::mem::take(&mut *self.readers.borrow_mut());
        let writers = std::mem::take(&mut *self.writers.borrow_mut());
        {
            let mut q = self
                .remote
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.remote.closed.store(true, Ordering::Release);
            q.clear();
        }
        for fd in readers.keys().chain(writers.keys()) {
            let _ = self.driver.borrow_mut().set_interest(*fd, false, false);
        }
        self.timer_cancelled_count.set(0);
        drop((ready, timers, readers, writers));
        // A transport still open holds its protocol, which holds it back,
        // and both hold this loop: nothing can flush or schedule for them
        // any more, so they are torn down now (`connection_lost(None)`,
        // sockets closed), or the cycle would keep every descriptor open.
        let transports = std::mem::take(&mut *self.transports.borrow_mut());
        for t in transports.values().filter_map(Weak::upgrade) {
            t.close();
        }
        let _ = self.driver.borrow_mut().flush();
        crate::tasks::_forget_loop_tasks(self.id);
        self.executor_shutdown_called.set(true);
        if let Some(ex) = self.default_executor.borrow_mut().take() {
            ex.shutdown(false);
        }
        Ok(())
    }

    fn shutdown_asyncgens(&self) -> LocalBoxFuture<'static, Result<()>> {
        let closed = self.closed.get();
        Box::pin(async move {
            if closed {
                return Err(Error::loop_closed());
            }
            Ok(())
        })
    }

    fn shutdown_default_executor(
        &self,
        timeout: Option<Duration>,
    ) -> LocalBoxFuture<'static, Result<()>> {
        self.executor_shutdown_called.set(true);
        let executor = self.default_executor.borrow_mut().take();
        let lp = self.as_loop();
        Box::pin(async move {
            let Some(executor) = executor else {
                return Ok(());
            };
            // Join the pool's threads on a thread of its own, so the loop
            // keeps running meanwhile.
            let joiner: Arc<dyn Executor> = Arc::new(ThreadPoolExecutor::with_max_workers(1));
            let ex = executor.clone();
            let joined = lp.run_in_executor(Some(joiner.clone()), move || ex.shutdown(true))?;
            joiner.shutdown(false);
            let Some(timeout) = timeout else {
                return joined.await;
            };
            let race: Future<bool> = lp.create_future();
            let (r1, r2) = (race.clone(), race.clone());
            joined.add_done_callback(
                move |_| {
                    let _ = r1.set_result(true);
                },
                None,
            );
            let timer = lp.call_later_dyn(
                timeout.as_secs_f64(),
                Box::new(move || {
                    let _ = r2.set_result(false);
                }),
                None,
            )?;
            let finished = race.await?;
            timer.cancel();
            if !finished {
                log::log(
                    Level::Warning,
                    &format!(
                        "The executor did not finishing joining its threads within {} seconds.",
                        timeout.as_secs_f64()
                    ),
                );
                executor.shutdown(false);
            }
            Ok(())
        })
    }

    fn call_soon_dyn(&self, callback: Callback, context: Option<Context>) -> Result<Handle> {
        self.check_closed()?;
        let (k, h) = self.soon.push_with_handle(callback, context);
        self.push_ready_after_remote(Ready::Soon(k));
        Ok(h)
    }

    #[inline]
    fn call_soon_handle(&self, handle: &Handle) -> Result<()> {
        self.check_closed()?;
        self.drain_remote();
        // The item is made where it is pushed, and the other handles take
        // a path of their own: moving the item through a parameter, or
        // cloning the whole `Repr`, costs a store-forwarding stall here.
        match &handle.0 {
            Repr::Once(o) => {
                let o = o.clone();
                self.ready.borrow_mut().push_back(Ready::Once(o));
            }
            _ => self.push_other_handle(handle),
        }
        Ok(())
    }

    fn call_later_dyn(
        &self,
        delay: f64,
        callback: Callback,
        context: Option<Context>,
    ) -> Result<TimerHandle> {
        if delay.is_nan() {
            return Err(Error::value("delay must not be NaN"));
        }
        self.call_at_dyn(self.time() + delay, callback, context)
    }

    fn call_at_dyn(
        &self,
        when: f64,
        callback: Callback,
        context: Option<Context>,
    ) -> Result<TimerHandle> {
        if when.is_nan() {
            return Err(Error::value("when must not be NaN"));
        }
        self.check_closed()?;
        let h = TimerHandle::new(when, callback, context, self.timer_cancelled_count.clone());
        h.timer().scheduled.set(true);
        let seq = self.timer_seq.get();
        self.timer_seq.set(seq + 1);
        self.scheduled.borrow_mut().push(TimerEntry {
            when,
            seq,
            handle: h.clone(),
        });
        Ok(h)
    }

    fn call_soon_threadsafe_dyn(&self, callback: SendCallback) -> Result<Handle> {
        // `&self` proves we are on the loop's own thread (the loop is not
        // `Send`): no wakeup is needed, the queue is ours.
        self.call_soon_dyn(callback, None)
    }

    fn remote(&self) -> RemoteLoop {
        RemoteLoop(self.remote.clone())
    }

    fn time(&self) -> f64 {
        match &self.clock {
            None => epoch().elapsed().as_secs_f64(),
            Some(c) => c.now(),
        }
    }

    fn call_soon_step(&self, step: Rc<dyn Step>) -> Result<()> {
        self.check_closed()?;
        self.push_ready_after_remote(Ready::Step(step));
        Ok(())
    }

    fn set_task_factory(&self, factory: Option<TaskFactory>) {
        *self.task_factory.borrow_mut() = factory;
    }

    fn get_task_factory(&self) -> Option<TaskFactory> {
        self.task_factory.borrow().clone()
    }

    fn run_in_executor_job(&self, executor: Option<Arc<dyn Executor>>, job: Job) -> Result<()> {
        self.check_closed()?;
        let executor = match executor {
            Some(e) => e,
            None => self.default_executor()?,
        };
        executor.submit(job)
    }

    fn set_default_executor(&self, executor: Arc<dyn Executor>) -> Result<()> {
        *self.default_executor.borrow_mut() = Some(executor);
        Ok(())
    }

    fn set_exception_handler(&self, handler: Option<ExceptionHandler>) {
        *self.exception_handler.borrow_mut() = handler;
    }

    fn get_exception_handler(&self) -> Option<ExceptionHandler> {
        self.exception_handler.borrow().clone()
    }

    fn default_exception_handler(&self, context: &ExceptionContext) {
        let msg = if context.message.is_empty() {
            "Unhandled exception in event loop"
        } else {
            &context.message
        };
        let mut ctx = context.clone();
        ctx.message = msg.to_string();
        log::log(Level::Error, &ctx.render());
    }

    fn call_exception_handler(&self, context: ExceptionContext) {
        let handler = self.exception_handler.borrow().clone();
        let Some(handler) = handler else {
            self.default_exception_handler(&context);
            return;
        };
        let r = catch_unwind(AssertUnwindSafe(|| handler(self, &context)));
        if let Err(p) = r {
            let mut ctx = ExceptionContext::new("Unhandled error in exception handler")
                .with_exception(Error::from_panic(p));
            ctx.message
                .push_str(&format!("\ncontext: {}", context.render()));
            self.default_exception_handler(&ctx);
        }
    }

    fn get_debug(&self) -> bool {
        self.debug.get()
    }

    fn set_debug(&self, enabled: bool) {
        self.debug.set(enabled);
    }

    fn slow_callback_duration(&self) -> f64 {
        self.slow_callback_duration.get()
    }

    fn set_slow_callback_duration(&self, seconds: f64) {
        self.slow_callback_duration.set(seconds);
    }

    fn add_reader_dyn(&self, fd: RawFd, callback: RepeatCallback) -> Result<()> {
        self._ensure_fd_no_transport(fd)?;
        self._add_reader(fd, callback)
    }

    fn remove_reader(&self, fd: RawFd) -> Result<bool> {
        self._ensure_fd_no_transport(fd)?;
        self._remove_reader(fd)
    }

    fn add_writer_dyn(&self, fd: RawFd, callback: RepeatCallback) -> Result<()> {
        self._ensure_fd_no_transport(fd)?;
        self._add_writer(fd, callback)
    }

    fn remove_writer(&self, fd: RawFd) -> Result<bool> {
        self._ensure_fd_no_transport(fd)?;
        self._remove_writer(fd)
    }

    // ----- DNS: the system resolver on the default executor ---------------------

    fn getaddrinfo_dyn(
        &self,
        host: Option<String>,
        port: Option<String>,
        family: Family,
        socktype: i32,
        proto: i32,
        flags: i32,
    ) -> LocalBoxFuture<'static, Result<Vec<AddrInfo>>> {
        resolver::getaddrinfo(self.as_loop(), host, port, family, socktype, proto, flags)
    }

    fn getnameinfo(
        &self,
        sockaddr: SocketAddr,
        flags: i32,
    ) -> LocalBoxFuture<'static, Result<(String, String)>> {
        resolver::getnameinfo(self.as_loop(), sockaddr, flags)
    }

    // ----- networking, written once in the submodules ---------------------------

    fn create_connection_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        host: Option<String>,
        port: Option<u16>,
        options: CreateConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        connect::create_connection(self.me(), protocol_factory, host, port, options)
    }

    fn create_server_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        host: Hosts,
        port: Option<u16>,
        options: CreateServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        server::create_server(self.me(), protocol_factory, host, port, options)
    }

    fn connect_accepted_socket_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        ssl: Option<SslContext>,
        ssl_handshake_timeout: Option<Duration>,
        ssl_shutdown_timeout: Option<Duration>,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        connect::connect_accepted_socket(
            self.me(),
            protocol_factory,
            sock,
            ssl,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
    }

    fn sendfile(
        &self,
        transport: Rc<dyn Transport>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        sendfile::sendfile(self.as_loop(), transport, file, offset, count, fallback)
    }

    fn start_tls(
        &self,
        transport: Rc<dyn Transport>,
        protocol: Rc<dyn Protocol>,
        sslcontext: SslContext,
        options: StartTlsOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn Transport>>> {
        tls_options::start_tls(self.me(), transport, protocol, sslcontext, options)
    }

    fn create_unix_connection_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        unix::create_unix_connection(self.me(), protocol_factory, path, options)
    }

    fn create_unix_server_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        unix::create_unix_server(self.me(), protocol_factory, path, options)
    }

    fn create_datagram_endpoint_dyn(
        &self,
        protocol_factory: DatagramProtocolFactory,
        options: CreateDatagramEndpointOptions,
    ) -> LocalBoxFuture<'static, Result<DatagramPair>> {
        datagram::create_datagram_endpoint(self.me(), protocol_factory, options)
    }

    fn connect_read_pipe_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        pipe: File,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        pipes::connect_read_pipe(self.me(), protocol_factory, pipe)
    }

    fn connect_write_pipe_dyn(
        &self,
        protocol_factory: ProtocolFactory,
        pipe: File,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        pipes::connect_write_pipe(self.me(), protocol_factory, pipe)
    }

    fn subprocess_exec_dyn(
        &self,
        protocol_factory: SubprocessProtocolFactory,
        program: OsString,
        args: Vec<OsString>,
        options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
        crate::base_subprocess::subprocess_exec(self.me(), protocol_factory, program, args, options)
    }

    fn subprocess_shell_dyn(
        &self,
        protocol_factory: SubprocessProtocolFactory,
        cmd: OsString,
        options: SubprocessOptions,
    ) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
        crate::base_subprocess::subprocess_shell(self.me(), protocol_factory, cmd, options)
    }

    // ----- the sock_* methods: the driver's ------------------------------------

    fn sock_recv(
        &self,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>> {
        D::Io::sock_recv(&self.me(), sock, nbytes)
    }

    fn sock_recv_into(
        &self,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>> {
        D::Io::sock_recv_into(&self.me(), sock, buf)
    }

    fn sock_recvfrom(
        &self,
        sock: Rc<Socket>,
        bufsize: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, SockAddr)>> {
        D::Io::sock_recvfrom(&self.me(), sock, bufsize)
    }

    fn sock_recvfrom_into(
        &self,
        sock: Rc<Socket>,
        buf: Vec<u8>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize, SockAddr)>> {
        D::Io::sock_recvfrom_into(&self.me(), sock, buf, nbytes)
    }

    fn sock_sendall(&self, sock: Rc<Socket>, data: Vec<u8>) -> LocalBoxFuture<'static, Result<()>> {
        D::Io::sock_sendall(&self.me(), sock, data)
    }

    fn sock_sendto(
        &self,
        sock: Rc<Socket>,
        data: Vec<u8>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<usize>> {
        D::Io::sock_sendto(&self.me(), sock, data, address)
    }

    fn sock_connect(
        &self,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>> {
        D::Io::sock_connect(&self.me(), sock, address)
    }

    fn sock_accept(&self, sock: Rc<Socket>) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>> {
        D::Io::sock_accept(&self.me(), sock)
    }

    fn sock_sendfile(
        &self,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        sendfile::sock_sendfile(self.me(), sock, file, offset, count, fallback)
    }

    #[cfg(unix)]
    fn add_signal_handler_dyn(&self, sig: i32, callback: RepeatCallback) -> Result<()> {
        self.check_closed()?;
        crate::unix_signals::check_signal(sig)?;
        self.ensure_signals()?;
        self.signals
            .borrow_mut()
            .as_mut()
            .expect("ensured")
            .install(sig, false)?;
        let old = self
            .signal_handlers
            .borrow_mut()
            .insert(sig, Handle::new_repeating(callback, None));
        if let Some(o) = old {
            o.cancel();
        }
        Ok(())
    }

    #[cfg(unix)]
    fn remove_signal_handler(&self, sig: i32) -> Result<bool> {
        crate::unix_signals::check_signal(sig)?;
        let Some(h) = self.signal_handlers.borrow_mut().remove(&sig) else {
            return Ok(false);
        };
        h.cancel();
        if let Some(s) = self.signals.borrow_mut().as_mut() {
            s.uninstall(sig)?;
        }
        Ok(true)
    }

    #[cfg(unix)]
    fn add_interrupt_handler(&self, callback: Callback) -> Result<bool> {
        self.check_closed()?;
        if !crate::unix_signals::is_default(libc::SIGINT) {
            return Ok(false);
        }
        self.ensure_signals()?;
        self.signals
            .borrow_mut()
            .as_mut()
            .expect("ensured")
            .install(libc::SIGINT, true)?;
        *self.interrupt.borrow_mut() = Some(Handle::new(callback, None));
        Ok(true)
    }

    #[cfg(unix)]
    fn remove_interrupt_handler(&self) -> Result<()> {
        if self.interrupt.borrow_mut().take().is_some()
            && !self.signal_handlers.borrow().contains_key(&libc::SIGINT)
        {
            if let Some(s) = self.signals.borrow_mut().as_mut() {
                s.uninstall(libc::SIGINT)?;
            }
        }
        // A Ctrl-C that arrived but was not read yet belongs to the handler
        // just removed: read it now (with no interrupt handler it is
        // dropped), so that it cannot fire the next one. Other signals read
        // here are dispatched as usual.
        self.dispatch_signals();
        Ok(())
    }

    #[cfg(not(unix))]
    fn add_signal_handler_dyn(&self, _sig: i32, _callback: RepeatCallback) -> Result<()> {
        Err(Error::NotSupported {
            feature: "add_signal_handler",
            reason: "Windows has no POSIX signals".into(),
        })
    }

    #[cfg(not(unix))]
    fn remove_signal_handler(&self, _sig: i32) -> Result<bool> {
        Err(Error::NotSupported {
            feature: "remove_signal_handler",
            reason: "Windows has no POSIX signals".into(),
        })
    }

    /// Through the console control handler (`base_events/windows_console.rs`).
    #[cfg(windows)]
    fn add_interrupt_handler(&self, callback: Callback) -> Result<bool> {
        self.check_closed()?;
        let handle = Handle::new(callback, None);
        let weak = self.this.clone();
        // Runs on this loop's thread when the Ctrl-C's wakeup is dispatched.
        let fire: Box<dyn FnOnce()> = Box::new(move || {
            if let Some(lp) = weak.upgrade() {
                if !lp.closed.get() {
                    lp.push_ready(Ready::Handle(handle));
                }
            }
        });
        windows_console::add(self.id, &self.remote, fire)
    }

    #[cfg(windows)]
    fn remove_interrupt_handler(&self) -> Result<()> {
        windows_console::remove(self.id)
    }

    #[cfg(not(any(unix, windows)))]
    fn add_interrupt_handler(&self, _callback: Callback) -> Result<bool> {
        Err(Error::NotImplemented("add_interrupt_handler"))
    }

    #[cfg(not(any(unix, windows)))]
    fn remove_interrupt_handler(&self) -> Result<()> {
        Ok(())
    }
}
