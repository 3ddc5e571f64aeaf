//! Context variables: Python's `contextvars` for the loop's callbacks and tasks.
//!
//! Every thread has a *current* mapping from [`ContextVar`] to value.
//! [`Context::run`] makes a context current for the length of a call, and
//! what `ContextVar::set` does inside lands in that context. The loop runs
//! each callback in the context it was scheduled with (a copy of the
//! caller's by default, as `call_soon(..., context=None)` does) and every
//! step of a task in the task's own context.
//!
//! Mappings are copy-on-write: taking a snapshot is a reference-count
//! increment, and the first `set` after a snapshot copies the map.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::exceptions::{Error, Result};

type Map = HashMap<u64, Rc<dyn Any>>;

thread_local! {
    static CURRENT: RefCell<Rc<Map>> = RefCell::new(Rc::new(Map::new()));
    /// The entered [`Context`] whose mapping `CURRENT` holds right now, if
    /// any: its own `map` is stale until it is left or something else is
    /// entered inside it.
    static OWNER: RefCell<Option<Rc<ContextInner>>> = const { RefCell::new(None) };
}

/// What to restore when leaving: the outer mapping and its owner.
type Saved = (Rc<Map>, Option<Rc<ContextInner>>);

/// Makes `map` current, owned by `owner`. The outgoing mapping is first
/// written back to the context that owned it, so that reads of that context
/// from inside see its latest values.
fn enter(map: Rc<Map>, owner: Option<Rc<ContextInner>>) -> Saved {
    let prev_map = CURRENT.with(|c| c.replace(map));
    let prev_owner = OWNER.with(|o| o.replace(owner));
    if let Some(o) = &prev_owner {
        *o.map.borrow_mut() = prev_map.clone();
    }
    (prev_map, prev_owner)
}

/// Undoes [`enter`]; returns the mapping that was current.
fn leave(saved: Saved) -> Rc<Map> {
    let (map, owner) = saved;
    OWNER.with(|o| *o.borrow_mut() = owner);
    CURRENT.with(|c| c.replace(map))
}

/// A snapshot of the current thread's mapping: what `call_soon` captures
/// when no context is given. Cheap: one reference-count increment.
#[derive(Clone)]
pub(crate) struct Snapshot(Rc<Map>);

impl Snapshot {
    pub(crate) fn capture() -> Self {
        Snapshot(CURRENT.with(|c| c.borrow().clone()))
    }

    /// Runs `f` with this snapshot current; what `f` sets is dropped after.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        // The common case, a callback scheduled from the loop's top level
        // (or from another callback of the same mapping): this mapping is
        // current already and no `Context` is entered, so there is nothing
        // to swap in. `self` holds a second reference to the mapping, so a
        // `set` inside copies it (copy-on-write) and never changes it in
        // place; putting the mapping back afterwards drops what `f` set,
        // exactly as the full enter/leave does.
        let current = OWNER.with(|o| o.borrow().is_none())
            && CURRENT.with(|c| Rc::ptr_eq(&c.borrow(), &self.0));
        if current {
            struct PutBack<'a>(&'a Rc<Map>);
            impl Drop for PutBack<'_> {
                fn drop(&mut self) {
                    CURRENT.with(|c| {
                        let mut c = c.borrow_mut();
                        if !Rc::ptr_eq(&c, self.0) {
                            *c = self.0.clone();
                        }
                    });
                }
            }
            let _put_back = PutBack(&self.0);
            return f();
        }
        let _restore = Restore(Some(enter(self.0.clone(), None)));
        f()
    }
}

struct Restore(Option<Saved>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(saved) = self.0.take() {
            leave(saved);
        }
    }
}

/// `contextvars.Context`: a mapping of context variables that code can run in.
///
/// Cloning a `Context` gives another handle to the same context (Python
/// object identity); [`Context::copy`] makes an independent copy.
#[derive(Clone)]
pub struct Context(Rc<ContextInner>);

struct ContextInner {
    map: RefCell<Rc<Map>>,
    entered: Cell<bool>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::from_map(Rc::new(Map::new()))
    }

    fn from_map(map: Rc<Map>) -> Self {
        Context(Rc::new(ContextInner {
            map: RefCell::new(map),
            entered: Cell::new(false),
        }))
    }

    pub(crate) fn from_snapshot(s: Snapshot) -> Self {
        Self::from_map(s.0)
    }

    /// A shallow copy of this context.
    pub fn copy(&self) -> Self {
        Self::from_map(self.live_map())
    }

    /// Runs `f` with this context current. Variables set inside stay set in
    /// this context. Entering a context that is already entered is
    /// asyncio's `RuntimeError`.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        if self.0.entered.replace(true) {
            return Err(Error::runtime(
                "cannot enter context: <Context> is already entered",
            ));
        }
        let mine = self.0.map.borrow().clone();
        let prev = enter(mine, Some(self.0.clone()));
        struct Exit<'a>(&'a Context, Option<Saved>);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                let mine = leave(self.1.take().expect("exit once"));
                *self.0 .0.map.borrow_mut() = mine;
                self.0 .0.entered.set(false);
            }
        }
        let _exit = Exit(self, Some(prev));
        Ok(f())
    }

    /// The context's mapping as it is now: while this context is the one
    /// running, that is the thread's current mapping.
    fn live_map(&self) -> Rc<Map> {
        let running = OWNER.with(|o| o.borrow().as_ref().is_some_and(|o| Rc::ptr_eq(o, &self.0)));
        if running {
            CURRENT.with(|c| c.borrow().clone())
        } else {
            self.0.map.borrow().clone()
        }
    }

    /// Number of variables set in this context.
    pub fn len(&self) -> usize {
        self.live_map().len()
    }

    /// True when no variable is set in this context.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `var` in this context, without entering it.
    pub fn get<T: Clone + 'static>(&self, var: &ContextVar<T>) -> Option<T> {
        self.live_map()
            .get(&var.id)
            .and_then(|v| v.downcast_ref::<T>().cloned())
    }

    /// True when both handles name the same context.
    pub fn ptr_eq(&self, other: &Context) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Context vars={}>", self.len())
    }
}

/// `contextvars.copy_context()`: a copy of the current context.
pub fn copy_context() -> Context {
    Context::from_snapshot(Snapshot::capture())
}

static NEXT_VAR: AtomicU64 = AtomicU64::new(1);

/// `contextvars.ContextVar`: a variable whose value depends on the current
/// context.
pub struct ContextVar<T> {
    id: u64,
    name: String,
    default: Option<T>,
}

/// Returned by [`ContextVar::set`]; gives the variable its previous value
/// back with [`ContextVar::reset`].
pub struct Token<T> {
    var_id: u64,
    old: Option<Rc<dyn Any>>,
    used: Cell<bool>,
    _t: PhantomData<T>,
}

impl<T: Clone + 'static> ContextVar<T> {
    /// A variable with no default.
    pub fn new(name: impl Into<String>) -> Self {
        ContextVar {
            id: NEXT_VAR.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            default: None,
        }
    }

    /// A variable with a default value.
    pub fn with_default(name: impl Into<String>, default: T) -> Self {
        let mut v = Self::new(name);
        v.default = Some(default);
        v
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value in the current context, else the default, else `None`
    /// (Python's `LookupError`).
    pub fn get(&self) -> Option<T> {
        CURRENT
            .with(|c| {
                c.borrow()
                    .get(&self.id)
                    .and_then(|v| v.downcast_ref::<T>().cloned())
            })
            .or_else(|| self.default.clone())
    }

    /// Sets the value in the current context.
    pub fn set(&self, value: T) -> Token<T> {
        let old = CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            Rc::make_mut(&mut c).insert(self.id, Rc::new(value) as Rc<dyn Any>)
        });
        Token {
            var_id: self.id,
            old,
            used: Cell::new(false),
            _t: PhantomData,
        }
    }

    /// Restores the value the variable had before the `set` that made `token`.
    pub fn reset(&self, token: &Token<T>) -> Result<()> {
        if token.var_id != self.id {
            return Err(Error::value("Token was created by a different ContextVar"));
        }
        if token.used.replace(true) {
            return Err(Error::runtime("Token has already been used once"));
        }
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            let m = Rc::make_mut(&mut c);
            match &token.old {
                Some(v) => m.insert(self.id, v.clone()),
                None => m.remove(&self.id),
            }
        });
        Ok(())
    }
}

impl<T> fmt::Debug for ContextVar<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<ContextVar name={:?}>", self.name)
    }
}
