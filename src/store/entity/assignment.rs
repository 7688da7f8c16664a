use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "assignments")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub operator_id: i64,
    pub inbox_id: i64,
    /// Copied from the inbox so that "every inbox of the domain" is one indexed lookup.
    pub domain_id: i64,
    /// An admin sees every chat of the inbox's domain.
    pub is_admin: bool,
    /// Shown to customers as online.
    pub online: bool,
    /// Gets new chats of the inbox.
    pub receiving: bool,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
