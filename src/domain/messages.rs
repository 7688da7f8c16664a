//! Messages and receipts: the chat's total order by seq, idempotent sends, and cursors
//! that only move forward.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::events::Person;
use super::files::FileInfo;
use super::write::{Draft, Mark, Payload};
use super::{Core, Error, Principal, Result};
use crate::store::entity::{message, receipt};

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Author {
    /// `customer`, `operator` or `system`.
    pub kind: String,
    /// `null` for system messages.
    pub id: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: i64,
    pub chat_id: i64,
    pub seq: i64,
    pub local_id: Option<String>,
    pub author: Author,
    /// `text`, `notice` or `file`.
    pub payload: String,
    pub text: String,
    pub file_id: Option<String>,
    /// The file a `file` payload shows (its metadata and a download link).
    pub file: Option<Arc<FileInfo>>,
    /// `sent`, then `received` once a device of the other side has it, then `read`.
    pub status: &'static str,
    pub created_at: i64,
    pub received_at: Option<i64>,
    pub read_at: Option<i64>,
    /// When the recipient was told of it out of band (e-mail, Web Push, a `notify`
    /// webhook), if ever.
    pub pushed_at: Option<i64>,
}

impl Message {
    /// `sent`, `received` or `read`, from the times the other side had it and read it.
    fn status_of(received_at: Option<i64>, read_at: Option<i64>) -> &'static str {
        if read_at.is_some() {
            "read"
        } else if received_at.is_some() {
            "received"
        } else {
            "sent"
        }
    }
}

impl From<message::Model> for Message {
    fn from(m: message::Model) -> Self {
        let status = Message::status_of(m.received_at, m.read_at);
        Message {
            id: m.id,
            chat_id: m.chat_id,
            seq: m.seq,
            local_id: m.local_id,
            author: Author {
                id: (m.author_kind != "system").then_some(m.author_id),
                kind: m.author_kind,
            },
            payload: m.payload,
            text: m.text,
            file_id: m.file_id,
            file: None,
            status,
            created_at: m.created_at,
            received_at: m.received_at,
            read_at: m.read_at,
            pushed_at: m.pushed_at,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// Client-made id: the same (author, chat, local_id) twice gives the first message.
    #[serde(default)]
    pub local_id: Option<String>,
    /// `text` (the default) or `file`.
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub file_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MessageQuery {
    /// Only messages with a greater seq, oldest first.
    pub after: Option<i64>,
    /// Only messages with a smaller seq (the newest of them).
    pub before: Option<i64>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessagePage {
    /// In ascending seq.
    pub items: Vec<Message>,
    /// Whether more messages lie beyond this page in the direction asked.
    pub has_more: bool,
}

/// A member's cursors in one chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub chat_id: i64,
    pub received_seq: i64,
    pub read_seq: i64,
    pub received_at: Option<i64>,
    pub read_at: Option<i64>,
}

/// A member's cursors, as sent to live clients when they resume.
#[derive(Debug, Clone)]
pub struct MemberReceipt {
    pub member: Person,
    pub received_seq: i64,
    pub read_seq: i64,
}

fn person(kind: &str, id: i64) -> Person {
    Person::from_kind(kind, id).unwrap_or(Person::Operator(id))
}

/// The person a principal writes and holds receipts as; `None` for admins.
pub(super) fn member_of(who: &Principal) -> Option<Person> {
    match *who {
        Principal::Customer { customer_id, .. } => Some(Person::Customer(customer_id)),
        Principal::Operator { operator_id, .. } => Some(Person::Operator(operator_id)),
        Principal::Admin { .. } => None,
    }
}

impl Core {
    /// Appends a message to a chat: the next seq, in one transaction. Returns the message
    /// and whether it is new; a repeated `local_id` gives back the first message.
    ///
    /// Fails with `NotFound` for a chat the caller cannot see, `Forbidden` for an admin
    /// token, `Conflict` for a finished chat, `Invalid` for bad text or payload.
    pub async fn send(
        &self,
        who: &Principal,
        chat_id: i64,
        new: NewMessage,
    ) -> Result<(Message, bool)> {
        member_of(who).ok_or(Error::Forbidden("an admin token cannot send messages"))?;
        // Visibility first: a chat the caller cannot see is 404 whatever the body says.
        if let Err(e) = self.visible_chat(who, chat_id).await {
            self.metrics().refused(e.code(), 1);
            return Err(e);
        }
        self.send_followed(who, chat_id, new).await
    }

    /// [`Core::send`] into a chat whose visibility the caller has already established: a
    /// live socket in the chat's room (rooms are joined only after that check, and left
    /// when access changes). Saves a read per send.
    pub async fn send_followed(
        &self,
        who: &Principal,
        chat_id: i64,
        new: NewMessage,
    ) -> Result<(Message, bool)> {
        let (mut message, new) = self.queue_send(who, chat_id, new).await?.await?;
        // A repeat is read back from the database, without its file.
        if !new && message.file_id.is_some() {
            self.attach_files(std::slice::from_mut(&mut message))
                .await?;
        }
        Ok((message, new))
    }

    /// Checks and queues a send into a followed chat (see [`Core::send_followed`]), and
    /// returns what answers after its commit. Sends queued one after another are stored in
    /// that order, so a socket can queue its next send before the last one is committed.
    pub async fn queue_send(
        &self,
        who: &Principal,
        chat_id: i64,
        new: NewMessage,
    ) -> Result<impl Future<Output = Result<(Message, bool)>> + '_> {
        // A send refused here is counted here; one refused in its batch, by the batch.
        let queued = self.check_and_queue_send(who, chat_id, new).await;
        if let Err(e) = &queued {
            self.metrics().refused(e.code(), 1);
        }
        queued
    }

    async fn check_and_queue_send(
        &self,
        who: &Principal,
        chat_id: i64,
        new: NewMessage,
    ) -> Result<impl Future<Output = Result<(Message, bool)>> + '_> {
        let author =
            member_of(who).ok_or(Error::Forbidden("an admin token cannot send messages"))?;
        let local_id = match new.local_id.as_deref() {
            Some(id) if id.is_empty() || id.len() > 64 => {
                return Err(Error::Invalid("local_id must be 1-64 bytes".into()));
            }
            other => other.map(str::to_owned),
        };
        let (payload, file) = match new.payload.as_deref().unwrap_or("text") {
            "text" => {
                if new.file_id.is_some() {
                    return Err(Error::Invalid("file_id goes with payload \"file\"".into()));
                }
                if new.text.trim().is_empty() {
                    return Err(Error::Invalid("text must not be empty".into()));
                }
                (Payload::Text, None)
            }
            "file" => {
                let id = new
                    .file_id
                    .ok_or_else(|| Error::Invalid("payload \"file\" needs a file_id".into()))?;
                // Boxed: a send's future is moved whole at each step, and most sends
                // carry no file.
                let file = Box::pin(self.file_to_send(who, chat_id, &id)).await?;
                (Payload::File, Some(Arc::new(file)))
            }
            _ => {
                return Err(Error::Invalid(
                    "payload must be \"text\" or \"file\"".into(),
                ));
            }
        };
        if new.text.chars().count() > self.limits().max_text_chars {
            return Err(Error::Invalid(format!(
                "text must be at most {} characters",
                self.limits().max_text_chars
            )));
        }
        let send = Draft {
            author,
            local_id,
            payload,
            text: new.text,
            file,
        };
        // A customer's message into a chat finished lately may reopen it (see
        // `reopen_chat`), then goes in; the copy is kept only for that.
        let again = matches!(author, Person::Customer(_)).then(|| send.clone());
        let first = self.queue_append(chat_id, send).await?;
        Ok(async move {
            match (first.await, again) {
                (Err(Error::Conflict(why)), Some(send)) => {
                    if Box::pin(self.reopen_chat(chat_id)).await? {
                        Box::pin(self.append(chat_id, send)).await
                    } else {
                        Err(Error::Conflict(why))
                    }
                }
                (outcome, _) => outcome,
            }
        })
    }

    /// Stores a message at the chat's next seq (group-committed with concurrent sends) and
    /// announces it. A repeated `local_id` gives back the first message (`false`). A
    /// `notice` goes into any chat, finished or not, and changes nothing else of it; other
    /// payloads are refused in a finished chat, and an operator's answers a pending one.
    pub(super) async fn append(&self, chat_id: i64, send: Draft) -> Result<(Message, bool)> {
        self.queue_append(chat_id, send).await?.await
    }

    /// [`Core::append`] in two steps: queue now, answer after the commit.
    async fn queue_append(
        &self,
        chat_id: i64,
        send: Draft,
    ) -> Result<impl Future<Output = Result<(Message, bool)>> + '_> {
        let sent = self.writer.send(chat_id, send).await?;
        Ok(async move {
            let sent = sent.await?;
            if sent.took_chat {
                // Boxed: rare, and its reads would size every send's answer.
                Box::pin(self.chat_answered(chat_id)).await?;
            }
            Ok((sent.message, sent.new))
        })
    }

    /// A page of a chat's messages in ascending seq.
    pub async fn messages(
        &self,
        who: &Principal,
        chat_id: i64,
        q: MessageQuery,
    ) -> Result<MessagePage> {
        let limit = match q.limit {
            None => 50,
            Some(n @ 1..=500) => n,
            Some(_) => return Err(Error::Invalid("limit must be between 1 and 500".into())),
        };
        if q.after.is_some() && q.before.is_some() {
            return Err(Error::Invalid("give after or before, not both".into()));
        }
        let chat = self.visible_chat(who, chat_id).await?;
        let query = message::Entity::find().filter(message::Column::ChatId.eq(chat.id));
        // One row past the page tells whether there is more.
        let mut rows = match q.after {
            Some(after) => {
                query
                    .filter(message::Column::Seq.gt(after))
                    .order_by_asc(message::Column::Seq)
                    .limit(limit + 1)
                    .all(self.store().db())
                    .await?
            }
            None => {
                let mut rows = query
                    .filter(message::Column::Seq.lt(q.before.unwrap_or(i64::MAX)))
                    .order_by_desc(message::Column::Seq)
                    .limit(limit + 1)
                    .all(self.store().db())
                    .await?;
                rows.reverse();
                rows
            }
        };
        let has_more = rows.len() as u64 > limit;
        if has_more {
            if q.after.is_some() {
                rows.pop();
            } else {
                rows.remove(0);
            }
        }
        let mut items: Vec<Message> = rows.into_iter().map(Message::from).collect();
        self.attach_files(&mut items).await?;
        Ok(MessagePage { items, has_more })
    }

    /// Moves the caller's cursors forward to `received` and `read` (a read implies
    /// received). A cursor never moves back: a lower seq than the current one changes
    /// nothing. The other side's messages up to the cursors get their received/read times.
    /// Marks are group-committed with concurrent sends and marks.
    ///
    /// Fails with `NotFound` for a chat the caller cannot see, `Forbidden` for an admin
    /// token, `Invalid` for a seq below 0 or past the chat's last message.
    pub async fn mark(
        &self,
        who: &Principal,
        chat_id: i64,
        received: Option<i64>,
        read: Option<i64>,
    ) -> Result<Receipt> {
        member_of(who).ok_or(Error::Forbidden("an admin token has no receipts"))?;
        // Visibility first: a chat the caller cannot see is 404 whatever the body says.
        self.visible_chat(who, chat_id).await?;
        self.queue_mark(who, chat_id, received, read, false)
            .await?
            .await
    }

    /// [`Core::mark`] into a chat whose visibility the caller has already established (a
    /// live socket in the chat's room), in two steps: queued now, answered after its
    /// commit, in order with the caller's sends queued before it. A mark that may `wait`
    /// is held up to 20 ms to commit with others, and may then follow later sends.
    pub async fn queue_mark(
        &self,
        who: &Principal,
        chat_id: i64,
        received: Option<i64>,
        read: Option<i64>,
        wait: bool,
    ) -> Result<impl Future<Output = Result<Receipt>> + use<>> {
        let member = member_of(who).ok_or(Error::Forbidden("an admin token has no receipts"))?;
        if received.is_none() && read.is_none() {
            return Err(Error::Invalid("give received, read or both".into()));
        }
        if let Some(seq) = [received, read].into_iter().flatten().find(|s| *s < 0) {
            return Err(Error::Invalid(format!(
                "seq {seq} is outside this chat's messages"
            )));
        }
        let read = read.unwrap_or(0);
        let mark = Mark {
            member,
            received: received.unwrap_or(0).max(read),
            read,
        };
        let marked = self.writer.mark(chat_id, mark, wait).await?;
        Ok(async move { Ok(marked.await?.receipt) })
    }

    /// Every member's cursors in a chat the caller can see.
    pub async fn chat_receipts(&self, who: &Principal, chat_id: i64) -> Result<Vec<MemberReceipt>> {
        let chat = self.visible_chat(who, chat_id).await?;
        Ok(receipt::Entity::find()
            .filter(receipt::Column::ChatId.eq(chat.id))
            .all(self.store().db())
            .await?
            .into_iter()
            .map(|r| MemberReceipt {
                member: person(&r.member_kind, r.member_id),
                received_seq: r.received_seq,
                read_seq: r.read_seq,
            })
            .collect())
    }
}
