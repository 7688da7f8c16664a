//! souq: a self-hosted real-time chat backend for marketplaces and support desks.
//!
//! The crate map, from the bottom up: each module imports only those above it in this
//! list (`grep -rn "^use crate" src` shows it), and calls go the same way.
//!
//! - [`metrics`]: what a server counts, for `/metrics`.
//! - [`clock`]: the time every rule reads (the system's; moved on by hand in tests).
//! - [`wake`]: wakes held back until a batch of work is done.
//! - [`store`]: the database: SQLite or PostgreSQL, migrations (`schema/migrations`),
//!   sea-orm entities, write transactions.
//! - [`objects`]: where file bytes live: a local folder or an S3-compatible store.
//! - [`domain`]: the core: organisations, operators, inboxes, chats, messages, receipts,
//!   tokens; who may see what. `domain::write` is the message path: the rules of a batch
//!   (plain code, no I/O), a journal per backend that carries them out, group commit.
//!   It announces what it commits through [`domain::Live`], and knows nothing of HTTP,
//!   sockets or Redis.
//! - [`hub`]: this node's live sockets: per-chat rooms, bounded mailboxes, long-poll
//!   waiters, and the frames they are handed, each event encoded once.
//! - [`bus`]: implements `Live`: a committed event goes to this node's hub and, with
//!   Redis, to the other nodes'; presence across nodes.
//! - [`outbox`]: delivers webhook events, which triggers write in each change's
//!   transaction (`domain::webhooks`), to the organisations' endpoints.
//! - [`http`]: the HTTP transport: connections, bounded bodies, the error shape. It knows
//!   no route: APIs plug in as `http::Surface`s.
//! - [`socket`]: the native live API, `/v1/ws`: upgrade, each socket's task and session.
//! - `api`: the native REST API, `/v1/...`, and the pages the server serves itself (`/`,
//!   `/console`, `/demo`, `/reference`, `/widget.js`; files under `api/web/`).
//! - `compat`: the three seed APIs on the wire (Chatwhizz, hojre, iqstore).
//! - `ops`: `/healthz`, `/readyz` and `/metrics`, for those who run the node.
//! - `router`: which API answers a path.
//! - [`config`]: one typed configuration from flags and environment, with defaults.
//!
//! [`Server`] ties them together: `Server::build(&config)`, then
//! `server.run_until_stopped(shutdown)`; tests build on port 0 and read `local_addr`.
//! docs/architecture.md follows one message through them.

mod api;
pub mod bus;
pub mod clock;
mod compat;
pub mod config;
pub mod domain;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod objects;
mod ops;
pub mod outbox;
pub mod push;
mod router;
pub mod socket;
pub mod store;
pub mod wake;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use clock::Clock;
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
    #[error("cannot start the message writer: {0}")]
    Core(#[from] domain::Error),
    #[error("cannot open the file store: {0}")]
    Files(String),
    #[error("cannot start the socket threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The core over the store (migrated), announcing through the bus, with the tasks of both.
async fn core(config: &Config, clock: Clock) -> Result<(domain::Core, bus::Bus), StartError> {
    let store = store::Store::open_with_writers(
        &config.database_url,
        config.db_max_connections,
        config.postgres_writers(),
        config.limits().write_timeout,
    )
    .await?;
    let metrics = Arc::new(metrics::Metrics::default());
    let hub = Arc::new(hub::Hub::with_metrics(metrics.clone()));
    let bus = match config.redis() {
        Some(redis) => bus::Bus::with_redis(hub, redis, clock.clone()).await?,
        None => bus::Bus::new(hub),
    };
    let objects = objects::Objects::open(&config.file_place()?)
        .map_err(|e| StartError::Files(e.to_string()))?;
    let core = domain::Core::new(
        store,
        config.limits(),
        Arc::new(bus.clone()),
        clock,
        metrics,
        domain::Files::new(objects, config.file_limits()),
    )?;
    Ok((core, bus))
}

/// Sets offline the operators whose nodes all died (with Redis, every node sweeps; the
/// conditional update in the core makes one of them announce it), and online again those
/// connected here whom a node took for gone while Redis was away. Sweeps every `every`,
/// and at once when Redis comes back.
async fn sweep_presence(core: std::sync::Weak<domain::Core>, bus: bus::Bus, every: Duration) {
    loop {
        bus.next_sweep(every).await;
        let Some(core) = core.upgrade() else { return };
        for operator_id in bus.expired_operators().await {
            if let Err(e) = core.operator_disconnected(operator_id).await {
                tracing::warn!(error = %e, operator_id, "cannot set an operator offline");
            }
        }
        if let Err(e) = core.operators_connected(&bus.hub().local_operators()).await {
            tracing::warn!(error = %e, "cannot set this node's operators online");
        }
    }
}

/// Removes the bytes of files past their organisation's retention, and uploads never
/// sent, a round every `every` (and more rounds at once while a round comes back full).
async fn remove_expired_files(core: std::sync::Weak<domain::Core>, every: Duration) {
    /// Runs rounds of at most 500 until one comes back short.
    async fn until_done<F: Future<Output = Result<u64, domain::Error>>>(
        what: &str,
        round: impl Fn() -> F,
    ) {
        loop {
            match round().await {
                Ok(500..) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove {what}");
                    break;
                }
            }
        }
    }
    loop {
        tokio::time::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        until_done("expired files", || core.remove_expired_files()).await;
        until_done("unsent uploads", || core.remove_unsent_uploads()).await;
    }
}

/// Looks for members to tell of unread messages, every `every` (one node at a time does
/// the work: see `domain::notify`).
async fn notify(core: std::sync::Weak<domain::Core>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        if let Err(e) = core.notify_round().await {
            tracing::warn!(error = %e, "cannot look for members to notify");
        }
    }
}

/// Routes the queued chats of every inbox, every `every`: what a node did not see happen
/// (an operator came online on another node, a router stopped half way). See
/// `domain::routing`.
async fn route(core: std::sync::Weak<domain::Core>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        if let Err(e) = core.route_queued().await {
            tracing::warn!(error = %e, "cannot route queued chats");
        }
    }
}

/// Adds new messages to the SQLite search index, every `every` (and more rounds at once
/// while a round comes back full). PostgreSQL's index keeps itself: not started there.
async fn index_messages(core: std::sync::Weak<domain::Core>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        loop {
            match core.index_messages().await {
                Ok(n) if n >= domain::search::INDEXER.round => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot index messages for search");
                    break;
                }
            }
        }
    }
}

/// How often each node routes what waits in queues.
const ROUTE_EVERY: Duration = Duration::from_secs(2);

/// How often each node offers to look for members to notify.
const NOTIFY_EVERY: Duration = Duration::from_secs(1);

/// How often each node looks for files past their retention.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// A bound, ready server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    core: Arc<domain::Core>,
    bus: bus::Bus,
    router: Arc<router::Router>,
    /// Kept until the database is closed: the store's and the writers' tasks run on the
    /// first of them.
    threads: Arc<socket::SocketThreads>,
    grace: Duration,
    delay: Duration,
    max_connections: usize,
}

impl Server {
    /// Checks the config, opens the database (applying migrations) and binds the port.
    pub async fn build(config: &Config) -> Result<Server, StartError> {
        Server::build_with(config, Clock::system()).await
    }

    /// [`Server::build`] with the clock every rule of the server reads (tests move theirs).
    pub async fn build_with(config: &Config, clock: Clock) -> Result<Server, StartError> {
        config.validate()?;
        let threads = Arc::new(
            socket::SocketThreads::start(config.socket_threads()).map_err(StartError::Threads)?,
        );
        // The store and the bus are opened on the first socket thread, where their tasks
        // then run (the PostgreSQL writers, the Redis connections, the pool's upkeep): what
        // they wake is sockets, and some of those are on that thread instead of none.
        let owned = config.clone();
        let (core, bus) = threads
            .run_on_first(async move { core(&owned, clock).await })
            .await?;
        let core = Arc::new(core);
        let sockets = socket::Sockets::start(
            core.clone(),
            bus.clone(),
            config.ws_limits(),
            threads.clone(),
        );
        let router = Arc::new(router::Router::new(
            core.clone(),
            bus.clone(),
            sockets,
            config.edge(),
        ));
        tokio::spawn(bus::reconcile(
            Arc::downgrade(&core),
            bus.hub().clone(),
            bus::RECONCILE_EVERY,
        ));
        tokio::spawn(remove_expired_files(Arc::downgrade(&core), RETENTION_EVERY));
        core.sync_webhook_triggers().await?;
        tokio::spawn(outbox::run(
            Arc::downgrade(&core),
            config.webhook_settings(),
        ));
        tokio::spawn(outbox::deliveries::run(
            Arc::downgrade(&core),
            config.delivery_settings(),
        ));
        tokio::spawn(notify(Arc::downgrade(&core), NOTIFY_EVERY));
        tokio::spawn(route(Arc::downgrade(&core), ROUTE_EVERY));
        if core.store().backend() == sea_orm::DbBackend::Sqlite {
            tokio::spawn(index_messages(
                Arc::downgrade(&core),
                domain::search::INDEXER.every,
            ));
        }
        if let Some(every) = bus.sweep_every() {
            tokio::spawn(sweep_presence(Arc::downgrade(&core), bus.clone(), every));
        }
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        Ok(Server {
            listener,
            core,
            bus,
            router,
            threads,
            grace: config.shutdown_grace(),
            delay: config.shutdown_delay(),
            max_connections: config.edge().max_connections,
        })
    }

    /// The address actually bound (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The core, for work before serving (such as creating an organisation in a test).
    pub fn core(&self) -> &domain::Core {
        &self.core
    }

    /// The core, shared (a test keeps it to run a housekeeping round by hand).
    pub fn shared_core(&self) -> Arc<domain::Core> {
        self.core.clone()
    }

    /// This node's live sockets and waiters, for watching them (in a test, say).
    pub fn hub(&self) -> Arc<hub::Hub> {
        self.bus.hub().clone()
    }

    /// Serves until `shutdown` resolves, and on for the shutdown delay while `/readyz`
    /// says it is draining; then stops accepting, answers every waiting long-poll, lets
    /// every socket answer its sends in flight and close (1001) and every connection
    /// finish its request, waits for them (within the grace period), and closes the
    /// database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            core,
            bus,
            router,
            threads,
            grace,
            delay,
            max_connections,
        } = self;
        let hub = bus.hub().clone();
        let draining = async {
            shutdown.await;
            hub.drain();
            tokio::time::sleep(delay).await;
        };
        let open = http::serve(listener, router.clone(), max_connections, draining).await;
        // Sockets get a close (1001) so that their clients reconnect elsewhere.
        hub.shutdown();
        let drained = async {
            open.closed().await;
            // Upgraded sockets left their HTTP connection behind; wait for their sessions.
            while !hub.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        drop(router);
        match Arc::try_unwrap(core) {
            Ok(core) => {
                if let Err(e) = core.into_store().close().await {
                    tracing::warn!(error = %e, "closing the database failed");
                }
            }
            Err(_) => tracing::debug!("requests still hold the core; the pool closes on exit"),
        }
        // Only now may the socket threads stop.
        drop(threads);
    }
}
