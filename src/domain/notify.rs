//! Offline reach: telling a member of a chat, out of band, of messages they left unread
//! while away from the app.
//!
//! A member is told when a message to them (not their own, not the system's) stays
//! unread for the organisation's `notify_after_secs` while they are absent: a customer
//! with no live socket on any node, an operator whose presence is offline or away. One
//! notification covers all of the person's unread messages in every chat at that moment,
//! and a person is told at most once per `notify_after_secs`: a burst of ten messages is
//! one notification, not ten. It is written, in one transaction, with
//! - the person's feed entry (listed, counted unread, pushed live as a `notification`
//!   frame to their sockets),
//! - a `notify` event for each webhook that wants it,
//! - an e-mail delivery where the organisation set SMTP and the person has an address,
//!   and a Web Push delivery for each of their browser subscriptions (`deliveries`, sent
//!   by any node's outbox loop),
//! - `pushed_at` on the messages it covers (iqstore's `Pushed`),
//! - a mark per chat member of what it covered, so no message is told twice.
//!
//! One node looks at a time (a lease on the `notify_sweeps` row, fenced again in the
//! writing transaction), at the chats active since its last look, far enough back to
//! see every message that came due since.

use std::collections::{HashMap, HashSet};

use sea_orm::{ConnectionTrait, DbBackend, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admin::Presence;
use super::events::{Event, Person};
use super::messages::member_of;
use super::webhooks::{Delivery, RetryPolicy};
use super::{Core, Error, Principal, Result};
use crate::push::{Subscription, Vapid};
use crate::store::stmt;

/// How long a look may take before another node may take over.
const LEASE_MS: i64 = 60_000;
/// The least time between two looks: a notification comes at most this much after its
/// wait is out, and the chats active lately are read at most this often.
const LOOK_EVERY_MS: i64 = 5_000;
/// How much later than its `created_at` a message may commit (and its chat's activity
/// show): the look reaches this much further back.
const MARGIN_MS: i64 = 10_000;
/// The furthest back a look reaches (after a long stop of every node).
const REACH_MAX_MS: i64 = 24 * 3600 * 1000;
/// Messages after a member's cursor looked at for the first one to them.
const WINDOW: i64 = 8;
/// The newest messages of each chat a notification shows.
const DIGEST: i64 = 5;
/// The most push subscriptions (browsers) a person keeps; a new one beyond ends the oldest.
const SUBSCRIPTIONS: usize = 10;
/// Ids written into one statement's list.
const CHUNK: usize = 500;

/// One person's notification, as the feed lists it and the `notification` frame carries.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub id: i64,
    /// `unread` (messages left unread while away), `comment` or `like` (on a store or
    /// product of the person's, or a subject they follow).
    pub kind: String,
    /// Unread messages in all its chats, when it was made.
    pub unread: i64,
    /// Each chat: `{chat_id, inbox_id, unread, link, messages}` (its newest messages,
    /// oldest first, each with its author's name).
    pub chats: serde_json::Value,
    /// For a notification of another kind than `unread` (`comment`, `like`): what
    /// happened, `{subject: {kind, id, name}, by: {kind, id, name}, comment?, reaction?}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub about: Option<serde_json::Value>,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

/// A page of the feed, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    pub has_more: bool,
    /// The person's notifications not marked read.
    pub unread: i64,
}

/// Which notifications to mark read: these ids, or all up to one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    #[serde(default)]
    pub ids: Option<Vec<i64>>,
    #[serde(default)]
    pub up_to: Option<i64>,
}

/// A browser's Web Push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, Deserialize)]
pub struct NewSubscription {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    /// The browser's own field, accepted and not used.
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushSubscription {
    pub id: i64,
    pub endpoint: String,
    pub created_at: i64,
}

/// A claimed e-mail or Web Push delivery of a notification.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub notification_id: i64,
    /// `email` or `push`.
    pub channel: String,
    /// The address, or the subscription's id.
    pub target: String,
    pub attempt: i64,
    pub created_at: i64,
}

/// What sending a delivery needs.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub notification: Notification,
    /// The organisation's subdomain, naming it in a mail.
    pub org_name: String,
    pub smtp_url: Option<String>,
    pub mail_from: Option<String>,
    /// For a push: the subscription and the key to sign with.
    pub push: Option<(Subscription, Vapid)>,
}

/// A chat member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Member {
    chat_id: i64,
    person: Person,
}

/// A chat a look considers.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    org_id: i64,
    inbox_id: i64,
    domain_id: i64,
    customer_id: i64,
    operator_id: Option<i64>,
    last_seq: i64,
    delay_ms: i64,
}

/// A member with a message to them after their cursor; `due` once it is old enough.
#[derive(Debug, Clone, Copy)]
struct Unread {
    member: Member,
    cursor: i64,
    due: bool,
}

/// A notification to make.
#[derive(Debug)]
struct Planned {
    person: Person,
    org_id: i64,
    unread: i64,
    chats: Vec<PlannedChat>,
}

#[derive(Debug)]
struct PlannedChat {
    chat_id: i64,
    cursor: i64,
    through: i64,
    view: serde_json::Value,
}

/// What a look found: notifications to make, and marks to move past members' own
/// messages.
type Plan = (Vec<Planned>, Vec<(Member, i64)>);

fn ids_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

impl Core {
    /// One look for members to tell (see the module's comment); returns how many
    /// notifications were made (0 too when the last look is under [`LOOK_EVERY_MS`] old),
    /// or `None` at once while another look (of this node or another) is under way.
    /// Every node calls this every second or so.
    pub async fn notify_round(&self) -> Result<Option<usize>> {
        let backend = self.store().backend();
        let now = self.now_ms();
        let lease = now + LEASE_MS;
        let claimed = self
            .store()
            .db()
            .query_one_raw(stmt(
                backend,
                "UPDATE notify_sweeps SET lease_until = ? WHERE id = 1 AND lease_until < ? \
                 AND swept_at <= ? RETURNING swept_at",
                [lease.into(), now.into(), (now - LOOK_EVERY_MS).into()],
            ))
            .await?;
        let Some(row) = claimed else {
            let busy = self
                .store()
                .query(
                    "SELECT lease_until FROM notify_sweeps WHERE id = 1 AND lease_until >= ?",
                    [now.into()],
                )
                .await?;
            return Ok(if busy.is_empty() { Some(0) } else { None });
        };
        let swept_at: i64 = row.try_get("", "swept_at")?;
        // The first look ever (just after the upgrade that brought notifications) reaches
        // back as from a look made now, not over every chat of the last day.
        let swept_at = if swept_at == 0 { now } else { swept_at };
        let plan = self.notify_plan(swept_at, now).await;
        let tx = self.store().write().await?;
        // Fenced: only the holder of this lease writes what it found.
        let fenced = tx
            .execute_raw(stmt(
                backend,
                "UPDATE notify_sweeps SET swept_at = ?, lease_until = 0 \
                 WHERE id = 1 AND lease_until = ?",
                [
                    (if plan.is_ok() { now } else { swept_at }).into(),
                    lease.into(),
                ],
            ))
            .await?;
        if fenced.rows_affected() == 0 {
            return Ok(None);
        }
        let (planned, own) = match plan {
            Ok(plan) => plan,
            Err(e) => {
                tx.commit().await?;
                return Err(e);
            }
        };
        for (member, through) in &own {
            mark(&*tx, backend, member, *through).await?;
        }
        let mut made = Vec::with_capacity(planned.len());
        for p in planned {
            made.extend(self.write_notification(&*tx, backend, p, now).await?);
        }
        tx.commit().await?;
        let count = made.len();
        self.announce_notifications(made).await;
        Ok(Some(count))
    }

    async fn notify_plan(&self, swept_at: i64, now: i64) -> Result<Plan> {
        let candidates = self.notify_candidates(swept_at, now).await?;
        if candidates.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let members = self.members_of(&candidates).await?;
        let operators: Vec<i64> = members
            .values()
            .flatten()
            .filter_map(|p| match p {
                Person::Operator(id) => Some(*id),
                Person::Customer(_) => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let away = self.operators_away(&operators).await?;
        let cursors = self.member_cursors(&candidates).await?;
        let (unread, own) = self
            .first_unread(&candidates, &members, &cursors, &away, now)
            .await?;
        let mut people: Vec<Person> = unread
            .iter()
            .filter(|u| u.due)
            .map(|u| u.member.person)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        people.sort_by_key(|p| (p.kind(), p.id()));
        let mut links: HashMap<i64, Option<String>> = HashMap::new();
        let mut planned = Vec::new();
        for person in people {
            let mine: Vec<&Unread> = unread
                .iter()
                .filter(|u| u.member.person == person)
                .collect();
            let Some(first) = mine.first() else { continue };
            let candidate = candidates[&first.member.chat_id];
            if !self.is_absent(person, &away).await
                || self.told_since(person, now - candidate.delay_ms).await?
            {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = links.entry(candidate.org_id) {
                e.insert(self.org_notify_link(candidate.org_id).await?);
            }
            let link = links[&candidate.org_id].as_deref();
            let mut chats = Vec::new();
            let mut total = 0;
            let mut mine = mine;
            mine.sort_by_key(|u| u.member.chat_id);
            for u in mine {
                let c = candidates[&u.member.chat_id];
                if let Some(chat) = self
                    .digest(u.member, c.inbox_id, u.cursor, c.last_seq, link)
                    .await?
                {
                    total += chat.view["unread"].as_i64().unwrap_or(0);
                    chats.push(chat);
                }
            }
            if !chats.is_empty() {
                planned.push(Planned {
                    person,
                    org_id: candidate.org_id,
                    unread: total,
                    chats,
                });
            }
        }
        Ok((planned, own))
    }

    /// Chats that may hold a message that came due since the last look: for an
    /// organisation that tells after `d`, those active since the last look less twice
    /// `d` (once for the wait, once for a person told lately) and a margin, and the open
    /// chats of operators who went away since then (their wait counts from then).
    async fn notify_candidates(&self, swept_at: i64, now: i64) -> Result<HashMap<i64, Candidate>> {
        let delays = self
            .store()
            .query(
                "SELECT DISTINCT notify_after_secs AS d FROM organisations \
                 WHERE notify_after_secs IS NOT NULL",
                [],
            )
            .await?;
        let mut out = HashMap::new();
        for row in delays {
            let secs: i64 = row.try_get("", "d")?;
            let delay_ms = secs.max(0) * 1000;
            let since = (swept_at - 2 * delay_ms - MARGIN_MS).max(now - REACH_MAX_MS);
            let columns = "SELECT c.id AS id, c.org_id AS org_id, c.inbox_id AS inbox_id, \
                 c.domain_id AS domain_id, c.customer_id AS customer_id, \
                 c.operator_id AS operator_id, c.last_seq AS last_seq FROM chats c \
                 WHERE c.last_seq > 0 \
                 AND c.org_id IN (SELECT id FROM organisations WHERE notify_after_secs = ?)";
            let mut rows = self
                .store()
                .query(
                    &format!("{columns} AND c.last_activity_at > ?"),
                    [secs.into(), since.into()],
                )
                .await?;
            let went_away: Vec<i64> = self
                .store()
                .query(
                    &format!(
                        "SELECT id FROM operators WHERE updated_at > ? AND presence IN ({}, {}) \
                         AND org_id IN (SELECT id FROM organisations WHERE notify_after_secs = ?)",
                        Presence::Offline.code(),
                        Presence::Away.code()
                    ),
                    [since.into(), secs.into()],
                )
                .await?
                .iter()
                .map(|r| r.try_get("", "id"))
                .collect::<std::result::Result<_, _>>()?;
            for chunk in went_away.chunks(CHUNK) {
                let ops = ids_list(chunk);
                rows.extend(
                    self.store()
                        .query(
                            &format!(
                                "{columns} AND c.status <> 'finished' AND c.last_activity_at > ? \
                                 AND (c.operator_id IN ({ops}) OR (c.operator_id IS NULL AND ( \
                                     c.inbox_id IN (SELECT inbox_id FROM assignments \
                                         WHERE operator_id IN ({ops})) \
                                     OR c.domain_id IN (SELECT domain_id FROM assignments \
                                         WHERE is_admin = ? AND operator_id IN ({ops})))))"
                            ),
                            [secs.into(), (now - REACH_MAX_MS).into(), true.into()],
                        )
                        .await?,
                );
            }
            for r in rows {
                out.insert(
                    r.try_get("", "id")?,
                    Candidate {
                        org_id: r.try_get("", "org_id")?,
                        inbox_id: r.try_get("", "inbox_id")?,
                        domain_id: r.try_get("", "domain_id")?,
                        customer_id: r.try_get("", "customer_id")?,
                        operator_id: r.try_get("", "operator_id")?,
                        last_seq: r.try_get("", "last_seq")?,
                        delay_ms,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Each chat's members: its customer, and its operator or (while nobody took it)
    /// the operators who see its inbox and receive its messages.
    async fn members_of(
        &self,
        candidates: &HashMap<i64, Candidate>,
    ) -> Result<HashMap<i64, Vec<Person>>> {
        let untaken: Vec<&Candidate> = candidates
            .values()
            .filter(|c| c.operator_id.is_none())
            .collect();
        let mut seeing: Vec<(i64, i64, i64, bool)> = Vec::new();
        for chunk in untaken.chunks(CHUNK) {
            let inboxes: Vec<i64> = chunk.iter().map(|c| c.inbox_id).collect();
            let domains: Vec<i64> = chunk.iter().map(|c| c.domain_id).collect();
            let sql = format!(
                "SELECT DISTINCT a.operator_id AS operator_id, a.inbox_id AS inbox_id, \
                     a.domain_id AS domain_id, a.is_admin AS is_admin FROM assignments a \
                 WHERE (a.inbox_id IN ({}) OR (a.is_admin = ? AND a.domain_id IN ({}))) \
                 AND a.receiving = ? AND {}",
                ids_list(&inboxes),
                ids_list(&domains),
                super::chats::NOT_INACTIVE
            );
            for r in self
                .store()
                .query(&sql, [true.into(), true.into(), false.into()])
                .await?
            {
                seeing.push((
                    r.try_get("", "operator_id")?,
                    r.try_get("", "inbox_id")?,
                    r.try_get("", "domain_id")?,
                    r.try_get("", "is_admin")?,
                ));
            }
        }
        let mut out = HashMap::new();
        for (&chat_id, c) in candidates {
            let mut people = vec![Person::Customer(c.customer_id)];
            match c.operator_id {
                Some(op) => people.push(Person::Operator(op)),
                None => {
                    let mut ops: Vec<i64> = seeing
                        .iter()
                        .filter(|(_, inbox, domain, admin)| {
                            *inbox == c.inbox_id || (*admin && *domain == c.domain_id)
                        })
                        .map(|(op, ..)| *op)
                        .collect();
                    ops.sort_unstable();
                    ops.dedup();
                    people.extend(ops.into_iter().map(Person::Operator));
                }
            }
            out.insert(chat_id, people);
        }
        Ok(out)
    }

    /// Each member's cursor: the further of what they read and what they were told of.
    async fn member_cursors(
        &self,
        candidates: &HashMap<i64, Candidate>,
    ) -> Result<HashMap<Member, i64>> {
        let ids: Vec<i64> = candidates.keys().copied().collect();
        let mut out: HashMap<Member, i64> = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let list = ids_list(chunk);
            for (sql, column) in [
                (
                    format!(
                        "SELECT chat_id, member_kind, member_id, read_seq AS s FROM receipts \
                         WHERE chat_id IN ({list})"
                    ),
                    "s",
                ),
                (
                    format!(
                        "SELECT chat_id, member_kind, member_id, through_seq AS s \
                         FROM notify_marks WHERE chat_id IN ({list})"
                    ),
                    "s",
                ),
            ] {
                for r in self.store().query(&sql, []).await? {
                    let kind: String = r.try_get("", "member_kind")?;
                    let Some(person) = Person::from_kind(&kind, r.try_get("", "member_id")?) else {
                        continue;
                    };
                    let member = Member {
                        chat_id: r.try_get("", "chat_id")?,
                        person,
                    };
                    let seq: i64 = r.try_get("", column)?;
                    let e = out.entry(member).or_insert(0);
                    *e = (*e).max(seq);
                }
            }
        }
        Ok(out)
    }

    /// For each member with messages after their cursor, the first one to them (within
    /// [`WINDOW`] messages): whether it is due. A window of only their own or the
    /// system's messages moves their mark past it instead.
    async fn first_unread(
        &self,
        candidates: &HashMap<i64, Candidate>,
        members: &HashMap<i64, Vec<Person>>,
        cursors: &HashMap<Member, i64>,
        away: &HashMap<i64, i64>,
        now: i64,
    ) -> Result<(Vec<Unread>, Vec<(Member, i64)>)> {
        let mut pairs: Vec<(Member, i64)> = Vec::new();
        for (&chat_id, people) in members {
            let last_seq = candidates[&chat_id].last_seq;
            for &person in people {
                let member = Member { chat_id, person };
                let cursor = cursors.get(&member).copied().unwrap_or(0);
                if last_seq > cursor {
                    pairs.push((member, cursor));
                }
            }
        }
        // The windows to read: one per chat and cursor.
        let windows: Vec<(i64, i64)> = pairs
            .iter()
            .map(|(m, c)| (m.chat_id, *c))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // (chat, seq) -> (author kind, author id, created_at)
        let mut seen: HashMap<(i64, i64), (String, i64, i64)> = HashMap::new();
        for chunk in windows.chunks(200) {
            let terms: Vec<String> = chunk
                .iter()
                .map(|(chat, cursor)| {
                    format!(
                        "(chat_id = {chat} AND seq > {cursor} AND seq <= {})",
                        cursor + WINDOW
                    )
                })
                .collect();
            let sql = format!(
                "SELECT chat_id, seq, author_kind, author_id, created_at FROM messages WHERE {}",
                terms.join(" OR ")
            );
            for r in self.store().query(&sql, []).await? {
                seen.insert(
                    (r.try_get("", "chat_id")?, r.try_get("", "seq")?),
                    (
                        r.try_get("", "author_kind")?,
                        r.try_get("", "author_id")?,
                        r.try_get("", "created_at")?,
                    ),
                );
            }
        }
        let mut unread = Vec::new();
        let mut own = Vec::new();
        for (member, cursor) in pairs {
            let delay_ms = candidates[&member.chat_id].delay_ms;
            let mut last_seen = None;
            let mut first = None;
            for seq in cursor + 1..=cursor + WINDOW {
                let Some((kind, id, at)) = seen.get(&(member.chat_id, seq)) else {
                    break;
                };
                last_seen = Some(seq);
                if kind != "system" && !(kind == member.person.kind() && *id == member.person.id())
                {
                    first = Some(*at);
                    break;
                }
            }
            // An operator is told of a message once it has waited, and they have been
            // away, for the whole wait: one who was there when it came and left later
            // has the wait from when they left.
            let waited_from = |at: i64| match member.person {
                Person::Operator(id) => away.get(&id).map(|since| at.max(*since)),
                Person::Customer(_) => Some(at),
            };
            match (first, last_seen) {
                (Some(at), _) => unread.push(Unread {
                    member,
                    cursor,
                    due: waited_from(at).is_some_and(|from| from <= now - delay_ms),
                }),
                (None, Some(seq)) => own.push((member, seq)),
                (None, None) => {}
            }
        }
        Ok((unread, own))
    }

    /// Whether `person` is away from the app: a customer with no live socket (on this
    /// node, or with Redis on another: see docs/notifications.md), an operator offline or
    /// away (`away`, read by [`Core::operators_away`]).
    async fn is_absent(&self, person: Person, away: &HashMap<i64, i64>) -> bool {
        match person {
            Person::Customer(_) => !self.live.is_connected(person).await,
            Person::Operator(id) => away.contains_key(&id),
        }
    }

    /// Of these operators, those offline or away, with when their presence last changed
    /// (when they went away, as far as the notifier knows).
    async fn operators_away(&self, operators: &[i64]) -> Result<HashMap<i64, i64>> {
        let mut out = HashMap::new();
        for chunk in operators.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, updated_at FROM operators WHERE id IN ({}) AND presence IN ({}, {})",
                ids_list(chunk),
                Presence::Offline.code(),
                Presence::Away.code()
            );
            for r in self.store().query(&sql, []).await? {
                out.insert(r.try_get("", "id")?, r.try_get("", "updated_at")?);
            }
        }
        Ok(out)
    }

    /// Whether `person` was told of unread messages after `since`.
    async fn told_since(&self, person: Person, since: i64) -> Result<bool> {
        // The newest only (through the feed's index), whatever its age.
        let rows = self
            .store()
            .query(
                "SELECT created_at FROM notifications WHERE person_kind = ? AND person_id = ? \
                 ORDER BY id DESC LIMIT 1",
                [person.kind().into(), person.id().into()],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => r.try_get::<i64>("", "created_at")? > since,
            None => false,
        })
    }

    async fn org_notify_link(&self, org_id: i64) -> Result<Option<String>> {
        let rows = self
            .store()
            .query(
                "SELECT notify_link FROM organisations WHERE id = ?",
                [org_id.into()],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => r.try_get("", "notify_link")?,
            None => None,
        })
    }

    /// A chat's part of a notification: the member's unread count there and the newest
    /// messages to them, with their authors' names; `None` when nothing is unread (read
    /// since the look began).
    async fn digest(
        &self,
        member: Member,
        inbox_id: i64,
        cursor: i64,
        last_seq: i64,
        link: Option<&str>,
    ) -> Result<Option<PlannedChat>> {
        let to_member = "m.chat_id = ? AND m.seq > ? AND m.author_kind <> 'system' \
                         AND NOT (m.author_kind = ? AND m.author_id = ?)";
        let values = || -> [Value; 4] {
            [
                member.chat_id.into(),
                cursor.into(),
                member.person.kind().into(),
                member.person.id().into(),
            ]
        };
        let count = self
            .store()
            .query(
                &format!(
                    "SELECT COUNT(*) AS n, COALESCE(MAX(m.seq), 0) AS top FROM messages m \
                     WHERE {to_member}"
                ),
                values(),
            )
            .await?;
        let (n, top): (i64, i64) = match count.first() {
            Some(r) => (r.try_get("", "n")?, r.try_get("", "top")?),
            None => (0, 0),
        };
        if n == 0 {
            return Ok(None);
        }
        let rows = self
            .store()
            .query(
                &format!(
                    "SELECT m.id AS id, m.seq AS seq, m.author_kind AS author_kind, \
                         m.author_id AS author_id, m.payload AS payload, m.text AS text, \
                         m.created_at AS created_at, \
                         COALESCE(cu.name, op.name, '') AS name, f.name AS file_name \
                     FROM messages m \
                     LEFT JOIN customers cu ON m.author_kind = 'customer' AND cu.id = m.author_id \
                     LEFT JOIN operators op ON m.author_kind = 'operator' AND op.id = m.author_id \
                     LEFT JOIN files f ON f.id = m.file_id \
                     WHERE {to_member} AND m.seq <= {top} ORDER BY m.seq DESC LIMIT {DIGEST}"
                ),
                values(),
            )
            .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for r in rows.iter().rev() {
            let file_name: Option<String> = r.try_get("", "file_name")?;
            messages.push(json!({
                "id": r.try_get::<i64>("", "id")?,
                "seq": r.try_get::<i64>("", "seq")?,
                "author": {
                    "kind": r.try_get::<String>("", "author_kind")?,
                    "id": r.try_get::<i64>("", "author_id")?,
                    "name": r.try_get::<String>("", "name")?,
                },
                "payload": r.try_get::<String>("", "payload")?,
                "text": r.try_get::<String>("", "text")?,
                "file_name": file_name,
                "created_at": r.try_get::<i64>("", "created_at")?,
            }));
        }
        let link = link.map(|l| l.replace("{chat_id}", &member.chat_id.to_string()));
        Ok(Some(PlannedChat {
            chat_id: member.chat_id,
            cursor,
            through: top.max(last_seq),
            view: json!({
                "chat_id": member.chat_id,
                "inbox_id": inbox_id,
                "unread": n,
                "link": link,
                "messages": messages,
            }),
        }))
    }

    /// Writes one notification with everything that goes with it (see the module's
    /// comment), in the look's transaction.
    async fn write_notification(
        &self,
        tx: &impl ConnectionTrait,
        backend: DbBackend,
        p: Planned,
        now: i64,
    ) -> Result<Option<(Person, Notification)>> {
        let (kind, id) = (p.person.kind(), p.person.id());
        // A chat erased since the look read it (a customer's data) is left out.
        let listed: Vec<i64> = p.chats.iter().map(|c| c.chat_id).collect();
        let mut still: HashSet<i64> = HashSet::new();
        for r in tx
            .query_all_raw(stmt(
                backend,
                &format!("SELECT id FROM chats WHERE id IN ({})", ids_list(&listed)),
                [],
            ))
            .await?
        {
            still.insert(r.try_get("", "id")?);
        }
        let mut p = p;
        p.chats.retain(|c| still.contains(&c.chat_id));
        if p.chats.is_empty() {
            return Ok(None);
        }
        p.unread = p
            .chats
            .iter()
            .map(|c| c.view["unread"].as_i64().unwrap_or(0))
            .sum();
        let chats: Vec<serde_json::Value> = p.chats.iter().map(|c| c.view.clone()).collect();
        let chats = serde_json::Value::Array(chats);
        let chat_ids = format!(
            ",{},",
            p.chats
                .iter()
                .map(|c| c.chat_id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let body = json!({ "unread": p.unread, "chats": chats });
        let notification_id = record_notification(
            tx, backend, p.org_id, p.person, "unread", &body, &chat_ids, now,
        )
        .await?;
        for c in &p.chats {
            let member = Member {
                chat_id: c.chat_id,
                person: p.person,
            };
            mark(tx, backend, &member, c.through).await?;
            tx.execute_raw(stmt(
                backend,
                "UPDATE messages SET pushed_at = ? WHERE chat_id = ? AND seq > ? AND seq <= ? \
                 AND pushed_at IS NULL AND author_kind <> 'system' \
                 AND NOT (author_kind = ? AND author_id = ?)",
                [
                    now.into(),
                    c.chat_id.into(),
                    c.cursor.into(),
                    c.through.into(),
                    kind.into(),
                    id.into(),
                ],
            ))
            .await?;
        }
        Ok(Some((
            p.person,
            Notification {
                id: notification_id,
                kind: "unread".into(),
                unread: p.unread,
                chats,
                about: None,
                created_at: now,
                read_at: None,
            },
        )))
    }

    /// The caller's notifications, newest first, before the id `before` if given.
    pub async fn notifications(
        &self,
        who: &Principal,
        before: Option<i64>,
        limit: Option<u64>,
    ) -> Result<NotificationPage> {
        let person = member_of(who).ok_or(Error::Forbidden("an admin token has no feed"))?;
        let limit = limit.unwrap_or(50).clamp(1, 200) as i64;
        let rows = self
            .store()
            .query(
                &format!(
                    "SELECT id, kind, body, created_at, read_at FROM notifications \
                     WHERE person_kind = ? AND person_id = ? AND id < ? \
                     ORDER BY id DESC LIMIT {}",
                    limit + 1
                ),
                [
                    person.kind().into(),
                    person.id().into(),
                    before.unwrap_or(i64::MAX).into(),
                ],
            )
            .await?;
        let has_more = rows.len() as i64 > limit;
        let items = rows
            .iter()
            .take(limit as usize)
            .map(notification_of)
            .collect::<Result<Vec<_>>>()?;
        Ok(NotificationPage {
            items,
            has_more,
            unread: self.unread_notifications(person).await?,
        })
    }

    pub(super) async fn notification_by_id(&self, id: i64) -> Result<Option<Notification>> {
        let rows = self
            .store()
            .query(
                "SELECT id, kind, body, created_at, read_at FROM notifications WHERE id = ?",
                [id.into()],
            )
            .await?;
        rows.first().map(notification_of).transpose()
    }

    pub(super) async fn unread_notifications(&self, person: Person) -> Result<i64> {
        let rows = self
            .store()
            .query(
                "SELECT COUNT(*) AS n FROM notifications \
                 WHERE person_kind = ? AND person_id = ? AND read_at IS NULL",
                [person.kind().into(), person.id().into()],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => r.try_get("", "n")?,
            None => 0,
        })
    }

    /// Marks the caller's notifications read (`ids`, or all up to `up_to`); returns how
    /// many stay unread. The person's sockets hear the new count.
    pub async fn mark_notifications_read(&self, who: &Principal, which: MarkRead) -> Result<i64> {
        let person = member_of(who).ok_or(Error::Forbidden("an admin token has no feed"))?;
        let (filter, values): (String, Vec<Value>) = match (which.ids, which.up_to) {
            (Some(ids), None) => {
                if ids.is_empty() || ids.len() > 1000 {
                    return Err(Error::Invalid("ids must hold 1 to 1000 ids".into()));
                }
                (format!("id IN ({})", ids_list(&ids)), Vec::new())
            }
            (None, Some(up_to)) => ("id <= ?".into(), vec![up_to.into()]),
            _ => {
                return Err(Error::Invalid("give either ids or up_to, not both".into()));
            }
        };
        let mut all: Vec<Value> = vec![
            self.now_ms().into(),
            person.kind().into(),
            person.id().into(),
        ];
        all.extend(values);
        self.store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                &format!(
                    "UPDATE notifications SET read_at = ? WHERE person_kind = ? \
                     AND person_id = ? AND read_at IS NULL AND {filter}"
                ),
                all,
            ))
            .await?;
        let unread = self.unread_notifications(person).await?;
        self.announce(Event::Notification {
            person,
            notification: None,
            unread,
        });
        Ok(unread)
    }

    /// The server's VAPID key, shared by every node through the database.
    pub async fn vapid(&self) -> Result<Vapid> {
        self.vapid
            .get_or_try_init(|| async {
                let secret = self
                    .shared_secret("vapid", || super::hex(&Vapid::generate()))
                    .await?;
                let bytes: Vec<u8> = (0..secret.len() / 2)
                    .filter_map(|i| u8::from_str_radix(secret.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect();
                Vapid::from_secret(&bytes).ok_or_else(|| Error::Internal("a bad VAPID key".into()))
            })
            .await
            .cloned()
    }

    /// Registers a browser's push subscription for the caller (a subscription already
    /// known by its endpoint moves to the caller, with the new keys).
    pub async fn subscribe_push(
        &self,
        who: &Principal,
        new: NewSubscription,
    ) -> Result<PushSubscription> {
        let person =
            member_of(who).ok_or(Error::Forbidden("an admin token has no push subscriptions"))?;
        let subscription = Subscription {
            endpoint: new.endpoint.trim().to_owned(),
            p256dh: new.keys.p256dh,
            auth: new.keys.auth,
        };
        if subscription.endpoint.len() > 2000 {
            return Err(Error::Invalid("endpoint is too long".into()));
        }
        subscription.check().map_err(Error::Invalid)?;
        let now = self.now_ms();
        let row = self
            .store()
            .db()
            .query_one_raw(stmt(
                self.store().backend(),
                "INSERT INTO push_subscriptions (org_id, person_kind, person_id, endpoint, \
                     p256dh, auth, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (endpoint) DO UPDATE SET org_id = excluded.org_id, \
                     person_kind = excluded.person_kind, person_id = excluded.person_id, \
                     p256dh = excluded.p256dh, auth = excluded.auth \
                 RETURNING id, created_at",
                [
                    who.org_id().into(),
                    person.kind().into(),
                    person.id().into(),
                    subscription.endpoint.clone().into(),
                    subscription.p256dh.into(),
                    subscription.auth.into(),
                    now.into(),
                ],
            ))
            .await?
            .ok_or_else(|| Error::Internal("no subscription id".into()))?;
        let id: i64 = row.try_get("", "id")?;
        // The person's oldest subscriptions beyond the most kept go.
        self.store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                &format!(
                    "DELETE FROM push_subscriptions WHERE person_kind = ? AND person_id = ? \
                     AND id NOT IN (SELECT id FROM push_subscriptions \
                         WHERE person_kind = ? AND person_id = ? ORDER BY id DESC LIMIT {SUBSCRIPTIONS})"
                ),
                [
                    person.kind().into(),
                    person.id().into(),
                    person.kind().into(),
                    person.id().into(),
                ],
            ))
            .await?;
        Ok(PushSubscription {
            id,
            endpoint: subscription.endpoint,
            created_at: row.try_get("", "created_at")?,
        })
    }

    /// The caller's push subscriptions.
    pub async fn push_subscriptions(&self, who: &Principal) -> Result<Vec<PushSubscription>> {
        let person =
            member_of(who).ok_or(Error::Forbidden("an admin token has no push subscriptions"))?;
        self.store()
            .query(
                "SELECT id, endpoint, created_at FROM push_subscriptions \
                 WHERE person_kind = ? AND person_id = ? ORDER BY id",
                [person.kind().into(), person.id().into()],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(PushSubscription {
                    id: r.try_get("", "id")?,
                    endpoint: r.try_get("", "endpoint")?,
                    created_at: r.try_get("", "created_at")?,
                })
            })
            .collect()
    }

    /// Removes one of the caller's push subscriptions.
    pub async fn unsubscribe_push(&self, who: &Principal, id: i64) -> Result<()> {
        let person =
            member_of(who).ok_or(Error::Forbidden("an admin token has no push subscriptions"))?;
        let done = self
            .store()
            .db()
            .execute_raw(stmt(
                self.store().backend(),
                "DELETE FROM push_subscriptions WHERE id = ? AND person_kind = ? AND person_id = ?",
                [id.into(), person.kind().into(), person.id().into()],
            ))
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("push subscription"));
        }
        Ok(())
    }

    /// Claims up to `limit` due e-mail and push deliveries until `lease_ms` from now;
    /// none another node holds.
    pub async fn claim_deliveries(
        &self,
        limit: u64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        let backend = self.store().backend();
        let now = self.now_ms();
        let skip_locked = match backend {
            DbBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let tx = self.store().write().await?;
        let rows = tx
            .query_all_raw(stmt(
                backend,
                &format!(
                    "UPDATE deliveries SET state = 'sending', next_at = ?, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM deliveries WHERE state IN ('pending', 'sending') \
                         AND next_at <= ? ORDER BY next_at LIMIT {limit}{skip_locked}) \
                     RETURNING id, notification_id, channel, target, attempts, created_at"
                ),
                [(now + lease_ms).into(), now.into()],
            ))
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let attempt: i32 = r.try_get("", "attempts")?;
                Ok(ClaimedDelivery {
                    id: r.try_get("", "id")?,
                    notification_id: r.try_get("", "notification_id")?,
                    channel: r.try_get("", "channel")?,
                    target: r.try_get("", "target")?,
                    attempt: attempt.into(),
                    created_at: r.try_get("", "created_at")?,
                })
            })
            .collect()
    }

    /// What sending a claimed delivery needs; `None` when its notification, or its push
    /// subscription, is gone.
    pub async fn outgoing(&self, d: &ClaimedDelivery) -> Result<Option<Outgoing>> {
        let rows = self
            .store()
            .query(
                "SELECT n.id AS id, n.kind AS kind, n.body AS body, n.created_at AS created_at, \
                     n.read_at AS read_at, o.subdomain AS subdomain, o.smtp_url AS smtp_url, \
                     o.mail_from AS mail_from \
                 FROM notifications n JOIN organisations o ON o.id = n.org_id WHERE n.id = ?",
                [d.notification_id.into()],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let notification = notification_of(r)?;
        if notification.read_at.is_some() {
            return Ok(None);
        }
        let push = if d.channel == "push" {
            let id: i64 = d.target.parse().unwrap_or(0);
            let subs = self
                .store()
                .query(
                    "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE id = ?",
                    [id.into()],
                )
                .await?;
            let Some(s) = subs.first() else {
                return Ok(None);
            };
            Some((
                Subscription {
                    endpoint: s.try_get("", "endpoint")?,
                    p256dh: s.try_get("", "p256dh")?,
                    auth: s.try_get("", "auth")?,
                },
                self.vapid().await?,
            ))
        } else {
            None
        };
        Ok(Some(Outgoing {
            notification,
            org_name: r.try_get("", "subdomain")?,
            smtp_url: r.try_get("", "smtp_url")?,
            mail_from: r.try_get("", "mail_from")?,
            push,
        }))
    }

    /// Records how deliveries went (as webhook events' are). A push service that says
    /// the subscription ended (404, 410) has it removed.
    pub async fn record_deliveries(
        &self,
        outcomes: &[(ClaimedDelivery, Delivery)],
        policy: &RetryPolicy,
    ) -> Result<()> {
        let backend = self.store().backend();
        let gone: Vec<i64> = outcomes
            .iter()
            .filter(|(d, r)| d.channel == "push" && matches!(r, Delivery::Ended))
            .filter_map(|(d, _)| d.target.parse().ok())
            .collect();
        if !gone.is_empty() {
            self.store()
                .db()
                .execute_raw(stmt(
                    backend,
                    &format!(
                        "DELETE FROM push_subscriptions WHERE id IN ({})",
                        ids_list(&gone)
                    ),
                    [],
                ))
                .await?;
        }
        let tried: Vec<super::webhooks::Tried> = outcomes
            .iter()
            .map(|(d, result)| super::webhooks::Tried {
                id: d.id,
                attempt: d.attempt,
                created_at: d.created_at,
                result,
            })
            .collect();
        self.record_tries("deliveries", &tried, policy).await
    }
}

impl Core {
    /// Removes, within an erasure's transaction, the person's notifications, their
    /// deliveries and push subscriptions, every notification showing one of `chats`
    /// (another member's, quoting the erased person's words) with the chats' marks, and
    /// every notification of something the person did (a comment, a like).
    pub(super) async fn erase_notifications(
        &self,
        tx: &impl ConnectionTrait,
        person: Person,
        chats: &[i64],
    ) -> Result<()> {
        let backend = self.store().backend();
        let mut showing = vec!["(person_kind = ? AND person_id = ?)".to_owned()];
        let mut values: Vec<Value> = vec![person.kind().into(), person.id().into()];
        for chat in chats {
            showing.push("chat_ids LIKE ?".into());
            values.push(format!("%,{chat},%").into());
        }
        // What shows the person's words (a comment, a like of theirs).
        showing.push("chat_ids LIKE ?".into());
        values.push(format!("%,{}:{},%", person.kind(), person.id()).into());
        let which = showing.join(" OR ");
        tx.execute_raw(stmt(
            backend,
            &format!(
                "DELETE FROM deliveries WHERE notification_id IN \
                 (SELECT id FROM notifications WHERE {which})"
            ),
            values.clone(),
        ))
        .await?;
        tx.execute_raw(stmt(
            backend,
            &format!("DELETE FROM notifications WHERE {which}"),
            values,
        ))
        .await?;
        tx.execute_raw(stmt(
            backend,
            "DELETE FROM push_subscriptions WHERE person_kind = ? AND person_id = ?",
            [person.kind().into(), person.id().into()],
        ))
        .await?;
        for chunk in chats.chunks(CHUNK) {
            tx.execute_raw(stmt(
                backend,
                &format!(
                    "DELETE FROM notify_marks WHERE chat_id IN ({})",
                    ids_list(chunk)
                ),
                [],
            ))
            .await?;
        }
        Ok(())
    }
}

fn notification_of(r: &sea_orm::QueryResult) -> Result<Notification> {
    let body: String = r.try_get("", "body")?;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    Ok(Notification {
        id: r.try_get("", "id")?,
        kind: r.try_get("", "kind")?,
        unread: body["unread"].as_i64().unwrap_or(0),
        chats: body["chats"].clone(),
        about: body.get("about").cloned(),
        created_at: r.try_get("", "created_at")?,
        read_at: r.try_get("", "read_at")?,
    })
}

/// Writes a notification of `person` (its feed row) with what goes out of it: a `notify`
/// event for each webhook that wants it, an e-mail delivery where the organisation set
/// SMTP and the person has an address, a push delivery per browser subscription. Returns
/// its id. `chat_ids` (",1,2,") names the chats it shows, for erasure.
#[allow(clippy::too_many_arguments)]
pub(super) async fn record_notification(
    tx: &impl ConnectionTrait,
    backend: DbBackend,
    org_id: i64,
    person: Person,
    kind_of: &str,
    body: &serde_json::Value,
    chat_ids: &str,
    now: i64,
) -> Result<i64> {
    let (kind, id) = (person.kind(), person.id());
    let notification_id = super::inserted_id(
        tx,
        "INSERT INTO notifications (org_id, person_kind, person_id, kind, body, \
             chat_ids, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [
            org_id.into(),
            kind.into(),
            id.into(),
            kind_of.into(),
            body.to_string().into(),
            chat_ids.into(),
            now.into(),
        ],
    )
    .await?;
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO webhook_events (webhook_id, org_id, chat_id, kind, subject_id, \
                 subject_text, n1, n2, created_at, state, attempts, next_at) \
             SELECT w.id, w.org_id, ?, 'notify', ?, ?, ?, 0, ?, 'pending', 0, ? \
             FROM webhooks w WHERE w.org_id = ? AND w.active \
             AND (',' || w.events || ',') LIKE '%,notify,%'",
        [
            // Each its own queue (a negative key, never a chat's): one that fails
            // holds back no other.
            (-notification_id).into(),
            notification_id.into(),
            kind.into(),
            id.into(),
            now.into(),
            now.into(),
            org_id.into(),
        ],
    ))
    .await?;
    // E-mail, where the organisation set SMTP and the person has an address.
    let table = match person {
        Person::Customer(_) => "customers",
        Person::Operator(_) => "operators",
    };
    tx.execute_raw(stmt(
        backend,
        &format!(
            "INSERT INTO deliveries (notification_id, channel, target, state, attempts, \
                     created_at, next_at) \
                 SELECT ?, 'email', t.email, 'pending', 0, ?, ? FROM {table} t \
                 JOIN organisations o ON o.id = t.org_id \
                 WHERE t.id = ? AND t.email IS NOT NULL AND t.email <> '' \
                 AND o.smtp_url IS NOT NULL"
        ),
        [notification_id.into(), now.into(), now.into(), id.into()],
    ))
    .await?;
    tx.execute_raw(stmt(
        backend,
        "INSERT INTO deliveries (notification_id, channel, target, state, attempts, \
                 created_at, next_at) \
             SELECT ?, 'push', CAST(s.id AS TEXT), 'pending', 0, ?, ? FROM push_subscriptions s \
             WHERE s.person_kind = ? AND s.person_id = ?",
        [
            notification_id.into(),
            now.into(),
            now.into(),
            kind.into(),
            id.into(),
        ],
    ))
    .await?;
    Ok(notification_id)
}

/// Moves a member's mark forward to `through` (never back).
async fn mark(
    tx: &impl ConnectionTrait,
    backend: DbBackend,
    member: &Member,
    through: i64,
) -> Result<()> {
    let greatest = match backend {
        DbBackend::Postgres => "GREATEST",
        _ => "MAX",
    };
    tx.execute_raw(stmt(
        backend,
        &format!(
            "INSERT INTO notify_marks (chat_id, member_kind, member_id, through_seq) \
             VALUES (?, ?, ?, ?) ON CONFLICT (chat_id, member_kind, member_id) \
             DO UPDATE SET through_seq = {greatest}(notify_marks.through_seq, excluded.through_seq)"
        ),
        [
            member.chat_id.into(),
            member.person.kind().into(),
            member.person.id().into(),
            through.into(),
        ],
    ))
    .await?;
    Ok(())
}
