//! Search over message text: only the chats the caller sees, newest first, paged, with
//! highlights safe for HTML; a new message is found within a second; no query breaks it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, spawn_app, str_of};

/// The query string for `q`, percent-encoded.
fn search_path(q: &str, extra: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
    format!("/v1/search?q={q}{extra}")
}

/// The ids of the messages `token` finds for `q`, once the index holds `expected` of
/// them (SQLite indexes a moment after the send).
async fn found(app: &TestApp, token: &str, q: &str, expected: usize) -> Vec<i64> {
    eventually(&format!("{expected} hits for {q}"), || async {
        let page = app
            .get(&search_path(q, "&limit=100"), token)
            .await
            .expect(200);
        let ids = ids_of(&page);
        (ids.len() >= expected).then_some(ids)
    })
    .await
}

fn ids_of(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|h| h["message"]["id"].as_i64().expect("message id"))
        .collect()
}

fn id_of(message: &Value) -> i64 {
    message["id"].as_i64().expect("id")
}

#[tokio::test]
async fn a_customer_finds_only_their_own_messages_with_html_safe_highlights() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let (_, other) = app.customer(&admin, "search-other").await;
    let other_chat = app
        .post("/v1/chats", &other, json!({"inbox_id": desk.inbox_id}))
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("chat id");
    let mine = app
        .send(
            &desk.customer,
            desk.chat_id,
            "<b>Refund</b> & \"more\" please",
            None,
        )
        .await
        .expect(201);
    app.send(&other, other_chat, "my refund too", None)
        .await
        .expect(201);
    app.send(&desk.customer, desk.chat_id, "nothing to see", None)
        .await
        .expect(201);

    // The admin finds both; the customer only their own.
    assert_eq!(found(&app, &admin, "refund", 2).await.len(), 2);
    let page = app
        .get(&search_path("REFUND please", ""), &desk.customer)
        .await
        .expect(200);
    assert_eq!(ids_of(&page), vec![id_of(&mine)]);
    let hit = &page["items"][0];
    assert_eq!(hit["chat_id"], json!(desk.chat_id));
    assert_eq!(
        str_of(&hit["highlight"]),
        "&lt;b&gt;<mark>Refund</mark>&lt;/b&gt; &amp; &quot;more&quot; <mark>please</mark>"
    );
    // The message is the one the chat's listing shows.
    let listed = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    let same = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["id"] == mine["id"])
        .expect("listed")
        .clone();
    assert_eq!(hit["message"], same);
    // The other customer never finds the first one's message.
    let theirs = app
        .get(&search_path("please", ""), &other)
        .await
        .expect(200);
    assert!(ids_of(&theirs).is_empty(), "{theirs}");
}

#[tokio::test]
async fn an_operator_never_finds_messages_of_inboxes_they_do_not_see() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let seen = app.desk(&admin).await;
    let unseen = app.desk(&admin).await;
    let here = app
        .send(&seen.customer, seen.chat_id, "where is my parcel", None)
        .await
        .expect(201);
    let there = app
        .send(&unseen.customer, unseen.chat_id, "parcel lost", None)
        .await
        .expect(201);

    let all = found(&app, &admin, "parcel", 2).await;
    assert_eq!(all, vec![id_of(&there), id_of(&here)], "newest first");
    let operator = app
        .get(&search_path("parcel", ""), &seen.operator)
        .await
        .expect(200);
    assert_eq!(ids_of(&operator), vec![id_of(&here)]);
    // Another organisation finds nothing of this one.
    let globex = app.admin_of("globex").await;
    let none = app
        .get(&search_path("parcel", ""), &globex)
        .await
        .expect(200);
    assert!(ids_of(&none).is_empty(), "{none}");
}

#[tokio::test]
async fn pages_return_each_hit_once_newest_first() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let m = app
            .send(
                &desk.customer,
                desk.chat_id,
                &format!("invoice number {i}"),
                None,
            )
            .await
            .expect(201);
        sent.push(id_of(&m));
    }
    found(&app, &desk.operator, "invoice", 7).await;
    let mut seen = Vec::new();
    let mut path = search_path("invoice", "&limit=3");
    let mut pages = 0;
    loop {
        let page = app.get(&path, &desk.operator).await.expect(200);
        pages += 1;
        seen.extend(ids_of(&page));
        match page["next"].as_str() {
            Some(next) => path = search_path("invoice", &format!("&limit=3&before={next}")),
            None => break,
        }
    }
    sent.reverse();
    assert_eq!(seen, sent, "every hit once, newest first");
    assert_eq!(pages, 3);
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), 7);
}

#[tokio::test]
async fn a_new_message_is_found_within_a_second() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let sent_at = Instant::now();
    let m = app
        .send(&desk.customer, desk.chat_id, "zanzibar arrives", None)
        .await
        .expect(201);
    let ids = found(&app, &desk.operator, "zanzibar", 1).await;
    let took = sent_at.elapsed();
    assert_eq!(ids, vec![id_of(&m)]);
    assert!(took < Duration::from_secs(1), "found after {took:?}");
}

#[tokio::test]
async fn hostile_queries_answer_200_or_422_never_500() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    app.send(
        &desk.customer,
        desk.chat_id,
        "a \"quoted\" word: NEAR(x y) * 42",
        None,
    )
    .await
    .expect(201);
    found(&app, &admin, "quoted", 1).await;
    let long = "x".repeat(201);
    let cases: &[(&str, u16)] = &[
        ("\"", 200),
        ("\"quoted", 200),
        ("*", 200),
        ("quo*", 200),
        ("NEAR(", 200),
        ("NEAR(x y)", 200),
        ("word:", 200),
        ("text:word", 200),
        ("a AND OR NOT", 200),
        ("-x", 200),
        ("^x", 200),
        ("(", 200),
        ("{x}", 200),
        ("'; DROP TABLE messages; --", 200),
        ("\\", 200),
        ("%_", 200),
        ("ناموجود 😀 ü", 200),
        ("\u{E000}x\u{E001}", 200),
        ("\u{0}", 422),
        ("x\u{0}y\u{7}", 200),
        ("", 422),
        ("   ", 422),
        (&long, 422),
    ];
    for &(q, status) in cases {
        let r = app.get(&search_path(q, ""), &admin).await;
        assert_eq!(r.status.as_u16(), status, "q = {q:?}: {}", r.body);
    }
    // Quotes and operators are only text: the words around them are found.
    let page = app
        .get(&search_path("\"quoted\" NEAR(x", ""), &admin)
        .await
        .expect(200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    let missing = app.get("/v1/search", &admin).await;
    assert_eq!(missing.status, 422);
    assert!(str_of(&missing.body["error"]["message"]).contains("q"));
    let long = app.get(&search_path(&"y".repeat(201), ""), &admin).await;
    assert!(
        str_of(&long.body["error"]["message"]).contains("200 characters"),
        "{}",
        long.body
    );
    for bad in ["&before=x", "&before=-1", "&limit=0", "&limit=101"] {
        let r = app.get(&search_path("word", bad), &admin).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let r = app
        .call(Method::GET, &search_path("word", ""), None, None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn erased_messages_are_no_longer_found_and_later_ones_are() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let stays = app.desk(&admin).await;
    app.send(&stays.customer, stays.chat_id, "kept receipt", None)
        .await
        .expect(201);
    // The erased customer's messages are the newest: their ids would be handed out again.
    app.send(&desk.customer, desk.chat_id, "erased receipt", None)
        .await
        .expect(201);
    app.send(&desk.customer, desk.chat_id, "erased receipt again", None)
        .await
        .expect(201);
    found(&app, &admin, "receipt", 3).await;
    app.call(
        Method::DELETE,
        &format!("/v1/customers/{}/data", desk.customer_id),
        Some(&admin),
        None,
    )
    .await
    .expect(200);
    let left = app
        .get(&search_path("receipt", ""), &admin)
        .await
        .expect(200);
    assert_eq!(ids_of(&left).len(), 1, "{left}");
    assert!(str_of(&left["items"][0]["highlight"]).contains("kept"));
    let erased = app
        .get(&search_path("erased", ""), &admin)
        .await
        .expect(200);
    assert!(ids_of(&erased).is_empty(), "{erased}");
    // A message sent after the erasure is found, whatever id it got.
    let later = app
        .send(&stays.customer, stays.chat_id, "another receipt", None)
        .await
        .expect(201);
    let ids = found(&app, &admin, "receipt", 2).await;
    assert_eq!(ids[0], id_of(&later), "{ids:?}");
    let only_new = found(&app, &admin, "another", 1).await;
    assert_eq!(only_new, vec![id_of(&later)]);
}
