//! The Redis bus: fan-out between nodes over Redis pub/sub, through the `redis` crate
//! (TLS with a `rediss://` URL).
//!
//! Channels: `{prefix}:chat:{id}` for a chat's room, `{prefix}:person:{c|o}:{id}` for what
//! reaches a person before they are in a room (a new chat). A node subscribes to a chat's
//! channel while it has a socket in that room, and to a person's while it has a socket of
//! theirs; the hub tells it when. The publishing node delivers to its own hub directly and
//! skips its own messages when they come back from Redis.
//!
//! Events go out on a multiplexed connection of their own, in pipelines written as they
//! come without waiting for the answers to earlier ones, and come in on a pub/sub
//! connection; presence uses a third, managed one.
//!
//! Guarantee: at most once, like the in-process bus. An event that cannot be queued (the
//! queue to Redis is full) or may not have reached Redis (its pipeline failed) is dropped,
//! and its chat is marked: once the publisher can write again it tells the other nodes to
//! catch that chat up from the database. After the subscriber reconnects, every local
//! socket catches up from the database by seq. So nothing committed is lost to a client.
//!
//! Presence across nodes: `{prefix}:presence:{operator}` is a sorted set of the nodes
//! holding a socket of the operator, scored by an expiry that each node refreshes while
//! it holds one. An operator is online while any entry is unexpired; a node that dies
//! stops refreshing, and the sweep of any other node sets the operator offline.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashSet;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, MultiplexedConnection, PubSubSink};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Msg, RedisResult};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::clock::Clock;
use crate::domain::events::Person;
use crate::hub::{Envelope, Hub, Interest, Route, Topic, Wakes};

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or, with TLS, `rediss://`.
    pub url: String,
    /// PEM file of the certificate authority that signed Redis's certificate, trusted
    /// besides the system's (a private CA); with `rediss://` only.
    pub ca_file: Option<PathBuf>,
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

#[derive(Debug)]
pub struct RedisBus {
    node: String,
    config: RedisConfig,
    hub: Arc<Hub>,
    /// Presence claims expire by it (every node's clock is the system's but in tests).
    clock: Clock,
    /// For presence; events go over connections of their own.
    conn: ConnectionManager,
    outgoing: mpsc::Sender<Publish>,
    /// Channels this node wants, kept so that a new subscriber connection can restore them.
    wanted: DashSet<String>,
    /// Ids of recent multi-channel events, to deliver each once.
    seen: Mutex<(VecDeque<u64>, HashSet<u64>)>,
    /// Chats with events dropped on a full queue: the publisher tells the other nodes to
    /// catch these chats up from the database once the queue has room.
    dropped: Mutex<HashSet<i64>>,
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

impl RedisBus {
    /// Connects (failing if Redis cannot be reached at start) and starts the publisher,
    /// the subscriber and the presence refresher of this node.
    pub async fn start(
        config: RedisConfig,
        hub: Arc<Hub>,
        clock: Clock,
    ) -> redis::RedisResult<Arc<RedisBus>> {
        let client = client(&config)?;
        let conn = client.get_connection_manager().await?;
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
        });
        hub.watch_interest(control);
        tokio::spawn(publisher(Arc::downgrade(&bus), client.clone(), out_rx));
        tokio::spawn(subscriber(Arc::downgrade(&bus), client, control_rx));
        tokio::spawn(refresher(Arc::downgrade(&bus)));
        Ok(bus)
    }

    fn chat_channel(&self, chat_id: i64) -> String {
        format!("{}:chat:{chat_id}", self.config.prefix)
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
            Route::Recheck(person) => vec![(self.channel_of(&Topic::Person(*person)), None)],
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
            if let Err(mpsc::error::TrySendError::Full(p)) = self.outgoing.try_send(publish) {
                self.note_dropped(p.chat);
            }
        }
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
    fn receive(&self, msg: &Msg, wakes: &mut Wakes) {
        let payload = msg.get_payload_bytes();
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
        let Ok(frame) = Utf8Bytes::try_from(Bytes::copy_from_slice(&payload[split + 1..])) else {
            return;
        };
        let env = Arc::new(Envelope {
            route: header.r,
            seq: header.s,
            frame,
        });
        self.hub.deliver_all(&env, wakes);
    }

    /// What to send Redis for the interest changes reported since the last: the channels
    /// to subscribe to and to leave, each as the hub wants it now (reports may overtake
    /// each other), and the chats whose rooms catch up once their subscription holds.
    fn settle(&self, changed: Vec<Interest>) -> Settled {
        let mut settled = Settled::default();
        let mut seen = HashSet::new();
        for interest in changed {
            let topic = match interest {
                Interest::Join(topic) | Interest::Leave(topic) => topic,
            };
            let channel = self.channel_of(&topic);
            if !seen.insert(channel.clone()) {
                continue;
            }
            let subscribed = self.wanted.contains(&channel);
            match (self.hub.wants(topic), subscribed) {
                (true, false) => {
                    self.wanted.insert(channel.clone());
                    settled.join.push(channel);
                    if let Topic::Chat(chat_id) = topic {
                        settled.catch_up.push(chat_id);
                    }
                }
                (false, true) => {
                    self.wanted.remove(&channel);
                    settled.leave.push(channel);
                }
                _ => {}
            }
        }
        settled
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

    fn presence_index(&self) -> String {
        format!("{}:presence", self.config.prefix)
    }

    fn expiry(&self) -> i64 {
        self.clock.now_ms() + self.config.presence_ttl.as_millis() as i64
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
    /// node does.
    pub async fn operator_gone(&self, operator_id: i64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .zrem(self.presence_key(operator_id), &self.node)
            .await?;
        Ok(!self.operator_elsewhere(operator_id).await?)
    }

    /// Whether any node's unexpired claim says it holds a socket of the operator.
    pub async fn operator_elsewhere(&self, operator_id: i64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let key = self.presence_key(operator_id);
        let _: () = conn.zrembyscore(&key, "-inf", self.clock.now_ms()).await?;
        let left: i64 = conn.zcard(&key).await?;
        Ok(left > 0)
    }

    /// Operators whose every node claim has expired (their nodes died): they are
    /// taken off the index and returned, to be set offline.
    pub async fn expired_operators(&self) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.conn.clone();
        let ids: Vec<i64> = conn.smembers(self.presence_index()).await?;
        let mut gone = Vec::new();
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

/// Channels to subscribe to and to leave, and chats to catch up once subscribed.
#[derive(Debug, Default)]
struct Settled {
    join: Vec<String>,
    leave: Vec<String>,
    catch_up: Vec<i64>,
}

/// An event's copy for one channel, queued for the publisher.
#[derive(Debug)]
struct Publish {
    channel: String,
    payload: Bytes,
    /// The chat to catch up on the other nodes if this copy is lost.
    chat: Option<i64>,
}

/// Most publishes in one pipeline.
const PUBLISH_BATCH: usize = 256;

/// Most publishes written but not yet answered; past this the publisher waits for Redis.
const PUBLISH_WINDOW: usize = 4 * PUBLISH_BATCH;

/// Longest a connection and its login may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the subscriber pings; a connection that has not answered for [`SILENCE`]
/// (a ping, a pipeline) is given up as dead (a half-open TCP connection would otherwise
/// hang forever).
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

/// A pipeline written to Redis: the chats of its copies, and how it went.
type Written = Pin<Box<dyn Future<Output = (Vec<Option<i64>>, RedisResult<()>)> + Send>>;

/// Writes a batch of publishes as one pipeline, without waiting for earlier ones.
fn write(conn: &MultiplexedConnection, batch: &mut Vec<Publish>) -> Written {
    let mut pipe = redis::pipe();
    let mut chats = Vec::with_capacity(batch.len());
    for p in batch.drain(..) {
        pipe.cmd("PUBLISH")
            .arg(p.channel)
            .arg(&p.payload[..])
            .ignore();
        chats.push(p.chat);
    }
    let mut conn = conn.clone();
    Box::pin(async move {
        let written = pipe.exec_async(&mut conn).await;
        (chats, written)
    })
}

/// Publishes queued events in order over one connection, reconnecting with backoff.
/// What is waiting is written at once, without waiting for the answers to what was
/// written before. A copy that may not have reached Redis (its pipeline failed) has its
/// chat caught up on the other nodes as soon as the connection is back.
async fn publisher(
    bus: std::sync::Weak<RedisBus>,
    client: Client,
    mut rx: mpsc::Receiver<Publish>,
) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(DIAL_TIMEOUT))
        .set_response_timeout(Some(SILENCE));
    let mut backoff = Backoff::new();
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut failing = false;
    loop {
        let conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
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
        // What was lost before is caught up now, not with the next event.
        if let Some(bus) = bus.upgrade() {
            batch.extend(bus.resyncs());
        }
        let mut in_flight: FuturesUnordered<Written> = FuturesUnordered::new();
        let mut unanswered = 0;
        let lost: redis::RedisError = 'conn: loop {
            if !batch.is_empty() {
                unanswered += batch.len();
                in_flight.push(write(&conn, &mut batch));
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, PUBLISH_BATCH), if unanswered < PUBLISH_WINDOW => {
                    if n == 0 {
                        return; // the bus is gone
                    }
                    // Events dropped on a full queue: their chats are caught up.
                    if let Some(bus) = bus.upgrade() {
                        batch.extend(bus.resyncs());
                    }
                }
                Some((chats, written)) = in_flight.next(), if !in_flight.is_empty() => {
                    unanswered -= chats.len();
                    let Err(e) = written else { continue };
                    if e.is_unrecoverable_error() || e.is_io_error() || e.is_timeout() {
                        if let Some(bus) = bus.upgrade() {
                            for chat in chats {
                                bus.note_dropped(chat);
                            }
                        }
                        break 'conn e;
                    }
                    // A refusal (an ACL, say) is a setting to fix; catching the chat up
                    // would be refused the same way.
                    tracing::warn!(error = %e, "redis refused a publish");
                }
            }
        };
        failing = true;
        tracing::warn!(error = %lost, "redis publisher connection lost; reconnecting");
        // The pipelines still out fail with the connection: their chats are caught up too.
        while let Some((chats, written)) = in_flight.next().await {
            if written.is_err()
                && let Some(bus) = bus.upgrade()
            {
                for chat in chats {
                    bus.note_dropped(chat);
                }
            }
        }
        backoff.after(connected.elapsed()).await;
    }
}

/// A pending command on the subscriber connection (a subscription change, a ping).
type Pending<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

/// Sends the subscription changes, and resolves once Redis has confirmed them all.
fn subscribe(
    mut sink: PubSubSink,
    settled: Settled,
) -> Pin<Box<dyn Future<Output = RedisResult<Vec<i64>>> + Send>> {
    Box::pin(async move {
        if !settled.join.is_empty() {
            sink.subscribe(&settled.join).await?;
        }
        if !settled.leave.is_empty() {
            sink.unsubscribe(&settled.leave).await?;
        }
        Ok(settled.catch_up)
    })
}

/// Keeps one subscriber connection, reconnecting with backoff; after each reconnect it
/// resubscribes and, once Redis has confirmed, has every local socket catch up from the
/// database. A chat subscribed to anew has its room catch up once Redis has confirmed
/// (what was published before the subscription took hold was missed).
async fn subscriber(
    bus: std::sync::Weak<RedisBus>,
    client: Client,
    mut control: mpsc::UnboundedReceiver<Interest>,
) {
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        let pubsub = match tokio::time::timeout(DIAL_TIMEOUT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                if bus.strong_count() == 0 {
                    return;
                }
                let e = failed.map_or_else(
                    |_| "connecting timed out".to_owned(),
                    |f| f.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                tracing::warn!(error = %e, "redis subscriber cannot connect; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let connected = tokio::time::Instant::now();
        let (mut sink, mut stream) = pubsub.split();
        let Some(strong) = bus.upgrade() else { return };
        let wanted: Vec<String> = strong.wanted.iter().map(|c| c.clone()).collect();
        drop(strong);
        // Messages that come meanwhile wait in the stream.
        let restored = async {
            for chunk in wanted.chunks(1024) {
                sink.subscribe(chunk).await?;
            }
            RedisResult::Ok(())
        };
        if let Err(e) = tokio::time::timeout(SILENCE, restored)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
            })
        {
            tracing::warn!(error = %e, "redis subscriber cannot resubscribe; reconnecting");
            backoff.after(connected.elapsed()).await;
            continue;
        }
        if !first {
            tracing::info!("redis subscriber reconnected; catching sockets up");
            if let Some(bus) = bus.upgrade() {
                bus.hub.resync();
            }
        }
        first = false;
        let mut changing: Pending<RedisResult<Vec<i64>>> = None;
        let mut ping: Pending<bool> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let lost = loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break "the connection closed".to_owned() };
                    let Some(bus) = bus.upgrade() else { return };
                    // What has come is one batch of wakes for the socket threads.
                    crate::wake::holding_wakes(|| {
                        let mut wakes = Wakes::default();
                        bus.receive(&msg, &mut wakes);
                        while let Some(Some(msg)) = stream.next().now_or_never() {
                            bus.receive(&msg, &mut wakes);
                        }
                        wakes.wake_all();
                    });
                }
                interest = control.recv(), if changing.is_none() => {
                    let Some(interest) = interest else { return };
                    let Some(bus) = bus.upgrade() else { return };
                    let mut changed = vec![interest];
                    while let Ok(more) = control.try_recv() {
                        changed.push(more);
                    }
                    changing = Some(subscribe(sink.clone(), bus.settle(changed)));
                }
                done = async { changing.as_mut().expect("guarded").await }, if changing.is_some() => {
                    changing = None;
                    match done {
                        Ok(chats) => {
                            if let Some(bus) = bus.upgrade() {
                                for chat_id in chats {
                                    bus.hub.resync_room(chat_id);
                                }
                            }
                        }
                        // An ACL refusing a channel is a setting to fix; a lost
                        // connection ends this one.
                        Err(e) if e.is_unrecoverable_error() || e.is_io_error() => break e.to_string(),
                        Err(e) => tracing::warn!(error = %e, "redis refused a subscription"),
                    }
                }
                alive = async { ping.as_mut().expect("guarded").await }, if ping.is_some() => {
                    ping = None;
                    if !alive {
                        break "no answer to a ping".to_owned();
                    }
                }
                _ = heartbeat.tick() => {
                    if ping.is_none() {
                        let mut sink = sink.clone();
                        // Redis answers a ping even on a subscribed connection.
                        ping = Some(Box::pin(async move {
                            matches!(tokio::time::timeout(SILENCE, sink.ping::<redis::Value>()).await, Ok(Ok(_)))
                        }));
                    }
                }
            }
        };
        tracing::warn!(error = %lost, "redis subscriber connection lost; reconnecting");
        backoff.after(connected.elapsed()).await;
    }
}

/// Refreshes this node's presence claims for the operators connected here.
async fn refresher(bus: std::sync::Weak<RedisBus>) {
    loop {
        let period = match bus.upgrade() {
            Some(b) => b.config.presence_ttl / 3,
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(bus) = bus.upgrade() else { return };
        for operator_id in bus.hub.local_operators() {
            if let Err(e) = bus.operator_here(operator_id).await {
                tracing::debug!(error = %e, "cannot refresh presence");
                break;
            }
        }
    }
}
