//! The zero-copy path of `sock_sendfile` and of a transport's
//! `_sendfile_native` on IOCP: overlapped `TransmitFile` (asyncio's
//! `IocpProactor.sendfile`, driven as `_sock_sendfile_native` drives it).
//!
//! - Only a regular file can go this way (`SendfileNotAvailable`
//!   otherwise, so `sock_sendfile` falls back to reading and sending).
//! - The transfer is `TransmitFile` calls of at most 1 GiB each, from
//!   `offset` (named in the `OVERLAPPED`, so the file's own position plays
//!   no part) to `offset + count` or the end of the file.
//! - When it ends, however it ends, the file's position is `offset` +
//!   bytes sent (left alone when nothing was sent), as on every backend.
//!   Cancelling (dropping the future) cancels the call in flight with
//!   `CancelIoEx`; what that call sent before is not counted.
//! - A socket the loop's port cannot take (another port has it) gets the
//!   default path, which has no zero-copy on Windows.

use std::fs::File;
use std::rc::Rc;

use loop_api::base_events::sendfile::{regular_file_len, FilePosition};
use loop_api::events::LocalBoxFuture;
use loop_api::selector_events::sendfile;
use loop_api::Result;
use socket2::Socket;

use super::ops::Request;
use super::sock_ops::{overlapped_ok, raw, start};
use super::IocpEventLoop;

/// The most one `TransmitFile` call is asked for.
const MAX_CALL: u64 = 1 << 30;

/// `_sock_sendfile_native` (the socket is checked and flushed already).
pub(crate) fn sock_sendfile_native(
    lp: &Rc<IocpEventLoop>,
    sock: Rc<Socket>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
) -> LocalBoxFuture<'static, Result<u64>> {
    let lp = lp.clone();
    Box::pin(async move {
        if !overlapped_ok(&lp, &sock)? {
            return sendfile::sock_sendfile_native(lp, sock, file, offset, count).await;
        }
        let size = regular_file_len(&file)?;
        let end = match count {
            Some(c) => offset.saturating_add(c).min(size),
            None => size,
        };
        let position = FilePosition::new(file.clone(), offset);
        let mut at = offset;
        while at < end {
            let len = (end - at).min(MAX_CALL) as u32;
            let transmit = Request::TransmitFile {
                file: file.clone(),
                offset: at,
                len,
            };
            let c = start(&lp, raw(&sock), transmit)?.await;
            let n = c.result? as u64;
            if n == 0 {
                break; // the file ended early (it shrank)
            }
            at += n;
            position.sent.set(at - offset);
        }
        Ok(at - offset)
    })
}
