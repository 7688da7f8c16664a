//! End to end in a real browser (issue 31): the widget on a page of another origin and the
//! operator's side.

use crate::browser::{Browser, host_page};
use crate::helpers::{eventually, spawn_app, str_of};

#[tokio::test]
async fn a_visitor_on_another_origin_writes_through_the_widget_and_the_desk_gets_it() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let domain = app
        .get(&format!("/v1/domains/{}", desk.domain_id), &admin)
        .await
        .expect(200);
    let key = str_of(&domain["widget_key"]);
    let page = host_page(format!(
        "<!doctype html><html><head><title>A shop</title></head><body><h1>A shop</h1>\
         <script src=\"{}/widget.js\" data-souq-key=\"{key}\"></script></body></html>",
        app.base
    ))
    .await;
    browser.client.goto(&page).await.expect("the shop's page");
    browser.watch_errors().await;
    browser
        .until(
            "the widget's button",
            "return document.querySelector('.souq-open') !== null;",
        )
        .await;
    browser
        .js("document.querySelector('.souq-open').click();", vec![])
        .await;
    // The widget takes a message once its socket is open (the input then empties).
    browser
        .until(
            "the message sent",
            "if (!window.__sent) {\
               const input = document.querySelector('.souq-input');\
               input.value = 'Is the blue one in stock?';\
               document.querySelector('.souq-form').requestSubmit();\
               window.__sent = input.value === '';\
             }\
             return window.__sent;",
        )
        .await;
    let chat = eventually("the visitor's message at the desk", || async {
        let page = app.get("/v1/chats", &desk.operator).await.expect(200);
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["last_message"]["text"] == "Is the blue one in stock?")
            .cloned()
    })
    .await;
    let id = chat["id"].as_i64().expect("id");
    app.send(&desk.operator, id, "Yes, two left.", None)
        .await
        .expect(201);
    browser
        .until(
            "the answer in the widget",
            "return document.body.innerText.includes('Yes, two left.');",
        )
        .await;
    assert_eq!(browser.errors().await, Vec::<String>::new());
}
