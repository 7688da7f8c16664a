//! The rules of a batch, with no I/O: who may send into a chat, which seq each message
//! gets, which sends repeat an earlier one (`local_id`), how a member's marks fold into one
//! move of their cursors, when a chat's activity time moves, and what the batch announces.
//!
//! [`plan`] decides a batch against what the writer knows of its chats and returns a
//! [`Plan`] for a journal to carry out. [`Batch`] runs the rounds around it: read the chats,
//! plan, execute, and plan again for the chats that turned out to have changed behind the
//! writer's back, or whose sends repeat a stored message. Each backend's journal only does
//! what the plan says, and its driver only feeds [`Batch::next`] what it asks for:
//!
//! ```text
//! loop {
//!     match batch.next() {
//!         Step::Read(read) => batch.read(journal.chats(&read)?, clock.now_ms()),
//!         Step::LookUp(keys) => batch.found(journal.stored(&keys)?),
//!         Step::Execute(plan) => batch.executed(journal.execute(plan, jobs)?),
//!         Step::Done => break,
//!     }
//! }
//! ```

use std::collections::{HashMap, HashSet};

use super::super::events::{Event, Person};
use super::super::{Author, ChatStatus, Error, Message, Receipt, Result};
use super::tuning::Tuning;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    Text,
    File,
    /// Said by the system on someone's behalf (a store's broadcast, say): it goes into any
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
    pub file_id: Option<String>,
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

fn key_of(m: &Message) -> Option<Key<'_>> {
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
enum Decision {
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
struct Planned {
    plan: Plan,
    decisions: Vec<(usize, Decision)>,
    /// Chats to read again before any job of theirs is decided.
    recheck: HashSet<i64>,
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
struct Round<'a> {
    jobs: &'a [Job],
    waiting: &'a [usize],
    chats: &'a Chats,
    stored: Option<&'a [Message]>,
    now: i64,
    step_ms: i64,
}

/// Plans a round's jobs, in order. A chat to read again leaves all its jobs waiting, so
/// that a chat's jobs are always decided in order, in one round.
fn plan(round: &Round<'_>) -> std::result::Result<Planned, ()> {
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
fn new_message(chat_id: i64, send: &Draft, id: i64, seq: i64, now: i64) -> Message {
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
        file_id: send.file_id.clone(),
        status: "sent",
        created_at: now,
        received_at: None,
        read_at: None,
    }
}

/// A refusal again, for a copy of a refused send.
fn same_error(e: &Error) -> Error {
    match e {
        Error::NotFound(what) => Error::NotFound(what),
        Error::Conflict(why) => Error::Conflict(why.clone()),
        Error::Invalid(why) => Error::Invalid(why.clone()),
        other => Error::Internal(other.to_string()),
    }
}

/// What a batch asks of its journal next.
#[derive(Debug)]
pub(crate) enum Step<'b> {
    /// Read these chats, then [`Batch::read`].
    Read(Read),
    /// Find the stored messages these sends repeat, then [`Batch::found`].
    LookUp(Vec<Key<'b>>),
    /// Carry this out, then [`Batch::executed`].
    Execute(&'b Plan),
    /// Every job has its outcome: [`Batch::finish`].
    Done,
}

/// The chats a round needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    /// Every chat of the jobs still waiting.
    pub ids: Vec<i64>,
    /// Those to read from the database even if remembered.
    pub fresh: Vec<i64>,
    /// Read under a lock held until the plan is carried out, so that they cannot change
    /// in between (late rounds: these chats changed under the batch before).
    pub lock: bool,
}

#[derive(Debug)]
enum Phase {
    Read,
    LookUp,
    Execute(Planned),
}

/// One batch of jobs on its way through a journal: the rounds, and each job's outcome.
#[derive(Debug)]
pub(crate) struct Batch<'j> {
    jobs: &'j [Job],
    tuning: &'j Tuning,
    outcomes: Vec<Option<Result<Done>>>,
    /// The stored messages the batch's `local_id`s repeat, once looked up.
    stored: Option<Vec<Message>>,
    /// Chats to read afresh next round.
    fresh: HashSet<i64>,
    rounds: usize,
    phase: Phase,
}

impl<'j> Batch<'j> {
    pub(crate) fn new(jobs: &'j [Job], tuning: &'j Tuning) -> Batch<'j> {
        Batch {
            jobs,
            tuning,
            outcomes: jobs.iter().map(|_| None).collect(),
            stored: None,
            fresh: HashSet::new(),
            rounds: 0,
            phase: Phase::Read,
        }
    }

    fn waiting(&self) -> Vec<usize> {
        (0..self.jobs.len())
            .filter(|&i| self.outcomes[i].is_none())
            .collect()
    }

    /// What the journal must do next.
    pub(crate) fn next(&mut self) -> Step<'_> {
        match &self.phase {
            Phase::Execute(planned) => Step::Execute(&planned.plan),
            Phase::LookUp => Step::LookUp(
                self.waiting()
                    .into_iter()
                    .filter_map(|i| self.jobs[i].key())
                    .collect(),
            ),
            Phase::Read => {
                let waiting = self.waiting();
                if waiting.is_empty() {
                    return Step::Done;
                }
                if self.rounds >= self.tuning.max_rounds {
                    for i in waiting {
                        self.outcomes[i] = Some(Err(Error::Internal(
                            "the chat kept changing under the writer".into(),
                        )));
                    }
                    return Step::Done;
                }
                let mut ids: Vec<i64> = waiting.iter().map(|&i| self.jobs[i].chat_id).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut fresh: Vec<i64> = self.fresh.iter().copied().collect();
                fresh.sort_unstable();
                Step::Read(Read {
                    ids,
                    fresh,
                    lock: self.rounds >= self.tuning.locked_from,
                })
            }
        }
    }

    /// The chats asked for are `chats`; plans the round at `now`.
    pub(crate) fn read(&mut self, chats: Chats, now: i64) {
        let waiting = self.waiting();
        self.fresh.clear();
        let planned = plan(&Round {
            jobs: self.jobs,
            waiting: &waiting,
            chats: &chats,
            stored: self.stored.as_deref(),
            now,
            step_ms: self.tuning.activity_step_ms,
        });
        self.phase = match planned {
            Ok(planned) => {
                self.fresh.extend(planned.recheck.iter().copied());
                Phase::Execute(planned)
            }
            Err(()) => Phase::LookUp,
        };
    }

    /// The stored messages the batch's sends repeat.
    pub(crate) fn found(&mut self, stored: Vec<Message>) {
        self.stored = Some(stored);
        self.phase = Phase::Read;
    }

    /// What became of the plan: decides the jobs it stored or refused.
    pub(crate) fn executed(&mut self, result: Executed) {
        let Phase::Execute(planned) = std::mem::replace(&mut self.phase, Phase::Read) else {
            return;
        };
        self.rounds += 1;
        let (ids, stale, receipts) = match result {
            Executed::Repeated => {
                // Looked up (again: another node may have stored it since), then planned anew.
                self.stored = None;
                self.phase = Phase::LookUp;
                return;
            }
            Executed::Stored {
                ids,
                stale,
                receipts,
            } => (ids, stale, receipts),
        };
        self.fresh.extend(stale);
        let now = planned.plan.now;
        let mut copies = Vec::new();
        for (i, decision) in planned.decisions {
            let job = &self.jobs[i];
            self.outcomes[i] = match decision {
                Decision::Insert { n, took } => {
                    let (Some(Some(id)), Some(send)) = (ids.get(n), job.send()) else {
                        continue; // its chat was stale: next round
                    };
                    let seq = planned.plan.inserts[n].seq;
                    Some(Ok(Done::Sent(Sent {
                        message: new_message(job.chat_id, send, *id, seq, now),
                        new: true,
                        took_chat: took,
                    })))
                }
                Decision::Advance(n) => {
                    let Some(Some((before, after))) = receipts.get(n) else {
                        continue;
                    };
                    let moved = after.received_seq != before.received_seq
                        || after.read_seq != before.read_seq;
                    Some(Ok(Done::Marked(Marked {
                        receipt: after.clone(),
                        moved,
                    })))
                }
                Decision::Repeat(message) => Some(Ok(Done::Sent(Sent {
                    message,
                    new: false,
                    took_chat: false,
                }))),
                Decision::Refused(e) => Some(Err(e)),
                Decision::CopyOf(first) => {
                    copies.push((i, first));
                    continue;
                }
            };
        }
        // A copy gets what its first got: the same message, or the same refusal.
        for (i, first) in copies {
            self.outcomes[i] = match &self.outcomes[first] {
                Some(Ok(Done::Sent(sent))) => Some(Ok(Done::Sent(Sent {
                    message: sent.message.clone(),
                    new: false,
                    took_chat: false,
                }))),
                Some(Err(e)) => Some(Err(same_error(e))),
                Some(Ok(Done::Marked(_))) | None => None,
            };
        }
    }

    /// Each job's outcome, in order.
    pub(crate) fn finish(self) -> Vec<Result<Done>> {
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Internal("a job got no outcome".into()))))
            .collect()
    }
}

/// What a stored batch announces, in order: each new message, and each member's receipt
/// if their marks moved a cursor, once, where their last mark stands (its cursors hold
/// those of the marks before it).
pub(crate) fn events(jobs: &[Job], outcomes: &[Result<Done>]) -> Vec<Event> {
    let mut last_mark: HashMap<(i64, Person), usize> = HashMap::new();
    let mut moved: HashSet<(i64, Person)> = HashSet::new();
    for (i, (job, outcome)) in jobs.iter().zip(outcomes).enumerate() {
        if let (Work::Mark(mark), Ok(Done::Marked(marked))) = (&job.work, outcome) {
            let member = (job.chat_id, mark.member);
            last_mark.insert(member, i);
            if marked.moved {
                moved.insert(member);
            }
        }
    }
    let mut events = Vec::new();
    for (i, (job, outcome)) in jobs.iter().zip(outcomes).enumerate() {
        match (&job.work, outcome) {
            (_, Ok(Done::Sent(sent))) if sent.new => {
                events.push(Event::Message(sent.message.clone()));
            }
            (Work::Mark(mark), Ok(Done::Marked(marked))) => {
                let member = (job.chat_id, mark.member);
                if last_mark.get(&member) == Some(&i) && moved.contains(&member) {
                    events.push(Event::Receipt {
                        chat_id: job.chat_id,
                        member: mark.member,
                        received_seq: marked.receipt.received_seq,
                        read_seq: marked.receipt.read_seq,
                    });
                }
            }
            _ => {}
        }
    }
    events
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const STEP: i64 = 1000;

    fn chat(id: i64, last_seq: i64, status: ChatStatus) -> ChatState {
        ChatState {
            id,
            last_seq,
            status,
            operator_id: None,
            last_activity_at: 1000,
        }
    }

    fn draft(author: Person, payload: Payload, local_id: Option<&str>) -> Draft {
        Draft {
            author,
            local_id: local_id.map(str::to_owned),
            payload,
            text: "hi".into(),
            file_id: None,
        }
    }

    fn send(chat_id: i64, author: Person, local_id: Option<&str>) -> Job {
        Job {
            chat_id,
            work: Work::Send(draft(author, Payload::Text, local_id)),
        }
    }

    fn notice(chat_id: i64) -> Job {
        Job {
            chat_id,
            work: Work::Send(draft(OPERATOR, Payload::Notice, None)),
        }
    }

    fn read(chat_id: i64, member: Person, seq: i64) -> Job {
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

    const CUSTOMER: Person = Person::Customer(1);
    const OPERATOR: Person = Person::Operator(7);

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

    /// An in-memory journal that keeps the journals' contract, to run batches through
    /// [`Batch`] with no database: the tables are `chats`, `messages` and `receipts`, and
    /// `remembered` is what the writer knows of the chats.
    #[derive(Default)]
    struct Memory {
        chats: HashMap<i64, ChatState>,
        remembered: HashMap<i64, ChatState>,
        messages: Vec<Message>,
        receipts: HashMap<(i64, Person), Receipt>,
        /// The reads the batches asked for.
        reads: Vec<Read>,
        /// Run before each execution (another node writing, say).
        meanwhile: Option<Box<Meanwhile>>,
    }

    /// What happens to the chats table between a plan and its execution.
    type Meanwhile = dyn FnMut(&mut HashMap<i64, ChatState>);

    impl Memory {
        fn with(chats: &[ChatState]) -> Memory {
            Memory {
                chats: chats.iter().map(|c| (c.id, c.clone())).collect(),
                ..Memory::default()
            }
        }

        fn chats(&mut self, read: &Read) -> Chats {
            self.reads.push(read.clone());
            let mut chats = Chats::new();
            for id in &read.ids {
                match self.remembered.get(id) {
                    Some(state) if !read.fresh.contains(id) && !read.lock => {
                        chats.insert(
                            *id,
                            Known {
                                state: state.clone(),
                                fresh: false,
                            },
                        );
                    }
                    _ => {
                        if let Some(state) = self.chats.get(id) {
                            self.remembered.insert(*id, state.clone());
                            chats.insert(
                                *id,
                                Known {
                                    state: state.clone(),
                                    fresh: true,
                                },
                            );
                        }
                    }
                }
            }
            chats
        }

        fn stored(&self, keys: &[Key<'_>]) -> Vec<Message> {
            self.messages
                .iter()
                .filter(|m| key_of(m).is_some_and(|k| keys.contains(&k)))
                .cloned()
                .collect()
        }

        fn execute(&mut self, plan: &Plan, jobs: &[Job]) -> Executed {
            if let Some(meanwhile) = &mut self.meanwhile {
                meanwhile(&mut self.chats);
            }
            let stale: Vec<i64> = plan
                .moves
                .iter()
                .filter(|m| self.chats.get(&m.was.id) != Some(&m.was))
                .map(|m| m.was.id)
                .collect();
            let inserts: Vec<&Insert> = plan
                .inserts
                .iter()
                .filter(|i| !stale.contains(&i.chat_id))
                .collect();
            let repeats = inserts.iter().any(|i| {
                jobs[i.job]
                    .key()
                    .is_some_and(|k| self.messages.iter().any(|m| key_of(m) == Some(k)))
            });
            if repeats {
                return Executed::Repeated;
            }
            for m in &plan.moves {
                if stale.contains(&m.was.id) {
                    self.remembered.remove(&m.was.id);
                } else {
                    self.chats.insert(m.now.id, m.now.clone());
                    self.remembered.insert(m.now.id, m.now.clone());
                }
            }
            let mut ids = Vec::new();
            for i in &plan.inserts {
                if stale.contains(&i.chat_id) {
                    ids.push(None);
                    continue;
                }
                let id = self.messages.len() as i64 + 100;
                let send = jobs[i.job].send().expect("a send");
                self.messages
                    .push(new_message(i.chat_id, send, id, i.seq, plan.now));
                ids.push(Some(id));
            }
            let receipts = plan
                .advances
                .iter()
                .map(|a| {
                    if stale.contains(&a.chat_id) {
                        return None;
                    }
                    let before = self
                        .receipts
                        .get(&(a.chat_id, a.member))
                        .cloned()
                        .unwrap_or_else(|| Receipt::none(a.chat_id));
                    let after = before.advanced(a, plan.now);
                    self.receipts.insert((a.chat_id, a.member), after.clone());
                    Some((before, after))
                })
                .collect();
            Executed::Stored {
                ids,
                stale,
                receipts,
            }
        }

        /// Runs a batch as a driver does.
        fn run(&mut self, jobs: &[Job], tuning: &Tuning) -> Vec<Result<Done>> {
            let mut batch = Batch::new(jobs, tuning);
            loop {
                match batch.next() {
                    Step::Read(read) => {
                        let chats = self.chats(&read);
                        batch.read(chats, 5000);
                    }
                    Step::LookUp(keys) => {
                        let found = self.stored(&keys);
                        batch.found(found);
                    }
                    Step::Execute(plan) => {
                        let executed = self.execute(plan, jobs);
                        batch.executed(executed);
                    }
                    Step::Done => return batch.finish(),
                }
            }
        }
    }

    fn seq(out: &Result<Done>) -> std::result::Result<(i64, bool), String> {
        match out {
            Ok(Done::Sent(s)) => Ok((s.message.seq, s.new)),
            Ok(Done::Marked(m)) => Err(format!("marked {}", m.receipt.read_seq)),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn a_repeated_local_id_within_a_batch_is_one_message_and_shares_a_refusal() {
        let mut db = Memory::with(&[
            chat(1, 0, ChatStatus::Pending),
            chat(2, 5, ChatStatus::Finished),
        ]);
        db.run(&[send(2, CUSTOMER, Some("old"))], &Tuning::DEFAULT);
        let jobs = [
            send(1, CUSTOMER, Some("a")),
            send(1, CUSTOMER, Some("a")),
            send(2, CUSTOMER, Some("b")),
            send(2, CUSTOMER, Some("b")),
        ];
        let out = db.run(&jobs, &Tuning::DEFAULT);
        assert_eq!(seq(&out[0]), Ok((1, true)));
        assert_eq!(seq(&out[1]), Ok((1, false)), "the first one's message");
        assert!(matches!(out[2], Err(Error::Conflict(_))), "{:?}", out[2]);
        assert!(matches!(out[3], Err(Error::Conflict(_))), "refused alike");
        assert_eq!(db.messages.len(), 1);
    }

    #[test]
    fn a_send_repeating_a_stored_local_id_gets_the_stored_message_after_a_look_up() {
        let mut db = Memory::with(&[chat(1, 0, ChatStatus::Pending)]);
        db.run(&[send(1, CUSTOMER, Some("a"))], &Tuning::DEFAULT);
        let jobs = [
            send(1, CUSTOMER, None),
            send(1, CUSTOMER, Some("a")),
            send(1, CUSTOMER, None),
        ];
        let out = db.run(&jobs, &Tuning::DEFAULT);
        let got: Vec<_> = out.iter().map(seq).collect();
        assert_eq!(got, [Ok((2, true)), Ok((1, false)), Ok((3, true))]);
        assert_eq!(db.chats[&1].last_seq, 3, "no seq taken by the repeat");
    }

    #[test]
    fn a_refused_send_with_a_local_id_is_looked_up_before_it_is_refused() {
        let mut db = Memory::with(&[chat(1, 0, ChatStatus::Pending)]);
        db.run(&[send(1, CUSTOMER, Some("a"))], &Tuning::DEFAULT);
        db.chats.get_mut(&1).expect("chat 1").status = ChatStatus::Finished;
        let out = db.run(
            &[send(1, CUSTOMER, Some("a")), send(1, CUSTOMER, Some("b"))],
            &Tuning::DEFAULT,
        );
        assert_eq!(
            seq(&out[0]),
            Ok((1, false)),
            "stored before the chat finished"
        );
        assert!(matches!(out[1], Err(Error::Conflict(_))), "{:?}", out[1]);
    }

    #[test]
    fn a_chat_changed_behind_the_writers_back_is_read_again_and_its_jobs_planned_anew() {
        let mut db = Memory::with(&[
            chat(1, 0, ChatStatus::Pending),
            chat(2, 0, ChatStatus::Pending),
        ]);
        db.run(
            &[send(1, CUSTOMER, None), send(2, CUSTOMER, None)],
            &Tuning::DEFAULT,
        );
        // Another node stores two messages in chat 1.
        db.chats.get_mut(&1).expect("chat 1").last_seq = 3;
        let out = db.run(
            &[
                send(1, CUSTOMER, None),
                send(2, CUSTOMER, None),
                send(1, CUSTOMER, None),
            ],
            &Tuning::DEFAULT,
        );
        let got: Vec<_> = out.iter().map(seq).collect();
        assert_eq!(got, [Ok((4, true)), Ok((2, true)), Ok((5, true))]);
        let fresh: Vec<Vec<i64>> = db.reads.iter().map(|r| r.fresh.clone()).collect();
        assert_eq!(fresh.last(), Some(&vec![1]), "chat 1 read again");
    }

    #[test]
    fn a_refusal_is_decided_on_a_chat_read_in_its_round() {
        let mut db = Memory::with(&[chat(1, 2, ChatStatus::Chatting)]);
        db.run(&[send(1, CUSTOMER, None)], &Tuning::DEFAULT);
        // Remembered as finished (say, finished and reopened since): read again, it takes
        // the message. A mark past the remembered end is checked on the chat read again.
        db.remembered.get_mut(&1).expect("remembered").status = ChatStatus::Finished;
        db.chats.get_mut(&1).expect("chat 1").last_seq = 9;
        db.remembered.get_mut(&1).expect("remembered").last_seq = 9;
        db.chats.get_mut(&1).expect("chat 1").last_seq = 12;
        let out = db.run(
            &[read(1, CUSTOMER, 11), send(1, CUSTOMER, None)],
            &Tuning::DEFAULT,
        );
        assert_eq!(seq(&out[0]), Err("marked 11".into()));
        assert_eq!(seq(&out[1]), Ok((13, true)));
        let out = db.run(&[read(1, CUSTOMER, 20)], &Tuning::DEFAULT);
        assert!(matches!(out[0], Err(Error::Invalid(_))), "{:?}", out[0]);
    }

    #[test]
    fn a_batch_whose_chat_keeps_changing_reads_it_under_a_lock_and_fails_after_the_last_round() {
        let tuning = Tuning::DEFAULT;
        let mut db = Memory::with(&[chat(1, 0, ChatStatus::Pending)]);
        db.run(&[send(1, CUSTOMER, None)], &tuning);
        db.meanwhile = Some(Box::new(|chats| {
            if let Some(c) = chats.get_mut(&1) {
                c.last_seq += 1;
            }
        }));
        let out = db.run(&[send(1, CUSTOMER, None)], &tuning);
        assert!(matches!(out[0], Err(Error::Internal(_))), "{:?}", out[0]);
        let locks: Vec<bool> = db.reads.iter().skip(1).map(|r| r.lock).collect();
        let want: Vec<bool> = (0..tuning.max_rounds)
            .map(|r| r >= tuning.locked_from)
            .collect();
        assert_eq!(locks, want, "locked from round {}", tuning.locked_from);
    }

    #[test]
    fn a_batch_announces_new_messages_and_one_receipt_per_member_where_their_last_mark_stands() {
        let mut db = Memory::with(&[chat(1, 0, ChatStatus::Pending)]);
        let jobs = [
            send(1, OPERATOR, Some("x")),
            read(1, CUSTOMER, 1),
            send(1, OPERATOR, Some("x")),
            send(1, OPERATOR, None),
            read(1, OPERATOR, 0),
            read(1, CUSTOMER, 2),
            notice(1),
        ];
        let out = db.run(&jobs, &Tuning::DEFAULT);
        let said = said(&events(&jobs, &out));
        assert_eq!(
            said,
            [
                "message 1",
                "message 2",
                "receipt Customer(1) 2 2",
                "message 3"
            ],
            "a repeat is not announced again, nor a mark that moved nothing"
        );
    }
}
