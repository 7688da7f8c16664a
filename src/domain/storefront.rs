//! What the hojre customer API needs: a customer's chats and a chat's messages in numbered
//! pages with totals, with the names and avatars of who wrote and who sells; and a store's
//! broadcasts, stored once and read by each customer through a join.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;

use super::events::Event;
use super::{Chat, Core, Error, Message, Principal, Result, required};
use crate::store::entity::{assignment, chat, customer, inbox, message, operator};

/// One page of a numbered list.
#[derive(Debug, Clone)]
pub struct Numbered<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// A chat with its store and seller, as a storefront shows it.
#[derive(Debug, Clone)]
pub struct StoreChat {
    pub chat: Chat,
    pub store: String,
    pub seller: String,
    pub seller_avatar: Option<String>,
}

/// A store's broadcast: one row, whatever the size of its audience.
#[derive(Debug, Clone, Serialize)]
pub struct Broadcast {
    pub id: i64,
    /// The store (inbox) it came from, and its name.
    pub inbox_id: i64,
    pub store: String,
    /// The operator who sent it, and their name.
    pub operator_id: i64,
    pub sender: String,
    pub text: String,
    pub created_at: i64,
}

/// A broadcast just sent, and how many customers it reaches.
#[derive(Debug, Clone)]
pub struct Sent {
    pub broadcast: Arc<Broadcast>,
    pub customers: u64,
}

/// A broadcast as one customer got it: with their chat with the store (the newest opened
/// before it) and the sender's avatar.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastTo {
    #[serde(flatten)]
    pub broadcast: Broadcast,
    pub sender_avatar: Option<String>,
    pub chat_id: i64,
}

/// A message with its sender's name and avatar.
#[derive(Debug, Clone)]
pub struct Said {
    pub message: Message,
    pub sender: String,
    pub sender_avatar: Option<String>,
}

impl Core {
    /// The customer session `token` if it belongs to the customer with this phone.
    pub async fn customer_by_phone(&self, token: &str, phone: &str) -> Result<Principal> {
        let who = self.authenticate(token).await?;
        let Principal::Customer { customer_id, .. } = who else {
            return Err(Error::Unauthorized("not a customer session"));
        };
        let customer = customer::Entity::find_by_id(customer_id)
            .one(self.store().db())
            .await?
            .ok_or(Error::Unauthorized("not a customer session"))?;
        if customer.phone.as_deref() != Some(phone.trim()) {
            return Err(Error::Unauthorized("username does not match the token"));
        }
        Ok(who)
    }

    /// Page `page` (from 1) of the customer's chats, oldest first.
    pub async fn store_chats(
        &self,
        who: &Principal,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<StoreChat>> {
        let Principal::Customer { customer_id, .. } = *who else {
            return Err(Error::Forbidden("only a customer has store chats"));
        };
        let db = self.store().db();
        let query = chat::Entity::find().filter(chat::Column::CustomerId.eq(customer_id));
        let total = query.clone().count(db).await?;
        let models = query
            .order_by_asc(chat::Column::Id)
            .offset((page - 1).saturating_mul(per_page))
            .limit(per_page)
            .all(db)
            .await?;
        let mut items = Vec::new();
        for model in models {
            let chat = self.chat(who, model.id).await?;
            let store = inbox::Entity::find_by_id(model.inbox_id)
                .one(db)
                .await?
                .map(|i| i.name)
                .unwrap_or_default();
            // The seller: who took the chat, else the first operator of the store.
            let seller_id = match model.operator_id {
                Some(id) => Some(id),
                None => assignment::Entity::find()
                    .filter(assignment::Column::InboxId.eq(model.inbox_id))
                    .order_by_asc(assignment::Column::Id)
                    .one(db)
                    .await?
                    .map(|a| a.operator_id),
            };
            let seller = match seller_id {
                Some(id) => operator::Entity::find_by_id(id).one(db).await?,
                None => None,
            };
            items.push(StoreChat {
                chat,
                store,
                seller: seller.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                seller_avatar: seller.and_then(|s| s.avatar),
            });
        }
        Ok(Numbered { items, total })
    }

    /// Page `page` (from 1) of a chat's messages, newest first.
    pub async fn messages_newest_first(
        &self,
        who: &Principal,
        chat_id: i64,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<Said>> {
        let chat = self.visible_chat(who, chat_id).await?;
        let db = self.store().db();
        let query = message::Entity::find().filter(message::Column::ChatId.eq(chat.id));
        let total = query.clone().count(db).await?;
        let rows = query
            .order_by_desc(message::Column::Seq)
            .offset((page - 1).saturating_mul(per_page))
            .limit(per_page)
            .all(db)
            .await?;
        let mut names: HashMap<(String, i64), (String, Option<String>)> = HashMap::new();
        let mut items = Vec::new();
        for row in rows {
            let key = (row.author_kind.clone(), row.author_id);
            if !names.contains_key(&key) {
                let found = match row.author_kind.as_str() {
                    "customer" => customer::Entity::find_by_id(row.author_id)
                        .one(db)
                        .await?
                        .map(|c| (c.name, c.avatar)),
                    "operator" => operator::Entity::find_by_id(row.author_id)
                        .one(db)
                        .await?
                        .map(|o| (o.name, o.avatar)),
                    _ => None,
                };
                names.insert(key.clone(), found.unwrap_or_default());
            }
            let (sender, sender_avatar) = names.get(&key).cloned().unwrap_or_default();
            items.push(Said {
                message: row.into(),
                sender,
                sender_avatar,
            });
        }
        let mut shown: Vec<Message> = items.iter().map(|s| s.message.clone()).collect();
        self.attach_files(&mut shown).await?;
        for (said, message) in items.iter_mut().zip(shown) {
            said.message = message;
        }
        Ok(Numbered { items, total })
    }

    /// A store's message to every customer who has chatted with it, stored once. Its
    /// audience is the customers with a chat in the inbox (finished or not) opened no later
    /// than the broadcast: those online hear it at once (one event for all of them, each
    /// node handing it to the audience's sockets it holds), and every one of them finds it
    /// in their listing ([`Core::broadcasts_to`]) whenever they look. No chat changes.
    ///
    /// Fails when `who` is not an operator who sees the inbox, or the text is blank or
    /// too long.
    pub async fn broadcast(&self, who: &Principal, inbox_id: i64, text: &str) -> Result<Sent> {
        let Principal::Operator {
            org_id,
            operator_id,
        } = *who
        else {
            return Err(Error::Forbidden("only an operator of the store broadcasts"));
        };
        let text = required("text", text, self.limits().max_text_chars)?;
        let inbox = self.inbox_model(org_id, inbox_id).await?;
        if !self.operator_sees_inbox(operator_id, &inbox).await? {
            return Err(Error::NotFound("inbox"));
        }
        let sender = self.operator_model(org_id, operator_id).await?;
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let id = super::inserted_id(
            &*tx,
            "INSERT INTO broadcasts (org_id, inbox_id, operator_id, text, created_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING id",
            [
                org_id.into(),
                inbox.id.into(),
                operator_id.into(),
                text.clone().into(),
                now.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        // Read after the commit: a chat opened meanwhile (its time no later than the
        // broadcast's) is in the audience, as its listing will say.
        let customers = self.audience(inbox.id, now).await?;
        let broadcast = Arc::new(Broadcast {
            id,
            inbox_id: inbox.id,
            store: inbox.name,
            operator_id,
            sender: sender.name,
            text,
            created_at: now,
        });
        let reached = customers.len() as u64;
        self.announce(Event::Broadcast {
            broadcast: broadcast.clone(),
            customers,
        });
        Ok(Sent {
            broadcast,
            customers: reached,
        })
    }

    /// The customers with a chat in `inbox_id` opened at or before `at`, in id order.
    async fn audience(&self, inbox_id: i64, at: i64) -> Result<Vec<i64>> {
        let rows = self
            .store()
            .query(
                "SELECT DISTINCT customer_id FROM chats WHERE inbox_id = ? AND created_at <= ? \
                 ORDER BY customer_id",
                [inbox_id.into(), at.into()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64>("", "customer_id")?))
            .collect()
    }

    /// Page `page` (from 1) of the broadcasts a customer got, newest first: those of each
    /// inbox where they have a chat opened no later than the broadcast, with that
    /// (newest such) chat, the store and who sent it.
    ///
    /// Fails when `who` is not a customer.
    pub async fn broadcasts_to(
        &self,
        who: &Principal,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<BroadcastTo>> {
        let Principal::Customer {
            org_id,
            customer_id,
        } = *who
        else {
            return Err(Error::Forbidden("only a customer gets broadcasts"));
        };
        let store = self.store();
        // Which broadcasts reach the customer: one join, from their few chats to the
        // broadcasts of those chats' inboxes.
        const REACHED: &str = "FROM broadcasts b JOIN chats c ON c.inbox_id = b.inbox_id \
             WHERE c.customer_id = ? AND b.org_id = ? AND c.created_at <= b.created_at";
        let total = store
            .query(
                &format!("SELECT COUNT(DISTINCT b.id) AS n {REACHED}"),
                [customer_id.into(), org_id.into()],
            )
            .await?
            .first()
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        let offset = (page - 1).saturating_mul(per_page);
        let rows = store
            .query(
                &format!(
                    "SELECT b.id, b.inbox_id, b.operator_id, b.text, b.created_at, \
                     i.name AS store, o.name AS sender, o.avatar AS sender_avatar, x.chat_id \
                     FROM (SELECT b.id, MAX(c.id) AS chat_id {REACHED} \
                           GROUP BY b.id ORDER BY b.id DESC LIMIT ? OFFSET ?) x \
                     JOIN broadcasts b ON b.id = x.id \
                     JOIN inboxes i ON i.id = b.inbox_id \
                     JOIN operators o ON o.id = b.operator_id \
                     ORDER BY b.id DESC"
                ),
                [
                    customer_id.into(),
                    org_id.into(),
                    i64::try_from(per_page).unwrap_or(i64::MAX).into(),
                    i64::try_from(offset).unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok(BroadcastTo {
                    broadcast: Broadcast {
                        id: r.try_get("", "id")?,
                        inbox_id: r.try_get("", "inbox_id")?,
                        store: r.try_get("", "store")?,
                        operator_id: r.try_get("", "operator_id")?,
                        sender: r.try_get("", "sender")?,
                        text: r.try_get("", "text")?,
                        created_at: r.try_get("", "created_at")?,
                    },
                    chat_id: r.try_get("", "chat_id")?,
                    sender_avatar: r.try_get("", "sender_avatar")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Numbered {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }
}
