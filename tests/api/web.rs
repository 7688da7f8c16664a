//! The pages the server serves itself: the front page, the console, the demo, the API
//! reference and the schemas they read. What a browser does with them is the end-to-end
//! suite's; here, that each is served, as what it is, and names what it needs.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

struct Served {
    status: u16,
    content_type: String,
    cache: String,
    policy: Option<String>,
    body: String,
}

async fn fetch(app: &TestApp, path: &str) -> Served {
    let r = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    };
    Served {
        status: r.status().as_u16(),
        content_type: header("content-type").unwrap_or_default(),
        cache: header("cache-control").unwrap_or_default(),
        policy: header("content-security-policy"),
        body: r.text().await.unwrap_or_default(),
    }
}

#[tokio::test]
async fn every_page_and_asset_is_served_as_what_it_is_with_a_cache_header() {
    let app = spawn_app().await;
    let cases = [
        ("/", "text/html", "/console"),
        ("/console", "text/html", "/console.js"),
        ("/console.js", "application/javascript", "/v1/ws"),
        ("/souq.css", "text/css", ":focus-visible"),
        ("/demo", "text/html", "/demo.js"),
        ("/demo.js", "application/javascript", "data-souq-key"),
        ("/reference", "text/html", "/reference.js"),
        (
            "/reference.js",
            "application/javascript",
            "/schema/openapi.json",
        ),
        ("/widget.js", "application/javascript", "attachShadow"),
        ("/schema/openapi.json", "application/json", "\"openapi\""),
        ("/schema/ws.json", "application/json", "\"server\""),
    ];
    for (path, content_type, names) in cases {
        let page = fetch(&app, path).await;
        assert_eq!(page.status, 200, "GET {path}");
        assert!(
            page.content_type.starts_with(content_type),
            "GET {path}: content-type {:?}, expected {content_type}",
            page.content_type
        );
        assert!(!page.cache.is_empty(), "GET {path}: no Cache-Control");
        assert!(
            page.body.contains(names),
            "GET {path} does not name {names}"
        );
    }
}

#[tokio::test]
async fn the_console_runs_only_its_own_script_and_may_open_the_socket() {
    let app = spawn_app().await;
    let page = fetch(&app, "/console").await;
    assert!(page.body.contains(r#"<script src="/console.js""#));
    assert!(
        !page.body.contains("<script>") && !page.body.contains(" style="),
        "the policy forbids inline scripts and styles"
    );
    let policy = page.policy.expect("a Content-Security-Policy");
    let host = app.base.trim_start_matches("http://");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        &format!("ws://{host}"),
    ] {
        assert!(policy.contains(directive), "{directive} missing: {policy}");
    }
    // Every control a browser test drives has its hook.
    for hook in [
        "sign-in-token",
        "sign-out",
        "presence",
        "chat-filter",
        "chat-list",
        "composer-input",
        "send",
        "note-input",
        "attach",
    ] {
        assert!(
            page.body.contains(&format!("data-test=\"{hook}\"")),
            "no data-test={hook}"
        );
    }
}

#[tokio::test]
async fn the_served_schemas_are_the_documents_and_parse() {
    let app = spawn_app().await;
    for (path, file) in [
        ("/schema/openapi.json", "openapi.json"),
        ("/schema/ws.json", "ws.json"),
    ] {
        let served: Value = serde_json::from_str(&fetch(&app, path).await.body)
            .unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
        let on_disk =
            std::fs::read_to_string(format!("{}/schema/{file}", env!("CARGO_MANIFEST_DIR")))
                .expect("schema file");
        let on_disk: Value = serde_json::from_str(&on_disk).expect("JSON");
        assert_eq!(served, on_disk, "{path} is not schema/{file}");
    }
}

#[tokio::test]
async fn a_page_answers_only_get() {
    let app = spawn_app().await;
    let r = app
        .call(Method::POST, "/console", None, Some(json!({})))
        .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn a_new_visitor_may_give_a_name_and_email_from_the_pre_chat_form() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let domain = app
        .post(
            "/v1/domains",
            &admin,
            json!({"name": "merchant.example", "email": "shop@example.com"}),
        )
        .await
        .expect(201);
    let key = domain["domain"]["widget_key"]
        .as_str()
        .expect("widget_key")
        .to_owned();
    let path = format!("/v1/widget/{key}/visitors");
    let v = app
        .call(
            Method::POST,
            &path,
            None,
            Some(json!({"name": " Layla ", "email": "layla@example.com"})),
        )
        .await
        .expect(200);
    let customer = app
        .get(&format!("/v1/customers/{}", v["customer_id"]), &admin)
        .await
        .expect(200);
    assert_eq!(
        (customer["name"].clone(), customer["email"].clone()),
        (json!("Layla"), json!("layla@example.com"))
    );
    let blank = app
        .call(Method::POST, &path, None, Some(json!({"name": ""})))
        .await
        .expect(200);
    let customer = app
        .get(&format!("/v1/customers/{}", blank["customer_id"]), &admin)
        .await
        .expect(200);
    assert_eq!(customer["name"], "Visitor");
    let r = app
        .call(
            Method::POST,
            &path,
            None,
            Some(json!({"email": "not mail"})),
        )
        .await;
    assert_eq!(r.status, 422);
}
