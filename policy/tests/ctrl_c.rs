//! Ctrl-C and `Runner`, for real: SIGINT sent to a child process whose
//! main thread runs a `Runner`.
//!
//! `harness = false`: libtest runs tests on worker threads, and `Runner`
//! handles Ctrl-C only on the main thread. The test re-executes its own
//! binary with `CTRL_C_CHILD=<scenario>`; the child prints `ready` once its
//! main task runs (so the handler is in place), the parent sends SIGINT
//! with `kill(2)` and checks what the child prints and how it ends. Every
//! wait is bounded; a child that overstays is killed and the test fails.

#[cfg(unix)]
fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(scenario) => child::main(&scenario),
        Err(_) => parent::main(),
    }
}

#[cfg(not(unix))]
fn main() {
    // Runner's Ctrl-C on Windows goes through the console control handler,
    // which is not built yet (issue 5): say so instead of passing silently.
    println!("ctrl_c: SKIPPED 3 cases: Runner's Ctrl-C needs the console control handler on Windows (not built yet)");
    println!("0 passed, 0 failed, 3 skipped");
}

#[cfg(unix)]
const CHILD_ENV: &str = "CTRL_C_CHILD";
/// The exit code of a child whose `run` returned `KeyboardInterrupt`.
#[cfg(unix)]
const EXIT_KEYBOARD_INTERRUPT: i32 = 42;

#[cfg(unix)]
mod child {
    use std::io::Write;

    use loop_api::{Error, EventLoopExt};

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn sigint_is_default() -> bool {
        // SAFETY: a zeroed sigaction is a valid out-parameter; a null new
        // action only reads the current disposition.
        unsafe {
            let mut cur: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGINT, std::ptr::null(), &mut cur) == 0
                && cur.sa_sigaction == libc::SIG_DFL
        }
    }

    /// A shell starts background jobs with SIGINT ignored; Runner (like
    /// asyncio's) leaves Ctrl-C alone then. Give the child the terminal
    /// default so that the test does not depend on how it was started.
    fn reset_sigint() {
        // SAFETY: plain libc calls on a local, initialised signal set and a
        // zeroed sigaction whose handler is SIG_DFL.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGINT, &act, std::ptr::null_mut());
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }

    pub fn main(scenario: &str) {
        reset_sigint();
        match scenario {
            "cancel" => cancel(),
            "swallow" => swallow(),
            "installed" => installed(),
            other => {
                say(&format!("unknown scenario {other}"));
                std::process::exit(2);
            }
        }
    }

    /// One SIGINT: the main task sees `Err(Cancelled)` at its await, ends
    /// cancelled, and `run` returns `KeyboardInterrupt`.
    fn cancel() {
        let r = policy::run(
            async {
                let lp = policy::get_running_loop()?;
                let never = lp.create_future::<()>();
                say("ready");
                let r = never.await;
                say(&format!(
                    "main task: {:?}",
                    r.as_ref().err().map(Error::kind_name)
                ));
                r
            },
            None,
            None,
        );
        match r {
            Err(Error::KeyboardInterrupt) => {
                say("run: KeyboardInterrupt");
                std::process::exit(super::EXIT_KEYBOARD_INTERRUPT);
            }
            other => {
                say(&format!("run: unexpected {other:?}"));
                std::process::exit(1);
            }
        }
    }

    /// The main task catches the cancellation and waits again: the first
    /// SIGINT put the default action back, so the second one kills.
    fn swallow() {
        let r = policy::run(
            async {
                let lp = policy::get_running_loop()?;
                let first = lp.create_future::<()>();
                say("ready");
                let r = first.await;
                say(&format!("swallowed: {:?}", r.err().map(|e| e.kind_name())));
                let second = lp.create_future::<()>();
                second.await
            },
            None,
            None,
        );
        say(&format!("run returned: {r:?}"));
        std::process::exit(1);
    }

    /// The handler is in place while `run` runs on the main thread, gone
    /// after, and never installed by a `Runner` on another thread.
    fn installed() {
        let before = sigint_is_default();
        let during = policy::run(async { Ok(sigint_is_default()) }, None, None);
        let after = sigint_is_default();
        let on_thread = std::thread::spawn(|| {
            let mut runner = policy::Runner::new(None, None);
            runner.run(async { Ok(sigint_is_default()) }, None)
        })
        .join()
        .expect("thread");
        say(&format!(
            "default before={before} during={during:?} after={after} other thread={on_thread:?}"
        ));
    }
}

#[cfg(unix)]
mod parent {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::mpsc::{self, Receiver};
    use std::time::{Duration, Instant};

    const TIMEOUT: Duration = Duration::from_secs(20);

    type Test = (&'static str, fn() -> Result<(), String>);

    struct Spawned {
        child: Child,
        lines: Receiver<String>,
    }

    impl Spawned {
        fn new(scenario: &str) -> Result<Self, String> {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut child = Command::new(exe)
                .env(super::CHILD_ENV, scenario)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn: {e}"))?;
            let out = child.stdout.take().expect("piped");
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            Ok(Spawned { child, lines })
        }

        /// Waits (bounded) for a line starting with `prefix`; returns it.
        fn expect_line(&self, prefix: &str) -> Result<String, String> {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(l) if l.starts_with(prefix) => Ok(l),
                Ok(l) => Err(format!("expected {prefix:?}, child said {l:?}")),
                Err(_) => Err(format!("no {prefix:?} line from the child in time")),
            }
        }

        fn sigint(&self) -> Result<(), String> {
            let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
            // SAFETY: kill(2) with our own child's pid and a valid signal.
            if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
                return Err(format!("kill: {}", std::io::Error::last_os_error()));
            }
            Ok(())
        }

        /// Waits (bounded) for the child to end.
        fn wait(&mut self) -> Result<ExitStatus, String> {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                    return Ok(status);
                }
                if Instant::now() >= deadline {
                    return Err("the child did not exit in time".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
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

    fn one_sigint_cancels_the_main_task_and_raises_keyboard_interrupt() -> Result<(), String> {
        let mut c = Spawned::new("cancel")?;
        c.expect_line("ready")?;
        c.sigint()?;
        let seen = c.expect_line("main task: ")?;
        if seen != "main task: Some(\"CancelledError\")" {
            return Err(format!("the main task should see CancelledError: {seen}"));
        }
        c.expect_line("run: KeyboardInterrupt")?;
        let status = c.wait()?;
        if status.code() != Some(super::EXIT_KEYBOARD_INTERRUPT) {
            return Err(format!("unexpected exit: {status}"));
        }
        Ok(())
    }

    fn a_second_sigint_kills_a_task_that_swallows_the_first() -> Result<(), String> {
        let mut c = Spawned::new("swallow")?;
        c.expect_line("ready")?;
        c.sigint()?;
        let seen = c.expect_line("swallowed: ")?;
        if seen != "swallowed: Some(\"CancelledError\")" {
            return Err(format!("the main task should see CancelledError: {seen}"));
        }
        c.sigint()?;
        let status = c.wait()?;
        if status.signal() != Some(libc::SIGINT) {
            return Err(format!("expected death by SIGINT, got {status}"));
        }
        Ok(())
    }

    fn the_handler_is_installed_only_during_run_on_the_main_thread() -> Result<(), String> {
        let mut c = Spawned::new("installed")?;
        let line = c.expect_line("default ")?;
        let want = "default before=true during=Ok(false) after=true other thread=Ok(true)";
        if line != want {
            return Err(format!("got {line:?}, want {want:?}"));
        }
        let status = c.wait()?;
        if !status.success() {
            return Err(format!("unexpected exit: {status}"));
        }
        Ok(())
    }

    pub fn main() {
        let tests: [Test; 3] = [
            (
                "one_sigint_cancels_the_main_task_and_raises_keyboard_interrupt",
                one_sigint_cancels_the_main_task_and_raises_keyboard_interrupt,
            ),
            (
                "a_second_sigint_kills_a_task_that_swallows_the_first",
                a_second_sigint_kills_a_task_that_swallows_the_first,
            ),
            (
                "the_handler_is_installed_only_during_run_on_the_main_thread",
                the_handler_is_installed_only_during_run_on_the_main_thread,
            ),
        ];
        let (mut passed, mut failed) = (0, 0);
        for (name, test) in tests {
            match test() {
                Ok(()) => {
                    passed += 1;
                    println!("test {name} ... ok");
                }
                Err(e) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {e}");
                }
            }
        }
        println!("{passed} passed, {failed} failed");
        if failed > 0 {
            std::process::exit(1);
        }
    }
}
