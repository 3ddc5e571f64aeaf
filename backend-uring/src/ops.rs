//! What an io_uring operation lends the kernel, and what its owner hears.
//!
//! Every request that carries a pointer into our memory is submitted with
//! the owned allocation it points into, as a [`Keep`]. The driver holds the
//! `Keep` in its table of operations (the shared
//! [`Operations`](loop_api::proactor_events::ops::Operations)) until the
//! request's last completion has been reaped, cancelled requests included,
//! and only then hands it back to the owner with the [`Completion`]. So no
//! buffer, iovec or socket address is freed or moved while the kernel holds
//! a pointer to it.

use loop_api::proactor_events::ops::OpId;
use loop_api::proactor_events::SendBatch;
use socket2::SockAddr;

/// Owned memory an operation's pointers point into.
pub enum Keep {
    /// The request points at nothing of ours (polls, accepts without an
    /// address, provided-buffer receives, cancels).
    Nothing,
    /// A receive or send buffer.
    Buf(Vec<u8>),
    /// A send of one chunk: the batch holding it.
    Batch(SendBatch),
    /// A vectored send: chunks, their iovecs and the `msghdr`.
    Send(Box<SendBufs>),
    /// A socket address, read by `connect`.
    Addr(Box<SockAddr>),
}

/// A vectored send's memory: `msg` points at `iov`, each iovec into a
/// chunk of `batch`.
pub struct SendBufs {
    batch: SendBatch,
    iov: Vec<libc::iovec>,
    pub msg: libc::msghdr,
}

impl SendBufs {
    /// A batch made ready for `sendmsg`: the iovecs and the header point
    /// into `self`, which is boxed so that they stay valid wherever the box
    /// goes (the chunks' heap memory does not move with their `Vec`s).
    pub fn new(batch: SendBatch) -> Box<SendBufs> {
        let mut b = Box::new(SendBufs {
            batch,
            iov: Vec::new(),
            // SAFETY: `msghdr` is plain old data; all-zero is a valid value
            // (no name, no control data, no flags).
            msg: unsafe { std::mem::zeroed() },
        });
        let iov: Vec<libc::iovec> = b
            .batch
            .slices()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut libc::c_void,
                iov_len: c.len(),
            })
            .collect();
        b.iov = iov;
        b.msg.msg_iov = b.iov.as_mut_ptr();
        b.msg.msg_iovlen = b.iov.len() as _;
        b
    }

    /// The batch back, once the kernel is done with it.
    pub fn into_batch(self) -> SendBatch {
        self.batch
    }
}

/// One completion, as the owner hears it.
pub struct Completion {
    /// Which operation.
    pub id: OpId,
    /// Which of the owner's operations (the owner's own numbering).
    pub kind: u8,
    /// The CQE's result: a count, a descriptor, or `-errno`.
    pub res: i32,
    /// A multishot request goes on after this completion.
    pub more: bool,
    /// The operation's memory, handed back with its last completion.
    pub keep: Option<Keep>,
    /// The provided buffer this completion's data is in, and where in it
    /// the data starts (see `BufRing::reap`).
    pub buf: Option<(u16, u32)>,
}
