//! `RUST_ASYNCIO_BACKEND` as `new_event_loop`, the default policy and
//! `run` read it. One test in its own binary: it changes the process's
//! environment, which nothing else may read meanwhile.

use loop_api::Error;

#[test]
fn the_backend_env_var_picks_the_backend_of_policy_loops() {
    let env = policy::BACKEND_ENV;
    assert_eq!(env, "RUST_ASYNCIO_BACKEND");

    std::env::remove_var(env);
    let lp = policy::new_event_loop().expect("default loop");
    assert_eq!(lp.backend_name(), policy::default_backend());
    lp.close().unwrap();

    for name in policy::available_backends() {
        std::env::set_var(env, name);
        let lp = policy::new_event_loop().expect("named loop");
        assert_eq!(lp.backend_name(), name);
        lp.close().unwrap();
        let seen = policy::run(
            async { Ok(policy::get_running_loop()?.backend_name()) },
            None,
            None,
        );
        assert_eq!(seen.unwrap(), name);
    }

    std::env::set_var(env, "auto");
    let lp = policy::new_event_loop().expect("auto loop");
    assert_eq!(lp.backend_name(), policy::auto_backend());
    lp.close().unwrap();

    std::env::set_var(env, "no-such-backend");
    let err = policy::new_event_loop().err().expect("unknown backend");
    assert!(matches!(err, Error::Value(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("RUST_ASYNCIO_BACKEND=no-such-backend"),
        "{msg}"
    );
    assert!(msg.contains("this machine has: select"), "{msg}");
    // run() without a loop_factory fails the same way, before running anything.
    let err = policy::run(async { Ok(()) }, None, None).expect_err("run");
    assert_eq!(err.to_string(), msg);
    // A loop_factory bypasses the variable.
    let ok = policy::run(
        async { Ok(1) },
        None,
        Some(policy::backend("select").unwrap()),
    );
    assert_eq!(ok.unwrap(), 1);

    for name in policy::KNOWN_BACKENDS {
        if policy::available_backends().contains(name) {
            continue;
        }
        std::env::set_var(env, name);
        let err = policy::new_event_loop().err().expect("unavailable backend");
        assert!(matches!(err, Error::NotSupported { .. }), "{err}");
        assert!(
            err.to_string().contains("this machine has: select"),
            "{err}"
        );
    }
    std::env::remove_var(env);
}
