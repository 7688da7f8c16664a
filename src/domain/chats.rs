//! Chats: one customer with one inbox; who may see them, and their lists.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use serde::Serialize;

use super::desk::{ChatFilter, DeskView, SNOOZED};
use super::events::{ChatSummary, Event, Person};
use super::messages::{Message, member_of};
use super::{Core, Error, Principal, Result};
use crate::store::entity::{chat, customer, message, operator};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatStatus {
    /// No operator has answered yet.
    Pending,
    Chatting,
    Finished,
}

impl ChatStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatStatus::Pending => "pending",
            ChatStatus::Chatting => "chatting",
            ChatStatus::Finished => "finished",
        }
    }

    pub fn parse(s: &str) -> Option<ChatStatus> {
        match s {
            "pending" => Some(ChatStatus::Pending),
            "chatting" => Some(ChatStatus::Chatting),
            "finished" => Some(ChatStatus::Finished),
            _ => None,
        }
    }
}

/// A person in a chat, as shown beside it.
#[derive(Debug, Clone, Serialize)]
pub struct Party {
    pub id: i64,
    pub name: String,
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Chat {
    pub id: i64,
    pub inbox_id: i64,
    pub domain_id: i64,
    pub customer: Party,
    /// The operator who took the chat.
    pub operator: Option<Party>,
    pub status: ChatStatus,
    /// Seq of the newest message (0 when there is none).
    pub last_seq: i64,
    /// Messages of others after the caller's read cursor (0 for an admin).
    pub unread: i64,
    pub last_message: Option<Message>,
    pub created_at: i64,
    /// Creation, or the newest message to within a second (see `append`).
    pub last_activity_at: i64,
    /// Labels, attributes and snooze: to operators and the admin, never to the customer.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub desk: Option<DeskView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatPage {
    pub items: Vec<Chat>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next: Option<String>,
}

/// A chat a live socket follows, with its newest seq when the socket joined.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LiveChat {
    pub id: i64,
    pub last_seq: i64,
}

pub(super) fn summary(c: &chat::Model) -> ChatSummary {
    ChatSummary {
        id: c.id,
        inbox_id: c.inbox_id,
        customer_id: c.customer_id,
        operator_id: c.operator_id,
        status: ChatStatus::parse(&c.status).unwrap_or(ChatStatus::Pending),
        last_seq: c.last_seq,
    }
}

/// Excludes assignments in domains of an addon the operator is inactive in (takes one
/// `false` parameter).
pub(super) const NOT_INACTIVE: &str = "NOT EXISTS (SELECT 1 FROM operator_addons oa \
     JOIN domains d ON d.addon_id = oa.addon_id \
     WHERE oa.operator_id = a.operator_id AND d.id = a.domain_id AND oa.active = ?)";

/// An assignment that gives an operator sight of chats.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counted {
    inbox_id: i64,
    domain_id: i64,
    is_admin: bool,
}

impl Counted {
    /// Whether it covers chats of this inbox.
    pub(super) fn covers(&self, inbox_id: i64, domain_id: i64) -> bool {
        self.inbox_id == inbox_id || (self.is_admin && self.domain_id == domain_id)
    }
}

/// A custom SQL condition written with `?` placeholders, as the backend takes them
/// (sea-query reads `$1`, `$2`... on PostgreSQL).
fn custom<V: Into<sea_orm::Value>>(
    backend: sea_orm::DbBackend,
    sql: &str,
    values: impl IntoIterator<Item = V>,
) -> sea_orm::sea_query::Expr {
    let sql = if backend == sea_orm::DbBackend::Postgres {
        let mut n = 0;
        sql.split('?')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part.to_owned()
                } else {
                    n += 1;
                    format!("${n}{part}")
                }
            })
            .collect()
    } else {
        sql.to_owned()
    };
    sea_orm::sea_query::Expr::cust_with_values(sql, values)
}

/// The chats of its organisation a caller sees: all for an admin, a customer's own, an
/// operator's assigned inboxes' and those of every domain it is admin of. Decided once,
/// then written as a sea-orm condition or as SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ChatScope {
    All,
    Customer(i64),
    Assigned {
        inboxes: Vec<i64>,
        domains: Vec<i64>,
    },
}

impl ChatScope {
    fn condition(&self) -> Condition {
        match self {
            ChatScope::All => Condition::all(),
            ChatScope::Customer(id) => Condition::all().add(chat::Column::CustomerId.eq(*id)),
            ChatScope::Assigned { inboxes, domains } => Condition::any()
                .add(chat::Column::InboxId.is_in(inboxes.clone()))
                .add(chat::Column::DomainId.is_in(domains.clone())),
        }
    }

    /// The scope as a SQL condition on the chats table named `c` (the ids are integers
    /// from our own rows, so writing them in is safe).
    pub(super) fn sql(&self, c: &str) -> String {
        // 0 is no id: it keeps an empty list valid SQL.
        let list = |ids: &[i64]| {
            std::iter::once(0)
                .chain(ids.iter().copied())
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            ChatScope::All => "1 = 1".into(),
            ChatScope::Customer(id) => format!("{c}.customer_id = {id}"),
            ChatScope::Assigned { inboxes, domains } => format!(
                "({c}.inbox_id IN ({}) OR {c}.domain_id IN ({}))",
                list(inboxes),
                list(domains)
            ),
        }
    }
}

fn parse_cursor(cursor: &str) -> Result<(i64, i64)> {
    let bad = || Error::Invalid("before is not a cursor given by this API".into());
    let (at, id) = cursor.split_once('.').ok_or_else(bad)?;
    // Digits only, as the API writes them: no sign, no space.
    let number = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<i64>().ok())
            .flatten()
            .ok_or_else(bad)
    };
    Ok((number(at)?, number(id)?))
}

impl Core {
    /// Every chat (of every organisation) whose activity time is `since_ms` or later, with
    /// its newest seq: what a node compares with the messages it has seen announced.
    pub async fn chats_active_since(&self, since_ms: i64) -> Result<Vec<(i64, i64)>> {
        Ok(chat::Entity::find()
            .select_only()
            .column(chat::Column::Id)
            .column(chat::Column::LastSeq)
            .filter(chat::Column::LastActivityAt.gte(since_ms))
            .into_tuple::<(i64, i64)>()
            .all(self.store().db())
            .await?)
    }

    /// The chat `id` if the caller may see it: its customer, an operator assigned to its
    /// inbox (or an admin of its domain), the organisation's admin.
    pub(super) async fn visible_chat(&self, who: &Principal, id: i64) -> Result<chat::Model> {
        let chat = chat::Entity::find_by_id(id)
            .filter(chat::Column::OrgId.eq(who.org_id()))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("chat"))?;
        let visible = match *who {
            Principal::Admin { .. } => true,
            Principal::Customer { customer_id, .. } => chat.customer_id == customer_id,
            Principal::Operator { operator_id, .. } => self
                .counted_assignments(operator_id)
                .await?
                .iter()
                .any(|a| a.covers(chat.inbox_id, chat.domain_id)),
        };
        if !visible {
            return Err(Error::NotFound("chat"));
        }
        Ok(chat)
    }

    /// A customer opens a chat with an inbox. If they have an unfinished chat there, that
    /// one is returned (`false`); otherwise a new pending chat (`true`).
    pub async fn open_chat(&self, who: &Principal, inbox_id: i64) -> Result<(Chat, bool)> {
        let Principal::Customer {
            org_id,
            customer_id,
        } = *who
        else {
            return Err(Error::Forbidden("only a customer opens a chat"));
        };
        let inbox = self.inbox_model(org_id, inbox_id).await?;
        let domain = crate::store::entity::domain::Entity::find_by_id(inbox.domain_id)
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("inbox"))?;
        if !domain.active {
            return Err(Error::Conflict("this domain is not active".into()));
        }
        let find_open = || {
            chat::Entity::find()
                .filter(chat::Column::CustomerId.eq(customer_id))
                .filter(chat::Column::InboxId.eq(inbox.id))
                .filter(chat::Column::Status.ne(ChatStatus::Finished.as_str()))
                .order_by_desc(chat::Column::Id)
        };
        // A chat finished within the inbox's reopening window opens again instead.
        if find_open().one(self.store().db()).await?.is_none()
            && let Some(id) = self.reopenable(customer_id, inbox.id).await?
            && self.reopen_chat(id).await?
        {
            return Ok((self.chat(who, id).await?, false));
        }
        let tx = self.store().write().await?;
        let (model, created) = match find_open().one(&*tx).await? {
            Some(model) => (model, false),
            None => {
                let now = self.now_ms();
                let inserted = chat::ActiveModel {
                    org_id: Set(org_id),
                    inbox_id: Set(inbox.id),
                    domain_id: Set(inbox.domain_id),
                    customer_id: Set(customer_id),
                    operator_id: Set(None),
                    status: Set(ChatStatus::Pending.as_str().to_owned()),
                    last_seq: Set(0),
                    created_at: Set(now),
                    queued_at: Set(now),
                    last_activity_at: Set(now),
                    ..Default::default()
                }
                .insert(&*tx)
                .await;
                match inserted {
                    Ok(model) => (model, true),
                    // Opened concurrently (PostgreSQL): the unique index on open chats
                    // kept one; that one is the answer.
                    Err(e) if crate::store::is_unique_violation(&e) => {
                        drop(tx);
                        let model = find_open()
                            .one(self.store().db())
                            .await?
                            .ok_or(Error::Store(e))?;
                        let chat = self.views(who, vec![model]).await?.pop();
                        return Ok((chat.ok_or(Error::NotFound("chat"))?, false));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        tx.commit().await?;
        if created {
            let audience = self.chat_audience(&model).await?;
            self.announce(Event::ChatCreated {
                chat: summary(&model),
                audience,
            });
            self.route_inbox(model.inbox_id, true).await;
            // As routing left it.
            return Ok((self.chat(who, model.id).await?, true));
        }
        let chat = self.views(who, vec![model]).await?.pop();
        Ok((chat.ok_or(Error::NotFound("chat"))?, created))
    }

    /// The seq of the newest message of a chat the caller can see (`NotFound` otherwise).
    pub async fn last_seq(&self, who: &Principal, id: i64) -> Result<i64> {
        Ok(self.visible_chat(who, id).await?.last_seq)
    }

    /// Chat `id` of the caller's organisation as the caller would see it, without asking
    /// whether they still may (after a hand-over that took it out of their sight).
    pub(super) async fn chat_view(&self, who: &Principal, id: i64) -> Result<Chat> {
        let model = chat::Entity::find_by_id(id)
            .filter(chat::Column::OrgId.eq(who.org_id()))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("chat"))?;
        self.views(who, vec![model])
            .await?
            .pop()
            .ok_or(Error::NotFound("chat"))
    }

    pub async fn chat(&self, who: &Principal, id: i64) -> Result<Chat> {
        let model = self.visible_chat(who, id).await?;
        self.views(who, vec![model])
            .await?
            .pop()
            .ok_or(Error::NotFound("chat"))
    }

    /// The caller's chats, most recently active first: a customer's own, an operator's
    /// assigned inboxes' (every inbox of a domain it is admin of), all to an admin; of
    /// those, the ones `filter` keeps.
    pub async fn list_chats(
        &self,
        who: &Principal,
        filter: &ChatFilter,
        before: Option<&str>,
        limit: Option<u64>,
    ) -> Result<ChatPage> {
        let limit = match limit {
            None => 50,
            Some(n @ 1..=200) => n,
            Some(_) => return Err(Error::Invalid("limit must be between 1 and 200".into())),
        };
        let mut query = chat::Entity::find()
            .filter(chat::Column::OrgId.eq(who.org_id()))
            .filter(self.chat_scope(who).await?)
            .filter(self.chat_filter(who, filter)?);
        if let Some(before) = before {
            let (at, id) = parse_cursor(before)?;
            query = query.filter(
                Condition::any()
                    .add(chat::Column::LastActivityAt.lt(at))
                    .add(
                        chat::Column::LastActivityAt
                            .eq(at)
                            .and(chat::Column::Id.lt(id)),
                    ),
            );
        }
        let models = query
            .order_by_desc(chat::Column::LastActivityAt)
            .order_by_desc(chat::Column::Id)
            .limit(limit)
            .all(self.store().db())
            .await?;
        let next = (models.len() as u64 == limit)
            .then(|| {
                models
                    .last()
                    .map(|c| format!("{}.{}", c.last_activity_at, c.id))
            })
            .flatten();
        Ok(ChatPage {
            items: self.views(who, models).await?,
            next,
        })
    }

    /// A chat list's filter as a condition on the chats table.
    fn chat_filter(&self, who: &Principal, f: &ChatFilter) -> Result<Condition> {
        let backend = self.store().backend();
        let mut c = Condition::all();
        if let Some(status) = f.status {
            c = c.add(chat::Column::Status.eq(status.as_str()));
        }
        if let Some(inbox_id) = f.inbox_id {
            c = c.add(chat::Column::InboxId.eq(inbox_id));
        }
        if let Some(customer_id) = f.customer_id {
            c = c.add(chat::Column::CustomerId.eq(customer_id));
        }
        match f.operator_id {
            Some(Some(id)) => c = c.add(chat::Column::OperatorId.eq(id)),
            Some(None) => c = c.add(chat::Column::OperatorId.is_null()),
            None => {}
        }
        if let Some(label) = &f.label {
            c = c.add(custom(
                backend,
                "EXISTS (SELECT 1 FROM chat_labels cl WHERE cl.chat_id = chats.id AND cl.label = ?)",
                [label.trim().to_lowercase()],
            ));
        }
        if f.unread {
            let Some(member) = member_of(who) else {
                return Err(Error::Invalid(
                    "unread is for a customer or an operator".into(),
                ));
            };
            c = c.add(custom(
                backend,
                "EXISTS (SELECT 1 FROM messages um WHERE um.chat_id = chats.id \
                 AND um.seq > COALESCE((SELECT r.read_seq FROM receipts r \
                 WHERE r.chat_id = chats.id AND r.member_kind = ? AND r.member_id = ?), 0) \
                 AND NOT (um.author_kind = ? AND um.author_id = ?))",
                [
                    sea_orm::Value::from(member.kind()),
                    member.id().into(),
                    member.kind().into(),
                    member.id().into(),
                ],
            ));
        }
        if let Some(secs) = f.waiting_secs {
            c = c.add(custom(
                backend,
                "EXISTS (SELECT 1 FROM messages wm WHERE wm.chat_id = chats.id \
                 AND wm.seq = chats.last_seq AND wm.author_kind = 'customer' \
                 AND wm.created_at <= ?)",
                [self.now_ms() - secs.saturating_mul(1000)],
            ));
        }
        if let Some(snoozed) = f.snoozed {
            let cond = custom(backend, SNOOZED, [self.now_ms()]);
            c = c.add(if snoozed {
                Condition::all().add(cond)
            } else {
                Condition::all().add(cond).not()
            });
        }
        Ok(c)
    }

    /// An operator takes a pending chat: it becomes `chatting`, with them as its
    /// operator. Taking a chat one already has is a no-op; one taken by another operator
    /// or finished is a `Conflict`.
    pub async fn take_chat(&self, who: &Principal, id: i64) -> Result<Chat> {
        let Principal::Operator { operator_id, .. } = *who else {
            return Err(Error::Forbidden("only an operator takes a chat"));
        };
        let chat = self.visible_chat(who, id).await?;
        let tx = self.store().write().await?;
        // A pending chat routing gave to someone else is theirs.
        let updated = chat::Entity::update_many()
            .col_expr(chat::Column::Status, ChatStatus::Chatting.as_str().into())
            .col_expr(chat::Column::OperatorId, Some(operator_id).into())
            .col_expr(
                chat::Column::AssignedAt,
                chat.assigned_at
                    .filter(|_| chat.operator_id == Some(operator_id))
                    .unwrap_or_else(|| self.now_ms())
                    .into(),
            )
            .filter(chat::Column::Id.eq(chat.id))
            .filter(chat::Column::Status.eq(ChatStatus::Pending.as_str()))
            .filter(
                Condition::any()
                    .add(chat::Column::OperatorId.is_null())
                    .add(chat::Column::OperatorId.eq(operator_id)),
            )
            .exec(&*tx)
            .await?;
        tx.commit().await?;
        if updated.rows_affected == 1 {
            self.publish_chat_updated(id).await?;
            if chat.operator_id.is_none() {
                // It left the queue: the others move up.
                self.route_inbox(chat.inbox_id, true).await;
            }
        }
        let now = self.chat(who, id).await?;
        if updated.rows_affected == 0
            && (now.status != ChatStatus::Chatting
                || now.operator.as_ref().map(|o| o.id) != Some(operator_id))
        {
            return Err(Error::Conflict(format!(
                "chat is {} and cannot be taken",
                match now.status {
                    ChatStatus::Finished => "finished",
                    _ => "taken by another operator",
                }
            )));
        }
        Ok(now)
    }

    /// The customer or an operator of the chat finishes it. Finishing a finished chat
    /// is a no-op.
    pub async fn finish_chat(&self, who: &Principal, id: i64) -> Result<Chat> {
        if let Principal::Admin { .. } = who {
            return Err(Error::Forbidden(
                "only the chat's customer or operator finishes it",
            ));
        }
        let chat = self.visible_chat(who, id).await?;
        let tx = self.store().write().await?;
        let updated = chat::Entity::update_many()
            .col_expr(chat::Column::Status, ChatStatus::Finished.as_str().into())
            .col_expr(chat::Column::FinishedAt, self.now_ms().into())
            .filter(chat::Column::Id.eq(chat.id))
            .filter(chat::Column::Status.ne(ChatStatus::Finished.as_str()))
            .exec(&*tx)
            .await?;
        tx.commit().await?;
        if updated.rows_affected == 1 {
            self.publish_chat_updated(id).await?;
            // A place freed: the operator's (under their capacities), or one in the queue.
            match chat.operator_id {
                Some(operator_id) => self.route_for_operator(operator_id).await,
                None => self.route_inbox(chat.inbox_id, true).await,
            }
        }
        self.chat(who, id).await
    }

    /// The chats `who` sees, as a condition on the chats table (within its organisation).
    async fn chat_scope(&self, who: &Principal) -> Result<Condition> {
        Ok(self.scope_of(who).await?.condition())
    }

    /// Which chats of its organisation `who` sees (see [`ChatScope`]).
    pub(super) async fn scope_of(&self, who: &Principal) -> Result<ChatScope> {
        Ok(match *who {
            Principal::Admin { .. } => ChatScope::All,
            Principal::Customer { customer_id, .. } => ChatScope::Customer(customer_id),
            Principal::Operator { operator_id, .. } => {
                let assigned = self.counted_assignments(operator_id).await?;
                ChatScope::Assigned {
                    inboxes: assigned.iter().map(|a| a.inbox_id).collect(),
                    domains: assigned
                        .iter()
                        .filter(|a| a.is_admin)
                        .map(|a| a.domain_id)
                        .collect(),
                }
            }
        })
    }

    /// Operators who see chats of this inbox: assigned to it, or admins of its domain,
    /// and working in its addon.
    pub(super) async fn operators_seeing(&self, inbox_id: i64, domain_id: i64) -> Result<Vec<i64>> {
        let sql = format!(
            "SELECT DISTINCT a.operator_id AS operator_id FROM assignments a \
             WHERE (a.inbox_id = ? OR (a.domain_id = ? AND a.is_admin = ?)) \
             AND a.receiving = ? AND {NOT_INACTIVE}"
        );
        let rows = self
            .store()
            .query(
                &sql,
                [
                    inbox_id.into(),
                    domain_id.into(),
                    true.into(),
                    true.into(),
                    false.into(),
                ],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get::<i64>("", "operator_id").map_err(Error::from))
            .collect()
    }

    /// The operator's assignments that count: those that receive messages (Chatwhizz's
    /// `status`), in domains of addons it works in.
    pub(super) async fn counted_assignments(&self, operator_id: i64) -> Result<Vec<Counted>> {
        let sql = format!(
            "SELECT a.inbox_id AS inbox_id, a.domain_id AS domain_id, a.is_admin AS is_admin \
             FROM assignments a WHERE a.operator_id = ? AND a.receiving = ? AND {NOT_INACTIVE}"
        );
        let rows = self
            .store()
            .query(&sql, [operator_id.into(), true.into(), false.into()])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Counted {
                    inbox_id: r.try_get("", "inbox_id")?,
                    domain_id: r.try_get("", "domain_id")?,
                    is_admin: r.try_get("", "is_admin")?,
                })
            })
            .collect()
    }

    /// Who follows a chat live: its customer and the operators who see its inbox.
    pub(super) async fn chat_audience(&self, chat: &chat::Model) -> Result<Vec<Person>> {
        let mut audience = vec![Person::Customer(chat.customer_id)];
        audience.extend(
            self.operators_seeing(chat.inbox_id, chat.domain_id)
                .await?
                .into_iter()
                .map(Person::Operator),
        );
        Ok(audience)
    }

    /// Announces a chat's new status (read back after the commit that changed it), and
    /// gives the chat as read.
    pub(super) async fn publish_chat_updated(&self, id: i64) -> Result<Option<chat::Model>> {
        let model = chat::Entity::find_by_id(id).one(self.store().db()).await?;
        if let Some(model) = &model {
            self.announce(Event::ChatUpdated(summary(model)));
        }
        Ok(model)
    }

    /// The unfinished chats a live socket of `who` follows: a customer's own, an
    /// operator's visible ones. Admin tokens have no live sockets.
    pub async fn live_chats(&self, who: &Principal) -> Result<Vec<LiveChat>> {
        if let Principal::Admin { .. } = who {
            return Err(Error::Forbidden("an admin token has no live socket"));
        }
        // Two columns, not whole rows: a desk's admin follows 100,000 chats, and every
        // connect and presence change reads them.
        let rows: Vec<(i64, i64)> = chat::Entity::find()
            .select_only()
            .column(chat::Column::Id)
            .column(chat::Column::LastSeq)
            .filter(chat::Column::OrgId.eq(who.org_id()))
            .filter(chat::Column::Status.ne(ChatStatus::Finished.as_str()))
            .filter(self.chat_scope(who).await?)
            .into_tuple()
            .all(self.store().db())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, last_seq)| LiveChat { id, last_seq })
            .collect())
    }

    /// Turns chat rows into views with parties, last message and the caller's unread
    /// count, in a fixed number of queries whatever the number of chats.
    async fn views(&self, who: &Principal, models: Vec<chat::Model>) -> Result<Vec<Chat>> {
        if models.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.store().db();
        let customer_ids: HashSet<i64> = models.iter().map(|c| c.customer_id).collect();
        let operator_ids: HashSet<i64> = models.iter().filter_map(|c| c.operator_id).collect();
        let customers: HashMap<i64, Party> = customer::Entity::find()
            .filter(customer::Column::Id.is_in(customer_ids))
            .all(db)
            .await?
            .into_iter()
            .map(|c| {
                (
                    c.id,
                    Party {
                        id: c.id,
                        name: c.name,
                        avatar: c.avatar,
                    },
                )
            })
            .collect();
        let operators: HashMap<i64, Party> = if operator_ids.is_empty() {
            HashMap::new()
        } else {
            operator::Entity::find()
                .filter(operator::Column::Id.is_in(operator_ids))
                .all(db)
                .await?
                .into_iter()
                .map(|o| {
                    (
                        o.id,
                        Party {
                            id: o.id,
                            name: o.name,
                            avatar: o.avatar,
                        },
                    )
                })
                .collect()
        };
        let mut last_messages = Condition::any();
        let mut any_message = false;
        for c in models.iter().filter(|c| c.last_seq > 0) {
            any_message = true;
            last_messages = last_messages.add(
                message::Column::ChatId
                    .eq(c.id)
                    .and(message::Column::Seq.eq(c.last_seq)),
            );
        }
        let mut last: HashMap<i64, Message> = HashMap::new();
        if any_message {
            let mut found: Vec<Message> = message::Entity::find()
                .filter(last_messages)
                .all(db)
                .await?
                .into_iter()
                .map(Message::from)
                .collect();
            self.attach_files(&mut found).await?;
            last.extend(found.into_iter().map(|m| (m.chat_id, m)));
        }
        let unread = self.unread_counts(who, &models).await?;
        let mut desk = match who {
            Principal::Customer { .. } => HashMap::new(),
            _ => self.desk_views(&models).await?,
        };
        Ok(models
            .into_iter()
            .map(|c| Chat {
                id: c.id,
                inbox_id: c.inbox_id,
                domain_id: c.domain_id,
                customer: customers.get(&c.customer_id).cloned().unwrap_or(Party {
                    id: c.customer_id,
                    name: String::new(),
                    avatar: None,
                }),
                operator: c.operator_id.and_then(|id| operators.get(&id).cloned()),
                status: ChatStatus::parse(&c.status).unwrap_or(ChatStatus::Pending),
                last_seq: c.last_seq,
                unread: unread.get(&c.id).copied().unwrap_or(0),
                last_message: last.remove(&c.id),
                created_at: c.created_at,
                last_activity_at: c.last_activity_at,
                desk: desk.remove(&c.id),
            })
            .collect())
    }

    /// Per chat, the messages not written by the caller after the caller's read cursor.
    async fn unread_counts(
        &self,
        who: &Principal,
        models: &[chat::Model],
    ) -> Result<HashMap<i64, i64>> {
        let Some(member) = member_of(who) else {
            return Ok(HashMap::new());
        };
        let (kind, id) = (member.kind(), member.id());
        let ids: Vec<String> = models.iter().map(|c| c.id.to_string()).collect();
        // The ids are integers from our own rows, so inlining them is safe.
        let sql = format!(
            "SELECT m.chat_id AS chat_id, COUNT(*) AS n FROM messages m \
             LEFT JOIN receipts r ON r.chat_id = m.chat_id AND r.member_kind = ? AND r.member_id = ? \
             WHERE m.chat_id IN ({}) AND m.seq > COALESCE(r.read_seq, 0) \
             AND NOT (m.author_kind = ? AND m.author_id = ?) \
             GROUP BY m.chat_id",
            ids.join(",")
        );
        let rows = self
            .store()
            .query(&sql, [kind.into(), id.into(), kind.into(), id.into()])
            .await?;
        let mut counts = HashMap::new();
        for row in rows {
            let chat_id: i64 = row.try_get("", "chat_id")?;
            let n: i64 = row.try_get("", "n")?;
            counts.insert(chat_id, n);
        }
        Ok(counts)
    }
}
