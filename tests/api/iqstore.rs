//! The iqstore public API (seeds/002) replayed as documented: the send example as written,
//! with the cookie and with the Authorization header, and every answer compared with the
//! document's objects field by field in name and JSON type.

use serde_json::{Value, json};

use crate::helpers::{Desk, TestApp, assert_types, spawn_app};

fn message_spec() -> Value {
    json!({
        "Id": "number", "ChatId": "number", "LocalId": "number|null", "EventId": "number",
        "TicketMessageId": "null", "Author": "string", "ClientId": "number|null",
        "UserId": "number|null", "Payload": "string", "Text": "string", "Received": "bool",
        "Read": "bool", "Pushed": "bool", "CreatedAt": "number", "ReceivedAt": "number|null",
        "ReadAt": "number|null", "My": "bool"
    })
}

fn client_spec() -> Value {
    json!({
        "Id": "number", "ProjectId": "number", "CompanyId": "number", "Type": "string",
        "Name": "string", "Online": "bool", "CustomerId": "number", "ChannelId": "number|null",
        "TelegramId": "string|null", "FacebookId": "string|null", "VKId": "string|null",
        "TotalTickets": "number", "TotalOpenTickets": "number", "CreatedAt": "number",
        "UpdatedAt": "number", "SeenAt": "number|null", "MessagedAt": "number|null",
        "IntegrationId": "string"
    })
}

fn user_spec() -> Value {
    json!({
        "Id": "number", "Name": "string", "Email": "string", "Position": "string",
        "RoleId": "number", "AvatarId": "string", "Online": "bool", "Deleted": "bool",
        "TotalAssignedTickets": "number", "CreatedAt": "number", "UpdatedAt": "number",
        "LastSeenAt": "number|null", "AssignedAt": "number", "DisplayName": "string"
    })
}

fn envelope_spec() -> Value {
    json!({"OK": "bool", "Error": "null", "Result": [message_spec()],
        "Rels": {"Clients": [client_spec()], "Files": [], "Users": [user_spec()]}})
}

/// POSTs as the document's example does; the answer is always HTTP 200 JSON.
pub async fn post(app: &TestApp, path: &str, auth: (&str, String), body: &str) -> Value {
    let r = app
        .client
        .post(format!("{}/public/api/v1/{path}", app.base))
        .header("content-type", "application/json")
        .header(auth.0, auth.1)
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.expect("JSON")
}

pub fn cookie(token: &str) -> (&'static str, String) {
    ("cookie", format!("client-session={token}"))
}

async fn desk() -> (TestApp, Desk) {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    (app, desk)
}

#[tokio::test]
async fn the_documented_send_answers_with_the_documented_objects() {
    let (app, desk) = desk().await;
    let v = post(
        &app,
        "chats/channel/send/support",
        cookie(&desk.customer),
        r#"{"LocalId": 1518171256447, "Payload": "text","Text":"!"}"#,
    )
    .await;
    assert_types(&v, &envelope_spec(), "send");
    assert_eq!(v["OK"], true);
    let m = &v["Result"][0];
    assert_eq!(
        (
            m["LocalId"].clone(),
            m["Author"].clone(),
            m["My"].clone(),
            m["Text"].clone()
        ),
        (
            json!(1518171256447_i64),
            json!("client"),
            json!(true),
            json!("!")
        )
    );
    assert_eq!(m["ChatId"], desk.chat_id);
    assert_eq!(v["Rels"]["Clients"][0]["Id"], desk.customer_id);

    // The same LocalId again, by the Authorization header this time: the first message.
    let again = post(
        &app,
        "chats/channel/send/support",
        ("authorization", format!("Client {}", desk.customer)),
        r#"{"LocalId": 1518171256447, "Payload": "text", "Text": "!"}"#,
    )
    .await;
    assert_eq!(again["Result"][0]["Id"], m["Id"]);
}

#[tokio::test]
async fn history_new_messages_and_receipts_in_the_same_style() {
    let (app, desk) = desk().await;
    let first = post(
        &app,
        "chats/channel/send/support",
        cookie(&desk.customer),
        r#"{"LocalId": 1, "Text": "hello"}"#,
    )
    .await;
    let first_id = first["Result"][0]["Id"].as_i64().expect("id");
    app.send(&desk.operator, desk.chat_id, "hi, how can I help?", None)
        .await
        .expect(201);
    app.post(
        &format!("/v1/chats/{}/receipts", desk.chat_id),
        &desk.operator,
        json!({"read": 1}),
    )
    .await
    .expect(200);

    let history = post(
        &app,
        "chats/channel/history/support",
        cookie(&desk.customer),
        "{}",
    )
    .await;
    assert_types(&history, &envelope_spec(), "history");
    let texts: Vec<&str> = history["Result"]
        .as_array()
        .expect("result")
        .iter()
        .filter_map(|m| m["Text"].as_str())
        .collect();
    assert_eq!(texts, ["hello", "hi, how can I help?"]);
    let reply = &history["Result"][1];
    assert_eq!(
        (
            reply["Author"].clone(),
            reply["UserId"].clone(),
            reply["My"].clone()
        ),
        (json!("user"), json!(desk.operator_id), json!(false))
    );
    assert_eq!(history["Result"][0]["Read"], true);
    assert_eq!(history["Rels"]["Users"][0]["Id"], desk.operator_id);
    assert_eq!(
        history["Rels"]["Users"].as_array().map(Vec::len),
        Some(1),
        "each user once"
    );

    let newer = post(
        &app,
        "chats/channel/new/support",
        cookie(&desk.customer),
        &format!(r#"{{"AfterId": {first_id}}}"#),
    )
    .await;
    assert_types(&newer, &envelope_spec(), "new");
    assert_eq!(newer["Result"].as_array().map(Vec::len), Some(1));
    let reply_id = newer["Result"][0]["Id"].as_i64().expect("id");

    let read = post(
        &app,
        "chats/channel/read/support",
        cookie(&desk.customer),
        &format!(r#"{{"Id": {reply_id}}}"#),
    )
    .await;
    assert_types(&read, &envelope_spec(), "read");
    assert_eq!(
        (
            read["Result"][0]["Read"].clone(),
            read["Result"][0]["Received"].clone()
        ),
        (json!(true), json!(true))
    );
    // The operator sees the customer's receipt through the native API.
    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.operator,
        )
        .await
        .expect(200);
    assert_eq!(page["items"][1]["status"], "read");

    let profile = post(&app, "profile/get", cookie(&desk.customer), "{}").await;
    assert_types(&profile["Result"], &client_spec(), "profile");
    assert_eq!(
        (
            profile["Result"]["TotalTickets"].clone(),
            profile["Result"]["TotalOpenTickets"].clone()
        ),
        (json!(1), json!(1))
    );
    let list = post(&app, "chats/list", cookie(&desk.customer), "{}").await;
    assert_eq!(list["Result"][0]["Id"], desk.chat_id);
}

#[tokio::test]
async fn a_message_sent_here_is_pushed_to_sockets_and_read_by_the_native_api() {
    let (app, desk) = desk().await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    post(
        &app,
        "chats/channel/send/support",
        cookie(&desk.customer),
        r#"{"LocalId": 7, "Payload": "text", "Text": "via iqstore"}"#,
    )
    .await;
    let pushed = operator.next_of("message").await;
    assert_eq!(
        (
            pushed["message"]["text"].clone(),
            pushed["message"]["local_id"].clone()
        ),
        (json!("via iqstore"), json!("7"))
    );
    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.operator,
        )
        .await
        .expect(200);
    assert_eq!(page["items"][0]["text"], "via iqstore");
}

#[tokio::test]
async fn every_failure_is_http_200_with_ok_false() {
    let (app, desk) = desk().await;
    let cases: Vec<(&str, (&str, String), &str)> = vec![
        (
            "chats/channel/send/support",
            ("cookie", "client-session=nope".into()),
            r#"{"Text": "x"}"#,
        ),
        (
            "chats/channel/send/support",
            ("x-none", String::new()),
            r#"{"Text": "x"}"#,
        ),
        (
            "chats/channel/send/support",
            cookie(&desk.customer),
            r#"{"Text": ""}"#,
        ),
        (
            "chats/channel/send/support",
            cookie(&desk.customer),
            r#"{"Text": 5}"#,
        ),
        (
            "chats/channel/send/support",
            cookie(&desk.customer),
            r#"{"Text": "x""#,
        ),
        (
            "chats/channel/send/support",
            cookie(&desk.customer),
            r#"{"Text": "x", "Colour": 1}"#,
        ),
        (
            "chats/channel/new/support",
            cookie(&desk.customer),
            r#"{"AfterId": 999999}"#,
        ),
        (
            "chats/channel/read/support",
            cookie(&desk.customer),
            r#"{"Id": 999999}"#,
        ),
        ("no/such/call", cookie(&desk.customer), "{}"),
        (
            "chats/channel/send/support",
            ("authorization", format!("Bearer {}", desk.operator)),
            r#"{"Text": "x"}"#,
        ),
    ];
    for (path, auth, body) in cases {
        let v = post(&app, path, auth, body).await;
        assert_eq!(v["OK"], false, "{path} {body}: {v}");
        assert!(
            v["Error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {v}"
        );
    }
    let r = app
        .client
        .get(format!("{}/public/api/v1/profile/get", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 0, "a refused call left a message");
}

/// The document's answer carries CORS headers: a browser on the shop's own site (an
/// active domain's, or a configured origin) calls with the client's cookie; others not.
#[tokio::test]
async fn a_browser_on_the_shops_site_may_call_with_the_clients_cookie() {
    let app =
        crate::helpers::spawn_app_with(|c| c.cors_origins = "https://app.example".into()).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let site = crate::helpers::str_of(
        &app.get(&format!("/v1/domains/{}", desk.domain_id), &admin)
            .await
            .expect(200)["name"],
    );
    let url = format!("{}/public/api/v1/chats/channel/send/support", app.base);
    for origin in [
        format!("https://{site}"),
        format!("https://www.{site}:8443"),
        "https://app.example".into(),
    ] {
        let r = app
            .client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", &origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .expect("preflight");
        assert!(r.status().is_success(), "{origin}: {}", r.status());
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], origin.as_str());
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(
            h["access-control-allow-methods"]
                .to_str()
                .unwrap_or("")
                .contains("POST")
        );
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap_or("")
                .contains("Content-Type")
        );
        let r = app
            .client
            .post(&url)
            .header("origin", &origin)
            .header("cookie", format!("client-session={}", desk.customer))
            .header("content-type", "application/json")
            .body(r#"{"Payload": "text", "Text": "hi"}"#)
            .send()
            .await
            .expect("call");
        assert_eq!(r.headers()["access-control-allow-origin"], origin.as_str());
        assert_eq!(r.json::<Value>().await.expect("JSON")["OK"], true);
    }
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// The support channel is the organisation's desk, never a store: a customer who also
/// chats with a store (through hojre) asks support, and the seller hears nothing of it.
#[tokio::test]
async fn support_is_its_own_channel_beside_a_store_chat() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let store = app
        .post(
            "/v1/inboxes",
            &admin,
            json!({"domain_id": desk.domain_id, "unique_id": "store-7", "name": "Store"}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    let seller = app.operator(&admin, "seller7@acme.test").await;
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": seller, "inbox_id": store}),
    )
    .await
    .expect(201);
    // The customer's store chat is newer than their support chat.
    let store_chat = app
        .post("/v1/chats", &desk.customer, json!({"inbox_id": store}))
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    assert!(store_chat > desk.chat_id);
    let v = post(
        &app,
        "chats/channel/send/support",
        cookie(&desk.customer),
        r#"{"Payload": "text", "Text": "where is my refund?"}"#,
    )
    .await;
    assert_eq!(v["OK"], true, "{v}");
    assert_eq!(v["Result"][0]["ChatId"], desk.chat_id);
    let store_page = app
        .get(&format!("/v1/chats/{store_chat}/messages"), &desk.customer)
        .await
        .expect(200);
    assert_eq!(store_page["items"], json!([]));
}
