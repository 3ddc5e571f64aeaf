//! The whole conformance suite on the IOCP backend (Windows only).
//!
//! Elsewhere the backend does not exist, and the one test here checks that
//! it says so rather than pretending to run.

#[cfg(windows)]
conformance::suite!(
    backend_iocp::loop_factory,
    conformance::Capabilities {
        no_signals: Some("Windows has no POSIX signals"),
        no_unix_sockets: Some(
            "AF_UNIX: Wine 8 cannot create AF_UNIX sockets (WSAEAFNOSUPPORT), so the \
             Unix-socket methods, which loop-api builds on Unix only, are untested and \
             not offered on Windows"
        ),
        no_readiness_sock_ops: Some(
            "on Windows the IOCP backend's sock_* methods are overlapped operations (a zero-byte \
             WSARecv, WSASend, ConnectEx, AcceptEx), not add_reader/add_writer watches: \
             there is no reader watch to find"
        ),
        no_readiness_sendfile: Some(
            "sock_sendfile on Windows is one overlapped TransmitFile per GiB: the bytes a \
             cancelled or failed call sent are not counted, so the file's position counts \
             completed calls only"
        ),
        slow_process_start: backend_iocp::running_under_wine().then_some(
            "Wine starts about six processes a second: 500 children took 89 s with nothing \
             else running, beyond the case time limit beside the rest of the suite"
        ),
        skips: [
            conformance::NOT_BUILT_YET,
            conformance::MACHINE_DEPENDENT,
            conformance::UNIX_ONLY_CHECKS,
            conformance::WINE,
        ]
        .concat(),
        ..Default::default()
    }
);

#[cfg(not(windows))]
#[test]
fn iocp_backend_is_windows_only() {
    match backend_iocp::loop_factory() {
        Err(loop_api::Error::NotSupported { feature, reason }) => {
            assert_eq!(feature, "iocp backend");
            assert!(reason.contains("Windows"), "{reason}");
        }
        Err(e) => panic!("expected NotSupported, got {e}"),
        Ok(_) => panic!("an IOCP loop off Windows"),
    }
}
