//! [`EventLoopExt`]: the loop methods that are generic over a result
//! type (`create_future`, `create_task`, `run_until_complete`,
//! `run_in_executor`), for every loop, `dyn AbstractEventLoop` included,
//! written on top of the object-safe [`AbstractEventLoop`].

use std::any::Any;
use std::future::IntoFuture;
use std::rc::Rc;
use std::sync::Arc;

use super::{AbstractEventLoop, Loop};
use crate::exceptions::{Error, Result};
use crate::executor::{self, Executor};
use crate::futures::Future;
use crate::tasks::{Task, TaskOptions};

/// The generic half of the loop API, for every loop (`dyn` included).
pub trait EventLoopExt: AbstractEventLoop {
    /// `loop.create_future()`.
    fn create_future<T: 'static>(&self) -> Future<T> {
        Future::new(self.as_loop())
    }

    /// `loop.create_task(coro)`: schedules a coroutine. The coroutine's
    /// `Err(Error::Cancelled)` makes the task cancelled, as a
    /// `CancelledError` does in asyncio.
    fn create_task<T, F>(&self, coro: F) -> Result<Task<T>>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        self.create_task_with(coro, TaskOptions::default())
    }

    /// `loop.create_task(coro, name=..., context=...)`.
    fn create_task_with<T, F>(&self, coro: F, options: TaskOptions) -> Result<Task<T>>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        Task::spawn(self.as_loop(), coro.into_future(), options)
    }

    /// `loop.run_until_complete(future)`: runs the loop until `future` is
    /// done and returns its result.
    ///
    /// A [`Future`] or [`Task`] is waited on as is (one of another loop is a
    /// `ValueError`); anything else is wrapped in a task first. The result is
    /// moved out: a later `result()` on the same future is an
    /// `InvalidStateError`.
    fn run_until_complete<T, F>(&self, future: F) -> Result<T>
    where
        T: 'static,
        F: IntoFuture<Output = Result<T>> + 'static,
    {
        run_until_complete(&self.as_loop(), future)
    }

    /// `loop.run_in_executor(executor, func)`: runs `func` on a worker
    /// thread; the returned future gets its result. A panic in `func`
    /// becomes the future's exception.
    fn run_in_executor<T, F>(
        &self,
        executor: Option<Arc<dyn Executor>>,
        func: F,
    ) -> Result<Future<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        executor::run_in_executor(&self.as_loop(), executor, func)
    }
}

impl<L: AbstractEventLoop + ?Sized> EventLoopExt for L {}

/// asyncio's `_check_closed` and `_check_running`, before a loop runs.
pub(crate) fn check_can_run(lp: &dyn AbstractEventLoop) -> Result<()> {
    if lp.is_closed() {
        return Err(Error::loop_closed());
    }
    if lp.is_running() {
        return Err(Error::runtime("This event loop is already running"));
    }
    if super::_get_running_loop().is_some() {
        return Err(Error::runtime(
            "Cannot run the event loop while another loop is running",
        ));
    }
    Ok(())
}

/// `run_until_complete` for any loop; see [`EventLoopExt::run_until_complete`].
fn run_until_complete<T, F>(lp: &Loop, future: F) -> Result<T>
where
    T: 'static,
    F: IntoFuture<Output = Result<T>> + 'static,
{
    check_can_run(&**lp)?;
    let any: &dyn Any = &future;
    type Taker<T> = Box<dyn Fn() -> Result<T>>;
    let (obj, take): (Rc<dyn crate::futures::FutureObj>, Taker<T>) =
        if let Some(f) = any.downcast_ref::<Future<T>>() {
            let f = f.clone();
            (f.as_obj(), Box::new(move || f.take_result()))
        } else if let Some(t) = any.downcast_ref::<Task<T>>() {
            let t = t.clone();
            (t.as_obj(), Box::new(move || t.take_result()))
        } else {
            let t = Task::spawn(lp.clone(), future.into_future(), TaskOptions::default())?;
            let t2 = t.clone();
            (t.as_obj(), Box::new(move || t2.take_result()))
        };
    if obj.get_loop().loop_id() != lp.loop_id() {
        return Err(Error::value(
            "The future belongs to a different loop than the one specified as the loop argument",
        ));
    }
    let stopper = obj.get_loop();
    let id = obj.add_done_callback_erased(Box::new(move || stopper.stop()));
    let ran = lp.run_forever();
    obj.remove_done_callback(id);
    ran?;
    if !obj.done() {
        return Err(Error::runtime(
            "Event loop stopped before Future completed.",
        ));
    }
    take()
}
