//! The whole conformance suite again, on a deliberately tiny ring (4
//! submission entries, 8 completion entries) without provided buffers or
//! multishot accepts: every case then runs through a full submission queue
//! (submitted early), completion-queue overflow (held back by the kernel
//! and flushed by the driver), and the one-request-at-a-time receive and
//! accept paths that older kernels get.
#![cfg(target_os = "linux")]

mod expected;

fn tiny_ring() -> loop_api::Result<loop_api::Loop> {
    let config = backend_uring::UringConfig {
        entries: 4,
        provided_buffers: false,
        multishot_accept: false,
        ..Default::default()
    };
    Ok(backend_uring::new_event_loop_with(&config)?)
}

conformance::suite!(tiny_ring, expected::capabilities());
