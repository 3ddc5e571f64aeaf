//! What a program needs, in one `use policy::prelude::*;`: running a loop
//! ([`run`], [`Runner`], backends by name), the loop API with asyncio's
//! names ([`EventLoopExt`]: `call_soon(|| ..)`, `create_connection`, ...),
//! protocols and transports, the option structs, futures, tasks, errors,
//! and `Rc`/`Cell`/`RefCell`, which protocols are written with.

pub use std::cell::{Cell, RefCell};
pub use std::rc::Rc;
pub use std::time::Duration;

pub use loop_api::concurrent::{ConcurrentFuture, FutureCompleter};
pub use loop_api::events::options::{
    abstract_unix_path, AddrInfo, ConnectAcceptedSocketOptions, CreateConnectionOptions,
    CreateDatagramEndpointOptions, CreateServerOptions, CreateUnixConnectionOptions,
    CreateUnixServerOptions, DatagramAddr, Family, GetAddrInfoOptions, Hosts,
};
pub use loop_api::events::{AbstractServer, ExceptionContext, RemoteLoop};
pub use loop_api::protocols::{
    BaseProtocol, BufferedProtocol, DatagramProtocol, Protocol, SubprocessProtocol, TransportCell,
};
pub use loop_api::transports::{
    BaseTransport, DatagramTransport, ExtraInfo, ReadTransport, Transport, WriteTransport,
};
pub use loop_api::{
    get_running_loop, sleep, AbstractEventLoop, Error, EventLoopExt, Future, Handle, Loop, Result,
    Task, TimerHandle,
};
pub use socket2::SockAddr;

pub use crate::{backend, run, Runner};
