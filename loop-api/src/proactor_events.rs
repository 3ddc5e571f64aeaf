//! What completion-based backends share (asyncio's `proactor_events`).
//!
//! asyncio's `ProactorEventLoop` writes its transports once over a
//! proactor that starts operations and reports their completions. Here the
//! same split holds, and a backend (io_uring, IOCP) keeps only its OS
//! calls:
//!
//! | module | written once | the backend supplies |
//! |---|---|---|
//! | [`ops`] | the table of operations in flight and their memory, owners, [`OpFuture`](ops::OpFuture) | [`Proactor`](ops::Proactor): cancel one operation |
//! | [`accept`] | serving a listener, the back-off, stopping | [`AcceptIo`](accept::AcceptIo): start one accept, read its completion |
//! | [`socket_transport`] | the stream transport: reading, buffering, flow control, EOF, closing, errors | [`StreamIo`]: start and cancel one receive and one send |
//! | [`pipe_transport`] | the read- and write-pipe transports | [`PipeIo`]: start one read and one write, cancel them |
//!
//! # The stream transport's contract
//! - At most one receive and one send are outstanding per transport. The
//!   transport asks for a receive with [`StreamIo::start_recv`] and for a
//!   send with [`StreamIo::start_send`], handing over the chunks to send as
//!   a [`SendBatch`]; it never touches them again until they come back.
//! - The backend's completion handler runs inside the driver's `poll`: it
//!   only hands the completion to [`ProactorSocketTransport::push_completion`],
//!   which records it in the transport's [`Inbox`]. Later, on the ready
//!   queue, the transport gives each recorded completion, in order, to
//!   [`StreamIo::complete`], which reports it through
//!   [`ProactorSocketTransport::on_recv`] or
//!   [`ProactorSocketTransport::on_sent`].
//! - A receive may complete more than once (a multishot receive); the last
//!   of its completions says so (`more: false`). Cancelling a receive
//!   ([`StreamIo::cancel_recv`]) is a request: data that was already on its
//!   way still arrives, and the transport keeps it.
//! - The backend owns the memory the kernel may touch until the kernel is
//!   done with it, cancellation included; the transport never frees or
//!   reuses a buffer it handed over.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use crate::events::{AbstractEventLoop, Step};
use crate::exceptions::Result;

pub mod accept;
pub mod ops;
pub mod pipe_transport;
pub mod socket_transport;

pub use pipe_transport::{PipeIo, ProactorPipeTransport};
pub use socket_transport::ProactorSocketTransport;

/// Inside a completion driver's `impl IoModel<D> for ...`: datagram
/// transports and `sock_recvfrom`/`sock_recvfrom_into`/`sock_sendto` on
/// readiness ([`SelectorIo`](crate::selector_events::SelectorIo)), as both
/// completion backends keep them: a receive request on a datagram socket
/// would take (and truncate) a datagram that a cancelled `sock_recvfrom`
/// must leave in place.
#[macro_export]
macro_rules! datagrams_on_readiness {
    () => {
        fn make_datagram_transport(
            lp: &::std::rc::Rc<$crate::base_events::BaseEventLoop<Self>>,
            sock: ::std::rc::Rc<$crate::__socket2::Socket>,
            protocol: ::std::rc::Rc<dyn $crate::protocols::DatagramProtocol>,
            address: ::std::option::Option<$crate::__socket2::SockAddr>,
            waiter: ::std::option::Option<$crate::futures::Future<()>>,
        ) -> $crate::Result<::std::rc::Rc<dyn $crate::transports::DatagramTransport>> {
            <$crate::selector_events::SelectorIo as $crate::driver::IoModel<Self>>::make_datagram_transport(
                lp, sock, protocol, address, waiter,
            )
        }

        fn sock_recvfrom(
            lp: &::std::rc::Rc<$crate::base_events::BaseEventLoop<Self>>,
            sock: ::std::rc::Rc<$crate::__socket2::Socket>,
            bufsize: usize,
        ) -> $crate::events::LocalBoxFuture<'static, $crate::Result<(Vec<u8>, $crate::__socket2::SockAddr)>> {
            <$crate::selector_events::SelectorIo as $crate::driver::IoModel<Self>>::sock_recvfrom(
                lp, sock, bufsize,
            )
        }

        fn sock_recvfrom_into(
            lp: &::std::rc::Rc<$crate::base_events::BaseEventLoop<Self>>,
            sock: ::std::rc::Rc<$crate::__socket2::Socket>,
            buf: Vec<u8>,
            nbytes: usize,
        ) -> $crate::events::LocalBoxFuture<'static, $crate::Result<(Vec<u8>, usize, $crate::__socket2::SockAddr)>> {
            <$crate::selector_events::SelectorIo as $crate::driver::IoModel<Self>>::sock_recvfrom_into(
                lp, sock, buf, nbytes,
            )
        }

        fn sock_sendto(
            lp: &::std::rc::Rc<$crate::base_events::BaseEventLoop<Self>>,
            sock: ::std::rc::Rc<$crate::__socket2::Socket>,
            data: Vec<u8>,
            address: $crate::__socket2::SockAddr,
        ) -> $crate::events::LocalBoxFuture<'static, $crate::Result<usize>> {
            <$crate::selector_events::SelectorIo as $crate::driver::IoModel<Self>>::sock_sendto(
                lp, sock, data, address,
            )
        }
    };
}

/// What a completion-based owner (a transport, an accept loop) keeps
/// between the driver's `poll`, which records completions, and its step on
/// the ready queue, which handles them in the order they arrived.
///
/// Most steps find one completion, so the first waits in place and only
/// the ones behind it take a queue: an idle connection holds no
/// allocation for its inbox.
pub struct Inbox<T> {
    first: RefCell<Option<T>>,
    rest: RefCell<VecDeque<T>>,
    scheduled: Cell<bool>,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Inbox {
            first: RefCell::new(None),
            rest: RefCell::new(VecDeque::new()),
            scheduled: Cell::new(false),
        }
    }
}

impl<T> Inbox<T> {
    /// Records `item` and schedules `step` on `lp`'s ready queue, unless
    /// it is scheduled already. Called from inside `poll`: it runs no user
    /// code.
    pub fn push(&self, item: T, lp: &dyn AbstractEventLoop, step: impl FnOnce() -> Rc<dyn Step>) {
        {
            let mut first = self.first.borrow_mut();
            if first.is_none() {
                *first = Some(item);
            } else {
                self.rest.borrow_mut().push_back(item);
            }
        }
        if !self.scheduled.replace(true) && lp.call_soon_step(step()).is_err() {
            self.scheduled.set(false);
        }
    }

    /// The next item to handle, oldest first. The step's first call also
    /// marks it as running: what arrives from now on schedules it again.
    pub fn pop(&self) -> Option<T> {
        self.scheduled.set(false);
        let mut first = self.first.borrow_mut();
        let item = first.take()?;
        *first = self.rest.borrow_mut().pop_front();
        Some(item)
    }
}

/// Chunks handed to one send, in order; `head` bytes of the first were
/// sent before.
#[derive(Debug, Default)]
pub struct SendBatch {
    /// Whole chunks, as the protocol wrote them.
    pub chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already sent.
    pub head: usize,
}

impl SendBatch {
    /// The bytes to send, chunk by chunk (the first from `head` on).
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { &c[self.head..] } else { &c[..] })
    }

    /// How many bytes the batch holds.
    pub fn len(&self) -> usize {
        self.slices().map(<[u8]>::len).sum()
    }

    /// True if the batch holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One completion of a receive, as [`ProactorSocketTransport::on_recv`]
/// takes it.
#[derive(Debug)]
pub enum RecvEvent<'a> {
    /// Bytes received.
    Data(&'a [u8]),
    /// The peer closed its end (a receive of zero bytes).
    Eof,
    /// The receive failed; reading stops.
    Error(io::Error),
    /// Nothing received and nothing wrong: cancelled, interrupted, or out
    /// of buffers. The transport starts another receive if it still reads.
    Stopped,
}

/// What a completion-based backend supplies to [`ProactorSocketTransport`]:
/// one receive and one send on its own mechanism. See the module docs for
/// the contract.
pub trait StreamIo: Sized + 'static {
    /// One completion of the backend's receive or send, as its completion
    /// handler records it.
    type Completion;

    /// The most chunks one send takes (`IOV_MAX`, or what the backend's
    /// vectored send is comfortable with).
    const MAX_CHUNKS: usize = 64;

    /// Starts a receive on the transport's socket. Its completions reach
    /// the transport through [`StreamIo::complete`].
    fn start_recv(transport: &Rc<ProactorSocketTransport<Self>>) -> Result<()>;

    /// Asks the kernel to cancel the receive in flight, if any.
    fn cancel_recv(&self);

    /// Starts one send of `batch`. The batch comes back with its completion
    /// through [`ProactorSocketTransport::on_sent`]; on `Err` it is dropped.
    fn start_send(transport: &Rc<ProactorSocketTransport<Self>>, batch: SendBatch) -> Result<()>;

    /// Asks the kernel to cancel the send in flight, if any.
    fn cancel_send(&self);

    /// Writes of at least this many bytes, made while nothing is buffered
    /// or in flight, are first offered to [`StreamIo::send_now`].
    const SEND_NOW_MIN: usize = 16 * 1024;

    /// Offers `parts` to the socket at once, without blocking and without
    /// copying them: how many bytes it took, `WouldBlock` if none, or the
    /// error. What it does not take is buffered and sent by request as
    /// usual. `None`: the backend does not do this, everything goes by
    /// request.
    ///
    /// A completion backend copies a write into a buffer the kernel can own
    /// until the request completes; the kernel then tries the send at once
    /// anyway. For a large write that copy is the biggest cost the
    /// readiness transport does not pay, so a backend that can make a
    /// non-blocking send cheaply should.
    fn send_now(
        _transport: &ProactorSocketTransport<Self>,
        _parts: &[&[u8]],
    ) -> Option<io::Result<usize>> {
        None
    }

    /// Reports one recorded completion, through
    /// [`ProactorSocketTransport::on_recv`] or
    /// [`ProactorSocketTransport::on_sent`]. Called from the transport's
    /// step, for each completion in the order they arrived.
    fn complete(transport: &Rc<ProactorSocketTransport<Self>>, completion: Self::Completion);

    /// Called before the socket is closed while requests are still in
    /// flight (cancelled): a backend whose in-flight requests keep the
    /// socket open in the kernel has them released now, so that the peer
    /// sees the end at once.
    fn settle(&self) {}
}
