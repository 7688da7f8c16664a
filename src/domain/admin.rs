//! What an organisation's admin manages: operators, domains, inboxes, assignments.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde::{Deserialize, Serialize};

use super::routing::Routing;
use super::{Core, Error, Principal, Result, conflict_on_unique, email, optional, required};
use crate::store::entity::{assignment, customer, domain, inbox, operator};

/// An operator's presence. Stored as the numbers Chatwhizz uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Offline,
    Online,
    Away,
    Busy,
}

impl Presence {
    pub fn code(self) -> i16 {
        match self {
            Presence::Offline => 0,
            Presence::Online => 1,
            Presence::Away => 2,
            Presence::Busy => 3,
        }
    }

    pub fn from_code(code: i16) -> Presence {
        match code {
            1 => Presence::Online,
            2 => Presence::Away,
            3 => Presence::Busy,
            _ => Presence::Offline,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub avatar: Option<String>,
    pub presence: Presence,
    /// The most open chats routing gives them over all inboxes (`null`: no limit).
    pub capacity: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<operator::Model> for Operator {
    fn from(m: operator::Model) -> Self {
        Operator {
            id: m.id,
            email: m.email,
            name: m.name,
            avatar: m.avatar,
            presence: Presence::from_code(m.presence),
            capacity: m.capacity.map(i64::from),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorPatch {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
    #[serde(default)]
    pub presence: Option<Presence>,
    /// The most open chats routing gives the operator over all inboxes (`null`: no
    /// limit). Set by the admin.
    #[serde(default, deserialize_with = "super::settings::present")]
    pub capacity: Option<Option<i64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Domain {
    pub id: i64,
    pub name: String,
    pub email: Option<String>,
    pub active: bool,
    /// Public key for the website widget (not a secret).
    pub widget_key: String,
    /// Whether the widget asks a new visitor for a name and an e-mail before the chat.
    pub prechat: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<domain::Model> for Domain {
    fn from(m: domain::Model) -> Self {
        Domain {
            id: m.id,
            name: m.name,
            email: m.email,
            active: m.active,
            widget_key: m.widget_key,
            prechat: m.prechat,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub prechat: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inbox {
    pub id: i64,
    pub domain_id: i64,
    /// The page or store this inbox is for; `null` for the whole domain.
    pub unique_id: Option<String>,
    pub name: String,
    pub created_at: i64,
    /// How new chats reach operators: `off` (taken by hand), `round_robin`, `least_busy`.
    pub routing: Routing,
    /// The most open chats routing gives an operator from this inbox (`null`: no limit).
    pub capacity: Option<i64>,
    /// For how long after a chat finished a customer's message reopens it (0: never).
    pub reopen_secs: i64,
}

impl From<inbox::Model> for Inbox {
    fn from(m: inbox::Model) -> Self {
        Inbox {
            id: m.id,
            domain_id: m.domain_id,
            unique_id: (!m.unique_id.is_empty()).then_some(m.unique_id),
            name: m.name,
            created_at: m.created_at,
            routing: Routing::parse(&m.routing),
            capacity: m.capacity.map(i64::from),
            reopen_secs: i64::from(m.reopen_secs),
        }
    }
}

/// What the admin changes of an inbox; absent fields stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub routing: Option<Routing>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "super::settings::present")]
    pub capacity: Option<Option<i64>>,
    #[serde(default)]
    pub reopen_secs: Option<i64>,
}

/// The largest capacity (open chats an operator gets from routing).
const MAX_CAPACITY: i64 = 1000;
/// The longest reopening window (30 days).
const MAX_REOPEN_SECS: i64 = 30 * 24 * 3600;

/// Checks a capacity: `null`, or 1 to [`MAX_CAPACITY`].
fn capacity(value: Option<i64>) -> Result<Option<i32>> {
    match value {
        None => Ok(None),
        Some(n @ 1..=MAX_CAPACITY) => Ok(Some(n as i32)),
        Some(_) => Err(Error::Invalid(format!(
            "capacity must be null or 1 to {MAX_CAPACITY}"
        ))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInbox {
    pub domain_id: i64,
    pub unique_id: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    pub id: i64,
    pub operator_id: i64,
    pub inbox_id: i64,
    pub domain_id: i64,
    pub is_admin: bool,
    pub online: bool,
    pub receiving: bool,
    pub created_at: i64,
}

impl From<assignment::Model> for Assignment {
    fn from(m: assignment::Model) -> Self {
        Assignment {
            id: m.id,
            operator_id: m.operator_id,
            inbox_id: m.inbox_id,
            domain_id: m.domain_id,
            is_admin: m.is_admin,
            online: m.online,
            receiving: m.receiving,
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAssignment {
    pub operator_id: i64,
    pub inbox_id: i64,
    #[serde(default)]
    pub is_admin: bool,
    #[serde(default = "yes")]
    pub online: bool,
    #[serde(default = "yes")]
    pub receiving: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentPatch {
    #[serde(default)]
    pub is_admin: Option<bool>,
    #[serde(default)]
    pub online: Option<bool>,
    #[serde(default)]
    pub receiving: Option<bool>,
}

/// A domain name as a website has it: no scheme, no path.
fn domain_name(value: &str) -> Result<String> {
    let value = required("name", value, 253)?.to_lowercase();
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if !ok {
        return Err(Error::Invalid(
            "name must be a bare domain name such as shop.example.com (no scheme or path)".into(),
        ));
    }
    Ok(value)
}

fn widget_key() -> String {
    let bytes: [u8; 12] = rand::random();
    super::hex(&bytes)
}

/// Page size for admin lists: `limit` within 1..=500, default 100.
pub(super) fn list_limit(limit: Option<u64>) -> Result<u64> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=500) => Ok(n),
        Some(_) => Err(Error::Invalid("limit must be between 1 and 500".into())),
    }
}

impl Core {
    pub async fn create_operator(&self, who: &Principal, new: NewOperator) -> Result<Operator> {
        let (org_id, _) = self.require_admin(who)?;
        let email = email("email", &new.email)?;
        let name = match optional("name", new.name.as_deref(), 200)? {
            Some(name) => name,
            None => email.split('@').next().unwrap_or_default().to_owned(),
        };
        let avatar = optional("avatar", new.avatar.as_deref(), 2000)?;
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let model = operator::ActiveModel {
            org_id: Set(org_id),
            email: Set(email),
            name: Set(name),
            avatar: Set(avatar),
            presence: Set(Presence::Offline.code()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await
        .map_err(|e| conflict_on_unique(e, "an operator with this email exists"))?;
        tx.commit().await?;
        Ok(model.into())
    }

    /// An operator of the caller's organisation: an admin sees all, an operator itself.
    pub async fn operator(&self, who: &Principal, id: i64) -> Result<Operator> {
        let visible = match *who {
            Principal::Admin { .. } => true,
            Principal::Operator { operator_id, .. } => operator_id == id,
            Principal::Customer { .. } => false,
        };
        if !visible {
            return Err(Error::NotFound("operator"));
        }
        Ok(self.operator_model(who.org_id(), id).await?.into())
    }

    pub(super) async fn operator_model(&self, org_id: i64, id: i64) -> Result<operator::Model> {
        operator::Entity::find_by_id(id)
            .filter(operator::Column::OrgId.eq(org_id))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("operator"))
    }

    pub async fn list_operators(
        &self,
        who: &Principal,
        after: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<Operator>> {
        let (org_id, _) = self.require_admin(who)?;
        let rows = operator::Entity::find()
            .filter(operator::Column::OrgId.eq(org_id))
            .filter(operator::Column::Id.gt(after.unwrap_or(0)))
            .order_by_asc(operator::Column::Id)
            .limit(list_limit(limit)?)
            .all(self.store().db())
            .await?;
        Ok(rows.into_iter().map(Operator::from).collect())
    }

    /// Updates an operator. An admin may change every field; an operator only its own
    /// presence.
    pub async fn update_operator(
        &self,
        who: &Principal,
        id: i64,
        patch: OperatorPatch,
    ) -> Result<Operator> {
        let self_presence_only = match *who {
            Principal::Admin { .. } => false,
            Principal::Operator { operator_id, .. } if operator_id == id => true,
            _ => return Err(Error::NotFound("operator")),
        };
        if patch.email.is_none()
            && patch.name.is_none()
            && patch.avatar.is_none()
            && patch.presence.is_none()
            && patch.capacity.is_none()
        {
            return Err(Error::Invalid(
                "give at least one of email, name, avatar, presence, capacity".into(),
            ));
        }
        let new_capacity = patch.capacity.map(capacity).transpose()?;
        if self_presence_only
            && (patch.email.is_some()
                || patch.name.is_some()
                || patch.avatar.is_some()
                || patch.capacity.is_some())
        {
            return Err(Error::Forbidden(
                "an operator may change only its own presence",
            ));
        }
        let email = patch
            .email
            .as_deref()
            .map(|e| email("email", e))
            .transpose()?;
        let name = patch
            .name
            .as_deref()
            .map(|n| required("name", n, 200))
            .transpose()?;
        let avatar = patch
            .avatar
            .as_deref()
            .map(|a| optional("avatar", Some(a), 2000))
            .transpose()?;
        let tx = self.store().write().await?;
        let current = operator::Entity::find_by_id(id)
            .filter(operator::Column::OrgId.eq(who.org_id()))
            .one(&*tx)
            .await?
            .ok_or(Error::NotFound("operator"))?;
        let mut model = current.into_active_model();
        if let Some(email) = email {
            model.email = Set(email);
        }
        if let Some(name) = name {
            model.name = Set(name);
        }
        if let Some(avatar) = avatar {
            model.avatar = Set(avatar);
        }
        if let Some(presence) = patch.presence {
            model.presence = Set(presence.code());
        }
        if let Some(capacity) = new_capacity {
            model.capacity = Set(capacity);
        }
        model.updated_at = Set(self.now_ms());
        let updated = model
            .update(&*tx)
            .await
            .map_err(|e| conflict_on_unique(e, "an operator with this email exists"))?;
        tx.commit().await?;
        if let Some(presence) = patch.presence {
            self.publish_presence(id, presence).await?;
        }
        if new_capacity.is_some() {
            self.route_for_operator(id).await;
        }
        Ok(updated.into())
    }

    /// Creates a domain with its whole-domain inbox.
    pub async fn create_domain(&self, who: &Principal, new: NewDomain) -> Result<(Domain, Inbox)> {
        let (org_id, addon_id) = self.require_admin(who)?;
        let name = domain_name(&new.name)?;
        let email = new
            .email
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .map(|e| email("email", e))
            .transpose()?;
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let domain = domain::ActiveModel {
            org_id: Set(org_id),
            addon_id: Set(addon_id),
            name: Set(name.clone()),
            email: Set(email),
            active: Set(true),
            widget_key: Set(widget_key()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await
        .map_err(|e| conflict_on_unique(e, "a domain with this name exists"))?;
        let inbox = inbox::ActiveModel {
            org_id: Set(org_id),
            domain_id: Set(domain.id),
            unique_id: Set(String::new()),
            name: Set(name),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
        tx.commit().await?;
        Ok((domain.into(), inbox.into()))
    }

    /// A domain of the admin token's addon: each addon sees its own domains (and another
    /// addon's are `NotFound`, like another organisation's).
    pub async fn domain(&self, who: &Principal, id: i64) -> Result<Domain> {
        Ok(self.domain_model(who, id).await?.into())
    }

    async fn domain_model(&self, who: &Principal, id: i64) -> Result<domain::Model> {
        let (org_id, addon_id) = self.require_admin(who)?;
        domain::Entity::find_by_id(id)
            .filter(domain::Column::OrgId.eq(org_id))
            .filter(domain::Column::AddonId.eq(addon_id))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("domain"))
    }

    pub async fn list_domains(
        &self,
        who: &Principal,
        after: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<Domain>> {
        let (org_id, addon_id) = self.require_admin(who)?;
        let rows = domain::Entity::find()
            .filter(domain::Column::OrgId.eq(org_id))
            .filter(domain::Column::AddonId.eq(addon_id))
            .filter(domain::Column::Id.gt(after.unwrap_or(0)))
            .order_by_asc(domain::Column::Id)
            .limit(list_limit(limit)?)
            .all(self.store().db())
            .await?;
        Ok(rows.into_iter().map(Domain::from).collect())
    }

    pub async fn update_domain(
        &self,
        who: &Principal,
        id: i64,
        patch: DomainPatch,
    ) -> Result<Domain> {
        let (org_id, addon_id) = self.require_admin(who)?;
        if patch.name.is_none()
            && patch.email.is_none()
            && patch.active.is_none()
            && patch.prechat.is_none()
        {
            return Err(Error::Invalid(
                "give at least one of name, email, active, prechat".into(),
            ));
        }
        let name = patch.name.as_deref().map(domain_name).transpose()?;
        // An empty email clears it; otherwise it must be an address.
        let email = match patch.email.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(e) => Some(Some(email("email", e)?)),
        };
        let tx = self.store().write().await?;
        let current = domain::Entity::find_by_id(id)
            .filter(domain::Column::OrgId.eq(org_id))
            .filter(domain::Column::AddonId.eq(addon_id))
            .one(&*tx)
            .await?
            .ok_or(Error::NotFound("domain"))?;
        let mut model = current.into_active_model();
        if let Some(name) = name {
            model.name = Set(name);
        }
        if let Some(email) = email {
            model.email = Set(email);
        }
        if let Some(active) = patch.active {
            model.active = Set(active);
        }
        if let Some(prechat) = patch.prechat {
            model.prechat = Set(prechat);
        }
        model.updated_at = Set(self.now_ms());
        let updated = model
            .update(&*tx)
            .await
            .map_err(|e| conflict_on_unique(e, "a domain with this name exists"))?;
        tx.commit().await?;
        Ok(updated.into())
    }

    /// Creates the inbox of one page or store of a domain.
    pub async fn create_inbox(&self, who: &Principal, new: NewInbox) -> Result<Inbox> {
        let (org_id, _) = self.require_admin(who)?;
        let unique_id = required("unique_id", &new.unique_id, 200)?;
        let name = optional("name", new.name.as_deref(), 200)?.unwrap_or_else(|| unique_id.clone());
        let domain = self.domain_model(who, new.domain_id).await?;
        let tx = self.store().write().await?;
        let model = inbox::ActiveModel {
            org_id: Set(org_id),
            domain_id: Set(domain.id),
            unique_id: Set(unique_id),
            name: Set(name),
            created_at: Set(self.now_ms()),
            ..Default::default()
        }
        .insert(&*tx)
        .await
        .map_err(|e| conflict_on_unique(e, "this domain has an inbox with this unique_id"))?;
        tx.commit().await?;
        Ok(model.into())
    }

    /// An inbox: any of the organisation's to its admin and customers (who need it to
    /// open a chat), only assigned ones to an operator.
    pub async fn inbox(&self, who: &Principal, id: i64) -> Result<Inbox> {
        let model = self.inbox_model(who.org_id(), id).await?;
        if let Principal::Operator { operator_id, .. } = *who
            && !self.operator_sees_inbox(operator_id, &model).await?
        {
            return Err(Error::NotFound("inbox"));
        }
        Ok(model.into())
    }

    /// The admin changes an inbox: its name, routing, capacity, reopening window.
    pub async fn update_inbox(&self, who: &Principal, id: i64, patch: InboxPatch) -> Result<Inbox> {
        let (org_id, _) = self.require_admin(who)?;
        let name = patch
            .name
            .as_deref()
            .map(|n| required("name", n, 200))
            .transpose()?;
        let new_capacity = patch.capacity.map(capacity).transpose()?;
        let reopen = match patch.reopen_secs {
            None => None,
            Some(n @ 0..=MAX_REOPEN_SECS) => Some(n as i32),
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "reopen_secs must be 0 to {MAX_REOPEN_SECS}"
                )));
            }
        };
        let tx = self.store().write().await?;
        let current = inbox::Entity::find_by_id(id)
            .filter(inbox::Column::OrgId.eq(org_id))
            .one(&*tx)
            .await?
            .ok_or(Error::NotFound("inbox"))?;
        let mut model = current.into_active_model();
        if let Some(name) = name {
            model.name = Set(name);
        }
        if let Some(routing) = patch.routing {
            model.routing = Set(routing.as_str().to_owned());
        }
        if let Some(capacity) = new_capacity {
            model.capacity = Set(capacity);
        }
        if let Some(reopen) = reopen {
            model.reopen_secs = Set(reopen);
        }
        let updated = model.update(&*tx).await?;
        tx.commit().await?;
        self.route_inbox(id, false).await;
        Ok(updated.into())
    }

    pub(super) async fn inbox_model(&self, org_id: i64, id: i64) -> Result<inbox::Model> {
        inbox::Entity::find_by_id(id)
            .filter(inbox::Column::OrgId.eq(org_id))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("inbox"))
    }

    pub(super) async fn operator_sees_inbox(
        &self,
        operator_id: i64,
        inbox: &inbox::Model,
    ) -> Result<bool> {
        Ok(self
            .counted_assignments(operator_id)
            .await?
            .iter()
            .any(|a| a.covers(inbox.id, inbox.domain_id)))
    }

    pub async fn list_inboxes(
        &self,
        who: &Principal,
        domain_id: Option<i64>,
        after: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<Inbox>> {
        let (org_id, _) = self.require_admin(who)?;
        let mut query = inbox::Entity::find()
            .filter(inbox::Column::OrgId.eq(org_id))
            .filter(inbox::Column::Id.gt(after.unwrap_or(0)));
        if let Some(domain_id) = domain_id {
            query = query.filter(inbox::Column::DomainId.eq(domain_id));
        }
        let rows = query
            .order_by_asc(inbox::Column::Id)
            .limit(list_limit(limit)?)
            .all(self.store().db())
            .await?;
        Ok(rows.into_iter().map(Inbox::from).collect())
    }

    pub async fn create_assignment(
        &self,
        who: &Principal,
        new: NewAssignment,
    ) -> Result<Assignment> {
        let (org_id, _) = self.require_admin(who)?;
        let operator = self.operator_model(org_id, new.operator_id).await?;
        let inbox = self.inbox_model(org_id, new.inbox_id).await?;
        let tx = self.store().write().await?;
        let model = assignment::ActiveModel {
            org_id: Set(org_id),
            operator_id: Set(operator.id),
            inbox_id: Set(inbox.id),
            domain_id: Set(inbox.domain_id),
            is_admin: Set(new.is_admin),
            online: Set(new.online),
            receiving: Set(new.receiving),
            created_at: Set(self.now_ms()),
            ..Default::default()
        }
        .insert(&*tx)
        .await
        .map_err(|e| conflict_on_unique(e, "this operator is already assigned to this inbox"))?;
        self.commit_access_change(tx, super::events::Person::Operator(operator.id))
            .await?;
        self.route_for_operator(operator.id).await;
        Ok(model.into())
    }

    pub async fn assignment(&self, who: &Principal, id: i64) -> Result<Assignment> {
        let (org_id, _) = self.require_admin(who)?;
        assignment::Entity::find_by_id(id)
            .filter(assignment::Column::OrgId.eq(org_id))
            .one(self.store().db())
            .await?
            .map(Assignment::from)
            .ok_or(Error::NotFound("assignment"))
    }

    pub async fn list_assignments(
        &self,
        who: &Principal,
        operator_id: Option<i64>,
        inbox_id: Option<i64>,
        after: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<Assignment>> {
        let (org_id, _) = self.require_admin(who)?;
        let mut query = assignment::Entity::find()
            .filter(assignment::Column::OrgId.eq(org_id))
            .filter(assignment::Column::Id.gt(after.unwrap_or(0)));
        if let Some(operator_id) = operator_id {
            query = query.filter(assignment::Column::OperatorId.eq(operator_id));
        }
        if let Some(inbox_id) = inbox_id {
            query = query.filter(assignment::Column::InboxId.eq(inbox_id));
        }
        let rows = query
            .order_by_asc(assignment::Column::Id)
            .limit(list_limit(limit)?)
            .all(self.store().db())
            .await?;
        Ok(rows.into_iter().map(Assignment::from).collect())
    }

    pub async fn update_assignment(
        &self,
        who: &Principal,
        id: i64,
        patch: AssignmentPatch,
    ) -> Result<Assignment> {
        let (org_id, _) = self.require_admin(who)?;
        if patch.is_admin.is_none() && patch.online.is_none() && patch.receiving.is_none() {
            return Err(Error::Invalid(
                "give at least one of is_admin, online, receiving".into(),
            ));
        }
        let tx = self.store().write().await?;
        let current = assignment::Entity::find_by_id(id)
            .filter(assignment::Column::OrgId.eq(org_id))
            .one(&*tx)
            .await?
            .ok_or(Error::NotFound("assignment"))?;
        let mut model = current.into_active_model();
        if let Some(v) = patch.is_admin {
            model.is_admin = Set(v);
        }
        if let Some(v) = patch.online {
            model.online = Set(v);
        }
        if let Some(v) = patch.receiving {
            model.receiving = Set(v);
        }
        let updated = model.update(&*tx).await?;
        self.commit_access_change(tx, super::events::Person::Operator(updated.operator_id))
            .await?;
        self.route_for_operator(updated.operator_id).await;
        Ok(updated.into())
    }

    pub async fn delete_assignment(&self, who: &Principal, id: i64) -> Result<()> {
        let (org_id, _) = self.require_admin(who)?;
        let tx = self.store().write().await?;
        let Some(row) = assignment::Entity::find_by_id(id)
            .filter(assignment::Column::OrgId.eq(org_id))
            .one(&*tx)
            .await?
        else {
            return Err(Error::NotFound("assignment"));
        };
        assignment::Entity::delete_by_id(row.id).exec(&*tx).await?;
        self.commit_access_change(tx, super::events::Person::Operator(row.operator_id))
            .await?;
        Ok(())
    }

    /// Commits `tx`, which changed what `person` may see (an operator's assignments, a
    /// person's sessions), with the person's access time stamped in it, then tells their
    /// live sockets to check their session and re-read which chats they may follow. Every
    /// node also re-checks the sockets of people stamped lately (see `bus::reconcile`), so
    /// the change reaches them even if the telling is lost.
    pub(super) async fn commit_access_change(
        &self,
        tx: crate::store::WriteTx,
        person: super::events::Person,
    ) -> Result<()> {
        use super::events::Person;
        let now = sea_orm::sea_query::Expr::value(self.now_ms());
        match person {
            Person::Operator(id) => {
                operator::Entity::update_many()
                    .col_expr(operator::Column::AccessChangedAt, now)
                    .filter(operator::Column::Id.eq(id))
                    .exec(&*tx)
                    .await?;
            }
            Person::Customer(id) => {
                customer::Entity::update_many()
                    .col_expr(customer::Column::AccessChangedAt, now)
                    .filter(customer::Column::Id.eq(id))
                    .exec(&*tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.announce(super::events::Event::AccessChanged(person));
        Ok(())
    }

    /// People whose access changed at `since_ms` or later, with when.
    pub async fn access_changed_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(super::events::Person, i64)>> {
        use super::events::Person;
        let db = self.store().db();
        let operators: Vec<(i64, i64)> = operator::Entity::find()
            .select_only()
            .column(operator::Column::Id)
            .column(operator::Column::AccessChangedAt)
            .filter(operator::Column::AccessChangedAt.gte(since_ms))
            .into_tuple()
            .all(db)
            .await?;
        let customers: Vec<(i64, i64)> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .column(customer::Column::AccessChangedAt)
            .filter(customer::Column::AccessChangedAt.gte(since_ms))
            .into_tuple()
            .all(db)
            .await?;
        Ok(operators
            .into_iter()
            .map(|(id, at)| (Person::Operator(id), at))
            .chain(
                customers
                    .into_iter()
                    .map(|(id, at)| (Person::Customer(id), at)),
            )
            .collect())
    }

    /// A socket of the operator opened: an offline operator becomes online (a chosen
    /// away or busy stays).
    pub async fn operator_connected(&self, operator_id: i64) -> Result<()> {
        self.set_presence_if(operator_id, Presence::Online, |p| p == Presence::Offline)
            .await
    }

    /// Of `operator_ids` (operators with a socket on this node), those the database says
    /// are offline become online: a decision made while presence across nodes was
    /// unsure (Redis had just come back) is put right.
    pub async fn operators_connected(&self, operator_ids: &[i64]) -> Result<()> {
        for chunk in operator_ids.chunks(500) {
            let offline: Vec<i64> = operator::Entity::find()
                .select_only()
                .column(operator::Column::Id)
                .filter(operator::Column::Id.is_in(chunk.iter().copied()))
                .filter(operator::Column::Presence.eq(Presence::Offline.code()))
                .into_tuple()
                .all(self.store().db())
                .await?;
            for operator_id in offline {
                self.operator_connected(operator_id).await?;
            }
        }
        Ok(())
    }

    /// The operator's last socket closed: they are offline, unless a socket of theirs
    /// opened meanwhile, on this node or (with Redis) on another.
    pub async fn operator_disconnected(&self, operator_id: i64) -> Result<()> {
        self.set_presence_if(operator_id, Presence::Offline, |p| p != Presence::Offline)
            .await
    }

    /// Sets the operator's presence to `to` if `when` says so of the current one; going
    /// offline, only if no socket of theirs is open here or (with Redis) on another node.
    /// The operator's row is locked while that is decided: a socket opening while the
    /// last one closes then either is seen here (and the operator stays online), or comes
    /// to its own change after this one's commit (and sets them online again).
    async fn set_presence_if(
        &self,
        operator_id: i64,
        to: Presence,
        when: impl Fn(Presence) -> bool,
    ) -> Result<()> {
        let tx = self.store().write().await?;
        let current = operator::Entity::find_by_id(operator_id)
            .lock_exclusive()
            .one(&*tx)
            .await?;
        let current = match current {
            Some(c) if when(Presence::from_code(c.presence)) => c,
            _ => {
                tx.commit().await?;
                return Ok(());
            }
        };
        if to == Presence::Offline {
            let person = super::events::Person::Operator(operator_id);
            if self.live.is_connected(person).await {
                tx.commit().await?;
                return Ok(());
            }
        }
        let mut model = current.into_active_model();
        model.presence = Set(to.code());
        model.updated_at = Set(self.now_ms());
        model.update(&*tx).await?;
        tx.commit().await?;
        self.publish_presence(operator_id, to).await
    }

    /// Announces a presence in the rooms of the operator's open chats.
    async fn publish_presence(&self, operator_id: i64, presence: Presence) -> Result<()> {
        let Some(op) = operator::Entity::find_by_id(operator_id)
            .one(self.store().db())
            .await?
        else {
            return Ok(());
        };
        let who = Principal::Operator {
            org_id: op.org_id,
            operator_id,
        };
        let chat_ids = self
            .live_chats(&who)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        self.announce(super::events::Event::Presence {
            operator_id,
            presence,
            chat_ids,
        });
        if presence == Presence::Online {
            self.route_for_operator(operator_id).await;
        }
        Ok(())
    }
}
