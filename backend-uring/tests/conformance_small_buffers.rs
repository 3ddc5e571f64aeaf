//! The whole conformance suite twice more, on a provided-buffer ring of
//! four 4 KiB buffers: filled incrementally (`IOU_PBUF_RING_INC`, where the
//! kernel has it), and filled whole. Every message larger than a buffer
//! then arrives in several completions, and the ring runs dry often
//! (`ENOBUFS` ends a multishot receive, which the transport starts again),
//! so both ways of handing buffers back are driven hard.
#![cfg(target_os = "linux")]

mod expected;

fn config(incremental: bool) -> backend_uring::UringConfig {
    backend_uring::UringConfig {
        ring_buffers: 4,
        ring_buffer_size: 4096,
        incremental_buffers: incremental,
        ..Default::default()
    }
}

fn small_ring(incremental: bool) -> loop_api::Result<loop_api::Loop> {
    Ok(backend_uring::new_event_loop_with(&config(incremental))?)
}

mod incremental {
    fn factory() -> loop_api::Result<loop_api::Loop> {
        super::small_ring(true)
    }

    conformance::suite!(factory, crate::expected::capabilities());
}

mod whole {
    fn factory() -> loop_api::Result<loop_api::Loop> {
        super::small_ring(false)
    }

    conformance::suite!(factory, crate::expected::capabilities());
}

/// The kernel here fills buffers incrementally when asked, and not when
/// not: the two suites above do run the two ways.
#[test]
fn both_ways_are_in_use() {
    let features = |inc| {
        let lp = backend_uring::new_event_loop_with(&config(inc)).expect("loop");
        lp.with_driver(|d| d.features())
    };
    let (major, minor) = kernel_version();
    assert_eq!(
        features(true).incremental_buffers,
        (major, minor) >= (6, 12),
        "incremental buffers on Linux {major}.{minor}"
    );
    assert!(!features(false).incremental_buffers);
    assert!(features(false).multishot_recv);
}

fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}
