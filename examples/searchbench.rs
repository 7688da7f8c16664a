//! Search and chat lists over a large organisation: fills a database with N messages
//! (straight SQL, many rows a statement, big transactions), builds the search index, then
//! times searches (common, middling and rare words; as the admin, an operator and a
//! customer) and pages of the chat list (the first and the twentieth; admin and operator),
//! straight into the core. Prints a Markdown table of p50 / p99 in milliseconds.
//!
//! ```sh
//! cargo run --release --example searchbench -- --messages 1000000
//! psql -h 127.0.0.1 -d postgres -c "CREATE DATABASE souq_searchbench"
//! cargo run --release --example searchbench -- \
//!     --database postgres://root@127.0.0.1:5432/souq_searchbench
//! ```
//! Without `--database` it uses a fresh SQLite file in the temp folder (removed after).
//! A PostgreSQL database should be empty. The organisation is `common/fill.rs`'s.

use std::time::Duration;

use sea_orm::DbBackend;
use souq::domain::Principal;
use souq::store::Store;

#[path = "common/mod.rs"]
mod common;
#[path = "common/fill.rs"]
mod fill;

struct Args {
    database: Option<String>,
    messages: u64,
    /// Timed runs of each measurement.
    runs: usize,
    /// Measure a database an earlier run filled (`--reuse yes`), without filling it.
    reuse: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        database: None,
        messages: 10_000_000,
        runs: 100,
        reuse: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--database" => a.database = Some(v),
            "--messages" => a.messages = num(&v)?.max(1000),
            "--runs" => a.runs = num(&v)?.max(1) as usize,
            "--reuse" => a.reuse = v == "yes",
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("searchbench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let file = std::env::temp_dir().join(format!("souq-searchbench-{}.db", std::process::id()));
    let url = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", file.display()));
    let store = Store::open(&url, 8).await.map_err(|e| e.to_string())?;
    let backend = store.backend();
    let core = common::core(store.clone(), "souq-searchbench")?;
    let e = |e: souq::domain::Error| e.to_string();

    let fill::Filled {
        org_id,
        admin,
        operators,
        customer0,
        customers,
        messages: n,
        ..
    } = if a.reuse {
        fill::existing(&store).await?
    } else {
        fill::fill(&core, &store, a.messages).await?
    };

    // The measurements.
    let operator = Principal::Operator {
        org_id,
        operator_id: operators[operators.len() / 2],
    };
    let customer = Principal::Customer {
        org_id,
        customer_id: customer0 + 1 + customers / 2,
    };
    let words = |ranks: std::ops::Range<usize>| -> Vec<String> {
        ranks.step_by(1).map(fill::word).collect()
    };
    let common = words(0..20);
    let middling = words(1_000..1_020);
    let rare = words(30_000..30_020);
    let pairs: Vec<String> = (0..20)
        .map(|i| format!("{} {}", fill::word(7 + i), fill::word(500 + i * 7)))
        .collect();
    let backend_name = match backend {
        DbBackend::Postgres => "PostgreSQL",
        _ => "SQLite",
    };
    println!("| backend | messages | what | p50 ms | p99 ms |");
    println!("|---|---:|---|---:|---:|");
    let row = |what: &str, (p50, p99): (f64, f64)| {
        println!("| {backend_name} | {n} | {what} | {p50:.1} | {p99:.1} |");
    };
    for (who_name, who) in [
        ("admin", &admin),
        ("operator (2% of chats)", &operator),
        ("customer", &customer),
    ] {
        for (kind, queries) in [
            ("common word", &common),
            ("middling word", &middling),
            ("rare word", &rare),
            ("two words", &pairs),
        ] {
            let timing = fill::time(a.runs, |i| {
                let q = queries[i % queries.len()].clone();
                let core = core.clone();
                async move {
                    core.search(who, Some(&q), None, Some(20))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await?;
            row(&format!("search, {kind}, {who_name}"), timing);
        }
    }
    for (who_name, who) in [("admin", &admin), ("operator (2% of chats)", &operator)] {
        let timing = fill::time(a.runs, |_| {
            let core = core.clone();
            async move {
                core.list_chats(
                    who,
                    &souq::domain::desk::ChatFilter::default(),
                    None,
                    Some(50),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        })
        .await?;
        row(&format!("chat list, first page, {who_name}"), timing);
        let mut next = None;
        for _ in 0..19 {
            next = core
                .list_chats(
                    who,
                    &souq::domain::desk::ChatFilter::default(),
                    next.as_deref(),
                    Some(50),
                )
                .await
                .map_err(e)?
                .next;
        }
        let timing = fill::time(a.runs, |_| {
            let (core, next) = (core.clone(), next.clone());
            async move {
                core.list_chats(
                    who,
                    &souq::domain::desk::ChatFilter::default(),
                    next.as_deref(),
                    Some(50),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        })
        .await?;
        row(&format!("chat list, 20th page, {who_name}"), timing);
    }
    drop(core);
    store.close().await.map_err(|e| e.to_string())?;
    if a.database.is_none() && !a.reuse {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
