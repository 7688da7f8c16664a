//! The website widget: the Chatwhizz domain `link` is an embed code whose script is served
//! here, and whose one REST call makes a visitor who then chats over the socket.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Creates a domain through the Chatwhizz API and returns its embed link.
async fn chatwhizz_domain(app: &TestApp, admin: &str, name: &str) -> String {
    let r = app
        .client
        .post(format!("{}/admin/domain/create", app.base))
        .header("access_token", admin)
        .json(&json!({"domain_name": name, "email": "shop@example.com"}))
        .send()
        .await
        .expect("request");
    let v: Value = r.json().await.expect("JSON");
    v["data"]["link"].as_str().expect("link").to_owned()
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s
        .find(start)
        .map(|i| i + start.len())
        .expect("start marker");
    let to = s[from..].find(end).map(|i| from + i).expect("end marker");
    &s[from..to]
}

#[tokio::test]
async fn the_embed_link_loads_the_widget_and_a_visitor_chats_with_the_desk() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let link = chatwhizz_domain(&app, &admin, "merchant.example").await;
    let src = between(&link, "src=\"", "\"");
    let key = between(&link, "data-souq-key=\"", "\"");
    assert!(src.ends_with("/widget.js"), "{link}");

    // The script the link names is served, as JavaScript, and calls the visitor endpoint.
    let js = app
        .client
        .get(format!("http:{src}"))
        .send()
        .await
        .expect("widget.js");
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/javascript")
    );
    let body = js.text().await.expect("text");
    assert!(body.contains("/visitors") && body.contains("data-souq-key"));

    // An operator of the domain's inbox, listening.
    let domains = app.get("/v1/domains", &admin).await.expect(200);
    let domain_id = domains["items"][0]["id"].as_i64().expect("id");
    let inbox = app
        .get(&format!("/v1/inboxes?domain_id={domain_id}"), &admin)
        .await
        .expect(200)["items"][0]["id"]
        .clone();
    let op = app.operator(&admin, "desk@acme.test").await;
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": op, "inbox_id": inbox}),
    )
    .await
    .expect(201);
    let op_token = app.operator_token(&admin, op).await;
    let mut desk = app.ws(&op_token, "").await;
    desk.next_of("resumed").await;

    // What the widget does: one REST call, then the socket with ?token=.
    let v = app
        .call(
            Method::POST,
            &format!("/v1/widget/{key}/visitors"),
            None,
            None,
        )
        .await
        .expect(200);
    let (token, chat_id) = (
        v["token"].as_str().expect("token").to_owned(),
        v["chat_id"].as_i64().expect("chat"),
    );
    assert_eq!(desk.next_of("chat").await["chat"]["id"], chat_id);
    let mut visitor = app
        .ws("", &format!("?token={token}&resume={chat_id}:0"))
        .await;
    visitor.next_of("resumed").await;
    visitor.send(json!({"type": "send", "chat_id": chat_id, "local_id": "1", "text": "hello from the site"})).await;
    assert_eq!(
        desk.next_of("message").await["message"]["text"],
        "hello from the site"
    );

    // A returning visitor (token kept in localStorage) is the same customer in the same chat.
    let again = app
        .call(
            Method::POST,
            &format!("/v1/widget/{key}/visitors"),
            None,
            Some(json!({"token": token})),
        )
        .await
        .expect(200);
    assert_eq!(
        (again["customer_id"].clone(), again["chat_id"].clone()),
        (v["customer_id"].clone(), json!(chat_id))
    );
}

#[tokio::test]
async fn the_visitor_call_is_open_to_any_origin_and_refuses_bad_keys() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let link = chatwhizz_domain(&app, &admin, "closed.example").await;
    let key = between(&link, "data-souq-key=\"", "\"").to_owned();
    let preflight = app
        .client
        .request(
            Method::OPTIONS,
            format!("{}/v1/widget/{key}/visitors", app.base),
        )
        .header("origin", "https://merchant.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let r = app
        .call(Method::POST, "/v1/widget/nope/visitors", None, None)
        .await;
    assert_eq!(r.status, 404);
    let domain_id = app.get("/v1/domains", &admin).await.expect(200)["items"][0]["id"]
        .as_i64()
        .expect("id");
    app.patch(
        &format!("/v1/domains/{domain_id}"),
        &admin,
        json!({"active": false}),
    )
    .await
    .expect(200);
    let r = app
        .call(
            Method::POST,
            &format!("/v1/widget/{key}/visitors"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 409);
    let r = app
        .call(
            Method::POST,
            &format!("/v1/widget/{key}/visitors"),
            None,
            Some(json!({"colour": 1})),
        )
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn a_domain_asks_for_the_pre_chat_form_and_the_widget_reads_it_from_any_origin() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let link = chatwhizz_domain(&app, &admin, "asks.example").await;
    let key = between(&link, "data-souq-key=\"", "\"").to_owned();
    let before = app
        .call(Method::GET, &format!("/v1/widget/{key}"), None, None)
        .await
        .expect(200);
    assert_eq!(before, json!({"prechat": false}));
    let domain = app.get("/v1/domains", &admin).await.expect(200)["items"][0].clone();
    let id = domain["id"].as_i64().expect("id");
    assert_eq!(domain["prechat"], false);
    let patched = app
        .patch(
            &format!("/v1/domains/{id}"),
            &admin,
            json!({"prechat": true}),
        )
        .await
        .expect(200);
    assert_eq!(patched["prechat"], true);
    let after = app
        .client
        .get(format!("{}/v1/widget/{key}", app.base))
        .header("origin", "https://merchant.example")
        .send()
        .await
        .expect("settings");
    assert_eq!(after.headers()["access-control-allow-origin"], "*");
    let after: serde_json::Value = after.json().await.expect("JSON");
    assert_eq!(after, json!({"prechat": true}));
    let r = app
        .patch(
            &format!("/v1/domains/{id}"),
            &admin,
            json!({"prechat": "yes"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        app.call(Method::GET, "/v1/widget/nope", None, None)
            .await
            .status,
        404
    );
}
