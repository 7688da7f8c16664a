//! Threads for live sockets: a single-threaded runtime per core, each socket placed on one
//! by the person it belongs to.
//!
//! A message wakes every socket of its chat. On tokio's shared runtime those tasks land on
//! either core, and each wake of an idle core is a futex and a context switch; at low load
//! a third of souq's samples were in switching threads (BENCHMARKS.md). A person's devices
//! are in the same chats, so keeping them on one thread keeps the wake-ups of a send by one
//! of them on the thread that stored it, while different people still spread over the
//! cores. HTTP and the upgrade itself stay on the shared runtime.
//!
//! The price: a thread cannot hand its sockets to an idle one. One person with very many
//! busy sockets loads one core; many people spread evenly (the hash below).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::domain::events::Person;

/// The socket threads of a server, each with its runtime. Dropping them stops the threads:
/// each leaves its runtime by itself, dropping the sockets still on it.
#[derive(Debug, Default)]
pub struct Lanes {
    lanes: Vec<Lane>,
}

#[derive(Debug)]
struct Lane {
    runtime: Handle,
    /// Its thread runs until this is dropped. Never joined: the last holder of the app
    /// may be a socket on that very thread.
    _stop: oneshot::Sender<()>,
}

impl Lanes {
    /// Starts `threads` socket threads; with none, sockets stay on the runtime that
    /// accepted them. Fails only when the system cannot start a thread or a runtime.
    pub fn start(threads: usize) -> io::Result<Lanes> {
        let mut lanes = Vec::with_capacity(threads);
        for i in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("souq-sockets-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            lanes.push(Lane {
                runtime: handle,
                _stop: stop,
            });
        }
        Ok(Lanes { lanes })
    }

    /// Runs `work` on the first socket thread (here, without any), so that the tasks it
    /// spawns and the connections it opens stay there. Panics where `work` panics.
    pub async fn run_on_first<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(first) = self.lanes.first() else {
            return work.await;
        };
        match first.runtime.spawn(work).await {
            Ok(output) => output,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The runtime for `person`'s sockets, the same for all of them; `None` without lanes.
    pub(crate) fn of(&self, person: Person) -> Option<&Handle> {
        self.index_of(person).map(|i| &self.lanes[i].runtime)
    }

    fn index_of(&self, person: Person) -> Option<usize> {
        let (kind, id) = match person {
            Person::Customer(id) => (0u64, id),
            Person::Operator(id) => (1u64, id),
        };
        // A multiplicative hash: ids are dense, and people made one after another should
        // not all fall on one thread when their ids step by the number of threads.
        let mixed = ((id as u64) ^ (kind << 63)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let count = self.lanes.len() as u64;
        (count > 0).then(|| (mixed % count) as usize)
    }
}

/// An upgraded socket's TCP stream, with whatever hyper had read past the upgrade request
/// (a client may send its first frame without waiting for the 101), read first.
pub(crate) struct Conn {
    early: Bytes,
    tcp: TcpStream,
}

impl Conn {
    pub(crate) fn new(early: Bytes, tcp: TcpStream) -> Conn {
        // Copied: hyper's bytes, even none of them, hold on to its whole read buffer (8 KiB
        // and more), which the socket would keep for as long as it lives.
        Conn {
            early: Bytes::copy_from_slice(&early),
            tcp,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.early.has_remaining() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if !this.early.has_remaining() {
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_spread_over_the_socket_threads() {
        let lanes = Lanes::start(2).expect("threads");
        let mut on_first = 0;
        for id in 1..=200 {
            for person in [Person::Customer(id), Person::Operator(id)] {
                if lanes.index_of(person).expect("a lane") == 0 {
                    on_first += 1;
                }
            }
        }
        assert!(
            (150..=250).contains(&on_first),
            "{on_first} of 400 people on one of two threads"
        );
        assert!(Lanes::default().index_of(Person::Customer(1)).is_none());
    }

    #[test]
    fn bytes_read_past_the_upgrade_come_first_without_the_buffer_they_were_in() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bound");
            let mut client = TcpStream::connect(listener.local_addr().expect("an address"))
                .await
                .expect("connected");
            let (server, _) = listener.accept().await.expect("accepted");
            client.write_all(b" world").await.expect("written");
            drop(client);
            // As hyper leaves them: the bytes after the request, in its read buffer.
            let mut buffer = bytes::BytesMut::with_capacity(8192);
            buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nhello");
            let base = buffer.as_ptr() as usize;
            let early = buffer.split_off(18).freeze();
            let mut conn = Conn::new(early, server);
            let kept = conn.early.as_ptr() as usize;
            assert!(
                !(base..base + 8192).contains(&kept),
                "the socket holds hyper's read buffer"
            );
            let mut got = String::new();
            conn.read_to_string(&mut got).await.expect("read");
            assert_eq!(got, "hello world");
        });
    }
}
