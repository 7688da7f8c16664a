//! A store broadcast to a big audience: fills a database with C customers, each with a
//! chat in one store (straight SQL, many rows a statement), starts the release `souq` on
//! it, opens a socket for each of N of those customers, and has the store's operator
//! broadcast B times. It measures:
//! - from sending the POST to each online socket's `broadcast` frame: p50 / p99 / max, and
//!   how many sockets got it;
//! - the POST's answer, and the server's CPU time per broadcast;
//! - the rows the broadcasts wrote (broadcasts and messages, counted before and after);
//! - a customer's listing afterwards (hojre `GET /web/broadcasts`, what an app that was
//!   offline asks): p50 / p99 over R requests, each customer's listing checked.
//!
//! Prints one JSON line.
//!
//! ```sh
//! cargo build --release --bin souq --example broadcastbench
//! ulimit -n 20000
//! target/release/examples/broadcastbench --customers 100000 --online 19000
//! psql -h 127.0.0.1 -d postgres -c "DROP DATABASE IF EXISTS souq_broadcastbench WITH (FORCE)" \
//!     -c "CREATE DATABASE souq_broadcastbench"
//! target/release/examples/broadcastbench --customers 100000 --online 19000 \
//!     --database postgres://root@127.0.0.1:5432/souq_broadcastbench
//! ```
//! Without `--database` it uses a fresh SQLite file in the temp folder (removed after).
//! A PostgreSQL database should be empty. The server is `--souq` (default: the `souq`
//! beside this example, i.e. target/release/souq), listening on `--port` (18391); its log
//! is in the temp folder. Sockets come from 127.0.0.2, .3, ... (2,000 each), as loadgen's
//! idle sockets do. Each process needs an open-files limit above the online count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use sea_orm::DbBackend;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use souq::domain::{NewAssignment, NewDomain, NewOperator};
use souq::store::Store;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[path = "common/mod.rs"]
mod common;
// Only its bulk inserts: the large organisation is searchbench's and scalebench's.
#[allow(dead_code)]
#[path = "common/fill.rs"]
mod fill;

struct Args {
    database: Option<String>,
    customers: usize,
    online: usize,
    broadcasts: usize,
    /// Listing requests timed.
    runs: usize,
    souq: std::path::PathBuf,
    port: u16,
}

fn args() -> Result<Args, String> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("souq")))
        .unwrap_or_else(|| "target/release/souq".into());
    let mut a = Args {
        database: None,
        customers: 100_000,
        online: 10_000,
        broadcasts: 3,
        runs: 200,
        souq: beside,
        port: 18391,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--database" => a.database = Some(v),
            "--customers" => a.customers = num(&v)?.max(1),
            "--online" => a.online = num(&v)?,
            "--broadcasts" => a.broadcasts = num(&v)?.max(1),
            "--runs" => a.runs = num(&v)?.max(1),
            "--souq" => a.souq = v.into(),
            "--port" => a.port = v.parse().map_err(|_| "--port takes a port")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.online > a.customers {
        return Err("--online is at most --customers".into());
    }
    Ok(a)
}

/// Sockets per source address (see loadgen's `PER_SOURCE`).
const PER_SOURCE: usize = 2_000;
/// Sockets being opened at once.
const OPENING: usize = 64;
/// Customers with a session who stay offline: whose listings are timed besides.
const OFFLINE_LISTED: usize = 100;
/// Longest a broadcast may take to reach every socket before the round gives up.
const ROUND_WAIT: Duration = Duration::from_secs(60);

async fn scalar(store: &Store, sql: &str) -> Result<i64, String> {
    let rows = store.query(sql, []).await.map_err(|e| e.to_string())?;
    rows.first()
        .and_then(|r| r.try_get::<i64>("", "n").ok())
        .ok_or_else(|| format!("no answer to {sql}"))
}

/// A session token and the hash the server keeps of it.
fn token(tag: &str, kind: &str, id: i64) -> (String, String) {
    let token = format!("sqs_bench{tag}{kind}{id}");
    let hash = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (token, hash)
}

fn phone(c: i64) -> String {
    format!("0990{c:07}")
}

/// p50, p99 and max of `ms`, which it sorts.
fn spread(ms: &mut [f64]) -> (f64, f64, f64) {
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.50), at(0.99), ms[ms.len() - 1])
}

/// CPU time (user + system) of a process, in ms.
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

/// The server this benchmark starts, stopped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the socket readers record: when each socket got each broadcast.
struct Arrivals {
    origin: Instant,
    online: usize,
    /// ns since `origin`, per round and socket (0: not yet).
    at: Vec<AtomicU64>,
    /// Sockets that got each round's broadcast.
    done: Vec<AtomicUsize>,
    closed: AtomicUsize,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens socket `i` as the customer with `token`, and reads its `ready` frame.
async fn open(addr: std::net::SocketAddr, i: usize, token: &str) -> Result<Socket, String> {
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(|_| "token")?,
    );
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"type":"ready""#) => {
                return Ok(ws);
            }
            Some(Ok(_)) => {}
            other => return Err(format!("socket {i} closed before ready: {other:?}")),
        }
    }
}

/// Reads socket `i` until it closes, recording each broadcast's arrival.
async fn read(
    mut stream: futures_util::stream::SplitStream<Socket>,
    i: usize,
    arrivals: Arc<Arrivals>,
) {
    let rounds = arrivals.done.len();
    let mut seen = 0;
    while let Some(Ok(frame)) = stream.next().await {
        if let Message::Text(t) = frame
            && t.as_str().starts_with(r#"{"type":"broadcast""#)
        {
            let ns = arrivals.origin.elapsed().as_nanos() as u64;
            if seen < rounds {
                arrivals.at[seen * arrivals.online + i].store(ns.max(1), Ordering::Relaxed);
                arrivals.done[seen].fetch_add(1, Ordering::Relaxed);
            }
            seen += 1;
        }
    }
    arrivals.closed.fetch_add(1, Ordering::Relaxed);
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("broadcastbench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let file = std::env::temp_dir().join(format!("souq-broadcastbench-{}.db", std::process::id()));
    let url = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", file.display()));
    let store = Store::open(&url, 4).await.map_err(|e| e.to_string())?;
    let backend = store.backend();
    let core = common::core(store.clone(), "souq-broadcastbench")?;
    let e = |e: souq::domain::Error| e.to_string();

    // The organisation, the store and its operator, through the core.
    let (org_id, admin, tag) = common::organisation(&core).await?;
    let (domain, inbox) = core
        .create_domain(
            &admin,
            NewDomain {
                name: format!("shop-{tag}.test"),
                email: None,
            },
        )
        .await
        .map_err(e)?;
    let seller = core
        .create_operator(
            &admin,
            NewOperator {
                email: format!("seller-{tag}@bench.test"),
                name: Some("Seller".into()),
                avatar: None,
            },
        )
        .await
        .map_err(e)?;
    core.create_assignment(
        &admin,
        NewAssignment {
            operator_id: seller.id,
            inbox_id: inbox.id,
            is_admin: false,
            online: true,
            receiving: true,
        },
    )
    .await
    .map_err(e)?;

    // Customers, a finished chat each in the store, and sessions for those who connect
    // (and a few who stay offline), in bulk. Ids are given, so that rows refer to each
    // other without reading back.
    let (customer0, chat0) = (
        fill::max_id(&store, "customers").await?,
        fill::max_id(&store, "chats").await?,
    );
    let n = a.customers as i64;
    let now = souq::clock::system_ms();
    // Chats opened over the last 30 days, before any broadcast.
    let month: i64 = 30 * 24 * 3600 * 1000;
    let opened = |c: i64| now - month + c * (month - 60_000) / n;
    let filling = Instant::now();
    fill::insert_all(
        &store,
        "INSERT INTO customers (id, org_id, name, phone, created_at, updated_at)",
        (1..=n).map(|c| {
            let at = opened(c);
            format!(
                "({}, {org_id}, 'Customer {c}', '{}', {at}, {at})",
                customer0 + c,
                phone(c)
            )
        }),
    )
    .await?;
    fill::insert_all(
        &store,
        "INSERT INTO chats (id, org_id, inbox_id, domain_id, customer_id, status, last_seq, \
         created_at, last_activity_at, finished_at, queued_at)",
        (1..=n).map(|c| {
            let at = opened(c);
            format!(
                "({}, {org_id}, {}, {}, {}, 'finished', 0, {at}, {at}, {at}, {at})",
                chat0 + c,
                inbox.id,
                domain.id,
                customer0 + c
            )
        }),
    )
    .await?;
    let with_session = (a.online + OFFLINE_LISTED).min(a.customers) as i64;
    let expires = now + 24 * 3600 * 1000;
    let tokens: Vec<String> = (1..=with_session)
        .map(|c| token(&tag, "c", customer0 + c).0)
        .collect();
    fill::insert_all(
        &store,
        "INSERT INTO sessions (org_id, subject_kind, subject_id, token_hash, expires_at, created_at)",
        (1..=with_session)
            .map(|c| ("customer", customer0 + c))
            .chain(std::iter::once(("operator", seller.id)))
            .map(|(kind, id)| {
                let (_, hash) = token(&tag, &kind[..1], id);
                format!("({org_id}, '{kind}', {id}, '{hash}', {expires}, {now})")
            }),
    )
    .await?;
    fill::reseq(&store, &["customers", "chats"]).await?;
    let filled_s = filling.elapsed().as_secs_f64();
    let (seller_token, _) = token(&tag, "o", seller.id);

    // The server, on the same database.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], a.port).into();
    // Another server there would answer in ours' place.
    drop(
        std::net::TcpListener::bind(addr)
            .map_err(|e| format!("port {} is taken ({e}); pick another with --port", a.port))?,
    );
    let log = std::env::temp_dir().join(format!("souq-broadcastbench-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut server = Server(
        std::process::Command::new(&a.souq)
            .env("DATABASE_URL", &url)
            .env("SOUQ_BIND", addr.to_string())
            .env("RUST_LOG", "souq=warn")
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", a.souq.display()))?,
    );
    let pid = server.0.id();
    // reqwest is built without a crypto provider of its own (plain HTTP here anyway).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut up = false;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Ok(Some(status)) = server.0.try_wait() {
        return Err(format!(
            "the server stopped ({status}); see {}",
            log.display()
        ));
    }
    if !up {
        return Err(format!("the server never got ready; see {}", log.display()));
    }

    // The online customers' sockets.
    let arrivals = Arc::new(Arrivals {
        origin: Instant::now(),
        online: a.online,
        at: (0..a.online * a.broadcasts)
            .map(|_| AtomicU64::new(0))
            .collect(),
        done: (0..a.broadcasts).map(|_| AtomicUsize::new(0)).collect(),
        closed: AtomicUsize::new(0),
    });
    let opening = Instant::now();
    let mut sinks = Vec::with_capacity(a.online);
    let mut opened_sockets = stream::iter(0..a.online)
        .map(|i| {
            let token = tokens[i].clone();
            async move { (i, open(addr, i, &token).await) }
        })
        .buffer_unordered(OPENING);
    while let Some((i, socket)) = opened_sockets.next().await {
        let (sink, stream) = socket?.split();
        sinks.push(sink);
        tokio::spawn(read(stream, i, arrivals.clone()));
    }
    drop(opened_sockets);
    let opened_s = opening.elapsed().as_secs_f64();

    let rows_before = (
        scalar(&store, "SELECT COUNT(*) AS n FROM broadcasts").await?,
        scalar(&store, "SELECT COUNT(*) AS n FROM messages").await?,
    );
    let mut rounds = Vec::new();
    let mut all_ms = Vec::new();
    for k in 0..a.broadcasts {
        // Let the sockets' ready frames and catch-ups settle first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_before = cpu_ms(pid);
        let sent = arrivals.origin.elapsed().as_nanos() as u64;
        let r = http
            .post(format!("{base}/v1/inboxes/{}/broadcasts", inbox.id))
            .bearer_auth(&seller_token)
            .json(&json!({"text": format!("broadcast {k}: 20% off today")}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let answered_ms = (arrivals.origin.elapsed().as_nanos() as u64 - sent) as f64 / 1e6;
        let status = r.status();
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("broadcast: {status} {body}"));
        }
        let waiting = Instant::now();
        while arrivals.done[k].load(Ordering::Relaxed) < a.online && waiting.elapsed() < ROUND_WAIT
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let cpu = match (cpu_before, cpu_ms(pid)) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
        let mut ms: Vec<f64> = arrivals.at[k * a.online..(k + 1) * a.online]
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
            .map(|t| t.saturating_sub(sent) as f64 / 1e6)
            .collect();
        all_ms.extend_from_slice(&ms);
        let (p50, p99, max) = spread(&mut ms);
        rounds.push(json!({
            "customers_reached": body["chats"],
            "sockets_reached": ms.len(),
            "answered_ms": answered_ms,
            "delivered_ms_p50": p50,
            "delivered_ms_p99": p99,
            "delivered_ms_max": max,
            "server_cpu_ms": cpu,
        }));
    }
    let rows_after = (
        scalar(&store, "SELECT COUNT(*) AS n FROM broadcasts").await?,
        scalar(&store, "SELECT COUNT(*) AS n FROM messages").await?,
    );

    // Listings afterwards: online customers' and offline ones', each checked.
    let mut listing_ms = Vec::new();
    let listed = with_session as usize;
    for run in 0..a.runs {
        let c = (run * 7919) % listed;
        let url = format!(
            "{base}/web/broadcasts?username={}&token={}&perPage=20",
            phone(c as i64 + 1),
            tokens[c]
        );
        let started = Instant::now();
        let r = http.get(url).send().await.map_err(|e| e.to_string())?;
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        listing_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if v["_meta"]["totalCount"] != json!(a.broadcasts) {
            return Err(format!("customer {c} lists {v}"));
        }
    }
    let (list_p50, list_p99, list_max) = spread(&mut listing_ms);
    let (p50, p99, max) = spread(&mut all_ms);
    let line = json!({
        "backend": if backend == DbBackend::Postgres { "postgres" } else { "sqlite" },
        "customers": a.customers,
        "online": a.online,
        "filled_s": filled_s,
        "sockets_opened_s": opened_s,
        "sockets_closed": arrivals.closed.load(Ordering::Relaxed),
        "broadcasts": a.broadcasts,
        "rounds": rounds,
        "delivered_ms_p50": p50,
        "delivered_ms_p99": p99,
        "delivered_ms_max": max,
        "rows_written": {
            "broadcasts": rows_after.0 - rows_before.0,
            "messages": rows_after.1 - rows_before.1,
        },
        "listing_ms_p50": list_p50,
        "listing_ms_p99": list_p99,
        "listing_ms_max": list_max,
    });
    println!("{line}");
    drop(sinks);
    drop(server);
    drop(core);
    let _ = store.close().await;
    if a.database.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    Ok(())
}
