//! [`ThreadBound`]: the Rust state of a Python object, usable only on the
//! thread that made it.
//!
//! A loop, its transports and their Rust halves are single-threaded (`Rc`
//! inside), but Python may free an object on any thread: the garbage
//! collector runs wherever an allocation triggers it, and a loop in a
//! reference cycle is often collected by another thread. pyo3's
//! `unsendable` classes leak in that case and print an error. Here the
//! state is handed back instead: freed on a foreign thread, it waits in a
//! graveyard until its own thread next makes or runs a loop
//! ([`bury_own`]). Used from a foreign thread, a transport method raises
//! `RuntimeError` ([`ThreadBound::get`]) and a loop method `PanicException`
//! (the `Deref`), where asyncio's debug mode would raise "Non-thread-safe
//! operation invoked on an event loop other than the current one".

use std::any::Any;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::Mutex;

/// This thread's identity: `pthread_self()`, a register read (a
/// thread-local would cost a `__tls_get_addr` call in a shared library, on
/// every access to a loop). A number reused by a later thread can only be
/// mistaken for an owner that has exited, which touches nothing any more.
fn thread_number() -> usize {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as usize }
}

const WRONG_THREAD: &str = "an event loop object was used from a thread other than its \
                            loop's; use loop.call_soon_threadsafe()";

/// State owned by the thread that made it.
pub(crate) struct ThreadBound<T: 'static> {
    owner: usize,
    value: ManuallyDrop<T>,
}

// SAFETY: the value is only reached through `Deref`, which checks that the
// caller is the owning thread, and only dropped there (`Drop` sends it to
// the graveyard otherwise, which drops it on the owning thread).
unsafe impl<T> Send for ThreadBound<T> {}
// SAFETY: as for `Send`: no access from another thread gets past `Deref`.
unsafe impl<T> Sync for ThreadBound<T> {}

impl<T> ThreadBound<T> {
    pub(crate) fn new(value: T) -> Self {
        ThreadBound {
            owner: thread_number(),
            value: ManuallyDrop::new(value),
        }
    }

    pub(crate) fn on_owner_thread(&self) -> bool {
        thread_number() == self.owner
    }

    /// The value, or Python's `RuntimeError` on another thread: what a
    /// Python-facing method uses, so that a call from the wrong thread (a
    /// finalizer run by the GC there, say) raises instead of panicking.
    pub(crate) fn get(&self) -> pyo3::PyResult<&T> {
        if self.on_owner_thread() {
            Ok(&self.value)
        } else {
            Err(pyo3::exceptions::PyRuntimeError::new_err(WRONG_THREAD))
        }
    }

    /// The value, on the owning thread; for the garbage collector's
    /// `__traverse__`/`__clear__`, which may run on any thread.
    pub(crate) fn try_get(&self) -> Option<&T> {
        self.on_owner_thread().then_some(&*self.value)
    }
}

impl<T> Deref for ThreadBound<T> {
    type Target = T;

    fn deref(&self) -> &T {
        if !self.on_owner_thread() {
            // Unwound without the panic hook (no message on stderr): pyo3
            // raises it in Python as a `PanicException`.
            std::panic::resume_unwind(Box::new(WRONG_THREAD.to_string()));
        }
        &self.value
    }
}

/// A value that only its owning thread will touch.
struct Unsent {
    _value: Box<dyn Any>,
}

// SAFETY: an `Unsent` is created on a foreign thread only to be moved into
// the graveyard, and taken out and dropped by `bury_own` on its owning
// thread; no thread reads it in between.
unsafe impl Send for Unsent {}

static GRAVEYARD: Mutex<Vec<(usize, Unsent)>> = Mutex::new(Vec::new());

impl<T> Drop for ThreadBound<T> {
    fn drop(&mut self) {
        // SAFETY: `value` is taken once, here, and never used again.
        let value = unsafe { ManuallyDrop::take(&mut self.value) };
        if self.on_owner_thread() {
            drop(value);
        } else {
            let mut g = GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner());
            g.push((
                self.owner,
                Unsent {
                    _value: Box::new(value),
                },
            ));
        }
    }
}

/// Drops what other threads freed of this thread's state.
pub(crate) fn bury_own() {
    let me = thread_number();
    let mine: Vec<Unsent> = {
        let mut g = GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_empty() {
            return;
        }
        let (mine, rest) = std::mem::take(&mut *g)
            .into_iter()
            .partition::<Vec<_>, _>(|(owner, _)| *owner == me);
        *g = rest;
        mine.into_iter().map(|(_, v)| v).collect()
    };
    drop(mine);
}
