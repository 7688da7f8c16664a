//! The connection under hyper, so that the refusals hyper writes by itself carry the
//! JSON error shape too: a request whose head cannot be read (400), whose headers are too
//! large (431) or whose URI is too long (414) never reaches a service, and hyper answers it
//! with an empty body. [`Answering`] sees such an answer go out and writes ours instead.
//!
//! Only the first answer of a connection is looked at: after it, what goes out may be a
//! response body (a file's bytes can be anything, a refusal's look-alike included), and a
//! refusal of hyper's later on a kept-alive connection goes out as hyper wrote it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream whose writes are passed on, but for hyper's own refusals (see the module).
#[derive(Debug)]
pub struct Answering {
    tcp: TcpStream,
    /// Our refusal, still to write in place of hyper's, and how much of it is written.
    ours: Option<(Vec<u8>, usize)>,
    /// Whether anything has been written as it came: from then on nothing is replaced.
    passed: bool,
}

impl Answering {
    pub(super) fn new(tcp: TcpStream) -> Answering {
        Answering {
            tcp,
            ours: None,
            passed: false,
        }
    }

    /// The stream, for a connection upgraded to a socket.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }

    /// Writes out what is left of our refusal; ready once it is all gone.
    fn poll_ours(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.ours {
            if *at == bytes.len() {
                self.ours = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &bytes[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The JSON refusal to write instead of `head`, if `head` is one of hyper's: an error
/// status with no content type. Every answer of ours has one (a 4xx or 5xx is JSON).
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    if !matches!(status.first(), Some(b'4' | b'5')) {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let lower = head[..end].to_ascii_lowercase();
    if lower.windows(13).any(|w| w == b"content-type:") {
        return None;
    }
    let (code, message) = match status {
        b"431" => ("headers_too_large", "the request's headers are too large"),
        b"414" => ("uri_too_long", "the request's URI is too long"),
        _ => ("bad_request", "the request could not be read as HTTP/1.1"),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let status = std::str::from_utf8(status).ok()?;
    let reason = hyper::StatusCode::from_bytes(status.as_bytes())
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for Answering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Answering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_ours(cx))?;
        if !this.passed
            && let Some(ours) = replacement(buf)
        {
            // Taken whole in its place; written on from here and at the flush.
            this.ours = Some((ours, 0));
            let _ = this.poll_ours(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        this.passed = true;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_ours(cx))?;
        // hyper's refusal is a head alone, in one slice.
        if !this.passed
            && let [only] = bufs
            && let Some(ours) = replacement(only)
        {
            this.ours = Some((ours, 0));
            let _ = this.poll_ours(cx)?;
            return Poll::Ready(Ok(only.len()));
        }
        this.passed = true;
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_ours(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_ours(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn hypers_own_refusals_are_replaced_and_ours_are_not() {
        let hyper =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let ours = String::from_utf8(replacement(hyper).expect("replaced")).expect("text");
        assert!(
            ours.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{ours}"
        );
        assert!(ours.ends_with(r#"{"error":{"code":"headers_too_large","message":"the request's headers are too large"}}"#), "{ours}");
        let bad = replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .expect("replaced");
        assert!(String::from_utf8_lossy(&bad).contains("bad_request"));
        for kept in [
            &b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"{\"a\": 1}",
        ] {
            assert!(replacement(kept).is_none(), "{}", String::from_utf8_lossy(kept));
        }
    }
}
