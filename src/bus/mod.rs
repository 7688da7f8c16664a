//! Fan-out of committed events. Each event is encoded to its JSON frame once, here, and
//! the same bytes go to every socket that should have it.
//!
//! Delivery guarantee: at most once. The bus never blocks a publisher and never retries;
//! a socket that misses an event (slow, reconnecting) recovers it from the database by seq,
//! which is the truth.

mod redis;
mod resp;

use std::sync::Arc;

use serde::Serialize;

use self::redis::RedisBus;
pub use self::redis::RedisConfig;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::events::{Actor, ChatSummary, Event, Person};
use crate::domain::{Message, Presence};
use crate::hub::{Hub, Wakes};

/// An encoded event with what the hub needs to route it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub route: Route,
    /// For messages: the seq, so that each socket can keep its chat in order.
    pub seq: Option<i64>,
    pub frame: Utf8Bytes,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Route {
    /// Everyone in the chat's room.
    Room(i64),
    /// These people join the chat's room first, then everyone in it hears.
    JoinRoom { chat_id: i64, people: Vec<Person> },
    /// Everyone in any of these rooms, once each.
    Rooms(Vec<i64>),
    /// This person's sockets re-check which chats they may follow (the frame is empty and
    /// not sent).
    Recheck(Person),
    /// The chat's sockets and waiters catch up from the database: a node could not pass
    /// on some of its events (the frame is empty and not sent).
    Resync(i64),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Frame<'a> {
    Message {
        chat_id: i64,
        message: &'a Message,
    },
    Receipt {
        chat_id: i64,
        member: Actor,
        received_seq: i64,
        read_seq: i64,
    },
    Chat {
        event: &'static str,
        chat: &'a ChatSummary,
    },
    Typing {
        chat_id: i64,
        who: Actor,
        typing: bool,
    },
    Presence {
        operator_id: i64,
        presence: Presence,
    },
}

/// Encodes a server frame. Our frames are plain structs of strings and numbers, which
/// serde_json always encodes; the fallback is unreachable in practice.
pub(crate) fn encode(frame: &impl Serialize) -> Utf8Bytes {
    match serde_json::to_string(frame) {
        Ok(text) => Utf8Bytes::from(text),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a frame");
            Utf8Bytes::from_static(
                r#"{"type":"error","code":"internal","message":"encoding failed"}"#,
            )
        }
    }
}

impl Envelope {
    /// The chat whose order this event keeps: set for messages (with `seq`).
    pub fn ordered(&self) -> Option<(i64, i64)> {
        match (&self.route, self.seq) {
            (Route::Room(chat_id), Some(seq)) => Some((*chat_id, seq)),
            _ => None,
        }
    }

    pub fn of(event: &Event) -> Envelope {
        match event {
            Event::Message(m) => Envelope {
                route: Route::Room(m.chat_id),
                seq: Some(m.seq),
                frame: encode(&Frame::Message {
                    chat_id: m.chat_id,
                    message: m,
                }),
            },
            Event::Receipt {
                chat_id,
                member,
                received_seq,
                read_seq,
            } => Envelope {
                route: Route::Room(*chat_id),
                seq: None,
                frame: encode(&Frame::Receipt {
                    chat_id: *chat_id,
                    member: (*member).into(),
                    received_seq: *received_seq,
                    read_seq: *read_seq,
                }),
            },
            Event::ChatCreated { chat, audience } => Envelope {
                route: Route::JoinRoom {
                    chat_id: chat.id,
                    people: audience.clone(),
                },
                seq: None,
                frame: encode(&Frame::Chat {
                    event: "created",
                    chat,
                }),
            },
            Event::ChatUpdated(chat) => Envelope {
                route: Route::Room(chat.id),
                seq: None,
                frame: encode(&Frame::Chat {
                    event: "updated",
                    chat,
                }),
            },
            Event::Typing {
                chat_id,
                who,
                typing,
            } => Envelope {
                route: Route::Room(*chat_id),
                seq: None,
                frame: encode(&Frame::Typing {
                    chat_id: *chat_id,
                    who: (*who).into(),
                    typing: *typing,
                }),
            },
            Event::AccessChanged(person) => Envelope {
                route: Route::Recheck(*person),
                seq: None,
                frame: Utf8Bytes::from_static(""),
            },
            Event::Presence {
                operator_id,
                presence,
                chat_ids,
            } => Envelope {
                route: Route::Rooms(chat_ids.clone()),
                seq: None,
                frame: encode(&Frame::Presence {
                    operator_id: *operator_id,
                    presence: *presence,
                }),
            },
        }
    }
}

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
    pub async fn with_redis(hub: Arc<Hub>, config: RedisConfig) -> ::redis::RedisResult<Self> {
        let redis = RedisBus::start(config, hub.clone()).await?;
        Ok(Bus {
            hub,
            redis: Some(redis),
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Announces a committed event. Never blocks and never fails: see the guarantee above.
    pub fn publish(&self, event: Event) {
        self.publish_all(std::iter::once(event), &mut Wakes::default());
    }

    /// Announces a run of events (a committed batch), in order. The local sockets they
    /// reach are woken through `wakes`, once the caller is done (see [`Hub::deliver_all`]).
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>, wakes: &mut Wakes) {
        for event in events {
            let env = Arc::new(Envelope::of(&event));
            self.hub.deliver_all(&env, wakes);
            if let Some(redis) = &self.redis {
                redis.publish(&env);
            }
        }
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
