//! The SQLite driver: a writer thread with its own connection, its journal. sqlx runs each
//! SQLite statement on a worker thread and hands the result back, a round trip of two
//! thread wake-ups per statement; here a whole batch is one hand-over, and its statements
//! are prepared once and run in place. A checkpoint thread beside it keeps the WAL short.
//!
//! It takes the same writer lock as every other SQLite write of the process, so writers
//! never meet in SQLite's busy handler.

mod checkpoint;
pub(crate) mod journal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Mutex;

use self::journal::Journal;
use super::batch::{Batch, Step};
use super::plan::{Done, Job};
use super::tuning::Tuning;
use super::{Context, Partial, Queued, Queues, answer, answer_decided, split};
use crate::domain::{Error, Result};

/// The writer's connection and the checkpointer's.
pub(super) struct Connections {
    writer: Connection,
    checkpoints: Connection,
    file: PathBuf,
}

/// Opens both connections with the pool's settings (WAL, synchronous NORMAL, foreign keys).
pub(super) fn connect(file: &Path, tuning: &Tuning) -> rusqlite::Result<Connections> {
    let writer = open(file, tuning)?;
    // The writer never checkpoints the WAL itself (a checkpoint inside a commit stalls
    // every send behind it for milliseconds); a second thread does, beside it.
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    writer.pragma_update(None, "cache_size", -tuning.writer_cache_kib)?;
    Ok(Connections {
        writer,
        checkpoints: open(file, tuning)?,
        file: file.to_owned(),
    })
}

pub(super) fn open(file: &Path, tuning: &Tuning) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(tuning.busy_wait)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Starts the writer thread and the checkpoint thread beside it, and returns the writer
/// the lane shares with the thread. Must be called within a tokio runtime (the writer
/// waits on its queues through it).
pub(super) fn start(
    conns: Connections,
    lock: Arc<Mutex<()>>,
    cx: Context,
    queues: Queues,
) -> Arc<Shared> {
    let Connections {
        writer,
        checkpoints,
        file,
    } = conns;
    let tuning = cx.tuning.clone();
    let shared = Arc::new(Shared {
        journal: std::sync::Mutex::new(Journal::new(writer, tuning.cached_chats)),
        lock: lock.clone(),
        cx,
        queued: AtomicUsize::new(0),
        load: Arc::default(),
    });
    let (alive, writer_gone) = std::sync::mpsc::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let thread_shared = shared.clone();
    let started = std::thread::Builder::new()
        .name("souq-writer".into())
        .spawn(move || {
            run(&thread_shared, queues, runtime);
            drop(alive);
        });
    if let Err(e) = started {
        // Only when the system is out of threads; every send then fails with an error.
        tracing::error!(error = %e, "cannot start the SQLite message writer");
        return shared;
    }
    let load = shared.load.clone();
    let started = std::thread::Builder::new()
        .name("souq-checkpoint".into())
        .spawn(move || {
            checkpoint::checkpoint(checkpoints, &file, lock, &load, &tuning, writer_gone)
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no WAL checkpoint thread; the pool's writes checkpoint");
    }
    shared
}

/// The writer, shared by its thread and the callers that find it idle.
///
/// A send that finds nothing queued before it, nobody writing and the writer not busy is
/// committed at once on the caller's own thread: a lone send then costs no hand-over to
/// the writer thread and back (two thread wake-ups, which at low load cost about as much
/// as the commit). Under load the queue is rarely empty, and sends go to the thread,
/// which commits them in batches; while its batches are large, they go there even when
/// it is idle ([`Tuning::inline_under`]). Order holds because a job is committed here only
/// while no job queued before it is uncommitted: `queued` counts them, from before they
/// enter the queue until the thread has committed and announced them, and is read under
/// the writer's lock.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) journal: std::sync::Mutex<Journal>,
    /// The file's writer lock, which every SQLite write of the process takes.
    lock: Arc<Mutex<()>>,
    cx: Context,
    pub(super) queued: AtomicUsize,
    /// The size of the thread's batches, which tells how busy the writer is.
    pub(super) load: Arc<Load>,
}

/// How many jobs from the queue the writer thread's batches hold, on average over the last
/// eight or so (held marks left out).
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Eight times the average: `x - x/8 + jobs` at each batch.
    eighths: AtomicUsize,
}

impl Load {
    /// Only the writer thread records, so a load and a store are enough.
    pub(super) fn record(&self, jobs: usize) {
        let was = self.eighths.load(Ordering::Relaxed);
        self.eighths.store(was - was / 8 + jobs, Ordering::Relaxed);
    }

    pub(super) fn per_batch(&self) -> usize {
        self.eighths.load(Ordering::Relaxed) / 8
    }
}

impl Shared {
    /// Stores the job here and now, and announces and answers it as the writer thread
    /// would, if the writer is idle and not busy ([`Shared::idle_writer`]); otherwise gives
    /// it back, counted as queued, for the caller to put in the place it holds in the
    /// queue.
    pub(super) fn now_or_queue(&self, queued: Queued) -> Option<Queued> {
        if let Some(mut journal) = self.idle_writer()
            && let Ok(_file) = self.lock.try_lock()
        {
            let jobs = std::slice::from_ref(&queued.job);
            let started = std::time::Instant::now();
            if let Ok(outcomes) = store_without_waiting(&mut journal, jobs, &self.cx) {
                self.cx.counted(1, started, false);
                answer(&self.cx, jobs, vec![queued.reply], outcomes);
                return None;
            }
        }
        // A failed commit left nothing behind: the thread tries it again, as it would.
        self.queued.fetch_add(1, Ordering::SeqCst);
        Some(queued)
    }

    /// The writer, if nothing is queued, nobody is committing and the writer is not busy.
    pub(super) fn idle_writer(&self) -> Option<std::sync::MutexGuard<'_, Journal>> {
        if self.queued.load(Ordering::SeqCst) != 0
            || self.load.per_batch() >= self.cx.tuning.inline_under
        {
            return None;
        }
        // A poisoned lock is a writer that panicked mid-batch; the thread takes it from
        // there (its transaction rolled back), so callers leave it to the thread.
        let journal = self.journal.try_lock().ok()?;
        // Queued while the lock was being taken: that job goes first.
        (self.queued.load(Ordering::SeqCst) == 0).then_some(journal)
    }
}

/// Runs a batch through the journal: the rounds of [`Batch`], each in one transaction.
/// Returns an outcome per job; or the error that failed a round (nothing of that round is
/// kept) with the outcomes of the rounds committed before it.
pub(super) fn store(
    journal: &mut Journal,
    jobs: &[Job],
    cx: &Context,
) -> Result<Vec<Result<Done>>, Partial<rusqlite::Error>> {
    let mut batch = Batch::new(jobs, &cx.tuning);
    let stored = (|| loop {
        match batch.next() {
            Step::Read(read) => {
                let chats = journal.chats(&read)?;
                batch.read(chats, cx.clock.now_ms());
            }
            Step::LookUp(keys) => {
                let found = journal.stored(&keys)?;
                batch.found(found);
            }
            Step::Execute(plan) => {
                let executed = journal.execute(plan, jobs)?;
                batch.executed(executed);
            }
            Step::Done => return Ok(()),
        }
    })();
    match stored {
        Ok(()) => {
            // A batch that ends on a look-up (its last round) leaves a read open.
            journal.end_read();
            Ok(batch.finish())
        }
        Err(error) => {
            journal.abandon();
            Err(Partial {
                error,
                decided: batch.decided(),
            })
        }
    }
}

/// Stores as [`store`] does, but fails at once where another process holds the file (the
/// command line, say) instead of waiting in SQLite's busy handler: a caller's own thread
/// is one of the runtime's, and must not wait for it.
fn store_without_waiting(
    journal: &mut Journal,
    jobs: &[Job],
    cx: &Context,
) -> rusqlite::Result<Vec<Result<Done>>> {
    journal.busy_wait(Duration::ZERO)?;
    let stored = store(journal, jobs, cx).map_err(|partial| partial.error);
    // Setting a timeout on an open connection cannot fail; and a commit that went through
    // must not be reported as failed, or it would be stored twice.
    let _ = journal.busy_wait(cx.tuning.busy_wait);
    stored
}

fn run(shared: &Shared, mut queues: Queues, runtime: tokio::runtime::Handle) {
    let mut batch = Vec::with_capacity(shared.cx.tuning.max_batch);
    loop {
        // Waiting on two queues takes a future; it needs no timer or socket of the runtime.
        let queued = runtime.block_on(queues.next(&mut batch));
        if batch.is_empty() {
            return;
        }
        // The jobs from the queue only: held marks come in bunches every few ms at any
        // load, and are never committed on a caller's thread anyway.
        shared.load.record(queued);
        let mut journal = shared.journal.lock().unwrap_or_else(|e| e.into_inner());
        {
            let _file = shared.lock.blocking_lock();
            store_and_answer(&mut journal, &shared.cx, std::mem::take(&mut batch));
        }
        // Only now, with the writer still held, may a caller commit on its own again.
        shared.queued.fetch_sub(queued, Ordering::SeqCst);
    }
}

/// Stores a batch (the caller holds the file's writer lock), then announces and answers
/// it; the jobs of a batch that fails are tried again one by one (those of its rounds that
/// committed are answered as they are).
fn store_and_answer(journal: &mut Journal, cx: &Context, batch: Vec<Queued>) {
    let (jobs, replies) = split(batch);
    let started = std::time::Instant::now();
    let stored = store(journal, &jobs, cx);
    cx.counted(jobs.len(), started, stored.is_err());
    let Partial { error, decided } = match stored {
        Ok(outcomes) => return answer(cx, &jobs, replies, outcomes),
        Err(partial) => partial,
    };
    tracing::debug!(error = %error, jobs = jobs.len(), "a batch failed; storing its jobs one by one");
    for (job, reply) in answer_decided(cx, jobs, replies, decided) {
        let one = std::slice::from_ref(&job);
        let outcome = match store(journal, one, cx) {
            Ok(mut outcomes) => outcomes
                .pop()
                .unwrap_or_else(|| Err(Error::Internal("a job got no outcome".into()))),
            Err(partial) => Err(failed(partial.error)),
        };
        answer(cx, one, vec![reply], vec![outcome]);
    }
}

/// A SQLite failure as the core reports it: the file held by another process past the
/// busy wait is the database being away for now; anything else is a fault.
fn failed(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            Error::Unavailable("the database is busy: this is not stored; send it again")
        }
        _ => Error::Internal(format!("cannot store the message: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::checkpoint::Pace;
    use super::*;

    #[test]
    fn the_batch_average_follows_the_load_and_sets_the_checkpoint_pace() {
        let tuning = Tuning::DEFAULT;
        let (load, mut pace) = (Load::default(), Pace::default());
        let next = |pace: &mut Pace, load: &Load| pace.next(load, &tuning);
        assert_eq!(
            (load.per_batch(), next(&mut pace, &load)),
            (0, tuning.checkpoint_every)
        );
        // One full batch is not enough to count as busy.
        load.record(tuning.max_batch);
        assert!(load.per_batch() < tuning.busy_batch);
        // A long stall at low load: full batches of every send that waited.
        for _ in 0..3 {
            load.record(tuning.max_batch);
        }
        assert!(load.per_batch() >= tuning.busy_batch);
        assert_eq!(
            next(&mut pace, &load),
            tuning.checkpoint_every,
            "one busy round is not load"
        );
        for _ in 0..40 {
            load.record(tuning.max_batch);
        }
        let per_batch = load.per_batch();
        assert!(
            per_batch > tuning.max_batch - 10,
            "{per_batch} after full batches"
        );
        assert_eq!(
            next(&mut pace, &load),
            tuning.checkpoint_every,
            "two busy rounds are not load"
        );
        assert_eq!(
            next(&mut pace, &load),
            tuning.checkpoint_every_busy,
            "three are"
        );
        assert_eq!(next(&mut pace, &load), tuning.checkpoint_every_busy);
        // One small batch under load is not a quiet writer.
        load.record(1);
        assert!(load.per_batch() >= tuning.busy_batch);
        for _ in 0..60 {
            load.record(1);
        }
        let per_batch = load.per_batch();
        assert!(
            per_batch < tuning.inline_under,
            "{per_batch} after batches of 1"
        );
        assert_eq!(
            next(&mut pace, &load),
            tuning.checkpoint_every,
            "quiet again at once"
        );
    }
}
