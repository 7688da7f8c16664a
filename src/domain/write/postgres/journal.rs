//! The PostgreSQL journal: carries a plan out in one statement for its messages and one
//! for its marks, each one round trip.
//!
//! It remembers the chats it writes to, and plans against what it remembers without
//! reading them again; the statement then moves each chat from the state remembered to
//! the new one, and inserts the messages of the chats it moved. A chat whose row no longer
//! matches (another node wrote to it, or this node finished it) is left alone, and
//! reported stale: the batch reads it again and plans its jobs once more. Two nodes can
//! never give out the same seq: the row's update is the check, and PostgreSQL re-checks it
//! against the newest row when two updates meet. The statement runs on its own
//! (autocommit), and is atomic: a chat and its messages are stored together or not at all.
//! A round that asks for a lock reads its chats `FOR UPDATE` in a transaction that the
//! plan's statements then commit.

use std::collections::HashMap;

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, PgConnection, PgPool, Postgres, Row};

use crate::domain::write::batch::Read;
use crate::domain::write::plan::{Advance, ChatState, Chats, Executed, Job, Key, Known, Plan};
use crate::domain::{ChatStatus, Message, Receipt};
use crate::store::entity::message;

const READ_CHATS: &str = "SELECT id, last_seq, status, operator_id, last_activity_at \
     FROM chats WHERE id = ANY($1)";

/// [`READ_CHATS`] under a lock held to the end of the round's transaction, taken in id
/// order so that two writers never wait on each other in a circle.
const LOCK_CHATS: &str = "SELECT id, last_seq, status, operator_id, last_activity_at \
     FROM chats WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// The stored messages whose (chat, author kind, author id, local_id) is one of these.
const FIND_REPEATS: &str = "\
SELECT m.id, m.chat_id, m.seq, m.author_kind, m.author_id, m.local_id, m.payload, m.text,
       m.file_id, m.created_at, m.received_at, m.read_at, m.pushed_at
FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[])
     AS k (chat_id, author_kind, author_id, local_id)
JOIN messages m ON m.chat_id = k.chat_id AND m.author_kind = k.author_kind
     AND m.author_id = k.author_id AND m.local_id = k.local_id";

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

/// Moves members' cursors forward ($1-$5, $7: chat, member kind and id, received, read,
/// and whether they mark the customer's messages) at $6, each at most up to its chat's
/// newest message (the plan has checked it; this only makes sure): their receipt rows
/// (cursors only go forward: what another statement stored meanwhile stays if it is
/// further), and the received and read times of the messages they now have. Returns each
/// member's cursors `saved` (after) and `old` (before).
///
/// Every join is an index lookup per row: a prepared statement's plan cannot know how many
/// marks a batch holds, and a join of two batch-sized lists can become quadratic. The
/// `= ANY($1)` conditions keep chats and receipts to the batch's chats, as in
/// [`STORE_BATCH`]. (The join with `chats` also steers the plan: without it, on a new
/// database whose statistics still say `messages` is empty, PostgreSQL hashed the whole
/// table for every batch of marks.) The messages to mark start above the old cursors; a
/// message gets a time only if it has none, so two statements that overlap mark it once.
const MARK_BATCH: &str = "\
WITH m (chat_id, member_kind, member_id, received, read, customers) AS (
    SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                         $7::bool[])
), want AS (
    SELECT g.*, COALESCE(r.received_seq, 0) AS old_received,
           COALESCE(r.read_seq, 0) AS old_read
    FROM (
        SELECT m.chat_id, m.member_kind, m.member_id, bool_and(m.customers) AS customers,
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
      AND (msg.author_kind = 'customer') = w.customers
)
SELECT 'saved', chat_id, member_kind, member_id, received_seq, read_seq, received_at, read_at
FROM saved
UNION ALL
SELECT 'old', chat_id, member_kind, member_id, old_received, old_read, NULL, NULL FROM want";

/// The journal's connection and what it remembers of the chats it writes to.
#[derive(Debug)]
pub(crate) struct Journal {
    pool: PgPool,
    /// Held between batches: taking one from the pool for each statement costs a round
    /// trip (the pool pings it). Closed after an error, and taken again next batch.
    conn: Option<PoolConnection<Postgres>>,
    /// A round's locking transaction is open on `conn`.
    in_tx: bool,
    pub(crate) chats: HashMap<i64, ChatState>,
    cached_chats: usize,
}

impl Journal {
    pub(crate) fn new(pool: PgPool, cached_chats: usize) -> Journal {
        Journal {
            pool,
            conn: None,
            in_tx: false,
            chats: HashMap::new(),
            cached_chats,
        }
    }

    /// Takes a connection now rather than at the first batch (PostgreSQL away: later).
    pub(crate) async fn connect(&mut self) {
        if self.conn.is_none() {
            self.conn = self.pool.acquire().await.ok();
        }
    }

    async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.acquire().await?);
        }
        match &mut self.conn {
            Some(conn) => Ok(&mut **conn),
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    /// Gives up the round under way after an error: its transaction, if any, and the
    /// connection, which may be broken (the pool opens another).
    pub(crate) fn abandon(&mut self) {
        self.in_tx = false;
        self.chats.clear();
        if let Some(conn) = self.conn.take() {
            // Closed rather than given back: it may be mid-transaction.
            drop(conn.detach());
        }
    }

    /// The round's chats: those remembered as remembered, the others (and those asked
    /// fresh) read now, all of them under a lock when the round asks for one.
    pub(crate) async fn chats(&mut self, read: &Read) -> Result<Chats, sqlx::Error> {
        if self.chats.len() > self.cached_chats {
            self.chats.clear();
        }
        let to_read: Vec<i64> = if read.lock {
            read.ids.clone()
        } else {
            read.ids
                .iter()
                .copied()
                .filter(|id| read.fresh.contains(id) || !self.chats.contains_key(id))
                .collect()
        };
        let mut chats = Chats::with_capacity(read.ids.len());
        if !to_read.is_empty() {
            let lock = read.lock;
            if lock && !self.in_tx {
                sqlx::query("BEGIN").execute(self.conn().await?).await?;
                self.in_tx = true;
            }
            let sql = if lock { LOCK_CHATS } else { READ_CHATS };
            let rows = sqlx::query(sql)
                .bind(&to_read)
                .fetch_all(self.conn().await?)
                .await?;
            for id in &to_read {
                self.chats.remove(id);
            }
            for row in rows {
                let state = chat_of(&row)?;
                self.chats.insert(state.id, state.clone());
                chats.insert(state.id, Known { state, fresh: true });
            }
        }
        for id in &read.ids {
            if !chats.contains_key(id)
                && !to_read.contains(id)
                && let Some(state) = self.chats.get(id)
            {
                chats.insert(
                    *id,
                    Known {
                        state: state.clone(),
                        fresh: false,
                    },
                );
            }
        }
        Ok(chats)
    }

    /// The stored messages that these sends repeat.
    pub(crate) async fn stored(&mut self, keys: &[Key<'_>]) -> Result<Vec<Message>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let chat_ids: Vec<i64> = keys.iter().map(|k| k.chat_id).collect();
        let kinds: Vec<&str> = keys.iter().map(|k| k.author.kind()).collect();
        let ids: Vec<i64> = keys.iter().map(|k| k.author.id()).collect();
        let local_ids: Vec<&str> = keys.iter().map(|k| k.local_id).collect();
        let rows = sqlx::query(FIND_REPEATS)
            .bind(chat_ids)
            .bind(kinds)
            .bind(ids)
            .bind(local_ids)
            .fetch_all(self.conn().await?)
            .await?;
        rows.iter().map(message_of).collect()
    }

    /// Carries the plan out: one statement for the moves and messages, one for the
    /// cursors, each committed at once unless the round has a transaction (a locked
    /// round, or a plan with both), which it then commits.
    pub(crate) async fn execute(
        &mut self,
        plan: &Plan,
        jobs: &[Job],
    ) -> Result<Executed, sqlx::Error> {
        // Messages and cursors in one plan (the driver gives each a batch of its own)
        // commit together, as a plan's round must.
        if !plan.moves.is_empty() && !plan.advances.is_empty() && !self.in_tx {
            sqlx::query("BEGIN").execute(self.conn().await?).await?;
            self.in_tx = true;
        }
        let stored = if plan.moves.is_empty() {
            Ok(HashMap::new())
        } else {
            store_batch(self.conn().await?, plan, jobs).await
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() && repeats(e.constraint()) => {
                // The round's transaction, if any, is aborted: it ends here.
                self.end(false).await?;
                for m in &plan.moves {
                    self.chats.remove(&m.was.id);
                }
                return Ok(Executed::Repeated);
            }
            Err(e) => return Err(e),
        };
        let mut stale = Vec::new();
        for m in &plan.moves {
            if stored.contains_key(&(m.now.id, m.now.last_seq)) {
                self.chats.insert(m.now.id, m.now.clone());
            } else {
                self.chats.remove(&m.now.id);
                stale.push(m.now.id);
            }
        }
        let ids = plan
            .inserts
            .iter()
            .map(|i| stored.get(&(i.chat_id, i.seq)).copied())
            .collect();
        let advances: Vec<&Advance> = plan
            .advances
            .iter()
            .filter(|a| !stale.contains(&a.chat_id))
            .collect();
        let mut moved = if advances.is_empty() {
            HashMap::new()
        } else {
            mark_batch(self.conn().await?, &advances, plan.now).await?
        };
        self.end(true).await?;
        let receipts = plan
            .advances
            .iter()
            .map(|a| moved.remove(&(a.chat_id, a.member.kind() == "customer", a.member.id())))
            .collect();
        Ok(Executed::Stored {
            ids,
            stale,
            receipts,
        })
    }

    /// Ends the round's transaction, if it has one: commits it, or rolls it back.
    async fn end(&mut self, commit: bool) -> Result<(), sqlx::Error> {
        if self.in_tx {
            self.in_tx = false;
            let sql = if commit { "COMMIT" } else { "ROLLBACK" };
            sqlx::query(sql).execute(self.conn().await?).await?;
        }
        Ok(())
    }
}

/// Whether a unique constraint of `messages` that failed is the one of repeated
/// `local_id`s (PostgreSQL names it after its columns).
fn repeats(constraint: Option<&str>) -> bool {
    constraint.is_some_and(|c| c.contains("local_id"))
}

/// Runs [`STORE_BATCH`] (or [`STORE_ONE`]); returns the ids of the stored messages by
/// (chat, seq).
async fn store_batch(
    conn: &mut PgConnection,
    plan: &Plan,
    jobs: &[Job],
) -> Result<HashMap<(i64, i64), i64>, sqlx::Error> {
    if let ([insert], [m]) = (plan.inserts.as_slice(), plan.moves.as_slice())
        && let Some(send) = jobs.get(insert.job).and_then(Job::send)
    {
        let stored = sqlx::query(STORE_ONE)
            .bind(m.was.id)
            .bind(m.was.last_seq)
            .bind(m.now.last_seq)
            .bind(m.was.status.as_str())
            .bind(m.now.status.as_str())
            .bind(m.was.operator_id)
            .bind(m.now.operator_id)
            .bind(m.now.last_activity_at)
            .bind(send.author.kind())
            .bind(send.author.id())
            .bind(send.local_id.as_deref())
            .bind(send.payload.as_str())
            .bind(send.text.as_str())
            .bind(send.file_id())
            .bind(plan.now)
            .fetch_optional(&mut *conn)
            .await?;
        return stored.iter().map(stored_id).collect();
    }
    let n = plan.moves.len();
    let (mut id, mut old_seq, mut new_seq) = (vec_of(n), vec_of(n), vec_of(n));
    let (mut old_status, mut new_status) = (vec_of(n), vec_of(n));
    let (mut old_operator, mut new_operator) = (vec_of(n), vec_of(n));
    let mut activity = vec_of(n);
    // In id order (as the plan has them), so that two nodes' batches lock shared chats in
    // the same order.
    for m in &plan.moves {
        id.push(m.was.id);
        old_seq.push(m.was.last_seq);
        new_seq.push(m.now.last_seq);
        old_status.push(m.was.status.as_str());
        new_status.push(m.now.status.as_str());
        old_operator.push(m.was.operator_id);
        new_operator.push(m.now.operator_id);
        activity.push(m.now.last_activity_at);
    }
    let n = plan.inserts.len();
    let (mut chat_id, mut seq, mut author_id) = (vec_of(n), vec_of(n), vec_of(n));
    let (mut author_kind, mut payload, mut text) = (vec_of(n), vec_of(n), vec_of(n));
    let (mut local_id, mut file_id) = (vec_of(n), vec_of(n));
    for insert in &plan.inserts {
        let Some(send) = jobs.get(insert.job).and_then(Job::send) else {
            continue;
        };
        chat_id.push(insert.chat_id);
        seq.push(insert.seq);
        author_kind.push(send.author.kind());
        author_id.push(send.author.id());
        local_id.push(send.local_id.as_deref());
        payload.push(send.payload.as_str());
        text.push(send.text.as_str());
        file_id.push(send.file_id());
    }
    let stored = sqlx::query(STORE_BATCH)
        .bind(id)
        .bind(old_seq)
        .bind(new_seq)
        .bind(old_status)
        .bind(new_status)
        .bind(old_operator)
        .bind(new_operator)
        .bind(plan.now)
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

/// A member as [`mark_batch`] keys them: chat, whether a customer, id.
type Member = (i64, bool, i64);

/// Runs [`MARK_BATCH`]; returns each member's cursors before and after.
async fn mark_batch(
    conn: &mut PgConnection,
    advances: &[&Advance],
    now: i64,
) -> Result<HashMap<Member, (Receipt, Receipt)>, sqlx::Error> {
    let n = advances.len();
    let (mut chat_id, mut member_id) = (vec_of(n), vec_of(n));
    let (mut kind, mut received, mut read, mut customers) =
        (vec_of(n), vec_of(n), vec_of(n), vec_of(n));
    for a in advances {
        chat_id.push(a.chat_id);
        kind.push(a.member.kind());
        member_id.push(a.member.id());
        received.push(a.received);
        read.push(a.read);
        customers.push(a.marks_the_customers());
    }
    let rows = sqlx::query(MARK_BATCH)
        .bind(chat_id)
        .bind(kind)
        .bind(member_id)
        .bind(received)
        .bind(read)
        .bind(now)
        .bind(customers)
        .fetch_all(&mut *conn)
        .await?;
    let mut saved: HashMap<Member, Receipt> = HashMap::new();
    let mut old: HashMap<Member, Receipt> = HashMap::new();
    for row in rows {
        let what: &str = row.try_get(0)?;
        let chat_id: i64 = row.try_get(1)?;
        let member = (
            chat_id,
            row.try_get::<&str, _>(2)? == "customer",
            row.try_get(3)?,
        );
        let receipt = Receipt {
            chat_id,
            received_seq: row.try_get(4)?,
            read_seq: row.try_get(5)?,
            received_at: row.try_get(6)?,
            read_at: row.try_get(7)?,
        };
        if what == "saved" {
            saved.insert(member, receipt);
        } else {
            old.insert(member, receipt);
        }
    }
    Ok(saved
        .into_iter()
        .filter_map(|(member, after)| Some((member, (old.remove(&member)?, after))))
        .collect())
}

/// A row `id, chat_id, seq` of a stored message, as ((chat, seq), id).
fn stored_id(row: &sqlx::postgres::PgRow) -> Result<((i64, i64), i64), sqlx::Error> {
    Ok(((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?))
}

fn vec_of<T>(n: usize) -> Vec<T> {
    Vec::with_capacity(n)
}

fn chat_of(row: &sqlx::postgres::PgRow) -> Result<ChatState, sqlx::Error> {
    let status: &str = row.try_get(2)?;
    Ok(ChatState {
        id: row.try_get(0)?,
        last_seq: row.try_get(1)?,
        status: ChatStatus::parse(status)
            .ok_or_else(|| sqlx::Error::Decode(format!("chat status {status:?}").into()))?,
        operator_id: row.try_get(3)?,
        last_activity_at: row.try_get(4)?,
    })
}

fn message_of(row: &sqlx::postgres::PgRow) -> Result<Message, sqlx::Error> {
    Ok(message::Model {
        id: row.try_get(0)?,
        chat_id: row.try_get(1)?,
        seq: row.try_get(2)?,
        author_kind: row.try_get(3)?,
        author_id: row.try_get(4)?,
        local_id: row.try_get(5)?,
        payload: row.try_get(6)?,
        text: row.try_get(7)?,
        file_id: row.try_get(8)?,
        created_at: row.try_get(9)?,
        received_at: row.try_get(10)?,
        read_at: row.try_get(11)?,
        pushed_at: row.try_get(12)?,
    }
    .into())
}
