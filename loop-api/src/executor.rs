//! Executors: `run_in_executor` and the default thread pool.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use slab::Slab;

use crate::events::Loop;
use crate::exceptions::{Error, Result};
use crate::futures::Future;

/// A unit of work for an executor.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// `concurrent.futures.Executor`, reduced to what the loop needs.
pub trait Executor: Send + Sync {
    /// Queues `job`; an error once shut down.
    fn submit(&self, job: Job) -> Result<()>;
    /// Stops accepting jobs; with `wait`, blocks until queued jobs ran and
    /// the workers exited.
    fn shutdown(&self, wait: bool);
}

/// `concurrent.futures.ThreadPoolExecutor`: up to `max_workers` threads,
/// started on demand, named `asyncio_N`.
pub struct ThreadPoolExecutor {
    shared: Arc<Pool>,
}

struct Pool {
    max_workers: usize,
    state: Mutex<PoolState>,
    work: Condvar,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    idle: usize,
    workers: Vec<JoinHandle<()>>,
    shutdown: bool,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Jobs run outside the lock and catch their panics, so a poisoned
        // lock still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ThreadPoolExecutor {
    /// A pool with asyncio's default size: `min(32, cpus + 4)`.
    pub fn new() -> Self {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_max_workers((cpus + 4).min(32))
    }

    /// A pool of at most `max_workers` threads (at least one).
    pub fn with_max_workers(max_workers: usize) -> Self {
        ThreadPoolExecutor {
            shared: Arc::new(Pool {
                max_workers: max_workers.max(1),
                state: Mutex::new(PoolState::default()),
                work: Condvar::new(),
            }),
        }
    }

    fn worker(pool: Arc<Pool>) {
        let mut st = pool.lock();
        loop {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                job();
                st = pool.lock();
            } else if st.shutdown {
                return;
            } else {
                st.idle += 1;
                st = pool.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                st.idle -= 1;
            }
        }
    }
}

impl Default for ThreadPoolExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor for ThreadPoolExecutor {
    fn submit(&self, job: Job) -> Result<()> {
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(Error::runtime("cannot schedule new futures after shutdown"));
        }
        st.queue.push_back(job);
        if st.idle > 0 {
            self.shared.work.notify_one();
        } else if st.workers.len() < self.shared.max_workers {
            let pool = self.shared.clone();
            let name = format!("asyncio_{}", st.workers.len());
            let handle = thread::Builder::new()
                .name(name)
                .spawn(move || Self::worker(pool))
                .map_err(Error::from)?;
            st.workers.push(handle);
        }
        Ok(())
    }

    fn shutdown(&self, wait: bool) {
        let workers = {
            let mut st = self.shared.lock();
            st.shutdown = true;
            std::mem::take(&mut st.workers)
        };
        self.shared.work.notify_all();
        if wait {
            for w in workers {
                let _ = w.join();
            }
        }
    }
}

type Completer = Box<dyn FnOnce(Box<dyn Any + Send>)>;

thread_local! {
    /// Futures waiting for an executor job, by key. The job carries only
    /// the key across threads; the `Rc` future never leaves the loop thread.
    static PENDING: RefCell<Slab<Completer>> = RefCell::new(Slab::new());
}

fn complete(key: usize, outcome: Box<dyn Any + Send>) {
    let completer = PENDING.with(|p| p.borrow_mut().try_remove(key));
    if let Some(c) = completer {
        c(outcome);
    }
}

pub(crate) fn run_in_executor<T, F>(
    lp: &Loop,
    executor: Option<Arc<dyn Executor>>,
    func: F,
) -> Result<Future<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if lp.is_closed() {
        return Err(Error::loop_closed());
    }
    let fut = Future::<T>::new(lp.clone());
    let target = fut.clone();
    let key = PENDING.with(|p| {
        p.borrow_mut()
            .insert(Box::new(move |outcome: Box<dyn Any + Send>| {
                if target.done() {
                    return; // cancelled meanwhile
                }
                let outcome = outcome
                    .downcast::<thread::Result<T>>()
                    .expect("the job sends its own result type");
                let _ = match *outcome {
                    Ok(v) => target.set_result(v),
                    Err(p) => target.set_exception(Error::from_panic(p)),
                };
            }) as Completer)
    });
    let remote = lp.remote();
    let job: Job = Box::new(move || {
        let outcome: thread::Result<T> = catch_unwind(AssertUnwindSafe(func));
        let _ = remote.call_soon_threadsafe(move || complete(key, Box::new(outcome)));
    });
    if let Err(e) = lp.run_in_executor_job(executor, job) {
        PENDING.with(|p| p.borrow_mut().try_remove(key));
        return Err(e);
    }
    Ok(fut)
}
