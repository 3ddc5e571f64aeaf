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

/// A mapping as the thread and contexts hold it: `None` is the empty
/// mapping, so that an empty context, and the thread's initial state, cost
/// no allocation and the thread-local below can be `const`-initialised.
type MapRef = Option<Rc<Map>>;

/// True when `a` and `b` are the same mapping (both empty counts as same).
#[inline]
fn same_map(a: &MapRef, b: &MapRef) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Rc::ptr_eq(a, b),
        _ => false,
    }
}

/// The thread's current mapping, and the entered [`Context`] that owns it
/// right now, if any: that context's own `map` is stale until it is left or
/// something else is entered inside it. One thread-local, so that entering
/// and leaving touch it once.
struct Current {
    map: MapRef,
    owner: Option<Rc<ContextInner>>,
}

thread_local! {
    static CURRENT: RefCell<Current> = const {
        RefCell::new(Current {
            map: None,
            owner: None,
        })
    };
}

/// What to restore when leaving: the outer mapping and its owner.
type Saved = (MapRef, Option<Rc<ContextInner>>);

/// Swaps the thread's mapping and owner for the given ones; returns the old.
fn swap_current(map: MapRef, owner: Option<Rc<ContextInner>>) -> Saved {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        (
            std::mem::replace(&mut c.map, map),
            std::mem::replace(&mut c.owner, owner),
        )
    })
}

/// Makes `map` current, owned by `owner`. The outgoing mapping is first
/// written back to the context that owned it, so that reads of that context
/// from inside see its latest values.
fn enter(map: MapRef, owner: Option<Rc<ContextInner>>) -> Saved {
    let (prev_map, prev_owner) = swap_current(map, owner);
    if let Some(o) = &prev_owner {
        *o.map.borrow_mut() = prev_map.clone();
    }
    (prev_map, prev_owner)
}

/// Undoes [`enter`]; returns the mapping that was current.
fn leave(saved: Saved) -> MapRef {
    let (map, owner) = saved;
    // The outgoing owner is dropped here, outside the thread-local's borrow.
    let (cur, _old_owner) = swap_current(map, owner);
    cur
}

/// A snapshot of the current thread's mapping: what `call_soon` captures
/// when no context is given. Cheap: one reference-count increment.
#[derive(Clone)]
pub(crate) struct Snapshot(MapRef);

impl Snapshot {
    #[inline]
    pub(crate) fn capture() -> Self {
        Snapshot(CURRENT.with(|c| c.borrow().map.clone()))
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
        let current = CURRENT.with(|c| {
            let c = c.borrow();
            c.owner.is_none() && same_map(&c.map, &self.0)
        });
        if current {
            struct PutBack<'a>(&'a MapRef);
            impl Drop for PutBack<'_> {
                fn drop(&mut self) {
                    let _old = CURRENT.with(|c| {
                        let mut c = c.borrow_mut();
                        if same_map(&c.map, self.0) {
                            None
                        } else {
                            Some(std::mem::replace(&mut c.map, self.0.clone()))
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
    map: RefCell<MapRef>,
    entered: Cell<bool>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::from_map(None)
    }

    fn from_map(map: MapRef) -> Self {
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
    fn live_map(&self) -> MapRef {
        let running = CURRENT.with(|c| {
            let c = c.borrow();
            match &c.owner {
                Some(o) if Rc::ptr_eq(o, &self.0) => Some(c.map.clone()),
                _ => None,
            }
        });
        match running {
            Some(map) => map,
            None => self.0.map.borrow().clone(),
        }
    }

    /// Number of variables set in this context.
    pub fn len(&self) -> usize {
        self.live_map().map_or(0, |m| m.len())
    }

    /// True when no variable is set in this context.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `var` in this context, without entering it.
    pub fn get<T: Clone + 'static>(&self, var: &ContextVar<T>) -> Option<T> {
        let map = self.live_map()?;
        map.get(&var.id)
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
                    .map
                    .as_ref()
                    .and_then(|m| m.get(&self.id))
                    .and_then(|v| v.downcast_ref::<T>().cloned())
            })
            .or_else(|| self.default.clone())
    }

    /// Sets the value in the current context.
    pub fn set(&self, value: T) -> Token<T> {
        let old = CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            let map = c.map.get_or_insert_with(Default::default);
            Rc::make_mut(map).insert(self.id, Rc::new(value) as Rc<dyn Any>)
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
            if token.old.is_none() && c.map.is_none() {
                // Removing from the empty mapping.
                return None;
            }
            let m = Rc::make_mut(c.map.get_or_insert_with(Default::default));
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
