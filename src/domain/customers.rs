//! Customers: the people on the website or in the app, identified by the organisation's
//! own ids.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
use serde::{Deserialize, Serialize};

use super::{Core, Error, Principal, Result, optional};
use crate::store::entity::customer;

#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub avatar: Option<String>,
    pub external_id: Option<String>,
    pub phone: Option<String>,
    pub telegram_id: Option<String>,
    pub facebook_id: Option<String>,
    pub vk_id: Option<String>,
    /// Where e-mail notifications go.
    pub email: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<customer::Model> for Customer {
    fn from(m: customer::Model) -> Self {
        Customer {
            id: m.id,
            name: m.name,
            avatar: m.avatar,
            external_id: m.external_id,
            phone: m.phone,
            telegram_id: m.telegram_id,
            facebook_id: m.facebook_id,
            vk_id: m.vk_id,
            email: m.email,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// What identifies a customer (`external_id`, else `phone`) and what describes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerFields {
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
    #[serde(default)]
    pub telegram_id: Option<String>,
    #[serde(default)]
    pub facebook_id: Option<String>,
    #[serde(default)]
    pub vk_id: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

struct Checked {
    external_id: Option<String>,
    phone: Option<String>,
    name: Option<String>,
    avatar: Option<String>,
    telegram_id: Option<String>,
    facebook_id: Option<String>,
    vk_id: Option<String>,
    email: Option<String>,
}

impl CustomerFields {
    fn check(&self) -> Result<Checked> {
        Ok(Checked {
            external_id: optional("external_id", self.external_id.as_deref(), 200)?,
            phone: optional("phone", self.phone.as_deref(), 32)?,
            name: optional("name", self.name.as_deref(), 200)?,
            avatar: optional("avatar", self.avatar.as_deref(), 2000)?,
            telegram_id: optional("telegram_id", self.telegram_id.as_deref(), 200)?,
            facebook_id: optional("facebook_id", self.facebook_id.as_deref(), 200)?,
            vk_id: optional("vk_id", self.vk_id.as_deref(), 200)?,
            email: match self.email.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(e) => Some(super::email("email", e)?),
            },
        })
    }
}

impl Core {
    /// Finds the customer with this `external_id` (else `phone`) and updates the fields
    /// given, or creates one. Returns the customer and whether it was created.
    ///
    /// Fails with `Conflict` when the phone belongs to another customer.
    pub async fn identify_customer(
        &self,
        who: &Principal,
        fields: CustomerFields,
    ) -> Result<(Customer, bool)> {
        let (org_id, _) = self.require_admin(who)?;
        let f = fields.check()?;
        // Two identifies of one new customer may race; the loser's insert hits the unique
        // key and its second pass finds the winner's row.
        for _ in 0..2 {
            let tx = self.store().write().await?;
            let existing = match (&f.external_id, &f.phone) {
                (Some(ext), _) => {
                    customer::Entity::find()
                        .filter(customer::Column::OrgId.eq(org_id))
                        .filter(customer::Column::ExternalId.eq(ext))
                        .one(&*tx)
                        .await?
                }
                (None, Some(phone)) => {
                    customer::Entity::find()
                        .filter(customer::Column::OrgId.eq(org_id))
                        .filter(customer::Column::Phone.eq(phone))
                        .one(&*tx)
                        .await?
                }
                (None, None) => None,
            };
            let now = self.now_ms();
            let result = match existing {
                Some(current) => {
                    let mut model = current.into_active_model();
                    if let Some(v) = &f.phone {
                        model.phone = Set(Some(v.clone()));
                    }
                    if let Some(v) = &f.name {
                        model.name = Set(v.clone());
                    }
                    if let Some(v) = &f.avatar {
                        model.avatar = Set(Some(v.clone()));
                    }
                    if let Some(v) = &f.telegram_id {
                        model.telegram_id = Set(Some(v.clone()));
                    }
                    if let Some(v) = &f.facebook_id {
                        model.facebook_id = Set(Some(v.clone()));
                    }
                    if let Some(v) = &f.vk_id {
                        model.vk_id = Set(Some(v.clone()));
                    }
                    if let Some(v) = &f.email {
                        model.email = Set(Some(v.clone()));
                    }
                    model.updated_at = Set(now);
                    model.update(&*tx).await.map(|m| (m, false))
                }
                None => customer::ActiveModel {
                    org_id: Set(org_id),
                    name: Set(f
                        .name
                        .clone()
                        .or_else(|| f.phone.clone())
                        .unwrap_or_else(|| "Customer".to_owned())),
                    avatar: Set(f.avatar.clone()),
                    external_id: Set(f.external_id.clone()),
                    phone: Set(f.phone.clone()),
                    telegram_id: Set(f.telegram_id.clone()),
                    facebook_id: Set(f.facebook_id.clone()),
                    vk_id: Set(f.vk_id.clone()),
                    email: Set(f.email.clone()),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
                .insert(&*tx)
                .await
                .map(|m| (m, true)),
            };
            match result {
                Ok((model, created)) => {
                    tx.commit().await?;
                    return Ok((model.into(), created));
                }
                Err(e) if crate::store::is_unique_violation(&e) => {
                    drop(tx);
                    if f.external_id.is_none() && f.phone.is_none() {
                        break;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(
            "this phone belongs to another customer".into(),
        ))
    }

    /// A customer changes their own name or avatar (what is given; blank is left as it is).
    pub async fn edit_profile(
        &self,
        who: &Principal,
        name: Option<String>,
        avatar: Option<String>,
    ) -> Result<Customer> {
        let Principal::Customer { customer_id, .. } = *who else {
            return Err(Error::Forbidden("only a customer has a profile here"));
        };
        let name = optional("name", name.as_deref(), 200)?;
        let avatar = optional("avatar", avatar.as_deref(), 2000)?;
        if name.is_none() && avatar.is_none() {
            return Err(Error::Invalid("give a name or an avatar".into()));
        }
        let current = customer::Entity::find_by_id(customer_id)
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("customer"))?;
        let mut model = current.into_active_model();
        if let Some(name) = name {
            model.name = Set(name);
        }
        if let Some(avatar) = avatar {
            model.avatar = Set(Some(avatar));
        }
        model.updated_at = Set(self.now_ms());
        Ok(model.update(self.store().db()).await?.into())
    }

    /// A customer: to the organisation's admin, or to the customer itself.
    pub async fn customer(&self, who: &Principal, id: i64) -> Result<Customer> {
        let visible = match *who {
            Principal::Admin { .. } => true,
            Principal::Customer { customer_id, .. } => customer_id == id,
            Principal::Operator { .. } => false,
        };
        if !visible {
            return Err(Error::NotFound("customer"));
        }
        customer::Entity::find_by_id(id)
            .filter(customer::Column::OrgId.eq(who.org_id()))
            .one(self.store().db())
            .await?
            .map(Customer::from)
            .ok_or(Error::NotFound("customer"))
    }
}
