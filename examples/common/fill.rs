//! The large organisation of searchbench and scalebench, filled in bulk (straight SQL, many
//! rows a statement, big transactions), and the timing both read it with.
//!
//! The organisation: 20 domains of 10 inboxes, an operator for every 4 inboxes (each sees
//! 2% of the chats), a customer per 50 messages, a chat per 10 messages over the last year
//! (finished); message text is 3 to 14 words drawn from a vocabulary of 50,000 with Zipf's
//! law (the first words are everyday English, the rest made-up words, so that the rarest
//! occur a few hundred times in ten million messages).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, DbBackend};
use souq::domain::{Core, NewAssignment, NewDomain, NewInbox, NewOperator, Principal};
use souq::store::Store;

/// A filled organisation, as the measurements need it.
pub struct Filled {
    pub org_id: i64,
    pub admin: Principal,
    pub operators: Vec<i64>,
    /// The id before the organisation's first customer, and its customers.
    pub customer0: i64,
    pub customers: i64,
    /// The id before its first chat, and its chats.
    #[allow(dead_code, reason = "searchbench does not read them")]
    pub chat0: i64,
    #[allow(dead_code, reason = "searchbench does not read them")]
    pub chats: i64,
    pub messages: u64,
}

pub const DOMAINS: usize = 20;
pub const INBOXES_PER_DOMAIN: usize = 10;
pub const INBOXES_PER_OPERATOR: usize = 4;
pub const MESSAGES_PER_CHAT: u64 = 10;
pub const MESSAGES_PER_CUSTOMER: u64 = 50;
const VOCABULARY: usize = 50_000;
/// Rows a statement, and statements a transaction.
const ROWS: usize = 1_000;
const STATEMENTS: usize = 100;

/// Everyday words of a support desk, the most frequent first.
const COMMON: &[&str] = &[
    "the",
    "i",
    "you",
    "to",
    "a",
    "is",
    "my",
    "order",
    "it",
    "and",
    "for",
    "please",
    "of",
    "can",
    "thanks",
    "hello",
    "have",
    "not",
    "we",
    "this",
    "your",
    "in",
    "delivery",
    "when",
    "will",
    "be",
    "what",
    "price",
    "size",
    "help",
    "do",
    "on",
    "with",
    "me",
    "yes",
    "no",
    "how",
    "refund",
    "today",
    "tomorrow",
    "payment",
    "card",
    "shipping",
    "address",
    "phone",
    "number",
    "colour",
    "available",
    "stock",
    "return",
    "broken",
    "late",
    "parcel",
    "tracking",
    "invoice",
    "discount",
    "code",
    "week",
    "store",
    "product",
    "quality",
    "cheap",
    "expensive",
    "hi",
    "ok",
    "sorry",
    "wait",
    "minute",
    "send",
    "photo",
    "picture",
    "exchange",
    "warranty",
    "account",
    "password",
    "login",
    "email",
    "message",
    "answer",
    "question",
    "problem",
    "issue",
    "customer",
    "service",
    "time",
    "day",
    "money",
    "cash",
    "transfer",
    "bank",
    "receipt",
    "courier",
    "box",
    "package",
    "damaged",
    "missing",
    "wrong",
    "item",
    "items",
    "shoes",
    "shirt",
    "dress",
    "bag",
    "watch",
    "laptop",
    "charger",
    "cable",
    "screen",
    "battery",
    "cover",
    "case",
    "gift",
    "birthday",
    "friday",
    "monday",
    "morning",
    "evening",
    "night",
    "city",
    "street",
    "house",
    "office",
    "work",
    "home",
    "family",
    "thank",
    "great",
    "good",
    "bad",
    "fast",
    "slow",
    "new",
    "old",
    "big",
    "small",
    "red",
    "blue",
    "black",
    "white",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "ba", "de", "fi", "go", "hu", "ja", "ke",
    "li", "mo", "nu", "pe",
];

/// The word of rank `r` (0: the most frequent).
pub fn word(r: usize) -> String {
    if let Some(w) = COMMON.get(r) {
        return (*w).to_owned();
    }
    // Made-up words of three or four syllables, one per rank.
    let mut n = r;
    let mut out = String::new();
    for _ in 0..4 {
        out.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
    }
    out
}

/// Draws ranks with Zipf's law (weight 1 / (rank + 1)).
struct Zipf {
    cumulative: Vec<f64>,
    words: Vec<String>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|r| {
                total += 1.0 / (r as f64 + 1.0);
                total
            })
            .collect();
        Zipf {
            cumulative,
            words: (0..n).map(word).collect(),
        }
    }

    fn draw(&self, rng: &mut StdRng) -> &str {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.random::<f64>() * total;
        let r = self.cumulative.partition_point(|&c| c < x);
        &self.words[r.min(self.words.len() - 1)]
    }
}

/// Runs `rows` INSERT rows (each a `(...)` tuple) in statements of [`ROWS`], and
/// transactions of [`STATEMENTS`] statements.
pub async fn insert_all(
    store: &Store,
    head: &str,
    rows: impl Iterator<Item = String>,
) -> Result<(), String> {
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let tx = store.write().await.map_err(|e| e.to_string())?;
        for _ in 0..STATEMENTS {
            let chunk: Vec<String> = rows.by_ref().take(ROWS).collect();
            if chunk.is_empty() {
                break;
            }
            tx.execute_unprepared(&format!("{head} VALUES {}", chunk.join(",")))
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub async fn max_id(store: &Store, table: &str) -> Result<i64, String> {
    let rows = store
        .query(
            &format!("SELECT COALESCE(MAX(id), 0) AS id FROM {table}"),
            [],
        )
        .await
        .map_err(|e| e.to_string())?;
    rows.first()
        .and_then(|r| r.try_get::<i64>("", "id").ok())
        .ok_or_else(|| format!("no max id of {table}"))
}

/// Sets the id sequences of `tables` past their rows and refreshes the planner's
/// statistics (PostgreSQL; the rows were inserted with their ids).
pub async fn reseq(store: &Store, tables: &[&str]) -> Result<(), String> {
    if store.backend() != DbBackend::Postgres {
        return Ok(());
    }
    for table in tables {
        store
            .db()
            .execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 (SELECT MAX(id) FROM {table}))"
            ))
            .await
            .map_err(|e| e.to_string())?;
    }
    store
        .db()
        .execute_unprepared("ANALYZE")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// p50 and p99 of `runs` timings of `f` (after a few untimed), in milliseconds.
pub async fn time<F, Fut>(runs: usize, mut f: F) -> Result<(f64, f64), String>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for i in 0..3 {
        f(i).await?;
    }
    let mut took = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = Instant::now();
        f(i).await?;
        took.push(start.elapsed());
    }
    took.sort();
    let at = |p: f64| {
        let i = ((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    Ok((at(0.50), at(0.99)))
}

/// The organisation an earlier run filled (the newest made by a benchmark: others, such as
/// the load generator's, may share the database).
pub async fn existing(store: &Store) -> Result<Filled, String> {
    let one = |sql: &'static str, org_id: i64| async move {
        let rows = store
            .query(sql, [org_id.into()])
            .await
            .map_err(|e| e.to_string())?;
        rows.first()
            .and_then(|r| r.try_get::<i64>("", "v").ok())
            .ok_or_else(|| format!("nothing for {sql}"))
    };
    let org_id = one(
        "SELECT MAX(id) AS v FROM organisations WHERE subdomain LIKE 'bench-%' AND id > ?",
        0,
    )
    .await?;
    let addon_id = one("SELECT MIN(id) AS v FROM addons WHERE org_id = ?", org_id).await?;
    let operators = store
        .query(
            "SELECT id FROM operators WHERE org_id = ? ORDER BY id",
            [org_id.into()],
        )
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|r| r.try_get::<i64>("", "id").ok())
        .collect();
    let first = one(
        "SELECT MIN(id) AS v FROM customers WHERE org_id = ?",
        org_id,
    )
    .await?;
    let customers = one(
        "SELECT COUNT(*) AS v FROM customers WHERE org_id = ?",
        org_id,
    )
    .await?;
    let first_chat = one("SELECT MIN(id) AS v FROM chats WHERE org_id = ?", org_id).await?;
    let chats = one("SELECT COUNT(*) AS v FROM chats WHERE org_id = ?", org_id).await?;
    Ok(Filled {
        org_id,
        admin: Principal::Admin { org_id, addon_id },
        operators,
        customer0: first - 1,
        customers,
        chat0: first_chat - 1,
        chats,
        messages: chats as u64 * MESSAGES_PER_CHAT,
    })
}

/// Fills `store` with a new organisation of `messages` messages (see the module's doc),
/// builds the search index, and says how long each took on stderr.
pub async fn fill(core: &Core, store: &Store, messages: u64) -> Result<Filled, String> {
    let backend = store.backend();
    let e = |e: souq::domain::Error| e.to_string();
    // The organisation, its domains, inboxes and operators, through the core.
    let (org_id, admin, tag) = crate::common::organisation(core).await?;
    let mut inboxes: Vec<(i64, i64)> = Vec::new();
    for d in 0..DOMAINS {
        let (domain, inbox) = core
            .create_domain(
                &admin,
                NewDomain {
                    name: format!("shop{d}-{tag}.test"),
                    email: None,
                },
            )
            .await
            .map_err(e)?;
        inboxes.push((inbox.id, domain.id));
        for i in 1..INBOXES_PER_DOMAIN {
            let inbox = core
                .create_inbox(
                    &admin,
                    NewInbox {
                        domain_id: domain.id,
                        unique_id: format!("store-{i}"),
                        name: None,
                    },
                )
                .await
                .map_err(e)?;
            inboxes.push((inbox.id, domain.id));
        }
    }
    let mut operators = Vec::new();
    for (o, group) in inboxes.chunks(INBOXES_PER_OPERATOR).enumerate() {
        let operator = core
            .create_operator(
                &admin,
                NewOperator {
                    email: format!("op{o}@bench.test"),
                    name: Some(format!("Operator {o}")),
                    avatar: None,
                },
            )
            .await
            .map_err(e)?;
        for &(inbox_id, _) in group {
            core.create_assignment(
                &admin,
                NewAssignment {
                    operator_id: operator.id,
                    inbox_id,
                    is_admin: false,
                    online: true,
                    receiving: true,
                },
            )
            .await
            .map_err(e)?;
        }
        operators.push(operator.id);
    }

    // Customers, chats and messages, in bulk.
    let n = messages;
    let chats = n / MESSAGES_PER_CHAT;
    let customers = (n / MESSAGES_PER_CUSTOMER).max(1);
    let (customer0, chat0, message0) = (
        max_id(store, "customers").await?,
        max_id(store, "chats").await?,
        max_id(store, "messages").await?,
    );
    let year_ms: i64 = 365 * 24 * 3600 * 1000;
    let now = souq::clock::system_ms();
    let start_ms = now - year_ms;
    let minute = 60_000;
    let filling = Instant::now();
    insert_all(
        store,
        "INSERT INTO customers (id, org_id, name, created_at, updated_at)",
        (1..=customers as i64).map(|c| {
            format!(
                "({}, {org_id}, 'Customer {c}', {start_ms}, {start_ms})",
                customer0 + c
            )
        }),
    )
    .await?;
    // Chat k starts at an even spread over the year; its messages a minute apart.
    let chat_start = |k: i64| start_ms + k * (year_ms - 3_600_000) / chats as i64;
    let chat_inbox = |k: i64| inboxes[k as usize % inboxes.len()];
    insert_all(
        store,
        "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, operator_id, status, \
         last_seq, created_at, last_activity_at, finished_at)",
        (0..chats as i64).map(|k| {
            let (inbox, domain) = chat_inbox(k);
            let operator = operators[k as usize % inboxes.len() / INBOXES_PER_OPERATOR];
            let at = chat_start(k);
            let last = at + (MESSAGES_PER_CHAT as i64 - 1) * minute;
            format!(
                "({}, {org_id}, {inbox}, {domain}, {}, {operator}, 'finished', {MESSAGES_PER_CHAT}, \
                 {at}, {last}, {last})",
                chat0 + 1 + k,
                customer0 + 1 + k % customers as i64,
            )
        }),
    )
    .await?;
    let zipf = Zipf::new(VOCABULARY);
    let mut rng = StdRng::seed_from_u64(30);
    // The PostgreSQL index is built once after the load, as a bulk load would.
    if backend == DbBackend::Postgres {
        store
            .db()
            .execute_unprepared("DROP INDEX IF EXISTS messages_search")
            .await
            .map_err(|e| e.to_string())?;
    }
    let messages = (0..n as i64).map(|i| {
        let k = i / MESSAGES_PER_CHAT as i64;
        let seq = i % MESSAGES_PER_CHAT as i64 + 1;
        let (author_kind, author_id) = if seq % 2 == 1 {
            ("customer", customer0 + 1 + k % customers as i64)
        } else {
            (
                "operator",
                operators[k as usize % inboxes.len() / INBOXES_PER_OPERATOR],
            )
        };
        let words = rng.random_range(3..15);
        let text: Vec<&str> = (0..words).map(|_| zipf.draw(&mut rng)).collect();
        format!(
            "({}, {}, {seq}, '{author_kind}', {author_id}, 'text', '{}', {})",
            message0 + 1 + i,
            chat0 + 1 + k,
            text.join(" "),
            chat_start(k) + (seq - 1) * minute,
        )
    });
    insert_all(
        store,
        "INSERT INTO messages (id, chat_id, seq, author_kind, author_id, payload, text, created_at)",
        messages,
    )
    .await?;
    let filled = filling.elapsed();
    let indexing = Instant::now();
    match backend {
        DbBackend::Postgres => {
            let tx = store.write().await.map_err(|e| e.to_string())?;
            for sql in [
                "SET LOCAL maintenance_work_mem = '512MB'",
                "CREATE INDEX messages_search ON messages USING GIN (to_tsvector('simple', text))",
            ] {
                tx.execute_unprepared(sql)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().await.map_err(|e| e.to_string())?;
            reseq(store, &["customers", "chats", "messages"]).await?;
        }
        _ => {
            // What the indexer would do in rounds, in one go.
            let tx = store.write().await.map_err(|e| e.to_string())?;
            for sql in [
                "INSERT INTO message_search (message_search) VALUES ('rebuild')",
                "UPDATE search_cursor SET last_id = (SELECT MAX(id) FROM messages)",
            ] {
                tx.execute_unprepared(sql)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().await.map_err(|e| e.to_string())?;
            store
                .db()
                .execute_unprepared("ANALYZE")
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let indexed = indexing.elapsed();
    eprintln!(
        "{n} messages in {chats} chats: filled in {:.0} s, indexed in {:.0} s",
        filled.as_secs_f64(),
        indexed.as_secs_f64()
    );
    Ok(Filled {
        org_id,
        admin,
        operators,
        customer0,
        customers: customers as i64,
        chat0,
        chats: chats as i64,
        messages: n,
    })
}
