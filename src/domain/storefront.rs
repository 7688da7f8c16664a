//! What the hojre customer API needs: a customer's chats and a chat's messages in numbered
//! pages with totals, with the names and avatars of who wrote and who sells.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::events::Person;
use super::write::{Draft, Payload};
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

    /// A store's message to every customer who has chatted with it: a `notice` from the
    /// operator in each such customer's newest chat with the store (finished or not).
    /// Returns how many chats it went to.
    pub async fn broadcast(&self, who: &Principal, inbox_id: i64, text: &str) -> Result<u64> {
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
        let chats = chat::Entity::find()
            .filter(chat::Column::InboxId.eq(inbox.id))
            .order_by_desc(chat::Column::Id)
            .all(self.store().db())
            .await?;
        // The newest chat of each customer gets the notice; sent together, they share commits.
        let mut reached = std::collections::HashSet::new();
        let sends = chats
            .iter()
            .filter(|chat| reached.insert(chat.customer_id))
            .map(|chat| {
                let notice = Draft {
                    author: Person::Operator(operator_id),
                    local_id: None,
                    payload: Payload::Notice,
                    text: text.clone(),
                    file: None,
                };
                self.append(chat.id, notice)
            });
        for sent in futures_util::future::join_all(sends).await {
            sent?;
        }
        Ok(reached.len() as u64)
    }

    /// Page `page` (from 1) of the broadcasts a customer got, newest first, with the store
    /// (inbox) each came from.
    pub async fn broadcasts_to(
        &self,
        who: &Principal,
        page: u64,
        per_page: u64,
    ) -> Result<Numbered<(Said, i64, String)>> {
        let Principal::Customer { customer_id, .. } = *who else {
            return Err(Error::Forbidden("only a customer gets broadcasts"));
        };
        let db = self.store().db();
        let chats: HashMap<i64, i64> = chat::Entity::find()
            .filter(chat::Column::CustomerId.eq(customer_id))
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.id, c.inbox_id))
            .collect();
        let query = message::Entity::find()
            .filter(message::Column::ChatId.is_in(chats.keys().copied()))
            .filter(message::Column::Payload.eq("notice"))
            .filter(message::Column::AuthorKind.eq("operator"))
            // Not souq's own notices (a hand-over).
            .filter(
                sea_orm::Condition::any()
                    .add(message::Column::LocalId.is_null())
                    .add(
                        message::Column::LocalId
                            .not_like(format!("{}%", super::routing::DESK_NOTICE)),
                    ),
            );
        let total = query.clone().count(db).await?;
        let rows = query
            .order_by_desc(message::Column::Id)
            .offset((page - 1).saturating_mul(per_page))
            .limit(per_page)
            .all(db)
            .await?;
        let mut items = Vec::new();
        for row in rows {
            let inbox_id = chats.get(&row.chat_id).copied().unwrap_or(0);
            let store = inbox::Entity::find_by_id(inbox_id)
                .one(db)
                .await?
                .map(|i| i.name)
                .unwrap_or_default();
            let sender = operator::Entity::find_by_id(row.author_id).one(db).await?;
            let said = Said {
                sender: sender.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
                sender_avatar: sender.and_then(|o| o.avatar),
                message: row.into(),
            };
            items.push((said, inbox_id, store));
        }
        Ok(Numbered { items, total })
    }
}
