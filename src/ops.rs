//! The node as those who run it see it: `GET /healthz` answers while the process lives;
//! `GET /readyz` says whether it can serve (the database answers, Redis too where it is
//! configured, and it is not stopping), for a load balancer to send traffic by;
//! `GET /metrics` gives its counts (see [`crate::metrics`]) to Prometheus.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode, header};
use serde_json::json;

use crate::bus::Bus;
use crate::domain::Core;
use crate::http::{ApiError, HttpResponse, json_response};

/// How long each readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Ops {
    core: Arc<Core>,
    bus: Bus,
}

impl Ops {
    pub(crate) fn new(core: Arc<Core>, bus: Bus) -> Ops {
        Ops { core, bus }
    }

    /// Whether `path` is one of these endpoints.
    pub(crate) fn serves(path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz" | "/metrics")
    }

    pub(crate) async fn handle(&self, method: &Method, path: &str) -> HttpResponse {
        if method != Method::GET {
            return ApiError::method_not_allowed("GET").into_response();
        }
        match path {
            "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            "/metrics" => self.metrics(),
            _ => self.ready().await,
        }
    }

    fn metrics(&self) -> HttpResponse {
        let metrics = self.core.metrics();
        metrics.bus_queued.set(self.bus.queued() as i64);
        let mut response = HttpResponse::new(crate::http::full(Bytes::from(metrics.encode())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        response
    }

    async fn ready(&self) -> HttpResponse {
        let database = async {
            matches!(
                tokio::time::timeout(CHECK_TIMEOUT, self.core.store().db().ping()).await,
                Ok(Ok(()))
            )
        };
        let redis = async {
            tokio::time::timeout(CHECK_TIMEOUT, self.bus.redis_answers())
                .await
                .unwrap_or(Some(false))
        };
        let (database, redis) = tokio::join!(database, redis);
        let draining = self.bus.hub().is_draining();
        let word = |ok: bool| if ok { "ok" } else { "unavailable" };
        let ready = database && redis != Some(false) && !draining;
        let status = match (ready, draining) {
            (true, _) => "ready",
            (false, true) => "draining",
            (false, false) => "unavailable",
        };
        json_response(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            &json!({
                "status": status,
                "database": word(database),
                "redis": redis.map_or("not configured", word),
            }),
        )
    }
}
