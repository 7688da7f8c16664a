//! The Redis bus: fan-out between nodes over Redis pub/sub.
//!
//! Channels: `{prefix}:chat:{id}` for a chat's room, `{prefix}:person:{c|o}:{id}` for what
//! reaches a person before they are in a room (a new chat). A node subscribes to a chat's
//! channel while it has a socket in that room, and to a person's while it has a socket of
//! theirs; the hub tells it when. The publishing node delivers to its own hub directly and
//! skips its own messages when they come back from Redis.
//!
//! Guarantee: at most once, like the in-process bus. A publish that fails (Redis away) is
//! dropped; after the subscriber reconnects, every local socket catches up from the
//! database by seq, so nothing committed is lost to a client.
//!
//! Presence across nodes: `{prefix}:presence:{operator}` is a sorted set of the nodes
//! holding a socket of the operator, scored by an expiry that each node refreshes while
//! it holds one. An operator is online while any entry is unexpired; a node that dies
//! stops refreshing, and the sweep of any other node sets the operator offline.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashSet;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Envelope, Route};
use crate::domain::events::Person;
use crate::hub::{Hub, Interest, Topic};

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
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
    conn: ConnectionManager,
    outgoing: mpsc::Sender<(String, Vec<u8>)>,
    /// Channels this node wants, kept so that a new subscriber connection can restore them.
    wanted: DashSet<String>,
    /// Ids of recent multi-channel events, to deliver each once.
    seen: Mutex<(VecDeque<u64>, HashSet<u64>)>,
    /// Chats with events dropped on a full queue: the publisher tells the other nodes to
    /// catch these chats up from the database once the queue has room.
    dropped: Mutex<HashSet<i64>>,
}

impl RedisBus {
    /// Connects (failing if Redis cannot be reached at start) and starts the publisher,
    /// the subscriber and the presence refresher of this node.
    pub async fn start(config: RedisConfig, hub: Arc<Hub>) -> redis::RedisResult<Arc<RedisBus>> {
        let client = redis::Client::open(config.url.as_str())?;
        let conn = client.get_connection_manager().await?;
        let node = format!("{:016x}", rand::random::<u64>());
        let (outgoing, out_rx) = mpsc::channel(16 * 1024);
        let (control, control_rx) = mpsc::unbounded_channel();
        let bus = Arc::new(RedisBus {
            node,
            config,
            hub: hub.clone(),
            conn,
            outgoing,
            wanted: DashSet::new(),
            seen: Mutex::new((VecDeque::new(), HashSet::new())),
            dropped: Mutex::new(HashSet::new()),
        });
        hub.watch_interest(control);
        tokio::spawn(publisher(Arc::downgrade(&bus), bus.conn.clone(), out_rx));
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
        let channels: Vec<String> = match &env.route {
            Route::Room(chat_id) => vec![self.chat_channel(*chat_id)],
            Route::JoinRoom { chat_id, people } => {
                let mut c: Vec<String> = people
                    .iter()
                    .map(|p| self.channel_of(&Topic::Person(*p)))
                    .collect();
                c.push(self.chat_channel(*chat_id));
                c
            }
            Route::Rooms(ids) => ids.iter().map(|id| self.chat_channel(*id)).collect(),
            Route::Recheck(person) => vec![self.channel_of(&Topic::Person(*person))],
            Route::Resync(chat_id) => vec![self.chat_channel(*chat_id)],
        };
        let Some(payload) = self.payload(&env.route, env.seq, env.frame.as_bytes()) else {
            return;
        };
        for channel in channels {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                self.outgoing.try_send((channel, payload.clone()))
            {
                self.note_dropped(&env.route);
            }
        }
    }

    /// A header line, then the frame.
    fn payload(&self, route: &Route, seq: Option<i64>, frame: &[u8]) -> Option<Vec<u8>> {
        let header = Header {
            o: self.node.clone(),
            i: rand::random(),
            r: route.clone(),
            s: seq,
        };
        let mut payload = serde_json::to_vec(&header).ok()?;
        payload.push(b'\n');
        payload.extend_from_slice(frame);
        Some(payload)
    }

    /// Remembers the chats of an event that could not be queued.
    fn note_dropped(&self, route: &Route) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        if dropped.is_empty() {
            tracing::warn!(
                "redis publish queue is full; other nodes will catch up from the database"
            );
        }
        match route {
            Route::Room(chat_id) | Route::JoinRoom { chat_id, .. } | Route::Resync(chat_id) => {
                dropped.insert(*chat_id);
            }
            Route::Rooms(chat_ids) => dropped.extend(chat_ids.iter().copied()),
            // A lost re-check is not recovered here; the person's next one, or a
            // reconnect, corrects it.
            Route::Recheck(_) => {}
        }
    }

    /// The resync notices for the chats whose events were dropped, as (channel, payload).
    fn resyncs(&self) -> Vec<(String, Vec<u8>)> {
        let chats: Vec<i64> = self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        chats
            .into_iter()
            .filter_map(|chat_id| {
                let payload = self.payload(&Route::Resync(chat_id), None, b"")?;
                Some((self.chat_channel(chat_id), payload))
            })
            .collect()
    }

    /// Handles one message from Redis: decode, skip our own and repeats, deliver.
    fn receive(&self, payload: &[u8]) {
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
        self.hub.deliver(&Arc::new(Envelope {
            route: header.r,
            seq: header.s,
            frame,
        }));
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
        crate::domain::now_ms() + self.config.presence_ttl.as_millis() as i64
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
        let key = self.presence_key(operator_id);
        let _: () = conn.zrem(&key, &self.node).await?;
        let _: () = conn
            .zrembyscore(&key, "-inf", crate::domain::now_ms())
            .await?;
        let left: i64 = conn.zcard(&key).await?;
        Ok(left == 0)
    }

    /// Operators whose every node claim has expired (their nodes died): they are
    /// taken off the index and returned, to be set offline.
    pub async fn expired_operators(&self) -> redis::RedisResult<Vec<i64>> {
        let mut conn = self.conn.clone();
        let ids: Vec<i64> = conn.smembers(self.presence_index()).await?;
        let mut gone = Vec::new();
        for id in ids {
            let key = self.presence_key(id);
            let _: () = conn
                .zrembyscore(&key, "-inf", crate::domain::now_ms())
                .await?;
            let left: i64 = conn.zcard(&key).await?;
            if left == 0 {
                let _: () = conn.srem(self.presence_index(), id).await?;
                gone.push(id);
            }
        }
        Ok(gone)
    }
}

/// Most publishes sent in one pipeline.
const PUBLISH_BATCH: usize = 256;

/// Sends queued publishes in order over one connection: whatever is waiting goes in one
/// pipeline, one round trip, rather than a round trip each.
async fn publisher(
    bus: std::sync::Weak<RedisBus>,
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        // Events dropped on a full queue: their chats are caught up from the database.
        if let Some(bus) = bus.upgrade() {
            batch.extend(bus.resyncs());
        }
        let mut pipe = redis::pipe();
        for (channel, payload) in batch.drain(..) {
            pipe.publish(channel, payload).ignore();
        }
        let sent: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        match sent {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("redis publishing works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "redis publish failed; events are dropped until it is back");
            }
            Err(_) => {}
        }
    }
}

/// Keeps one subscriber connection, reconnecting with backoff; after each reconnect it
/// resubscribes and has every local socket catch up from the database.
async fn subscriber(
    bus: std::sync::Weak<RedisBus>,
    client: redis::Client,
    mut control: mpsc::UnboundedReceiver<Interest>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let Some(strong) = bus.upgrade() else { return };
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                drop(strong);
                tracing::warn!(error = %e, "redis subscriber cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let wanted: Vec<String> = strong.wanted.iter().map(|c| c.clone()).collect();
        if !wanted.is_empty() && sink.subscribe(&wanted).await.is_err() {
            drop(strong);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        if !first {
            tracing::info!("redis subscriber reconnected; catching sockets up");
            strong.hub.resync();
        }
        first = false;
        drop(strong);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => match bus.upgrade() {
                        Some(bus) => bus.receive(msg.get_payload_bytes()),
                        None => return,
                    },
                    None => break,
                },
                interest = control.recv() => {
                    let Some(interest) = interest else { return };
                    let Some(bus) = bus.upgrade() else { return };
                    let ok = match interest {
                        Interest::Join(topic) => {
                            let channel = bus.channel_of(&topic);
                            bus.wanted.insert(channel.clone());
                            let ok = sink.subscribe(&channel).await.is_ok();
                            // Whatever was published before the subscription took hold is
                            // caught up from the database.
                            if let (true, Topic::Chat(chat_id)) = (ok, topic) {
                                bus.hub.resync_room(chat_id);
                            }
                            ok
                        }
                        // Reports may overtake each other: leave only what is still unwanted.
                        Interest::Leave(topic) if bus.hub.wants(topic) => true,
                        Interest::Leave(topic) => {
                            let channel = bus.channel_of(&topic);
                            bus.wanted.remove(&channel);
                            sink.unsubscribe(&channel).await.is_ok()
                        }
                    };
                    if !ok {
                        break;
                    }
                }
            }
        }
        tracing::warn!("redis subscriber connection lost; reconnecting");
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
