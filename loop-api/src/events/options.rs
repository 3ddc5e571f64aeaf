//! asyncio's keyword arguments, as structs whose `Default` is asyncio's defaults.
//!
//! Build one with struct-update syntax:
//! `CreateServerOptions { backlog: 10, ..Default::default() }`.

use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use socket2::Socket;

use super::RawFd;

/// The default listen backlog of `create_server` (asyncio: 100).
pub const DEFAULT_BACKLOG: i32 = 100;
/// The default TLS handshake timeout (asyncio: 60 s).
pub const SSL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default TLS shutdown timeout (asyncio: 30 s).
pub const SSL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default write-buffer high-water mark of transports (asyncio: 64 KiB).
pub const WRITE_BUFFER_HIGH_WATER: usize = 64 * 1024;
/// The largest single read a transport does (asyncio: 256 KiB).
pub const MAX_READ_SIZE: usize = 256 * 1024;

pub use crate::ssl::SslContext;

/// Address-family choice (`socket.AF_*`); `Unspec` lets `getaddrinfo` pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// `AF_UNSPEC` (0).
    #[default]
    Unspec,
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// `AF_UNIX`.
    Unix,
}

/// `create_connection`'s keyword arguments.
#[derive(Clone, Default)]
pub struct CreateConnectionOptions {
    /// TLS; `None` for plain TCP.
    pub ssl: Option<SslContext>,
    /// Restricts name resolution to one family.
    pub family: Family,
    /// Passed to `getaddrinfo`.
    pub proto: i32,
    /// Passed to `getaddrinfo`.
    pub flags: i32,
    /// A connected socket to wrap instead of connecting (takes ownership).
    pub sock: Option<Rc<Socket>>,
    /// Binds the socket locally before connecting.
    pub local_addr: Option<SocketAddr>,
    /// The name to check the server's certificate against.
    pub server_hostname: Option<String>,
    /// `None`: 60 s.
    pub ssl_handshake_timeout: Option<Duration>,
    /// `None`: 30 s.
    pub ssl_shutdown_timeout: Option<Duration>,
    /// RFC 8305 connection-attempt delay; `None` disables Happy Eyeballs.
    pub happy_eyeballs_delay: Option<Duration>,
    /// Interleave address families by this count; `None` means 1 when
    /// Happy Eyeballs is on.
    pub interleave: Option<usize>,
    /// Report every attempt's error instead of one.
    pub all_errors: bool,
}

/// The `host` argument of `create_server`.
#[derive(Clone, Debug, Default)]
pub enum Hosts {
    /// `None` or `""`: every interface.
    #[default]
    All,
    /// One name or address.
    One(String),
    /// Several names or addresses.
    Many(Vec<String>),
}

/// `create_server`'s keyword arguments.
#[derive(Clone)]
pub struct CreateServerOptions {
    /// `AF_UNSPEC` binds every family the host resolves to.
    pub family: Family,
    /// `AI_PASSIVE` is always added.
    pub flags: i32,
    /// A listening socket to serve instead of binding.
    pub sock: Option<Rc<Socket>>,
    /// Listen backlog; 100.
    pub backlog: i32,
    /// TLS for accepted connections.
    pub ssl: Option<SslContext>,
    /// `SO_REUSEADDR`; `None` means on, on Unix.
    pub reuse_address: Option<bool>,
    /// `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// `SO_KEEPALIVE` on accepted sockets.
    pub keep_alive: bool,
    /// `None`: 60 s.
    pub ssl_handshake_timeout: Option<Duration>,
    /// `None`: 30 s.
    pub ssl_shutdown_timeout: Option<Duration>,
    /// Start accepting at once (asyncio's default), or wait for
    /// `start_serving` / `serve_forever`.
    pub start_serving: bool,
}

impl Default for CreateServerOptions {
    fn default() -> Self {
        CreateServerOptions {
            family: Family::Unspec,
            flags: 0,
            sock: None,
            backlog: DEFAULT_BACKLOG,
            ssl: None,
            reuse_address: None,
            reuse_port: false,
            keep_alive: false,
            ssl_handshake_timeout: None,
            ssl_shutdown_timeout: None,
            start_serving: true,
        }
    }
}

/// `create_unix_server`'s keyword arguments.
#[derive(Clone)]
pub struct CreateUnixServerOptions {
    /// A listening socket to serve instead of binding `path`.
    pub sock: Option<Rc<Socket>>,
    /// Listen backlog; 100.
    pub backlog: i32,
    /// TLS for accepted connections.
    pub ssl: Option<SslContext>,
    /// `None`: 60 s.
    pub ssl_handshake_timeout: Option<Duration>,
    /// `None`: 30 s.
    pub ssl_shutdown_timeout: Option<Duration>,
    /// Start accepting at once.
    pub start_serving: bool,
    /// Remove the socket file when the server closes (3.13).
    pub cleanup_socket: bool,
}

impl Default for CreateUnixServerOptions {
    fn default() -> Self {
        CreateUnixServerOptions {
            sock: None,
            backlog: DEFAULT_BACKLOG,
            ssl: None,
            ssl_handshake_timeout: None,
            ssl_shutdown_timeout: None,
            start_serving: true,
            cleanup_socket: true,
        }
    }
}

/// `create_unix_connection`'s keyword arguments.
#[derive(Clone, Default)]
pub struct CreateUnixConnectionOptions {
    /// TLS; `None` for plain.
    pub ssl: Option<SslContext>,
    /// A connected socket to wrap instead of connecting.
    pub sock: Option<Rc<Socket>>,
    /// The name to check the server's certificate against.
    pub server_hostname: Option<String>,
    /// `None`: 60 s.
    pub ssl_handshake_timeout: Option<Duration>,
    /// `None`: 30 s.
    pub ssl_shutdown_timeout: Option<Duration>,
}

/// A datagram endpoint's local or remote address.
#[derive(Clone, Debug)]
pub enum DatagramAddr {
    /// An IP host and port (resolved with `getaddrinfo`).
    Inet(String, u16),
    /// An AF_UNIX path.
    Unix(PathBuf),
}

/// `create_datagram_endpoint`'s keyword arguments.
#[derive(Clone, Default)]
pub struct CreateDatagramEndpointOptions {
    /// Binds here.
    pub local_addr: Option<DatagramAddr>,
    /// Connects here; `sendto` then needs no address.
    pub remote_addr: Option<DatagramAddr>,
    /// Address family.
    pub family: Family,
    /// Passed to `getaddrinfo`.
    pub proto: i32,
    /// Passed to `getaddrinfo`.
    pub flags: i32,
    /// Always refused when `Some(true)`: asyncio removed it for security.
    pub reuse_address: Option<bool>,
    /// `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// `SO_BROADCAST`.
    pub allow_broadcast: bool,
    /// An existing datagram socket to use.
    pub sock: Option<Rc<Socket>>,
}

/// `start_tls`'s keyword arguments.
#[derive(Clone, Default)]
pub struct StartTlsOptions {
    /// Server side of the handshake.
    pub server_side: bool,
    /// The name to check the server's certificate against.
    pub server_hostname: Option<String>,
    /// `None`: 60 s.
    pub ssl_handshake_timeout: Option<Duration>,
    /// `None`: 30 s.
    pub ssl_shutdown_timeout: Option<Duration>,
}

/// Where a child's standard stream goes (`subprocess.PIPE`, ...).
#[derive(Clone, Debug, Default)]
pub enum Stdio {
    /// The parent's own (asyncio's `None`).
    #[default]
    Inherit,
    /// A pipe: the child's output reaches the protocol's
    /// `pipe_data_received`, its input is the transport
    /// `get_pipe_transport(0)` hands out (`subprocess.PIPE`).
    Pipe,
    /// The null device (`subprocess.DEVNULL`).
    DevNull,
    /// stderr only: wherever stdout goes (`subprocess.STDOUT`).
    Stdout,
    /// An open file, pipe, socket or device: the child gets its own copy
    /// of the descriptor (asyncio's file object or fd). The caller keeps
    /// theirs.
    File(Rc<File>),
}

/// `subprocess_exec` / `subprocess_shell` keyword arguments: asyncio's,
/// which are `subprocess.Popen`'s.
///
/// The defaults are asyncio's: three pipes, the parent's environment and
/// directory, every descriptor but the three closed in the child
/// (`close_fds=True`).
#[derive(Clone, Debug)]
pub struct SubprocessOptions {
    /// The child's standard input. Default: a pipe.
    pub stdin: Stdio,
    /// The child's standard output. Default: a pipe.
    pub stdout: Stdio,
    /// The child's standard error. Default: a pipe.
    pub stderr: Stdio,
    /// The whole environment; `None` inherits the parent's.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Working directory; `None` is the parent's.
    pub cwd: Option<PathBuf>,
    /// Descriptors the child keeps, at the same numbers (Unix).
    pub pass_fds: Vec<RawFd>,
    /// Close every other descriptor above 2 in the child, including any
    /// that are not close-on-exec (asyncio's default). `false` lets the
    /// child inherit those; descriptors Rust and this crate open are
    /// close-on-exec either way.
    pub close_fds: bool,
    /// `setsid()` in the child: a new session and process group (Unix).
    pub start_new_session: bool,
    /// `setpgid(0, pgid)` in the child; `Some(0)` makes it the leader of a
    /// group of its own (Unix).
    pub process_group: Option<i32>,
    /// `CreateProcess` flags, e.g. `CREATE_NEW_PROCESS_GROUP` so that
    /// `send_signal(CTRL_BREAK_EVENT)` reaches the child alone (Windows).
    pub creation_flags: u32,
    /// asyncio's keywords that it refuses, kept so that a front end passing
    /// them gets asyncio's `ValueError`: `universal_newlines` (must be
    /// false), `text` (false), `encoding` and `errors` (`None`), `bufsize`
    /// (0) and `shell` (false for `subprocess_exec`, true for
    /// `subprocess_shell`; `None` is the method's own).
    pub universal_newlines: bool,
    /// See [`universal_newlines`](Self::universal_newlines).
    pub text: bool,
    /// See [`universal_newlines`](Self::universal_newlines).
    pub encoding: Option<String>,
    /// See [`universal_newlines`](Self::universal_newlines).
    pub errors: Option<String>,
    /// See [`universal_newlines`](Self::universal_newlines).
    pub bufsize: usize,
    /// See [`universal_newlines`](Self::universal_newlines).
    pub shell: Option<bool>,
}

impl Default for SubprocessOptions {
    fn default() -> Self {
        SubprocessOptions {
            stdin: Stdio::Pipe,
            stdout: Stdio::Pipe,
            stderr: Stdio::Pipe,
            env: None,
            cwd: None,
            pass_fds: Vec::new(),
            close_fds: true,
            start_new_session: false,
            process_group: None,
            creation_flags: 0,
            universal_newlines: false,
            text: false,
            encoding: None,
            errors: None,
            bufsize: 0,
            shell: None,
        }
    }
}

/// One `getaddrinfo` result: `(family, type, proto, canonname, sockaddr)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    /// Address family.
    pub family: Family,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ... as the OS numbers them.
    pub socktype: i32,
    /// Protocol number.
    pub proto: i32,
    /// Canonical name, when `AI_CANONNAME` was asked for.
    pub canonname: String,
    /// The address.
    pub addr: SocketAddr,
}

/// `getaddrinfo`'s keyword arguments (`family`, `type`, `proto`, `flags`);
/// all 0 (`AF_UNSPEC`, any type, any protocol, no flags) by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetAddrInfoOptions {
    /// Restricts the answers to one family.
    pub family: Family,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ... as the OS numbers them; 0 for any.
    pub socktype: i32,
    /// Protocol number; 0 for any.
    pub proto: i32,
    /// `AI_*` flags.
    pub flags: i32,
}

/// `connect_accepted_socket`'s keyword arguments.
#[derive(Clone, Default)]
pub struct ConnectAcceptedSocketOptions {
    /// TLS (server side); `None` for plain TCP.
    pub ssl: Option<SslContext>,
    /// TLS handshake timeout (only with `ssl`).
    pub ssl_handshake_timeout: Option<Duration>,
    /// TLS shutdown timeout (only with `ssl`).
    pub ssl_shutdown_timeout: Option<Duration>,
}

// ----- the conversions the generic loop methods take ---------------------------------

/// A delay for `call_later`: seconds as a number, or a `Duration`.
pub trait Delay {
    /// The delay in seconds.
    fn seconds(self) -> f64;
}

impl Delay for f64 {
    fn seconds(self) -> f64 {
        self
    }
}
impl Delay for f32 {
    fn seconds(self) -> f64 {
        f64::from(self)
    }
}
impl Delay for i32 {
    fn seconds(self) -> f64 {
        f64::from(self)
    }
}
impl Delay for u32 {
    fn seconds(self) -> f64 {
        f64::from(self)
    }
}
impl Delay for u64 {
    fn seconds(self) -> f64 {
        self as f64
    }
}
impl Delay for Duration {
    fn seconds(self) -> f64 {
        self.as_secs_f64()
    }
}

/// A `host` argument: a name or address (`&str`, `String`), or none.
pub trait IntoHost {
    /// The host, or `None`.
    fn into_host(self) -> Option<String>;
}

impl IntoHost for &str {
    fn into_host(self) -> Option<String> {
        Some(self.to_string())
    }
}
impl IntoHost for String {
    fn into_host(self) -> Option<String> {
        Some(self)
    }
}
impl IntoHost for &String {
    fn into_host(self) -> Option<String> {
        Some(self.clone())
    }
}
impl IntoHost for Option<&str> {
    fn into_host(self) -> Option<String> {
        self.map(str::to_string)
    }
}
impl IntoHost for Option<String> {
    fn into_host(self) -> Option<String> {
        self
    }
}
impl IntoHost for std::net::IpAddr {
    fn into_host(self) -> Option<String> {
        Some(self.to_string())
    }
}

/// `create_server`'s `host`: one (`&str`, `String`), several (a `Vec` or
/// slice), every interface (`None`, `""`), or a [`Hosts`].
pub trait IntoHosts {
    /// As a [`Hosts`].
    fn into_hosts(self) -> Hosts;
}

impl IntoHosts for Hosts {
    fn into_hosts(self) -> Hosts {
        self
    }
}
impl<H: IntoHost> IntoHosts for H {
    fn into_hosts(self) -> Hosts {
        match self.into_host() {
            Some(h) if !h.is_empty() => Hosts::One(h),
            _ => Hosts::All,
        }
    }
}
impl IntoHosts for Vec<String> {
    fn into_hosts(self) -> Hosts {
        Hosts::Many(self)
    }
}
impl IntoHosts for &[&str] {
    fn into_hosts(self) -> Hosts {
        Hosts::Many(self.iter().map(|h| h.to_string()).collect())
    }
}

/// A `port` or service argument of `getaddrinfo`: a number, a service name,
/// or none.
pub trait IntoService {
    /// As `getaddrinfo` takes it.
    fn into_service(self) -> Option<String>;
}

impl IntoService for u16 {
    fn into_service(self) -> Option<String> {
        Some(self.to_string())
    }
}
impl IntoService for Option<u16> {
    fn into_service(self) -> Option<String> {
        self.map(|p| p.to_string())
    }
}
impl IntoService for &str {
    fn into_service(self) -> Option<String> {
        Some(self.to_string())
    }
}
impl IntoService for String {
    fn into_service(self) -> Option<String> {
        Some(self)
    }
}
impl IntoService for Option<String> {
    fn into_service(self) -> Option<String> {
        self
    }
}

/// A Unix socket `path` argument: a path (`&str`, `String`, `&Path`,
/// `PathBuf`), or none (with `sock=`).
pub trait IntoUnixPath {
    /// The path, or `None`.
    fn into_unix_path(self) -> Option<PathBuf>;
}

impl IntoUnixPath for &str {
    fn into_unix_path(self) -> Option<PathBuf> {
        Some(self.into())
    }
}
impl IntoUnixPath for String {
    fn into_unix_path(self) -> Option<PathBuf> {
        Some(self.into())
    }
}
impl IntoUnixPath for &std::path::Path {
    fn into_unix_path(self) -> Option<PathBuf> {
        Some(self.into())
    }
}
impl IntoUnixPath for PathBuf {
    fn into_unix_path(self) -> Option<PathBuf> {
        Some(self)
    }
}
impl IntoUnixPath for &PathBuf {
    fn into_unix_path(self) -> Option<PathBuf> {
        Some(self.clone())
    }
}
impl IntoUnixPath for Option<PathBuf> {
    fn into_unix_path(self) -> Option<PathBuf> {
        self
    }
}

/// A path in Linux's abstract socket namespace (a leading NUL byte: no file
/// is made), for `create_unix_server` and `create_unix_connection`.
pub fn abstract_unix_path(name: &str) -> PathBuf {
    let mut s = OsString::from("\0");
    s.push(name);
    PathBuf::from(s)
}
