//! asyncio's `runners` module: [`run`] and [`Runner`].
//!
//! # Ctrl-C
//! As asyncio's `Runner.run()`: when it runs on the process's main thread
//! and Ctrl-C (SIGINT) still has its default action, `run` asks the loop to
//! handle the first Ctrl-C ([`add_interrupt_handler`](loop_api::AbstractEventLoop::add_interrupt_handler)).
//! The first SIGINT cancels the main task; if the task then ends cancelled,
//! `run` returns [`Error::KeyboardInterrupt`] (a task that catches the
//! cancellation and returns normally has its result returned, as in
//! asyncio). A second Ctrl-C terminates the process at once, by its
//! default action: that is this crate's equivalent of asyncio's "a second
//! Ctrl-C raises `KeyboardInterrupt` immediately", for a main task stuck or
//! swallowing the cancellation. The handler is removed when `run` returns.
//!
//! - On Unix the handler is a SIGINT handler installed with
//!   `SA_RESETHAND`: delivering the first SIGINT puts the default action
//!   back.
//! - On Windows it is a console control handler
//!   (`SetConsoleCtrlHandler`) that takes the first `CTRL_C_EVENT` and then
//!   lets every later one through to the default action; Ctrl-Break,
//!   closing the console, logoff and shutdown keep theirs. A process that
//!   ignores Ctrl-C (`SetConsoleCtrlHandler(NULL, TRUE)`, or started in a
//!   new process group) gets no handler, as a SIGINT set to `SIG_IGN` on
//!   Unix.
//!
//! "Main thread": on Linux and Android, the thread whose id is the process
//! id; elsewhere, the thread Rust's runtime named `"main"`. Any error from
//! `add_interrupt_handler` means "not installed" and `run` goes on
//! without.

use std::cell::Cell;
use std::future::IntoFuture;
use std::rc::Rc;
use std::time::Duration;

use loop_api::contextvars::{copy_context, Context};
use loop_api::events::{_get_running_loop, ExceptionContext};
use loop_api::futures::{CallbackId, FutureObj};
use loop_api::log::{self, Level};
use loop_api::tasks::{TaskObj, TaskOptions};
use loop_api::{all_tasks, Error, EventLoopExt, Loop, Result};

use crate::backends::LoopFactory;

/// How long [`Runner::close`] lets the default executor join its threads
/// (asyncio's `constants.THREAD_JOIN_TIMEOUT`, five minutes).
pub const THREAD_JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// `asyncio.run(main, debug=..., loop_factory=...)`: runs `main` on a new
/// loop and returns its result, then cancels what is left, shuts the default
/// executor down and closes the loop (see [`Runner::close`]).
///
/// The loop comes from `loop_factory`, or from
/// [`crate::new_event_loop`] (then it is also this thread's current loop
/// while it runs). `debug: Some(b)` sets the loop's debug mode. Refused
/// inside a running loop. An error from closing is returned only if `main`
/// succeeded.
pub fn run<T, F>(main: F, debug: Option<bool>, loop_factory: Option<LoopFactory>) -> Result<T>
where
    T: 'static,
    F: IntoFuture<Output = Result<T>> + 'static,
{
    if _get_running_loop().is_some() {
        return Err(Error::runtime(
            "asyncio.run() cannot be called from a running event loop",
        ));
    }
    let mut runner = Runner::new(debug, loop_factory);
    let result = runner.run(main, None);
    let closed = runner.close();
    let value = result?;
    closed.map(|()| value)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Created,
    Initialized,
    Closed,
}

/// `asyncio.Runner`: one loop and one context for several `run` calls.
///
/// The loop is made lazily, by the first [`run`](Runner::run) or
/// [`get_loop`](Runner::get_loop). Dropping the runner closes it, as
/// leaving asyncio's `with Runner() as runner:` block does.
///
/// ```
/// let mut runner = policy::Runner::new(None, None);
/// assert_eq!(runner.run(async { Ok(1) }, None).unwrap(), 1);
/// assert_eq!(runner.run(async { Ok(2) }, None).unwrap(), 2);
/// runner.close().unwrap();
/// ```
pub struct Runner {
    state: State,
    debug: Option<bool>,
    loop_factory: Option<LoopFactory>,
    lp: Option<Loop>,
    context: Option<Context>,
    set_event_loop: bool,
}

impl Runner {
    /// `Runner(debug=..., loop_factory=...)`. Makes no loop yet.
    ///
    /// Without a `loop_factory` the loop comes from
    /// [`crate::new_event_loop`] and becomes this thread's current loop
    /// until [`close`](Runner::close); with one, the current loop is left
    /// alone (setting it is the factory's business, as in asyncio).
    pub fn new(debug: Option<bool>, loop_factory: Option<LoopFactory>) -> Self {
        Runner {
            state: State::Created,
            debug,
            loop_factory,
            lp: None,
            context: None,
            set_event_loop: false,
        }
    }

    /// `Runner.run(coro, context=...)`: runs `coro` as the main task on the
    /// runner's loop, in `context` (default: the runner's own context, kept
    /// from one `run` to the next) and returns its result.
    ///
    /// Errors: "Runner.run() cannot be called from a running event loop",
    /// "Runner is closed", the coroutine's own error, and
    /// [`Error::KeyboardInterrupt`] after Ctrl-C (see the module docs).
    pub fn run<T, F>(&mut self, coro: F, context: Option<Context>) -> Result<T>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        if _get_running_loop().is_some() {
            return Err(Error::runtime(
                "Runner.run() cannot be called from a running event loop",
            ));
        }
        let lp = self.lazy_init()?;
        let context = context.or_else(|| self.context.clone());
        let task = lp.create_task_with(
            coro,
            TaskOptions {
                context,
                ..TaskOptions::default()
            },
        )?;

        let interrupts = Rc::new(Cell::new(0u32));
        let sigint_installed = is_main_thread() && {
            let (main_task, count) = (task.clone(), interrupts.clone());
            // Runs on the loop at the first SIGINT.
            let on_sigint = Box::new(move || {
                count.set(count.get() + 1);
                if !main_task.done() {
                    main_task.cancel(None);
                }
            });
            // Err (e.g. NotImplemented on Windows) or false (someone else
            // handles Ctrl-C): not installed.
            lp.add_interrupt_handler(on_sigint).unwrap_or(false)
        };

        let result = lp.run_until_complete(task.clone());

        if sigint_installed {
            if let Err(e) = lp.remove_interrupt_handler() {
                log::log(
                    Level::Warning,
                    &format!("Runner.run(): removing the SIGINT handler failed: {e}"),
                );
            }
        }
        match result {
            Err(Error::Cancelled(_)) if interrupts.get() > 0 && task.uncancel() == 0 => {
                Err(Error::KeyboardInterrupt)
            }
            r => r,
        }
    }

    /// `Runner.get_loop()`: the runner's loop, made now if need be.
    pub fn get_loop(&mut self) -> Result<Loop> {
        self.lazy_init()
    }

    /// `Runner.close()`: cancels the tasks still pending and runs them to
    /// the end, reporting each that ended with an exception to the loop's
    /// exception handler ("unhandled exception during asyncio.run()
    /// shutdown"); then `shutdown_asyncgens`, then
    /// `shutdown_default_executor` bounded by [`THREAD_JOIN_TIMEOUT`]; then
    /// clears the current loop (if the runner set it) and closes the loop.
    ///
    /// The runner is closed even if a step fails; the first error is
    /// returned. A no-op on a runner closed already or that never made its
    /// loop (as asyncio's).
    pub fn close(&mut self) -> Result<()> {
        if self.state != State::Initialized {
            return Ok(());
        }
        let lp = self.lp.take().expect("an initialized runner has a loop");
        let shutdown = cancel_all_tasks(&lp)
            .and_then(|()| lp.run_until_complete(lp.shutdown_asyncgens()))
            .and_then(|()| {
                lp.run_until_complete(lp.shutdown_default_executor(Some(THREAD_JOIN_TIMEOUT)))
            });
        if self.set_event_loop {
            crate::set_event_loop(None);
        }
        let closed = lp.close();
        self.context = None;
        self.state = State::Closed;
        shutdown.and(closed)
    }

    fn lazy_init(&mut self) -> Result<Loop> {
        match self.state {
            State::Closed => return Err(Error::runtime("Runner is closed")),
            State::Initialized => return Ok(self.lp.clone().expect("initialized")),
            State::Created => {}
        }
        let lp = match self.loop_factory {
            Some(factory) => factory()?,
            None => {
                let lp = crate::new_event_loop()?;
                if !self.set_event_loop {
                    crate::set_event_loop(Some(lp.clone()));
                    self.set_event_loop = true;
                }
                lp
            }
        };
        if let Some(debug) = self.debug {
            lp.set_debug(debug);
        }
        self.context = Some(copy_context());
        self.lp = Some(lp.clone());
        self.state = State::Initialized;
        Ok(lp)
    }
}

impl Default for Runner {
    /// `Runner()`: no debug override, the policy's loop.
    fn default() -> Self {
        Runner::new(None, None)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::log(Level::Error, &format!("Runner: closing failed: {e}"));
        }
    }
}

/// asyncio's `_cancel_all_tasks`: cancels every pending task of `lp`, runs
/// the loop until all are done, and reports those that ended with an
/// exception.
fn cancel_all_tasks(lp: &Loop) -> Result<()> {
    let to_cancel = all_tasks(&**lp);
    if to_cancel.is_empty() {
        return Ok(());
    }
    for t in &to_cancel {
        t.cancel(None);
    }
    // gather(*to_cancel, return_exceptions=True)
    let all_done = lp.create_future::<()>();
    let remaining = Rc::new(Cell::new(to_cancel.len()));
    for t in &to_cancel {
        let (remaining, all_done) = (remaining.clone(), all_done.clone());
        t.add_done_callback_erased(Box::new(move || {
            remaining.set(remaining.get() - 1);
            if remaining.get() == 0 {
                let _ = all_done.set_result(());
            }
        }));
    }
    lp.run_until_complete(all_done)?;
    for t in to_cancel {
        if t.cancelled() {
            continue;
        }
        if let Some(e) = t.exception_erased() {
            lp.call_exception_handler(ExceptionContext {
                message: "unhandled exception during asyncio.run() shutdown".into(),
                exception: Some(e),
                task: Some(Rc::new(TaskRef(t))),
                ..ExceptionContext::default()
            });
        }
    }
    Ok(())
}

/// A task as the `task` key of an exception context wants it
/// (`Rc<dyn FutureObj>`), without trait upcasting (stable only after the
/// workspace's rust-version).
struct TaskRef(Rc<dyn TaskObj>);

impl FutureObj for TaskRef {
    fn done(&self) -> bool {
        self.0.done()
    }
    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
    fn cancel(&self, msg: Option<String>) -> bool {
        self.0.cancel(msg)
    }
    fn exception_erased(&self) -> Option<Error> {
        self.0.exception_erased()
    }
    fn add_done_callback_erased(&self, callback: Box<dyn FnOnce()>) -> CallbackId {
        self.0.add_done_callback_erased(callback)
    }
    fn remove_done_callback(&self, id: CallbackId) -> usize {
        self.0.remove_done_callback(id)
    }
    fn get_loop(&self) -> Loop {
        self.0.get_loop()
    }
    fn repr(&self) -> String {
        self.0.repr()
    }
}

/// True on the process's main thread (see the module docs).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn is_main_thread() -> bool {
    // SAFETY: getpid and the gettid system call take no pointers and
    // cannot fail.
    let (pid, tid) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid)) };
    tid == libc::c_long::from(pid)
}

/// True on the process's main thread (see the module docs).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn is_main_thread() -> bool {
    std::thread::current().name() == Some("main")
}
