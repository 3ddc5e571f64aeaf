//! `loop.connect_read_pipe` and `loop.connect_write_pipe`: the protocol,
//! the driver's pipe transport ([`IoModel`](crate::driver::IoModel)'s
//! `make_*_pipe_transport`), and the wait for `connection_made`.
//!
//! A wait that fails or is cancelled closes the transport, which closes
//! the pipe: the caller handed it over.

use std::fs::File;
use std::rc::Rc;

use super::pipe_base::PipeEnd;
use super::BaseLoop;
use crate::events::{EventLoopExt, LocalBoxFuture, StreamPair};
use crate::exceptions::Result;
use crate::protocols::ProtocolFactory;
use crate::transports::lifecycle::CloseOnDrop;

/// `loop.connect_read_pipe`.
pub fn connect_read_pipe(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    pipe: File,
) -> LocalBoxFuture<'static, Result<StreamPair>> {
    connect(lp, protocol_factory, pipe, PipeEnd::Read)
}

/// `loop.connect_write_pipe`.
pub fn connect_write_pipe(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    pipe: File,
) -> LocalBoxFuture<'static, Result<StreamPair>> {
    connect(lp, protocol_factory, pipe, PipeEnd::Write)
}

fn connect(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    pipe: File,
    end: PipeEnd,
) -> LocalBoxFuture<'static, Result<StreamPair>> {
    Box::pin(async move {
        let protocol = protocol_factory();
        let waiter = lp.create_future::<()>();
        let transport = match end {
            PipeEnd::Read => {
                lp._make_read_pipe_transport(pipe, protocol.clone(), Some(waiter.clone()))
            }
            PipeEnd::Write => {
                lp._make_write_pipe_transport(pipe, protocol.clone(), Some(waiter.clone()))
            }
        }?;
        let guard = CloseOnDrop::new(transport);
        waiter.await?;
        Ok((guard.defuse(), protocol))
    })
}
