//! The message path against real databases: every journal gives the same outcomes for the
//! same batches (SQLite always; PostgreSQL when TEST_DATABASE_URL names a server, as in
//! CI's PostgreSQL pass), and each driver keeps its promises.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, Statement,
};

use super::plan::{Done, Draft, Job, Mark, Payload, Sent, Work};
use super::tuning::Tuning;
use super::{Context, Writer, postgres, sqlite};
use crate::clock::Clock;
use crate::domain::events::{Event, Person};
use crate::domain::{Error, Live, Result};
use crate::store::Store;
use crate::store::entity::{chat, message, receipt};

/// Announcements that go nowhere.
#[derive(Debug)]
struct Silent;

impl Live for Silent {
    fn announce(&self, _: &[Event]) {}

    fn is_connected(&self, _: Person) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(false))
    }
}

fn context() -> Context {
    Context {
        live: Arc::new(Silent),
        clock: Clock::system(),
        tuning: Arc::new(Tuning::DEFAULT),
        metrics: Arc::default(),
    }
}

fn now_ms() -> i64 {
    crate::clock::system_ms()
}

fn author(kind: &str) -> Person {
    Person::from_kind(kind, 1).expect("customer or operator")
}

/// A send into `chat_id` by customer or operator 1.
fn job(chat_id: i64, kind: &str, payload: Payload, local: Option<&str>) -> Job {
    Job {
        chat_id,
        work: Work::Send(Draft {
            author: author(kind),
            local_id: local.map(str::to_owned),
            payload,
            text: format!("{kind} {}", payload.as_str()),
            file: None,
        }),
    }
}

fn text(chat_id: i64, kind: &str) -> Job {
    job(chat_id, kind, Payload::Text, None)
}

/// Customer 1 reads up to `read` in the chat.
fn read_job(chat_id: i64, read: i64) -> Job {
    Job {
        chat_id,
        work: Work::Mark(Mark {
            member: Person::Customer(1),
            received: read,
            read,
        }),
    }
}

/// The message a job stored, or why not.
fn sent(out: &Result<Done>) -> std::result::Result<&Sent, String> {
    match out {
        Ok(Done::Sent(s)) => Ok(s),
        Ok(Done::Marked(_)) => Err("marked, not stored".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn seqs(out: &[Result<Done>]) -> Vec<i64> {
    out.iter()
        .map(|o| sent(o).map(|s| s.message.seq).expect("stored"))
        .collect()
}

const SETUP: [&str; 8] = [
    "INSERT INTO organisations (id, email, password_hash, subdomain, created_at) VALUES (1, 'o@x.test', '-', 'x', 0)",
    "INSERT INTO addons (id, org_id, name, created_at) VALUES (1, 1, 'live_chat', 0)",
    "INSERT INTO domains (id, org_id, addon_id, name, active, widget_key, created_at, updated_at) VALUES (1, 1, 1, 'x.test', true, 'k', 0, 0)",
    "INSERT INTO inboxes (id, org_id, domain_id, unique_id, name, created_at) VALUES (1, 1, 1, 'main', 'Main', 0)",
    "INSERT INTO customers (id, org_id, name, created_at, updated_at) VALUES (1, 1, 'C', 0, 0)",
    "INSERT INTO operators (id, org_id, email, name, created_at, updated_at) VALUES (1, 1, 'op@x.test', 'Op', 0, 0)",
    "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (1, 1, 1, 1, 1, 'pending', 0, 0, 0)",
    "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (2, 1, 1, 1, 1, 'finished', 5, 0, 0)",
];

/// A test database with one pending chat (1) and one finished chat (2) at seq 5.
struct Db {
    store: Store,
    /// The SQLite file, or the PostgreSQL database's name.
    name: String,
    postgres: bool,
}

impl Db {
    /// On SQLite, in a file of its own.
    async fn sqlite(name: &str) -> Db {
        let path = std::env::temp_dir().join(format!(
            "souq-write-{name}-{}-{}.db",
            std::process::id(),
            now_ms()
        ));
        let store = Store::open(&format!("sqlite://{}", path.display()), 2)
            .await
            .expect("store");
        Db::set_up(store, path.display().to_string(), false).await
    }

    /// On a fresh PostgreSQL database, when TEST_DATABASE_URL names a server; `None`
    /// otherwise.
    async fn postgres(name: &str) -> Option<Db> {
        let Some(admin_url) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: TEST_DATABASE_URL is not set, so there is no PostgreSQL");
            return None;
        };
        let db = format!("souq_test_write_{name}_{}_{}", std::process::id(), now_ms());
        let admin = sea_orm::Database::connect(admin_url.as_str())
            .await
            .expect("TEST_DATABASE_URL is set but PostgreSQL cannot be reached");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create database");
        let _ = admin.close().await;
        let (prefix, _) = admin_url.rsplit_once('/').expect("a database name");
        let store = Store::open(&format!("{prefix}/{db}"), 2)
            .await
            .expect("store");
        Some(Db::set_up(store, db, true).await)
    }

    /// Both backends: SQLite, and PostgreSQL if there is one.
    async fn each(name: &str) -> Vec<Db> {
        let mut dbs = vec![Db::sqlite(name).await];
        dbs.extend(Db::postgres(name).await);
        dbs
    }

    async fn set_up(store: Store, name: String, postgres: bool) -> Db {
        for sql in SETUP {
            store.db().execute_unprepared(sql).await.expect(sql);
        }
        Db {
            store,
            name,
            postgres,
        }
    }

    async fn sql(&self, sql: &str) {
        self.store.db().execute_unprepared(sql).await.expect(sql);
    }

    /// A journal of its own on the database, as a writer has.
    fn journal(&self) -> Journal {
        if self.postgres {
            let pool = self.store.db().get_postgres_connection_pool().clone();
            Journal::Postgres(postgres::journal::Journal::new(pool, 1000))
        } else {
            let (file, _) = self.store.sqlite_writer().expect("a SQLite file");
            let conn = sqlite::open(&file, &Tuning::DEFAULT).expect("connection");
            Journal::Sqlite(sqlite::journal::Journal::new(conn, 1000))
        }
    }

    /// A connection of its own to the test's PostgreSQL database, to hold the locks that
    /// a writer meets.
    async fn another_connection(&self) -> sea_orm::DatabaseConnection {
        let admin_url = std::env::var("TEST_DATABASE_URL").expect("set, or there is no db");
        let (prefix, _) = admin_url.rsplit_once('/').expect("a database name");
        sea_orm::Database::connect(format!("{prefix}/{}", self.name).as_str())
            .await
            .expect("connect")
    }

    /// Waits until a connection to the database (the writer's) waits on a lock, as seen
    /// from `other`.
    async fn waiting_on_a_lock(&self, other: &sea_orm::DatabaseConnection) {
        let sql = format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{}' \
             AND wait_event_type = 'Lock'",
            self.name
        );
        for _ in 0..1000 {
            let rows = other
                .query_all_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
                .await
                .expect("read pg_stat_activity");
            let n: i64 = rows
                .first()
                .and_then(|r| r.try_get("", "n").ok())
                .unwrap_or(0);
            if n > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the writer never waited on the lock");
    }

    async fn chat(&self, id: i64) -> chat::Model {
        chat::Entity::find_by_id(id)
            .one(self.store.db())
            .await
            .expect("read")
            .expect("chat")
    }

    async fn remove(self) {
        self.store.close().await.expect("close");
        if self.postgres {
            if let Ok(admin_url) = std::env::var("TEST_DATABASE_URL")
                && let Ok(admin) = sea_orm::Database::connect(admin_url.as_str()).await
            {
                let _ = admin
                    .execute_unprepared(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ))
                    .await;
            }
        } else {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.name));
            }
        }
    }
}

/// Either backend's journal, run as its driver runs it.
enum Journal {
    Sqlite(sqlite::journal::Journal),
    Postgres(postgres::journal::Journal),
}

impl Journal {
    async fn store(&mut self, jobs: &[Job]) -> Vec<Result<Done>> {
        let cx = context();
        match self {
            Journal::Sqlite(j) => match sqlite::store(j, jobs, &cx) {
                Ok(outcomes) => outcomes,
                Err(partial) => panic!("the batch failed: {}", partial.error),
            },
            Journal::Postgres(j) => match postgres::store_jobs(j, jobs, &cx).await {
                Ok(outcomes) => outcomes,
                Err(partial) => panic!("the batch failed: {}", partial.error),
            },
        }
    }
}

/// A new message, its repeat, an operator's first answer, a refused send, a notice into a
/// finished chat, another message and an unknown chat, in this order; then the customer
/// reads up to the operator's answer, past the end, and in the unknown chat.
fn mixed_batch() -> Vec<Job> {
    vec![
        job(1, "customer", Payload::Text, Some("x")),
        job(1, "customer", Payload::Text, Some("x")),
        text(1, "operator"),
        text(2, "customer"),
        job(2, "operator", Payload::Notice, None),
        text(1, "customer"),
        text(99, "customer"),
        read_job(1, 2),
        read_job(1, 9),
        read_job(99, 1),
    ]
}

#[tokio::test]
async fn every_journal_gives_each_job_of_a_batch_its_own_outcome() {
    for db in Db::each("outcomes").await {
        let mut journal = db.journal();
        let out = journal.store(&mixed_batch()).await;
        let again = journal
            .store(&[job(1, "customer", Payload::Text, Some("x"))])
            .await;
        let on = if db.postgres { "PostgreSQL" } else { "SQLite" };
        let seq = |i: usize| match sent(&out[i]) {
            Ok(s) => (s.message.seq, s.new, s.took_chat),
            Err(e) => panic!("{on}: send {i} failed: {e}"),
        };
        assert_eq!(seq(0), (1, true, false), "{on}");
        assert_eq!(seq(1), (1, false, false), "{on}: a repeat within the batch");
        assert_eq!(
            sent(&out[1]).map(|s| s.message.id).ok(),
            sent(&out[0]).map(|s| s.message.id).ok(),
            "{on}"
        );
        assert_eq!(seq(2), (2, true, true), "{on}: the answer takes the chat");
        assert!(matches!(out[3], Err(Error::Conflict(_))), "{on}: finished");
        assert_eq!(
            seq(4),
            (6, true, false),
            "{on}: a notice into a finished chat"
        );
        assert_eq!(seq(5), (3, true, false), "{on}");
        assert!(
            matches!(out[6], Err(Error::NotFound(_))),
            "{on}: unknown chat"
        );
        match &out[7] {
            Ok(Done::Marked(m)) => assert_eq!(
                (m.receipt.received_seq, m.receipt.read_seq, m.moved),
                (2, 2, true),
                "{on}: the customer's cursors moved"
            ),
            other => panic!("{on}: the read failed: {other:?}"),
        }
        assert!(
            matches!(out[8], Err(Error::Invalid(_))),
            "{on}: past the end"
        );
        assert!(
            matches!(out[9], Err(Error::NotFound(_))),
            "{on}: unknown chat"
        );
        assert_eq!(
            sent(&again[0]).map(|s| (s.message.seq, s.new)).ok(),
            Some((1, false)),
            "{on}: a repeat in a later batch"
        );
        let chat = db.chat(1).await;
        assert_eq!(
            (chat.last_seq, chat.status.as_str(), chat.operator_id),
            (3, "chatting", Some(1)),
            "{on}: the operator's answer took the chat"
        );
        let messages = message::Entity::find()
            .order_by_asc(message::Column::Id)
            .all(db.store.db())
            .await
            .expect("read");
        // Only the operator's answer is the customer's to read.
        let read: Vec<(i64, i64, bool)> = messages
            .iter()
            .map(|m| (m.chat_id, m.seq, m.read_at.is_some()))
            .collect();
        assert_eq!(
            read,
            [(1, 1, false), (1, 2, true), (2, 6, false), (1, 3, false)],
            "{on}"
        );
        let receipt = receipt::Entity::find()
            .one(db.store.db())
            .await
            .expect("read")
            .expect("a receipt row");
        assert_eq!((receipt.received_seq, receipt.read_seq), (2, 2), "{on}");
        drop(journal);
        db.remove().await;
    }
}

/// A send whose local_id a send of an earlier batch stored gets that message back, in a
/// batch beside new sends; and a send refused in a finished chat that repeats one stored
/// before the chat finished gets its message too.
#[tokio::test]
async fn every_journal_gives_back_the_stored_message_for_a_repeated_local_id() {
    for db in Db::each("repeats").await {
        let mut journal = db.journal();
        let first = journal
            .store(&[job(1, "customer", Payload::Text, Some("x"))])
            .await;
        let first = sent(&first[0]).expect("stored").message.clone();
        let out = journal
            .store(&[
                text(1, "customer"),
                job(1, "customer", Payload::Text, Some("x")),
                text(1, "customer"),
            ])
            .await;
        let got: Vec<(i64, bool)> = out
            .iter()
            .map(|o| sent(o).map(|s| (s.message.seq, s.new)).expect("stored"))
            .collect();
        assert_eq!(
            got,
            [(2, true), (1, false), (3, true)],
            "no seq for a repeat"
        );
        assert_eq!(sent(&out[1]).expect("stored").message.id, first.id);
        db.sql("UPDATE chats SET status = 'finished' WHERE id = 1")
            .await;
        let out = journal
            .store(&[
                job(1, "customer", Payload::Text, Some("x")),
                job(1, "customer", Payload::Text, Some("y")),
            ])
            .await;
        assert_eq!(
            sent(&out[0]).map(|s| (s.message.id, s.new)).ok(),
            Some((first.id, false)),
            "a repeat into a chat finished since"
        );
        assert!(matches!(out[1], Err(Error::Conflict(_))), "{:?}", out[1]);
        assert_eq!(db.chat(1).await.last_seq, 3, "nothing more stored");
        drop(journal);
        db.remove().await;
    }
}

/// A chat whose activity time moved less than a second ago keeps it when the next
/// message comes, on every journal. (The pool's own writer, since removed, moved it with
/// every message.)
#[tokio::test]
async fn every_journal_moves_a_chats_activity_time_at_most_once_a_second() {
    for db in Db::each("activity").await {
        let was = now_ms() - 100;
        db.sql(&format!(
            "UPDATE chats SET last_seq = 3, status = 'chatting', last_activity_at = {was} WHERE id = 1"
        ))
        .await;
        let mut journal = db.journal();
        let out = journal.store(&[text(1, "customer")]).await;
        assert_eq!(seqs(&out), [4]);
        assert_eq!(
            db.chat(1).await.last_activity_at,
            was,
            "moved within a second"
        );
        drop(journal);
        db.sql(&format!(
            "UPDATE chats SET last_activity_at = {} WHERE id = 1",
            now_ms() - 1500
        ))
        .await;
        let mut journal = db.journal();
        let before = now_ms();
        journal.store(&[text(1, "customer")]).await;
        assert!(
            db.chat(1).await.last_activity_at >= before,
            "not moved a second and a half later"
        );
        drop(journal);
        db.remove().await;
    }
}

/// Three messages into chat 1 with the customer reading along: up to the operator's
/// answer, up to the last message, back to the first (a cursor never moves back), and
/// past the end.
fn reads_batch() -> Vec<Job> {
    vec![
        text(1, "customer"),
        text(1, "operator"),
        read_job(1, 2),
        text(1, "operator"),
        read_job(1, 3),
        read_job(1, 1),
        read_job(1, 9),
    ]
}

#[tokio::test]
async fn a_members_marks_in_one_batch_give_one_receipt_after_what_they_mark() {
    for db in Db::each("reads").await {
        let jobs = reads_batch();
        let out = db.journal().store(&jobs).await;
        assert!(matches!(out[6], Err(Error::Invalid(_))), "past the end");
        let said = super::plan::tests::said(&super::batch::events(&jobs, &out));
        assert_eq!(
            said,
            [
                "message 1",
                "message 2",
                "message 3",
                "receipt Customer(1) 3 3"
            ]
        );
        let receipt = receipt::Entity::find()
            .one(db.store.db())
            .await
            .expect("read")
            .expect("a receipt row");
        assert_eq!((receipt.received_seq, receipt.read_seq), (3, 3));
        let read: Vec<(i64, bool)> = message::Entity::find()
            .order_by_asc(message::Column::Seq)
            .all(db.store.db())
            .await
            .expect("read")
            .iter()
            .map(|m| (m.seq, m.read_at.is_some()))
            .collect();
        assert_eq!(
            read,
            [(1, false), (2, true), (3, true)],
            "the operator's are read"
        );
        db.remove().await;
    }
}

/// A read of a seq that only a later send of the batch stores is refused.
#[tokio::test]
async fn a_mark_is_checked_where_it_stands_in_its_batch() {
    for db in Db::each("mark_place").await {
        let out = db
            .journal()
            .store(&[text(1, "operator"), read_job(1, 2), text(1, "operator")])
            .await;
        assert!(matches!(out[1], Err(Error::Invalid(_))), "{:?}", out[1]);
        let seq = |i: usize| sent(&out[i]).map(|s| s.message.seq);
        assert_eq!((seq(0), seq(2)), (Ok(1), Ok(2)));
        db.remove().await;
    }
}

const FINISH: &str = "UPDATE chats SET status = 'finished' WHERE id = 1";

/// Two writers that both remember chat 1 take turns on it (two nodes; on SQLite two
/// connections), then the chat is finished behind their backs: each must read it again,
/// so that seqs have no gaps and no repeats, and the finished chat refuses. Batches of two
/// messages and of one: on PostgreSQL a batch of one has a statement of its own.
#[tokio::test]
async fn writers_read_again_a_chat_changed_behind_their_back() {
    for sends in [2, 1] {
        for db in Db::each(&format!("stale{sends}")).await {
            let batch = || vec![text(1, "customer"); sends];
            let mut writers = [db.journal(), db.journal()];
            let mut all = Vec::new();
            for turn in 0..6 {
                all.extend(seqs(&writers[turn % 2].store(&batch()).await));
            }
            let want: Vec<i64> = (1..=6 * sends as i64).collect();
            assert_eq!(all, want, "no gap, no repeat in batches of {sends}");
            db.sql(FINISH).await;
            for writer in &mut writers {
                let out = writer.store(&batch()).await;
                assert!(matches!(out[0], Err(Error::Conflict(_))), "{:?}", out[0]);
            }
            drop(writers);
            db.remove().await;
        }
    }
}

/// A mark of a seq past what a writer remembers of the chat (another node stored it) is
/// checked against the chat read again, not refused.
#[tokio::test]
async fn a_mark_past_what_a_writer_remembers_is_checked_against_the_chat_read_again() {
    for db in Db::each("mark_behind").await {
        let (mut one, mut other) = (db.journal(), db.journal());
        assert_eq!(seqs(&one.store(&[text(1, "operator")]).await), [1]);
        assert_eq!(seqs(&other.store(&[text(1, "operator")]).await), [2]);
        let out = one.store(&[read_job(1, 2)]).await;
        match &out[0] {
            Ok(Done::Marked(m)) => assert_eq!(m.receipt.read_seq, 2),
            other => panic!("the read of seq 2 was refused: {other:?}"),
        }
        let out = one.store(&[read_job(1, 3)]).await;
        assert!(matches!(out[0], Err(Error::Invalid(_))), "{:?}", out[0]);
        drop((one, other));
        db.remove().await;
    }
}

/// The page of the table each message of chat 1 is on, by seq.
async fn pages_on_postgres(store: &Store) -> Vec<(i64, i64)> {
    let rows = store
        .db()
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT seq, (ctid::text::point)[0]::int8 AS page FROM messages \
             WHERE chat_id = 1 ORDER BY seq",
        ))
        .await
        .expect("read");
    rows.iter()
        .map(|r| {
            let get = |column| r.try_get::<i64>("", column).expect("a number");
            (get("seq"), get("page"))
        })
        .collect()
}

/// Marking messages read rewrites their rows. Inserts leave half of each page free
/// (migration 5), so the new versions stay on their pages (HOT updates, which add no
/// index entries) rather than move to new ones: 356 of these 400 did, and none with pages
/// packed full. (One statement marks them all, so a page cannot reuse the room of its own
/// old versions, and the last few of each move.)
#[tokio::test]
async fn messages_marked_read_stay_on_their_pages_on_postgres() {
    use sea_orm::PaginatorTrait;
    let Some(db) = Db::postgres("pages").await else {
        return;
    };
    let mut journal = db.journal();
    for _ in 0..4 {
        let sends = vec![text(1, "operator"); 100];
        assert!(journal.store(&sends).await.iter().all(|o| sent(o).is_ok()));
    }
    let before = pages_on_postgres(&db.store).await;
    let pages: std::collections::HashSet<i64> = before.iter().map(|&(_, page)| page).collect();
    assert!(pages.len() >= 5, "400 messages on {} pages", pages.len());
    let out = journal.store(&[read_job(1, 400)]).await;
    assert!(matches!(out[0], Ok(Done::Marked(_))), "{:?}", out[0]);
    drop(journal);
    let read = message::Entity::find()
        .filter(message::Column::ReadAt.is_not_null())
        .count(db.store.db())
        .await
        .expect("read");
    assert_eq!(read, 400, "every message is marked read, and so rewritten");
    let after = pages_on_postgres(&db.store).await;
    let stayed = before.iter().zip(&after).filter(|(b, a)| b == a).count();
    assert!(
        stayed >= 300,
        "{stayed} of 400 marked messages stayed on their page"
    );
    db.remove().await;
}

/// A writer on `store` whose announcements go nowhere.
fn writer(store: &Store) -> Writer {
    Writer::start(
        store.clone(),
        Arc::new(Silent),
        Clock::system(),
        Tuning::DEFAULT,
        Arc::default(),
    )
    .expect("the writer starts")
}

fn send(kind: &str) -> Draft {
    let Work::Send(send) = text(1, kind).work else {
        unreachable!("text makes a send")
    };
    send
}

/// A socket's read, held back to commit with others (its writer has nothing queued), is
/// stored once the hold is over, though nothing else comes.
#[tokio::test]
async fn a_held_mark_is_stored_when_its_hold_is_over() {
    for db in Db::each("held").await {
        let writer = writer(&db.store);
        let stored = writer
            .send(1, send("operator"))
            .await
            .expect("queued")
            .await;
        assert_eq!(stored.expect("stored").message.seq, 1);
        let mark = Mark {
            member: Person::Customer(1),
            received: 1,
            read: 1,
        };
        let marked = writer.mark(1, mark, true).await.expect("queued");
        let marked = tokio::time::timeout(Duration::from_secs(10), marked)
            .await
            .expect("a held mark is released")
            .expect("the read of seq 1 is valid");
        assert_eq!((marked.receipt.read_seq, marked.moved), (1, true));
        drop(writer);
        db.remove().await;
    }
}

/// A batch takes, in order, the waiting jobs of chats that no other batch in flight holds;
/// a chat with a job left behind keeps its later jobs behind too, past the batch's size as
/// well, so that every chat's jobs are stored in the order they came.
#[test]
fn a_postgres_batch_takes_the_chats_not_in_flight_and_keeps_each_chats_order() {
    use std::collections::{HashSet, VecDeque};
    let queued = |job: Job| super::Queued {
        job,
        reply: tokio::sync::oneshot::channel().0,
    };
    let chats = |jobs: &mut dyn Iterator<Item = &super::Queued>| -> Vec<i64> {
        jobs.map(|q| q.job.chat_id).collect()
    };
    let max = Tuning::DEFAULT.max_batch;
    let mut waiting: VecDeque<super::Queued> = [
        text(1, "customer"),
        text(2, "customer"),
        read_job(3, 1),
        text(1, "customer"),
        text(3, "customer"),
    ]
    .into_iter()
    .map(queued)
    .collect();
    let mut taking = postgres::Taking::new(max);
    taking.take(&mut waiting, &HashSet::from([2]));
    assert_eq!(chats(&mut taking.jobs.iter()), [1, 3, 1, 3], "taken");
    assert_eq!(chats(&mut waiting.iter()), [2], "left for later");
    assert!(
        taking.jobs[1].job.send().is_none(),
        "the read kept its place"
    );

    let mut waiting: VecDeque<super::Queued> = (0..max)
        .map(|_| text(1, "customer"))
        .chain([text(2, "customer"), read_job(2, 1), read_job(3, 1)])
        .map(queued)
        .collect();
    let mut taking = postgres::Taking::new(max);
    taking.take(&mut waiting, &HashSet::new());
    assert_eq!(
        taking.jobs.len(),
        max + 1,
        "a full batch of sends, and a read"
    );
    assert_eq!(taking.jobs.last().map(|q| q.job.chat_id), Some(3));
    assert_eq!(
        chats(&mut waiting.iter()),
        [2, 2],
        "the send past the size, and its chat's read"
    );
}

/// A batch stuck on a row that another connection holds does not hold up a send to
/// another chat for long: a free writer takes it beside the stuck one.
#[tokio::test]
async fn a_stuck_batch_holds_up_no_other_chat_on_postgres() {
    use futures_util::FutureExt;
    use sea_orm::TransactionTrait;
    let Some(db) = Db::postgres("stuck").await else {
        return;
    };
    // Chat 4, of another customer; the stuck batch goes to the first writer, whose share
    // chat 4 is in.
    db.sql(
        "INSERT INTO customers (id, org_id, name, created_at, updated_at) VALUES (2, 1, 'D', 0, 0)",
    )
    .await;
    db.sql("INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, created_at, last_activity_at) VALUES (4, 1, 1, 1, 2, 'pending', 0, 0, 0)").await;
    let other = db.another_connection().await;
    let chat_row = other.begin().await.expect("begin");
    chat_row
        .execute_unprepared("SELECT id FROM chats WHERE id = 1 FOR UPDATE")
        .await
        .expect("lock chat 1");
    let writer = writer(&db.store);
    let mut stuck = Box::pin(writer.send(1, send("operator")).await.expect("queued"));
    db.waiting_on_a_lock(&other).await;
    let answers = [
        writer.send(4, send("operator")).await.expect("queued"),
        writer.send(4, send("customer")).await.expect("queued"),
    ];
    let seqs = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seqs = Vec::new();
        for answer in answers {
            seqs.push(answer.await.expect("stored").message.seq);
        }
        seqs
    })
    .await
    .expect("stored beside the stuck batch");
    assert_eq!(seqs, [1, 2]);
    assert!(
        (&mut stuck).now_or_never().is_none(),
        "the first batch still waits for chat 1's row"
    );
    chat_row.commit().await.expect("unlock chat 1");
    let stored = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("stored once the row is free")
        .expect("stored");
    assert_eq!(stored.message.seq, 1);
    let _ = other.close().await;
    drop(writer);
    db.remove().await;
}

/// The messages of a batch are answered once their statement commits, before the batch's
/// marks are stored: here the marks' statement waits on a lock that another connection
/// holds on `receipts`, and the sends beside them are answered all the same.
#[tokio::test]
async fn a_send_is_answered_before_the_marks_of_its_batch_on_postgres() {
    use futures_util::FutureExt;
    use sea_orm::TransactionTrait;
    let Some(db) = Db::postgres("marks_after").await else {
        return;
    };
    let other = db.another_connection().await;
    let (chat_row, receipts) = (
        other.begin().await.expect("begin"),
        other.begin().await.expect("begin"),
    );
    // The writer's first batch waits on chat 1's row, so that the next send and mark
    // queue behind it and make one batch.
    chat_row
        .execute_unprepared("SELECT id FROM chats WHERE id = 1 FOR UPDATE")
        .await
        .expect("lock chat 1");
    receipts
        .execute_unprepared("LOCK TABLE receipts IN SHARE MODE")
        .await
        .expect("lock receipts");
    let writer = writer(&db.store);
    let first = writer.send(1, send("operator")).await.expect("queued");
    db.waiting_on_a_lock(&other).await;
    let second = writer.send(1, send("operator")).await.expect("queued");
    let read = Mark {
        member: Person::Customer(1),
        received: 1,
        read: 1,
    };
    let mut marked = Box::pin(writer.mark(1, read, false).await.expect("queued"));
    chat_row.commit().await.expect("unlock chat 1");
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        (first.await, second.await)
    })
    .await
    .expect("the sends are answered while their batch's mark waits");
    let seqs = (
        answered.0.expect("stored").message.seq,
        answered.1.expect("stored").message.seq,
    );
    assert_eq!(seqs, (1, 2));
    assert!(
        (&mut marked).now_or_never().is_none(),
        "the mark waits for the lock on receipts"
    );
    receipts.commit().await.expect("unlock receipts");
    let marked = tokio::time::timeout(Duration::from_secs(10), marked)
        .await
        .expect("the mark is stored once the lock is gone")
        .expect("the read of seq 1 is valid");
    assert_eq!((marked.receipt.read_seq, marked.moved), (1, true));
    let _ = other.close().await;
    drop(writer);
    db.remove().await;
}

/// With nothing queued and nobody writing, a send is committed on its caller's thread: its
/// answer is there before the caller waits.
#[tokio::test]
async fn a_send_that_finds_the_sqlite_writer_idle_is_committed_before_its_caller_waits() {
    use futures_util::FutureExt;
    let db = Db::sqlite("inline").await;
    let writer = writer(&db.store);
    for seq in 1..=3 {
        let answer = writer.send(1, send("operator")).await.expect("queued");
        let stored = answer.now_or_never().expect("answered at once");
        assert_eq!(stored.expect("stored").message.seq, seq);
    }
    drop(writer);
    db.remove().await;
}

/// A send that finds the file taken by another write goes to the writer thread; one sent
/// after it, once the file is free, still comes after it, though the writer is idle by
/// then.
#[tokio::test]
async fn a_send_queued_behind_another_write_keeps_its_place() {
    let db = Db::sqlite("queued").await;
    let writer = writer(&db.store);
    let (_, file) = db.store.sqlite_writer().expect("a SQLite file");
    let held = file.lock().await;
    let first = writer.send(1, send("operator")).await.expect("queued");
    let mut first = std::pin::pin!(first);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut first)
            .await
            .is_err(),
        "a send commits while another write holds the file"
    );
    drop(held);
    let second = writer.send(1, send("customer")).await.expect("queued");
    let (first, second) = (first.await.expect("stored"), second.await.expect("stored"));
    assert_eq!((first.message.seq, second.message.seq), (1, 2));
    assert_eq!(second.message.text, "customer text");
    drop(writer);
    db.remove().await;
}

/// Waits (polling every millisecond, up to a second) for `ready`.
async fn until(mut ready: impl FnMut() -> bool, what: &str) {
    for _ in 0..1000 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{what} never came");
}

/// A send the writer thread has taken but not yet committed still counts as queued: until
/// it is stored, no later send commits on its caller's thread.
#[tokio::test]
async fn a_send_the_writer_thread_holds_keeps_later_sends_queued() {
    use futures_util::FutureExt;
    use std::sync::atomic::Ordering;
    let db = Db::sqlite("taken").await;
    let writer = writer(&db.store);
    let lane = &writer.intake.lane;
    let shared = lane.now.clone().expect("the SQLite writer");
    let (_, file) = db.store.sqlite_writer().expect("a SQLite file");
    let held = file.lock().await;
    let first = writer.send(1, send("operator")).await.expect("queued");
    // The writer thread takes it from the queue, then waits for the file.
    until(
        || lane.jobs.capacity() == lane.jobs.max_capacity(),
        "the thread taking the send",
    )
    .await;
    assert_eq!(shared.queued.load(Ordering::SeqCst), 1);
    assert!(shared.idle_writer().is_none(), "a send holds the writer");
    let second = writer.send(1, send("customer")).await.expect("queued");
    assert_eq!(shared.queued.load(Ordering::SeqCst), 2);
    drop(held);
    let (first, second) = (first.await.expect("stored"), second.await.expect("stored"));
    assert_eq!((first.message.seq, second.message.seq), (1, 2));
    until(|| shared.idle_writer().is_some(), "the writer idle again").await;
    let third = writer.send(1, send("operator")).await.expect("queued");
    let third = third.now_or_never().expect("the writer is idle again");
    assert_eq!(third.expect("stored").message.seq, 3);
    drop(writer);
    db.remove().await;
}

/// Under load a send goes to the writer thread even when it finds the writer idle: alone,
/// it would write four or five pages where the thread's batch writes one.
#[tokio::test]
async fn a_send_commits_on_its_callers_thread_only_while_the_writers_batches_are_small() {
    use futures_util::FutureExt;
    let db = Db::sqlite("busy").await;
    let writer = writer(&db.store);
    let shared = writer.intake.lane.now.clone().expect("the SQLite writer");
    let first = writer.send(1, send("operator")).await.expect("queued");
    let first = first.now_or_never().expect("committed at once while quiet");
    assert_eq!(first.expect("stored").message.seq, 1);
    // Recorded here as the writer thread would: it is idle, and records nothing.
    for _ in 0..40 {
        shared.load.record(300);
    }
    assert!(shared.idle_writer().is_none(), "the writer is busy");
    let second = writer.send(1, send("customer")).await.expect("queued");
    assert_eq!(second.await.expect("stored").message.seq, 2);
    // The thread's own batches since, of one send each, bring the average down.
    let mut seq = 3;
    while shared.load.per_batch() >= Tuning::DEFAULT.inline_under {
        assert!(seq < 100, "still busy after {seq} sends one at a time");
        let next = writer.send(1, send("operator")).await.expect("queued");
        assert_eq!(next.await.expect("stored").message.seq, seq);
        seq += 1;
    }
    assert!(seq > 3, "quiet again without a batch of the thread's");
    // The thread lets go of the writer just after it answers.
    until(|| shared.idle_writer().is_some(), "the writer let go").await;
    let last = writer.send(1, send("customer")).await.expect("queued");
    let last = last
        .now_or_never()
        .expect("committed at once once quiet again");
    assert_eq!(last.expect("stored").message.seq, seq);
    drop(writer);
    db.remove().await;
}

/// The checkpoint thread starts the WAL over while sends keep coming, so the WAL does not
/// grow with the chats' history. (Nothing else checkpoints here: the writer never does,
/// and the pool writes nothing during the test.)
#[tokio::test]
async fn the_wal_starts_over_while_sends_keep_coming() {
    let db = Db::sqlite("restart").await;
    let writer = writer(&db.store);
    // The WAL header's checkpoint sequence number, which each restart moves on.
    let wal = format!("{}-wal", db.name);
    let restarts = || {
        let header = std::fs::read(&wal).expect("the WAL");
        let sequence = header.get(12..16).expect("a WAL header");
        u32::from_be_bytes(sequence.try_into().expect("four bytes"))
    };
    let answer = writer.send(1, send("operator")).await.expect("queued");
    answer.await.expect("stored");
    let first = restarts();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while restarts() == first {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never started over"
        );
        let answer = writer.send(1, send("operator")).await.expect("queued");
        answer.await.expect("stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(writer);
    db.remove().await;
}

/// Another process holding the file (here another connection, as the command line
/// would) does not hold up the caller's thread: the send waits in the writer thread, and
/// is stored once the file is free.
#[tokio::test]
async fn a_send_that_finds_the_file_locked_elsewhere_waits_in_the_writer_thread() {
    let db = Db::sqlite("elsewhere").await;
    let writer = writer(&db.store);
    let other = rusqlite::Connection::open(&db.name).expect("another connection");
    other
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the file taken");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // Let go on the test's word, or after a while should the caller wait for it.
        let _ = released.recv_timeout(Duration::from_secs(10));
        other.execute_batch("ROLLBACK").expect("the file free");
    });
    let answer = writer.send(1, send("operator")).await.expect("queued");
    assert!(
        !holder.is_finished(),
        "the caller waited for the other process"
    );
    let _ = release.send(());
    let stored = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("stored once the file is free");
    assert_eq!(stored.expect("stored").message.seq, 1);
    holder.join().expect("released");
    drop(writer);
    db.remove().await;
}
