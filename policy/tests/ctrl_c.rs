//! Ctrl-C and `Runner`, for real: SIGINT sent to a child process whose
//! main thread runs a `Runner`.
//!
//! `harness = false`: libtest runs tests on worker threads, and `Runner`
//! handles Ctrl-C only on the main thread. The test re-executes its own
//! binary with `CTRL_C_CHILD=<scenario>`; the child prints `ready` once its
//! main task runs (so the handler is in place), the parent sends SIGINT
//! with `kill(2)` and checks what the child prints and how it ends. Every
//! wait is bounded; a child that overstays is killed and the test fails.
//!
//! On Windows, Ctrl-C is a console control event: the child runs in a new
//! console of its own (`CREATE_NEW_CONSOLE`) and raises Ctrl-C there
//! itself (`GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0)` reaches every
//! process on the console, so only the child), on each backend. Where the
//! event cannot be raised, a case prints `SKIPPED` naming Wine under Wine,
//! and fails on Windows.

#[cfg(unix)]
fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(scenario) => child::main(&scenario),
        Err(_) => parent::main(),
    }
}

#[cfg(windows)]
fn main() {
    match std::env::var(windows::CHILD_ENV) {
        Ok(scenario) => windows::child::main(&scenario),
        Err(_) => windows::parent::main(),
    }
}

#[cfg(not(any(unix, windows)))]
fn main() {
    println!("ctrl_c: SKIPPED 3 cases: no Ctrl-C support on this OS");
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

#[cfg(windows)]
mod windows {
    pub const CHILD_ENV: &str = "CTRL_C_CHILD";
    /// The exit code of a child whose `run` returned `KeyboardInterrupt`.
    pub const EXIT_KEYBOARD_INTERRUPT: i32 = 42;
    /// The exit code of a child that could not raise Ctrl-C.
    pub const EXIT_CANNOT_RAISE: i32 = 3;
    const CTRL_C_EVENT: u32 = 0;

    type HandlerRoutine = unsafe extern "system" fn(u32) -> i32;

    #[link(name = "kernel32")]
    extern "system" {
        fn GenerateConsoleCtrlEvent(ctrl_event: u32, process_group_id: u32) -> i32;
        fn SetConsoleCtrlHandler(routine: Option<HandlerRoutine>, add: i32) -> i32;
    }

    pub mod child {
        use std::io::Write;

        use loop_api::{Error, Loop};

        use super::*;

        fn say(line: &str) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }

        /// Raises Ctrl-C on this console (the child's own); a child that
        /// cannot says why and exits with [`EXIT_CANNOT_RAISE`].
        fn raise_ctrl_c() {
            // SAFETY: no pointers; group 0 is every process on the console,
            // which is this one alone.
            if unsafe { GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0) } == 0 {
                say(&format!(
                    "cannot raise Ctrl-C: {}",
                    std::io::Error::last_os_error()
                ));
                std::process::exit(EXIT_CANNOT_RAISE);
            }
        }

        fn factory(name: &str) -> Option<policy::LoopFactory> {
            match name {
                "default" => None,
                other => Some(policy::backend(other).expect("backend")),
            }
        }

        /// Whether a new loop could take Ctrl-C now (that is, nobody holds
        /// it): installs and removes an interrupt handler.
        fn free() -> bool {
            let lp: Loop = backend_iocp::loop_factory().expect("iocp loop");
            let ok = lp.add_interrupt_handler(Box::new(|| {})).expect("add");
            if ok {
                lp.remove_interrupt_handler().expect("remove");
            }
            lp.close().expect("close");
            ok
        }

        pub fn main(scenario: &str) {
            // An inherited "ignore Ctrl-C" (CREATE_NEW_PROCESS_GROUP in an
            // ancestor) would make Runner leave Ctrl-C alone, rightly: start
            // from the default, as a console program normally does.
            // SAFETY: a NULL routine with FALSE only clears that flag.
            unsafe { SetConsoleCtrlHandler(None, 0) };
            match scenario.split_once(':') {
                Some(("cancel", backend)) => cancel(factory(backend)),
                Some(("swallow", backend)) => swallow(factory(backend)),
                _ if scenario == "installed" => installed(),
                _ => {
                    say(&format!("unknown scenario {scenario}"));
                    std::process::exit(2);
                }
            }
        }

        /// One Ctrl-C during a long sleep: the main task sees
        /// `Err(Cancelled)`, ends cancelled, and `run` returns
        /// `KeyboardInterrupt`.
        fn cancel(factory: Option<policy::LoopFactory>) {
            let r = policy::run(
                async {
                    let lp = policy::get_running_loop()?;
                    say(&format!("ready on {}", lp.backend_name()));
                    raise_ctrl_c();
                    let r = loop_api::sleep(3600.0).await;
                    say(&format!(
                        "main task: {:?}",
                        r.as_ref().err().map(Error::kind_name)
                    ));
                    r
                },
                None,
                factory,
            );
            match r {
                Err(Error::KeyboardInterrupt) => {
                    say("run: KeyboardInterrupt");
                    std::process::exit(EXIT_KEYBOARD_INTERRUPT);
                }
                other => {
                    say(&format!("run: unexpected {other:?}"));
                    std::process::exit(1);
                }
            }
        }

        /// The main task catches the cancellation and sleeps again: the
        /// handler is gone, so a second Ctrl-C ends the process.
        fn swallow(factory: Option<policy::LoopFactory>) {
            let r = policy::run(
                async {
                    let lp = policy::get_running_loop()?;
                    say(&format!("ready on {}", lp.backend_name()));
                    raise_ctrl_c();
                    let r = loop_api::sleep(3600.0).await;
                    say(&format!("swallowed: {:?}", r.err().map(|e| e.kind_name())));
                    raise_ctrl_c();
                    loop_api::sleep(3600.0).await
                },
                None,
                factory,
            );
            say(&format!("run returned: {r:?}"));
            std::process::exit(1);
        }

        /// The handler is held while `run` runs on the main thread, free
        /// after, and never taken by a `Runner` on another thread.
        fn installed() {
            let before = free();
            let during = policy::run(async { Ok(free()) }, None, None);
            let after = free();
            let on_thread = std::thread::spawn(|| {
                let mut runner = policy::Runner::new(None, None);
                runner.run(async { Ok(free()) }, None)
            })
            .join()
            .expect("thread");
            say(&format!(
                "free before={before} during={during:?} after={after} other thread={on_thread:?}"
            ));
        }
    }

    pub mod parent {
        use std::io::{BufRead, BufReader};
        use std::os::windows::process::CommandExt;
        use std::process::{Child, Command, ExitStatus, Stdio};
        use std::sync::mpsc::{self, Receiver};
        use std::time::Duration;

        use super::*;

        const TIMEOUT: Duration = Duration::from_secs(30);
        const CREATE_NEW_CONSOLE: u32 = 0x10;
        /// How the default Ctrl-C action ends a process on Windows.
        const STATUS_CONTROL_C_EXIT: u32 = 0xC000_013A;

        enum Outcome {
            Passed,
            Skipped(String),
        }

        type Test = (&'static str, fn() -> Result<Outcome, String>);

        enum Out {
            Line(String),
            Eof,
        }

        struct Spawned {
            child: Child,
            lines: Receiver<Out>,
        }

        impl Spawned {
            fn new(scenario: &str) -> Result<Self, String> {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut child = Command::new(exe)
                    .env(CHILD_ENV, scenario)
                    .creation_flags(CREATE_NEW_CONSOLE)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("spawn: {e}"))?;
                let out = child.stdout.take().expect("piped");
                let (tx, lines) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(Out::Line(line)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Out::Eof);
                });
                Ok(Spawned { child, lines })
            }

            /// The next line (bounded wait); None at the end of output.
            fn next(&self) -> Result<Option<String>, String> {
                match self.lines.recv_timeout(TIMEOUT) {
                    Ok(Out::Line(l)) => Ok(Some(l)),
                    Ok(Out::Eof) => Ok(None),
                    Err(_) => Err("the child said nothing in time".into()),
                }
            }

            /// Waits for a line starting with `prefix`; returns it.
            fn expect_line(&self, prefix: &str) -> Result<String, String> {
                match self.next()? {
                    Some(l) if l.starts_with(prefix) => Ok(l),
                    Some(l) => Err(format!("expected {prefix:?}, child said {l:?}")),
                    None => Err(format!("expected {prefix:?}, the child ended")),
                }
            }

            /// The rest of the output (its stdout closes as it exits), then
            /// the exit status.
            fn finish(&mut self) -> Result<(Vec<String>, ExitStatus), String> {
                let mut rest = Vec::new();
                while let Some(l) = self.next()? {
                    rest.push(l);
                }
                let status = self.child.wait().map_err(|e| e.to_string())?;
                Ok((rest, status))
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

        /// A child that could not raise Ctrl-C: a skip naming Wine under
        /// Wine, a failure on Windows.
        fn cannot_raise(rest: &[String], status: ExitStatus) -> Result<Outcome, String> {
            let why = rest.join("; ");
            if status.code() != Some(EXIT_CANNOT_RAISE) {
                return Err(format!("unexpected exit {status}: {why}"));
            }
            if backend_iocp::running_under_wine() {
                return Ok(Outcome::Skipped(format!(
                    "Wine {} cannot raise Ctrl-C here ({why})",
                    backend_iocp::wine_version().unwrap_or("?")
                )));
            }
            Err(why)
        }

        enum Next {
            Line(String),
            Skip(Outcome),
        }

        /// After "ready": either the child could not raise Ctrl-C, or the
        /// line `prefix` comes.
        fn after_ready(c: &mut Spawned, prefix: &str) -> Result<Next, String> {
            match c.next()? {
                Some(l) if l.starts_with("cannot raise Ctrl-C") => {
                    let (mut rest, status) = c.finish()?;
                    rest.insert(0, l);
                    cannot_raise(&rest, status).map(Next::Skip)
                }
                Some(l) if l.starts_with(prefix) => Ok(Next::Line(l)),
                Some(l) => Err(format!("expected {prefix:?}, child said {l:?}")),
                None => Err(format!("expected {prefix:?}, the child ended")),
            }
        }

        fn cancel(backend: &str) -> Result<Outcome, String> {
            let mut c = Spawned::new(&format!("cancel:{backend}"))?;
            let ready = c.expect_line("ready on ")?;
            if backend != "default" && ready != format!("ready on {backend}") {
                return Err(format!("wrong backend: {ready}"));
            }
            let seen = match after_ready(&mut c, "main task: ")? {
                Next::Line(l) => l,
                Next::Skip(skip) => return Ok(skip),
            };
            if seen != "main task: Some(\"CancelledError\")" {
                return Err(format!("the main task should see CancelledError: {seen}"));
            }
            c.expect_line("run: KeyboardInterrupt")?;
            let (rest, status) = c.finish()?;
            if status.code() != Some(EXIT_KEYBOARD_INTERRUPT) || !rest.is_empty() {
                return Err(format!("unexpected exit {status}, output {rest:?}"));
            }
            Ok(Outcome::Passed)
        }

        fn swallow(backend: &str) -> Result<Outcome, String> {
            let mut c = Spawned::new(&format!("swallow:{backend}"))?;
            c.expect_line("ready on ")?;
            let seen = match after_ready(&mut c, "swallowed: ")? {
                Next::Line(l) => l,
                Next::Skip(skip) => return Ok(skip),
            };
            if seen != "swallowed: Some(\"CancelledError\")" {
                return Err(format!("the main task should see CancelledError: {seen}"));
            }
            let (rest, status) = c.finish()?;
            // Windows' default action exits with STATUS_CONTROL_C_EXIT;
            // Wine 8's with 0. The child's own ends print first.
            let code = status.code().map(|c| c as u32);
            let killed = code == Some(STATUS_CONTROL_C_EXIT)
                || (backend_iocp::running_under_wine() && code == Some(0));
            if !killed || !rest.is_empty() {
                return Err(format!(
                    "expected the end by Ctrl-C's default action, got {status}, output {rest:?}"
                ));
            }
            Ok(Outcome::Passed)
        }

        fn installed() -> Result<Outcome, String> {
            let mut c = Spawned::new("installed")?;
            let line = c.expect_line("free ")?;
            let want = "free before=true during=Ok(false) after=true other thread=Ok(true)";
            if line != want {
                return Err(format!("got {line:?}, want {want:?}"));
            }
            let (_, status) = c.finish()?;
            if !status.success() {
                return Err(format!("unexpected exit: {status}"));
            }
            Ok(Outcome::Passed)
        }

        pub fn main() {
            let tests: [Test; 6] = [
                (
                    "one_ctrl_c_cancels_the_main_task_and_raises_keyboard_interrupt",
                    || cancel("default"),
                ),
                (
                    "one_ctrl_c_cancels_the_main_task_and_raises_keyboard_interrupt_iocp",
                    || cancel("iocp"),
                ),
                (
                    "one_ctrl_c_cancels_the_main_task_and_raises_keyboard_interrupt_select",
                    || cancel("select"),
                ),
                (
                    "a_second_ctrl_c_kills_a_task_that_swallows_the_first",
                    || swallow("default"),
                ),
                (
                    "a_second_ctrl_c_kills_a_task_that_swallows_the_first_select",
                    || swallow("select"),
                ),
                (
                    "the_handler_is_installed_only_during_run_on_the_main_thread",
                    installed,
                ),
            ];
            let (mut passed, mut failed, mut skipped) = (0, 0, 0);
            for (name, test) in tests {
                match test() {
                    Ok(Outcome::Passed) => {
                        passed += 1;
                        println!("test {name} ... ok");
                    }
                    Ok(Outcome::Skipped(why)) => {
                        skipped += 1;
                        println!("test {name} ... SKIPPED: {why}");
                        eprintln!("ctrl_c: SKIPPED {name}: {why}");
                    }
                    Err(e) => {
                        failed += 1;
                        println!("test {name} ... FAILED: {e}");
                    }
                }
            }
            println!("{passed} passed, {failed} failed, {skipped} skipped");
            if failed > 0 {
                std::process::exit(1);
            }
        }
    }
}
