use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn opening_a_chat_twice_gives_the_same_open_chat() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let again = app
        .post(
            "/v1/chats",
            &desk.customer,
            json!({"inbox_id": desk.inbox_id}),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], desk.chat_id);
    assert_eq!(again["status"], "pending");
    assert_eq!(again["customer"]["id"], desk.customer_id);
}

#[tokio::test]
async fn an_operator_takes_a_pending_chat_and_a_second_operator_cannot() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let other = app.operator(&admin, "other@acme.test").await;
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": other, "inbox_id": desk.inbox_id}),
    )
    .await
    .expect(201);
    let other_token = app.operator_token(&admin, other).await;

    let taken = app
        .post(
            &format!("/v1/chats/{}/take", desk.chat_id),
            &desk.operator,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(taken["status"], "chatting");
    assert_eq!(taken["operator"]["id"], desk.operator_id);
    // Taking it again is harmless; another operator gets a conflict.
    app.post(
        &format!("/v1/chats/{}/take", desk.chat_id),
        &desk.operator,
        json!({}),
    )
    .await
    .expect(200);
    let r = app
        .post(
            &format!("/v1/chats/{}/take", desk.chat_id),
            &other_token,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 409);

    let finished = app
        .post(
            &format!("/v1/chats/{}/finish", desk.chat_id),
            &desk.operator,
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(finished["status"], "finished");
    let late = app.send(&desk.customer, desk.chat_id, "hello?", None).await;
    assert_eq!(late.status, 409);
    // A finished chat makes room for a new one with the same inbox.
    let fresh = app
        .post(
            "/v1/chats",
            &desk.customer,
            json!({"inbox_id": desk.inbox_id}),
        )
        .await
        .expect(201);
    assert_ne!(fresh["id"], desk.chat_id);
}

#[tokio::test]
async fn an_operators_first_reply_answers_a_pending_chat() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    app.send(&desk.operator, desk.chat_id, "how can I help?", None)
        .await
        .expect(201);
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["status"], "chatting");
    assert_eq!(chat["operator"]["id"], desk.operator_id);
}

#[tokio::test]
async fn operators_see_chats_of_their_inboxes_and_domain_admins_see_the_whole_domain() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let d = app
        .post("/v1/domains", &admin, json!({"name": "mall.test"}))
        .await
        .expect(201);
    let domain_id = d["domain"]["id"].as_i64().expect("id");
    let domain_inbox = d["inbox"]["id"].as_i64().expect("id");
    let store = app
        .post(
            "/v1/inboxes",
            &admin,
            json!({"domain_id": domain_id, "unique_id": "store-1"}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    let seller = app.operator(&admin, "seller@acme.test").await;
    let manager = app.operator(&admin, "manager@acme.test").await;
    let outsider = app.operator(&admin, "outsider@acme.test").await;
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": seller, "inbox_id": store}),
    )
    .await
    .expect(201);
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": manager, "inbox_id": domain_inbox, "is_admin": true}),
    )
    .await
    .expect(201);
    let (seller_t, manager_t, outsider_t) = (
        app.operator_token(&admin, seller).await,
        app.operator_token(&admin, manager).await,
        app.operator_token(&admin, outsider).await,
    );
    let (_, buyer) = app.customer(&admin, "buyer").await;
    let store_chat = app
        .post("/v1/chats", &buyer, json!({"inbox_id": store}))
        .await
        .expect(201)["id"]
        .clone();
    let desk_chat = app
        .post("/v1/chats", &buyer, json!({"inbox_id": domain_inbox}))
        .await
        .expect(201)["id"]
        .clone();

    let ids = |v: serde_json::Value| -> Vec<serde_json::Value> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|c| c["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(app.get("/v1/chats", &seller_t).await.expect(200)),
        vec![store_chat.clone()]
    );
    let mut managed = ids(app.get("/v1/chats", &manager_t).await.expect(200));
    managed.sort_by_key(|v| v.as_i64());
    let mut expected = vec![store_chat.clone(), desk_chat.clone()];
    expected.sort_by_key(|v| v.as_i64());
    assert_eq!(managed, expected);
    assert!(ids(app.get("/v1/chats", &outsider_t).await.expect(200)).is_empty());
    assert_eq!(ids(app.get("/v1/chats", &buyer).await.expect(200)).len(), 2);

    // Not visible is exactly "not found", for reads and writes alike.
    for path in [
        format!("/v1/chats/{desk_chat}"),
        format!("/v1/chats/{desk_chat}/messages"),
    ] {
        let r = app.get(&path, &seller_t).await;
        assert_eq!((r.status.as_u16(), r.code()), (404, "not_found"), "{path}");
    }
    let r = app
        .send(&outsider_t, store_chat.as_i64().expect("id"), "hi", None)
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn chat_lists_are_ordered_by_activity_and_paged_with_a_cursor() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let d = app
        .post("/v1/domains", &admin, json!({"name": "many.test"}))
        .await
        .expect(201);
    let domain_id = d["domain"]["id"].as_i64().expect("id");
    let (_, buyer) = app.customer(&admin, "many-buyer").await;
    let mut chats = Vec::new();
    for i in 0..5 {
        let inbox = app
            .post(
                "/v1/inboxes",
                &admin,
                json!({"domain_id": domain_id, "unique_id": format!("s{i}")}),
            )
            .await
            .expect(201)["id"]
            .as_i64()
            .expect("id");
        let chat = app
            .post("/v1/chats", &buyer, json!({"inbox_id": inbox}))
            .await
            .expect(201)["id"]
            .as_i64()
            .expect("id");
        chats.push(chat);
    }
    // The oldest chat gets a message a second later, and so becomes the most recent.
    app.clock.advance(std::time::Duration::from_secs(1));
    app.send(&buyer, chats[0], "bump", None).await.expect(201);

    let mut seen = Vec::new();
    let mut path = "/v1/chats?limit=2".to_owned();
    loop {
        let page = app.get(&path, &buyer).await.expect(200);
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|c| c["id"].as_i64().expect("id")),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/chats?limit=2&before={next}"),
            None => break,
        }
    }
    let mut expected = vec![chats[0]];
    expected.extend(chats[1..].iter().rev());
    assert_eq!(seen, expected);
    let pending = app
        .get("/v1/chats?status=pending", &buyer)
        .await
        .expect(200);
    assert_eq!(pending["items"].as_array().map(Vec::len), Some(5));
    let finished = app
        .get("/v1/chats?status=finished", &buyer)
        .await
        .expect(200);
    assert_eq!(finished["items"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn concurrent_opens_of_one_inbox_give_one_chat() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let (_, buyer) = app.customer(&admin, "eager-buyer").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (app, buyer) = (app.clone(), buyer.clone());
        tasks.push(tokio::spawn(async move {
            let r = app
                .post("/v1/chats", &buyer, json!({"inbox_id": desk.inbox_id}))
                .await;
            assert!(r.status == 200 || r.status == 201, "{}", r.body);
            r.body["id"].as_i64().expect("id")
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("task"));
    }
    assert_eq!(ids.len(), 1, "several open chats: {ids:?}");
}
