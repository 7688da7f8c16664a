//! Service-level figures of an inbox over a period: how many chats came, how many an
//! operator answered and how soon, how long they took to finish, and per operator.
//! Counted by the database (a few aggregate queries), whatever the number of chats.
//!
//! The chats counted are those created in the period, `from` included, `to` not. A chat's
//! first response is its first operator message with text or a file (notices do not
//! count), whenever it came; its resolution time runs from creation to finishing.

use sea_orm::Value;
use serde::Serialize;

use super::{Core, Error, Principal, Result};

/// The period when none is asked for: the last seven days.
const DEFAULT_DAYS: i64 = 7;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Durations {
    pub count: i64,
    /// Rounded to the millisecond; `null` when there are none.
    pub avg_ms: Option<i64>,
    /// `null` when there are none.
    pub max_ms: Option<i64>,
}

/// What one operator answered first in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorFigures {
    pub operator_id: i64,
    pub name: String,
    /// Chats of the period whose first response was theirs.
    pub chats: i64,
    pub first_response_avg_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxReport {
    pub inbox_id: i64,
    pub from: i64,
    pub to: i64,
    /// Chats created in the period.
    pub chats: i64,
    /// Of those, chats an operator answered.
    pub answered: i64,
    /// Of those, chats no operator ever answered.
    pub missed: i64,
    /// From a chat's creation to its first response, over the answered chats.
    pub first_response: Durations,
    /// From a chat's creation to its finishing, over the finished chats.
    pub resolution: Durations,
    /// By operator id.
    pub operators: Vec<OperatorFigures>,
}

/// The period asked for, checked: `to` by default now, `from` by default seven days
/// before `to`. Fails with `Invalid` unless `from` is before `to`.
fn period(from: Option<i64>, to: Option<i64>, now: i64) -> Result<(i64, i64)> {
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to.saturating_sub(DEFAULT_DAYS * DAY_MS));
    if from >= to {
        return Err(Error::Invalid("from must be before to".into()));
    }
    Ok((from, to))
}

/// `sum / count` to the nearest integer (durations are never negative).
fn average(sum: i64, count: i64) -> Option<i64> {
    (count > 0).then(|| (sum + count / 2) / count)
}

/// The chats of the period (`period`) and the first response of each that had one
/// (`answers`: who, and how long after creation); takes the inbox, `from` and `to`.
const PERIOD: &str = "WITH period AS ( \
       SELECT id, created_at, finished_at, status FROM chats \
       WHERE inbox_id = ? AND created_at >= ? AND created_at < ?), \
     first AS ( \
       SELECT m.chat_id AS chat_id, MIN(m.seq) AS seq FROM messages m \
       JOIN period p ON p.id = m.chat_id \
       WHERE m.author_kind = 'operator' AND m.payload IN ('text', 'file') \
       GROUP BY m.chat_id), \
     answers AS ( \
       SELECT m.author_id AS operator_id, m.created_at - p.created_at AS ms FROM first f \
       JOIN messages m ON m.chat_id = f.chat_id AND m.seq = f.seq \
       JOIN period p ON p.id = f.chat_id) ";

/// The finished chats of the period, and their resolution time.
const FINISHED: &str = "FROM period WHERE status = 'finished' AND finished_at IS NOT NULL";

impl Core {
    /// The figures of an inbox over `from`..`to` (unix ms; by default the last seven
    /// days). For the organisation's admin, or an operator who sees the inbox; anyone else
    /// is told the inbox is not found. `Invalid` unless `from` is before `to`.
    pub async fn inbox_report(
        &self,
        who: &Principal,
        inbox_id: i64,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<InboxReport> {
        let inbox = self.inbox_model(who.org_id(), inbox_id).await?;
        let allowed = match *who {
            Principal::Admin { .. } => true,
            Principal::Operator { operator_id, .. } => {
                self.operator_sees_inbox(operator_id, &inbox).await?
            }
            Principal::Customer { .. } => false,
        };
        if !allowed {
            return Err(Error::NotFound("inbox"));
        }
        let (from, to) = period(from, to, self.now_ms())?;
        let values = || -> Vec<Value> { vec![inbox.id.into(), from.into(), to.into()] };
        let totals = self
            .store()
            .query(
                &format!(
                    "{PERIOD} SELECT \
                     (SELECT COUNT(*) FROM period) AS chats, \
                     (SELECT COUNT(*) FROM answers) AS answered, \
                     (SELECT CAST(COALESCE(SUM(ms), 0) AS BIGINT) FROM answers) AS answer_sum, \
                     (SELECT MAX(ms) FROM answers) AS answer_max, \
                     (SELECT COUNT(*) {FINISHED}) AS finished, \
                     (SELECT CAST(COALESCE(SUM(finished_at - created_at), 0) AS BIGINT) \
                        {FINISHED}) AS finished_sum, \
                     (SELECT MAX(finished_at - created_at) {FINISHED}) AS finished_max"
                ),
                values(),
            )
            .await?;
        let row = totals
            .first()
            .ok_or_else(|| Error::Internal("an aggregate returned no row".into()))?;
        let number = |name: &str| row.try_get::<i64>("", name);
        let (chats, answered, finished) =
            (number("chats")?, number("answered")?, number("finished")?);
        let (answer_sum, finished_sum) = (number("answer_sum")?, number("finished_sum")?);
        let operators = self
            .store()
            .query(
                &format!(
                    "{PERIOD} SELECT a.operator_id AS operator_id, o.name AS name, \
                     COUNT(*) AS chats, CAST(SUM(a.ms) AS BIGINT) AS ms_sum \
                     FROM answers a JOIN operators o ON o.id = a.operator_id \
                     GROUP BY a.operator_id, o.name ORDER BY a.operator_id"
                ),
                values(),
            )
            .await?
            .iter()
            .map(|r| {
                let chats: i64 = r.try_get("", "chats")?;
                Ok(OperatorFigures {
                    operator_id: r.try_get("", "operator_id")?,
                    name: r.try_get("", "name")?,
                    chats,
                    first_response_avg_ms: average(r.try_get("", "ms_sum")?, chats).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(InboxReport {
            inbox_id: inbox.id,
            from,
            to,
            chats,
            answered,
            missed: chats - answered,
            first_response: Durations {
                count: answered,
                avg_ms: average(answer_sum, answered),
                max_ms: row.try_get("", "answer_max")?,
            },
            resolution: Durations {
                count: finished,
                avg_ms: average(finished_sum, finished),
                max_ms: row.try_get("", "finished_max")?,
            },
            operators,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_default_to_the_last_week_and_must_not_be_empty() {
        let now = 100 * DAY_MS;
        assert_eq!(period(None, None, now).ok(), Some((93 * DAY_MS, now)));
        assert_eq!(period(Some(5), None, now).ok(), Some((5, now)));
        assert_eq!(
            period(None, Some(8 * DAY_MS), now).ok(),
            Some((DAY_MS, 8 * DAY_MS))
        );
        assert!(period(Some(5), Some(5), now).is_err());
        assert!(period(Some(6), Some(5), now).is_err());
    }

    #[test]
    fn averages_round_to_the_nearest_millisecond() {
        assert_eq!(average(0, 0), None);
        assert_eq!(average(10, 4), Some(3));
        assert_eq!(average(9, 4), Some(2));
    }
}
