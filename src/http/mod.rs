//! The hyper server: accepting connections, reading bounded bodies, routing, turning
//! errors into the one JSON error shape, and graceful shutdown.

mod error;
pub(crate) mod request;
mod threads;
mod ws;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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
pub use request::Req;
pub use threads::SocketThreads;
pub use ws::WsLimits;

use crate::domain::Core;

/// Everything a request handler can reach.
#[derive(Debug)]
pub struct App {
    pub core: Core,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    pub ws: WsLimits,
    /// The threads live sockets run on.
    pub sockets: SocketThreads,
    pub(crate) routes: crate::api::Routes,
}

impl App {
    pub fn new(core: Core, max_body_bytes: usize, ws: WsLimits, sockets: SocketThreads) -> Self {
        App {
            core,
            max_body_bytes,
            ws,
            sockets,
            routes: crate::api::Routes::new(),
        }
    }
}

pub type HttpResponse = Response<Full<Bytes>>;

/// Serves `listener` until `shutdown` resolves, then stops accepting, asks every open
/// connection to finish its current request and close, and waits up to `grace` for them.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    // Each connection task holds a receiver: `send` tells them all to wind down, and
    // `closed` resolves once the last one has dropped its receiver.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(heartbeat(Arc::downgrade(&app)));
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
                tokio::spawn(connection(app.clone(), stream, peer, stop_rx.clone()));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Sockets get a close (1001) so that their clients reconnect elsewhere.
    app.core.bus().hub().shutdown();
    let drained = async {
        stop_tx.closed().await;
        // Upgraded sockets left their HTTP connection behind; wait for their sessions.
        while !app.core.bus().hub().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Pings every live socket once per `ping_every`, a slice of them at a time, until the
/// app is dropped. A socket silent for longer than the idle timeout closes on its ping.
async fn heartbeat(app: std::sync::Weak<App>) {
    const SLICES: u32 = 16;
    let Some(every) = app.upgrade().map(|a| a.ws.ping_every / SLICES) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for slice in (0..u64::from(SLICES)).cycle() {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.core.bus().hub().heartbeat(slice, u64::from(SLICES));
    }
}

async fn connection(
    app: Arc<App>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| handle(app.clone(), peer, req));
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

async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = if path == "/v1/ws" {
        ws::upgrade(app.clone(), req).await
    } else {
        match Req::read(req, app.max_body_bytes).await {
            Ok(req) if req.path.starts_with("/admin/") => {
                Ok(crate::compat::chatwhizz::handle(&app, req).await)
            }
            Ok(req) if req.path.starts_with("/web/") => {
                Ok(crate::compat::hojre::handle(&app, req).await)
            }
            Ok(req) if req.path.starts_with("/public/api/v1/") => {
                Ok(crate::compat::iqstore::handle(&app, req).await)
            }
            Ok(req) => crate::api::dispatch(&app, req).await,
            Err(e) if path.starts_with("/admin/") => Ok(crate::compat::chatwhizz::envelope(
                e.status,
                &serde_json::json!({"status": 0, "message": e.message}),
            )),
            Err(e) if path.starts_with("/web/") => Ok(crate::compat::hojre::error(&e.message)),
            Err(e) if path.starts_with("/public/api/v1/") => {
                Ok(crate::compat::iqstore::failure(&e.message))
            }
            Err(e) => Err(e),
        }
    };
    let response = response.unwrap_or_else(|e| e.into_response());
    tracing::debug!(%peer, %method, %path, status = response.status().as_u16(), "request");
    Ok(response)
}
