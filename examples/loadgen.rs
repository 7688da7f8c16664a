//! Load generator for souq: R chats × M sockets, one sender per chat, over one or more
//! nodes. Prints one JSON line: sends/s, deliveries/s, send→deliver latency percentiles,
//! lost and duplicated deliveries, and the CPU time and RSS of the given processes.
//!
//! It needs an organisation (`souq org create`), and signs in as it to set up people and
//! chats over REST. A chat is as a real one is: its M sockets are M different people, each
//! with a session of their own, which the server spreads over its socket threads (it places
//! a socket by its person, see `src/socket/threads.rs`). The first
//! socket is the customer's, and sends. The others are operators: each chat is with a store
//! of its own (an inbox), the second socket is its seller's and the rest are more operators
//! assigned to that store. Each send so reaches exactly M sockets.
//! `--devices`: the old scenario instead, the M sockets are devices of the chat's customer,
//! in the domain's own inbox (with `--receipts`, in a store of its own, the second socket
//! its seller's), all the customer's sockets on one server thread.
//! Once the sockets are open, the run waits for the `--pids` to go quiet (what the
//! connections set off, such as the operators' presence, done) before it measures.
//! Every delivery is checked: each socket must see each message once, in seq order.
//! `worst_ms_by_second` is the longest send→deliver of each second of the run, by send
//! time: a tail made of one stall shows as one high second.
//!
//! ```sh
//! cargo run --release --example loadgen -- --nodes http://127.0.0.1:8080 \
//!     --chats 200 --members 5 --rate 10 --seconds 20 --pids $(pgrep -d, souq)
//! ```
//! `--window W` instead of `--rate` runs closed loop: each sender keeps W sends unacked.
//! Start the server with `SOUQ_WS_FRAMES_PER_SEC` above the per-sender rate (closed loop:
//! far above), or the rate limit answers sends with errors (counted as sends without acks).
//!
//! `--receipts`: the chat's second socket, its store's seller's, sends `read` for every
//! message it gets, as a seller's app showing the chat would. Each read moves the
//! seller's cursors and marks the customer's messages read, and is pushed to the chat's
//! sockets as a `receipt` frame. Deliveries still count messages only.
//!
//! `--ceiling` drives `examples/ceiling` instead: sockets join `/room/N`, a send is the bare
//! text `"n nanos"`, and the sender's own copy counts as its ack.
//!
//! `--threads T` (default: one per core) splits the chats over T threads, each with a
//! runtime of its own; all the sockets of a chat are on one thread.
//!
//! `--webhook` registers a webhook for `message.created` pointing at a receiver this
//! program runs, and reports the events it got: per second, from commit (the message's
//! `created_at`) to arrival, and how many were missing or came twice by event id.
//!
//! `--idle N` opens N sockets that only stay connected, spread over source addresses
//! 127.0.0.2, .3, ..., and reports the server's RSS per socket: N distinct customers, each
//! with a chat of their own (in the domain's inbox) and one socket; with `--devices`,
//! devices of the R customers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Clone)]
struct Args {
    nodes: Vec<String>,
    email: String,
    password: String,
    organisation: String,
    chats: usize,
    members: usize,
    rate: f64,
    window: usize,
    seconds: u64,
    pids: Vec<u32>,
    ceiling: bool,
    idle: usize,
    receipts: bool,
    /// The sockets of a chat are devices of its customer rather than distinct people.
    devices: bool,
    threads: usize,
    /// The receiver's address, with `--webhook`.
    webhook: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        nodes: vec!["http://127.0.0.1:8080".into()],
        email: "owner@acme.test".into(),
        password: "correct horse".into(),
        organisation: "acme".into(),
        chats: 200,
        members: 5,
        rate: 10.0,
        window: 0,
        seconds: 20,
        pids: Vec::new(),
        ceiling: false,
        idle: 0,
        receipts: false,
        devices: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        webhook: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--ceiling" {
            a.ceiling = true;
            continue;
        }
        if flag == "--receipts" {
            a.receipts = true;
            continue;
        }
        if flag == "--devices" {
            a.devices = true;
            continue;
        }
        if flag == "--webhook" {
            a.webhook = Some(String::new());
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = v.split(',').map(str::to_owned).collect(),
            "--email" => a.email = v,
            "--password" => a.password = v,
            "--organisation" => a.organisation = v,
            "--chats" => a.chats = num(&v)? as usize,
            "--members" => a.members = num(&v)? as usize,
            "--rate" => a.rate = num(&v)?,
            "--window" => a.window = num(&v)? as usize,
            "--seconds" => a.seconds = num(&v)? as u64,
            "--idle" => a.idle = num(&v)? as usize,
            "--threads" => a.threads = num(&v)? as usize,
            "--pids" => {
                a.pids = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|p| p.parse().unwrap_or(0))
                    .collect()
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.chats == 0 || a.members == 0 || a.seconds == 0 {
        return Err("chats, members and seconds must be positive".into());
    }
    Ok(a)
}

/// Time the hypervisor gave to other machines (the steal column of /proc/stat), in clock
/// ticks: not work done here.
fn machine_stolen() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()
}

/// CPU time (user + system, in clock ticks) of every process but this load generator,
/// kernel threads included, by pid. Summed, it is the machine's busy time: the kernel's
/// loopback work runs inside the processes that send and receive. /proc/stat's busy
/// columns would be simpler, but they are samples taken at timer ticks, and on a machine
/// that is mostly idle they miss most of the short bursts a server at low load runs in
/// (one run read less than this process alone had used).
fn other_processes_cpu() -> HashMap<u32, u64> {
    let own = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter_map(|pid| Some((pid, proc_ticks(pid)?)))
        .collect()
}

/// CPU time (user + system, in clock ticks) of a process, all its threads, past and
/// present. The kernel scales the ticks to the exact run time.
fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU time (user + system, in clock ticks) and RSS (KiB) of a process.
fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let ticks = proc_ticks(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<Value, String> {
    let mut req = client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {v}"));
    }
    Ok(v)
}

// The same allocator as souq and the ceiling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// Setup and the idle mode run here; a measured run has threads of its own (see `run`).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(a).await {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// One chat of the run: its id (for the ceiling, whose rooms are numbered 0..R, its
/// number) and the token each of its sockets signs in with, in order (none for the
/// ceiling).
struct Room {
    id: i64,
    tokens: Vec<String>,
}

/// Requests of the setup in flight at once: the setup of a run of distinct people is
/// some 16 requests a chat, one after another within a chat.
const SETUP_CONCURRENCY: usize = 16;

/// The organisation's side of the setup: an admin token, and the domain the chats are in.
struct Org {
    http: reqwest::Client,
    base: String,
    admin: String,
    domain_id: i64,
    /// The domain's own inbox, the desk, with no operator assigned.
    desk: i64,
    run_id: String,
}

/// Signs in and makes the run's chats (see the header): for the ceiling only numbers.
/// With `--idle N` of distinct people, N customers with a chat each and one socket.
async fn setup(a: &Args) -> Result<Vec<Room>, String> {
    if a.ceiling {
        return Ok((0..a.chats as i64)
            .map(|id| Room {
                id,
                tokens: Vec::new(),
            })
            .collect());
    }
    // reqwest takes the process's TLS provider (souq builds it without its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = a.nodes[0].clone();
    let tokens = post(&http, format!("{base}/v1/auth/token"), None, json!({
        "email": a.email, "password": a.password, "organisation": a.organisation, "addon": "live_chat"
    }))
    .await?;
    let admin = tokens["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_owned();
    let run_id = format!("{:x}", rand_id());
    let domain = post(
        &http,
        format!("{base}/v1/domains"),
        Some(&admin),
        json!({"name": format!("load-{run_id}.test")}),
    )
    .await?;
    let domain_id = domain["domain"]["id"].as_i64().ok_or("no domain id")?;
    if let Some(url) = a.webhook.as_deref() {
        post(
            &http,
            format!("{base}/v1/webhooks"),
            Some(&admin),
            json!({"url": url, "events": ["message.created"]}),
        )
        .await?;
    }
    let org = Org {
        desk: domain["inbox"]["id"].as_i64().ok_or("no inbox")?,
        http,
        base,
        admin,
        domain_id,
        run_id,
    };
    // Idle sockets of distinct people: one customer each, alone in a chat of the desk.
    let (chats, members) = if a.idle > 0 && !a.devices {
        (a.idle, 1)
    } else {
        (a.chats, a.members)
    };
    // Operators of a chat: with distinct people all but the customer; with devices only
    // the seller who reads (with fewer than two sockets a chat has no seller's socket).
    let operators = if a.devices {
        usize::from(a.receipts && members >= 2)
    } else {
        members - 1
    };
    let org = &org;
    futures_util::stream::iter(0..chats)
        .map(|i| chat(org, i, members, operators))
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Chat `i`: a customer's chat with `members` sockets. With operators, in a store inbox of
/// its own with them assigned (the first is its seller), each with a session: the
/// customer's socket first, then one for each operator, then devices of the customer for
/// the rest. Without, in the desk.
async fn chat(org: &Org, i: usize, members: usize, operators: usize) -> Result<Room, String> {
    let Org {
        http,
        base,
        admin,
        run_id,
        ..
    } = org;
    let inbox = if operators > 0 {
        let inbox = post(
            http,
            format!("{base}/v1/inboxes"),
            Some(admin),
            json!({"domain_id": org.domain_id, "unique_id": format!("store-{i}")}),
        )
        .await?;
        inbox["id"].as_i64().ok_or("no inbox id")?
    } else {
        org.desk
    };
    let staff = futures_util::future::try_join_all((0..operators).map(|k| async move {
        let role = if k == 0 { "seller" } else { "operator" };
        let op = post(
            http,
            format!("{base}/v1/operators"),
            Some(admin),
            json!({"email": format!("{role}-{run_id}-{i}-{k}@load.test")}),
        )
        .await?;
        let op = op["id"].as_i64().ok_or("no operator id")?;
        post(
            http,
            format!("{base}/v1/assignments"),
            Some(admin),
            json!({"operator_id": op, "inbox_id": inbox}),
        )
        .await?;
        let s = post(
            http,
            format!("{base}/v1/operators/{op}/sessions"),
            Some(admin),
            json!({}),
        )
        .await?;
        Ok::<_, String>(s["token"].as_str().ok_or("no token")?.to_owned())
    }))
    .await?;
    let c = post(
        http,
        format!("{base}/v1/customers"),
        Some(admin),
        json!({"external_id": format!("load-{run_id}-{i}")}),
    )
    .await?;
    let id = c["id"].as_i64().ok_or("no customer id")?;
    let s = post(
        http,
        format!("{base}/v1/customers/{id}/sessions"),
        Some(admin),
        json!({}),
    )
    .await?;
    let customer = s["token"].as_str().ok_or("no token")?.to_owned();
    let chat = post(
        http,
        format!("{base}/v1/chats"),
        Some(&customer),
        json!({"inbox_id": inbox}),
    )
    .await?;
    let mut tokens = vec![customer.clone()];
    tokens.extend(staff);
    tokens.resize(members.max(1), customer);
    Ok(Room {
        id: chat["id"].as_i64().ok_or("no chat id")?,
        tokens,
    })
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens socket number `m` of `room` to `node`, from `source` when given.
async fn connect(
    a: &Args,
    node: &str,
    room: &Room,
    m: usize,
    source: Option<std::net::Ipv4Addr>,
) -> Result<Socket, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_now(a, node, room, m, source))
        .await
        .map_err(|_| format!("no connection to {node} within {CONNECT_TIMEOUT:?}"))?
}

async fn connect_now(
    a: &Args,
    node: &str,
    room: &Room,
    m: usize,
    source: Option<std::net::Ipv4Addr>,
) -> Result<Socket, String> {
    let url = if a.ceiling {
        format!("{}/room/{}", node.replacen("http", "ws", 1), room.id)
    } else {
        format!("{}/v1/ws", node.replacen("http", "ws", 1))
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(token) = room.tokens.get(m) {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().map_err(|_| "token")?,
        );
    }
    let host = node
        .split("://")
        .nth(1)
        .unwrap_or(node)
        .trim_end_matches('/');
    let target: std::net::SocketAddr = tokio::net::lookup_host(host)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(std::net::SocketAddr::from((ip, 0)))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let tcp = socket.connect(target).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    // tungstenite zeroes its whole read buffer (128 KiB by default) before each read from
    // the socket; at a read per frame that was most of the load generator's CPU.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// What a socket reads at a time.
const READ_BUFFER: usize = 8 * 1024;

/// Longest one socket's connection (TCP and upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest all the sockets of a run may take to connect.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// RSS (KiB) of the given pids, summed.
fn rss_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| proc_stat(*p))
        .map(|(_, rss)| rss)
        .sum()
}

/// Sockets per source address. The kernel has about 28,000 ephemeral ports per address,
/// and a run's ports stay in TIME_WAIT for a minute after it: at 10,000 per address the
/// third run of 19,000 sockets within a minute found none left.
const PER_SOURCE: usize = 2_000;

/// Opens `a.idle` sockets that only stay connected; prints the server's RSS per socket.
async fn run_idle(a: &Args, rooms: &[Room]) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_of(&a.pids);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(a.idle);
    let mut readers = Vec::with_capacity(a.idle);
    let frames = Arc::new(AtomicU64::new(0));
    for i in 0..a.idle {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8);
        let node = &a.nodes[i % a.nodes.len()];
        let ws = connect(a, node, &rooms[i % rooms.len()], 0, Some(source)).await?;
        let (sink, mut stream) = ws.split();
        let frames = frames.clone();
        // Read (and so answer pings) without keeping anything.
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = stream.next().await {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        }));
        sockets.push(sink);
    }
    let opened_in = started.elapsed().as_secs_f64();
    // Let the server settle (ready frames, catch-ups) before reading its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_of(&a.pids);
    let held = Duration::from_secs(a.seconds);
    tokio::time::sleep(held).await;
    let still_open = readers.iter().filter(|r| !r.is_finished()).count();
    let line = json!({
        "server": if a.ceiling { "ceiling" } else { "souq" },
        "mode": format!("idle {}{}", a.idle, if a.devices && !a.ceiling { ", devices" } else { "" }),
        "nodes": a.nodes.len(),
        "sockets": a.idle,
        "opened_in_s": opened_in,
        "still_open_after_s": [a.seconds, still_open],
        "server_rss_kib_before": before,
        "server_rss_kib_after": after,
        "server_rss_kib_per_socket": (after.saturating_sub(before)) as f64 / a.idle as f64,
        "frames_received": frames.load(Ordering::Relaxed),
    });
    println!("{line}");
    for r in readers {
        r.abort();
    }
    drop(sockets);
    Ok(())
}

/// Counters of one shard. Only its own thread writes them during the run (so no cache
/// line moves between the cores per delivery); the main thread reads them.
#[derive(Default)]
struct Counters {
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    sends: AtomicU64,
    acks: AtomicU64,
    /// `read` frames sent, and `receipt` frames received.
    reads: AtomicU64,
    receipts: AtomicU64,
}

/// One thread's share of the run: its counters and its latency histogram. Aligned so that
/// two shards never share a cache line.
#[repr(align(128))]
struct Shard {
    counters: Counters,
    latency: Mutex<Latency>,
}

/// Send→deliver latencies: all of them, and the longest of each second by send time
/// (since [`Run::start`]), which shows whether a long tail is spread or one stall.
struct Latency {
    all: Histogram<u64>,
    worst_by_second: Vec<u64>,
}

impl Latency {
    fn new() -> Result<Latency, String> {
        Ok(Latency {
            all: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
            worst_by_second: Vec::new(),
        })
    }

    fn record(&mut self, sent_ns: u64, us: u64) {
        let _ = self.all.record(us);
        let second = (sent_ns / 1_000_000_000) as usize;
        if second >= self.worst_by_second.len() {
            self.worst_by_second.resize(second + 1, 0);
        }
        self.worst_by_second[second] = self.worst_by_second[second].max(us);
    }
}

/// What the shards share with the main thread.
struct Run {
    a: Args,
    /// Send times in the frames are nanoseconds since this.
    start: Instant,
    /// Senders still sending; the main thread waits for none.
    senders_left: AtomicUsize,
}

/// What a socket does besides counting what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The chat's first socket: sends, at the rate or keeping the window full.
    Sender,
    /// With `--receipts`, the chat's second socket, its seller's: sends `read` for every
    /// message.
    Reader,
    Member,
}

/// Waits (up to 20 s) until the given processes are quiet: what the connections set off
/// (an operator's socket sets their presence and routes their inboxes, a write each)
/// is done before the run is measured. Quiet: under 10% of a core for half a second.
/// Returns the seconds it waited.
async fn settle(pids: &[u32]) -> f64 {
    let busy = || pids.iter().filter_map(|p| proc_ticks(*p)).sum::<u64>();
    let started = Instant::now();
    let mut last = busy();
    while started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = busy();
        if now - last <= 5 {
            break;
        }
        last = now;
    }
    started.elapsed().as_secs_f64()
}

/// Sums a counter over the shards.
fn total(shards: &[Arc<Shard>], counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
    shards
        .iter()
        .map(|s| counter(&s.counters).load(Ordering::Relaxed))
        .sum()
}

async fn run(a: Args) -> Result<(), String> {
    // A server that could not bind its port has exited by now, and whatever holds the
    // port would be measured in its place, without its CPU: refuse instead.
    if let Some(pid) = a.pids.iter().find(|p| proc_stat(**p).is_none()) {
        return Err(format!(
            "pid {pid} of --pids is not running (did its server fail to start?)"
        ));
    }
    let mut a = a;
    let hooks = match a.webhook {
        Some(_) => {
            let (url, hooks) = Hooks::start().await?;
            a.webhook = Some(url);
            Some(hooks)
        }
        None => None,
    };
    let rooms = setup(&a).await?;
    if a.idle > 0 {
        return run_idle(&a, &rooms).await;
    }
    // Every socket of a chat lives on one thread with a runtime of its own: a send, its
    // deliveries and its ack never cross between threads, and the load generator takes
    // as little of the machine as it can.
    let threads = a.threads.clamp(1, rooms.len());
    let senders = rooms.len();
    let run = Arc::new(Run {
        a,
        start: Instant::now(),
        senders_left: AtomicUsize::new(senders),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut by_shard: Vec<Vec<(usize, Room)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, room) in rooms.into_iter().enumerate() {
        by_shard[i % threads].push((i, room));
    }
    let mut shards = Vec::new();
    let mut handles = Vec::new();
    for (t, rooms) in by_shard.into_iter().enumerate() {
        let shard = Arc::new(Shard {
            counters: Counters::default(),
            latency: Mutex::new(Latency::new()?),
        });
        shards.push(shard.clone());
        let (run, ready) = (run.clone(), ready_tx.clone());
        let (go, stop) = (go_rx.clone(), stop_rx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(shard_main(run, shard, rooms, ready, go, stop));
            })
            .map_err(|e| e.to_string())?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..threads {
        tokio::time::timeout(SETUP_TIMEOUT, ready_rx.recv())
            .await
            .map_err(|_| "the sockets did not all connect in time")?
            .ok_or("a load generator thread stopped")??;
    }
    let a = &run.a;
    let settled_in = settle(&a.pids).await;
    let before: Vec<Option<(u64, u64)>> = a.pids.iter().map(|p| proc_stat(*p)).collect();
    let (others_before, stolen_before, own_before) = (
        other_processes_cpu(),
        machine_stolen(),
        proc_ticks(std::process::id()),
    );
    let measure_start = Instant::now();
    go_tx.send_replace(Some(measure_start));
    // Senders stop at the deadline whatever the server does; the bound is a safety net.
    let bound = Duration::from_secs(a.seconds + 10);
    while run.senders_left.load(Ordering::Acquire) > 0 && measure_start.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = measure_start.elapsed().as_secs_f64();
    let after: Vec<Option<(u64, u64)>> = a.pids.iter().map(|p| proc_stat(*p)).collect();
    let (others_after, stolen_after, own_after) = (
        other_processes_cpu(),
        machine_stolen(),
        proc_ticks(std::process::id()),
    );
    // Let in-flight deliveries land before counting.
    let sends = total(&shards, |c| &c.sends);
    let expected = sends * a.members as u64;
    let drain = Instant::now();
    while total(&shards, |c| &c.deliveries) < expected && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send_replace(true);
    for h in handles {
        let _ = h.join();
    }
    let acks = total(&shards, |c| &c.acks);
    let webhook = match &hooks {
        Some(hooks) => Some(hooks.report(acks, elapsed).await),
        None => None,
    };
    let deliveries = total(&shards, |c| &c.deliveries);
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let mut cpu_s = 0.0;
    let mut procs = Vec::new();
    for ((pid, b), af) in a.pids.iter().zip(&before).zip(&after) {
        if let (Some((t0, _)), Some((t1, rss))) = (b, af) {
            let s = (t1 - t0) as f64 / ticks_per_s;
            cpu_s += s;
            procs.push(json!({"pid": pid, "cpu_s": s, "rss_kib": rss}));
        }
    }
    // Everything but this load generator: the nodes, the database, Redis, the kernel. A
    // process that started during the run counts whole; one that ended is missed.
    let server_side_ticks: u64 = others_after
        .iter()
        .map(|(pid, t1)| t1.saturating_sub(others_before.get(pid).copied().unwrap_or(0)))
        .sum();
    let server_side_s = server_side_ticks as f64 / ticks_per_s;
    // Share of the machine's cores taken by other machines during the run: a busy host
    // slows every figure of the run, and makes the tail longer.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let stolen_percent = match (stolen_before, stolen_after) {
        (Some(s0), Some(s1)) => (s1 - s0) as f64 / ticks_per_s / elapsed / cores * 100.0,
        _ => 0.0,
    };
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    // Seconds of the measured run, by send time, from the go.
    let first_second = measure_start.duration_since(run.start).as_secs() as usize;
    let mut worst_by_second = Vec::new();
    for shard in &shards {
        let latency = shard.latency.lock().unwrap_or_else(|e| e.into_inner());
        h.add(&latency.all).map_err(|e| e.to_string())?;
        for (i, &us) in latency
            .worst_by_second
            .iter()
            .enumerate()
            .skip(first_second)
        {
            let i = i - first_second;
            if i >= worst_by_second.len() {
                worst_by_second.resize(i + 1, 0);
            }
            worst_by_second[i] = worst_by_second[i].max(us);
        }
    }
    let worst_ms: Vec<f64> = worst_by_second
        .iter()
        .map(|&us| (us / 100) as f64 / 10.0)
        .collect();
    let us = |q: f64| h.value_at_quantile(q);
    let line = json!({
        "nodes": a.nodes.len(), "chats": a.chats, "members": a.members,
        "server": if a.ceiling { "ceiling" } else { "souq" },
        "mode": format!(
            "{}{}{}",
            if a.window > 0 { format!("closed-loop w={}", a.window) } else { format!("rate {}/s per sender", a.rate) },
            if a.receipts && !a.ceiling { ", receipts" } else { "" },
            if a.devices && !a.ceiling { ", devices" } else { "" }
        ),
        "seconds": elapsed,
        "sends": sends, "acks": total(&shards, |c| &c.acks),
        "reads_sent": total(&shards, |c| &c.reads),
        "receipts_received": total(&shards, |c| &c.receipts),
        "sends_per_s": sends as f64 / elapsed,
        "deliveries": deliveries, "deliveries_per_s": deliveries as f64 / elapsed,
        "undelivered_10s_after": expected.saturating_sub(deliveries),
        "duplicated": total(&shards, |c| &c.duplicates),
        "latency_us": {"p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999), "max": h.max()},
        "worst_ms_by_second": worst_ms,
        "processes": procs,
        "cpu_us_per_delivery": if deliveries > 0 { cpu_s * 1e6 / deliveries as f64 } else { 0.0 },
        "machine_cpu_s_without_loadgen": server_side_s,
        "all_in_cpu_us_per_delivery": if deliveries > 0 { server_side_s * 1e6 / deliveries as f64 } else { 0.0 },
        "stolen_percent": stolen_percent,
        "loadgen_threads": threads,
        "settled_in_s": settled_in,
        "loadgen_cpu_s": own_after.zip(own_before).map_or(0.0, |(a, b)| (a - b) as f64 / ticks_per_s),
        "webhook": webhook,
    });
    println!("{line}");
    Ok(())
}

/// One thread's sockets: connects them, says it is ready, starts them all on `go`, and
/// drops them on `stop`.
async fn shard_main(
    run: Arc<Run>,
    shard: Arc<Shard>,
    rooms: Vec<(usize, Room)>,
    ready: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    mut go: tokio::sync::watch::Receiver<Option<Instant>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let a = &run.a;
    let mut sockets = Vec::new();
    for (i, room) in &rooms {
        for m in 0..a.members {
            // Sockets go round-robin over the nodes, in the order of the chats.
            let node = &a.nodes[(i * a.members + m) % a.nodes.len()];
            let part = match m {
                0 => Part::Sender,
                1 if a.receipts && !a.ceiling => Part::Reader,
                _ => Part::Member,
            };
            match connect(a, node, room, m, None).await {
                Ok(ws) => {
                    sockets.push((ws, room.id, part, *i));
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
    }
    let _ = ready.send(Ok(()));
    let Ok(measure_start) = go
        .wait_for(Option::is_some)
        .await
        .map(|g| g.unwrap_or(run.start))
    else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (ws, chat_id, part, index) in sockets {
        let s = SocketRun {
            run: run.clone(),
            shard: shard.clone(),
            chat_id,
            part,
            last: 0,
            unacked: 0,
        };
        tasks.spawn(s.drive(ws, index, measure_start));
    }
    let _ = stop.wait_for(|s| *s).await;
    tasks.abort_all();
}

/// What a socket's frame was, to the load generator.
enum Seen {
    /// A message of the socket's chat: its seq, and when it was sent.
    Delivery(i64, u64),
    /// The answer to a send (an error answers it too).
    Answer {
        ack: bool,
    },
    Receipt,
    Other,
}

/// The parts of a server frame the load generator reads.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    chat_id: Option<i64>,
    #[serde(borrow)]
    message: Option<FrameMessage<'a>>,
}

#[derive(serde::Deserialize)]
struct FrameMessage<'a> {
    seq: i64,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

/// One socket's task and what it keeps.
struct SocketRun {
    run: Arc<Run>,
    shard: Arc<Shard>,
    chat_id: i64,
    part: Part,
    /// The newest seq seen: seqs must only grow.
    last: i64,
    /// Sends not yet answered.
    unacked: usize,
}

/// Counts a sender out when it stops, however it stops.
struct Sending<'a>(Option<&'a AtomicUsize>);

impl Sending<'_> {
    fn stop(&mut self) {
        if let Some(left) = self.0.take() {
            // Release: the main thread reads the sends counted before this.
            left.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SocketRun {
    /// Reads the socket until it closes (or the run stops): counts each delivery once,
    /// checks seqs only grow, sends `read` for each message (a reader), and sends at the
    /// rate or keeping the window full (the sender) until the deadline. What is ready is
    /// written before one flush.
    async fn drive(mut self, mut ws: Socket, index: usize, measure_start: Instant) {
        let run = self.run.clone();
        let a = &run.a;
        let deadline =
            tokio::time::Instant::from_std(measure_start + Duration::from_secs(a.seconds));
        let mut sending = Sending((self.part == Part::Sender).then_some(&run.senders_left));
        // Senders are spread evenly over the period, as independent users would be,
        // rather than all firing on the same tick.
        let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
        let offset = period * index as u32 / a.chats.max(1) as u32;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        let mut n = 0u64;
        let mut reads = Vec::new();
        let stop = tokio::time::sleep_until(deadline);
        tokio::pin!(stop);
        loop {
            if sending.0.is_some() && tokio::time::Instant::now() >= deadline {
                sending.stop();
            }
            if sending.0.is_some() && a.window > 0 && self.unacked < a.window {
                while self.unacked < a.window {
                    n += 1;
                    if !self.feed_send(&mut ws, n).await {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            tokio::select! {
                biased;
                msg = ws.next() => {
                    let Some(Ok(msg)) = msg else { return };
                    self.take(msg, &mut reads);
                    // Everything already read in, before one flush.
                    while let Some(Some(Ok(msg))) = ws.next().now_or_never() {
                        self.take(msg, &mut reads);
                    }
                    if !reads.is_empty() {
                        for read in reads.drain(..) {
                            if ws.feed(read).await.is_err() {
                                return;
                            }
                            self.shard.counters.reads.fetch_add(1, Ordering::Relaxed);
                        }
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                }
                _ = tick.tick(), if sending.0.is_some() && a.window == 0 => {
                    if tokio::time::Instant::now() >= deadline {
                        continue;
                    }
                    n += 1;
                    if !self.feed_send(&mut ws, n).await || ws.flush().await.is_err() {
                        return;
                    }
                }
                // Whatever the rate, and whether or not the server answers, a sender stops
                // at the deadline.
                _ = &mut stop, if sending.0.is_some() => {}
            }
        }
    }

    /// Queues send number `n` (not flushed); false if the socket failed.
    async fn feed_send(&mut self, ws: &mut Socket, n: u64) -> bool {
        let sent_at = self.run.start.elapsed().as_nanos();
        let frame = if self.run.a.ceiling {
            format!("{n} {sent_at}")
        } else {
            format!(
                r#"{{"type":"send","chat_id":{},"local_id":"{n}","text":"{sent_at}"}}"#,
                self.chat_id
            )
        };
        if ws.feed(Message::Text(frame.into())).await.is_err() {
            return false;
        }
        self.unacked += 1;
        self.shard.counters.sends.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Counts one frame; a reader's `read` for it goes into `reads`.
    fn take(&mut self, msg: Message, reads: &mut Vec<Message>) {
        let Message::Text(text) = msg else { return };
        let counters = &self.shard.counters;
        let seen = self.seen(&text);
        if let (Seen::Delivery(..), true, Part::Sender) = (&seen, self.run.a.ceiling, self.part) {
            // The ceiling has no acks: the sender's own copy of a send answers it.
            counters.acks.fetch_add(1, Ordering::Relaxed);
            self.unacked = self.unacked.saturating_sub(1);
        }
        match seen {
            Seen::Delivery(seq, sent) => {
                let now = self.run.start.elapsed().as_nanos() as u64;
                if seq <= self.last {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.last = seq;
                counters.deliveries.fetch_add(1, Ordering::Relaxed);
                if self.part == Part::Reader {
                    let chat_id = self.chat_id;
                    let read = format!(r#"{{"type":"read","chat_id":{chat_id},"seq":{seq}}}"#);
                    reads.push(Message::Text(read.into()));
                }
                self.shard
                    .latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(sent, now.saturating_sub(sent) / 1000);
            }
            Seen::Answer { ack } => {
                if ack {
                    counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                self.unacked = self.unacked.saturating_sub(1);
            }
            Seen::Receipt => {
                counters.receipts.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Other => {}
        }
    }

    fn seen(&self, text: &str) -> Seen {
        if self.run.a.ceiling {
            // Every frame is a send: "n nanos".
            let (n, sent) = text.split_once(' ').unwrap_or(("", ""));
            return match n.parse::<i64>().ok().zip(sent.parse::<u64>().ok()) {
                Some((seq, sent)) => Seen::Delivery(seq, sent),
                None => Seen::Other,
            };
        }
        // Only the fields needed, borrowed: the load generator should cost little.
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
            return Seen::Other;
        };
        match frame.kind {
            "message" if frame.chat_id == Some(self.chat_id) => frame
                .message
                .and_then(|m| Some(Seen::Delivery(m.seq, m.text.parse().ok()?)))
                .unwrap_or(Seen::Other),
            "receipt" => Seen::Receipt,
            "ack" => Seen::Answer { ack: true },
            // An error (rate limit, say) answers a send as well: it frees the window.
            "error" => Seen::Answer { ack: false },
            _ => Seen::Other,
        }
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The webhook receiver of `--webhook`: every post's event id, and the time from the
/// message's commit to the post's arrival.
struct Hooks {
    seen: Arc<Mutex<HookCounts>>,
}

struct HookCounts {
    ids: std::collections::HashSet<String>,
    duplicated: u64,
    latency_ms: Histogram<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Hooks {
    async fn start() -> Result<(String, Hooks), String> {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let url = format!(
            "http://{}/hooks",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let seen = Arc::new(Mutex::new(HookCounts {
            ids: Default::default(),
            duplicated: 0,
            latency_ms: Histogram::new_with_bounds(1, 3_600_000, 3).map_err(|e| e.to_string())?,
            first: None,
            last: None,
        }));
        let counts = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counts = counts.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let counts = counts.clone();
                            async move {
                                let raw = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let now_ms = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0, |d| d.as_millis() as i64);
                                if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&raw)
                                {
                                    let id = body["id"].as_str().unwrap_or("").to_owned();
                                    let at = body["data"]["message"]["created_at"]
                                        .as_i64()
                                        .unwrap_or(now_ms);
                                    let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                                    if c.ids.insert(id) {
                                        let _ = c.latency_ms.record((now_ms - at).max(1) as u64);
                                    } else {
                                        c.duplicated += 1;
                                    }
                                    let now = Instant::now();
                                    c.first.get_or_insert(now);
                                    c.last = Some(now);
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((url, Hooks { seen }))
    }

    /// Waits (up to 30 s) for an event of each of the `acks` stored messages, then reports.
    async fn report(&self, acks: u64, elapsed: f64) -> serde_json::Value {
        let waited = Instant::now();
        loop {
            let got = self.seen.lock().map_or(0, |c| c.ids.len() as u64);
            if got >= acks || waited.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let c = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let got = c.ids.len() as u64;
        let span = match (c.first, c.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(elapsed.min(1.0)),
            _ => elapsed,
        };
        let ms = |q: f64| c.latency_ms.value_at_quantile(q);
        json!({
            "events": got, "missing": acks.saturating_sub(got), "duplicated": c.duplicated,
            "events_per_s": got as f64 / span,
            "commit_to_receiver_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": c.latency_ms.max()},
        })
    }
}
