//! An organisation's settings (admin): how long files are kept, and how absent members
//! are told of unread messages.

use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Core, Error, FileSettings, Principal, Result};
use crate::store::entity::organisation;

#[derive(Debug, Clone, Serialize)]
pub struct OrganisationSettings {
    #[serde(flatten)]
    pub files: FileSettings,
    /// Seconds a message may stay unread by an absent member before they are told
    /// (`null`: never).
    pub notify_after_secs: Option<i64>,
    /// Where e-mail notifications go out, its password hidden.
    pub smtp_url: Option<String>,
    pub mail_from: Option<String>,
    /// The link back in notifications; `{chat_id}` is replaced by the chat's id.
    pub notify_link: Option<String>,
}

/// A change of settings: a field left out stays as it is; `null` clears it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationPatch {
    #[serde(default, deserialize_with = "present")]
    pub file_retention_days: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub notify_after_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub smtp_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub mail_from: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub notify_link: Option<Option<String>>,
}

/// A field that is there, `null` or not (absent fields stay `None` through `default`).
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What a stored password is shown as.
const HIDDEN: &str = "********";

/// An SMTP URL with its password replaced.
fn hide_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(HIDDEN));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

fn check_smtp_url(url: &str) -> Result<String> {
    let url = url.trim();
    let parsed =
        reqwest::Url::parse(url).map_err(|_| Error::Invalid("smtp_url is not a URL".into()))?;
    if !matches!(parsed.scheme(), "smtp" | "smtps") || parsed.host_str().is_none() {
        return Err(Error::Invalid(
            "smtp_url must be smtp://[user:password@]host[:port][?tls=required] or smtps://..."
                .into(),
        ));
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
        .map_err(|e| Error::Invalid(format!("smtp_url: {e}")))?;
    Ok(url.to_owned())
}

fn check_link(link: &str) -> Result<String> {
    let link = link.trim();
    let sample = link.replace("{chat_id}", "1");
    match reqwest::Url::parse(&sample) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && link.len() <= 2000 => {
            Ok(link.to_owned())
        }
        _ => Err(Error::Invalid(
            "notify_link must be an http(s) URL (with {chat_id} where the chat's id goes)".into(),
        )),
    }
}

impl Core {
    /// `url` with the stored password where it carries the hidden one (a client that
    /// sends back what it read).
    async fn keep_password(&self, org_id: i64, url: &str) -> Result<String> {
        let Ok(mut parsed) = reqwest::Url::parse(url.trim()) else {
            return Ok(url.to_owned());
        };
        if parsed.password() != Some(HIDDEN) {
            return Ok(url.to_owned());
        }
        let stored = organisation::Entity::find_by_id(org_id)
            .one(self.store().db())
            .await?
            .and_then(|o| o.smtp_url)
            .and_then(|s| reqwest::Url::parse(&s).ok())
            .and_then(|s| s.password().map(str::to_owned));
        let Some(password) = stored else {
            return Err(Error::Invalid(
                "smtp_url carries the hidden password, and none is stored".into(),
            ));
        };
        let _ = parsed.set_password(Some(&password));
        Ok(parsed.to_string())
    }

    /// The organisation's settings (admin).
    pub async fn organisation_settings(&self, who: &Principal) -> Result<OrganisationSettings> {
        let org_id = self.require_admin(who)?.0;
        let org = organisation::Entity::find_by_id(org_id)
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("organisation"))?;
        Ok(OrganisationSettings {
            files: self.file_settings(who).await?,
            notify_after_secs: org.notify_after_secs,
            smtp_url: org.smtp_url.as_deref().map(hide_password),
            mail_from: org.mail_from,
            notify_link: org.notify_link,
        })
    }

    /// Changes the settings the patch names, all or none (each is checked first).
    pub async fn update_organisation(
        &self,
        who: &Principal,
        patch: OrganisationPatch,
    ) -> Result<OrganisationSettings> {
        let org_id = self.require_admin(who)?.0;
        let mut changes: Vec<(organisation::Column, SimpleExpr)> = Vec::new();
        if let Some(days) = patch.file_retention_days {
            let days = Core::check_file_retention(days)?;
            changes.push((organisation::Column::FileRetentionDays, Expr::value(days)));
        }
        if let Some(secs) = patch.notify_after_secs {
            if secs.is_some_and(|s| !(1..=43_200).contains(&s)) {
                return Err(Error::Invalid(
                    "notify_after_secs must be from 1 to 43200 (12 hours), or null".into(),
                ));
            }
            changes.push((organisation::Column::NotifyAfterSecs, Expr::value(secs)));
        }
        if let Some(url) = patch.smtp_url {
            let url = match url.filter(|u| !u.trim().is_empty()) {
                Some(u) => Some(check_smtp_url(&self.keep_password(org_id, &u).await?)?),
                None => None,
            };
            changes.push((organisation::Column::SmtpUrl, Expr::value(url)));
        }
        if let Some(from) = patch.mail_from {
            let from = from
                .filter(|f| !f.trim().is_empty())
                .map(|f| {
                    f.trim()
                        .parse::<lettre::message::Mailbox>()
                        .map(|m| m.to_string())
                        .map_err(|_| {
                            Error::Invalid("mail_from must be an address, or Name <address>".into())
                        })
                })
                .transpose()?;
            changes.push((organisation::Column::MailFrom, Expr::value(from)));
        }
        if let Some(link) = patch.notify_link {
            let link = link
                .filter(|l| !l.trim().is_empty())
                .map(|l| check_link(&l))
                .transpose()?;
            changes.push((organisation::Column::NotifyLink, Expr::value(link)));
        }
        if changes.is_empty() {
            return Err(Error::Invalid("the patch changes nothing".into()));
        }
        let mut update = organisation::Entity::update_many();
        for (column, value) in changes {
            update = update.col_expr(column, value);
        }
        update
            .filter(organisation::Column::Id.eq(org_id))
            .exec(self.store().db())
            .await?;
        self.organisation_settings(who).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_absent_from_null() {
        let p: OrganisationPatch = serde_json::from_str(r#"{"smtp_url": null}"#).expect("test");
        assert_eq!(p.smtp_url, Some(None));
        assert_eq!(p.mail_from, None);
        assert!(serde_json::from_str::<OrganisationPatch>(r#"{"smtp": 1}"#).is_err());
    }

    #[test]
    fn smtp_urls_and_links_are_checked_and_passwords_hidden() {
        assert!(check_smtp_url("smtp://127.0.0.1:2525").is_ok());
        assert!(check_smtp_url("smtps://u:p@mail.example.com").is_ok());
        assert!(check_smtp_url("http://mail.example.com").is_err());
        assert!(check_smtp_url("smtp://").is_err());
        assert_eq!(
            hide_password("smtp://u:secret@mail.example.com:587?tls=required"),
            "smtp://u:********@mail.example.com:587?tls=required"
        );
        assert!(check_link("https://shop.example/chats/{chat_id}").is_ok());
        assert!(check_link("javascript:alert(1)").is_err());
    }
}
