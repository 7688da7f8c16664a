//! What the hub hands to sockets: events encoded once as their JSON frames, each with the
//! route that says whose sockets get it.

use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::events::{Actor, ChatSummary, Event, Person};
use crate::domain::notes::Note;
use crate::domain::notify::Notification;
use crate::domain::routing::QueuePlace;
use crate::domain::{Broadcast, Message, Presence};

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
    /// This person's sockets.
    Person(Person),
    /// The sockets of these customers (in id order) that this node holds.
    Customers(Vec<i64>),
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
    Queue(&'a QueuePlace),
    Note {
        chat_id: i64,
        note: &'a Note,
    },
    Notification {
        event: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        notification: Option<&'a Notification>,
        unread: i64,
    },
    Broadcast {
        broadcast: &'a Broadcast,
    },
}

/// Encodes a server frame. Our frames are plain structs of strings and numbers, which
/// serde_json always encodes; the fallback is unreachable in practice.
pub fn encode(frame: &impl Serialize) -> Utf8Bytes {
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
            Event::ChatJoined { chat, audience } => Envelope {
                route: Route::JoinRoom {
                    chat_id: chat.id,
                    people: audience.clone(),
                },
                seq: None,
                frame: encode(&Frame::Chat {
                    event: "updated",
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
            Event::Notification {
                person,
                notification,
                unread,
            } => Envelope {
                route: Route::Person(*person),
                seq: None,
                frame: encode(&Frame::Notification {
                    event: if notification.is_some() {
                        "created"
                    } else {
                        "read"
                    },
                    notification: notification.as_deref(),
                    unread: *unread,
                }),
            },
            Event::Queue { customer_id, place } => Envelope {
                route: Route::Person(Person::Customer(*customer_id)),
                seq: None,
                frame: encode(&Frame::Queue(place)),
            },
            Event::Note { operator_id, note } => Envelope {
                route: Route::Person(Person::Operator(*operator_id)),
                seq: None,
                frame: encode(&Frame::Note {
                    chat_id: note.chat_id,
                    note,
                }),
            },
            Event::Broadcast {
                broadcast,
                customers,
            } => Envelope {
                route: Route::Customers(customers.clone()),
                seq: None,
                frame: encode(&Frame::Broadcast { broadcast }),
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
