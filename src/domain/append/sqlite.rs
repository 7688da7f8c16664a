//! The appender for SQLite: a thread of its own with its own connection. sqlx runs each
//! SQLite statement on a worker thread and hands the result back, a round trip of two
//! thread wake-ups per statement; here a whole batch is one hand-over, and its statements
//! are prepared once and run in place.
//!
//! It takes the same writer lock as every other SQLite write of the process, so writers
//! never meet in SQLite's busy handler.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Mutex;

use super::{
    Append, Done, Job, MAX_BATCH, Mark, Marked, Queues, SAVE_RECEIPT, Stored, Work, advance, answer,
};
use crate::clock::system_ms as now_ms;
use crate::domain::Live;
use crate::domain::Receipt;
use crate::domain::events::Person;
use crate::domain::{Error, Result};
use crate::store::entity::{chat, message};

/// The writer's connection and the checkpointer's.
pub(super) struct Connections {
    writer: Connection,
    checkpoints: Connection,
    file: PathBuf,
}

/// Opens both connections with the pool's settings (WAL, synchronous NORMAL, foreign keys).
pub(super) fn connect(file: &Path) -> rusqlite::Result<Connections> {
    let writer = open(file)?;
    // The writer never checkpoints the WAL itself (a checkpoint inside a commit stalls
    // every send behind it for milliseconds); a second thread does, beside it.
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Every batch touches the newest pages of each of its chats in the messages table
    // and both its indexes. SQLite's default cache (2 MB) loses them between batches
    // once there are many chats, and reads them back from the file: a read syscall for
    // every other message. The cache grows only as pages are used.
    writer.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    Ok(Connections {
        writer,
        checkpoints: open(file)?,
        file: file.to_owned(),
    })
}

/// Starts the writer thread and the checkpoint thread beside it, and returns the writer
/// the lane shares with the thread. Must be called within a tokio runtime (the writer
/// waits on its queues through it).
pub(super) fn start(
    conns: Connections,
    lock: Arc<Mutex<()>>,
    bus: Arc<dyn Live>,
    queues: Queues,
) -> Arc<Shared> {
    let Connections {
        writer,
        checkpoints,
        file,
    } = conns;
    let shared = Arc::new(Shared {
        writer: std::sync::Mutex::new(Writer::new(writer)),
        lock: lock.clone(),
        bus,
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
        .spawn(move || checkpoint(checkpoints, &file, lock, &load, writer_gone));
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
/// it is idle ([`INLINE_UNDER`]). Order holds because a job is committed here only while
/// no job queued before it is uncommitted: `queued` counts them, from before they enter
/// the queue until the thread has committed and announced them, and is read under the
/// writer's lock.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) writer: std::sync::Mutex<Writer>,
    /// The file's writer lock, which every SQLite write of the process takes.
    lock: Arc<Mutex<()>>,
    bus: Arc<dyn Live>,
    pub(super) queued: AtomicUsize,
    /// The size of the thread's batches, which tells how busy the writer is.
    pub(super) load: Arc<Load>,
}

/// A caller commits its send itself only while the writer thread's batches hold fewer
/// jobs than this on average. Under load the thread commits the sends of a moment
/// together, a page or so each, and a send committed alone writes four or five (the
/// newest page of the table and of each index, and its chat's row), holding the writer
/// all the while. Batches come out small now and then even under load (the first send
/// after a commit finds the thread idle), so one small batch is not enough.
pub(super) const INLINE_UNDER: usize = 4;

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
    /// Commits the job here and now, and announces and answers it as the writer thread
    /// would, if the writer is idle and not busy ([`Shared::idle_writer`]); otherwise gives
    /// it back, counted as queued, for the
    /// caller to put in the place it holds in the queue.
    pub(super) fn now_or_queue(&self, job: Job) -> Option<Job> {
        if let Some(mut writer) = self.idle_writer()
            && let Ok(_file) = self.lock.try_lock()
            && let Ok(outcomes) = writer.commit_without_waiting(std::slice::from_ref(&job))
        {
            answer(&*self.bus, std::iter::once(job), outcomes);
            return None;
        }
        // A failed commit left nothing behind: the thread tries it again, as it would.
        self.queued.fetch_add(1, Ordering::SeqCst);
        Some(job)
    }

    /// The writer, if nothing is queued, nobody is committing and the writer is not busy.
    pub(super) fn idle_writer(&self) -> Option<std::sync::MutexGuard<'_, Writer>> {
        if self.queued.load(Ordering::SeqCst) != 0 || self.load.per_batch() >= INLINE_UNDER {
            return None;
        }
        // A poisoned lock is a writer that panicked mid-batch; the thread takes it from
        // there (its transaction rolled back on drop), so callers leave it to the thread.
        let writer = self.writer.try_lock().ok()?;
        // Queued while the lock was being taken: that job goes first.
        (self.queued.load(Ordering::SeqCst) == 0).then_some(writer)
    }
}

/// How long a write waits for another process that holds the file.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// The writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// How often the WAL is copied back into the database file. Each round makes the disk
/// write at once all that was committed since the last, and commits made during that
/// burst are slowed by it: the shorter the round, the smaller the burst. At 2,000 sends/s
/// on a busy host, rounds of a second put p99 send→deliver at 20–77 ms, and rounds of
/// 100 ms at 2.9–3.9 ms, with no change in closed-loop throughput (BENCHMARKS.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How often instead while the writer's batches hold [`BUSY_BATCH`] jobs or more on
/// average, round after round ([`BUSY_ROUNDS`]): it is then the writer's pace that
/// bounds the sends, not the disk's bursts.
/// Each round copies every page committed since the last, and a batch commits the newest
/// page of both indexes of every chat it holds a message of, so ten rounds a second copy
/// those same pages ten times. In closed loop, rounds of a second took 10% less CPU per
/// delivery than rounds of 100 ms, with the same latency (BENCHMARKS.md).
const CHECKPOINT_EVERY_BUSY: Duration = Duration::from_secs(1);

/// See [`CHECKPOINT_EVERY_BUSY`].
const BUSY_BATCH: usize = 64;

/// Rounds in a row that must find the writer busy before the next waits
/// [`CHECKPOINT_EVERY_BUSY`]. At low load a long stall of the disk fills three or four
/// full batches in a row with the sends that waited, which lifts the average past
/// [`BUSY_BATCH`]; that alone must not space out the rounds that keep the tail short.
const BUSY_ROUNDS: u32 = 3;

/// The checkpoint thread's pace: how many rounds in a row found the writer busy.
#[derive(Debug, Default)]
struct Pace {
    busy_rounds: u32,
}

impl Pace {
    /// How long to wait before the next round, as the writer is now.
    fn next(&mut self, load: &Load) -> Duration {
        self.busy_rounds = if load.per_batch() >= BUSY_BATCH {
            self.busy_rounds.saturating_add(1)
        } else {
            0
        };
        if self.busy_rounds >= BUSY_ROUNDS {
            CHECKPOINT_EVERY_BUSY
        } else {
            CHECKPOINT_EVERY
        }
    }
}

/// The WAL file is cut back to this size when it restarts after a burst.
const WAL_KEEP_BYTES: i64 = 64 * 1024 * 1024;

/// Copies the WAL back into the database file every [`CHECKPOINT_EVERY`] (or
/// [`CHECKPOINT_EVERY_BUSY`]), until the writer stops, and starts the WAL over each time.
///
/// SQLite reuses the WAL from its start only once every frame in it has been copied back
/// and no reader still uses it. Sends keep committing while a checkpoint runs, so under a
/// steady load a checkpoint that never blocks writers (PASSIVE) never catches up, and the
/// WAL grows without bound: at 2,000 sends/s each commit writes several whole pages, tens
/// of MB a second. So each round copies what it can beside the writer (PASSIVE), then
/// holds the writer lock while it copies the few frames committed meanwhile and restarts
/// the WAL (RESTART): sends wait only for that remainder.
///
/// Most of that wait is not the copy but the two syncs RESTART makes (with synchronous
/// NORMAL a checkpoint syncs the WAL before it copies, and the database file after), each
/// writing out whatever the disk does not have yet. So the round first syncs both files
/// itself, beside the writer, until both syncs together take under 2 ms
/// ([`Files::settle`]): sends then wait about 2 ms for a RESTART instead of 5 to 19.
fn checkpoint(
    conn: Connection,
    file: &Path,
    lock: Arc<Mutex<()>>,
    load: &Load,
    writer_gone: std::sync::mpsc::Receiver<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    if let Err(e) = conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES) {
        tracing::warn!(error = %e, "cannot limit the WAL's size");
    }
    let files = Files::of(file);
    let mut pace = Pace::default();
    while let Err(RecvTimeoutError::Timeout) = writer_gone.recv_timeout(pace.next(load)) {
        // What PASSIVE reports is the WAL as it was when it began, all of it copied back
        // unless a reader held it up; frames committed since then are not counted.
        let copied = wal_checkpoint(&conn, "PASSIVE").and_then(|(frames, _)| {
            if frames > 0 {
                if let Some(files) = &files {
                    files.settle();
                }
                let _writer = lock.blocking_lock();
                wal_checkpoint(&conn, "RESTART")?;
            }
            Ok(())
        });
        if let Err(e) = copied {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// A database file and its WAL, for syncing ahead of a checkpoint's RESTART.
struct Files {
    /// Never closed: closing any descriptor of a file drops every POSIX lock this process
    /// holds on it, and in WAL mode each SQLite connection holds one on the database file
    /// for as long as it is open (without it, another process closing the database would
    /// checkpoint and delete the WAL under this one). So it is opened once per process.
    database: Arc<std::fs::File>,
    /// Opened for each sync, since closing it puts nothing at stake: SQLite locks the
    /// database file and the `-shm` file, never the WAL.
    wal: PathBuf,
}

/// The database files opened by [`Files::of`], by device and inode, so that a file
/// created anew at the same path gets a descriptor of its own. Kept for the life of the
/// process.
static DATABASE_FILES: std::sync::Mutex<Vec<(FileId, Arc<std::fs::File>)>> =
    std::sync::Mutex::new(Vec::new());

/// A file's device and inode.
type FileId = (u64, u64);

/// A round of syncs that took less than this found the disk nearly caught up.
const SETTLED: Duration = Duration::from_millis(2);

/// Most rounds of [`Files::settle`]: under a heavy write load the disk may not catch up,
/// and the checkpoint goes on all the same.
const SETTLE_ROUNDS: usize = 4;

impl Files {
    /// The files of the database at `path`; None (logged) if it cannot be opened, and then
    /// RESTART makes every sync itself, as it would anyway.
    fn of(path: &Path) -> Option<Files> {
        use std::os::unix::fs::MetadataExt;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut opened = DATABASE_FILES.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before it is opened: a second descriptor, once opened, can never be
        // closed.
        let database = std::fs::metadata(path).and_then(|m| {
            let id = (m.dev(), m.ino());
            if let Some((_, file)) = opened.iter().find(|(known, _)| *known == id) {
                return Ok(file.clone());
            }
            let file = Arc::new(std::fs::File::open(path)?);
            opened.push((id, file.clone()));
            Ok(file)
        });
        let database = match database {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the database file to sync it ahead of checkpoints");
                return None;
            }
        };
        Some(Files {
            database,
            wal: wal.into(),
        })
    }

    /// Syncs the WAL and the database file until a round of both is quick, at most
    /// [`SETTLE_ROUNDS`] times. It only gives RESTART's own syncs less to do, and SQLite's
    /// syncs alone decide what is durable, so a failure here is only logged.
    fn settle(&self) {
        for _ in 0..SETTLE_ROUNDS {
            let started = std::time::Instant::now();
            let synced = std::fs::File::open(&self.wal)
                .and_then(|wal| wal.sync_data())
                .and_then(|()| self.database.sync_data());
            if let Err(e) = synced {
                tracing::debug!(error = %e, "cannot sync the database files ahead of a checkpoint");
                return;
            }
            if started.elapsed() < SETTLED {
                return;
            }
        }
    }
}

/// Runs a checkpoint; returns the frames in the WAL and how many of them are copied back.
fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

pub(super) fn open(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(BUSY_WAIT)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

fn run(shared: &Shared, mut queues: Queues, runtime: tokio::runtime::Handle) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Waiting on two queues takes a future; it needs no timer or socket of the runtime.
        let queued = runtime.block_on(queues.next(&mut batch));
        if batch.is_empty() {
            return;
        }
        // The jobs from the queue only: held marks come in bunches every few ms at any
        // load, and are never committed on a caller's thread anyway.
        shared.load.record(queued);
        let mut writer = shared.writer.lock().unwrap_or_else(|e| e.into_inner());
        {
            let _file = shared.lock.blocking_lock();
            commit_and_answer(&mut writer, &*shared.bus, &mut batch);
        }
        // Only now, with the writer still held, may a caller commit on its own again.
        shared.queued.fetch_sub(queued, Ordering::SeqCst);
    }
}

/// Commits a batch (the caller holds the file's writer lock), then announces and answers
/// it; a batch that fails as a whole is tried again job by job. Leaves `batch` empty.
fn commit_and_answer(writer: &mut Writer, bus: &dyn Live, batch: &mut Vec<Job>) {
    match writer.commit(batch) {
        Ok(outcomes) => answer(bus, batch.drain(..), outcomes),
        Err(e) => {
            tracing::debug!(error = %e, sends = batch.len(), "a batch failed; retrying its sends one by one");
            for job in batch.drain(..) {
                let outcome = match writer.commit(std::slice::from_ref(&job)) {
                    Ok(mut one) => one
                        .pop()
                        .unwrap_or_else(|| Err(Error::Internal("a send got no outcome".into()))),
                    Err(e) => Err(Error::Internal(format!("cannot store the message: {e}"))),
                };
                answer(bus, std::iter::once(job), vec![outcome]);
            }
        }
    }
}

/// Most chats the writer remembers; past this it forgets them all and reads them again.
const CACHED_CHATS: usize = 100_000;

/// The writer's connection and what it knows of the chats it writes to.
///
/// Each message needs its chat's seq, status and operator. The writer keeps the chats it
/// wrote to, as of its own last commit, and reads a chat only when it does not know it.
/// What it knows is right until another connection (the pool, another process) commits:
/// SQLite's `data_version` then changes, and the writer forgets every chat.
#[derive(Debug)]
pub(super) struct Writer {
    conn: Connection,
    chats: HashMap<i64, chat::Model>,
    /// `PRAGMA data_version` when `chats` was last known right.
    data_version: i64,
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Writer {
        Writer {
            conn,
            chats: HashMap::new(),
            data_version: -1,
        }
    }

    /// Stores the batch in one transaction, send by send (each sees the ones before it):
    /// one INSERT per new message, then one UPDATE per chat. Returns an outcome per job,
    /// or the error that failed the whole transaction (nothing of it is kept).
    pub(super) fn commit(&mut self, jobs: &[Job]) -> rusqlite::Result<Vec<Result<Done>>> {
        let committed = self.try_commit(jobs);
        if committed.is_err() {
            // What it read may be what failed (a seq taken behind its back): read again.
            self.chats.clear();
        }
        committed
    }

    /// Commits as [`Writer::commit`] does, but fails at once where another process holds
    /// the file (the command line, say) instead of waiting in SQLite's busy handler: a
    /// caller's own thread is one of the runtime's, and must not wait for it.
    fn commit_without_waiting(&mut self, jobs: &[Job]) -> rusqlite::Result<Vec<Result<Done>>> {
        self.conn.busy_timeout(Duration::ZERO)?;
        let committed = self.commit(jobs);
        // Setting a timeout on an open connection cannot fail; and a commit that went
        // through must not be reported as failed, or it would be stored twice.
        let _ = self.conn.busy_timeout(BUSY_WAIT);
        committed
    }

    fn try_commit(&mut self, jobs: &[Job]) -> rusqlite::Result<Vec<Result<Done>>> {
        let tx = Tx::begin(&self.conn)?;
        // Read inside the transaction: no other connection can commit until it ends.
        let version: i64 = tx
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if version != self.data_version || self.chats.len() > CACHED_CHATS {
            self.chats.clear();
        }
        let now = now_ms();
        let mut touched: HashMap<i64, Touched> = HashMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut marks: HashMap<(i64, Person), Folded> = HashMap::new();
        for job in jobs {
            let t = match touched.entry(job.chat_id) {
                Entry::Occupied(t) => t.into_mut(),
                Entry::Vacant(slot) => {
                    let known = match self.chats.get(&job.chat_id) {
                        Some(chat) => Some(chat.clone()),
                        None => read_chat(tx.conn, job.chat_id)?,
                    };
                    let Some(was) = known else {
                        outcomes.push(Err(Error::NotFound("chat")));
                        continue;
                    };
                    let now = was.clone();
                    slot.insert(Touched { was, now })
                }
            };
            outcomes.push(match &job.work {
                Work::Append(a) => {
                    let (outcome, after) = store_one(tx.conn, job.chat_id, a, &t.now, now)?;
                    if let Some(after) = after {
                        t.now = after;
                    }
                    outcome.map(Done::Stored)
                }
                Work::Mark(m) => match m.check(t.now.last_seq) {
                    Ok(()) => {
                        let at = outcomes.len();
                        match marks.entry((job.chat_id, m.member())) {
                            Entry::Occupied(f) => f.into_mut().add(m, at),
                            Entry::Vacant(slot) => {
                                slot.insert(Folded {
                                    mark: m.clone(),
                                    jobs: vec![at],
                                });
                            }
                        }
                        Err(Error::Internal("a mark got no outcome".into()))
                    }
                    Err(e) => Err(e),
                },
            });
        }
        // The marks after the messages they may mark: each member's once, at their
        // furthest, which stores what storing them one by one would.
        for ((chat_id, _), folded) in marks {
            let marked = mark_one(tx.conn, chat_id, &folded.mark, now)?;
            for i in folded.jobs {
                outcomes[i] = Ok(Done::Marked(marked.clone()));
            }
        }
        for t in touched.values() {
            if t.now != t.was {
                update_chat(tx.conn, t)?;
            }
        }
        tx.commit()?;
        // Its own commits leave data_version as it was.
        self.data_version = version;
        self.chats
            .extend(touched.into_iter().map(|(id, t)| (id, t.now)));
        Ok(outcomes)
    }
}

/// A write transaction whose statements are prepared once, as the batch's are: rusqlite's
/// own transaction parses BEGIN and COMMIT again each time, which at one send per commit
/// costs more than the send. Rolls back unless committed.
struct Tx<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> Tx<'c> {
    /// BEGIN IMMEDIATE: the write lock from the start, as every writer of the file takes it.
    fn begin(conn: &'c Connection) -> rusqlite::Result<Tx<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Tx { conn, done: false })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Fails only when no transaction is open, which is what it is there to ensure.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A member's marks in one batch, folded into one, and the jobs that sent them.
struct Folded {
    mark: Mark,
    jobs: Vec<usize>,
}

impl Folded {
    fn add(&mut self, m: &Mark, job: usize) {
        self.mark.received = self.mark.received.max(m.received);
        self.mark.read = self.mark.read.max(m.read);
        self.jobs.push(job);
    }
}

/// What the transaction knows of one chat it writes to: as it was, and as it is now.
struct Touched {
    was: chat::Model,
    now: chat::Model,
}

fn read_chat(conn: &Connection, chat_id: i64) -> rusqlite::Result<Option<chat::Model>> {
    conn.prepare_cached(
        "SELECT id, org_id, inbox_id, domain_id, customer_id, operator_id, status, \
         last_seq, created_at, last_activity_at FROM chats WHERE id = ?1",
    )?
    .query_row([chat_id], |r| {
        Ok(chat::Model {
            id: r.get(0)?,
            org_id: r.get(1)?,
            inbox_id: r.get(2)?,
            domain_id: r.get(3)?,
            customer_id: r.get(4)?,
            operator_id: r.get(5)?,
            status: r.get(6)?,
            last_seq: r.get(7)?,
            created_at: r.get(8)?,
            last_activity_at: r.get(9)?,
        })
    })
    .optional()
}

/// The stored message whose (chat, author, local_id) the job repeats, if any.
fn find_repeat(
    conn: &Connection,
    chat_id: i64,
    a: &Append,
) -> rusqlite::Result<Option<message::Model>> {
    let Some(local_id) = &a.local_id else {
        return Ok(None);
    };
    conn.prepare_cached(
        "SELECT id, chat_id, seq, author_kind, author_id, local_id, payload, text, \
         file_id, created_at, received_at, read_at FROM messages \
         WHERE chat_id = ?1 AND author_kind = ?2 AND author_id = ?3 AND local_id = ?4",
    )?
    .query_row(params![chat_id, a.kind, a.author_id, local_id], |r| {
        Ok(message::Model {
            id: r.get(0)?,
            chat_id: r.get(1)?,
            seq: r.get(2)?,
            author_kind: r.get(3)?,
            author_id: r.get(4)?,
            local_id: r.get(5)?,
            payload: r.get(6)?,
            text: r.get(7)?,
            file_id: r.get(8)?,
            created_at: r.get(9)?,
            received_at: r.get(10)?,
            read_at: r.get(11)?,
        })
    })
    .optional()
}

/// Stores one job into `chat` (as the transaction has it so far). Returns the outcome, and
/// the chat as it is after a new message.
fn store_one(
    conn: &Connection,
    chat_id: i64,
    a: &Append,
    chat: &chat::Model,
    now: i64,
) -> rusqlite::Result<(Result<Stored>, Option<chat::Model>)> {
    let mut next = chat.clone();
    let took = match advance(&mut next, a, now) {
        Ok(took) => took,
        // A refused send may repeat one stored before the chat finished: it gets that one.
        Err(e) => {
            return Ok(match find_repeat(conn, chat_id, a)? {
                Some(first) => (Ok(Stored::repeat(first.into())), None),
                None => (Err(e), None),
            });
        }
    };
    // A repeated local_id inserts nothing (and takes no seq); any other conflict, such as
    // a seq taken behind the writer's back, fails the batch. No RETURNING: SQLite runs it
    // as a trigger in the temp database, which costs more than the insert.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO messages \
             (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (chat_id, author_kind, author_id, local_id) DO NOTHING",
        )?
        .execute(params![
            chat_id,
            next.last_seq,
            a.kind,
            a.author_id,
            a.local_id,
            a.payload,
            a.text,
            a.file_id,
            now
        ])?;
    if inserted == 1 {
        let id = conn.last_insert_rowid();
        return Ok((
            Ok(Stored::new(chat_id, a, id, next.last_seq, now, took)),
            Some(next),
        ));
    }
    match find_repeat(conn, chat_id, a)? {
        Some(first) => Ok((Ok(Stored::repeat(first.into())), None)),
        None => Err(rusqlite::Error::QueryReturnedNoRows),
    }
}

/// Moves a member's cursors: their receipt row, and the received and read times of the
/// messages they now have (those at or below an old cursor were marked when it got there).
fn mark_one(conn: &Connection, chat_id: i64, m: &Mark, now: i64) -> rusqlite::Result<Marked> {
    let row = conn
        .prepare_cached(
            "SELECT received_seq, read_seq, received_at, read_at FROM receipts \
             WHERE chat_id = ?1 AND member_kind = ?2 AND member_id = ?3",
        )?
        .query_row(params![chat_id, m.kind, m.member_id], |r| {
            Ok(Receipt {
                chat_id,
                received_seq: r.get(0)?,
                read_seq: r.get(1)?,
                received_at: r.get(2)?,
                read_at: r.get(3)?,
            })
        })
        .optional()?;
    let existed = row.is_some();
    let before = row.unwrap_or_else(|| Receipt::none(chat_id));
    let after = before.moved_to(m, now);
    for (cursor, old, new) in [
        ("received", before.received_seq, after.received_seq),
        ("read", before.read_seq, after.read_seq),
    ] {
        if new > old {
            conn.prepare_cached(&format!(
                "UPDATE messages SET {cursor}_at = ?1 WHERE chat_id = ?2 AND seq > ?3 \
                 AND seq <= ?4 AND {cursor}_at IS NULL AND {}",
                m.others()
            ))?
            .execute(params![now, chat_id, old, new])?;
        }
    }
    let moved = after.received_seq != before.received_seq || after.read_seq != before.read_seq;
    if moved || !existed {
        conn.prepare_cached(SAVE_RECEIPT)?.execute(params![
            chat_id,
            m.kind,
            m.member_id,
            after.received_seq,
            after.read_seq,
            after.received_at,
            after.read_at
        ])?;
    }
    Ok(Marked {
        receipt: after,
        moved,
    })
}

/// Writes a chat's new seq, and whichever of its activity time, status and operator
/// changed: each of those is in an index, which a column left out of the update keeps.
fn update_chat(conn: &Connection, t: &Touched) -> rusqlite::Result<()> {
    let (was, chat) = (&t.was, &t.now);
    let mut sql = String::from("UPDATE chats SET last_seq = ?2");
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&chat.id, &chat.last_seq];
    if chat.last_activity_at != was.last_activity_at {
        values.push(&chat.last_activity_at);
        sql.push_str(&format!(", last_activity_at = ?{}", values.len()));
    }
    if chat.status != was.status || chat.operator_id != was.operator_id {
        values.push(&chat.status);
        sql.push_str(&format!(", status = ?{}", values.len()));
        values.push(&chat.operator_id);
        sql.push_str(&format!(", operator_id = ?{}", values.len()));
    }
    sql.push_str(" WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(values))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_average_follows_the_load_and_sets_the_checkpoint_pace() {
        let (load, mut pace) = (Load::default(), Pace::default());
        assert_eq!((load.per_batch(), pace.next(&load)), (0, CHECKPOINT_EVERY));
        // One full batch is not enough to count as busy.
        load.record(MAX_BATCH);
        assert!(load.per_batch() < BUSY_BATCH);
        // A long stall at low load: full batches of every send that waited.
        for _ in 0..3 {
            load.record(MAX_BATCH);
        }
        assert!(load.per_batch() >= BUSY_BATCH);
        assert_eq!(
            pace.next(&load),
            CHECKPOINT_EVERY,
            "one busy round is not load"
        );
        for _ in 0..40 {
            load.record(MAX_BATCH);
        }
        let per_batch = load.per_batch();
        assert!(per_batch > MAX_BATCH - 10, "{per_batch} after full batches");
        assert_eq!(
            pace.next(&load),
            CHECKPOINT_EVERY,
            "two busy rounds are not load"
        );
        assert_eq!(pace.next(&load), CHECKPOINT_EVERY_BUSY, "three are");
        assert_eq!(pace.next(&load), CHECKPOINT_EVERY_BUSY);
        // One small batch under load is not a quiet writer.
        load.record(1);
        assert!(load.per_batch() >= BUSY_BATCH);
        for _ in 0..60 {
            load.record(1);
        }
        let per_batch = load.per_batch();
        assert!(per_batch < INLINE_UNDER, "{per_batch} after batches of 1");
        assert_eq!(pace.next(&load), CHECKPOINT_EVERY, "quiet again at once");
    }

    /// Closing a descriptor of the database file would drop SQLite's locks on it, so the
    /// checkpointer's is opened once for the process and kept, however often a store is
    /// opened on the file.
    #[test]
    fn a_database_file_is_opened_once_for_the_process() {
        let path =
            std::env::temp_dir().join(format!("souq-files-{}-{}.db", std::process::id(), now_ms()));
        std::fs::write(&path, b"").expect("a file");
        let (a, b) = (Files::of(&path), Files::of(&path));
        let (a, b) = (a.expect("opened"), b.expect("opened"));
        assert!(Arc::ptr_eq(&a.database, &b.database), "opened twice");
        drop((a, b));
        let again = Files::of(&path).expect("opened");
        assert_eq!(Arc::strong_count(&again.database), 2, "not kept");
        let _ = std::fs::remove_file(&path);
    }

    /// A database removed and made anew at the same path is another file, with a
    /// descriptor of its own; the old one would sync what is gone.
    #[test]
    fn a_database_made_anew_at_the_same_path_is_opened_again() {
        let path = std::env::temp_dir().join(format!(
            "souq-files-anew-{}-{}.db",
            std::process::id(),
            now_ms()
        ));
        std::fs::write(&path, b"").expect("a file");
        let old = Files::of(&path).expect("opened");
        std::fs::remove_file(&path).expect("removed");
        std::fs::write(&path, b"").expect("made anew");
        let new = Files::of(&path).expect("opened");
        assert!(!Arc::ptr_eq(&old.database, &new.database), "the old file's");
        let _ = std::fs::remove_file(&path);
    }
}
