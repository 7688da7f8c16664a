//! Group commit of messages. Every send of the process goes through one appender task,
//! which takes whatever sends are waiting (up to [`MAX_BATCH`]), stores them in one
//! transaction, and only after that commit announces them and answers each caller. Under
//! load one commit carries many messages; alone, a send commits at once.
//!
//! A send that fails on its own (a finished chat) fails alone inside the batch. If the
//! transaction fails as a whole, each of its sends is tried again in a transaction of its
//! own, so that one bad send never takes the others down with it.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use tokio::sync::{mpsc, oneshot};

use super::events::Event;
use super::messages::Message;
use super::{Error, Result, now_ms};
use crate::bus::Bus;
use crate::store::entity::message;
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

struct Job {
    chat_id: i64,
    append: Append,
    reply: oneshot::Sender<Result<(Message, bool)>>,
}

/// The handle of the appender task; the task ends when the handle is dropped.
#[derive(Debug)]
pub(super) struct Appender {
    jobs: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts the appender task. Must be called within a tokio runtime.
    pub fn start(store: Store, bus: Bus) -> Appender {
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(store, bus, rx));
        Appender { jobs }
    }

    /// Stores a message at its chat's next seq and announces it; answers after the commit.
    /// A repeated `local_id` gives back the first message (`false`).
    pub async fn append(&self, chat_id: i64, append: Append) -> Result<(Message, bool)> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            chat_id,
            append,
            reply,
        };
        let stopped = || Error::Internal("the message writer has stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(store: Store, bus: Bus, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match commit(&store, &batch).await {
            Ok(outcomes) => answer(&bus, batch.drain(..), outcomes),
            Err(e) if batch.len() == 1 => answer(&bus, batch.drain(..), vec![Err(e.into())]),
            Err(e) => {
                tracing::warn!(error = %e, sends = batch.len(), "a batch failed; retrying its sends one by one");
                for job in batch.drain(..) {
                    let outcome = match commit(&store, std::slice::from_ref(&job)).await {
                        Ok(mut one) => one
                            .pop()
                            .unwrap_or_else(|| Err(Error::Internal("no outcome".into()))),
                        Err(e) => Err(e.into()),
                    };
                    answer(&bus, std::iter::once(job), vec![outcome]);
                }
            }
        }
    }
}

/// Announces the new messages of a committed batch, in order, then answers each sender.
fn answer(bus: &Bus, jobs: impl Iterator<Item = Job>, outcomes: Vec<Result<(Message, bool)>>) {
    for (job, outcome) in jobs.zip(outcomes) {
        if let Ok((message, true)) = &outcome {
            bus.publish(Event::Message(message.clone()));
        }
        // A caller that went away still had its message stored, as with any lost answer.
        let _ = job.reply.send(outcome);
    }
}

/// Stores the batch in one transaction: one outcome per job, or the error that failed the
/// whole transaction (nothing of it is kept).
async fn commit(
    store: &Store,
    jobs: &[Job],
) -> Result<Vec<Result<(Message, bool)>>, sea_orm::DbErr> {
    let tx = store.write().await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        outcomes.push(store_one(store, &tx, job.chat_id, &job.append).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// One message inside the batch's transaction. The seq bump comes first: its row lock
/// (PostgreSQL) or the writer lock (SQLite) orders sends into one chat. The insert then
/// skips a repeated `local_id` instead of failing, and in that case the bump is undone
/// (still under the same lock) and the first message answers.
async fn store_one(
    store: &Store,
    tx: &WriteTx,
    chat_id: i64,
    a: &Append,
) -> Result<Result<(Message, bool)>, sea_orm::DbErr> {
    let backend = store.backend();
    let now = now_ms();
    let bump = if a.payload == "notice" {
        stmt(
            backend,
            "UPDATE chats SET last_seq = last_seq + 1, last_activity_at = ? \
             WHERE id = ? RETURNING last_seq",
            [now.into(), chat_id.into()],
        )
    } else if a.kind == "operator" {
        // An operator's answer takes a pending chat.
        stmt(
            backend,
            "UPDATE chats SET last_seq = last_seq + 1, last_activity_at = ?, \
             status = CASE WHEN status = 'pending' THEN 'chatting' ELSE status END, \
             operator_id = COALESCE(operator_id, ?) \
             WHERE id = ? AND status <> 'finished' RETURNING last_seq",
            [now.into(), a.author_id.into(), chat_id.into()],
        )
    } else {
        stmt(
            backend,
            "UPDATE chats SET last_seq = last_seq + 1, last_activity_at = ? \
             WHERE id = ? AND status <> 'finished' RETURNING last_seq",
            [now.into(), chat_id.into()],
        )
    };
    let seq: i64 = match tx.query_one_raw(bump).await? {
        Some(row) => row.try_get("", "last_seq")?,
        // A finished chat: a resend of a message it already has still gets that message.
        None => {
            return Ok(match existing(tx, chat_id, a).await? {
                Some(first) => Ok((first, false)),
                None => Err(Error::Conflict("chat is finished".into())),
            });
        }
    };
    let insert = stmt(
        backend,
        "INSERT INTO messages \
         (chat_id, seq, author_kind, author_id, local_id, payload, text, file_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        [
            chat_id.into(),
            seq.into(),
            a.kind.into(),
            a.author_id.into(),
            a.local_id.clone().into(),
            a.payload.into(),
            a.text.clone().into(),
            a.file_id.clone().into(),
            now.into(),
        ],
    );
    match tx.query_one_raw(insert).await? {
        Some(row) => {
            let id: i64 = row.try_get("", "id")?;
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
            Ok(Ok((stored.into(), true)))
        }
        None => {
            // Only the (chat, author, local_id) key can conflict: seq came from the bump.
            tx.execute_raw(stmt(
                backend,
                "UPDATE chats SET last_seq = last_seq - 1 WHERE id = ?",
                [chat_id.into()],
            ))
            .await?;
            Ok(match existing(tx, chat_id, a).await? {
                Some(first) => Ok((first, false)),
                None => Err(Error::Internal("a send conflicted with no message".into())),
            })
        }
    }
}

/// The message this author already stored in the chat under the same `local_id`.
async fn existing(
    tx: &WriteTx,
    chat_id: i64,
    a: &Append,
) -> Result<Option<Message>, sea_orm::DbErr> {
    let Some(local_id) = &a.local_id else {
        return Ok(None);
    };
    let found = message::Entity::find()
        .filter(message::Column::ChatId.eq(chat_id))
        .filter(message::Column::AuthorKind.eq(a.kind))
        .filter(message::Column::AuthorId.eq(a.author_id))
        .filter(message::Column::LocalId.eq(local_id.as_str()))
        .one(&**tx)
        .await?;
    Ok(found.map(Message::from))
}
