use sea_orm::entity::prelude::*;

/// Where customers write to: a whole domain (`unique_id` empty) or one page or store in it.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inboxes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub domain_id: i64,
    /// Empty for the domain's own inbox; otherwise the page or store id.
    pub unique_id: String,
    pub name: String,
    pub created_at: i64,
    /// `off`, `round_robin` or `least_busy`.
    pub routing: String,
    /// The most open chats routing gives an operator from this inbox.
    pub capacity: Option<i32>,
    /// How long after finishing a chat a customer's message reopens it (seconds).
    pub reopen_secs: i32,
    /// The operator round-robin gave the last chat to.
    pub routed_to: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
