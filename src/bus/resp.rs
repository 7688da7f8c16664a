//! Just enough RESP2 for the bus's own connections to Redis: commands out, replies in.
//!
//! The bus publishes and subscribes over connections of its own rather than the redis
//! crate's. That crate's pub/sub and multiplexed connections pass every message through a
//! task of their own and a channel, which between two nodes is two more task wake-ups per
//! event. Here the publishing task writes to the socket and the subscribing task reads
//! from it. Everything else (presence) still goes through the redis crate.

use bytes::{Bytes, BytesMut};

/// Appends a command, an array of bulk strings, to `out`.
pub(super) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    push_header(out, b'*', args.len());
    for arg in args {
        push_header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A reply from Redis. Its strings share the buffer they were read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Status(Bytes),
    Error(Bytes),
    Int(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Bytes>),
    /// `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bytes of a bulk or status string.
    pub(super) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) | Reply::Status(b) => Some(b),
            _ => None,
        }
    }
}

/// The stream is not RESP, or not RESP we read: the connection is dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from redis")]
pub(super) struct Malformed;

/// Longest bulk string taken (Redis's own limit is 512 MB; our frames are far smaller).
const MAX_BULK: usize = 64 * 1024 * 1024;

/// Deepest nesting of arrays taken (pub/sub replies are one deep).
const MAX_DEPTH: usize = 4;

/// Takes one whole reply off the front of `buf`; `Ok(None)` while it is still incomplete
/// (then nothing is taken).
pub(super) fn take(buf: &mut BytesMut) -> Result<Option<Reply>, Malformed> {
    let Some((node, end)) = parse(buf, 0, 0)? else {
        return Ok(None);
    };
    let frame = buf.split_to(end).freeze();
    Ok(Some(node.into_reply(&frame)))
}

/// A reply as positions in the buffer, before the buffer is cut.
enum Node {
    Status(usize, usize),
    Error(usize, usize),
    Int(i64),
    Bulk(Option<(usize, usize)>),
    Array(Option<Vec<Node>>),
}

impl Node {
    fn into_reply(self, frame: &Bytes) -> Reply {
        match self {
            Node::Status(a, b) => Reply::Status(frame.slice(a..b)),
            Node::Error(a, b) => Reply::Error(frame.slice(a..b)),
            Node::Int(n) => Reply::Int(n),
            Node::Bulk(range) => Reply::Bulk(range.map(|(a, b)| frame.slice(a..b))),
            Node::Array(items) => Reply::Array(
                items.map(|items| items.into_iter().map(|n| n.into_reply(frame)).collect()),
            ),
        }
    }
}

/// Parses the reply starting at `at`; returns it and where it ends.
fn parse(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Node, usize)>, Malformed> {
    let Some(line_end) = line_end(buf, at + 1) else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = (at + 1, line_end);
    let next = line_end + 2;
    Ok(Some(match kind {
        b'+' => (Node::Status(line.0, line.1), next),
        b'-' => (Node::Error(line.0, line.1), next),
        b':' => (Node::Int(int(&buf[line.0..line.1])?), next),
        b'$' => match int(&buf[line.0..line.1])? {
            -1 => (Node::Bulk(None), next),
            len if len >= 0 && len as usize <= MAX_BULK => {
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(Malformed);
                }
                (Node::Bulk(Some((next, end))), end + 2)
            }
            _ => return Err(Malformed),
        },
        b'*' => match int(&buf[line.0..line.1])? {
            -1 => (Node::Array(None), next),
            len if len >= 0 && depth < MAX_DEPTH => {
                let mut items = Vec::with_capacity((len as usize).min(64));
                let mut pos = next;
                for _ in 0..len {
                    let Some((item, end)) = parse(buf, pos, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    pos = end;
                }
                (Node::Array(Some(items)), pos)
            }
            _ => return Err(Malformed),
        },
        _ => return Err(Malformed),
    }))
}

/// Where the line starting at `from` ends (the index of its `\r\n`).
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let cr = rest.windows(2).position(|w| w == b"\r\n")?;
    Some(from + cr)
}

fn int(digits: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"souq:chat:7", b"hi\r\n"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$11\r\nsouq:chat:7\r\n$4\r\nhi\r\n\r\n"
        );
    }

    #[test]
    fn each_kind_of_reply_is_read() {
        let cases: &[(&[u8], Reply)] = &[
            (b"+OK\r\n", Reply::Status(Bytes::from_static(b"OK"))),
            (
                b"-NOPERM no\r\n",
                Reply::Error(Bytes::from_static(b"NOPERM no")),
            ),
            (b":-12\r\n", Reply::Int(-12)),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"$0\r\n\r\n", bulk("")),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\na\r\nb\r\n",
                Reply::Array(Some(vec![bulk("message"), bulk("c"), bulk("a\r\nb")])),
            ),
        ];
        for (wire, want) in cases {
            let mut buf = BytesMut::from(*wire);
            assert_eq!(take(&mut buf), Ok(Some(want.clone())), "{:?}", wire);
            assert!(buf.is_empty(), "all of {:?} taken", wire);
        }
    }

    #[test]
    fn an_incomplete_reply_waits_and_takes_nothing() {
        let whole: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n+OK\r\n";
        for cut in 0..whole.len() - 5 {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(take(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing taken at {cut}");
        }
        let mut buf = BytesMut::from(whole);
        assert!(matches!(take(&mut buf), Ok(Some(Reply::Array(Some(_))))));
        assert_eq!(
            take(&mut buf),
            Ok(Some(Reply::Status(Bytes::from_static(b"OK"))))
        );
        assert_eq!(take(&mut buf), Ok(None));
    }

    #[test]
    fn what_is_not_resp_is_refused() {
        for wire in [
            &b"?\r\n"[..],
            b":12x\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert_eq!(take(&mut BytesMut::from(wire)), Err(Malformed), "{wire:?}");
        }
    }
}
