//! The message path: every send and mark of the process is queued here, stored in batches
//! (group commit), announced, and only then answered.
//!
//! - [`plan`]: the rules of a batch, with no I/O (who may send, seq allocation, `local_id`
//!   repeats, receipt folding, activity time); `batch`: the rounds around them, and what a
//!   batch announces.
//! - `sqlite`, `postgres`: one journal per backend, which carries a plan out in its
//!   statements, and one driver per backend, which takes batches from the queue and runs
//!   them through its journal: on SQLite a thread with its own connection (or the
//!   caller's thread, when the writer is idle); on PostgreSQL several writers with one
//!   batch in flight at low load and side by side under load.
//! - [`tuning`]: every number the path is tuned by, with its reason.
//!
//! A send that fails on its own (a finished chat) fails alone inside its batch. If the
//! batch fails as a whole (a database error), each of its jobs is tried again in a batch of
//! its own, so that one bad job never takes the others down with it.

mod batch;
pub(crate) mod plan;
mod postgres;
mod sqlite;
pub(crate) mod tuning;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::Either;
use tokio::sync::{Notify, mpsc, oneshot};

pub(crate) use self::plan::{Done, Draft, Job, Mark, Marked, Payload, Sent, Work};
use self::tuning::Tuning;
use super::{Error, Live, Result};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::Store;

/// A job and where its outcome goes.
#[derive(Debug)]
struct Queued {
    job: Job,
    reply: oneshot::Sender<Result<Done>>,
}

/// The jobs of a batch, and where each outcome goes.
fn split(queued: Vec<Queued>) -> (Vec<Job>, Vec<oneshot::Sender<Result<Done>>>) {
    queued.into_iter().map(|q| (q.job, q.reply)).unzip()
}

/// Announces what a stored batch did, in order, then answers each caller; the sockets the
/// batch reaches are woken once all that is done (see [`crate::wake`]).
fn answer(
    cx: &Context,
    jobs: &[Job],
    replies: Vec<oneshot::Sender<Result<Done>>>,
    outcomes: Vec<Result<Done>>,
) {
    cx.count(jobs, &outcomes);
    crate::wake::holding_wakes(|| {
        // Events before answers: a sender's device gets its message, then the ack.
        cx.live.announce(&batch::events(jobs, &outcomes));
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away still had its job done, as with any lost answer.
            let _ = reply.send(outcome);
        }
    });
}

/// A batch whose journal failed in the middle of its rounds: the error, and the outcomes
/// of the rounds committed before it (`None` for the jobs still to store).
#[derive(Debug)]
pub(crate) struct Partial<E> {
    pub error: E,
    pub decided: Vec<Option<Result<Done>>>,
}

/// Answers the jobs of a batch that failed part way whose outcomes were decided (their
/// rounds committed), in order; returns the others, to be stored one by one.
fn answer_decided(
    cx: &Context,
    jobs: Vec<Job>,
    replies: Vec<oneshot::Sender<Result<Done>>>,
    decided: Vec<Option<Result<Done>>>,
) -> Vec<(Job, oneshot::Sender<Result<Done>>)> {
    let (mut done, mut rest) = ((Vec::new(), Vec::new(), Vec::new()), Vec::new());
    for ((job, reply), outcome) in jobs.into_iter().zip(replies).zip(decided) {
        match outcome {
            Some(outcome) => {
                done.0.push(job);
                done.1.push(reply);
                done.2.push(outcome);
            }
            None => rest.push((job, reply)),
        }
    }
    if !done.0.is_empty() {
        answer(cx, &done.0, done.1, done.2);
    }
    rest
}

/// What a driver needs besides its journal: where to announce, the time, the knobs.
#[derive(Debug, Clone)]
struct Context {
    live: Arc<dyn Live>,
    clock: Clock,
    tuning: Arc<Tuning>,
    metrics: Arc<Metrics>,
}

impl Context {
    /// Counts the answers of a batch's sends: messages stored, acks, refusals by code
    /// (one count of each a batch, not one a send: the counters are shared by threads).
    fn count(&self, jobs: &[Job], outcomes: &[Result<Done>]) {
        let (mut stored, mut acked) = (0, 0);
        let mut refused: Vec<(&'static str, u64)> = Vec::new();
        for (job, outcome) in jobs.iter().zip(outcomes) {
            if job.send().is_none() {
                continue;
            }
            match outcome {
                Ok(Done::Sent(sent)) => {
                    acked += 1;
                    stored += u64::from(sent.new);
                }
                Ok(Done::Marked(_)) => {}
                Err(e) => match refused.iter_mut().find(|(c, _)| *c == e.code()) {
                    Some((_, n)) => *n += 1,
                    None => refused.push((e.code(), 1)),
                },
            }
        }
        self.metrics.sends.inc_by(stored);
        self.metrics.acks.inc_by(acked);
        for (code, n) in refused {
            self.metrics.refused(code, n);
        }
    }

    /// Counts a batch the driver took at `started`: its size and time, or its failure.
    fn counted(&self, jobs: usize, started: std::time::Instant, failed: bool) {
        if failed {
            self.metrics.batch_failures.inc();
        } else {
            self.metrics.batch_jobs.observe(jobs as f64);
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

/// The handle of the writer; its driver ends when the handle is dropped.
#[derive(Debug)]
pub(super) struct Writer {
    intake: Arc<Intake>,
    /// [`Tuning::answer_within`].
    within: Duration,
    metrics: Arc<Metrics>,
}

/// The writers' queue, and the marks held back from it.
///
/// A socket's marks (`received`, `read`) are not urgent the way messages are: nobody
/// waits on them but the receipt ticks, and they answer only when they fail. At low load
/// each would be a commit of its own between the messages, so a mark that finds nothing
/// queued is held up to [`Tuning::mark_delay`] and then goes, with the others held, to a
/// queue of their own, which the writers take after the messages: many marks in one
/// statement (and several marks of one member as one move). A held mark never holds up a
/// message. Marks only move cursors forward, so a mark committed after messages sent
/// later is the same mark. Under load, marks queue with the messages: the SQLite writer
/// commits them together, and PostgreSQL's stores them in a statement of their own right
/// after, once the messages are answered.
#[derive(Debug)]
struct Intake {
    /// Every job goes this way, in order; the drivers keep each chat's order.
    lane: Lane,
    held: Mutex<Vec<Queued>>,
    /// Tells the releasing task that marks are held.
    holding: Arc<Notify>,
}

/// What goes to the driver: jobs in order, and released marks.
#[derive(Debug)]
struct Lane {
    jobs: mpsc::Sender<Queued>,
    marks: mpsc::Sender<Queued>,
    /// The SQLite writer, which commits a job at once when it is idle.
    now: Option<Arc<sqlite::Shared>>,
    /// Jobs (and released marks) the PostgreSQL driver has taken from the queues but not
    /// yet into a batch.
    backlog: Arc<AtomicUsize>,
}

impl Intake {
    fn take_held(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The driver's end of the lane.
#[derive(Debug)]
struct Queues {
    jobs: mpsc::Receiver<Queued>,
    marks: mpsc::Receiver<Queued>,
    marks_open: bool,
    released: Vec<Queued>,
    max_batch: usize,
}

/// A new lane and the driver's end of it.
fn lane(tuning: &Tuning) -> (Lane, Queues) {
    let (jobs, jobs_rx) = mpsc::channel(tuning.queue());
    let (marks, marks_rx) = mpsc::channel(tuning.queue());
    let queues = Queues {
        jobs: jobs_rx,
        marks: marks_rx,
        marks_open: true,
        released: Vec::new(),
        max_batch: tuning.max_batch,
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
    /// waiting: jobs first, in order, up to a batch, then released marks, up to as many
    /// again. Leaves it empty once the writer is gone and everything is taken. Returns how
    /// many of the batch came from the jobs queue.
    async fn next(&mut self, batch: &mut Vec<Queued>) -> usize {
        let max = self.max_batch;
        tokio::select! {
            biased;
            _ = self.jobs.recv_many(batch, max) => {}
            n = self.marks.recv_many(&mut self.released, max), if self.marks_open => {
                self.marks_open = n > 0;
            }
        }
        // Whichever came first, the other queue's waiting work comes along.
        while batch.len() < max {
            let Ok(job) = self.jobs.try_recv() else { break };
            batch.push(job);
        }
        let jobs = batch.len();
        while self.released.len() < max {
            let Ok(job) = self.marks.try_recv() else {
                break;
            };
            self.released.push(job);
        }
        batch.append(&mut self.released);
        jobs
    }
}

/// Sends the held marks to the driver [`Tuning::mark_delay`] after the first of them came,
/// until the writer is gone.
async fn release_held(intake: Weak<Intake>, holding: Arc<Notify>, delay: std::time::Duration) {
    loop {
        holding.notified().await;
        tokio::time::sleep(delay).await;
        let Some(intake) = intake.upgrade() else {
            return;
        };
        // A full queue keeps its marks held for the next round; a driver that stopped
        // has dropped its queue, and the mark's caller hears so.
        let full: Vec<Queued> = intake
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

impl Drop for Writer {
    fn drop(&mut self) {
        // Whatever is held goes now, if the driver's queue has room: nothing waits on it
        // (a lost mark is a receipt tick to come again), but it should not be lost.
        for job in self.intake.take_held() {
            let _ = self.intake.lane.marks.try_send(job);
        }
        self.intake.holding.notify_one();
    }
}

impl Writer {
    /// Starts the backend's driver: on SQLite a thread with its own connection to the
    /// file, on PostgreSQL the store's writers. Must be called within a tokio runtime.
    ///
    /// Fails when the SQLite file cannot be opened a second time, or the store is an
    /// in-memory SQLite database (whose connections would each see a database of their
    /// own).
    pub fn start(
        store: Store,
        live: Arc<dyn Live>,
        clock: Clock,
        tuning: Tuning,
        metrics: Arc<Metrics>,
    ) -> Result<Writer> {
        let tuning = Arc::new(tuning);
        let (mut lane, queues) = lane(&tuning);
        let cx = Context {
            live,
            clock,
            tuning: tuning.clone(),
            metrics: metrics.clone(),
        };
        if let Some(writers) = postgres::writers(&store, &cx) {
            tokio::spawn(postgres::run(writers, cx, queues, lane.backlog.clone()));
        } else {
            let (file, lock) = store.sqlite_writer().ok_or_else(|| {
                Error::Internal(
                    "SQLite must be a file: an in-memory database cannot be shared by the writer"
                        .into(),
                )
            })?;
            let conns = sqlite::connect(&file, &tuning).map_err(|e| {
                Error::Internal(format!("cannot open the SQLite writer's connection: {e}"))
            })?;
            lane.now = Some(sqlite::start(conns, lock, cx, queues));
        }
        let holding = Arc::new(Notify::new());
        let intake = Arc::new(Intake {
            lane,
            held: Mutex::new(Vec::new()),
            holding: holding.clone(),
        });
        tokio::spawn(release_held(
            Arc::downgrade(&intake),
            holding,
            tuning.mark_delay,
        ));
        Ok(Writer {
            intake,
            within: tuning.answer_within,
            metrics,
        })
    }

    /// Queues a send and returns what answers after its commit. Sends queued one after
    /// another are stored, and announced, in that order.
    pub async fn send(
        &self,
        chat_id: i64,
        send: Draft,
    ) -> Result<impl Future<Output = Result<Sent>> + use<>> {
        let done = self.queue(chat_id, Work::Send(send)).await?;
        // Counted from now, not from the answer's first poll: a socket polls only its
        // oldest send's answer until that one is ready.
        let deadline = tokio::time::Instant::now() + self.within;
        let metrics = self.metrics.clone();
        Ok(async move {
            let answered = in_time(deadline, done).await;
            if let Err(Error::Unavailable(_)) = answered {
                // Not counted by its batch: it went unanswered.
                metrics.refused("unavailable", 1);
            }
            match answered? {
                Done::Sent(sent) => Ok(sent),
                Done::Marked(_) => Err(Error::Internal("a send was answered as a mark".into())),
            }
        })
    }

    /// Queues a mark and returns what answers after its commit, in order with the sends
    /// and marks queued before it; or, one that may `wait` for a writer with nothing
    /// queued, after up to [`Tuning::mark_delay`] (see [`Intake`]).
    pub async fn mark(
        &self,
        chat_id: i64,
        mark: Mark,
        wait: bool,
    ) -> Result<impl Future<Output = Result<Marked>> + use<>> {
        let lane = &self.intake.lane;
        // A driver with work waiting stores this mark with that work anyway.
        let idle = lane.jobs.capacity() == lane.jobs.max_capacity()
            && lane.backlog.load(Ordering::Relaxed) == 0;
        let done = if wait && idle {
            let (reply, answer) = oneshot::channel();
            let job = Queued {
                job: Job {
                    chat_id,
                    work: Work::Mark(mark),
                },
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
        let deadline = tokio::time::Instant::now() + self.within;
        Ok(async move {
            match in_time(deadline, done).await? {
                Done::Marked(marked) => Ok(marked),
                Done::Sent(_) => Err(Error::Internal("a mark was answered as a send".into())),
            }
        })
    }

    async fn queue(
        &self,
        chat_id: i64,
        work: Work,
    ) -> Result<impl Future<Output = Result<Done>> + use<>> {
        let (reply, answer) = oneshot::channel();
        let job = Queued {
            job: Job { chat_id, work },
            reply,
        };
        let lane = &self.intake.lane;
        // A place in the queue first, so that a caller who gives up while the queue is
        // full leaves nothing counted as queued.
        let place = in_time(tokio::time::Instant::now() + self.within, async {
            lane.jobs.reserve().await.map_err(|_| stopped())
        })
        .await?;
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

/// `work`'s outcome, or `Unavailable` once `deadline` has passed without one. The job may
/// still be stored after that (its batch waits on the database); a send is safe to send
/// again with its `local_id`.
async fn in_time<T>(
    deadline: tokio::time::Instant,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(Error::Unavailable(
            "the database did not answer in time: this is not known to be stored; \
             send it again with the same local_id",
        )))
}

fn stopped() -> Error {
    Error::Internal("the message writer has stopped".into())
}

#[cfg(test)]
mod tests;
