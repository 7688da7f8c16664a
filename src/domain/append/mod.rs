//! Group commit of messages. Every send of the process goes through one appender, which
//! takes whatever sends are waiting (up to [`MAX_BATCH`]) and stores them in one commit
//! (on PostgreSQL, the marks of the batch follow in a commit of their own). Only after
//! that commit does it announce the messages and answer each caller. Under load one
//! commit carries many messages; alone, a send commits at once.
//!
//! There are three writers of a batch:
//! - `sqlite`: a thread with its own connection, one statement per message (SQLite runs
//!   them in process) and one per chat; a send that finds it idle, while its batches are
//!   small, is committed through the same connection on the caller's own thread;
//! - `postgres`: one statement for a batch's messages, in one round trip, and one for its
//!   marks; several writers, one batch in flight at low load and side by side under load
//!   (see there);
//! - [`commit`] here, through the pool in a few statements whatever the batch's size: an
//!   in-memory SQLite database uses it, and every writer falls back on it to store a send
//!   alone.
//!
//! A send that fails on its own (a finished chat) fails alone inside the batch. If the
//! batch fails as a whole, each of its sends is tried again in a transaction of its own,
//! so that one bad send never takes the others down with it.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::Either;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, Value,
};
use tokio::sync::{Notify, mpsc, oneshot};

use super::events::Event;
use super::events::Person;
use super::messages::{Message, Receipt};
use super::{Error, Live, Result};
use crate::clock::system_ms as now_ms;
use crate::store::entity::{chat, message, receipt};
use crate::store::{Store, WriteTx, stmt};

/// Most sends in one transaction.
const MAX_BATCH: usize = 256;

/// A message to store, already checked.
#[derive(Debug, Clone)]
pub(super) struct Append {
    pub kind: &'static str,
    pub author_id: i64,
    pub local_id: Option<String>,
    /// `text`, `file` or `notice`.
    pub payload: &'static str,
    pub text: String,
    pub file_id: Option<String>,
}

/// A member's cursors to move, already checked (neither below 0, and `received` at least
/// `read`: a read message is received). 0 moves nothing: cursors start there.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    /// `customer` or `operator`.
    pub kind: &'static str,
    pub member_id: i64,
    pub received: i64,
    pub read: i64,
}

impl Receipt {
    /// The cursors of a member with no receipt row yet.
    pub(super) fn none(chat_id: i64) -> Receipt {
        Receipt {
            chat_id,
            received_seq: 0,
            read_seq: 0,
            received_at: None,
            read_at: None,
        }
    }

    /// These cursors after `m` at `now`: each moves only forward, and takes the time
    /// when it does.
    pub(super) fn moved_to(&self, m: &Mark, now: i64) -> Receipt {
        let mut after = self.clone();
        if m.received > after.received_seq {
            after.received_seq = m.received;
            after.received_at = Some(now);
        }
        if m.read > after.read_seq {
            after.read_seq = m.read;
            after.read_at = Some(now);
        }
        after
    }
}

impl From<receipt::Model> for Receipt {
    fn from(r: receipt::Model) -> Self {
        Receipt {
            chat_id: r.chat_id,
            received_seq: r.received_seq,
            read_seq: r.read_seq,
            received_at: r.received_at,
            read_at: r.read_at,
        }
    }
}

impl Mark {
    fn member(&self) -> Person {
        match self.kind {
            "customer" => Person::Customer(self.member_id),
            _ => Person::Operator(self.member_id),
        }
    }

    /// Which messages the member marks: a customer the others', an operator the customer's.
    pub(super) fn others(&self) -> &'static str {
        if self.kind == "customer" {
            "author_kind <> 'customer'"
        } else {
            "author_kind = 'customer'"
        }
    }

    /// Refuses cursors past the chat's newest message.
    pub(super) fn check(&self, last_seq: i64) -> Result<()> {
        match self.received.max(self.read) {
            seq if seq > last_seq => Err(Error::Invalid(format!(
                "seq {seq} is outside this chat's messages (0..={last_seq})"
            ))),
            _ => Ok(()),
        }
    }
}

/// What a job asks for.
#[derive(Debug, Clone)]
pub(super) enum Work {
    Append(Append),
    Mark(Mark),
}

/// What became of a job.
#[derive(Debug, Clone)]
pub(super) enum Done {
    Stored(Stored),
    Marked(Marked),
}

/// A member's cursors after a mark.
#[derive(Debug, Clone)]
pub(super) struct Marked {
    pub receipt: Receipt,
    /// Whether a cursor moved (only then is the receipt announced).
    pub moved: bool,
}

/// What became of a send.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub message: Message,
    /// False when a repeated `local_id` gave back the first message.
    pub new: bool,
    /// This message, an operator's answer, took the pending chat.
    pub took_chat: bool,
}

impl Stored {
    /// The message `a` stored in the chat as `id` at `seq`.
    fn new(chat_id: i64, a: &Append, id: i64, seq: i64, now: i64, took_chat: bool) -> Stored {
        let stored = message::Model {
            id,
            chat_id,
            seq,
            author_kind: a.kind.to_owned(),
            author_id: a.author_id,
            local_id: a.local_id.clone(),
            payload: a.payload.to_owned(),
            text: a.text.clone(),
            file_id: a.file_id.clone(),
            created_at: now,
            received_at: None,
            read_at: None,
        };
        Stored {
            message: stored.into(),
            new: true,
            took_chat,
        }
    }

    fn repeat(message: Message) -> Stored {
        Stored {
            message,
            new: false,
            took_chat: false,
        }
    }
}

#[derive(Debug)]
struct Job {
    chat_id: i64,
    work: Work,
    reply: oneshot::Sender<Result<Done>>,
}

impl Job {
    fn append(&self) -> Option<&Append> {
        match &self.work {
            Work::Append(a) => Some(a),
            Work::Mark(_) => None,
        }
    }
}

/// The handle of the appender task; the task ends when the handle is dropped.
#[derive(Debug)]
pub(super) struct Appender {
    intake: Arc<Intake>,
}

/// How long a mark that may wait is held back before it goes to the writers.
pub(super) const MARK_DELAY: Duration = Duration::from_millis(20);

/// The writers' queue, and the marks held back from it.
///
/// A socket's marks (`received`, `read`) are not urgent the way messages are: nobody
/// waits on them but the receipt ticks, and they answer only when they fail. At low load
/// each would be a commit of its own between the messages, so a mark that finds nothing
/// queued is held up to [`MARK_DELAY`] and then goes, with the others held, to a queue of
/// their own, which the writers take after the messages: many marks in one
/// statement (and several marks of one member as one row). A held mark never holds up a
/// message. Marks only move cursors forward, so a mark committed after messages sent
/// later is the same mark. Under load, marks queue with the messages: the SQLite writer
/// commits them together, and PostgreSQL's stores them in a statement of their own right
/// after, once the messages are answered. (Holding them there as well would save commits,
/// but the writer then stores each hold's marks in one burst that the messages queued
/// behind it wait for: BENCHMARKS.md.)
#[derive(Debug)]
struct Intake {
    /// Every job goes this way, in order; the writers keep each chat's order.
    lane: Lane,
    held: Mutex<Vec<Job>>,
    /// Tells the releasing task that marks are held.
    holding: Arc<Notify>,
}

/// What goes to the writers (one on SQLite, the node's PostgreSQL writers together): jobs
/// in order, and released marks.
#[derive(Debug)]
struct Lane {
    jobs: mpsc::Sender<Job>,
    marks: mpsc::Sender<Job>,
    /// The SQLite writer, which commits a job at once when it is idle.
    now: Option<Arc<sqlite::Shared>>,
    /// Jobs (and released marks) the PostgreSQL writers have taken from the queues but not
    /// yet into a batch.
    backlog: Arc<AtomicUsize>,
}

impl Intake {
    fn take_held(&self) -> Vec<Job> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The writers' end of the lane.
#[derive(Debug)]
struct Queues {
    jobs: mpsc::Receiver<Job>,
    marks: mpsc::Receiver<Job>,
    marks_open: bool,
    released: Vec<Job>,
}

/// A new lane and the writers' end of it.
fn lane() -> (Lane, Queues) {
    let (jobs, jobs_rx) = mpsc::channel(4 * MAX_BATCH);
    let (marks, marks_rx) = mpsc::channel(4 * MAX_BATCH);
    let queues = Queues {
        jobs: jobs_rx,
        marks: marks_rx,
        marks_open: true,
        released: Vec::new(),
    };
    let lane = Lane {
        jobs,
        marks,
        now: None,
        backlog: Arc::new(AtomicUsize::new(0)),
    };
    (lane, queues)
}

impl Queues {
    /// Waits for work, then fills `batch` (which the caller has emptied) with what is
    /// waiting: jobs first, in order, up to [`MAX_BATCH`], then released marks, up to as
    /// many again. Leaves it empty once the appender is gone and everything is taken.
    /// Returns how many of the batch came from the jobs queue.
    async fn next(&mut self, batch: &mut Vec<Job>) -> usize {
        tokio::select! {
            biased;
            _ = self.jobs.recv_many(batch, MAX_BATCH) => {}
            n = self.marks.recv_many(&mut self.released, MAX_BATCH), if self.marks_open => {
                self.marks_open = n > 0;
            }
        }
        // Whichever came first, the other queue's waiting work comes along.
        while batch.len() < MAX_BATCH {
            let Ok(job) = self.jobs.try_recv() else { break };
            batch.push(job);
        }
        let jobs = batch.len();
        while self.released.len() < MAX_BATCH {
            let Ok(job) = self.marks.try_recv() else {
                break;
            };
            self.released.push(job);
        }
        batch.append(&mut self.released);
        jobs
    }
}

/// Sends the held marks to the writers [`MARK_DELAY`] after the first of them came,
/// until the appender is gone.
async fn release_held(intake: Weak<Intake>, holding: Arc<Notify>) {
    loop {
        holding.notified().await;
        tokio::time::sleep(MARK_DELAY).await;
        let Some(intake) = intake.upgrade() else {
            return;
        };
        // A full queue keeps its marks held for the next round; a writer that stopped
        // has dropped its queue, and the mark's caller hears so.
        let full: Vec<Job> = intake
            .take_held()
            .into_iter()
            .filter_map(|job| match intake.lane.marks.try_send(job) {
                Err(mpsc::error::TrySendError::Full(job)) => Some(job),
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            })
            .collect();
        if !full.is_empty() {
            intake
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(full);
            holding.notify_one();
        }
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        // Whatever is held goes now, if the writers' queue has room: nothing waits on
        // it (a lost mark is a receipt tick to come again), but it should not be lost.
        for job in self.intake.take_held() {
            let _ = self.intake.lane.marks.try_send(job);
        }
        self.intake.holding.notify_one();
    }
}

impl Appender {
    /// Starts the appender: on a SQLite file, a thread with its own connection; otherwise
    /// a task (PostgreSQL's writer, or the pool's). Must be called within a tokio runtime.
    pub fn start(store: Store, bus: Arc<dyn Live>, _clock: crate::clock::Clock) -> Appender {
        let (mut lane, queues) = lane();
        if let Some((file, lock)) = store.sqlite_writer() {
            match sqlite::connect(&file) {
                Ok(conns) => {
                    lane.now = Some(sqlite::start(conns, lock, bus, queues));
                    return Appender::with(lane);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot open the SQLite writer's connection; messages go through the pool"
                ),
            }
        }
        if postgres::Writer::new(store.clone()).is_none() {
            // SQLite has one writer at a time anyway.
            tokio::spawn(run(store, bus, queues));
            return Appender::with(lane);
        }
        // Several writers, each with its own connection, so that one batch's statement
        // can run while another's commits, once there is enough waiting to need it (see
        // `postgres::run`). (Nodes sharing the database each bring theirs.)
        let writers = (0..store.postgres_writers())
            .filter_map(|_| postgres::Writer::new(store.clone()))
            .collect();
        tokio::spawn(postgres::run(writers, bus, queues, lane.backlog.clone()));
        Appender::with(lane)
    }

    fn with(lane: Lane) -> Appender {
        let holding = Arc::new(Notify::new());
        let intake = Arc::new(Intake {
            lane,
            held: Mutex::new(Vec::new()),
            holding: holding.clone(),
        });
        tokio::spawn(release_held(Arc::downgrade(&intake), holding));
        Appender { intake }
    }

    /// Queues a message and returns what answers after its commit. Messages queued one
    /// after another are stored, and announced, in that order.
    pub async fn enqueue(
        &self,
        chat_id: i64,
        append: Append,
    ) -> Result<impl Future<Output = Result<Stored>> + use<>> {
        let done = self.queue(chat_id, Work::Append(append)).await?;
        Ok(async move {
            match done.await? {
                Done::Stored(stored) => Ok(stored),
                Done::Marked(_) => Err(Error::Internal("a send was answered as a mark".into())),
            }
        })
    }

    /// Queues a mark and returns what answers after its commit, in order with the sends
    /// and marks queued before it; or, one that may `wait` for a writer with nothing
    /// queued, after up to [`MARK_DELAY`] (see [`Intake`]).
    pub async fn mark(
        &self,
        chat_id: i64,
        mark: Mark,
        wait: bool,
    ) -> Result<impl Future<Output = Result<Marked>> + use<>> {
        let lane = &self.intake.lane;
        // Writers with work waiting store this mark with that work anyway.
        let idle = lane.jobs.capacity() == lane.jobs.max_capacity()
            && lane.backlog.load(Ordering::Relaxed) == 0;
        let done = if wait && idle {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                chat_id,
                work: Work::Mark(mark),
                reply,
            };
            let first = {
                let mut held = self.intake.held.lock().unwrap_or_else(|e| e.into_inner());
                held.push(job);
                held.len() == 1
            };
            if first {
                self.intake.holding.notify_one();
            }
            Either::Left(async move { answer.await.map_err(|_| stopped())? })
        } else {
            Either::Right(self.queue(chat_id, Work::Mark(mark)).await?)
        };
        Ok(async move {
            match done.await? {
                Done::Marked(marked) => Ok(marked),
                Done::Stored(_) => Err(Error::Internal("a mark was answered as a send".into())),
            }
        })
    }

    async fn queue(
        &self,
        chat_id: i64,
        work: Work,
    ) -> Result<impl Future<Output = Result<Done>> + use<>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            chat_id,
            work,
            reply,
        };
        let lane = &self.intake.lane;
        // A place in the queue first, so that a caller who gives up while the queue is
        // full leaves nothing counted as queued.
        let place = lane.jobs.reserve().await.map_err(|_| stopped())?;
        let queued = match &lane.now {
            Some(writer) => writer.now_or_queue(job),
            None => Some(job),
        };
        if let Some(job) = queued {
            place.send(job);
        }
        Ok(async move { answer.await.map_err(|_| stopped())? })
    }
}

fn stopped() -> Error {
    Error::Internal("the message writer has stopped".into())
}

async fn run(store: Store, bus: Arc<dyn Live>, mut queues: Queues) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        queues.next(&mut batch).await;
        if batch.is_empty() {
            return;
        }
        match commit(&store, &batch, Repeats::Assume).await {
            Ok(outcomes) => answer(&*bus, batch.drain(..), outcomes),
            Err(e) => {
                tracing::debug!(error = %e, sends = batch.len(), "a batch failed; retrying its sends one by one");
                for job in batch.drain(..) {
                    let outcome = alone(&store, &job).await;
                    answer(&*bus, std::iter::once(job), vec![outcome]);
                }
            }
        }
    }
}

/// One send in a transaction of its own, tried twice: a local_id that another node stored
/// meanwhile is found as a repeat on the second try.
async fn alone(store: &Store, job: &Job) -> Result<Done> {
    let mut tries = 0;
    loop {
        tries += 1;
        match commit(store, std::slice::from_ref(job), Repeats::Look).await {
            Ok(mut one) => {
                return one
                    .pop()
                    .unwrap_or_else(|| Err(Error::Internal("a send got no outcome".into())));
            }
            Err(e) if tries >= 2 => return Err(e.into()),
            Err(_) => continue,
        }
    }
}

/// Announces the new messages and moved cursors of a committed batch, in order, then
/// answers each caller; the sockets the batch reaches are woken last, each once per call
/// (PostgreSQL's writer calls it once for a batch's messages and once for its marks).
fn answer(bus: &dyn Live, jobs: impl Iterator<Item = Job>, outcomes: Vec<Result<Done>>) {
    let done: Vec<(Job, Result<Done>)> = jobs.zip(outcomes).collect();
    crate::wake::holding_wakes(|| {
        // Events before answers: a sender's device gets its message, then the ack.
        bus.announce(&announcements(&done));
        for (job, outcome) in done {
            // A caller that went away still had its job done, as with any lost answer.
            let _ = job.reply.send(outcome);
        }
    });
}

/// What a committed batch announces, in order: each new message, and each member's
/// receipt if a mark of theirs moved a cursor. A member who sent several marks gets one
/// receipt, at the last of them: the cursors each mark answers with include those of the
/// marks before it, so the last holds them all.
fn announcements(done: &[(Job, Result<Done>)]) -> Vec<Event> {
    let mut events: Vec<Option<Event>> = Vec::new();
    let mut receipt_at: HashMap<(i64, Person), usize> = HashMap::new();
    for (job, outcome) in done {
        match (&job.work, outcome) {
            (
                _,
                Ok(Done::Stored(Stored {
                    message, new: true, ..
                })),
            ) => events.push(Some(Event::Message(message.clone()))),
            (Work::Mark(mark), Ok(Done::Marked(Marked { receipt, moved }))) => {
                let member = (receipt.chat_id, mark.member());
                let earlier = receipt_at
                    .get(&member)
                    .and_then(|&at| events[at].take())
                    .is_some();
                if *moved || earlier {
                    receipt_at.insert(member, events.len());
                    events.push(Some(Event::Receipt {
                        chat_id: receipt.chat_id,
                        member: mark.member(),
                        received_seq: receipt.received_seq,
                        read_seq: receipt.read_seq,
                    }));
                }
            }
            _ => {}
        }
    }
    events.into_iter().flatten().collect()
}

/// Whether a batch first looks for `local_id`s that were stored before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeats {
    /// Look (a send retried alone).
    Look,
    /// Skip the lookup, a round trip: a repeat then makes the insert skip its row, and
    /// the batch fails and is retried send by send, which looks. Resends are rare.
    Assume,
}

/// Stores the batch in one transaction, in a fixed number of statements whatever its
/// size: (find repeated `local_id`s,) lock and read the chats, move their seqs, insert
/// the new messages. Returns one outcome per job, or the error that failed the whole
/// transaction (nothing of it is kept).
async fn commit(store: &Store, jobs: &[Job], repeats: Repeats) -> Result<Vec<Result<Done>>, DbErr> {
    let tx = store.write().await?;
    let mut outcomes: Vec<Option<Result<Done>>> = jobs.iter().map(|_| None).collect();

    // 1. Repeats: a local_id already stored answers with its message; one repeated within
    //    the batch answers with the message of its first job (`copy_of`).
    let stored = match repeats {
        Repeats::Look => already_stored(&tx, jobs).await?,
        Repeats::Assume => Vec::new(),
    };
    let mut first_with_key: HashMap<Key<'_>, usize> = HashMap::new();
    let mut copy_of: Vec<Option<usize>> = vec![None; jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        let Some(key) = key(job) else { continue };
        if let Some(m) = stored.iter().find(|m| stored_key(m) == key) {
            outcomes[i] = Some(Ok(Done::Stored(Stored::repeat(m.clone().into()))));
        } else if let Some(&first) = first_with_key.get(&key) {
            copy_of[i] = Some(first);
        } else {
            first_with_key.insert(key, i);
        }
    }

    // 2. The chats, locked (PostgreSQL: FOR UPDATE, in id order so that batches on several
    //    nodes never deadlock; SQLite: the writer lock is already held).
    let mut chat_ids: Vec<i64> = jobs.iter().map(|j| j.chat_id).collect();
    chat_ids.sort_unstable();
    chat_ids.dedup();
    let chat_ids = padded(chat_ids);
    let chats: HashMap<i64, chat::Model> = chat::Entity::find()
        .filter(chat::Column::Id.is_in(chat_ids))
        .order_by_asc(chat::Column::Id)
        .lock_exclusive()
        .all(&*tx)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();

    // 3. Seqs, in job order within each chat; a finished chat refuses all but notices.
    //    A mark is checked against its chat as the jobs before it left it.
    let now = now_ms();
    let mut changed: HashMap<i64, chat::Model> = HashMap::new();
    let mut to_insert: Vec<(usize, i64, bool)> = Vec::new();
    let mut marks: Vec<(usize, i64)> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        if outcomes[i].is_some() || copy_of[i].is_some() {
            continue;
        }
        let Some(mut chat) = changed
            .get(&job.chat_id)
            .or_else(|| chats.get(&job.chat_id))
            .cloned()
        else {
            outcomes[i] = Some(Err(Error::NotFound("chat")));
            continue;
        };
        let a = match &job.work {
            Work::Append(a) => a,
            Work::Mark(_) => {
                marks.push((i, chat.last_seq));
                continue;
            }
        };
        let took = match advance(&mut chat, a, now) {
            Ok(took) => took,
            // A refused send may be the repeat of one stored before the chat finished,
            // which gets its message back: only a lookup can tell.
            Err(_) if repeats == Repeats::Assume && a.local_id.is_some() => {
                return Err(DbErr::Custom("a refused send may be a repeat".into()));
            }
            Err(e) => {
                outcomes[i] = Some(Err(e));
                continue;
            }
        };
        to_insert.push((i, chat.last_seq, took));
        changed.insert(chat.id, chat);
    }
    // Later copies of a local_id whose first job was refused are refused alike.
    for i in 0..jobs.len() {
        if let Some(first) = copy_of[i]
            && let Some(Err(e)) = &outcomes[first]
        {
            outcomes[i] = Some(Err(same_error(e)));
            copy_of[i] = None;
        }
    }
    if !changed.is_empty() {
        let changed = padded(changed.values().collect());
        tx.execute_raw(update_chats(store.backend(), &changed))
            .await?;
    }

    // 4. The new messages, in one insert. A row it skips is a local_id that another node
    //    stored since step 1: the batch gives up, and its sends are retried one by one.
    if !to_insert.is_empty() {
        let mut rows = Vec::with_capacity(to_insert.len());
        for chunk in power_of_two_chunks(&to_insert) {
            rows.extend(
                tx.query_all_raw(insert_messages(store.backend(), jobs, chunk, now))
                    .await?,
            );
        }
        if rows.len() != to_insert.len() {
            return Err(DbErr::Custom(
                "a concurrent send stored the same local_id".into(),
            ));
        }
        let mut ids = HashMap::with_capacity(rows.len());
        for row in rows {
            let chat_id: i64 = row.try_get("", "chat_id")?;
            let seq: i64 = row.try_get("", "seq")?;
            ids.insert((chat_id, seq), row.try_get::<i64>("", "id")?);
        }
        for &(i, seq, took) in &to_insert {
            let job = &jobs[i];
            let id = ids.get(&(job.chat_id, seq)).copied().ok_or_else(|| {
                DbErr::Custom("an inserted message came back without an id".into())
            })?;
            if let Some(a) = job.append() {
                let stored = Stored::new(job.chat_id, a, id, seq, now, took);
                outcomes[i] = Some(Ok(Done::Stored(stored)));
            }
        }
    }

    // 5. The marks, in order, now that the batch's messages are there to be marked.
    for (i, last_seq) in marks {
        let (job, Work::Mark(mark)) = (&jobs[i], &jobs[i].work) else {
            continue;
        };
        outcomes[i] = Some(match mark.check(last_seq) {
            Ok(()) => Ok(Done::Marked(
                mark_in(&tx, store.backend(), job.chat_id, mark, now).await?,
            )),
            Err(e) => Err(e),
        });
    }
    tx.commit().await?;

    for i in 0..jobs.len() {
        if let Some(first) = copy_of[i] {
            outcomes[i] = Some(match &outcomes[first] {
                Some(Ok(Done::Stored(first))) => {
                    Ok(Done::Stored(Stored::repeat(first.message.clone())))
                }
                _ => Err(Error::Internal("a repeated send lost its first".into())),
            });
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Error::Internal("a send got no outcome".into()))))
        .collect())
}

/// Moves a member's cursors inside a transaction of the pool: their receipt row, and the
/// received and read times of the messages they now have. Messages at or below an old
/// cursor were marked when it got there.
async fn mark_in(
    tx: &WriteTx,
    backend: DbBackend,
    chat_id: i64,
    m: &Mark,
    now: i64,
) -> Result<Marked, DbErr> {
    let row = receipt::Entity::find()
        .filter(receipt::Column::ChatId.eq(chat_id))
        .filter(receipt::Column::MemberKind.eq(m.kind))
        .filter(receipt::Column::MemberId.eq(m.member_id))
        .one(&**tx)
        .await?;
    let existed = row.is_some();
    let before = row.map_or_else(|| Receipt::none(chat_id), Receipt::from);
    let after = before.moved_to(m, now);
    for (cursor, old, new) in [
        ("received", before.received_seq, after.received_seq),
        ("read", before.read_seq, after.read_seq),
    ] {
        if new > old {
            let sql = format!(
                "UPDATE messages SET {cursor}_at = ? WHERE chat_id = ? AND seq > ? AND seq <= ? \
                 AND {cursor}_at IS NULL AND {}",
                m.others()
            );
            tx.execute_raw(stmt(
                backend,
                &sql,
                [now.into(), chat_id.into(), old.into(), new.into()],
            ))
            .await?;
        }
    }
    let moved = after.received_seq != before.received_seq || after.read_seq != before.read_seq;
    if moved || !existed {
        tx.execute_raw(stmt(
            backend,
            SAVE_RECEIPT,
            [
                chat_id.into(),
                m.kind.into(),
                m.member_id.into(),
                after.received_seq.into(),
                after.read_seq.into(),
                after.received_at.into(),
                after.read_at.into(),
            ],
        ))
        .await?;
    }
    Ok(Marked {
        receipt: after,
        moved,
    })
}

/// Writes a member's receipt row, new or not.
pub(super) const SAVE_RECEIPT: &str = "INSERT INTO receipts \
     (chat_id, member_kind, member_id, received_seq, read_seq, received_at, read_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (chat_id, member_kind, member_id) DO UPDATE SET \
     received_seq = excluded.received_seq, read_seq = excluded.read_seq, \
     received_at = excluded.received_at, read_at = excluded.read_at";

/// A chat's activity time follows its messages to within this much. Chat lists are
/// ordered by it, so each change moves the chat in three indexes (and on PostgreSQL makes
/// the update of the chat a full one, with a new entry in every index of the table); a
/// busy chat would otherwise do that for every message.
pub(super) const ACTIVITY_STEP_MS: i64 = 1000;

/// The rules of a chat taking a message: the next seq, and a finished chat refuses all but
/// notices; an operator's answer takes a pending chat (true when this one did).
fn advance(chat: &mut chat::Model, a: &Append, now: i64) -> Result<bool> {
    let answer = a.payload != "notice";
    if answer && chat.status == "finished" {
        return Err(Error::Conflict("chat is finished".into()));
    }
    // The first message always counts; later ones move the activity time in steps.
    if chat.last_seq == 0 || now >= chat.last_activity_at + ACTIVITY_STEP_MS {
        chat.last_activity_at = now;
    }
    chat.last_seq += 1;
    let mut took = false;
    if answer && a.kind == "operator" {
        if chat.status == "pending" {
            chat.status = "chatting".into();
            took = true;
        }
        chat.operator_id = chat.operator_id.or(Some(a.author_id));
    }
    Ok(took)
}

/// What makes two sends the same message: chat, author and local_id.
type Key<'a> = (i64, &'a str, i64, &'a str);

fn key(job: &Job) -> Option<Key<'_>> {
    let a = job.append()?;
    Some((job.chat_id, a.kind, a.author_id, a.local_id.as_deref()?))
}

fn stored_key(m: &message::Model) -> Key<'_> {
    (
        m.chat_id,
        m.author_kind.as_str(),
        m.author_id,
        m.local_id.as_deref().unwrap_or_default(),
    )
}

fn same_error(e: &Error) -> Error {
    match e {
        Error::NotFound(what) => Error::NotFound(what),
        Error::Conflict(why) => Error::Conflict(why.clone()),
        other => Error::Internal(other.to_string()),
    }
}

/// The stored messages whose (chat, author, local_id) some job of the batch repeats.
async fn already_stored(tx: &WriteTx, jobs: &[Job]) -> Result<Vec<message::Model>, DbErr> {
    let keys: Vec<Key<'_>> = jobs.iter().filter_map(key).collect();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut any = Condition::any();
    for (chat_id, kind, author_id, local_id) in padded(keys) {
        any = any.add(
            Condition::all()
                .add(message::Column::ChatId.eq(chat_id))
                .add(message::Column::AuthorKind.eq(kind))
                .add(message::Column::AuthorId.eq(author_id))
                .add(message::Column::LocalId.eq(local_id)),
        );
    }
    message::Entity::find().filter(any).all(&**tx).await
}

/// The statements of a batch depend on its size, and every distinct statement is prepared
/// and cached per connection. Lists that may repeat an item are padded to the next power
/// of two (repeating the last item), so that a few statements serve every batch.
fn padded<T: Clone>(mut items: Vec<T>) -> Vec<T> {
    if let Some(last) = items.last().cloned() {
        items.resize(items.len().next_power_of_two(), last);
    }
    items
}

/// Splits a list that may not repeat items into chunks whose sizes are powers of two,
/// largest first (the binary digits of its length): again, few distinct statements.
fn power_of_two_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let size = 1 << items.len().ilog2();
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// `?, ?, ?` for `n` values.
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// One UPDATE setting each changed chat's seq, status, operator and activity time.
fn update_chats(backend: DbBackend, chats: &[&chat::Model]) -> Statement {
    let mut values: Vec<Value> = Vec::new();
    let mut case = |column: &str, value: &dyn Fn(&chat::Model) -> Value| {
        let mut sql = format!("{column} = CASE id");
        for c in chats {
            sql.push_str(" WHEN ? THEN ?");
            values.push(c.id.into());
            values.push(value(c));
        }
        sql.push_str(" END");
        sql
    };
    let seq = case("last_seq", &|c| c.last_seq.into());
    let status = case("status", &|c| c.status.clone().into());
    let operator = case("operator_id", &|c| c.operator_id.into());
    // Each chat's own, as `advance` moved it (or not): the once-a-second step.
    let activity = case("last_activity_at", &|c| c.last_activity_at.into());
    let ids: Vec<i64> = chats.iter().map(|c| c.id).collect();
    let sql = format!(
        "UPDATE chats SET {seq}, {status}, {operator}, {activity} WHERE id IN ({})",
        marks(ids.len())
    );
    values.extend(ids.into_iter().map(Value::from));
    stmt(backend, &sql, values)
}

/// One multi-row INSERT of the new messages, returning their ids.
fn insert_messages(
    backend: DbBackend,
    jobs: &[Job],
    rows: &[(usize, i64, bool)],
    now: i64,
) -> Statement {
    let rows: Vec<(&Job, &Append, i64)> = rows
        .iter()
        .filter_map(|&(i, seq, _)| Some((&jobs[i], jobs[i].append()?, seq)))
        .collect();
    let row = format!("({})", marks(9));
    let sql = format!(
        "INSERT INTO messages \
         (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at) \
         VALUES {} ON CONFLICT DO NOTHING RETURNING id, chat_id, seq",
        vec![row.as_str(); rows.len()].join(", ")
    );
    let mut values: Vec<Value> = Vec::with_capacity(rows.len() * 9);
    for (job, a, seq) in rows {
        values.extend([
            job.chat_id.into(),
            seq.into(),
            a.kind.into(),
            a.author_id.into(),
            a.local_id.clone().into(),
            a.payload.into(),
            a.text.clone().into(),
            a.file_id.clone().into(),
            now.into(),
        ]);
    }
    stmt(backend, &sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(chat_id: i64, kind: &'static str, payload: &'static str, local: Option<&str>) -> Job {
        Job {
            chat_id,
            work: Work::Append(Append {
                kind,
                author_id: 1,
                local_id: local.map(str::to_owned),
                payload,
                text: format!("{kind} {payload}"),
                file_id: None,
            }),
            reply: oneshot::channel().0,
        }
    }

    /// Customer 1 reads up to `read` in the chat.
    fn read_job(chat_id: i64, read: i64) -> Job {
        Job {
            chat_id,
            work: Work::Mark(Mark {
                kind: "customer",
                member_id: 1,
                received: read,
                read,
            }),
            reply: oneshot::channel().0,
        }
    }

    /// The message a job stored, or why not.
    fn stored(out: &Result<Done>) -> Result<&Stored, String> {
        match out {
            Ok(Done::Stored(s)) => Ok(s),
            Ok(Done::Marked(_)) => Err("marked, not stored".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A chat at seq `last_seq` whose activity time is 1000.
    fn chat_at(last_seq: i64) -> chat::Model {
        chat::Model {
            id: 1,
            org_id: 1,
            inbox_id: 1,
            domain_id: 1,
            customer_id: 1,
            operator_id: None,
            status: "chatting".into(),
            last_seq,
            created_at: 1000,
            last_activity_at: 1000,
        }
    }

    #[test]
    fn a_busy_chat_moves_its_activity_time_at_most_once_a_second() {
        let Work::Append(text) = job(1, "customer", "text", None).work else {
            unreachable!("job() builds a send")
        };
        let activity = |last_seq: i64, now: i64| {
            let mut chat = chat_at(last_seq);
            advance(&mut chat, &text, now).expect("accepted");
            (chat.last_seq, chat.last_activity_at)
        };
        assert_eq!(
            activity(0, 1005),
            (1, 1005),
            "the first message counts at once"
        );
        assert_eq!(
            activity(3, 1999),
            (4, 1000),
            "within a second of the last move"
        );
        assert_eq!(activity(3, 2000), (4, 2000), "a second later");
    }

    #[test]
    fn batches_use_few_statement_sizes() {
        let sizes: Vec<usize> = power_of_two_chunks(&[0; 13]).map(<[_]>::len).collect();
        assert_eq!(sizes, [8, 4, 1]);
        assert_eq!(power_of_two_chunks::<u8>(&[]).count(), 0);
        assert_eq!(padded(vec![1, 2, 3]), [1, 2, 3, 3]);
        assert_eq!(padded(vec![7; 4]).len(), 4);
        assert!(padded(Vec::<u8>::new()).is_empty());
    }

    /// A store with one pending chat (1) and one finished chat (2) at seq 5.
    async fn two_chats(name: &str) -> (Store, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "souq-append-{name}-{}-{}.db",
            std::process::id(),
            now_ms()
        ));
        let store = Store::open(&format!("sqlite://{}", path.display()), 2)
            .await
            .expect("store");
        add_two_chats(&store).await;
        (store, path)
    }

    async fn add_two_chats(store: &Store) {
        for sql in [
            "INSERT INTO organisations (id, email, password_hash, subdomain, created_at) VALUES (1, 'o@x.test', '-', 'x', 0)",
            "INSERT INTO addons (id, org_id, name, created_at) VALUES (1, 1, 'live_chat', 0)",
            "INSERT INTO domains (id, org_id, addon_id, name, active, widget_key, created_at, updated_at) VALUES (1, 1, 1, 'x.test', true, 'k', 0, 0)",
            "INSERT INTO inboxes (id, org_id, domain_id, unique_id, name, created_at) VALUES (1, 1, 1, 'main', 'Main', 0)",
            "INSERT INTO customers (id, org_id, name, created_at, updated_at) VALUES (1, 1, 'C', 0, 0)",
            "INSERT INTO operators (id, org_id, email, name, created_at, updated_at) VALUES (1, 1, 'op@x.test', 'Op', 0, 0)",
            "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (1, 1, 1, 1, 1, 'pending', 0, 0, 0)",
            "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (2, 1, 1, 1, 1, 'finished', 5, 0, 0)",
        ] {
            store.db().execute_unprepared(sql).await.expect(sql);
        }
    }

    /// The same on a fresh PostgreSQL database, when TEST_DATABASE_URL names a server
    /// (CI's PostgreSQL pass); `None` otherwise. Returns the store and the database name.
    async fn two_chats_on_postgres(name: &str) -> Option<(Store, String)> {
        let Some(admin_url) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: TEST_DATABASE_URL is not set, so there is no PostgreSQL");
            return None;
        };
        let db = format!(
            "souq_test_append_{name}_{}_{}",
            std::process::id(),
            now_ms()
        );
        let admin = sea_orm::Database::connect(admin_url.as_str())
            .await
            .expect("TEST_DATABASE_URL is set but PostgreSQL cannot be reached");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create database");
        let _ = admin.close().await;
        let (prefix, _) = admin_url.rsplit_once('/').expect("a database name");
        let store = Store::open(&format!("{prefix}/{db}"), 2)
            .await
            .expect("store");
        add_two_chats(&store).await;
        Some((store, db))
    }

    /// A connection of its own to the test's PostgreSQL database `db`, to hold the locks
    /// that a writer meets.
    async fn another_connection(db: &str) -> sea_orm::DatabaseConnection {
        let admin_url = std::env::var("TEST_DATABASE_URL").expect("set, or there is no db");
        let (prefix, _) = admin_url.rsplit_once('/').expect("a database name");
        sea_orm::Database::connect(format!("{prefix}/{db}").as_str())
            .await
            .expect("connect")
    }

    async fn drop_postgres(store: Store, db: String) {
        store.close().await.expect("close");
        if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL")
            && let Ok(admin) = sea_orm::Database::connect(admin_url.as_str()).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .await;
        }
    }

    /// A new message, its repeat, an operator's first answer, a refused send, a notice
    /// into a finished chat, another message and an unknown chat, in this order; then the
    /// customer reads up to the operator's answer, past the end, and in the unknown chat.
    fn mixed_batch() -> [Job; 10] {
        [
            job(1, "customer", "text", Some("x")),
            job(1, "customer", "text", Some("x")),
            job(1, "operator", "text", None),
            job(2, "customer", "text", None),
            job(2, "operator", "notice", None),
            job(1, "customer", "text", None),
            job(99, "customer", "text", None),
            read_job(1, 2),
            read_job(1, 9),
            read_job(99, 1),
        ]
    }

    /// What [`mixed_batch`] must give, then a later repeat of its first local_id, and the
    /// chat and messages left behind.
    async fn check_outcomes(store: &Store, out: &[Result<Done>], again: &[Result<Done>]) {
        let seq = |i: usize| match stored(&out[i]) {
            Ok(s) => (s.message.seq, s.new, s.took_chat),
            Err(e) => panic!("send {i} failed: {e}"),
        };
        assert_eq!(seq(0), (1, true, false));
        assert_eq!(seq(1), (1, false, false), "a repeat within the batch");
        assert_eq!(
            stored(&out[1]).map(|s| s.message.id).ok(),
            stored(&out[0]).map(|s| s.message.id).ok()
        );
        assert_eq!(
            seq(2),
            (2, true, true),
            "the operator's answer takes the chat"
        );
        assert!(matches!(out[3], Err(Error::Conflict(_))), "finished chat");
        assert_eq!(
            seq(4),
            (6, true, false),
            "a notice goes into a finished chat"
        );
        assert_eq!(seq(5), (3, true, false));
        assert!(matches!(out[6], Err(Error::NotFound(_))), "unknown chat");
        match &out[7] {
            Ok(Done::Marked(m)) => assert_eq!(
                (m.receipt.received_seq, m.receipt.read_seq, m.moved),
                (2, 2, true),
                "the customer's cursors moved"
            ),
            other => panic!("the read failed: {other:?}"),
        }
        assert!(matches!(out[8], Err(Error::Invalid(_))), "past the end");
        assert!(matches!(out[9], Err(Error::NotFound(_))), "unknown chat");
        assert_eq!(
            stored(&again[0]).map(|s| (s.message.seq, s.new)).ok(),
            Some((1, false)),
            "a repeat in a later batch"
        );
        let chat = chat::Entity::find_by_id(1)
            .one(store.db())
            .await
            .expect("read")
            .expect("chat");
        assert_eq!(
            (chat.last_seq, chat.status.as_str(), chat.operator_id),
            (3, "chatting", Some(1)),
            "the operator's answer took the chat"
        );
        let messages = message::Entity::find()
            .order_by_asc(message::Column::Id)
            .all(store.db())
            .await
            .expect("read");
        assert_eq!(messages.len(), 4);
        // Only the operator's answer is the customer's to read.
        let read: Vec<(i64, i64, bool)> = messages
            .iter()
            .map(|m| (m.chat_id, m.seq, m.read_at.is_some()))
            .collect();
        assert_eq!(
            read,
            [(1, 1, false), (1, 2, true), (2, 6, false), (1, 3, false)]
        );
        let receipt = receipt::Entity::find()
            .one(store.db())
            .await
            .expect("read")
            .expect("a receipt row");
        assert_eq!((receipt.received_seq, receipt.read_seq), (2, 2));
    }

    async fn remove(store: Store, path: std::path::PathBuf) {
        store.close().await.expect("close");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// The set-based batch (the pool's writer), run here on SQLite.
    #[tokio::test]
    async fn one_batch_gives_each_send_its_own_outcome() {
        let (store, path) = two_chats("pool").await;
        let out = commit(&store, &mixed_batch(), Repeats::Look)
            .await
            .expect("batch commits");
        let again = commit(
            &store,
            &[job(1, "customer", "text", Some("x"))],
            Repeats::Look,
        )
        .await
        .expect("commits");
        check_outcomes(&store, &out, &again).await;
        remove(store, path).await;
    }

    /// Without the lookup, a batch that repeats a stored local_id fails as a whole (and
    /// keeps nothing), so that its sends are retried alone.
    #[tokio::test]
    async fn a_batch_that_assumes_no_repeats_fails_on_one() {
        let (store, path) = two_chats("assume").await;
        commit(
            &store,
            &[job(1, "customer", "text", Some("x"))],
            Repeats::Assume,
        )
        .await
        .expect("first");
        let batch = [
            job(1, "customer", "text", None),
            job(1, "customer", "text", Some("x")),
        ];
        assert!(commit(&store, &batch, Repeats::Assume).await.is_err());
        let chat = chat::Entity::find_by_id(1)
            .one(store.db())
            .await
            .expect("read")
            .expect("chat");
        assert_eq!(chat.last_seq, 1, "the failed batch kept nothing");
        // A refused send with a local_id may be a repeat too: only a lookup can tell.
        let refused = [job(2, "customer", "text", Some("y"))];
        assert!(commit(&store, &refused, Repeats::Assume).await.is_err());
        let out = commit(&store, &batch, Repeats::Look)
            .await
            .expect("commits");
        assert_eq!(
            out.iter()
                .map(|o| stored(o).map(|s| (s.message.seq, s.new)).ok())
                .collect::<Vec<_>>(),
            [Some((2, true)), Some((1, false))]
        );
        remove(store, path).await;
    }

    /// A chat whose activity time moved less than a second ago keeps it when the next
    /// message comes, whichever writer stores it: the pool's, the SQLite writer thread's
    /// and PostgreSQL's.
    #[tokio::test]
    async fn every_writer_moves_a_chats_activity_time_at_most_once_a_second() {
        let recent = |store: &Store| {
            let db = store.db().clone();
            async move {
                let now = now_ms();
                db.execute_unprepared(&format!(
                    "UPDATE chats SET last_seq = 3, status = 'chatting', last_activity_at = {} WHERE id = 1",
                    now - 100
                ))
                .await
                .expect("set the activity time");
                now - 100
            }
        };
        let activity = |store: &Store| {
            let db = store.db().clone();
            async move {
                chat::Entity::find_by_id(1)
                    .one(&db)
                    .await
                    .expect("read")
                    .expect("chat")
                    .last_activity_at
            }
        };
        let (store, path) = two_chats("activity_pool").await;
        let was = recent(&store).await;
        commit(&store, &[job(1, "customer", "text", None)], Repeats::Look)
            .await
            .expect("commits");
        assert_eq!(activity(&store).await, was, "the pool's writer moved it");
        remove(store, path).await;

        let (store, path) = two_chats("activity_thread").await;
        let was = recent(&store).await;
        let mut writer = thread_writer(&store);
        writer
            .commit(&[job(1, "customer", "text", None)])
            .expect("commits");
        drop(writer);
        assert_eq!(activity(&store).await, was, "the thread's writer moved it");
        remove(store, path).await;

        if let Some((store, db)) = two_chats_on_postgres("activity").await {
            let was = recent(&store).await;
            let mut writer = postgres::Writer::new(store.clone()).expect("a postgres store");
            let out = writer.commit(&[job(1, "customer", "text", None)]).await;
            assert!(stored(&out[0]).is_ok(), "{:?}", out[0]);
            assert_eq!(activity(&store).await, was, "PostgreSQL's writer moved it");
            drop(writer);
            drop_postgres(store, db).await;
        }
    }

    /// A writer like the SQLite writer thread's, on a connection of its own.
    fn thread_writer(store: &Store) -> sqlite::Writer {
        let (file, _) = store.sqlite_writer().expect("a sqlite file");
        sqlite::Writer::new(sqlite::open(&file).expect("connection"))
    }

    /// The same batch through the SQLite writer thread's own connection.
    #[tokio::test]
    async fn the_sqlite_writer_gives_the_same_outcomes() {
        let (store, path) = two_chats("thread").await;
        let mut writer = thread_writer(&store);
        let out = writer.commit(&mixed_batch()).expect("batch commits");
        let again = writer
            .commit(&[job(1, "customer", "text", Some("x"))])
            .expect("commits");
        drop(writer);
        check_outcomes(&store, &out, &again).await;
        remove(store, path).await;
    }

    /// The same batch through PostgreSQL's one-statement writer.
    #[tokio::test]
    async fn the_postgres_writer_gives_the_same_outcomes() {
        let Some((store, db)) = two_chats_on_postgres("outcomes").await else {
            return;
        };
        let mut writer = postgres::Writer::new(store.clone()).expect("a postgres store");
        let out = writer.commit(&mixed_batch()).await;
        let again = writer
            .commit(&[job(1, "customer", "text", Some("x"))])
            .await;
        check_outcomes(&store, &out, &again).await;
        drop_postgres(store, db).await;
    }

    /// Three messages into chat 1 with the customer reading along: up to the operator's
    /// answer, up to the last message, back to the first (a cursor never moves back), and
    /// past the end.
    fn reads_batch() -> Vec<Job> {
        vec![
            job(1, "customer", "text", None),
            job(1, "operator", "text", None),
            read_job(1, 2),
            job(1, "operator", "text", None),
            read_job(1, 3),
            read_job(1, 1),
            read_job(1, 9),
        ]
    }

    /// What [`reads_batch`] must announce and leave behind: the messages, then one receipt
    /// with the customer's furthest cursors, after the last message it marks.
    async fn check_reads(store: &Store, out: Vec<Result<Done>>) {
        assert!(matches!(out[6], Err(Error::Invalid(_))), "past the end");
        let done: Vec<(Job, Result<Done>)> = reads_batch().into_iter().zip(out).collect();
        let said: Vec<String> = announcements(&done)
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
            .collect();
        assert_eq!(
            said,
            [
                "message 1",
                "message 2",
                "message 3",
                "receipt Customer(1) 3 3"
            ]
        );
        let receipt = receipt::Entity::find()
            .one(store.db())
            .await
            .expect("read")
            .expect("a receipt row");
        assert_eq!((receipt.received_seq, receipt.read_seq), (3, 3));
        let read: Vec<(i64, bool)> = message::Entity::find()
            .order_by_asc(message::Column::Seq)
            .all(store.db())
            .await
            .expect("read")
            .iter()
            .map(|m| (m.seq, m.read_at.is_some()))
            .collect();
        assert_eq!(
            read,
            [(1, false), (2, true), (3, true)],
            "the operator's are read"
        );
    }

    #[tokio::test]
    async fn a_members_marks_in_one_batch_give_one_receipt_after_what_they_mark() {
        let (store, path) = two_chats("reads").await;
        let out = commit(&store, &reads_batch(), Repeats::Assume)
            .await
            .expect("batch commits");
        check_reads(&store, out).await;
        remove(store, path).await;
    }

    #[tokio::test]
    async fn a_members_marks_in_one_batch_give_one_receipt_on_the_sqlite_writer() {
        let (store, path) = two_chats("reads_thread").await;
        let mut writer = thread_writer(&store);
        let out = writer.commit(&reads_batch()).expect("batch commits");
        drop(writer);
        check_reads(&store, out).await;
        remove(store, path).await;
    }

    /// A read of a seq that only a later send of the batch stores is refused, on the pool
    /// and on the SQLite writer, which store marks after the batch's messages.
    /// (PostgreSQL's writer checks marks against the chat as its round leaves it.)
    #[tokio::test]
    async fn a_mark_is_checked_where_it_stands_in_its_batch() {
        let batch = || {
            vec![
                job(1, "operator", "text", None),
                read_job(1, 2),
                job(1, "operator", "text", None),
            ]
        };
        let (store, path) = two_chats("mark_place_pool").await;
        let on_pool = commit(&store, &batch(), Repeats::Assume)
            .await
            .expect("batch commits");
        remove(store, path).await;
        let (store, path) = two_chats("mark_place_thread").await;
        let mut writer = thread_writer(&store);
        let on_thread = writer.commit(&batch()).expect("batch commits");
        drop(writer);
        remove(store, path).await;
        for out in [on_pool, on_thread] {
            assert!(matches!(out[1], Err(Error::Invalid(_))), "{:?}", out[1]);
            let seq = |i: usize| stored(&out[i]).map(|s| s.message.seq);
            assert_eq!((seq(0), seq(2)), (Ok(1), Ok(2)));
        }
    }

    #[tokio::test]
    async fn a_members_marks_in_one_batch_give_one_receipt_on_the_postgres_writer() {
        let Some((store, db)) = two_chats_on_postgres("reads").await else {
            return;
        };
        let mut writer = postgres::Writer::new(store.clone()).expect("a postgres store");
        let out = writer.commit(&reads_batch()).await;
        drop(writer);
        check_reads(&store, out).await;
        drop_postgres(store, db).await;
    }

    /// The page of the table each message of chat 1 is on, by seq.
    async fn pages_on_postgres(store: &Store) -> Vec<(i64, i64)> {
        let rows = store
            .db()
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT seq, (ctid::text::point)[0]::int8 AS page FROM messages \
                 WHERE chat_id = 1 ORDER BY seq",
            ))
            .await
            .expect("read");
        rows.iter()
            .map(|r| {
                let get = |column| r.try_get::<i64>("", column).expect("a number");
                (get("seq"), get("page"))
            })
            .collect()
    }

    /// Marking messages read rewrites their rows. Inserts leave half of each page free
    /// (migration 5), so the new versions stay on their pages (HOT updates, which add no
    /// index entries) rather than move to new ones: 356 of these 400 did, and none with
    /// pages packed full. (One statement marks them all, so a page cannot reuse the room
    /// of its own old versions, and the last few of each move.)
    #[tokio::test]
    async fn messages_marked_read_stay_on_their_pages_on_postgres() {
        use sea_orm::PaginatorTrait;
        let Some((store, db)) = two_chats_on_postgres("pages").await else {
            return;
        };
        let mut writer = postgres::Writer::new(store.clone()).expect("a postgres store");
        for _ in 0..4 {
            let sends: Vec<Job> = (0..100).map(|_| job(1, "operator", "text", None)).collect();
            assert!(
                writer
                    .commit(&sends)
                    .await
                    .iter()
                    .all(|o| stored(o).is_ok())
            );
        }
        let before = pages_on_postgres(&store).await;
        let pages: std::collections::HashSet<i64> = before.iter().map(|&(_, page)| page).collect();
        assert!(pages.len() >= 5, "400 messages on {} pages", pages.len());
        let out = writer.commit(&[read_job(1, 400)]).await;
        assert!(matches!(out[0], Ok(Done::Marked(_))), "{:?}", out[0]);
        drop(writer);
        let read = message::Entity::find()
            .filter(message::Column::ReadAt.is_not_null())
            .count(store.db())
            .await
            .expect("read");
        assert_eq!(read, 400, "every message is marked read, and so rewritten");
        let after = pages_on_postgres(&store).await;
        let stayed = before.iter().zip(&after).filter(|(b, a)| b == a).count();
        assert!(
            stayed >= 300,
            "{stayed} of 400 marked messages stayed on their page"
        );
        drop_postgres(store, db).await;
    }

    /// Two text sends into chat 1 (pending, seq 0).
    fn two_sends() -> Vec<Job> {
        vec![
            job(1, "customer", "text", None),
            job(1, "customer", "text", None),
        ]
    }

    fn seqs(out: &[Result<Done>]) -> Vec<i64> {
        out.iter()
            .map(|o| stored(o).map(|s| s.message.seq).expect("stored"))
            .collect()
    }

    const FINISH: &str = "UPDATE chats SET status = 'finished' WHERE id = 1";

    /// Two SQLite writers that both remember chat 1 take turns on it, then the chat is
    /// finished behind their backs: each must read it again, so that seqs have no gaps
    /// and no repeats, and the finished chat refuses.
    #[tokio::test]
    async fn sqlite_writers_read_again_a_chat_changed_behind_their_back() {
        let (store, path) = two_chats("stale").await;
        let (file, _) = store.sqlite_writer().expect("a sqlite file");
        let mut writers = [
            sqlite::Writer::new(sqlite::open(&file).expect("connection")),
            sqlite::Writer::new(sqlite::open(&file).expect("connection")),
        ];
        let mut all = Vec::new();
        for turn in 0..6 {
            let out = writers[turn % 2].commit(&two_sends()).expect("commits");
            all.extend(seqs(&out));
        }
        assert_eq!(all, (1..=12).collect::<Vec<_>>(), "no gap, no repeat");
        store.db().execute_unprepared(FINISH).await.expect("finish");
        for writer in &mut writers {
            let out = writer.commit(&two_sends()).expect("commits");
            assert!(matches!(out[0], Err(Error::Conflict(_))), "{:?}", out[0]);
        }
        drop(writers);
        remove(store, path).await;
    }

    /// The same with two PostgreSQL writers (two nodes).
    #[tokio::test]
    async fn postgres_writers_read_again_a_chat_changed_behind_their_back() {
        // Batches of two messages and of one: a batch of one has a statement of its own.
        for sends in [2, 1] {
            let Some((store, db)) = two_chats_on_postgres(&format!("stale{sends}")).await else {
                return;
            };
            let batch = || two_sends().into_iter().take(sends).collect::<Vec<_>>();
            let mut writers = [
                postgres::Writer::new(store.clone()).expect("a postgres store"),
                postgres::Writer::new(store.clone()).expect("a postgres store"),
            ];
            let mut all = Vec::new();
            for turn in 0..6 {
                let out = writers[turn % 2].commit(&batch()).await;
                all.extend(seqs(&out));
            }
            let want: Vec<i64> = (1..=6 * sends as i64).collect();
            assert_eq!(all, want, "no gap, no repeat in batches of {sends}");
            store.db().execute_unprepared(FINISH).await.expect("finish");
            for writer in &mut writers {
                let out = writer.commit(&batch()).await;
                assert!(matches!(out[0], Err(Error::Conflict(_))), "{:?}", out[0]);
            }
            drop(writers);
            drop_postgres(store, db).await;
        }
    }

    /// A socket's read, held back to commit with others (its writer has nothing queued),
    /// is stored once the hold is over, though nothing else comes.
    async fn a_held_mark_is_stored_when_its_hold_is_over(store: Store) {
        let appender = appender(&store);
        let stored = appender
            .enqueue(1, send("operator"))
            .await
            .expect("queued")
            .await;
        assert_eq!(stored.expect("stored").message.seq, 1);
        let mark = Mark {
            kind: "customer",
            member_id: 1,
            received: 1,
            read: 1,
        };
        let marked = appender.mark(1, mark, true).await.expect("queued");
        let marked = tokio::time::timeout(Duration::from_secs(10), marked)
            .await
            .expect("a held mark is released")
            .expect("the read of seq 1 is valid");
        assert_eq!((marked.receipt.read_seq, marked.moved), (1, true));
    }

    #[tokio::test]
    async fn a_held_mark_is_stored_when_its_hold_is_over_on_sqlite() {
        let (store, path) = two_chats("held").await;
        a_held_mark_is_stored_when_its_hold_is_over(store.clone()).await;
        remove(store, path).await;
    }

    #[tokio::test]
    async fn a_held_mark_is_stored_when_its_hold_is_over_on_postgres() {
        let Some((store, db)) = two_chats_on_postgres("held").await else {
            return;
        };
        a_held_mark_is_stored_when_its_hold_is_over(store.clone()).await;
        drop_postgres(store, db).await;
    }

    /// A batch takes, in order, the waiting jobs of chats that no other batch in flight
    /// holds; a chat with a job left behind keeps its later jobs behind too, past the
    /// batch's size as well, so that every chat's jobs are stored in the order they came.
    #[test]
    fn a_batch_takes_the_chats_not_in_flight_and_keeps_each_chats_order() {
        use std::collections::{HashSet, VecDeque};
        let chats = |jobs: &mut dyn Iterator<Item = &Job>| -> Vec<i64> {
            jobs.map(|job| job.chat_id).collect()
        };
        let mut waiting: VecDeque<Job> = [
            job(1, "customer", "text", None),
            job(2, "customer", "text", None),
            read_job(3, 1),
            job(1, "customer", "text", None),
            job(3, "customer", "text", None),
        ]
        .into();
        let mut batch = postgres::Batch::default();
        batch.take(&mut waiting, &HashSet::from([2]));
        assert_eq!(chats(&mut batch.jobs.iter()), [1, 3, 1, 3], "taken");
        assert_eq!(chats(&mut waiting.iter()), [2], "left for later");
        assert!(batch.jobs[1].append().is_none(), "the read kept its place");

        let mut waiting: VecDeque<Job> = (0..MAX_BATCH)
            .map(|_| job(1, "customer", "text", None))
            .chain([
                job(2, "customer", "text", None),
                read_job(2, 1),
                read_job(3, 1),
            ])
            .collect();
        let mut batch = postgres::Batch::default();
        batch.take(&mut waiting, &HashSet::new());
        assert_eq!(
            batch.jobs.len(),
            MAX_BATCH + 1,
            "a full batch of sends, and a read"
        );
        assert_eq!(batch.jobs.last().map(|job| job.chat_id), Some(3));
        assert_eq!(
            chats(&mut waiting.iter()),
            [2, 2],
            "the send past the size, and its chat's read"
        );
    }

    /// When a free PostgreSQL writer takes a batch: at low load only while nothing is in
    /// flight (so that what comes during a commit goes in the next one) or what is in
    /// flight has been for a while; under load, always, its share of the chats.
    #[test]
    fn a_postgres_writer_takes_alone_at_low_load_and_its_share_under_load() {
        use postgres::{SPILL, STUCK, Take};
        let soon = STUCK / 4;
        let cases = [
            ((0, 0, soon), Take::Nothing, "nothing waits"),
            ((1, 0, soon), Take::All, "nothing in flight"),
            (
                (SPILL - 1, 1, soon),
                Take::Nothing,
                "a batch in flight, just sent",
            ),
            (
                (SPILL - 1, 2, STUCK),
                Take::All,
                "the batches in flight are slow",
            ),
            ((SPILL, 1, soon), Take::Shares, "enough wait"),
            (
                (SPILL, 0, soon),
                Take::Shares,
                "enough wait, nothing in flight",
            ),
        ];
        for ((waiting, in_flight, newest), want, why) in cases {
            assert_eq!(Take::now(waiting, in_flight, newest), want, "{why}");
        }
    }

    /// A batch stuck on a row that another connection holds does not hold up a send to
    /// another chat for long: a free writer takes it beside the stuck one.
    #[tokio::test]
    async fn a_stuck_batch_holds_up_no_other_chat_on_postgres() {
        use futures_util::FutureExt;
        use sea_orm::TransactionTrait;
        let Some((store, db)) = two_chats_on_postgres("stuck").await else {
            return;
        };
        // Chat 4, of another customer; the stuck batch goes to the first writer, whose
        // share chat 4 is in.
        for sql in [
            "INSERT INTO customers (id, org_id, name, created_at, updated_at) VALUES (2, 1, 'D', 0, 0)",
            "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (4, 1, 1, 1, 2, 'pending', 0, 0, 0)",
        ] {
            store.db().execute_unprepared(sql).await.expect(sql);
        }
        let other = another_connection(&db).await;
        let chat_row = other.begin().await.expect("begin");
        chat_row
            .execute_unprepared("SELECT id FROM chats WHERE id = 1 FOR UPDATE")
            .await
            .expect("lock chat 1");
        let appender = appender(&store);
        let mut stuck = Box::pin(appender.enqueue(1, send("operator")).await.expect("queued"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answers = [
            appender.enqueue(4, send("operator")).await.expect("queued"),
            appender.enqueue(4, send("customer")).await.expect("queued"),
        ];
        let seqs = tokio::time::timeout(Duration::from_secs(10), async {
            let mut seqs = Vec::new();
            for answer in answers {
                seqs.push(answer.await.expect("stored").message.seq);
            }
            seqs
        })
        .await
        .expect("stored beside the stuck batch");
        assert_eq!(seqs, [1, 2]);
        assert!(
            (&mut stuck).now_or_never().is_none(),
            "the first batch still waits for chat 1's row"
        );
        chat_row.commit().await.expect("unlock chat 1");
        let stored = tokio::time::timeout(Duration::from_secs(10), stuck)
            .await
            .expect("stored once the row is free")
            .expect("stored");
        assert_eq!(stored.message.seq, 1);
        let _ = other.close().await;
        drop(appender);
        drop_postgres(store, db).await;
    }

    /// The messages of a batch are answered once their statement commits, before the
    /// batch's marks are stored: here the marks' statement waits on a lock that another
    /// connection holds on `receipts`, and the send beside them is answered all the same.
    #[tokio::test]
    async fn a_send_is_answered_before_the_marks_of_its_batch_on_postgres() {
        use futures_util::FutureExt;
        use sea_orm::TransactionTrait;
        let Some((store, db)) = two_chats_on_postgres("marks_after").await else {
            return;
        };
        let other = another_connection(&db).await;
        let (chat_row, receipts) = (
            other.begin().await.expect("begin"),
            other.begin().await.expect("begin"),
        );
        // The writer's first batch waits on chat 1's row, so that the next send and mark
        // queue behind it and make one batch.
        chat_row
            .execute_unprepared("SELECT id FROM chats WHERE id = 1 FOR UPDATE")
            .await
            .expect("lock chat 1");
        receipts
            .execute_unprepared("LOCK TABLE receipts IN SHARE MODE")
            .await
            .expect("lock receipts");
        let appender = appender(&store);
        let first = appender.enqueue(1, send("operator")).await.expect("queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = appender.enqueue(1, send("operator")).await.expect("queued");
        let read = Mark {
            kind: "customer",
            member_id: 1,
            received: 1,
            read: 1,
        };
        let mut marked = Box::pin(appender.mark(1, read, false).await.expect("queued"));
        chat_row.commit().await.expect("unlock chat 1");
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            (first.await, second.await)
        })
        .await
        .expect("the sends are answered while their batch's mark waits");
        let seqs = (
            answered.0.expect("stored").message.seq,
            answered.1.expect("stored").message.seq,
        );
        assert_eq!(seqs, (1, 2));
        assert!(
            (&mut marked).now_or_never().is_none(),
            "the mark waits for the lock on receipts"
        );
        receipts.commit().await.expect("unlock receipts");
        let marked = tokio::time::timeout(Duration::from_secs(10), marked)
            .await
            .expect("the mark is stored once the lock is gone")
            .expect("the read of seq 1 is valid");
        assert_eq!((marked.receipt.read_seq, marked.moved), (1, true));
        let _ = other.close().await;
        drop(appender);
        drop_postgres(store, db).await;
    }

    /// Announcements that go nowhere.
    #[derive(Debug)]
    struct Silent;

    impl Live for Silent {
        fn announce(&self, _: &[Event]) {}

        fn is_connected(
            &self,
            _: Person,
        ) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
            Box::pin(std::future::ready(false))
        }
    }

    /// An appender on `store` whose announcements go nowhere.
    fn appender(store: &Store) -> Appender {
        Appender::start(
            store.clone(),
            Arc::new(Silent),
            crate::clock::Clock::system(),
        )
    }

    fn send(kind: &'static str) -> Append {
        let Work::Append(send) = job(1, kind, "text", None).work else {
            unreachable!("job makes a send")
        };
        send
    }

    /// With nothing queued and nobody writing, a send is committed on its caller's thread:
    /// its answer is there before the caller waits.
    #[tokio::test]
    async fn a_send_that_finds_the_sqlite_writer_idle_is_committed_before_its_caller_waits() {
        use futures_util::FutureExt;
        let (store, path) = two_chats("inline").await;
        let appender = appender(&store);
        for seq in 1..=3 {
            let answer = appender.enqueue(1, send("operator")).await.expect("queued");
            let stored = answer.now_or_never().expect("answered at once");
            assert_eq!(stored.expect("stored").message.seq, seq);
        }
        drop(appender);
        remove(store, path).await;
    }

    /// A send that finds the file taken by another write goes to the writer thread; one
    /// sent after it, once the file is free, still comes after it, though the writer is
    /// idle by then.
    #[tokio::test]
    async fn a_send_queued_behind_another_write_keeps_its_place() {
        let (store, path) = two_chats("queued").await;
        let appender = appender(&store);
        let (_, file) = store.sqlite_writer().expect("a SQLite file");
        let held = file.lock().await;
        let first = appender.enqueue(1, send("operator")).await.expect("queued");
        let mut first = std::pin::pin!(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut first)
                .await
                .is_err(),
            "a send commits while another write holds the file"
        );
        drop(held);
        let second = appender.enqueue(1, send("customer")).await.expect("queued");
        let (first, second) = (first.await.expect("stored"), second.await.expect("stored"));
        assert_eq!((first.message.seq, second.message.seq), (1, 2));
        assert_eq!(second.message.text, "customer text");
        drop(appender);
        remove(store, path).await;
    }

    /// A send the writer thread has taken but not yet committed still counts as queued:
    /// until it is stored, no later send commits on its caller's thread.
    #[tokio::test]
    async fn a_send_the_writer_thread_holds_keeps_later_sends_queued() {
        use futures_util::FutureExt;
        let (store, path) = two_chats("taken").await;
        let appender = appender(&store);
        let lane = &appender.intake.lane;
        let shared = lane.now.clone().expect("the SQLite writer");
        let (_, file) = store.sqlite_writer().expect("a SQLite file");
        let held = file.lock().await;
        let first = appender.enqueue(1, send("operator")).await.expect("queued");
        // The writer thread takes it from the queue, then waits for the file.
        for _ in 0..1000 {
            if lane.jobs.capacity() == lane.jobs.max_capacity() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(lane.jobs.capacity(), lane.jobs.max_capacity(), "taken");
        assert_eq!(shared.queued.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(shared.idle_writer().is_none(), "a send holds the writer");
        let second = appender.enqueue(1, send("customer")).await.expect("queued");
        assert_eq!(shared.queued.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(held);
        let (first, second) = (first.await.expect("stored"), second.await.expect("stored"));
        assert_eq!((first.message.seq, second.message.seq), (1, 2));
        for _ in 0..1000 {
            if shared.idle_writer().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let third = appender.enqueue(1, send("operator")).await.expect("queued");
        let third = third.now_or_never().expect("the writer is idle again");
        assert_eq!(third.expect("stored").message.seq, 3);
        drop(appender);
        remove(store, path).await;
    }

    /// Under load a send goes to the writer thread even when it finds the writer idle:
    /// alone, it would write four or five pages where the thread's batch writes one.
    #[tokio::test]
    async fn a_send_commits_on_its_callers_thread_only_while_the_writers_batches_are_small() {
        use futures_util::FutureExt;
        let (store, path) = two_chats("busy").await;
        let appender = appender(&store);
        let shared = appender.intake.lane.now.clone().expect("the SQLite writer");
        let first = appender.enqueue(1, send("operator")).await.expect("queued");
        let first = first.now_or_never().expect("committed at once while quiet");
        assert_eq!(first.expect("stored").message.seq, 1);
        // Recorded here as the writer thread would: it is idle, and records nothing.
        for _ in 0..40 {
            shared.load.record(300);
        }
        assert!(shared.idle_writer().is_none(), "the writer is busy");
        let second = appender.enqueue(1, send("customer")).await.expect("queued");
        assert_eq!(second.await.expect("stored").message.seq, 2);
        // The thread's own batches since, of one send each, bring the average down.
        let mut seq = 3;
        while shared.load.per_batch() >= sqlite::INLINE_UNDER {
            assert!(seq < 100, "still busy after {seq} sends one at a time");
            let next = appender.enqueue(1, send("operator")).await.expect("queued");
            assert_eq!(next.await.expect("stored").message.seq, seq);
            seq += 1;
        }
        assert!(seq > 3, "quiet again without a batch of the thread's");
        // The thread lets go of the writer just after it answers.
        for _ in 0..1000 {
            if shared.idle_writer().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let last = appender.enqueue(1, send("customer")).await.expect("queued");
        let last = last
            .now_or_never()
            .expect("committed at once once quiet again");
        assert_eq!(last.expect("stored").message.seq, seq);
        drop(appender);
        remove(store, path).await;
    }

    /// The checkpoint thread starts the WAL over while sends keep coming, so the WAL does
    /// not grow with the chats' history. (Nothing else checkpoints here: the writer never
    /// does, and the pool writes nothing during the test.)
    #[tokio::test]
    async fn the_wal_starts_over_while_sends_keep_coming() {
        let (store, path) = two_chats("restart").await;
        let appender = appender(&store);
        // The WAL header's checkpoint sequence number, which each restart moves on.
        let wal = format!("{}-wal", path.display());
        let restarts = || {
            let header = std::fs::read(&wal).expect("the WAL");
            let sequence = header.get(12..16).expect("a WAL header");
            u32::from_be_bytes(sequence.try_into().expect("four bytes"))
        };
        let answer = appender.enqueue(1, send("operator")).await.expect("queued");
        answer.await.expect("stored");
        let first = restarts();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while restarts() == first {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL never started over"
            );
            let answer = appender.enqueue(1, send("operator")).await.expect("queued");
            answer.await.expect("stored");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(appender);
        remove(store, path).await;
    }

    /// Another process holding the file (here another connection, as the command line
    /// would) does not hold up the caller's thread: the send waits in the writer thread,
    /// and is stored once the file is free.
    #[tokio::test]
    async fn a_send_that_finds_the_file_locked_elsewhere_waits_in_the_writer_thread() {
        let (store, path) = two_chats("elsewhere").await;
        let appender = appender(&store);
        let other = rusqlite::Connection::open(&path).expect("another connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("the file taken");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            other.execute_batch("ROLLBACK").expect("the file free");
        });
        let answer = appender.enqueue(1, send("operator")).await.expect("queued");
        assert!(
            !release.is_finished(),
            "the caller waited for the other process"
        );
        let stored = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("stored once the file is free");
        assert_eq!(stored.expect("stored").message.seq, 1);
        release.join().expect("released");
        drop(appender);
        remove(store, path).await;
    }
}
