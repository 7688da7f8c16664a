//! Versioned migrations from `schema/migrations`, applied in order at start.
//!
//! Each migration runs in one transaction with its version row, so a failed migration
//! leaves nothing behind. On PostgreSQL an advisory lock makes nodes that start together
//! apply each migration once.

use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use super::{Store, stmt};

/// Each migration's version, the one backend it is for (`None`: both), and its SQL. A
/// version may have one entry per backend instead of one for both.
const MIGRATIONS: &[(i64, Option<DbBackend>, &str)] = &[
    (
        1,
        None,
        include_str!("../../schema/migrations/0001_init.sql"),
    ),
    (
        2,
        None,
        include_str!("../../schema/migrations/0002_operator_addons.sql"),
    ),
    (
        3,
        None,
        include_str!("../../schema/migrations/0003_one_open_chat.sql"),
    ),
    (
        4,
        Some(DbBackend::Sqlite),
        include_str!("../../schema/migrations/0004_messages_without_autoincrement.sql"),
    ),
    (
        5,
        Some(DbBackend::Postgres),
        include_str!("../../schema/migrations/0005_messages_room_for_receipts.sql"),
    ),
    (
        6,
        None,
        include_str!("../../schema/migrations/0006_chats_by_activity.sql"),
    ),
    (
        7,
        None,
        include_str!("../../schema/migrations/0007_operator_access_stamp.sql"),
    ),
    (
        8,
        None,
        include_str!("../../schema/migrations/0008_customer_access_stamp.sql"),
    ),
    (
        9,
        None,
        include_str!("../../schema/migrations/0009_files.sql"),
    ),
    (
        10,
        None,
        include_str!("../../schema/migrations/0010_webhooks.sql"),
    ),
    (
        11,
        None,
        include_str!("../../schema/migrations/0011_notifications.sql"),
    ),
    (
        12,
        None,
        include_str!("../../schema/migrations/0012_catalogue.sql"),
    ),
    (
        13,
        None,
        include_str!("../../schema/migrations/0013_offers.sql"),
    ),
    (
        14,
        None,
        include_str!("../../schema/migrations/0014_customer_passwords.sql"),
    ),
    (
        15,
        None,
        include_str!("../../schema/migrations/0015_canned_responses.sql"),
    ),
    (
        16,
        None,
        include_str!("../../schema/migrations/0016_desk.sql"),
    ),
    (
        17,
        Some(DbBackend::Sqlite),
        include_str!("../../schema/migrations/0017_search.sqlite.sql"),
    ),
    (
        17,
        Some(DbBackend::Postgres),
        include_str!("../../schema/migrations/0017_search.postgres.sql"),
    ),
    (
        18,
        None,
        include_str!("../../schema/migrations/0018_domain_prechat.sql"),
    ),
    (
        19,
        None,
        include_str!("../../schema/migrations/0019_broadcasts.sql"),
    ),
];

/// Any fixed number; it only has to be the same on every node.
const PG_LOCK_KEY: i64 = 0x736f_7571;

pub(super) async fn run(store: &Store) -> Result<(), DbErr> {
    let backend = store.backend();
    store
        .db()
        .execute_unprepared(
            "CREATE TABLE IF NOT EXISTS souq_migrations \
             (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
    for &(version, only, sql) in MIGRATIONS {
        // The other backend's half of a version that has one for each: this backend's
        // half records the version.
        let elsewhere = only.is_some_and(|only| only != backend);
        if elsewhere
            && MIGRATIONS
                .iter()
                .any(|&(v, o, _)| v == version && o == Some(backend))
        {
            continue;
        }
        let tx = store.write().await?;
        if backend == DbBackend::Postgres {
            tx.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({PG_LOCK_KEY})"))
                .await?;
        }
        let applied = tx
            .query_one_raw(stmt(
                backend,
                "SELECT version FROM souq_migrations WHERE version = ?",
                [version.into()],
            ))
            .await?
            .is_some();
        if applied {
            tx.commit().await?;
            continue;
        }
        if only.is_none_or(|only| only == backend) {
            for statement in statements(backend, sql) {
                tx.execute_unprepared(&statement).await?;
            }
        }
        tx.execute_raw(stmt(
            backend,
            "INSERT INTO souq_migrations (version, applied_at) VALUES (?, ?)",
            [version.into(), crate::clock::system_ms().into()],
        ))
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
    }
    Ok(())
}

/// Splits a migration into statements and fills in the dialect's id column. A `;` ends
/// a statement but inside a quoted string, a `$$`-quoted PostgreSQL function body, or a
/// SQLite trigger's `BEGIN ... END`.
pub(crate) fn statements(backend: DbBackend, sql: &str) -> Vec<String> {
    let id = match backend {
        DbBackend::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        _ => "INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    let without_comments: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut dollars, mut in_trigger_body) = (false, false, false);
    let mut word = String::new();
    for c in without_comments.chars() {
        current.push(c);
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        // A word just ended: BEGIN opens a trigger's body, END closes it.
        let ended = std::mem::take(&mut word).to_ascii_uppercase();
        if !quoted && !dollars {
            let trigger = current
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE TRIGGER");
            if trigger && ended == "BEGIN" {
                in_trigger_body = true;
            } else if ended == "END" {
                in_trigger_body = false;
            }
        }
        match c {
            '\'' if !dollars => quoted = !quoted,
            '$' if !quoted && current.ends_with("$$") => dollars = !dollars,
            ';' if !quoted && !dollars && !in_trigger_body => {
                current.pop();
                let statement = current.trim();
                if !statement.is_empty() {
                    out.push(statement.replace("{ID}", id));
                }
                current.clear();
            }
            _ => {}
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        out.push(rest.replace("{ID}", id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_strings_function_bodies_and_triggers() {
        let sql = "-- a comment; with a semicolon\n\
            CREATE TABLE t (id {ID}, s TEXT DEFAULT 'a;b');\n\
            CREATE TRIGGER t_after AFTER INSERT ON t BEGIN\n\
              INSERT INTO u VALUES (NEW.id);\n\
              UPDATE u SET n = 1;\n\
            END;\n\
            CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN INSERT INTO u VALUES (1); RETURN NULL; END $$ LANGUAGE plpgsql;\n\
            CREATE INDEX i ON t (s)";
        let got = statements(DbBackend::Sqlite, sql);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(got[0].contains("INTEGER PRIMARY KEY AUTOINCREMENT") && got[0].contains("'a;b'"));
        assert!(
            got[1].starts_with("CREATE TRIGGER") && got[1].ends_with("END"),
            "{}",
            got[1]
        );
        assert!(got[2].ends_with("LANGUAGE plpgsql"), "{}", got[2]);
        assert_eq!(got[3], "CREATE INDEX i ON t (s)");
    }

    /// A SQLite database made before version 4, with two messages, upgraded: the messages
    /// table loses AUTOINCREMENT and keeps its rows, and a new message takes the next id.
    #[tokio::test]
    async fn messages_lose_autoincrement_and_keep_their_ids_on_sqlite() {
        let path = std::env::temp_dir().join(format!(
            "souq-migrate-{}-{}.db",
            std::process::id(),
            crate::clock::system_ms()
        ));
        {
            let old = rusqlite::Connection::open(&path).expect("a new file");
            old.execute_batch(
                "CREATE TABLE souq_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .expect("versions");
            for &(version, only, sql) in &MIGRATIONS[..3] {
                assert!(only.is_none());
                for statement in statements(DbBackend::Sqlite, sql) {
                    old.execute_batch(&statement).expect("an old migration");
                }
                old.execute("INSERT INTO souq_migrations VALUES (?1, 0)", [version])
                    .expect("its version");
            }
            old.execute_batch(
                "INSERT INTO organisations (id, email, password_hash, subdomain, created_at) VALUES (1, 'o@x.test', '-', 'x', 0);
                 INSERT INTO addons (id, org_id, name, created_at) VALUES (1, 1, 'live_chat', 0);
                 INSERT INTO domains (id, org_id, addon_id, name, active, widget_key, created_at, updated_at) VALUES (1, 1, 1, 'x.test', true, 'k', 0, 0);
                 INSERT INTO inboxes (id, org_id, domain_id, unique_id, name, created_at) VALUES (1, 1, 1, 'main', 'Main', 0);
                 INSERT INTO customers (id, org_id, name, created_at, updated_at) VALUES (1, 1, 'C', 0, 0);
                 INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (1, 1, 1, 1, 1, 'pending', 2, 0, 0);
                 INSERT INTO messages (id, chat_id, seq, author_kind, author_id, local_id, payload, text, created_at) VALUES (7, 1, 1, 'customer', 1, 'a', 'text', 'first', 0);
                 INSERT INTO messages (id, chat_id, seq, author_kind, author_id, local_id, payload, text, created_at) VALUES (9, 1, 2, 'customer', 1, 'b', 'text', 'second', 0);",
            )
            .expect("two messages");
        }
        let store = Store::open(&format!("sqlite://{}", path.display()), 1)
            .await
            .expect("upgraded");
        store
            .db()
            .execute_unprepared(
                "INSERT INTO messages (chat_id, seq, author_kind, author_id, payload, text, created_at) \
                 VALUES (1, 3, 'customer', 1, 'text', 'third', 0)",
            )
            .await
            .expect("a new message");
        store.close().await.expect("closed");
        let new = rusqlite::Connection::open(&path).expect("the file");
        let table: String = new
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'messages'",
                [],
                |r| r.get(0),
            )
            .expect("the table");
        assert!(!table.contains("AUTOINCREMENT"), "{table}");
        let rows: Vec<(i64, i64, String)> = new
            .prepare("SELECT id, seq, text FROM messages ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("the messages");
        let want = [(7, 1, "first"), (9, 2, "second"), (10, 3, "third")];
        assert_eq!(rows, want.map(|(id, seq, text)| (id, seq, text.to_owned())));
        let indexes: i64 = new
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE tbl_name = 'messages' AND type = 'index' \
                 AND name LIKE 'sqlite_autoindex%'",
                [],
                |r| r.get(0),
            )
            .expect("its indexes");
        assert_eq!(indexes, 2, "(chat_id, seq) and the local_id key");
        drop(new);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
