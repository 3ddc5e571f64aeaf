//! What the io_uring backend declares it skips in the conformance suite,
//! shared by every ring geometry the suite runs on.

/// The features uring lacks and the cases it expects to skip.
pub fn capabilities() -> conformance::Capabilities {
    conformance::Capabilities {
        no_readiness_sock_ops: Some(
            "io_uring's sock_recv waits with its own poll request, not with \
             add_reader: there is no reader watch to find",
        ),
        skips: [conformance::NOT_BUILT_YET, conformance::MACHINE_DEPENDENT].concat(),
        ..Default::default()
    }
}
