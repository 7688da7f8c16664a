//! Webhooks: events written with each change, posted signed to an endpoint the test runs,
//! in order per chat, retried with backoff while the endpoint fails or hangs, dead-lettered
//! after the retry period, and none for a change that did not happen.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{TestApp, eventually, spawn_app_with, str_of};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Answers with this status.
    Fail(u16),
    /// Answers after a minute.
    Hang,
}

/// A post the receiver got.
#[derive(Debug)]
pub struct Got {
    pub headers: hyper::HeaderMap,
    pub raw: Bytes,
    pub body: Value,
}

/// An HTTP endpoint of the test's own, on an ephemeral port.
pub struct Receiver {
    pub url: String,
    pub mode: Arc<Mutex<Mode>>,
    got: mpsc::UnboundedReceiver<Got>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let (tx, got) = mpsc::unbounded_channel();
        let serving_mode = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, mode) = (tx.clone(), serving_mode.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (tx, mode) = (tx.clone(), mode.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let raw = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                            let _ = tx.send(Got {
                                headers: parts.headers,
                                raw,
                                body,
                            });
                            let mode = *mode.lock().expect("mode");
                            let status = match mode {
                                Mode::Ok => 200,
                                Mode::Fail(status) => status,
                                Mode::Hang => {
                                    tokio::time::sleep(Duration::from_secs(60)).await;
                                    200
                                }
                            };
                            let mut answer = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *answer.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("a status");
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, mode, got }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    /// The next post, within 20 s.
    pub async fn next(&mut self) -> Got {
        tokio::time::timeout(Duration::from_secs(20), self.got.recv())
            .await
            .expect("a post within 20 s")
            .expect("the receiver runs")
    }

    /// Posts until one of `kind` comes; returns it and those before.
    pub async fn until(&mut self, kind: &str) -> (Got, Vec<Got>) {
        let mut before = Vec::new();
        loop {
            let got = self.next().await;
            if got.body["type"] == kind {
                return (got, before);
            }
            before.push(got);
        }
    }
}

/// Checks a post's signature as a receiver would: HMAC-SHA256 of "t.body" with the secret.
fn verify(got: &Got, secret: &str) {
    let header = got.headers["souq-signature"].to_str().expect("ascii");
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=...,v1=...");
    let mut signed = t.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&got.raw);
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(&signed);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, want, "signature");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t: i64 = t.parse().expect("a timestamp");
    assert!((now - t).abs() < 300, "a fresh timestamp");
    assert_eq!(
        got.headers["souq-event-id"],
        str_of(&got.body["id"]).as_str()
    );
}

async fn hook(app: &TestApp, admin: &str, url: &str, events: &[&str]) -> (i64, String) {
    let w = app
        .post("/v1/webhooks", admin, json!({"url": url, "events": events}))
        .await
        .expect(201);
    (w["id"].as_i64().expect("id"), str_of(&w["secret"]))
}

#[tokio::test]
async fn a_chats_events_reach_the_endpoint_signed_and_in_order_and_none_for_a_refused_change() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    let mut receiver = Receiver::start().await;
    let kinds = [
        "message.created",
        "chat.created",
        "chat.taken",
        "chat.finished",
        "receipt",
    ];
    let (_, secret) = hook(&app, &admin, &receiver.url, &kinds).await;
    let desk = app.desk(&admin).await;
    for i in 1..=5 {
        app.send(&desk.customer, desk.chat_id, &format!("q{i}"), None)
            .await
            .expect(201);
    }
    app.send(&desk.operator, desk.chat_id, "answer", None)
        .await
        .expect(201);
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.operator,
        json!({"read": 5}),
    )
    .await
    .expect(200);
    app.post(
        &format!("/v1/chats/{}/finish", desk.chat_id),
        &desk.customer,
        json!({}),
    )
    .await
    .expect(200);
    // Refused: the chat is finished. No event may come of it.
    let refused = app
        .send(&desk.customer, desk.chat_id, "too late", None)
        .await;
    assert_eq!(refused.status, 409);

    let (finished, before) = receiver.until("chat.finished").await;
    let mut all = before;
    all.push(finished);
    for got in &all {
        verify(got, &secret);
    }
    let types: Vec<String> = all.iter().map(|g| str_of(&g.body["type"])).collect();
    assert_eq!(types[0], "chat.created", "{types:?}");
    let texts: Vec<String> = all
        .iter()
        .filter(|g| g.body["type"] == "message.created")
        .map(|g| str_of(&g.body["data"]["message"]["text"]))
        .collect();
    assert_eq!(
        texts,
        ["q1", "q2", "q3", "q4", "q5", "answer"],
        "in seq order"
    );
    let taken = all
        .iter()
        .find(|g| g.body["type"] == "chat.taken")
        .expect("taken");
    assert_eq!(taken.body["data"]["operator_id"], desk.operator_id);
    let receipt = all
        .iter()
        .find(|g| g.body["type"] == "receipt")
        .expect("a receipt");
    assert_eq!(receipt.body["data"]["read_seq"], 5);
    assert_eq!(receipt.body["data"]["member"]["kind"], "operator");
    let ids: Vec<i64> = all
        .iter()
        .map(|g| {
            str_of(&g.body["id"])
                .trim_start_matches("evt_")
                .parse()
                .expect("evt_n")
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "one chat's events in order: {ids:?}"
    );
    assert_eq!(
        app.count("webhook_events WHERE kind = 'message.created'")
            .await,
        6,
        "the refused send made none"
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_backoff_while_others_get_theirs_at_once() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    let mut failing = Receiver::start().await;
    failing.set(Mode::Fail(500));
    let mut fine = Receiver::start().await;
    let (failing_id, _) = hook(&app, &admin, &failing.url, &["message.created"]).await;
    hook(&app, &admin, &fine.url, &["message.created"]).await;
    let desk = app.desk(&admin).await;
    app.send(&desk.customer, desk.chat_id, "hello", None)
        .await
        .expect(201);

    let first = failing.next().await;
    assert_eq!(fine.next().await.body["data"]["message"]["text"], "hello");
    let events = format!("/v1/webhooks/{failing_id}/events");
    let listed = eventually("the failure recorded", || async {
        let v = app.get(&events, &admin).await.expect(200);
        (v["items"][0]["last_error"] == "HTTP 500" && v["items"][0]["state"] == "pending")
            .then_some(v)
    })
    .await;
    assert_eq!(listed["items"][0]["attempts"], 1);
    // Nothing more until the backoff has passed (the clock is the server's).
    app.clock.advance(Duration::from_secs(6));
    let second = failing.next().await;
    assert_eq!(
        second.body["id"], first.body["id"],
        "the same event, to dedupe by"
    );
    eventually("the second failure recorded", || async {
        let v = app.get(&events, &admin).await.expect(200);
        (v["items"][0]["attempts"] == 2 && v["items"][0]["state"] == "pending").then_some(())
    })
    .await;
    failing.set(Mode::Ok);
    app.clock.advance(Duration::from_secs(60));
    let third = failing.next().await;
    assert_eq!(third.body["id"], first.body["id"]);
    eventually("delivered", || async {
        let v = app.get(&events, &admin).await.expect(200);
        (v["items"][0]["state"] == "done").then_some(())
    })
    .await;
    let v = app.get(&events, &admin).await.expect(200);
    assert_eq!(v["items"][0]["attempts"], 3);
}

#[tokio::test]
async fn an_endpoint_that_hangs_times_out_and_its_event_is_dead_after_the_retry_period() {
    let app = spawn_app_with(|c| {
        c.webhook_timeout = 1;
        c.webhook_retry_for = 60;
    })
    .await;
    let admin = app.admin().await;
    let mut hanging = Receiver::start().await;
    hanging.set(Mode::Hang);
    let (id, _) = hook(&app, &admin, &hanging.url, &["message.created"]).await;
    let desk = app.desk(&admin).await;
    app.send(&desk.customer, desk.chat_id, "anyone?", None)
        .await
        .expect(201);
    hanging.next().await;
    let events = format!("/v1/webhooks/{id}/events");
    eventually("the timeout recorded", || async {
        let v = app.get(&events, &admin).await.expect(200);
        (v["items"][0]["last_error"] == "timed out").then_some(())
    })
    .await;
    // Past the retry period, the next failure is the last: the event is dead.
    app.clock.advance(Duration::from_secs(61));
    hanging.next().await;
    let dead = eventually("dead-lettered", || async {
        let v = app
            .get(&format!("{events}?state=dead"), &admin)
            .await
            .expect(200);
        (v["items"].as_array().map(Vec::len) == Some(1)).then_some(v)
    })
    .await;
    assert_eq!(dead["items"][0]["last_error"], "timed out");
    // Sent again by hand once the endpoint is back.
    hanging.set(Mode::Ok);
    let event = str_of(&dead["items"][0]["id"]);
    app.post(&format!("{events}/{event}/retry"), &admin, json!({}))
        .await
        .expect(204);
    let got = hanging.next().await;
    assert_eq!(got.body["id"], event.as_str());
    eventually("delivered", || async {
        let v = app
            .get(&format!("{events}?state=done"), &admin)
            .await
            .expect(200);
        (v["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn endpoints_are_checked_and_kept_to_their_organisation() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    for bad in [
        json!({"url": "ftp://x", "events": ["receipt"]}),
        json!({"url": "https://hooks.example", "events": []}),
        json!({"url": "https://hooks.example", "events": ["message.deleted"]}),
    ] {
        assert_eq!(
            app.post("/v1/webhooks", &admin, bad.clone()).await.status,
            422,
            "{bad}"
        );
    }
    let made = app
        .post(
            "/v1/webhooks",
            &admin,
            json!({"url": "https://hooks.example/a", "events": ["presence"]}),
        )
        .await
        .expect(201);
    assert!(str_of(&made["secret"]).starts_with("whsec_"));
    let id = made["id"].as_i64().expect("id");
    let read = app
        .get(&format!("/v1/webhooks/{id}"), &admin)
        .await
        .expect(200);
    assert!(read.get("secret").is_none(), "the secret is shown once");
    let globex = app.admin_of("globex").await;
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}"), &globex).await.status,
        404
    );
    let desk = app.desk(&admin).await;
    assert_eq!(app.get("/v1/webhooks", &desk.operator).await.status, 403);
    let patched = app
        .patch(
            &format!("/v1/webhooks/{id}"),
            &admin,
            json!({"active": false, "events": ["message.created"]}),
        )
        .await
        .expect(200);
    assert_eq!(patched["active"], false);
    // An inactive endpoint gets no events; active again, it does (from then on).
    app.send(&desk.customer, desk.chat_id, "unheard", None)
        .await
        .expect(201);
    assert_eq!(app.count("webhook_events").await, 0);
    app.patch(
        &format!("/v1/webhooks/{id}"),
        &admin,
        json!({"active": true}),
    )
    .await
    .expect(200);
    app.send(&desk.customer, desk.chat_id, "heard", None)
        .await
        .expect(201);
    assert_eq!(
        app.count("webhook_events WHERE kind = 'message.created'")
            .await,
        1
    );
    app.patch(
        &format!("/v1/webhooks/{id}"),
        &admin,
        json!({"active": false}),
    )
    .await
    .expect(200);
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        app.get("/v1/webhooks", &admin).await.expect(200)["items"],
        json!([])
    );
}

/// An organisation's admin cannot make a node post into its own network: an endpoint on
/// loopback is refused unless the deployment allows private addresses.
#[tokio::test]
async fn an_endpoint_on_a_private_address_is_refused_unless_allowed() {
    let app = spawn_app_with(|c| c.webhook_allow_private = false).await;
    let admin = app.admin().await;
    let receiver = Receiver::start().await;
    let (id, _) = hook(&app, &admin, &receiver.url, &["message.created"]).await;
    let desk = app.desk(&admin).await;
    app.send(&desk.customer, desk.chat_id, "hello", None)
        .await
        .expect(201);
    let events = format!("/v1/webhooks/{id}/events");
    eventually("the refusal recorded", || async {
        let v = app.get(&events, &admin).await.expect(200);
        (v["items"][0]["last_error"] == "private address refused").then_some(())
    })
    .await;

    // Nor by a name that leads there: this machine's own name, on loopback here.
    let name = String::from_utf8(
        std::process::Command::new("hostname")
            .output()
            .expect("hostname")
            .stdout,
    )
    .expect("a name")
    .trim()
    .to_owned();
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 80))
        .await
        .expect("the machine's name resolves")
        .collect();
    assert!(
        resolved.iter().all(|a| a.ip().is_loopback()
            || matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.is_private())),
        "this test needs the machine's name ({name}) to resolve to a private address: {resolved:?}"
    );
    let by_name = receiver.url.replace("127.0.0.1", &name);
    let (named, _) = hook(&app, &admin, &by_name, &["message.created"]).await;
    app.send(&desk.customer, desk.chat_id, "hello again", None)
        .await
        .expect(201);
    let events = format!("/v1/webhooks/{named}/events");
    eventually("the name's refusal recorded", || async {
        let v = app.get(&events, &admin).await.expect(200);
        (v["items"][0]["last_error"] == "private address refused").then_some(())
    })
    .await;
}
