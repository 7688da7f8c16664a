//! The HTTP transport: accepting connections, reading bounded bodies, the native error
//! shape, and stopping. It knows no route: the server hands it a [`Service`], and the APIs
//! plug into the router as [`Surface`]s.

mod error;
mod refusal;
mod request;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use error::ApiError;
pub use refusal::Answering;
pub use request::{
    BodyChunks, BodyError, Req, RequestId, RequestIds, client_address, parse_id, parse_query,
};

/// A response body: bytes in memory, or a stream of them (a file's).
pub type Body = http_body_util::Either<Full<Bytes>, StreamBody<BodyStream>>;
type BodyStream = BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>;

pub type HttpResponse = Response<Body>;

/// A body of bytes in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Either::Left(Full::new(bytes.into()))
}

/// A body streamed as its chunks come; an error ends the response early (the client sees
/// a cut-off body, not a complete one).
pub fn streamed<E>(chunks: impl Stream<Item = Result<Bytes, E>> + Send + 'static) -> Body
where
    E: std::error::Error + Send + Sync + 'static,
{
    http_body_util::Either::Right(StreamBody::new(
        chunks
            .map(|c| c.map(Frame::data).map_err(std::io::Error::other))
            .boxed(),
    ))
}

/// A JSON response.
pub fn json_response(status: hyper::StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response");
            (
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(br#"{"error":{"code":"internal","message":"internal error"}}"#),
            )
        }
    };
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// What the HTTP edge allows a client.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Largest request body read; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest a body may take to arrive; slower ones get 408.
    pub body_timeout: Duration,
    /// Most connections open at once (upgraded sockets included); past it, 503.
    pub max_connections: usize,
    /// Whether the client's address is the last entry of `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    /// Browser origins (`https://shop.example`) let call the cookie-authorised seed API
    /// (iqstore) besides the sites of the organisations' active domains; `*` lets any.
    pub cors_origins: Vec<String>,
}

/// The open-files limit of the process less 64 (kept for the database, Redis and files),
/// at least 64; 10,000 where the limit cannot be read.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    soft.map_or(10_000, |n| n.saturating_sub(64).max(64))
}

/// A connection's place among the `max_connections`: held by the connection, and by the
/// socket it upgrades to (the request carries it in its extensions), until both are gone.
#[derive(Debug, Clone)]
pub struct Slot(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// What answers the requests of a connection: the router.
pub trait Service: Send + Sync + 'static {
    /// Answers one request (every error is an answer too).
    fn call(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = HttpResponse> + Send;
}

/// An API the router serves under a path prefix: it answers requests read in full, and
/// words the refusal of those that could not be read (too large, cut off) in its own
/// error shape.
pub trait Surface: Send + Sync + std::fmt::Debug {
    fn handle<'a>(&'a self, req: Req) -> Pin<Box<dyn Future<Output = HttpResponse> + Send + 'a>>;

    /// Whether this request's body is left unread for the surface to stream (an upload);
    /// otherwise it is read whole, within the edge's limits, before [`Surface::handle`].
    fn streams(&self, _method: &hyper::Method, _path: &str) -> bool {
        false
    }

    /// The answer to a request whose body could not be read.
    fn refuse(&self, error: ApiError) -> HttpResponse {
        error.into_response()
    }
}

/// The connections still open once [`serve`] stopped accepting; each has been asked to
/// finish its current request and close.
#[derive(Debug)]
pub struct Open {
    stop: watch::Sender<bool>,
}

impl Open {
    /// Resolves once every connection has closed (upgraded sockets have left their HTTP
    /// connection behind, and are not counted).
    pub async fn closed(&self) {
        self.stop.closed().await;
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and asks every open
/// connection to finish its current request and close; returns those still open. Past
/// `max_connections` open at once, a new connection is answered 503 and closed.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> Open {
    // Each connection task holds a receiver: `send` tells them all to wind down, and
    // `closed` resolves once the last one has dropped its receiver.
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tokio::spawn(refuse_full(stream));
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let slot = Slot(Arc::new(slot));
                tokio::spawn(connection(service.clone(), stream, peer, slot, stop_rx.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    Open { stop: stop_tx }
}

/// Answers a connection past the limit with 503 and closes it. Its request's head is read
/// first (for a second at most): a client answered before it has asked takes the answer
/// for a broken connection.
async fn refuse_full(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    const BODY: &str =
        r#"{"error":{"code":"unavailable","message":"too many connections; try again"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

async fn connection<S: Service>(
    service: Arc<S>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |mut req: Request<Incoming>| {
        let service = service.clone();
        req.extensions_mut().insert(slot.clone());
        async move { Ok::<_, std::convert::Infallible>(service.call(req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(Answering::new(stream)), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
