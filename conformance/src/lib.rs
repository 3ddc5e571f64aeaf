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
                test_close,
                test_close_drops_pending_callbacks,
                test_close_does_not_wait_for_executor,
                test_run_forever_pre_stopped,
                test_run_once,
                test_stop_finishes_current_iteration,
                test_is_running,
                test_run_forever_twice,
                test_run_until_complete_loop,
                test_run_until_complete_loop_orphan_future_close_loop,
                test_running_loop_within_a_loop,
                test_add_callback_cancelled_handle,
                test_handle_cancel_in_same_batch,
                test_run_once_schedule_handle,
                test_call_later,
                test_call_at_same_deadline_fifo,
                test_call_later_negative_delays,
                test_time_and_call_at,
                test_call_later_cancelled,
                test_cancelled_timer_in_same_batch,
                test_run_once_cancelled_event_cleanup,
                test_call_soon_threadsafe_many_threads,
                test_call_soon_threadsafe_no_lost_wakeup,
                test_call_soon_threadsafe_after_close,
                test_set_exc_handler_custom,
                test_default_exc_handler_callback,
                test_callback_panic_reaches_handler,
                test_set_exc_handler_broken,
                test_call_exception_handler,
                test_set_debug,
                test_log_slow_callbacks,
                test_log_slow_callbacks_debug_off,
                test_run_in_executor_panic,
                test_run_in_executor_custom_executor,
                test_set_default_executor,
                test_shutdown_default_executor,
                test_shutdown_default_executor_timeout,
            }
            test_events {
                test_run_until_complete_nesting,
                test_run_until_complete,
                test_run_until_complete_stopped,
                test_close_running_event_loop,
                test_close,
                test_call_soon,
                test_call_later,
                test_call_soon_threadsafe,
                test_call_soon_threadsafe_same_thread,
                test_run_in_executor,
                test_run_in_executor_cancel,
                test_handle,
                test_handle_cancel_drops_callback,
                test_when,
                test_timer,
                test_timer_comparison,
                test_reader_callback,
                test_reader_callback_level_triggered,
                test_reader_ready_between_iterations,
                test_reader_callback_cancel,
                test_writer_callback,
                test_writer_callback_cancel,
                test_reader_replaced,
                test_reader_and_writer_same_fd,
                test_reader_callback_panic,
                test_remove_fds_after_closing,
                test_add_fds_after_closing,
            }
            test_unix_events {
                test_check_signal,
                test_add_signal_handler,
                test_add_signal_handler_uncatchable,
                test_remove_signal_handler,
                test_remove_signal_handler_restores_ignored,
                test_close,
                test_add_signal_handler_closed_loop,
                test_handle_signal_cancelled_handler,
                test_add_signal_handler_replaces,
                test_signal_handling_while_selecting,
                test_signal_callback_panic,
                test_interrupt_handler_removed_drops_pending_sigint,
            }
            test_futures {
                test_initial_state,
                test_result_before_done,
                test_result,
                test_exception,
                test_exception_class,
                test_set_result_causes_invalid_state,
                test_cancel,
                test_cancel_after_done_returns_false,
                test_future_cancel_message_getter,
                test_callbacks_invoked_on_set_result,
                test_callbacks_invoked_on_set_exception,
                test_callbacks_invoked_on_cancel,
                test_callback_added_after_done_is_scheduled,
                test_callbacks_remove_first_callback,
                test_callbacks_remove_third_callback,
                test_remove_done_callback,
                test_await_by_ref_and_by_value,
                test_future_exception_never_retrieved,
                test_tb_logger_exception_retrieved,
                test_tb_logger_not_called_after_cancel,
                test_callback_receives_the_future,
                test_constructor_use_running_loop,
            }
            test_tasks {
                test_task_class,
                test_task_exception,
                test_task_panic_becomes_exception,
                test_task_exception_never_retrieved,
                test_cancel_with_message_before_starting_task,
                test_cancel_inner_future,
                test_task_cancel_sleeping_task,
                test_cancel_task_catching,
                test_cancel_task_ignoring,
                test_uncancel_basic,
                test_uncancel_resets_must_cancel,
                test_cancel_at_end,
                test_cancel_awaited_task,
                test_cancel_both_task_and_inner_future,
                test_cancel_foreign_future,
                test_cancel_yield,
                test_cancel_done_task,
                test_cancel_with_message_then_future_result,
                test_await_task_from_task,
                test_exception_propagates_through_await,
                test_task_chain,
                test_task_done_callbacks,
                test_task_repr_autogenerated,
                test_bare_create_named_task,
                test_set_task_factory,
                test_task_factory_refuses,
                test_eager_start,
                test_eager_start_loop_not_running,
                test_all_tasks,
                test_current_task_with_interleaving_tasks,
                test_current_task,
                test_sleep,
                test_sleep_zero,
                test_task_handle_dropped_keeps_running,
                test_task_woken_from_other_thread,
                test_other_loop_future,
                test_cancel_twice_still_catchable,
                test_task_awaits_on_itself,
                test_task_waker_cloned_on_other_thread,
            }
            test_context {
                test_context_var_new_1,
                test_context_getset_1,
                test_context_getset_2,
                test_context_getset_3,
                test_context_getset_5,
                test_context_run_4,
                test_context_run_5,
                test_context_run_6,
                test_context_run_7,
                test_context_copy_1,
                test_call_soon_with_context,
                test_call_soon_default_context_is_a_copy,
                test_handle_get_context,
                test_context_1,
                test_context_2,
                test_context_3,
                test_context_4,
                test_get_context,
                test_task_context_persists_across_awaits,
                test_task_copies_context_at_creation,
                test_done_callback_with_context,
            }
            test_runners {
                test_asyncio_run_return,
                test_asyncio_run_raises,
                test_asyncio_run_debug,
                test_asyncio_run_from_running_loop,
                test_asyncio_run_loop_factory,
                test_asyncio_run_cancels_hanging_tasks,
                test_asyncio_run_reports_hanging_tasks_errors,
                test_asyncio_run_set_event_loop,
                test_runner_lazy_loop,
                test_runner_run_twice,
                test_runner_close,
                test_runner_drop_closes,
                test_runner_run_keeps_context,
                test_runner_run_with_context,
                test_runner_recursive_run,
                test_runner_sets_event_loop_only_without_factory,
                test_runner_close_cancels_leftover_tasks,
                test_runner_close_shuts_down_default_executor,
            }
            test_policy {
                test_get_running_loop,
                test_set_event_loop,
                test_get_event_loop_returns_running_loop,
                test_current_loop_is_per_thread,
                test_new_event_loop,
                test_get_event_loop_policy_is_process_wide,
                test_set_event_loop_policy,
                test_set_event_loop_policy_none,
                test_default_policy_with_factory,
                test_backend_by_name,
            }
            test_sock_lowlevel {
                test_sock_client_ops,
                test_sock_recv_waits_for_data,
                test_sock_recv_into,
                test_sock_recv_into_waits_for_data,
                test_sock_recv_eof,
                test_huge_content,
                test_sock_sendall_empty,
                test_sock_sendall_peer_closed,
                test_sock_connect,
                test_sock_connect_refused,
                test_sock_accept,
                test_cancel_sock_accept,
                test_cancel_sock_recv,
                test_drop_pending_sock_recv,
                test_sock_recv_replaced_by_second,
                test_cancel_sock_sendall,
                test_blocking_socket_refused,
                test_sock_sendto_recvfrom,
                test_sock_recvfrom_waits,
                test_sock_recvfrom_into_nbytes,
                test_sock_recvfrom_into_nbytes_too_large,
                test_getaddrinfo_localhost,
                test_getaddrinfo_family,
                test_getnameinfo,
                test_getaddrinfo_error,
                test_getaddrinfo_closed_loop,
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
