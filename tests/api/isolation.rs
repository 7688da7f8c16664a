//! Nothing crosses from one organisation to another: another tenant's id answers exactly
//! like an unknown one.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn another_organisations_ids_answer_404_like_unknown_ones() {
    let app = spawn_app().await;
    let acme = app.admin().await;
    let globex = app.admin_of("globex").await;
    let desk = app.desk(&acme).await;
    let (_, intruder) = app.customer(&globex, "intruder").await;
    let intruder_op = app.operator(&globex, "spy@globex.test").await;
    let intruder_op = app.operator_token(&globex, intruder_op).await;

    let admin_paths = [
        format!("/v1/operators/{}", desk.operator_id),
        format!("/v1/domains/{}", desk.domain_id),
        format!("/v1/inboxes/{}", desk.inbox_id),
        format!("/v1/customers/{}", desk.customer_id),
        format!("/v1/chats/{}", desk.chat_id),
    ];
    for path in &admin_paths {
        let theirs = app.get(path, &globex).await;
        let unknown = app
            .get(&path.replace(|c: char| c.is_ascii_digit(), "9"), &globex)
            .await;
        assert_eq!(theirs.status, 404, "{path}: {}", theirs.body);
        assert_eq!(
            theirs.body["error"]["code"], unknown.body["error"]["code"],
            "{path}"
        );
    }
    for token in [&intruder, &intruder_op] {
        let r = app
            .get(&format!("/v1/chats/{}/messages", desk.chat_id), token)
            .await;
        assert_eq!(r.status, 404);
        let r = app
            .send(token, desk.chat_id, "hello from outside", None)
            .await;
        assert_eq!(r.status, 404);
        let r = app
            .post(
                &format!("/v1/chats/{}/receipts", desk.chat_id),
                token,
                json!({"read": 0}),
            )
            .await;
        assert_eq!(r.status, 404);
    }
    let r = app
        .post("/v1/chats", &intruder, json!({"inbox_id": desk.inbox_id}))
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .post(
            &format!("/v1/customers/{}/sessions", desk.customer_id),
            &globex,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .post(
            "/v1/assignments",
            &globex,
            json!({"operator_id": desk.operator_id, "inbox_id": desk.inbox_id}),
        )
        .await;
    assert_eq!(r.status, 404);
    // Lists hold only one's own.
    assert!(
        app.get("/v1/chats", &globex).await.expect(200)["items"]
            .as_array()
            .expect("items")
            .is_empty()
    );
    assert!(
        app.get("/v1/domains", &globex).await.expect(200)["items"]
            .as_array()
            .expect("items")
            .is_empty()
    );
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 0, "a refused foreign send left a message");
}
