//! Offline reach: a member who leaves messages unread while away is told once per quiet
//! period, by a `notify` webhook, by e-mail through a real SMTP server (aiosmtpd, started
//! by the test), by Web Push to an endpoint the test runs and decrypts, and in their feed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestApp, eventually, spawn_app_with, str_of, unique_name};
use crate::webhooks::{Mode, Receiver};

/// An SMTP server on loopback (`tests/smtp_sink.py`), keeping each mail as a file.
pub struct SmtpSink {
    pub port: u16,
    folder: PathBuf,
    _child: tokio::process::Child,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let folder = std::env::temp_dir().join(unique_name("souq-mails"));
        let mut child = tokio::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_sink.py"))
            .arg(&folder)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (the SMTP sink needs `pip install aiosmtpd`)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the SMTP sink starts within 30 s")
        .expect("its port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the SMTP sink did not start (aiosmtpd missing?): {line:?}")
        });
        SmtpSink {
            port,
            folder,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The mails received so far, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.folder)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("a mail"))
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// Has the notifier look twice (the node's own loop may be looking meanwhile: a look of
/// ours waits for it to end, and both together make each notification once).
async fn settle(app: &TestApp) {
    let core = app.core.as_ref().expect("the core");
    for _ in 0..2 {
        eventually("a look of our own", || async {
            core.notify_round().await.expect("a look")
        })
        .await;
    }
}

async fn notify_after(app: &TestApp, admin: &str, settings: Value) {
    let mut body = json!({"notify_after_secs": 60});
    for (k, v) in settings.as_object().expect("an object") {
        body[k] = v.clone();
    }
    app.patch("/v1/organisation", admin, body).await.expect(200);
}

/// Waits until the operator's presence is `want` (a socket's opening or closing sets it).
async fn presence_is(app: &TestApp, admin: &str, operator_id: i64, want: &str) {
    eventually(want, || async {
        let op = app
            .get(&format!("/v1/operators/{operator_id}"), admin)
            .await
            .expect(200);
        (op["presence"] == want).then_some(())
    })
    .await;
}

/// Moves the server's clock past the wait and has the notifier look.
async fn wait_out(app: &TestApp) {
    app.clock.advance(Duration::from_secs(61));
    settle(app).await;
}

#[tokio::test]
async fn an_offline_seller_gets_one_email_and_one_webhook_call_for_a_burst_of_ten_messages() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    let smtp = SmtpSink::start().await;
    let mut receiver = Receiver::start().await;
    app.post(
        "/v1/webhooks",
        &admin,
        json!({"url": receiver.url, "events": ["notify"]}),
    )
    .await
    .expect(201);
    notify_after(
        &app,
        &admin,
        json!({
            "smtp_url": smtp.url(),
            "mail_from": "Acme Desk <desk@acme.test>",
            "notify_link": "https://acme.test/desk/chats/{chat_id}",
        }),
    )
    .await;
    let settings = app.get("/v1/organisation", &admin).await.expect(200);
    assert_eq!(settings["notify_after_secs"], 60);
    assert_eq!(settings["mail_from"], "Acme Desk <desk@acme.test>");
    // The seller never connects: offline.
    let desk = app.desk(&admin).await;
    for i in 1..=10 {
        app.send(&desk.customer, desk.chat_id, &format!("question {i}"), None)
            .await
            .expect(201);
    }
    // Before the wait is out, nobody is told.
    settle(&app).await;
    assert_eq!(app.count("notifications").await, 0);

    wait_out(&app).await;
    let (got, _) = receiver.until("notify").await;
    let data = &got.body["data"];
    assert_eq!(
        data["person"],
        json!({"kind": "operator", "id": desk.operator_id})
    );
    let notification = &data["notification"];
    assert_eq!(notification["unread"], 10);
    assert_eq!(notification["chats"][0]["chat_id"], desk.chat_id);
    assert_eq!(notification["chats"][0]["unread"], 10);
    assert_eq!(
        notification["chats"][0]["link"],
        format!("https://acme.test/desk/chats/{}", desk.chat_id)
    );
    let shown = notification["chats"][0]["messages"]
        .as_array()
        .expect("messages");
    assert_eq!(shown.last().expect("newest")["text"], "question 10");

    let mails = eventually("the e-mail", || async {
        let mails = smtp.mails();
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    let mail = &mails[0];
    assert!(mail.contains("desk@acme.test"), "{mail}");
    assert!(mail.contains("Subject: 10 unread messages"), "{mail}");
    assert!(mail.contains("question 10"), "{mail}");
    assert!(
        mail.contains(&format!("https://acme.test/desk/chats/{}", desk.chat_id)),
        "{mail}"
    );
    let envelope_to = mail.lines().next().expect("a first line");
    assert!(
        envelope_to.starts_with("X-Envelope-To: op-"),
        "{envelope_to}"
    );

    // Nothing more: not at the next looks, nor after another wait with nothing new.
    wait_out(&app).await;
    eventually("deliveries settled", || async {
        (app.count("deliveries WHERE state <> 'done'").await == 0).then_some(())
    })
    .await;
    eventually("webhook events settled", || async {
        (app.count("webhook_events WHERE state <> 'done'").await == 0).then_some(())
    })
    .await;
    assert_eq!(smtp.mails().len(), 1, "exactly one e-mail");
    assert_eq!(app.count("webhook_events WHERE kind = 'notify'").await, 1);
    assert_eq!(app.count("notifications").await, 1);

    // The messages say they were pushed.
    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.operator,
        )
        .await
        .expect(200);
    for m in page["items"].as_array().expect("items") {
        assert!(m["pushed_at"].is_i64(), "{m}");
    }

    // The seller's feed holds it, unread, until marked.
    let feed = app
        .get("/v1/notifications", &desk.operator)
        .await
        .expect(200);
    assert_eq!(feed["unread"], 1);
    assert_eq!(feed["items"].as_array().expect("items").len(), 1);
    let id = feed["items"][0]["id"].as_i64().expect("id");
    assert_eq!(feed["items"][0]["chats"][0]["unread"], 10);
    let marked = app
        .post(
            "/v1/notifications/read",
            &desk.operator,
            json!({"up_to": id}),
        )
        .await
        .expect(200);
    assert_eq!(marked["unread"], 0);
    let feed = app
        .get("/v1/notifications", &desk.operator)
        .await
        .expect(200);
    assert!(feed["items"][0]["read_at"].is_i64());
    // Another person's feed is their own.
    let theirs = app
        .get("/v1/notifications", &desk.customer)
        .await
        .expect(200);
    assert_eq!(theirs["items"], json!([]));

    // What went out is forgotten after the week it is kept; the feed stays.
    let week_ms = 7 * 24 * 3600 * 1000;
    let core = app.core.as_ref().expect("the core");
    core.prune_outbox(week_ms).await.expect("pruned");
    assert_eq!(app.count("deliveries").await, 1, "kept within the week");
    app.clock.advance(Duration::from_secs(8 * 24 * 3600));
    core.prune_outbox(week_ms).await.expect("pruned");
    assert_eq!(app.count("deliveries").await, 0);
    assert_eq!(app.count("webhook_events").await, 0);
    assert_eq!(app.count("notifications").await, 1);
}

#[tokio::test]
async fn a_member_on_a_live_socket_or_who_read_in_time_is_not_told_and_an_absent_customer_is() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    notify_after(&app, &admin, json!({})).await;
    let desk = app.desk(&admin).await;
    // The operator is in the app: no notification, however long the message waits.
    let operator_ws = app.ws(&desk.operator, "").await;
    presence_is(&app, &admin, desk.operator_id, "online").await;
    app.send(&desk.customer, desk.chat_id, "are you there?", None)
        .await
        .expect(201);
    wait_out(&app).await;
    assert_eq!(app.count("notifications").await, 0);

    // The customer has no socket. One answer read in time: nobody is told.
    app.send(&desk.operator, desk.chat_id, "yes, one moment", None)
        .await
        .expect(201);
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.customer,
        json!({"read": 2}),
    )
    .await
    .expect(200);
    wait_out(&app).await;
    assert_eq!(app.count("notifications").await, 0);

    // The next answer stays unread: the customer is told, and the feed frame would reach
    // their socket had they one; the operator's socket hears nothing of it.
    app.send(&desk.operator, desk.chat_id, "here is the answer", None)
        .await
        .expect(201);
    wait_out(&app).await;
    let feed = app
        .get("/v1/notifications", &desk.customer)
        .await
        .expect(200);
    assert_eq!(feed["unread"], 1, "{feed}");
    assert_eq!(feed["items"][0]["chats"][0]["unread"], 1);
    assert_eq!(
        feed["items"][0]["chats"][0]["messages"][0]["author"]["kind"],
        "operator"
    );
    // Marking read is heard live by the person's sockets.
    let mut customer_ws = app.ws(&desk.customer, "").await;
    app.post(
        "/v1/notifications/read",
        &desk.customer,
        json!({"ids": [feed["items"][0]["id"]]}),
    )
    .await
    .expect(200);
    let frame = customer_ws.next_of("notification").await;
    assert_eq!(frame["event"], "read");
    assert_eq!(frame["unread"], 0);
    // iqstore's Pushed says the answer was pushed.
    let history = crate::iqstore::post(
        &app,
        "chats/channel/history/support",
        crate::iqstore::cookie(&desk.customer),
        "{}",
    )
    .await;
    let pushed: Vec<(String, bool)> = history["Result"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (str_of(&m["Text"]), m["Pushed"].as_bool().expect("Pushed")))
        .collect();
    assert!(
        pushed.contains(&("here is the answer".into(), true)),
        "{pushed:?}"
    );
    assert!(
        pushed.contains(&("yes, one moment".into(), false)),
        "{pushed:?}"
    );
    drop(operator_ws);
}

#[tokio::test]
async fn a_new_notification_reaches_the_persons_socket_as_a_frame() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    notify_after(&app, &admin, json!({})).await;
    let desk = app.desk(&admin).await;
    // The operator's socket is open but they set themselves away: they are told.
    let mut ws = app.ws(&desk.operator, "").await;
    app.call(
        reqwest::Method::PUT,
        "/v1/me/presence",
        Some(&desk.operator),
        Some(json!({"presence": "away"})),
    )
    .await
    .expect(200);
    app.send(&desk.customer, desk.chat_id, "hello?", None)
        .await
        .expect(201);
    wait_out(&app).await;
    let frame = ws.next_of("notification").await;
    assert_eq!(frame["event"], "created");
    assert_eq!(frame["unread"], 1);
    assert_eq!(frame["notification"]["chats"][0]["chat_id"], desk.chat_id);
}

#[tokio::test]
async fn web_push_reaches_a_subscribed_browser_encrypted_for_its_keys_and_a_gone_one_is_dropped() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    notify_after(&app, &admin, json!({})).await;
    let desk = app.desk(&admin).await;
    let mut push_service = Receiver::start().await;
    // The browser's keys.
    let secret = loop {
        if let Ok(key) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            break key;
        }
    };
    let public = secret.public_key().to_encoded_point(false);
    let auth: [u8; 16] = rand::random();
    let b64 = souq::push::b64;
    let sub = app
        .post(
            "/v1/push/subscriptions",
            &desk.customer,
            json!({
                "endpoint": push_service.url,
                "expirationTime": null,
                "keys": {"p256dh": b64(public.as_bytes()), "auth": b64(&auth)},
            }),
        )
        .await
        .expect(201);
    assert_eq!(sub["endpoint"], push_service.url.as_str());
    let key = app
        .call(reqwest::Method::GET, "/v1/push/key", None, None)
        .await
        .expect(200);
    let server_key = str_of(&key["public_key"]);

    app.send(&desk.operator, desk.chat_id, "your order shipped", None)
        .await
        .expect(201);
    wait_out(&app).await;
    let got = push_service.next().await;
    assert_eq!(got.headers["content-encoding"], "aes128gcm");
    assert!(got.headers.contains_key("ttl"));
    // VAPID: an ES256 token for the push service's origin, by the server's key.
    let authorization = got.headers["authorization"].to_str().expect("ascii");
    let (token, k) = authorization
        .strip_prefix("vapid t=")
        .and_then(|r| r.split_once(", k="))
        .expect("vapid t=..., k=...");
    assert_eq!(k, server_key);
    let (signed, signature) = token.rsplit_once('.').expect("a JWT");
    {
        use p256::ecdsa::signature::Verifier;
        let verifying =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&souq::push::unb64(k).expect("b64"))
                .expect("a P-256 key");
        let signature =
            p256::ecdsa::Signature::from_slice(&souq::push::unb64(signature).expect("b64"))
                .expect("a signature");
        verifying
            .verify(signed.as_bytes(), &signature)
            .expect("signed by the server's key");
    }
    // Only the browser's keys open it.
    let plain = web_push_native::decrypt(
        got.raw.to_vec(),
        &secret,
        web_push_native::Auth::from_slice(&auth),
    )
    .expect("decrypted with the subscription's keys");
    let payload: Value = serde_json::from_slice(&plain).expect("JSON");
    assert_eq!(payload["title"], "1 unread message");
    assert!(
        str_of(&payload["body"]).contains("your order shipped"),
        "{payload}"
    );
    assert_eq!(payload["chat_id"], desk.chat_id);

    // The browser unsubscribed: the push service says 410, and the subscription goes.
    push_service.set(Mode::Fail(410));
    app.send(&desk.operator, desk.chat_id, "are you still there?", None)
        .await
        .expect(201);
    wait_out(&app).await;
    push_service.next().await;
    eventually("the subscription removed", || async {
        let subs = app
            .get("/v1/push/subscriptions", &desk.customer)
            .await
            .expect(200);
        (subs["items"] == json!([])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_settings_subscriptions_and_marks_are_refused_and_change_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for bad in [
        json!({"smtp_url": "http://mail.example.com"}),
        json!({"smtp_url": 7}),
        json!({"notify_after_secs": 0}),
        json!({"mail_from": "not an address"}),
        json!({"notify_link": "javascript:alert(1)"}),
        json!({"notify_after": 60}),
        json!({}),
    ] {
        let r = app.patch("/v1/organisation", &admin, bad.clone()).await;
        assert!(r.status == 422 || r.status == 400, "{bad}: {}", r.status);
    }
    let settings = app.get("/v1/organisation", &admin).await.expect(200);
    assert_eq!(settings["notify_after_secs"], 300, "the default");
    assert_eq!(settings["smtp_url"], Value::Null);
    // A password set is never shown back.
    app.patch(
        "/v1/organisation",
        &admin,
        json!({"smtp_url": "smtp://desk:hunter2@mail.example.com:587?tls=required"}),
    )
    .await
    .expect(200);
    let settings = app.get("/v1/organisation", &admin).await.expect(200);
    assert!(!settings.to_string().contains("hunter2"), "{settings}");
    // Sent back as read, the hidden password keeps the stored one.
    app.patch(
        "/v1/organisation",
        &admin,
        json!({"smtp_url": settings["smtp_url"], "mail_from": "desk@acme.test"}),
    )
    .await
    .expect(200);
    assert_eq!(
        app.count("organisations WHERE smtp_url LIKE '%:hunter2@%'")
            .await,
        1
    );

    let good_key = {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let key = p256::SecretKey::from_slice(&[7u8; 32]).expect("a key");
        souq::push::b64(key.public_key().to_encoded_point(false).as_bytes())
    };
    for bad in [
        json!({"endpoint": "https://push.example.net/x", "keys": {"p256dh": good_key, "auth": "short"}}),
        json!({"endpoint": "https://push.example.net/x", "keys": {"p256dh": "AAAA", "auth": souq::push::b64(&[1u8; 16])}}),
        json!({"endpoint": "not a url", "keys": {"p256dh": good_key, "auth": souq::push::b64(&[1u8; 16])}}),
        json!({"endpoint": "https://push.example.net/x"}),
    ] {
        let r = app
            .post("/v1/push/subscriptions", &desk.customer, bad.clone())
            .await;
        assert!(r.status == 422 || r.status == 400, "{bad}: {}", r.status);
    }
    assert_eq!(app.count("push_subscriptions").await, 0);
    // A person keeps ten browsers at most: the oldest go.
    for i in 0..12 {
        app.post(
            "/v1/push/subscriptions",
            &desk.customer,
            json!({"endpoint": format!("https://push.example.net/{i}"),
                   "keys": {"p256dh": good_key, "auth": souq::push::b64(&[1u8; 16])}}),
        )
        .await
        .expect(201);
    }
    let subs = app
        .get("/v1/push/subscriptions", &desk.customer)
        .await
        .expect(200);
    let kept: Vec<String> = subs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| str_of(&s["endpoint"]))
        .collect();
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0], "https://push.example.net/2");
    // An admin token has no feed; a mark names either ids or a bound.
    assert_eq!(app.get("/v1/notifications", &admin).await.status, 403);
    for bad in [
        json!({}),
        json!({"ids": [1], "up_to": 3}),
        json!({"ids": []}),
    ] {
        let r = app
            .post("/v1/notifications/read", &desk.operator, bad.clone())
            .await;
        assert_eq!(r.status, 422, "{bad}");
    }
    // Someone else's subscription cannot be removed.
    let r = app
        .client
        .delete(format!("{}/v1/push/subscriptions/1", app.base))
        .header("authorization", format!("Bearer {}", desk.operator))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn an_operator_who_leaves_with_messages_unread_is_told_once_away_for_the_wait() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    notify_after(&app, &admin, json!({})).await;
    let desk = app.desk(&admin).await;
    let ws = app.ws(&desk.operator, "").await;
    presence_is(&app, &admin, desk.operator_id, "online").await;
    app.send(&desk.customer, desk.chat_id, "anyone?", None)
        .await
        .expect(201);
    // Long past the wait, and past the chats a look reads for their activity alone.
    app.clock.advance(Duration::from_secs(200));
    settle(&app).await;
    assert_eq!(app.count("notifications").await, 0, "present");
    // The laptop sleeps: away from now, not from when the message came.
    drop(ws);
    presence_is(&app, &admin, desk.operator_id, "offline").await;
    settle(&app).await;
    assert_eq!(app.count("notifications").await, 0, "away for no time yet");
    wait_out(&app).await;
    let feed = app
        .get("/v1/notifications", &desk.operator)
        .await
        .expect(200);
    assert_eq!(feed["unread"], 1, "{feed}");
    assert_eq!(
        feed["items"][0]["chats"][0]["messages"][0]["text"],
        "anyone?"
    );
}

#[tokio::test]
async fn a_customer_with_an_address_gets_the_answer_by_email_and_a_bad_address_is_refused() {
    let app = spawn_app_with(|_| {}).await;
    let admin = app.admin().await;
    let smtp = SmtpSink::start().await;
    notify_after(&app, &admin, json!({"smtp_url": smtp.url()})).await;
    let desk = app.desk(&admin).await;
    let customer = app
        .get(&format!("/v1/customers/{}", desk.customer_id), &admin)
        .await
        .expect(200);
    let bad = app
        .post(
            "/v1/customers",
            &admin,
            json!({"external_id": customer["external_id"], "email": "no address"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    let updated = app
        .post(
            "/v1/customers",
            &admin,
            json!({"external_id": customer["external_id"], "email": "Ana@Example.COM"}),
        )
        .await
        .expect(200);
    assert_eq!(updated["email"], "ana@example.com");
    app.send(&desk.operator, desk.chat_id, "your parcel left today", None)
        .await
        .expect(201);
    wait_out(&app).await;
    let mails = eventually("the e-mail", || async {
        let mails = smtp.mails();
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    assert!(
        mails[0].starts_with("X-Envelope-To: ana@example.com"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("your parcel left today"), "{}", mails[0]);
}
