//! This node's live connections: per-chat rooms of sessions, the sessions of each person,
//! and long-poll waiters. The hub only hands encoded frames to bounded session queues; it
//! never touches the database and never waits on a socket.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::{Envelope, Route};
use crate::domain::events::Person;

/// What a node can be subscribed to on a shared bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Chat(i64),
    Person(Person),
}

/// The hub's news for a shared bus: this node now has, or no longer has, sockets that
/// care about a topic.
#[derive(Debug, Clone, Copy)]
pub enum Interest {
    Join(Topic),
    Leave(Topic),
}

/// What a session's writer receives. Kept small (24 bytes): every socket's queue holds
/// a block of them from the start.
#[derive(Debug)]
pub enum Outbound {
    /// An event, shared by every session it reaches; messages carry their chat and seq.
    Event(Arc<Envelope>),
    /// A frame for this session only (acks, errors, resume results).
    Direct(Box<Utf8Bytes>),
    /// Re-read which chats this socket may follow: leave the others, join new ones.
    Recheck,
    /// Catch followed chats up from the database from this socket's own cursors (the bus
    /// may have lost events); `None` means every chat.
    Resync(Option<i64>),
    /// Catch chats up from the given seqs.
    Resume(Box<Replay>),
}

impl Outbound {
    pub fn direct(frame: Utf8Bytes) -> Outbound {
        Outbound::Direct(Box::new(frame))
    }
}

/// A catch-up to run: chats and the seq to start each from; `true` also sends the chat's
/// receipts (what a client asked to resume, rather than the gap of joining).
#[derive(Debug)]
pub struct Replay {
    /// Names the client's request, if it was one.
    pub id: Option<String>,
    pub chats: Vec<(i64, i64, bool)>,
    /// Replay from the given seqs even over what was sent (a client's resume frame);
    /// false at connect, where nothing sent is sent again.
    pub rewind: bool,
}

/// Why the server closes a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The outbound queue overflowed: the client reads too slowly.
    SlowConsumer,
    /// The server is shutting down; reconnect elsewhere.
    Shutdown,
    /// No frame or pong within the heartbeat timeout.
    Timeout,
    /// The client sent a frame over the size limit.
    TooBig,
    /// The server could not read what the socket needed; the client should resume.
    Unavailable,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 4008,
            CloseReason::Shutdown => 1001,
            CloseReason::Timeout => 4002,
            CloseReason::TooBig => 1009,
            CloseReason::Unavailable => 1011,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer: reconnect and resume from your last seq",
            CloseReason::Shutdown => "server shutting down: reconnect",
            CloseReason::Timeout => "heartbeat timeout",
            CloseReason::TooBig => "frame too big",
            CloseReason::Unavailable => "server error: reconnect and resume from your last seq",
        }
    }
}

/// One live socket, as the hub sees it.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub person: Person,
    tx: mpsc::Sender<Outbound>,
    /// Chats whose rooms this session is in (so that leaving is cheap).
    chats: Mutex<HashSet<i64>>,
    /// Set once, when the session is asked to close; both socket tasks watch it.
    closing: watch::Sender<Option<CloseReason>>,
    is_closing: AtomicBool,
}

impl Session {
    /// Queues a frame without waiting. A full queue marks the session for closing: one
    /// slow reader must never hold up the room.
    pub fn push(&self, out: Outbound) {
        if self.is_closing.load(Ordering::Relaxed) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(out) {
            self.close(CloseReason::SlowConsumer);
        }
    }

    /// Asks the session's writer to close the socket with `reason` (the first one wins).
    pub fn close(&self, reason: CloseReason) {
        let changed = self.closing.send_if_modified(|closing| {
            let first = closing.is_none();
            if first {
                *closing = Some(reason);
            }
            first
        });
        if changed {
            self.is_closing.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves with the reason once the session is asked to close.
    pub async fn close_requested(&self) -> CloseReason {
        let mut rx = self.closing.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => *reason,
            Err(_) => None,
        };
        reason.unwrap_or(CloseReason::Shutdown)
    }

    pub fn in_chat(&self, chat_id: i64) -> bool {
        self.chats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&chat_id)
    }

    pub fn chat_ids(&self) -> Vec<i64> {
        self.chats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Rooms, people and waiters of this node.
#[derive(Debug, Default)]
pub struct Hub {
    rooms: DashMap<i64, Vec<Arc<Session>>>,
    people: DashMap<Person, Vec<Arc<Session>>>,
    /// Long-poll waiters per chat, woken with the newest seq.
    waiters: DashMap<i64, watch::Sender<i64>>,
    next_id: AtomicU64,
    /// Where to report interest changes, when a shared bus listens.
    interest: OnceLock<mpsc::UnboundedSender<Interest>>,
}

impl Hub {
    pub fn new() -> Self {
        Hub::default()
    }

    /// Registers a socket of `person` with an outbound queue of `capacity` frames.
    pub fn connect(
        &self,
        person: Person,
        capacity: usize,
    ) -> (Arc<Session>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            person,
            tx,
            chats: Mutex::new(HashSet::new()),
            closing: watch::channel(None).0,
            is_closing: AtomicBool::new(false),
        });
        let mut first = false;
        self.people
            .entry(person)
            .and_modify(|s| s.push(session.clone()))
            .or_insert_with(|| {
                first = true;
                vec![session.clone()]
            });
        if first {
            self.report(Interest::Join(Topic::Person(person)));
        }
        (session, rx)
    }

    /// Reports interest changes to `tx` from now on (the Redis bus).
    pub fn watch_interest(&self, tx: mpsc::UnboundedSender<Interest>) {
        let _ = self.interest.set(tx);
    }

    fn report(&self, interest: Interest) {
        if let Some(tx) = self.interest.get() {
            let _ = tx.send(interest);
        }
    }

    /// Puts a session in a chat's room (no-op if it is there).
    pub fn join(&self, session: &Arc<Session>, chat_id: i64) {
        let inserted = session
            .chats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chat_id);
        if inserted {
            let mut first = false;
            self.rooms
                .entry(chat_id)
                .and_modify(|m| m.push(session.clone()))
                .or_insert_with(|| {
                    first = true;
                    vec![session.clone()]
                });
            if first {
                self.report(Interest::Join(Topic::Chat(chat_id)));
            }
        }
    }

    /// Takes a session out of one chat's room.
    pub fn leave(&self, session: &Arc<Session>, chat_id: i64) {
        let removed = session
            .chats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chat_id);
        if !removed {
            return;
        }
        let emptied = self.rooms.remove_if_mut(&chat_id, |_, members| {
            members.retain(|s| s.id != session.id);
            members.is_empty()
        });
        if emptied.is_some() {
            self.report(Interest::Leave(Topic::Chat(chat_id)));
        }
    }

    /// Removes a session from every room; returns whether it was its person's last one.
    pub fn disconnect(&self, session: &Arc<Session>) -> bool {
        for chat_id in session.chat_ids() {
            let emptied = self.rooms.remove_if_mut(&chat_id, |_, members| {
                members.retain(|s| s.id != session.id);
                members.is_empty()
            });
            if emptied.is_some() {
                self.report(Interest::Leave(Topic::Chat(chat_id)));
            }
        }
        let mut last = false;
        self.people.remove_if_mut(&session.person, |_, sessions| {
            sessions.retain(|s| s.id != session.id);
            last = sessions.is_empty();
            last
        });
        if last {
            self.report(Interest::Leave(Topic::Person(session.person)));
        }
        last
    }

    /// Whether `person` has a socket on this node.
    pub fn is_connected(&self, person: Person) -> bool {
        self.people.get(&person).is_some_and(|s| !s.is_empty())
    }

    /// Hands an encoded event to every session it concerns.
    pub fn deliver(&self, env: &Arc<Envelope>) {
        match &env.route {
            Route::Room(chat_id) => self.to_room(*chat_id, env),
            Route::JoinRoom { chat_id, people } => {
                for person in people {
                    let sessions = self
                        .people
                        .get(person)
                        .map(|s| s.clone())
                        .unwrap_or_default();
                    for session in &sessions {
                        self.join(session, *chat_id);
                    }
                }
                self.to_room(*chat_id, env);
            }
            Route::Resync(chat_id) => {
                self.resync_room(*chat_id);
                self.wake_waiters(*chat_id, 0);
            }
            Route::Recheck(person) => {
                let sessions = self
                    .people
                    .get(person)
                    .map(|s| s.clone())
                    .unwrap_or_default();
                for session in sessions {
                    session.push(Outbound::Recheck);
                }
            }
            Route::Rooms(chat_ids) => {
                let mut reached = HashSet::new();
                for chat_id in chat_ids {
                    let members = self
                        .rooms
                        .get(chat_id)
                        .map(|m| m.clone())
                        .unwrap_or_default();
                    for member in members {
                        if reached.insert(member.id) {
                            member.push(Outbound::Event(env.clone()));
                        }
                    }
                }
            }
        }
        if let (Route::Room(chat_id), Some(seq)) = (&env.route, env.seq) {
            self.wake_waiters(*chat_id, seq);
        }
    }

    fn to_room(&self, chat_id: i64, env: &Arc<Envelope>) {
        // Clone the member list (a few Arcs) so that no map lock is held while pushing.
        let members = match self.rooms.get(&chat_id) {
            Some(m) => m.clone(),
            None => return,
        };
        for member in members {
            member.push(Outbound::Event(env.clone()));
        }
    }

    /// A receiver that changes when a message is committed in `chat_id`.
    pub fn waiter(&self, chat_id: i64) -> watch::Receiver<i64> {
        let mut first = false;
        let rx = self
            .waiters
            .entry(chat_id)
            .or_insert_with(|| {
                first = true;
                watch::channel(0).0
            })
            .subscribe();
        if first {
            // Waiters need the chat's events from other nodes as much as sockets do.
            self.report(Interest::Join(Topic::Chat(chat_id)));
        }
        rx
    }

    fn wake_waiters(&self, chat_id: i64, seq: i64) {
        let removed = self.waiters.remove_if(&chat_id, |_, tx| {
            tx.send_replace(seq);
            tx.receiver_count() == 0
        });
        if removed.is_some() {
            self.report(Interest::Leave(Topic::Chat(chat_id)));
        }
    }

    /// Drops the waiter entry of a chat nobody waits on any more.
    pub fn forget_waiter(&self, chat_id: i64) {
        let removed = self
            .waiters
            .remove_if(&chat_id, |_, tx| tx.receiver_count() == 0);
        if removed.is_some() {
            self.report(Interest::Leave(Topic::Chat(chat_id)));
        }
    }

    /// Has every socket catch up all its chats from the database.
    pub fn resync(&self) {
        for entry in self.people.iter() {
            for session in entry.value() {
                session.push(Outbound::Resync(None));
            }
        }
    }

    /// Has the sockets of one room catch it up from the database.
    pub fn resync_room(&self, chat_id: i64) {
        let members = self
            .rooms
            .get(&chat_id)
            .map(|m| m.clone())
            .unwrap_or_default();
        for member in members {
            member.push(Outbound::Resync(Some(chat_id)));
        }
    }

    /// Operators with a socket on this node.
    pub fn local_operators(&self) -> Vec<i64> {
        self.people
            .iter()
            .filter_map(|e| match *e.key() {
                Person::Operator(id) => Some(id),
                Person::Customer(_) => None,
            })
            .collect()
    }

    /// Asks every socket to close with 1001 so that clients reconnect elsewhere.
    pub fn shutdown(&self) {
        for entry in self.people.iter() {
            for session in entry.value() {
                session.close(CloseReason::Shutdown);
            }
        }
    }

    /// Whether this node has sockets (or long-poll waiters) that care about `topic`.
    pub fn wants(&self, topic: Topic) -> bool {
        match topic {
            Topic::Chat(chat_id) => {
                self.room_size(chat_id) > 0 || self.waiters.contains_key(&chat_id)
            }
            Topic::Person(person) => self.is_connected(person),
        }
    }

    /// Whether no socket is connected to this node.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// Number of sessions in a chat's room on this node.
    pub fn room_size(&self, chat_id: i64) -> usize {
        self.rooms.get(&chat_id).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every socket's queue allocates a block of 32 of these when it opens.
    #[test]
    fn outbound_stays_small() {
        assert!(
            std::mem::size_of::<Outbound>() <= 24,
            "Outbound is {} bytes",
            std::mem::size_of::<Outbound>()
        );
    }
}
