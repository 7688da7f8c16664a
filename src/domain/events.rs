//! What the core announces after a commit, and the interface it announces through
//! ([`Live`]): the bus implements it, encodes each event once, and the hub hands the bytes
//! to every interested socket.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::{ChatStatus, Message, Presence};

/// A chat member as the hub knows them: whose sockets to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Person {
    Customer(i64),
    Operator(i64),
}

impl Person {
    /// `customer` or `operator`, as stored and on the wire.
    pub fn kind(self) -> &'static str {
        match self {
            Person::Customer(_) => "customer",
            Person::Operator(_) => "operator",
        }
    }

    pub fn id(self) -> i64 {
        match self {
            Person::Customer(id) | Person::Operator(id) => id,
        }
    }

    /// The person of a stored kind (`customer`, `operator`) and id; `None` for another
    /// kind (`system`).
    pub fn from_kind(kind: &str, id: i64) -> Option<Person> {
        match kind {
            "customer" => Some(Person::Customer(id)),
            "operator" => Some(Person::Operator(id)),
            _ => None,
        }
    }
}

/// Who wrote or did something, on the wire: `{"kind": "customer", "id": 7}`.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    pub kind: &'static str,
    pub id: i64,
}

impl From<Person> for Actor {
    fn from(p: Person) -> Self {
        Actor {
            kind: p.kind(),
            id: p.id(),
        }
    }
}

/// A chat's identity and status, as carried by `chat` frames.
#[derive(Debug, Clone, Serialize)]
pub struct ChatSummary {
    pub id: i64,
    pub inbox_id: i64,
    pub customer_id: i64,
    pub operator_id: Option<i64>,
    pub status: ChatStatus,
    pub last_seq: i64,
}

/// Something committed that live clients should hear about.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new message; `seq` orders it within the chat.
    Message(Message),
    /// A member's cursors moved.
    Receipt {
        chat_id: i64,
        member: Person,
        received_seq: i64,
        read_seq: i64,
    },
    /// A chat was opened: `audience` (its customer and the operators who see its inbox)
    /// join its room and hear of it.
    ChatCreated {
        chat: ChatSummary,
        audience: Vec<Person>,
    },
    /// A chat's status or operator changed.
    ChatUpdated(ChatSummary),
    /// A chat changed (it reopened, or moved to another inbox) and `audience` (its
    /// customer and the operators who now see it) join its room first, as for a new chat.
    ChatJoined {
        chat: ChatSummary,
        audience: Vec<Person>,
    },
    /// Someone is typing (not stored).
    Typing {
        chat_id: i64,
        who: Person,
        typing: bool,
    },
    /// What this person may see changed (an assignment came or went): their sockets
    /// re-read their chats, leaving rooms they may no longer be in. No frame is sent.
    AccessChanged(Person),
    /// A person's notifications changed: one was made (`notification`), or some were
    /// marked read; `unread` is how many stay unread. Heard by the person's sockets.
    Notification {
        person: Person,
        notification: Option<std::sync::Arc<super::notify::Notification>>,
        unread: i64,
    },
    /// A queued chat's place changed; heard by its customer's sockets.
    Queue {
        customer_id: i64,
        place: super::routing::QueuePlace,
    },
    /// A private note was written in a chat; heard by one operator's sockets (announced
    /// once for each operator who sees the chat, never to its customer).
    Note {
        operator_id: i64,
        note: std::sync::Arc<super::notes::Note>,
    },
    /// A store broadcast: one event for its whole audience, `customers` (in id order),
    /// whichever node holds their sockets. Heard by those customers' sockets.
    Broadcast {
        broadcast: std::sync::Arc<super::Broadcast>,
        customers: Vec<i64>,
    },
    /// An operator's presence changed; heard in the rooms of the operator's open chats.
    Presence {
        operator_id: i64,
        presence: Presence,
        chat_ids: Vec<i64>,
    },
}

/// The live side of souq as the core sees it: where committed events go, and who is
/// connected. The server's bus implements it (in process, or across nodes with Redis).
pub trait Live: Send + Sync + std::fmt::Debug {
    /// Announces a run of events (a committed batch) in order. Never blocks and never
    /// fails: delivery is at most once, and a client that misses an event recovers it
    /// from the database by seq.
    fn announce(&self, events: &[Event]);

    /// Whether a socket of `person` is open on this node, or (with several nodes) on
    /// another; when another node cannot be asked, no.
    fn is_connected(&self, person: Person) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}
