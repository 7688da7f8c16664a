use sea_orm::entity::prelude::*;

/// Metadata of an attachment; `id` is `<uuid>.<ext>` as in the iqstore API. `path` is
/// the key of its bytes in the file store.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "files")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: i64,
    /// `customer` or `operator`.
    pub owner_kind: String,
    pub owner_id: i64,
    pub name: String,
    pub path: String,
    pub size: i64,
    pub content_type: String,
    pub image_width: Option<i32>,
    pub image_height: Option<i32>,
    pub created_at: i64,
    /// The chat it was uploaded into.
    pub chat_id: Option<i64>,
    /// When its bytes were removed; `None` while they are kept.
    pub removed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
