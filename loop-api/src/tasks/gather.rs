//! `asyncio.gather`: run awaitables concurrently, collect their results.

use std::cell::Cell;
use std::future::IntoFuture;
use std::rc::Rc;

use crate::events::get_running_loop;
use crate::exceptions::{Error, Result};
use crate::futures::{Future, Wait};

use super::{Task, TaskOptions};

/// What [`gather`] returns (asyncio's `_GatheringFuture`): await it for
/// the results, in the order the awaitables were given, or
/// [`cancel`](Self::cancel) it, which cancels every child.
pub struct Gathering<T: 'static> {
    outer: Future<Vec<Result<T>>>,
    children: Rc<[Task<T>]>,
    cancel_requested: Rc<Cell<bool>>,
}

/// `asyncio.gather(*aws, return_exceptions=...)`: runs each awaitable as
/// a task on the running loop.
///
/// - With `return_exceptions`, every child's outcome is in the result,
///   errors (and `Err(Cancelled)` for a cancelled child) included.
/// - Without, the first error, or the first child cancelled, is the
///   result (`Err`); the other children go on running, as in asyncio.
///
/// Cancelling the gathering (or the task awaiting it) cancels every child
/// not yet done; the result is then `Err(Cancelled)`.
pub fn gather<T, A>(
    aws: impl IntoIterator<Item = A>,
    return_exceptions: bool,
) -> Result<Gathering<T>>
where
    T: 'static,
    A: IntoFuture<Output = Result<T>>,
    A::IntoFuture: 'static,
{
    let lp = get_running_loop()?;
    let children: Rc<[Task<T>]> = aws
        .into_iter()
        .map(|aw| Task::spawn(lp.clone(), aw.into_future(), TaskOptions::default()))
        .collect::<Result<Vec<_>>>()?
        .into();
    let outer = Future::new(lp);
    let cancel_requested = Rc::new(Cell::new(false));
    if children.is_empty() {
        outer.set_result(Vec::new())?;
    }
    let finished = Rc::new(Cell::new(0usize));
    for child in children.iter() {
        let outer = outer.clone();
        let all = children.clone();
        let finished = finished.clone();
        let cancel_requested = cancel_requested.clone();
        child.add_done_callback(
            move |fut| {
                finished.set(finished.get() + 1);
                if outer.done() {
                    if !fut.cancelled() {
                        let _ = fut.exception();
                    }
                    return;
                }
                if !return_exceptions {
                    if fut.cancelled() {
                        outer.cancel(None);
                        return;
                    }
                    if let Ok(Some(e)) = fut.exception() {
                        let _ = outer.set_exception(e);
                        return;
                    }
                }
                if finished.get() == all.len() {
                    if cancel_requested.get() {
                        outer.cancel(None);
                        return;
                    }
                    let results = all
                        .iter()
                        .map(|c| {
                            if c.cancelled() {
                                Err(Error::Cancelled(None))
                            } else {
                                c.take_result()
                            }
                        })
                        .collect();
                    let _ = outer.set_result(results);
                }
            },
            None,
        );
    }
    // The task awaiting the gathering is cancelled by cancelling `outer`:
    // that cancels the children too.
    let kids = Rc::downgrade(&children);
    outer.add_done_callback(
        move |f| {
            if f.cancelled() {
                if let Some(kids) = kids.upgrade() {
                    for c in kids.iter() {
                        c.cancel(None);
                    }
                }
            }
        },
        None,
    );
    Ok(Gathering {
        outer,
        children,
        cancel_requested,
    })
}

impl<T: 'static> Gathering<T> {
    /// Cancels every child not done yet; `false` if none could be.
    pub fn cancel(&self, msg: Option<String>) -> bool {
        if self.outer.done() {
            return false;
        }
        let mut any = false;
        for c in self.children.iter() {
            any |= c.cancel(msg.clone());
        }
        if any {
            self.cancel_requested.set(true);
        }
        any
    }

    /// True once the result is known.
    pub fn done(&self) -> bool {
        self.outer.done()
    }

    /// The children, in order.
    pub fn children(&self) -> &[Task<T>] {
        &self.children
    }

    /// Awaits the results as values: the first error if any child failed.
    pub async fn values(self) -> Result<Vec<T>> {
        self.await?.into_iter().collect()
    }
}

impl<T: 'static> IntoFuture for Gathering<T> {
    type Output = Result<Vec<Result<T>>>;
    type IntoFuture = Wait<Vec<Result<T>>, true>;
    fn into_future(self) -> Self::IntoFuture {
        self.outer.into_future()
    }
}
