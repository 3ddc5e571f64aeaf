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
//! Every skip is declared: a case that returns `NotSupported` or
//! `NotImplemented` fails unless it needed a feature the backend declared
//! missing or is listed in [`Capabilities::skips`] (see [`harness`]); skips
//! show on stderr as `conformance: SKIPPED <case>: <reason>`, and a listed
//! case that passes as `conformance: DECLARED SKIP PASSED <case>`.
//!
//! ```ignore
//! conformance::suite!(my_backend::loop_factory, conformance::Capabilities {
//!     no_signals: Some("this OS has no POSIX signals"),
//!     skips: [conformance::NOT_BUILT_YET, &[
//!         ("test_server::test_accept_emfile", "no descriptor limit to lower here"),
//!     ]].concat(),
//!     ..Default::default()
//! });
//! ```

pub mod cases;
pub mod child;
pub mod harness;
pub mod tls;
pub mod util;

pub use harness::{Capabilities, Ctx, Feature};

/// Cases that skip on every backend of this build because what they test
/// is not built yet in `loop-api` (none today).
pub const NOT_BUILT_YET: &[(&str, &str)] = &[];

/// Cases whose check needs something not every machine has; they pass
/// where it is there.
pub const MACHINE_DEPENDENT: &[(&str, &str)] = &[(
    "test_server::test_create_connection_family_inet6",
    "needs \"localhost\" to resolve to ::1, which not every machine's hosts file says",
)];

/// Cases whose check is written with Unix tools (descriptors and `fcntl`,
/// `SO_LINGER` resets, `/proc`, `RLIMIT_NOFILE`, `SO_REUSEPORT`,
/// `/dev/zero` and pipes as files, the blocking-mode query): they skip on
/// Windows, whatever the backend.
pub const UNIX_ONLY_CHECKS: &[(&str, &str)] = &[
    (
        "test_subprocess::test_terminate_ignored_then_kill",
        "Windows has no termination signal a child can ignore: terminate is TerminateProcess",
    ),
    (
        "test_subprocess::test_killed_by_own_signal",
        "the child kills itself with a POSIX signal from /bin/sh",
    ),
    (
        "test_subprocess::test_close_fds",
        "the check makes a descriptor inheritable with fcntl (Windows inherits only handles \
         made inheritable, which the loop never does)",
    ),
    (
        "test_subprocess::test_pipes_not_inherited",
        "the check asks a child about a descriptor number; Windows handle values are per process",
    ),
    (
        "test_subprocess::test_start_new_session",
        "sessions are POSIX's",
    ),
    (
        "test_subprocess::test_process_group",
        "process groups are POSIX's (on Windows: creation_flags)",
    ),
    (
        "test_datagram::test_create_datagram_endpoint_reuse_port",
        "Windows has no SO_REUSEPORT",
    ),
    (
        "test_selector_events::test_close_with_buffer_then_reset",
        "the check makes a SO_LINGER reset with Unix descriptors",
    ),
    (
        "test_selector_events::test_read_connection_reset",
        "the check makes a SO_LINGER reset with Unix descriptors",
    ),
    (
        "test_selector_events::test_fd_closed_after_abort",
        "the check reads the descriptor with fcntl",
    ),
    (
        "test_selector_events::test_fd_closed_after_close",
        "the check reads the descriptor with fcntl",
    ),
    (
        "test_selector_events::test_fd_closed_after_peer_eof",
        "the check reads the descriptor with fcntl",
    ),
    (
        "test_sendfile::test_sendfile_fallback_not_regular_file",
        "the case reads /dev/zero, which only Unix has",
    ),
    (
        "test_sendfile::test_sock_sendfile_fallback_not_regular_file",
        "the case reads /dev/zero, which only Unix has",
    ),
    (
        "test_sendfile::test_sock_sendfile_not_regular_file",
        "the case reads /dev/zero, which only Unix has",
    ),
    (
        "test_sendfile::test_sock_sendfile_fallback_pipe",
        "the case needs an anonymous pipe as a File (Unix)",
    ),
    (
        "test_sendfile::test_sock_sendfile_blocking_socket",
        "Windows cannot query a socket's blocking mode",
    ),
    (
        "test_sock_lowlevel::test_blocking_socket_refused",
        "Windows cannot query a socket's blocking mode",
    ),
    (
        "test_server::test_accept_emfile",
        "Windows has no per-process descriptor limit to lower",
    ),
    (
        "test_server::test_server_no_fd_leak",
        "counting descriptors needs Linux's /proc",
    ),
    (
        "test_server::test_server_close_with_socket_held",
        "Windows keeps a listening socket open while another handle to it exists",
    ),
    (
        "test_sslproto::test_ssl_failed_handshakes_leak_nothing",
        "counting sockets needs Linux's /proc",
    ),
    (
        "test_pipes::test_read_pipe_sets_nonblocking",
        "the check reads O_NONBLOCK with fcntl",
    ),
    (
        "test_pipes::test_read_pipe_socket",
        "the case hands a Unix socketpair over as a pipe",
    ),
    (
        "test_pipes::test_read_pipe_char_device",
        "the case reads /dev/null, which only Unix has",
    ),
    (
        "test_pipes::test_read_pipe_fd_owned_by_transport",
        "add_reader on a pipe descriptor is Unix-only",
    ),
    ("test_pipes::test_read_pty_output", "ptys are Unix-only"),
    (
        "test_pipes::test_write_pipe_char_device",
        "the case writes /dev/null, which only Unix has",
    ),
    ("test_pipes::test_write_pty", "ptys are Unix-only"),
];

/// What Wine 8 lacks or gets wrong, where Windows itself would pass.
pub const WINE: &[(&str, &str)] = &[
    ("test_datagram::test_error_received_connected", "Wine does not report port-unreachable to a connected UDP socket"),
    ("test_server::test_create_connection_all_errors_multiple", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_family_filters", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_happy_eyeballs", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_happy_eyeballs_slow_first", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_local_addr_nomatch_family", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_local_addr_skip_different_family", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_multiple", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
    ("test_server::test_create_connection_multiple_errors", "resolving host=None aborts the process under Wine (dns-lookup reads a misaligned addrinfo)"),
];

/// Every case, `module::case`, in the order the suite runs them.
pub const ALL_CASES: &[&str] = __cases!(__names);

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
        /// Runs a subprocess case's child role before the test harness
        /// starts, when this binary is started as one ([`$crate::child`]).
        #[cfg(unix)]
        unsafe extern "C" fn __conformance_child_hook(
            argc: ::std::os::raw::c_int,
            argv: *const *const ::std::os::raw::c_char,
            _envp: *const *const ::std::os::raw::c_char,
        ) {
            // SAFETY: the C runtime passes main's argc and argv.
            unsafe { $crate::child::init_unix(argc, argv, __conformance_factory) }
        }
        #[cfg(windows)]
        extern "C" fn __conformance_child_hook() {
            $crate::child::init_windows(__conformance_factory)
        }
        #[used]
        #[cfg_attr(
            any(target_os = "linux", target_os = "android", target_os = "freebsd"),
            link_section = ".init_array"
        )]
        #[cfg_attr(windows, link_section = ".CRT$XCU")]
        static __CONFORMANCE_CHILD_HOOK: $crate::child::InitHook = __conformance_child_hook;
        /// Every case the invocation declares as a skip exists.
        #[test]
        fn declared_skips_name_cases() {
            $crate::harness::check_declared(&__conformance_caps());
        }
        $crate::__cases!(__emit);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __names {
    ($( $module:ident { $($case:ident),* $(,)? } )*) => {
        &[$($(concat!(stringify!($module), "::", stringify!($case)),)*)*]
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
                test_call_soon_every_road_one_fifo,
                test_run_once_schedule_handle,
                test_call_later,
                test_call_at_same_deadline_fifo,
                test_call_later_negative_delays,
                test_time_and_call_at,
                test_timer_not_early_while_busy,
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
                test_remove_reader_then_close_refuses,
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
                test_future_completer_from_another_thread,
                test_run_coroutine_threadsafe,
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
                test_create_unix_server,
                test_create_unix_connection,
                test_create_unix_connection_extra_info,
                test_create_unix_server_nopath_nosock,
                test_create_unix_server_path_socket_error,
                test_create_unix_connection_path_sock,
                test_create_unix_connection_nopath_nosock,
                test_create_unix_server_path_inetsock,
                test_create_unix_server_path_dgram,
                test_create_unix_connection_path_inetsock,
                test_create_unix_server_existing_path_sock,
                test_create_unix_server_existing_path_nonsock,
                test_create_unix_connection_missing_path,
                test_unix_server_addr_cleanup,
                test_unix_server_sock_cleanup,
                test_unix_server_cleanup_gone,
                test_unix_server_cleanup_replaced,
                test_unix_server_cleanup_prevented,
                test_create_unix_server_abstract,
                test_unix_server_close_stops_accepting,
                test_unix_eof_half_close,
                test_unix_eof_received_closes,
                test_create_unix_server_sockets,
                test_create_unix_server_start_serving_false,
                test_create_unix_connection_sock,
                test_create_unix_server_sock,
                test_unix_large_transfer,
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
                test_gather_results_in_order,
                test_gather_return_exceptions,
                test_gather_first_exception,
                test_gather_cancel_cancels_children,
                test_gather_outer_task_cancel,
                test_gather_empty,
                test_shield_result,
                test_shield_outer_cancel,
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
                test_get_event_loop_policy_is_process_wide,
                test_set_event_loop_policy,
                test_set_event_loop_policy_none,
                test_default_policy_with_factory,
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
            test_selector_events {
                test_connection_made_before_waiter,
                test_data_received,
                test_read_eof_closes,
                test_read_eof_keep_open,
                test_eof_received_once_when_kept_open,
                test_buffered_protocol_read,
                test_buffered_protocol_small_buffer,
                test_buffered_protocol_get_buffer_error,
                test_buffered_protocol_get_buffer_empty,
                test_buffered_protocol_buffer_updated_error,
                test_buffered_protocol_eof_keep_open,
                test_data_received_panic,
                test_eof_received_panic,
                test_read_connection_reset,
                test_huge_read,
                test_close_stops_reading,
                test_write,
                test_write_order,
                test_writelines,
                test_writelines_many_small,
                test_write_no_data,
                test_write_partial_buffers,
                test_write_while_buffered_keeps_order,
                test_huge_write,
                test_huge_full_duplex,
                test_write_to_closed_peer,
                test_large_write_to_closed_peer,
                test_write_in_connection_made,
                test_get_write_buffer_limits_default,
                test_set_write_buffer_limits,
                test_set_write_buffer_limits_invalid,
                test_pause_resume_writing,
                test_no_pause_below_high_water,
                test_set_write_buffer_limits_zero,
                test_set_write_buffer_limits_pauses_at_once,
                test_write_in_resume_writing,
                test_close,
                test_close_flushes_buffer,
                test_close_with_reading_peer,
                test_close_twice,
                test_abort,
                test_abort_after_close_with_buffer,
                test_abort_twice,
                test_write_after_close,
                test_write_after_abort,
                test_write_eof,
                test_write_eof_buffer,
                test_write_after_write_eof,
                test_write_eof_twice_and_after_close,
                test_write_eof_then_peer_eof,
                test_pause_resume_reading,
                test_pause_reading_twice_resume_not_paused,
                test_pause_reading_in_data_received,
                test_pause_reading_delays_eof,
                test_is_reading_after_close,
                test_extra_info_addresses,
                test_extra_info_socket,
                test_extra_info_unknown,
                test_tcp_nodelay,
                test_set_protocol,
                test_set_protocol_to_buffered,
                test_add_reader_on_transport_fd,
                test_sock_recv_on_transport_fd,
                test_add_reader_after_transport_closing,
                test_fd_closed_after_close,
                test_fd_closed_after_abort,
                test_fd_closed_after_peer_eof,
                test_abort_in_data_received,
                test_close_in_connection_made,
                test_close_with_buffer_then_reset,
                test_write_and_close_in_data_received,
                test_connection_made_panic,
                test_connection_lost_panic,
                test_pause_writing_panic,
                test_create_connection_echo,
                test_loop_close_tears_down_transports,
            }
            test_server {
                test_create_server,
                test_create_server_defaults,
                test_create_server_all_hosts,
                test_create_server_dual_stack,
                test_create_server_multiple_hosts,
                test_create_server_family,
                test_create_server_ipv6,
                test_create_server_sock,
                test_create_server_host_port_sock,
                test_create_server_no_host_port_sock,
                test_create_server_wrong_sock,
                test_create_server_ssl_timeout_for_plain_socket,
                test_create_server_addr_in_use,
                test_create_server_reuse_address,
                test_create_server_reuse_port,
                test_create_server_keep_alive,
                test_create_server_backlog,
                test_create_server_start_serving_false,
                test_start_serving_twice,
                test_start_serving_closed,
                test_accept_many_pending,
                test_accepted_transport_extra_info,
                test_server_close,
                test_server_close_twice,
                test_server_get_loop,
                test_close_clients,
                test_close_clients_keeps_serving,
                test_abort_clients,
                test_wait_closed_basic,
                test_wait_closed_race,
                test_wait_closed_no_connections,
                test_wait_closed_waits_for_connection,
                test_serve_forever,
                test_serve_forever_cancel,
                test_serve_forever_twice,
                test_serve_forever_closed,
                test_server_scope,
                test_server_dropped_keeps_serving,
                test_server_close_drops_queued_clients,
                test_server_close_with_socket_held,
                test_create_server_resolve_error,
                test_create_server_bind_error_closes_sockets,
                test_accept_protocol_factory_error,
                test_accept_reset_client,
                test_start_serving_is_lazy,
                test_create_server_empty_host,
                test_server_no_fd_leak,
                test_create_connection,
                test_create_connection_sock,
                test_create_connection_host_port_sock,
                test_create_connection_no_host_port_sock,
                test_create_connection_wrong_sock,
                test_create_connection_local_addr,
                test_create_connection_local_addr_skip_different_family,
                test_create_connection_local_addr_nomatch_family,
                test_create_connection_local_addr_in_use,
                test_create_connection_refused,
                test_create_connection_all_errors,
                test_create_connection_multiple_errors,
                test_create_connection_all_errors_multiple,
                test_create_connection_multiple,
                test_create_connection_happy_eyeballs,
                test_create_connection_happy_eyeballs_slow_first,
                test_create_connection_happy_eyeballs_one_address,
                test_create_connection_family,
                test_create_connection_family_filters,
                test_create_connection_family_inet6,
                test_create_connection_ipv6,
                test_create_connection_nodelay,
                test_create_connection_server_hostname_without_ssl,
                test_create_connection_ssl_timeout_for_plain_socket,
                test_create_connection_resolve_error,
                test_create_connection_error_leaves_loop_usable,
                test_create_connection_cancel,
                test_create_connection_dropped,
                test_concurrent_clients,
                test_connect_accepted_socket,
                test_connect_accepted_socket_wrong_sock,
                test_connect_accepted_socket_ssl_timeout_for_plain_socket,
                test_connect_accepted_socket_fd_is_the_transports,
                test_accept_emfile,
                test_ip_literal_does_not_wait_for_the_executor,
                test_ip_literal_after_executor_shutdown,
                test_create_connection_typed,
                test_protocol_keeping_its_transport_leaks_nothing,
            }
            test_datagram {
                test_create_datagram_endpoint,
                test_create_datagram_endpoint_ipv6,
                test_create_datagram_endpoint_sock,
                test_create_datagram_endpoint_extra_info,
                test_create_datagram_endpoint_local_and_remote,
                test_datagram_connection_made_before_result,
                test_sendto,
                test_sendto_connected_same_address,
                test_sendto_connected_addr,
                test_sendto_no_address_unconnected,
                test_sendto_no_data,
                test_datagram_received_sender_address,
                test_large_datagram,
                test_create_datagram_endpoint_reuse_address,
                test_create_datagram_endpoint_sockopts,
                test_create_datagram_endpoint_reuse_port,
                test_create_datagram_endpoint_allow_broadcast,
                test_create_datagram_endpoint_sock_sockopts,
                test_create_datagram_endpoint_wrong_sock,
                test_create_datagram_endpoint_noaddr_nofamily,
                test_create_datagram_endpoint_family_only,
                test_create_datagram_endpoint_no_matching_family,
                test_create_datagram_endpoint_addr_error,
                test_create_datagram_endpoint_cant_bind,
                test_datagram_send_to_non_listening_address,
                test_error_received_connected,
                test_datagram_received_panic,
                test_close,
                test_abort,
                test_sendto_closing,
                test_get_write_buffer_size,
                test_datagram_ping_pong,
                test_datagram_burst,
                test_create_datagram_endpoint_unix,
                test_create_datagram_endpoint_sock_unix,
                test_create_datagram_endpoint_existing_sock_unix,
                test_create_datagram_endpoint_unix_regular_file,
                test_create_datagram_endpoint_unix_sender_address,
                test_create_datagram_endpoint_unix_sock,
                test_create_datagram_endpoint_unix_close_keeps_file,
                test_create_datagram_endpoint_typed,
                test_datagram_set_protocol,
            }
            test_sendfile {
                test_sock_sendfile_success,
                test_sock_sendfile_with_offset_and_count,
                test_sock_sendfile_zero_size,
                test_sock_sendfile_mix_with_regular_send,
                test_sock_sendfile_large_file,
                test_sock_sendfile_offset_is_absolute,
                test_sock_sendfile_not_regular_file,
                test_sock_sendfile_fallback_not_regular_file,
                test_sock_sendfile_fallback_pipe,
                test_sock_sendfile_blocking_socket,
                test_sock_sendfile_nonstream_socket,
                test_sock_sendfile_bad_count,
                test_sock_sendfile_cancel,
                test_sock_sendfile_peer_closed_in_the_middle,
                test_sendfile_force_fallback,
                test_sendfile_fallback_partial,
                test_sendfile_native_unavailable_falls_back,
                test_sendfile_force_unsupported_native,
                test_sendfile_uses_native_hook,
                test_sendfile_no_fallback_for_fallback_transport,
                test_sendfile_not_supported,
                test_sendfile_closing_transport_and_bad_count,
                test_sendfile_fallback_close_peer_in_the_middle_of_receiving,
                test_sendfile,
                test_sendfile_partial,
                test_sendfile_pre_and_post_data,
                test_sendfile_prevents_bare_write,
                test_sendfile_for_closing_transp,
                test_sendfile_fallback_not_regular_file,
                test_sock_sendfile_fd_used_by_transport,
            }
            test_sslproto {
                test_create_ssl_connection,
                test_ssl_extra_info,
                test_ssl_no_write_eof,
                test_ssl_hostname_mismatch,
                test_ssl_untrusted_certificate,
                test_ssl_server_hostname_defaults_to_host,
                test_ssl_sock_needs_server_hostname,
                test_ssl_over_given_sock,
                test_ssl_argument_checks,
                test_ssl_handshake_timeout,
                test_ssl_eof_during_handshake,
                test_ssl_garbage_during_handshake,
                test_ssl_garbage_mid_stream,
                test_ssl_close_sends_close_notify,
                test_ssl_shutdown_timeout,
                test_ssl_abort,
                test_ssl_peer_close_notify,
                test_ssl_peer_eof_without_close_notify,
                test_ssl_write_after_close_is_dropped,
                test_ssl_write_buffer_limits,
                test_ssl_pause_resume_writing,
                test_ssl_pause_resume_reading,
                test_ssl_buffered_protocol,
                test_ssl_large_transfer_both_ways,
                test_ssl_many_concurrent_handshakes,
                test_ssl_connect_accepted_socket,
                test_start_tls_both_sides,
                test_start_tls_failure_closes_the_connection,
                test_start_tls_argument_checks,
                test_ssl_alpn,
                test_ssl_cancel_during_handshake,
                test_ssl_server_survives_bad_clients,
                test_ssl_data_received_panic,
                test_ssl_close_loop_with_connections_open,
                test_ssl_refusal_alerts_the_peer,
                test_ssl_ip_mismatch,
                test_ssl_invalid_server_hostname,
                test_ssl_connection_lost_once,
                test_ssl_close_is_idempotent,
                test_ssl_writelines,
                test_ssl_many_small_writes,
                test_ssl_one_huge_write,
                test_ssl_set_protocol,
                test_ssl_eof_received_true_has_no_effect,
                test_ssl_peer_reset,
                test_ssl_server_handshake_timeout,
                test_start_tls_handshake_timeout,
                test_start_tls_transport_keeps_the_protocol,
                test_ssl_server_close_and_abort_clients,
                test_ssl_tls12,
                test_ssl_client_certificate,
                test_ssl_failed_handshakes_leak_nothing,
                test_ssl_unix_socket,
                test_ssl_unix_needs_server_hostname,
                test_ssl_connections_are_independent,
                test_ssl_error_context_names_the_transport,
                test_ssl_session_resumption,
                test_ssl_hostname_case_insensitive,
                test_ssl_server_client_hangs_up_before_handshake,
                test_ssl_server_truncated_client_hello,
                test_ssl_pause_resume_reading_idempotent,
                test_ssl_close_while_reading_paused,
                test_ssl_data_after_close_is_dropped,
                test_ssl_abort_during_shutdown,
                test_ssl_connection_made_panic,
                test_ssl_transport_describe,
                test_ssl_sequential_connections,
                test_start_tls_timeout_checks,
                test_ssl_sni_mismatch_server_side,
                test_ssl_connect_accepted_socket_argument_checks,
                test_ssl_20mb_both_ways_slow_reader,
            }
            test_pipes {
                test_read_pipe,
                test_read_pipe_extra_info,
                test_read_pipe_regular_file_refused,
                test_read_pipe_sets_nonblocking,
                test_read_pipe_socket,
                test_read_pipe_char_device,
                test_read_pipe_pause_resume,
                test_read_pipe_close,
                test_read_pipe_cannot_write,
                test_read_pipe_data_received_panic,
                test_read_pipe_fd_owned_by_transport,
                test_read_pipe_cancelled_connect,
                test_read_pipe_closed_loop,
                test_read_pty_output,
                test_read_pipe_large,
                test_write_pipe,
                test_write_pipe_regular_file_refused,
                test_write_pipe_char_device,
                test_write_pipe_reader_gone,
                test_write_pipe_reader_gone_with_buffer,
                test_write_pipe_epipe,
                test_write_pipe_flow_control,
                test_write_pipe_write_eof,
                test_write_pipe_write_eof_in_resume_writing,
                test_write_pipe_abort,
                test_write_pipe_write_after_close,
                test_write_pipe_large,
                test_write_pty,
                test_pipe_round_trip,
                test_write_pipe_closed_loop,
            }
            test_subprocess {
                test_stdin_stdout,
                test_cat_10mb,
                test_read_stdout_10mb,
                test_stderr_redirect_to_stdout,
                test_stdout_stderr_separate,
                test_stdout_constant_only_for_stderr,
                test_devnull_input,
                test_devnull_output,
                test_devnull_error,
                test_no_pipes,
                test_stdout_to_file,
                test_stdin_from_file,
                test_stdin_write_eof,
                test_exec_arguments,
                test_get_pipe_transport,
                test_exit_code,
                test_get_pid_and_returncode,
                test_terminate,
                test_kill,
                test_send_signal,
                test_terminate_ignored_then_kill,
                test_signal_after_exit,
                test_send_signal_invalid,
                test_killed_by_own_signal,
                test_shell,
                test_shell_missing_command,
                test_shell_flag_refused,
                test_universal_newlines_refused,
                test_text_refused,
                test_encoding_refused,
                test_errors_refused,
                test_bufsize_refused,
                test_cwd,
                test_cwd_missing,
                test_env,
                test_pass_fds,
                test_close_fds,
                test_pipes_not_inherited,
                test_start_new_session,
                test_process_group,
                test_spawn_missing_program,
                test_spawn_failures_leak_no_fds,
                test_spawn_empty_program,
                test_spawn_closed_loop,
                test_close_kills_running_child,
                test_close_after_exit,
                test_close_while_exit_pending,
                test_child_closes_stdout_early,
                test_grandchild_holds_stdout,
                test_write_stdin_of_exited_child,
                test_full_stdin_pipe,
                test_stdin_flow_control,
                test_callbacks_after_connection_made,
                test_wait,
                test_returncode_while_loop_busy,
                test_protocol_panic,
                test_cancel_while_spawning,
                test_drop_spawn_future,
                test_many_children,
                test_child_reaped_after_loop_close,
                test_child_exits_before_watch,
                test_process_stdin_stdout,
                test_process_communicate,
                test_process_communicate_large,
                test_process_communicate_ignore_broken_pipe,
                test_process_communicate_no_pipes,
                test_process_stdout_stderr,
                test_process_read_stdout_after_exit,
                test_process_shell,
                test_process_kill_terminate,
                test_process_send_signal,
                test_process_stdin_drain,
                test_process_stdout_limit_pauses,
                test_process_exec_missing_program,
                test_process_wait_twice,
            }
            test_streams {
                test_feed_empty_data,
                test_read_zero,
                test_read,
                test_read_line_breaks,
                test_read_eof,
                test_read_until_eof,
                test_read_exception,
                test_invalid_limit,
                test_read_limit,
                test_readline,
                test_readline_limit_with_existing_data,
                test_readline_limit,
                test_at_eof,
                test_readline_nolimit_nowait,
                test_readline_eof,
                test_readline_read_byte_count,
                test_readline_exception,
                test_readuntil_separator,
                test_readuntil_multi_chunks,
                test_readuntil_multi_chunks_1,
                test_readuntil_eof,
                test_readuntil_limit_found_sep,
                test_readuntil_multiple_separators,
                test_readuntil_multiple_separators_limit,
                test_readexactly_zero_or_less,
                test_readexactly,
                test_readexactly_limit,
                test_readexactly_eof,
                test_readexactly_exception,
                test_exception_waiter,
                test_exception_cancel,
                test_read_cancel_leaves_data,
                test_stream_reader_repr,
                test_open_connection,
                test_open_connection_error,
                test_unix_streams,
                test_start_server,
                test_start_server_handler_error,
                test_wait_closed,
                test_write_eof_half_close,
                test_writer_extra_info,
                test_drop_writer_closes,
                test_reader_pauses_transport,
                test_drain_slow_reader,
                test_drain_after_reset,
                test_stream_20mb_both_ways,
                test_stream_tls,
                test_stream_start_tls,
                test_tokio_io_traits,
                test_tokio_io_split_full_duplex,
                test_tokio_write_waits_for_flow_control,
                test_tokio_io_errors,
                test_futures_io_traits,
                test_tokio_util_lines_codec,
            }
            test_waitfor {
                test_wait_for,
                test_wait_for_blocking,
                test_wait_for_with_none_timeout,
                test_wait_for_timeout_zero_task_done,
                test_wait_for_timeout_zero_coroutine,
                test_wait_for_waits_for_task_cancellation,
                test_wait_for_reraises_exception_during_cancellation,
                test_wait_for_task_cancelled_on_timeout,
                test_wait_for_self_cancellation,
                test_wait_for_race_condition,
                test_wait_for_foreign_future,
                test_nested_wait_for,
            }
            test_timeouts {
                test_timeout_basic,
                test_timeout_at_basic,
                test_timeout_not_called,
                test_timeout_disabled,
                test_timeout_zero,
                test_timeout_in_the_past_sleep_zero,
                test_foreign_exception_passed,
                test_foreign_cancel_doesnt_timeout_if_not_expired,
                test_outer_task_is_not_cancelled,
                test_nested_timeouts,
                test_nested_timeouts_outer_first,
                test_waiter_cancelled,
                test_cancellation_caught_returns_value,
                test_foreign_wait_dropped,
                test_reschedule,
                test_timeout_state_errors,
                test_timeout_repr,
            }
            test_taskgroups {
                test_taskgroup_results,
                test_taskgroup_empty,
                test_taskgroup_error_cancels_siblings,
                test_taskgroup_cancellation_order,
                test_taskgroup_two_errors,
                test_taskgroup_body_cancelled_by_child_error,
                test_taskgroup_body_error,
                test_taskgroup_outer_cancel,
                test_taskgroup_waits_for_children,
                test_taskgroup_cancelled_child_not_error,
                test_taskgroup_create_task_refused,
                test_taskgroup_nested,
                test_taskgroup_repr,
            }
            test_staggered {
                test_empty,
                test_one_successful,
                test_first_error_second_successful,
                test_first_timeout_second_successful,
                test_none_successful,
                test_multiple_winners,
                test_cancelled,
                test_drop_race_drops_attempts,
                test_delay_staggers_each_start,
                test_failure_starts_next_at_once,
                test_earlier_failure_does_not_start_next,
                test_interleave_addrinfos,
                test_interleave_addrinfos_first_family_count,
                test_interleave_addrinfos_single_family,
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
