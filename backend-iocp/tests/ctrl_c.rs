//! `add_interrupt_handler` / `remove_interrupt_handler` on Windows: Ctrl-C
//! through the console control handler, on the IOCP loop (Windows only).
//!
//! Two kinds of case:
//! - Real Ctrl-C: the test re-runs its own binary (`child_entry`, with
//!   `IOCP_CTRL_C_CHILD=<scenario>`) in a new console of its own
//!   (`CREATE_NEW_CONSOLE`), where `GenerateConsoleCtrlEvent(CTRL_C_EVENT,
//!   0)` reaches that child alone: the test process itself may have no
//!   console (it has none under `wine-cargo`), and on a developer's
//!   console the event would reach every process on it. The child prints
//!   `child: ...` lines; the parent checks them and how the child ended.
//!   Where the event cannot be raised (an emulator without consoles), the
//!   case says so on stderr (`SKIPPED ...`) under Wine and fails elsewhere.
//! - Through the routine itself (`call_console_ctrl_routine`, the test
//!   hook that calls the registered handler routine as the system would):
//!   in this process, deterministic about when the routine has run, and
//!   for what Wine cannot raise (`CTRL_BREAK_EVENT`).
//!
//! Ctrl-C is process-wide: the in-process cases hold [`serial`] (the
//! children have their own process each). Every
//! wait is bounded (a safety-net timer in the loop, a receive timeout in
//! the parent); a child that overstays is killed and the case fails.
#![cfg(windows)]

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::os::windows::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, ThreadId};
use std::time::Duration;

use loop_api::base_events::windows_console::call_console_ctrl_routine;
use loop_api::{Loop, RemoteLoop};

use conformance::util::safety_net;

const CHILD_ENV: &str = "IOCP_CTRL_C_CHILD";
const CTRL_C_EVENT: u32 = 0;
const CTRL_BREAK_EVENT: u32 = 1;
const CREATE_NEW_CONSOLE: u32 = 0x10;
/// How a process ends by the default Ctrl-C action on Windows.
const STATUS_CONTROL_C_EXIT: u32 = 0xC000_013A;
/// The loop's safety net, seconds.
const NET: f64 = 10.0;
/// The parent's bound on each wait for a child, longer than [`NET`].
const TIMEOUT: Duration = Duration::from_secs(30);

type HandlerRoutine = unsafe extern "system" fn(u32) -> i32;

#[link(name = "kernel32")]
extern "system" {
    fn GenerateConsoleCtrlEvent(ctrl_event: u32, process_group_id: u32) -> i32;
    fn SetConsoleCtrlHandler(routine: Option<HandlerRoutine>, add: i32) -> i32;
}

fn new_loop() -> Loop {
    backend_iocp::loop_factory().expect("iocp loop")
}

/// Ctrl-C takes its default action in this process: clears an inherited
/// "ignore Ctrl-C" flag (`SetConsoleCtrlHandler(NULL, TRUE)` in an
/// ancestor, or `CREATE_NEW_PROCESS_GROUP`), with which the loop rightly
/// declines the handler.
fn ctrl_c_default() {
    // SAFETY: a NULL routine with FALSE only clears the process's flag.
    assert_ne!(unsafe { SetConsoleCtrlHandler(None, 0) }, 0);
}

/// One in-process case at a time touches the process's Ctrl-C.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    ctrl_c_default();
    guard
}

/// Runs `lp` until what is ready now, and whatever that schedules at once,
/// has run: the stop comes two hops later, behind a callback scheduled by
/// one of the ready callbacks (as the interrupt handler is, by the
/// routine's wakeup).
fn run_briefly(lp: &Loop) {
    let l = lp.clone();
    lp.call_soon_dyn(
        Box::new(move || {
            let l2 = l.clone();
            l.call_soon_dyn(Box::new(move || l2.stop()), None).unwrap();
        }),
        None,
    )
    .unwrap();
    lp.run_forever().unwrap();
}

/// Installs an interrupt handler that records the thread it ran on.
fn install(lp: &Loop) -> Rc<Cell<Option<ThreadId>>> {
    let ran_on = Rc::new(Cell::new(None));
    let r = ran_on.clone();
    assert!(
        lp.add_interrupt_handler(Box::new(move || r.set(Some(thread::current().id()))))
            .unwrap(),
        "add_interrupt_handler declined"
    );
    ran_on
}

/// Calls the routine as the system does: on a thread of its own.
fn routine_on_thread(ctrl_type: u32) -> bool {
    thread::spawn(move || call_console_ctrl_routine(ctrl_type))
        .join()
        .expect("routine thread")
}

// ----- in process, through the routine ---------------------------------------

/// The first Ctrl-C is taken (the process lives on) and runs the callback
/// on the loop's thread; from then on the routine passes Ctrl-C on, so a
/// second one would get the default action, even before the loop ran.
#[test]
fn routine_first_ctrl_c_runs_callback_on_loop_thread_then_passes_on() {
    let _g = serial();
    let lp = new_loop();
    let ran_on = install(&lp);
    assert!(routine_on_thread(CTRL_C_EVENT), "first Ctrl-C not taken");
    assert!(
        !routine_on_thread(CTRL_C_EVENT),
        "second Ctrl-C not passed on"
    );
    assert_eq!(ran_on.get(), None, "ran before the loop did");
    let net = safety_net(&lp, NET).unwrap();
    run_briefly(&lp);
    assert!(!net.get());
    assert_eq!(ran_on.get(), Some(thread::current().id()));
    // Fired handlers are gone: a new one can be installed, and removed.
    let again = install(&lp);
    lp.remove_interrupt_handler().unwrap();
    assert!(!routine_on_thread(CTRL_C_EVENT));
    run_briefly(&lp);
    assert_eq!(again.get(), None);
    lp.close().unwrap();
}

/// Removed before Ctrl-C: the routine passes it on and nothing fires.
#[test]
fn routine_removed_before_ctrl_c_fires_nothing() {
    let _g = serial();
    let lp = new_loop();
    let ran_on = install(&lp);
    lp.remove_interrupt_handler().unwrap();
    assert!(!routine_on_thread(CTRL_C_EVENT));
    run_briefly(&lp);
    assert_eq!(ran_on.get(), None);
    lp.close().unwrap();
}

/// A Ctrl-C the routine took but the loop had not dispatched when the
/// handler was removed fires neither that handler nor the next one (the
/// Windows side of the conformance case
/// `test_interrupt_handler_removed_drops_pending_sigint`).
#[test]
fn routine_pending_ctrl_c_dropped_by_remove() {
    let _g = serial();
    let lp = new_loop();
    let first = install(&lp);
    assert!(routine_on_thread(CTRL_C_EVENT));
    lp.remove_interrupt_handler().unwrap();
    let second = install(&lp);
    run_briefly(&lp);
    run_briefly(&lp);
    assert_eq!(first.get(), None, "the removed handler ran");
    assert_eq!(second.get(), None, "a stale Ctrl-C fired the next handler");
    // The second still works.
    assert!(routine_on_thread(CTRL_C_EVENT));
    run_briefly(&lp);
    assert_eq!(second.get(), Some(thread::current().id()));
    lp.close().unwrap();
}

/// Ctrl-Break (SIGBREAK, not SIGINT) keeps its default action.
#[test]
fn routine_passes_ctrl_break_on() {
    let _g = serial();
    let lp = new_loop();
    let ran_on = install(&lp);
    assert!(!routine_on_thread(CTRL_BREAK_EVENT));
    run_briefly(&lp);
    assert_eq!(ran_on.get(), None);
    lp.remove_interrupt_handler().unwrap();
    lp.close().unwrap();
}

/// One owner at a time, as on Unix: a second installation (same loop or
/// another) is declined; after remove, or close, another loop gets it.
#[test]
fn one_loop_at_a_time() {
    let _g = serial();
    let a = new_loop();
    let b = new_loop();
    assert!(a.add_interrupt_handler(Box::new(|| {})).unwrap());
    assert!(!a.add_interrupt_handler(Box::new(|| {})).unwrap());
    assert!(!b.add_interrupt_handler(Box::new(|| {})).unwrap());
    a.remove_interrupt_handler().unwrap();
    assert!(b.add_interrupt_handler(Box::new(|| {})).unwrap());
    b.close().unwrap(); // close removes it
    assert!(a.add_interrupt_handler(Box::new(|| {})).unwrap());
    a.close().unwrap();
    assert!(
        !routine_on_thread(CTRL_C_EVENT),
        "a closed loop kept Ctrl-C"
    );
    assert!(matches!(
        a.add_interrupt_handler(Box::new(|| {})),
        Err(loop_api::Error::Runtime(_))
    ));
}

/// Ctrl-C ignored by the process (`SetConsoleCtrlHandler(NULL, TRUE)`):
/// the system calls no routine for it, so the loop declines, as it does on
/// Unix when SIGINT is ignored.
#[test]
fn declined_when_process_ignores_ctrl_c() {
    let _g = serial();
    let lp = new_loop();
    // SAFETY: a NULL routine with TRUE only sets the process's flag.
    assert_ne!(unsafe { SetConsoleCtrlHandler(None, 1) }, 0);
    let declined = !lp.add_interrupt_handler(Box::new(|| {})).unwrap();
    ctrl_c_default();
    assert!(declined);
    assert!(lp.add_interrupt_handler(Box::new(|| {})).unwrap());
    lp.remove_interrupt_handler().unwrap();
    lp.close().unwrap();
}

// ----- real Ctrl-C, in a child on a console of its own ------------------------

/// A loop callback that raises Ctrl-C on the child's console; says so if
/// the system refuses.
fn raise_ctrl_c() -> bool {
    // SAFETY: no pointers; group 0 is every process on this console, the
    // child alone (it has a console of its own).
    if unsafe { GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0) } == 0 {
        say(&format!(
            "generate failed: {}",
            std::io::Error::last_os_error()
        ));
        return false;
    }
    true
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "child: {line}");
    let _ = out.flush();
}

mod child {
    use super::*;

    /// The remote of the loop a test catcher wakes.
    fn catcher_remote() -> &'static Mutex<Option<RemoteLoop>> {
        static R: OnceLock<Mutex<Option<RemoteLoop>>> = OnceLock::new();
        R.get_or_init(|| Mutex::new(None))
    }

    /// A handler registered before the loop's (so called after it, if at
    /// all): takes the Ctrl-C the loop did not, and wakes the loop, which
    /// then stops two hops later (after anything the loop's routine could
    /// have scheduled).
    unsafe extern "system" fn catcher(ctrl_type: u32) -> i32 {
        if ctrl_type != CTRL_C_EVENT {
            return 0;
        }
        let remote = catcher_remote()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(remote) = remote else { return 0 };
        let woke = remote.call_soon_threadsafe(|| {
            say("caught by the next handler");
            let lp = loop_api::get_running_loop().expect("on the loop");
            let l = lp.clone();
            lp.call_soon_dyn(Box::new(move || l.stop()), None).unwrap();
        });
        i32::from(woke.is_ok())
    }

    /// Installed on the running loop; the first Ctrl-C runs the callback
    /// on the loop's thread; the handler is then gone, and a second Ctrl-C
    /// ends the process by the default action.
    fn fires() {
        let lp = new_loop();
        let ran_on = Rc::new(Cell::new(None));
        let (r, l) = (ran_on.clone(), lp.clone());
        lp.call_soon_dyn(
            Box::new(move || {
                let (r2, l2) = (r.clone(), l.clone());
                let installed = l
                    .add_interrupt_handler(Box::new(move || {
                        r2.set(Some(thread::current().id()));
                        l2.stop();
                    }))
                    .unwrap();
                say(&format!("installed={installed}"));
                if !installed || !raise_ctrl_c() {
                    l.stop();
                }
            }),
            None,
        )
        .unwrap();
        let net = safety_net(&lp, NET).unwrap();
        lp.run_forever().unwrap();
        say(&format!(
            "fired={} on_loop_thread={} net={}",
            ran_on.get().is_some(),
            ran_on.get() == Some(thread::current().id()),
            net.get()
        ));
        // The handler removed itself: it can be installed anew.
        let again = lp.add_interrupt_handler(Box::new(|| {})).unwrap();
        lp.remove_interrupt_handler().unwrap();
        say(&format!("reinstall={again}"));
        lp.close().unwrap();
        say("raising a second Ctrl-C");
        let (_tx, rx) = mpsc::channel::<()>();
        if raise_ctrl_c() {
            // The default action ends the process meanwhile.
            let _ = rx.recv_timeout(Duration::from_secs_f64(NET));
            say("survived the second Ctrl-C");
        }
        std::process::exit(1);
    }

    /// Removed before Ctrl-C: the Ctrl-C reaches the next handler and the
    /// loop's callback never runs.
    fn removed() {
        // SAFETY: `catcher` is a valid handler routine for the process's life.
        assert_ne!(unsafe { SetConsoleCtrlHandler(Some(catcher), 1) }, 0);
        let lp = new_loop();
        *catcher_remote()
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(lp.remote());
        let fired = Rc::new(Cell::new(false));
        let (f, l) = (fired.clone(), lp.clone());
        lp.call_soon_dyn(
            Box::new(move || {
                let installed = l
                    .add_interrupt_handler(Box::new(move || f.set(true)))
                    .unwrap();
                l.remove_interrupt_handler().unwrap();
                say(&format!("installed={installed}"));
                if !raise_ctrl_c() {
                    l.stop();
                }
            }),
            None,
        )
        .unwrap();
        let net = safety_net(&lp, NET).unwrap();
        lp.run_forever().unwrap();
        say(&format!("fired={} net={}", fired.get(), net.get()));
        lp.close().unwrap();
    }

    pub fn run(scenario: &str) {
        ctrl_c_default();
        match scenario {
            "fires" => fires(),
            "removed" => removed(),
            other => panic!("unknown scenario {other}"),
        }
    }
}

/// The children's entry point: does nothing unless run as a child.
#[test]
fn child_entry() {
    if let Ok(scenario) = std::env::var(CHILD_ENV) {
        child::run(&scenario);
    }
}

enum Out {
    Line(String),
    Eof,
}

struct Spawned {
    child: Child,
    out: Receiver<Out>,
    seen: Vec<String>,
}

impl Spawned {
    fn new(scenario: &str) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, scenario)
            .creation_flags(CREATE_NEW_CONSOLE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("piped");
        let (tx, out) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Out::Line(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Out::Eof);
        });
        Spawned {
            child,
            out,
            seen: Vec::new(),
        }
    }

    /// The next `child: ` line, without the prefix; None at the end of
    /// output. Panics if none comes in time.
    fn next(&mut self) -> Option<String> {
        loop {
            match self.out.recv_timeout(TIMEOUT) {
                Ok(Out::Line(l)) => {
                    self.seen.push(l.clone());
                    // The first may follow libtest's `test child_entry ... `.
                    if let Some(at) = l.find("child: ") {
                        return Some(l[at + "child: ".len()..].to_string());
                    }
                }
                Ok(Out::Eof) => return None,
                Err(_) => panic!("the child said nothing in time; so far: {:?}", self.seen),
            }
        }
    }

    /// The child's output to the end (its stdout closes as it exits), then
    /// its exit status.
    fn finish(&mut self) -> (Vec<String>, ExitStatus) {
        let mut rest = Vec::new();
        while let Some(l) = self.next() {
            rest.push(l);
        }
        (rest, self.child.wait().unwrap())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// True (after a visible skip) if the child could not raise Ctrl-C under
/// Wine; fails the case elsewhere.
fn cannot_raise(case: &str, line: &str) -> bool {
    let Some(why) = line.strip_prefix("generate failed: ") else {
        return false;
    };
    if backend_iocp::running_under_wine() {
        eprintln!(
            "SKIPPED {case}: Wine {} cannot raise Ctrl-C here (GenerateConsoleCtrlEvent: {why})",
            backend_iocp::wine_version().unwrap_or("?")
        );
        return true;
    }
    panic!("GenerateConsoleCtrlEvent failed on Windows: {why}");
}

#[test]
fn ctrl_c_runs_callback_on_loop_thread_and_second_ctrl_c_kills() {
    let case = "ctrl_c_runs_callback_on_loop_thread_and_second_ctrl_c_kills";
    let mut c = Spawned::new("fires");
    assert_eq!(c.next().as_deref(), Some("installed=true"));
    let line = c.next().expect("a result line");
    if cannot_raise(case, &line) {
        return;
    }
    assert_eq!(line, "fired=true on_loop_thread=true net=false");
    assert_eq!(c.next().as_deref(), Some("reinstall=true"));
    assert_eq!(c.next().as_deref(), Some("raising a second Ctrl-C"));
    let (rest, status) = c.finish();
    assert!(
        rest.is_empty(),
        "after the second Ctrl-C the child said {rest:?}"
    );
    // Windows ends the process with STATUS_CONTROL_C_EXIT; Wine 8's
    // default handler exits with 0. Neither is the child's own exit (1)
    // nor a test harness's (which prints its summary first).
    let code = status.code().map(|c| c as u32);
    let killed = code == Some(STATUS_CONTROL_C_EXIT)
        || (backend_iocp::running_under_wine() && code == Some(0));
    assert!(
        killed && !c.seen.iter().any(|l| l.starts_with("test result")),
        "not ended by Ctrl-C's default action: {status}, output {:?}",
        c.seen
    );
}

#[test]
fn ctrl_c_after_remove_fires_nothing() {
    let case = "ctrl_c_after_remove_fires_nothing";
    let mut c = Spawned::new("removed");
    assert_eq!(c.next().as_deref(), Some("installed=true"));
    let line = c.next().expect("a result line");
    if cannot_raise(case, &line) {
        return;
    }
    assert_eq!(line, "caught by the next handler");
    assert_eq!(c.next().as_deref(), Some("fired=false net=false"));
    let (rest, status) = c.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(status.success(), "{status}: {:?}", c.seen);
}
