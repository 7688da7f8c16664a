//! The appender for PostgreSQL: a batch's messages in one statement, one round trip and
//! one commit, answered at once; then its marks, in a second statement of their own.
//! A node has several writers, each with a connection; `run` hands them batches (one at a
//! time at low load, so that a commit holds more sends; side by side under load).
//!
//! The writer remembers the chats it writes to (seq, status, operator). For a batch it
//! works out every message's seq from what it remembers, then sends one statement that
//! moves each chat from the state it remembers to the new one, and inserts the messages
//! of the chats it moved. The statement runs on its own (autocommit): it is atomic, so a
//! chat and its messages are stored together or not at all.
//!
//! What it remembers may be stale: another node wrote to the chat, or this node changed
//! it outside the writer (finished it, say). A chat whose row no longer matches is left
//! alone by the statement; the writer reads it again and tries its sends once more. Two
//! nodes can never give out the same seq: the row's update is the check, and PostgreSQL
//! re-checks it against the newest row when two updates meet.
//!
//! A repeated `local_id` from an earlier batch makes the insert fail (and with it the whole
//! statement): the sends still waiting are then stored one by one, which looks for repeats.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, PgConnection, PgPool, Postgres, Row};

use super::{
    Done, Job, Key, MAX_BATCH, Marked, Queues, Stored, Work, advance, alone, answer, key,
    same_error,
};
use crate::clock::system_ms as now_ms;
use crate::domain::Live;
use crate::domain::Receipt;
use crate::domain::{Error, Result};
use crate::store::Store;
use crate::store::entity::chat;

/// Most chats the writer remembers; past this it forgets them all and reads them again.
const CACHED_CHATS: usize = 100_000;

/// Rounds of reading stale chats again before the sends left are stored one by one.
const ROUNDS: usize = 3;

const READ_CHATS: &str = "SELECT id, org_id, inbox_id, domain_id, customer_id, operator_id, \
     status, last_seq, created_at, last_activity_at FROM chats WHERE id = ANY($1)";

/// Moves each chat from the state the writer remembers ($1-$7, $17) and inserts the
/// messages of the chats it moved ($8-$16); returns the new messages' ids.
///
/// `chats.id = ANY($1)` is there for the plan: a prepared statement's plan cannot know how
/// many chats a batch holds and guesses ten, and on a small table with many dead rows
/// (every send updates its chat) it would rather scan the whole table than look each
/// chat up. With the array it reads only the batch's chats, whatever the table's size.
const STORE_BATCH: &str = "\
WITH c (id, old_seq, new_seq, old_status, new_status, old_operator, new_operator,
       activity) AS (
    SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                         $6::int8[], $7::int8[], $17::int8[])
), moved AS (
    UPDATE chats SET last_seq = c.new_seq, status = c.new_status,
                     operator_id = c.new_operator, last_activity_at = c.activity
    FROM c
    WHERE chats.id = ANY($1) AND chats.id = c.id
      AND chats.last_seq = c.old_seq AND chats.status = c.old_status
      AND chats.operator_id IS NOT DISTINCT FROM c.old_operator
    RETURNING chats.id
), stored AS (
    INSERT INTO messages
        (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at)
    SELECT m.chat_id, m.seq, m.author_kind, m.author_id, m.local_id, m.payload, m.text,
           m.file_id, $8
    FROM unnest($9::int8[], $10::int8[], $11::text[], $12::int8[], $13::text[], $14::text[],
                $15::text[], $16::text[])
         WITH ORDINALITY AS m (chat_id, seq, author_kind, author_id, local_id, payload, text,
                               file_id, n)
    WHERE m.chat_id IN (SELECT id FROM moved)
    ORDER BY m.n
    RETURNING id, chat_id, seq
)
SELECT id, chat_id, seq FROM stored";

/// [`STORE_BATCH`] for one message, the batch of a node at low load: the same checks and
/// the same result, in a statement that PostgreSQL runs in about a third less time (no
/// arrays to unnest, one row to join).
const STORE_ONE: &str = "\
WITH moved AS (
    UPDATE chats SET last_seq = $3, status = $5, operator_id = $7, last_activity_at = $8
    WHERE id = $1 AND last_seq = $2 AND status = $4 AND operator_id IS NOT DISTINCT FROM $6
    RETURNING id
)
INSERT INTO messages
    (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at)
SELECT id, $3, $9, $10, $11, $12, $13, $14, $15 FROM moved
RETURNING id, chat_id, seq";

/// Moves the cursors of members ($1-$5: chat, member kind and id, received, read) at $6,
/// each at most up to its chat's newest message: their receipt rows (cursors only go
/// forward), and the received and read times of the messages they now have. Several marks
/// of one member count as one, with the highest cursors.
///
/// Returns rows of three kinds, for the writer to match up: `chat` (its last seq; a chat
/// without one does not exist), `saved` (a member's cursors after) and `old` (before).
/// Every join is an index lookup per row: a prepared statement's plan cannot know how many
/// marks a batch holds, and a join of two batch-sized lists can become quadratic. The
/// `= ANY($1)` conditions keep chats and receipts to the batch's chats, as in
/// [`STORE_BATCH`].
///
/// The messages to mark start above the old cursors; a message gets a time only if it has
/// none, so two statements that overlap mark it once.
const MARK_BATCH: &str = "\
WITH m (chat_id, member_kind, member_id, received, read) AS (
    SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
), want AS (
    SELECT g.*, COALESCE(r.received_seq, 0) AS old_received,
           COALESCE(r.read_seq, 0) AS old_read
    FROM (
        SELECT m.chat_id, m.member_kind, m.member_id,
               max(m.received) AS received, max(m.read) AS read
        FROM m JOIN chats c ON c.id = m.chat_id
        WHERE c.id = ANY($1) AND m.received <= c.last_seq AND m.read <= c.last_seq
        GROUP BY m.chat_id, m.member_kind, m.member_id
    ) g
    LEFT JOIN receipts r ON r.chat_id = ANY($1) AND r.chat_id = g.chat_id
        AND r.member_kind = g.member_kind AND r.member_id = g.member_id
), saved AS (
    INSERT INTO receipts AS r
        (chat_id, member_kind, member_id, received_seq, read_seq, received_at, read_at)
    SELECT chat_id, member_kind, member_id, received, read,
           CASE WHEN received > 0 THEN $6 END, CASE WHEN read > 0 THEN $6 END
    FROM want
    ON CONFLICT (chat_id, member_kind, member_id) DO UPDATE SET
        received_seq = GREATEST(r.received_seq, EXCLUDED.received_seq),
        received_at = CASE WHEN EXCLUDED.received_seq > r.received_seq THEN $6
                           ELSE r.received_at END,
        read_seq = GREATEST(r.read_seq, EXCLUDED.read_seq),
        read_at = CASE WHEN EXCLUDED.read_seq > r.read_seq THEN $6 ELSE r.read_at END
    RETURNING r.chat_id, r.member_kind, r.member_id, r.received_seq, r.read_seq,
              r.received_at, r.read_at
), marked AS (
    UPDATE messages AS msg SET
        received_at = COALESCE(msg.received_at, $6),
        read_at = CASE WHEN msg.read_at IS NULL AND msg.seq <= w.read THEN $6
                       ELSE msg.read_at END
    FROM want w
    WHERE msg.chat_id = w.chat_id
      AND msg.seq > LEAST(w.old_received, w.old_read) AND msg.seq <= w.received
      AND (msg.received_at IS NULL OR (msg.read_at IS NULL AND msg.seq <= w.read))
      AND (msg.author_kind = 'customer') = (w.member_kind <> 'customer')
)
SELECT 'chat', c.id, NULL::text, 0::int8, c.last_seq, 0::int8, NULL::int8, NULL::int8
FROM chats c WHERE c.id = ANY($1)
UNION ALL
SELECT 'saved', chat_id, member_kind, member_id, received_seq, read_seq, received_at, read_at
FROM saved
UNION ALL
SELECT 'old', chat_id, member_kind, member_id, old_received, old_read, NULL, NULL FROM want";

/// The writer's connection and what it remembers of the chats it writes to.
pub(super) struct Writer {
    store: Store,
    pool: PgPool,
    /// Held between batches: taking one from the pool for each statement costs a round
    /// trip (the pool pings it). Given back after an error, and taken again next batch.
    conn: Option<PoolConnection<Postgres>>,
    chats: HashMap<i64, chat::Model>,
}

/// Jobs waiting from which on the writers share the chats out: below it (low load) one
/// batch at a time is in flight, and what comes during its commit waits for the next
/// one, so that a commit (PostgreSQL's largest cost per send) holds more sends.
pub(super) const SPILL: usize = 16;

/// How long after the last batch went the batches in flight may hold up fewer than
/// [`SPILL`] jobs before a free writer takes them: at low load most commits take well
/// under this (BENCHMARKS.md), and a batch that waits longer on a row another node holds
/// holds up other chats' sends no longer than this, while a writer is free. (A slow WAL
/// flush holds every commit of the server, the other writer's too.)
pub(super) const STUCK: Duration = Duration::from_millis(2);

/// From this many jobs waiting on, the writers take no more from their queue until some
/// go (what one take brings, up to twice [`MAX_BATCH`], comes in whole): the queue is
/// bounded, and holds up whoever sends. Jobs of chats in flight count too, so one chat
/// with this many sends waiting behind its batch holds up the others until that is done.
const MAX_WAITING: usize = 4 * MAX_BATCH;

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
    pub(super) fn now(waiting: usize, in_flight: usize, newest: Duration) -> Take {
        if waiting == 0 {
            Take::Nothing
        } else if waiting >= SPILL {
            Take::Shares
        } else if in_flight == 0 || newest >= STUCK {
            Take::All
        } else {
            Take::Nothing
        }
    }
}

/// Stores batches of whatever sends are waiting, with `writers` (each its own connection),
/// until the handle is dropped.
///
/// At low load (fewer than [`SPILL`] jobs waiting) a writer takes every job waiting, but
/// only while no other batch is in flight, or the last went [`STUCK`] ago. Under
/// load, each writer takes its share of the chats (`chat_id` modulo their number) and
/// what waits in the shares of writers at work, so that batches run side by side: one
/// batch's statement while another's commits ([`Take`]). Either way a chat's jobs are in
/// at most one batch in flight (`busy`), so they are stored in the order they came; and
/// a writer finds what the last one learnt of its batch's chats in `chats`, whose entries
/// it holds while it writes. `backlog` tells `Appender::mark` how many jobs wait here.
///
/// The batches are stored by futures of this task: a panic in one stops every writer of
/// the node, and their callers hear that the writer stopped.
pub(super) async fn run(
    writers: Vec<Writer>,
    bus: Arc<dyn Live>,
    mut queues: Queues,
    backlog: Arc<AtomicUsize>,
) {
    let share = writers.len();
    if share == 0 {
        // The store always holds a connection for at least one: callers hear that the
        // writer stopped rather than wait.
        tracing::error!("no PostgreSQL message writer");
        return;
    }
    let mut free: Vec<Option<Writer>> = Vec::with_capacity(share);
    // Connected at start, so the first send does not wait for a connection (and the
    // writers' backends are there from the start for whoever watches the database). If
    // PostgreSQL is away, the first batch tries again.
    for mut writer in writers {
        writer.conn = writer.pool.acquire().await.ok();
        free.push(Some(writer));
    }
    let mut chats: HashMap<i64, chat::Model> = HashMap::new();
    // Each writer's share of the chats, waiting in order.
    let mut waiting: Vec<VecDeque<Job>> = (0..share).map(|_| VecDeque::new()).collect();
    let mut waiting_len = 0;
    let mut busy: HashSet<i64> = HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    let mut incoming = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    // Wakes the task once the newest batch in flight has been for `STUCK`.
    let stuck = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(stuck);
    let (mut newest, mut armed) = (Instant::now(), false);
    loop {
        let take = Take::now(waiting_len, in_flight.len(), newest.elapsed());
        for n in 0..share {
            if take == Take::Nothing || waiting_len == 0 {
                break;
            }
            let Some(mut writer) = free[n].take() else {
                continue;
            };
            let mut batch = Batch::default();
            if take == Take::Shares {
                batch.take(&mut waiting[n], &busy);
                for m in (0..share).filter(|&m| m != n && free[m].is_none()) {
                    batch.take(&mut waiting[m], &busy);
                }
            } else {
                for queue in &mut waiting {
                    batch.take(queue, &busy);
                }
            }
            if batch.jobs.is_empty() {
                free[n] = Some(writer);
                continue;
            }
            waiting_len -= batch.jobs.len();
            if chats.len() > CACHED_CHATS {
                chats.clear();
            }
            let ids: Vec<i64> = batch.jobs.iter().map(|job| job.chat_id).collect();
            for id in &ids {
                if let Some(chat) = chats.remove(id) {
                    writer.chats.insert(*id, chat);
                }
            }
            busy.extend(ids.iter().copied());
            in_flight.push(store(writer, n, batch.jobs, bus.clone(), ids));
            newest = Instant::now();
            stuck.as_mut().reset(newest + STUCK);
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
            _ = queues.next(&mut incoming), if open && waiting_len < MAX_WAITING => {
                open = !incoming.is_empty();
                waiting_len += incoming.len();
                for job in incoming.drain(..) {
                    waiting[job.chat_id.rem_euclid(share as i64) as usize].push_back(job);
                }
            }
            // Once only: what waits then is taken, or waits for an answer to free it.
            () = &mut stuck, if armed && waiting_len > 0 => armed = false,
        }
    }
}

/// A batch being taken from what waits.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) jobs: Vec<Job>,
    sends: usize,
    marks: usize,
}

impl Batch {
    /// Takes from `waiting`, in order, the jobs of chats not `busy` in another batch, up
    /// to [`MAX_BATCH`] sends and as many marks in all. Once a chat has a job left behind,
    /// its later jobs stay too, so a chat's jobs always go in the order they came.
    pub(super) fn take(&mut self, waiting: &mut VecDeque<Job>, busy: &HashSet<i64>) {
        let mut left_behind: HashSet<i64> = HashSet::new();
        let mut kept = VecDeque::new();
        for job in waiting.drain(..) {
            let count = if job.append().is_some() {
                &mut self.sends
            } else {
                &mut self.marks
            };
            if *count == MAX_BATCH
                || busy.contains(&job.chat_id)
                || left_behind.contains(&job.chat_id)
            {
                left_behind.insert(job.chat_id);
                kept.push_back(job);
            } else {
                *count += 1;
                self.jobs.push(job);
            }
        }
        *waiting = kept;
    }
}

/// Stores a batch with `writer`: its messages, announced and answered as soon as their
/// statement commits, then its marks in a statement of their own (so a send never waits
/// for the marks of its own batch; they are stored after its messages anyway, see
/// `round`). Gives back the writer (the `n`th) and the chats of the batch.
async fn store(
    mut writer: Writer,
    n: usize,
    mut sends: Vec<Job>,
    bus: Arc<dyn Live>,
    ids: Vec<i64>,
) -> (Writer, usize, Vec<i64>) {
    let mut marks: Vec<Job> = sends.extract_if(.., |job| job.append().is_none()).collect();
    for jobs in [&mut sends, &mut marks] {
        if !jobs.is_empty() {
            let outcomes = writer.commit(jobs).await;
            answer(&*bus, jobs.drain(..), outcomes);
        }
    }
    (writer, n, ids)
}

/// One round's plan for a chat: as remembered, and as after the round's messages.
struct Planned {
    was: chat::Model,
    now: chat::Model,
}

impl Writer {
    /// The writer of a PostgreSQL store (`None` for another database).
    pub(super) fn new(store: Store) -> Option<Writer> {
        if store.backend() != sea_orm::DbBackend::Postgres {
            return None;
        }
        let pool = store.db().get_postgres_connection_pool().clone();
        Some(Writer {
            store,
            pool,
            conn: None,
            chats: HashMap::new(),
        })
    }

    /// Stores a batch; returns one outcome per job, in order. Never fails as a whole:
    /// sends the batch statement could not store are stored one by one.
    pub(super) async fn commit(&mut self, jobs: &[Job]) -> Vec<Result<Done>> {
        if self.chats.len() > CACHED_CHATS {
            self.chats.clear();
        }
        let mut outcomes: Vec<Option<Result<Done>>> = jobs.iter().map(|_| None).collect();
        let mut conn = match self.conn.take() {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await,
        };
        for _ in 0..ROUNDS {
            let waiting: Vec<usize> = (0..jobs.len()).filter(|i| outcomes[*i].is_none()).collect();
            if waiting.is_empty() {
                break;
            }
            let tried = match &mut conn {
                Ok(conn) => self.round(conn, jobs, &waiting, &mut outcomes).await,
                Err(e) => Err(std::mem::replace(e, sqlx::Error::PoolClosed)),
            };
            if let Err(e) = tried {
                tracing::debug!(error = %e, sends = waiting.len(), "a batch failed; storing its sends one by one");
                self.chats.clear();
                // The connection may be broken: the pool checks it before lending it again.
                conn = Err(e);
                break;
            }
        }
        self.conn = conn.ok();
        let mut done = Vec::with_capacity(jobs.len());
        for (job, outcome) in jobs.iter().zip(outcomes) {
            done.push(match outcome {
                Some(outcome) => outcome,
                None => alone(&self.store, job).await,
            });
        }
        done
    }

    /// One statement for the waiting jobs. Decides the outcome of every job whose chat
    /// was as remembered (and of those refused outright); the others stay waiting, and
    /// their chats are read again next round.
    async fn round(
        &mut self,
        conn: &mut PgConnection,
        jobs: &[Job],
        waiting: &[usize],
        outcomes: &mut [Option<Result<Done>>],
    ) -> Result<(), sqlx::Error> {
        let unknown: Vec<i64> = waiting
            .iter()
            .filter(|&&i| jobs[i].append().is_some())
            .map(|&i| jobs[i].chat_id)
            .filter(|id| !self.chats.contains_key(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            for row in sqlx::query(READ_CHATS)
                .bind(&unknown)
                .fetch_all(&mut *conn)
                .await?
            {
                let chat = chat_of(&row)?;
                self.chats.insert(chat.id, chat);
            }
        }

        // Seqs, in job order within each chat; a repeat of a local_id within the batch
        // gets the message of its first job.
        let now = now_ms();
        let mut planned: HashMap<i64, Planned> = HashMap::new();
        let mut first_with_key: HashMap<Key<'_>, usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        let mut rows: Vec<(usize, i64, bool)> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        for &i in waiting {
            let job = &jobs[i];
            let a = match &job.work {
                Work::Append(a) => a,
                Work::Mark(_) => {
                    marks.push(i);
                    continue;
                }
            };
            if let Some(key) = key(job) {
                if let Some(&first) = first_with_key.get(&key) {
                    copies.push((i, first));
                    continue;
                }
                first_with_key.insert(key, i);
            }
            let chat = match planned.get(&job.chat_id) {
                Some(p) => p.now.clone(),
                None => match self.chats.get(&job.chat_id) {
                    Some(chat) => chat.clone(),
                    None => {
                        outcomes[i] = Some(Err(Error::NotFound("chat")));
                        continue;
                    }
                },
            };
            let mut next = chat.clone();
            match advance(&mut next, a, now) {
                Ok(took) => {
                    rows.push((i, next.last_seq, took));
                    planned
                        .entry(job.chat_id)
                        .or_insert_with(|| Planned {
                            was: chat.clone(),
                            now: chat,
                        })
                        .now = next;
                }
                // A refused send may repeat one stored before the chat finished: only a
                // lookup can tell, so it is stored alone.
                Err(_) if a.local_id.is_some() => {
                    outcomes[i] = Some(alone(&self.store, job).await);
                }
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }

        if !rows.is_empty() {
            let stored = store_batch(conn, jobs, &planned, &rows, now).await?;
            let mut moved = HashSet::new();
            for &(i, seq, took) in &rows {
                let job = &jobs[i];
                if let (Some(&id), Some(a)) = (stored.get(&(job.chat_id, seq)), job.append()) {
                    let stored = Stored::new(job.chat_id, a, id, seq, now, took);
                    outcomes[i] = Some(Ok(Done::Stored(stored)));
                    moved.insert(job.chat_id);
                }
            }
            for (chat_id, plan) in planned {
                if moved.contains(&chat_id) {
                    self.chats.insert(chat_id, plan.now);
                } else {
                    // Not as remembered: read it again next round.
                    self.chats.remove(&chat_id);
                }
            }
        }
        for (i, first) in copies {
            outcomes[i] = match &outcomes[first] {
                Some(Ok(Done::Stored(first))) => {
                    Some(Ok(Done::Stored(Stored::repeat(first.message.clone()))))
                }
                Some(Ok(Done::Marked(_))) => None,
                Some(Err(e)) => Some(Err(same_error(e))),
                None => None,
            };
        }
        // After the messages: a mark checks its seqs against the chat as stored now.
        if !marks.is_empty() {
            mark_batch(conn, jobs, &marks, now, outcomes).await?;
        }
        Ok(())
    }
}

/// Runs [`MARK_BATCH`] for the mark jobs `marks`, and decides their outcomes.
async fn mark_batch(
    conn: &mut PgConnection,
    jobs: &[Job],
    marks: &[usize],
    now: i64,
    outcomes: &mut [Option<Result<Done>>],
) -> Result<(), sqlx::Error> {
    let n = marks.len();
    let (mut chat_id, mut member_id) = (vec_of(n), vec_of(n));
    let (mut kind, mut received, mut read) = (vec_of(n), vec_of(n), vec_of(n));
    for &i in marks {
        let Work::Mark(m) = &jobs[i].work else {
            continue;
        };
        chat_id.push(jobs[i].chat_id);
        kind.push(m.kind);
        member_id.push(m.member_id);
        received.push(m.received);
        read.push(m.read);
    }
    let rows = sqlx::query(MARK_BATCH)
        .bind(chat_id)
        .bind(kind)
        .bind(member_id)
        .bind(received)
        .bind(read)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    let mut last_seqs: HashMap<i64, i64> = HashMap::new();
    // A member is (chat, whether a customer, id): kinds compared, not copied, per row.
    let mut saved: HashMap<(i64, bool, i64), Receipt> = HashMap::new();
    let mut old: HashMap<(i64, bool, i64), (i64, i64)> = HashMap::new();
    for row in rows {
        let what: &str = row.try_get(0)?;
        let chat_id: i64 = row.try_get(1)?;
        let member = |row: &sqlx::postgres::PgRow| -> Result<_, sqlx::Error> {
            Ok((
                chat_id,
                row.try_get::<&str, _>(2)? == "customer",
                row.try_get(3)?,
            ))
        };
        let (a, b): (i64, i64) = (row.try_get(4)?, row.try_get(5)?);
        match what {
            "chat" => {
                last_seqs.insert(chat_id, a);
            }
            "saved" => {
                let receipt = Receipt {
                    chat_id,
                    received_seq: a,
                    read_seq: b,
                    received_at: row.try_get(6)?,
                    read_at: row.try_get(7)?,
                };
                saved.insert(member(&row)?, receipt);
            }
            _ => {
                old.insert(member(&row)?, (a, b));
            }
        }
    }
    for &i in marks {
        let (job, Work::Mark(m)) = (&jobs[i], &jobs[i].work) else {
            continue;
        };
        let Some(&last_seq) = last_seqs.get(&job.chat_id) else {
            outcomes[i] = Some(Err(Error::NotFound("chat")));
            continue;
        };
        if let Err(e) = m.check(last_seq) {
            outcomes[i] = Some(Err(e));
            continue;
        }
        let member = (job.chat_id, m.kind == "customer", m.member_id);
        let Some(receipt) = saved.get(&member).cloned() else {
            continue; // left waiting: stored alone after the rounds
        };
        let (old_received, old_read) = old.get(&member).copied().unwrap_or((0, 0));
        let moved = receipt.received_seq > old_received || receipt.read_seq > old_read;
        outcomes[i] = Some(Ok(Done::Marked(Marked { receipt, moved })));
    }
    Ok(())
}

/// Runs [`STORE_BATCH`] (or [`STORE_ONE`]); returns the ids of the stored messages by
/// (chat, seq).
async fn store_batch(
    conn: &mut PgConnection,
    jobs: &[Job],
    planned: &HashMap<i64, Planned>,
    rows: &[(usize, i64, bool)],
    now: i64,
) -> Result<HashMap<(i64, i64), i64>, sqlx::Error> {
    if let ([(i, _, _)], [p]) = (rows, planned.values().collect::<Vec<_>>().as_slice())
        && let Some(a) = jobs[*i].append()
    {
        let stored = sqlx::query(STORE_ONE)
            .bind(p.was.id)
            .bind(p.was.last_seq)
            .bind(p.now.last_seq)
            .bind(p.was.status.as_str())
            .bind(p.now.status.as_str())
            .bind(p.was.operator_id)
            .bind(p.now.operator_id)
            .bind(p.now.last_activity_at)
            .bind(a.kind)
            .bind(a.author_id)
            .bind(a.local_id.as_deref())
            .bind(a.payload)
            .bind(a.text.as_str())
            .bind(a.file_id.as_deref())
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
        return stored.iter().map(stored_id).collect();
    }
    let n = planned.len();
    let (mut id, mut old_seq, mut new_seq) = (vec_of(n), vec_of(n), vec_of(n));
    let (mut old_status, mut new_status) = (vec_of(n), vec_of(n));
    let (mut old_operator, mut new_operator) = (vec_of(n), vec_of(n));
    let mut activity = vec_of(n);
    // In id order, so that two nodes' batches lock shared chats in the same order.
    let mut chats: Vec<&Planned> = planned.values().collect();
    chats.sort_unstable_by_key(|p| p.was.id);
    for p in chats {
        id.push(p.was.id);
        old_seq.push(p.was.last_seq);
        new_seq.push(p.now.last_seq);
        old_status.push(p.was.status.as_str());
        new_status.push(p.now.status.as_str());
        old_operator.push(p.was.operator_id);
        new_operator.push(p.now.operator_id);
        activity.push(p.now.last_activity_at);
    }
    let n = rows.len();
    let (mut chat_id, mut seq, mut author_id) = (vec_of(n), vec_of(n), vec_of(n));
    let (mut author_kind, mut payload, mut text) = (vec_of(n), vec_of(n), vec_of(n));
    let (mut local_id, mut file_id) = (vec_of(n), vec_of(n));
    for &(i, s, _) in rows {
        let (job, Some(a)) = (&jobs[i], jobs[i].append()) else {
            continue;
        };
        chat_id.push(job.chat_id);
        seq.push(s);
        author_kind.push(a.kind);
        author_id.push(a.author_id);
        local_id.push(a.local_id.as_deref());
        payload.push(a.payload);
        text.push(a.text.as_str());
        file_id.push(a.file_id.as_deref());
    }
    let stored = sqlx::query(STORE_BATCH)
        .bind(id)
        .bind(old_seq)
        .bind(new_seq)
        .bind(old_status)
        .bind(new_status)
        .bind(old_operator)
        .bind(new_operator)
        .bind(now)
        .bind(chat_id)
        .bind(seq)
        .bind(author_kind)
        .bind(author_id)
        .bind(local_id)
        .bind(payload)
        .bind(text)
        .bind(file_id)
        .bind(activity)
        .fetch_all(&mut *conn)
        .await?;
    stored.iter().map(stored_id).collect()
}

/// A row `id, chat_id, seq` of a stored message, as ((chat, seq), id).
fn stored_id(row: &sqlx::postgres::PgRow) -> Result<((i64, i64), i64), sqlx::Error> {
    Ok(((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?))
}

fn vec_of<T>(n: usize) -> Vec<T> {
    Vec::with_capacity(n)
}

fn chat_of(row: &sqlx::postgres::PgRow) -> Result<chat::Model, sqlx::Error> {
    Ok(chat::Model {
        id: row.try_get(0)?,
        org_id: row.try_get(1)?,
        inbox_id: row.try_get(2)?,
        domain_id: row.try_get(3)?,
        customer_id: row.try_get(4)?,
        operator_id: row.try_get(5)?,
        status: row.try_get(6)?,
        last_seq: row.try_get(7)?,
        created_at: row.try_get(8)?,
        last_activity_at: row.try_get(9)?,
    })
}
