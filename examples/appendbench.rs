//! The message writer alone: R chats, one sender each keeping W sends waiting, straight
//! into the core (no sockets, no JSON on the wire). Prints one JSON line with sends/s and
//! the CPU time per send of this process and of the whole machine (which includes
//! PostgreSQL). It isolates what persistence costs from what the sockets cost.
//!
//! ```sh
//! cargo run --release --example appendbench -- --chats 200 --window 4 --seconds 10
//! cargo run --release --example appendbench -- --database postgres://root@127.0.0.1/souq_bench
//! ```
//! `--per-chat N` stops after N sends per chat instead: the same work each run, for
//! `valgrind --tool=callgrind`, whose instruction counts do not depend on what else the
//! machine is doing. Without `--database` it uses a fresh SQLite file in the temp folder.
//! A PostgreSQL database should be empty (it gets a new organisation either way).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use souq::domain::{CustomerFields, NewDomain, NewMessage, Principal};
use souq::store::Store;

#[path = "common/mod.rs"]
mod common;

struct Args {
    database: Option<String>,
    chats: usize,
    window: usize,
    seconds: u64,
    /// Stop after this many sends per chat rather than after `seconds` (a fixed amount of
    /// work, for counting instructions under valgrind).
    per_chat: Option<u64>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        database: None,
        chats: 200,
        window: 4,
        seconds: 10,
        per_chat: None,
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
            "--chats" => a.chats = num(&v)?,
            "--window" => a.window = num(&v)?.max(1),
            "--seconds" => a.seconds = num(&v)? as u64,
            "--per-chat" => a.per_chat = Some(num(&v)? as u64),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// Busy and stolen ticks of the whole machine, and this process's CPU ticks.
fn ticks() -> (u64, u64, u64) {
    let (machine, stolen) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: steal is time the
            // hypervisor gave to others, not work done here.
            Some((
                v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)? - v.get(7)?,
                *v.get(7)?,
            ))
        })
        .unwrap_or((0, 0));
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (machine, stolen, own)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("appendbench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let file = std::env::temp_dir().join(format!("souq-appendbench-{}.db", std::process::id()));
    let url = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", file.display()));
    let store = Store::open(&url, 8).await.map_err(|e| e.to_string())?;
    let core = common::core(store, "souq-appendbench")?;
    let e = |e: souq::domain::Error| e.to_string();

    let (org_id, admin, tag) = common::organisation(&core).await?;
    let (_, inbox) = core
        .create_domain(
            &admin,
            NewDomain {
                name: format!("bench-{tag}.test"),
                email: None,
            },
        )
        .await
        .map_err(e)?;
    let mut chats = Vec::new();
    for i in 0..a.chats {
        let fields = CustomerFields {
            external_id: Some(format!("bench-{i}")),
            ..Default::default()
        };
        let (customer, _) = core.identify_customer(&admin, fields).await.map_err(e)?;
        let who = Principal::Customer {
            org_id,
            customer_id: customer.id,
        };
        let (chat, _) = core.open_chat(&who, inbox.id).await.map_err(e)?;
        chats.push((who, chat.id));
    }

    let sends = Arc::new(AtomicU64::new(0));
    let (machine0, stolen0, own0) = ticks();
    let started = Instant::now();
    let deadline = Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for (who, chat_id) in chats {
        let (core, sends, window) = (core.clone(), sends.clone(), a.window);
        let per_chat = a.per_chat;
        let more = move |n: u64| match per_chat {
            Some(max) => n < max,
            None => started.elapsed() < deadline,
        };
        tasks.push(tokio::spawn(async move {
            let mut waiting = VecDeque::new();
            let mut n = 0u64;
            while more(n) {
                while waiting.len() < window && more(n) {
                    n += 1;
                    let new = NewMessage {
                        local_id: Some(n.to_string()),
                        payload: None,
                        text: format!("message {n} of a benchmark"),
                        file_id: None,
                    };
                    match core.queue_send(&who, chat_id, new).await {
                        Ok(answer) => waiting.push_back(answer),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                if let Some(answer) = waiting.pop_front() {
                    answer.await.map_err(|e| e.to_string())?;
                    sends.fetch_add(1, Ordering::Relaxed);
                }
            }
            for answer in waiting {
                answer.await.map_err(|e| e.to_string())?;
                sends.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (machine1, stolen1, own1) = ticks();
    let n = sends.load(Ordering::Relaxed) as f64;
    let us = |ticks: u64| ticks as f64 * 10_000.0 / n.max(1.0);
    println!(
        "{}",
        serde_json::json!({
            "database": if a.database.is_some() { "postgres" } else { "sqlite" },
            "chats": a.chats, "window": a.window, "seconds": elapsed,
            "sends": n, "sends_per_s": n / elapsed,
            "process_cpu_us_per_send": us(own1 - own0),
            "machine_cpu_us_per_send": us(machine1 - machine0),
            "stolen_percent": (stolen1 - stolen0) as f64 / elapsed / cpus(),
        })
    );
    if a.database.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    Ok(())
}

/// Cores of the machine: 100% of one is 100 ticks a second.
fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}
