//! The SQLite journal: carries a plan out on a connection of its own, statement by
//! statement (SQLite runs them in process), each prepared once.
//!
//! A batch's round is one write transaction, from reading its chats to carrying the plan
//! out: BEGIN IMMEDIATE takes the file's write lock at once, so nothing can change the
//! chats in between, and the states it gives the planner are fresh. It remembers the chats
//! it wrote, as of its own last commit; another connection's commit (the pool, another
//! process) changes SQLite's `data_version`, and it then forgets them all.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::write::batch::Read;
use crate::domain::write::plan::{
    Advance, ChatState, Chats, Executed, Job, Key, Known, Move, Plan,
};
use crate::domain::{ChatStatus, Message, Receipt};
use crate::store::entity::message;

/// The journal's connection and what it remembers of the chats it writes to.
#[derive(Debug)]
pub(crate) struct Journal {
    conn: Connection,
    chats: HashMap<i64, ChatState>,
    /// `PRAGMA data_version` when `chats` was last known right.
    data_version: i64,
    /// A write transaction is open (from the round's read to its end).
    in_tx: bool,
    cached_chats: usize,
}

impl Journal {
    pub(crate) fn new(conn: Connection, cached_chats: usize) -> Journal {
        Journal {
            conn,
            chats: HashMap::new(),
            data_version: -1,
            in_tx: false,
            cached_chats,
        }
    }

    /// Runs `f` inside the round's transaction, opened first if need be; a failure rolls
    /// the transaction back (nothing of the round is kept).
    fn in_tx<T>(
        &mut self,
        f: impl FnOnce(&mut Journal) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        if !self.in_tx {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            self.in_tx = true;
            // Read inside the transaction: no other connection can commit until it ends.
            let version: i64 = self
                .conn
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?;
            if version != self.data_version || self.chats.len() > self.cached_chats {
                self.chats.clear();
                self.data_version = version;
            }
        }
        let done = f(self);
        if done.is_err() {
            self.rollback();
        }
        done
    }

    fn rollback(&mut self) {
        if self.in_tx {
            self.in_tx = false;
            // What it read may be what failed (a seq taken behind its back): read again.
            self.chats.clear();
            // Fails only when no transaction is open, which is what it is there to ensure.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn commit(&mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        // Its own commits leave data_version as it was.
        self.in_tx = false;
        Ok(())
    }

    /// Ends a round that only read (the batch's last look-up): nothing was written, and
    /// what it read stays known. A no-op without one.
    pub(crate) fn end_read(&mut self) {
        if self.in_tx {
            self.in_tx = false;
            // Fails only when no transaction is open, which is what it is there to ensure.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Gives up a round begun and not carried out (the caller stopped on an error of its
    /// own); a no-op otherwise.
    pub(crate) fn abandon(&mut self) {
        self.rollback();
    }

    /// The round's chats, inside its transaction: all fresh, the transaction holding the
    /// file's write lock.
    pub(crate) fn chats(&mut self, read: &Read) -> rusqlite::Result<Chats> {
        self.in_tx(|j| {
            let mut chats = Chats::with_capacity(read.ids.len());
            for &id in &read.ids {
                let state = match j.chats.get(&id) {
                    Some(state) if !read.fresh.contains(&id) => Some(state.clone()),
                    _ => read_chat(&j.conn, id)?,
                };
                if let Some(state) = state {
                    j.chats.insert(id, state.clone());
                    chats.insert(id, Known { state, fresh: true });
                }
            }
            Ok(chats)
        })
    }

    /// The stored messages that these sends repeat.
    pub(crate) fn stored(&mut self, keys: &[Key<'_>]) -> rusqlite::Result<Vec<Message>> {
        self.in_tx(|j| {
            let mut found = Vec::new();
            for key in keys {
                found.extend(find_repeat(&j.conn, key)?);
            }
            Ok(found)
        })
    }

    /// Carries the plan out and commits: the chats still as known move, then the messages
    /// of those chats go in, then the cursors of their members (and of chats without a
    /// move) move. A send that repeats a stored `local_id` rolls it all back.
    pub(crate) fn execute(&mut self, plan: &Plan, jobs: &[Job]) -> rusqlite::Result<Executed> {
        let executed = self.in_tx(|j| {
            let mut stale = Vec::new();
            for m in &plan.moves {
                if move_chat(&j.conn, m)? {
                    j.chats.insert(m.now.id, m.now.clone());
                } else {
                    j.chats.remove(&m.now.id);
                    stale.push(m.now.id);
                }
            }
            let mut ids = Vec::with_capacity(plan.inserts.len());
            for insert in &plan.inserts {
                if stale.contains(&insert.chat_id) {
                    ids.push(None);
                    continue;
                }
                let Some(send) = jobs.get(insert.job).and_then(Job::send) else {
                    ids.push(None);
                    continue;
                };
                // A repeated local_id inserts nothing; any other conflict, such as a seq
                // taken behind the writer's back, fails the round. No RETURNING: SQLite
                // runs it as a trigger in the temp database, which costs more than the
                // insert.
                let inserted = j
                    .conn
                    .prepare_cached(
                        "INSERT INTO messages \
                         (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (chat_id, author_kind, author_id, local_id) DO NOTHING",
                    )?
                    .execute(params![
                        insert.chat_id,
                        insert.seq,
                        send.author.kind(),
                        send.author.id(),
                        send.local_id,
                        send.payload.as_str(),
                        send.text,
                        send.file_id(),
                        plan.now
                    ])?;
                if inserted == 0 {
                    return Ok(Executed::Repeated);
                }
                ids.push(Some(j.conn.last_insert_rowid()));
            }
            let mut receipts = Vec::with_capacity(plan.advances.len());
            for a in &plan.advances {
                receipts.push(if stale.contains(&a.chat_id) {
                    None
                } else {
                    Some(advance(&j.conn, a, plan.now)?)
                });
            }
            Ok(Executed::Stored {
                ids,
                stale,
                receipts,
            })
        })?;
        match executed {
            Executed::Repeated => self.rollback(),
            Executed::Stored { .. } => {
                if let Err(e) = self.commit() {
                    self.rollback();
                    return Err(e);
                }
            }
        }
        Ok(executed)
    }

    /// Sets how long a write waits for another process that holds the file.
    pub(crate) fn busy_wait(&self, wait: Duration) -> rusqlite::Result<()> {
        self.conn.busy_timeout(wait)
    }
}

fn read_chat(conn: &Connection, chat_id: i64) -> rusqlite::Result<Option<ChatState>> {
    let row = conn
        .prepare_cached(
            "SELECT id, last_seq, status, operator_id, last_activity_at FROM chats WHERE id = ?1",
        )?
        .query_row([chat_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((id, last_seq, status, operator_id, last_activity_at)) = row else {
        return Ok(None);
    };
    let status = ChatStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(
            2,
            format!("status {status:?}"),
            rusqlite::types::Type::Text,
        )
    })?;
    Ok(Some(ChatState {
        id,
        last_seq,
        status,
        operator_id,
        last_activity_at,
    }))
}

/// The stored message whose (chat, author, local_id) the key names, if any.
fn find_repeat(conn: &Connection, key: &Key<'_>) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(
        "SELECT id, chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, \
         created_at, received_at, read_at, pushed_at FROM messages \
         WHERE chat_id = ?1 AND author_kind = ?2 AND author_id = ?3 AND local_id = ?4",
    )?
    .query_row(
        params![
            key.chat_id,
            key.author.kind(),
            key.author.id(),
            key.local_id
        ],
        |r| {
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
                pushed_at: r.get(12)?,
            })
        },
    )
    .optional()
    .map(|found| found.map(Message::from))
}

/// Moves a chat from `was` to `now` if its row is still as `was`: its seq, and whichever
/// of its activity time, status and operator changed (each of those is in an index, which
/// a column left out of the update keeps). False when the row was not so.
fn move_chat(conn: &Connection, m: &Move) -> rusqlite::Result<bool> {
    let (was, now) = (&m.was, &m.now);
    let (was_status, now_status) = (was.status.as_str(), now.status.as_str());
    let mut sql = String::from("UPDATE chats SET last_seq = ?2");
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&now.id, &now.last_seq];
    if now.last_activity_at != was.last_activity_at {
        values.push(&now.last_activity_at);
        sql.push_str(&format!(", last_activity_at = ?{}", values.len()));
    }
    if now.status != was.status || now.operator_id != was.operator_id {
        values.push(&now_status);
        sql.push_str(&format!(", status = ?{}", values.len()));
        values.push(&now.operator_id);
        sql.push_str(&format!(", operator_id = ?{}", values.len()));
    }
    values.push(&was.last_seq);
    sql.push_str(&format!(" WHERE id = ?1 AND last_seq = ?{}", values.len()));
    values.push(&was_status);
    sql.push_str(&format!(" AND status = ?{}", values.len()));
    values.push(&was.operator_id);
    sql.push_str(&format!(" AND operator_id IS ?{}", values.len()));
    let moved = conn
        .prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(values))?;
    Ok(moved == 1)
}

/// Moves a member's cursors forward: their receipt row, and the received and read times of
/// the messages they now have (those at or below an old cursor were marked when it got
/// there). Returns the cursors before and after.
fn advance(conn: &Connection, a: &Advance, now: i64) -> rusqlite::Result<(Receipt, Receipt)> {
    let (kind, id) = (a.member.kind(), a.member.id());
    let row = conn
        .prepare_cached(
            "SELECT received_seq, read_seq, received_at, read_at FROM receipts \
             WHERE chat_id = ?1 AND member_kind = ?2 AND member_id = ?3",
        )?
        .query_row(params![a.chat_id, kind, id], |r| {
            Ok(Receipt {
                chat_id: a.chat_id,
                received_seq: r.get(0)?,
                read_seq: r.get(1)?,
                received_at: r.get(2)?,
                read_at: r.get(3)?,
            })
        })
        .optional()?;
    let existed = row.is_some();
    let before = row.unwrap_or_else(|| Receipt::none(a.chat_id));
    let after = before.advanced(a, now);
    for (cursor, old, new) in [
        ("received", before.received_seq, after.received_seq),
        ("read", before.read_seq, after.read_seq),
    ] {
        if new > old {
            conn.prepare_cached(&format!(
                "UPDATE messages SET {cursor}_at = ?1 WHERE chat_id = ?2 AND seq > ?3 \
                 AND seq <= ?4 AND {cursor}_at IS NULL AND (author_kind = 'customer') = ?5"
            ))?
            .execute(params![now, a.chat_id, old, new, a.marks_the_customers()])?;
        }
    }
    if after != before || !existed {
        conn.prepare_cached(SAVE_RECEIPT)?.execute(params![
            a.chat_id,
            kind,
            id,
            after.received_seq,
            after.read_seq,
            after.received_at,
            after.read_at
        ])?;
    }
    Ok((before, after))
}

/// Writes a member's receipt row, new or not.
const SAVE_RECEIPT: &str = "INSERT INTO receipts \
     (chat_id, member_kind, member_id, received_seq, read_seq, received_at, read_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (chat_id, member_kind, member_id) DO UPDATE SET \
     received_seq = excluded.received_seq, read_seq = excluded.read_seq, \
     received_at = excluded.received_at, read_at = excluded.read_at";
