//! The rounds of a batch: read the chats, plan, carry the plan out, and plan again for
//! the chats that turned out to have changed behind the writer's back, or whose sends
//! repeat a stored message; then what the batch announces. Each backend's journal only does
//! what a plan says, and its driver only feeds [`Batch::next`] what it asks for:
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

use super::plan::{
    Chats, Decision, Done, Executed, Job, Key, Marked, Plan, Planned, Round, Sent, Work,
    new_message, plan, same_error,
};
use super::tuning::Tuning;
use crate::domain::events::{Event, Person};
use crate::domain::{Error, Message, Result};

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
        // A stale chat's jobs are all planned anew on the chat read again: what was decided
        // for them (a refusal, say) was decided on a state that was already behind.
        let stale: HashSet<i64> = stale.into_iter().collect();
        self.fresh.extend(stale.iter().copied());
        let now = planned.plan.now;
        let mut copies = Vec::new();
        for (i, decision) in planned.decisions {
            let job = &self.jobs[i];
            if stale.contains(&job.chat_id) {
                continue;
            }
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

    /// The outcomes decided so far, in job order (`None`: not yet), for a driver whose
    /// journal failed in the middle of the rounds: what earlier rounds committed stays
    /// committed, and only the rest is to be tried again.
    pub(crate) fn decided(self) -> Vec<Option<Result<Done>>> {
        self.outcomes
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
mod tests {
    use super::*;
    use crate::domain::ChatStatus;
    use crate::domain::Receipt;
    use crate::domain::write::plan::tests::{CUSTOMER, OPERATOR, chat, notice, read, said, send};
    use crate::domain::write::plan::{ChatState, Insert, Known, key_of};

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

    /// A journal that fails after a round committed (a connection lost, say) leaves that
    /// round's outcomes decided, so that only the rest is tried again (and nothing is
    /// stored twice).
    #[test]
    fn a_round_committed_before_a_failure_keeps_its_outcomes() {
        let tuning = Tuning::DEFAULT;
        let mut db = Memory::with(&[
            chat(1, 0, ChatStatus::Pending),
            chat(2, 0, ChatStatus::Pending),
        ]);
        db.run(&[send(1, CUSTOMER, None), send(2, CUSTOMER, None)], &tuning);
        // Chat 2 changed behind the writer's back: the first round stores chat 1's message
        // alone, and the second, which would store chat 2's, fails.
        db.chats.get_mut(&2).expect("chat 2").last_seq = 5;
        let jobs = [send(1, CUSTOMER, None), send(2, CUSTOMER, None)];
        let mut batch = Batch::new(&jobs, &tuning);
        let mut executions = 0;
        let decided = loop {
            match batch.next() {
                Step::Read(read) => {
                    let chats = db.chats(&read);
                    batch.read(chats, 5000);
                }
                Step::LookUp(keys) => {
                    let found = db.stored(&keys);
                    batch.found(found);
                }
                Step::Execute(plan) => {
                    executions += 1;
                    if executions == 2 {
                        break batch.decided();
                    }
                    let executed = db.execute(plan, &jobs);
                    batch.executed(executed);
                }
                Step::Done => panic!("the second round should have failed"),
            }
        };
        assert!(
            matches!(&decided[0], Some(Ok(Done::Sent(s))) if s.message.seq == 2),
            "chat 1's message, committed: {:?}",
            decided[0]
        );
        assert!(decided[1].is_none(), "chat 2's, still to store");
    }

    /// What a round decided for a chat that turned out stale (a refusal on the state it
    /// read) is decided again on the chat read afresh.
    #[test]
    fn a_stale_chats_jobs_are_all_decided_again() {
        let tuning = Tuning::DEFAULT;
        let mut db = Memory::with(&[chat(1, 2, ChatStatus::Chatting)]);
        // Read fresh at seq 2; before the plan is carried out another node stores seq 3.
        let mut once = true;
        db.meanwhile = Some(Box::new(move |chats| {
            if std::mem::take(&mut once)
                && let Some(c) = chats.get_mut(&1)
            {
                c.last_seq = 3;
            }
        }));
        let out = db.run(&[read(1, CUSTOMER, 3), send(1, CUSTOMER, None)], &tuning);
        assert_eq!(
            seq(&out[0]),
            Err("marked 3".into()),
            "the read of seq 3, refused on the stale state, is valid on the fresh one"
        );
        assert_eq!(seq(&out[1]), Ok((4, true)));
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
