//! The HTTP transport: accepting connections, reading bounded bodies, the native error
//! shape, and stopping. It knows no route: the server hands it a [`Service`], and the APIs
//! plug into the router as [`Surface`]s.

mod error;
mod request;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use error::ApiError;
pub use request::{Req, parse_query};

pub type HttpResponse = Response<Full<Bytes>>;

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
/// connection to finish its current request and close; returns those still open.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    shutdown: impl Future<Output = ()>,
) -> Open {
    // Each connection task holds a receiver: `send` tells them all to wind down, and
    // `closed` resolves once the last one has dropped its receiver.
    let (stop_tx, stop_rx) = watch::channel(false);
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
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(service.clone(), stream, peer, stop_rx.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    Open { stop: stop_tx }
}

async fn connection<S: Service>(
    service: Arc<S>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, std::convert::Infallible>(service.call(req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service)
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
