use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "domains")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub addon_id: i64,
    pub name: String,
    pub email: Option<String>,
    pub active: bool,
    /// Public key of the embeddable widget; not a secret.
    pub widget_key: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Whether the widget asks a new visitor for a name and an e-mail first.
    pub prechat: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
