use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "customers")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub name: String,
    pub avatar: Option<String>,
    /// The organisation's own id for this person.
    pub external_id: Option<String>,
    pub phone: Option<String>,
    pub telegram_id: Option<String>,
    pub facebook_id: Option<String>,
    pub vk_id: Option<String>,
    /// Where e-mail notifications go.
    pub email: Option<String>,
    /// The customer's own password (argon2id), if they set one.
    pub password_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When the customer's sessions were last revoked (ms).
    pub access_changed_at: i64,
    /// Custom attributes, a JSON object.
    pub attributes: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
