//! Serving a listener with accept requests: the io_uring side of the
//! shared acceptor ([`loop_api::proactor_events::accept`]).
//!
//! One multishot accept per listener (Linux 5.19+; one accept request at a
//! time otherwise) delivers each new connection as a completion, already
//! non-blocking and close-on-exec. A listener shut down or closed ends the
//! request with `EINVAL` or `EBADF`, a cancelled one with `ECANCELED`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use loop_api::proactor_events::accept::{AcceptIo, Accepted, Acceptors};
use loop_api::proactor_events::ops::{OpId, Owner};
use loop_api::Result;
use socket2::Socket;

use crate::ops::{Completion, Keep};
use crate::UringDriver;

impl AcceptIo for UringDriver {
    const ACCEPTS_IN_FLIGHT: usize = 1;

    fn start_accept(
        &mut self,
        listener: &Socket,
        owner: Rc<dyn Owner<Completion>>,
    ) -> Result<OpId> {
        let fd = types::Fd(listener.as_raw_fd());
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let entry = if self.features().multishot_accept {
            opcode::AcceptMulti::new(fd).flags(flags).build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(flags)
                .build()
        };
        // SAFETY: an accept without an address carries no pointer.
        unsafe { self.submit(entry, Keep::Nothing, owner, 0) }
    }

    fn accepted(_listener: &Socket, c: Completion) -> (OpId, bool, Accepted) {
        let outcome = match c.res {
            // SAFETY: a successful accept returns a new descriptor, ours.
            fd if fd >= 0 => Accepted::Connection(unsafe { Socket::from_raw_fd(fd) }),
            e if matches!(-e, libc::ECANCELED | libc::EINVAL | libc::EBADF) => Accepted::Gone,
            e => {
                let e = io::Error::from_raw_os_error(-e);
                match e.kind() {
                    io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::Interrupted => Accepted::Skip,
                    _ => Accepted::Failed(e),
                }
            }
        };
        (c.id, c.more, outcome)
    }

    fn acceptors(&mut self) -> &mut Acceptors<Self> {
        &mut self.acceptors
    }
}
