//! The live socket: push, receipts, typing, presence, resume, backpressure, bad frames,
//! and the long-poll fallback.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::helpers::{Desk, TestApp, spawn_app, spawn_app_with};

fn seqs_of(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| f["message"]["seq"].as_i64().expect("seq"))
        .collect()
}

async fn desk_app() -> (TestApp, Desk) {
    desk_app_with(|_| {}).await
}

/// A server configured by `tweak`, with a desk: an organisation, an inbox, its operator and
/// a customer's chat.
async fn desk_app_with(tweak: impl FnOnce(&mut souq::Config)) -> (TestApp, Desk) {
    let app = spawn_app_with(tweak).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    (app, desk)
}

#[tokio::test]
async fn two_parties_chat_live_with_receipts_both_ways() {
    let (app, desk) = desk_app().await;
    let mut customer = app.ws(&desk.customer, "").await;
    let mut operator = app.ws(&desk.operator, "").await;
    let ready = customer.next_of("ready").await;
    assert_eq!(ready["chats"], json!([{"id": desk.chat_id, "last_seq": 0}]));
    operator.next_of("ready").await;

    customer
        .send(json!({"type": "send", "id": "r1", "chat_id": desk.chat_id, "local_id": "l1", "text": "hi"}))
        .await;
    let ack = customer.next_of("ack").await;
    assert_eq!(
        (
            ack["id"].clone(),
            ack["local_id"].clone(),
            ack["seq"].clone()
        ),
        (json!("r1"), json!("l1"), json!(1))
    );
    let pushed = operator.next_of("message").await;
    assert_eq!(pushed["message"]["text"], "hi");
    assert_eq!(
        pushed["message"]["author"],
        json!({"kind": "customer", "id": desk.customer_id})
    );

    operator
        .send(json!({"type": "read", "chat_id": desk.chat_id, "seq": 1}))
        .await;
    let receipt = customer.next_of("receipt").await;
    assert_eq!(
        receipt["member"],
        json!({"kind": "operator", "id": desk.operator_id})
    );
    assert_eq!(
        (receipt["received_seq"].clone(), receipt["read_seq"].clone()),
        (json!(1), json!(1))
    );

    operator
        .send(json!({"type": "send", "chat_id": desk.chat_id, "text": "hello!"}))
        .await;
    assert_eq!(operator.next_of("ack").await["seq"], 2);
    let reply = customer.next_of("message").await;
    assert_eq!(
        (
            reply["message"]["seq"].clone(),
            reply["message"]["text"].clone()
        ),
        (json!(2), json!("hello!"))
    );
    // The operator's reply answered the pending chat.
    let chat = customer.next_of("chat").await;
    assert_eq!(
        (chat["event"].clone(), chat["chat"]["status"].clone()),
        (json!("updated"), json!("chatting"))
    );

    customer
        .send(json!({"type": "received", "chat_id": desk.chat_id, "seq": 2}))
        .await;
    let r = operator.next_of("receipt").await;
    assert_eq!(
        (
            r["member"]["kind"].clone(),
            r["received_seq"].clone(),
            r["read_seq"].clone()
        ),
        (json!("customer"), json!(2), json!(0))
    );
    let stored = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    assert_eq!(stored["items"][0]["status"], "read");
    assert_eq!(stored["items"][1]["status"], "received");
}

#[tokio::test]
async fn a_message_sent_over_rest_is_pushed_like_one_sent_over_a_socket() {
    let (app, desk) = desk_app().await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("ready").await;
    app.send(&desk.customer, desk.chat_id, "via REST", Some("rest-1"))
        .await
        .expect(201);
    let pushed = operator.next_of("message").await;
    assert_eq!(
        (
            pushed["message"]["text"].clone(),
            pushed["message"]["local_id"].clone()
        ),
        (json!("via REST"), json!("rest-1"))
    );
}

#[tokio::test]
async fn a_resent_send_whose_ack_was_lost_gives_the_first_message() {
    let (app, desk) = desk_app().await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("ready").await;
    let send =
        json!({"type": "send", "chat_id": desk.chat_id, "local_id": "once", "text": "only once"});
    customer.send(send.clone()).await;
    let first = customer.next_of("ack").await;
    customer.send(send).await;
    let second = customer.next_of("ack").await;
    assert_eq!(
        (first["message_id"].clone(), first["seq"].clone()),
        (second["message_id"].clone(), second["seq"].clone())
    );
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 1);
}

#[tokio::test]
async fn a_send_that_leaves_with_the_upgrade_request_is_stored_and_answered() {
    let (app, desk) = desk_app().await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("ready").await;
    let send = json!({"type": "send", "chat_id": desk.chat_id, "local_id": "early", "text": "hi"});
    let mut customer = app.ws_with_first_frame(&desk.customer, send).await;
    let ack = customer.next_of("ack").await;
    assert_eq!(
        (ack["local_id"].clone(), ack["seq"].clone()),
        (json!("early"), json!(1))
    );
    assert_eq!(operator.next_of("message").await["message"]["text"], "hi");
}

#[tokio::test]
async fn sockets_work_without_socket_threads_too() {
    let (app, desk) = desk_app_with(|c| c.socket_threads = Some(0)).await;
    let mut customer = app.ws(&desk.customer, "").await;
    let mut operator = app.ws(&desk.operator, "").await;
    customer.next_of("ready").await;
    operator.next_of("ready").await;
    customer
        .send(json!({"type": "send", "chat_id": desk.chat_id, "local_id": "l1", "text": "hi"}))
        .await;
    assert_eq!(customer.next_of("ack").await["seq"], 1);
    assert_eq!(operator.next_of("message").await["message"]["text"], "hi");
}

/// A client may send again before its last send is acked: the sends are stored in the
/// order sent, and the answers (acks and errors alike) come back in that order.
#[tokio::test]
async fn a_burst_of_sends_is_stored_and_answered_in_order() {
    let (app, desk) = desk_app().await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    for i in 0..40 {
        // Send 20 is refused (empty text) and takes its place among the answers.
        let text = if i == 20 {
            String::new()
        } else {
            format!("m{i}")
        };
        customer
            .send(
                json!({"type": "send", "id": format!("s{i}"), "chat_id": desk.chat_id,
                "local_id": format!("l{i}"), "text": text}),
            )
            .await;
    }
    let mut answers = Vec::new();
    while answers.len() < 40 {
        let f = customer.recv().await.expect("open");
        if f["type"] == "ack" || f["type"] == "error" {
            answers.push((f["id"].clone(), f["type"].clone(), f["seq"].clone()));
        }
    }
    let expected: Vec<_> = (0..40)
        .map(|i| {
            let seq = match i {
                20 => Value::Null,
                i if i < 20 => json!(i + 1),
                i => json!(i),
            };
            let kind = if i == 20 { "error" } else { "ack" };
            (json!(format!("s{i}")), json!(kind), seq)
        })
        .collect();
    assert_eq!(answers, expected);
    let mut texts = Vec::new();
    while texts.len() < 39 {
        let m = operator.next_of("message").await;
        texts.push(m["message"]["text"].as_str().expect("text").to_owned());
    }
    let sent: Vec<String> = (0..40)
        .filter(|i| *i != 20)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(texts, sent);
}

#[tokio::test]
async fn typing_reaches_the_other_side_and_is_not_stored() {
    let (app, desk) = desk_app().await;
    let mut customer = app.ws(&desk.customer, "").await;
    let mut operator = app.ws(&desk.operator, "").await;
    customer.next_of("ready").await;
    operator.next_of("ready").await;
    customer
        .send(json!({"type": "typing", "chat_id": desk.chat_id}))
        .await;
    let typing = operator.next_of("typing").await;
    assert_eq!(
        typing["who"],
        json!({"kind": "customer", "id": desk.customer_id})
    );
    assert_eq!(typing["typing"], true);
    customer
        .send(json!({"type": "typing", "chat_id": desk.chat_id, "typing": false}))
        .await;
    assert_eq!(operator.next_of("typing").await["typing"], false);
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 0);
    // Typing into a chat one is not in is refused.
    customer
        .send(json!({"type": "typing", "id": "t9", "chat_id": 999_999}))
        .await;
    let err = customer.next_of("error").await;
    assert_eq!(
        (err["id"].clone(), err["code"].clone()),
        (json!("t9"), json!("not_found"))
    );
}

#[tokio::test]
async fn operator_presence_follows_sockets_and_choices() {
    let (app, desk) = desk_app().await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("ready").await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("ready").await;
    let online = customer.next_of("presence").await;
    assert_eq!(
        (online["operator_id"].clone(), online["presence"].clone()),
        (json!(desk.operator_id), json!("online"))
    );
    operator
        .send(json!({"type": "presence", "presence": "away"}))
        .await;
    assert_eq!(customer.next_of("presence").await["presence"], "away");
    let op = app.get("/v1/me", &desk.operator).await.expect(200);
    assert_eq!(op["operator"]["presence"], "away");
    drop(operator);
    assert_eq!(customer.next_of("presence").await["presence"], "offline");
    // Customers have no presence to set.
    customer
        .send(json!({"type": "presence", "id": "p", "presence": "online"}))
        .await;
    assert_eq!(customer.next_of("error").await["code"], "forbidden");
}

#[tokio::test]
async fn every_device_of_a_person_receives() {
    let (app, desk) = desk_app().await;
    let mut phone = app.ws(&desk.customer, "").await;
    let mut laptop = app.ws(&desk.customer, "").await;
    phone.next_of("ready").await;
    laptop.next_of("ready").await;
    app.send(&desk.operator, desk.chat_id, "to all your devices", None)
        .await
        .expect(201);
    for device in [&mut phone, &mut laptop] {
        assert_eq!(
            device.next_of("message").await["message"]["text"],
            "to all your devices"
        );
    }
}

#[tokio::test]
async fn operators_hear_of_new_chats_in_their_inboxes_and_follow_them() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("ready").await;
    let (_, newcomer) = app.customer(&admin, "newcomer").await;
    let chat = app
        .post("/v1/chats", &newcomer, json!({"inbox_id": desk.inbox_id}))
        .await
        .expect(201);
    let created = operator.next_of("chat").await;
    assert_eq!(
        (created["event"].clone(), created["chat"]["id"].clone()),
        (json!("created"), chat["id"].clone())
    );
    app.send(
        &newcomer,
        chat["id"].as_i64().expect("id"),
        "first words",
        None,
    )
    .await
    .expect(201);
    assert_eq!(
        operator.next_of("message").await["message"]["text"],
        "first words"
    );
}

#[tokio::test]
async fn resume_after_a_drop_gives_exactly_what_was_missed_even_while_sends_go_on() {
    let app = Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("ready").await;
    for text in ["one", "two"] {
        app.send(&desk.operator, desk.chat_id, text, None)
            .await
            .expect(201);
    }
    assert_eq!(customer.next_of("message").await["message"]["seq"], 1);
    assert_eq!(customer.next_of("message").await["message"]["seq"], 2);
    drop(customer);

    for i in 3..=5 {
        app.send(&desk.operator, desk.chat_id, &format!("missed {i}"), None)
            .await
            .expect(201);
    }
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.operator,
        json!({"read": 0, "received": 0}),
    )
    .await
    .expect(200);
    // Sends keep coming while the client reconnects and catches up.
    let sender = {
        let (app, token) = (app.clone(), desk.operator.clone());
        tokio::spawn(async move {
            for i in 6..=40 {
                app.send(&token, desk.chat_id, &format!("live {i}"), None)
                    .await
                    .expect(201);
            }
        })
    };
    let mut customer = app
        .ws(&desk.customer, &format!("?resume={}:2", desk.chat_id))
        .await;
    let mut messages = Vec::new();
    let mut saw_resumed = false;
    while seqs_of(&messages).last().copied().unwrap_or(2) < 40 {
        let frame = customer.recv().await.expect("socket open");
        match frame["type"].as_str() {
            Some("message") => messages.push(frame),
            Some("resumed") => saw_resumed = true,
            _ => {}
        }
    }
    sender.await.expect("sender");
    assert!(saw_resumed, "no resumed frame");
    assert_eq!(seqs_of(&messages), (3..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_resume_frame_replays_a_chat_from_a_seq() {
    let (app, desk) = desk_app().await;
    for text in ["a", "b", "c"] {
        app.send(&desk.operator, desk.chat_id, text, None)
            .await
            .expect(201);
    }
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.operator,
        json!({"read": 3}),
    )
    .await
    .expect(200);
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("ready").await;
    customer.next_of("resumed").await;
    customer
        .send(json!({"type": "resume", "chats": {desk.chat_id.to_string(): 1}}))
        .await;
    let mut got = Vec::new();
    let mut receipts = Vec::new();
    loop {
        let f = customer.recv().await.expect("open");
        match f["type"].as_str() {
            Some("message") => got.push(f),
            Some("receipt") => receipts.push(f),
            Some("resumed") => {
                assert_eq!(f["chats"][desk.chat_id.to_string()], 3);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(seqs_of(&got), vec![2, 3]);
    assert!(
        receipts
            .iter()
            .any(|r| r["member"]["kind"] == "operator" && r["read_seq"] == 3)
    );
    customer
        .send(json!({"type": "resume", "id": "x", "chats": {"999999": 0}}))
        .await;
    assert_eq!(customer.next_of("error").await["code"], "not_found");
}

#[tokio::test]
async fn a_slow_consumer_is_closed_while_the_room_keeps_receiving() {
    let (app, desk) = desk_app_with(|c| {
        c.ws_queue = 16;
        c.max_text_chars = 200_000;
    })
    .await;
    let mut fast = app.ws(&desk.customer, "").await;
    let mut slow = app.ws(&desk.customer, "").await;
    fast.next_of("ready").await;
    slow.next_of("ready").await;
    let big = "x".repeat(100_000);
    let total = 300;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < total {
            let f = fast.next_of("message").await;
            seqs.push(f["message"]["seq"].as_i64().expect("seq"));
        }
        seqs
    });
    // The slow socket reads nothing while 30 MB are sent into its chat.
    for _ in 0..total {
        app.send(&desk.operator, desk.chat_id, &big, None)
            .await
            .expect(201);
    }
    let seqs = reader.await.expect("fast reader");
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>());
    let (code, reason) = slow.closed().await;
    assert_eq!(code, 4008, "reason: {reason}");
    assert!(reason.contains("slow consumer"));
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_usable() {
    let (app, desk) = desk_app().await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("ready").await;
    let cases = [
        (json!("not an object"), None, "bad_frame"),
        (json!({"type": "dance"}), None, "bad_frame"),
        (
            json!({"type": "send", "id": "s1", "chat_id": "one", "text": "x"}),
            Some("s1"),
            "bad_frame",
        ),
        (
            json!({"type": "send", "id": "s2", "chat_id": desk.chat_id, "text": "x", "extra": 1}),
            Some("s2"),
            "bad_frame",
        ),
        (
            json!({"type": "send", "id": "s3", "chat_id": desk.chat_id, "text": ""}),
            Some("s3"),
            "invalid",
        ),
        (
            json!({"type": "send", "id": "s4", "chat_id": 999_999, "text": "x"}),
            Some("s4"),
            "not_found",
        ),
        (
            json!({"type": "read", "id": "s5", "chat_id": desk.chat_id, "seq": 50}),
            Some("s5"),
            "invalid",
        ),
    ];
    for (frame, id, code) in cases {
        ws.send_unchecked(frame.clone()).await;
        let err = ws.next_of("error").await;
        assert_eq!(err["code"], code, "{frame}");
        assert_eq!(err.get("id").and_then(Value::as_str), id, "{frame}");
    }
    ws.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        "{broken".into(),
    ))
    .await;
    assert_eq!(ws.next_of("error").await["code"], "bad_frame");
    ws.send_raw(tokio_tungstenite::tungstenite::Message::Binary(
        vec![1, 2, 3].into(),
    ))
    .await;
    assert_eq!(ws.next_of("error").await["code"], "bad_frame");
    ws.send(json!({"type": "send", "chat_id": desk.chat_id, "text": "still here"}))
        .await;
    assert_eq!(ws.next_of("ack").await["seq"], 1);
}

#[tokio::test]
async fn an_oversize_frame_closes_the_socket_with_1009() {
    let (app, desk) = desk_app_with(|c| c.ws_max_frame_bytes = 2048).await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("ready").await;
    ws.send(json!({"type": "send", "chat_id": desk.chat_id, "text": "y".repeat(4096)}))
        .await;
    let (code, _) = ws.closed().await;
    assert_eq!(code, 1009);
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 0);
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let (app, _desk) = desk_app().await;
    let admin = app.admin().await;
    assert_eq!(app.try_ws("", "").await.err(), Some(401));
    assert_eq!(app.try_ws("sqs_nope", "").await.err(), Some(401));
    assert_eq!(app.try_ws(&admin, "").await.err(), Some(403));
    assert_eq!(app.try_ws("", "?token=garbage").await.err(), Some(401));
}

#[tokio::test]
async fn a_token_in_the_query_or_a_cookie_opens_a_socket() {
    let (app, desk) = desk_app().await;
    let mut by_query = app.ws("", &format!("?token={}", desk.customer)).await;
    assert_eq!(
        by_query.next_of("ready").await["chats"][0]["id"],
        desk.chat_id
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("{}/v1/ws", app.base.replacen("http", "ws", 1))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "cookie",
        format!("theme=dark; souq_token={}", desk.customer)
            .parse()
            .expect("cookie"),
    );
    let (_, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("cookie socket");
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn the_long_poll_answers_when_a_message_is_committed() {
    let (app, desk) = desk_app().await;
    let app = Arc::new(app);
    let poll = {
        let (app, token) = (app.clone(), desk.operator.clone());
        tokio::spawn(async move {
            app.get(
                &format!("/v1/chats/{}/messages?after=0&wait=30", desk.chat_id),
                &token,
            )
            .await
            .expect(200)
        })
    };
    // The poll waits: the chat had nothing after seq 0 when it came.
    crate::helpers::until("the poll waiting", || app.hub().waiting(desk.chat_id) == 1).await;
    assert!(!poll.is_finished(), "answered before anything was sent");
    app.send(&desk.customer, desk.chat_id, "wake up", None)
        .await
        .expect(201);
    // Well inside the 30 s wait: only a wake-up on commit answers this soon.
    let page = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the poll answered on commit")
        .expect("task");
    assert_eq!(page["items"][0]["text"], "wake up");
    assert_eq!(app.hub().waiting(desk.chat_id), 0, "the waiter is gone");
    let r = app
        .get(
            &format!("/v1/chats/{}/messages?wait=5", desk.chat_id),
            &desk.operator,
        )
        .await;
    assert_eq!(r.status, 422, "wait without after");
    let r = app
        .get(
            &format!("/v1/chats/{}/messages?after=0&wait=31", desk.chat_id),
            &desk.operator,
        )
        .await;
    assert_eq!(r.status, 422);
}

/// A desk on a server that pings every second and drops sockets silent for two.
async fn fast_heartbeat_desk() -> (TestApp, Desk) {
    desk_app_with(|c| {
        c.ws_ping = 1;
        c.ws_idle_timeout = 2;
    })
    .await
}

#[tokio::test]
async fn a_silent_socket_is_dropped_after_the_idle_timeout() {
    let (app, desk) = fast_heartbeat_desk().await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    assert_eq!(customer.next_of("presence").await["presence"], "online");
    // The operator's client stops reading, so it answers no pings: to the server it is
    // dead. The server drops it, and with it the operator's presence goes offline, while
    // the customer, who keeps reading, stays connected and hears of it.
    let offline = customer.next_of("presence").await;
    assert_eq!(offline["presence"], "offline");
    let (code, reason) = operator.closed().await;
    // 4002 when the close frame is read; a client that was truly gone sees a reset.
    assert!(code == 4002 || code == 1006, "closed with {code} {reason}");
}

#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_session_expires() {
    let (app, desk) = desk_app_with(|c| {
        c.ws_ping = 1;
        c.ws_idle_timeout = 30;
    })
    .await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("resumed").await;
    // It answers pings while its session lasts...
    ws.answer_pings(2).await;
    // ...which ends 30 days after it began (the default lifetime). The client keeps
    // reading (and answering pings): only the expiry ends the socket, at the next ping.
    app.clock
        .advance(std::time::Duration::from_secs(30 * 24 * 3600 + 1));
    let (code, reason) = tokio::time::timeout(std::time::Duration::from_secs(20), ws.closed())
        .await
        .expect("closed soon after the session expired");
    assert_eq!(code, 4001, "closed with {code} {reason}");
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn a_reading_socket_answers_pings_and_stays_open() {
    let (app, desk) = fast_heartbeat_desk().await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("resumed").await;
    // Keep reading (which answers pings) for longer than the idle timeout: four pings a
    // second apart, against a timeout of two.
    ws.answer_pings(4).await;
    app.send(&desk.operator, desk.chat_id, "still there?", None)
        .await
        .expect(201);
    assert_eq!(
        ws.next_of("message").await["message"]["text"],
        "still there?"
    );
}

#[tokio::test]
async fn too_many_frames_are_refused_with_rate_limited() {
    let (app, desk) = desk_app_with(|c| c.ws_frames_per_sec = 5).await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("resumed").await;
    for i in 0..30 {
        ws.send(json!({"type": "typing", "id": format!("t{i}"), "chat_id": desk.chat_id, "typing": false})).await;
    }
    let limited = ws.next_of("error").await;
    assert_eq!(limited["code"], "rate_limited");
}

#[tokio::test]
async fn shutdown_tells_sockets_to_reconnect_with_1001() {
    let (mut app, desk) = desk_app().await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("resumed").await;
    app.stop();
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1001, "{reason}");
}

/// The desk's customer and operator, each on a socket that has caught up.
async fn both_sides(app: &TestApp, desk: &Desk) -> (crate::helpers::Ws, crate::helpers::Ws) {
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    (customer, operator)
}

/// Send `i` into the desk's chat: id `s{i}`, local_id `l{i}`, text `m{i}`.
fn numbered_send(desk: &Desk, i: usize) -> Value {
    json!({"type": "send", "id": format!("s{i}"), "chat_id": desk.chat_id,
        "local_id": format!("l{i}"), "text": format!("m{i}")})
}

#[tokio::test]
async fn a_stopping_server_answers_every_send_it_took_before_closing_with_1001() {
    let (mut app, desk) = desk_app_with(|c| {
        c.write_timeout = 30;
        c.shutdown_grace = 30;
    })
    .await;
    let (mut customer, mut operator) = both_sides(&app, &desk).await;
    let send = |i: usize| numbered_send(&desk, i);
    customer.send(send(0)).await;
    customer.next_of("ack").await;
    // Ten sends wait on their commit (the chat's writes are held) when the stop comes.
    let hold = app.hold_writes(desk.chat_id).await;
    for i in 1..=10 {
        customer.send(send(i)).await;
    }
    // Frames are taken in order: once the typing behind them is heard, the sends are in.
    customer
        .send(json!({"type": "typing", "chat_id": desk.chat_id, "typing": true}))
        .await;
    operator.next_of("typing").await;
    app.stop();
    crate::helpers::until("the server stopping", || app.hub().is_stopping()).await;
    hold.end().await;
    let (frames, code, reason) = customer.frames_until_closed().await;
    assert_eq!(code, 1001, "{reason}");
    let acks: Vec<_> = frames
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["id"].clone())
        .collect();
    let expected: Vec<_> = (1..=10).map(|i| json!(format!("s{i}"))).collect();
    assert_eq!(
        acks, expected,
        "every send taken is answered before the close"
    );
    let chat = desk.chat_id;
    assert_eq!(
        app.count(&format!("messages WHERE chat_id = {chat}")).await,
        11
    );
}

#[tokio::test]
async fn a_waiting_long_poll_is_answered_when_the_server_stops() {
    let (mut app, desk) = desk_app_with(|c| c.shutdown_grace = 60).await;
    let poll = {
        let client = app.client.clone();
        let url = format!(
            "{}/v1/chats/{}/messages?after=0&wait=30",
            app.base, desk.chat_id
        );
        let token = desk.operator.clone();
        tokio::spawn(async move {
            let r = client.get(url).bearer_auth(token).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.json::<Value>().await?))
        })
    };
    crate::helpers::until("the poll waiting", || app.hub().waiting(desk.chat_id) == 1).await;
    app.stop();
    // Answered at the stop, not cut, and well before its 30 s wait or the 60 s grace.
    let (status, page) = tokio::time::timeout(std::time::Duration::from_secs(5), poll)
        .await
        .expect("the poll answered at the stop")
        .expect("task")
        .expect("a whole response");
    assert_eq!(status, 200);
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn ready_is_the_first_frame_an_operator_gets() {
    let (app, desk) = desk_app().await;
    // Several times, each socket the operator's first (their presence goes online with
    // it, in the rooms of their chats, this socket's among them).
    for _ in 0..5 {
        let mut ws = app.ws(&desk.operator, "").await;
        let first = ws.recv().await.expect("a frame");
        assert_eq!(first["type"], "ready", "{first}");
        drop(ws);
        crate::helpers::until("the operator offline", || {
            !app.hub()
                .is_connected(souq::domain::events::Person::Operator(desk.operator_id))
        })
        .await;
    }
}

#[tokio::test]
async fn a_client_that_breaks_the_protocol_is_told_so_not_to_reconnect() {
    use crate::helpers::{client_frame, close_code_of};
    let (app, desk) = desk_app().await;
    // A frame that is not masked (every client frame must be).
    let unmasked = [0x81, 0x02, b'h', b'i'];
    // Opcode 0x3 is reserved.
    let reserved = client_frame(0x3, b"hi");
    // Text that is not UTF-8.
    let not_utf8 = client_frame(0x1, &[0xff, 0xfe, 0xfd]);
    for (what, bytes, code) in [
        ("unmasked", unmasked.to_vec(), 1002),
        ("reserved opcode", reserved, 1002),
        ("not UTF-8", not_utf8, 1007),
    ] {
        let (mut tcp, early) = app.raw_ws(&desk.customer, &bytes).await;
        assert_eq!(close_code_of(&mut tcp, early).await, Some(code), "{what}");
    }
}

#[tokio::test]
async fn an_operator_who_loses_an_inbox_stops_hearing_its_chats_and_one_who_gains_one_starts() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let other = app.desk(&admin).await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    let assignment = app
        .get(
            &format!("/v1/assignments?operator_id={}", desk.operator_id),
            &admin,
        )
        .await
        .expect(200)["items"][0]["id"]
        .clone();
    app.call(
        reqwest::Method::DELETE,
        &format!("/v1/assignments/{assignment}"),
        Some(&admin),
        None,
    )
    .await
    .expect(204);
    // Give the socket the inbox of the other desk instead.
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": desk.operator_id, "inbox_id": other.inbox_id}),
    )
    .await
    .expect(201);
    // Wait until the socket has followed its new chat (its room on the server)...
    crate::helpers::until("the new chat followed", || {
        app.hub().room_size(other.chat_id) == 1
    })
    .await;
    app.send(&other.customer, other.chat_id, "anyone?", None)
        .await
        .expect(201);
    let heard = operator.next_of("message").await;
    assert_eq!(heard["chat_id"], other.chat_id, "{heard}");
    // And left the old one.
    assert_eq!(
        app.hub().room_size(desk.chat_id),
        0,
        "still in the old room"
    );
    // ...then the old chat's messages no longer reach it: the marker from the new chat
    // comes with nothing of the old one before it.
    app.send(
        &desk.customer,
        desk.chat_id,
        "you should not see this",
        None,
    )
    .await
    .expect(201);
    app.send(&other.customer, other.chat_id, "marker", None)
        .await
        .expect(201);
    loop {
        let f = operator.recv().await.expect("open");
        if f["type"] == "message" {
            assert_eq!(
                f["chat_id"], other.chat_id,
                "a chat of a removed assignment still reaches the socket: {f}"
            );
            if f["message"]["text"] == "marker" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn while_the_database_is_away_sends_are_refused_in_time_and_the_socket_reads_on() {
    let (app, desk) = desk_app_with(|c| c.write_timeout = 1).await;
    let (mut customer, mut operator) = both_sides(&app, &desk).await;
    let send = |i: usize| numbered_send(&desk, i);
    customer.send(send(0)).await;
    assert_eq!(customer.next_of("ack").await["seq"], 1);

    let outage = app.database_outage().await;
    let started = std::time::Instant::now();
    for i in 1..=40 {
        customer.send(send(i)).await;
    }
    customer
        .send(json!({"type": "typing", "chat_id": desk.chat_id, "typing": true}))
        .await;
    // Read on while 32 sends wait: the typing behind them still reaches the desk.
    assert_eq!(operator.next_of("typing").await["typing"], true);
    // Every send is answered, in order, and none is acknowledged.
    let mut answers = Vec::new();
    while answers.len() < 40 {
        let f = customer.recv().await.expect("open");
        if f["type"] == "ack" || f["type"] == "error" {
            answers.push((f["id"].clone(), f["type"].clone(), f["code"].clone()));
        }
    }
    let expected: Vec<_> = (1..=40)
        .map(|i| (json!(format!("s{i}")), json!("error"), json!("unavailable")))
        .collect();
    assert_eq!(answers, expected);
    // A bound of seconds, not the outage's length (the outage is still on).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // REST is answered in time too.
    let r = app
        .send(&desk.customer, desk.chat_id, "over rest", Some("r1"))
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (503, "unavailable"));

    outage.end().await;
    // Back without a restart: the same sends again are stored once each.
    let mut acked = None;
    for _ in 0..100 {
        customer.send(send(1)).await;
        let f = loop {
            let f = customer.recv().await.expect("open");
            if f["type"] == "ack" || f["type"] == "error" {
                break f;
            }
        };
        if f["type"] == "ack" {
            acked = Some(f);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    acked.expect("sends are acknowledged once the database is back");
    for i in 2..=40 {
        customer.send(send(i)).await;
        assert_eq!(customer.next_of("ack").await["id"], format!("s{i}"));
    }
    let chat = desk.chat_id;
    let stored = format!("messages WHERE chat_id = {chat} AND local_id LIKE 'l%'");
    assert_eq!(app.count(&stored).await, 41, "l0 to l40, once each");
}

#[tokio::test]
async fn a_message_committed_but_never_announced_here_still_reaches_every_socket_and_poll() {
    let (app, desk) = desk_app().await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let poll = {
        let (client, token) = (app.client.clone(), desk.customer.clone());
        let url = format!(
            "{}/v1/chats/{}/messages?after=0&wait=30",
            app.base, desk.chat_id
        );
        tokio::spawn(async move {
            let r = client.get(url).bearer_auth(token).send().await?;
            r.json::<Value>().await
        })
    };
    crate::helpers::until("the poll waiting", || app.hub().waiting(desk.chat_id) == 1).await;
    // Committed through another server that announces nothing to this one.
    let other = app.node_beside().await;
    other
        .send(&desk.operator, desk.chat_id, "from the other node", None)
        .await
        .expect(201);
    // Within a few seconds (two rounds of 2 s), from the database.
    let m = customer.next_of("message").await;
    assert_eq!(m["message"]["text"], "from the other node");
    let page = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the poll answered")
        .expect("task")
        .expect("a page");
    assert_eq!(page["items"][0]["text"], "from the other node");
    // Once, not again at the next rounds.
    other
        .send(&desk.operator, desk.chat_id, "and another", None)
        .await
        .expect(201);
    let m = customer.next_of("message").await;
    assert_eq!(m["message"]["text"], "and another");
    assert_eq!(m["message"]["seq"], 2);
}

/// The id of the desk operator's assignment to the desk's inbox.
async fn assignment_of(app: &TestApp, admin: &str, desk: &Desk) -> i64 {
    let list = app
        .get(
            &format!("/v1/assignments?operator_id={}", desk.operator_id),
            admin,
        )
        .await
        .expect(200);
    list["items"][0]["id"].as_i64().expect("an assignment")
}

#[tokio::test]
async fn an_operator_unassigned_elsewhere_loses_the_chat_here_even_unannounced() {
    let (app, desk) = desk_app().await;
    let admin = app.admin().await;
    let (_customer, mut operator) = both_sides(&app, &desk).await;
    assert_eq!(app.hub().room_size(desk.chat_id), 2);
    // Unassigned through another server, which announces nothing to this one.
    let other = app.node_beside().await;
    let id = assignment_of(&other, &admin, &desk).await;
    let r = other
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/assignments/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    // Within a few seconds (the database says so), the socket here leaves the room...
    crate::helpers::until("the operator's socket leaving the room", || {
        app.hub().room_size(desk.chat_id) == 1
    })
    .await;
    // ...and may no longer send into the chat.
    operator.send(numbered_send(&desk, 1)).await;
    let refused = operator.next_of("error").await;
    assert_eq!(
        (refused["id"].as_str(), refused["code"].as_str()),
        (Some("s1"), Some("not_found"))
    );
}

#[tokio::test]
async fn a_resume_frame_leaves_the_chats_the_socket_may_no_longer_see() {
    let (app, desk) = desk_app().await;
    let admin = app.admin().await;
    let (_customer, mut operator) = both_sides(&app, &desk).await;
    // The assignment goes away in the database alone, as if its announcement were lost
    // and the client resumed before the node's next look.
    let id = assignment_of(&app, &admin, &desk).await;
    let db = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("the database");
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        &format!("DELETE FROM assignments WHERE id = {id}"),
    )
    .await
    .expect("deleted");
    operator
        .send(json!({"type": "resume", "id": "r1", "chats": {desk.chat_id.to_string(): 0}}))
        .await;
    let answer = loop {
        let f = operator.recv().await.expect("open");
        if f["type"] == "error" || f["type"] == "resumed" {
            break f;
        }
    };
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(
        app.hub().room_size(desk.chat_id),
        1,
        "the operator left the room"
    );
}

/// A second session token of the desk's customer.
async fn another_customer_session(app: &TestApp, admin: &str, desk: &Desk) -> String {
    let r = app
        .post(
            &format!("/v1/customers/{}/sessions", desk.customer_id),
            admin,
            json!({}),
        )
        .await
        .expect(201);
    r["token"].as_str().expect("a token").to_owned()
}

#[tokio::test]
async fn signing_out_ends_that_token_and_closes_its_sockets_with_4001() {
    let (app, desk) = desk_app().await;
    let admin = app.admin().await;
    let phone = another_customer_session(&app, &admin, &desk).await;
    let mut laptop_ws = app.ws(&desk.customer, "").await;
    laptop_ws.next_of("resumed").await;
    let mut phone_ws = app.ws(&phone, "").await;
    phone_ws.next_of("resumed").await;
    let r = app
        .call(
            reqwest::Method::POST,
            "/v1/auth/sign-out",
            Some(&desk.customer),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(app.get("/v1/me", &desk.customer).await.status, 401);
    let (code, reason) = laptop_ws.closed().await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");
    // The phone's session is another: it goes on.
    app.get("/v1/me", &phone).await.expect(200);
    phone_ws.send(numbered_send(&desk, 1)).await;
    assert_eq!(phone_ws.next_of("ack").await["id"], "s1");
}

#[tokio::test]
async fn an_admin_revokes_a_persons_sessions_on_every_node_even_unannounced() {
    let (app, desk) = desk_app().await;
    let admin = app.admin().await;
    let mut ws = app.ws(&desk.operator, "").await;
    ws.next_of("resumed").await;
    // Revoked through another server, which announces nothing to this one.
    let other = app.node_beside().await;
    let r = other
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/operators/{}/sessions", desk.operator_id),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        app.get("/v1/me", &desk.operator).await.status,
        401,
        "refused at once"
    );
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4001, "{reason}");
    // Another organisation's admin cannot, and an unknown person is 404.
    let globex = app.admin_of("globex").await;
    let path = format!("/v1/operators/{}/sessions", desk.operator_id);
    let r = app
        .call(reqwest::Method::DELETE, &path, Some(&globex), None)
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .call(
            reqwest::Method::DELETE,
            "/v1/customers/999999/sessions",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_socket_closes_at_its_tokens_expiry_unless_refreshed_first() {
    // Sessions of 2 s; heartbeats every 20 s (the default): only the expiry can end them.
    let (app, desk) = desk_app_with(|c| c.session_ttl = 2).await;
    let admin = app.admin().await;
    let mut ws = app.ws(&desk.customer, "").await;
    ws.next_of("resumed").await;
    let mut kept = app.ws(&desk.customer, "").await;
    kept.next_of("resumed").await;
    // A fresh token of someone else is refused; one of the same person keeps the socket.
    kept.send(json!({"type": "refresh", "id": "r0", "token": desk.operator}))
        .await;
    let refused = kept.next_of("error").await;
    assert_eq!(
        (refused["id"].as_str(), refused["code"].as_str()),
        (Some("r0"), Some("forbidden"))
    );
    app.clock.advance(std::time::Duration::from_secs(1));
    let fresh = another_customer_session(&app, &admin, &desk).await;
    kept.send(json!({"type": "refresh", "id": "r1", "token": fresh}))
        .await;
    let refreshed = kept.next_of("refreshed").await;
    assert_eq!(refreshed["id"], "r1");
    // The first socket closes at its expiry, not at a heartbeat 20 s on.
    let started = std::time::Instant::now();
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4001, "{reason}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The refreshed one goes on past the first token's expiry.
    kept.send(numbered_send(&desk, 1)).await;
    assert_eq!(kept.next_of("ack").await["id"], "s1");
}
