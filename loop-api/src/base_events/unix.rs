//! `loop.create_unix_connection` and `loop.create_unix_server` (asyncio's
//! `unix_events`), over the same plumbing as TCP.
//!
//! # As in asyncio
//! - A path starting with a NUL byte is Linux's abstract namespace: no file
//!   is made, none is removed.
//! - Before binding, a stale socket file at the path is removed; any other
//!   kind of file is left alone and the bind fails. `EADDRINUSE` reads
//!   "Address '...' is already in use".
//! - With `cleanup_socket` (the default), closing the server removes its
//!   socket file, if the file there is still the one it made.
//! - On Windows these return `NotSupported` for now.

use std::path::PathBuf;
use std::rc::Rc;

use super::BaseLoop;
use crate::events::options::{CreateUnixConnectionOptions, CreateUnixServerOptions};
use crate::events::{AbstractServer, LocalBoxFuture, StreamPair};
#[cfg(not(unix))]
use crate::exceptions::Error;
use crate::exceptions::Result;
use crate::protocols::ProtocolFactory;

#[cfg(unix)]
pub(crate) use imp::remove_socket_file;

/// `loop.create_unix_connection`.
pub fn create_unix_connection(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    path: Option<PathBuf>,
    options: CreateUnixConnectionOptions,
) -> LocalBoxFuture<'static, Result<StreamPair>> {
    #[cfg(unix)]
    {
        imp::create_unix_connection(lp, protocol_factory, path, options)
    }
    #[cfg(not(unix))]
    {
        let _ = (lp, protocol_factory, path, options);
        Box::pin(async { Err(not_here("create_unix_connection")) })
    }
}

/// `loop.create_unix_server`.
pub fn create_unix_server(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    path: Option<PathBuf>,
    options: CreateUnixServerOptions,
) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
    #[cfg(unix)]
    {
        imp::create_unix_server(lp, protocol_factory, path, options)
    }
    #[cfg(not(unix))]
    {
        let _ = (lp, protocol_factory, path, options);
        Box::pin(async { Err(not_here("create_unix_server")) })
    }
}

#[cfg(not(unix))]
fn not_here(feature: &'static str) -> Error {
    Error::NotSupported {
        feature,
        reason: "AF_UNIX sockets are not built for Windows yet".into(),
    }
}

#[cfg(unix)]
mod imp {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use socket2::{Domain, SockAddr, Socket, Type};

    use super::super::connect::create_connection_transport;
    use super::super::server::{Server, UnixCleanup};
    use super::super::tls_options;
    use super::super::BaseLoop;
    use crate::events::options::{CreateUnixConnectionOptions, CreateUnixServerOptions};
    use crate::events::{AbstractServer, LocalBoxFuture, StreamPair};
    use crate::exceptions::{Error, Result};
    use crate::log::{self, Level};
    use crate::protocols::ProtocolFactory;

    fn is_abstract(path: &Path) -> bool {
        path.as_os_str().as_bytes().first() == Some(&0)
    }

    fn check_unix_stream(sock: &Socket) -> Result<()> {
        let unix = sock.domain()? == Domain::UNIX;
        if !unix || sock.r#type()? != Type::STREAM {
            return Err(Error::value(format!(
                "A UNIX Domain Stream Socket was expected, got {sock:?}"
            )));
        }
        Ok(())
    }

    pub(super) fn create_unix_connection(
        lp: Rc<dyn BaseLoop>,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixConnectionOptions,
    ) -> LocalBoxFuture<'static, Result<StreamPair>> {
        Box::pin(async move {
            let tls = tls_options::client(
                options.ssl.clone(),
                options.server_hostname.clone(),
                None,
                options.ssl_handshake_timeout,
                options.ssl_shutdown_timeout,
            )?;
            let sock = match (path, options.sock) {
                (Some(_), Some(_)) => {
                    return Err(Error::value(
                        "path and sock can not be specified at the same time",
                    ))
                }
                (Some(path), None) => {
                    let sock = Rc::new(Socket::new(Domain::UNIX, Type::STREAM, None)?);
                    sock.set_nonblocking(true)?;
                    lp.sock_connect(sock.clone(), SockAddr::unix(&path)?)
                        .await?;
                    sock
                }
                (None, Some(sock)) => {
                    check_unix_stream(&sock)?;
                    sock
                }
                (None, None) => return Err(Error::value("no path and sock were specified")),
            };
            create_connection_transport(&lp, sock, protocol_factory, tls.as_ref()).await
        })
    }

    pub(super) fn create_unix_server(
        lp: Rc<dyn BaseLoop>,
        protocol_factory: ProtocolFactory,
        path: Option<PathBuf>,
        options: CreateUnixServerOptions,
    ) -> LocalBoxFuture<'static, Result<Rc<dyn AbstractServer>>> {
        Box::pin(async move {
            let tls = tls_options::server(
                options.ssl.clone(),
                options.ssl_handshake_timeout,
                options.ssl_shutdown_timeout,
            )?;
            if lp.is_closed() {
                return Err(Error::loop_closed());
            }
            let sock = match (path, options.sock) {
                (Some(_), Some(_)) => {
                    return Err(Error::value(
                        "path and sock can not be specified at the same time",
                    ))
                }
                (Some(path), None) => Rc::new(bind_path(&path)?),
                (None, Some(sock)) => {
                    check_unix_stream(&sock)?;
                    sock
                }
                (None, None) => {
                    return Err(Error::value(
                        "path was not specified, and no sock specified",
                    ))
                }
            };
            let cleanup = if options.cleanup_socket {
                socket_file(&sock)
            } else {
                None
            };
            sock.set_nonblocking(true)?;
            let server = Server::new(lp.clone(), vec![sock], protocol_factory, options.backlog);
            server.set_tls(tls);
            if let Some(c) = cleanup {
                server.set_unix_cleanup(c);
            }
            if options.start_serving {
                server.start_serving().await?;
            }
            Ok(server as Rc<dyn AbstractServer>)
        })
    }

    /// A new socket bound at `path`, a stale socket file there removed first.
    fn bind_path(path: &Path) -> Result<Socket> {
        let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        if !is_abstract(path) {
            match std::fs::metadata(path) {
                Ok(m) if m.file_type().is_socket() => {
                    if let Err(e) = std::fs::remove_file(path) {
                        log::log(
                            Level::Error,
                            &format!("Unable to check or remove stale UNIX socket {path:?}: {e}"),
                        );
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::log(
                    Level::Error,
                    &format!("Unable to check or remove stale UNIX socket {path:?}: {e}"),
                ),
            }
        }
        match sock.bind(&SockAddr::unix(path)?) {
            Ok(()) => Ok(sock),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::os(
                &e,
                format!("Address '{}' is already in use", path.display()),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The socket file `sock` is bound to, and its identity (none for an
    /// abstract or unnamed socket).
    fn socket_file(sock: &Socket) -> Option<UnixCleanup> {
        let addr = sock.local_addr().ok()?;
        let path = addr.as_pathname()?.to_path_buf();
        let m = std::fs::metadata(&path).ok()?;
        Some(UnixCleanup {
            path,
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Removes the server's socket file if it is still the one it made.
    pub(crate) fn remove_socket_file(c: &UnixCleanup) {
        match std::fs::metadata(&c.path) {
            Ok(m) if m.dev() == c.dev && m.ino() == c.ino => {
                if let Err(e) = std::fs::remove_file(&c.path) {
                    log::log(
                        Level::Error,
                        &format!("Unable to clean up listening UNIX socket {:?}: {e}", c.path),
                    );
                }
            }
            _ => {}
        }
    }
}
