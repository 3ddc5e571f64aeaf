//! The error type, mirroring asyncio's exceptions.
//!
//! asyncio raises; we return [`Result`]. Each variant names the Python
//! exception it stands for, and the `RuntimeError` cases carry asyncio's
//! messages word for word so that logs read the same.

use std::fmt;
use std::io;
use std::sync::Arc;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything an event-loop operation can fail with.
///
/// `Clone`, because a future hands the same exception to every awaiter
/// (asyncio's `Future.result()` re-raises each time it is called).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// `asyncio.CancelledError`, with the message given to `cancel()`.
    Cancelled(Option<String>),
    /// `asyncio.InvalidStateError`.
    InvalidState(String),
    /// `TimeoutError` (asyncio.TimeoutError is an alias since 3.11).
    Timeout,
    /// `RuntimeError`, with asyncio's message.
    Runtime(String),
    /// `ValueError`.
    Value(String),
    /// `TypeError`.
    Type(String),
    /// The method exists in the model, but this loop does not build it yet.
    /// `NotImplementedError` in asyncio's abstract base.
    NotImplemented(&'static str),
    /// The backend cannot support the feature at all (the OS has no such
    /// mechanism). Conformance cases turn this into a visible skip.
    NotSupported {
        /// The method or feature, e.g. `"add_signal_handler"`.
        feature: &'static str,
        /// Why, in a sentence, naming the OS or backend.
        reason: String,
    },
    /// `OSError` and its subclasses.
    Io(Arc<io::Error>),
    /// A panic caught in a callback or a task; the payload's message.
    Panic(String),
    /// `KeyboardInterrupt`: Ctrl-C reached a `Runner` whose main task
    /// was cancelled because of it.
    KeyboardInterrupt,
    /// `asyncio.SendfileNotAvailableError`.
    SendfileNotAvailable(String),
    /// `ssl.SSLError`: a TLS failure (a bad record, a protocol error, an
    /// alert from the peer), with rustls's description.
    Ssl(String),
    /// `ssl.SSLCertVerificationError`: the peer's certificate was not
    /// trusted, or not for the name asked for.
    SslCertVerification(String),
    /// `ExceptionGroup(message, exceptions)`: several errors at once, as
    /// `create_connection(all_errors=True)` raises.
    ExceptionGroup {
        /// The group's message.
        message: String,
        /// The errors, in the order they happened.
        exceptions: Vec<Error>,
    },
    /// `asyncio.IncompleteReadError`: EOF came before a stream read was
    /// complete (`readexactly`, `readuntil`).
    IncompleteRead {
        /// The bytes read before EOF.
        partial: Vec<u8>,
        /// How many were asked for; `None` for `readuntil`.
        expected: Option<usize>,
    },
    /// `asyncio.LimitOverrunError`: a stream's separator was not found
    /// within its limit. The data stays in the stream's buffer.
    LimitOverrun {
        /// asyncio's message.
        message: String,
        /// How many bytes to consume to get past what was looked at.
        consumed: usize,
    },
    /// Any other error a user callback or coroutine wants to raise.
    Other(Arc<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// `RuntimeError(msg)`.
    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime(msg.into())
    }

    /// `ValueError(msg)`.
    pub fn value(msg: impl Into<String>) -> Self {
        Error::Value(msg.into())
    }

    /// `InvalidStateError(msg)`.
    pub fn invalid_state(msg: impl Into<String>) -> Self {
        Error::InvalidState(msg.into())
    }

    /// Wraps any error type.
    pub fn other<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Error::Other(Arc::new(e))
    }

    /// "Event loop is closed".
    pub fn loop_closed() -> Self {
        Error::runtime("Event loop is closed")
    }

    /// asyncio's `ConnectionResetError('Connection lost')`, which a stream
    /// raises once its connection is gone.
    pub fn connection_lost() -> Self {
        Error::from(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "Connection lost",
        ))
    }

    /// True for [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled(_))
    }

    /// The `io::ErrorKind` of an `OSError` (`None` for the other kinds of
    /// error): `e.kind() == Some(ErrorKind::ConnectionRefused)`.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// asyncio's `ConnectionRefusedError`.
    pub fn is_connection_refused(&self) -> bool {
        self.kind() == Some(io::ErrorKind::ConnectionRefused)
    }

    /// asyncio's `ConnectionResetError` (a reset, or an aborted connection).
    pub fn is_connection_reset(&self) -> bool {
        matches!(
            self.kind(),
            Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
        )
    }

    /// asyncio's `BrokenPipeError`.
    pub fn is_broken_pipe(&self) -> bool {
        self.kind() == Some(io::ErrorKind::BrokenPipe)
    }

    /// asyncio's `ConnectionError` family: refused, reset, aborted, broken
    /// pipe, not connected.
    pub fn is_connection_error(&self) -> bool {
        self.is_connection_refused()
            || self.is_connection_reset()
            || self.is_broken_pipe()
            || self.kind() == Some(io::ErrorKind::NotConnected)
    }

    /// `TimeoutError`: a timeout of the loop's (`wait_for`, ...) or of the
    /// OS (`ETIMEDOUT`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout) || self.kind() == Some(io::ErrorKind::TimedOut)
    }

    /// True for [`Error::NotSupported`] and [`Error::NotImplemented`]: the
    /// loop lacks the feature rather than the call having failed.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::NotSupported { .. } | Error::NotImplemented(_))
    }

    /// The `errno`-style code for [`Error::Io`].
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io(e) => e.raw_os_error().or_else(|| {
                e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<OsError>())
                    .map(|o| o.errno)
            }),
            _ => None,
        }
    }

    /// `OSError(errno, message)`: `e`'s kind and errno, with asyncio's
    /// message (`"[Errno 111] Connect call failed ('127.0.0.1', 80)"`).
    /// [`raw_os_error`](Error::raw_os_error) still gives the errno.
    pub fn os(e: &io::Error, message: impl fmt::Display) -> Self {
        let errno = e.raw_os_error().unwrap_or(0);
        Error::Io(Arc::new(io::Error::new(
            e.kind(),
            OsError {
                errno,
                message: format!("[Errno {errno}] {message}"),
            },
        )))
    }

    /// The Python class this error stands for, used in reports.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::Cancelled(_) => "CancelledError",
            Error::InvalidState(_) => "InvalidStateError",
            Error::Timeout => "TimeoutError",
            Error::Runtime(_) => "RuntimeError",
            Error::Value(_) => "ValueError",
            Error::Type(_) => "TypeError",
            Error::NotImplemented(_) => "NotImplementedError",
            Error::NotSupported { .. } => "NotSupportedError",
            Error::Io(_) => "OSError",
            Error::Panic(_) => "Panic",
            Error::KeyboardInterrupt => "KeyboardInterrupt",
            Error::SendfileNotAvailable(_) => "SendfileNotAvailableError",
            Error::Ssl(_) => "SSLError",
            Error::SslCertVerification(_) => "SSLCertVerificationError",
            Error::ExceptionGroup { .. } => "ExceptionGroup",
            Error::IncompleteRead { .. } => "IncompleteReadError",
            Error::LimitOverrun { .. } => "LimitOverrunError",
            Error::Other(_) => "Exception",
        }
    }

    /// Builds a [`Error::Panic`] from a `catch_unwind` payload; a payload
    /// that is an `Error` (`std::panic::resume_unwind(Box::new(err))`) is
    /// that error: how a callback with no `Result` to return (a protocol
    /// method) reports one, as the Python front does with Python exceptions.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let payload = match payload.downcast::<Error>() {
            Ok(err) => return *err,
            Err(other) => other,
        };
        let msg = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "Box<dyn Any>".to_string()
        };
        Error::Panic(msg)
    }
}

/// Two errors are equal when they are the same kind of exception with the
/// same text (an `OSError` also compares its `ErrorKind` and errno), so
/// tests can write `assert_eq!(r, Err(Error::value("...")))`.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        match (self, other) {
            (Error::Io(a), Error::Io(b)) => {
                a.kind() == b.kind()
                    && self.raw_os_error() == other.raw_os_error()
                    && a.to_string() == b.to_string()
            }
            (
                Error::ExceptionGroup {
                    message: m1,
                    exceptions: e1,
                },
                Error::ExceptionGroup {
                    message: m2,
                    exceptions: e2,
                },
            ) => m1 == m2 && e1 == e2,
            (
                Error::IncompleteRead {
                    partial: p1,
                    expected: x1,
                },
                Error::IncompleteRead {
                    partial: p2,
                    expected: x2,
                },
            ) => p1 == p2 && x1 == x2,
            (
                Error::LimitOverrun {
                    message: m1,
                    consumed: c1,
                },
                Error::LimitOverrun {
                    message: m2,
                    consumed: c2,
                },
            ) => m1 == m2 && c1 == c2,
            _ => {
                std::mem::discriminant(self) == std::mem::discriminant(other)
                    && self.to_string() == other.to_string()
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled(None) => f.write_str("CancelledError"),
            Error::Cancelled(Some(m)) => write!(f, "CancelledError: {m}"),
            Error::InvalidState(m) => write!(f, "InvalidStateError: {m}"),
            Error::Timeout => f.write_str("TimeoutError"),
            Error::Runtime(m) => write!(f, "RuntimeError: {m}"),
            Error::Value(m) => write!(f, "ValueError: {m}"),
            Error::Type(m) => write!(f, "TypeError: {m}"),
            Error::NotImplemented(what) => {
                write!(
                    f,
                    "NotImplementedError: {what} is not implemented by this event loop yet"
                )
            }
            Error::NotSupported { feature, reason } => {
                write!(f, "NotSupportedError: {feature}: {reason}")
            }
            Error::Io(e) => write!(f, "OSError: {e}"),
            Error::Panic(m) => write!(f, "panic: {m}"),
            Error::KeyboardInterrupt => f.write_str("KeyboardInterrupt"),
            Error::SendfileNotAvailable(m) => write!(f, "SendfileNotAvailableError: {m}"),
            Error::Ssl(m) => write!(f, "SSLError: {m}"),
            Error::SslCertVerification(m) => write!(f, "SSLCertVerificationError: {m}"),
            Error::ExceptionGroup {
                message,
                exceptions,
            } => {
                let n = exceptions.len();
                let s = if n == 1 { "" } else { "s" };
                write!(f, "ExceptionGroup: {message} ({n} sub-exception{s})")
            }
            Error::IncompleteRead {
                partial,
                expected: Some(n),
            } => write!(
                f,
                "IncompleteReadError: {} bytes read on a total of {n} expected bytes",
                partial.len()
            ),
            Error::IncompleteRead {
                partial,
                expected: None,
            } => write!(
                f,
                "IncompleteReadError: {} bytes read on a total of undefined expected bytes",
                partial.len()
            ),
            Error::LimitOverrun { message, .. } => write!(f, "LimitOverrunError: {message}"),
            Error::Other(e) => write!(f, "{e}"),
        }
    }
}

/// An OS error with asyncio's own message; see [`Error::os`].
#[derive(Debug)]
pub struct OsError {
    /// The OS error number.
    pub errno: i32,
    /// The whole message.
    pub message: String,
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OsError {}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(&**e),
            Error::Other(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}
