use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub chat_id: i64,
    /// 1, 2, 3... within the chat, with no gaps.
    pub seq: i64,
    /// `customer`, `operator` or `system`.
    pub author_kind: String,
    /// Empty (0) for system messages.
    pub author_id: i64,
    pub local_id: Option<String>,
    /// `text`, `notice` or `file`.
    pub payload: String,
    pub text: String,
    pub file_id: Option<String>,
    pub created_at: i64,
    /// When a device of the other side first had it.
    pub received_at: Option<i64>,
    /// When the other side first read it.
    pub read_at: Option<i64>,
    /// When its recipient was told of it out of band (e-mail, push, webhook).
    pub pushed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
