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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use self::redis::RedisBus;
pub use self::redis::RedisConfig;

use crate::clock::Clock;
use crate::domain::Live;
use crate::domain::events::{Event, Person};
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

    /// How often to sweep for operators of dead nodes, if there are other nodes at all.
    pub fn sweep_every(&self) -> Option<std::time::Duration> {
        self.redis.as_ref().map(|r| r.sweep_every())
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
                // Only operators' presence is kept across nodes.
                Person::Customer(_) => false,
            }
        })
    }
}
