//! Unix signal delivery for the loop core.
//!
//! asyncio installs a Python-level handler and `signal.set_wakeup_fd`. Here a
//! `sigaction` handler writes the signal number to the owning loop's wakeup
//! socket; the loop reads it like any other reader and runs the handler's
//! callback in the loop. The previous disposition is saved and restored on
//! removal, which `signal-hook` cannot do (it leaves its own handler
//! installed), and asyncio promises.
//!
//! Unlike CPython, nothing here needs the main thread: the handler only
//! writes to a socket, whichever thread the kernel interrupts. The one rule
//! is that a signal has one owning loop at a time in the process.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::exceptions::{Error, Result};

/// `signal.NSIG`: valid signals are `1..NSIG`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const NSIG: i32 = 65;
/// `signal.NSIG`: valid signals are `1..NSIG`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const NSIG: i32 = 33;

/// Per signal, the write end of the owning loop's wakeup socket (-1: none).
static WAKEUP: [AtomicI32; NSIG as usize] = [const { AtomicI32::new(-1) }; NSIG as usize];

#[cfg(any(target_os = "linux", target_os = "android"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: always safe to call; returns this thread's errno slot.
    unsafe { libc::__errno_location() }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: always safe to call; returns this thread's errno slot.
    unsafe { libc::__error() }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: an atomic load and write(2), with errno preserved.
    let Some(slot) = WAKEUP.get(sig as usize) else {
        return;
    };
    let fd = slot.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let errno = errno_location();
    // SAFETY: errno_location() points at this thread's errno; `fd` is a
    // socket kept open while registered (the slot is cleared before the
    // socket closes); `byte` lives across the call. A full socket drops the
    // byte, which is harmless: the loop is awake already.
    unsafe {
        let saved = *errno;
        let byte = sig as u8;
        libc::write(fd, (&byte as *const u8).cast(), 1);
        *errno = saved;
    }
}

/// asyncio's `_check_signal`.
pub(crate) fn check_signal(sig: i32) -> Result<()> {
    if !(1..NSIG).contains(&sig) {
        return Err(Error::value(format!("sig {sig} out of range(1, {NSIG})")));
    }
    Ok(())
}

fn query(sig: i32) -> io::Result<libc::sigaction> {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action
    // only reads the current disposition.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cur)
    }
}

/// True if `sig` has its default disposition (`SIG_DFL`).
pub(crate) fn is_default(sig: i32) -> bool {
    query(sig).is_ok_and(|a| a.sa_sigaction == libc::SIG_DFL)
}

/// One loop's signal state: its wakeup socket and the dispositions it replaced.
pub(crate) struct Signals {
    read: UnixStream,
    write: UnixStream,
    saved: HashMap<i32, libc::sigaction>,
}

impl Signals {
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        Ok(Signals {
            read,
            write,
            saved: HashMap::new(),
        })
    }

    pub(crate) fn read_fd(&self) -> i32 {
        self.read.as_raw_fd()
    }

    /// Installs the handler for `sig`. With `reset_on_delivery` the kernel
    /// restores the default action as it delivers the signal
    /// (`SA_RESETHAND`), so a second one takes the default action at once.
    pub(crate) fn install(&mut self, sig: i32, reset_on_delivery: bool) -> Result<()> {
        check_signal(sig)?;
        let mine = self.write.as_raw_fd();
        let slot = &WAKEUP[sig as usize];
        if let Err(other) = slot.compare_exchange(-1, mine, Ordering::AcqRel, Ordering::Acquire) {
            if other != mine {
                return Err(Error::runtime(format!(
                    "sig {sig} is handled by another event loop"
                )));
            }
        }
        // SAFETY: `act` is fully initialised (zeroed, then mask emptied and
        // handler set) and `on_signal` is async-signal-safe; `old` is a
        // valid out-parameter.
        let (rc, old) = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART
                | if reset_on_delivery {
                    libc::SA_RESETHAND
                } else {
                    0
                };
            let mut old: libc::sigaction = std::mem::zeroed();
            (libc::sigaction(sig, &act, &mut old), old)
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if !self.saved.contains_key(&sig) {
                slot.store(-1, Ordering::Release);
            }
            return Err(if err.raw_os_error() == Some(libc::EINVAL) {
                Error::runtime(format!("sig {sig} cannot be caught"))
            } else {
                err.into()
            });
        }
        self.saved.entry(sig).or_insert(old);
        Ok(())
    }

    /// Restores what `sig` had before `install`; false if not installed.
    pub(crate) fn uninstall(&mut self, sig: i32) -> Result<bool> {
        let Some(old) = self.saved.remove(&sig) else {
            return Ok(false);
        };
        // SAFETY: `old` came from sigaction itself.
        let rc = unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        WAKEUP[sig as usize].store(-1, Ordering::Release);
        if rc != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(true)
    }

    /// Forgets `sig` without touching its disposition: the kernel already
    /// reset it (`SA_RESETHAND` fired).
    pub(crate) fn forget(&mut self, sig: i32) {
        if self.saved.remove(&sig).is_some() {
            WAKEUP[sig as usize].store(-1, Ordering::Release);
        }
    }

    /// The signals that arrived since the last call, in order.
    pub(crate) fn drain(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match self.read.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend(buf[..n].iter().map(|&b| b as i32)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        out
    }

    /// Every signal installed.
    pub(crate) fn installed(&self) -> Vec<i32> {
        self.saved.keys().copied().collect()
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for sig in self.installed() {
            let _ = self.uninstall(sig);
        }
    }
}
