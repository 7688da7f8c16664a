//! Fan-out of committed events: the core announces them through [`crate::domain::Live`],
//! which the bus implements. Each event is encoded to its frame once (see
//! [`crate::hub::Envelope`]), delivered to this node's hub, and with Redis published to the
//! other nodes, whose hubs deliver the same bytes.
//!
//! Delivery guarantee: at most once. The bus never blocks a publisher and never retries;
//! a socket that misses an event (slow, reconnecting) recovers it from the database by seq,
//! which is the truth.

mod redis;
mod resp;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use self::redis::RedisBus;
pub use self::redis::RedisConfig;

use crate::clock::Clock;
use crate::domain::events::{Event, Person};
use crate::domain::{Core, Live};
use crate::hub::{Envelope, Hub, Wakes};

/// The bus of this node: its own hub always, and with Redis the other nodes too.
#[derive(Debug, Clone)]
pub struct Bus {
    hub: Arc<Hub>,
    redis: Option<Arc<RedisBus>>,
}

impl Bus {
    /// The in-process bus: events go straight to this node's hub.
    pub fn new(hub: Arc<Hub>) -> Self {
        Bus { hub, redis: None }
    }

    /// A bus shared with other nodes through Redis. Fails if Redis cannot be reached now;
    /// later outages are survived (see `redis`).
    pub async fn with_redis(
        hub: Arc<Hub>,
        config: RedisConfig,
        clock: Clock,
    ) -> ::redis::RedisResult<Self> {
        let redis = RedisBus::start(config, hub.clone(), clock).await?;
        Ok(Bus {
            hub,
            redis: Some(redis),
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Announces a run of events (a committed batch), in order: encoded once each, to this
    /// node's sockets and, with Redis, the other nodes'. The local sockets they reach are
    /// woken once the run is done (see [`Hub::deliver_all`]). Never blocks and never
    /// fails: see the guarantee above.
    pub fn publish(&self, events: &[Event]) {
        let mut wakes = Wakes::default();
        for event in events {
            let env = Arc::new(Envelope::of(event));
            self.hub.deliver_all(&env, &mut wakes);
            if let Some(redis) = &self.redis {
                redis.publish(&env);
            }
        }
        wakes.wake_all();
    }

    /// Whether the nodes' shared channel answers: `None` without Redis, else whether Redis
    /// answered a PING.
    pub async fn redis_answers(&self) -> Option<bool> {
        let redis = self.redis.as_ref()?;
        Some(match redis.ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "redis does not answer");
                false
            }
        })
    }

    /// An operator's first socket on this node opened.
    pub async fn operator_connected(&self, operator_id: i64) {
        if let Some(redis) = &self.redis
            && let Err(e) = redis.operator_here(operator_id).await
        {
            tracing::warn!(error = %e, "cannot record presence in redis");
        }
    }

    /// An operator's last socket on this node closed; true when no node holds one.
    pub async fn operator_disconnected(&self, operator_id: i64) -> bool {
        match &self.redis {
            None => true,
            Some(redis) => redis.operator_gone(operator_id).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read presence from redis");
                // Without Redis we cannot know of other nodes; leave it to the sweep.
                false
            }),
        }
    }

    /// A customer's first socket on this node opened.
    pub async fn customer_connected(&self, customer_id: i64) {
        if let Some(redis) = &self.redis
            && let Err(e) = redis.customer_here(customer_id).await
        {
            tracing::warn!(error = %e, "cannot record a customer's socket in redis");
        }
    }

    /// A customer's last socket on this node closed (unless one opened meanwhile: then
    /// it is recorded again).
    pub async fn customer_disconnected(&self, customer_id: i64) {
        let Some(redis) = &self.redis else { return };
        let recorded = match redis.customer_gone(customer_id).await {
            Ok(()) if self.hub.is_connected(Person::Customer(customer_id)) => {
                redis.customer_here(customer_id).await
            }
            other => other,
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record a customer's socket in redis");
        }
    }

    /// Whether another node holds a socket of the operator (never, without Redis; when
    /// Redis cannot say, no).
    pub async fn operator_elsewhere(&self, operator_id: i64) -> bool {
        match &self.redis {
            None => false,
            Some(redis) => redis.operator_elsewhere(operator_id).await.unwrap_or(false),
        }
    }

    /// Operators whose every node is gone (only with Redis).
    pub async fn expired_operators(&self) -> Vec<i64> {
        match &self.redis {
            None => Vec::new(),
            Some(redis) => redis.expired_operators().await.unwrap_or_default(),
        }
    }

    /// Resolves after `every`, or sooner when Redis comes back after an outage (without
    /// Redis, after `every`).
    pub async fn next_sweep(&self, every: Duration) {
        match &self.redis {
            Some(redis) => redis.next_sweep(every).await,
            None => tokio::time::sleep(every).await,
        }
    }

    /// Events waiting to be published to the other nodes (none without Redis).
    pub fn queued(&self) -> usize {
        self.redis.as_ref().map_or(0, |r| r.queued())
    }

    /// How often to sweep for operators of dead nodes, if there are other nodes at all.
    pub fn sweep_every(&self) -> Option<std::time::Duration> {
        self.redis.as_ref().map(|r| r.sweep_every())
    }
}

/// How often a node compares the chats that moved lately with what it has seen announced
/// (2 s): a message committed but never announced here reaches this node's sockets within
/// two rounds of its commit (see [`reconcile`]).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// Committed means delivered, and access changes reach every node. Every
/// [`RECONCILE_EVERY`], reads the chats active lately and their newest seq; a chat this
/// node follows whose newest commit has not been announced here a round later (its node
/// died between the commit and the publish, or the bus lost it) has its sockets catch up
/// from the database and its long-polls read again. Waiting a round keeps announcements
/// still on their way from counting. It also reads the people whose access changed lately
/// (assignments, revoked sessions), and has their sockets here check their session and
/// re-read which chats they may follow (which the announcement of the change would have
/// done, if it came). Ends when the core is gone.
pub async fn reconcile(core: std::sync::Weak<Core>, hub: Arc<Hub>, every: Duration) {
    // Chats found behind last round, and the seq they were behind at.
    let mut behind_before: HashMap<i64, i64> = HashMap::new();
    // People whose sockets were re-checked for an access change, and its time.
    let mut rechecked: HashMap<Person, i64> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        // Two rounds, and the activity time's step (it follows messages to within 1 s).
        let window = 2 * every + Duration::from_secs(2);
        let since = core.now_ms() - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let (latest, changed) = match tokio::try_join!(
            core.chats_active_since(since),
            core.access_changed_since(since)
        ) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the chats and access changed lately");
                continue;
            }
        };
        drop(core);
        // An access change whose announcement never came: each of the person's sockets
        // here checks its session and re-reads what it may follow (once per change).
        rechecked.retain(|_, at| *at >= since);
        for (person, at) in changed {
            if rechecked.insert(person, at) != Some(at) {
                hub.recheck(person);
            }
        }
        let mut behind_now = HashMap::new();
        for (chat_id, seq) in hub.behind(&latest) {
            match behind_before.get(&chat_id) {
                Some(&then) if hub.seen(chat_id).is_none_or(|seen| seen < then) => {
                    tracing::info!(
                        chat_id,
                        seq,
                        "catching up a chat whose messages were not announced here"
                    );
                    hub.catch_up_chat(chat_id, seq);
                }
                _ => {
                    behind_now.insert(chat_id, seq);
                }
            }
        }
        behind_before = behind_now;
        hub.forget_unfollowed();
    }
}

impl Live for Bus {
    fn announce(&self, events: &[Event]) {
        self.publish(events);
    }

    fn is_connected(&self, person: Person) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if self.hub.is_connected(person) {
                return true;
            }
            match person {
                Person::Operator(id) => self.operator_elsewhere(id).await,
                Person::Customer(id) => match &self.redis {
                    None => false,
                    Some(redis) => redis.customer_elsewhere(id).await.unwrap_or(false),
                },
            }
        })
    }
}
