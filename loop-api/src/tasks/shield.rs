//! `asyncio.shield`: await something without passing a cancellation on.

use std::future::IntoFuture;

use crate::events::get_running_loop;
use crate::exceptions::Result;
use crate::futures::Future;

use super::{Task, TaskOptions};

/// `asyncio.shield(aw)`: runs `aw` as a task (a [`Task`] given here runs
/// on in one that awaits it) and returns a future for its result.
/// Cancelling that future, or the task awaiting it, leaves the work
/// running: only the waiting is cancelled.
pub fn shield<T, A>(aw: A) -> Result<Future<T>>
where
    T: 'static,
    A: IntoFuture<Output = Result<T>>,
    A::IntoFuture: 'static,
{
    let lp = get_running_loop()?;
    let inner = Task::spawn(lp.clone(), aw.into_future(), TaskOptions::default())?;
    let outer = Future::new(lp);
    let out = outer.clone();
    inner.add_done_callback(
        move |inner| {
            if out.cancelled() {
                if !inner.cancelled() {
                    // Retrieved, so an error nobody awaits is not reported.
                    let _ = inner.exception();
                }
                return;
            }
            if inner.cancelled() {
                out.cancel(None);
                return;
            }
            let _ = match inner.take_result() {
                Ok(v) => out.set_result(v),
                Err(e) => out.set_exception(e),
            };
        },
        None,
    );
    Ok(outer)
}
