//! The whole conformance suite on the IOCP backend (Windows only).
//!
//! Elsewhere the backend does not exist, and the one test here checks that
//! it says so rather than pretending to run.

#[cfg(windows)]
conformance::suite!(
    backend_iocp::loop_factory,
    conformance::Capabilities {
        no_signals: Some("Windows has no POSIX signals"),
        no_unix_sockets: Some("the IOCP backend has no AF_UNIX transports on Windows"),
        no_subprocesses: Some("subprocesses on the IOCP backend come with issue 5 (Windows)"),
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
