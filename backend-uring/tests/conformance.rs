//! The whole conformance suite on the io_uring backend.
#![cfg(target_os = "linux")]
conformance::suite!(
    backend_uring::loop_factory,
    conformance::Capabilities {
        no_readiness_sock_ops: Some(
            "io_uring's sock_recv waits with its own poll request, not with \
             add_reader: there is no reader watch to find"
        ),
        ..Default::default()
    }
);
