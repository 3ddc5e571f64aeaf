//! asyncio's streams: connections as a [`StreamReader`] and a
//! [`StreamWriter`] instead of a protocol and its callbacks.
//!
//! ```no_run
//! # use loop_api::streams;
//! # async fn client() -> loop_api::Result<()> {
//! let (mut reader, writer) = streams::open_connection("127.0.0.1", 8888, Default::default()).await?;
//! writer.write(b"Hello World!\n")?;
//! writer.drain().await?;
//! let line = reader.readline().await?;
//! writer.close();
//! writer.wait_closed().await?;
//! # Ok(()) }
//! ```
//!
//! Ground rules, as asyncio's:
//! - The functions run on the running loop, and take the loop method's
//!   own options (`ssl=`, `family=`, ...) inside [`StreamOptions`], with
//!   the reader's `limit` (64 KiB by default).
//! - A reader pauses its transport above twice its limit; a writer's
//!   [`drain`](StreamWriter::drain) is the write side's flow control.
//! - `start_server` runs the handler for each connection as a task; an
//!   error it returns goes to the exception handler ("Unhandled exception
//!   in client_connected_cb") and closes the connection, and so does a
//!   cancelled handler.
//!
//! Both halves also implement tokio's and the `futures` crate's I/O
//! traits ([`Stream`] joins them), so crates written against those run on
//! the loop.

mod io;
pub(crate) mod protocol;
mod reader;
mod writer;

use std::rc::Rc;

use crate::events::options::{
    CreateConnectionOptions, CreateServerOptions, CreateUnixConnectionOptions,
    CreateUnixServerOptions, IntoHost, IntoHosts, IntoUnixPath,
};
use crate::events::{get_running_loop, AbstractServer, Loop};
use crate::exceptions::Result;
use crate::protocols::{Protocol, ProtocolFactory};
use crate::tasks::{Task, TaskOptions};

pub use io::Stream;
pub use reader::{Separator, StreamFeeder, StreamReader};
pub use writer::StreamWriter;

use protocol::{check_limit, ClientConnected, StreamProtocol};

/// asyncio's `_DEFAULT_LIMIT`: 64 KiB.
pub const DEFAULT_LIMIT: usize = 64 * 1024;

/// A stream function's options: the reader's `limit` and the loop
/// method's own options.
///
/// `Default::default()` is the 64 KiB limit and the method's defaults;
/// `CreateConnectionOptions { ssl: Some(ctx), ..Default::default() }.into()`
/// keeps the limit.
#[derive(Clone, Debug)]
pub struct StreamOptions<O> {
    /// The reader's limit (asyncio's `limit=`).
    pub limit: usize,
    /// What the loop method takes.
    pub options: O,
}

impl<O: Default> Default for StreamOptions<O> {
    fn default() -> Self {
        StreamOptions {
            limit: DEFAULT_LIMIT,
            options: O::default(),
        }
    }
}

impl<O> From<O> for StreamOptions<O> {
    fn from(options: O) -> Self {
        StreamOptions {
            limit: DEFAULT_LIMIT,
            options,
        }
    }
}

/// A factory for the client side: one protocol, made once.
fn client_protocol(lp: &Loop, limit: usize) -> (Rc<StreamProtocol>, ProtocolFactory) {
    let p = StreamProtocol::new(lp.clone(), limit, None);
    let made = p.clone();
    (p, Rc::new(move || made.clone() as Rc<dyn Protocol>))
}

/// Each connection's protocol, which starts `handler` once connected.
fn server_factory<F, Fut>(lp: &Loop, limit: usize, handler: F) -> ProtocolFactory
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    let cb: ClientConnected = Rc::new(move |lp: &Loop, r, w| {
        Task::spawn(lp.clone(), handler(r, w), TaskOptions::default())
    });
    let lp = lp.clone();
    Rc::new(move || StreamProtocol::new(lp.clone(), limit, Some(cb.clone())) as Rc<dyn Protocol>)
}

/// `asyncio.open_connection(host, port, ...)`: connects (with
/// `loop.create_connection`) and returns the stream's reader and writer.
pub fn open_connection(
    host: impl IntoHost,
    port: impl Into<Option<u16>>,
    options: StreamOptions<CreateConnectionOptions>,
) -> impl std::future::Future<Output = Result<(StreamReader, StreamWriter)>> + 'static {
    let host = host.into_host();
    let port = port.into();
    async move {
        let lp = get_running_loop()?;
        check_limit(options.limit)?;
        let (p, factory) = client_protocol(&lp, options.limit);
        lp.create_connection_dyn(factory, host, port, options.options)
            .await?;
        Ok((StreamReader::new(p.clone()), StreamWriter::new(p)))
    }
}

/// `asyncio.start_server(client_connected_cb, host, port, ...)`: serves
/// with `loop.create_server`, running `handler(reader, writer)` as a task
/// for each connection.
pub fn start_server<F, Fut>(
    handler: F,
    host: impl IntoHosts,
    port: impl Into<Option<u16>>,
    options: StreamOptions<CreateServerOptions>,
) -> impl std::future::Future<Output = Result<Rc<dyn AbstractServer>>> + 'static
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    let hosts = host.into_hosts();
    let port = port.into();
    async move {
        let lp = get_running_loop()?;
        check_limit(options.limit)?;
        let factory = server_factory(&lp, options.limit, handler);
        lp.create_server_dyn(factory, hosts, port, options.options)
            .await
    }
}

/// `asyncio.open_unix_connection(path, ...)`.
pub fn open_unix_connection(
    path: impl IntoUnixPath,
    options: StreamOptions<CreateUnixConnectionOptions>,
) -> impl std::future::Future<Output = Result<(StreamReader, StreamWriter)>> + 'static {
    let path = path.into_unix_path();
    async move {
        let lp = get_running_loop()?;
        check_limit(options.limit)?;
        let (p, factory) = client_protocol(&lp, options.limit);
        lp.create_unix_connection_dyn(factory, path, options.options)
            .await?;
        Ok((StreamReader::new(p.clone()), StreamWriter::new(p)))
    }
}

/// `asyncio.start_unix_server(client_connected_cb, path, ...)`.
pub fn start_unix_server<F, Fut>(
    handler: F,
    path: impl IntoUnixPath,
    options: StreamOptions<CreateUnixServerOptions>,
) -> impl std::future::Future<Output = Result<Rc<dyn AbstractServer>>> + 'static
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    let path = path.into_unix_path();
    async move {
        let lp = get_running_loop()?;
        check_limit(options.limit)?;
        let factory = server_factory(&lp, options.limit, handler);
        lp.create_unix_server_dyn(factory, path, options.options)
            .await
    }
}
