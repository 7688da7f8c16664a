//! Which API answers a request: the socket at its path, then each seed API by its prefix,
//! and the native API for the rest. An API is a module of its own that plugs in here as a
//! [`Surface`]; the HTTP transport below knows none of them.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;

use crate::api::Api;
use crate::compat::{chatwhizz::Chatwhizz, hojre::Hojre, iqstore::Iqstore};
use crate::domain::Core;
use crate::http::{ApiError, HttpResponse, Req, Service, Surface};
use crate::hub::Hub;
use crate::socket::{self, Sockets};

/// The route table of a server.
#[derive(Debug)]
pub(crate) struct Router {
    sockets: Arc<Sockets>,
    /// APIs by path prefix; the first that matches answers.
    mounted: Vec<(&'static str, Box<dyn Surface>)>,
    /// Answers every path no prefix claims.
    native: Api,
    /// Largest request body read, in bytes.
    max_body_bytes: usize,
}

impl Router {
    pub(crate) fn new(
        core: Arc<Core>,
        hub: Arc<Hub>,
        sockets: Arc<Sockets>,
        max_body_bytes: usize,
    ) -> Router {
        let mounted: Vec<(&'static str, Box<dyn Surface>)> = vec![
            ("/admin/", Box::new(Chatwhizz::new(core.clone()))),
            ("/web/", Box::new(Hojre::new(core.clone()))),
            (
                "/public/api/v1/",
                Box::new(Iqstore::new(core.clone(), hub.clone())),
            ),
        ];
        Router {
            sockets,
            mounted,
            native: Api::new(core, hub),
            max_body_bytes,
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
    async fn call(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let response = if path == socket::PATH {
            socket::upgrade(self.sockets.clone(), req)
                .await
                .unwrap_or_else(ApiError::into_response)
        } else {
            let surface = self.surface(&path);
            match Req::read(req, self.max_body_bytes).await {
                Ok(req) => surface.handle(req).await,
                Err(e) => surface.refuse(e),
            }
        };
        tracing::debug!(%peer, %method, %path, status = response.status().as_u16(), "request");
        response
    }
}
