//! A support desk's day (issue 30): routing new chats to operators with capacities and a
//! queue, hand-over, snooze and reopen, private notes with mentions, labels, attributes
//! and the chat list's filters.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, spawn_app, str_of, unique_name};

/// An inbox of a new domain with `n` operators assigned to it, each with a session:
/// (inbox id, [(operator id, token)]).
pub async fn team(app: &TestApp, admin: &str, n: usize) -> (i64, Vec<(i64, String)>) {
    let name = unique_name("desk").replace('_', "-");
    let d = app
        .post(
            "/v1/domains",
            admin,
            json!({"name": format!("{name}.test")}),
        )
        .await
        .expect(201);
    let inbox_id = d["inbox"]["id"].as_i64().expect("inbox id");
    let mut ops = Vec::new();
    for i in 0..n {
        let id = app
            .operator(admin, &format!("op{i}-{name}@acme.test"))
            .await;
        app.post(
            "/v1/assignments",
            admin,
            json!({"operator_id": id, "inbox_id": inbox_id}),
        )
        .await
        .expect(201);
        ops.push((id, app.operator_token(admin, id).await));
    }
    (inbox_id, ops)
}

pub async fn presence(app: &TestApp, token: &str, presence: &str) {
    let r = app
        .call(
            Method::PUT,
            "/v1/me/presence",
            Some(token),
            Some(json!({"presence": presence})),
        )
        .await;
    assert!(r.status.is_success(), "presence: {}", r.body);
}

/// A new customer opens a chat in the inbox: (customer token, chat).
pub async fn visitor(app: &TestApp, admin: &str, inbox_id: i64) -> (String, Value) {
    let (_, token) = app.customer(admin, &unique_name("visitor")).await;
    let chat = app
        .post("/v1/chats", &token, json!({"inbox_id": inbox_id}))
        .await
        .expect(201);
    (token, chat)
}

fn operator_of(chat: &Value) -> Option<i64> {
    chat["operator"]["id"].as_i64()
}

#[tokio::test]
async fn round_robin_hands_chats_in_turn_within_capacity_and_queues_the_rest_in_order() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 3).await;
    let inbox_view = app
        .patch(
            &format!("/v1/inboxes/{inbox}"),
            &admin,
            json!({"routing": "round_robin", "capacity": 1}),
        )
        .await
        .expect(200);
    assert_eq!(
        (
            inbox_view["routing"].clone(),
            inbox_view["capacity"].clone()
        ),
        (json!("round_robin"), json!(1))
    );
    // Two online, one away: the away one gets nothing.
    presence(&app, &ops[0].1, "online").await;
    presence(&app, &ops[1].1, "online").await;
    presence(&app, &ops[2].1, "away").await;
    let mut chats = Vec::new();
    for _ in 0..4 {
        chats.push(visitor(&app, &admin, inbox).await);
    }
    let got: Vec<Option<i64>> = chats.iter().map(|(_, c)| operator_of(c)).collect();
    assert_eq!(
        got,
        [Some(ops[0].0), Some(ops[1].0), None, None],
        "in turn, one each (capacity 1), the rest queued"
    );
    // The queue, in arrival order, with places for the customers.
    let place = |i: usize| {
        let (token, chat) = &chats[i];
        let path = format!("/v1/chats/{}/queue", chat["id"]);
        let token = token.clone();
        let app = &app;
        async move { app.get(&path, &token).await.expect(200) }
    };
    assert_eq!(place(2).await["position"], 1);
    let second = place(3).await;
    assert_eq!(
        (
            second["position"].clone(),
            second["estimated_wait_secs"].clone()
        ),
        (json!(2), Value::Null),
        "no chat has waited yet, so no estimate"
    );
    assert_eq!(place(0).await["position"], Value::Null);
    let mut third = app.ws(&chats[3].0, "").await;
    third.next_of("resumed").await;

    // Two seconds later the first operator finishes: the oldest queued chat is theirs at
    // once, and the last customer moves up to first, told how long a place took.
    app.clock.advance(std::time::Duration::from_secs(2));
    app.post(
        &format!("/v1/chats/{}/finish", chats[0].1["id"]),
        &ops[0].1,
        json!({}),
    )
    .await
    .expect(200);
    let second = app
        .get(&format!("/v1/chats/{}", chats[2].1["id"]), &ops[0].1)
        .await
        .expect(200);
    assert_eq!(operator_of(&second), Some(ops[0].0));
    assert!(second["assigned_at"].is_i64(), "{second}");
    let frame = third.next_of("queue").await;
    assert_eq!(
        (frame["chat_id"].clone(), frame["position"].clone()),
        (chats[3].1["id"].clone(), json!(1))
    );
    // The one chat that waited took two seconds (and a moment of the test's own).
    let estimate = frame["estimated_wait_secs"].as_i64().expect("an estimate");
    assert!((2..=3).contains(&estimate), "{frame}");
    // The away operator comes online: the last queued chat is theirs.
    presence(&app, &ops[2].1, "online").await;
    let last = app
        .get(&format!("/v1/chats/{}", chats[3].1["id"]), &admin)
        .await
        .expect(200);
    assert_eq!(operator_of(&last), Some(ops[2].0));
    // A routed chat is its operator's: another cannot take it.
    let taken = app
        .post(
            &format!("/v1/chats/{}/take", chats[3].1["id"]),
            &ops[1].1,
            json!({}),
        )
        .await;
    assert_eq!(taken.status, 409, "{}", taken.body);
    app.post(
        &format!("/v1/chats/{}/take", chats[3].1["id"]),
        &ops[2].1,
        json!({}),
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn least_busy_gives_a_chat_to_whoever_has_fewest_open_and_an_operators_own_capacity_holds() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 2).await;
    for (_, token) in &ops {
        presence(&app, token, "online").await;
    }
    // Two chats before routing is on, both taken by the first operator.
    for _ in 0..2 {
        let (_, chat) = visitor(&app, &admin, inbox).await;
        app.post(
            &format!("/v1/chats/{}/take", chat["id"]),
            &ops[0].1,
            json!({}),
        )
        .await
        .expect(200);
    }
    app.patch(
        &format!("/v1/operators/{}", ops[1].0),
        &admin,
        json!({"capacity": 2}),
    )
    .await
    .expect(200);
    app.patch(
        &format!("/v1/inboxes/{inbox}"),
        &admin,
        json!({"routing": "least_busy"}),
    )
    .await
    .expect(200);
    let mut to = Vec::new();
    for _ in 0..5 {
        to.push(operator_of(&visitor(&app, &admin, inbox).await.1));
    }
    // 0 has 2 open, 1 has none: 1, 1 (now 2 each; 1 is full at 2), then 0, 0, 0.
    assert_eq!(
        to,
        [
            Some(ops[1].0),
            Some(ops[1].0),
            Some(ops[0].0),
            Some(ops[0].0),
            Some(ops[0].0)
        ]
    );
    // Bad settings change nothing.
    for bad in [
        json!({"routing": "random"}),
        json!({"capacity": 0}),
        json!({"reopen_secs": -1}),
        json!({"capacity": "2"}),
    ] {
        let r = app
            .patch(&format!("/v1/inboxes/{inbox}"), &admin, bad.clone())
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let r = app
        .patch(
            &format!("/v1/inboxes/{inbox}"),
            &ops[0].1,
            json!({"capacity": 3}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = app
        .patch(
            &format!("/v1/operators/{}", ops[0].0),
            &ops[0].1,
            json!({"capacity": 3}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let inbox_view = app
        .get(&format!("/v1/inboxes/{inbox}"), &admin)
        .await
        .expect(200);
    assert_eq!(inbox_view["routing"], "least_busy");
    assert_eq!(inbox_view["capacity"], Value::Null);
}

#[tokio::test]
async fn many_chats_opened_at_once_each_go_to_exactly_one_operator_within_capacity() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 4).await;
    for (_, token) in &ops {
        presence(&app, token, "online").await;
    }
    app.patch(
        &format!("/v1/inboxes/{inbox}"),
        &admin,
        json!({"routing": "round_robin", "capacity": 3}),
    )
    .await
    .expect(200);
    let mut customers = Vec::new();
    for _ in 0..20 {
        customers.push(app.customer(&admin, &unique_name("rush")).await.1);
    }
    // Operators go offline and online meanwhile.
    let flapping = async {
        for _ in 0..5 {
            presence(&app, &ops[3].1, "offline").await;
            presence(&app, &ops[3].1, "online").await;
        }
    };
    let opens = futures_util::future::join_all(
        customers
            .iter()
            .map(|token| app.post("/v1/chats", token, json!({"inbox_id": inbox}))),
    );
    let (opened, ()) = tokio::join!(opens, flapping);
    assert!(opened.iter().all(|r| r.status == 201));
    // Routing settles (the sweep catches what a flap missed): 12 places, 8 queued.
    let loads = eventually("12 chats routed", || async {
        let page = app
            .get(&format!("/v1/chats?inbox_id={inbox}&limit=200"), &admin)
            .await
            .expect(200);
        let mut loads: HashMap<i64, i64> = HashMap::new();
        let mut queued = 0;
        for c in page["items"].as_array().expect("items") {
            match operator_of(c) {
                Some(op) => *loads.entry(op).or_default() += 1,
                None => queued += 1,
            }
        }
        (loads.values().sum::<i64>() == 12 && queued == 8).then_some(loads)
    })
    .await;
    assert!(
        loads.values().all(|n| *n == 3),
        "capacity 3 each: {loads:?}"
    );
    // Every queued chat has a distinct place 1..=8.
    let page = app
        .get(
            &format!("/v1/chats?inbox_id={inbox}&operator_id=none"),
            &admin,
        )
        .await
        .expect(200);
    let mut places = Vec::new();
    for c in page["items"].as_array().expect("items") {
        let place = app
            .get(&format!("/v1/chats/{}/queue", c["id"]), &admin)
            .await
            .expect(200);
        places.push(place["position"].as_i64().expect("queued"));
    }
    places.sort();
    assert_eq!(places, (1..=8).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_hand_over_moves_the_chat_with_a_notice_both_sides_see() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 2).await;
    let (billing, billing_ops) = team(&app, &admin, 1).await;
    let (customer, chat) = visitor(&app, &admin, inbox).await;
    let id = chat["id"].as_i64().expect("id");
    app.send(&customer, id, "my card was charged twice", None)
        .await
        .expect(201);
    app.post(&format!("/v1/chats/{id}/take"), &ops[0].1, json!({}))
        .await
        .expect(200);
    let mut watching = app.ws(&customer, "").await;
    watching.next_of("resumed").await;
    // To a colleague, with a note.
    let moved = app
        .post(
            &format!("/v1/chats/{id}/transfer"),
            &ops[0].1,
            json!({"operator_id": ops[1].0, "note": "a refund question"}),
        )
        .await
        .expect(200);
    assert_eq!(operator_of(&moved), Some(ops[1].0));
    assert_eq!(moved["status"], "chatting");
    let notice = watching.next_of("message").await;
    assert_eq!(notice["message"]["payload"], "notice");
    assert!(
        str_of(&notice["message"]["text"]).contains("a refund question"),
        "{notice}"
    );
    let history = app
        .get(&format!("/v1/chats/{id}/messages"), &ops[1].1)
        .await
        .expect(200);
    let texts: Vec<String> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| str_of(&m["text"]))
        .collect();
    assert_eq!(texts[0], "my card was charged twice", "history goes along");
    // To another inbox: into its queue; its operator sees it, the old ones no more.
    let moved = app
        .post(
            &format!("/v1/chats/{id}/transfer"),
            &ops[1].1,
            json!({"inbox_id": billing}),
        )
        .await
        .expect(200);
    assert_eq!(
        (moved["inbox_id"].as_i64(), moved["status"].clone()),
        (Some(billing), json!("pending"))
    );
    app.get(&format!("/v1/chats/{id}"), &billing_ops[0].1)
        .await
        .expect(200);
    assert_eq!(
        app.get(&format!("/v1/chats/{id}"), &ops[0].1).await.status,
        404
    );
    let taken = app
        .post(
            &format!("/v1/chats/{id}/take"),
            &billing_ops[0].1,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(operator_of(&taken), Some(billing_ops[0].0));
    // Back to the queue.
    let back = app
        .post(
            &format!("/v1/chats/{id}/unassign"),
            &billing_ops[0].1,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(
        (operator_of(&back), back["status"].clone()),
        (None, json!("pending"))
    );
    let notices = app
        .get(&format!("/v1/chats/{id}/messages"), &customer)
        .await
        .expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|m| m["payload"] == "notice")
        .count();
    assert_eq!(notices, 3, "each hand-over said in the chat");
    // Hand-over notices are not a store's broadcasts.
    // Bad hand-overs change nothing.
    let stranger = app
        .operator(&admin, &format!("{}@acme.test", unique_name("x")))
        .await;
    for (who, body, status) in [
        (&billing_ops[0].1, json!({}), 422),
        (&billing_ops[0].1, json!({"operator_id": stranger}), 422),
        (&billing_ops[0].1, json!({"inbox_id": 999_999}), 404),
        (&customer, json!({"operator_id": ops[0].0}), 403),
        (&billing_ops[0].1, json!({"operator_id": "1"}), 422),
    ] {
        let r = app
            .post(&format!("/v1/chats/{id}/transfer"), who, body.clone())
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
    }
    let after = app
        .get(&format!("/v1/chats/{id}"), &admin)
        .await
        .expect(200);
    assert_eq!(
        (operator_of(&after), after["inbox_id"].as_i64()),
        (None, Some(billing))
    );
}

#[tokio::test]
async fn notes_reach_operators_and_mentioned_colleagues_and_never_the_customer() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 2).await;
    let (customer, chat) = visitor(&app, &admin, inbox).await;
    let id = chat["id"].as_i64().expect("id");
    app.send(&customer, id, "hello", None).await.expect(201);
    let mut customer_ws = app.ws(&customer, "").await;
    customer_ws.next_of("resumed").await;
    let mut colleague_ws = app.ws(&ops[1].1, "").await;
    colleague_ws.next_of("resumed").await;
    let email = app
        .get(&format!("/v1/operators/{}", ops[1].0), &admin)
        .await
        .expect(200)["email"]
        .clone();
    let local = str_of(&email).split('@').next().expect("local").to_owned();
    let note = app
        .post(
            &format!("/v1/chats/{id}/notes"),
            &ops[0].1,
            json!({"text": format!("SECRETWORD: @{local} can you check the refund?")}),
        )
        .await
        .expect(201);
    assert_eq!(note["mentions"], json!([ops[1].0]));
    let frame = colleague_ws.next_of("note").await;
    assert_eq!(frame["note"]["id"], note["id"]);
    let told = colleague_ws.next_of("notification").await;
    assert_eq!(told["notification"]["kind"], "mention");
    // A visible message after the note: the customer's socket gets it and nothing else.
    app.send(&ops[0].1, id, "checking now", None)
        .await
        .expect(201);
    let next = customer_ws.next_of("message").await;
    assert_eq!(next["message"]["text"], "checking now");
    let mut frames = Vec::new();
    while let Ok(Some(f)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), customer_ws.recv()).await
    {
        frames.push(f);
    }
    let seen = format!("{next}{frames:?}");
    assert!(!seen.contains("SECRETWORD"), "socket: {seen}");
    // Not over REST, the chat list, the notes route, notifications, or iqstore.
    let mut everything = String::new();
    for path in [
        format!("/v1/chats/{id}/messages"),
        format!("/v1/chats/{id}"),
        "/v1/chats".to_owned(),
        "/v1/notifications".to_owned(),
    ] {
        everything.push_str(&app.get(&path, &customer).await.expect(200).to_string());
    }
    let notes = app.get(&format!("/v1/chats/{id}/notes"), &customer).await;
    assert_eq!(notes.status, 403);
    everything.push_str(&notes.body.to_string());
    let iq = crate::iqstore::post(
        &app,
        "chats/channel/history/support",
        crate::iqstore::cookie(&customer),
        "{}",
    )
    .await;
    everything.push_str(&iq.to_string());
    assert!(!everything.contains("SECRETWORD"), "{everything}");
    // Operators list them; a bad mention or note changes nothing.
    let listed = app
        .get(&format!("/v1/chats/{id}/notes"), &ops[1].1)
        .await
        .expect(200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    let stranger = app
        .operator(&admin, &format!("{}@acme.test", unique_name("y")))
        .await;
    for body in [
        json!({"text": "x", "mentions": [stranger]}),
        json!({"text": "  "}),
        json!({"text": 5}),
    ] {
        let r = app
            .post(&format!("/v1/chats/{id}/notes"), &ops[0].1, body.clone())
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
    }
    let r = app
        .post(
            &format!("/v1/chats/{id}/notes"),
            &customer,
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.count(&format!("notes WHERE chat_id = {id}")).await, 1);
}

#[tokio::test]
async fn a_snooze_ends_when_the_customer_writes_or_its_time_passes() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 1).await;
    let op = &ops[0].1;
    let (customer, chat) = visitor(&app, &admin, inbox).await;
    let id = chat["id"].as_i64().expect("id");
    let snoozed = app
        .post(&format!("/v1/chats/{id}/snooze"), op, json!({}))
        .await
        .expect(200);
    assert_eq!(
        (snoozed["snoozed"].clone(), snoozed["snoozed_until"].clone()),
        (json!(true), Value::Null)
    );
    let awake_ids = |page: Value| -> Vec<i64> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|c| c["id"].as_i64())
            .collect()
    };
    let listed = app.get("/v1/chats?snoozed=false", op).await.expect(200);
    assert!(!awake_ids(listed).contains(&id));
    let listed = app.get("/v1/chats?snoozed=true", op).await.expect(200);
    assert_eq!(awake_ids(listed), [id]);
    // The customer never sees it.
    let theirs = app
        .get(&format!("/v1/chats/{id}"), &customer)
        .await
        .expect(200);
    assert!(theirs.get("snoozed").is_none(), "{theirs}");
    // An operator's own message does not wake it; the customer's does.
    app.send(op, id, "we will get back to you", None)
        .await
        .expect(201);
    assert_eq!(
        app.get(&format!("/v1/chats/{id}"), op).await.expect(200)["snoozed"],
        true
    );
    app.send(&customer, id, "any news?", None).await.expect(201);
    assert_eq!(
        app.get(&format!("/v1/chats/{id}"), op).await.expect(200)["snoozed"],
        false
    );
    let listed = app.get("/v1/chats?snoozed=false", op).await.expect(200);
    assert!(awake_ids(listed).contains(&id));

    // Until a time: the clock passing it wakes the chat.
    let until = app.clock.now_ms() + 3_600_000;
    let snoozed = app
        .post(
            &format!("/v1/chats/{id}/snooze"),
            op,
            json!({"until": until}),
        )
        .await
        .expect(200);
    assert_eq!(
        (
            snoozed["snoozed"].clone(),
            snoozed["snoozed_until"].as_i64()
        ),
        (json!(true), Some(until))
    );
    app.clock.advance(std::time::Duration::from_secs(3601));
    assert_eq!(
        app.get(&format!("/v1/chats/{id}"), op).await.expect(200)["snoozed"],
        false
    );
    // Woken by hand.
    app.post(&format!("/v1/chats/{id}/snooze"), op, json!({}))
        .await
        .expect(200);
    let woken = app
        .call(
            Method::DELETE,
            &format!("/v1/chats/{id}/snooze"),
            Some(op),
            None,
        )
        .await
        .expect(200);
    assert_eq!(woken["snoozed"], false);
    // Bad snoozes.
    let past = app.clock.now_ms() - 1;
    for body in [
        json!({"until": past}),
        json!({"until": "soon"}),
        json!({"for": 5}),
    ] {
        let r = app
            .post(&format!("/v1/chats/{id}/snooze"), op, body.clone())
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
    }
    let r = app
        .post(&format!("/v1/chats/{id}/snooze"), &customer, json!({}))
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_finished_chat_reopens_when_its_customer_writes_within_the_window_else_a_new_one_starts()
{
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 1).await;
    let op = &ops[0].1;
    app.patch(
        &format!("/v1/inboxes/{inbox}"),
        &admin,
        json!({"reopen_secs": 2_592_000}),
    )
    .await
    .expect(200);
    let (customer, chat) = visitor(&app, &admin, inbox).await;
    let id = chat["id"].as_i64().expect("id");
    app.send(op, id, "hello", None).await.expect(201);
    app.post(&format!("/v1/chats/{id}/finish"), op, json!({}))
        .await
        .expect(200);
    // Within the window (30 days), a message reopens it with its operator, whose socket,
    // opened since it finished, hears it.
    let mut operator_ws = app.ws(op, "").await;
    operator_ws.next_of("resumed").await;
    app.clock
        .advance(std::time::Duration::from_secs(29 * 24 * 3600));
    app.send(&customer, id, "one more thing", None)
        .await
        .expect(201);
    // (It catches the chat up from the start, then the new message.)
    let mut heard = Vec::new();
    while heard.last().map(String::as_str) != Some("one more thing") {
        heard.push(str_of(
            &operator_ws.next_of("message").await["message"]["text"],
        ));
    }
    assert_eq!(heard, ["hello", "one more thing"]);
    let reopened = app.get(&format!("/v1/chats/{id}"), op).await.expect(200);
    assert_eq!(
        (reopened["status"].clone(), operator_of(&reopened)),
        (json!("chatting"), Some(ops[0].0))
    );
    // Opening a chat in the inbox also reopens it, within the window.
    app.post(&format!("/v1/chats/{id}/finish"), &customer, json!({}))
        .await
        .expect(200);
    let again = app
        .post("/v1/chats", &customer, json!({"inbox_id": inbox}))
        .await
        .expect(200);
    assert_eq!(again["id"].as_i64(), Some(id));
    // Past the window: the finished chat refuses, and a new chat starts.
    app.post(&format!("/v1/chats/{id}/finish"), op, json!({}))
        .await
        .expect(200);
    // (The admin's token of a month ago has expired.)
    let admin = app.admin().await;
    app.patch(
        &format!("/v1/inboxes/{inbox}"),
        &admin,
        json!({"reopen_secs": 600}),
    )
    .await
    .expect(200);
    app.clock.advance(std::time::Duration::from_secs(601));
    let late = app.send(&customer, id, "hello again", None).await;
    assert_eq!(late.status, 409, "{}", late.body);
    let new = app
        .post("/v1/chats", &customer, json!({"inbox_id": inbox}))
        .await
        .expect(201);
    assert_ne!(new["id"].as_i64(), Some(id));
    // With no window (the default), a finished chat never reopens.
    let (plain, plain_ops) = team(&app, &admin, 1).await;
    let (customer, chat) = visitor(&app, &admin, plain).await;
    let id = chat["id"].as_i64().expect("id");
    app.post(
        &format!("/v1/chats/{id}/finish"),
        &plain_ops[0].1,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(app.send(&customer, id, "hi", None).await.status, 409);
}

#[tokio::test]
async fn labels_and_attributes_filter_the_chat_list_and_stay_the_desks_own() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (inbox, ops) = team(&app, &admin, 2).await;
    let op = &ops[0].1;
    let (customer, first) = visitor(&app, &admin, inbox).await;
    let (_, second) = visitor(&app, &admin, inbox).await;
    let (a, b) = (
        first["id"].as_i64().expect("id"),
        second["id"].as_i64().expect("id"),
    );
    let labelled = app
        .call(
            Method::PUT,
            &format!("/v1/chats/{a}/labels"),
            Some(op),
            Some(json!({"labels": ["Refund", "vip", "refund"]})),
        )
        .await
        .expect(200);
    assert_eq!(labelled["labels"], json!(["refund", "vip"]));
    let attributed = app
        .patch(
            &format!("/v1/chats/{a}/attributes"),
            op,
            json!({"attributes": {"order": "A-17", "amount": 40, "urgent": true}}),
        )
        .await
        .expect(200);
    assert_eq!(attributed["attributes"]["order"], "A-17");
    let attributed = app
        .patch(
            &format!("/v1/chats/{a}/attributes"),
            op,
            json!({"attributes": {"urgent": null}}),
        )
        .await
        .expect(200);
    assert_eq!(
        attributed["attributes"],
        json!({"order": "A-17", "amount": 40})
    );
    // The customer sees none of it.
    let theirs = app
        .get(&format!("/v1/chats/{a}"), &customer)
        .await
        .expect(200);
    assert!(
        theirs.get("labels").is_none() && theirs.get("attributes").is_none(),
        "{theirs}"
    );
    let ids = |page: Value| -> Vec<i64> {
        let mut ids: Vec<i64> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|c| c["id"].as_i64())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(app.get("/v1/chats?label=refund", op).await.expect(200)),
        [a]
    );
    assert_eq!(
        ids(app.get("/v1/chats?label=REFUND", op).await.expect(200)),
        [a]
    );
    assert_eq!(
        ids(app.get("/v1/chats?label=none-such", op).await.expect(200)),
        Vec::<i64>::new()
    );
    // Taken by one operator: by operator, and unassigned.
    app.post(&format!("/v1/chats/{b}/take"), &ops[1].1, json!({}))
        .await
        .expect(200);
    assert_eq!(
        ids(app
            .get(&format!("/v1/chats?operator_id={}", ops[1].0), op)
            .await
            .expect(200)),
        [b]
    );
    assert_eq!(
        ids(app
            .get("/v1/chats?operator_id=me", &ops[1].1)
            .await
            .expect(200)),
        [b]
    );
    assert_eq!(
        ids(app
            .get(&format!("/v1/chats?operator_id=none&inbox_id={inbox}"), op)
            .await
            .expect(200)),
        [a]
    );
    assert_eq!(
        ids(app.get("/v1/chats?status=chatting", op).await.expect(200)),
        [b]
    );
    // Unread for the operator: the customer wrote in a; waiting: unanswered for a minute.
    app.send(&customer, a, "where is my refund?", None)
        .await
        .expect(201);
    assert_eq!(
        ids(app.get("/v1/chats?unread=true", op).await.expect(200)),
        [a]
    );
    assert_eq!(
        ids(app.get("/v1/chats?waiting_secs=60", op).await.expect(200)),
        Vec::<i64>::new()
    );
    app.clock.advance(std::time::Duration::from_secs(61));
    assert_eq!(
        ids(app.get("/v1/chats?waiting_secs=60", op).await.expect(200)),
        [a]
    );
    app.send(op, a, "on its way", None).await.expect(201);
    assert_eq!(
        ids(app.get("/v1/chats?waiting_secs=60", op).await.expect(200)),
        Vec::<i64>::new()
    );
    // Customers' labels and attributes, for the desk only.
    let customer_id = first["customer"]["id"].as_i64().expect("customer");
    let tags = app
        .call(
            Method::PUT,
            &format!("/v1/customers/{customer_id}/labels"),
            Some(op),
            Some(json!({"labels": ["wholesale"]})),
        )
        .await
        .expect(200);
    assert_eq!(tags["labels"], json!(["wholesale"]));
    let tags = app
        .patch(
            &format!("/v1/customers/{customer_id}/attributes"),
            &admin,
            json!({"attributes": {"tier": "gold"}}),
        )
        .await
        .expect(200);
    assert_eq!(
        (tags["labels"].clone(), tags["attributes"].clone()),
        (json!(["wholesale"]), json!({"tier": "gold"}))
    );
    assert_eq!(
        app.get(&format!("/v1/customers/{customer_id}/labels"), &customer)
            .await
            .status,
        404
    );
    // Bad input changes nothing.
    for (path, body) in [
        (
            format!("/v1/chats/{a}/attributes"),
            json!({"attributes": {"x": {"nested": 1}}}),
        ),
        (
            format!("/v1/chats/{a}/attributes"),
            json!({"attributes": [1]}),
        ),
        (format!("/v1/chats/{a}/attributes"), json!({"order": "x"})),
    ] {
        let r = app.patch(&path, op, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
    }
    for body in [
        json!({"labels": ["a,b"]}),
        json!({"labels": "vip"}),
        json!({"labels": [""]}),
    ] {
        let r = app
            .call(
                Method::PUT,
                &format!("/v1/chats/{a}/labels"),
                Some(op),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
    }
    for query in [
        "unread=yes",
        "operator_id=someone",
        "label=",
        "waiting_secs=-1",
        "waiting_secs=99999999999999999",
        "snoozed=1",
    ] {
        let r = app.get(&format!("/v1/chats?{query}"), op).await;
        assert_eq!(r.status, 422, "{query}: {}", r.body);
    }
    let kept = app.get(&format!("/v1/chats/{a}"), op).await.expect(200);
    assert_eq!(kept["labels"], json!(["refund", "vip"]));
    assert_eq!(kept["attributes"], json!({"order": "A-17", "amount": 40}));
}
