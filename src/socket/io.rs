//! Writing to the socket: frames gather in its write buffer and leave on a flush, and no
//! write waits forever on a client that stopped reading.

use std::pin::Pin;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::threads::Conn;
use crate::hub::CloseReason;

pub(super) type Socket = WebSocketStream<Conn>;

/// What a socket reads at a time (tungstenite's default is 128 KiB, allocated per socket).
pub(super) const READ_BUFFER: usize = 1024;

/// Frames gather up to this much before being written, unless flushed sooner.
pub(super) const WRITE_BUFFER: usize = 8 * 1024;

/// How long one frame may take to leave: a client that stops reading (its TCP window
/// full) would otherwise hold its session forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A socket write: done at once, or waiting (boxed, see [`put`]).
pub(super) type Write<'a> =
    Either<std::future::Ready<bool>, Pin<Box<dyn Future<Output = bool> + Send + 'a>>>;

/// Queues one frame in the socket's write buffer (which writes out once it is full); false
/// if the socket failed or the frame could not be queued in time. [`flush`] sends the rest.
///
/// Most frames go straight into the buffer. Only a socket that cannot take more waits,
/// with a timer, in a boxed future: a task is as large as its largest step, and every
/// socket's task would otherwise carry the wait and its timer.
pub(super) fn put(socket: &mut Socket, msg: WsMessage) -> Write<'_> {
    match std::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).now_or_never() {
        Some(Ok(())) => Either::Left(std::future::ready(socket.start_send_unpin(msg).is_ok())),
        Some(Err(_)) => Either::Left(std::future::ready(false)),
        None => Either::Right(Box::pin(within_send_timeout(socket.feed(msg)))),
    }
}

/// Writes out what [`put`] queued; false if the socket failed or it could not leave in time.
pub(super) fn flush(socket: &mut Socket) -> Write<'_> {
    match std::future::poll_fn(|cx| socket.poll_flush_unpin(cx)).now_or_never() {
        Some(done) => Either::Left(std::future::ready(done.is_ok())),
        None => Either::Right(Box::pin(within_send_timeout(socket.flush()))),
    }
}

/// Waits for a socket write, at most [`SEND_TIMEOUT`]: a client that stops reading fills
/// its TCP window, and would otherwise hold its session forever.
async fn within_send_timeout<E>(write: impl Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, write).await, Ok(Ok(())))
}

/// Sends our close frame, then gives the client a moment to answer it before the TCP
/// connection goes, so that it reads the close code rather than a reset. Bounded as a
/// whole: a slow consumer's socket may not even take the close frame.
pub(super) async fn close(socket: &mut Socket, reason: CloseReason) {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from_static(reason.text()),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        // Refused when the client closed first; tungstenite has then answered it already.
        let _ = socket.send(WsMessage::Close(Some(frame))).await;
        while let Some(Ok(msg)) = socket.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// How long closing a socket may take: sending our close frame and reading the answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
