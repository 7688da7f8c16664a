//! What the iqstore public API needs: a customer's support chat, message lookups by id,
//! and the related people of a page of messages.

use std::collections::HashSet;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{ChatStatus, Core, Error, Message, Principal, Result};
use crate::store::entity::{assignment, chat, customer, domain, inbox, message, operator};

/// A customer with the counters iqstore shows.
#[derive(Debug, Clone)]
pub struct CustomerCard {
    pub customer: customer::Model,
    pub total_chats: u64,
    pub open_chats: u64,
    /// When the customer last wrote, if ever.
    pub messaged_at: Option<i64>,
}

/// An operator with the counters iqstore shows.
#[derive(Debug, Clone)]
pub struct OperatorCard {
    pub operator: operator::Model,
    pub taken_chats: u64,
    /// When the operator was last assigned to an inbox (their creation, if never).
    pub assigned_at: i64,
    /// Whether they show online to the client: online, and visible online
    /// (`online_status`) on an assignment in the chat's domain.
    pub shown_online: bool,
}

impl Core {
    /// The customer's support chat: their newest unfinished chat with a whole-domain inbox
    /// (a support desk, never a store's inbox: a store chat is the seller's), or a new one
    /// with the whole-domain inbox of the organisation's first active domain.
    pub async fn support_chat(&self, who: &Principal) -> Result<i64> {
        let Principal::Customer {
            org_id,
            customer_id,
        } = *who
        else {
            return Err(Error::Forbidden("only a customer has a support chat"));
        };
        let open = self
            .store()
            .query(
                "SELECT c.id AS id FROM chats c JOIN inboxes i ON i.id = c.inbox_id \
                 WHERE c.customer_id = ? AND c.status <> ? AND i.unique_id = '' \
                 ORDER BY c.id DESC LIMIT 1",
                [customer_id.into(), ChatStatus::Finished.as_str().into()],
            )
            .await?;
        if let Some(row) = open.first() {
            return Ok(row.try_get("", "id")?);
        }
        let domain = domain::Entity::find()
            .filter(domain::Column::OrgId.eq(org_id))
            .filter(domain::Column::Active.eq(true))
            .order_by_asc(domain::Column::Id)
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("support channel"))?;
        let inbox = inbox::Entity::find()
            .filter(inbox::Column::DomainId.eq(domain.id))
            .filter(inbox::Column::UniqueId.eq(""))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("support channel"))?;
        Ok(self.open_chat(who, inbox.id).await?.0.id)
    }

    /// Whether the operator is visible online in the domains of these chats: hidden only
    /// if every assignment of theirs there says not (`online_status` false).
    async fn shown_online_in(&self, operator_id: i64, chat_ids: &HashSet<i64>) -> Result<bool> {
        let domains: Vec<i64> = chat::Entity::find()
            .filter(chat::Column::Id.is_in(chat_ids.iter().copied()))
            .all(self.store().db())
            .await?
            .into_iter()
            .map(|c| c.domain_id)
            .collect();
        let there = assignment::Entity::find()
            .filter(assignment::Column::OperatorId.eq(operator_id))
            .filter(assignment::Column::DomainId.is_in(domains))
            .all(self.store().db())
            .await?;
        Ok(there.is_empty() || there.iter().any(|a| a.online))
    }

    /// The seq of message `id` in a chat the caller sees.
    pub async fn seq_of(&self, who: &Principal, chat_id: i64, id: i64) -> Result<i64> {
        let chat = self.visible_chat(who, chat_id).await?;
        message::Entity::find_by_id(id)
            .filter(message::Column::ChatId.eq(chat.id))
            .one(self.store().db())
            .await?
            .map(|m| m.seq)
            .ok_or(Error::NotFound("message"))
    }

    /// A customer with counters: to the customer itself or the organisation's admin.
    pub async fn customer_card(&self, who: &Principal, customer_id: i64) -> Result<CustomerCard> {
        let visible = match *who {
            Principal::Admin { .. } => true,
            Principal::Customer {
                customer_id: me, ..
            } => me == customer_id,
            Principal::Operator { .. } => false,
        };
        if !visible {
            return Err(Error::NotFound("customer"));
        }
        let db = self.store().db();
        let customer = customer::Entity::find_by_id(customer_id)
            .filter(customer::Column::OrgId.eq(who.org_id()))
            .one(db)
            .await?
            .ok_or(Error::NotFound("customer"))?;
        let chats = chat::Entity::find().filter(chat::Column::CustomerId.eq(customer_id));
        let total_chats = chats.clone().count(db).await?;
        let open_chats = chats
            .filter(chat::Column::Status.ne(ChatStatus::Finished.as_str()))
            .count(db)
            .await?;
        let messaged_at = message::Entity::find()
            .filter(message::Column::AuthorKind.eq("customer"))
            .filter(message::Column::AuthorId.eq(customer_id))
            .order_by_desc(message::Column::Id)
            .limit(1)
            .one(db)
            .await?
            .map(|m| m.created_at);
        Ok(CustomerCard {
            customer,
            total_chats,
            open_chats,
            messaged_at,
        })
    }

    /// The operators who wrote any of `messages`, with counters.
    pub async fn authors_of(
        &self,
        who: &Principal,
        messages: &[Message],
    ) -> Result<Vec<OperatorCard>> {
        let ids: HashSet<i64> = messages
            .iter()
            .filter(|m| m.author.kind == "operator")
            .filter_map(|m| m.author.id)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.store().db();
        let chat_ids: HashSet<i64> = messages.iter().map(|m| m.chat_id).collect();
        let mut cards = Vec::new();
        for op in operator::Entity::find()
            .filter(operator::Column::Id.is_in(ids))
            .filter(operator::Column::OrgId.eq(who.org_id()))
            .order_by_asc(operator::Column::Id)
            .all(db)
            .await?
        {
            let taken_chats = chat::Entity::find()
                .filter(chat::Column::OperatorId.eq(op.id))
                .count(db)
                .await?;
            let assigned_at = assignment::Entity::find()
                .filter(assignment::Column::OperatorId.eq(op.id))
                .order_by_desc(assignment::Column::CreatedAt)
                .one(db)
                .await?
                .map_or(op.created_at, |a| a.created_at);
            let shown_online = op.presence == super::Presence::Online.code()
                && self.shown_online_in(op.id, &chat_ids).await?;
            cards.push(OperatorCard {
                operator: op,
                taken_chats,
                assigned_at,
                shown_online,
            });
        }
        Ok(cards)
    }
}
