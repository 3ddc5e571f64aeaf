//! backend-uring
