//! What the Chatwhizz admin API needs beyond the native one: token validation against a
//! pair, per-addon operator status, lookups by domain name, and idempotent assignment.

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};

use super::auth::token_hash;
use super::{
    AdminTokens, Assignment, Core, Domain, Error, Inbox, NewOperator, Operator, Principal, Result,
};
use crate::store::entity::{
    addon, admin_token, assignment, domain, inbox, operator, operator_addon, organisation,
};

impl Core {
    /// Checks that `access` and `refresh` are one live pair of `addon`; answers with the
    /// same pair and the seconds its access token has left.
    pub async fn validate_admin_tokens(
        &self,
        access: &str,
        refresh: &str,
        addon: Option<&str>,
    ) -> Result<AdminTokens> {
        const REFUSED: Error =
            Error::Unauthorized("access_token and refresh_token are not a valid pair");
        let row = admin_token::Entity::find()
            .filter(admin_token::Column::AccessHash.eq(token_hash(access)))
            .filter(admin_token::Column::RefreshHash.eq(token_hash(refresh)))
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        let now = self.now_ms();
        if row.access_expires_at <= now {
            return Err(Error::Unauthorized("token has expired"));
        }
        let org = organisation::Entity::find_by_id(row.org_id)
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        let addon_row = addon::Entity::find_by_id(row.addon_id)
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        if addon.is_some_and(|a| a.trim() != addon_row.name) {
            return Err(REFUSED);
        }
        Ok(AdminTokens {
            access_token: access.to_owned(),
            refresh_token: refresh.to_owned(),
            expires_in: (row.access_expires_at - now) / 1000,
            token_type: "Bearer",
            organisation_domain: org.subdomain,
            addon: addon_row.name,
        })
    }

    /// Regenerates a pair: the refresh token must belong with the access token (which may
    /// have expired).
    pub async fn regenerate_admin_tokens(
        &self,
        access: &str,
        refresh: &str,
    ) -> Result<AdminTokens> {
        admin_token::Entity::find()
            .filter(admin_token::Column::AccessHash.eq(token_hash(access)))
            .filter(admin_token::Column::RefreshHash.eq(token_hash(refresh)))
            .one(self.store().db())
            .await?
            .ok_or(Error::Unauthorized(
                "access_token and refresh_token are not a valid pair",
            ))?;
        self.refresh_admin_tokens(refresh).await
    }

    /// The addon's unique name of an admin token.
    pub async fn addon_name(&self, who: &Principal) -> Result<String> {
        let (_, addon_id) = self.require_admin(who)?;
        Ok(addon::Entity::find_by_id(addon_id)
            .one(self.store().db())
            .await?
            .map(|a| a.name)
            .unwrap_or_default())
    }

    /// The operator with this email, created if new.
    pub async fn operator_by_email(&self, who: &Principal, new: NewOperator) -> Result<Operator> {
        let (org_id, _) = self.require_admin(who)?;
        let email = super::email("email", &new.email)?;
        let existing = operator::Entity::find()
            .filter(operator::Column::OrgId.eq(org_id))
            .filter(operator::Column::Email.eq(&email))
            .one(self.store().db())
            .await?;
        match existing {
            Some(model) => Ok(model.into()),
            None => match self.create_operator(who, new).await {
                // Created meanwhile by another request: that one is the answer.
                Err(Error::Conflict(_)) => {
                    Box::pin(self.operator_by_email(
                        who,
                        NewOperator {
                            email,
                            name: None,
                            avatar: None,
                        },
                    ))
                    .await
                }
                other => other,
            },
        }
    }

    /// The operator's presence as the admin token's addon shows it: offline where every
    /// assignment of theirs in the addon's domains is not visible online
    /// (`online_status` false).
    pub async fn presence_in_addon(
        &self,
        who: &Principal,
        operator: &super::Operator,
    ) -> Result<super::Presence> {
        let (_, addon_id) = self.require_admin(who)?;
        let rows = self
            .store()
            .query(
                "SELECT a.online AS online FROM assignments a \
                 JOIN domains d ON d.id = a.domain_id \
                 WHERE a.operator_id = ? AND d.addon_id = ?",
                [operator.id.into(), addon_id.into()],
            )
            .await?;
        let mut shown = rows.is_empty();
        for row in rows {
            shown |= row.try_get::<bool>("", "online")?;
        }
        Ok(if shown {
            operator.presence
        } else {
            super::Presence::Offline
        })
    }

    /// Whether the operator works in the admin token's addon (true unless set otherwise).
    pub async fn operator_active(&self, who: &Principal, operator_id: i64) -> Result<bool> {
        let (_, addon_id) = self.require_admin(who)?;
        self.operator(who, operator_id).await?;
        Ok(operator_addon::Entity::find_by_id((operator_id, addon_id))
            .one(self.store().db())
            .await?
            .is_none_or(|r| r.active))
    }

    /// Sets whether the operator works in the admin token's addon. An inactive operator
    /// sees no chats of the addon's domains and hears of no new ones there.
    pub async fn set_operator_active(
        &self,
        who: &Principal,
        operator_id: i64,
        active: bool,
    ) -> Result<()> {
        let (_, addon_id) = self.require_admin(who)?;
        self.operator(who, operator_id).await?;
        let tx = self.store().write().await?;
        match operator_addon::Entity::find_by_id((operator_id, addon_id))
            .one(&*tx)
            .await?
        {
            Some(row) => {
                let mut row = row.into_active_model();
                row.active = Set(active);
                row.update(&*tx).await?;
            }
            None => {
                operator_addon::ActiveModel {
                    operator_id: Set(operator_id),
                    addon_id: Set(addon_id),
                    active: Set(active),
                }
                .insert(&*tx)
                .await?;
            }
        }
        self.commit_access_change(tx, super::events::Person::Operator(operator_id))
            .await?;
        Ok(())
    }

    /// A domain of the organisation by its name.
    pub async fn domain_by_name(&self, who: &Principal, name: &str) -> Result<Domain> {
        let (org_id, addon_id) = self.require_admin(who)?;
        domain::Entity::find()
            .filter(domain::Column::OrgId.eq(org_id))
            .filter(domain::Column::AddonId.eq(addon_id))
            .filter(domain::Column::Name.eq(name.trim().to_lowercase()))
            .one(self.store().db())
            .await?
            .map(Domain::from)
            .ok_or(Error::NotFound("domain"))
    }

    /// The inbox of a domain for `unique_id` (the whole-domain inbox for none), created
    /// if new.
    pub async fn inbox_for(
        &self,
        who: &Principal,
        domain_id: i64,
        unique_id: Option<&str>,
    ) -> Result<Inbox> {
        let (org_id, _) = self.require_admin(who)?;
        let key = unique_id.map(str::trim).unwrap_or("");
        let found = inbox::Entity::find()
            .filter(inbox::Column::OrgId.eq(org_id))
            .filter(inbox::Column::DomainId.eq(domain_id))
            .filter(inbox::Column::UniqueId.eq(key))
            .one(self.store().db())
            .await?;
        match found {
            Some(model) => Ok(model.into()),
            None => {
                let new = super::NewInbox {
                    domain_id,
                    unique_id: key.to_owned(),
                    name: None,
                };
                match self.create_inbox(who, new).await {
                    Err(Error::Conflict(_)) => {
                        Box::pin(self.inbox_for(who, domain_id, unique_id)).await
                    }
                    other => other,
                }
            }
        }
    }

    /// The operator's assignment in a domain (the first, if several).
    pub async fn assignment_in_domain(
        &self,
        who: &Principal,
        operator_id: i64,
        domain_id: i64,
    ) -> Result<Assignment> {
        let (org_id, _) = self.require_admin(who)?;
        assignment::Entity::find()
            .filter(assignment::Column::OrgId.eq(org_id))
            .filter(assignment::Column::OperatorId.eq(operator_id))
            .filter(assignment::Column::DomainId.eq(domain_id))
            .one(self.store().db())
            .await?
            .map(Assignment::from)
            .ok_or(Error::NotFound("assignment"))
    }

    /// Moves an assignment to another inbox of the same domain.
    pub async fn move_assignment(
        &self,
        who: &Principal,
        id: i64,
        inbox_id: i64,
    ) -> Result<Assignment> {
        let (org_id, _) = self.require_admin(who)?;
        let tx = self.store().write().await?;
        let current = assignment::Entity::find_by_id(id)
            .filter(assignment::Column::OrgId.eq(org_id))
            .one(&*tx)
            .await?
            .ok_or(Error::NotFound("assignment"))?;
        let mut model = current.into_active_model();
        model.inbox_id = Set(inbox_id);
        let updated = model.update(&*tx).await.map_err(|e| {
            super::conflict_on_unique(e, "this operator is already assigned to this inbox")
        })?;
        self.commit_access_change(tx, super::events::Person::Operator(updated.operator_id))
            .await?;
        Ok(updated.into())
    }
}
