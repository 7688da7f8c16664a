use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chats")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub inbox_id: i64,
    pub domain_id: i64,
    pub customer_id: i64,
    /// The operator who took the chat.
    pub operator_id: Option<i64>,
    /// `pending`, `chatting` or `finished`.
    pub status: String,
    /// The seq of the newest message; the next message gets `last_seq + 1`.
    pub last_seq: i64,
    pub created_at: i64,
    /// Time of creation, or of the newest message to within a second (a busy chat's
    /// moves at most once a second); chat lists are ordered by it.
    pub last_activity_at: i64,
    /// When it was finished (unset for chats finished before version 9: their last
    /// activity stands in).
    pub finished_at: Option<i64>,
    /// When it got its operator.
    pub assigned_at: Option<i64>,
    /// When it last joined its inbox's queue.
    pub queued_at: i64,
    /// The newest seq when it was snoozed (unset: not snoozed).
    pub snooze_seq: Option<i64>,
    /// Until when it is snoozed (unset with `snooze_seq`: until the customer writes).
    pub snoozed_until: Option<i64>,
    /// Custom attributes, a JSON object.
    pub attributes: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
