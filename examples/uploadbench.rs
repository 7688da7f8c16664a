//! Upload benchmark: N concurrent uploads of M MiB each into one chat of a running souq,
//! each body streamed from here as it is made (never whole in this process either).
//! Prints one JSON line: the time, the throughput, and the server's RSS before and at its
//! peak (sampled every 10 ms from /proc), with the growth per upload in flight.
//!
//! ```sh
//! bench/uploads.sh            # starts a release souq on SQLite and runs this against it
//! cargo run --release --example uploadbench -- --node http://127.0.0.1:18082 \
//!     --uploads 50 --mib 10 --pid $(pgrep -n souq)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

struct Args {
    node: String,
    uploads: usize,
    mib: usize,
    pid: u32,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        node: "http://127.0.0.1:18082".into(),
        uploads: 50,
        mib: 10,
        pid: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--node" => a.node = value,
            "--uploads" => a.uploads = value.parse().map_err(|e| format!("{e}"))?,
            "--mib" => a.mib = value.parse().map_err(|e| format!("{e}"))?,
            "--pid" => a.pid = value.parse().map_err(|e| format!("{e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.pid == 0 {
        return Err("--pid of the server is needed (its RSS is the point)".into());
    }
    Ok(a)
}

/// The process's resident set, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<Value, String> {
    let mut req = http.post(url).json(&body);
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

/// A PNG header, then `mib` MiB in 64 KiB chunks made as they are sent.
fn body(mib: usize) -> reqwest::Body {
    let chunk = 64 * 1024;
    let chunks = mib * 1024 * 1024 / chunk;
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let mut c = vec![(i % 251) as u8; chunk];
        if i == 0 {
            let head = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\x04\0\0\0\x03\0\x08\x02\0\0\0";
            c[..head.len()].copy_from_slice(head);
        }
        Ok::<_, std::io::Error>(Bytes::from(c))
    }));
    reqwest::Body::wrap_stream(stream)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("uploadbench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let a = args()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = &a.node;
    let tokens = post(&http, format!("{base}/v1/auth/token"), None, json!({
        "email": "owner@acme.test", "password": "correct horse", "organisation": "acme", "addon": "live_chat"
    }))
    .await?;
    let admin = tokens["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    let tag = format!("{:x}", std::process::id());
    let domain = post(
        &http,
        format!("{base}/v1/domains"),
        Some(&admin),
        json!({"name": format!("up-{tag}.test")}),
    )
    .await?;
    let inbox = domain["inbox"]["id"].as_i64().ok_or("no inbox")?;
    let c = post(
        &http,
        format!("{base}/v1/customers"),
        Some(&admin),
        json!({"external_id": format!("up-{tag}")}),
    )
    .await?;
    let id = c["id"].as_i64().ok_or("no customer")?;
    let s = post(
        &http,
        format!("{base}/v1/customers/{id}/sessions"),
        Some(&admin),
        json!({}),
    )
    .await?;
    let token = s["token"].as_str().ok_or("no session")?.to_owned();
    let chat = post(
        &http,
        format!("{base}/v1/chats"),
        Some(&token),
        json!({"inbox_id": inbox}),
    )
    .await?;
    let chat_id = chat["id"].as_i64().ok_or("no chat")?;

    let before = rss_kib(a.pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), a.pid);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    let uploads = (0..a.uploads).map(|i| {
        let (http, token) = (http.clone(), token.clone());
        let url = format!("{base}/v1/chats/{chat_id}/files?name=photo-{i}.png");
        let mib = a.mib;
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(body(mib))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                201 => Ok(()),
                s => Err(format!("{s}: {}", r.text().await.unwrap_or_default())),
            }
        }
    });
    let results = futures_util::future::join_all(uploads).await;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e}");
    }
    let peak = peak.load(Ordering::Relaxed);
    let mib_total = (a.uploads * a.mib) as f64;
    println!(
        "{}",
        json!({
            "uploads": a.uploads, "mib_each": a.mib, "failed": failed,
            "seconds": (seconds * 100.0).round() / 100.0,
            "mib_per_s": (mib_total / seconds * 10.0).round() / 10.0,
            "rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
            "rss_growth_per_upload_mib": ((peak.saturating_sub(before)) as f64 / 1024.0 / a.uploads as f64 * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
