//! The rules of a batch, with no I/O: who may send into a chat, which seq each message
//! gets, which sends repeat an earlier one (`local_id`), how a member's marks fold into one
//! move of their cursors, when a chat's activity time moves, and what the batch announces.
//!
//! [`plan`] decides a round of a batch against what the writer knows of its chats and
//! returns a [`Plan`] for a journal to carry out, with each job's [`Decision`]; the rounds
//! around it are [`super::batch::Batch`]'s.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::super::events::Person;
use super::super::files::FileInfo;
use super::super::{Author, ChatStatus, Error, Message, Receipt, Result};

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    Text,
    File,
    /// Said by the system on someone's behalf (a hand-over, say): it goes into any
    /// chat, finished or not, and changes nothing else of it.
    Notice,
}

impl Payload {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Payload::Text => "text",
            Payload::File => "file",
            Payload::Notice => "notice",
        }
    }
}

/// A message to store, its author already allowed to write in the chat.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub author: Person,
    pub local_id: Option<String>,
    pub payload: Payload,
    pub text: String,
    /// The file a `file` payload shows.
    pub file: Option<Arc<FileInfo>>,
}

impl Draft {
    pub(crate) fn file_id(&self) -> Option<&str> {
        self.file.as_ref().map(|f| f.id.as_str())
    }
}

/// A member's cursors to move forward: the highest seq they have received and read
/// (`received` at least `read`, neither below 0; 0 moves nothing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    pub member: Person,
    pub received: i64,
    pub read: i64,
}

#[derive(Debug, Clone)]
pub(crate) enum Work {
    Send(Draft),
    Mark(Mark),
}

/// A send or a mark into one chat.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub chat_id: i64,
    pub work: Work,
}

impl Job {
    pub(crate) fn send(&self) -> Option<&Draft> {
        match &self.work {
            Work::Send(send) => Some(send),
            Work::Mark(_) => None,
        }
    }

    /// What makes this send the same message as another, if it has a `local_id`.
    pub(crate) fn key(&self) -> Option<Key<'_>> {
        let send = self.send()?;
        Some(Key {
            chat_id: self.chat_id,
            author: send.author,
            local_id: send.local_id.as_deref()?,
        })
    }
}

/// What makes two sends the same message: chat, author and `local_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key<'a> {
    pub chat_id: i64,
    pub author: Person,
    pub local_id: &'a str,
}

pub(super) fn key_of(m: &Message) -> Option<Key<'_>> {
    Some(Key {
        chat_id: m.chat_id,
        author: Person::from_kind(&m.author.kind, m.author.id?)?,
        local_id: m.local_id.as_deref()?,
    })
}

/// What became of a job.
#[derive(Debug, Clone)]
pub(crate) enum Done {
    Sent(Sent),
    Marked(Marked),
}

/// What became of a send.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub message: Message,
    /// False when a repeated `local_id` gave back the first message.
    pub new: bool,
    /// This message, an operator's answer, took the pending chat.
    pub took_chat: bool,
}

/// A member's cursors after a mark.
#[derive(Debug, Clone)]
pub(crate) struct Marked {
    pub receipt: Receipt,
    /// Whether a cursor moved (only then is the receipt announced).
    pub moved: bool,
}

/// The columns of a chat that a send reads and moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatState {
    pub id: i64,
    pub last_seq: i64,
    pub status: ChatStatus,
    pub operator_id: Option<i64>,
    pub last_activity_at: i64,
}

impl ChatState {
    /// The rules of a chat taking a message: the next seq; a finished chat refuses all but
    /// notices; an operator's answer takes a pending chat (true when this one did); the
    /// activity time moves with the first message, then at most once a `step_ms`.
    pub(crate) fn take(&mut self, send: &Draft, now: i64, step_ms: i64) -> Result<bool> {
        let answer = send.payload != Payload::Notice;
        if answer && self.status == ChatStatus::Finished {
            return Err(Error::Conflict("chat is finished".into()));
        }
        if self.last_seq == 0 || now >= self.last_activity_at + step_ms {
            self.last_activity_at = now;
        }
        self.last_seq += 1;
        let mut took = false;
        if let (true, Person::Operator(operator_id)) = (answer, send.author) {
            if self.status == ChatStatus::Pending {
                self.status = ChatStatus::Chatting;
                took = true;
            }
            self.operator_id = self.operator_id.or(Some(operator_id));
        }
        Ok(took)
    }
}

/// What the writer knows of a chat, and whether it was read in this round (a refusal is
/// decided only on such a state: a remembered one may be behind).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub state: ChatState,
    pub fresh: bool,
}

/// The chats of a round by id; a chat missing here does not exist.
pub(crate) type Chats = HashMap<i64, Known>;

impl Receipt {
    /// The cursors of a member with no receipt row yet.
    pub(crate) fn none(chat_id: i64) -> Receipt {
        Receipt {
            chat_id,
            received_seq: 0,
            read_seq: 0,
            received_at: None,
            read_at: None,
        }
    }

    /// These cursors after `a` at `now`: each only moves forward, and takes the time when
    /// it does.
    pub(crate) fn advanced(&self, a: &Advance, now: i64) -> Receipt {
        let mut after = self.clone();
        if a.received > after.received_seq {
            after.received_seq = a.received;
            after.received_at = Some(now);
        }
        if a.read > after.read_seq {
            after.read_seq = a.read;
            after.read_at = Some(now);
        }
        after
    }
}

/// A chat the plan moves: as the writer knows it (the journal stores the move only if the
/// row is still so), and as after the plan's messages.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    pub was: ChatState,
    pub now: ChatState,
}

/// A message to insert: the job that sends it, at this seq of its chat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Insert {
    pub job: usize,
    pub chat_id: i64,
    pub seq: i64,
}

/// A member's cursors to move forward, at least to these (their marks of the batch,
/// folded); the messages they now have get their received and read times.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Advance {
    pub chat_id: i64,
    pub member: Person,
    pub received: i64,
    pub read: i64,
}

impl Advance {
    /// Whose messages the member marks: an operator the customer's, a customer everyone
    /// else's.
    pub(crate) fn marks_the_customers(&self) -> bool {
        matches!(self.member, Person::Operator(_))
    }
}

/// What a journal carries out for a round, in one transaction: move the chats (each only
/// if it is still as known), insert the messages of the chats it moved, then move the
/// members' cursors of chats that were not stale.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub now: i64,
    /// By chat id, so that two writers' transactions lock shared chats in one order.
    pub moves: Vec<Move>,
    /// In job order.
    pub inserts: Vec<Insert>,
    pub advances: Vec<Advance>,
}

/// What a journal reports of a plan it carried out.
#[derive(Debug)]
pub(crate) enum Executed {
    /// Committed, but for the chats in `stale`, which were no longer as known: nothing of
    /// theirs was stored. `ids` holds each insert's message id (`None`: its chat was
    /// stale); `receipts` each advance's cursors before and after (`None` likewise).
    Stored {
        ids: Vec<Option<i64>>,
        stale: Vec<i64>,
        receipts: Vec<Option<(Receipt, Receipt)>>,
    },
    /// A send repeats a `local_id` stored before: nothing was stored.
    Repeated,
}

/// What the plan decided for one job.
#[derive(Debug)]
pub(super) enum Decision {
    /// Stored as the plan's `inserts[n]`; whether it takes the pending chat.
    Insert {
        n: usize,
        took: bool,
    },
    /// The same message as an earlier job of the batch.
    CopyOf(usize),
    /// The same message as one stored before.
    Repeat(Message),
    /// Moves the member's cursors with the plan's `advances[n]`.
    Advance(usize),
    Refused(Error),
}

/// A plan and the decisions behind it.
#[derive(Debug)]
pub(super) struct Planned {
    pub(super) plan: Plan,
    pub(super) decisions: Vec<(usize, Decision)>,
    /// Chats to read again before any job of theirs is decided.
    pub(super) recheck: HashSet<i64>,
}

/// Why a batch cannot be planned yet.
enum Blocked {
    /// A refused send has a `local_id`: it may repeat a message stored before the chat
    /// was finished, which only a look-up of the stored messages can tell.
    LookUp,
    /// A job of this chat would be refused on a remembered state.
    Recheck(i64),
}

/// What a round is planned from: the jobs still waiting (indexes into `jobs`), what is
/// known of their chats, and (once looked up) the stored messages their `local_id`s repeat.
pub(super) struct Round<'a> {
    pub(super) jobs: &'a [Job],
    pub(super) waiting: &'a [usize],
    pub(super) chats: &'a Chats,
    pub(super) stored: Option<&'a [Message]>,
    pub(super) now: i64,
    pub(super) step_ms: i64,
}

/// Plans a round's jobs, in order. A chat to read again leaves all its jobs waiting, so
/// that a chat's jobs are always decided in order, in one round.
pub(super) fn plan(round: &Round<'_>) -> std::result::Result<Planned, ()> {
    let mut recheck = HashSet::new();
    loop {
        match attempt(round, &recheck) {
            Ok(mut planned) => {
                planned.recheck = recheck;
                return Ok(planned);
            }
            Err(Blocked::Recheck(chat_id)) => {
                recheck.insert(chat_id);
            }
            Err(Blocked::LookUp) => return Err(()),
        }
    }
}

fn attempt(round: &Round<'_>, recheck: &HashSet<i64>) -> std::result::Result<Planned, Blocked> {
    let Round {
        jobs,
        waiting,
        chats,
        stored,
        now,
        step_ms,
    } = *round;
    let mut plan = Plan {
        now,
        ..Plan::default()
    };
    let mut decisions = Vec::with_capacity(waiting.len());
    // Each chat as the jobs planned so far leave it, and as it was before them.
    let mut states: HashMap<i64, ChatState> = HashMap::new();
    let mut was: HashMap<i64, ChatState> = HashMap::new();
    let mut first_with_key: HashMap<Key<'_>, usize> = HashMap::new();
    let mut advance_of: HashMap<(i64, Person), usize> = HashMap::new();
    for &i in waiting {
        let job = &jobs[i];
        if recheck.contains(&job.chat_id) {
            continue;
        }
        let Some(known) = chats.get(&job.chat_id) else {
            decisions.push((i, Decision::Refused(Error::NotFound("chat"))));
            continue;
        };
        let state = states
            .entry(job.chat_id)
            .or_insert_with(|| known.state.clone());
        match &job.work {
            Work::Send(send) => {
                if let Some(key) = job.key() {
                    let repeat = stored.and_then(|s| s.iter().find(|m| key_of(m) == Some(key)));
                    if let Some(message) = repeat {
                        decisions.push((i, Decision::Repeat(message.clone())));
                        continue;
                    }
                    if let Some(&first) = first_with_key.get(&key) {
                        decisions.push((i, Decision::CopyOf(first)));
                        continue;
                    }
                    first_with_key.insert(key, i);
                }
                let mut next = state.clone();
                match next.take(send, now, step_ms) {
                    Ok(took) => {
                        was.entry(job.chat_id).or_insert_with(|| state.clone());
                        *state = next;
                        plan.inserts.push(Insert {
                            job: i,
                            chat_id: job.chat_id,
                            seq: state.last_seq,
                        });
                        let n = plan.inserts.len() - 1;
                        decisions.push((i, Decision::Insert { n, took }));
                    }
                    Err(_) if !known.fresh => return Err(Blocked::Recheck(job.chat_id)),
                    Err(_) if send.local_id.is_some() && stored.is_none() => {
                        return Err(Blocked::LookUp);
                    }
                    Err(e) => decisions.push((i, Decision::Refused(e))),
                }
            }
            Work::Mark(mark) => {
                let furthest = mark.received.max(mark.read);
                if furthest > state.last_seq {
                    if !known.fresh {
                        return Err(Blocked::Recheck(job.chat_id));
                    }
                    let e = Error::Invalid(format!(
                        "seq {furthest} is outside this chat's messages (0..={})",
                        state.last_seq
                    ));
                    decisions.push((i, Decision::Refused(e)));
                    continue;
                }
                let n = *advance_of
                    .entry((job.chat_id, mark.member))
                    .or_insert_with(|| {
                        plan.advances.push(Advance {
                            chat_id: job.chat_id,
                            member: mark.member,
                            received: 0,
                            read: 0,
                        });
                        plan.advances.len() - 1
                    });
                let advance = &mut plan.advances[n];
                advance.received = advance.received.max(mark.received);
                advance.read = advance.read.max(mark.read);
                decisions.push((i, Decision::Advance(n)));
            }
        }
    }
    for (id, was) in was {
        if let Some(now) = states.remove(&id) {
            plan.moves.push(Move { was, now });
        }
    }
    plan.moves.sort_unstable_by_key(|m| m.was.id);
    Ok(Planned {
        plan,
        decisions,
        recheck: HashSet::new(),
    })
}

/// The message a send became, stored as `id` at `seq`.
pub(super) fn new_message(chat_id: i64, send: &Draft, id: i64, seq: i64, now: i64) -> Message {
    Message {
        id,
        chat_id,
        seq,
        local_id: send.local_id.clone(),
        author: Author {
            kind: send.author.kind().to_owned(),
            id: Some(send.author.id()),
        },
        payload: send.payload.as_str().to_owned(),
        text: send.text.clone(),
        file_id: send.file_id().map(str::to_owned),
        file: send.file.clone(),
        status: "sent",
        created_at: now,
        received_at: None,
        read_at: None,
        pushed_at: None,
    }
}

/// A refusal again, for a copy of a refused send.
pub(super) fn same_error(e: &Error) -> Error {
    match e {
        Error::NotFound(what) => Error::NotFound(what),
        Error::Conflict(why) => Error::Conflict(why.clone()),
        Error::Invalid(why) => Error::Invalid(why.clone()),
        Error::Unavailable(why) => Error::Unavailable(why),
        other => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::events::Event;

    const STEP: i64 = 1000;

    pub(crate) fn chat(id: i64, last_seq: i64, status: ChatStatus) -> ChatState {
        ChatState {
            id,
            last_seq,
            status,
            operator_id: None,
            last_activity_at: 1000,
        }
    }

    pub(crate) fn draft(author: Person, payload: Payload, local_id: Option<&str>) -> Draft {
        Draft {
            author,
            local_id: local_id.map(str::to_owned),
            payload,
            text: "hi".into(),
            file: None,
        }
    }

    pub(crate) fn send(chat_id: i64, author: Person, local_id: Option<&str>) -> Job {
        Job {
            chat_id,
            work: Work::Send(draft(author, Payload::Text, local_id)),
        }
    }

    pub(crate) fn notice(chat_id: i64) -> Job {
        Job {
            chat_id,
            work: Work::Send(draft(OPERATOR, Payload::Notice, None)),
        }
    }

    pub(crate) fn read(chat_id: i64, member: Person, seq: i64) -> Job {
        Job {
            chat_id,
            work: Work::Mark(Mark {
                member,
                received: seq,
                read: seq,
            }),
        }
    }

    /// Events as short lines: `message 3`, `receipt Customer(1) 2 2`.
    pub(crate) fn said(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Message(m) => format!("message {}", m.seq),
                Event::Receipt {
                    member,
                    received_seq,
                    read_seq,
                    ..
                } => format!("receipt {member:?} {received_seq} {read_seq}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    pub(crate) const CUSTOMER: Person = Person::Customer(1);
    pub(crate) const OPERATOR: Person = Person::Operator(7);

    #[test]
    fn a_chat_takes_a_message_by_the_rules() {
        struct Case {
            why: &'static str,
            status: ChatStatus,
            last_seq: i64,
            now: i64,
            author: Person,
            payload: Payload,
            /// Ok((seq, status, operator, activity, took)) or Err(()) for a refusal.
            want: std::result::Result<(i64, ChatStatus, Option<i64>, i64, bool), ()>,
        }
        use ChatStatus::*;
        let cases = [
            Case {
                why: "the first message moves the activity time at once",
                status: Pending,
                last_seq: 0,
                now: 1005,
                author: CUSTOMER,
                payload: Payload::Text,
                want: Ok((1, Pending, None, 1005, false)),
            },
            Case {
                why: "within a second of the last move it stays",
                status: Chatting,
                last_seq: 3,
                now: 1999,
                author: CUSTOMER,
                payload: Payload::Text,
                want: Ok((4, Chatting, None, 1000, false)),
            },
            Case {
                why: "a second later it moves",
                status: Chatting,
                last_seq: 3,
                now: 2000,
                author: CUSTOMER,
                payload: Payload::Text,
                want: Ok((4, Chatting, None, 2000, false)),
            },
            Case {
                why: "an operator's answer takes a pending chat",
                status: Pending,
                last_seq: 2,
                now: 1500,
                author: OPERATOR,
                payload: Payload::Text,
                want: Ok((3, Chatting, Some(7), 1000, true)),
            },
            Case {
                why: "an operator's notice does not",
                status: Pending,
                last_seq: 2,
                now: 1500,
                author: OPERATOR,
                payload: Payload::Notice,
                want: Ok((3, Pending, None, 1000, false)),
            },
            Case {
                why: "a finished chat refuses a message",
                status: Finished,
                last_seq: 5,
                now: 1500,
                author: CUSTOMER,
                payload: Payload::Text,
                want: Err(()),
            },
            Case {
                why: "and an operator's answer",
                status: Finished,
                last_seq: 5,
                now: 1500,
                author: OPERATOR,
                payload: Payload::File,
                want: Err(()),
            },
            Case {
                why: "but takes a notice, and stays finished",
                status: Finished,
                last_seq: 5,
                now: 1500,
                author: OPERATOR,
                payload: Payload::Notice,
                want: Ok((6, Finished, None, 1000, false)),
            },
        ];
        for c in cases {
            let mut state = chat(1, c.last_seq, c.status);
            let got = state
                .take(&draft(c.author, c.payload, None), c.now, STEP)
                .map(|took| {
                    (
                        state.last_seq,
                        state.status,
                        state.operator_id,
                        state.last_activity_at,
                        took,
                    )
                })
                .map_err(|_| ());
            assert_eq!(got, c.want, "{}", c.why);
        }
    }

    /// A round of `waiting` with nothing looked up, at 5000.
    fn round<'a>(jobs: &'a [Job], waiting: &'a [usize], chats: &'a Chats) -> Round<'a> {
        Round {
            jobs,
            waiting,
            chats,
            stored: None,
            now: 5000,
            step_ms: STEP,
        }
    }

    fn known(states: &[ChatState], fresh: bool) -> Chats {
        states
            .iter()
            .map(|s| {
                (
                    s.id,
                    Known {
                        state: s.clone(),
                        fresh,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_plan_numbers_each_chats_messages_in_order_and_moves_each_chat_once() {
        let jobs = [
            send(2, CUSTOMER, None),
            send(1, CUSTOMER, None),
            send(2, OPERATOR, None),
            send(1, CUSTOMER, None),
        ];
        let chats = known(
            &[
                chat(1, 4, ChatStatus::Chatting),
                chat(2, 0, ChatStatus::Pending),
            ],
            true,
        );
        let planned = plan(&round(&jobs, &[0, 1, 2, 3], &chats)).expect("planned");
        let inserts: Vec<(usize, i64, i64)> = planned
            .plan
            .inserts
            .iter()
            .map(|i| (i.job, i.chat_id, i.seq))
            .collect();
        assert_eq!(inserts, [(0, 2, 1), (1, 1, 5), (2, 2, 2), (3, 1, 6)]);
        let moves: Vec<(i64, i64, i64, ChatStatus)> = planned
            .plan
            .moves
            .iter()
            .map(|m| (m.was.id, m.was.last_seq, m.now.last_seq, m.now.status))
            .collect();
        assert_eq!(
            moves,
            [
                (1, 4, 6, ChatStatus::Chatting),
                (2, 0, 2, ChatStatus::Chatting)
            ],
            "by chat id, from what was known to the last message"
        );
    }

    #[test]
    fn marks_fold_into_one_move_per_member_and_are_checked_where_they_stand() {
        let jobs = [
            read(1, CUSTOMER, 3),
            send(1, OPERATOR, None),
            read(1, CUSTOMER, 4),
            read(1, CUSTOMER, 2),
            read(1, OPERATOR, 4),
            read(1, CUSTOMER, 6),
        ];
        let chats = known(&[chat(1, 3, ChatStatus::Chatting)], true);
        let planned = plan(&round(&jobs, &[0, 1, 2, 3, 4, 5], &chats)).expect("planned");
        let advances: Vec<(Person, i64, i64)> = planned
            .plan
            .advances
            .iter()
            .map(|a| (a.member, a.received, a.read))
            .collect();
        assert_eq!(
            advances,
            [(CUSTOMER, 4, 4), (OPERATOR, 4, 4)],
            "the furthest of each member's"
        );
        let refused: Vec<usize> = planned
            .decisions
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Refused(Error::Invalid(_))))
            .map(|&(i, _)| i)
            .collect();
        assert_eq!(refused, [5], "seq 6 is past the end, even after the send");
        assert!(planned.plan.advances[1].marks_the_customers());
        assert!(!planned.plan.advances[0].marks_the_customers());
    }
}
