//! asyncio's event-loop behaviour as a test suite, written once and run
//! against every backend.
//!
//! # Running it against a backend
//! In the backend crate, `tests/conformance.rs`:
//!
//! ```ignore
//! conformance::suite!(my_backend::loop_factory);
//! ```
//!
//! where `loop_factory` is a `fn() -> loop_api::Result<loop_api::Loop>`.
//! That line expands to one `#[test]` per case, named
//! `<cpython_test_module>::<cpython_test_name>`. A backend that lacks a
//! feature declares it, and the cases needing it skip with the reason:
//!
//! ```ignore
//! conformance::suite!(my_backend::loop_factory, conformance::Capabilities {
//!     no_signals: Some("this OS has no POSIX signals"),
//!     ..Default::default()
//! });
//! ```
//!
//! A method the backend returns `NotSupported`/`NotImplemented` for also
//! skips, visibly: `conformance: SKIPPED <case>: <reason>` on stderr.

pub mod cases;
pub mod harness;
pub mod util;

pub use harness::{Capabilities, Ctx, Feature};

/// Expands to one `#[test]` per conformance case, run on loops from `$factory`.
#[macro_export]
macro_rules! suite {
    ($factory:expr) => {
        $crate::suite!($factory, $crate::Capabilities::default());
    };
    ($factory:expr, $caps:expr) => {
        fn __conformance_factory() -> ::loop_api::Result<::loop_api::Loop> {
            ($factory)()
        }
        fn __conformance_caps() -> $crate::Capabilities {
            $caps
        }
        $crate::__cases!(__emit);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __emit {
    ($( $module:ident { $($case:ident),* $(,)? } )*) => {
        $(
            mod $module {
                $(
                    #[test]
                    fn $case() {
                        $crate::harness::run_case(
                            concat!(stringify!($module), "::", stringify!($case)),
                            super::__conformance_factory,
                            super::__conformance_caps(),
                            $crate::cases::$module::$case,
                        );
                    }
                )*
            }
        )*
    };
}

/// The list of every case, by CPython test module. `tests` in this crate
/// checks that it names every `pub fn test_*` in `src/cases/`.
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($emit:ident) => {
        $crate::$emit! {
            test_base_events {
                test_call_soon_fifo,
            }
            test_events {
            }
            test_unix_events {
            }
            test_futures {
            }
            test_tasks {
            }
            test_context {
            }
            test_runners {
            }
            test_policy {
            }
        }
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub fn test_*` in a case file is in `__cases!`, and nothing else.
    #[test]
    fn case_list_matches_case_files() {
        let lib = include_str!("lib.rs");
        let list_start = lib.find("macro_rules! __cases").expect("list");
        let list = &lib[list_start..];
        let list = &list[..list.find("\n}\n").expect("end of list")];
        let mut listed = Vec::new();
        let mut module = String::new();
        for line in list.lines().map(str::trim) {
            if let Some(m) = line.strip_suffix(" {").filter(|m| m.starts_with("test_")) {
                module = m.to_string();
            } else if let Some(c) = line.strip_suffix(',').filter(|c| c.starts_with("test_")) {
                listed.push(format!("{module}::{c}"));
            }
        }
        let mut defined = Vec::new();
        for (module, src) in crate::cases::SOURCES {
            for line in src.lines() {
                if let Some(rest) = line.strip_prefix("pub fn test_") {
                    let name = rest.split('(').next().unwrap();
                    defined.push(format!("{module}::test_{name}"));
                }
            }
        }
        listed.sort();
        defined.sort();
        let missing: Vec<_> = defined.iter().filter(|d| !listed.contains(d)).collect();
        let extra: Vec<_> = listed.iter().filter(|l| !defined.contains(l)).collect();
        assert!(missing.is_empty(), "cases not in __cases!: {missing:?}");
        assert!(extra.is_empty(), "listed but not defined: {extra:?}");
    }
}
