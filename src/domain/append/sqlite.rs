//! The appender for SQLite: a thread of its own with its own connection. sqlx runs each
//! SQLite statement on a worker thread and hands the result back, a round trip of two
//! thread wake-ups per statement; here a whole batch is one hand-over, and its statements
//! are prepared once and run in place.
//!
//! It takes the same writer lock as every other SQLite write of the process, so writers
//! never meet in SQLite's busy handler.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Mutex, mpsc};

use super::{Job, MAX_BATCH, Stored, advance, answer};
use crate::bus::Bus;
use crate::domain::{Error, Result, now_ms};
use crate::store::entity::{chat, message};

/// The writer's connection and the checkpointer's.
pub(super) struct Connections {
    writer: Connection,
    checkpoints: Connection,
}

/// Opens both connections with the pool's settings (WAL, synchronous NORMAL, foreign keys).
pub(super) fn connect(file: &Path) -> rusqlite::Result<Connections> {
    let writer = open(file)?;
    // The writer never checkpoints the WAL itself (a checkpoint inside a commit stalls
    // every send behind it for milliseconds); a second thread does, beside it.
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(Connections {
        writer,
        checkpoints: open(file)?,
    })
}

/// Starts the writer thread and the checkpoint thread beside it.
pub(super) fn start(conns: Connections, lock: Arc<Mutex<()>>, bus: Bus, rx: mpsc::Receiver<Job>) {
    let Connections {
        writer,
        checkpoints,
    } = conns;
    let (alive, writer_gone) = std::sync::mpsc::channel::<()>();
    let started = std::thread::Builder::new()
        .name("souq-writer".into())
        .spawn(move || {
            run(writer, lock, bus, rx);
            drop(alive);
        });
    if let Err(e) = started {
        // Only when the system is out of threads; every send then fails with an error.
        tracing::error!(error = %e, "cannot start the SQLite message writer");
        return;
    }
    let started = std::thread::Builder::new()
        .name("souq-checkpoint".into())
        .spawn(move || checkpoint(checkpoints, writer_gone));
    if let Err(e) = started {
        tracing::warn!(error = %e, "no WAL checkpoint thread; the pool's writes checkpoint");
    }
}

/// How often the WAL is copied back into the database file. Each checkpoint shows in the
/// tail of send latency (at 10 msg/s × 200 senders: p99 about 3 ms checkpointing every
/// 0.5 s, 2-2.4 ms every 2 s, 1.7-1.9 ms every 10 s), and a longer interval lets the WAL
/// grow larger between checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Checkpoints the WAL without blocking writers (PASSIVE) until the writer stops.
fn checkpoint(conn: Connection, writer_gone: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = writer_gone.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

pub(super) fn open(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

fn run(mut conn: Connection, lock: Arc<Mutex<()>>, bus: Bus, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            let Ok(job) = rx.try_recv() else { break };
            batch.push(job);
        }
        let committed = {
            let _writer = lock.blocking_lock();
            commit(&mut conn, &batch)
        };
        match committed {
            Ok(outcomes) => answer(&bus, batch.drain(..), outcomes),
            Err(e) => {
                tracing::debug!(error = %e, sends = batch.len(), "a batch failed; retrying its sends one by one");
                for job in batch.drain(..) {
                    let outcome = {
                        let _writer = lock.blocking_lock();
                        commit(&mut conn, std::slice::from_ref(&job))
                    };
                    let outcome = match outcome {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(Error::Internal("a send got no outcome".into()))
                        }),
                        Err(e) => Err(Error::Internal(format!("cannot store the message: {e}"))),
                    };
                    answer(&bus, std::iter::once(job), vec![outcome]);
                }
            }
        }
    }
}

/// Stores the batch in one transaction, send by send: each one sees the ones before it.
pub(super) fn commit(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<Vec<Result<Stored>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        outcomes.push(store_one(&tx, job, now)?);
    }
    tx.commit()?;
    Ok(outcomes)
}

fn store_one(conn: &Connection, job: &Job, now: i64) -> rusqlite::Result<Result<Stored>> {
    let a = &job.append;
    if let Some(local_id) = &a.local_id {
        let first = conn
            .prepare_cached(
                "SELECT id, chat_id, seq, author_kind, author_id, local_id, payload, text, \
                 file_id, created_at, received_at, read_at FROM messages \
                 WHERE chat_id = ?1 AND author_kind = ?2 AND author_id = ?3 AND local_id = ?4",
            )?
            .query_row(params![job.chat_id, a.kind, a.author_id, local_id], |r| {
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
            .optional()?;
        if let Some(first) = first {
            return Ok(Ok(Stored::repeat(first.into())));
        }
    }
    let chat = conn
        .prepare_cached(
            "SELECT id, org_id, inbox_id, domain_id, customer_id, operator_id, status, \
             last_seq, created_at, last_activity_at FROM chats WHERE id = ?1",
        )?
        .query_row([job.chat_id], |r| {
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
        .optional()?;
    let Some(mut chat) = chat else {
        return Ok(Err(Error::NotFound("chat")));
    };
    let took = match advance(&mut chat, a, now) {
        Ok(took) => took,
        Err(e) => return Ok(Err(e)),
    };
    conn.prepare_cached(
        "UPDATE chats SET last_seq = ?1, status = ?2, operator_id = ?3, last_activity_at = ?4 \
         WHERE id = ?5",
    )?
    .execute(params![
        chat.last_seq,
        chat.status,
        chat.operator_id,
        chat.last_activity_at,
        chat.id
    ])?;
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO messages \
             (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        )?
        .query_row(
            params![
                job.chat_id,
                chat.last_seq,
                a.kind,
                a.author_id,
                a.local_id,
                a.payload,
                a.text,
                a.file_id,
                now
            ],
            |r| r.get(0),
        )?;
    Ok(Ok(Stored::new(job, id, chat.last_seq, now, took)))
}
