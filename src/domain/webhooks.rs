//! Webhooks: an organisation's endpoints, and the outbox of their events.
//!
//! Triggers write an event row per endpoint in the transaction of each change
//! (`schema/webhook_triggers.*.sql`), so an event exists exactly when its change
//! committed. They are installed while some organisation has an active endpoint, in the
//! transaction that makes the first one, and dropped with the last: a deployment without
//! webhooks pays nothing for them on its message path. Any node may deliver: it claims the due head of each chat's queue (a lease
//! until `next_at`; PostgreSQL's `SKIP LOCKED` keeps two nodes off the same row), sends,
//! and marks it done, or due again after a backoff, or dead once it has failed for
//! longer than the retry period. A node that dies mid-send leaves a lease that runs out,
//! and the event is sent again: delivery is at least once, with the event id to dedupe.

use hmac::{Hmac, Mac};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Value};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Core, Error, Principal, Result};
use crate::store::entity::{chat, file, message};
use crate::store::stmt;

/// Every kind of event an endpoint can ask for.
pub const EVENT_KINDS: &[&str] = &[
    "message.created",
    "chat.created",
    "chat.taken",
    "chat.assigned",
    "chat.finished",
    "receipt",
    "presence",
    "file.uploaded",
    "notify",
];

/// An endpoint of an organisation.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    /// The signing secret: shown when the endpoint is made, never after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub active: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub active: Option<bool>,
}

/// An event of an endpoint, as the API lists them.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookEvent {
    /// `evt_<n>`, as sent in `Souq-Event-Id`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub chat_id: Option<i64>,
    /// `pending`, `sending`, `done` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub created_at: i64,
    /// When it is next tried (pending), or its lease ends (sending).
    pub next_at: i64,
    pub last_error: Option<String>,
    pub done_at: Option<i64>,
}

/// An event claimed for delivery, with where it goes.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub webhook_id: i64,
    pub org_id: i64,
    pub chat_id: i64,
    pub kind: String,
    pub subject_id: i64,
    pub subject_text: String,
    pub n1: i64,
    pub n2: i64,
    pub created_at: i64,
    /// This try's number, from 1.
    pub attempt: i64,
}

/// How one delivery went.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The endpoint answered 2xx.
    Delivered,
    /// What the event was about is gone (erased): nothing to send.
    Gone,
    /// The target itself is gone for good (a push subscription its browser ended).
    Ended,
    /// Why it failed: `HTTP 500`, `timed out`...
    Failed(String),
}

/// One try of an outbox row, as recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tried<'a> {
    pub id: i64,
    pub attempt: i64,
    pub created_at: i64,
    pub result: &'a Delivery,
}

/// A claimed event and how its delivery went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub event: Claimed,
    pub result: Delivery,
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first retry's delay; each next one doubles it.
    pub first_ms: i64,
    /// The longest delay between tries.
    pub max_ms: i64,
    /// How long after the event tries go on before it is dead.
    pub retry_for_ms: i64,
}

impl RetryPolicy {
    /// When try `attempt` (from 1) failed at `now`: the next try's time, or `None` once
    /// the event has been failing for longer than the retry period. The delay doubles from
    /// `first_ms` up to `max_ms`, with up to a quarter of it added at random (`jitter` in
    /// 0..1), so that a recovering endpoint is not met by every retry at once.
    pub fn next_try(&self, attempt: i64, created_at: i64, now: i64, jitter: f64) -> Option<i64> {
        if now - created_at >= self.retry_for_ms {
            return None;
        }
        let doubled = self
            .first_ms
            .saturating_mul(1i64 << (attempt - 1).clamp(0, 30));
        let delay = doubled.min(self.max_ms);
        let spread = (delay as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as i64;
        Some(now + delay + spread)
    }
}

fn kinds(events: &[String]) -> Result<String> {
    if events.is_empty() {
        return Err(Error::Invalid("events must name at least one event".into()));
    }
    for e in events {
        if !EVENT_KINDS.contains(&e.as_str()) {
            return Err(Error::Invalid(format!(
                "unknown event {e:?}; events are {}",
                EVENT_KINDS.join(", ")
            )));
        }
    }
    let mut unique: Vec<&str> = events.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    Ok(unique.join(","))
}

fn endpoint(url: &str) -> Result<String> {
    let url = url.trim();
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2000
        && !url.contains(char::is_whitespace)
        && url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty());
    if !ok {
        return Err(Error::Invalid(
            "url must be an http:// or https:// address".into(),
        ));
    }
    Ok(url.to_owned())
}

fn webhook_of(row: &sea_orm::QueryResult) -> Result<Webhook> {
    let events: String = row.try_get("", "events")?;
    Ok(Webhook {
        id: row.try_get("", "id")?,
        url: row.try_get("", "url")?,
        events: events.split(',').map(str::to_owned).collect(),
        active: row.try_get("", "active")?,
        secret: None,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
    })
}

/// The signature of a delivery: HMAC-SHA256 with the endpoint's secret over
/// `"{timestamp}.{body}"`, in hex. Sent as `Souq-Signature: t={timestamp},v1={hex}`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    super::hex(&mac.finalize().into_bytes())
}

const COLUMNS: &str = "id, url, events, active, created_at, updated_at";

/// Any fixed number, the same on every node (the migrations' is another).
const WEBHOOKS_LOCK: i64 = 0x736f_7577;

const SQLITE_TRIGGERS: &str = include_str!("../../schema/webhook_triggers.sqlite.sql");
const POSTGRES_TRIGGERS: &str = include_str!("../../schema/webhook_triggers.postgres.sql");

/// Every trigger those files make, with its table: what is dropped with the last endpoint.
const TRIGGERS: &[(&str, &str)] = &[
    ("webhooks_message_created", "messages"),
    ("webhooks_chat_created", "chats"),
    ("webhooks_chat_taken", "chats"),
    ("webhooks_chat_assigned", "chats"),
    ("webhooks_chat_finished", "chats"),
    ("webhooks_chat_changed", "chats"),
    ("webhooks_receipt_new", "receipts"),
    ("webhooks_receipt_moved", "receipts"),
    ("webhooks_presence", "operators"),
    ("webhooks_file_uploaded", "files"),
];

/// Installs the outbox's triggers if some endpoint is active, or (on SQLite) drops them if
/// none is, within `tx`; does nothing when they already are as they should be. On
/// PostgreSQL they stay once installed: each checks for an active endpoint first, once a
/// statement, and dropping one would lock its table against every writer. Changes of
/// endpoints take an advisory lock first, so that two of them decide one after the other.
async fn sync_triggers(tx: &impl ConnectionTrait, backend: DbBackend) -> Result<()> {
    if backend == DbBackend::Postgres {
        tx.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({WEBHOOKS_LOCK})"))
            .await?;
    }
    let wanted = tx
        .query_one_raw(stmt(
            backend,
            "SELECT 1 AS one FROM webhooks WHERE active = ? LIMIT 1",
            [true.into()],
        ))
        .await?
        .is_some();
    let probe = match backend {
        DbBackend::Postgres => {
            "SELECT 1 AS one FROM pg_trigger WHERE tgname = 'webhooks_message_created'"
        }
        _ => {
            "SELECT 1 AS one FROM sqlite_master WHERE type = 'trigger' \
              AND name = 'webhooks_message_created'"
        }
    };
    let installed = tx.query_one_raw(stmt(backend, probe, [])).await?.is_some();
    if wanted == installed || (installed && backend == DbBackend::Postgres) {
        return Ok(());
    }
    let statements = match (wanted, backend) {
        (true, DbBackend::Postgres) => crate::store::statements(backend, POSTGRES_TRIGGERS),
        (true, _) => crate::store::statements(backend, SQLITE_TRIGGERS),
        (false, DbBackend::Postgres) => TRIGGERS
            .iter()
            .map(|(name, table)| format!("DROP TRIGGER IF EXISTS {name} ON {table}"))
            .collect(),
        (false, _) => TRIGGERS
            .iter()
            .map(|(name, _)| format!("DROP TRIGGER IF EXISTS {name}"))
            .collect(),
    };
    for statement in statements {
        tx.execute_unprepared(&statement).await?;
    }
    tracing::info!(installed = wanted, "webhook triggers");
    Ok(())
}

impl Core {
    /// Registers an endpoint (admin). The answer carries its signing secret, once.
    pub async fn create_webhook(&self, who: &Principal, new: NewWebhook) -> Result<Webhook> {
        let (org_id, _) = self.require_admin(who)?;
        let url = endpoint(&new.url)?;
        let events = kinds(&new.events)?;
        let bytes: [u8; 24] = rand::random();
        let secret = format!("whsec_{}", super::hex(&bytes));
        let now = self.now_ms();
        let active = new.active.unwrap_or(true);
        let tx = self.store().write().await?;
        let row = tx
            .query_one_raw(stmt(
                self.store().backend(),
                &format!(
                    "INSERT INTO webhooks (org_id, url, secret, events, active, created_at, \
                     updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {COLUMNS}"
                ),
                [
                    org_id.into(),
                    url.clone().into(),
                    secret.clone().into(),
                    events.clone().into(),
                    active.into(),
                    now.into(),
                    now.into(),
                ],
            ))
            .await?
            .ok_or_else(|| Error::Internal("the webhook just made is gone".into()))?;
        sync_triggers(&*tx, self.store().backend()).await?;
        tx.commit().await?;
        Ok(Webhook {
            secret: Some(secret),
            ..webhook_of(&row)?
        })
    }

    /// The organisation's endpoints (admin).
    pub async fn webhooks(&self, who: &Principal) -> Result<Vec<Webhook>> {
        let (org_id, _) = self.require_admin(who)?;
        self.store()
            .query(
                &format!("SELECT {COLUMNS} FROM webhooks WHERE org_id = ? ORDER BY id"),
                [org_id.into()],
            )
            .await?
            .iter()
            .map(webhook_of)
            .collect()
    }

    /// One endpoint of the organisation (admin); `NotFound` for another's.
    pub async fn webhook(&self, who: &Principal, id: i64) -> Result<Webhook> {
        let (org_id, _) = self.require_admin(who)?;
        let rows = self
            .store()
            .query(
                &format!("SELECT {COLUMNS} FROM webhooks WHERE id = ? AND org_id = ?"),
                [id.into(), org_id.into()],
            )
            .await?;
        webhook_of(rows.first().ok_or(Error::NotFound("webhook"))?)
    }

    /// Changes an endpoint's address, events or whether it is active (admin).
    pub async fn update_webhook(
        &self,
        who: &Principal,
        id: i64,
        patch: WebhookPatch,
    ) -> Result<Webhook> {
        let current = self.webhook(who, id).await?;
        if patch.url.is_none() && patch.events.is_none() && patch.active.is_none() {
            return Err(Error::Invalid(
                "give at least one of url, events, active".into(),
            ));
        }
        let url = patch
            .url
            .as_deref()
            .map(endpoint)
            .transpose()?
            .unwrap_or(current.url);
        let events = match &patch.events {
            Some(e) => kinds(e)?,
            None => current.events.join(","),
        };
        let active = patch.active.unwrap_or(current.active);
        let tx = self.store().write().await?;
        tx.execute_raw(stmt(
            self.store().backend(),
            "UPDATE webhooks SET url = ?, events = ?, active = ?, updated_at = ? WHERE id = ?",
            [
                url.into(),
                events.into(),
                active.into(),
                self.now_ms().into(),
                id.into(),
            ],
        ))
        .await?;
        sync_triggers(&*tx, self.store().backend()).await?;
        tx.commit().await?;
        self.webhook(who, id).await
    }

    /// Removes an endpoint and its events (admin).
    pub async fn delete_webhook(&self, who: &Principal, id: i64) -> Result<()> {
        self.webhook(who, id).await?;
        let backend = self.store().backend();
        let tx = self.store().write().await?;
        for sql in [
            "DELETE FROM webhook_events WHERE webhook_id = ?",
            "DELETE FROM webhooks WHERE id = ?",
        ] {
            tx.execute_raw(stmt(backend, sql, [id.into()])).await?;
        }
        sync_triggers(&*tx, backend).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Installs or drops the outbox's triggers as the endpoints want them (a start does
    /// it, in case a database was restored or changed by hand).
    pub async fn sync_webhook_triggers(&self) -> Result<()> {
        let tx = self.store().write().await?;
        sync_triggers(&*tx, self.store().backend()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An endpoint's events, newest first: all, or those in one state (`dead`, say).
    pub async fn webhook_events(
        &self,
        who: &Principal,
        id: i64,
        state: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<WebhookEvent>> {
        self.webhook(who, id).await?;
        if state.is_some_and(|s| !["pending", "sending", "done", "dead"].contains(&s)) {
            return Err(Error::Invalid(
                "state must be pending, sending, done or dead".into(),
            ));
        }
        let limit = super::admin::list_limit(limit)?;
        let mut values: Vec<Value> = vec![id.into()];
        let mut sql = String::from(
            "SELECT id, kind, chat_id, state, attempts, created_at, next_at, last_error, done_at \
             FROM webhook_events WHERE webhook_id = ?",
        );
        if let Some(state) = state {
            sql.push_str(" AND state = ?");
            values.push(state.into());
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let rows = self.store().query(&sql, values).await?;
        rows.iter()
            .map(|r| {
                let chat_id: i64 = r.try_get("", "chat_id")?;
                let attempts: i32 = r.try_get("", "attempts")?;
                Ok(WebhookEvent {
                    id: format!("evt_{}", r.try_get::<i64>("", "id")?),
                    kind: r.try_get("", "kind")?,
                    chat_id: (chat_id != 0).then_some(chat_id),
                    state: r.try_get("", "state")?,
                    attempts: attempts.into(),
                    created_at: r.try_get("", "created_at")?,
                    next_at: r.try_get("", "next_at")?,
                    last_error: r.try_get("", "last_error")?,
                    done_at: r.try_get("", "done_at")?,
                })
            })
            .collect()
    }

    /// Sends a dead event again, as a new first try (admin).
    pub async fn retry_webhook_event(&self, who: &Principal, id: i64, event: &str) -> Result<()> {
        self.webhook(who, id).await?;
        let event_id: i64 = event
            .strip_prefix("evt_")
            .and_then(|n| n.parse().ok())
            .ok_or(Error::NotFound("event"))?;
        let now = self.now_ms();
        let done = self
            .store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE webhook_events SET state = 'pending', attempts = 0, next_at = ?, \
                 created_at = ? WHERE id = ? AND webhook_id = ? AND state = 'dead'",
                [now.into(), now.into(), event_id.into(), id.into()],
            ))
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("dead event"));
        }
        Ok(())
    }

    /// The active endpoints of every organisation: what a delivery round goes through.
    pub async fn active_webhooks(&self) -> Result<Vec<(i64, String, String)>> {
        let rows = self
            .store()
            .query(
                "SELECT id, url, secret FROM webhooks WHERE active = ? ORDER BY id",
                [true.into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "id")?,
                    r.try_get("", "url")?,
                    r.try_get("", "secret")?,
                ))
            })
            .collect()
    }

    /// Claims up to `limit` due events of an endpoint for delivery until `lease_ms` from
    /// now: of each chat, only its oldest undelivered event (so a chat's events go out in
    /// order), and none another node holds.
    pub async fn claim_webhook_events(
        &self,
        webhook_id: i64,
        limit: u64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        let backend = self.store().backend();
        let now = self.now_ms();
        let skip_locked = match backend {
            DbBackend::Postgres => " FOR UPDATE OF e SKIP LOCKED",
            _ => "",
        };
        // Each chat's head is its oldest undelivered event (one aggregate over the
        // partial index of undelivered events: linear whatever the plan, where a
        // correlated "no older one" test can turn quadratic on a planner's bad guess);
        // the due heads are claimed, oldest first.
        let sql = format!(
            "WITH heads AS (SELECT MIN(id) AS id FROM webhook_events \
                 WHERE webhook_id = ? AND state IN ('pending', 'sending') GROUP BY chat_id) \
             UPDATE webhook_events SET state = 'sending', next_at = ?, attempts = attempts + 1 \
             WHERE id IN (SELECT e.id FROM webhook_events e JOIN heads h ON h.id = e.id \
                 WHERE e.state IN ('pending', 'sending') AND e.next_at <= ? \
                 ORDER BY e.id LIMIT {limit}{skip_locked}) \
             RETURNING id, webhook_id, org_id, chat_id, kind, subject_id, subject_text, n1, n2, \
                 created_at, attempts"
        );
        let tx = self.store().write().await?;
        let rows = tx
            .query_all_raw(stmt(
                backend,
                &sql,
                [webhook_id.into(), (now + lease_ms).into(), now.into()],
            ))
            .await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                let attempt: i32 = r.try_get("", "attempts")?;
                Ok(Claimed {
                    id: r.try_get("", "id")?,
                    webhook_id: r.try_get("", "webhook_id")?,
                    org_id: r.try_get("", "org_id")?,
                    chat_id: r.try_get("", "chat_id")?,
                    kind: r.try_get("", "kind")?,
                    subject_id: r.try_get("", "subject_id")?,
                    subject_text: r.try_get("", "subject_text")?,
                    n1: r.try_get("", "n1")?,
                    n2: r.try_get("", "n2")?,
                    created_at: r.try_get("", "created_at")?,
                    attempt: attempt.into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    /// The JSON body of a claimed event: `{id, type, created_at, organisation_id, data}`,
    /// `data` read now from what the event is about. `None` when that is gone (a
    /// customer's data erased since).
    pub async fn webhook_body(&self, event: &Claimed) -> Result<Option<serde_json::Value>> {
        use serde_json::json;
        let data = match event.kind.as_str() {
            "message.created" => {
                let Some(m) = message::Entity::find_by_id(event.subject_id)
                    .one(self.store().db())
                    .await?
                else {
                    return Ok(None);
                };
                let mut messages = vec![super::Message::from(m)];
                self.attach_files(&mut messages).await?;
                json!({ "chat_id": event.chat_id, "message": messages.remove(0) })
            }
            "chat.created" | "chat.taken" | "chat.assigned" | "chat.finished" => {
                let Some(chat) = chat::Entity::find_by_id(event.chat_id)
                    .one(self.store().db())
                    .await?
                else {
                    return Ok(None);
                };
                let mut data = json!({ "chat": super::chats::summary(&chat) });
                if event.kind == "chat.taken" || event.kind == "chat.assigned" {
                    data["operator_id"] = json!(event.subject_id);
                }
                if event.kind == "chat.assigned" {
                    data["previous_operator_id"] = json!(event.n1);
                }
                data
            }
            "receipt" => json!({
                "chat_id": event.chat_id,
                "member": { "kind": event.subject_text, "id": event.subject_id },
                "received_seq": event.n1,
                "read_seq": event.n2,
            }),
            "presence" => json!({
                "operator_id": event.subject_id,
                "presence": super::Presence::from_code(event.n1 as i16),
            }),
            "file.uploaded" => {
                let Some(row) = file::Entity::find_by_id(event.subject_text.clone())
                    .one(self.store().db())
                    .await?
                else {
                    return Ok(None);
                };
                json!({ "file": self.file_info(row).await })
            }
            "notify" => {
                let Some(notification) = self.notification_by_id(event.subject_id).await? else {
                    return Ok(None);
                };
                json!({
                    "person": { "kind": event.subject_text, "id": event.n1 },
                    "notification": notification,
                })
            }
            _ => return Ok(None),
        };
        Ok(Some(json!({
            "id": format!("evt_{}", event.id),
            "type": event.kind,
            "created_at": event.created_at,
            "organisation_id": event.org_id,
            "data": data,
        })))
    }

    /// Records how deliveries went, in one transaction: delivered events are done; a
    /// failed one is due again after a backoff, or dead once it has failed for longer
    /// than the retry period.
    pub async fn record_webhook_outcomes(
        &self,
        outcomes: &[Outcome],
        policy: &RetryPolicy,
    ) -> Result<()> {
        let tried: Vec<Tried> = outcomes
            .iter()
            .map(|o| Tried {
                id: o.event.id,
                attempt: o.event.attempt,
                created_at: o.event.created_at,
                result: &o.result,
            })
            .collect();
        self.record_tries("webhook_events", &tried, policy).await
    }

    /// Records tries of an outbox table's rows (`webhook_events`, `deliveries`: the
    /// same columns of state), in one transaction.
    pub(super) async fn record_tries(
        &self,
        table: &'static str,
        tries: &[Tried<'_>],
        policy: &RetryPolicy,
    ) -> Result<()> {
        if tries.is_empty() {
            return Ok(());
        }
        let backend = self.store().backend();
        let now = self.now_ms();
        let tx = self.store().write().await?;
        // Only each claim's own try is recorded (state `sending`, the claimed attempt): a
        // claim whose lease ran out may have been taken, and settled, by another node.
        // Deliveries, the common case, go in one statement a chunk; the ids and attempts
        // written into it are numbers of our own.
        let delivered: Vec<String> = tries
            .iter()
            .filter(|t| matches!(t.result, Delivery::Delivered))
            .map(|t| format!("({}, {})", t.id, t.attempt))
            .collect();
        for chunk in delivered.chunks(500) {
            tx.execute_raw(stmt(
                backend,
                &format!(
                    "UPDATE {table} SET state = 'done', done_at = ?, last_error = NULL \
                     WHERE state = 'sending' AND (id, attempts) IN (VALUES {})",
                    chunk.join(", ")
                ),
                [now.into()],
            ))
            .await?;
        }
        for t in tries {
            let (state, next_at, note) = match t.result {
                Delivery::Delivered => continue,
                Delivery::Gone => ("done", now, Some("what it was about is gone".to_owned())),
                Delivery::Ended => ("done", now, Some("the target is gone".to_owned())),
                Delivery::Failed(error) => {
                    let error: String = error.chars().take(500).collect();
                    match policy.next_try(t.attempt, t.created_at, now, rand::random()) {
                        Some(at) => ("pending", at, Some(error)),
                        None => ("dead", now, Some(error)),
                    }
                }
            };
            let done_at = (state == "done").then_some(now);
            tx.execute_raw(stmt(
                backend,
                &format!(
                    "UPDATE {table} SET state = ?, next_at = ?, last_error = ?, done_at = ? \
                     WHERE id = ? AND state = 'sending' AND attempts = ?"
                ),
                [
                    state.into(),
                    next_at.into(),
                    note.into(),
                    done_at.into(),
                    t.id.into(),
                    i32::try_from(t.attempt).unwrap_or(i32::MAX).into(),
                ],
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets what the outbox settled longer than `keep_ms` ago (a round of at most
    /// 5,000 rows of each table): delivered webhook events (dead ones stay listed for
    /// their endpoint's admin), and sent or dead e-mail and push deliveries.
    pub async fn prune_outbox(&self, keep_ms: i64) -> Result<u64> {
        let before = self.now_ms() - keep_ms;
        let mut forgotten = 0;
        for sql in [
            "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events \
             WHERE state = 'done' AND done_at < ? LIMIT 5000)",
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries \
             WHERE state IN ('done', 'dead') AND next_at < ? LIMIT 5000)",
        ] {
            let done = self
                .store()
                .db()
                .execute_raw(stmt(self.store().backend(), sql, [before.into()]))
                .await?;
            forgotten += done.rows_affected();
        }
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_to_the_cap_then_stop() {
        let p = RetryPolicy {
            first_ms: 1_000,
            max_ms: 8_000,
            retry_for_ms: 60_000,
        };
        let delays: Vec<i64> = (1..=6)
            .map(|n| p.next_try(n, 0, 100, 0.0).expect("within the period") - 100)
            .collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        assert_eq!(
            p.next_try(1, 0, 100, 1.0),
            Some(100 + 1_000 + 250),
            "a quarter of jitter"
        );
        assert_eq!(p.next_try(3, 0, 60_000, 0.5), None, "dead after the period");
        assert!(p.next_try(99, 0, 100, 0.0).is_some(), "no overflow");
    }

    #[test]
    fn a_signature_covers_the_timestamp_and_the_body() {
        let s = sign("whsec_x", 1_700_000_000, b"{\"a\":1}");
        assert_eq!(s.len(), 64);
        assert_ne!(s, sign("whsec_x", 1_700_000_001, b"{\"a\":1}"));
        assert_ne!(s, sign("whsec_x", 1_700_000_000, b"{\"a\":2}"));
        assert_ne!(s, sign("whsec_y", 1_700_000_000, b"{\"a\":1}"));
    }

    #[test]
    fn endpoints_and_events_are_checked() {
        assert!(endpoint("https://hooks.example/souq").is_ok());
        for bad in ["ftp://x", "https://", "hooks.example", "https://a b"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            kinds(&["receipt".into(), "message.created".into(), "receipt".into()]).ok(),
            Some("message.created,receipt".into())
        );
        assert!(kinds(&[]).is_err());
        assert!(kinds(&["message.deleted".into()]).is_err());
    }
}
