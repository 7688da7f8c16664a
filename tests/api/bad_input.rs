//! Bad input of every kind gets a clear error and changes nothing.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_or_mistyped_bodies_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let send = format!("/v1/chats/{}/messages", desk.chat_id);
    let cases: &[(&str, &[u8], u16, &str)] = &[
        ("truncated JSON", b"{\"text\": \"hi\"", 400, "bad_json"),
        ("not JSON", b"text=hi", 400, "bad_json"),
        ("empty body", b"", 400, "bad_json"),
        ("an array", b"[1,2]", 422, "invalid"),
        ("text is a number", b"{\"text\": 5}", 422, "invalid"),
        (
            "local_id is an object",
            b"{\"text\": \"x\", \"local_id\": {}}",
            422,
            "invalid",
        ),
        (
            "unknown field",
            b"{\"text\": \"x\", \"colour\": \"red\"}",
            422,
            "invalid",
        ),
        ("empty text", b"{\"text\": \"   \"}", 422, "invalid"),
        (
            "unknown payload",
            b"{\"text\": \"x\", \"payload\": \"video\"}",
            422,
            "invalid",
        ),
        (
            "file without file_id",
            b"{\"payload\": \"file\"}",
            422,
            "invalid",
        ),
        (
            "unknown file",
            b"{\"payload\": \"file\", \"file_id\": \"nope.txt\"}",
            404,
            "not_found",
        ),
        (
            "invalid UTF-8",
            b"{\"text\": \"\xff\xfe\"}",
            400,
            "bad_json",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = app
            .raw(
                Method::POST,
                &send,
                Some(&desk.customer),
                Some(body.to_vec()),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (*status, *code),
            "{what}: {}",
            r.body
        );
        assert!(
            !r.body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}: no message"
        );
    }
    let missing = app
        .post("/v1/operators", &admin, json!({"name": "no email"}))
        .await;
    assert_eq!(missing.status, 422);
    let wrong_type = app
        .post("/v1/chats", &desk.customer, json!({"inbox_id": "1"}))
        .await;
    assert_eq!(wrong_type.status, 422);

    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 0, "a refused send left a message behind");
    let ops = app.get("/v1/operators", &admin).await.expect(200);
    assert_eq!(ops["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn an_oversize_body_gets_413_and_changes_nothing() {
    let app = spawn_app_with(|c| {
        c.max_body_bytes = 4096;
        c.max_text_chars = 100_000;
    })
    .await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let text = "x".repeat(5000);
    let r = app.send(&desk.customer, desk.chat_id, &text, None).await;
    assert_eq!((r.status.as_u16(), r.code()), (413, "payload_too_large"));
    // Without a Content-Length (chunked), the limit holds as well.
    let status = chunked_post(
        &app.base,
        &format!("/v1/chats/{}/messages", desk.chat_id),
        &desk.customer,
        &[b"{\"text\": \"", &[b'y'; 5000], b"\"}"],
    )
    .await;
    assert_eq!(status, 413);
    let chat = app
        .get(&format!("/v1/chats/{}", desk.chat_id), &desk.customer)
        .await
        .expect(200);
    assert_eq!(chat["last_seq"], 0);
}

/// Posts a body in chunked transfer encoding over a raw socket; returns the status code.
async fn chunked_post(base: &str, path: &str, token: &str, chunks: &[&[u8]]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything; that is fine.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

#[tokio::test]
async fn text_longer_than_the_limit_is_refused() {
    let app = spawn_app_with(|c| c.max_text_chars = 10).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let r = app
        .send(&desk.customer, desk.chat_id, "eleven char", None)
        .await;
    assert_eq!(r.status, 422);
    app.send(&desk.customer, desk.chat_id, "ten chars!", None)
        .await
        .expect(201);
}

#[tokio::test]
async fn unknown_ids_paths_and_methods_get_clear_errors() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for path in [
        "/v1/chats/999999",
        "/v1/chats/abc",
        "/v1/chats/-1",
        "/v1/chats/0/messages",
        "/v1/operators/999999",
    ] {
        let token = if path.starts_with("/v1/operators") {
            &admin
        } else {
            &desk.customer
        };
        let r = app.get(path, token).await;
        assert_eq!((r.status.as_u16(), r.code()), (404, "not_found"), "{path}");
    }
    let r = app.get("/v1/nowhere", &admin).await;
    assert_eq!((r.status.as_u16(), r.code()), (404, "not_found"));
    let r = app
        .call(Method::DELETE, "/v1/chats", Some(&desk.customer), None)
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (405, "method_not_allowed"));
    let r = app.call(Method::GET, "/v1/auth/token", None, None).await;
    assert_eq!(r.status, 405);
    let r = app.get("/v1/chats?limit=0", &desk.customer).await;
    assert_eq!(r.status, 422);
    let r = app.get("/v1/chats?limit=ten", &desk.customer).await;
    assert_eq!(r.status, 422);
    let r = app.get("/v1/chats?status=open", &desk.customer).await;
    assert_eq!(r.status, 422);
    let r = app.get("/v1/chats?before=garbage", &desk.customer).await;
    assert_eq!(r.status, 422);
    let r = app
        .get(
            &format!("/v1/chats/{}/messages?after=x", desk.chat_id),
            &desk.customer,
        )
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn admin_tokens_cannot_send_or_open_chats() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let r = app.send(&admin, desk.chat_id, "from the admin", None).await;
    assert_eq!(r.status, 403);
    let r = app
        .post("/v1/chats", &admin, json!({"inbox_id": desk.inbox_id}))
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .post(
            "/v1/chats",
            &desk.operator,
            json!({"inbox_id": desk.inbox_id}),
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn ids_with_a_sign_or_leading_zeros_name_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let id = desk.chat_id;
    app.get(&format!("/v1/chats/{id}"), &desk.customer)
        .await
        .expect(200);
    for path in [
        format!("/v1/chats/0{id}"),
        format!("/v1/chats/+{id}"),
        format!("/v1/chats/%2B{id}"),
        format!("/v1/chats/00{id}/messages"),
    ] {
        let r = app.get(&path, &desk.customer).await;
        assert_eq!((r.status.as_u16(), r.code()), (404, "not_found"), "{path}");
    }
    // Query numbers are digits too: a sign or an empty value is refused, not read as 0.
    for query in ["after=%2B1", "after=", "limit=", "wait=&after=0"] {
        let r = app
            .get(&format!("/v1/chats/{id}/messages?{query}"), &desk.customer)
            .await;
        assert_eq!((r.status.as_u16(), r.code()), (422, "invalid"), "{query}");
    }
}

#[tokio::test]
async fn an_empty_filter_is_refused_rather_than_ignored() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for query in ["status=", "before="] {
        let r = app.get(&format!("/v1/chats?{query}"), &desk.operator).await;
        assert_eq!((r.status.as_u16(), r.code()), (422, "invalid"), "{query}");
    }
    let r = app.get("/v1/chats?status=pending", &desk.operator).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_json_array_is_not_an_object_body() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let domain = app
        .get(&format!("/v1/domains/{}", desk.domain_id), &admin)
        .await
        .expect(200);
    let key = domain["widget_key"]
        .as_str()
        .expect("a widget key")
        .to_owned();
    let (customers, chats) = (app.count("customers").await, app.count("chats").await);
    // serde would fill a struct's fields from an array, in order: `[null]` once made a
    // visitor with no token, and so a new customer and chat.
    for body in [
        &b"[null,null]"[..],
        b"[null]",
        b"[]",
        b"\"x\"",
        b"7",
        b"null",
    ] {
        let r = app
            .raw(
                Method::POST,
                &format!("/v1/widget/{key}/visitors"),
                None,
                Some(body.to_vec()),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, "invalid"),
            "{}",
            String::from_utf8_lossy(body)
        );
        let r = app
            .raw(
                Method::POST,
                "/v1/chats",
                Some(&desk.customer),
                Some(body.to_vec()),
            )
            .await;
        assert_eq!((r.status.as_u16(), r.code()), (422, "invalid"));
    }
    assert_eq!(
        app.count("customers").await,
        customers,
        "no visitor was made"
    );
    assert_eq!(app.count("chats").await, chats, "no chat was opened");
}

#[tokio::test]
async fn a_405_says_which_methods_the_resource_answers() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for (method, path, allow) in [
        (Method::DELETE, "/v1/chats".to_owned(), "GET, POST"),
        (
            Method::PUT,
            format!("/v1/chats/{}", desk.chat_id),
            "GET, OPTIONS",
        ),
        (Method::GET, "/v1/auth/token".to_owned(), "POST"),
        (Method::POST, "/healthz".to_owned(), "GET"),
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.base))
            .bearer_auth(&desk.customer)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let body: serde_json::Value = r.json().await.expect("a JSON body");
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
}
