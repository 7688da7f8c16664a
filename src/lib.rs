//! souq: a self-hosted real-time chat backend for marketplaces and support desks.
//!
//! The crate map, in the direction calls go (http/api → domain → store):
//!
//! - [`config`]: one typed configuration from flags and environment, with defaults.
//! - [`http`]: the hyper server: connections, bounded bodies, the error shape, shutdown,
//!   the WebSocket and the threads its sockets run on.
//! - `api`: the native REST API `/v1/...`: routes and handlers over the core.
//! - `compat`: the seed APIs on the wire (Chatwhizz `/admin/...`), adapters over the core.
//! - [`domain`]: the core: organisations, operators, inboxes, chats, messages, receipts,
//!   tokens; who may see what. Knows nothing of HTTP.
//! - [`store`]: sea-orm entities, migrations (from `schema/migrations`), transactions.
//! - [`bus`]: fan-out of committed events, each encoded once (domain → bus → hub).
//! - [`hub`]: this node's live sockets: per-chat rooms, bounded session queues,
//!   long-poll waiters. Knows nothing of the database.
//!
//! [`Server`] ties them together: `Server::build(&config)`, then
//! `server.run_until_stopped(shutdown)`; tests build on port 0 and read `local_addr`.

mod api;
pub mod bus;
mod compat;
pub mod config;
pub mod domain;
pub mod http;
pub mod hub;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot reach redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot start the socket threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The core: the store (migrated) and the bus, with the tasks of both.
async fn core(config: &Config) -> Result<domain::Core, StartError> {
    let store = store::Store::open_with_writers(
        &config.database_url,
        config.db_max_connections,
        config.postgres_writers(),
    )
    .await?;
    let hub = Arc::new(hub::Hub::new());
    let bus = match config.redis() {
        Some(redis) => bus::Bus::with_redis(hub, redis).await?,
        None => bus::Bus::new(hub),
    };
    Ok(domain::Core::new(store, config.limits(), bus))
}

/// Sets offline the operators whose nodes all died (with Redis, every node sweeps; the
/// conditional update in the core makes one of them announce it).
async fn sweep_presence(app: std::sync::Weak<http::App>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(app) = app.upgrade() else { return };
        for operator_id in app.core.bus().expired_operators().await {
            if let Err(e) = app.core.operator_disconnected(operator_id).await {
                tracing::warn!(error = %e, operator_id, "cannot set an operator offline");
            }
        }
    }
}

/// A bound, ready server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: Arc<http::App>,
    grace: Duration,
}

impl Server {
    /// Checks the config, opens the database (applying migrations) and binds the port.
    pub async fn build(config: &Config) -> Result<Server, StartError> {
        config.validate()?;
        let sockets =
            http::SocketThreads::start(config.socket_threads()).map_err(StartError::Threads)?;
        // The store and the bus are opened on the first socket thread, where their tasks
        // then run (the PostgreSQL writers, the Redis connections, the pool's upkeep): what
        // they wake is sockets, and some of those are on that thread instead of none.
        let owned = config.clone();
        let core = sockets
            .run_on_first(async move { core(&owned).await })
            .await?;
        let app = Arc::new(http::App::new(
            core,
            config.max_body_bytes,
            config.ws_limits(),
            sockets,
        ));
        if let Some(every) = app.core.bus().sweep_every() {
            tokio::spawn(sweep_presence(Arc::downgrade(&app), every));
        }
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        Ok(Server {
            listener,
            app,
            grace: config.shutdown_grace(),
        })
    }

    /// The address actually bound (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The core, for work before serving (such as creating an organisation in a test).
    pub fn core(&self) -> &domain::Core {
        &self.app.core
    }

    /// Serves until `shutdown` resolves, then drains open requests (within the grace
    /// period) and closes the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        http::serve(self.listener, self.app.clone(), shutdown, self.grace).await;
        match Arc::try_unwrap(self.app) {
            Ok(app) => {
                if let Err(e) = app.core.into_store().close().await {
                    tracing::warn!(error = %e, "closing the database failed");
                }
            }
            Err(_) => tracing::debug!("requests still hold the app; the pool closes on exit"),
        }
    }
}
