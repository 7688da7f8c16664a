//! The bus over a Redis Cluster: sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`; Redis 7), so
//! that each chat's channel lives on the master that owns its slot and the cluster's
//! masters share the fan-out between nodes, which one Redis does alone otherwise.
//!
//! Everything goes through the redis crate's cluster connection (RESP3): it routes each
//! command to the master of its channel's slot, follows `MOVED` redirections, keeps a
//! connection to every master and reconnects. The subscriptions are this module's:
//! - A slot that moves to another master (resharding) ends its channels' subscriptions
//!   with a `sunsubscribe` from the old owner. A channel this node still wants is
//!   subscribed again, which the crate routes to the new owner.
//! - A master's connection that breaks takes its subscriptions with it. Every channel
//!   this node wants is asked for again (a channel already subscribed stays so), and
//!   again each second for a few seconds while the connections settle; once the first
//!   round is answered, every local socket catches up from the database.
//! - Whatever was published while a chat's subscription was not in place is caught up
//!   from the database: a join, or a subscription made again after a move, has that
//!   chat's sockets here catch up by seq once Redis confirms it.
//! - A publish that fails has its chat caught up on the other nodes (a resync notice,
//!   sent once Redis takes publishes again), as on one Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use super::{PUBLISH_BATCH, PUBLISH_WINDOW, Publish, RedisBus, RedisConfig};
use crate::hub::{Interest, Topic, Wakes};

/// Connects to the cluster named by `config.url` (its nodes, comma-separated), with the
/// subscriptions' pushes sent to `pushes`. Fails when no node answers.
pub(super) async fn connect(
    config: &RedisConfig,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> RedisResult<ClusterConnection> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nodes: Vec<&str> = config.url.split(',').map(str::trim).collect();
    let mut builder = ClusterClientBuilder::new(nodes)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(pushes)
        // Each publish goes out at once (Nagle's algorithm would hold it for the answer
        // to the one before).
        .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
        .connection_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(5));
    if let Some(file) = &config.ca_file {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(file)?),
        });
    }
    builder.build()?.get_async_connection().await
}

/// Publishes queued events with `SPUBLISH`, each to the master of its channel's slot. A
/// slot has one pipeline in flight at a time, of everything queued for it meanwhile: so
/// a chat's events reach Redis in order (a socket that saw them out of order would read
/// the gap from the database), and under load each round trip carries many. The chats
/// of failed publishes are caught up on the other nodes: resync notices go out with the
/// next events, or within a second. At most [`PUBLISH_WINDOW`] wait.
pub(super) async fn publisher(
    bus: Weak<RedisBus>,
    conn: ClusterConnection,
    mut rx: mpsc::Receiver<Publish>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    // What waits for each slot, the slots with a pipeline in flight, and how many wait.
    let mut queued: HashMap<Slot, Vec<Publish>> = HashMap::new();
    let mut busy: HashSet<Slot> = HashSet::new();
    let mut waiting = 0;
    let mut inflight: FuturesUnordered<BoxFuture<'static, Sent>> = FuturesUnordered::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut failing = false;
    loop {
        let mut ready = Vec::new();
        tokio::select! {
            n = rx.recv_many(&mut batch, PUBLISH_BATCH), if waiting < PUBLISH_WINDOW => {
                if n == 0 {
                    return; // the bus is gone
                }
            }
            Some((slot, chats, sent)) = inflight.next(), if !inflight.is_empty() => {
                busy.remove(&slot);
                ready.push(slot);
                let lost = published(sent, &chats, &mut failing);
                if let Some(bus) = bus.upgrade() {
                    for chat in lost {
                        bus.note_dropped(chat);
                    }
                }
            }
            _ = retry.tick() => {}
        }
        // Events dropped or lost before: their chats are caught up.
        if let Some(bus) = bus.upgrade() {
            batch.extend(bus.resyncs());
        }
        for p in batch.drain(..) {
            let slot = Slot::for_key(p.channel.as_bytes());
            queued.entry(slot).or_default().push(p);
            ready.push(slot);
            waiting += 1;
        }
        for slot in ready {
            if busy.contains(&slot) {
                continue;
            }
            let Some(sending) = queued.remove(&slot) else {
                continue;
            };
            waiting -= sending.len();
            busy.insert(slot);
            let mut pipe = redis::pipe();
            for p in &sending {
                pipe.cmd("SPUBLISH")
                    .arg(p.channel.as_bytes())
                    .arg(&p.payload[..]);
            }
            let chats: Vec<Option<i64>> = sending.iter().map(|p| p.chat).collect();
            let mut conn = conn.clone();
            inflight.push(
                async move {
                    let route = SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                        slot,
                        SlotAddr::Master,
                    ));
                    let sent = conn.route_pipeline(pipe, 0, chats.len(), route).await;
                    (slot, chats, sent)
                }
                .boxed(),
            );
        }
    }
}

/// A pipeline's slot, the chats of its publishes, and Redis's answer.
type Sent = (Slot, Vec<Option<i64>>, RedisResult<Vec<Value>>);

/// The chats of the publishes of a pipeline that did not reach Redis, from its answer.
fn published(
    sent: RedisResult<Vec<Value>>,
    chats: &[Option<i64>],
    failing: &mut bool,
) -> Vec<Option<i64>> {
    let lost: Vec<Option<i64>> = match &sent {
        Err(_) => chats.to_vec(),
        // A refused publish (an ACL, say): its chat is caught up all the same.
        Ok(answers) => answers
            .iter()
            .zip(chats)
            .filter(|(a, _)| matches!(a, Value::ServerError(_)))
            .map(|(_, chat)| *chat)
            .collect(),
    };
    match (lost.is_empty(), *failing) {
        (true, true) => {
            *failing = false;
            tracing::info!("redis cluster takes publishes again");
        }
        (false, false) => {
            *failing = true;
            let error = match &sent {
                Err(e) => e.to_string(),
                Ok(_) => "refused".into(),
            };
            tracing::warn!(
                error,
                "a publish to the redis cluster failed; its chat is caught up from the database"
            );
        }
        _ => {}
    }
    lost
}

/// Subscribes to the channels the hub wants (one `SSUBSCRIBE` each: a command's channels
/// must share a slot), and delivers what arrives. Joins and leaves of one channel are
/// applied in the order the hub reported them; those of different channels at once.
pub(super) async fn subscriber(
    bus: Weak<RedisBus>,
    conn: ClusterConnection,
    mut control: mpsc::UnboundedReceiver<Interest>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    // Channels whose subscription this task is asking for now, with their chat (if any).
    let mut asking: HashMap<String, Option<i64>> = HashMap::new();
    // Subscriptions asked for and not yet answered, and those to ask for again.
    let mut pending = FuturesUnordered::new();
    let mut again: HashSet<String> = HashSet::new();
    // Channels asked for again after a connection broke: once all are answered, every
    // local socket catches up.
    let mut restoring: HashSet<String> = HashSet::new();
    let mut settle_until: Option<tokio::time::Instant> = None;
    // What the bus wants from the start (the broadcasts' channel).
    if let Some(bus) = bus.upgrade() {
        for channel in bus.wanted.iter() {
            asking.insert(channel.clone(), None);
            pending.push(ask(conn.clone(), channel.clone(), true));
        }
    }
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut reports = Vec::new();
    let mut received = Vec::new();
    loop {
        tokio::select! {
            n = control.recv_many(&mut reports, 1024) => {
                if n == 0 {
                    return;
                }
                let Some(bus) = bus.upgrade() else { return };
                // The last report of each channel is the one that counts.
                let mut wanted: HashMap<String, (bool, Option<i64>)> = HashMap::new();
                for interest in reports.drain(..) {
                    match interest {
                        Interest::Join(topic) => {
                            let chat = match topic {
                                Topic::Chat(id) => Some(id),
                                Topic::Person(_) => None,
                            };
                            let channel = bus.channel_of(&topic);
                            bus.wanted.insert(channel.clone());
                            wanted.insert(channel, (true, chat));
                        }
                        // Reports may overtake each other: leave only what is still unwanted.
                        Interest::Leave(topic) if bus.hub.wants(topic) => {}
                        Interest::Leave(topic) => {
                            let channel = bus.channel_of(&topic);
                            bus.wanted.remove(&channel);
                            wanted.insert(channel, (false, None));
                        }
                    }
                }
                for (channel, (join, chat)) in wanted {
                    if join {
                        asking.insert(channel.clone(), chat);
                    }
                    pending.push(ask(conn.clone(), channel, join));
                }
            }
            Some((channel, join, answer)) = pending.next(), if !pending.is_empty() => {
                let Some(bus) = bus.upgrade() else { return };
                let chat = asking.remove(&channel).flatten();
                if restoring.remove(&channel) && restoring.is_empty() {
                    bus.hub.resync();
                }
                match answer {
                    Ok(()) if join => {
                        // Published before the subscription held: caught up from the database.
                        if let Some(chat_id) = chat {
                            bus.hub.resync_room(chat_id);
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "redis cluster subscription failed; trying again");
                        if bus.wanted.contains(&channel) == join {
                            again.insert(channel);
                        }
                    }
                }
            }
            n = pushes.recv_many(&mut received, 1024) => {
                if n == 0 {
                    return;
                }
                let Some(bus) = bus.upgrade() else { return };
                // What one read brings is one batch of wakes for the socket threads.
                let lost = crate::wake::holding_wakes(|| {
                    let mut wakes = Wakes::default();
                    let mut lost = Vec::new();
                    for push in received.drain(..) {
                        lost.extend(handle(&bus, push, &asking, &mut wakes));
                    }
                    lost
                });
                let mut broke = false;
                for lost in lost {
                    match lost {
                        Lost::Channel(channel) => {
                            again.insert(channel);
                        }
                        Lost::Connection => broke = true,
                    }
                }
                // A master's connection broke: every channel is asked for again (each goes
                // to the master of its slot; Redis takes a second subscription as one),
                // and once all are answered every socket here catches up.
                if broke {
                    settle_until = Some(tokio::time::Instant::now() + SETTLE);
                    for channel in bus.wanted.iter() {
                        asking.insert(channel.clone(), None);
                        restoring.insert(channel.clone());
                        pending.push(ask(conn.clone(), channel.clone(), true));
                    }
                    if restoring.is_empty() {
                        bus.hub.resync();
                    }
                }
            }
            _ = retry.tick() => {
                // While the connections settle (a master's connection that broke may be
                // replaced again, its subscriptions with it), every channel is asked for
                // again each tick.
                if settle_until.is_some_and(|t| tokio::time::Instant::now() < t)
                    && let Some(bus) = bus.upgrade()
                {
                    for channel in bus.wanted.iter() {
                        asking.insert(channel.clone(), None);
                        pending.push(ask(conn.clone(), channel.clone(), true));
                    }
                }
            }
        }
        // Subscriptions a slot's move ended, or that failed: asked for again.
        if !again.is_empty()
            && let Some(bus) = bus.upgrade()
        {
            for channel in again.drain() {
                let join = bus.wanted.contains(&channel);
                if join {
                    asking.insert(channel.clone(), bus.chat_of(&channel));
                }
                pending.push(ask(conn.clone(), channel, join));
            }
        }
    }
}

/// How long after a master's connection broke its channels are asked for again each
/// second.
const SETTLE: Duration = Duration::from_secs(3);

/// Subscribes to `channel` (or, not `join`, unsubscribes), and says how it went.
async fn ask(
    mut conn: ClusterConnection,
    channel: String,
    join: bool,
) -> (String, bool, RedisResult<()>) {
    let answer = if join {
        conn.ssubscribe(&channel).await
    } else {
        conn.sunsubscribe(&channel).await
    };
    (channel, join, answer)
}

/// A subscription lost, to ask for again.
enum Lost {
    /// The server ended it: its slot moved to another master.
    Channel(String),
    /// A master's connection broke, and the subscriptions on it with it.
    Connection,
}

/// Handles one push from the cluster: a message is delivered, a resubscription (the
/// crate's, after a slot's move) catches its chat up. Says what was lost.
fn handle(
    bus: &RedisBus,
    push: PushInfo,
    asking: &HashMap<String, Option<i64>>,
    wakes: &mut Wakes,
) -> Option<Lost> {
    if push.kind == PushKind::Disconnection {
        // The node may have restarted, its presence claims gone.
        bus.redis_returned();
        return Some(Lost::Connection);
    }
    let mut data = push.data.into_iter();
    let channel = match data.next()? {
        Value::BulkString(c) => String::from_utf8(c).ok()?,
        _ => return None,
    };
    match push.kind {
        PushKind::SMessage => {
            if let Some(Value::BulkString(payload)) = data.next() {
                bus.receive(Bytes::from(payload), wakes);
            }
            None
        }
        // The crate subscribed again on its own: whatever came meanwhile is caught up.
        // (Our own subscriptions catch up once answered.)
        PushKind::SSubscribe if !asking.contains_key(&channel) => {
            if let Some(chat_id) = bus.chat_of(&channel) {
                bus.hub.resync_room(chat_id);
            }
            None
        }
        PushKind::SUnsubscribe if bus.wanted.contains(&channel) => Some(Lost::Channel(channel)),
        _ => None,
    }
}
