//! Cost as the work grows (issue 32): three benchmarks over large databases, on SQLite or
//! PostgreSQL. Each prints a Markdown table.
//!
//! ```sh
//! cargo build --release --bin souq --example scalebench
//! # 1. History: pages of a chat's messages and of the chat list, and bytes per message,
//! #    straight into the core (the sends: bench/one-node-sqlite.sh with DB=, see
//! #    docs/benchmarks.md). Keep the file for a second run with --reuse yes.
//! target/release/examples/scalebench --part history --messages 10000000 \
//!     --database sqlite:///tmp/souq-scale.db
//! # 2. A big desk: connect → ready, server memory per followed chat, a presence change,
//! #    the chat list; against a real server (target/release/souq, or --souq PATH).
//! target/release/examples/scalebench --part desk
//! # 4. Catch-up: a resume after 10,000 missed messages in one chat, and after one in each
//! #    of 5,000 chats, while 100 other chats send 10 msg/s each.
//! target/release/examples/scalebench --part catchup
//! ```
//! Without `--database` a part uses a fresh SQLite file in the temp folder (removed
//! after); a PostgreSQL database should be empty. `--scale 0.1` makes the desk and the
//! catch-up a tenth of the issue's size (a quick trial); `--runs N` times each line N
//! times. The server is started with a large frame limit (a resume of 5,000 chats is
//! about 60 KiB) and no rate limit that the senders reach; its log goes to the temp folder.
//!
//! - *history*: `common/fill.rs`'s organisation (1,000,000 chats of 10 messages for ten
//!   million). A history page is the newest 50 messages of a chat drawn at random (as its
//!   customer), or the 50 before its 5th; a chat-list page is the first 50 (admin, an
//!   operator who sees 2% of the chats, a customer).
//! - *desk*: domain A with 100,000 open chats in 100 inboxes and one operator, admin of
//!   the domain (who follows them all); domain B with 10,000 inboxes, 1,000 operators each
//!   assigned to 20 (each inbox has two), 100,000 open chats, 10 an inbox: each operator
//!   follows 200. Every chat has one message.
//! - *catchup*: an operator, admin of a domain with one chat of 10,000 messages and 5,000
//!   chats of one message, resumes from seq 0 (a `resume` frame); meanwhile 100 customers
//!   in another domain each send 10 msg/s, and the time from each send to its own copy
//!   coming back is their latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use sea_orm::{ConnectionTrait, DbBackend};
use souq::domain::{Core, MessageQuery, NewDomain, NewOperator, Principal};
use souq::store::Store;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[path = "common/mod.rs"]
mod common;
#[path = "common/fill.rs"]
mod fill;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    History,
    Desk,
    Catchup,
}

struct Args {
    part: Part,
    database: Option<String>,
    messages: u64,
    runs: usize,
    reuse: bool,
    souq: String,
    port: u16,
    /// Scales the desk's and the catch-up's sizes (1: the issue's).
    scale: f64,
}

impl Args {
    /// `n` (one of the issue's sizes) times `--scale`, at least 1.
    fn scaled(&self, n: f64) -> i64 {
        ((n * self.scale).round() as i64).max(1)
    }
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        part: Part::History,
        database: None,
        messages: 10_000_000,
        runs: 100,
        reuse: false,
        souq: std::env::var("SOUQ").unwrap_or_else(|_| "target/release/souq".into()),
        port: 18_091,
        scale: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--part" => {
                a.part = match v.as_str() {
                    "history" => Part::History,
                    "desk" => Part::Desk,
                    "catchup" => Part::Catchup,
                    other => return Err(format!("no part {other} (history, desk, catchup)")),
                }
            }
            "--database" => a.database = Some(v),
            "--messages" => a.messages = (num(&v)? as u64).max(1000),
            "--runs" => a.runs = (num(&v)? as usize).max(1),
            "--reuse" => a.reuse = v == "yes",
            "--souq" => a.souq = v,
            "--port" => a.port = num(&v)? as u16,
            "--scale" => a.scale = num(&v)?.clamp(0.001, 10.0),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("scalebench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let file = std::env::temp_dir().join(format!("souq-scalebench-{}.db", std::process::id()));
    let url = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", file.display()));
    let store = Store::open(&url, 8).await.map_err(|e| e.to_string())?;
    let core = common::core(store.clone(), "souq-scalebench")?;
    let backend = match store.backend() {
        DbBackend::Postgres => "PostgreSQL",
        _ => "SQLite",
    };
    let result = match a.part {
        Part::History => history(&a, &core, &store, backend).await,
        Part::Desk => desk(&a, &core, &store, &url, backend).await,
        Part::Catchup => catchup(&a, &core, &store, &url, backend).await,
    };
    drop(core);
    store.close().await.map_err(|e| e.to_string())?;
    if a.database.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    result
}

fn e(e: souq::domain::Error) -> String {
    e.to_string()
}

/// One number from a query's first row, column `v`.
async fn one(store: &Store, sql: &str) -> Result<i64, String> {
    store
        .query(sql, [])
        .await
        .map_err(|e| e.to_string())?
        .first()
        .and_then(|r| r.try_get::<i64>("", "v").ok())
        .ok_or_else(|| format!("nothing for {sql}"))
}

/// The bytes the database takes on disk (SQLite: after a checkpoint, the main file).
async fn database_bytes(store: &Store) -> Result<i64, String> {
    match store.backend() {
        DbBackend::Postgres => one(store, "SELECT pg_database_size(current_database()) AS v").await,
        _ => {
            store
                .db()
                .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
                .await
                .map_err(|e| e.to_string())?;
            one(
                store,
                "SELECT page_count * page_size AS v FROM pragma_page_count(), pragma_page_size()",
            )
            .await
        }
    }
}

/// p50 and p99 (ms) of the first 50 chats of `who`'s list.
async fn chat_list(core: &Arc<Core>, who: Principal, runs: usize) -> Result<(f64, f64), String> {
    fill::time(runs, |_| {
        let core = core.clone();
        async move {
            core.list_chats(&who, &Default::default(), None, Some(50))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Part 1: history.

async fn history(a: &Args, core: &Arc<Core>, store: &Store, backend: &str) -> Result<(), String> {
    let filled = if a.reuse {
        fill::existing(store).await?
    } else {
        fill::fill(core, store, a.messages).await?
    };
    let n = filled.messages;
    let org_id = filled.org_id;
    println!("| backend | messages | what | p50 ms | p99 ms |");
    println!("|---|---:|---|---:|---:|");
    let row = |what: &str, (p50, p99): (f64, f64)| {
        println!("| {backend} | {n} | {what} | {p50:.2} | {p99:.2} |");
    };
    // Chats drawn evenly over the whole history (a fixed sequence, the same every run).
    let chat = |i: usize| -> (i64, Principal) {
        let k = (i as i64).wrapping_mul(7_919_993) % filled.chats;
        let customer_id = filled.customer0 + 1 + k % filled.customers;
        (
            filled.chat0 + 1 + k,
            Principal::Customer {
                org_id,
                customer_id,
            },
        )
    };
    for (what, before) in [
        ("history page, newest 50", None),
        ("history page, 50 before seq 5", Some(5)),
    ] {
        let timing = fill::time(a.runs, |i| {
            let core = core.clone();
            let (chat_id, who) = chat(i);
            async move {
                let q = MessageQuery {
                    after: None,
                    before,
                    limit: Some(50),
                };
                core.messages(&who, chat_id, q)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
        row(what, timing);
    }
    let operator = Principal::Operator {
        org_id,
        operator_id: filled.operators[filled.operators.len() / 2],
    };
    let customer = chat(0).1;
    for (who_name, who) in [
        ("admin", filled.admin),
        ("operator (2% of chats)", operator),
        ("a customer (5 chats)", customer),
    ] {
        let timing = chat_list(core, who, a.runs).await?;
        row(&format!("chat list, first 50, {who_name}"), timing);
    }
    let bytes = database_bytes(store).await?;
    println!(
        "\n{backend}, {n} messages: the database takes {bytes} bytes, {:.0} a message",
        bytes as f64 / n as f64
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A real server, and sockets to it.

/// A souq server this process started; killed when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    /// Starts `souq` on `url` and waits until it accepts connections.
    async fn start(a: &Args, url: &str) -> Result<Server, String> {
        let log = std::fs::File::create(std::env::temp_dir().join("souq-scalebench-node.log"))
            .map_err(|e| e.to_string())?;
        let child = std::process::Command::new(&a.souq)
            .env("DATABASE_URL", url)
            .env("SOUQ_BIND", format!("127.0.0.1:{}", a.port))
            .env("RUST_LOG", "souq=warn")
            // Far above what the senders send, so that no send is refused.
            .env("SOUQ_WS_FRAMES_PER_SEC", "100000")
            // A resume frame naming 5,000 chats is about 60 KiB.
            .env("SOUQ_WS_MAX_FRAME_BYTES", "1048576")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", a.souq))?;
        let mut server = Server {
            child,
            port: a.port,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("the server exited at start: {status}"));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", a.port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err("the server did not listen within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// CPU time used (user + system), in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1.to_owned();
                let f: Vec<&str> = after.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(port: u16, token: &str) -> Result<Ws, String> {
    let mut request = format!("ws://127.0.0.1:{port}/v1/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(|_| "token")?,
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(60),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map_err(|_| "no connection within 60 s")?
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Reads frames until one starts with `{"type":"KIND"`; returns it and how many frames
/// came before it.
async fn until(ws: &mut Ws, kind: &str) -> Result<(String, usize), String> {
    let head = format!(r#"{{"type":"{kind}""#);
    let mut before = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(600), ws.next())
            .await
            .map_err(|_| format!("no {kind} within 600 s"))?;
        match next {
            Some(Ok(Message::Text(text))) if text.starts_with(&head) => {
                return Ok((text.to_string(), before));
            }
            Some(Ok(Message::Text(_))) => before += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(format!("the socket closed before {kind}")),
        }
    }
}

/// A socket whose frames are read (and counted) in the background, so that the server
/// never waits on it.
struct Held {
    /// Kept, not written to: the socket stays whole while it is held.
    _sink: futures_util::stream::SplitSink<Ws, Message>,
    reader: tokio::task::JoinHandle<()>,
}

impl Held {
    fn new(ws: Ws, frames: Arc<AtomicU64>) -> Held {
        let (sink, mut stream) = ws.split();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(text) = msg
                    && text.starts_with(r#"{"type":"presence""#)
                {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Held {
            _sink: sink,
            reader,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// p50, p99 and the largest of some durations, in milliseconds.
fn percentiles(took: &mut [Duration]) -> (f64, f64, f64) {
    took.sort();
    let at = |p: f64| {
        let i = ((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}

/// `n` customers of `org_id` in bulk; the id of the first.
async fn customers(store: &Store, org_id: i64, n: i64) -> Result<i64, String> {
    let first = fill::max_id(store, "customers").await? + 1;
    let now = souq::clock::system_ms();
    fill::insert_all(
        store,
        "INSERT INTO customers (id, org_id, name, created_at, updated_at)",
        (0..n).map(|c| format!("({}, {org_id}, 'Customer {c}', {now}, {now})", first + c)),
    )
    .await?;
    Ok(first)
}

/// `n` store inboxes in a domain in bulk; their ids.
async fn inboxes(store: &Store, org_id: i64, domain_id: i64, n: i64) -> Result<Vec<i64>, String> {
    let first = fill::max_id(store, "inboxes").await? + 1;
    let now = souq::clock::system_ms();
    fill::insert_all(
        store,
        "INSERT INTO inboxes (id, org_id, domain_id, unique_id, name, created_at)",
        (0..n).map(|i| {
            format!(
                "({}, {org_id}, {domain_id}, 's{i}', 'Store {i}', {now})",
                first + i
            )
        }),
    )
    .await?;
    // The core makes inboxes of its own after these.
    fill::reseq(store, &["inboxes"]).await?;
    Ok((first..first + n).collect())
}

/// An open chat to insert: its inbox and domain, its customer, its operator, and how
/// many messages it has (the customer's, a second apart; the chats' last ones a
/// millisecond apart).
struct OpenChat {
    inbox_id: i64,
    domain_id: i64,
    customer_id: i64,
    operator_id: i64,
    messages: i64,
}

/// Open chats in bulk, with their messages; their ids, in order.
async fn open_chats(store: &Store, org_id: i64, chats: &[OpenChat]) -> Result<Vec<i64>, String> {
    let chat0 = fill::max_id(store, "chats").await?;
    let message0 = fill::max_id(store, "messages").await?;
    let start = souq::clock::system_ms() - 3_600_000;
    fill::insert_all(
        store,
        "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, operator_id, status, \
         last_seq, created_at, last_activity_at)",
        chats.iter().enumerate().map(|(k, c)| {
            format!(
                "({}, {org_id}, {}, {}, {}, {}, 'chatting', {}, {start}, {})",
                chat0 + 1 + k as i64,
                c.inbox_id,
                c.domain_id,
                c.customer_id,
                c.operator_id,
                c.messages,
                // Each chat's last message at a time of its own, as in life.
                start + c.messages * 1000 + k as i64,
            )
        }),
    )
    .await?;
    let mut id = message0;
    let messages = chats.iter().enumerate().flat_map(|(k, c)| {
        (1..=c.messages).map(move |seq| (chat0 + 1 + k as i64, c.customer_id, seq))
    });
    fill::insert_all(
        store,
        "INSERT INTO messages (id, chat_id, seq, author_kind, author_id, payload, text, created_at)",
        messages.map(|(chat_id, customer_id, seq)| {
            id += 1;
            format!(
                "({id}, {chat_id}, {seq}, 'customer', {customer_id}, 'text', 'message {seq}', {})",
                start + seq * 1000
            )
        }),
    )
    .await?;
    if store.backend() != DbBackend::Postgres {
        // What the search indexer would do; the server then has nothing to catch up.
        store
            .db()
            .execute_unprepared("UPDATE search_cursor SET last_id = (SELECT MAX(id) FROM messages)")
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((chat0 + 1..=chat0 + chats.len() as i64).collect())
}

/// Assignments in bulk: (operator, inbox, domain, is_admin), receiving and shown online.
async fn assign(store: &Store, org_id: i64, rows: &[(i64, i64, i64, bool)]) -> Result<(), String> {
    let now = souq::clock::system_ms();
    let yes = match store.backend() {
        DbBackend::Postgres => ("true", "false"),
        _ => ("1", "0"),
    };
    fill::insert_all(
        store,
        "INSERT INTO assignments (org_id, operator_id, inbox_id, domain_id, is_admin, online, \
         receiving, created_at)",
        rows.iter().map(|&(operator, inbox, domain, admin)| {
            let admin = if admin { yes.0 } else { yes.1 };
            format!(
                "({org_id}, {operator}, {inbox}, {domain}, {admin}, {}, {}, {now})",
                yes.0, yes.0
            )
        }),
    )
    .await
}

async fn operator(core: &Core, admin: &Principal, name: &str) -> Result<i64, String> {
    Ok(core
        .create_operator(
            admin,
            NewOperator {
                email: format!("{name}@bench.test"),
                name: Some(name.to_owned()),
                avatar: None,
            },
        )
        .await
        .map_err(e)?
        .id)
}

async fn domain(core: &Core, admin: &Principal, name: &str) -> Result<(i64, i64), String> {
    let (domain, inbox) = core
        .create_domain(
            admin,
            NewDomain {
                name: name.to_owned(),
                email: None,
            },
        )
        .await
        .map_err(e)?;
    Ok((domain.id, inbox.id))
}

// ---------------------------------------------------------------------------------------
// Part 2: a big desk.

async fn desk(
    a: &Args,
    core: &Arc<Core>,
    store: &Store,
    url: &str,
    backend: &str,
) -> Result<(), String> {
    let (big, inboxes_b, operators_b) =
        (a.scaled(100_000.0), a.scaled(10_000.0), a.scaled(1_000.0));
    let filling = Instant::now();
    let (org_id, admin, tag) = common::organisation(core).await?;
    // Domain A: 100 inboxes of 1,000 chats, one admin operator.
    let (domain_a, desk_a) = domain(core, &admin, &format!("a-{tag}.test")).await?;
    let mut inboxes_a = vec![desk_a];
    inboxes_a.extend(inboxes(store, org_id, domain_a, 99).await?);
    let boss = operator(core, &admin, &format!("boss-{tag}")).await?;
    // Domain B: 10,000 inboxes, 1,000 operators with 20 each (each inbox has two).
    let (domain_b, desk_b) = domain(core, &admin, &format!("b-{tag}.test")).await?;
    let mut inboxes_b_ids = vec![desk_b];
    inboxes_b_ids.extend(inboxes(store, org_id, domain_b, inboxes_b - 1).await?);
    let mut ops = Vec::new();
    for o in 0..operators_b {
        ops.push(operator(core, &admin, &format!("op{o}-{tag}")).await?);
    }
    let per = inboxes_b / operators_b;
    let mut rows = vec![(boss, desk_a, domain_a, true)];
    for (o, &op) in ops.iter().enumerate() {
        for j in 0..2 * per {
            let inbox = inboxes_b_ids[((o as i64 * per + j) % inboxes_b) as usize];
            rows.push((op, inbox, domain_b, false));
        }
    }
    assign(store, org_id, &rows).await?;
    // Chats: in A, chat k in inbox k % 100 with customer k / 100; in B, chat j in inbox
    // j % 10,000 with customer j / 10,000 (at most one open chat per customer and inbox).
    let customer0 = customers(store, org_id, big / 100 + 1).await?;
    let mut chats: Vec<OpenChat> = (0..big)
        .map(|k| OpenChat {
            inbox_id: inboxes_a[(k % 100) as usize],
            domain_id: domain_a,
            customer_id: customer0 + k / 100,
            operator_id: boss,
            messages: 1,
        })
        .collect();
    chats.extend((0..big).map(|j| {
        let inbox = j % inboxes_b;
        OpenChat {
            inbox_id: inboxes_b_ids[inbox as usize],
            domain_id: domain_b,
            customer_id: customer0 + j / inboxes_b,
            operator_id: ops[(inbox / per).min(operators_b - 1) as usize],
            messages: 1,
        }
    }));
    open_chats(store, org_id, &chats).await?;
    fill::reseq(store, &["inboxes", "customers", "chats", "messages"]).await?;
    let mut tokens = Vec::new();
    for &op in std::iter::once(&boss).chain(&ops) {
        tokens.push(core.operator_session(&admin, op).await.map_err(e)?.token);
    }
    eprintln!(
        "filled in {:.0} s: {big} open chats in domain A, {big} in B",
        filling.elapsed().as_secs_f64()
    );

    let server = Server::start(a, url).await?;
    let port = server.port;
    println!("| backend | what | p50 | p99 | max | per |");
    println!("|---|---|---:|---:|---:|---|");
    // A first socket, so that what every server allocates once is not counted.
    let mut warm = open(port, &tokens[1]).await?;
    until(&mut warm, "resumed").await?;
    drop(warm);

    let row = |what: &str, t: &mut Vec<Duration>, per: &str| {
        let (p50, p99, max) = percentiles(t);
        println!("| {backend} | {what} | {p50:.0} ms | {p99:.0} ms | {max:.0} ms | {per} |");
    };

    // Memory first (what the server frees it keeps for later): the admin's socket held
    // open, then the 1,000 operators', a socket at a time.
    let frames = Arc::new(AtomicU64::new(0));
    let before = server.rss_kib();
    let mut ws = open(port, &tokens[0]).await?;
    let (ready, _) = until(&mut ws, "ready").await?;
    let followed = ready.matches(r#""last_seq""#).count();
    until(&mut ws, "resumed").await?;
    let boss_rss = server.rss_kib().saturating_sub(before);
    // A second socket of the admin's: what a connect frees (its reads, the ready and
    // resumed frames) the allocator keeps, and this one reuses; the growth is what stays.
    let before_second = server.rss_kib();
    let mut second = open(port, &tokens[0]).await?;
    until(&mut second, "resumed").await?;
    let second_rss = server.rss_kib().saturating_sub(before_second);
    let _ = second.close(None).await;
    let mut held = vec![Held::new(ws, frames.clone())];
    let mut took = Vec::new();
    let mut followed_b = 0;
    let before_b = server.rss_kib();
    for token in &tokens[1..] {
        let start = Instant::now();
        let mut ws = open(port, token).await?;
        let (ready, _) = until(&mut ws, "ready").await?;
        took.push(start.elapsed());
        followed_b += ready.matches(r#""last_seq""#).count();
        until(&mut ws, "resumed").await?;
        held.push(Held::new(ws, frames.clone()));
    }
    let ops_rss = server.rss_kib().saturating_sub(before_b);
    row(
        &format!(
            "operator of B ({} chats): connect → ready",
            followed_b / ops.len().max(1)
        ),
        &mut took,
        &format!("{} connections", ops.len()),
    );
    println!(
        "| {backend} | server memory, admin of A's socket | {} KiB | | | {:.0} bytes a followed chat ({followed}) |",
        boss_rss,
        boss_rss as f64 * 1024.0 / followed.max(1) as f64
    );
    println!(
        "| {backend} | server memory, a second socket of the admin of A | {} KiB | | | {:.0} bytes a followed chat |",
        second_rss,
        second_rss as f64 * 1024.0 / followed.max(1) as f64
    );
    println!(
        "| {backend} | server memory, {} sockets of B | {} KiB | | | {:.0} bytes a followed chat ({followed_b}), socket included |",
        ops.len(),
        ops_rss,
        ops_rss as f64 * 1024.0 / followed_b.max(1) as f64
    );

    // The admin of domain A: connect → ready, a socket at a time.
    // Each connection of the admin catches 100,000 chats up: a few are enough.
    let runs = a.runs.min(5);
    let mut took = Vec::new();
    let mut caught_up = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut ws = open(port, &tokens[0]).await?;
        until(&mut ws, "ready").await?;
        took.push(start.elapsed());
        until(&mut ws, "resumed").await?;
        caught_up.push(start.elapsed());
        let _ = ws.close(None).await;
    }
    row(
        &format!("admin of A ({followed} chats): connect → ready"),
        &mut took,
        &format!("{runs} connections"),
    );
    row(
        "admin of A: connect → catch-up done (resumed)",
        &mut caught_up,
        &format!("{runs} connections"),
    );

    // A presence change: from the frame to the operator's own socket hearing it, and the
    // presence frames every socket got, and the server's CPU.
    for (who, index) in [
        ("admin of A", 0usize),
        ("an operator of B", 1 + ops.len() / 2),
    ] {
        let operator_id = if index == 0 { boss } else { ops[index - 1] };
        let mut ws = open(port, &tokens[index]).await?;
        until(&mut ws, "resumed").await?;
        let changes = 20;
        let frames_before = frames.load(Ordering::Relaxed);
        let ticks = server.cpu_ticks();
        let mut took = Vec::new();
        let own = format!(r#""operator_id":{operator_id},"#);
        for i in 0..changes {
            let presence = if i % 2 == 0 { "away" } else { "online" };
            let start = Instant::now();
            ws.send(Message::Text(
                format!(r#"{{"type":"presence","presence":"{presence}"}}"#).into(),
            ))
            .await
            .map_err(|e| e.to_string())?;
            loop {
                let (text, _) = until(&mut ws, "presence").await?;
                if text.contains(&own) && text.contains(presence) {
                    break;
                }
            }
            took.push(start.elapsed());
        }
        let cpu_ms = (server.cpu_ticks() - ticks) as f64 * 10.0 / changes as f64;
        // The other sockets' frames: wait until they stop growing.
        let mut seen = frames.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = frames.load(Ordering::Relaxed);
            if now == seen {
                break;
            }
            seen = now;
        }
        let others = (seen - frames_before) as f64 / changes as f64;
        row(
            &format!("presence change, {who}"),
            &mut took,
            &format!("{cpu_ms:.1} ms server CPU, {others:.1} frames to other sockets, a change"),
        );
        let _ = ws.close(None).await;
    }

    // The chat list, as the admin of A and as an operator of B.
    for (who, operator_id) in [
        ("admin of A", boss),
        ("an operator of B", ops[ops.len() / 2]),
    ] {
        let principal = Principal::Operator {
            org_id,
            operator_id,
        };
        let (p50, p99) = chat_list(core, principal, a.runs).await?;
        println!(
            "| {backend} | chat list, first 50, {who} | {p50:.1} ms | {p99:.1} ms | | core, {} runs |",
            a.runs
        );
    }

    // A reconnect storm: every socket of B at once.
    drop(held);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens.iter().skip(1) {
        let token = token.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            let mut ws = open(port, &token).await?;
            until(&mut ws, "ready").await?;
            let ready = t.elapsed();
            until(&mut ws, "resumed").await?;
            Ok::<_, String>((ready, ws))
        });
    }
    let mut took = Vec::new();
    let mut keep = Vec::new();
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        match done.map_err(|e| e.to_string())? {
            Ok((ready, ws)) => {
                took.push(ready);
                keep.push(ws);
            }
            Err(_) => failed += 1,
        }
    }
    let all = start.elapsed();
    if !took.is_empty() {
        row(
            &format!("{} operators of B at once: connect → ready", ops.len()),
            &mut took,
            &format!(
                "all caught up in {:.1} s, {failed} connections failed",
                all.as_secs_f64()
            ),
        );
    }
    drop(keep);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part 4: catch-up.

/// Live traffic: each socket sends at 10 msg/s; the time until its own copy comes back
/// goes into the histogram of the phase the send was made in.
struct Live {
    phase: AtomicUsize,
    latency: std::sync::Mutex<Vec<Histogram<u64>>>,
    start: Instant,
    stop: AtomicBool,
}

async fn live_socket(live: Arc<Live>, mut ws: Ws, chat_id: i64, offset: Duration) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + offset,
        Duration::from_millis(100),
    );
    let mut n = 0u64;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    _ => return,
                };
                // {"type":"message",...,"text":"PHASE NANOS",...}
                if !text.starts_with(r#"{"type":"message""#) { continue; }
                let Some(at) = text.find(r#""text":""#) else { continue };
                let rest = &text[at + 8..];
                let Some(end) = rest.find('"') else { continue };
                let mut parts = rest[..end].split(' ');
                let (Some(Ok(phase)), Some(Ok(sent))) = (
                    parts.next().map(str::parse::<usize>),
                    parts.next().map(str::parse::<u64>),
                ) else { continue };
                let us = (live.start.elapsed().as_nanos() as u64).saturating_sub(sent) / 1000;
                if let Some(h) = live.latency.lock().unwrap_or_else(|e| e.into_inner()).get_mut(phase) {
                    let _ = h.record(us.max(1));
                }
            }
            _ = tick.tick() => {
                if live.stop.load(Ordering::Relaxed) { return; }
                n += 1;
                let frame = format!(
                    r#"{{"type":"send","chat_id":{chat_id},"local_id":"{n}","text":"{} {}"}}"#,
                    live.phase.load(Ordering::Relaxed),
                    live.start.elapsed().as_nanos()
                );
                if ws.send(Message::Text(frame.into())).await.is_err() { return; }
            }
        }
    }
}

async fn catchup(
    a: &Args,
    core: &Arc<Core>,
    store: &Store,
    url: &str,
    backend: &str,
) -> Result<(), String> {
    let (long, many, senders) = (a.scaled(10_000.0), a.scaled(5_000.0), 100);
    let filling = Instant::now();
    let (org_id, admin, tag) = common::organisation(core).await?;
    let (domain_c, desk_c) = domain(core, &admin, &format!("c-{tag}.test")).await?;
    let (domain_d, desk_d) = domain(core, &admin, &format!("d-{tag}.test")).await?;
    let reader = operator(core, &admin, &format!("reader-{tag}")).await?;
    assign(store, org_id, &[(reader, desk_c, domain_c, true)]).await?;
    let customer0 = customers(store, org_id, many + 1 + senders).await?;
    let mut chats = vec![OpenChat {
        inbox_id: desk_c,
        domain_id: domain_c,
        customer_id: customer0,
        operator_id: reader,
        messages: long,
    }];
    chats.extend((1..=many).map(|k| OpenChat {
        inbox_id: desk_c,
        domain_id: domain_c,
        customer_id: customer0 + k,
        operator_id: reader,
        messages: 1,
    }));
    // The live chats are in another domain, with no operator.
    let first_live = chats.len();
    chats.extend((0..senders).map(|s| OpenChat {
        inbox_id: desk_d,
        domain_id: domain_d,
        customer_id: customer0 + many + 1 + s,
        operator_id: reader,
        messages: 0,
    }));
    let ids = open_chats(store, org_id, &chats).await?;
    // Nobody in D: the live chats are the customers' alone.
    store
        .db()
        .execute_unprepared(&format!(
            "UPDATE chats SET operator_id = NULL WHERE domain_id = {domain_d}"
        ))
        .await
        .map_err(|e| e.to_string())?;
    fill::reseq(store, &["customers", "chats", "messages"]).await?;
    let reader_token = core
        .operator_session(&admin, reader)
        .await
        .map_err(e)?
        .token;
    let mut live_tokens = Vec::new();
    for s in 0..senders {
        let customer = customer0 + many + 1 + s;
        live_tokens.push(
            core.customer_session(&admin, customer)
                .await
                .map_err(e)?
                .token,
        );
    }
    eprintln!("filled in {:.0} s", filling.elapsed().as_secs_f64());

    let server = Server::start(a, url).await?;
    let port = server.port;
    let live = Arc::new(Live {
        phase: AtomicUsize::new(0),
        latency: std::sync::Mutex::new(
            (0..3)
                .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        ),
        start: Instant::now(),
        stop: AtomicBool::new(false),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (s, token) in live_tokens.iter().enumerate() {
        let mut ws = open(port, token).await?;
        until(&mut ws, "resumed").await?;
        let offset = Duration::from_micros(100_000 * s as u64 / senders as u64);
        tasks.spawn(live_socket(live.clone(), ws, ids[first_live + s], offset));
    }
    let mut ws = open(port, &reader_token).await?;
    until(&mut ws, "resumed").await?;

    // The server's RSS, sampled every 5 ms: the peak of each phase.
    let peaks: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    let sampler = {
        let (live, peaks, pid) = (live.clone(), peaks.clone(), server.pid());
        tokio::spawn(async move {
            let path = format!("/proc/{pid}/status");
            while !live.stop.load(Ordering::Relaxed) {
                let rss = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))?
                            .split_whitespace()
                            .nth(1)?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0);
                let phase = live.phase.load(Ordering::Relaxed).min(2);
                peaks[phase].fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let phase_secs = Duration::from_secs(10);
    // Phase 0: live traffic alone.
    tokio::time::sleep(phase_secs).await;
    let resume_long = format!(r#"{{"type":"resume","id":"r","chats":{{"{}":0}}}}"#, ids[0]);
    let resume_many = {
        let list: Vec<String> = ids[1..=many as usize]
            .iter()
            .map(|id| format!(r#""{id}":0"#))
            .collect();
        format!(
            r#"{{"type":"resume","id":"r","chats":{{{}}}}}"#,
            list.join(",")
        )
    };
    let mut results = Vec::new();
    for (phase, frame, what) in [
        (1, &resume_long, format!("{long} messages in one chat")),
        (
            2,
            &resume_many,
            format!("1 message in each of {many} chats"),
        ),
    ] {
        live.phase.store(phase, Ordering::Relaxed);
        let started = Instant::now();
        let mut took = Vec::new();
        let mut got = 0;
        // Catch-ups back to back for the whole phase (at least 3).
        while took.len() < 3 || started.elapsed() < phase_secs {
            let start = Instant::now();
            ws.send(Message::Text(frame.clone().into()))
                .await
                .map_err(|e| e.to_string())?;
            let (_, before) = until(&mut ws, "resumed").await?;
            took.push(start.elapsed());
            got = before;
        }
        results.push((what, took, got));
    }
    live.stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    tasks.abort_all();
    let idle = server.rss_kib();
    println!(
        "| backend | catch-up | time to resumed p50 / max | frames | server RSS peak | others' send→deliver p50 / p99 |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    // The live traffic has stopped: the histograms are only read now.
    let latency = std::mem::take(&mut *live.latency.lock().unwrap_or_else(|e| e.into_inner()));
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "| {backend} | none (live traffic alone, {} sends) | | | {} MiB | {:.2} / {:.2} ms |",
        latency[0].len(),
        peaks[0].load(Ordering::Relaxed) / 1024,
        ms(&latency[0], 0.5),
        ms(&latency[0], 0.99)
    );
    for (i, (what, mut took, frames)) in results.into_iter().enumerate() {
        let (p50, _, max) = percentiles(&mut took);
        let h = &latency[i + 1];
        println!(
            "| {backend} | {what} ({} runs) | {p50:.0} / {max:.0} ms | {frames} | {} MiB | {:.2} / {:.2} ms |",
            took.len(),
            peaks[i + 1].load(Ordering::Relaxed) / 1024,
            ms(h, 0.5),
            ms(h, 0.99)
        );
    }
    println!("\nserver RSS at the end: {} MiB", idle / 1024);
    drop(server);
    // Unread counts: the reader has read nothing, so the chat of 10,000 messages (the
    // newest, first in the list) has 10,000 unread.
    let reader = Principal::Operator {
        org_id,
        operator_id: reader,
    };
    let page = core
        .list_chats(&reader, &Default::default(), None, Some(50))
        .await
        .map_err(e)?;
    let unread: i64 = page.items.iter().map(|c| c.unread).sum();
    let (p50, p99) = chat_list(core, reader, a.runs).await?;
    println!(
        "{backend}: chat list, first 50, the reader ({unread} unread in all): p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    Ok(())
}
