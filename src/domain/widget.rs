//! Website visitors: the embeddable widget of a domain makes anonymous customers, each with
//! a session and a chat with the domain's inbox.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::Serialize;

use super::{Core, Error, Principal, Result};
use crate::store::entity::{domain, inbox};

/// What a new visitor said of themselves in the widget's pre-chat form; both optional.
#[derive(Debug, Clone, Default)]
pub struct VisitorDetails {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// What the widget needs to chat.
#[derive(Debug, Clone, Serialize)]
pub struct Visitor {
    pub token: String,
    pub customer_id: i64,
    pub chat_id: i64,
}

/// What the widget of a domain shows before anyone has a session.
#[derive(Debug, Clone, Serialize)]
pub struct WidgetSettings {
    /// Ask a new visitor for a name and an e-mail before the chat.
    pub prechat: bool,
}

impl Core {
    /// The settings of the widget whose key this is (no token: the key is public).
    /// `NotFound` for an unknown key or an inactive domain.
    pub async fn widget_settings(&self, widget_key: &str) -> Result<WidgetSettings> {
        let domain = domain::Entity::find()
            .filter(domain::Column::WidgetKey.eq(widget_key))
            .one(self.store().db())
            .await?
            .filter(|d| d.active)
            .ok_or(Error::NotFound("widget"))?;
        Ok(WidgetSettings {
            prechat: domain.prechat,
        })
    }

    /// Whether `host` (of a browser's `Origin`) is the site of an active domain of some
    /// organisation, or a subdomain of one.
    pub async fn is_known_site(&self, host: &str) -> Result<bool> {
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Ok(false);
        }
        let rows = self
            .store()
            .query(
                "SELECT 1 AS known FROM domains WHERE active = ? \
                 AND (name = ? OR (name LIKE '%.%' AND ? LIKE '%.' || name)) LIMIT 1",
                [true.into(), host.clone().into(), host.into()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// A visitor of the domain whose widget key this is: the one a still valid `token`
    /// belongs to, or a new anonymous customer. Either way with an open chat with the
    /// domain's inbox. A new visitor is named by `details` (else "Visitor"); a known one
    /// keeps their name. Fails with `NotFound` for an unknown key, `Conflict` for an
    /// inactive domain, `Invalid` for a malformed e-mail, and `RateLimited` when the client
    /// at `client` (or the widget, from all clients) has made too many new visitors lately.
    pub async fn visitor(
        &self,
        widget_key: &str,
        token: Option<&str>,
        details: VisitorDetails,
        client: std::net::IpAddr,
    ) -> Result<Visitor> {
        let domain = domain::Entity::find()
            .filter(domain::Column::WidgetKey.eq(widget_key))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("widget"))?;
        if !domain.active {
            return Err(Error::Conflict("this domain is not active".into()));
        }
        let inbox = inbox::Entity::find()
            .filter(inbox::Column::DomainId.eq(domain.id))
            .filter(inbox::Column::UniqueId.eq(""))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("widget"))?;
        let known = match token {
            Some(token) => match self.authenticate(token).await {
                Ok(Principal::Customer {
                    org_id,
                    customer_id,
                }) if org_id == domain.org_id => Some((customer_id, token.to_owned())),
                _ => None,
            },
            None => None,
        };
        let (customer_id, token) = match known {
            Some(k) => k,
            None => {
                let (now, throttles) = (self.now_ms(), &self.throttles);
                throttles.visitors_by_key.check(&domain.widget_key, now)?;
                throttles.visitors_by_address.take(client, now)?;
                throttles
                    .visitors_by_key
                    .take(domain.widget_key.clone(), now)?;
                let admin = Principal::Admin {
                    org_id: domain.org_id,
                    addon_id: domain.addon_id,
                };
                let name = details
                    .name
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty());
                let fields = super::CustomerFields {
                    name: Some(name.unwrap_or_else(|| "Visitor".into())),
                    email: details.email.filter(|e| !e.trim().is_empty()),
                    ..Default::default()
                };
                let (customer, _) = self.identify_customer(&admin, fields).await?;
                let session = self.customer_session(&admin, customer.id).await?;
                (customer.id, session.token)
            }
        };
        let who = Principal::Customer {
            org_id: domain.org_id,
            customer_id,
        };
        let (chat, _) = self.open_chat(&who, inbox.id).await?;
        Ok(Visitor {
            token,
            customer_id,
            chat_id: chat.id,
        })
    }
}
