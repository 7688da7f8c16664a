//! Routing: who gets a new chat, and hand-over.
//!
//! An inbox routes `off` (operators take chats by hand), `round_robin` (in turn) or
//! `least_busy` (to whoever has the fewest open chats), among its operators who are online,
//! receiving, and under both capacities: the inbox's (open chats from this inbox) and
//! their own (open chats over all inboxes). A chat nobody can take waits in its inbox's
//! queue (pending, without an operator), oldest first.
//!
//! One transaction routes an inbox: it locks the inbox's row (on SQLite the writer is
//! alone anyway), then the candidates' rows in id order, counts their open chats and hands
//! out the queue, each chat by a conditional update. Two nodes routing at once therefore
//! take turns, and an operator's count cannot be read stale by a router of another inbox.
//! Routing runs when something may have freed or filled a place (a chat opened, finished,
//! transferred or handed back; an operator came online or got an inbox; an inbox's
//! setting changed), and every few seconds on each node for whatever was missed.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, EntityTrait};
use serde::{Deserialize, Serialize};

use super::chats::{ChatStatus, NOT_INACTIVE, summary};
use super::events::{Event, Person};
use super::write::{Draft, Payload};
use super::{Chat, Core, Error, Principal, Result};
use crate::store::entity::chat;
use crate::store::stmt;

/// How an inbox hands out new chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    Off,
    RoundRobin,
    LeastBusy,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Off => "off",
            Routing::RoundRobin => "round_robin",
            Routing::LeastBusy => "least_busy",
        }
    }

    pub fn parse(s: &str) -> Routing {
        match s {
            "round_robin" => Routing::RoundRobin,
            "least_busy" => Routing::LeastBusy,
            _ => Routing::Off,
        }
    }
}

/// A queued chat's place: 1 is next. `None` when it is not queued.
#[derive(Debug, Clone, Serialize)]
pub struct QueuePlace {
    pub chat_id: i64,
    pub position: Option<i64>,
    /// From how fast the inbox's queue moved lately; `None` until it has moved.
    pub estimated_wait_secs: Option<i64>,
}

/// Where a chat goes: to an operator, to another inbox (its queue), or both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    #[serde(default)]
    pub operator_id: Option<i64>,
    #[serde(default)]
    pub inbox_id: Option<i64>,
    /// Said in the chat's notice, for both sides.
    #[serde(default)]
    pub note: Option<String>,
}

/// How often a routing round tries an inbox another round holds, and how long it waits
/// between tries; then it leaves the inbox to the next sweep.
const BUSY_TRIES: u32 = 4;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);
/// How many chats one routing round hands out at most (the rest wait for the next).
const ROUND: i64 = 200;
/// How many of an inbox's latest chats out of the queue the wait estimate looks at.
const RECENT: i64 = 20;
/// The chats a queue frame goes out for, at most (the rest ask `GET .../queue`).
const ANNOUNCED: i64 = 500;

/// A chat of the queue: id and customer.
struct Queued {
    id: i64,
    customer_id: i64,
}

/// An operator routing may give a chat to, with their open chats.
#[derive(Debug, Clone)]
struct Candidate {
    id: i64,
    capacity: Option<i64>,
    open: i64,
    open_here: i64,
}

/// Whom the next chat goes to: among candidates under both capacities, round-robin takes
/// the first after `last` (by id, wrapping), least-busy the fewest open chats (ties in
/// round-robin order).
fn choose(
    mode: Routing,
    candidates: &[Candidate],
    inbox_capacity: Option<i64>,
    last: Option<i64>,
) -> Option<usize> {
    let last = last.unwrap_or(i64::MIN);
    let free = candidates.iter().enumerate().filter(|(_, c)| {
        c.capacity.is_none_or(|cap| c.open < cap)
            && inbox_capacity.is_none_or(|cap| c.open_here < cap)
    });
    // Round-robin order: ids after the last one first, then from the start.
    let turn = |c: &Candidate| (c.id <= last, c.id);
    match mode {
        Routing::Off => None,
        Routing::RoundRobin => free.min_by_key(|(_, c)| turn(c)).map(|(i, _)| i),
        Routing::LeastBusy => free.min_by_key(|(_, c)| (c.open, turn(c))).map(|(i, _)| i),
    }
}

fn rows_i64(rows: &[sea_orm::QueryResult], column: &str) -> Result<Vec<i64>> {
    rows.iter()
        .map(|r| r.try_get::<i64>("", column).map_err(Error::from))
        .collect()
}

impl Core {
    /// Hands the queue of `inbox_id` to free operators (see the module). `changed`: the
    /// queue changed otherwise (a chat joined or left), so its customers hear their places
    /// even if nothing was handed out. Runs after the commit of what called it, which
    /// stands whatever becomes of this: a failure is logged, and the next sweep routes.
    pub(super) async fn route_inbox(&self, inbox_id: i64, changed: bool) {
        if let Err(e) = self.try_route_inbox(inbox_id, changed).await {
            tracing::warn!(error = %e, inbox_id, "cannot route an inbox's queue");
        }
    }

    async fn try_route_inbox(&self, inbox_id: i64, changed: bool) -> Result<()> {
        let mut routed = None;
        for _ in 0..BUSY_TRIES {
            routed = self.route_round(inbox_id).await?;
            if routed.is_some() {
                break;
            }
            tokio::time::sleep(BUSY_PAUSE).await;
        }
        // An inbox without routing has no queue to tell of.
        let Some(Some(routed)) = routed else {
            return Ok(());
        };
        for chat_id in &routed {
            self.publish_chat_updated(*chat_id).await?;
        }
        if changed || !routed.is_empty() {
            self.announce_queue(inbox_id).await?;
        }
        Ok(())
    }

    /// One routing round of an inbox; returns the chats it handed out (`None` inside when
    /// the inbox does not route), or `None` when another round of the inbox holds it
    /// (PostgreSQL: this one does not wait, holding a connection, but tries again soon).
    async fn route_round(&self, inbox_id: i64) -> Result<Option<Option<Vec<i64>>>> {
        let backend = self.store().backend();
        let postgres = backend == DbBackend::Postgres;
        // NO KEY UPDATE: inserts and updates of chats, whose foreign keys share-lock the
        // inbox's and operators' rows, go on meanwhile.
        let lock = if postgres {
            " FOR NO KEY UPDATE SKIP LOCKED"
        } else {
            ""
        };
        // Most inboxes do not route: they are told apart without a write transaction.
        let routes = self
            .store()
            .query(
                "SELECT routing FROM inboxes WHERE id = ?",
                [inbox_id.into()],
            )
            .await?
            .first()
            .map(|r| r.try_get::<String>("", "routing"))
            .transpose()?
            .is_some_and(|r| Routing::parse(&r) != Routing::Off);
        if !routes {
            return Ok(Some(None));
        }
        let tx = self.store().write().await?;
        let Some(row) = tx
            .query_one_raw(stmt(
                backend,
                &format!("SELECT routing, capacity, routed_to FROM inboxes WHERE id = ?{lock}"),
                [inbox_id.into()],
            ))
            .await?
        else {
            // Another round holds it (inboxes are not deleted).
            return Ok(None);
        };
        let mode = Routing::parse(&row.try_get::<String>("", "routing")?);
        let inbox_capacity = row.try_get::<Option<i32>>("", "capacity")?.map(i64::from);
        let mut last: Option<i64> = row.try_get("", "routed_to")?;
        if mode == Routing::Off {
            return Ok(Some(None));
        }
        // The queue's chats that nothing else holds (a send to one is committing), so that
        // this round never waits on a chat while holding operators.
        let queue = self
            .queue_of(
                &*tx,
                inbox_id,
                ROUND,
                postgres.then_some(" FOR UPDATE SKIP LOCKED"),
            )
            .await?;
        if queue.is_empty() {
            return Ok(Some(Some(Vec::new())));
        }
        // Candidates, locked in id order (routers of other inboxes wait here, so that no
        // two count an operator's chats at once).
        let lock_operators = if postgres {
            " FOR NO KEY UPDATE OF o"
        } else {
            ""
        };
        let sql = format!(
            "SELECT o.id AS id, o.capacity AS capacity FROM assignments a \
             JOIN operators o ON o.id = a.operator_id \
             WHERE a.inbox_id = ? AND a.receiving = ? AND o.presence = ? AND {NOT_INACTIVE} \
             ORDER BY o.id{lock_operators}"
        );
        let rows = tx
            .query_all_raw(stmt(
                backend,
                &sql,
                [
                    inbox_id.into(),
                    true.into(),
                    super::Presence::Online.code().into(),
                    false.into(),
                ],
            ))
            .await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for r in &rows {
            candidates.push(Candidate {
                id: r.try_get("", "id")?,
                capacity: r.try_get::<Option<i32>>("", "capacity")?.map(i64::from),
                open: 0,
                open_here: 0,
            });
        }
        if candidates.is_empty() {
            return Ok(Some(Some(Vec::new())));
        }
        let ids: Vec<String> = candidates.iter().map(|c| c.id.to_string()).collect();
        // Ids from our own rows, so inlining them is safe.
        let loads = tx
            .query_all_raw(stmt(
                backend,
                &format!(
                    "SELECT operator_id, COUNT(*) AS open, \
                     SUM(CASE WHEN inbox_id = ? THEN 1 ELSE 0 END) AS here \
                     FROM chats WHERE operator_id IN ({}) AND status <> 'finished' \
                     GROUP BY operator_id",
                    ids.join(",")
                ),
                [inbox_id.into()],
            ))
            .await?;
        let mut by_id: HashMap<i64, (i64, i64)> = HashMap::new();
        for r in &loads {
            by_id.insert(
                r.try_get("", "operator_id")?,
                (r.try_get("", "open")?, r.try_get("", "here")?),
            );
        }
        for c in &mut candidates {
            (c.open, c.open_here) = by_id.get(&c.id).copied().unwrap_or((0, 0));
        }
        let now = self.now_ms();
        let mut routed = Vec::new();
        for chat in &queue {
            let Some(i) = choose(mode, &candidates, inbox_capacity, last) else {
                break;
            };
            let operator_id = candidates[i].id;
            let done = tx
                .execute_raw(stmt(
                    backend,
                    "UPDATE chats SET operator_id = ?, assigned_at = ? \
                     WHERE id = ? AND status = 'pending' AND operator_id IS NULL",
                    [operator_id.into(), now.into(), chat.id.into()],
                ))
                .await?;
            if done.rows_affected() == 1 {
                candidates[i].open += 1;
                candidates[i].open_here += 1;
                last = Some(operator_id);
                routed.push(chat.id);
            }
        }
        if !routed.is_empty() {
            tx.execute_raw(stmt(
                backend,
                "UPDATE inboxes SET routed_to = ? WHERE id = ?",
                [last.into(), inbox_id.into()],
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(Some(Some(routed)))
    }

    /// The first `limit` chats of an inbox's queue, in order (`lock`: and locked so).
    async fn queue_of(
        &self,
        conn: &impl ConnectionTrait,
        inbox_id: i64,
        limit: i64,
        lock: Option<&str>,
    ) -> Result<Vec<Queued>> {
        let rows = conn
            .query_all_raw(stmt(
                conn.get_database_backend(),
                &format!(
                    "SELECT id, customer_id FROM chats \
                     WHERE inbox_id = ? AND status = 'pending' AND operator_id IS NULL \
                     ORDER BY queued_at, id LIMIT ?{}",
                    lock.unwrap_or("")
                ),
                [inbox_id.into(), limit.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Queued {
                    id: r.try_get("", "id")?,
                    customer_id: r.try_get("", "customer_id")?,
                })
            })
            .collect()
    }

    /// Routes every inbox the operator gets chats from (they came online, got an inbox,
    /// or one of their chats closed).
    pub(super) async fn route_for_operator(&self, operator_id: i64) {
        if let Err(e) = self.try_route_for_operator(operator_id).await {
            tracing::warn!(error = %e, operator_id, "cannot route an operator's inboxes");
        }
    }

    async fn try_route_for_operator(&self, operator_id: i64) -> Result<()> {
        let rows = self
            .store()
            .query(
                "SELECT DISTINCT a.inbox_id AS inbox_id FROM assignments a \
                 JOIN inboxes i ON i.id = a.inbox_id \
                 WHERE a.operator_id = ? AND i.routing <> 'off'",
                [operator_id.into()],
            )
            .await?;
        for inbox_id in rows_i64(&rows, "inbox_id")? {
            self.route_inbox(inbox_id, false).await;
        }
        Ok(())
    }

    /// Routes every inbox with a queue: what each node does every few seconds, for changes
    /// it did not see (an operator online on another node, a router that died half way).
    pub async fn route_queued(&self) -> Result<()> {
        let rows = self
            .store()
            .query(
                "SELECT i.id AS inbox_id FROM inboxes i WHERE i.routing <> 'off' AND EXISTS \
                 (SELECT 1 FROM chats c WHERE c.inbox_id = i.id AND c.status = 'pending' \
                  AND c.operator_id IS NULL)",
                [],
            )
            .await?;
        for inbox_id in rows_i64(&rows, "inbox_id")? {
            self.route_inbox(inbox_id, false).await;
        }
        Ok(())
    }

    /// Seconds a place in the inbox's queue takes: over the last chats that waited in it
    /// (a second or more) before getting an operator, the time from the first of them
    /// joining to the last of them leaving, divided by their number. `None` until a chat
    /// has waited.
    async fn wait_estimate(
        &self,
        conn: &impl ConnectionTrait,
        inbox_id: i64,
    ) -> Result<Option<f64>> {
        let rows = conn
            .query_all_raw(stmt(
                conn.get_database_backend(),
                "SELECT queued_at, assigned_at FROM chats \
                 WHERE inbox_id = ? AND assigned_at IS NOT NULL \
                 AND assigned_at >= queued_at + 1000 ORDER BY assigned_at DESC LIMIT ?",
                [inbox_id.into(), RECENT.into()],
            ))
            .await?;
        let joined = rows_i64(&rows, "queued_at")?;
        let left = rows_i64(&rows, "assigned_at")?;
        Ok(match (joined.iter().min(), left.first()) {
            (Some(first), Some(last)) => {
                Some((last - first).max(0) as f64 / rows.len() as f64 / 1000.0)
            }
            _ => None,
        })
    }

    /// Tells each queued customer of the inbox their place (a `queue` frame).
    async fn announce_queue(&self, inbox_id: i64) -> Result<()> {
        let db = self.store().db();
        let queue = self.queue_of(db, inbox_id, ANNOUNCED, None).await?;
        if queue.is_empty() {
            return Ok(());
        }
        let per_place = self.wait_estimate(db, inbox_id).await?;
        for (i, chat) in queue.iter().enumerate() {
            let position = i as i64 + 1;
            self.announce(Event::Queue {
                customer_id: chat.customer_id,
                place: QueuePlace {
                    chat_id: chat.id,
                    position: Some(position),
                    estimated_wait_secs: per_place.map(|s| (s * position as f64).ceil() as i64),
                },
            });
        }
        Ok(())
    }

    /// A chat's place in its inbox's queue, for anyone who sees the chat.
    pub async fn queue_place(&self, who: &Principal, chat_id: i64) -> Result<QueuePlace> {
        let chat = self.visible_chat(who, chat_id).await?;
        let mut place = QueuePlace {
            chat_id,
            position: None,
            estimated_wait_secs: None,
        };
        if chat.status != ChatStatus::Pending.as_str() || chat.operator_id.is_some() {
            return Ok(place);
        }
        let rows = self
            .store()
            .query(
                "SELECT COUNT(*) AS n FROM chats \
                 WHERE inbox_id = ? AND status = 'pending' AND operator_id IS NULL \
                 AND (queued_at < ? OR (queued_at = ? AND id <= ?))",
                [
                    chat.inbox_id.into(),
                    chat.queued_at.into(),
                    chat.queued_at.into(),
                    chat.id.into(),
                ],
            )
            .await?;
        let position = rows_i64(&rows, "n")?.first().copied().unwrap_or(1);
        let per_place = self.wait_estimate(self.store().db(), chat.inbox_id).await?;
        place.position = Some(position);
        place.estimated_wait_secs = per_place.map(|s| (s * position as f64).ceil() as i64);
        Ok(place)
    }

    /// Hands a chat over: to an operator (who must see its inbox), to another inbox of the
    /// organisation (into its queue, unless an operator is named too), or both. Both sides
    /// see a notice saying so, with the note if one is given. The chat's operator, an
    /// operator who sees it, or the admin may hand it over; a finished chat cannot be.
    pub async fn transfer_chat(&self, who: &Principal, id: i64, to: Transfer) -> Result<Chat> {
        if matches!(who, Principal::Customer { .. }) {
            return Err(Error::Forbidden(
                "only an operator or the admin hands a chat over",
            ));
        }
        if to.operator_id.is_none() && to.inbox_id.is_none() {
            return Err(Error::Invalid("give operator_id, inbox_id or both".into()));
        }
        let note = super::optional("note", to.note.as_deref(), 1000)?;
        let current = self.visible_chat(who, id).await?;
        if current.status == ChatStatus::Finished.as_str() {
            return Err(Error::Conflict("chat is finished".into()));
        }
        let org_id = who.org_id();
        let target = match to.inbox_id {
            Some(inbox_id) => self.inbox_model(org_id, inbox_id).await?,
            None => self.inbox_model(org_id, current.inbox_id).await?,
        };
        let operator = match to.operator_id {
            Some(operator_id) => {
                let op = self.operator_model(org_id, operator_id).await?;
                if !self.operator_sees_inbox(op.id, &target).await? {
                    return Err(Error::Invalid(
                        "that operator does not work in the chat's inbox".into(),
                    ));
                }
                Some(op)
            }
            None => None,
        };
        let moved = target.id != current.inbox_id;
        let now = self.now_ms();
        let tx = self.store().write().await?;
        let backend = self.store().backend();
        let operator_id = operator.as_ref().map(|op| op.id);
        // To an operator, an answered chat stays answered (as it is when this commits); to
        // a queue, it waits for a first answer again. Either way it joins the queue anew
        // (`queued_at`), leaving it at once for a named operator.
        let updated = tx
            .execute_raw(stmt(
                backend,
                "UPDATE chats SET inbox_id = ?, domain_id = ?, operator_id = ?, \
                 status = CASE WHEN status = 'chatting' AND ? THEN 'chatting' ELSE 'pending' END, \
                 assigned_at = ?, queued_at = ? WHERE id = ? AND status <> 'finished'",
                [
                    target.id.into(),
                    target.domain_id.into(),
                    operator_id.into(),
                    operator_id.is_some().into(),
                    operator_id.map(|_| now).into(),
                    now.into(),
                    id.into(),
                ],
            ))
            .await
            .map_err(|e| {
                super::conflict_on_unique(e, "the customer has an open chat in that inbox")
            })?;
        if updated.rows_affected() == 0 {
            return Err(Error::Conflict("chat is finished".into()));
        }
        tx.commit().await?;
        let whereto = match &operator {
            Some(op) => op.name.clone(),
            None => target.name.clone(),
        };
        let mut text = format!(
            "{} handed the chat over to {whereto}",
            self.actor_name(who).await?
        );
        if let Some(note) = note {
            text.push_str(": ");
            text.push_str(&note);
        }
        self.after_handover(who, &current, operator_id, text)
            .await?;
        if moved {
            self.announce_move(id, &current).await?;
            // It left the old inbox's queue, if it was in it.
            self.route_inbox(current.inbox_id, current.operator_id.is_none())
                .await;
        }
        self.route_inbox(target.id, true).await;
        if let Some(old) = current.operator_id {
            self.route_for_operator(old).await;
        }
        // Read back as the caller's view even if it went to an inbox they do not see.
        self.chat_view(who, id).await
    }

    /// An operator's answer took a pending chat: its `chat` frame, and if it was waiting
    /// in a queue, the places of those behind it.
    pub(super) async fn chat_answered(&self, chat_id: i64) -> Result<()> {
        if let Some(chat) = self.publish_chat_updated(chat_id).await? {
            self.route_inbox(chat.inbox_id, true).await;
        }
        Ok(())
    }

    /// The chat's operator (or one who sees it, or the admin) hands it back to its
    /// inbox's queue, where routing may give it to someone else.
    pub async fn unassign_chat(&self, who: &Principal, id: i64) -> Result<Chat> {
        if matches!(who, Principal::Customer { .. }) {
            return Err(Error::Forbidden(
                "only an operator or the admin hands a chat back",
            ));
        }
        let current = self.visible_chat(who, id).await?;
        if current.status == ChatStatus::Finished.as_str() {
            return Err(Error::Conflict("chat is finished".into()));
        }
        let Some(old) = current.operator_id else {
            return self.chat(who, id).await;
        };
        let tx = self.store().write().await?;
        let updated = tx
            .execute_raw(stmt(
                self.store().backend(),
                "UPDATE chats SET operator_id = NULL, status = 'pending', assigned_at = NULL, \
                 queued_at = ? WHERE id = ? AND operator_id = ? AND status <> 'finished'",
                [self.now_ms().into(), id.into(), old.into()],
            ))
            .await?;
        tx.commit().await?;
        if updated.rows_affected() == 1 {
            let text = format!(
                "{} returned the chat to the queue",
                self.actor_name(who).await?
            );
            self.after_handover(who, &current, None, text).await?;
            self.route_inbox(current.inbox_id, true).await;
            self.route_for_operator(old).await;
        }
        self.chat(who, id).await
    }

    /// After a hand-over's commit: its `chat` frame, and the notice both sides see, said
    /// by the operator who did it (for the admin: the chat's new operator, else its old
    /// one; with neither, there is no notice).
    async fn after_handover(
        &self,
        who: &Principal,
        was: &chat::Model,
        new_operator: Option<i64>,
        text: String,
    ) -> Result<()> {
        self.publish_chat_updated(was.id).await?;
        let author = match *who {
            Principal::Operator { operator_id, .. } => Some(operator_id),
            _ => new_operator.or(was.operator_id),
        };
        match author {
            Some(op) => self.post_notice(was.id, Person::Operator(op), text).await,
            None => Ok(()),
        }
    }

    /// A system notice in a chat (a hand-over, a reopening): a `notice` message that both
    /// sides see, which changes nothing else of the chat.
    pub(super) async fn post_notice(
        &self,
        chat_id: i64,
        author: Person,
        text: String,
    ) -> Result<()> {
        let text: String = text.chars().take(self.limits().max_text_chars).collect();
        self.append(
            chat_id,
            Draft {
                author,
                local_id: Some(format!("{}{}", DESK_NOTICE, uuid::Uuid::new_v4().simple())),
                payload: Payload::Notice,
                text,
                file: None,
            },
        )
        .await?;
        Ok(())
    }

    /// The name a hand-over notice gives its doer.
    async fn actor_name(&self, who: &Principal) -> Result<String> {
        Ok(match *who {
            Principal::Operator {
                org_id,
                operator_id,
            } => self.operator_model(org_id, operator_id).await?.name,
            _ => "An administrator".to_owned(),
        })
    }

    /// A chat moved to another inbox: the operators of its new inbox join its room (and
    /// hear of it), those of the old one re-read what they may follow.
    async fn announce_move(&self, id: i64, was: &chat::Model) -> Result<()> {
        let Some(now) = chat::Entity::find_by_id(id).one(self.store().db()).await? else {
            return Ok(());
        };
        let audience: Vec<Person> = self
            .operators_seeing(now.inbox_id, now.domain_id)
            .await?
            .into_iter()
            .map(Person::Operator)
            .collect();
        let before = self.operators_seeing(was.inbox_id, was.domain_id).await?;
        self.announce(Event::ChatJoined {
            chat: summary(&now),
            audience: audience.clone(),
        });
        for op in before {
            if !audience.contains(&Person::Operator(op)) {
                self.announce(Event::AccessChanged(Person::Operator(op)));
            }
        }
        Ok(())
    }
}

/// The `local_id` prefix of the notices souq itself says in chats (hand-overs,
/// reopenings), which tells them apart from notices operators send.
pub(crate) const DESK_NOTICE: &str = "souq:";

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: i64, capacity: Option<i64>, open: i64, open_here: i64) -> Candidate {
        Candidate {
            id,
            capacity,
            open,
            open_here,
        }
    }

    #[test]
    fn round_robin_takes_turns_and_wraps() {
        let cs = [c(1, None, 0, 0), c(2, None, 5, 5), c(3, None, 0, 0)];
        let pick = |last| choose(Routing::RoundRobin, &cs, None, last).map(|i| cs[i].id);
        assert_eq!(pick(None), Some(1));
        assert_eq!(pick(Some(1)), Some(2));
        assert_eq!(pick(Some(2)), Some(3));
        assert_eq!(pick(Some(3)), Some(1));
    }

    #[test]
    fn least_busy_takes_the_fewest_open_then_turns() {
        let cs = [c(1, None, 2, 0), c(2, None, 1, 1), c(3, None, 1, 0)];
        let pick = |last| choose(Routing::LeastBusy, &cs, None, last).map(|i| cs[i].id);
        assert_eq!(pick(None), Some(2));
        assert_eq!(pick(Some(2)), Some(3));
    }

    #[test]
    fn capacities_leave_out_full_operators() {
        let cs = [c(1, Some(2), 2, 0), c(2, None, 3, 3), c(3, None, 9, 1)];
        let pick = |cap| choose(Routing::RoundRobin, &cs, cap, None).map(|i| cs[i].id);
        assert_eq!(pick(None), Some(2));
        assert_eq!(pick(Some(3)), Some(3));
        assert_eq!(pick(Some(1)), None);
        assert_eq!(choose(Routing::Off, &cs, None, None), None);
    }
}
