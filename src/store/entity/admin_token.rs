use sea_orm::entity::prelude::*;

/// An access/refresh token pair of an organisation's addon. Only SHA-256 hashes are kept.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_tokens")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub addon_id: i64,
    pub access_hash: String,
    pub refresh_hash: String,
    pub access_expires_at: i64,
    pub refresh_expires_at: i64,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
