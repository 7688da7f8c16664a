//! Files: uploaded into a chat (multipart or raw), sent as a message every member sees
//! live, downloaded by a signed link or a member's token, checked by their bytes, and
//! removed by retention or erasure. With TEST_S3_ENDPOINT set, every server of these
//! tests keeps its files in the S3 test bucket; otherwise in a folder.

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{Desk, TestApp, spawn_app, spawn_app_with, str_of};
use crate::openapi;

/// A PNG of `width` x `height` (its header, and some bytes after: enough for a type and
/// dimensions read from the bytes), `len` bytes long.
pub fn png(width: u32, height: u32, len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 2, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
    let mut i = 0u8;
    while bytes.len() < len {
        bytes.push(i);
        i = i.wrapping_add(7);
    }
    bytes
}

async fn desk_app_with(tweak: impl FnOnce(&mut souq::Config)) -> (TestApp, Desk) {
    let app = spawn_app_with(tweak).await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    (app, desk)
}

impl TestApp {
    /// Uploads `bytes` as `multipart/form-data` into a chat; returns status and body
    /// (checked against the OpenAPI document).
    pub async fn upload(
        &self,
        token: &str,
        chat_id: i64,
        name: &str,
        bytes: Vec<u8>,
    ) -> (u16, Value) {
        let form = Form::new()
            .text("note", "ignored")
            .part("file", Part::bytes(bytes).file_name(name.to_owned()));
        let path = format!("/v1/chats/{chat_id}/files");
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .expect("upload sent");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON answer");
        openapi::check_response("POST", &path, status, &body);
        (status, body)
    }

    /// Uploads `bytes` as the raw body, named in the query.
    pub async fn upload_raw(
        &self,
        token: &str,
        chat_id: i64,
        name: &str,
        bytes: Vec<u8>,
    ) -> (u16, Value) {
        let path = format!("/v1/chats/{chat_id}/files");
        let r = self
            .client
            .post(format!(
                "{}{path}?name={}",
                self.base,
                form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            ))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("upload sent");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON answer");
        openapi::check_response("POST", &path, status, &body);
        (status, body)
    }

    /// GETs a path of the server (a file's url), with a token or none.
    pub async fn fetch(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    /// Sends an uploaded file as a message (201); returns the message.
    pub async fn send_file(&self, token: &str, chat_id: i64, file_id: &Value) -> Value {
        self.post(
            &format!("/v1/chats/{chat_id}/messages"),
            token,
            json!({"payload": "file", "file_id": file_id}),
        )
        .await
        .expect(201)
    }

    /// The keys in the server's file store.
    pub async fn stored_objects(&self) -> Vec<String> {
        let place = self.files.as_ref().expect("a test server's file store");
        souq::objects::Objects::open(place)
            .expect("file store")
            .keys()
            .await
            .expect("listed")
    }
}

#[tokio::test]
async fn a_photo_sent_into_a_chat_reaches_every_member_live_with_its_metadata() {
    let (app, desk) = desk_app_with(|_| {}).await;
    let mut customer = app.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;

    let photo = png(640, 480, 70_000);
    let (status, file) = app
        .upload(
            &desk.customer,
            desk.chat_id,
            "damaged box.png",
            photo.clone(),
        )
        .await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["content_type"], "image/png");
    assert_eq!(
        (file["image_width"].clone(), file["image_height"].clone()),
        (json!(640), json!(480))
    );
    assert_eq!(file["size"], 70_000);
    assert_eq!(file["name"], "damaged box.png");
    assert!(str_of(&file["id"]).ends_with(".png"), "{file}");

    customer
        .send(
            json!({"type": "send", "id": "f1", "chat_id": desk.chat_id, "local_id": "photo-1",
            "payload": "file", "file_id": file["id"], "text": "the box came like this"}),
        )
        .await;
    let ack = customer.next_of("ack").await;
    let pushed = operator.next_of("message").await;
    let m = &pushed["message"];
    assert_eq!(m["seq"], ack["seq"]);
    assert_eq!(m["payload"], "file");
    assert_eq!(m["text"], "the box came like this");
    assert_eq!(m["file"]["id"], file["id"]);
    assert_eq!(m["file"]["image_width"], 640);
    assert_eq!(m["file"]["content_type"], "image/png");

    // The link in the frame downloads it with no other credentials, as an <img> would.
    let url = str_of(&m["file"]["url"]);
    let r = app.fetch(&url, None).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap_or("")
            .starts_with("inline"),
        "{h:?}"
    );
    assert_eq!(r.bytes().await.expect("body").to_vec(), photo);

    // The history shows it the same way, for the other side too.
    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.operator,
        )
        .await
        .expect(200);
    assert_eq!(page["items"][0]["file"]["id"], file["id"]);
    assert_eq!(page["items"][0]["file"]["size"], 70_000);
}

#[tokio::test]
async fn a_raw_upload_is_sent_once_per_local_id_and_downloads_by_token() {
    let (app, desk) = desk_app_with(|_| {}).await;
    let pdf = b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n".to_vec();
    let (status, file) = app
        .upload_raw(&desk.operator, desk.chat_id, "invoice 42.pdf", pdf.clone())
        .await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["content_type"], "application/pdf");
    assert_eq!(file["image_width"], Value::Null);
    let send = json!({"payload": "file", "file_id": file["id"], "local_id": "inv"});
    let path = format!("/v1/chats/{}/messages", desk.chat_id);
    let first = app
        .post(&path, &desk.operator, send.clone())
        .await
        .expect(201);
    let again = app.post(&path, &desk.operator, send).await.expect(200);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        again["file"]["id"], file["id"],
        "a repeat shows the file too"
    );

    // A member's token downloads it; a PDF is an attachment, never shown as a page.
    let r = app
        .fetch(
            &format!("/v1/files/{}", str_of(&file["id"])),
            Some(&desk.customer),
        )
        .await;
    assert_eq!(r.status(), 200);
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains("invoice 42.pdf"), "{disposition}");
    assert_eq!(r.bytes().await.expect("body").to_vec(), pdf);

    // The widget uploads from the merchant's page, another origin: the preflight and the
    // upload both let it.
    let r = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chats/{}/files", app.base, desk.chat_id),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("preflight");
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap_or("")
            .contains("authorization")
    );
    let r = app
        .client
        .post(format!(
            "{}/v1/chats/{}/files?name=a.pdf",
            app.base, desk.chat_id
        ))
        .bearer_auth(&desk.customer)
        .header("origin", "https://shop.example")
        .body(b"%PDF-1.4\n".to_vec())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn a_download_answers_byte_ranges() {
    let (app, desk) = desk_app_with(|_| {}).await;
    let photo = png(10, 10, 1000);
    let (_, file) = app
        .upload(&desk.customer, desk.chat_id, "p.png", photo.clone())
        .await;
    let url = str_of(&file["url"]);
    let ranged = |range: &'static str| {
        app.client
            .get(format!("{}{url}", app.base))
            .header("range", range)
            .send()
    };
    let r = ranged("bytes=100-199").await.expect("sent");
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/1000");
    assert_eq!(r.bytes().await.expect("body").to_vec(), photo[100..200]);
    let r = ranged("bytes=-10").await.expect("sent");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").to_vec(), photo[990..]);
    let r = ranged("bytes=5000-").await.expect("sent");
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    let r = app
        .client
        .head(format!("{}{url}", app.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
}

#[tokio::test]
async fn the_type_is_read_from_the_bytes_not_from_the_name() {
    let (app, desk) = desk_app_with(|c| c.file_types = "image/*,text/plain".into()).await;
    // A page or a drawing that a browser would run is refused, whatever its name and
    // whatever types are configured (image/* here).
    let page = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let (status, body) = app
        .upload(&desk.customer, desk.chat_id, "photo.jpg", page)
        .await;
    assert_eq!(status, 415, "{body}");
    let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec();
    let (status, body) = app
        .upload(&desk.customer, desk.chat_id, "photo.png", svg)
        .await;
    assert_eq!(status, 415, "{body}");
    // Plain text named as a photo is stored as plain text.
    let notes = b"size 42, colour red, <b>urgent</b>".to_vec();
    let (status, file) = app
        .upload(&desk.customer, desk.chat_id, "photo.jpg", notes)
        .await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["content_type"], "text/plain");
    assert!(str_of(&file["id"]).ends_with(".txt"));
    let r = app.fetch(&str_of(&file["url"]), None).await;
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap_or("")
            .starts_with("attachment")
    );
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap_or("")
            .contains("sandbox")
    );

    // A type not taken, and bytes of no known type, are refused.
    let pdf = b"%PDF-1.4\nhello\n".to_vec();
    let (status, body) = app.upload(&desk.customer, desk.chat_id, "a.png", pdf).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (415, json!("unsupported_media_type"))
    );
    let binary = vec![0u8, 1, 2, 3, 0, 0, 9, 200];
    let (status, _) = app
        .upload(&desk.customer, desk.chat_id, "x.png", binary)
        .await;
    assert_eq!(status, 415);
    let (status, _) = app
        .upload(&desk.customer, desk.chat_id, "empty.png", Vec::new())
        .await;
    assert_eq!(status, 422, "an empty file is no file");
    assert_eq!(app.count("files").await, 1, "only the text file was kept");
}

#[tokio::test]
async fn a_file_over_a_limit_is_refused_and_leaves_nothing_behind() {
    let (app, desk) = desk_app_with(|c| {
        c.max_file_bytes = 300 * 1024;
        c.max_org_file_bytes = 500 * 1024;
    })
    .await;
    // Over the file limit, found half way through the stream.
    let (status, body) = app
        .upload(
            &desk.customer,
            desk.chat_id,
            "big.png",
            png(5, 5, 400 * 1024),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = app
        .upload_raw(
            &desk.customer,
            desk.chat_id,
            "big.png",
            png(5, 5, 400 * 1024),
        )
        .await;
    assert_eq!(status, 413);
    // A multipart body without a length, whose part head never ends, is cut at the limit
    // too (the head is held in memory while it is read).
    let endless_head = futures_util::stream::iter((0..200).map(|i| {
        let chunk = if i == 0 {
            b"--b\r\nX-Long: ".to_vec()
        } else {
            vec![b'a'; 4096]
        };
        Ok::<_, std::io::Error>(chunk)
    }));
    let r = app
        .client
        .post(format!("{}/v1/chats/{}/files", app.base, desk.chat_id))
        .bearer_auth(&desk.customer)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(reqwest::Body::wrap_stream(endless_head))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 413);
    // Within it, until the organisation's files fill its quota.
    let (status, _) = app
        .upload(&desk.customer, desk.chat_id, "a.png", png(5, 5, 260 * 1024))
        .await;
    assert_eq!(status, 201);
    let (status, body) = app
        .upload(&desk.customer, desk.chat_id, "b.png", png(5, 5, 260 * 1024))
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        str_of(&body["error"]["message"]).contains("organisation"),
        "{body}"
    );
    assert_eq!(app.count("files").await, 1);
    assert_eq!(
        app.stored_objects().await.len(),
        1,
        "refused uploads left no bytes"
    );
}

#[tokio::test]
async fn an_upload_cut_off_half_way_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let (app, desk) = desk_app_with(|_| {}).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/chats/{}/files?name=half.png HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {}\r\ncontent-type: image/png\r\ncontent-length: 2000000\r\n\r\n",
        desk.chat_id, desk.customer
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(&png(8, 8, 600 * 1024))
        .await
        .expect("half the body");
    tcp.flush().await.expect("flushed");
    // The server is storing it (it read past the type) when the client goes.
    let in_flight = || {
        app.core
            .as_ref()
            .expect("core")
            .metrics()
            .uploads_in_flight
            .get()
    };
    crate::helpers::eventually("the upload under way", || async {
        (in_flight() == 1).then_some(())
    })
    .await;
    drop(tcp);
    crate::helpers::eventually("the upload given up", || async {
        (in_flight() == 0).then_some(())
    })
    .await;
    assert!(app.stored_objects().await.is_empty());
    assert!(
        !app.files_staged(),
        "no part-written file is left in the folder"
    );
    assert_eq!(app.count("files").await, 0);
}

impl TestApp {
    /// Whether a folder store holds a part-written upload (staged beside its key); an S3
    /// store keeps those out of its listing.
    fn files_staged(&self) -> bool {
        fn any_file(dir: &std::path::Path) -> bool {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    let path = e.path();
                    if path.is_dir() { any_file(&path) } else { true }
                })
        }
        match &self.files {
            Some(souq::objects::Place::Folder(dir)) => any_file(dir),
            _ => false,
        }
    }
}

#[tokio::test]
async fn a_file_is_not_found_for_whoever_cannot_see_its_chat() {
    let (app, desk) = desk_app_with(|c| c.file_link_ttl = 60).await;
    let admin = app.admin().await;
    let other = app.desk(&admin).await;
    let (_, file) = app
        .upload(&desk.customer, desk.chat_id, "p.png", png(2, 2, 500))
        .await;
    let id = str_of(&file["id"]);
    let url = str_of(&file["url"]);
    // Another customer, another chat's operator, another organisation's admin: 404.
    let globex = app.admin_of("globex").await;
    for token in [&other.customer, &other.operator, &globex] {
        let r = app.fetch(&format!("/v1/files/{id}"), Some(token)).await;
        assert_eq!(r.status(), 404);
    }
    // No token, a tampered or an expired link: 401 or 404.
    assert_eq!(
        app.fetch(&format!("/v1/files/{id}"), None).await.status(),
        401
    );
    let last = if url.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &url[..url.len() - 1]);
    assert_eq!(app.fetch(&tampered, None).await.status(), 404);
    // Sending it into another chat, or as another member, finds no such file.
    let send = json!({"payload": "file", "file_id": id});
    let r = app
        .post(
            &format!("/v1/chats/{}/messages", other.chat_id),
            &other.customer,
            send.clone(),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app
        .post(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.operator,
            send,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // The link lasts its period and the next; after that it is refused.
    assert_eq!(app.fetch(&url, None).await.status(), 200);
    app.clock.advance(std::time::Duration::from_secs(121));
    assert_eq!(app.fetch(&url, None).await.status(), 404);
    // A fresh read of the chat gives a fresh link.
    let fresh = app
        .send_file(&desk.customer, desk.chat_id, &json!(id))
        .await;
    assert_eq!(
        app.fetch(&str_of(&fresh["file"]["url"]), None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn erasing_a_customers_data_removes_their_chats_messages_and_files() {
    let (app, desk) = desk_app_with(|_| {}).await;
    let admin = app.admin().await;
    let (_, file) = app
        .upload(&desk.customer, desk.chat_id, "p.png", png(2, 2, 500))
        .await;
    app.send_file(&desk.customer, desk.chat_id, &file["id"])
        .await;
    app.send(&desk.operator, desk.chat_id, "hello", None)
        .await
        .expect(201);
    // Someone else's chat stays as it is.
    let other = app.desk(&admin).await;
    app.send(&other.customer, other.chat_id, "mine", None)
        .await
        .expect(201);

    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/customers/{}/data", desk.customer_id),
            Some(&admin),
            None,
        )
        .await
        .expect(200);
    assert_eq!(r["chats_erased"], 1);
    assert_eq!(
        app.count(&format!("messages WHERE chat_id = {}", desk.chat_id))
            .await,
        0
    );
    assert_eq!(
        app.count(&format!("chats WHERE customer_id = {}", desk.customer_id))
            .await,
        0
    );
    assert_eq!(app.count("files").await, 0);
    assert!(
        app.stored_objects().await.is_empty(),
        "the bytes are gone too"
    );
    assert_eq!(app.fetch(&str_of(&file["url"]), None).await.status(), 404);
    assert_eq!(
        app.get("/v1/me", &desk.customer).await.status,
        401,
        "their sessions ended"
    );
    assert_eq!(
        app.count(&format!("messages WHERE chat_id = {}", other.chat_id))
            .await,
        1
    );
    // Only an admin erases, only their own organisation's customers.
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/customers/{}/data", other.customer_id),
            Some(&other.operator),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let globex = app.admin_of("globex").await;
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/customers/{}/data", other.customer_id),
            Some(&globex),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn finished_chats_files_and_unsent_uploads_are_removed_in_time() {
    // Tokens that outlast the months the clock moves on.
    let (app, desk) = desk_app_with(|c| {
        c.session_ttl = 400 * 86_400;
        c.access_token_ttl = 400 * 86_400;
        c.refresh_token_ttl = 400 * 86_400;
    })
    .await;
    let admin = app.admin().await;
    let core = app.core.clone().expect("the core");
    let settings = app
        .patch(
            "/v1/organisation",
            &admin,
            json!({"file_retention_days": 30}),
        )
        .await
        .expect(200);
    assert_eq!(settings["file_retention_days"], 30);
    for bad in [
        json!({"file_retention_days": 0}),
        json!({}),
        json!({"file_retention_days": "30"}),
    ] {
        let r = app.patch("/v1/organisation", &admin, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}");
    }
    let (_, file) = app
        .upload(&desk.customer, desk.chat_id, "p.png", png(2, 2, 500))
        .await;
    app.send_file(&desk.customer, desk.chat_id, &file["id"])
        .await;
    // An upload never sent goes after a day, its bytes too.
    let (_, unsent) = app
        .upload(&desk.customer, desk.chat_id, "q.png", png(2, 2, 400))
        .await;
    app.clock.advance(std::time::Duration::from_secs(3600));
    assert_eq!(
        core.remove_unsent_uploads().await.expect("round"),
        0,
        "not yet"
    );
    assert_eq!(app.stored_objects().await.len(), 2);
    // An open chat's files are kept however old.
    app.clock
        .advance(std::time::Duration::from_secs(40 * 86_400));
    assert_eq!(core.remove_unsent_uploads().await.expect("round"), 1);
    assert_eq!(
        app.count(&format!("files WHERE id = '{}'", str_of(&unsent["id"])))
            .await,
        0
    );
    assert_eq!(app.stored_objects().await.len(), 1, "the sent file stays");
    assert_eq!(core.remove_expired_files().await.expect("round"), 0);
    app.post(
        &format!("/v1/chats/{}/finish", desk.chat_id),
        &desk.operator,
        json!({}),
    )
    .await
    .expect(200);
    app.clock
        .advance(std::time::Duration::from_secs(29 * 86_400));
    assert_eq!(
        core.remove_expired_files().await.expect("round"),
        0,
        "not yet"
    );
    app.clock
        .advance(std::time::Duration::from_secs(2 * 86_400));
    assert_eq!(core.remove_expired_files().await.expect("round"), 1);
    assert!(app.stored_objects().await.is_empty());
    assert_eq!(
        app.fetch(
            &format!("/v1/files/{}", str_of(&file["id"])),
            Some(&desk.customer)
        )
        .await
        .status(),
        404
    );
    let page = app
        .get(
            &format!("/v1/chats/{}/messages", desk.chat_id),
            &desk.customer,
        )
        .await
        .expect(200);
    assert_eq!(page["items"][0]["file"]["removed"], true);
    assert_eq!(page["items"][0]["file"]["url"], Value::Null);
    let settings = app.get("/v1/organisation", &admin).await.expect(200);
    assert_eq!(settings["file_bytes_used"], 0);
}

#[tokio::test]
async fn iqstore_uploads_and_downloads_files_and_shows_them_in_rels_files() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let cookie = format!("client-session={}", desk.customer);
    let photo = png(320, 200, 5356);
    let form = Form::new().part("file", Part::bytes(photo.clone()).file_name("oci8.png"));
    let r: Value = app
        .client
        .post(format!("{}/public/api/v1/files/upload/support", app.base))
        .header("cookie", &cookie)
        .multipart(form)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(r["OK"], true, "{r}");
    let id = str_of(&r["Result"]["Id"]);
    assert!(id.ends_with(".png"), "{r}");
    let sent: Value = app
        .client
        .post(format!(
            "{}/public/api/v1/chats/channel/send/support",
            app.base
        ))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .body(
            json!({"LocalId": 1518171256447i64, "Payload": "file", "FileId": id, "Text": ""})
                .to_string(),
        )
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(sent["OK"], true, "{sent}");
    assert_eq!(sent["Result"][0]["Payload"], "file");
    let f = &sent["Rels"]["Files"][0];
    crate::helpers::assert_types(
        f,
        &json!({"Id": "string", "Type": "string", "Owner": "string", "OwnerClientId": "number",
            "ClientId": "number", "UserId": "null", "Name": "string", "Path": "string", "Size": "number",
            "ImageWidth": "number", "ImageHeight": "number", "ContentType": "string", "CreatedAt": "number"}),
        "Rels.Files",
    );
    assert_eq!(
        (f["Id"].clone(), f["Owner"].clone(), f["Size"].clone()),
        (json!(id), json!("client"), json!(5356))
    );
    assert_eq!(
        (f["ImageWidth"].clone(), f["ImageHeight"].clone()),
        (json!(320), json!(200))
    );
    // The history brings it too, and the bytes come back as themselves.
    let history: Value = app
        .client
        .post(format!(
            "{}/public/api/v1/chats/channel/history/support",
            app.base
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(history["Rels"]["Files"][0]["Id"], json!(id));
    let r = app
        .client
        .get(format!("{}/public/api/v1/files/{id}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.expect("body").to_vec(), photo);
    let r = app
        .client
        .get(format!("{}/public/api/v1/files/{id}", app.base))
        .header("cookie", "client-session=nope")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
}
