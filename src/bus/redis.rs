//! The Redis bus: fan-out between nodes over Redis pub/sub.
//!
//! Channels: `{prefix}:chat:{id}` for a chat's room, `{prefix}:person:{c|o}:{id}` for what
//! reaches a person before they are in a room (a new chat), and `{prefix}:broadcasts` for
//! store broadcasts (one event carrying its whole audience). A node subscribes to a chat's
//! channel while it has a socket in that room, and to a person's while it has a socket of
//! theirs; the hub tells it when. Every node listens to the broadcasts channel always: one
//! broadcast is one publish, and each node hands it to the audience's sockets it holds.
//! The publishing node delivers to its own hub directly and skips its own messages when
//! they come back from Redis.
//!
//! Events travel over two connections of the bus's own (see `resp`), in the clear or over
//! TLS (`rediss://`): a publisher that writes whatever is queued without waiting for the
//! answers to what it wrote before, and a subscriber that reads and delivers in the same
//! task. Presence uses the `redis` crate. (Its pub/sub was measured in their place: in the
//! 3-node closed loop it took 16% to 19% more of souq's CPU per delivery, its RESP parser
//! most of it, and doubled the p99; docs/benchmarks.md.)
//!
//! Guarantee: at most once, like the in-process bus. An event that cannot be queued (the
//! queue to Redis is full) or may not have reached Redis (the publisher's connection
//! broke before Redis answered) is dropped, and its chat is marked: once the publisher
//! can write again it tells the other nodes to catch that chat up from the database.
//! After the subscriber reconnects, every local socket catches up from the database by
//! seq. So nothing committed is lost to a client.
//!
//! Presence across nodes: `{prefix}:presence:{operator}` is a sorted set of the nodes
//! holding a socket of the operator, scored by an expiry that each node refreshes while
//! it holds one. An operator is online while any entry is unexpired; a node that dies
//! stops refreshing, and the sweep of any other node sets the operator offline.
//!
//! Customers, far more numerous, cost a node two commands a refresh instead of one per
//! person: `{prefix}:customers:{node}` is the set of customers with a socket on that node
//! (a member added with the first socket, removed with the last), kept alive by an
//! expiry each refresh pushes on, and `{prefix}:nodes` scores each node by its expiry. A
//! customer is connected while a live node's set holds them.

mod cluster;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashSet;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Client, ConnectionAddr, ConnectionInfo, RedisResult};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::resp::{self, Reply};
use crate::clock::Clock;
use crate::domain::events::Person;
use crate::hub::{Envelope, Hub, Interest, Route, Topic, Wakes};

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or, with TLS, `rediss://`.
    pub url: String,
    /// PEM file of the certificate authority that signed Redis's certificate (a private
    /// CA), trusted instead of the system's roots; with `rediss://` only.
    pub ca_file: Option<std::path::PathBuf>,
    /// `url` names a Redis Cluster: one or more of its nodes, comma-separated; events
    /// go over sharded pub/sub (see `cluster`).
    pub cluster: bool,
    /// Prefix of every key and channel, so that several deployments (or tests) can share
    /// one Redis.
    pub prefix: String,
    /// How long a node's claim that an operator is connected lasts unless refreshed.
    pub presence_ttl: Duration,
}

/// What travels on a channel besides the frame itself.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// The publishing node.
    o: String,
    /// Event id, for dropping the copies that arrive over several channels.
    i: u64,
    r: Route,
    s: Option<i64>,
}

/// The client for `config`: with a CA file, one that trusts it (over TLS).
fn client(config: &RedisConfig) -> RedisResult<Client> {
    // rustls needs a crypto provider chosen for the process; installing it a second
    // time is refused, and harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &config.ca_file {
        None => Client::open(config.url.as_str()),
        Some(file) => {
            let root_cert = std::fs::read(file)?;
            Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
        }
    }
}

/// How the bus's own connections reach Redis: the address, and over TLS the connector
/// with the roots it trusts.
struct Dialer {
    info: ConnectionInfo,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("addr", &self.info.addr().to_string())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// The dialer of `info`; over TLS, trusting the CA of `ca_file` or else the system's
    /// roots (as the presence connection does). Fails when the CA file cannot be read or
    /// holds no certificate.
    fn new(info: ConnectionInfo, ca_file: Option<&std::path::Path>) -> RedisResult<Dialer> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            return Ok(Dialer { info, tls: None });
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(file) => {
                let pem = std::fs::read(file)?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                    })?;
                if certs.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("no certificate in {}", file.display()),
                    )
                    .into());
                }
                roots.add_parsable_certificates(certs);
            }
            // The system's roots; those that cannot be read are left out.
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Dialer {
            info,
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }
}

/// The redis crate's connection: to one Redis, or to a cluster (routing each command by
/// its key's slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How events travel: over the bus's own two connections to one Redis, or over the
/// cluster connection, with the pushes its subscriptions bring.
enum Links {
    Single(Arc<Dialer>),
    Cluster(ClusterConnection, mpsc::UnboundedReceiver<redis::PushInfo>),
}

#[derive(Debug)]
pub struct RedisBus {
    node: String,
    config: RedisConfig,
    hub: Arc<Hub>,
    /// Presence claims expire by it (every node's clock is the system's but in tests).
    clock: Clock,
    /// For presence; with one Redis, events go over connections of the bus's own (see
    /// `resp`), with a cluster over this one too (see `cluster`).
    conn: Conn,
    outgoing: mpsc::Sender<Publish>,
    /// Channels this node wants, kept so that a new subscriber connection can restore them.
    wanted: DashSet<String>,
    /// Ids of recent multi-channel events, to deliver each once.
    seen: Mutex<(VecDeque<u64>, HashSet<u64>)>,
    /// Chats with events dropped on a full queue: the publisher tells the other nodes to
    /// catch these chats up from the database once the queue has room.
    dropped: Mutex<HashSet<i64>>,
    /// Bumped each time the subscriber reconnects after losing Redis (which may have
    /// restarted, its presence claims gone): the refresher claims again at once, and the
    /// presence sweep repairs what was decided meanwhile.
    returned: tokio::sync::watch::Sender<u64>,
    /// Until then (clock ms) presence claims may be missing, Redis having just come
    /// back: an operator's last socket here closing is not taken for their last anywhere.
    unsure_until: std::sync::atomic::AtomicI64,
    /// Operators whose going offline was put off while claims were unsure.
    deferred: Mutex<HashSet<i64>>,
}

impl RedisBus {
    /// Connects (failing if Redis cannot be reached at start) and starts the publisher,
    /// the subscriber and the presence refresher of this node.
    pub async fn start(
        config: RedisConfig,
        hub: Arc<Hub>,
        clock: Clock,
    ) -> redis::RedisResult<Arc<RedisBus>> {
        let (conn, links) = if config.cluster {
            let (pushes, push_rx) = mpsc::unbounded_channel();
            let conn = cluster::connect(&config, pushes).await?;
            (Conn::Cluster(conn.clone()), Links::Cluster(conn, push_rx))
        } else {
            let client = client(&config)?;
            let conn = client.get_connection_manager().await?;
            let dialer = Arc::new(Dialer::new(
                client.get_connection_info().clone(),
                config.ca_file.as_deref(),
            )?);
            (Conn::Single(conn), Links::Single(dialer))
        };
        let node = format!("{:016x}", rand::random::<u64>());
        let (outgoing, out_rx) = mpsc::channel(16 * 1024);
        let (control, control_rx) = mpsc::unbounded_channel();
        let bus = Arc::new(RedisBus {
            node,
            config,
            hub: hub.clone(),
            clock,
            conn,
            outgoing,
            wanted: DashSet::new(),
            seen: Mutex::new((VecDeque::new(), HashSet::new())),
            dropped: Mutex::new(HashSet::new()),
            returned: tokio::sync::watch::Sender::new(0),
            unsure_until: std::sync::atomic::AtomicI64::new(0),
            deferred: Mutex::new(HashSet::new()),
        });
        hub.watch_interest(control);
        // Subscribed at the subscriber's start, and kept.
        bus.wanted.insert(bus.broadcasts_channel());
        let weak = Arc::downgrade(&bus);
        match links {
            Links::Single(dialer) => {
                tokio::spawn(publisher(weak.clone(), dialer.clone(), out_rx));
                tokio::spawn(subscriber(weak.clone(), dialer, control_rx));
            }
            Links::Cluster(conn, push_rx) => {
                tokio::spawn(cluster::publisher(weak.clone(), conn.clone(), out_rx));
                tokio::spawn(cluster::subscriber(weak.clone(), conn, control_rx, push_rx));
            }
        }
        tokio::spawn(refresher(weak.clone()));
        tokio::spawn(customers_refresher(weak));
        Ok(bus)
    }

    fn chat_channel(&self, chat_id: i64) -> String {
        format!("{}:chat:{chat_id}", self.config.prefix)
    }

    fn broadcasts_channel(&self) -> String {
        format!("{}:broadcasts", self.config.prefix)
    }

    /// The chat whose channel `channel` is, if it is one of this deployment's chats'.
    fn chat_of(&self, channel: &str) -> Option<i64> {
        channel
            .strip_prefix(self.config.prefix.as_str())?
            .strip_prefix(":chat:")?
            .parse()
            .ok()
    }

    fn channel_of(&self, topic: &Topic) -> String {
        match topic {
            Topic::Chat(id) => self.chat_channel(*id),
            Topic::Person(Person::Customer(id)) => format!("{}:person:c:{id}", self.config.prefix),
            Topic::Person(Person::Operator(id)) => format!("{}:person:o:{id}", self.config.prefix),
        }
    }

    /// Sends an event to the other nodes. Never waits: when the queue to Redis is full
    /// the event is dropped (sockets recover it by seq).
    pub fn publish(&self, env: &Envelope) {
        // Each channel with the chat to catch up if its copy is lost.
        let channels: Vec<(String, Option<i64>)> = match &env.route {
            Route::Room(chat_id) | Route::Resync(chat_id) => {
                vec![(self.chat_channel(*chat_id), Some(*chat_id))]
            }
            Route::JoinRoom { chat_id, people } => people
                .iter()
                .map(|p| self.channel_of(&Topic::Person(*p)))
                .chain(std::iter::once(self.chat_channel(*chat_id)))
                .map(|channel| (channel, Some(*chat_id)))
                .collect(),
            Route::Rooms(ids) => ids
                .iter()
                .map(|id| (self.chat_channel(*id), Some(*id)))
                .collect(),
            // A lost re-check is not recovered here; the person's next one, or a
            // reconnect, corrects it.
            Route::Recheck(person) | Route::Person(person) => {
                vec![(self.channel_of(&Topic::Person(*person)), None)]
            }
            // A lost broadcast is not recovered live: its audience finds it in their
            // listing.
            Route::Customers(_) => vec![(self.broadcasts_channel(), None)],
        };
        let Some(payload) = self.payload(&env.route, env.seq, env.frame.as_bytes()) else {
            return;
        };
        for (channel, chat) in channels {
            let publish = Publish {
                channel,
                payload: payload.clone(),
                chat,
            };
            let metrics = self.hub.metrics();
            match self.outgoing.try_send(publish) {
                Ok(()) => {
                    metrics.bus_published.inc();
                }
                Err(mpsc::error::TrySendError::Full(p)) => {
                    metrics.bus_dropped.inc();
                    self.note_dropped(p.chat);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            };
        }
    }

    /// Events queued for Redis, not yet written.
    pub fn queued(&self) -> usize {
        self.outgoing.max_capacity() - self.outgoing.capacity()
    }

    /// A header line, then the frame.
    fn payload(&self, route: &Route, seq: Option<i64>, frame: &[u8]) -> Option<Bytes> {
        let header = Header {
            o: self.node.clone(),
            i: rand::random(),
            r: route.clone(),
            s: seq,
        };
        let mut payload = serde_json::to_vec(&header).ok()?;
        payload.push(b'\n');
        payload.extend_from_slice(frame);
        Some(payload.into())
    }

    /// Remembers a chat whose event could not be queued, or was lost on the way to Redis.
    fn note_dropped(&self, chat: Option<i64>) {
        let Some(chat_id) = chat else { return };
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if dropped.is_empty() {
            tracing::warn!(
                "redis events were dropped; other nodes will catch up from the database"
            );
        }
        dropped.insert(chat_id);
    }

    /// The resync notices for the chats whose events were dropped.
    fn resyncs(&self) -> Vec<Publish> {
        let chats: Vec<i64> = self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        chats
            .into_iter()
            .filter_map(|chat_id| {
                Some(Publish {
                    channel: self.chat_channel(chat_id),
                    payload: self.payload(&Route::Resync(chat_id), None, b"")?,
                    chat: Some(chat_id),
                })
            })
            .collect()
    }

    /// Handles one message from Redis: decode, skip our own and repeats, deliver.
    fn receive(&self, payload: Bytes, wakes: &mut Wakes) {
        let Some(split) = payload.iter().position(|b| *b == b'\n') else {
            return;
        };
        let Ok(header) = serde_json::from_slice::<Header>(&payload[..split]) else {
            return;
        };
        if header.o == self.node {
            return;
        }
        if !matches!(header.r, Route::Room(_)) && !self.first_sight(header.i) {
            return;
        }
        let Ok(frame) = Utf8Bytes::try_from(payload.slice(split + 1..)) else {
            return;
        };
        let env = Arc::new(Envelope {
            route: header.r,
            seq: header.s,
            frame,
        });
        self.hub.deliver_all(&env, wakes);
    }

    fn first_sight(&self, id: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (order, set) = &mut *seen;
        if !set.insert(id) {
            return false;
        }
        order.push_back(id);
        if order.len() > 4096
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }

    pub fn sweep_every(&self) -> Duration {
        self.config.presence_ttl / 3
    }

    fn presence_key(&self, operator_id: i64) -> String {
        format!("{}:presence:{operator_id}", self.config.prefix)
    }

    fn customers_key(&self, node: &str) -> String {
        format!("{}:customers:{node}", self.config.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.config.prefix)
    }

    /// Records that this node holds a socket of the customer.
    pub async fn customer_here(&self, customer_id: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.sadd(self.customers_key(&self.node), customer_id).await
    }

    /// Records that this node holds no socket of the customer any more.
    pub async fn customer_gone(&self, customer_id: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.srem(self.customers_key(&self.node), customer_id).await
    }

    /// Whether another live node holds a socket of the customer.
    pub async fn customer_elsewhere(&self, customer_id: i64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = conn
            .zrangebyscore(self.nodes_key(), self.clock.now_ms(), "+inf")
            .await?;
        for node in nodes.iter().filter(|n| **n != self.node) {
            if conn
                .sismember(self.customers_key(node), customer_id)
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Says this node is alive for another presence period, its customers' set with it;
    /// `all` (Redis may have lost everything) writes the set whole again first.
    async fn node_alive(&self, all: bool) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let key = self.customers_key(&self.node);
        if all {
            for chunk in self.hub.local_customers().chunks(1000) {
                let _: () = conn.sadd(&key, chunk).await?;
            }
        }
        let ttl_ms = 2 * self.config.presence_ttl.as_millis() as i64;
        let _: () = conn.pexpire(&key, ttl_ms).await?;
        let _: () = conn
            .zadd(self.nodes_key(), &self.node, self.expiry())
            .await?;
        let _: () = conn
            .zrembyscore(self.nodes_key(), "-inf", self.clock.now_ms() - ttl_ms)
            .await?;
        Ok(())
    }

    fn presence_index(&self) -> String {
        format!("{}:presence", self.config.prefix)
    }

    fn expiry(&self) -> i64 {
        self.clock.now_ms() + self.config.presence_ttl.as_millis() as i64
    }

    /// Whether Redis answers a PING.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// Records that this node holds a socket of the operator.
    pub async fn operator_here(&self, operator_id: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zadd(self.presence_key(operator_id), &self.node, self.expiry())
            .await?;
        let _: () = conn.sadd(self.presence_index(), operator_id).await?;
        Ok(())
    }

    /// Records that this node no longer holds a socket of the operator; true when no
    /// node does. Just after Redis came back the other nodes' claims may not be there
    /// yet: then it says no, and the sweep decides once they are (see `deferred`).
    pub async fn operator_gone(&self, operator_id: i64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zrem(self.presence_key(operator_id), &self.node)
            .await?;
        if self.claims_unsure() {
            self.deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(operator_id);
            return Ok(false);
        }
        Ok(!self.operator_elsewhere(operator_id).await?)
    }

    fn claims_unsure(&self) -> bool {
        self.clock.now_ms() < self.unsure_until.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The subscriber is back on Redis after losing it: claims may be gone until every
    /// node has claimed again (within a refresh, plus a second for reconnecting).
    fn redis_returned(&self) {
        let unsure = self.sweep_every() + Duration::from_secs(1);
        self.unsure_until.store(
            self.clock.now_ms() + unsure.as_millis() as i64,
            std::sync::atomic::Ordering::SeqCst,
        );
        self.returned.send_modify(|n| *n += 1);
    }

    /// Resolves after `every`, or sooner when Redis comes back.
    pub async fn next_sweep(&self, every: Duration) {
        let mut returned = self.returned.subscribe();
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = returned.changed() => {}
        }
    }

    /// Whether any node's unexpired claim says it holds a socket of the operator.
    pub async fn operator_elsewhere(&self, operator_id: i64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let key = self.presence_key(operator_id);
        let _: () = conn.zrembyscore(&key, "-inf", self.clock.now_ms()).await?;
        let left: i64 = conn.zcard(&key).await?;
        Ok(left > 0)
    }

    /// Operators whose every node claim has expired (their nodes died), or whose going
    /// offline was put off and who hold no socket anywhere now: they are taken off the
    /// index and returned, to be set offline.
    pub async fn expired_operators(&self) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.conn.clone();
        let ids: Vec<i64> = conn.smembers(self.presence_index()).await?;
        let mut gone = Vec::new();
        if !self.claims_unsure() {
            let deferred: Vec<i64> = self
                .deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            for id in deferred {
                if !self.hub.is_connected(Person::Operator(id))
                    && !self.operator_elsewhere(id).await?
                {
                    gone.push(id);
                }
            }
        }
        for id in ids {
            let key = self.presence_key(id);
            let _: () = conn.zrembyscore(&key, "-inf", self.clock.now_ms()).await?;
            let left: i64 = conn.zcard(&key).await?;
            if left == 0 {
                let _: () = conn.srem(self.presence_index(), id).await?;
                gone.push(id);
            }
        }
        Ok(gone)
    }
}

/// An event's copy for one channel, queued for the publisher.
#[derive(Debug)]
struct Publish {
    channel: String,
    payload: Bytes,
    /// The chat to catch up on the other nodes if this copy is lost.
    chat: Option<i64>,
}

/// Most publishes written at once.
const PUBLISH_BATCH: usize = 256;

/// Most publishes written but not yet answered; past this the publisher waits for Redis.
const PUBLISH_WINDOW: usize = 4 * PUBLISH_BATCH;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens a connection of the bus's own and logs in as the URL says, within
/// [`DIAL_TIMEOUT`].
async fn dial(dialer: &Dialer, buf: &mut BytesMut) -> std::io::Result<(Reader, Writer)> {
    match tokio::time::timeout(DIAL_TIMEOUT, dial_now(dialer, buf)).await {
        Ok(dialled) => dialled,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Longest a connection and its login may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

async fn dial_now(dialer: &Dialer, buf: &mut BytesMut) -> std::io::Result<(Reader, Writer)> {
    let info = &dialer.info;
    let (mut reader, mut writer): (Reader, Writer) = match (info.addr(), &dialer.tls) {
        (ConnectionAddr::Tcp(host, port), _) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let (r, w) = tokio::io::split(tls.connect(name, stream).await?);
            (Box::new(r), Box::new(w))
        }
        (ConnectionAddr::Unix(path), _) => {
            let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
            (Box::new(r), Box::new(w))
        }
        (other, _) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("redis address {other} is not supported"),
            ));
        }
    };
    let settings = info.redis_settings();
    let mut out = Vec::new();
    let mut answers = 0;
    match (settings.username(), settings.password()) {
        (Some(user), Some(password)) => {
            resp::command(&mut out, &[b"AUTH", user.as_bytes(), password.as_bytes()])
        }
        (None, Some(password)) => resp::command(&mut out, &[b"AUTH", password.as_bytes()]),
        _ => {}
    }
    answers += usize::from(!out.is_empty());
    if settings.db() != 0 {
        let db = settings.db().to_string();
        resp::command(&mut out, &[b"SELECT", db.as_bytes()]);
        answers += 1;
    }
    send(&mut writer, &out).await?;
    buf.clear();
    for _ in 0..answers {
        if let Reply::Error(e) = next_reply(&mut reader, buf).await? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                String::from_utf8_lossy(&e).into_owned(),
            ));
        }
    }
    Ok((reader, writer))
}

/// Writes `bytes` out: all of them, and over TLS the records they make too (a TLS stream
/// keeps what it has encrypted until flushed; over plain TCP a flush does nothing).
async fn send(writer: &mut Writer, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Reads until `buf` holds a whole reply at its front, and takes it.
async fn next_reply(reader: &mut Reader, buf: &mut BytesMut) -> std::io::Result<Reply> {
    loop {
        if let Some(reply) = resp::take(buf).map_err(std::io::Error::other)? {
            return Ok(reply);
        }
        if read_some(reader, buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads what the socket has into `buf` (cancel-safe: in a `select!`, nothing is lost).
/// The end of the stream is an error.
async fn read_some(reader: &mut Reader, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    match reader.read_buf(buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        n => Ok(n),
    }
}

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// How often a connection is checked: the subscriber pings, and a connection that
/// owes answers but has read nothing for [`SILENCE`] is given up as dead (a half-open
/// TCP connection would otherwise hang forever).
const HEARTBEAT: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_secs(15);

/// Waits before connecting again, longer after each failure in a row. A connection
/// counts as a success only once it has lasted a while: one that Redis accepts and then
/// drops at once (too many clients, say) must not be retried ten times a second.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const STABLE: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff(Backoff::FIRST)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    /// A connection that lasted `lived` has ended.
    async fn after(&mut self, lived: Duration) {
        if lived >= Backoff::STABLE {
            self.0 = Backoff::FIRST;
        }
        self.wait().await;
    }
}

/// Writes one batch of publishes; their chats join the unanswered, in order.
fn encode_publishes(
    batch: &mut Vec<Publish>,
    out: &mut Vec<u8>,
    unanswered: &mut VecDeque<Option<i64>>,
) {
    out.clear();
    for p in batch.drain(..) {
        resp::command(out, &[b"PUBLISH", p.channel.as_bytes(), &p.payload]);
        unanswered.push_back(p.chat);
    }
}

/// Publishes queued events in order over one connection, reconnecting with backoff.
/// What is waiting is written at once, without waiting for the answers to what was
/// written before. A copy that may not have reached Redis (the connection broke before
/// its answer) has its chat caught up on the other nodes as soon as the connection is
/// back.
async fn publisher(
    bus: std::sync::Weak<RedisBus>,
    dialer: Arc<Dialer>,
    mut rx: mpsc::Receiver<Publish>,
) {
    let mut backoff = Backoff::new();
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    // The chats of the copies written and not yet answered, in order.
    let mut unanswered: VecDeque<Option<i64>> = VecDeque::new();
    let mut failing = false;
    loop {
        let (mut reader, mut writer) = match dial(&dialer, &mut buf).await {
            Ok(conn) => conn,
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %e, "redis publisher cannot connect; events are dropped until it is back");
                }
                if rx.is_closed() {
                    return;
                }
                backoff.wait().await;
                continue;
            }
        };
        // `failing` stays set: the connection's end, whenever it comes, says so again.
        if failing {
            tracing::info!("redis publishing works again");
        }
        let connected = tokio::time::Instant::now();
        let mut heard = connected;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        // What was lost before is caught up now, not with the next event.
        if let Some(bus) = bus.upgrade() {
            batch.extend(bus.resyncs());
        }
        let lost: std::io::Error = 'conn: loop {
            if !batch.is_empty() {
                encode_publishes(&mut batch, &mut out, &mut unanswered);
                if let Err(e) = send(&mut writer, &out).await {
                    break e;
                }
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, PUBLISH_BATCH), if unanswered.len() < PUBLISH_WINDOW => {
                    if n == 0 {
                        return; // the bus is gone
                    }
                    // Events dropped on a full queue: their chats are caught up.
                    if let Some(bus) = bus.upgrade() {
                        batch.extend(bus.resyncs());
                    }
                }
                read = read_some(&mut reader, &mut buf) => {
                    if let Err(e) = read {
                        break e;
                    }
                    heard = tokio::time::Instant::now();
                    loop {
                        match resp::take(&mut buf) {
                            Ok(Some(reply)) => {
                                unanswered.pop_front();
                                // A refusal (an ACL, say) is a setting to fix; catching the
                                // chat up would be refused the same way.
                                if let Reply::Error(e) = reply {
                                    tracing::warn!(error = %String::from_utf8_lossy(&e), "redis refused a publish");
                                }
                            }
                            Ok(None) => break,
                            Err(e) => break 'conn std::io::Error::other(e),
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if !unanswered.is_empty() && heard.elapsed() > SILENCE {
                        break std::io::ErrorKind::TimedOut.into();
                    }
                }
            }
        };
        failing = true;
        tracing::warn!(error = %lost, "redis publisher connection lost; reconnecting");
        if let Some(bus) = bus.upgrade() {
            for chat in unanswered.drain(..) {
                bus.note_dropped(chat);
            }
        }
        unanswered.clear();
        backoff.after(connected.elapsed()).await;
    }
}

/// What the subscriber waits for Redis to confirm.
#[derive(Default)]
struct Confirming {
    /// Chats subscribed to since connecting: once confirmed, whatever was published
    /// before the subscription took hold is caught up from the database.
    joining: HashMap<String, i64>,
    /// Subscriptions restored at a reconnect: once all are confirmed, every local socket
    /// catches up (an event published before then may have been missed).
    restoring: HashSet<String>,
}

/// Keeps one subscriber connection, reconnecting with backoff; after each reconnect it
/// resubscribes and, once Redis has confirmed, has every local socket catch up from the
/// database.
async fn subscriber(
    bus: std::sync::Weak<RedisBus>,
    dialer: Arc<Dialer>,
    mut control: mpsc::UnboundedReceiver<Interest>,
) {
    let mut backoff = Backoff::new();
    let mut first = true;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        let (mut reader, mut writer) = match dial(&dialer, &mut buf).await {
            Ok(conn) => conn,
            Err(e) => {
                if bus.strong_count() == 0 {
                    return;
                }
                tracing::warn!(error = %e, "redis subscriber cannot connect; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let connected = tokio::time::Instant::now();
        let Some(strong) = bus.upgrade() else { return };
        let wanted: Vec<String> = strong.wanted.iter().map(|c| c.clone()).collect();
        out.clear();
        for chunk in wanted.chunks(1024) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(chunk.iter().map(|c| c.as_bytes()));
            resp::command(&mut out, &args);
        }
        let mut confirming = Confirming::default();
        if !first {
            tracing::info!("redis subscriber reconnected; catching sockets up");
            strong.redis_returned();
            if wanted.is_empty() {
                strong.hub.resync();
            }
            confirming.restoring = wanted.into_iter().collect();
        }
        first = false;
        drop(strong);
        if send(&mut writer, &out).await.is_err() {
            backoff.after(connected.elapsed()).await;
            continue;
        }
        let mut heard = connected;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                read = read_some(&mut reader, &mut buf) => {
                    let Some(bus) = bus.upgrade() else { return };
                    if read.is_err() {
                        break;
                    }
                    heard = tokio::time::Instant::now();
                    // What one read brings is one batch of wakes for the socket threads.
                    let taken = crate::wake::holding_wakes(|| {
                        take_replies(&bus, &mut buf, &mut confirming)
                    });
                    if let Err(e) = taken {
                        tracing::warn!(error = %e, "redis subscriber connection");
                        break;
                    }
                }
                interest = control.recv() => {
                    let Some(interest) = interest else { return };
                    let Some(bus) = bus.upgrade() else { return };
                    out.clear();
                    match interest {
                        Interest::Join(topic) => {
                            let channel = bus.channel_of(&topic);
                            bus.wanted.insert(channel.clone());
                            resp::command(&mut out, &[b"SUBSCRIBE", channel.as_bytes()]);
                            if let Topic::Chat(chat_id) = topic {
                                confirming.joining.insert(channel, chat_id);
                            }
                        }
                        // Reports may overtake each other: leave only what is still unwanted.
                        Interest::Leave(topic) if bus.hub.wants(topic) => {}
                        Interest::Leave(topic) => {
                            let channel = bus.channel_of(&topic);
                            bus.wanted.remove(&channel);
                            resp::command(&mut out, &[b"UNSUBSCRIBE", channel.as_bytes()]);
                        }
                    }
                    if !out.is_empty() && send(&mut writer, &out).await.is_err() {
                        break;
                    }
                }
                _ = heartbeat.tick() => {
                    // Redis answers a ping even on a subscribed connection.
                    if heard.elapsed() > SILENCE || send(&mut writer, b"*1\r\n$4\r\nPING\r\n").await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::warn!("redis subscriber connection lost; reconnecting");
        backoff.after(connected.elapsed()).await;
    }
}

/// Handles every whole reply in `buf`: messages are delivered (the sockets they reach
/// woken once all are), confirmations catch chats up (see [`Confirming`]).
fn take_replies(
    bus: &RedisBus,
    buf: &mut BytesMut,
    confirming: &mut Confirming,
) -> Result<(), resp::Malformed> {
    let mut wakes = Wakes::default();
    while let Some(reply) = resp::take(buf)? {
        let Reply::Array(Some(mut parts)) = reply else {
            if let Reply::Error(e) = reply {
                // An ACL refusing a channel: a setting to fix, which reconnecting would not.
                tracing::warn!(error = %String::from_utf8_lossy(&e), "redis refused a subscription");
            }
            continue;
        };
        match (parts.first().and_then(Reply::bytes), parts.len()) {
            (Some(b"message"), 3) => {
                if let Some(Reply::Bulk(Some(payload))) = parts.pop() {
                    bus.receive(payload, &mut wakes);
                }
            }
            (Some(b"subscribe"), 3) => {
                let Some(channel) = parts[1].bytes().and_then(|c| std::str::from_utf8(c).ok())
                else {
                    continue;
                };
                if let Some(chat_id) = confirming.joining.remove(channel) {
                    bus.hub.resync_room(chat_id);
                }
                if confirming.restoring.remove(channel) && confirming.restoring.is_empty() {
                    bus.hub.resync();
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refreshes this node's presence claims for the operators connected here.
async fn refresher(bus: std::sync::Weak<RedisBus>) {
    let mut failed = false;
    loop {
        let (period, mut returned) = match bus.upgrade() {
            Some(b) => (b.config.presence_ttl / 3, b.returned.subscribe()),
            None => return,
        };
        // On time, or at once when Redis comes back (it may have lost every claim); soon
        // again after a failed round (the connection may have been a moment behind).
        let wait = if failed {
            RETRY_SOON.min(period)
        } else {
            period
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = returned.changed() => {}
        }
        let Some(bus) = bus.upgrade() else { return };
        failed = false;
        for operator_id in bus.hub.local_operators() {
            if let Err(e) = bus.operator_here(operator_id).await {
                tracing::debug!(error = %e, "cannot refresh presence");
                failed = true;
                break;
            }
        }
    }
}

/// How soon a refresh that failed is tried again.
const RETRY_SOON: Duration = Duration::from_millis(250);

/// Keeps this node's customers' set alive, and writes it whole at start and whenever
/// Redis comes back (or a write failed).
async fn customers_refresher(bus: std::sync::Weak<RedisBus>) {
    let mut all = true;
    loop {
        let (period, mut returned) = match bus.upgrade() {
            Some(b) => (b.config.presence_ttl / 3, b.returned.subscribe()),
            None => return,
        };
        if let Some(bus) = bus.upgrade() {
            all = match bus.node_alive(all).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot refresh the node's customers");
                    true
                }
            };
        }
        // A failed write is tried again soon, whole.
        let wait = if all { RETRY_SOON.min(period) } else { period };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = returned.changed() => all = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::*;

    #[test]
    fn the_bus_dials_tls_for_rediss_and_refuses_a_ca_file_without_a_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain = "redis://localhost:6379"
            .into_connection_info()
            .expect("a url");
        assert!(Dialer::new(plain, None).expect("a dialer").tls.is_none());
        let tls = || {
            "rediss://localhost:6380"
                .into_connection_info()
                .expect("a url")
        };
        assert!(Dialer::new(tls(), None).expect("a dialer").tls.is_some());
        let empty = std::env::temp_dir().join(format!("souq-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").expect("a file");
        let refused = Dialer::new(tls(), Some(&empty)).expect_err("an empty CA file");
        assert!(refused.to_string().contains("no certificate"), "{refused}");
        let _ = std::fs::remove_file(&empty);
        assert!(Dialer::new(tls(), Some(std::path::Path::new("/nonexistent.pem"))).is_err());
    }
}
