use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn messages_get_seq_1_2_3_and_list_in_order() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let a = app
        .send(&desk.customer, desk.chat_id, "hello", Some("c1"))
        .await
        .expect(201);
    let b = app
        .send(&desk.operator, desk.chat_id, "hi, how can I help?", None)
        .await
        .expect(201);
    let c = app
        .send(&desk.customer, desk.chat_id, "where is my order?", None)
        .await
        .expect(201);
    assert_eq!(
        [&a["seq"], &b["seq"], &c["seq"]],
        [&json!(1), &json!(2), &json!(3)]
    );
    assert_eq!(
        a["author"],
        json!({"kind": "customer", "id": desk.customer_id})
    );
    assert_eq!(
        b["author"],
        json!({"kind": "operator", "id": desk.operator_id})
    );
    assert_eq!(a["status"], "sent");

    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.operator,
        )
        .await
        .expect(200);
    let texts: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["hello", "hi, how can I help?", "where is my order?"]
    );
    assert_eq!(page["has_more"], false);
}

#[tokio::test]
async fn paging_by_seq_after_and_before() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for i in 1..=7 {
        app.send(&desk.customer, desk.chat_id, &format!("m{i}"), None)
            .await
            .expect(201);
    }
    let seqs = |v: &serde_json::Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| m["seq"].as_i64().expect("seq"))
            .collect()
    };
    let path = |q: &str| format!("/v1/chats/{}/messages?{q}", desk.chat_id);
    let after = app
        .get(&path("after=2&limit=3"), &desk.customer)
        .await
        .expect(200);
    assert_eq!(
        (seqs(&after), after["has_more"].clone()),
        (vec![3, 4, 5], json!(true))
    );
    let tail = app
        .get(&path("after=5&limit=3"), &desk.customer)
        .await
        .expect(200);
    assert_eq!(
        (seqs(&tail), tail["has_more"].clone()),
        (vec![6, 7], json!(false))
    );
    let latest = app.get(&path("limit=3"), &desk.customer).await.expect(200);
    assert_eq!(
        (seqs(&latest), latest["has_more"].clone()),
        (vec![5, 6, 7], json!(true))
    );
    let before = app
        .get(&path("before=3&limit=5"), &desk.customer)
        .await
        .expect(200);
    assert_eq!(
        (seqs(&before), before["has_more"].clone()),
        (vec![1, 2], json!(false))
    );
    let both = app.get(&path("before=3&after=1"), &desk.customer).await;
    assert_eq!(both.status, 422);
}

#[tokio::test]
async fn resend_with_same_local_id_returns_the_first_message() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let first = app
        .send(&desk.customer, desk.chat_id, "once", Some("l-1"))
        .await
        .expect(201);
    let again = app
        .send(&desk.customer, desk.chat_id, "once", Some("l-1"))
        .await
        .expect(200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["seq"], first["seq"]);
    // The same local_id from the other side is another message.
    let theirs = app
        .send(&desk.operator, desk.chat_id, "mine", Some("l-1"))
        .await
        .expect(201);
    assert_eq!(theirs["seq"], 2);
    let all = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn concurrent_resends_of_one_local_id_store_one_message() {
    let app = Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (app, token) = (app.clone(), desk.customer.clone());
        tasks.push(tokio::spawn(async move {
            let r = app.send(&token, desk.chat_id, "dup", Some("same")).await;
            assert!(r.status == 200 || r.status == 201, "{}", r.body);
            r.body["id"].as_i64().expect("id")
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("task"));
    }
    assert_eq!(ids.len(), 1, "one local_id gave several messages: {ids:?}");
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 1);
}

#[tokio::test]
async fn concurrent_sends_into_one_chat_get_seq_1_to_800_without_gaps() {
    let app = Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let app = app.clone();
        let token = if t % 2 == 0 {
            desk.customer.clone()
        } else {
            desk.operator.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..100 {
                let r = app
                    .send(
                        &token,
                        desk.chat_id,
                        &format!("t{t} m{i}"),
                        Some(&format!("t{t}-{i}")),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                seqs.push(r.body["seq"].as_i64().expect("seq"));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.expect("task");
        // Each sender's own messages come back in increasing order.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());

    // The stored order agrees: listing gives 1..=800 once each.
    let mut listed = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(
                &format!(
                    "/v1/chats/{}/messages?after={after}&limit=500",
                    desk.chat_id
                ),
                &desk.customer,
            )
            .await
            .expect(200);
        let items = page["items"].as_array().expect("items");
        listed.extend(items.iter().map(|m| m["seq"].as_i64().expect("seq")));
        after = *listed.last().expect("some");
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(listed, (1..=800).collect::<Vec<_>>());
}

#[tokio::test]
async fn receipts_move_statuses_forward_and_never_back() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for text in ["one", "two", "three"] {
        app.send(&desk.customer, desk.chat_id, text, None)
            .await
            .expect(201);
    }
    let receipts = format!("/v1/chats/{}/receipts", desk.chat_id);
    let r = app
        .post(&receipts, &desk.operator, json!({"received": 3, "read": 1}))
        .await
        .expect(200);
    assert_eq!(
        (r["received_seq"].clone(), r["read_seq"].clone()),
        (json!(3), json!(1))
    );
    // Lower values change nothing.
    let r = app
        .post(&receipts, &desk.operator, json!({"received": 1, "read": 0}))
        .await
        .expect(200);
    assert_eq!(
        (r["received_seq"].clone(), r["read_seq"].clone()),
        (json!(3), json!(1))
    );

    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    let statuses: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["status"].as_str())
        .collect();
    assert_eq!(statuses, ["read", "received", "received"]);

    // Reading implies receiving; past the last message is refused and changes nothing.
    let beyond = app
        .post(&receipts, &desk.operator, json!({"read": 4}))
        .await;
    assert_eq!(beyond.status, 422);
    let r = app
        .post(&receipts, &desk.operator, json!({"read": 3}))
        .await
        .expect(200);
    assert_eq!(
        (r["received_seq"].clone(), r["read_seq"].clone()),
        (json!(3), json!(3))
    );
    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    assert!(
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|m| m["status"] == "read")
    );

    // A member's receipts over its own messages do not mark them.
    app.send(&desk.customer, desk.chat_id, "four", None)
        .await
        .expect(201);
    app.post(&receipts, &desk.customer, json!({"read": 4}))
        .await
        .expect(200);
    let last = app
        .get(
            &format!("/v1/chats/{}/messages?after=3", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    assert_eq!(last["items"][0]["status"], "sent");
}

#[tokio::test]
async fn unread_counts_follow_the_read_cursor() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for text in ["a", "b", "c"] {
        app.send(&desk.customer, desk.chat_id, text, None)
            .await
            .expect(201);
    }
    app.send(&desk.operator, desk.chat_id, "reply", None)
        .await
        .expect(201);
    let unread = |token: String| {
        let app = &app;
        async move { app.get("/v1/chats", &token).await.expect(200)["items"][0]["unread"].clone() }
    };
    assert_eq!(unread(desk.operator.clone()).await, 3);
    assert_eq!(unread(desk.customer.clone()).await, 1);
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.operator,
        json!({"read": 2}),
    )
    .await
    .expect(200);
    assert_eq!(unread(desk.operator.clone()).await, 1);
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.customer,
        json!({"read": 4}),
    )
    .await
    .expect(200);
    assert_eq!(unread(desk.customer.clone()).await, 0);
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.operator)
        .await
        .expect(200);
    assert_eq!(chat["last_message"]["text"], "reply");
    assert_eq!(chat["unread"], 1);
}

/// Concurrent sends (which the message writer batches into shared commits) each succeed or
/// fail on their own, and concurrent resends of one local_id store one message.
#[tokio::test]
async fn concurrent_sends_succeed_or_fail_each_on_their_own() {
    let app = Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let (_, late) = app.customer(&admin, "late-comer").await;
    let closed = app
        .post("/v1/chats", &late, json!({"inbox_id": desk.inbox_id}))
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("chat id");
    let before_close = app
        .send(&late, closed, "before closing", Some("kept"))
        .await
        .expect(201);
    app.post(
        &format!("/v1/chats/{closed}/finish"),
        &desk.operator,
        json!({}),
    )
    .await
    .expect(200);

    // 40 new messages, each sent twice at once, beside sends into the finished chat.
    let mut tasks = Vec::new();
    for i in 0..40 {
        for _ in 0..2 {
            let (app, token) = (app.clone(), desk.customer.clone());
            tasks.push(tokio::spawn(async move {
                let local = format!("m{i}");
                let r = app.send(&token, desk.chat_id, &local, Some(&local)).await;
                (i, r.status, r.body)
            }));
        }
    }
    let mut refused = Vec::new();
    for _ in 0..10 {
        let (app, token) = (app.clone(), late.clone());
        refused.push(tokio::spawn(async move {
            app.send(&token, closed, "too late", None).await.status
        }));
    }
    let mut first_of = std::collections::HashMap::new();
    let mut created = 0;
    for t in tasks {
        let (i, status, body) = t.await.expect("task");
        assert!(status == 201 || status == 200, "{status}: {body}");
        created += usize::from(status == 201);
        let id = body["id"].clone();
        assert_eq!(
            *first_of.entry(i).or_insert_with(|| id.clone()),
            id,
            "two messages for one local_id"
        );
    }
    assert_eq!(created, 40, "each local_id created once");
    for t in refused {
        assert_eq!(t.await.expect("task"), 409);
    }
    let page = app
        .get(
            &format!("/v1/chats/{}/messages?limit=100", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    // The finished chat kept only what it had; a resend of that still gets it back.
    let again = app
        .send(&late, closed, "before closing", Some("kept"))
        .await
        .expect(200);
    assert_eq!(again["id"], before_close["id"]);
    let kept = app
        .get(&format!("/v1/chats/{closed}/messages"), &late)
        .await
        .expect(200);
    assert_eq!(kept["items"].as_array().map(Vec::len), Some(1));
}
