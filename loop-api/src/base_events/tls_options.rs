//! asyncio's checks of the TLS arguments of `create_connection`,
//! `create_server` and `connect_accepted_socket`, and the one refusal of
//! this build: TLS itself is not built yet.

use std::time::Duration;

use crate::exceptions::{Error, Result};

/// asyncio's argument checks for TLS options, and our one refusal: TLS
/// itself is not built.
pub(crate) fn check_no_ssl(
    ssl: bool,
    server_hostname: bool,
    handshake: Option<Duration>,
    shutdown: Option<Duration>,
) -> Result<()> {
    if ssl {
        return Err(Error::NotImplemented("TLS (ssl=...)"));
    }
    if server_hostname {
        return Err(Error::value("server_hostname is only meaningful with ssl"));
    }
    if handshake.is_some() {
        return Err(Error::value(
            "ssl_handshake_timeout is only meaningful with ssl",
        ));
    }
    if shutdown.is_some() {
        return Err(Error::value(
            "ssl_shutdown_timeout is only meaningful with ssl",
        ));
    }
    Ok(())
}
