//! Helpers shared by cases.

use std::cell::RefCell;
use std::rc::Rc;

use loop_api::events::ExceptionContext;
use loop_api::{AbstractEventLoop, EventLoopExt, Loop};

/// An ordered record that callbacks append to.
#[derive(Clone)]
pub struct Log<T>(Rc<RefCell<Vec<T>>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log(Rc::new(RefCell::new(Vec::new())))
    }
}

impl<T: Clone> Log<T> {
    /// An empty log.
    pub fn new() -> Self {
        Log(Rc::new(RefCell::new(Vec::new())))
    }
    /// Appends.
    pub fn push(&self, v: T) {
        self.0.borrow_mut().push(v)
    }
    /// A copy of the entries.
    pub fn get(&self) -> Vec<T> {
        self.0.borrow().clone()
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Installs an exception handler that records every context, and returns the record.
pub fn capture_exceptions(lp: &Loop) -> Log<ExceptionContext> {
    let log = Log::new();
    let l = log.clone();
    lp.set_exception_handler(Some(Rc::new(
        move |_lp: &dyn AbstractEventLoop, ctx: &ExceptionContext| l.push(ctx.clone()),
    )));
    log
}

/// `lp.call_soon_dyn(f)` with the closure boxed.
pub fn soon(lp: &Loop, f: impl FnOnce() + 'static) -> loop_api::Result<loop_api::Handle> {
    lp.call_soon_dyn(Box::new(f), None)
}

/// One way to schedule a one-shot callback (`context`: `call_soon(...,
/// context=)`).
pub type SoonRoad = fn(
    &Loop,
    Box<dyn FnOnce()>,
    Option<loop_api::contextvars::Context>,
) -> loop_api::Result<loop_api::Handle>;

/// The two ways to schedule a one-shot callback, which store it
/// differently: `call_soon_dyn` (a boxed closure, kept in the loop's slab of
/// one-shot entries) and the generic `call_soon` / `call_soon_in` (the
/// closure and its handle's state in one allocation). The cases about
/// handles run their body on each.
pub const SOON_ROADS: [(&str, SoonRoad); 2] = [
    ("call_soon_dyn", |lp, f, c| lp.call_soon_dyn(f, c)),
    ("generic call_soon", |lp, f, c| match c {
        Some(c) => lp.call_soon_in(c, f),
        None => lp.call_soon(f),
    }),
];

/// Stops `lp` after `secs` of loop time: a safety net for cases that run
/// the loop forever, never the way a case synchronises.
pub fn stop_after(lp: &Loop, secs: f64) {
    let l = lp.clone();
    lp.call_later_dyn(secs, Box::new(move || l.stop()), None)
        .expect("loop open");
}

/// Runs `lp` until `fut` is done, leaving its result in place (unlike
/// `run_until_complete`, which moves it out). `secs` of loop time is a
/// safety net only: past it this returns an error instead of hanging.
pub fn run_until_done(
    lp: &Loop,
    fut: &dyn loop_api::futures::FutureObj,
    secs: f64,
) -> loop_api::Result<()> {
    let l = lp.clone();
    let id = fut.add_done_callback_erased(Box::new(move || l.stop()));
    let l = lp.clone();
    let net = lp.call_later_dyn(secs, Box::new(move || l.stop()), None)?;
    let ran = lp.run_forever();
    net.cancel();
    fut.remove_done_callback(id);
    ran?;
    if !fut.done() {
        return Err(loop_api::Error::runtime(format!(
            "{} still pending after the {secs}s safety net",
            fut.repr()
        )));
    }
    Ok(())
}

/// Runs exactly one loop iteration (`stop()` before `run_forever()`).
pub fn run_once(lp: &Loop) -> loop_api::Result<()> {
    lp.stop();
    lp.run_forever()
}

/// True when both erased handles name the same task or future object.
pub fn same_obj<A: ?Sized, B: ?Sized>(a: &Rc<A>, b: &Rc<B>) -> bool {
    std::ptr::addr_eq(Rc::as_ptr(a), Rc::as_ptr(b))
}

// ----- helpers for the loop-core cases (base_events, events, unix_events) ---

/// Serialises every case that touches signal dispositions: they are
/// process-wide, and cases run on parallel threads. Take it with
/// [`signal_lock`].
pub static SIGNAL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SIGNAL_LOCK`], ignoring poisoning (a failed case must not fail
/// the next one).
pub fn signal_lock() -> std::sync::MutexGuard<'static, ()> {
    SIGNAL_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records this thread's loop log lines (`loop_api::log`) while alive;
/// puts the previous sink back on drop.
pub struct LogCapture {
    lines: Log<(loop_api::log::Level, String)>,
    prev: Option<Option<loop_api::log::Sink>>,
}

impl LogCapture {
    /// Starts capturing this thread's log lines.
    pub fn start() -> Self {
        let lines: Log<(loop_api::log::Level, String)> = Log::new();
        let l = lines.clone();
        let prev = loop_api::log::set_sink(Some(Rc::new(move |level, msg: &str| {
            l.push((level, msg.to_string()))
        })));
        LogCapture {
            lines,
            prev: Some(prev),
        }
    }

    /// Every line so far, with its level.
    pub fn lines(&self) -> Vec<(loop_api::log::Level, String)> {
        self.lines.get()
    }

    /// The lines logged at `level`.
    pub fn at(&self, level: loop_api::log::Level) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m)
            .collect()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            loop_api::log::set_sink(prev);
        }
    }
}

/// Fails unless `r` is `Err(Error::Runtime(msg))`, with exactly `msg`.
#[track_caller]
pub fn expect_runtime<T>(r: loop_api::Result<T>, msg: &str) {
    match r {
        Err(loop_api::Error::Runtime(m)) if m == msg => {}
        Err(e) => panic!("expected RuntimeError({msg:?}), got {e}"),
        Ok(_) => panic!("expected RuntimeError({msg:?}), got Ok"),
    }
}

/// Fails unless `r` is `Err(Error::Value(msg))`, with exactly `msg`.
#[track_caller]
pub fn expect_value_error<T>(r: loop_api::Result<T>, msg: &str) {
    match r {
        Err(loop_api::Error::Value(m)) if m == msg => {}
        Err(e) => panic!("expected ValueError({msg:?}), got {e}"),
        Ok(_) => panic!("expected ValueError({msg:?}), got Ok"),
    }
}

/// Fails unless `r` is "Event loop is closed".
#[track_caller]
pub fn expect_closed<T>(r: loop_api::Result<T>) {
    expect_runtime(r, "Event loop is closed")
}

/// Spins (without yielding to the loop) for `secs` of wall time: a slow callback.
pub fn busy_wait(secs: f64) {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        std::hint::spin_loop();
    }
}

/// A safety net on another thread: unless disarmed (dropped) first, stops
/// the loop through its [`loop_api::RemoteLoop`] after `secs`, and records
/// that it had to. Unlike [`stop_after`], it adds no timer to the loop, so
/// the loop still blocks in poll without a timeout.
pub struct RemoteWatchdog {
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RemoteWatchdog {
    /// Arms the watchdog on `lp`.
    pub fn arm(lp: &Loop, secs: f64) -> Self {
        let remote = lp.remote();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fired.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(std::time::Duration::from_secs_f64(secs))
            {
                f.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = remote.stop();
            }
        });
        RemoteWatchdog {
            fired,
            disarm: Some(tx),
            thread: Some(thread),
        }
    }

    /// True if the watchdog had to stop the loop.
    pub fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RemoteWatchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connected pair of non-blocking TCP sockets over loopback: readiness
/// cases run on every platform with it (Windows has no socketpair).
pub fn socketpair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind loopback");
    let a = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (b, _) = listener.accept().expect("accept");
    for s in [&a, &b] {
        s.set_nonblocking(true).expect("non-blocking");
        s.set_nodelay(true).expect("nodelay");
    }
    (a, b)
}

/// The descriptor `add_reader` takes, on every platform.
pub trait RawOf {
    /// The raw fd (Unix) or socket (Windows).
    fn raw(&self) -> loop_api::events::RawFd;
}

#[cfg(unix)]
impl<T: std::os::fd::AsRawFd> RawOf for T {
    fn raw(&self) -> loop_api::events::RawFd {
        self.as_raw_fd()
    }
}

#[cfg(windows)]
impl<T: std::os::windows::io::AsRawSocket> RawOf for T {
    fn raw(&self) -> loop_api::events::RawFd {
        self.as_raw_socket()
    }
}

// ----- helpers for the transport cases (datagram, unix sockets) ------------

/// Wakes a case waiting in [`Wakeup::run_until`]: protocol callbacks call
/// [`Wakeup::wake`] after recording what happened, and the case runs the
/// loop until its condition over those records holds. One `Wakeup` may be
/// shared by every protocol of a case.
#[derive(Clone, Default)]
pub struct Wakeup(Rc<RefCell<Option<loop_api::Future<()>>>>);

impl Wakeup {
    /// A wakeup nobody waits on yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the waiter, if any (call from inside the loop).
    pub fn wake(&self) {
        let waiter = self.0.borrow_mut().take();
        if let Some(f) = waiter {
            if !f.done() {
                let _ = f.set_result(());
            }
        }
    }

    /// Runs `lp` until `cond()` holds, checking it again after each
    /// [`wake`](Wakeup::wake). `secs` of loop time is a safety net only:
    /// past it this returns an error naming `what`.
    pub fn run_until(
        &self,
        lp: &Loop,
        secs: f64,
        what: &str,
        mut cond: impl FnMut() -> bool,
    ) -> loop_api::Result<()> {
        let deadline = lp.time() + secs;
        loop {
            if cond() {
                return Ok(());
            }
            let left = deadline - lp.time();
            if left <= 0.0 {
                return Err(loop_api::Error::runtime(format!(
                    "still waiting for {what} after the {secs}s safety net"
                )));
            }
            let fut = loop_api::Future::<()>::new(lp.clone());
            *self.0.borrow_mut() = Some(fut.clone());
            let ran = run_until_done(lp, &*fut.as_obj(), left);
            self.0.borrow_mut().take();
            if let Err(e) = ran {
                if cond() {
                    return Ok(());
                }
                return Err(loop_api::Error::runtime(format!("waiting for {what}: {e}")));
            }
        }
    }
}

/// Runs `lp` until a recorder's `events` hold a `connection_lost` (as
/// `lost_of` picks it out), then two more iterations, and checks that it
/// came exactly once, with `None`, and after every other callback: what a
/// clean close looks like to any protocol.
pub fn wait_lost_once<E: Clone + std::fmt::Debug>(
    lp: &Loop,
    wake: &Wakeup,
    secs: f64,
    events: &Log<E>,
    lost_of: fn(&E) -> Option<Option<loop_api::Error>>,
) -> loop_api::Result<()> {
    let lost =
        || -> Vec<Option<loop_api::Error>> { events.get().iter().filter_map(lost_of).collect() };
    wake.run_until(lp, secs, "connection_lost", || !lost().is_empty())?;
    // A second call would show up in these iterations.
    run_once(lp)?;
    run_once(lp)?;
    let lost = lost();
    assert_eq!(lost.len(), 1, "connection_lost called {} times", lost.len());
    assert!(lost[0].is_none(), "connection_lost({:?})", lost[0]);
    let all = events.get();
    assert!(
        all.last().is_some_and(|e| lost_of(e).is_some()),
        "callbacks after connection_lost: {all:?}"
    );
    Ok(())
}

/// A unique socket path under the temporary directory, removed (if
/// present) when dropped. Short enough for `sun_path`.
pub struct TempPath(pub std::path::PathBuf);

impl TempPath {
    /// A fresh path whose file name includes `tag`.
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("rsaio-{}-{n}-{tag}.sock", std::process::id());
        let p = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&p);
        TempPath(p)
    }

    /// The path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ----- helpers for futures and backends' own tests ------------------------------

/// Polls `fut` exactly once from inside the current task: its output if
/// ready, else the future itself (still pending, to drop or await later in
/// the same task).
pub async fn poll_once<F: std::future::Future + Unpin>(
    mut fut: F,
) -> std::result::Result<F::Output, F> {
    let ready =
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut fut).poll(cx)))
            .await;
    match ready {
        std::task::Poll::Ready(v) => Ok(v),
        std::task::Poll::Pending => Err(fut),
    }
}

/// The pending future [`poll_once`] gave back, or a panic naming what
/// completed too early.
#[track_caller]
pub fn pending<T, F>(r: std::result::Result<T, F>, what: &str) -> F {
    match r {
        Ok(_) => panic!("{what} completed at once"),
        Err(f) => f,
    }
}

/// Runs `lp` in 10 ms turns until `cond()` holds; panics naming `what`
/// after 20 s (a safety net: for state only the backend can report, such
/// as its operations in flight, which no callback announces).
#[track_caller]
pub fn poll_until(lp: &Loop, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting for {what}"
        );
        turn(lp);
    }
}

/// Runs `lp` for one 10 ms slice: lets completions already on their way
/// arrive. Never what a test's outcome depends on.
pub fn turn(lp: &Loop) {
    let l = lp.clone();
    lp.call_later_dyn(0.01, Box::new(move || l.stop()), None)
        .expect("loop open");
    lp.run_forever().expect("run");
}

/// The transports [`echo_factory`]'s protocols were made with, in order.
pub type Transports = Rc<RefCell<Vec<Rc<dyn loop_api::transports::Transport>>>>;

/// An echo protocol that records its transport in a shared list.
struct RecordingEcho {
    transport: RefCell<Option<Rc<dyn loop_api::transports::Transport>>>,
    all: Transports,
}

impl loop_api::protocols::BaseProtocol for RecordingEcho {
    fn connection_lost(&self, _exc: Option<loop_api::Error>) {
        self.transport.borrow_mut().take();
    }
}

impl loop_api::protocols::Protocol for RecordingEcho {
    fn connection_made(&self, t: Rc<dyn loop_api::transports::Transport>) {
        self.all.borrow_mut().push(t.clone());
        *self.transport.borrow_mut() = Some(t);
    }

    fn data_received(&self, data: &[u8]) {
        let t = self.transport.borrow().clone();
        if let Some(t) = t {
            let _ = t.write(data);
        }
    }
}

/// Makes echo protocols that record their transports in `all`.
pub fn echo_factory(all: &Transports) -> loop_api::protocols::ProtocolFactory {
    let all = all.clone();
    Rc::new(move || {
        Rc::new(RecordingEcho {
            transport: RefCell::new(None),
            all: all.clone(),
        }) as Rc<dyn loop_api::protocols::Protocol>
    })
}

/// Stops `lp` after `secs` and records that it had to: the safety net of a
/// case that runs the loop, never how it synchronises.
pub fn safety_net(lp: &Loop, secs: f64) -> loop_api::Result<Rc<std::cell::Cell<bool>>> {
    let fired = Rc::new(std::cell::Cell::new(false));
    let (f, l) = (fired.clone(), lp.clone());
    lp.call_later_dyn(
        secs,
        Box::new(move || {
            f.set(true);
            l.stop();
        }),
        None,
    )?;
    Ok(fired)
}

// ----- pipes ----------------------------------------------------------------------

/// A fresh OS pipe, `(read end, write end)`, both close-on-exec (so that a
/// child another case spawns meanwhile does not hold them open).
#[cfg(unix)]
pub fn os_pipe() -> loop_api::Result<(std::fs::File, std::fs::File)> {
    let (r, w) = std::io::pipe()?;
    Ok((
        std::fs::File::from(std::os::fd::OwnedFd::from(r)),
        std::fs::File::from(std::os::fd::OwnedFd::from(w)),
    ))
}

/// Which end of a [`loop_pipe`] the loop takes (the case uses the other
/// with plain blocking calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopEnd {
    /// The loop reads (`connect_read_pipe`).
    Read,
    /// The loop writes (`connect_write_pipe`).
    Write,
    /// The loop takes both ends.
    Both,
}

/// A fresh pipe for a pipe transport case, `(read end, write end)`. On
/// Unix any pipe ([`os_pipe`]); on Windows an overlapped named pipe
/// (asyncio's `windows_utils.pipe`) whose loop end is overlapped and whose
/// other end is plain (a write end the loop takes is duplex, so that the
/// loop sees the reader go).
#[cfg(unix)]
pub fn loop_pipe(_end: LoopEnd) -> loop_api::Result<(std::fs::File, std::fs::File)> {
    os_pipe()
}

/// A fresh pipe for a pipe transport case, `(read end, write end)`. On
/// Unix any pipe ([`os_pipe`]); on Windows an overlapped named pipe
/// (asyncio's `windows_utils.pipe`) whose loop end is overlapped and whose
/// other end is plain (a write end the loop takes is duplex, so that the
/// loop sees the reader go).
#[cfg(windows)]
pub fn loop_pipe(end: LoopEnd) -> loop_api::Result<(std::fs::File, std::fs::File)> {
    use loop_api::windows_utils::{pipe, Overlapped};
    let (read, write) = match end {
        LoopEnd::Read => (true, false),
        LoopEnd::Write => (false, true),
        LoopEnd::Both => (true, true),
    };
    Ok(pipe(end != LoopEnd::Read, Overlapped { read, write })?)
}
