//! Is this process running under Wine? Wine's ntdll exports
//! `wine_get_version`; Windows' does not.

use std::ffi::CStr;
use std::sync::OnceLock;

use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

fn wine_get_version() -> Option<unsafe extern "C" fn() -> *const std::ffi::c_char> {
    let name: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
    // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the
    // call; ntdll is loaded in every Windows process, and a module handle
    // from GetModuleHandleW needs no release.
    let ntdll = unsafe { GetModuleHandleW(name.as_ptr()) };
    if ntdll.is_null() {
        return None;
    }
    // SAFETY: `ntdll` is a loaded module's handle; the name is a
    // NUL-terminated C string.
    let f = unsafe { GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()) }?;
    // SAFETY: Wine declares it `const char * CDECL wine_get_version(void)`;
    // on x86_64 CDECL is the one Windows calling convention, as "system" is.
    Some(unsafe {
        std::mem::transmute::<
            unsafe extern "system" fn() -> isize,
            unsafe extern "C" fn() -> *const std::ffi::c_char,
        >(f)
    })
}

/// The Wine version (e.g. `"8.0"`) if this process runs under Wine.
pub fn wine_version() -> Option<&'static str> {
    static VERSION: OnceLock<Option<String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let f = wine_get_version()?;
            // SAFETY: Wine returns a pointer to a static NUL-terminated
            // string (or null, checked below).
            let p = unsafe { f() };
            if p.is_null() {
                return Some(String::from("unknown"));
            }
            // SAFETY: non-null, NUL-terminated, static for the process.
            Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .as_deref()
}

/// True when this process runs under Wine rather than Windows.
pub fn running_under_wine() -> bool {
    wine_version().is_some()
}
