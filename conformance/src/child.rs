//! The child processes the subprocess cases run: the test binary itself,
//! started with `CONFORMANCE_CHILD=1` and a role as its first argument.
//!
//! [`suite!`](crate::suite) puts a hook in the binary's constructor list
//! (`.init_array`, `.CRT$XCU`) that calls `init_unix` or `init_windows`,
//! so the role runs before the test harness's `main` and exits; the
//! harness never starts. That gives every
//! backend, Windows included, the same child programs with no tool
//! installed and nothing to build: `cat`, output on both streams, exit
//! codes, a grandchild holding stdout, a descriptor check, and so on.
//!
//! [`command`] builds the `(program, args)` for a role.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::time::Duration;

/// The variable that marks a child.
pub const ENV: &str = "CONFORMANCE_CHILD";

/// The program and arguments that run `role` with `args` in a child.
pub fn command(role: &str, args: &[&str]) -> (OsString, Vec<OsString>) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut v = vec![OsString::from(role)];
    v.extend(args.iter().map(OsString::from));
    (exe.into_os_string(), v)
}

/// The environment a child needs: the parent's, and the marker.
pub fn env() -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> =
        std::env::vars_os().filter(|(k, _)| k != ENV).collect();
    env.push((ENV.into(), "1".into()));
    env
}

/// What the constructor list holds.
#[cfg(unix)]
pub type InitHook =
    unsafe extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);
/// What the constructor list holds.
#[cfg(windows)]
pub type InitHook = extern "C" fn();

/// The loop factory of the suite the binary runs, for roles that run a
/// loop of the backend under test.
pub type Factory = fn() -> loop_api::Result<loop_api::Loop>;

/// Runs the role and exits if this process is a child; called by the
/// constructor [`suite!`](crate::suite) emits, with `main`'s arguments.
///
/// # Safety
/// `argv` holds `argc` valid C strings (what the C runtime passes).
#[cfg(unix)]
pub unsafe fn init_unix(argc: libc::c_int, argv: *const *const libc::c_char, factory: Factory) {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let mut args = Vec::new();
    for i in 1..argc.max(0) as usize {
        // SAFETY: the caller passes `argc` valid C strings in `argv`.
        let s = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
        args.push(std::ffi::OsStr::from_bytes(s.to_bytes()).to_owned());
    }
    run(args, factory)
}

/// As [`init_unix`], on Windows (the arguments come from the OS).
#[cfg(windows)]
pub fn init_windows(factory: Factory) {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    run(std::env::args_os().skip(1).collect(), factory)
}

fn arg(args: &[OsString], i: usize) -> String {
    args.get(i)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs a role and exits.
fn run(args: Vec<OsString>, factory: Factory) -> ! {
    let role = arg(&args, 0);
    let code = match role.as_str() {
        // Copies stdin to stdout until EOF.
        "cat" => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut out = std::io::stdout().lock();
            loop {
                match std::io::stdin().lock().read(&mut buf) {
                    Ok(0) => break 0,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                            break 1;
                        }
                    }
                    Err(_) => break 1,
                }
            }
        }
        // Writes its arguments, space-separated, to stdout.
        "echo" => {
            let text: Vec<String> = (1..args.len()).map(|i| arg(&args, i)).collect();
            print!("{}", text.join(" "));
            0
        }
        // Writes `out` to stdout and `err` to stderr, then exits.
        "both" => {
            let _ = std::io::stdout().write_all(arg(&args, 1).as_bytes());
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().write_all(arg(&args, 2).as_bytes());
            0
        }
        // Exits with the given code.
        "exit" => arg(&args, 1).parse().unwrap_or(99),
        // Sleeps, then exits 0.
        "sleep" => {
            std::thread::sleep(Duration::from_secs_f64(
                arg(&args, 1).parse().unwrap_or(60.0),
            ));
            0
        }
        // Prints an environment variable (empty if unset).
        "env" => {
            print!("{}", std::env::var(arg(&args, 1)).unwrap_or_default());
            0
        }
        // Prints the working directory.
        "cwd" => {
            print!(
                "{}",
                std::env::current_dir()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            0
        }
        // Writes n bytes of a known pattern to stdout.
        "produce" => {
            let n: usize = arg(&args, 1).parse().unwrap_or(0);
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            let mut out = std::io::stdout().lock();
            i32::from(out.write_all(&data).and_then(|_| out.flush()).is_err())
        }
        // Reads stdin to EOF; prints how many bytes it read.
        "count" => {
            let mut n = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match std::io::stdin().lock().read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            print!("{n}");
            0
        }
        // Waits for EOF on stdin (without reading anything else first).
        "wait-stdin" => {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::stdin().lock().read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            0
        }
        // Starts a grandchild that sleeps holding stdout, prints its pid,
        // and exits at once.
        "grandchild" => {
            let (exe, gargs) = command("sleep", &[&arg(&args, 1)]);
            match std::process::Command::new(exe)
                .args(gargs)
                .stdin(std::process::Stdio::null())
                .spawn()
            {
                Ok(c) => {
                    print!("{}", c.id());
                    0
                }
                Err(_) => 1,
            }
        }
        // Reports whether a descriptor is open in the child: exit 0 if so.
        #[cfg(unix)]
        "fd-open" => {
            let fd: i32 = arg(&args, 1).parse().unwrap_or(-1);
            // SAFETY: F_GETFD only reads a descriptor's flags.
            i32::from(unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0)
        }
        // Prints "pid sid pgid".
        #[cfg(unix)]
        "ids" => {
            // SAFETY: these calls only read the process's own ids.
            let (pid, sid, pgid) = unsafe { (libc::getpid(), libc::getsid(0), libc::getpgid(0)) };
            print!("{pid} {sid} {pgid}");
            0
        }
        // Closes stdout, then waits for EOF on stdin.
        #[cfg(unix)]
        "close-stdout" => {
            // SAFETY: closes this process's own fd 1; nothing uses it after.
            unsafe { libc::close(1) };
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::stdin().lock().read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            0
        }
        // Prints its pid.
        #[cfg(windows)]
        "ids" => {
            print!("{}", std::process::id());
            0
        }
        // Closes stdout, then waits for EOF on stdin.
        #[cfg(windows)]
        "close-stdout" => {
            use windows_sys::Win32::System::Console::{
                GetStdHandle, SetStdHandle, STD_OUTPUT_HANDLE,
            };
            // SAFETY: takes this process's own stdout handle out of the
            // standard slot, then closes it; nothing uses it after.
            unsafe {
                let h = GetStdHandle(STD_OUTPUT_HANDLE);
                SetStdHandle(STD_OUTPUT_HANDLE, std::ptr::null_mut());
                windows_sys::Win32::Foundation::CloseHandle(h);
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::stdin().lock().read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            0
        }
        // Ignores SIGTERM, says "ready", and sleeps.
        #[cfg(unix)]
        "ignore-term" => {
            // SAFETY: SIG_IGN needs no handler.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            print!("ready");
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        // With a loop of the backend under test: 200 spawns of a missing
        // program; prints the descriptor (handle) count before and after,
        // and exits 0 if nothing was left open.
        "spawn-failures" => spawn_failures(factory),
        _ => {
            eprintln!("conformance child: unknown role {role:?}");
            98
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// The number of descriptors (handles on Windows) this process has open.
pub fn open_handles() -> usize {
    #[cfg(unix)]
    {
        std::fs::read_dir("/proc/self/fd")
            .or_else(|_| std::fs::read_dir("/dev/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
    #[cfg(windows)]
    {
        let mut n = 0u32;
        // SAFETY: fills one u32 for the current process's pseudo-handle.
        unsafe {
            windows_sys::Win32::System::Threading::GetProcessHandleCount(
                windows_sys::Win32::System::Threading::GetCurrentProcess(),
                &mut n,
            )
        };
        n as usize
    }
}

fn spawn_failures(factory: Factory) -> i32 {
    use loop_api::EventLoopExt;
    let Ok(lp) = factory() else { return 97 };
    struct Quiet;
    impl loop_api::protocols::BaseProtocol for Quiet {}
    impl loop_api::protocols::SubprocessProtocol for Quiet {}
    let count = |lp: &loop_api::Loop| {
        let fut = lp.subprocess_exec(
            || std::rc::Rc::new(Quiet),
            "rsaio-no-such-program",
            ["x"],
            loop_api::events::options::SubprocessOptions::default(),
        );
        lp.run_until_complete(fut).is_err()
    };
    // One first, so that whatever a first spawn sets up for good is there.
    let _ = count(&lp);
    let before = open_handles();
    let mut failed = 0;
    for _ in 0..200 {
        if count(&lp) {
            failed += 1;
        }
    }
    let after = open_handles();
    let _ = lp.close();
    print!("{failed} {before} {after}");
    i32::from(failed != 200 || after > before)
}
