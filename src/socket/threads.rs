//! Threads for live sockets: a single-threaded runtime per core, each socket placed on one
//! by the person it belongs to.
//!
//! A message wakes every socket of its chat. On tokio's shared runtime those tasks land on
//! either core, and each wake of an idle core is a futex and a context switch; at low load
//! a third of souq's samples were in switching threads (the benchmarks' history). A person's devices
//! are in the same chats, so keeping them on one thread keeps the wake-ups of a send by one
//! of them on one thread (the sender's own, where an idle SQLite writer at low load lets
//! it commit there), while different people still spread over the cores. HTTP and the
//! upgrade itself stay on the shared runtime.
//!
//! The price: a thread cannot hand its sockets to an idle one. One person with very many
//! busy sockets loads one core; many people spread evenly (the hash below).
//!
//! A single-threaded runtime woken from another thread (the SQLite writer's, another
//! socket thread, the Redis subscriber's) is woken by a system call each time, however
//! many of its tasks a batch wakes. So a socket woken from elsewhere is handed to its
//! thread's relay, which is woken once for all of them and wakes each there, without one.
//! The relay itself is woken once the batch's wakes are all handed over
//! ([`crate::wake::holding_wakes`]): it would otherwise take them as they come, from the
//! other core, and be woken again for nearly every one.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::domain::events::Person;
use crate::http::Slot;

/// The socket threads of a server, each with its runtime. Dropping them stops the threads:
/// each leaves its runtime by itself, dropping the sockets still on it.
#[derive(Debug, Default)]
pub struct SocketThreads {
    threads: Vec<SocketThread>,
}

#[derive(Debug)]
struct SocketThread {
    home: Home,
    /// Its thread runs until this is dropped. Never joined: the last holder of the app
    /// may be a socket on that very thread.
    _stop: oneshot::Sender<()>,
}

/// A socket thread, for spawning sockets on.
#[derive(Debug, Clone)]
pub(crate) struct Home {
    runtime: Handle,
    relay: Arc<Relay>,
}

/// The tasks of one socket thread woken from other threads, until its relay task wakes
/// them on the thread itself.
#[derive(Debug, Default)]
struct Relay {
    woken: Mutex<Vec<Waker>>,
    /// Wakes the relay task; a wake before it waits is kept for it.
    notify: tokio::sync::Notify,
}

thread_local! {
    /// On a socket thread, the address of its relay; 0 elsewhere.
    static RELAY: Cell<usize> = const { Cell::new(0) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-changed under these locks by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SocketThreads {
    /// Starts `threads` socket threads; with none, sockets stay on the runtime that
    /// accepted them. Fails only when the system cannot start a thread or a runtime.
    pub fn start(threads: usize) -> io::Result<SocketThreads> {
        let mut started = Vec::with_capacity(threads);
        for i in 0..threads {
            let relay = Arc::<Relay>::default();
            let (stop, stopped) = oneshot::channel::<()>();
            let (built_tx, built) = std::sync::mpsc::channel();
            let thread_relay = relay.clone();
            // The runtime is built on its own thread, and only ever dropped there: dropping
            // one on the caller's thread, an async one, would panic.
            std::thread::Builder::new()
                .name(format!("souq-sockets-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(built_tx.send(Err(e))),
                    };
                    let _ = built_tx.send(Ok(runtime.handle().clone()));
                    RELAY.set(Arc::as_ptr(&thread_relay) as usize);
                    runtime.block_on(async {
                        tokio::spawn(relay_wakes(thread_relay));
                        let _ = stopped.await;
                    });
                })?;
            let runtime = built
                .recv()
                .map_err(|_| io::Error::other("a socket thread ended before its runtime"))??;
            started.push(SocketThread {
                home: Home { runtime, relay },
                _stop: stop,
            });
        }
        Ok(SocketThreads { threads: started })
    }

    /// Runs `work` on the first socket thread (here, without any), so that the tasks it
    /// spawns and the connections it opens stay there. Panics where `work` panics.
    pub async fn run_on_first<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let Some(first) = self.threads.first() else {
            return work.await;
        };
        match first.home.runtime.spawn(work).await {
            Ok(output) => output,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The thread of `person`'s sockets, the same for all of them; `None` without any.
    pub(crate) fn of(&self, person: Person) -> Option<&Home> {
        self.index_of(person).map(|i| &self.threads[i].home)
    }

    fn index_of(&self, person: Person) -> Option<usize> {
        let (kind, id) = match person {
            Person::Customer(id) => (0u64, id),
            Person::Operator(id) => (1u64, id),
        };
        // A multiplicative hash: ids are dense, and people made one after another should
        // not all fall on one thread when their ids step by the number of threads. The
        // kind is in the low bit, so a customer and an operator of one id spread too.
        let key = ((id as u64) << 1) | kind;
        let mixed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let count = self.threads.len() as u64;
        (count > 0).then(|| (mixed % count) as usize)
    }
}

impl Home {
    /// Runs a socket's task on this thread, woken through the relay when woken from
    /// another.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(relayed(task, self.relay.clone()));
    }
}

/// Polls `task` with a waker of its own, which hands a wake from another thread to the
/// relay of `relay`'s thread.
fn relayed<F: Future>(task: F, relay: Arc<Relay>) -> impl Future<Output = F::Output> {
    // Boxed: pinned inside an async fn instead, the task would be held twice in its state
    // (the argument and the pinned copy), 2 KiB more for every socket.
    let mut task = Box::pin(task);
    let mut waker: Option<(Arc<SocketWaker>, Waker)> = None;
    std::future::poll_fn(move |cx| {
        let (socket, waker) = waker.get_or_insert_with(|| {
            let socket = Arc::new(SocketWaker {
                task: Mutex::new(cx.waker().clone()),
                relay: relay.clone(),
            });
            (socket.clone(), Waker::from(socket))
        });
        {
            let mut own = lock(&socket.task);
            if !own.will_wake(cx.waker()) {
                own.clone_from(cx.waker());
            }
        }
        task.as_mut().poll(&mut Context::from_waker(waker))
    })
}

/// The waker a socket's task is polled with.
#[derive(Debug)]
struct SocketWaker {
    /// The runtime's waker of the task.
    task: Mutex<Waker>,
    relay: Arc<Relay>,
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = lock(&self.task).clone();
        if RELAY.get() == Arc::as_ptr(&self.relay) as usize {
            return task.wake();
        }
        let first = {
            let mut woken = lock(&self.relay.woken);
            woken.push(task);
            woken.len() == 1
        };
        // Only the first since the relay last took the list: it takes the others with it.
        // Within a batch's wakes, the relay is woken once the batch is done; a wake from a
        // third thread meanwhile finds the list taken and waits for that too, at most
        // until the batch is answered.
        if first {
            crate::wake::wake_or_hold(Waker::from(self.relay.clone()));
        }
    }
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.notify.notify_one();
    }
}

/// The relay task of a socket thread: wakes, on the thread, the tasks woken from others.
async fn relay_wakes(relay: Arc<Relay>) {
    let mut woken = Vec::new();
    loop {
        relay.notify.notified().await;
        // A task woken after this finds the list empty, and notifies again.
        std::mem::swap(&mut *lock(&relay.woken), &mut woken);
        for task in woken.drain(..) {
            task.wake();
        }
    }
}

/// An upgraded socket's TCP stream, with whatever hyper had read past the upgrade request
/// (a client may send its first frame without waiting for the 101), read first.
pub(crate) struct Conn {
    early: Bytes,
    tcp: TcpStream,
    /// The connection's place among the node's connections, held while the socket lives.
    _slot: Option<Slot>,
}

impl Conn {
    pub(crate) fn new(early: Bytes, tcp: TcpStream, slot: Option<Slot>) -> Conn {
        // Copied: hyper's bytes, even none of them, hold on to its whole read buffer (8 KiB
        // and more), which the socket would keep for as long as it lives.
        Conn {
            early: Bytes::copy_from_slice(&early),
            tcp,
            _slot: slot,
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
    fn customers_and_operators_each_spread_over_the_socket_threads() {
        for count in [2, 3, 4] {
            let threads = SocketThreads::start(count).expect("threads");
            let kinds: [fn(i64) -> Person; 2] = [Person::Customer, Person::Operator];
            for kind in kinds {
                let mut on = vec![0; count];
                for id in 1..=600 {
                    on[threads.index_of(kind(id)).expect("a thread")] += 1;
                }
                let even = 600 / count;
                assert!(
                    on.iter().all(|n| n * 10 >= even * 8 && n * 10 <= even * 12),
                    "{count} threads, {:?}: {on:?}",
                    kind(0)
                );
            }
        }
        assert!(
            SocketThreads::default()
                .index_of(Person::Customer(1))
                .is_none()
        );
    }

    /// Tasks woken from another thread, many at once as a committed batch wakes them,
    /// all run: none is lost on the way through the relay.
    #[test]
    fn sockets_woken_from_another_thread_all_run() {
        let threads = SocketThreads::start(1).expect("a thread");
        let home = threads.of(Person::Customer(1)).expect("a thread").clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for round in 0..50 {
            let mut wake = Vec::new();
            for _ in 0..20 {
                let (tx, rx) = oneshot::channel::<()>();
                let done = done_tx.clone();
                home.spawn(async move {
                    let _ = rx.await;
                    let _ = done.send(());
                });
                wake.push(tx);
            }
            // Give the tasks time to wait, so that the sends below wake them.
            std::thread::sleep(std::time::Duration::from_millis(if round % 10 == 0 {
                20
            } else {
                1
            }));
            for tx in wake {
                let _ = tx.send(());
            }
        }
        for i in 0..1000 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{i} of 1000 tasks ran"));
        }
    }

    /// A committed batch wakes its sockets from the writer's thread inside
    /// `holding_wakes`: none of them runs until the batch is done, and then all do.
    #[test]
    fn sockets_woken_within_a_batch_run_once_it_is_done() {
        let threads = SocketThreads::start(1).expect("a thread");
        let home = threads.of(Person::Customer(1)).expect("a thread").clone();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut wake = Vec::new();
        for _ in 0..20 {
            let (tx, rx) = oneshot::channel::<()>();
            let (started, done) = (started_tx.clone(), done_tx.clone());
            home.spawn(async move {
                let mut rx = rx;
                let mut waiting = false;
                // Told only once the receiver is waiting, so that the send must wake it.
                std::future::poll_fn(|cx| {
                    let polled = Pin::new(&mut rx).poll(cx);
                    if polled.is_pending() && !std::mem::replace(&mut waiting, true) {
                        let _ = started.send(());
                    }
                    polled.map(|_| ())
                })
                .await;
                let _ = done.send(());
            });
            wake.push(tx);
        }
        let wait = std::time::Duration::from_secs(10);
        for _ in 0..20 {
            started.recv_timeout(wait).expect("every task waits");
        }
        crate::wake::holding_wakes(|| {
            for tx in wake {
                let _ = tx.send(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                done.try_recv().is_err(),
                "a task ran before the batch was done"
            );
        });
        for i in 0..20 {
            done.recv_timeout(wait)
                .unwrap_or_else(|_| panic!("{i} of 20 tasks ran after the batch"));
        }
    }

    /// Every socket's task is wrapped: the wrapper must not hold the task's state twice
    /// (2 KiB more per idle socket when it did).
    #[test]
    fn a_relayed_task_holds_its_state_once() {
        let task = async {
            let state = [1u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(state);
        };
        let size = std::mem::size_of_val(&task);
        // The task itself is on the heap, once.
        let inline = std::mem::size_of_val(&relayed(task, Arc::default()));
        assert!(inline < 256, "{inline} bytes beside a task of {size}");
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
            let mut conn = Conn::new(early, server, None);
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
