//! A desk's view of its chats: labels and custom attributes (on chats and customers),
//! snoozes, reopening a finished chat, and the filters of the chat list. Labels,
//! attributes and snoozes are the desk's own: a customer never sees them.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::chats::ChatStatus;
use super::events::Event;
use super::{Chat, Core, Error, Principal, Result};
use crate::store::entity::chat;
use crate::store::stmt;

/// The most labels a chat or a customer has.
const MAX_LABELS: usize = 20;
/// The most custom attributes a chat or a customer has.
const MAX_ATTRIBUTES: usize = 50;
/// The longest a snooze lasts (a year).
const MAX_SNOOZE_MS: i64 = 366 * 24 * 3600 * 1000;

/// What the desk sees of a chat beside the chat itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeskView {
    pub labels: Vec<String>,
    pub attributes: BTreeMap<String, Json>,
    /// Snoozed now: until `snoozed_until` (or, with none, until the customer writes).
    pub snoozed: bool,
    pub snoozed_until: Option<i64>,
    /// When the chat got its current operator.
    pub assigned_at: Option<i64>,
}

/// A customer's labels and attributes.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerTags {
    pub customer_id: i64,
    pub labels: Vec<String>,
    pub attributes: BTreeMap<String, Json>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributesPatch {
    /// Keys to set; a `null` removes its key.
    pub attributes: serde_json::Map<String, Json>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snooze {
    /// Until when (ms); absent or `null`: until the customer writes.
    #[serde(default)]
    pub until: Option<i64>,
}

/// Who a chat list is filtered to (besides what the caller sees).
#[derive(Debug, Clone, Default)]
pub struct ChatFilter {
    pub status: Option<ChatStatus>,
    pub inbox_id: Option<i64>,
    /// `Some(None)`: chats without an operator.
    pub operator_id: Option<Option<i64>>,
    pub label: Option<String>,
    /// Only chats with messages the caller has not read.
    pub unread: bool,
    /// Only chats whose newest message is the customer's, unanswered this many seconds.
    pub waiting_secs: Option<i64>,
    /// Only snoozed chats (`true`), or only chats not snoozed (`false`).
    pub snoozed: Option<bool>,
    /// Only this customer's chats.
    pub customer_id: Option<i64>,
}

/// The labels of a request: trimmed, lowercased, 1-50 characters without commas, at most
/// [`MAX_LABELS`]; repeats are one.
fn check_labels(labels: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for label in labels {
        let label = label.trim().to_lowercase();
        if label.is_empty() || label.chars().count() > 50 || label.contains(',') {
            return Err(Error::Invalid(
                "a label is 1-50 characters, without commas".into(),
            ));
        }
        if !out.contains(&label) {
            out.push(label);
        }
    }
    if out.len() > MAX_LABELS {
        return Err(Error::Invalid(format!("at most {MAX_LABELS} labels")));
    }
    out.sort();
    Ok(out)
}

/// Stored attributes, as an object (anything else reads as empty).
pub(super) fn attributes_of(stored: Option<&str>) -> BTreeMap<String, Json> {
    stored
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// `stored` with `patch` applied: each key set, or removed by `null`. Values are strings
/// (at most 1000 characters), numbers or booleans; keys 1-50 characters.
fn patched(stored: Option<&str>, patch: &serde_json::Map<String, Json>) -> Result<String> {
    let mut now = attributes_of(stored);
    for (key, value) in patch {
        if key.trim().is_empty() || key.chars().count() > 50 {
            return Err(Error::Invalid(
                "an attribute's name is 1-50 characters".into(),
            ));
        }
        match value {
            Json::Null => {
                now.remove(key);
            }
            Json::String(s) if s.chars().count() > 1000 => {
                return Err(Error::Invalid(format!(
                    "attribute {key} is longer than 1000 characters"
                )));
            }
            Json::String(_) | Json::Number(_) | Json::Bool(_) => {
                now.insert(key.clone(), value.clone());
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "attribute {key} must be a string, a number, a boolean or null"
                )));
            }
        }
    }
    if now.len() > MAX_ATTRIBUTES {
        return Err(Error::Invalid(format!(
            "at most {MAX_ATTRIBUTES} attributes"
        )));
    }
    Ok(serde_json::to_string(&now).unwrap_or_else(|_| "{}".into()))
}

/// The condition (on `chats`) that a chat is snoozed at `?` (one parameter: now).
pub(super) const SNOOZED: &str = "(chats.snooze_seq IS NOT NULL \
     AND (chats.snoozed_until IS NULL OR chats.snoozed_until > ?) \
     AND NOT EXISTS (SELECT 1 FROM messages sm WHERE sm.chat_id = chats.id \
     AND sm.seq > chats.snooze_seq AND sm.author_kind = 'customer'))";

impl Core {
    /// Only operators who see the chat, and the admin, work on it.
    async fn desk_chat(&self, who: &Principal, id: i64) -> Result<chat::Model> {
        if matches!(who, Principal::Customer { .. }) {
            return Err(Error::Forbidden("only an operator or the admin does this"));
        }
        self.visible_chat(who, id).await
    }

    /// Replaces a chat's labels.
    pub async fn set_chat_labels(&self, who: &Principal, id: i64, new: Labels) -> Result<Chat> {
        let labels = check_labels(&new.labels)?;
        let chat = self.desk_chat(who, id).await?;
        let tx = self.store().write().await?;
        replace_labels(
            &*tx,
            "chat_labels",
            "chat_id",
            chat.id,
            chat.org_id,
            &labels,
        )
        .await?;
        tx.commit().await?;
        self.chat(who, id).await
    }

    /// Sets or removes some of a chat's custom attributes.
    pub async fn patch_chat_attributes(
        &self,
        who: &Principal,
        id: i64,
        patch: AttributesPatch,
    ) -> Result<Chat> {
        self.desk_chat(who, id).await?;
        self.patch_attributes("chats", id, &patch).await?;
        self.chat(who, id).await
    }

    /// The customer, if the caller is the admin or an operator who sees a chat of theirs.
    async fn desk_customer(&self, who: &Principal, customer_id: i64) -> Result<()> {
        let visible = match *who {
            Principal::Admin { .. } => {
                let rows = self
                    .store()
                    .query(
                        "SELECT id FROM customers WHERE id = ? AND org_id = ?",
                        [customer_id.into(), who.org_id().into()],
                    )
                    .await?;
                !rows.is_empty()
            }
            Principal::Customer { .. } => false,
            Principal::Operator { .. } => {
                let seen = self
                    .list_chats(
                        who,
                        &ChatFilter {
                            customer_id: Some(customer_id),
                            ..ChatFilter::default()
                        },
                        None,
                        Some(1),
                    )
                    .await?;
                !seen.items.is_empty()
            }
        };
        if visible {
            Ok(())
        } else {
            Err(Error::NotFound("customer"))
        }
    }

    /// A customer's labels and attributes: to the admin and operators who see a chat of
    /// theirs.
    pub async fn customer_tags(&self, who: &Principal, customer_id: i64) -> Result<CustomerTags> {
        self.desk_customer(who, customer_id).await?;
        let db = self.store().db();
        let labels = labels_of(db, "customer_labels", "customer_id", &[customer_id]).await?;
        let stored = self
            .store()
            .query(
                "SELECT attributes FROM customers WHERE id = ?",
                [customer_id.into()],
            )
            .await?
            .first()
            .map(|r| r.try_get::<Option<String>>("", "attributes"))
            .transpose()?
            .flatten();
        Ok(CustomerTags {
            customer_id,
            labels: labels.get(&customer_id).cloned().unwrap_or_default(),
            attributes: attributes_of(stored.as_deref()),
        })
    }

    pub async fn set_customer_labels(
        &self,
        who: &Principal,
        customer_id: i64,
        new: Labels,
    ) -> Result<CustomerTags> {
        let labels = check_labels(&new.labels)?;
        self.desk_customer(who, customer_id).await?;
        let tx = self.store().write().await?;
        replace_labels(
            &*tx,
            "customer_labels",
            "customer_id",
            customer_id,
            who.org_id(),
            &labels,
        )
        .await?;
        tx.commit().await?;
        self.customer_tags(who, customer_id).await
    }

    pub async fn patch_customer_attributes(
        &self,
        who: &Principal,
        customer_id: i64,
        patch: AttributesPatch,
    ) -> Result<CustomerTags> {
        self.desk_customer(who, customer_id).await?;
        self.patch_attributes("customers", customer_id, &patch)
            .await?;
        self.customer_tags(who, customer_id).await
    }

    /// Applies `patch` to the attributes of row `id` of `table` (chats or customers), in
    /// one transaction.
    async fn patch_attributes(&self, table: &str, id: i64, patch: &AttributesPatch) -> Result<()> {
        let backend = self.store().backend();
        let tx = self.store().write().await?;
        let stored = tx
            .query_one_raw(stmt(
                backend,
                &format!(
                    "SELECT attributes FROM {table} WHERE id = ?{}",
                    row_lock(backend)
                ),
                [id.into()],
            ))
            .await?
            .map(|r| r.try_get::<Option<String>>("", "attributes"))
            .transpose()?
            .flatten();
        let now = patched(stored.as_deref(), &patch.attributes)?;
        tx.execute_raw(stmt(
            backend,
            &format!("UPDATE {table} SET attributes = ? WHERE id = ?"),
            [now.into(), id.into()],
        ))
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Snoozes a chat until a time, or until its customer writes: it stays open, and the
    /// list leaves it out when asked for chats not snoozed. A message from the customer,
    /// or the time passing, ends the snooze.
    pub async fn snooze_chat(&self, who: &Principal, id: i64, snooze: Snooze) -> Result<Chat> {
        let now = self.now_ms();
        if let Some(until) = snooze.until
            && (until <= now || until > now + MAX_SNOOZE_MS)
        {
            return Err(Error::Invalid(
                "until must be a time (ms) in the future, within a year".into(),
            ));
        }
        let chat = self.desk_chat(who, id).await?;
        let tx = self.store().write().await?;
        let updated = tx
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE chats SET snooze_seq = last_seq, snoozed_until = ? \
                 WHERE id = ? AND status <> 'finished'",
                [snooze.until.into(), chat.id.into()],
            ))
            .await?;
        tx.commit().await?;
        if updated.rows_affected() == 0 {
            return Err(Error::Conflict("chat is finished".into()));
        }
        self.publish_chat_updated(id).await?;
        self.chat(who, id).await
    }

    /// Ends a chat's snooze now.
    pub async fn wake_chat(&self, who: &Principal, id: i64) -> Result<Chat> {
        let chat = self.desk_chat(who, id).await?;
        let tx = self.store().write().await?;
        tx.execute_raw(stmt(
            self.store().backend(),
            "UPDATE chats SET snooze_seq = NULL, snoozed_until = NULL WHERE id = ?",
            [chat.id.into()],
        ))
        .await?;
        tx.commit().await?;
        self.publish_chat_updated(id).await?;
        self.chat(who, id).await
    }

    /// Reopens a finished chat if its inbox's reopening window (`reopen_secs` after it
    /// finished) is still open and its customer has no other open chat there: it goes back
    /// to its operator (chatting) or, with none, to the queue. True when the chat is open
    /// after this (reopened here or meanwhile).
    pub(super) async fn reopen_chat(&self, id: i64) -> Result<bool> {
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let updated = tx
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE chats SET status = CASE WHEN operator_id IS NULL THEN 'pending' \
                 ELSE 'chatting' END, finished_at = NULL, snooze_seq = NULL, snoozed_until = NULL, \
                 queued_at = ? \
                 WHERE id = ? AND status = 'finished' AND finished_at IS NOT NULL \
                 AND EXISTS (SELECT 1 FROM inboxes i WHERE i.id = chats.inbox_id \
                 AND i.reopen_secs > 0 \
                 AND chats.finished_at + i.reopen_secs * CAST(1000 AS BIGINT) >= ?)",
                [now.into(), id.into(), now.into()],
            ))
            .await;
        let reopened = match updated {
            Ok(done) => done.rows_affected() == 1,
            // The customer opened another chat in the inbox meanwhile.
            Err(e) if crate::store::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        let Some(model) = <chat::Entity as sea_orm::EntityTrait>::find_by_id(id)
            .one(self.store().db())
            .await?
        else {
            return Ok(false);
        };
        if reopened {
            // Its people's sockets left its room when it finished: they join it again.
            self.announce(Event::ChatJoined {
                chat: super::chats::summary(&model),
                audience: self.chat_audience(&model).await?,
            });
            if model.operator_id.is_none() {
                self.route_inbox(model.inbox_id, true).await;
            }
        }
        Ok(model.status != ChatStatus::Finished.as_str())
    }

    /// The customer's newest chat in the inbox if it finished within the inbox's
    /// reopening window: the chat a customer opening a chat there reopens.
    pub(super) async fn reopenable(&self, customer_id: i64, inbox_id: i64) -> Result<Option<i64>> {
        let rows = self
            .store()
            .query(
                "SELECT c.id AS id FROM chats c JOIN inboxes i ON i.id = c.inbox_id \
                 WHERE c.customer_id = ? AND c.inbox_id = ? AND c.status = 'finished' \
                 AND i.reopen_secs > 0 \
                 AND c.finished_at + i.reopen_secs * CAST(1000 AS BIGINT) >= ? \
                 ORDER BY c.id DESC LIMIT 1",
                [customer_id.into(), inbox_id.into(), self.now_ms().into()],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.try_get::<i64>("", "id"))
            .transpose()?)
    }

    /// The desk's view of each of `models` (labels, attributes, snoozes), by chat id.
    pub(super) async fn desk_views(
        &self,
        models: &[chat::Model],
    ) -> Result<HashMap<i64, DeskView>> {
        let db = self.store().db();
        let ids: Vec<i64> = models.iter().map(|c| c.id).collect();
        let mut labels = labels_of(db, "chat_labels", "chat_id", &ids).await?;
        let now = self.now_ms();
        // Snoozes a customer's message ended.
        let asleep: Vec<&chat::Model> = models
            .iter()
            .filter(|c| c.snooze_seq.is_some() && c.snoozed_until.is_none_or(|u| u > now))
            .collect();
        let mut woken = HashSet::new();
        if !asleep.is_empty() {
            let mut sql = String::from(
                "SELECT DISTINCT chat_id FROM messages WHERE author_kind = 'customer' AND (",
            );
            let mut values: Vec<sea_orm::Value> = Vec::new();
            for (i, c) in asleep.iter().enumerate() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str("(chat_id = ? AND seq > ?)");
                values.push(c.id.into());
                values.push(c.snooze_seq.unwrap_or(0).into());
            }
            sql.push(')');
            for r in self.store().query(&sql, values).await? {
                woken.insert(r.try_get::<i64>("", "chat_id")?);
            }
        }
        Ok(models
            .iter()
            .map(|c| {
                let snoozed = c.snooze_seq.is_some()
                    && c.snoozed_until.is_none_or(|u| u > now)
                    && !woken.contains(&c.id);
                (
                    c.id,
                    DeskView {
                        labels: labels.remove(&c.id).unwrap_or_default(),
                        attributes: attributes_of(c.attributes.as_deref()),
                        snoozed,
                        snoozed_until: if snoozed { c.snoozed_until } else { None },
                        assigned_at: c.operator_id.and(c.assigned_at),
                    },
                )
            })
            .collect())
    }
}

/// What locks a row read in a write transaction against another such transaction
/// (PostgreSQL; SQLite's writer is alone): not its key, so inserts that point at it go on.
fn row_lock(backend: sea_orm::DbBackend) -> &'static str {
    if backend == sea_orm::DbBackend::Postgres {
        " FOR NO KEY UPDATE"
    } else {
        ""
    }
}

/// Replaces the labels of one chat or customer (`table`, keyed by `key`).
async fn replace_labels(
    tx: &impl ConnectionTrait,
    table: &str,
    key: &str,
    id: i64,
    org_id: i64,
    labels: &[String],
) -> Result<()> {
    let backend = tx.get_database_backend();
    // The labelled row first: two replacements of one row's labels take turns.
    let parent = if table == "chat_labels" {
        "chats"
    } else {
        "customers"
    };
    tx.query_all_raw(stmt(
        backend,
        &format!("SELECT id FROM {parent} WHERE id = ?{}", row_lock(backend)),
        [id.into()],
    ))
    .await?;
    tx.execute_raw(stmt(
        backend,
        &format!("DELETE FROM {table} WHERE {key} = ?"),
        [id.into()],
    ))
    .await?;
    for label in labels {
        tx.execute_raw(stmt(
            backend,
            &format!("INSERT INTO {table} ({key}, org_id, label) VALUES (?, ?, ?)"),
            [id.into(), org_id.into(), label.clone().into()],
        ))
        .await?;
    }
    Ok(())
}

/// The labels of each of `ids` (chats or customers: `table`, keyed by `key`).
async fn labels_of(
    db: &impl ConnectionTrait,
    table: &str,
    key: &str,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<String>>> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    // Ids from our own rows, so inlining them is safe.
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT {key} AS id, label FROM {table} WHERE {key} IN ({}) ORDER BY label",
                list.join(",")
            ),
            [],
        ))
        .await?;
    for r in rows {
        out.entry(r.try_get("", "id")?)
            .or_default()
            .push(r.try_get("", "label")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_trimmed_lowercased_sorted_and_once() {
        let got =
            check_labels(&[" VIP ".into(), "refund".into(), "vip".into()]).expect("good labels");
        assert_eq!(got, ["refund", "vip"]);
        assert!(check_labels(&["a,b".into()]).is_err());
        assert!(check_labels(&["  ".into()]).is_err());
        let many: Vec<String> = (0..21).map(|i| format!("l{i}")).collect();
        assert!(check_labels(&many).is_err());
    }

    #[test]
    fn a_patch_sets_and_removes_keys_of_plain_values() {
        let mut patch = serde_json::Map::new();
        patch.insert("plan".into(), Json::from("gold"));
        patch.insert("old".into(), Json::Null);
        let now = patched(Some(r#"{"old":1,"seats":3}"#), &patch).expect("a good patch");
        assert_eq!(now, r#"{"plan":"gold","seats":3}"#);
        patch.insert("nested".into(), serde_json::json!({"a": 1}));
        assert!(patched(None, &patch).is_err());
        assert_eq!(attributes_of(Some("not json")).len(), 0);
    }
}
