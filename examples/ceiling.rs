//! The ceiling: the cheapest broadcast server the load generator can drive. A bare
//! tokio-tungstenite server with no persistence, no JSON, no auth: every text frame that a
//! socket of `/room/N` sends goes, as the same bytes, to every socket of room N (the sender
//! too). Its CPU per delivery is the floor souq is compared against in docs/benchmarks.md.
//!
//! It is built the way souq's live path first was (a reader and a writer task per socket,
//! the writer behind a bounded queue, frames shared rather than copied, queued frames
//! written before one flush), minus everything that makes a chat durable. souq has since
//! gone to one task and a 1 KiB read buffer per socket, so an idle socket costs it less
//! than one of these; the ceiling is the floor for CPU per delivery, not for memory.
//!
//! ```sh
//! cargo run --release --example ceiling -- 127.0.0.1:9090
//! cargo run --release --example loadgen -- --ceiling --nodes http://127.0.0.1:9090 \
//!     --chats 200 --members 5 --rate 10 --seconds 20 --pids $(pgrep -d, ceiling)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Queued frames per socket before a slow one is dropped.
const QUEUE: usize = 1024;

/// Room id → the queues of its sockets.
type Rooms = Arc<Mutex<HashMap<u64, Vec<(u64, mpsc::Sender<Utf8Bytes>)>>>>;

// The same allocator as souq.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("ceiling: listening on {}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(serve(stream, next_id, rooms.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let mut room = None;
    // The callback's error type is tungstenite's (an HTTP response); it never fails here.
    #[allow(clippy::result_large_err)]
    let pick_room = |req: &Request, resp: Response| {
        room = req
            .uri()
            .path()
            .strip_prefix("/room/")
            .and_then(|n| n.parse::<u64>().ok());
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024);
    let Ok(socket) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, pick_room, Some(config)).await
    else {
        return;
    };
    let Some(room) = room else { return };
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    lock(&rooms).entry(room).or_default().push((id, tx));
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(Message::Text(frame)).await.is_err() {
                return;
            }
            let mut taken = 1;
            while taken < 64 {
                let Ok(frame) = rx.try_recv() else { break };
                if sink.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
                taken += 1;
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(frame) = msg else { continue };
        let members: Vec<mpsc::Sender<Utf8Bytes>> = lock(&rooms)
            .get(&room)
            .map(|m| m.iter().map(|(_, tx)| tx.clone()).collect())
            .unwrap_or_default();
        for member in members {
            // A full queue drops the frame here; the load generator counts it as lost.
            let _ = member.try_send(frame.clone());
        }
    }
    if let Some(members) = lock(&rooms).get_mut(&room) {
        members.retain(|(m, _)| *m != id);
    }
    writer.abort();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
