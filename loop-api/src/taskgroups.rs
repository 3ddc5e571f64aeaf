//! asyncio's `TaskGroup`: tasks that live and fail together.
//!
//! ```no_run
//! # use loop_api::taskgroups::TaskGroup;
//! # async fn demo() -> loop_api::Result<()> {
//! // asyncio: `async with asyncio.TaskGroup() as tg: tg.create_task(...)`
//! let (a, b) = TaskGroup::run(|tg| async move {
//!     let a = tg.create_task(async { Ok(1) })?;
//!     let b = tg.create_task(async { Ok(2) })?;
//!     Ok((a, b))
//! })
//! .await?;
//! assert_eq!((a.result()?, b.result()?), (1, 2));
//! # Ok(()) }
//! ```
//!
//! The rules are asyncio's:
//! - [`TaskGroup::run`] returns once the body and every task have finished.
//! - The first task to fail cancels every other task, and the body (as a
//!   `timeout` cancels its body: `Err(Cancelled)` at a loop-future wait,
//!   else dropped). No new task may be created after that.
//! - The errors (the tasks', and the body's own if it failed, in the
//!   order they happened) come back as one [`Error::ExceptionGroup`],
//!   "unhandled errors in a TaskGroup". Cancelled tasks are not errors.
//! - If the task running the group is cancelled from outside, the tasks
//!   are cancelled, and `run` returns `Err(Cancelled)` once they are done
//!   (or the group's errors, if any task failed).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use crate::cancel_scope::{Outcome, Scope, ScopeState};
use crate::events::get_running_loop;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::tasks::{Task, TaskObj, TaskOptions};

struct Inner {
    tasks: RefCell<Vec<Rc<dyn TaskObj>>>,
    errors: RefCell<Vec<Error>>,
    entered: Cell<bool>,
    exiting: Cell<bool>,
    aborting: Cell<bool>,
    /// The body's scope, cancelled when a task fails.
    scope: RefCell<Option<Rc<ScopeState>>>,
    /// Done once the last task finishes while the group is exiting.
    on_completed: RefCell<Option<Future<()>>>,
}

/// A group of tasks (asyncio's `TaskGroup`). A clone is the same group.
#[derive(Clone)]
pub struct TaskGroup(Rc<Inner>);

impl TaskGroup {
    fn new() -> Self {
        TaskGroup(Rc::new(Inner {
            tasks: RefCell::new(Vec::new()),
            errors: RefCell::new(Vec::new()),
            entered: Cell::new(false),
            exiting: Cell::new(false),
            aborting: Cell::new(false),
            scope: RefCell::new(None),
            on_completed: RefCell::new(None),
        }))
    }

    /// Runs `body` with a new group, then waits for every task it created.
    /// Returns the body's result, or the group's errors.
    pub async fn run<R, F, Fut>(body: F) -> Result<R>
    where
        F: FnOnce(TaskGroup) -> Fut,
        Fut: std::future::Future<Output = Result<R>>,
    {
        let lp = get_running_loop()?;
        let tg = TaskGroup::new();
        tg.0.entered.set(true);
        // If this future is dropped (its task dropped while waiting on
        // something that is not a loop future), the tasks are cancelled.
        let _abort = AbortOnDrop(tg.clone());
        let scope = Scope::new(body(tg.clone()));
        *tg.0.scope.borrow_mut() = Some(scope.state.clone());
        let st = scope.state.clone();
        let outcome = scope.await;
        tg.0.exiting.set(true);
        tg.0.scope.borrow_mut().take();

        // Did the body end because we cancelled it, or because someone
        // cancelled the task from outside?
        let mut outside_cancel = false;
        let result = match outcome {
            Outcome::Returned(Ok(v)) => Some(v),
            Outcome::Returned(Err(Error::Cancelled(m))) => {
                let ours = st.delivered() && st.task().map_or(0, |t| t.uncancel()) == 0;
                if !ours {
                    outside_cancel = true;
                    let _ = m;
                }
                if !tg.0.aborting.get() {
                    tg.abort();
                }
                None
            }
            Outcome::Returned(Err(e)) => {
                tg.0.errors.borrow_mut().push(e);
                if st.delivered() {
                    if let Some(t) = st.task() {
                        t.uncancel();
                    }
                }
                if !tg.0.aborting.get() {
                    tg.abort();
                }
                None
            }
            Outcome::Dropped => None,
        };

        // Wait for the tasks; a cancellation from outside meanwhile
        // cancels them and the wait goes on (asyncio's __aexit__ loop).
        while !tg.0.tasks.borrow().is_empty() {
            let waiter = Future::new(lp.clone());
            *tg.0.on_completed.borrow_mut() = Some(waiter.clone());
            if let Err(Error::Cancelled(_)) = waiter.await {
                outside_cancel = true;
                if !tg.0.aborting.get() {
                    tg.abort();
                }
            }
        }
        tg.0.on_completed.borrow_mut().take();

        let errors = std::mem::take(&mut *tg.0.errors.borrow_mut());
        if !errors.is_empty() {
            return Err(Error::ExceptionGroup {
                message: "unhandled errors in a TaskGroup".into(),
                exceptions: errors,
            });
        }
        if outside_cancel {
            return Err(Error::Cancelled(None));
        }
        match result {
            Some(v) => Ok(v),
            // The body was cancelled by a failing task, whose error is in
            // `errors`; with no error it was the body's own cancellation.
            None => Err(Error::Cancelled(None)),
        }
    }

    /// Starts a task in the group (asyncio's `tg.create_task`).
    /// `RuntimeError` once the group is finished or shutting down.
    pub fn create_task<T, F>(&self, coro: F) -> Result<Task<T>>
    where
        T: 'static,
        F: std::future::Future<Output = Result<T>> + 'static,
    {
        self.create_task_with(coro, TaskOptions::default())
    }

    /// [`create_task`](Self::create_task) with a name or context.
    pub fn create_task_with<T, F>(&self, coro: F, options: TaskOptions) -> Result<Task<T>>
    where
        T: 'static,
        F: std::future::Future<Output = Result<T>> + 'static,
    {
        if !self.0.entered.get() {
            return Err(Error::runtime(format!(
                "TaskGroup {self:?} has not been entered"
            )));
        }
        if self.0.exiting.get() && self.0.tasks.borrow().is_empty() {
            return Err(Error::runtime(format!("TaskGroup {self:?} is finished")));
        }
        if self.0.aborting.get() {
            return Err(Error::runtime(format!(
                "TaskGroup {self:?} is shutting down"
            )));
        }
        let lp = get_running_loop()?;
        let task = Task::spawn(lp, coro, options)?;
        if task.done() {
            // An eager task that finished at once.
            self.on_task_done(&task.as_obj());
        } else {
            self.0.tasks.borrow_mut().push(task.as_obj());
            let me = Rc::downgrade(&self.0);
            task.add_done_callback(
                move |t| {
                    if let Some(inner) = me.upgrade() {
                        TaskGroup(inner).on_task_done(&t.as_obj());
                    }
                },
                None,
            );
        }
        Ok(task)
    }

    /// Cancels every task, once.
    fn abort(&self) {
        self.0.aborting.set(true);
        let tasks = self.0.tasks.borrow().clone();
        for t in tasks {
            if !t.done() {
                t.cancel(None);
            }
        }
    }

    fn on_task_done(&self, task: &Rc<dyn TaskObj>) {
        self.0
            .tasks
            .borrow_mut()
            .retain(|t| !std::ptr::addr_eq(Rc::as_ptr(t), Rc::as_ptr(task)));
        if self.0.exiting.get() && self.0.tasks.borrow().is_empty() {
            let done = self.0.on_completed.borrow().clone();
            if let Some(f) = done {
                if !f.done() {
                    let _ = f.set_result(());
                }
            }
        }
        if task.cancelled() {
            return;
        }
        let Some(exc) = task.exception_erased() else {
            return;
        };
        self.0.errors.borrow_mut().push(exc);
        if !self.0.aborting.get() {
            self.abort();
            // The body is cancelled too, if it is still running.
            let scope = self.0.scope.borrow().clone();
            if let Some(s) = scope {
                s.request_cancel();
            }
        }
    }
}

/// Cancels a group's tasks if `run` is dropped before they are done.
struct AbortOnDrop(TaskGroup);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.0 .0.tasks.borrow().is_empty() {
            self.0.abort();
        }
    }
}

impl fmt::Debug for TaskGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut info = String::new();
        let n = self.0.tasks.borrow().len();
        if n > 0 {
            info.push_str(&format!(" tasks={n}"));
        }
        let e = self.0.errors.borrow().len();
        if e > 0 {
            info.push_str(&format!(" errors={e}"));
        }
        if self.0.aborting.get() {
            info.push_str(" cancelling");
        } else if self.0.entered.get() {
            info.push_str(" entered");
        }
        write!(f, "<TaskGroup{info}>")
    }
}
