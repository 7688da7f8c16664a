use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organisations")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub subdomain: String,
    pub created_at: i64,
    /// Days after which a finished chat's files are removed; `None`: kept.
    pub file_retention_days: Option<i64>,
    /// Seconds a message may stay unread by an absent member before they are told.
    pub notify_after_secs: Option<i64>,
    pub smtp_url: Option<String>,
    pub mail_from: Option<String>,
    /// The link back in a notification (`{chat_id}` is replaced).
    pub notify_link: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
