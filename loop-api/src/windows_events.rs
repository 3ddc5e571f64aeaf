//! What asyncio's `windows_events` holds beyond the proactor: the Windows
//! side of subprocesses (spawning, and learning of a child's exit).

pub(crate) mod child;
