//! The whole conformance suite on the select backend: epoll on Linux,
//! `polling` (IOCP and AFD) on Windows, where the Unix-only checks and what
//! Wine lacks are declared too.

#[cfg(not(windows))]
fn skips() -> Vec<(&'static str, &'static str)> {
    [conformance::NOT_BUILT_YET, conformance::MACHINE_DEPENDENT].concat()
}

#[cfg(windows)]
fn skips() -> Vec<(&'static str, &'static str)> {
    [
        conformance::NOT_BUILT_YET,
        conformance::MACHINE_DEPENDENT,
        conformance::UNIX_ONLY_CHECKS,
        conformance::WINE,
        &[
            (
                "test_sendfile::test_sock_sendfile_cancel",
                "select has no zero-copy sendfile on Windows (TransmitFile is iocp's)",
            ),
            (
                "test_sendfile::test_sock_sendfile_peer_closed_in_the_middle",
                "select has no zero-copy sendfile on Windows (TransmitFile is iocp's)",
            ),
            (
                "test_sendfile::test_sendfile_prevents_bare_write",
                "select has no zero-copy sendfile on Windows (TransmitFile is iocp's)",
            ),
        ],
    ]
    .concat()
}

conformance::suite!(
    backend_select::loop_factory,
    conformance::Capabilities {
        #[cfg(windows)]
        no_signals: Some("Windows has no POSIX signals"),
        #[cfg(windows)]
        no_unix_sockets: Some(
            "AF_UNIX: Wine 8 cannot create AF_UNIX sockets (WSAEAFNOSUPPORT), so the \
             Unix-socket methods, which loop-api builds on Unix only, are untested and \
             not offered on Windows"
        ),
        #[cfg(windows)]
        no_pipes: Some(
            "Windows pipes have no readiness to poll: asyncio's SelectorEventLoop has no \
             pipe transports on Windows either (use the iocp backend)"
        ),
        #[cfg(windows)]
        no_subprocesses: Some(
            "subprocess pipes need pipe transports, which a selector loop cannot have on \
             Windows (asyncio's SelectorEventLoop has no subprocesses there either)"
        ),
        skips: skips(),
        ..Default::default()
    }
);
