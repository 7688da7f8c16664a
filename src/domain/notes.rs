//! Private notes: what operators write in a chat for each other. A note is not a message:
//! it has no seq, never enters the chat's room, and no surface a customer reaches (the
//! native API, the socket, the seed faces, search, notifications) reads its table. Naming
//! a colleague (`@` and their e-mail or its part before the `@`, or by id in `mentions`)
//! tells them through their notifications.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::{Event, Person};
use super::{Core, Error, Principal, Result};
use crate::store::stmt;

/// The most colleagues one note names.
const MAX_MENTIONS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub id: i64,
    pub chat_id: i64,
    pub operator_id: i64,
    pub text: String,
    /// The operators it names.
    pub mentions: Vec<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNote {
    pub text: String,
    #[serde(default)]
    pub mentions: Vec<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotePage {
    pub items: Vec<Note>,
    pub has_more: bool,
}

fn note_of(row: &sea_orm::QueryResult) -> Result<Note> {
    let mentions: String = row.try_get("", "mentions")?;
    Ok(Note {
        id: row.try_get("", "id")?,
        chat_id: row.try_get("", "chat_id")?,
        operator_id: row.try_get("", "operator_id")?,
        text: row.try_get("", "text")?,
        mentions: mentions.split(',').filter_map(|s| s.parse().ok()).collect(),
        created_at: row.try_get("", "created_at")?,
    })
}

/// The `@` words of a text, lowercased, without trailing punctuation.
fn at_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches(['.', ':', '!', '?']).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

impl Core {
    /// The operators who see a chat's inbox, with their e-mails: who hears of its notes
    /// and may be named in them.
    async fn colleagues(&self, inbox_id: i64, domain_id: i64) -> Result<Vec<(i64, String)>> {
        let ids = self.operators_seeing(inbox_id, domain_id).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        // Ids from our own rows, so inlining them is safe.
        let rows = self
            .store()
            .query(
                &format!(
                    "SELECT id, email FROM operators WHERE id IN ({})",
                    list.join(",")
                ),
                [],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "email")?)))
            .collect()
    }

    /// An operator who sees the chat writes a note in it. Each colleague it names is told;
    /// every operator who sees the chat hears of it live (a `note` frame).
    pub async fn add_note(&self, who: &Principal, chat_id: i64, new: NewNote) -> Result<Note> {
        let Principal::Operator {
            org_id,
            operator_id,
        } = *who
        else {
            return Err(Error::Forbidden("only an operator writes notes"));
        };
        let text = super::required("text", &new.text, self.limits().max_text_chars)?;
        if new.mentions.len() > MAX_MENTIONS {
            return Err(Error::Invalid(format!(
                "a note names at most {MAX_MENTIONS} operators"
            )));
        }
        let chat = self.visible_chat(who, chat_id).await?;
        let colleagues = self.colleagues(chat.inbox_id, chat.domain_id).await?;
        let mut mentions = BTreeSet::new();
        for id in &new.mentions {
            if !colleagues.iter().any(|(c, _)| c == id) {
                return Err(Error::Invalid(format!(
                    "operator {id} does not see this chat"
                )));
            }
            mentions.insert(*id);
        }
        let words = at_words(&text);
        for (id, email) in &colleagues {
            let local = email.split('@').next().unwrap_or_default();
            if words.contains(email.as_str()) || words.contains(local) {
                mentions.insert(*id);
            }
        }
        mentions.remove(&operator_id);
        if mentions.len() > MAX_MENTIONS {
            return Err(Error::Invalid(format!(
                "a note names at most {MAX_MENTIONS} operators"
            )));
        }
        let listed: Vec<String> = mentions.iter().map(i64::to_string).collect();
        let now = self.now_ms();
        let backend = self.store().backend();
        let author = self.operator_model(org_id, operator_id).await?;
        let tx = self.store().write().await?;
        let id = super::inserted_id(
            &*tx,
            "INSERT INTO notes (org_id, chat_id, operator_id, text, mentions, created_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            [
                org_id.into(),
                chat.id.into(),
                operator_id.into(),
                text.clone().into(),
                listed.join(",").into(),
                now.into(),
            ],
        )
        .await?;
        let about = json!({
            "chat_id": chat.id,
            "note_id": id,
            "text": text,
            "by": { "kind": "operator", "id": operator_id, "name": author.name },
        });
        let told = self
            .tell(
                &*tx,
                backend,
                org_id,
                mentions.iter().map(|id| Person::Operator(*id)).collect(),
                "mention",
                &about,
                now,
            )
            .await?;
        tx.commit().await?;
        let note = Arc::new(Note {
            id,
            chat_id: chat.id,
            operator_id,
            text,
            mentions: mentions.into_iter().collect(),
            created_at: now,
        });
        let mut hearing: BTreeSet<i64> = colleagues.iter().map(|(id, _)| *id).collect();
        hearing.insert(operator_id);
        hearing.extend(chat.operator_id);
        for operator_id in hearing {
            self.announce(Event::Note {
                operator_id,
                note: note.clone(),
            });
        }
        self.announce_notifications(told).await;
        Ok(Note::clone(&note))
    }

    /// A page of a chat's notes, oldest first, after note `after`: to operators who see
    /// the chat and the organisation's admin. A customer is refused.
    pub async fn notes(
        &self,
        who: &Principal,
        chat_id: i64,
        after: Option<i64>,
        limit: Option<u64>,
    ) -> Result<NotePage> {
        if matches!(who, Principal::Customer { .. }) {
            return Err(Error::Forbidden("notes are for operators"));
        }
        let limit = match limit {
            None => 50,
            Some(n @ 1..=200) => n as i64,
            Some(_) => return Err(Error::Invalid("limit must be between 1 and 200".into())),
        };
        let chat = self.visible_chat(who, chat_id).await?;
        let rows = self
            .store()
            .query(
                "SELECT id, chat_id, operator_id, text, mentions, created_at FROM notes \
                 WHERE chat_id = ? AND id > ? ORDER BY id LIMIT ?",
                [
                    chat.id.into(),
                    after.unwrap_or(0).into(),
                    (limit + 1).into(),
                ],
            )
            .await?;
        let mut items = rows.iter().map(note_of).collect::<Result<Vec<_>>>()?;
        let has_more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        Ok(NotePage { items, has_more })
    }

    /// Removes, within an erasure's transaction, the notes and labels of erased chats and
    /// the customer's labels.
    pub(super) async fn erase_desk(
        &self,
        tx: &impl sea_orm::ConnectionTrait,
        customer_id: i64,
        chat_ids: &[i64],
    ) -> Result<()> {
        let backend = self.store().backend();
        if !chat_ids.is_empty() {
            let list: Vec<String> = chat_ids.iter().map(i64::to_string).collect();
            for table in ["notes", "chat_labels"] {
                tx.execute_raw(stmt(
                    backend,
                    &format!("DELETE FROM {table} WHERE chat_id IN ({})", list.join(",")),
                    [],
                ))
                .await?;
            }
        }
        tx.execute_raw(stmt(
            backend,
            "DELETE FROM customer_labels WHERE customer_id = ?",
            [customer_id.into()],
        ))
        .await?;
        tx.execute_raw(stmt(
            backend,
            "UPDATE customers SET attributes = NULL WHERE id = ?",
            [customer_id.into()],
        ))
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn at_words_are_the_names_after_an_at() {
        let words = super::at_words("ask @Bob, or @ann@shop.example. (@x) me@home not@");
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_eq!(words, ["ann@shop.example", "bob", "x"]);
    }
}
