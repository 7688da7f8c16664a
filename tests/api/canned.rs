//! Canned responses: an organisation's ready answers, for every inbox or one, found by
//! short code, filled in for a chat; only those of inboxes an operator sees.

use serde_json::json;

use crate::helpers::{spawn_app, str_of};

#[tokio::test]
async fn an_operator_finds_canned_responses_by_short_code_and_fills_them_in_for_a_chat() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let other = app.desk(&admin).await;
    app.patch(
        &format!("/v1/operators/{}", desk.operator_id),
        &admin,
        json!({"name": "Reza"}),
    )
    .await;
    let everywhere = app
        .post(
            "/v1/canned-responses",
            &admin,
            json!({"short_code": "/Thanks", "text": "Thank you {customer_name}! {operator_name} of {store_name}"}),
        )
        .await
        .expect(201);
    assert_eq!(everywhere["short_code"], "thanks");
    assert_eq!(everywhere["inbox_id"], json!(null));
    let here = app
        .post(
            "/v1/canned-responses",
            &admin,
            json!({"short_code": "ship", "text": "It ships today.", "inbox_id": desk.inbox_id}),
        )
        .await
        .expect(201);
    app.post(
        "/v1/canned-responses",
        &admin,
        json!({"short_code": "secret", "text": "Another desk's answer.", "inbox_id": other.inbox_id}),
    )
    .await
    .expect(201);
    // The same code twice in one inbox is refused.
    let taken = app
        .post(
            "/v1/canned-responses",
            &admin,
            json!({"short_code": "ship", "text": "again", "inbox_id": desk.inbox_id}),
        )
        .await;
    assert_eq!(taken.status, 409);

    // The operator sees the organisation's and their inbox's, by prefix or by text.
    let all = app
        .get("/v1/canned-responses", &desk.operator)
        .await
        .expect(200);
    let codes: Vec<String> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| str_of(&c["short_code"]))
        .collect();
    assert_eq!(codes, vec!["ship", "thanks"]);
    let found = app
        .get("/v1/canned-responses?q=/sh", &desk.operator)
        .await
        .expect(200);
    assert_eq!(found["items"][0]["short_code"], "ship");
    let by_text = app
        .get("/v1/canned-responses?q=today", &desk.operator)
        .await
        .expect(200);
    assert_eq!(by_text["items"][0]["id"], here["id"]);
    let id = everywhere["id"].as_i64().expect("id");
    let filled = app
        .post(
            &format!("/v1/canned-responses/{id}/render"),
            &desk.operator,
            json!({"chat_id": desk.chat_id}),
        )
        .await
        .expect(200);
    let text = str_of(&filled["text"]);
    assert!(text.starts_with("Thank you Customer! Reza of "), "{text}");
    assert!(!text.contains('{'), "{text}");
    // Not for a chat the operator does not see, nor an inbox's answer in another inbox.
    let r = app
        .post(
            &format!("/v1/canned-responses/{id}/render"),
            &desk.operator,
            json!({"chat_id": other.chat_id}),
        )
        .await;
    assert_eq!(r.status, 404);
    let ship = here["id"].as_i64().expect("id");
    let r = app
        .post(
            &format!("/v1/canned-responses/{ship}/render"),
            &other.operator,
            json!({"chat_id": other.chat_id}),
        )
        .await;
    assert_eq!(r.status, 404);
    // Customers have none; bad codes are refused; the admin edits and removes.
    assert_eq!(
        app.get("/v1/canned-responses", &desk.customer).await.status,
        403
    );
    let r = app
        .post(
            "/v1/canned-responses",
            &admin,
            json!({"short_code": "two words", "text": "x"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let edited = app
        .patch(
            &format!("/v1/canned-responses/{ship}"),
            &admin,
            json!({"text": "It ships tomorrow."}),
        )
        .await
        .expect(200);
    assert_eq!(edited["text"], "It ships tomorrow.");
    app.call(
        reqwest::Method::DELETE,
        &format!("/v1/canned-responses/{ship}"),
        Some(&admin),
        None,
    )
    .await
    .expect(204);
    let r = app
        .get(&format!("/v1/canned-responses/{ship}"), &desk.operator)
        .await;
    assert_eq!(r.status, 404);
}
