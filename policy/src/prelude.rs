//! What a program needs, in one `use policy::prelude::*;`: running a loop
//! ([`run`], [`Runner`], backends by name), asyncio's streams
//! ([`open_connection`], [`start_server`], [`StreamReader`],
//! [`StreamWriter`]) and subprocesses ([`create_subprocess_exec`],
//! [`Process`]), the task utilities ([`wait_for`], [`timeout`], [`gather`],
//! [`shield`], [`TaskGroup`]), the loop API with asyncio's names
//! ([`EventLoopExt`]: `call_soon(|| ..)`, `create_connection`, ...),
//! protocols and transports, the option structs, futures, tasks, errors,
//! and `Rc`/`Cell`/`RefCell`, which protocols are written with.
//!
//! Locks, events, semaphores, conditions and queues are not the loop's:
//! use `tokio::sync`, whose primitives are runtime-agnostic and work in
//! this loop's tasks (they only need a waker), as asyncio's `Lock`,
//! `Event`, `Semaphore`, `Condition` and `Queue` do.

pub use std::cell::{Cell, RefCell};
pub use std::rc::Rc;
pub use std::time::Duration;

pub use loop_api::concurrent::{ConcurrentFuture, FutureCompleter};
pub use loop_api::events::options::{
    abstract_unix_path, AddrInfo, ConnectAcceptedSocketOptions, CreateConnectionOptions,
    CreateDatagramEndpointOptions, CreateServerOptions, CreateUnixConnectionOptions,
    CreateUnixServerOptions, DatagramAddr, Family, GetAddrInfoOptions, Hosts, StartTlsOptions,
    Stdio, SubprocessOptions,
};
pub use loop_api::events::{AbstractServer, ExceptionContext, RemoteLoop};
pub use loop_api::protocols::{
    BaseProtocol, BufferedProtocol, DatagramProtocol, Protocol, SubprocessProtocol, TransportCell,
};
pub use loop_api::ssl::SslContext;
pub use loop_api::streams::{
    open_connection, open_unix_connection, start_server, start_unix_server, Stream, StreamOptions,
    StreamReader, StreamWriter,
};
pub use loop_api::subprocess::{create_subprocess_exec, create_subprocess_shell, Process};
pub use loop_api::taskgroups::TaskGroup;
pub use loop_api::tasks::{gather, shield};
pub use loop_api::timeouts::{timeout, timeout_at, wait_for, Timeout};
pub use loop_api::transports::{
    BaseTransport, DatagramTransport, ExtraInfo, ReadTransport, Transport, WriteTransport,
};
pub use loop_api::{
    get_running_loop, sleep, AbstractEventLoop, Error, EventLoopExt, Future, Handle, Loop, Result,
    Task, TimerHandle,
};
pub use socket2::SockAddr;

pub use crate::{backend, run, Runner};
