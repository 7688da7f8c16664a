//! Search over message text: the messages of the chats a caller sees (see
//! [`ChatScope`](super::chats::ChatScope)) that hold every word asked for, newest first,
//! each with a highlighted extract.
//!
//! Each backend splits text into words its own way, the query with the same rules as the
//! text (so a query word matches when the backend would have indexed it so):
//! - SQLite: an FTS5 index (`unicode61`: letters and digits, case and diacritics folded).
//!   The message path never writes it; [`Core::index_messages`], run by a loop every
//!   [`INDEXER`]`.every`, adds the messages past a stored cursor, so a send costs nothing
//!   more and a message is found well within a second. Erasure takes messages out of it
//!   (a trigger of schema/migrations/0017_search.sqlite.sql).
//! - PostgreSQL: a GIN index on `to_tsvector('simple', text)` (lowercased words, no
//!   stemming), kept by PostgreSQL in each send's transaction. A search looks through the
//!   newest messages first, then asks the index (see [`PG_RECENT`]).
//!
//! The user's words never reach either query language as syntax: on SQLite each
//! whitespace-separated piece becomes a quoted FTS5 phrase; PostgreSQL is given the text
//! through `plainto_tsquery`, which reads no operators.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Value};
use serde::Serialize;

use super::chats::ChatScope;
use super::{Core, Error, Message, Principal, Result};
use crate::store::entity::message;
use crate::store::stmt;

/// The knobs of the SQLite indexer.
#[derive(Debug, Clone, Copy)]
pub struct Indexer {
    /// How often it looks for new messages: 250 ms keeps "found within a second" with
    /// room to spare, and an idle round is one read of the newest id.
    pub every: Duration,
    /// Most messages indexed in one write transaction. The indexer holds SQLite's write
    /// lock meanwhile, so a send waits for at most one round: 2,000 short messages take
    /// about 15 ms; rounds follow one another at once while they come back full.
    pub round: u64,
}

/// The indexer's settings (see [`Indexer`]).
pub const INDEXER: Indexer = Indexer {
    every: Duration::from_millis(250),
    round: 2_000,
};

/// Longest query, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// Marks around a hit in the database's highlight, turned into `<mark>` after the text is
/// escaped for HTML (characters of Unicode's private use area, which no text means).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// What PostgreSQL's highlight is given instead of `<`, `>` and `&` ([`STOOD_FOR`]), which
/// its parser reads as markup (see [`highlight`]).
const STAND_INS: [char; 3] = ['\u{E002}', '\u{E003}', '\u{E004}'];
const STOOD_FOR: [char; 3] = ['<', '>', '&'];

/// Words of context a highlight shows around the hits.
const HIGHLIGHT_WORDS: i64 = 24;

/// One message found.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub chat_id: i64,
    pub message: Message,
    /// An extract of the text, escaped for HTML, with each hit in `<mark>...</mark>`; `…`
    /// where text was left out.
    pub highlight: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchPage {
    /// Newest first.
    pub items: Vec<Hit>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next: Option<String>,
}

/// A checked query: the text asked for, and the FTS5 query that means it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    text: String,
    fts5: String,
}

impl Query {
    /// Fails with `Invalid` for an empty or oversize query.
    fn parse(q: Option<&str>) -> Result<Query> {
        // Control characters (a NUL, say) are no part of a word, and the databases take
        // some of them badly: they separate words, as spaces do.
        let text: String = q
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Invalid("q must hold a word to search for".into()));
        }
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::Invalid(format!(
                "q must be at most {MAX_QUERY_CHARS} characters"
            )));
        }
        // Each piece a quoted phrase (a `"` doubled inside): FTS5 splits it into words
        // as it split the text, and reads none of it as an operator. Pieces with no word
        // in them (`*`, `:`) are empty phrases, which FTS5 leaves out.
        let fts5 = text
            .split_whitespace()
            .map(|piece| format!("\"{}\"", piece.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Query {
            text: text.to_owned(),
            fts5,
        })
    }
}

/// `before`: a message id, as `next` gave it.
fn parse_before(before: Option<&str>) -> Result<i64> {
    match before {
        None => Ok(i64::MAX),
        Some(b) => b
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| b.parse::<i64>().ok())
            .flatten()
            .ok_or_else(|| Error::Invalid("before is not a cursor given by this API".into())),
    }
}

/// The database's highlight made safe for HTML: the text escaped, the hit marks made
/// `<mark>` tags, `…` where the extract leaves text out.
///
/// PostgreSQL's parser takes `<...>` for HTML tags and leaves them out of its highlight,
/// so it is handed the text with `<`, `>` and `&` swapped for [`STAND_INS`], swapped back
/// here. A message that itself holds one of the characters reserved for this gets the
/// start of its text (without them), escaped, with nothing marked.
fn highlight(marked: &str, text: &str) -> String {
    let reserved = |c: char| c == OPEN || c == CLOSE || STAND_INS.contains(&c);
    if text.contains(reserved) {
        let start: String = text.chars().filter(|&c| !reserved(c)).take(200).collect();
        let mut out = escape(&start);
        if text.chars().count() > 200 {
            out.push('…');
        }
        return out;
    }
    let marked: String = marked
        .chars()
        .map(|c| match STAND_INS.iter().position(|&s| s == c) {
            Some(i) => STOOD_FOR[i],
            None => c,
        })
        .collect();
    let plain: String = marked
        .chars()
        .filter(|&c| c != OPEN && c != CLOSE)
        .collect();
    let mut out = String::with_capacity(marked.len() + 16);
    if !text.trim_start().starts_with(plain.trim_start()) {
        out.push('…');
    }
    for piece in marked.split_inclusive([OPEN, CLOSE]) {
        let (word, mark) = match piece.strip_suffix(OPEN) {
            Some(word) => (word, "<mark>"),
            None => match piece.strip_suffix(CLOSE) {
                Some(word) => (word, "</mark>"),
                None => (piece, ""),
            },
        };
        out.push_str(&escape(word));
        out.push_str(mark);
    }
    if !text.trim_end().ends_with(plain.trim_end()) {
        out.push('…');
    }
    out
}

/// Text escaped for HTML, in an element or an attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The message columns, as `message::Model` reads them.
const MESSAGE_COLUMNS: &str = "m.id AS id, m.chat_id AS chat_id, m.seq AS seq, \
     m.author_kind AS author_kind, m.author_id AS author_id, m.local_id AS local_id, \
     m.payload AS payload, m.text AS text, m.file_id AS file_id, m.created_at AS created_at, \
     m.received_at AS received_at, m.read_at AS read_at, m.pushed_at AS pushed_at";

impl Core {
    /// The messages holding every word of `q` in the chats the caller sees, newest first,
    /// `limit` (1 to 100, 20 by default) at a time, older than `before` (a page's
    /// `next`). Fails with `Invalid` for an empty query, one longer than 200 characters,
    /// a bad limit or cursor.
    pub async fn search(
        &self,
        who: &Principal,
        q: Option<&str>,
        before: Option<&str>,
        limit: Option<u64>,
    ) -> Result<SearchPage> {
        let query = Query::parse(q)?;
        let limit = match limit {
            None => 20,
            Some(n @ 1..=100) => n,
            Some(_) => return Err(Error::Invalid("limit must be between 1 and 100".into())),
        };
        let before = parse_before(before)?;
        let scope = self.scope_of(who).await?;
        // One row past the page tells whether there is another.
        let rows = match self.store().backend() {
            DbBackend::Postgres => {
                let (org_id, store) = (who.org_id(), self.store());
                let (sql, values) = postgres_search(&scope, &query, org_id, before, limit, false);
                let recent = store.query(&sql, values).await?;
                if recent.len() as u64 > limit
                    || postgres_walked_all(self, &scope, org_id, before).await?
                {
                    recent
                } else {
                    // Not a page among the newest: the index finds them all (those
                    // again too).
                    let (sql, values) =
                        postgres_search(&scope, &query, org_id, before, limit, true);
                    store.query(&sql, values).await?
                }
            }
            _ => {
                let (sql, values) = sqlite_search(&scope, &query, who.org_id(), before, limit);
                self.store().query(&sql, values).await?
            }
        };
        let mut items = Vec::with_capacity(rows.len());
        for row in rows.iter().take(limit as usize) {
            let model = message::Model::from_query_result(row, "")?;
            let marked: String = row.try_get("", "highlight")?;
            let highlight = highlight(&marked, &model.text);
            items.push(Hit {
                chat_id: model.chat_id,
                message: Message::from(model),
                highlight,
            });
        }
        let next = (rows.len() as u64 > limit)
            .then(|| items.last().map(|h| h.message.id.to_string()))
            .flatten();
        let mut messages: Vec<Message> = items.iter().map(|h| h.message.clone()).collect();
        self.attach_files(&mut messages).await?;
        for (hit, message) in items.iter_mut().zip(messages) {
            hit.message = message;
        }
        Ok(SearchPage { items, next })
    }

    /// Adds to the SQLite search index the messages past its cursor, at most
    /// [`INDEXER`]`.round` of them, in one write transaction that moves the cursor too
    /// (so two indexers never add a message twice). Returns how many; 0 on PostgreSQL,
    /// whose index keeps itself.
    pub async fn index_messages(&self) -> Result<u64> {
        if self.store().backend() != DbBackend::Sqlite {
            return Ok(0);
        }
        let past = "SELECT MAX(id) AS upto, COUNT(*) AS n FROM (SELECT id FROM messages \
             WHERE id > (SELECT last_id FROM search_cursor WHERE id = 1) ORDER BY id LIMIT ?)";
        // Looked at first without the write lock: most rounds find nothing.
        let rows = self
            .store()
            .query(past, [(INDEXER.round as i64).into()])
            .await?;
        if rows
            .first()
            .is_none_or(|r| r.try_get::<i64>("", "n").unwrap_or(0) == 0)
        {
            return Ok(0);
        }
        let tx = self.store().write().await?;
        let row = tx
            .query_one_raw(stmt(
                DbBackend::Sqlite,
                past,
                [(INDEXER.round as i64).into()],
            ))
            .await?;
        let (upto, n): (Option<i64>, i64) = match row {
            Some(r) => (r.try_get("", "upto")?, r.try_get("", "n")?),
            None => (None, 0),
        };
        let Some(upto) = upto else {
            return Ok(0);
        };
        for sql in [
            "INSERT INTO message_search (rowid, text) SELECT id, text FROM messages \
             WHERE id > (SELECT last_id FROM search_cursor WHERE id = 1) AND id <= ?",
            "UPDATE search_cursor SET last_id = ? WHERE id = 1",
        ] {
            tx.execute_raw(stmt(DbBackend::Sqlite, sql, [Value::from(upto)]))
                .await?;
        }
        tx.commit().await?;
        Ok(n as u64)
    }
}

/// SQLite: FTS5 walks its hits newest first and each is kept if its chat is in scope,
/// until the page is full; that is quick when the scope holds much of the organisation.
/// A customer's scope is a few chats: their messages are walked instead, newest first,
/// each looked up in the index.
fn sqlite_search(
    scope: &ChatScope,
    query: &Query,
    org_id: i64,
    before: i64,
    limit: u64,
) -> (String, Vec<Value>) {
    // CROSS JOIN keeps the tables in the order written. The order and the bound are on
    // the walked table's id, so that it walks in that order from that bound.
    let (from, id) = match scope {
        ChatScope::Customer(_) => (
            "chats c CROSS JOIN messages m ON m.chat_id = c.id \
             CROSS JOIN message_search s ON s.rowid = m.id",
            "m.id",
        ),
        _ => (
            "message_search s CROSS JOIN messages m ON m.id = s.rowid \
             CROSS JOIN chats c ON c.id = m.chat_id",
            "s.rowid",
        ),
    };
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS}, \
         snippet(message_search, 0, ?, ?, '', {HIGHLIGHT_WORDS}) AS highlight \
         FROM {from} \
         WHERE message_search MATCH ? AND {id} < ? AND c.org_id = ? AND {} \
         ORDER BY {id} DESC LIMIT ?",
        scope.sql("c")
    );
    let values = vec![
        OPEN.to_string().into(),
        CLOSE.to_string().into(),
        query.fts5.clone().into(),
        before.into(),
        org_id.into(),
        (limit as i64 + 1).into(),
    ];
    (sql, values)
}

/// Newest messages in scope a search on PostgreSQL looks through before it asks the index.
/// Its planner, left to choose, walks the newest messages testing each for the words even
/// for a word it thinks rare, and took 1.5 s (12 s for some) in ten million messages;
/// the index alone takes 1.3-1.9 s for an everyday word (it reads every hit). A walk of
/// this many takes about 10-20 ms and finds a page of an everyday word; else the index
/// finds the rest (20-100 ms for a rarer word). A scope with fewer messages than this
/// (a customer's) is walked whole, and the index is not asked. See docs/benchmarks.md,
/// "Search".
const PG_RECENT: i64 = 2_000;

/// Whether the scope has fewer than [`PG_RECENT`] messages before `before`: then the walk
/// of the newest saw them all, and its hits are all there are (a customer's few chats).
async fn postgres_walked_all(
    core: &Core,
    scope: &ChatScope,
    org_id: i64,
    before: i64,
) -> Result<bool> {
    let sql = format!(
        "SELECT COUNT(*) AS n FROM (SELECT 1 FROM messages m JOIN chats c ON c.id = m.chat_id \
         WHERE m.id < ? AND c.org_id = ? AND {} LIMIT {PG_RECENT}) w",
        scope.sql("c")
    );
    let rows = core
        .store()
        .query(&sql, [before.into(), org_id.into()])
        .await?;
    let n: i64 = match rows.first() {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    };
    Ok(n < PG_RECENT)
}

/// The two PostgreSQL searches of [`PG_RECENT`]: `recent` the newest messages in scope,
/// else `indexed` through the GIN index. The highlight is made only for the page's rows.
fn postgres_search(
    scope: &ChatScope,
    query: &Query,
    org_id: i64,
    before: i64,
    limit: u64,
    indexed: bool,
) -> (String, Vec<Value>) {
    let headline = "SELECT p.*, ts_headline('simple', translate(p.text, '<>&', ?), \
         plainto_tsquery('simple', ?), ?) AS highlight FROM";
    let options = format!(
        "StartSel={OPEN}, StopSel={CLOSE}, MaxWords={HIGHLIGHT_WORDS}, MinWords={}, ShortWord=0",
        HIGHLIGHT_WORDS / 2
    );
    let headline_values: [Value; 3] = [
        STAND_INS.iter().collect::<String>().into(),
        query.text.clone().into(),
        options.into(),
    ];
    let scope = scope.sql("c");
    if indexed {
        // MATERIALIZED: the hits come from the index, whatever the planner thinks.
        let sql = format!(
            "WITH hits AS MATERIALIZED (SELECT id FROM messages \
               WHERE to_tsvector('simple', text) @@ plainto_tsquery('simple', ?) AND id < ?) \
             {headline} (SELECT {MESSAGE_COLUMNS} FROM hits h \
               JOIN messages m ON m.id = h.id JOIN chats c ON c.id = m.chat_id \
               WHERE c.org_id = ? AND {scope} ORDER BY m.id DESC LIMIT ?) p \
             ORDER BY p.id DESC"
        );
        let mut values: Vec<Value> = vec![query.text.clone().into(), before.into()];
        values.extend(headline_values);
        values.extend([org_id.into(), (limit as i64 + 1).into()]);
        return (sql, values);
    }
    // The inner LIMIT keeps the test of the words out of the walk.
    let sql = format!(
        "{headline} (SELECT r.* FROM (SELECT {MESSAGE_COLUMNS} FROM messages m \
           JOIN chats c ON c.id = m.chat_id \
           WHERE m.id < ? AND c.org_id = ? AND {scope} ORDER BY m.id DESC LIMIT {PG_RECENT}) r \
           WHERE to_tsvector('simple', r.text) @@ plainto_tsquery('simple', ?) \
           ORDER BY r.id DESC LIMIT ?) p \
         ORDER BY p.id DESC"
    );
    let mut values: Vec<Value> = headline_values.into();
    values.extend([
        before.into(),
        org_id.into(),
        query.text.clone().into(),
        (limit as i64 + 1).into(),
    ]);
    (sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_quoted_phrases_and_bad_ones_are_refused() {
        let cases = [
            ("refund", "\"refund\""),
            ("  late  order ", "\"late\" \"order\""),
            (
                "say \"hi\" NEAR(a b)",
                "\"say\" \"\"\"hi\"\"\" \"NEAR(a\" \"b)\"",
            ),
            ("col:x *", "\"col:x\" \"*\""),
        ];
        for (q, want) in cases {
            assert_eq!(
                Query::parse(Some(q)).map(|q| q.fts5).ok().as_deref(),
                Some(want),
                "{q}"
            );
        }
        for bad in [None, Some(""), Some("   ")] {
            assert!(Query::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Query::parse(Some(&"a".repeat(200))).is_ok());
        assert!(Query::parse(Some(&"é".repeat(201))).is_err());
    }

    #[test]
    fn highlights_escape_the_text_and_mark_only_the_hits() {
        let marked = format!("a <b>&'\" {OPEN}hit{CLOSE} c");
        assert_eq!(
            highlight(&marked, "a <b>&'\" hit c"),
            "a &lt;b&gt;&amp;&#39;&quot; <mark>hit</mark> c"
        );
        // Text left out at either end is shown as such.
        assert_eq!(
            highlight(&format!("{OPEN}x{CLOSE} y"), "w x y z"),
            "…<mark>x</mark> y…"
        );
        // PostgreSQL's stand-ins are swapped back.
        let [lt, gt, amp] = STAND_INS;
        assert_eq!(
            highlight(&format!("{lt}b{gt} {OPEN}x{CLOSE} {amp}"), "<b> x &"),
            "&lt;b&gt; <mark>x</mark> &amp;"
        );
        // A text that holds a reserved character has nothing marked.
        let sneaky = format!("{OPEN}<script>{CLOSE}{lt}");
        assert_eq!(
            highlight(&format!("{OPEN}{sneaky}{CLOSE}"), &sneaky),
            "&lt;script&gt;"
        );
    }

    #[test]
    fn cursors_are_message_ids() {
        assert_eq!(parse_before(None).ok(), Some(i64::MAX));
        assert_eq!(parse_before(Some("42")).ok(), Some(42));
        for bad in ["", "-1", "4 2", "x", "99999999999999999999"] {
            assert!(parse_before(Some(bad)).is_err(), "{bad}");
        }
    }
}
