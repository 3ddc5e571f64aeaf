//! The whole conformance suite on the select backend.
conformance::suite!(backend_select::loop_factory);
