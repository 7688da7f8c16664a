use sea_orm::entity::prelude::*;

/// One chat member's cursors: the highest seq received and read.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "receipts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub chat_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_kind: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_id: i64,
    pub received_seq: i64,
    pub read_seq: i64,
    pub received_at: Option<i64>,
    pub read_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
