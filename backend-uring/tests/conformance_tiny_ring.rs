//! The whole conformance suite again, on a deliberately tiny ring (4
//! submission entries, 8 completion entries) without provided buffers or
//! multishot accepts: every case then runs through a full submission queue
//! (submitted early), completion-queue overflow (held back by the kernel
//! and flushed by the driver), and the one-request-at-a-time receive and
//! accept paths that older kernels get.
#![cfg(target_os = "linux")]

fn tiny_ring() -> loop_api::Result<loop_api::Loop> {
    let config = backend_uring::UringConfig {
        entries: 4,
        provided_buffers: false,
        multishot_accept: false,
        ..Default::default()
    };
    Ok(backend_uring::new_event_loop_with(&config)?)
}

conformance::suite!(
    tiny_ring,
    conformance::Capabilities {
        no_readiness_sock_ops: Some(
            "io_uring's sock_recv waits with its own poll request, not with \
             add_reader: there is no reader watch to find"
        ),
        ..Default::default()
    }
);
