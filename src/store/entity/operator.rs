use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "operators")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_id: i64,
    pub email: String,
    pub name: String,
    pub avatar: Option<String>,
    /// 0 offline, 1 online, 2 away, 3 busy (the numbers Chatwhizz uses).
    pub presence: i16,
    pub created_at: i64,
    pub updated_at: i64,
    /// When what the operator may see last changed (ms).
    pub access_changed_at: i64,
    /// The most open chats routing gives the operator, over all inboxes.
    pub capacity: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
