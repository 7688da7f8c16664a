//! Organisations, passwords and tokens.
//!
//! Tokens are 256 random bits, hex-encoded behind a prefix that names their kind, and
//! only their SHA-256 is stored: a leaked database holds no usable token. (A fast hash is
//! right here: the input has full entropy, so there is nothing to brute-force.)
//! Passwords are hashed with argon2id on a blocking thread.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::events::Person;
use super::{Core, Error, Principal, Result, conflict_on_unique, email};
use crate::store::WriteTx;
use crate::store::entity::{addon, admin_token, customer, operator, organisation, session};

const ACCESS_PREFIX: &str = "sqa_";
const REFRESH_PREFIX: &str = "sqr_";
const SESSION_PREFIX: &str = "sqs_";

/// What `souq org create` asks for.
#[derive(Debug, Clone)]
pub struct NewOrganisation {
    pub email: String,
    pub password: String,
    pub subdomain: String,
    pub addons: Vec<String>,
}

/// An admin token pair, as handed out at sign-in and refresh.
#[derive(Debug, Clone, Serialize)]
pub struct AdminTokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub token_type: &'static str,
    pub organisation_domain: String,
    pub addon: String,
}

/// Who a token signs in, and until when.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub who: Principal,
    /// When the token expires (unix ms).
    pub expires_at: i64,
    /// The session of an operator's or customer's token (admin tokens have none).
    pub session_id: Option<i64>,
}

/// A new operator or customer session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionToken {
    pub token: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

fn new_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", super::hex(&bytes))
}

/// SHA-256 of a token, hex-encoded: the only form in which tokens are stored.
pub(super) fn token_hash(token: &str) -> String {
    super::hex(&Sha256::digest(token.as_bytes()))
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt_bytes: [u8; 16] = rand::random();
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| Error::Internal(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(e.to_string()))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

fn addon_name(value: &str) -> Result<String> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(Error::Invalid(
            "addon must be 1-64 characters of a-z, 0-9, '_' and '-'".into(),
        ));
    }
    Ok(value.to_owned())
}

fn subdomain(value: &str) -> Result<String> {
    let value = value.trim().to_lowercase();
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        return Err(Error::Invalid(
            "subdomain must be 1-63 characters of a-z, 0-9 and '-'".into(),
        ));
    }
    Ok(value)
}

impl Core {
    /// Creates an organisation with its addons. Fails with `Conflict` when the email or
    /// subdomain is taken, `Invalid` on a bad email, a password under 8 characters, or
    /// a bad subdomain or addon name.
    pub async fn create_organisation(&self, new: NewOrganisation) -> Result<i64> {
        let email = email("email", &new.email)?;
        let subdomain = subdomain(&new.subdomain)?;
        if new.password.chars().count() < 8 {
            return Err(Error::Invalid(
                "password must be at least 8 characters".into(),
            ));
        }
        let addons = new
            .addons
            .iter()
            .map(|a| addon_name(a))
            .collect::<Result<Vec<_>>>()?;
        if addons.is_empty() {
            return Err(Error::Invalid(
                "an organisation needs at least one addon".into(),
            ));
        }
        let password_hash = hash_password(new.password).await?;
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let org = organisation::ActiveModel {
            email: Set(email),
            password_hash: Set(password_hash),
            subdomain: Set(subdomain),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await
        .map_err(|e| {
            conflict_on_unique(e, "an organisation with this email or subdomain exists")
        })?;
        for name in addons {
            let exists = addon::Entity::find()
                .filter(addon::Column::OrgId.eq(org.id))
                .filter(addon::Column::Name.eq(&name))
                .one(&*tx)
                .await?;
            if exists.is_none() {
                addon::ActiveModel {
                    org_id: Set(org.id),
                    name: Set(name),
                    created_at: Set(now),
                    ..Default::default()
                }
                .insert(&*tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(org.id)
    }

    /// Signs an organisation in for one addon, from the client at `client`. Wrong email,
    /// password, subdomain or addon all fail alike with `Unauthorized`, so that none of
    /// them can be probed; a client past its failed sign-ins is refused with
    /// `RateLimited`, whatever it sends, until it may try again.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        subdomain: &str,
        addon: &str,
        client: std::net::IpAddr,
    ) -> Result<AdminTokens> {
        let failures = &self.throttles.failed_sign_ins;
        failures.check(&client, self.now_ms())?;
        let signed_in = self.check_sign_in(email, password, subdomain, addon).await;
        if let Err(Error::Unauthorized(_)) = signed_in {
            // Counted, not refused: this try was answered already.
            let _ = failures.take(client, self.now_ms());
        }
        signed_in
    }

    async fn check_sign_in(
        &self,
        email: &str,
        password: &str,
        subdomain: &str,
        addon: &str,
    ) -> Result<AdminTokens> {
        const REFUSED: Error = Error::Unauthorized("wrong email, password, organisation or addon");
        let org = organisation::Entity::find()
            .filter(organisation::Column::Email.eq(email.trim().to_lowercase()))
            .filter(organisation::Column::Subdomain.eq(subdomain.trim().to_lowercase()))
            .one(self.store().db())
            .await?;
        let Some(org) = org else { return Err(REFUSED) };
        if !verify_password(password.to_owned(), org.password_hash.clone()).await? {
            return Err(REFUSED);
        }
        let addon = addon::Entity::find()
            .filter(addon::Column::OrgId.eq(org.id))
            .filter(addon::Column::Name.eq(addon.trim()))
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        let tx = self.store().write().await?;
        let tokens = self.issue_admin_tokens(&tx, &org, &addon).await?;
        tx.commit().await?;
        Ok(tokens)
    }

    /// Exchanges a refresh token for a new pair; the old pair stops working. A refresh
    /// token works once: of two concurrent refreshes, one fails with `Unauthorized`.
    pub async fn refresh_admin_tokens(&self, refresh_token: &str) -> Result<AdminTokens> {
        const REFUSED: Error = Error::Unauthorized("refresh token is not valid");
        let now = self.now_ms();
        let row = admin_token::Entity::find()
            .filter(admin_token::Column::RefreshHash.eq(token_hash(refresh_token)))
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        if row.refresh_expires_at <= now {
            return Err(REFUSED);
        }
        let org = organisation::Entity::find_by_id(row.org_id)
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        let addon = addon::Entity::find_by_id(row.addon_id)
            .one(self.store().db())
            .await?
            .ok_or(REFUSED)?;
        // Retiring the old pair and issuing the new one commit together: a failure
        // leaves the old pair working.
        let tx = self.store().write().await?;
        let deleted = admin_token::Entity::delete_by_id(row.id).exec(&*tx).await?;
        if deleted.rows_affected != 1 {
            return Err(REFUSED);
        }
        let tokens = self.issue_admin_tokens(&tx, &org, &addon).await?;
        tx.commit().await?;
        Ok(tokens)
    }

    async fn issue_admin_tokens(
        &self,
        tx: &WriteTx,
        org: &organisation::Model,
        addon: &addon::Model,
    ) -> Result<AdminTokens> {
        let now = self.now_ms();
        let access_token = new_token(ACCESS_PREFIX);
        let refresh_token = new_token(REFRESH_PREFIX);
        let ttl = self.limits().access_token_ttl_s;
        admin_token::ActiveModel {
            org_id: Set(org.id),
            addon_id: Set(addon.id),
            access_hash: Set(token_hash(&access_token)),
            refresh_hash: Set(token_hash(&refresh_token)),
            access_expires_at: Set(now + ttl * 1000),
            refresh_expires_at: Set(now + self.limits().refresh_token_ttl_s * 1000),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&**tx)
        .await?;
        Ok(AdminTokens {
            access_token,
            refresh_token,
            expires_in: ttl,
            token_type: "Bearer",
            organisation_domain: org.subdomain.clone(),
            addon: addon.name.clone(),
        })
    }

    /// Resolves a bearer token to its principal. Fails with `Unauthorized` when the token
    /// is unknown, malformed or expired.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        Ok(self.sign_in_with(token).await?.who)
    }

    /// [`Core::authenticate`], with when the token expires and its session (a live
    /// socket is closed when either ends).
    pub async fn sign_in_with(&self, token: &str) -> Result<SignedIn> {
        let (who, expires_at, session_id) = self.authenticate_until(token).await?;
        Ok(SignedIn {
            who,
            expires_at,
            session_id,
        })
    }

    async fn authenticate_until(&self, token: &str) -> Result<(Principal, i64, Option<i64>)> {
        let now = self.now_ms();
        let db = self.store().db();
        if token.starts_with(ACCESS_PREFIX) {
            let row = admin_token::Entity::find()
                .filter(admin_token::Column::AccessHash.eq(token_hash(token)))
                .one(db)
                .await?
                .ok_or(Error::Unauthorized("token is not valid"))?;
            if row.access_expires_at <= now {
                return Err(Error::Unauthorized("token has expired"));
            }
            let admin = Principal::Admin {
                org_id: row.org_id,
                addon_id: row.addon_id,
            };
            return Ok((admin, row.access_expires_at, None));
        }
        if token.starts_with(SESSION_PREFIX) {
            let row = session::Entity::find()
                .filter(session::Column::TokenHash.eq(token_hash(token)))
                .one(db)
                .await?
                .ok_or(Error::Unauthorized("token is not valid"))?;
            if row.expires_at <= now {
                return Err(Error::Unauthorized("token has expired"));
            }
            let who = match row.subject_kind.as_str() {
                "operator" => Principal::Operator {
                    org_id: row.org_id,
                    operator_id: row.subject_id,
                },
                "customer" => Principal::Customer {
                    org_id: row.org_id,
                    customer_id: row.subject_id,
                },
                _ => return Err(Error::Unauthorized("token is not valid")),
            };
            return Ok((who, row.expires_at, Some(row.id)));
        }
        Err(Error::Unauthorized("token is not valid"))
    }

    /// Whether a session still holds: not revoked, not expired.
    pub async fn session_alive(&self, session_id: i64) -> Result<bool> {
        Ok(session::Entity::find_by_id(session_id)
            .filter(session::Column::ExpiresAt.gt(self.now_ms()))
            .one(self.store().db())
            .await?
            .is_some())
    }

    /// Ends the session (or admin token) `token` signs in with: REST refuses it at once,
    /// and the sockets it opened close with 4001 on every node.
    pub async fn sign_out(&self, token: &str) -> Result<()> {
        let hash = token_hash(token);
        let tx = self.store().write().await?;
        if token.starts_with(ACCESS_PREFIX) {
            admin_token::Entity::delete_many()
                .filter(admin_token::Column::AccessHash.eq(hash))
                .exec(&*tx)
                .await?;
            tx.commit().await?;
            return Ok(());
        }
        let Some(row) = session::Entity::find()
            .filter(session::Column::TokenHash.eq(hash))
            .one(&*tx)
            .await?
        else {
            return Err(Error::Unauthorized("token is not valid"));
        };
        session::Entity::delete_by_id(row.id).exec(&*tx).await?;
        match Person::from_kind(&row.subject_kind, row.subject_id) {
            Some(person) => self.commit_access_change(tx, person).await,
            None => Ok(tx.commit().await?),
        }
    }

    /// Ends every session of an operator or customer of the admin's organisation: REST
    /// refuses their tokens at once, and their sockets close with 4001 on every node.
    pub async fn revoke_sessions(&self, who: &Principal, person: Person) -> Result<()> {
        let org_id = self.require_admin(who)?.0;
        let found = match person {
            Person::Operator(id) => operator::Entity::find_by_id(id)
                .filter(operator::Column::OrgId.eq(org_id))
                .one(self.store().db())
                .await?
                .is_some(),
            Person::Customer(id) => customer::Entity::find_by_id(id)
                .filter(customer::Column::OrgId.eq(org_id))
                .one(self.store().db())
                .await?
                .is_some(),
        };
        if !found {
            return Err(Error::NotFound(person.kind()));
        }
        let tx = self.store().write().await?;
        session::Entity::delete_many()
            .filter(session::Column::OrgId.eq(org_id))
            .filter(session::Column::SubjectKind.eq(person.kind()))
            .filter(session::Column::SubjectId.eq(person.id()))
            .exec(&*tx)
            .await?;
        self.commit_access_change(tx, person).await
    }

    /// Issues a session token for an operator of the admin's organisation.
    pub async fn operator_session(
        &self,
        who: &Principal,
        operator_id: i64,
    ) -> Result<SessionToken> {
        let org_id = self.require_admin(who)?.0;
        operator::Entity::find_by_id(operator_id)
            .filter(operator::Column::OrgId.eq(org_id))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("operator"))?;
        self.issue_session(org_id, "operator", operator_id).await
    }

    /// A customer signs in with their phone and the password they set, in the
    /// organisation with this subdomain, from the client at `client`. Every wrong part
    /// fails alike, and failed tries are limited per client as for organisations.
    pub async fn customer_sign_in(
        &self,
        subdomain: &str,
        phone: &str,
        password: &str,
        client: std::net::IpAddr,
    ) -> Result<SessionToken> {
        const REFUSED: Error = Error::Unauthorized("wrong organisation, phone or password");
        let failures = &self.throttles.failed_sign_ins;
        failures.check(&client, self.now_ms())?;
        let found = async {
            let org = organisation::Entity::find()
                .filter(organisation::Column::Subdomain.eq(subdomain.trim().to_lowercase()))
                .one(self.store().db())
                .await?
                .ok_or(REFUSED)?;
            let c = customer::Entity::find()
                .filter(customer::Column::OrgId.eq(org.id))
                .filter(customer::Column::Phone.eq(phone.trim()))
                .one(self.store().db())
                .await?
                .ok_or(REFUSED)?;
            let hash = c.password_hash.clone().ok_or(REFUSED)?;
            if !verify_password(password.to_owned(), hash).await? {
                return Err(REFUSED);
            }
            Ok((org.id, c.id))
        }
        .await;
        match found {
            Ok((org_id, customer_id)) => self.issue_session(org_id, "customer", customer_id).await,
            Err(e) => {
                if let Error::Unauthorized(_) = e {
                    let _ = failures.take(client, self.now_ms());
                }
                Err(e)
            }
        }
    }

    /// A customer sets their password: `current` must be the one they have, if any; the
    /// new one is 8 to 200 characters.
    pub async fn set_customer_password(
        &self,
        who: &Principal,
        current: Option<&str>,
        new: &str,
    ) -> Result<()> {
        let Principal::Customer { customer_id, .. } = *who else {
            return Err(Error::Forbidden("only a customer sets a password here"));
        };
        let length = new.chars().count();
        if !(8..=200).contains(&length) {
            return Err(Error::Invalid(
                "the new password must be 8 to 200 characters".into(),
            ));
        }
        let c = customer::Entity::find_by_id(customer_id)
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("customer"))?;
        if let Some(hash) = c.password_hash.clone() {
            let matches = match current {
                Some(current) => verify_password(current.to_owned(), hash).await?,
                None => false,
            };
            if !matches {
                return Err(Error::Invalid("the current password is wrong".into()));
            }
        }
        let hash = hash_password(new.to_owned()).await?;
        let mut model = c.into_active_model();
        model.password_hash = Set(Some(hash));
        model.updated_at = Set(self.now_ms());
        model.update(self.store().db()).await?;
        Ok(())
    }

    /// Issues a session token for a customer of the admin's organisation.
    pub async fn customer_session(
        &self,
        who: &Principal,
        customer_id: i64,
    ) -> Result<SessionToken> {
        let org_id = self.require_admin(who)?.0;
        customer::Entity::find_by_id(customer_id)
            .filter(customer::Column::OrgId.eq(org_id))
            .one(self.store().db())
            .await?
            .ok_or(Error::NotFound("customer"))?;
        self.issue_session(org_id, "customer", customer_id).await
    }

    async fn issue_session(
        &self,
        org_id: i64,
        kind: &str,
        subject_id: i64,
    ) -> Result<SessionToken> {
        let now = self.now_ms();
        let token = new_token(SESSION_PREFIX);
        let expires_at = now + self.limits().session_ttl_s * 1000;
        let tx = self.store().write().await?;
        session::ActiveModel {
            org_id: Set(org_id),
            subject_kind: Set(kind.to_owned()),
            subject_id: Set(subject_id),
            token_hash: Set(token_hash(&token)),
            expires_at: Set(expires_at),
            created_at: Set(now),
            ..Default::default()
        }
        .insert(&*tx)
        .await?;
        tx.commit().await?;
        Ok(SessionToken { token, expires_at })
    }

    /// The admin's (org_id, addon_id), or `Forbidden` for any other principal.
    pub(super) fn require_admin(&self, who: &Principal) -> Result<(i64, i64)> {
        match *who {
            Principal::Admin { org_id, addon_id } => Ok((org_id, addon_id)),
            _ => Err(Error::Forbidden("this needs an organisation's admin token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed_to_64_hex() {
        let a = new_token(SESSION_PREFIX);
        let b = new_token(SESSION_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with(SESSION_PREFIX) && a.len() == SESSION_PREFIX.len() + 64);
        let h = token_hash(&a);
        assert_eq!(h.len(), 64);
        assert_ne!(h, token_hash(&b));
    }

    #[test]
    fn subdomain_and_addon_names_are_checked() {
        assert_eq!(subdomain(" Acme-1 ").ok().as_deref(), Some("acme-1"));
        assert!(subdomain("-acme").is_err());
        assert!(subdomain("ac me").is_err());
        assert!(addon_name("seller_buyer").is_ok());
        assert!(addon_name("Seller").is_err());
    }
}
