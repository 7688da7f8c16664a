//! The hojre customer API (seeds/000, 001) replayed as documented: the requests as written
//! (username, token, x, y, page, perPage), the envelope and items compared field by field
//! in name and JSON type, and the two documented errors exactly.

use serde_json::{Value, json};

use crate::helpers::{TestApp, Ws, assert_types, spawn_app};

const PHONE: &str = "09121122777";

fn chat_spec() -> Value {
    json!({"id": "number", "user": "number", "seller": "string", "startDate": "number",
        "status": "string", "store": "string", "storeId": "number", "sellerAvatar": "string"})
}

fn message_spec() -> Value {
    json!({"id": "number", "sender": "string", "text": "string", "sentDate": "number",
        "status": "string", "chat": "number", "senderId": "number", "senderAvatar": "string"})
}

fn listing_spec(item: Value) -> Value {
    json!({"items": [item], "_links": {"self": {"href": "string"}},
        "_meta": {"totalCount": "number", "pageCount": "number", "currentPage": "number", "perPage": "number"}})
}

async fn get(app: &TestApp, path_and_query: &str) -> Value {
    let r = app
        .client
        .get(format!("{}{path_and_query}", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "{path_and_query}");
    r.json().await.expect("JSON")
}

/// A customer with the documented phone, a session, a seller and a store with `n` chats.
async fn shop(app: &TestApp, chats: usize) -> (String, i64, Vec<i64>, String) {
    let admin = app.admin().await;
    let d = app
        .post("/v1/domains", &admin, json!({"name": "hojrenama.test"}))
        .await
        .expect(201);
    let domain_id = d["domain"]["id"].as_i64().expect("id");
    let seller = app
        .post(
            "/v1/operators",
            &admin,
            json!({"email": "seller@hojre.test", "name": "Mohammad"}),
        )
        .await
        .expect(201);
    let seller_id = seller["id"].as_i64().expect("id");
    let seller_token = app.operator_token(&admin, seller_id).await;
    let c = app
        .post(
            "/v1/customers",
            &admin,
            json!({"phone": PHONE, "name": "Mostafa Azizi"}),
        )
        .await
        .expect(201);
    let customer_id = c["id"].as_i64().expect("id");
    let token = crate::helpers::str_of(
        &app.post(
            &format!("/v1/customers/{customer_id}/sessions"),
            &admin,
            json!({}),
        )
        .await
        .expect(201)["token"],
    );
    let mut ids = Vec::new();
    for i in 0..chats {
        let store = app
            .post(
                "/v1/inboxes",
                &admin,
                json!({"domain_id": domain_id, "unique_id": format!("store-{i}"), "name": "Test"}),
            )
            .await
            .expect(201)["id"]
            .as_i64()
            .expect("id");
        app.post(
            "/v1/assignments",
            &admin,
            json!({"operator_id": seller_id, "inbox_id": store}),
        )
        .await
        .expect(201);
        ids.push(
            app.post("/v1/chats", &token, json!({"inbox_id": store}))
                .await
                .expect(201)["id"]
                .as_i64()
                .expect("id"),
        );
    }
    (token, customer_id, ids, seller_token)
}

#[tokio::test]
async fn chat_logs_answer_as_documented_with_paging() {
    let app = spawn_app().await;
    let (token, customer_id, chats, _) = shop(&app, 7).await;
    let all = get(
        &app,
        &format!("/web/chats?username={PHONE}&token={token}&x=35.235564&y=45.234523"),
    )
    .await;
    assert_types(&all, &listing_spec(chat_spec()), "chats");
    assert_eq!(
        all["_meta"],
        json!({"totalCount": 7, "pageCount": 1, "currentPage": 1, "perPage": 300})
    );
    let ids: Vec<i64> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, chats);
    let first = &all["items"][0];
    assert_eq!(
        (
            first["user"].clone(),
            first["seller"].clone(),
            first["status"].clone(),
            first["store"].clone()
        ),
        (
            json!(customer_id),
            json!("Mohammad"),
            json!("pending"),
            json!("Test")
        )
    );
    assert!(
        all["_links"]["self"]["href"].as_str().is_some_and(
            |h| h.contains("/web/chats?username=") && h.ends_with("page=1&per-page=300")
        )
    );

    let page2 = get(
        &app,
        &format!("/web/chats?username={PHONE}&token={token}&x=35.2&y=45.2&perPage=3&page=2"),
    )
    .await;
    assert_eq!(
        page2["_meta"],
        json!({"totalCount": 7, "pageCount": 3, "currentPage": 2, "perPage": 3})
    );
    let ids: Vec<i64> = page2["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, chats[3..6]);
    let dashed = get(
        &app,
        &format!("/web/chats?username={PHONE}&token={token}&per-page=5&page=2"),
    )
    .await;
    assert_eq!(dashed["items"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn chat_messages_come_newest_first_as_documented() {
    let app = spawn_app().await;
    let (token, customer_id, chats, seller) = shop(&app, 1).await;
    let chat = chats[0];
    app.send(&token, chat, "test", None).await.expect(201);
    app.send(&seller, chat, "test2", None).await.expect(201);
    app.send(&seller, chat, "test3", None).await.expect(201);
    app.send(&token, chat, "test4", None).await.expect(201);
    let v = get(
        &app,
        &format!(
            "/web/main-chats?username={PHONE}&token={token}&x=35.235564&y=45.234523&id={chat}"
        ),
    )
    .await;
    assert_types(&v, &listing_spec(message_spec()), "main-chats");
    let texts: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["test4", "test3", "test2", "test"]);
    assert_eq!(
        (
            v["items"][0]["sender"].clone(),
            v["items"][0]["senderId"].clone(),
            v["items"][0]["chat"].clone()
        ),
        (json!("Mostafa Azizi"), json!(customer_id), json!(chat))
    );
    assert_eq!(v["items"][1]["sender"], "Mohammad");
    assert_eq!(v["_meta"]["totalCount"], 4);
    let paged = get(
        &app,
        &format!("/web/main-chats?username={PHONE}&token={token}&id={chat}&perPage=3&page=2"),
    )
    .await;
    assert_eq!(paged["items"][0]["text"], "test");
}

#[tokio::test]
async fn the_documented_errors_come_exactly_as_written() {
    let app = spawn_app().await;
    let (token, _, chats, _) = shop(&app, 1).await;
    let not_login = json!({"status": "error", "message": "not login", "data": ""});
    for q in [
        "/web/chats".to_owned(),
        format!("/web/chats?username={PHONE}&token=wrong"),
        format!("/web/chats?username=09120000000&token={token}"),
        format!("/web/main-chats?username={PHONE}&id={}", chats[0]),
    ] {
        assert_eq!(get(&app, &q).await, not_login, "{q}");
    }
    let no_chat = json!({"status": "error", "message": "there is no chat for u", "data": ""});
    assert_eq!(
        get(
            &app,
            &format!("/web/main-chats?username={PHONE}&token={token}&id=999999")
        )
        .await,
        no_chat
    );
    assert_eq!(
        get(
            &app,
            &format!("/web/main-chats?username={PHONE}&token={token}&id=abc")
        )
        .await,
        no_chat
    );
    // Another customer's chat is not yours either.
    let admin = app.admin().await;
    let (_, other) = app.customer(&admin, "someone-else").await;
    let theirs = app.post("/v1/chats", &other, json!({"inbox_id": app.get(&format!("/v1/chats/{}", chats[0]), &token).await.expect(200)["inbox_id"]})).await.expect(201);
    assert_eq!(
        get(
            &app,
            &format!(
                "/web/main-chats?username={PHONE}&token={token}&id={}",
                theirs["id"]
            )
        )
        .await,
        no_chat
    );
    // A size below 1 is read as 1, as the document's framework does.
    let smallest = get(
        &app,
        &format!("/web/chats?username={PHONE}&token={token}&perPage=0"),
    )
    .await;
    assert_eq!(smallest["_meta"]["perPage"], 1);
}

#[tokio::test]
async fn a_message_submitted_to_a_store_is_pushed_and_seen_everywhere() {
    let app = spawn_app().await;
    let (token, _, chats, seller) = shop(&app, 1).await;
    let store = app
        .get(&format!("/v1/chats/{}", chats[0]), &token)
        .await
        .expect(200)["inbox_id"]
        .as_i64()
        .expect("id");
    let mut seller_socket = app.ws(&seller, "").await;
    seller_socket.next_of("resumed").await;
    let r = app
        .client
        .post(format!(
            "{}/web/submit-store-messages?username={PHONE}&token={token}",
            app.base
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("storeId={store}&text=is%20it%20available%3F"))
        .send()
        .await
        .expect("request");
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v["status"], "success", "{v}");
    assert_types(&v["data"], &message_spec(), "submitted");
    assert_eq!(
        seller_socket.next_of("message").await["message"]["text"],
        "is it available?"
    );
    let listed = get(
        &app,
        &format!("/web/store-messages?username={PHONE}&token={token}&storeId={store}"),
    )
    .await;
    assert_eq!(listed["items"][0]["text"], "is it available?");
    let native = app
        .get(&format!("/v1/chats/{}/messages", chats[0]), &seller)
        .await
        .expect(200);
    assert_eq!(native["items"][0]["text"], "is it available?");
}

#[tokio::test]
async fn a_broadcast_reaches_every_customer_of_the_store_and_no_one_else() {
    let app = spawn_app().await;
    let (token, _, chats, seller) = shop(&app, 2).await;
    let admin = app.admin().await;
    let store = app
        .get(&format!("/v1/chats/{}", chats[0]), &token)
        .await
        .expect(200)["inbox_id"]
        .as_i64()
        .expect("id");
    let other_store = app
        .get(&format!("/v1/chats/{}", chats[1]), &token)
        .await
        .expect(200)["inbox_id"]
        .as_i64()
        .expect("id");
    // A second customer chatted with the store and finished; a third only with another store.
    let (_, second) = app.customer(&admin, "second-buyer").await;
    let second_chat = app
        .post("/v1/chats", &second, json!({"inbox_id": store}))
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    app.post(
        &format!("/v1/chats/{second_chat}/finish"),
        &second,
        json!({}),
    )
    .await
    .expect(200);
    let (_, third) = app.customer(&admin, "third-buyer").await;
    let third_chat = app
        .post("/v1/chats", &third, json!({"inbox_id": other_store}))
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    let mut socket = app.ws(&token, "").await;
    socket.next_of("resumed").await;
    let mut third_socket = app.ws(&third, "").await;
    third_socket.next_of("resumed").await;

    let r = app
        .post(
            &format!("/v1/inboxes/{store}/broadcasts"),
            &seller,
            json!({"text": "20% off today"}),
        )
        .await
        .expect(201);
    assert_eq!(r["chats"], 2, "the customers it reaches");
    let pushed = socket.next_of("broadcast").await;
    assert_eq!(
        (
            pushed["broadcast"]["text"].clone(),
            pushed["broadcast"]["inbox_id"].clone(),
            pushed["broadcast"]["sender"].clone()
        ),
        (json!("20% off today"), json!(store), json!("Mohammad"))
    );

    let listed = get(
        &app,
        &format!("/web/broadcasts?username={PHONE}&token={token}"),
    )
    .await;
    let mut spec = message_spec();
    spec["store"] = json!("string");
    spec["storeId"] = json!("number");
    assert_types(&listed, &listing_spec(spec), "broadcasts");
    assert_eq!(
        (
            listed["items"][0]["text"].clone(),
            listed["items"][0]["storeId"].clone(),
            listed["items"][0]["sender"].clone(),
            listed["items"][0]["chat"].clone(),
            listed["_meta"]["totalCount"].clone()
        ),
        (
            json!("20% off today"),
            json!(store),
            json!("Mohammad"),
            json!(chats[0]),
            json!(1)
        )
    );
    // Stored once: no chat holds it, and the finished chat stays as it was.
    for (chat, who) in [(chats[0], &token), (second_chat, &second)] {
        let view = app.get(&format!("/v1/chats/{chat}"), who).await.expect(200);
        assert_eq!(view["last_seq"], 0, "chat {chat}: {view}");
    }
    assert_eq!(
        app.get(&format!("/v1/chats/{second_chat}"), &second)
            .await
            .expect(200)["status"],
        "finished"
    );
    // The other store's customer neither heard of it nor finds it.
    assert_eq!(
        app.get(&format!("/v1/chats/{third_chat}"), &third)
            .await
            .expect(200)["last_seq"],
        0
    );
    app.send(&third, third_chat, "still there?", None)
        .await
        .expect(201);
    assert!(
        !types_until_message(&mut third_socket)
            .await
            .contains(&"broadcast".to_owned()),
        "the message came, the broadcast before it did not"
    );
    // Customers cannot broadcast; an operator of another store cannot see this one.
    let r = app
        .post(
            &format!("/v1/inboxes/{store}/broadcasts"),
            &token,
            json!({"text": "spam"}),
        )
        .await;
    assert_eq!(r.status, 403);
    let stranger = app.operator(&admin, "stranger@acme.test").await;
    let stranger = app.operator_token(&admin, stranger).await;
    let r = app
        .post(
            &format!("/v1/inboxes/{store}/broadcasts"),
            &stranger,
            json!({"text": "spam"}),
        )
        .await;
    assert_eq!(r.status, 404);
}

/// A customer with a phone and a session (hojre's listing is by phone): their token.
async fn buyer(app: &TestApp, admin: &str, phone: &str) -> String {
    let id = app
        .post(
            "/v1/customers",
            admin,
            json!({"phone": phone, "name": "Buyer"}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    crate::helpers::str_of(
        &app.post(&format!("/v1/customers/{id}/sessions"), admin, json!({}))
            .await
            .expect(201)["token"],
    )
}

/// The texts of a hojre listing, in order.
fn texts(listed: &Value) -> Vec<String> {
    listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| crate::helpers::str_of(&i["text"]))
        .collect()
}

/// The types of the frames a socket gets up to and with the next `message`, which must
/// come (presence and receipts may come on the way).
async fn types_until_message(socket: &mut Ws) -> Vec<String> {
    let mut types = Vec::new();
    loop {
        let frame = socket
            .recv()
            .await
            .expect("a message before the socket closes");
        types.push(crate::helpers::str_of(&frame["type"]));
        if frame["type"] == "message" {
            return types;
        }
    }
}

/// Who a broadcast reaches is decided when it is sent: the customers who had a chat with
/// the store then, online or not, and no one of another organisation.
#[tokio::test]
async fn a_broadcast_is_listed_for_the_stores_customers_of_that_moment_only() {
    let app = spawn_app().await;
    let (token, _, chats, seller) = shop(&app, 1).await;
    let admin = app.admin().await;
    let store = app
        .get(&format!("/v1/chats/{}", chats[0]), &token)
        .await
        .expect(200)["inbox_id"]
        .as_i64()
        .expect("id");
    // Another organisation's customer, online, with a chat in a store of their own.
    let globex = app.admin_of("globex").await;
    let theirs = app.desk(&globex).await;
    let mut outsider = app.ws(&theirs.customer, "").await;
    outsider.next_of("resumed").await;

    let first = app
        .post(
            &format!("/v1/inboxes/{store}/broadcasts"),
            &seller,
            json!({"text": "first"}),
        )
        .await
        .expect(201);
    assert_eq!(first["chats"], 1);
    // A customer who comes to the store afterwards, and one who never does.
    app.clock.advance(std::time::Duration::from_secs(1));
    let later = buyer(&app, &admin, "09120000001").await;
    app.post("/v1/chats", &later, json!({"inbox_id": store}))
        .await
        .expect(201);
    let never = buyer(&app, &admin, "09120000002").await;
    app.clock.advance(std::time::Duration::from_secs(1));
    let second = app
        .post(
            &format!("/v1/inboxes/{store}/broadcasts"),
            &seller,
            json!({"text": "second"}),
        )
        .await
        .expect(201);
    assert_eq!(second["chats"], 2);

    // The first customer was offline for both: both are listed, newest first, in pages.
    let all = get(
        &app,
        &format!("/web/broadcasts?username={PHONE}&token={token}"),
    )
    .await;
    assert_eq!(texts(&all), ["second", "first"]);
    assert_eq!(all["_meta"]["totalCount"], 2);
    let page2 = get(
        &app,
        &format!("/web/broadcasts?username={PHONE}&token={token}&page=2&perPage=1"),
    )
    .await;
    assert_eq!(texts(&page2), ["first"]);
    // The native listing says the same.
    let native = app.get("/v1/broadcasts", &token).await.expect(200);
    assert_eq!(
        (
            texts(&native),
            native["total"].clone(),
            native["items"][0]["chat_id"].clone()
        ),
        (
            vec!["second".to_owned(), "first".to_owned()],
            json!(2),
            json!(chats[0])
        )
    );
    assert_eq!(app.get("/v1/broadcasts", &admin).await.status, 403);
    // The later customer has only what came after their chat; the other, nothing.
    let theirs_later = get(
        &app,
        &format!("/web/broadcasts?username=09120000001&token={later}"),
    )
    .await;
    assert_eq!(texts(&theirs_later), ["second"]);
    let none = get(
        &app,
        &format!("/web/broadcasts?username=09120000002&token={never}"),
    )
    .await;
    assert_eq!(
        (texts(&none), none["_meta"]["totalCount"].clone()),
        (Vec::<String>::new(), json!(0))
    );
    // Nothing reached the other organisation's customer.
    app.send(&theirs.operator, theirs.chat_id, "hello", None)
        .await
        .expect(201);
    assert!(
        !types_until_message(&mut outsider)
            .await
            .contains(&"broadcast".to_owned()),
        "the message came, no broadcast before it"
    );
    // Nor can their operator broadcast to this organisation's store.
    let r = app
        .post(
            &format!("/v1/inboxes/{store}/broadcasts"),
            &theirs.operator,
            json!({"text": "spam"}),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn fields_come_in_the_documents_order() {
    let app = spawn_app().await;
    let (token, _, _, _) = shop(&app, 1).await;
    let text = |q: String| {
        let app = &app;
        async move {
            app.client
                .get(format!("{}{q}", app.base))
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("text")
        }
    };
    let chats = text(format!("/web/chats?username={PHONE}&token={token}")).await;
    assert!(chats.starts_with(r#"{"items":[{"id":"#), "{chats}");
    let order = [
        "\"id\"",
        "\"user\"",
        "\"seller\"",
        "\"startDate\"",
        "\"status\"",
        "\"store\"",
        "\"storeId\"",
        "\"sellerAvatar\"",
        "\"_links\"",
        "\"_meta\"",
        "\"totalCount\"",
        "\"pageCount\"",
        "\"currentPage\"",
        "\"perPage\"",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| chats.find(k).unwrap_or_else(|| panic!("{k} missing")))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "fields out of the document's order: {chats}"
    );
    let error = text("/web/chats".into()).await;
    assert_eq!(
        error,
        r#"{"status":"error","message":"not login","data":""}"#
    );
}

/// A file message shows in main-chats in the documented shape: its text is the file's
/// name and a link that downloads it.
#[tokio::test]
async fn main_chats_show_a_file_message_by_its_name_and_its_link() {
    let app = spawn_app().await;
    let (token, _, chats, seller) = shop(&app, 1).await;
    let chat = chats[0];
    let (status, file) = app
        .upload(&seller, chat, "label.png", crate::files::png(4, 3, 800))
        .await;
    assert_eq!(status, 201, "{file}");
    app.send_file(&seller, chat, &file["id"]).await;
    let v = get(
        &app,
        &format!("/web/main-chats?username={PHONE}&token={token}&id={chat}"),
    )
    .await;
    assert_types(&v, &listing_spec(message_spec()), "main-chats");
    let text = crate::helpers::str_of(&v["items"][0]["text"]);
    let (name, link) = text.split_once(' ').expect("name and link");
    assert_eq!(name, "label.png");
    let path = link
        .strip_prefix(&app.base)
        .unwrap_or_else(|| panic!("an absolute link to this server: {link}"));
    assert!(path.starts_with(&format!(
        "/v1/files/{}",
        crate::helpers::str_of(&file["id"])
    )));
    let r = app.fetch(path, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), 800);
}

/// Operators and customers are numbered apart; in main-chats a seller's words must never
/// carry the customer's `senderId`, or an app shows them as the customer's own.
#[tokio::test]
async fn a_sellers_messages_never_carry_the_customers_sender_id() {
    let app = spawn_app().await;
    let (token, customer_id, chats, seller) = shop(&app, 1).await;
    let chat = chats[0];
    app.send(&token, chat, "is it in stock?", None)
        .await
        .expect(201);
    app.send(&seller, chat, "yes", None).await.expect(201);
    let v = get(
        &app,
        &format!("/web/main-chats?username={PHONE}&token={token}&id={chat}"),
    )
    .await;
    let (reply, question) = (&v["items"][0], &v["items"][1]);
    assert_eq!(question["senderId"], customer_id);
    let seller_id = app.get("/v1/me", &seller).await.expect(200)["operator"]["id"]
        .as_i64()
        .expect("id");
    assert_ne!(reply["senderId"], customer_id, "{reply}");
    assert_eq!(reply["senderId"], 1_000_000_000_000i64 + seller_id);
    // The chat list's user is the customer: their own messages are told by it.
    let list = get(&app, &format!("/web/chats?username={PHONE}&token={token}")).await;
    assert_eq!(list["items"][0]["user"], question["senderId"]);
}

/// Paging as the document's framework does it: a size past the largest is capped, a
/// page past the end is empty with true counts; an unknown operation is a 404 in the
/// error envelope.
#[tokio::test]
async fn big_pages_are_capped_pages_past_the_end_are_empty_and_unknown_operations_404() {
    let app = spawn_app().await;
    let (token, _, _, _) = shop(&app, 3).await;
    let capped = get(
        &app,
        &format!("/web/chats?username={PHONE}&token={token}&perPage=1000"),
    )
    .await;
    assert_eq!(capped["_meta"]["perPage"], 300);
    assert_eq!(capped["items"].as_array().map(Vec::len), Some(3));
    let past = get(
        &app,
        &format!("/web/chats?username={PHONE}&token={token}&perPage=2&page=9"),
    )
    .await;
    assert_eq!(past["items"], json!([]));
    assert_eq!(
        past["_meta"],
        json!({"totalCount": 3, "pageCount": 2, "currentPage": 9, "perPage": 2})
    );
    for path in [
        format!("/web/no-such-thing?username={PHONE}&token={token}"),
        "/web/".to_owned(),
    ] {
        let r = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(body["status"], "error");
        assert_eq!(body["data"], "");
    }
}
