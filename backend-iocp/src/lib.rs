//! backend-iocp
