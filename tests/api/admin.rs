use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn operators_are_created_listed_read_and_updated() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let op = app
        .post(
            "/v1/operators",
            &admin,
            json!({"email": "Sara@Acme.test", "name": "Sara"}),
        )
        .await
        .expect(201);
    assert_eq!(op["email"], "sara@acme.test");
    assert_eq!(op["presence"], "offline");
    let id = op["id"].as_i64().expect("id");

    let dup = app
        .post("/v1/operators", &admin, json!({"email": "sara@acme.test"}))
        .await;
    assert_eq!(dup.status, 409);

    let listed = app.get("/v1/operators", &admin).await.expect(200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));

    let updated = app
        .patch(
            &format!("/v1/operators/{id}"),
            &admin,
            json!({"name": "Sara K.", "presence": "busy"}),
        )
        .await
        .expect(200);
    assert_eq!(updated["name"], "Sara K.");
    assert_eq!(updated["presence"], "busy");
    let read = app
        .get(&format!("/v1/operators/{id}"), &admin)
        .await
        .expect(200);
    assert_eq!(read["presence"], "busy");
}

#[tokio::test]
async fn an_operator_sets_its_own_presence_but_nothing_else() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for presence in ["online", "away", "busy", "offline"] {
        let r = app
            .call(
                reqwest::Method::PUT,
                "/v1/me/presence",
                Some(&desk.operator),
                Some(json!({"presence": presence})),
            )
            .await
            .expect(200);
        assert_eq!(r["presence"], presence);
    }
    let bad = app
        .call(
            reqwest::Method::PUT,
            "/v1/me/presence",
            Some(&desk.operator),
            Some(json!({"presence": "asleep"})),
        )
        .await;
    assert_eq!(bad.status, 422);
    let rename = app
        .patch(
            &format!("/v1/operators/{}", desk.operator_id),
            &desk.operator,
            json!({"name": "Me"}),
        )
        .await;
    assert_eq!(rename.status, 403);
    let customer = app
        .call(
            reqwest::Method::PUT,
            "/v1/me/presence",
            Some(&desk.customer),
            Some(json!({"presence": "online"})),
        )
        .await;
    assert_eq!(customer.status, 403);
}

#[tokio::test]
async fn a_domain_comes_with_its_inbox_and_can_be_updated() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let created = app
        .post(
            "/v1/domains",
            &admin,
            json!({"name": "Shop.Example.com", "email": "shop@example.com"}),
        )
        .await
        .expect(201);
    let domain = &created["domain"];
    assert_eq!(domain["name"], "shop.example.com");
    assert_eq!(domain["active"], true);
    assert_eq!(domain["widget_key"].as_str().map(str::len), Some(24));
    assert_eq!(created["inbox"]["unique_id"], serde_json::Value::Null);
    assert_eq!(created["inbox"]["domain_id"], domain["id"]);
    let id = domain["id"].as_i64().expect("id");

    let dup = app
        .post("/v1/domains", &admin, json!({"name": "shop.example.com"}))
        .await;
    assert_eq!(dup.status, 409);
    let scheme = app
        .post("/v1/domains", &admin, json!({"name": "https://x.com/"}))
        .await;
    assert_eq!(scheme.status, 422);

    let updated = app
        .patch(
            &format!("/v1/domains/{id}"),
            &admin,
            json!({"active": false}),
        )
        .await
        .expect(200);
    assert_eq!(updated["active"], false);
    let nothing = app
        .patch(&format!("/v1/domains/{id}"), &admin, json!({}))
        .await;
    assert_eq!(nothing.status, 422);
    let listed = app.get("/v1/domains", &admin).await.expect(200);
    assert_eq!(listed["items"][0]["active"], false);
}

#[tokio::test]
async fn page_inboxes_are_unique_within_their_domain() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let d = app
        .post("/v1/domains", &admin, json!({"name": "bazaar.test"}))
        .await
        .expect(201);
    let domain_id = d["domain"]["id"].as_i64().expect("id");
    let inbox = app
        .post(
            "/v1/inboxes",
            &admin,
            json!({"domain_id": domain_id, "unique_id": "store-17", "name": "Store 17"}),
        )
        .await
        .expect(201);
    assert_eq!(inbox["unique_id"], "store-17");
    let dup = app
        .post(
            "/v1/inboxes",
            &admin,
            json!({"domain_id": domain_id, "unique_id": "store-17"}),
        )
        .await;
    assert_eq!(dup.status, 409);
    let listed = app
        .get(&format!("/v1/inboxes?domain_id={domain_id}"), &admin)
        .await
        .expect(200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(2));
    let unknown_domain = app
        .post(
            "/v1/inboxes",
            &admin,
            json!({"domain_id": 999_999, "unique_id": "x"}),
        )
        .await;
    assert_eq!(unknown_domain.status, 404);
}

#[tokio::test]
async fn assignments_carry_admin_online_and_receiving_flags() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let d = app
        .post("/v1/domains", &admin, json!({"name": "desk.test"}))
        .await
        .expect(201);
    let inbox_id = d["inbox"]["id"].as_i64().expect("id");
    let op = app.operator(&admin, "a@acme.test").await;
    let a = app
        .post(
            "/v1/assignments",
            &admin,
            json!({"operator_id": op, "inbox_id": inbox_id, "is_admin": true}),
        )
        .await
        .expect(201);
    assert_eq!(
        (
            a["is_admin"].clone(),
            a["online"].clone(),
            a["receiving"].clone()
        ),
        (json!(true), json!(true), json!(true))
    );
    let id = a["id"].as_i64().expect("id");
    let again = app
        .post(
            "/v1/assignments",
            &admin,
            json!({"operator_id": op, "inbox_id": inbox_id}),
        )
        .await;
    assert_eq!(again.status, 409);
    let patched = app
        .patch(
            &format!("/v1/assignments/{id}"),
            &admin,
            json!({"online": false, "receiving": false}),
        )
        .await
        .expect(200);
    assert_eq!(
        (patched["online"].clone(), patched["receiving"].clone()),
        (json!(false), json!(false))
    );
    let listed = app
        .get(&format!("/v1/assignments?operator_id={op}"), &admin)
        .await
        .expect(200);
    assert_eq!(listed["items"][0]["id"], id);
    app.call(
        reqwest::Method::DELETE,
        &format!("/v1/assignments/{id}"),
        Some(&admin),
        None,
    )
    .await
    .expect(204);
    let gone = app.get(&format!("/v1/assignments/{id}"), &admin).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn customers_are_identified_by_external_id_or_phone() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let first = app
        .post(
            "/v1/customers",
            &admin,
            json!({"external_id": "u1", "name": "Ali", "telegram_id": "tg1"}),
        )
        .await
        .expect(201);
    let again = app
        .post(
            "/v1/customers",
            &admin,
            json!({"external_id": "u1", "name": "Ali R."}),
        )
        .await
        .expect(200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["name"], "Ali R.");
    assert_eq!(again["telegram_id"], "tg1");
    let by_phone = app
        .post("/v1/customers", &admin, json!({"phone": "09121122777"}))
        .await
        .expect(201);
    let same = app
        .post(
            "/v1/customers",
            &admin,
            json!({"phone": "09121122777", "name": "Mostafa"}),
        )
        .await
        .expect(200);
    assert_eq!(same["id"], by_phone["id"]);
    let taken = app
        .post(
            "/v1/customers",
            &admin,
            json!({"external_id": "u2", "phone": "09121122777"}),
        )
        .await;
    assert_eq!(taken.status, 409);
}
