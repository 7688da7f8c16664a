//! End to end in a real browser (issue 31): the widget on a page of another origin, the
//! operator console, a dropped socket, two operators, and an accessibility audit.

use serde_json::{Value, json};

use crate::browser::{Browser, RECORD_SOCKETS, host_page};
use crate::helpers::{TestApp, eventually, spawn_app, str_of};

/// A shop's page on its own origin with the widget of `key` embedded. It records every
/// WebSocket it opens (`window.__sockets`), so that a test can cut them as a network drop
/// would.
async fn shop_page(app: &TestApp, key: &str) -> String {
    host_page(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>A shop</title>\
         <style>button {{ background: red !important; }} div {{ font-size: 40px; }}</style>\
         <script>{RECORD_SOCKETS}</script>\
         </head><body><main><h1>A shop</h1><p>Blue shoes, 40 EUR.</p></main>\
         <script src=\"{}/widget.js\" data-souq-key=\"{key}\"></script></body></html>",
        app.base
    ))
    .await
}

/// Runs `body` against the widget's shadow root (`w`).
fn in_widget(body: &str) -> String {
    format!(
        "const host = document.getElementById('souq-widget'); \
         const w = host && host.shadowRoot; if (!w) return null; {body}"
    )
}

/// The texts of the widget's messages, in order.
async fn widget_texts(b: &Browser) -> Vec<String> {
    let v = b
        .js(
            &in_widget(
                "return [...w.querySelectorAll('[data-test=widget-message]')]\
                 .map(m => m.innerText);",
            ),
            vec![],
        )
        .await;
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| t.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn widget_key(app: &TestApp, admin: &str, domain_id: i64) -> String {
    let domain = app
        .get(&format!("/v1/domains/{domain_id}"), admin)
        .await
        .expect(200);
    str_of(&domain["widget_key"])
}

/// The console signed in by its link, live.
async fn console(app: &TestApp, token: &str) -> Browser {
    let b = Browser::start().await.expect("a browser");
    b.record_sockets().await;
    b.client
        .goto(&format!("{}/console#token={token}", app.base))
        .await
        .expect("the console");
    b.watch_errors().await;
    b.until(
        "the console live",
        "const c = document.querySelector('[data-test=connection]'); \
         return c && c.getAttribute('data-state') === 'live';",
    )
    .await;
    b
}

/// Runs axe-core (from npm: AXE_CORE names axe.min.js, else the usual node_modules paths)
/// in the page and gives its serious and critical violations. `None` when axe-core is
/// not there outside CI.
async fn axe(b: &Browser) -> Option<Vec<Value>> {
    let candidates = [
        std::env::var("AXE_CORE").unwrap_or_default(),
        "node_modules/axe-core/axe.min.js".to_owned(),
        "/tmp/souq-axe/node_modules/axe-core/axe.min.js".to_owned(),
    ];
    let Some(source) = candidates
        .iter()
        .filter(|p| !p.is_empty())
        .find_map(|p| std::fs::read_to_string(p).ok())
    else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install axe-core (AXE_CORE) for the accessibility audit"
        );
        return None;
    };
    b.js(&source, vec![]).await;
    let result = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             axe.run(document, {resultTypes: ['violations']}) \
               .then(r => done(r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical') \
                 .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)})))) \
               .catch(e => done([{id: 'axe failed', error: String(e)}]));",
            vec![],
        )
        .await
        .expect("axe ran");
    Some(result.as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_visitor_and_an_operator_talk_through_the_widget_and_the_console_across_a_drop() {
    let Some(visitor) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    app.patch(
        &format!("/v1/operators/{}", desk.operator_id),
        &admin,
        json!({"name": "Mina"}),
    )
    .await
    .expect(200);
    // The shop asks new visitors who they are.
    app.patch(
        &format!("/v1/domains/{}", desk.domain_id),
        &admin,
        json!({"prechat": true}),
    )
    .await
    .expect(200);
    let key = widget_key(&app, &admin, desk.domain_id).await;
    let page = shop_page(&app, &key).await;
    visitor.client.goto(&page).await.expect("the shop's page");
    visitor.watch_errors().await;
    visitor
        .until(
            "the widget's button",
            &in_widget(
                "return w.querySelector('[data-test=widget-open]') !== null \
                 && host.getAttribute('data-prechat') === 'true';",
            ),
        )
        .await;
    // The host page's loud styles do not reach into the widget.
    let color = visitor
        .js(
            &in_widget(
                "return getComputedStyle(w.querySelector('[data-test=widget-open]')).backgroundColor;",
            ),
            vec![],
        )
        .await;
    assert_ne!(
        color,
        json!("rgb(255, 0, 0)"),
        "the page's styles leaked in"
    );

    // The visitor opens the widget, writes, gives a name on the pre-chat form, and sends.
    visitor
        .js(
            &in_widget(
                "w.querySelector('[data-test=widget-open]').click(); \
                 w.querySelector('[data-test=widget-input]').value = 'Are the blue shoes in stock?'; \
                 w.querySelector('[data-test=widget-composer]').requestSubmit(); return true;",
            ),
            vec![],
        )
        .await;
    visitor
        .until(
            "the pre-chat form",
            &in_widget("return !w.querySelector('[data-test=widget-prechat]').hidden;"),
        )
        .await;
    visitor
        .js(
            &in_widget(
                "w.querySelector('#souq-name').value = 'Sara'; \
                 w.querySelector('[data-test=widget-start]').click(); return true;",
            ),
            vec![],
        )
        .await;
    visitor
        .until(
            "the message sent",
            &in_widget(
                "if (!w.querySelector('[data-test=widget-message]')) { \
                   const f = w.querySelector('[data-test=widget-composer]'); \
                   const i = w.querySelector('[data-test=widget-input]'); \
                   if (i.value) f.requestSubmit(); } \
                 return w.querySelectorAll('[data-test=widget-message]').length === 1;",
            ),
        )
        .await;
    // And a photo.
    visitor
        .js(
            &in_widget(
                "const c = document.createElement('canvas'); c.width = 160; c.height = 100; \
                 const g = c.getContext('2d'); g.fillStyle = '#1e4fa8'; g.fillRect(0, 0, 160, 100); \
                 g.fillStyle = '#fff'; g.fillRect(30, 55, 100, 22); \
                 return new Promise(done => c.toBlob(blob => { \
                   const dt = new DataTransfer(); \
                   dt.items.add(new File([blob], 'shoes.png', {type: 'image/png'})); \
                   const input = w.querySelector('[data-test=widget-file-input]'); \
                   input.files = dt.files; input.dispatchEvent(new Event('change')); done(true); \
                 }, 'image/png'));",
            ),
            vec![],
        )
        .await;

    // The operator's console shows the chat live, with both messages.
    let operator = console(&app, &desk.operator).await;
    let chat_id = operator
        .until(
            "the visitor's chat in the list",
            "const items = [...document.querySelectorAll('[data-test=chat-item]')]; \
             const it = items.find(i => i.innerText.includes('Sara')); \
             return it ? Number(it.getAttribute('data-chat-id')) : null;",
        )
        .await
        .as_i64()
        .expect("a chat id");
    operator
        .js(
            &format!(
                "document.querySelector('[data-test=chat-item][data-chat-id=\"{chat_id}\"]').click(); return true;"
            ),
            vec![],
        )
        .await;
    operator
        .until(
            "the text and the photo in the console",
            "const v = document.querySelector('[data-test=chat-view]'); \
             return v && v.innerText.includes('Are the blue shoes in stock?') \
               && !!v.querySelector('img[alt=\"shoes.png\"], img[src*=\"/v1/files/\"]');",
        )
        .await;
    // The operator answers; the visitor sees it, and their message goes to read.
    operator
        .js(
            "document.querySelector('[data-test=composer-input]').value = 'Yes, in every size.'; \
             document.querySelector('[data-test=composer]').requestSubmit(); return true;",
            vec![],
        )
        .await;
    visitor
        .until(
            "the answer in the widget",
            &in_widget("return w.textContent.includes('Yes, in every size.');"),
        )
        .await;
    let size = visitor
        .js(
            &in_widget(
                "return getComputedStyle(w.querySelector('[data-test=widget-message]')).fontSize;",
            ),
            vec![],
        )
        .await;
    assert_ne!(size, json!("40px"), "the page's font size leaked in");
    visitor
        .until(
            "the read tick",
            &in_widget(
                "const t = w.querySelector('[data-test=widget-message] [data-test=widget-tick]'); \
                 return t && t.getAttribute('data-tick') === 'read';",
            ),
        )
        .await;
    let shots = std::env::var("SOUQ_SCREENSHOTS").ok();
    if let Some(dir) = &shots {
        visitor.screenshot(&format!("{dir}/widget.png")).await;
        operator.screenshot(&format!("{dir}/console.png")).await;
    }

    // The network drops on both sides: the widget's socket and the console's are cut,
    // and both sides write meanwhile (the visitor from another tab of theirs).
    assert_eq!(
        visitor.cut_sockets().await,
        1,
        "the widget's one socket cut"
    );
    assert_eq!(
        operator.cut_sockets().await,
        1,
        "the console's one socket cut"
    );
    for text in [
        "One moment, checking the size chart.",
        "Size 38 and 40 are left.",
    ] {
        app.send(&desk.operator, chat_id, text, None)
            .await
            .expect(201);
    }
    let customer = str_of(
        &visitor
            .js(
                "return JSON.parse(localStorage.getItem('souq-visitor-' + arguments[0])).token;",
                vec![json!(key)],
            )
            .await,
    );
    app.send(&customer, chat_id, "Then 40, please.", None)
        .await
        .expect(201);
    visitor
        .until(
            "everything after the drop in the widget",
            &in_widget(
                "return w.textContent.includes('Size 38 and 40 are left.') \
                 && w.textContent.includes('Then 40, please.');",
            ),
        )
        .await;
    let texts = widget_texts(&visitor).await;
    for text in [
        "Are the blue shoes in stock?",
        "Yes, in every size.",
        "One moment, checking the size chart.",
        "Size 38 and 40 are left.",
        "Then 40, please.",
    ] {
        let n = texts.iter().filter(|t| t.contains(text)).count();
        assert_eq!(n, 1, "{text:?} shown {n} times: {texts:?}");
    }
    // The console got them once too.
    operator
        .until(
            "the console caught up",
            "return document.querySelector('[data-test=chat-view]').innerText.includes('Then 40, please.');",
        )
        .await;
    let seqs = operator
        .js(
            "return [...document.querySelectorAll('[data-test=chat-view] [data-test=message]')] \
             .map(m => m.getAttribute('data-seq'));",
            vec![],
        )
        .await;
    let seqs: Vec<&str> = seqs
        .as_array()
        .expect("seqs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "a message shown twice in the console");
    assert_eq!(seqs.len(), 6, "{seqs:?}");
    assert_eq!(visitor.errors().await, Vec::<String>::new());
    assert_eq!(operator.errors().await, Vec::<String>::new());
    // The open widget (in its shadow root) passes the audit on the shop's page.
    if let Some(violations) = axe(&visitor).await {
        assert_eq!(violations, Vec::<Value>::new(), "widget");
    }
}

#[tokio::test]
async fn two_operators_see_one_chat_taken_by_one_and_the_pages_pass_an_accessibility_audit() {
    let Some(first) = Browser::start().await else {
        return;
    };
    drop(first);
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let second_id = app.operator(&admin, "second@acme.test").await;
    app.post(
        "/v1/assignments",
        &admin,
        json!({"operator_id": second_id, "inbox_id": desk.inbox_id}),
    )
    .await
    .expect(201);
    let second_token = app.operator_token(&admin, second_id).await;
    app.send(&desk.customer, desk.chat_id, "Hello?", None)
        .await
        .expect(201);
    let a = console(&app, &desk.operator).await;
    let b = console(&app, &second_token).await;
    let open = format!(
        "const it = document.querySelector('[data-test=chat-item][data-chat-id=\"{}\"]'); \
         if (!it) return false; it.click(); return true;",
        desk.chat_id
    );
    for console in [&a, &b] {
        console.until("the chat in the list", &open).await;
        console
            .until(
                "the take button",
                "const t = document.querySelector('[data-test=take]'); return t && !t.hidden;",
            )
            .await;
    }
    a.js(
        "document.querySelector('[data-test=take]').click(); return true;",
        vec![],
    )
    .await;
    // The other console hears it: the chat is no longer there to take.
    b.until(
        "the take button gone on the second console",
        "const t = document.querySelector('[data-test=take]'); return !t || t.hidden;",
    )
    .await;
    eventually("the chat taken by the first", || async {
        let chat = app
            .get(&format!("/v1/chats/{}", desk.chat_id), &admin)
            .await
            .expect(200);
        (chat["operator"]["id"].as_i64() == Some(desk.operator_id)).then_some(())
    })
    .await;
    let late = app
        .post(
            &format!("/v1/chats/{}/take", desk.chat_id),
            &second_token,
            json!({}),
        )
        .await;
    assert_eq!(late.status, 409);
    assert_eq!(a.errors().await, Vec::<String>::new());
    assert_eq!(b.errors().await, Vec::<String>::new());

    // On a phone's screen the console fits its width (sellers answer from phones).
    a.client
        .set_window_size(390, 844)
        .await
        .expect("a phone's size");
    let overflow = a
        .js(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await;
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "wider than the phone by {overflow}"
    );
    a.client.set_window_size(1280, 900).await.expect("back");
    // The console, the front page and the reference, audited.
    if let Some(violations) = axe(&a).await {
        assert_eq!(violations, Vec::<Value>::new(), "console");
    }
    for path in ["/", "/reference"] {
        a.client
            .goto(&format!("{}{path}", app.base))
            .await
            .expect("the page");
        if let Some(violations) = axe(&a).await {
            assert_eq!(violations, Vec::<Value>::new(), "{path}");
        }
    }
}
