//! Ctrl-C on Windows for the loop core: `add_interrupt_handler` and
//! `remove_interrupt_handler` through the console control handler.
//!
//! Windows has no SIGINT. A console's Ctrl-C makes the system start a new
//! thread in each process attached to the console and call the process's
//! handler routines there, last registered first, until one returns TRUE;
//! the last one is the default, which ends the process
//! (`STATUS_CONTROL_C_EXIT`). Here one routine, `routine`, is registered
//! with `SetConsoleCtrlHandler` while a loop holds the interrupt handler.
//! At the first `CTRL_C_EVENT` it disarms itself and wakes the owning loop
//! by that loop's thread-safe path (the same queue and driver notifier as
//! `call_soon_threadsafe`), then returns TRUE so the process lives on. On
//! the loop's thread the wakeup unregisters the routine and schedules the
//! callback like any ready handle. From the moment it disarmed, the
//! routine passes every event on (returns FALSE), so a second Ctrl-C gets
//! the default action (or whatever handler was registered before ours) at
//! once, even before the loop got round to unregistering it: the
//! equivalent of Unix's `SA_RESETHAND`.
//!
//! Choices where Windows differs from Unix:
//! - Only `CTRL_C_EVENT` is handled. asyncio's `Runner` handles SIGINT,
//!   which on Windows is Ctrl-C; Ctrl-Break is `SIGBREAK` there and keeps
//!   its default action (so does closing the console, logoff, shutdown).
//! - "Someone else handles Ctrl-C" (the `Ok(false)` case): Windows cannot
//!   list a process's handler routines, so what can be known is checked:
//!   another loop of this process holds the interrupt handler (or this one
//!   does already), or the process ignores Ctrl-C, the flag that
//!   `SetConsoleCtrlHandler(NULL, TRUE)` sets and that children inherit
//!   (`CREATE_NEW_PROCESS_GROUP` sets it in the new process). With it set
//!   the system calls no routine for Ctrl-C at all: that is Unix's
//!   `SIG_IGN`. There is no getter for it; it is bit 0 of the
//!   `ConsoleFlags` field of the process parameters in the PEB (as
//!   `SetConsoleCtrlHandler` itself keeps it, in Windows, ReactOS and
//!   Wine), read here through `NtQueryInformationProcess`; if that read
//!   fails, Ctrl-C counts as not ignored. A routine registered by other code
//!   (another library's Ctrl-C handler) cannot be seen: ours is then called
//!   first, being registered last. The console input mode
//!   (`ENABLE_PROCESSED_INPUT`, which `GetConsoleMode` reports) is not
//!   looked at: it belongs to the console shared with other processes,
//!   changes at any time, and only decides whether a typed Ctrl-C becomes
//!   an event; `GenerateConsoleCtrlEvent` raises one regardless.
//! - A process without a console (a service, a GUI program, a child made
//!   with `DETACHED_PROCESS`) gets no Ctrl-C; the handler is installed all
//!   the same (`Ok(true)`), as on Unix a process without a terminal keeps
//!   SIGINT's default action.
//!
//! As on Unix, one loop at a time in the process owns Ctrl-C. The loop's
//! callback is kept on the loop's thread (it is not `Send`), keyed by the
//! loop and a token per installation; a wakeup carries the token, so a
//! Ctrl-C taken by the routine but not yet dispatched when the handler is
//! removed (or replaced) finds no callback of its token and fires nothing.
//!
//! Lock order. Wine calls handler routines with its console lock held, and
//! `SetConsoleCtrlHandler` takes that lock, so the routine must never wait
//! for a lock held across `SetConsoleCtrlHandler`: the routine takes only
//! `ARMED`, and `SetConsoleCtrlHandler` is called under `REGISTERED`
//! alone (which may take `ARMED` briefly, never the other way round).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use windows_sys::core::BOOL;
use windows_sys::Wdk::System::Threading::{NtQueryInformationProcess, ProcessBasicInformation};
use windows_sys::Win32::Foundation::{FALSE, TRUE};
use windows_sys::Win32::System::Console::{SetConsoleCtrlHandler, CTRL_C_EVENT};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, PROCESS_BASIC_INFORMATION};

use super::Remote;
use crate::events::ThreadsafeCaller;
use crate::exceptions::Result;

/// Which loop gets the next Ctrl-C.
struct Armed {
    loop_id: u64,
    token: u64,
    /// Weak: a loop dropped without `close` must not keep swallowing Ctrl-C.
    remote: Weak<Remote>,
}

/// The installation the routine serves, if any. Taken (and so disarmed) by
/// the first Ctrl-C.
static ARMED: Mutex<Option<Armed>> = Mutex::new(None);

/// Whether [`routine`] is in the process's handler list. Its lock is held
/// across `SetConsoleCtrlHandler` (see the module docs for the order).
static REGISTERED: Mutex<bool> = Mutex::new(false);

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A loop's callback, waiting on the loop's thread for its Ctrl-C.
struct Pending {
    token: u64,
    /// Schedules the handle on the loop (holds the loop weakly).
    fire: Box<dyn FnOnce()>,
}

thread_local! {
    /// Per loop (by id) living on this thread: its installed callback.
    static PENDING: RefCell<HashMap<u64, Pending>> = RefCell::new(HashMap::new());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The routine registered with `SetConsoleCtrlHandler`; runs on a thread
/// the system starts for the event.
unsafe extern "system" fn routine(ctrl_type: u32) -> BOOL {
    if ctrl_type != CTRL_C_EVENT {
        return FALSE;
    }
    // Disarm first: a second Ctrl-C, on another such thread, passes on.
    let Some(armed) = lock(&ARMED).take() else {
        return FALSE;
    };
    let Some(remote) = armed.remote.upgrade() else {
        return FALSE;
    };
    let (loop_id, token) = (armed.loop_id, armed.token);
    // A closed loop refuses: then Ctrl-C takes its default action.
    match remote.call_soon_threadsafe(Box::new(move || dispatch(loop_id, token))) {
        Ok(()) => TRUE,
        Err(_) => FALSE,
    }
}

/// On the loop's thread, woken by [`routine`]: unregisters the routine and
/// schedules the callback of installation `token`, if it is still there.
fn dispatch(loop_id: u64, token: u64) {
    let pending = PENDING
        .try_with(|p| {
            let mut p = p.borrow_mut();
            match p.get(&loop_id) {
                Some(e) if e.token == token => p.remove(&loop_id),
                _ => None,
            }
        })
        .ok()
        .flatten();
    // Passing events on already (disarmed); leave the list as it was.
    let _ = unregister_if_idle();
    if let Some(p) = pending {
        (p.fire)();
    }
}

/// True if this process ignores Ctrl-C (`SetConsoleCtrlHandler(NULL,
/// TRUE)`, inherited, or `CREATE_NEW_PROCESS_GROUP`): bit 0 of
/// `RTL_USER_PROCESS_PARAMETERS::ConsoleFlags`. False if unreadable.
fn ctrl_c_ignored() -> bool {
    // SAFETY: NtQueryInformationProcess fills a PROCESS_BASIC_INFORMATION
    // of the size given, for the current-process pseudo handle. The PEB and
    // its process parameters live as long as the process; ConsoleFlags is
    // the u32 after ConsoleHandle (the second pointer-sized slot of
    // `Reserved2`), low half first on every Windows target, read volatile
    // as another thread may set it.
    unsafe {
        let mut info: PROCESS_BASIC_INFORMATION = std::mem::zeroed();
        let mut len = 0u32;
        let status = NtQueryInformationProcess(
            GetCurrentProcess(),
            ProcessBasicInformation,
            (&mut info as *mut PROCESS_BASIC_INFORMATION).cast(),
            std::mem::size_of::<PROCESS_BASIC_INFORMATION>() as u32,
            &mut len,
        );
        if status < 0 || info.PebBaseAddress.is_null() {
            return false;
        }
        let params = (*info.PebBaseAddress).ProcessParameters;
        if params.is_null() {
            return false;
        }
        let slot = std::ptr::addr_of!((*params).Reserved2[1]).cast::<u32>();
        std::ptr::read_volatile(slot) & 1 != 0
    }
}

/// Takes the routine out of the handler list if no loop is armed.
fn unregister_if_idle() -> io::Result<()> {
    let mut registered = lock(&REGISTERED);
    if !*registered || lock(&ARMED).is_some() {
        return Ok(());
    }
    // SAFETY: removes `routine`, a valid handler routine, from the list.
    if unsafe { SetConsoleCtrlHandler(Some(routine), FALSE) } == 0 {
        return Err(io::Error::last_os_error());
    }
    *registered = false;
    Ok(())
}

/// `add_interrupt_handler` for the loop `loop_id` (whose cross-thread queue
/// is `remote`), on the loop's thread; `fire` schedules the callback on it.
/// False, installing nothing, if Ctrl-C is ignored or another installation
/// holds it (see the module docs).
pub(super) fn add(loop_id: u64, remote: &Arc<Remote>, fire: Box<dyn FnOnce()>) -> Result<bool> {
    if ctrl_c_ignored() {
        return Ok(false);
    }
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let mut registered = lock(&REGISTERED);
    {
        let mut armed = lock(&ARMED);
        // One whose loop is gone (dropped without close) holds nothing.
        if armed.as_ref().is_some_and(|a| a.remote.strong_count() > 0) {
            return Ok(false);
        }
        *armed = Some(Armed {
            loop_id,
            token,
            remote: Arc::downgrade(remote),
        });
    }
    if !*registered {
        // SAFETY: `routine` is a valid handler routine for the process's
        // life (a plain function).
        if unsafe { SetConsoleCtrlHandler(Some(routine), TRUE) } == 0 {
            let err = io::Error::last_os_error();
            let mut armed = lock(&ARMED);
            if armed.as_ref().is_some_and(|a| a.token == token) {
                *armed = None;
            }
            return Err(err.into());
        }
        *registered = true;
    }
    drop(registered);
    // Replaces (drops) the callback of a Ctrl-C taken but not dispatched:
    // its wakeup carries the old token and fires nothing.
    let old = PENDING.with(|p| p.borrow_mut().insert(loop_id, Pending { token, fire }));
    drop(old);
    Ok(true)
}

/// `remove_interrupt_handler` for the loop `loop_id`, on its thread (and
/// on `close`): disarms and unregisters if the handler has not fired; a
/// Ctrl-C already taken but not dispatched finds no callback.
pub(super) fn remove(loop_id: u64) -> Result<()> {
    // `try_with`: a loop may be closed by a thread-local's destructor.
    let pending = PENDING
        .try_with(|p| p.borrow_mut().remove(&loop_id))
        .ok()
        .flatten();
    let Some(pending) = pending else {
        return Ok(());
    };
    {
        let mut armed = lock(&ARMED);
        if armed.as_ref().is_some_and(|a| a.token == pending.token) {
            *armed = None;
        }
    }
    let unregistered = unregister_if_idle();
    // The callback (and what it holds) goes after the borrows above end.
    drop(pending);
    unregistered.map_err(Into::into)
}

/// Test hook: calls the handler routine as the system does for a console
/// control event `ctrl_type` (`CTRL_C_EVENT` is 0, `CTRL_BREAK_EVENT` 1),
/// on the calling thread; true if it handled the event. For tests where no
/// console can raise a real Ctrl-C, and to know when the routine has run.
#[doc(hidden)]
pub fn call_console_ctrl_routine(ctrl_type: u32) -> bool {
    // SAFETY: `routine` may be called on any thread, any number of times.
    unsafe { routine(ctrl_type) != FALSE }
}
