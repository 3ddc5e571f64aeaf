//! Where io_uring is unavailable, the uring factory says so and the
//! policy's `"auto"` falls back to select, saying why.
//!
//! Each test re-runs this binary on itself alone, in a child process marked
//! by [`CHILD_ENV`]. The child installs a seccomp filter that fails
//! `io_uring_setup` with `EPERM` (as a container's default seccomp profile
//! does) or `ENOSYS` (a kernel without io_uring), before anything in the
//! process has probed `"auto"`, then checks what the backend and the policy
//! report. The parent checks that the child passed and printed its marker.

// The filter compares the audit architecture; add others' AUDIT_ARCH_* here.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::cell::RefCell;
use std::process::Command;
use std::rc::Rc;

use loop_api::log::{self, Level};
use loop_api::Error;

/// Set in the child to the errno its filter returns.
const CHILD_ENV: &str = "BACKEND_URING_UNAVAILABLE_CHILD";
/// What the child prints once every check passed.
const MARKER: &str = "uring-unavailable-child: all checks passed";

#[test]
fn io_uring_blocked_with_eperm_is_a_clear_error_and_auto_falls_back_to_select() {
    case(
        "io_uring_blocked_with_eperm_is_a_clear_error_and_auto_falls_back_to_select",
        libc::EPERM,
        "Operation not permitted (os error 1)",
    );
}

#[test]
fn io_uring_missing_with_enosys_is_a_clear_error_and_auto_falls_back_to_select() {
    case(
        "io_uring_missing_with_enosys_is_a_clear_error_and_auto_falls_back_to_select",
        libc::ENOSYS,
        "Function not implemented (os error 38)",
    );
}

/// In the parent: runs `test` in a child and checks it passed. In the child:
/// blocks `io_uring_setup` with `errno` and runs the checks.
fn case(test: &str, errno: i32, os_error: &str) {
    if std::env::var_os(CHILD_ENV).is_some() {
        child(errno, os_error);
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, errno.to_string())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(MARKER),
        "child passed without running the checks:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

fn child(errno: i32, os_error: &str) {
    // The parent must not run this, and the child only once: nothing in this
    // process may have probed "auto" yet.
    assert_eq!(
        std::env::var(CHILD_ENV).as_deref(),
        Ok(errno.to_string().as_str()),
        "the child runs one case"
    );
    block_io_uring_setup(errno);

    // The filter is in force: io_uring_setup itself fails with `errno`.
    // SAFETY: a null params pointer is rejected by the kernel (or the filter
    // answers first); no memory is touched.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, std::ptr::null_mut::<u8>()) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(errno),
        "the seccomp filter does not block io_uring_setup"
    );

    // The backend: a clear NotSupported naming io_uring and the OS error.
    let err = backend_uring::loop_factory()
        .err()
        .expect("uring must fail");
    let Error::NotSupported { feature, reason } = &err else {
        panic!("expected NotSupported, got {err}");
    };
    assert!(feature.contains("uring"), "{feature}");
    assert!(reason.contains("io_uring"), "{reason}");
    assert!(reason.contains(os_error), "{reason}");
    assert!(err.is_unsupported());

    // The policy: "uring" is still registered, but its factory says why it
    // cannot run here.
    let uring = policy::backend("uring").expect("uring is registered on Linux");
    match uring() {
        Err(Error::NotSupported { reason, .. }) => assert!(reason.contains(os_error), "{reason}"),
        Err(e) => panic!("expected NotSupported, got {e}"),
        Ok(lp) => panic!("uring made a {} loop", lp.backend_name()),
    }

    // "auto" falls back to select and logs why, once.
    let lines: Rc<RefCell<Vec<(Level, String)>>> = Rc::default();
    let seen = lines.clone();
    log::set_sink(Some(Rc::new(move |level, msg: &str| {
        seen.borrow_mut().push((level, msg.to_string()))
    })));
    let auto = policy::backend("auto").expect("auto");
    for _ in 0..2 {
        let lp = auto().expect("auto loop");
        assert_eq!(lp.backend_name(), "select");
        lp.close().unwrap();
    }
    let lp = policy::run(
        async { Ok(policy::get_running_loop()?.backend_name()) },
        None,
        Some(auto),
    );
    assert_eq!(lp.unwrap(), "select");
    log::set_sink(None);

    let choice = policy::auto_choice().expect("auto choice");
    assert_eq!(choice.name, "select");
    assert_eq!(policy::auto_backend(), "select");
    assert_eq!(choice.skipped.len(), 1, "{:?}", choice.skipped);
    let (skipped, why) = &choice.skipped[0];
    assert_eq!(*skipped, "uring");
    let Error::NotSupported { reason, .. } = why else {
        panic!("expected NotSupported, got {why}");
    };
    assert!(reason.contains("io_uring"), "{reason}");
    assert!(reason.contains(os_error), "{reason}");

    let expected = format!("auto backend: chose \"select\" (uring unavailable: {reason})");
    let logged: Vec<_> = lines
        .borrow()
        .iter()
        .filter(|(_, m)| m.starts_with("auto backend:"))
        .cloned()
        .collect();
    assert_eq!(logged, [(Level::Info, expected)], "logged once, at Info");

    // Error messages report the run-time choice.
    let err = policy::backend("no-such-backend").expect_err("unknown");
    assert!(err.to_string().contains("(auto = select)"), "{err}");

    println!("\n{MARKER}");
}

// struct seccomp_data: int nr; __u32 arch; ...
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// Makes `io_uring_setup` fail with `errno` on this thread (and threads it
/// starts later) and allows every other system call.
fn block_io_uring_setup(errno: i32) {
    fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let mut program = [
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH),
        // Another ABI (x32, ia32): allow.
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR),
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | errno as u32),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; the kernel copies the program, which lives
    // until the call returns.
    unsafe {
        assert_eq!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            0,
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog
            ),
            0,
            "PR_SET_SECCOMP: {}",
            std::io::Error::last_os_error()
        );
    }
}
