//! An inbox's service-level figures: exact for a history built with the server's clock,
//! only for those who see the inbox.

use std::time::Duration;

use reqwest::Method;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

fn number(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// When a chat was finished, as stored (the API does not show it).
async fn finished_at(app: &TestApp, chat_id: i64) -> i64 {
    let db = Database::connect(app.database_url.as_str())
        .await
        .expect("the test's database");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT finished_at FROM chats WHERE id = {chat_id}"),
        ))
        .await
        .expect("read")
        .expect("the chat");
    let at: i64 = row.try_get("", "finished_at").expect("finished_at");
    db.close().await.expect("closed");
    at
}

/// The customer opens a chat with `inbox_id`.
async fn new_chat(app: &TestApp, customer: &str, inbox_id: i64) -> Value {
    app.post("/v1/chats", customer, json!({"inbox_id": inbox_id}))
        .await
        .expect(201)
}

#[tokio::test]
async fn an_inbox_report_counts_a_constructed_history_exactly() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let inbox = desk.inbox_id;
    let a = (desk.operator_id, desk.operator.clone());
    let b_id = app.operator(&admin, "second-operator@acme.test").await;
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": b_id, "inbox_id": inbox}),
    )
    .await
    .expect(201);
    let b = (b_id, app.operator_token(&admin, b_id).await);
    let elsewhere = app.desk(&admin).await;
    // Customer sessions outlast the days the clock moves on; the admin's token does not.
    let mut customers = Vec::new();
    for name in ["report-one", "report-two", "report-three", "report-later"] {
        customers.push(app.customer(&admin, name).await.1);
    }
    let hour = Duration::from_secs(3600);
    let created = |chat: &Value| number(&chat["created_at"]);
    let sent_at = |m: Value| number(&m["created_at"]);

    // Before the period: the desk's own chat, answered. Elsewhere: another inbox's chat.
    app.send(&a.1, desk.chat_id, "old answer", None)
        .await
        .expect(201);
    app.send(
        &elsewhere.operator,
        elsewhere.chat_id,
        "not this inbox",
        None,
    )
    .await
    .expect(201);
    app.clock.advance(48 * hour);
    let from = app.clock.now_ms();

    // One: answered by A after a minute (a customer message first does not count),
    // finished an hour later.
    let c1 = &customers[0];
    let one = new_chat(&app, c1, inbox).await;
    let one_id = number(&one["id"]);
    app.send(c1, one_id, "hello?", None).await.expect(201);
    app.clock.advance(Duration::from_secs(60));
    let r1 = sent_at(app.send(&a.1, one_id, "hi", None).await.expect(201)) - created(&one);
    app.send(&b.1, one_id, "B writes later", None)
        .await
        .expect(201);
    app.clock.advance(hour);
    app.post(&format!("/v1/chats/{one_id}/finish"), &a.1, json!({}))
        .await
        .expect(200);
    let resolved = finished_at(&app, one_id).await - created(&one);

    // Two: only a broadcast of the store reached its customer: missed.
    let two = new_chat(&app, &customers[1], inbox).await;
    // Three: answered by B after five minutes.
    let three = new_chat(&app, &customers[2], inbox).await;
    app.post(
        &format!("/v1/inboxes/{inbox}/broadcasts"),
        &a.1,
        json!({"text": "we are closed on friday"}),
    )
    .await
    .expect(201);
    app.clock.advance(Duration::from_secs(300));
    let three_id = number(&three["id"]);
    let r3 = sent_at(
        app.send(&b.1, three_id, "sorry for the wait", None)
            .await
            .expect(201),
    ) - created(&three);
    let to = app.clock.now_ms() + 1;
    // After the period: a chat not counted.
    app.clock.advance(hour);
    new_chat(&app, &customers[3], inbox).await;
    let admin = app.admin().await;

    let report = app
        .get(
            &format!("/v1/inboxes/{inbox}/report?from={from}&to={to}"),
            &admin,
        )
        .await
        .expect(200);
    let average = |sum: i64, n: i64| (sum + n / 2) / n;
    let name = |id: i64| {
        let app = &app;
        let admin = &admin;
        async move {
            app.get(&format!("/v1/operators/{id}"), admin)
                .await
                .expect(200)["name"]
                .clone()
        }
    };
    let operators = vec![
        json!({"operator_id": a.0, "name": name(a.0).await, "chats": 1, "first_response_avg_ms": r1}),
        json!({"operator_id": b.0, "name": name(b.0).await, "chats": 1, "first_response_avg_ms": r3}),
    ];
    assert_eq!(
        report,
        json!({
            "inbox_id": inbox,
            "from": from,
            "to": to,
            "chats": 3,
            "answered": 2,
            "missed": 1,
            "first_response": {"count": 2, "avg_ms": average(r1 + r3, 2), "max_ms": r1.max(r3)},
            "resolution": {"count": 1, "avg_ms": resolved, "max_ms": resolved},
            "operators": operators,
        }),
        "two: {}",
        two["id"]
    );
    assert!(r1 >= 60_000 && r3 >= 300_000 && resolved >= 3_660_000);

    // By default, the last seven days: the desk's own chat (two days old) counts too.
    let week = app
        .get(&format!("/v1/inboxes/{inbox}/report"), &a.1)
        .await
        .expect(200);
    assert_eq!(week["chats"], json!(5), "{week}");
    assert_eq!(week["answered"], json!(3), "{week}");
    assert_eq!(
        number(&week["to"]) - number(&week["from"]),
        7 * 24 * 3600 * 1000
    );

    // A period with nothing in it.
    let empty = app
        .get(&format!("/v1/inboxes/{inbox}/report?from=1&to=2"), &admin)
        .await
        .expect(200);
    assert_eq!(
        empty["first_response"],
        json!({"count": 0, "avg_ms": null, "max_ms": null})
    );
    assert_eq!(empty["operators"], json!([]));
}

#[tokio::test]
async fn only_the_admin_and_operators_who_see_the_inbox_get_its_report() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let other = app.desk(&admin).await;
    let path = format!("/v1/inboxes/{}/report", desk.inbox_id);
    app.get(&path, &admin).await.expect(200);
    app.get(&path, &desk.operator).await.expect(200);
    for token in [&other.operator, &desk.customer] {
        let r = app.get(&path, token).await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let globex = app.admin_of("globex").await;
    assert_eq!(app.get(&path, &globex).await.status, 404);
    assert_eq!(app.call(Method::GET, &path, None, None).await.status, 401);
    for bad in [
        "?from=x",
        "?to=-1",
        "?from=10&to=10",
        "?from=20&to=10",
        "?from=",
    ] {
        let r = app.get(&format!("{path}{bad}"), &admin).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
}
