//! The PostgreSQL driver: a node's writers, each a journal with a connection of its own,
//! fed batches by one task ([`run`]): one batch in flight at low load, so that a commit
//! holds more sends; side by side under load, so that one batch's statement runs while
//! another's commits. A batch's messages are answered as soon as their statement commits;
//! its marks follow in a statement of their own.

pub(crate) mod journal;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sea_orm::sqlx;
use tokio::time::{Duration, Instant};

use self::journal::Journal;
use super::batch::{Batch, Step};
use super::plan::{ChatState, Done, Job};
use super::tuning::Tuning;
use super::{Context, Partial, Queued, Queues, answer, answer_decided, split};
use crate::domain::{Error, Result};
use crate::store::Store;

/// The journals of a PostgreSQL store's writers (`None` for another database).
pub(super) fn writers(store: &Store, cx: &Context) -> Option<Vec<Journal>> {
    if store.backend() != sea_orm::DbBackend::Postgres {
        return None;
    }
    let pool = store.db().get_postgres_connection_pool().clone();
    Some(
        (0..store.postgres_writers().max(1))
            .map(|_| Journal::new(pool.clone(), cx.tuning.cached_chats))
            .collect(),
    )
}

/// How a free writer takes its next batch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Take {
    Nothing,
    /// Every job waiting whose chat is not in flight.
    All,
    /// The writer's own share of the chats, then what waits in the shares of writers at
    /// work (so that no share waits for its writer alone).
    Shares,
}

impl Take {
    /// From how many jobs wait, how many batches are in flight, and how long ago the
    /// last batch went.
    pub(super) fn now(waiting: usize, in_flight: usize, newest: Duration, t: &Tuning) -> Take {
        if waiting == 0 {
            Take::Nothing
        } else if waiting >= t.spill {
            Take::Shares
        } else if in_flight == 0 || newest >= t.stuck {
            Take::All
        } else {
            Take::Nothing
        }
    }
}

/// Stores batches of whatever sends are waiting, with `writers`, until the handle is
/// dropped.
///
/// At low load (fewer than [`Tuning::spill`] jobs waiting) a writer takes every job
/// waiting, but only while no other batch is in flight, or the last went
/// [`Tuning::stuck`] ago. Under load, each writer takes its share of the chats (`chat_id`
/// modulo their number) and what waits in the shares of writers at work, so that batches
/// run side by side ([`Take`]). Either way a chat's jobs are in at most one batch in flight
/// (`busy`), so they are stored in the order they came; and a writer finds what the last
/// one learnt of its batch's chats in `chats`, whose entries it holds while it writes.
/// `backlog` tells `Writer::mark` how many jobs wait here.
///
/// The batches are stored by futures of this task: a panic in one stops every writer of
/// the node, and their callers hear that the writer stopped.
pub(super) async fn run(
    writers: Vec<Journal>,
    cx: Context,
    mut queues: Queues,
    backlog: Arc<AtomicUsize>,
) {
    let tuning = cx.tuning.clone();
    let share = writers.len();
    let mut free: Vec<Option<Journal>> = Vec::with_capacity(share);
    // Connected at start, so the first send does not wait for a connection (and the
    // writers' backends are there from the start for whoever watches the database). If
    // PostgreSQL is away, the first batch tries again.
    for mut writer in writers {
        writer.connect().await;
        free.push(Some(writer));
    }
    let mut chats: HashMap<i64, ChatState> = HashMap::new();
    // Each writer's share of the chats, waiting in order.
    let mut waiting: Vec<VecDeque<Queued>> = (0..share).map(|_| VecDeque::new()).collect();
    let mut waiting_len = 0;
    let mut busy: HashSet<i64> = HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    let mut incoming = Vec::with_capacity(tuning.max_batch);
    let mut open = true;
    // Wakes the task once the newest batch in flight has been for `stuck`.
    let stuck = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(stuck);
    let (mut newest, mut armed) = (Instant::now(), false);
    loop {
        let take = Take::now(waiting_len, in_flight.len(), newest.elapsed(), &tuning);
        for n in 0..share {
            if take == Take::Nothing || waiting_len == 0 {
                break;
            }
            let Some(mut writer) = free[n].take() else {
                continue;
            };
            let mut taking = Taking::new(tuning.max_batch);
            if take == Take::Shares {
                taking.take(&mut waiting[n], &busy);
                for m in (0..share).filter(|&m| m != n && free[m].is_none()) {
                    taking.take(&mut waiting[m], &busy);
                }
            } else {
                for queue in &mut waiting {
                    taking.take(queue, &busy);
                }
            }
            if taking.jobs.is_empty() {
                free[n] = Some(writer);
                continue;
            }
            waiting_len -= taking.jobs.len();
            if chats.len() > tuning.cached_chats {
                chats.clear();
            }
            let ids: Vec<i64> = taking.jobs.iter().map(|q| q.job.chat_id).collect();
            for id in &ids {
                if let Some(chat) = chats.remove(id) {
                    writer.chats.insert(*id, chat);
                }
            }
            busy.extend(ids.iter().copied());
            in_flight.push(store(writer, n, taking.jobs, cx.clone(), ids));
            newest = Instant::now();
            stuck.as_mut().reset(newest + tuning.stuck);
            armed = true;
            if take == Take::All {
                break;
            }
        }
        backlog.store(waiting_len, Ordering::Relaxed);
        if !open && waiting_len == 0 && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            Some((mut writer, n, ids)) = in_flight.next(), if !in_flight.is_empty() => {
                for id in ids {
                    busy.remove(&id);
                }
                chats.extend(writer.chats.drain());
                free[n] = Some(writer);
            }
            _ = queues.next(&mut incoming), if open && waiting_len < tuning.max_waiting => {
                open = !incoming.is_empty();
                waiting_len += incoming.len();
                for queued in incoming.drain(..) {
                    let n = queued.job.chat_id.rem_euclid(share as i64) as usize;
                    waiting[n].push_back(queued);
                }
            }
            // Once only: what waits then is taken, or waits for an answer to free it.
            () = &mut stuck, if armed && waiting_len > 0 => armed = false,
        }
    }
}

/// A batch being taken from what waits.
pub(super) struct Taking {
    pub(super) jobs: Vec<Queued>,
    sends: usize,
    marks: usize,
    max: usize,
}

impl Taking {
    pub(super) fn new(max: usize) -> Taking {
        Taking {
            jobs: Vec::new(),
            sends: 0,
            marks: 0,
            max,
        }
    }

    /// Takes from `waiting`, in order, the jobs of chats not `busy` in another batch, up
    /// to a batch of sends and as many marks in all. Once a chat has a job left behind,
    /// its later jobs stay too, so a chat's jobs always go in the order they came.
    pub(super) fn take(&mut self, waiting: &mut VecDeque<Queued>, busy: &HashSet<i64>) {
        let mut left_behind: HashSet<i64> = HashSet::new();
        let mut kept = VecDeque::new();
        for queued in waiting.drain(..) {
            let chat_id = queued.job.chat_id;
            let count = if queued.job.send().is_some() {
                &mut self.sends
            } else {
                &mut self.marks
            };
            if *count == self.max || busy.contains(&chat_id) || left_behind.contains(&chat_id) {
                left_behind.insert(chat_id);
                kept.push_back(queued);
            } else {
                *count += 1;
                self.jobs.push(queued);
            }
        }
        *waiting = kept;
    }
}

/// Stores a batch with `writer`: its messages, announced and answered as soon as their
/// statement commits, then its marks in a statement of their own (so a send never waits
/// for the marks of its own batch; they are checked against the chats as the messages
/// left them). Gives back the writer (the `n`th) and the chats of the batch.
async fn store(
    mut writer: Journal,
    n: usize,
    mut sends: Vec<Queued>,
    cx: Context,
    ids: Vec<i64>,
) -> (Journal, usize, Vec<i64>) {
    let marks: Vec<Queued> = sends.extract_if(.., |q| q.job.send().is_none()).collect();
    for queued in [sends, marks] {
        if !queued.is_empty() {
            store_and_answer(&mut writer, &cx, queued).await;
        }
    }
    (writer, n, ids)
}

/// Runs a batch through the journal: the rounds of [`Batch`]. Returns an outcome per job;
/// or the error that failed a round (nothing of that round is kept) with the outcomes of
/// the rounds committed before it.
pub(super) async fn store_jobs(
    journal: &mut Journal,
    jobs: &[Job],
    cx: &Context,
) -> std::result::Result<Vec<Result<Done>>, Partial<sqlx::Error>> {
    let mut batch = Batch::new(jobs, &cx.tuning);
    loop {
        let step = match batch.next() {
            Step::Read(read) => journal.chats(&read).await.map(|chats| {
                batch.read(chats, cx.clock.now_ms());
            }),
            Step::LookUp(keys) => match journal.stored(&keys).await {
                Ok(found) => {
                    batch.found(found);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::Execute(plan) => match journal.execute(plan, jobs).await {
                Ok(executed) => {
                    batch.executed(executed);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::Done => return Ok(batch.finish()),
        };
        if let Err(error) = step {
            journal.abandon();
            return Err(Partial {
                error,
                decided: batch.decided(),
            });
        }
    }
}

/// Stores a batch, then announces and answers it; the jobs of a batch that fails are tried
/// again one by one (those of its rounds that committed are answered as they are).
async fn store_and_answer(journal: &mut Journal, cx: &Context, batch: Vec<Queued>) {
    let (jobs, replies) = split(batch);
    let started = std::time::Instant::now();
    let stored = store_jobs(journal, &jobs, cx).await;
    cx.counted(jobs.len(), started, stored.is_err());
    let Partial { error, decided } = match stored {
        Ok(outcomes) => return answer(cx, &jobs, replies, outcomes),
        Err(partial) => partial,
    };
    tracing::debug!(error = %error, jobs = jobs.len(), "a batch failed; storing its jobs one by one");
    for (job, reply) in answer_decided(cx, jobs, replies, decided) {
        let one = std::slice::from_ref(&job);
        let outcome = match store_jobs(journal, one, cx).await {
            Ok(mut outcomes) => outcomes
                .pop()
                .unwrap_or_else(|| Err(Error::Internal("a job got no outcome".into()))),
            Err(partial) => Err(failed(partial.error)),
        };
        answer(cx, one, vec![reply], vec![outcome]);
    }
}

/// A database failure as the core reports it: a connection that could not be had or
/// broke is the database being away.
fn failed(e: sqlx::Error) -> Error {
    use sea_orm::{DbErr, RuntimeErr};
    let away = crate::store::sqlx_away(&e);
    let cause = RuntimeErr::SqlxError(Arc::new(e));
    match away {
        true => Error::Store(DbErr::Conn(cause)),
        false => Error::Store(DbErr::Exec(cause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_writer_takes_batches_as_the_load_says() {
        let t = Tuning::DEFAULT;
        let soon = t.stuck / 2;
        let cases = [
            ((0, 0, soon), Take::Nothing, "nothing waits"),
            ((1, 0, soon), Take::All, "nothing in flight"),
            ((1, 1, soon), Take::Nothing, "a batch in flight, lately"),
            (
                (t.spill - 1, 1, t.stuck),
                Take::All,
                "the batch in flight is slow",
            ),
            (
                (t.spill - 1, 2, t.stuck),
                Take::All,
                "the batches in flight are slow",
            ),
            ((t.spill, 1, soon), Take::Shares, "enough wait"),
            (
                (t.spill, 0, soon),
                Take::Shares,
                "enough wait, nothing in flight",
            ),
        ];
        for ((waiting, in_flight, newest), want, why) in cases {
            assert_eq!(Take::now(waiting, in_flight, newest, &t), want, "{why}");
        }
    }
}
