//! The Chatwhizz admin API (seeds/003) replayed as documented: every operation's request as
//! written, and its response compared with the document's field by field, in name and in
//! JSON type.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, spawn_app};

/// Asserts that `got` has exactly the fields of `shape`, each of the same JSON type
/// (`null` in the shape allows null or a string), recursively.
#[track_caller]
fn assert_shape(got: &Value, shape: &Value, at: &str) {
    match (got, shape) {
        (Value::Object(g), Value::Object(s)) => {
            let mut gk: Vec<&String> = g.keys().collect();
            let mut sk: Vec<&String> = s.keys().collect();
            gk.sort();
            sk.sort();
            assert_eq!(gk, sk, "{at}: fields differ in {got}");
            for (k, v) in s {
                assert_shape(&g[k], v, &format!("{at}.{k}"));
            }
        }
        (_, Value::Null) => assert!(
            got.is_null() || got.is_string(),
            "{at}: expected string or null, got {got}"
        ),
        (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Number(_), Value::Number(_)) => {}
        _ => panic!("{at}: expected a value like {shape}, got {got}"),
    }
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.header("access_token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("every answer is JSON");
    (status, body)
}

async fn token(app: &TestApp) -> Value {
    let path = format!(
        "/admin/access-token?email=owner@acme.test&password={}&organisation_domain=acme&addon_unique_name=seller_buyer",
        PASSWORD.replace(' ', "%20")
    );
    let (status, body) = call(app, Method::GET, &path, None, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn every_documented_operation_answers_in_the_documented_shape() {
    let app = spawn_app().await;
    let tokens_shape = json!({"status": 1, "data": {
        "access_token": "", "refresh_token": "", "expire_in": 0, "organisation_domain": ""}});

    let t = token(&app).await;
    assert_shape(&t, &tokens_shape, "access-token");
    assert_eq!(t["data"]["organisation_domain"], "acme");
    let (access, refresh) = (
        t["data"]["access_token"].as_str().unwrap_or(""),
        t["data"]["refresh_token"].as_str().unwrap_or(""),
    );

    let (s, v) = call(&app, Method::POST, "/admin/access-token/validate", None,
        Some(json!({"access_token": access, "refresh_token": refresh, "addon_unique_name": "seller_buyer"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_shape(&v, &tokens_shape, "validate");
    assert_eq!(v["data"]["access_token"], access);

    let (s, v) = call(
        &app,
        Method::POST,
        "/admin/access-token/regenerate",
        None,
        Some(json!({"access_token": access, "refresh_token": refresh})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_shape(&v, &tokens_shape, "regenerate");
    assert_ne!(v["data"]["access_token"], access);
    let access = v["data"]["access_token"].as_str().unwrap_or("").to_owned();
    let tok = Some(access.as_str());

    let (s, v) = call(
        &app,
        Method::POST,
        "/admin/operator/create",
        tok,
        Some(json!({"email": "seller@acme.test", "first_name": "Mohammad", "last_name": "Azizi"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"id": 0, "name": "", "email": "", "addon_unique_name": ""}}),
        "operator/create",
    );
    assert_eq!(
        (
            v["data"]["name"].clone(),
            v["data"]["addon_unique_name"].clone()
        ),
        (json!("Mohammad Azizi"), json!("seller_buyer"))
    );
    let op = v["data"]["id"].as_i64().unwrap_or(0);
    // Registering the same email again gives the same operator.
    let (_, again) = call(
        &app,
        Method::POST,
        "/admin/operator/create",
        tok,
        Some(json!({"email": "seller@acme.test"})),
    )
    .await;
    assert_eq!(again["data"]["id"], op);

    let (s, v) = call(
        &app,
        Method::GET,
        &format!("/admin/operator/{op}"),
        tok,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"_id": 0, "name": "", "email": "", "status": 0, "operator": true}}),
        "operator get",
    );
    assert_eq!(
        (v["data"]["status"].clone(), v["data"]["operator"].clone()),
        (json!(0), json!(true))
    );

    let (s, v) = call(
        &app,
        Method::PUT,
        &format!("/admin/operator/update/{op}"),
        tok,
        Some(json!({"status": 0})),
    )
    .await;
    assert_eq!(
        (s, v.clone()),
        (
            200,
            json!({"status": 1, "data": "Status Changes Successfully"})
        )
    );
    let (_, v) = call(
        &app,
        Method::GET,
        &format!("/admin/operator/{op}"),
        tok,
        None,
    )
    .await;
    assert_eq!(v["data"]["operator"], false);
    call(
        &app,
        Method::PUT,
        &format!("/admin/operator/update/{op}"),
        tok,
        Some(json!({"status": 1})),
    )
    .await;

    let (s, v) = call(
        &app,
        Method::POST,
        "/admin/domain/create",
        tok,
        Some(json!({"domain_name": "bazaar.example", "email": "shop@bazaar.example"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"name": "", "email": "", "status": true, "addon_unique_name": "", "link": ""}}),
        "domain/create",
    );
    assert!(
        v["data"]["link"]
            .as_str()
            .is_some_and(|l| l.contains("<script"))
    );

    let (s, v) = call(&app, Method::GET, "/admin/domain/bazaar.example", tok, None).await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"name": "", "email": "", "status": true}}),
        "domain get",
    );

    let (s, v) = call(
        &app,
        Method::PUT,
        "/admin/domain/update/bazaar.example",
        tok,
        Some(json!({"status": false, "email": "new@bazaar.example"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"name": "", "status": true, "email": ""}}),
        "domain update",
    );
    assert_eq!(
        (v["data"]["status"].clone(), v["data"]["email"].clone()),
        (json!(false), json!("new@bazaar.example"))
    );
    call(
        &app,
        Method::PUT,
        "/admin/domain/update/bazaar.example",
        tok,
        Some(json!({"status": true})),
    )
    .await;

    let (s, v) = call(&app, Method::POST, "/admin/operator/assign", tok,
        Some(json!({"domain_name": "bazaar.example", "operator_id": op, "unique_id": "product-77", "is_admin": false}))).await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"operators": {"name": "", "email": "", "userId": 0, "unique_id": null, "is_admin": false}}}),
        "assign",
    );
    assert_eq!(v["data"]["operators"]["unique_id"], "product-77");

    let (s, v) = call(&app, Method::PUT, &format!("/admin/operator/assign/{op}"), tok,
        Some(json!({"domain_name": "bazaar.example", "online_status": false, "status": false, "is_admin": true}))).await;
    assert_eq!(s, 200, "{v}");
    assert_shape(
        &v,
        &json!({"status": 1, "data": {"addon_unique_name": "", "domain_name": "",
        "operators": {"online_status": true, "unique_id": null, "is_admin": true, "status": true}}}),
        "assign update",
    );
    assert_eq!(
        v["data"]["operators"],
        json!({"online_status": false, "unique_id": "product-77", "is_admin": true, "status": false})
    );
}

#[tokio::test]
async fn errors_come_in_the_envelope_with_status_0() {
    let app = spawn_app().await;
    let cases = [
        (
            Method::GET,
            "/admin/access-token?email=owner@acme.test&password=wrong&organisation_domain=acme&addon_unique_name=live_chat",
            None,
            401,
        ),
        (
            Method::POST,
            "/admin/access-token/validate",
            Some(json!({"access_token": "x", "refresh_token": "y"})),
            401,
        ),
        (
            Method::POST,
            "/admin/operator/create",
            Some(json!({"email": "a@b.test"})),
            401,
        ),
        (Method::GET, "/admin/domain/nope.example", None, 401),
    ];
    for (method, path, body, status) in cases {
        let (s, v) = call(&app, method, path, None, body).await;
        assert_eq!(s, status, "{path}: {v}");
        assert_eq!(v["status"], 0, "{path}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {v}"
        );
    }
    let t = token(&app).await;
    let tok = t["data"]["access_token"].as_str();
    let (s, v) = call(&app, Method::GET, "/admin/domain/nope.example", tok, None).await;
    assert_eq!((s, v["status"].clone()), (404, json!(0)));
    let (s, v) = call(&app, Method::GET, "/admin/operator/999999", tok, None).await;
    assert_eq!((s, v["status"].clone()), (404, json!(0)));
    let (s, v) = call(
        &app,
        Method::POST,
        "/admin/operator/create",
        tok,
        Some(json!({"first_name": "no email"})),
    )
    .await;
    assert_eq!((s, v["status"].clone()), (422, json!(0)));
    let r = app
        .client
        .post(format!("{}/admin/domain/create", app.base))
        .header("access_token", tok.unwrap_or(""))
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v["status"], 0);
    let (s, v) = call(&app, Method::GET, "/admin/nowhere", tok, None).await;
    assert_eq!((s, v["status"].clone()), (404, json!(0)));
}

#[tokio::test]
async fn form_bodies_work_like_json() {
    let app = spawn_app().await;
    let t = token(&app).await;
    let tok = t["data"]["access_token"].as_str().unwrap_or("");
    let r = app
        .client
        .post(format!("{}/admin/operator/create", app.base))
        .header("access_token", tok)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=form%40acme.test&first_name=Form")
        .send()
        .await
        .expect("request");
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(
        (
            v["status"].clone(),
            v["data"]["email"].clone(),
            v["data"]["name"].clone()
        ),
        (json!(1), json!("form@acme.test"), json!("Form"))
    );
}

#[tokio::test]
async fn an_operator_inactive_in_an_addon_sees_none_of_its_chats() {
    let app = spawn_app().await;
    let t = token(&app).await;
    let tok = t["data"]["access_token"].as_str().unwrap_or("").to_owned();
    let admin = tok.clone();
    let desk = app.desk(&admin).await;
    let chats = app.get("/v1/chats", &desk.operator).await.expect(200);
    assert_eq!(chats["items"].as_array().map(Vec::len), Some(1));
    let (s, _) = call(
        &app,
        Method::PUT,
        &format!("/admin/operator/update/{}", desk.operator_id),
        Some(&tok),
        Some(json!({"status": 0})),
    )
    .await;
    assert_eq!(s, 200);
    let chats = app.get("/v1/chats", &desk.operator).await.expect(200);
    assert_eq!(chats["items"].as_array().map(Vec::len), Some(0));
    let r = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.operator)
        .await;
    assert_eq!(r.status, 404);
}

async fn token_for(app: &TestApp, addon: &str) -> String {
    let path = format!(
        "/admin/access-token?email=owner@acme.test&password={}&organisation_domain=acme&addon_unique_name={addon}",
        PASSWORD.replace(' ', "%20")
    );
    let (status, body) = call(app, Method::GET, &path, None, None).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// What a PHP or browser form sends by default.
#[tokio::test]
async fn multipart_form_bodies_work_like_json() {
    let app = spawn_app().await;
    let tok = token_for(&app, "seller_buyer").await;
    let form = reqwest::multipart::Form::new()
        .text("email", "multi@acme.test")
        .text("first_name", "Multi");
    let r = app
        .client
        .post(format!("{}/admin/operator/create", app.base))
        .header("access_token", &tok)
        .multipart(form)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(
        (
            v["status"].clone(),
            v["data"]["email"].clone(),
            v["data"]["name"].clone()
        ),
        (json!(1), json!("multi@acme.test"), json!("Multi"))
    );
}

/// Tokens are per addon, and so are domains: another addon's domain is not found.
#[tokio::test]
async fn each_addon_sees_only_its_own_domains() {
    let app = spawn_app().await;
    let seller_buyer = token_for(&app, "seller_buyer").await;
    let live_chat = token_for(&app, "live_chat").await;
    let (s, v) = call(
        &app,
        Method::POST,
        "/admin/domain/create",
        Some(&seller_buyer),
        Some(json!({"domain_name": "bazaar.test", "email": "b@acme.test"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &app,
        Method::GET,
        "/admin/domain/bazaar.test",
        Some(&live_chat),
        None,
    )
    .await;
    assert_eq!((s, v["status"].clone()), (404, json!(0)), "{v}");
    let (s, _) = call(
        &app,
        Method::PUT,
        "/admin/domain/update/bazaar.test",
        Some(&live_chat),
        Some(json!({"status": 0})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, v) = call(
        &app,
        Method::GET,
        "/admin/domain/bazaar.test",
        Some(&seller_buyer),
        None,
    )
    .await;
    assert_eq!(
        (s, v["data"]["status"].clone()),
        (200, json!(true)),
        "still active: {v}"
    );
    let listed = app.get("/v1/domains", &live_chat).await.expect(200);
    assert_eq!(listed["items"], json!([]));
    let listed = app.get("/v1/domains", &seller_buyer).await.expect(200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
}

/// An assignment's `online_status: false` shows the operator offline (Chatwhizz, and
/// iqstore's `Online`); `status: false` stops the domain's messages reaching them.
#[tokio::test]
async fn online_status_and_status_of_an_assignment_mean_what_the_document_says() {
    let app = spawn_app().await;
    let tok = token_for(&app, "seller_buyer").await;
    let desk = app.desk(&tok).await;
    let domain = app
        .get(&format!("/v1/domains/{}", desk.domain_id), &tok)
        .await
        .expect(200);
    let domain_name = domain["name"].as_str().expect("name").to_owned();
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    let status = || async {
        let path = format!("/admin/operator/{}", desk.operator_id);
        let (_, v) = call(&app, Method::GET, &path, Some(&tok), None).await;
        v["data"]["status"].clone()
    };
    assert_eq!(status().await, 1, "online on their socket");
    app.send(&desk.operator, desk.chat_id, "hello", None)
        .await
        .expect(201);
    assert_eq!(
        operator.next_of("message").await["message"]["text"],
        "hello"
    );
    let users_online = || async {
        let r: Value = app
            .client
            .post(format!(
                "{}/public/api/v1/chats/channel/history/support",
                app.base
            ))
            .header("cookie", format!("client-session={}", desk.customer))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("JSON");
        r["Rels"]["Users"][0]["Online"].clone()
    };
    assert_eq!(users_online().await, true);

    let (s, v) = call(
        &app,
        Method::PUT,
        &format!("/admin/operator/assign/{}", desk.operator_id),
        Some(&tok),
        Some(json!({"domain_name": domain_name, "online_status": false})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(status().await, 0, "shown offline");
    assert_eq!(users_online().await, false);
    // The operator still gets the domain's messages.
    app.send(&desk.customer, desk.chat_id, "anyone?", None)
        .await
        .expect(201);
    assert_eq!(
        operator.next_of("message").await["message"]["text"],
        "anyone?"
    );

    let (s, _) = call(
        &app,
        Method::PUT,
        &format!("/admin/operator/assign/{}", desk.operator_id),
        Some(&tok),
        Some(json!({"domain_name": domain_name, "status": false})),
    )
    .await;
    assert_eq!(s, 200);
    // Not receiving: the chat is no longer theirs to see, nor pushed to them.
    let r = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.operator)
        .await;
    assert_eq!(r.status, 404);
    let chats = app.get("/v1/chats", &desk.operator).await.expect(200);
    assert_eq!(chats["items"], json!([]));
}
