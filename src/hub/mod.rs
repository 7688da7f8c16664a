//! This node's live connections: per-chat rooms of sessions, the sessions of each person,
//! and long-poll waiters. The hub only hands encoded frames ([`Envelope`]) to bounded
//! session queues; it never touches the database and never waits on a socket.

mod frame;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use dashmap::DashMap;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use self::frame::{Envelope, Route, encode};
use crate::domain::events::Person;
use crate::metrics::Metrics;

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
    /// Time for a heartbeat: close the socket if it has been silent too long or its
    /// token has expired, else ping.
    Ping,
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
    /// The token the socket signed in with has expired.
    Expired,
    /// The client broke the WebSocket protocol (an unmasked frame, a reserved opcode).
    Protocol,
    /// The client sent a text frame that is not UTF-8.
    NotUtf8,
    /// The session the socket signed in with was ended (signed out, or revoked).
    Revoked,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 4008,
            CloseReason::Shutdown => 1001,
            CloseReason::Timeout => 4002,
            CloseReason::TooBig => 1009,
            CloseReason::Unavailable => 1011,
            CloseReason::Expired => 4001,
            CloseReason::Protocol => 1002,
            CloseReason::NotUtf8 => 1007,
            CloseReason::Revoked => 4001,
        }
    }

    /// The reason as a metric's label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Timeout => "timeout",
            CloseReason::TooBig => "too_big",
            CloseReason::Unavailable => "unavailable",
            CloseReason::Expired => "expired",
            CloseReason::Protocol => "protocol",
            CloseReason::NotUtf8 => "not_utf8",
            CloseReason::Revoked => "revoked",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer: reconnect and resume from your last seq",
            CloseReason::Shutdown => "server shutting down: reconnect",
            CloseReason::Timeout => "heartbeat timeout",
            CloseReason::TooBig => "frame too big",
            CloseReason::Unavailable => "server error: reconnect and resume from your last seq",
            CloseReason::Expired => "session expired: sign in again",
            CloseReason::Protocol => "protocol error",
            CloseReason::NotUtf8 => "text frames must be UTF-8",
            CloseReason::Revoked => "session revoked: sign in again",
        }
    }
}

/// One live socket, as the hub sees it: its rooms, and the mailbox its task reads.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub person: Person,
    /// Most frames waiting in the mailbox before the socket counts as a slow consumer.
    capacity: usize,
    mailbox: Mutex<Mailbox>,
    /// Chats whose rooms this session is in (so that leaving is cheap). Joining and
    /// leaving a room happen under this lock, so that a join racing the disconnect
    /// cannot leave the session in a room after it is gone.
    chats: Mutex<Chats>,
}

#[derive(Debug, Default)]
struct Chats {
    ids: HashSet<i64>,
    /// Disconnected: joins no more rooms.
    gone: bool,
}

/// What waits for a socket's task. A plain queue behind a lock rather than a channel: an
/// idle socket keeps no buffer (a channel keeps a block of slots from the start), and the
/// task takes everything waiting at once.
#[derive(Debug, Default)]
struct Mailbox {
    queue: VecDeque<Outbound>,
    /// Set once, when the session is asked to close (the first reason wins).
    closing: Option<CloseReason>,
    /// The socket's task, while it waits for mail.
    waker: Option<Waker>,
}

/// Adds a session to the sessions under `key`; true if it is the first there.
fn add_to<K: Eq + std::hash::Hash>(
    map: &DashMap<K, Vec<Arc<Session>>>,
    key: K,
    session: &Arc<Session>,
) -> bool {
    let mut first = false;
    map.entry(key)
        .and_modify(|m| m.push(session.clone()))
        .or_insert_with(|| {
            first = true;
            vec![session.clone()]
        });
    first
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves nothing half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Socket tasks to wake once a run of pushes is done, each once (see [`Hub::deliver_all`]).
#[derive(Debug, Default)]
pub struct Wakes(Vec<Waker>);

impl Wakes {
    pub fn wake_all(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

impl Session {
    /// Queues a frame without waiting. A full queue marks the session for closing: one
    /// slow reader must never hold up the room.
    pub fn push(&self, out: Outbound) {
        if let Some(waker) = self.push_quietly(out) {
            waker.wake();
        }
    }

    /// Queues `out` ahead of everything queued: the ready frame, which comes first
    /// whatever reached the session while it was starting.
    pub fn push_first(&self, out: Outbound) {
        let waker = {
            let mut mailbox = lock(&self.mailbox);
            if mailbox.closing.is_some() {
                return;
            }
            mailbox.queue.push_front(out);
            mailbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// [`Session::push`], leaving the waking to the caller: the waker, if the task was
    /// waiting for mail (and no push since has taken it).
    fn push_quietly(&self, out: Outbound) -> Option<Waker> {
        let mut mailbox = lock(&self.mailbox);
        if mailbox.closing.is_some() {
            return None;
        }
        if mailbox.queue.len() >= self.capacity {
            // The client resumes from its last seq after reconnecting: nothing queued
            // is worth sending first.
            mailbox.queue = VecDeque::new();
            mailbox.closing = Some(CloseReason::SlowConsumer);
        } else {
            mailbox.queue.push_back(out);
        }
        mailbox.waker.take()
    }

    /// Asks the socket's task to close the socket with `reason` (the first one wins), after
    /// what is already queued.
    pub fn close(&self, reason: CloseReason) {
        let waker = {
            let mut mailbox = lock(&self.mailbox);
            mailbox.closing.get_or_insert(reason);
            mailbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves everything queued into `into` (which the caller has emptied); once nothing is
    /// queued and the session is closing, gives the reason. Pending (until the next push
    /// or close) when there is neither.
    pub fn poll_mail(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Outbound>,
    ) -> Poll<Result<(), CloseReason>> {
        let mut mailbox = lock(&self.mailbox);
        if !mailbox.queue.is_empty() {
            // Swapping hands the buffers back and forth: neither is allocated again.
            std::mem::swap(&mut mailbox.queue, into);
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = mailbox.closing {
            return Poll::Ready(Err(reason));
        }
        match &mut mailbox.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub fn in_chat(&self, chat_id: i64) -> bool {
        lock(&self.chats).ids.contains(&chat_id)
    }

    pub fn chat_ids(&self) -> Vec<i64> {
        lock(&self.chats).ids.iter().copied().collect()
    }
}

/// Rooms, people and waiters of this node.
#[derive(Debug, Default)]
pub struct Hub {
    rooms: DashMap<i64, Vec<Arc<Session>>>,
    people: DashMap<Person, Vec<Arc<Session>>>,
    /// Long-poll waiters per chat, woken with the newest seq.
    waiters: DashMap<i64, watch::Sender<i64>>,
    /// The newest seq announced here per chat this node follows (see [`Hub::behind`]).
    seen: DashMap<i64, i64>,
    next_id: AtomicU64,
    /// Set once the server is told to stop: it says it is not ready for new clients.
    draining: AtomicBool,
    /// Set once the server stops: long-polls no longer wait.
    stopping: AtomicBool,
    /// Where to report interest changes, when a shared bus listens.
    interest: OnceLock<mpsc::UnboundedSender<Interest>>,
    /// The server's counts: open sockets, deliveries.
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new() -> Self {
        Hub::default()
    }

    /// A hub that counts into the server's `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Hub {
            metrics,
            ..Hub::default()
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Registers a socket of `person` whose mailbox holds up to `capacity` frames.
    pub fn connect(&self, person: Person, capacity: usize) -> Arc<Session> {
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            person,
            capacity,
            mailbox: Mutex::default(),
            chats: Mutex::default(),
        });
        if add_to(&self.people, person, &session) {
            self.report(Interest::Join(Topic::Person(person)));
        }
        self.metrics.sockets_open.inc();
        session
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

    /// Puts a session in a chat's room (no-op if it is there, or disconnected).
    pub fn join(&self, session: &Arc<Session>, chat_id: i64) {
        let mut chats = lock(&session.chats);
        if chats.gone || !chats.ids.insert(chat_id) {
            return;
        }
        if add_to(&self.rooms, chat_id, session) {
            self.report(Interest::Join(Topic::Chat(chat_id)));
        }
    }

    /// Takes a session out of one chat's room.
    pub fn leave(&self, session: &Arc<Session>, chat_id: i64) {
        let mut chats = lock(&session.chats);
        if chats.ids.remove(&chat_id) {
            self.leave_room(session, chat_id);
        }
    }

    fn leave_room(&self, session: &Session, chat_id: i64) {
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
        {
            let mut chats = lock(&session.chats);
            if !chats.gone {
                self.metrics.sockets_open.dec();
            }
            chats.gone = true;
            for chat_id in std::mem::take(&mut chats.ids) {
                self.leave_room(session, chat_id);
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
        self.deliver_all(env, &mut Wakes::default());
    }

    /// [`Hub::deliver`] as one of a run of events (a committed batch, what one read from
    /// another node brought): the sessions it reaches are woken once the run is done,
    /// through `wakes`. A socket then writes all of the run that is its own before one
    /// flush, rather than a write for each event.
    pub fn deliver_all(&self, env: &Arc<Envelope>, wakes: &mut Wakes) {
        match &env.route {
            Route::Room(chat_id) => self.to_room(*chat_id, env, wakes),
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
                self.to_room(*chat_id, env, wakes);
            }
            Route::Resync(chat_id) => {
                self.resync_room(*chat_id);
                self.wake_waiters(*chat_id, 0);
            }
            Route::Recheck(person) => self.recheck(*person),
            Route::Person(person) => {
                for session in self.sessions_of(*person) {
                    session.push(Outbound::Event(env.clone()));
                    self.metrics.deliveries.inc();
                }
            }
            Route::Customers(ids) => self.to_customers(ids, env, wakes),
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
                            self.metrics.deliveries.inc();
                        }
                    }
                }
            }
        }
        match (&env.route, env.seq) {
            (Route::Room(chat_id), Some(seq)) => {
                self.saw(*chat_id, seq);
                self.wake_waiters(*chat_id, seq);
            }
            (Route::JoinRoom { chat_id, .. }, Some(seq)) => self.saw(*chat_id, seq),
            _ => {}
        }
    }

    /// The sockets of `person` on this node.
    fn sessions_of(&self, person: Person) -> Vec<Arc<Session>> {
        self.people
            .get(&person)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Has every socket of `person` here re-read which chats it may follow.
    pub fn recheck(&self, person: Person) {
        for session in self.sessions_of(person) {
            session.push(Outbound::Recheck);
        }
    }

    fn saw(&self, chat_id: i64, seq: i64) {
        self.seen
            .entry(chat_id)
            .and_modify(|s| *s = (*s).max(seq))
            .or_insert(seq);
    }

    /// The newest seq of a chat announced here, if any.
    pub fn seen(&self, chat_id: i64) -> Option<i64> {
        self.seen.get(&chat_id).map(|s| *s)
    }

    /// Of `latest` (chats and their newest committed seq, read from the database), those
    /// this node follows (a socket in the room, or a long-poll) whose newest message
    /// announced here is older: an announcement that never came (its node died between
    /// the commit and the publish, or the bus lost it), or one still on its way.
    pub fn behind(&self, latest: &[(i64, i64)]) -> Vec<(i64, i64)> {
        latest
            .iter()
            .filter(|(chat_id, seq)| {
                (self.rooms.contains_key(chat_id) || self.waiters.contains_key(chat_id))
                    && self.seen(*chat_id).is_none_or(|seen| seen < *seq)
            })
            .copied()
            .collect()
    }

    /// Has every socket of a chat catch up from the database (and its long-polls read
    /// again): its messages up to `seq` were committed but not announced here.
    pub fn catch_up_chat(&self, chat_id: i64, seq: i64) {
        self.saw(chat_id, seq);
        self.resync_room(chat_id);
        self.wake_waiters(chat_id, 0);
    }

    /// Forgets what was seen of chats this node no longer follows.
    pub fn forget_unfollowed(&self) {
        self.seen.retain(|chat_id, _| {
            self.rooms.contains_key(chat_id) || self.waiters.contains_key(chat_id)
        });
    }

    fn to_room(&self, chat_id: i64, env: &Arc<Envelope>, wakes: &mut Wakes) {
        // Pushing only takes each session's mailbox lock, never waits, and wakes nobody
        // (that comes after): it can be done under the room's read lock.
        let Some(members) = self.rooms.get(&chat_id) else {
            return;
        };
        for member in members.iter() {
            wakes
                .0
                .extend(member.push_quietly(Outbound::Event(env.clone())));
        }
        self.metrics.deliveries.inc_by(members.len() as u64);
    }

    /// Hands `env` to the sockets of the customers `ids` (in id order) that this node
    /// holds. Walks whichever is smaller, the audience or the people connected here: a
    /// broadcast to 100,000 customers on a node of 50 sockets looks at 50.
    fn to_customers(&self, ids: &[i64], env: &Arc<Envelope>, wakes: &mut Wakes) {
        let mut reached = 0;
        let mut push = |sessions: &[Arc<Session>]| {
            for session in sessions {
                wakes
                    .0
                    .extend(session.push_quietly(Outbound::Event(env.clone())));
                reached += 1;
            }
        };
        if ids.len() <= self.people.len() {
            for id in ids {
                if let Some(sessions) = self.people.get(&Person::Customer(*id)) {
                    push(&sessions);
                }
            }
        } else {
            for entry in self.people.iter() {
                if let Person::Customer(id) = *entry.key()
                    && ids.binary_search(&id).is_ok()
                {
                    push(entry.value());
                }
            }
        }
        self.metrics.deliveries.inc_by(reached);
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

    /// How many long-polls wait on a chat.
    pub fn waiting(&self, chat_id: i64) -> usize {
        self.waiters
            .get(&chat_id)
            .map_or(0, |tx| tx.receiver_count())
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

    /// Customers with a socket on this node.
    pub fn local_customers(&self) -> Vec<i64> {
        self.people
            .iter()
            .filter_map(|e| match *e.key() {
                Person::Customer(id) => Some(id),
                Person::Operator(_) => None,
            })
            .collect()
    }

    /// Pings one slice of the sockets: those whose id is `slice` modulo `slices`. Called
    /// for each slice in turn, it spreads heartbeats over time, and no socket keeps a
    /// timer of its own.
    pub fn heartbeat(&self, slice: u64, slices: u64) {
        for entry in self.people.iter() {
            for session in entry.value() {
                if session.id % slices == slice {
                    session.push(Outbound::Ping);
                }
            }
        }
    }

    /// The server was told to stop: from now on it says it is not ready (`/readyz`), while
    /// it still serves until [`Hub::shutdown`].
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the server was told to stop.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Asks every socket to close with 1001 (once its sends in flight are answered) so
    /// that clients reconnect elsewhere, and answers every long-poll now.
    pub fn shutdown(&self) {
        self.drain();
        self.stopping.store(true, Ordering::SeqCst);
        for entry in self.people.iter() {
            for session in entry.value() {
                session.close(CloseReason::Shutdown);
            }
        }
        for waiter in self.waiters.iter() {
            waiter.send_modify(|_| {});
        }
    }

    /// Whether the server is stopping: a long-poll answers at once rather than wait.
    /// Read after taking a [`Hub::waiter`], it misses no stop: one that came before is
    /// seen here, one after wakes the waiter.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
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
    use crate::wake::tests::counted;

    /// Mailboxes hold many of these, and fan-out moves one per delivery.
    #[test]
    fn outbound_stays_small() {
        assert!(
            std::mem::size_of::<Outbound>() <= 24,
            "Outbound is {} bytes",
            std::mem::size_of::<Outbound>()
        );
    }

    fn frame(text: &'static str) -> Outbound {
        Outbound::direct(Utf8Bytes::from_static(text))
    }

    fn text(out: &Outbound) -> &str {
        match out {
            Outbound::Direct(frame) => frame.as_str(),
            _ => "",
        }
    }

    /// Polls a session's mailbox once, as its socket's task does.
    fn poll(session: &Session, into: &mut VecDeque<Outbound>) -> Poll<Result<(), CloseReason>> {
        session.poll_mail(&mut Context::from_waker(Waker::noop()), into)
    }

    #[test]
    fn a_mailbox_hands_over_everything_queued_in_order() {
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 8);
        let mut mail = VecDeque::new();
        assert!(poll(&session, &mut mail).is_pending(), "nothing queued yet");
        session.push(frame("a"));
        session.push(frame("b"));
        assert_eq!(poll(&session, &mut mail), Poll::Ready(Ok(())));
        assert_eq!(mail.iter().map(text).collect::<Vec<_>>(), ["a", "b"]);
        mail.clear();
        assert!(poll(&session, &mut mail).is_pending(), "taken once");
    }

    #[test]
    fn a_close_comes_after_what_was_queued_and_stops_further_mail() {
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 8);
        let mut mail = VecDeque::new();
        session.push(frame("last words"));
        session.close(CloseReason::Shutdown);
        session.push(frame("too late"));
        session.close(CloseReason::Timeout);
        assert_eq!(poll(&session, &mut mail), Poll::Ready(Ok(())));
        assert_eq!(mail.iter().map(text).collect::<Vec<_>>(), ["last words"]);
        mail.clear();
        assert_eq!(
            poll(&session, &mut mail),
            Poll::Ready(Err(CloseReason::Shutdown)),
            "the first reason wins"
        );
    }

    #[test]
    fn a_full_mailbox_closes_the_session_as_a_slow_consumer() {
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 2);
        for _ in 0..3 {
            session.push(frame("x"));
        }
        let mut mail = VecDeque::new();
        assert_eq!(
            poll(&session, &mut mail),
            Poll::Ready(Err(CloseReason::SlowConsumer)),
            "nothing queued is sent: the client resumes from its last seq"
        );
        assert!(mail.is_empty());
    }

    #[test]
    fn a_disconnected_session_joins_no_room() {
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 8);
        hub.join(&session, 7);
        assert_eq!(hub.room_size(7), 1);
        assert!(hub.disconnect(&session), "its person's last socket");
        assert_eq!(hub.room_size(7), 0);
        // A new chat announced to the person just as the socket closed.
        hub.join(&session, 8);
        assert_eq!(hub.room_size(8), 0, "no dead session left in a room");
        assert!(!session.in_chat(8));
    }

    #[test]
    fn a_run_of_events_wakes_each_session_once_when_it_is_done() {
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 8);
        hub.join(&session, 7);
        let (count, waker) = counted();
        let mut mail = VecDeque::new();
        let mut cx = Context::from_waker(&waker);
        assert!(session.poll_mail(&mut cx, &mut mail).is_pending());
        let event = |seq| {
            Arc::new(Envelope {
                route: Route::Room(7),
                seq: Some(seq),
                frame: Utf8Bytes::from_static("{}"),
            })
        };
        let mut wakes = Wakes::default();
        hub.deliver_all(&event(1), &mut wakes);
        hub.deliver_all(&event(2), &mut wakes);
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "nobody woken mid-run");
        wakes.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(session.poll_mail(&mut cx, &mut mail), Poll::Ready(Ok(())));
        assert_eq!(mail.len(), 2, "both events are there");
    }

    #[test]
    fn a_broadcast_reaches_the_sockets_of_its_audience_held_here_and_no_one_else() {
        let hub = Hub::new();
        let phone = hub.connect(Person::Customer(1), 8);
        let laptop = hub.connect(Person::Customer(1), 8);
        let other = hub.connect(Person::Customer(2), 8);
        // Operator 1 is not customer 1.
        let operator = hub.connect(Person::Operator(1), 8);
        let got = |session: &Session| {
            let mut mail = VecDeque::new();
            let _ = poll(session, &mut mail);
            mail.len()
        };
        // An audience smaller than the people here is walked; a larger one is looked up.
        for (audience, reached) in [
            (vec![1, 3], [1, 1, 0, 0]),
            ((0..100).collect(), [1, 1, 1, 0]),
        ] {
            let env = Arc::new(Envelope {
                route: Route::Customers(audience),
                seq: None,
                frame: Utf8Bytes::from_static("{}"),
            });
            hub.deliver(&env);
            assert_eq!(
                [&phone, &laptop, &other, &operator].map(|s| got(s)),
                reached,
                "{:?}",
                env.route
            );
        }
    }

    #[test]
    fn a_push_wakes_the_waiting_task() {
        use std::sync::atomic::AtomicBool;
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 8);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut mail = VecDeque::new();
        assert!(
            session
                .poll_mail(&mut Context::from_waker(&waker), &mut mail)
                .is_pending()
        );
        session.push(frame("a"));
        assert!(flag.0.load(Ordering::SeqCst), "woken by the push");
    }
}
