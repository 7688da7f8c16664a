//! Which API answers a request: the socket at its path, the node's health and readiness,
//! then each seed API by its prefix, and the native API for the rest. An API is a module of its own that plugs in here as a
//! [`Surface`]; the HTTP transport below knows none of them.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;

use crate::api::Api;
use crate::bus::Bus;
use crate::compat::{chatwhizz::Chatwhizz, hojre::Hojre, iqstore::Iqstore};
use crate::domain::Core;
use crate::http::{
    ApiError, Edge, HttpResponse, Req, RequestId, RequestIds, Service, Surface, client_address,
};
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::socket::{self, Sockets};

/// The route table of a server.
#[derive(Debug)]
pub(crate) struct Router {
    sockets: Arc<Sockets>,
    /// `/healthz`, `/readyz` and `/metrics`.
    ops: Ops,
    /// APIs by path prefix; the first that matches answers.
    mounted: Vec<(&'static str, Box<dyn Surface>)>,
    /// Answers every path no prefix claims.
    native: Api,
    /// What a client may send.
    edge: Edge,
    /// Names each request that does not bring its own id.
    ids: RequestIds,
    /// Counts the responses.
    metrics: Arc<Metrics>,
}

impl Router {
    pub(crate) fn new(core: Arc<Core>, bus: Bus, sockets: Arc<Sockets>, edge: Edge) -> Router {
        let hub = bus.hub().clone();
        let metrics = core.metrics().clone();
        let mounted: Vec<(&'static str, Box<dyn Surface>)> = vec![
            ("/admin/", Box::new(Chatwhizz::new(core.clone()))),
            ("/web/", Box::new(Hojre::new(core.clone()))),
            (
                "/public/api/v1/",
                Box::new(Iqstore::new(
                    core.clone(),
                    hub.clone(),
                    edge.cors_origins.clone(),
                )),
            ),
        ];
        Router {
            sockets,
            ops: Ops::new(core.clone(), bus),
            mounted,
            native: Api::new(core, hub),
            edge,
            ids: RequestIds::default(),
            metrics,
        }
    }

    fn surface(&self, path: &str) -> &dyn Surface {
        self.mounted
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map_or(&self.native, |(_, surface)| &**surface)
    }
}

impl Service for Router {
    async fn call(self: &Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let id = RequestId::of(&req, &self.ids);
        req.extensions_mut().insert(id.clone());
        let started = std::time::Instant::now();
        let mut response = if path == socket::PATH {
            socket::upgrade(self.sockets.clone(), req)
                .await
                .unwrap_or_else(ApiError::into_response)
        } else if Ops::serves(&path) {
            self.ops.handle(&method, &path).await
        } else {
            let surface = self.surface(&path);
            let client = client_address(req.headers(), peer, self.edge.trust_forwarded_for);
            if surface.streams(&method, &path) {
                surface.handle(Req::streamed(req, client, &self.edge)).await
            } else {
                match Req::read(req, client, &self.edge).await {
                    Ok(req) => surface.handle(req).await,
                    Err(e) => surface.refuse(e),
                }
            }
        };
        tracing::info!(
            request_id = %id,
            %peer,
            %method,
            %path,
            status = response.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        id.answer(&mut response);
        let class = match response.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.metrics
            .responses
            .get_or_create(&Metrics::label("class", class))
            .inc();
        response
    }
}
