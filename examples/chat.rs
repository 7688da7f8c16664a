//! A small terminal chat client for souq's live socket.
//!
//! ```sh
//! cargo run --example chat -- --token $CUSTOMER --chat $CHAT
//! ```
//!
//! Lines you type are sent to the chat; messages, receipts, typing and presence of the
//! chat are printed as they arrive. Everything you are shown is marked read. `/file PATH`
//! uploads a file and sends it (a file message shows its name, size, type and link).
//! `/quit` ends.
//! It resumes from the last seq it saw when the server closes the socket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Args {
    url: String,
    token: String,
    chat: i64,
}

fn args() -> Result<Args, String> {
    let mut url = "ws://127.0.0.1:8080/v1/ws".to_owned();
    let (mut token, mut chat) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = value,
            "--token" => token = Some(value),
            "--chat" => chat = Some(value.parse().map_err(|_| "--chat takes a chat id")?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        url,
        token: token.ok_or("--token is required (an operator or customer session token)")?,
        chat: chat.ok_or("--chat is required")?,
    })
}

/// A JSON value as plain text: strings without their quotes.
fn plain(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn show(frame: &Value, chat: i64) {
    match frame["type"].as_str().unwrap_or("") {
        "message" if frame["chat_id"] == chat => {
            let m = &frame["message"];
            println!(
                "[{}] {} {}: {}",
                m["seq"],
                plain(&m["author"]["kind"]),
                m["author"]["id"],
                plain(&m["text"])
            );
            let f = &m["file"];
            if f.is_object() {
                println!(
                    "    [file {} ({} bytes, {}) {}]",
                    plain(&f["name"]),
                    f["size"],
                    plain(&f["content_type"]),
                    plain(&f["url"])
                );
            }
        }
        "receipt" if frame["chat_id"] == chat => println!(
            "   ({} {} received {} read {})",
            plain(&frame["member"]["kind"]),
            frame["member"]["id"],
            frame["received_seq"],
            frame["read_seq"]
        ),
        "typing" if frame["chat_id"] == chat && frame["typing"] == true => {
            println!(
                "   ({} {} is typing)",
                plain(&frame["who"]["kind"]),
                frame["who"]["id"]
            );
        }
        "presence" => println!(
            "   (operator {} is {})",
            frame["operator_id"],
            plain(&frame["presence"])
        ),
        "chat" => println!(
            "   (chat {} is {})",
            frame["chat"]["id"],
            plain(&frame["chat"]["status"])
        ),
        "error" => println!("!! {}: {}", plain(&frame["code"]), plain(&frame["message"])),
        _ => {}
    }
}

/// Uploads the file at `path` into the chat; returns its id.
async fn upload(args: &Args, path: &str) -> Result<String, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let base = args
        .url
        .replacen("ws", "http", 1)
        .trim_end_matches("/v1/ws")
        .to_owned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!(
        "{base}/v1/chats/{}/files?name={}",
        args.chat,
        form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    );
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(&args.token)
        .body(bytes)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let file: Value = r.json().await.map_err(|e| e.to_string())?;
    match file["id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => Err(format!("upload refused: {}", file["error"]["message"])),
    }
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "chat: {e}\nusage: chat --token TOKEN --chat ID [--url ws://127.0.0.1:8080/v1/ws]"
            );
            std::process::exit(2);
        }
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut last_seq = 0i64;
    let mut local = 0u64;
    'connect: loop {
        let url = format!("{}?resume={}:{last_seq}", args.url, args.chat);
        let mut request = match url.into_client_request() {
            Ok(r) => r,
            Err(e) => return eprintln!("chat: bad url: {e}"),
        };
        if let Ok(v) = format!("Bearer {}", args.token).parse() {
            request.headers_mut().insert("authorization", v);
        }
        let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(s) => s,
            Err(e) => return eprintln!("chat: cannot connect: {e}"),
        };
        println!("-- connected; type a line to send it, /quit to leave");
        loop {
            tokio::select! {
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                        show(&frame, args.chat);
                        if frame["type"] == "message" && frame["chat_id"] == args.chat {
                            last_seq = frame["message"]["seq"].as_i64().unwrap_or(last_seq);
                            let read = json!({"type": "read", "chat_id": args.chat, "seq": last_seq});
                            let _ = socket.send(Message::Text(read.to_string().into())).await;
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        println!("-- closed: {close:?}; resuming from seq {last_seq}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'connect;
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => {
                        println!("-- connection lost; resuming from seq {last_seq}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'connect;
                    }
                },
                line = lines.next_line() => match line {
                    Ok(Some(line)) if line.trim() == "/quit" => break 'connect,
                    Ok(Some(line)) if !line.trim().is_empty() => {
                        local += 1;
                        let local_id = format!("cli-{}-{local}", std::process::id());
                        let send = match line.trim().strip_prefix("/file ") {
                            Some(path) => match upload(&args, path.trim()).await {
                                Ok(id) => json!({
                                    "type": "send", "chat_id": args.chat, "payload": "file",
                                    "file_id": id, "local_id": local_id,
                                }),
                                Err(e) => {
                                    println!("!! {e}");
                                    continue;
                                }
                            },
                            None => json!({
                                "type": "send", "chat_id": args.chat, "text": line,
                                "local_id": local_id,
                            }),
                        };
                        if socket.send(Message::Text(send.to_string().into())).await.is_err() {
                            continue 'connect;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break 'connect,
                },
            }
        }
    }
    println!("-- bye");
}
