//! The HTTP edge and the node's own endpoints: health and readiness, slow bodies, the
//! connection cap, and the limits on what anyone may do without a token.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{PASSWORD, TestApp, eventually, spawn_app, spawn_app_with};

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("answered");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn healthz_and_readyz_answer_without_a_token() {
    let app = spawn_app().await;
    let (status, body) = get_json(&app, "/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "ready", "database": "ok", "redis": "not configured"})
        )
    );
}

#[tokio::test]
async fn readyz_says_draining_while_a_stopping_node_still_serves() {
    let mut app = spawn_app_with(|c| c.shutdown_delay = 60).await;
    let admin = app.admin().await;
    app.stop();
    let body = eventually("readyz saying 503", || async {
        let (status, body) = get_json(&app, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "draining");
    // Still serving meanwhile: a new request works.
    app.get("/v1/operators", &admin).await.expect(200);
    assert_eq!(get_json(&app, "/healthz").await.0, 200);
}

/// A request whose headers promise a body of 100 bytes, of which 10 come.
async fn stalled_post(app: &TestApp, path: &str) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connected");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n{{\"text\": "
    );
    tcp.write_all(head.as_bytes()).await.expect("written");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered within the wait, not held forever")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_and_the_connection_is_let_go() {
    let app = spawn_app_with(|c| c.body_timeout = 1).await;
    let answer = stalled_post(&app, "/v1/auth/token").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "request_timeout");
}

#[tokio::test]
async fn past_the_connection_cap_new_clients_get_503_until_one_leaves() {
    let mut app = spawn_app_with(|c| c.max_connections = Some(3)).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    // From here on each request has a connection of its own (the pooled ones go).
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
    };
    app.client = fresh();
    let health = format!("{}/v1/health", app.base);
    // A socket and two idle connections fill the three places (once the pooled
    // connections are gone: until then the socket may be refused).
    let mut ws = eventually("a socket once the pooled connections left", || async {
        app.try_ws(&desk.customer, "").await.ok()
    })
    .await;
    ws.next_of("resumed").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let idle = [
        tokio::net::TcpStream::connect(&addr).await.expect("1"),
        tokio::net::TcpStream::connect(&addr).await.expect("2"),
    ];
    // A new client is refused, in the JSON error shape.
    let refused = eventually("a fourth connection refused", || async {
        let r = fresh().get(&health).send().await.expect("answered");
        match r.status() {
            reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                Some(r.json::<Value>().await.expect("JSON"))
            }
            _ => None,
        }
    })
    .await;
    assert_eq!(refused["error"]["code"], "unavailable");
    // Once the idle ones leave, new clients are served; the socket kept its place.
    drop(idle);
    eventually("a new client served once places freed up", || async {
        let r = fresh().get(&health).send().await;
        r.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    ws.send(
        json!({"type": "send", "id": "s", "chat_id": desk.chat_id, "local_id": "l", "text": "hi"}),
    )
    .await;
    ws.next_of("ack").await;
}

async fn new_visitor(app: &TestApp, key: &str, from: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/v1/widget/{key}/visitors", app.base))
        .json(&json!({}));
    if let Some(address) = from {
        req = req.header("x-forwarded-for", format!("203.0.113.250, {address}"));
    }
    req.send().await.expect("answered")
}

async fn widget_key(app: &TestApp, admin: &str, domain_id: i64) -> String {
    let domain = app
        .get(&format!("/v1/domains/{domain_id}"), admin)
        .await
        .expect(200);
    domain["widget_key"].as_str().expect("a key").to_owned()
}

#[tokio::test]
async fn new_widget_visitors_are_limited_per_address_and_per_widget() {
    let app = spawn_app_with(|c| {
        c.visitors_per_minute = 3;
        c.visitors_per_minute_per_key = 5;
        c.trust_forwarded_for = true;
    })
    .await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let key = widget_key(&app, &admin, desk.domain_id).await;
    let customers = app.count("customers").await;
    for _ in 0..3 {
        assert_eq!(
            new_visitor(&app, &key, Some("198.51.100.1")).await.status(),
            200
        );
    }
    let r = new_visitor(&app, &key, Some("198.51.100.1")).await;
    assert_eq!(r.status(), 429);
    // A burst of 3 a minute: one more in 20 s.
    assert_eq!(r.headers()["retry-after"], "20");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(app.count("customers").await, customers + 3, "nothing made");
    // Another address has its own allowance, until the widget's own runs out at 5.
    for _ in 0..2 {
        assert_eq!(
            new_visitor(&app, &key, Some("198.51.100.2")).await.status(),
            200
        );
    }
    assert_eq!(
        new_visitor(&app, &key, Some("198.51.100.3")).await.status(),
        429
    );
    // The clock moves on: each allowance refills.
    app.clock.advance(Duration::from_secs(20));
    assert_eq!(
        new_visitor(&app, &key, Some("198.51.100.1")).await.status(),
        200
    );
    assert_eq!(app.count("customers").await, customers + 6);
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let app = spawn_app_with(|c| c.visitors_per_minute = 2).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let key = widget_key(&app, &admin, desk.domain_id).await;
    // Each claims another address; all come from the same connection's address.
    for (i, expected) in [200, 200, 429].into_iter().enumerate() {
        let r = new_visitor(&app, &key, Some(&format!("198.51.100.{}", i + 10))).await;
        assert_eq!(r.status(), expected, "visitor {i}");
    }
}

async fn sign_in(app: &TestApp, password: &str) -> u16 {
    app.raw(
        Method::POST,
        "/v1/auth/token",
        None,
        Some(
            json!({"email": "owner@acme.test", "password": password,
                "organisation": "acme", "addon": "live_chat"})
            .to_string()
            .into_bytes(),
        ),
    )
    .await
    .status
    .as_u16()
}

#[tokio::test]
async fn failed_sign_ins_are_limited_and_right_ones_are_not() {
    let app = spawn_app_with(|c| c.failed_sign_ins_per_minute = 3).await;
    // Signing in rightly is never limited.
    for _ in 0..6 {
        assert_eq!(sign_in(&app, PASSWORD).await, 200);
    }
    for _ in 0..3 {
        assert_eq!(sign_in(&app, "guess").await, 401);
    }
    // Past the failures, even the right password is refused: guessing learns nothing.
    assert_eq!(sign_in(&app, "guess").await, 429);
    assert_eq!(sign_in(&app, PASSWORD).await, 429);
    // Chatwhizz's sign-in is the same door.
    let r = app
        .client
        .post(format!("{}/admin/access-token", app.base))
        .json(&json!({"email": "owner@acme.test", "password": PASSWORD,
            "organisation_domain": "acme", "addon_unique_name": "live_chat"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 429);
    app.clock.advance(Duration::from_secs(20));
    assert_eq!(sign_in(&app, PASSWORD).await, 200);
}

/// Writes `request` on a new connection and reads the answer until the server closes.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> (u16, Option<String>, Value) {
    let addr = app.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connected");
    tcp.write_all(request).await.expect("written");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().expect("a status");
    let content_type = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-type: ")
            .map(str::to_owned)
    });
    (
        status,
        content_type,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn requests_http_cannot_read_get_the_json_error_shape_too() {
    let app = spawn_app().await;
    let (status, content_type, body) = raw_exchange(&app, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert_eq!(
        (status, content_type.as_deref()),
        (400, Some("application/json"))
    );
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    // Headers past what the server reads.
    let mut big = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        big.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let (status, content_type, body) = raw_exchange(&app, &big).await;
    assert_eq!(
        (status, content_type.as_deref()),
        (431, Some("application/json"))
    );
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    // The server goes on serving.
    assert_eq!(get_json(&app, "/healthz").await.0, 200);
}

/// The value of one sample of `/metrics` (`name` with its labels, as written).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_sockets_sends_acks_refusals_and_deliveries() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    for (i, text) in ["one", "two", "", "three"].into_iter().enumerate() {
        customer
            .send(
                json!({"type": "send", "id": format!("s{i}"), "chat_id": desk.chat_id,
                "local_id": format!("l{i}"), "text": text}),
            )
            .await;
    }
    for _ in 0..3 {
        operator.next_of("message").await;
    }
    let r = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.expect("text");
    assert_eq!(sample(&text, "souq_sockets_open"), 2.0);
    assert_eq!(sample(&text, "souq_sends_total"), 3.0);
    assert_eq!(sample(&text, "souq_acks_total"), 3.0);
    assert_eq!(sample(&text, r#"souq_refusals_total{code="invalid"}"#), 1.0);
    // Each message reached both sockets of the room.
    assert!(sample(&text, "souq_deliveries_total") >= 6.0, "{text}");
    assert!(sample(&text, "souq_batch_jobs_count") >= 1.0, "{text}");
    assert!(
        sample(&text, r#"souq_http_responses_total{class="2xx"}"#) >= 1.0,
        "{text}"
    );
    drop(customer);
    eventually("the closed socket no longer counted", || async {
        let text = app
            .client
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("text");
        (sample(&text, "souq_sockets_open") == 1.0).then_some(())
    })
    .await;
}
