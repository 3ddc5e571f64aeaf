//! The policy crate's own wiring: the backends this build registers, by
//! name, and the default policy's `new_event_loop`. (The conformance suite
//! checks what a backend does; these check what this crate offers.)

use loop_api::{Error, Result};

/// `new_event_loop()`: a new, open, idle loop each call, of the default
/// backend (`RUST_ASYNCIO_BACKEND` is not set by this binary), not made
/// current.
#[test]
fn new_event_loop_makes_a_fresh_loop_of_the_default_backend() -> Result<()> {
    let a = policy::new_event_loop()?;
    let b = policy::new_event_loop()?;
    assert_ne!(a.loop_id(), b.loop_id());
    for lp in [&a, &b] {
        assert!(!lp.is_closed() && !lp.is_running());
    }
    let expected = policy::backend_from_env()?()?;
    assert_eq!(a.backend_name(), expected.backend_name());
    expected.close()?;
    assert!(policy::get_event_loop().is_err(), "not made current");
    a.close()?;
    b.close()
}

/// Every registered backend is available under its name and makes loops
/// of itself; `"auto"` works; an unknown name is a `ValueError` and a
/// known one this build lacks is `NotSupported`, both listing what the
/// machine has.
#[test]
fn backends_by_name() -> Result<()> {
    let available = policy::available_backends();
    assert!(available.contains(&"select"), "{available:?}");
    #[cfg(target_os = "linux")]
    assert!(available.contains(&"uring"), "{available:?}");
    for name in available.iter().copied().chain(["auto"]) {
        let lp = match policy::backend(name)?() {
            Ok(lp) => lp,
            // A registered backend this machine cannot run (io_uring
            // blocked): its factory says so.
            Err(Error::NotSupported { .. }) if name != "auto" => continue,
            Err(e) => return Err(e),
        };
        let expected = if name == "auto" {
            policy::auto_backend()
        } else {
            name
        };
        assert_eq!(lp.backend_name(), expected);
        lp.close()?;
    }
    match policy::backend("no-such-backend") {
        Err(Error::Value(m)) => {
            for name in &available {
                assert!(m.contains(name), "{m}");
            }
        }
        Err(e) => panic!("expected ValueError, got {e}"),
        Ok(_) => panic!("expected ValueError, got a factory"),
    }
    for name in policy::KNOWN_BACKENDS {
        if available.contains(name) {
            continue;
        }
        match policy::backend(name) {
            Err(Error::NotSupported { reason, .. }) => {
                assert!(reason.contains("this machine has"), "{reason}")
            }
            Err(e) => panic!("{name}: expected NotSupported, got {e}"),
            Ok(_) => panic!("{name} is not in available_backends() yet has a factory"),
        }
    }
    Ok(())
}
