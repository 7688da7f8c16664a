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
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
