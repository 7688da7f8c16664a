//! Canned responses: an organisation's ready answers, for every inbox or one, found by
//! their short code as an operator types it, and filled in for a chat: `{customer_name}`,
//! `{store_name}` (the chat's inbox) and `{operator_name}` (the one who uses it).

use sea_orm::{ConnectionTrait, Value};
use serde::{Deserialize, Serialize};

use super::{Core, Error, Principal, Result, conflict_on_unique, required};
use crate::store::stmt;

#[derive(Debug, Clone, Serialize)]
pub struct Canned {
    pub id: i64,
    /// `null`: for every inbox of the organisation.
    pub inbox_id: Option<i64>,
    pub short_code: String,
    pub text: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCanned {
    pub short_code: String,
    pub text: String,
    #[serde(default)]
    pub inbox_id: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedPatch {
    #[serde(default)]
    pub short_code: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// A short code: a word of letters, digits, `-` and `_`, at most 50 characters.
fn short_code(value: &str) -> Result<String> {
    let code = value.trim().trim_start_matches('/').to_lowercase();
    let ok = !code.is_empty()
        && code.len() <= 50
        && code
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(Error::Invalid(
            "short_code must be 1 to 50 letters, digits, - or _".into(),
        ));
    }
    Ok(code)
}

fn canned_of(r: &sea_orm::QueryResult) -> Result<Canned> {
    let inbox_id: i64 = r.try_get("", "inbox_id")?;
    Ok(Canned {
        id: r.try_get("", "id")?,
        inbox_id: (inbox_id != 0).then_some(inbox_id),
        short_code: r.try_get("", "short_code")?,
        text: r.try_get("", "text")?,
        created_at: r.try_get("", "created_at")?,
        updated_at: r.try_get("", "updated_at")?,
    })
}

const COLUMNS: &str = "id, inbox_id, short_code, text, created_at, updated_at";
const TAKEN: &str = "this short code is taken in this inbox";

impl Core {
    /// Adds a canned response (admin), for one inbox of the organisation or all.
    pub async fn create_canned(&self, who: &Principal, new: NewCanned) -> Result<Canned> {
        let org_id = self.require_admin(who)?.0;
        let code = short_code(&new.short_code)?;
        let text = required("text", &new.text, 10_000)?;
        if let Some(inbox) = new.inbox_id {
            let found = self
                .store()
                .query(
                    "SELECT id FROM inboxes WHERE id = ? AND org_id = ?",
                    [inbox.into(), org_id.into()],
                )
                .await?;
            if found.is_empty() {
                return Err(Error::NotFound("inbox"));
            }
        }
        let now = self.now_ms();
        let id = super::inserted_id(
            self.store().db(),
            "INSERT INTO canned_responses (org_id, inbox_id, short_code, text, created_at, \
                 updated_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            [
                org_id.into(),
                new.inbox_id.unwrap_or(0).into(),
                code.into(),
                text.into(),
                now.into(),
                now.into(),
            ],
        )
        .await
        .map_err(|e| match e {
            Error::Store(db) => conflict_on_unique(db, TAKEN),
            other => other,
        })?;
        self.canned(who, id).await
    }

    /// One canned response the caller may use.
    pub async fn canned(&self, who: &Principal, id: i64) -> Result<Canned> {
        let (scope, values) = self.canned_scope(who).await?;
        let mut all: Vec<Value> = vec![id.into()];
        all.extend(values);
        let rows = self
            .store()
            .query(
                &format!("SELECT {COLUMNS} FROM canned_responses WHERE id = ? AND {scope}"),
                all,
            )
            .await?;
        rows.first()
            .map(canned_of)
            .transpose()?
            .ok_or(Error::NotFound("canned response"))
    }

    /// The canned responses the caller may use (an admin: all), those whose short code
    /// starts with `q` first, then those whose text holds it; of one inbox (and the
    /// organisation's own) when `inbox_id` is given.
    pub async fn list_canned(
        &self,
        who: &Principal,
        q: Option<&str>,
        inbox_id: Option<i64>,
    ) -> Result<Vec<Canned>> {
        let (scope, mut values) = self.canned_scope(who).await?;
        let mut sql = format!("SELECT {COLUMNS} FROM canned_responses WHERE {scope}");
        if let Some(inbox) = inbox_id {
            sql.push_str(" AND inbox_id IN (0, ?)");
            values.push(inbox.into());
        }
        let q = q.map(|q| q.trim().trim_start_matches('/').to_lowercase());
        let q = q.filter(|q| !q.is_empty());
        let rows = self.store().query(&sql, values).await?;
        let mut found: Vec<(u8, Canned)> = Vec::new();
        for r in &rows {
            let c = canned_of(r)?;
            let rank = match &q {
                None => 0,
                Some(q) if c.short_code.starts_with(q.as_str()) => 0,
                Some(q) if c.text.to_lowercase().contains(q.as_str()) => 1,
                Some(_) => continue,
            };
            found.push((rank, c));
        }
        found.sort_by(|(ra, a), (rb, b)| ra.cmp(rb).then_with(|| a.short_code.cmp(&b.short_code)));
        Ok(found.into_iter().map(|(_, c)| c).take(200).collect())
    }

    /// Changes a canned response's code or text (admin).
    pub async fn update_canned(
        &self,
        who: &Principal,
        id: i64,
        patch: CannedPatch,
    ) -> Result<Canned> {
        let org_id = self.require_admin(who)?.0;
        let current = self.canned(who, id).await?;
        let code = match patch.short_code {
            Some(c) => short_code(&c)?,
            None => current.short_code,
        };
        let text = match patch.text {
            Some(t) => required("text", &t, 10_000)?,
            None => current.text,
        };
        self.store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE canned_responses SET short_code = ?, text = ?, updated_at = ? \
                 WHERE id = ? AND org_id = ?",
                [
                    code.into(),
                    text.into(),
                    self.now_ms().into(),
                    id.into(),
                    org_id.into(),
                ],
            ))
            .await
            .map_err(|e| conflict_on_unique(e, TAKEN))?;
        self.canned(who, id).await
    }

    /// Removes a canned response (admin).
    pub async fn delete_canned(&self, who: &Principal, id: i64) -> Result<()> {
        let org_id = self.require_admin(who)?.0;
        let done = self
            .store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                "DELETE FROM canned_responses WHERE id = ? AND org_id = ?",
                [id.into(), org_id.into()],
            ))
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("canned response"));
        }
        Ok(())
    }

    /// A canned response filled in for a chat the operator sees: its customer's name, its
    /// store's (inbox's) name and the operator's. One for another inbox than the chat's is
    /// not found.
    pub async fn render_canned(&self, who: &Principal, id: i64, chat_id: i64) -> Result<String> {
        let Principal::Operator { operator_id, .. } = *who else {
            return Err(Error::Forbidden(
                "only an operator answers with canned responses",
            ));
        };
        let canned = self.canned(who, id).await?;
        let chat = self.visible_chat(who, chat_id).await?;
        if canned.inbox_id.is_some_and(|inbox| inbox != chat.inbox_id) {
            return Err(Error::NotFound("canned response"));
        }
        let name = |sql: &'static str, id: i64| async move {
            let rows = self.store().query(sql, [id.into()]).await?;
            Ok::<String, Error>(match rows.first() {
                Some(r) => r.try_get("", "name")?,
                None => String::new(),
            })
        };
        let customer = name("SELECT name FROM customers WHERE id = ?", chat.customer_id).await?;
        let store = name("SELECT name FROM inboxes WHERE id = ?", chat.inbox_id).await?;
        let operator = name("SELECT name FROM operators WHERE id = ?", operator_id).await?;
        Ok(canned
            .text
            .replace("{customer_name}", &customer)
            .replace("{store_name}", &store)
            .replace("{operator_name}", &operator))
    }

    /// Which canned responses the caller may use, as a condition: an admin, all of the
    /// organisation's; an operator, the organisation's own and those of the inboxes they
    /// see; a customer, none.
    async fn canned_scope(&self, who: &Principal) -> Result<(String, Vec<Value>)> {
        match *who {
            Principal::Admin { org_id, .. } => Ok(("org_id = ?".into(), vec![org_id.into()])),
            Principal::Operator {
                org_id,
                operator_id,
            } => {
                // The inboxes whose chats the operator sees (ids of our own rows, written
                // into the condition).
                let counted = self.counted_assignments(operator_id).await?;
                let mut listed = String::new();
                for r in self
                    .store()
                    .query(
                        "SELECT id, domain_id FROM inboxes WHERE org_id = ?",
                        [org_id.into()],
                    )
                    .await?
                {
                    let (inbox, domain): (i64, i64) =
                        (r.try_get("", "id")?, r.try_get("", "domain_id")?);
                    if counted.iter().any(|a| a.covers(inbox, domain)) {
                        listed.push_str(&format!(", {inbox}"));
                    }
                }
                Ok((
                    format!("org_id = ? AND inbox_id IN (0{listed})"),
                    vec![org_id.into()],
                ))
            }
            Principal::Customer { .. } => {
                Err(Error::Forbidden("a customer has no canned responses"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::short_code;

    #[test]
    fn short_codes_are_words() {
        assert_eq!(short_code(" /Thanks ").ok().as_deref(), Some("thanks"));
        assert_eq!(
            short_code("ship-time_2").ok().as_deref(),
            Some("ship-time_2")
        );
        assert!(short_code("two words").is_err());
        assert!(short_code("").is_err());
    }
}
