//! What asyncio's `unix_events` holds beyond signals and AF_UNIX sockets:
//! the pipe transports of `connect_read_pipe` / `connect_write_pipe` on
//! readiness, and the Unix side of subprocesses (spawning, and learning
//! of a child's exit).

pub(crate) mod child;
pub mod read_pipe;
pub mod write_pipe;

pub use read_pipe::ReadPipeTransport;
pub use write_pipe::WritePipeTransport;
