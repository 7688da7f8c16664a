//! What a socket has been sent, chat by chat, and what it is sent next: each chat's
//! messages once and in seq order, whatever the bus did. A message that repeats what was
//! sent is skipped; one after a gap follows the missing ones, read from the history first;
//! a resume replays a chat from the seq a client names. The session knows the history and
//! the socket only through [`History`] and [`Sink`], so its rules are tested in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frames::{ReadyChat, Reply, domain_error_frame};
use crate::domain::events::Event;
use crate::domain::{Core, Error, LiveChat, MemberReceipt, MessagePage, MessageQuery, Principal};
use crate::hub::{Envelope, Hub, Outbound, Replay, Session, encode};

/// What the session reads of the chats it follows: the caller's, as the core shows them.
pub(crate) trait History {
    /// The unfinished chats the caller follows, with their newest seq.
    fn live_chats(&self) -> impl Future<Output = Result<Vec<LiveChat>, Error>> + Send;

    /// The newest seq of a chat the caller can see; `NotFound` for one they cannot.
    fn last_seq(&self, chat_id: i64) -> impl Future<Output = Result<i64, Error>> + Send;

    /// Up to `limit` messages of a chat after `after`, oldest first.
    fn after(
        &self,
        chat_id: i64,
        after: i64,
        limit: u64,
    ) -> impl Future<Output = Result<MessagePage, Error>> + Send;

    /// Every member's cursors in a chat.
    fn receipts(
        &self,
        chat_id: i64,
    ) -> impl Future<Output = Result<Vec<MemberReceipt>, Error>> + Send;
}

/// Where the session's frames go: the socket's write buffer.
pub(crate) trait Sink {
    /// Queues a text frame; false if the socket failed.
    fn put(&mut self, frame: Utf8Bytes) -> impl Future<Output = bool> + Send;
}

/// The core's reads, as the socket's caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reads<'a> {
    pub core: &'a Core,
    pub who: &'a Principal,
}

impl History for Reads<'_> {
    async fn live_chats(&self) -> Result<Vec<LiveChat>, Error> {
        self.core.live_chats(self.who).await
    }

    async fn last_seq(&self, chat_id: i64) -> Result<i64, Error> {
        self.core.last_seq(self.who, chat_id).await
    }

    async fn after(&self, chat_id: i64, after: i64, limit: u64) -> Result<MessagePage, Error> {
        let q = MessageQuery {
            after: Some(after),
            before: None,
            limit: Some(limit),
        };
        self.core.messages(self.who, chat_id, q).await
    }

    async fn receipts(&self, chat_id: i64) -> Result<Vec<MemberReceipt>, Error> {
        self.core.chat_receipts(self.who, chat_id).await
    }
}

/// Messages read from the history at a time while catching a chat up.
const PAGE: u64 = 500;

/// What becomes of a message from the bus.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Sent already (the bus repeated it, or a catch-up got there first).
    Skip,
    /// Next in line.
    Send,
    /// After a gap: the messages after `after` and before it come first.
    Fill { after: i64 },
}

/// How far the socket has been sent each chat it follows: the newest seq.
#[derive(Debug, Default)]
pub(crate) struct Cursors(HashMap<i64, i64>);

impl Cursors {
    /// Where `seq` of `chat_id` stands against what was sent; the cursor moves to it.
    pub(crate) fn next(&mut self, chat_id: i64, seq: i64) -> Next {
        let cursor = self.0.entry(chat_id).or_insert(0);
        let next = match seq - *cursor {
            ..=0 => return Next::Skip,
            1 => Next::Send,
            _ => Next::Fill { after: *cursor },
        };
        *cursor = seq;
        next
    }

    pub(crate) fn get(&self, chat_id: i64) -> Option<i64> {
        self.0.get(&chat_id).copied()
    }

    fn set(&mut self, chat_id: i64, seq: i64) {
        self.0.insert(chat_id, seq);
    }

    /// Follows a chat from `seq` on, unless it is followed already.
    fn follow(&mut self, chat_id: i64, seq: i64) {
        self.0.entry(chat_id).or_insert(seq);
    }

    fn forget(&mut self, chat_id: i64) {
        self.0.remove(&chat_id);
    }
}

/// A socket's session: the chats it follows and how far each has been sent.
pub(crate) struct Delivery<'a, H> {
    pub history: H,
    pub hub: &'a Hub,
    pub session: &'a Arc<Session>,
    pub cursors: Cursors,
}

impl<H: History> Delivery<'_, H> {
    /// Joins the rooms of the caller's chats and queues the ready frame and the catch-up
    /// (from the seqs a reconnecting client named in `resume`). False if the chats cannot
    /// be read.
    pub(crate) async fn start(&mut self, resume: Vec<(i64, i64)>) -> bool {
        let chats = match self.history.live_chats().await {
            Ok(chats) => chats,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a socket's chats");
                return false;
            }
        };
        for chat in &chats {
            self.hub.join(self.session, chat.id);
            // A reconnecting client starts from what it has, so that live messages arriving
            // before its catch-up are preceded by the missing ones, not followed.
            let from = resume
                .iter()
                .find(|(c, _)| *c == chat.id)
                .map_or(chat.last_seq, |(_, s)| *s);
            self.cursors.set(chat.id, from.min(chat.last_seq));
        }
        let ready: Vec<ReadyChat> = chats
            .iter()
            .map(|c| ReadyChat {
                id: c.id,
                last_seq: c.last_seq,
            })
            .collect();
        // First, ahead of whatever reached the session through its person while the
        // chats were read (an operator's own presence, a chat opened meanwhile).
        self.session
            .push_first(Outbound::direct(encode(&Reply::Ready {
                session_id: self.session.id,
                chats: &ready,
            })));
        // Anything committed between reading the chats and joining their rooms, and
        // whatever a reconnecting client asked for, is caught up from the history first.
        let mut catch_up: Vec<(i64, i64, bool)> =
            chats.iter().map(|c| (c.id, c.last_seq, false)).collect();
        for (chat, seq) in resume {
            match catch_up.iter_mut().find(|(c, _, _)| *c == chat) {
                Some(entry) => *entry = (chat, seq, true),
                None => catch_up.push((chat, seq, true)),
            }
        }
        self.session.push(Outbound::Resume(Box::new(Replay {
            id: None,
            chats: catch_up,
            rewind: false,
        })));
        true
    }

    /// Writes one item of the session's mail (not a ping: the task's), keeping each chat
    /// in seq order; false if the socket failed, or the history did mid catch-up.
    pub(crate) async fn deliver(&mut self, sink: &mut impl Sink, out: Outbound) -> bool {
        match out {
            Outbound::Direct(frame) => sink.put(*frame).await,
            Outbound::Event(env) => match env.ordered() {
                None => sink.put(env.frame.clone()).await,
                Some((chat_id, seq)) => match self.cursors.next(chat_id, seq) {
                    Next::Skip => true,
                    Next::Send => sink.put(env.frame.clone()).await,
                    // A gap (the bus lost or reordered events) is filled from the history.
                    Next::Fill { after } => {
                        Box::pin(self.catch_up(sink, chat_id, after, seq - 1))
                            .await
                            .is_some()
                            && sink.put(env.frame.clone()).await
                    }
                },
            },
            Outbound::Recheck => {
                Box::pin(self.recheck()).await;
                true
            }
            Outbound::Resync(only) => Box::pin(self.resync(sink, only)).await,
            Outbound::Resume(replay) => Box::pin(self.resume(sink, *replay)).await,
            Outbound::Ping => true,
        }
    }

    /// Sends the messages of `chat_id` after `from` up to `to` from the history. Returns
    /// the seq of the last one sent (`from` if none), or `None` if the socket failed, or
    /// the history did.
    async fn catch_up(
        &mut self,
        sink: &mut impl Sink,
        chat_id: i64,
        from: i64,
        to: i64,
    ) -> Option<i64> {
        let mut after = from;
        while after < to {
            let page = match self.history.after(chat_id, after, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, chat_id, "catch-up failed");
                    return None;
                }
            };
            for m in page.items.iter().filter(|m| m.seq <= to) {
                let frame = Envelope::of(&Event::Message(m.clone())).frame;
                if !sink.put(frame).await {
                    return None;
                }
                after = m.seq;
            }
            if page.items.is_empty() || !page.has_more {
                break;
            }
        }
        Some(after)
    }

    /// Catches a chat up to its newest message from `from`, and moves its cursor there.
    async fn catch_up_all(&mut self, sink: &mut impl Sink, chat_id: i64, from: i64) -> bool {
        match self.catch_up(sink, chat_id, from, i64::MAX).await {
            Some(last) => {
                self.cursors.set(chat_id, last);
                true
            }
            None => false,
        }
    }

    /// Catches the socket's chats (or one of them) up from its own cursors: the bus may
    /// have lost events. False if the socket failed, or the history did.
    async fn resync(&mut self, sink: &mut impl Sink, only: Option<i64>) -> bool {
        if only.is_none()
            && let Ok(live) = self.history.live_chats().await
        {
            // Chats opened while the bus was away were never announced here.
            for chat in live {
                if !self.session.in_chat(chat.id) {
                    self.hub.join(self.session, chat.id);
                    self.cursors.follow(chat.id, 0);
                }
            }
        }
        let chats: Vec<(i64, i64)> = self
            .cursors
            .0
            .iter()
            .filter(|(chat, _)| only.is_none_or(|c| c == **chat))
            .map(|(chat, seq)| (*chat, *seq))
            .collect();
        for (chat_id, from) in chats {
            if !self.catch_up_all(sink, chat_id, from).await {
                return false;
            }
        }
        true
    }

    /// Leaves the rooms of chats the socket may no longer see and joins the open chats it
    /// may now see (from their newest seq, as at connect).
    async fn recheck(&mut self) {
        let Ok(live) = self.history.live_chats().await else {
            return;
        };
        let open: HashSet<i64> = live.iter().map(|c| c.id).collect();
        for chat_id in self.session.chat_ids() {
            if open.contains(&chat_id) {
                continue;
            }
            // Not open, or not visible: only the second is a reason to leave.
            if let Err(Error::NotFound(_)) = self.history.last_seq(chat_id).await {
                self.hub.leave(self.session, chat_id);
                self.cursors.forget(chat_id);
            }
        }
        for chat in live {
            if !self.session.in_chat(chat.id) {
                self.hub.join(self.session, chat.id);
                self.cursors.follow(chat.id, chat.last_seq);
            }
        }
    }

    /// A catch-up asked for: at connect (`rewind` false: never before what was sent) or
    /// by a client's resume frame (`rewind` true: replay from its seq, even what was
    /// sent), then the `resumed` frame with where each chat stands.
    async fn resume(&mut self, sink: &mut impl Sink, replay: Replay) -> bool {
        let id = replay.id.as_deref();
        if replay.rewind {
            // A client resuming leaves what it may no longer see, not only joins.
            Box::pin(self.recheck()).await;
        }
        // The open chats' newest seqs in one read, after the rooms were joined: a chat
        // with nothing past its cursor needs no read of its own (a desk follows
        // thousands), and what is committed later comes through the room. Others (a
        // finished chat, one the caller may not see) are read one by one.
        let live: HashMap<i64, i64> = match self.history.live_chats().await {
            Ok(live) => live.into_iter().map(|c| (c.id, c.last_seq)).collect(),
            Err(_) => HashMap::new(),
        };
        let mut done = HashMap::new();
        for (chat_id, from, with_receipts) in replay.chats {
            let known = live.get(&chat_id).copied();
            let last_seq = match known {
                Some(last_seq) => Ok(last_seq),
                None => self.history.last_seq(chat_id).await,
            };
            let last_seq = match last_seq {
                Ok(last_seq) => last_seq,
                Err(e) => {
                    if !sink.put(domain_error_frame(id, e)).await {
                        return false;
                    }
                    continue;
                }
            };
            if !self.session.in_chat(chat_id) {
                // A finished or not yet followed chat the caller can see: follow it now.
                self.hub.join(self.session, chat_id);
            }
            // A seq past the end would skip messages to come: start at the end instead.
            let mut from = from.min(last_seq);
            if !replay.rewind {
                from = from.max(self.cursors.get(chat_id).unwrap_or(0));
            }
            // Nothing past `from` was committed before the read, nor sent on this socket.
            let sent = self.cursors.get(chat_id).unwrap_or(0);
            if known.is_some_and(|last_seq| from >= last_seq) && sent <= from {
                self.cursors.set(chat_id, from);
            } else if !self.catch_up_all(sink, chat_id, from).await {
                return false;
            }
            if with_receipts && let Ok(receipts) = self.history.receipts(chat_id).await {
                for r in receipts {
                    let frame = Envelope::of(&Event::Receipt {
                        chat_id,
                        member: r.member,
                        received_seq: r.received_seq,
                        read_seq: r.read_seq,
                    })
                    .frame;
                    if !sink.put(frame).await {
                        return false;
                    }
                }
            }
            done.insert(
                chat_id.to_string(),
                self.cursors.get(chat_id).unwrap_or(from),
            );
        }
        sink.put(encode(&Reply::Resumed { id, chats: &done })).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};
    use std::sync::Mutex;
    use std::task::{Context, Waker};

    use serde_json::Value;

    use super::*;
    use crate::domain::events::Person;
    use crate::domain::{Author, Message};

    /// A history in memory: chats with their messages, which of them the caller sees,
    /// and which are open.
    #[derive(Default)]
    struct Memory {
        messages: HashMap<i64, Vec<Message>>,
        visible: HashSet<i64>,
        open: HashSet<i64>,
        /// Fails every read of messages (the database went away).
        failing: bool,
        /// Pages it was asked for, as (chat, after).
        asked: Mutex<Vec<(i64, i64)>>,
    }

    fn message(chat_id: i64, seq: i64) -> Message {
        Message {
            id: chat_id * 1000 + seq,
            chat_id,
            seq,
            local_id: None,
            author: Author {
                kind: "customer".into(),
                id: Some(1),
            },
            payload: "text".into(),
            text: format!("{chat_id}:{seq}"),
            file_id: None,
            file: None,
            status: "sent",
            created_at: 0,
            received_at: None,
            read_at: None,
            pushed_at: None,
        }
    }

    impl Memory {
        /// Chat `id` with messages 1 to `last_seq`, visible and open.
        fn with(mut self, id: i64, last_seq: i64) -> Memory {
            self.messages
                .insert(id, (1..=last_seq).map(|seq| message(id, seq)).collect());
            self.visible.insert(id);
            self.open.insert(id);
            self
        }

        fn newest(&self, chat_id: i64) -> i64 {
            self.messages
                .get(&chat_id)
                .and_then(|m| m.last())
                .map_or(0, |m| m.seq)
        }
    }

    impl History for &Memory {
        async fn live_chats(&self) -> Result<Vec<LiveChat>, Error> {
            let mut ids: Vec<i64> = self.open.intersection(&self.visible).copied().collect();
            ids.sort_unstable();
            Ok(ids
                .into_iter()
                .map(|id| LiveChat {
                    id,
                    last_seq: self.newest(id),
                })
                .collect())
        }

        async fn last_seq(&self, chat_id: i64) -> Result<i64, Error> {
            if !self.visible.contains(&chat_id) {
                return Err(Error::NotFound("chat"));
            }
            Ok(self.newest(chat_id))
        }

        async fn after(&self, chat_id: i64, after: i64, limit: u64) -> Result<MessagePage, Error> {
            self.asked.lock().expect("lock").push((chat_id, after));
            if self.failing {
                return Err(Error::Internal("the database is away".into()));
            }
            let rest: Vec<Message> = self
                .messages
                .get(&chat_id)
                .into_iter()
                .flatten()
                .filter(|m| m.seq > after)
                .cloned()
                .collect();
            let limit = limit as usize;
            Ok(MessagePage {
                has_more: rest.len() > limit,
                items: rest.into_iter().take(limit).collect(),
            })
        }

        async fn receipts(&self, _chat_id: i64) -> Result<Vec<MemberReceipt>, Error> {
            Ok(vec![MemberReceipt {
                member: Person::Operator(2),
                received_seq: 1,
                read_seq: 1,
            }])
        }
    }

    /// The frames a socket was sent, as short lines: `7:3` for message 3 of chat 7.
    #[derive(Default)]
    struct Frames(Vec<String>);

    impl Sink for Frames {
        async fn put(&mut self, frame: Utf8Bytes) -> bool {
            let v: Value = serde_json::from_str(frame.as_str()).expect("a JSON frame");
            self.0.push(match v["type"].as_str().expect("a type") {
                "message" => format!("{}:{}", v["chat_id"], v["message"]["seq"]),
                "receipt" => format!("receipt {} {}", v["chat_id"], v["read_seq"]),
                "ready" => format!("ready {}", v["chats"]),
                "resumed" => {
                    // In chat order: the frame's map has none.
                    let chats: std::collections::BTreeMap<String, i64> =
                        serde_json::from_value(v["chats"].clone()).expect("chats");
                    format!("resumed {}", serde_json::json!(chats))
                }
                "error" => format!("error {}", v["code"]),
                other => other.to_owned(),
            });
            true
        }
    }

    fn event(chat_id: i64, seq: i64) -> Outbound {
        Outbound::Event(Arc::new(Envelope::of(&Event::Message(message(
            chat_id, seq,
        )))))
    }

    /// Delivers every item waiting in the session's mailbox.
    async fn deliver_mail(delivery: &mut Delivery<'_, &Memory>, frames: &mut Frames) {
        let mut mail = VecDeque::new();
        let _ = delivery
            .session
            .poll_mail(&mut Context::from_waker(Waker::noop()), &mut mail);
        for out in mail {
            assert!(delivery.deliver(frames, out).await, "delivered");
        }
    }

    fn delivery<'a>(
        history: &'a Memory,
        hub: &'a Hub,
        session: &'a Arc<Session>,
    ) -> Delivery<'a, &'a Memory> {
        Delivery {
            history,
            hub,
            session,
            cursors: Cursors::default(),
        }
    }

    #[test]
    fn a_cursor_says_what_a_message_from_the_bus_needs() {
        let mut cursors = Cursors::default();
        cursors.set(7, 2);
        assert_eq!(cursors.next(7, 2), Next::Skip, "sent already");
        assert_eq!(cursors.next(7, 3), Next::Send);
        assert_eq!(cursors.next(7, 6), Next::Fill { after: 3 }, "4 and 5 first");
        assert_eq!(cursors.next(7, 5), Next::Skip, "filled");
        assert_eq!(cursors.get(7), Some(6));
        assert_eq!(
            cursors.next(8, 1),
            Next::Send,
            "a chat joined from its start"
        );
    }

    #[tokio::test]
    async fn messages_from_the_bus_reach_the_socket_once_and_in_order_with_gaps_filled_from_the_history()
     {
        let history = Memory::default().with(7, 6);
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        let mut d = delivery(&history, &hub, &session);
        d.cursors.set(7, 1);
        let mut frames = Frames::default();
        for seq in [2, 2, 5, 4, 6, 3] {
            assert!(d.deliver(&mut frames, event(7, seq)).await);
        }
        assert_eq!(frames.0, ["7:2", "7:3", "7:4", "7:5", "7:6"]);
        assert_eq!(
            *history.asked.lock().expect("lock"),
            [(7, 2)],
            "one read, for the gap"
        );
    }

    #[tokio::test]
    async fn a_connect_catches_up_from_where_a_reconnecting_client_stands_and_sends_nothing_twice()
    {
        let history = Memory::default().with(7, 6).with(8, 1);
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        let mut d = delivery(&history, &hub, &session);
        assert!(d.start(vec![(7, 2)]).await);
        assert!(session.in_chat(7) && session.in_chat(8), "in both rooms");
        // What the bus brings meanwhile comes after the catch-up, once.
        session.push(event(7, 6));
        let mut frames = Frames::default();
        deliver_mail(&mut d, &mut frames).await;
        assert_eq!(
            frames.0,
            [
                r#"ready [{"id":7,"last_seq":6},{"id":8,"last_seq":1}]"#,
                "7:3",
                "7:4",
                "7:5",
                "7:6",
                "receipt 7 1",
                r#"resumed {"7":6,"8":1}"#,
            ]
        );
    }

    #[tokio::test]
    async fn a_connect_reads_no_page_of_a_chat_with_nothing_new() {
        let history = Memory::default().with(7, 6).with(8, 1).with(9, 3);
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        let mut d = delivery(&history, &hub, &session);
        assert!(d.start(vec![(9, 1)]).await);
        let mut frames = Frames::default();
        deliver_mail(&mut d, &mut frames).await;
        assert_eq!(
            frames.0,
            [
                r#"ready [{"id":7,"last_seq":6},{"id":8,"last_seq":1},{"id":9,"last_seq":3}]"#,
                "9:2",
                "9:3",
                "receipt 9 1",
                r#"resumed {"7":6,"8":1,"9":3}"#,
            ]
        );
        assert_eq!(
            *history.asked.lock().expect("lock"),
            [(9, 1)],
            "a page for the chat the client is behind in, none for the others"
        );
    }

    #[tokio::test]
    async fn a_resume_frame_replays_from_the_clients_seq_and_starts_past_the_end_at_the_end() {
        let history = Memory::default().with(7, 6);
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        let mut d = delivery(&history, &hub, &session);
        d.cursors.set(7, 6);
        let mut frames = Frames::default();
        let replay = |chats| {
            Outbound::Resume(Box::new(Replay {
                id: Some("r".into()),
                chats,
                rewind: true,
            }))
        };
        assert!(d.deliver(&mut frames, replay(vec![(7, 4, false)])).await);
        assert!(d.deliver(&mut frames, replay(vec![(7, 99, false)])).await);
        assert_eq!(
            frames.0,
            ["7:5", "7:6", r#"resumed {"7":6}"#, r#"resumed {"7":6}"#]
        );
    }

    #[tokio::test]
    async fn a_resume_of_a_chat_the_caller_cannot_see_is_not_found_and_joins_no_room() {
        let mut history = Memory::default().with(7, 2);
        history.visible.remove(&7);
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        let mut d = delivery(&history, &hub, &session);
        let mut frames = Frames::default();
        let replay = Outbound::Resume(Box::new(Replay {
            id: None,
            chats: vec![(7, 0, true)],
            rewind: true,
        }));
        assert!(d.deliver(&mut frames, replay).await);
        assert_eq!(frames.0, ["error \"not_found\"", "resumed {}"]);
        assert!(!session.in_chat(7));
    }

    #[tokio::test]
    async fn a_recheck_leaves_chats_no_longer_visible_and_follows_new_ones_from_their_newest() {
        let mut history = Memory::default().with(7, 2).with(8, 5).with(9, 3);
        let hub = Hub::new();
        let session = hub.connect(Person::Operator(1), 64);
        for chat in [7, 9] {
            hub.join(&session, chat);
        }
        // Chat 7 is no longer the operator's; chat 9 is finished but still theirs; chat 8
        // is newly theirs.
        history.visible.remove(&7);
        history.open.remove(&9);
        let mut d = delivery(&history, &hub, &session);
        d.cursors.set(7, 2);
        d.cursors.set(9, 3);
        let mut frames = Frames::default();
        assert!(d.deliver(&mut frames, Outbound::Recheck).await);
        assert!(!session.in_chat(7), "left");
        assert!(
            session.in_chat(9),
            "a finished chat is left only if not visible"
        );
        assert!(session.in_chat(8), "joined");
        assert_eq!((d.cursors.get(7), d.cursors.get(8)), (None, Some(5)));
        assert!(frames.0.is_empty(), "a recheck says nothing");
    }

    #[tokio::test]
    async fn a_resync_catches_every_followed_chat_up_and_follows_chats_opened_meanwhile() {
        let history = Memory::default().with(7, 4).with(8, 2);
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        hub.join(&session, 7);
        let mut d = delivery(&history, &hub, &session);
        d.cursors.set(7, 2);
        let mut frames = Frames::default();
        assert!(d.deliver(&mut frames, Outbound::Resync(None)).await);
        let mut got = frames.0.clone();
        got.sort();
        assert_eq!(got, ["7:3", "7:4", "8:1", "8:2"]);
        assert!(session.in_chat(8));
        assert_eq!((d.cursors.get(7), d.cursors.get(8)), (Some(4), Some(2)));
    }

    #[tokio::test]
    async fn a_history_that_fails_mid_catch_up_ends_the_delivery() {
        let mut history = Memory::default().with(7, 6);
        history.failing = true;
        let hub = Hub::new();
        let session = hub.connect(Person::Customer(1), 64);
        let mut d = delivery(&history, &hub, &session);
        d.cursors.set(7, 1);
        let mut frames = Frames::default();
        assert!(
            !d.deliver(&mut frames, event(7, 5)).await,
            "a gap that cannot be filled closes the socket: the client resumes"
        );
        assert!(frames.0.is_empty(), "nothing after the gap is sent");
    }
}
