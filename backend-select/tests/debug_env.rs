//! `RUST_ASYNCIO_DEBUG` turns debug mode on for new loops, as
//! `PYTHONASYNCIODEBUG` does. One test in its own binary: the environment is
//! process-wide.

use loop_api::base_events::DEBUG_ENV;

#[test]
fn debug_env_turns_debug_mode_on_for_new_loops() {
    std::env::remove_var(DEBUG_ENV);
    let plain = backend_select::loop_factory().unwrap();
    assert!(!plain.get_debug());

    std::env::set_var(DEBUG_ENV, "1");
    let debug = backend_select::loop_factory().unwrap();
    assert!(debug.get_debug());
    // Only new loops read it; and set_debug still overrides it.
    assert!(!plain.get_debug());
    debug.set_debug(false);
    assert!(!debug.get_debug());

    std::env::set_var(DEBUG_ENV, "");
    let empty = backend_select::loop_factory().unwrap();
    assert!(!empty.get_debug(), "an empty value leaves debug mode off");

    std::env::remove_var(DEBUG_ENV);
    for lp in [plain, debug, empty] {
        lp.close().unwrap();
    }
}
