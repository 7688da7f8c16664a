use reqwest::Method;
use serde_json::json;

use crate::helpers::{PASSWORD, spawn_app, str_of};

#[tokio::test]
async fn an_organisation_signs_in_per_addon_and_gets_a_token_pair() {
    let app = spawn_app().await;
    let tokens = app.sign_in("acme", "seller_buyer").await;
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["organisation_domain"], "acme");
    assert_eq!(tokens["addon"], "seller_buyer");
    let access = str_of(&tokens["access_token"]);
    let me = app.get("/v1/me", &access).await.expect(200);
    assert_eq!(me["kind"], "admin");
}

#[tokio::test]
async fn wrong_password_organisation_or_addon_is_refused_alike() {
    let app = spawn_app().await;
    let cases = [
        ("owner@acme.test", "wrong password", "acme", "live_chat"),
        ("owner@acme.test", PASSWORD, "globex", "live_chat"),
        ("owner@acme.test", PASSWORD, "acme", "no_such_addon"),
        ("nobody@acme.test", PASSWORD, "acme", "live_chat"),
    ];
    for (email, password, org, addon) in cases {
        let r = app
            .call(
                Method::POST,
                "/v1/auth/token",
                None,
                Some(json!({"email": email, "password": password, "organisation": org, "addon": addon})),
            )
            .await;
        assert_eq!(
            r.status, 401,
            "{email}/{org}/{addon} was not refused: {}",
            r.body
        );
        assert_eq!(r.code(), "unauthorized");
    }
}

#[tokio::test]
async fn refreshing_rotates_both_tokens_and_retires_the_old_pair() {
    let app = spawn_app().await;
    let first = app.sign_in("acme", "live_chat").await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": token})),
            )
            .await
        }
    };
    let second = refresh(str_of(&first["refresh_token"])).await.expect(200);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    // The old access token and the used refresh token no longer work; the new ones do.
    let old = app.get("/v1/me", &str_of(&first["access_token"])).await;
    assert_eq!(old.status, 401);
    assert_eq!(refresh(str_of(&first["refresh_token"])).await.status, 401);
    app.get("/v1/me", &str_of(&second["access_token"]))
        .await
        .expect(200);
    refresh(str_of(&second["refresh_token"])).await.expect(200);
}

#[tokio::test]
async fn an_expired_access_token_is_refused() {
    let app = spawn_app().await;
    let access = app.admin().await;
    app.get("/v1/me", &access).await.expect(200);
    // An hour (the default lifetime) and a second later.
    app.clock.advance(std::time::Duration::from_secs(3601));
    let r = app.get("/v1/me", &access).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["message"], "token has expired");
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_get_401() {
    let app = spawn_app().await;
    let none = app.call(Method::GET, "/v1/chats", None, None).await;
    assert_eq!(none.status, 401);
    for token in [
        "",
        "garbage",
        "sqs_0000",
        "sqa_ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ] {
        let r = app.call(Method::GET, "/v1/chats", Some(token), None).await;
        assert_eq!(r.status, 401, "token {token:?}: {}", r.body);
        assert_eq!(r.code(), "unauthorized");
    }
}

#[tokio::test]
async fn operator_and_customer_sessions_say_who_they_are() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    let me = app.get("/v1/me", &desk.operator).await.expect(200);
    assert_eq!(me["kind"], "operator");
    assert_eq!(me["operator"]["id"], desk.operator_id);
    let me = app.get("/v1/me", &desk.customer).await.expect(200);
    assert_eq!(me["kind"], "customer");
    assert_eq!(me["customer"]["id"], desk.customer_id);
}

#[tokio::test]
async fn session_tokens_cannot_do_admin_work() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = app.desk(&admin).await;
    for token in [&desk.operator, &desk.customer] {
        let r = app
            .post("/v1/operators", token, json!({"email": "x@acme.test"}))
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.code(), "forbidden");
    }
}
