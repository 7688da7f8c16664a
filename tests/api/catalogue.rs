//! The marketplace around the chats: bazaars, malls, stores (inboxes) and products;
//! comments and reactions, one per customer (exact counts under concurrent adds), and
//! the notifications they send to a store's operators and a subject's followers; through
//! the native API and hojre's face.

use serde_json::{Value, json};

use crate::helpers::{Desk, TestApp, spawn_app, str_of};

/// A bazaar with a mall holding the desk's store, and a product in that store.
async fn market(app: &TestApp, admin: &str, desk: &Desk) -> (i64, i64, i64) {
    let bazaar = app
        .post(
            "/v1/catalogue",
            admin,
            json!({"kind": "bazaar", "name": "Grand Bazaar"}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    let mall = app
        .post(
            "/v1/catalogue",
            admin,
            json!({"kind": "mall", "name": "North Mall", "parent_id": bazaar}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    app.call(
        reqwest::Method::PUT,
        &format!("/v1/catalogue/store/{}/mall", desk.inbox_id),
        Some(admin),
        Some(json!({"mall_id": mall})),
    )
    .await
    .expect(204);
    let product = app
        .post(
            "/v1/catalogue",
            admin,
            json!({"kind": "product", "name": "Blue Shoes", "parent_id": desk.inbox_id}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    (bazaar, mall, product)
}

/// A desk whose inbox is a store page (the desk's own inbox is the whole domain's).
async fn store_desk(app: &TestApp, admin: &str) -> Desk {
    let mut desk = app.desk(admin).await;
    let store = app
        .post(
            "/v1/inboxes",
            admin,
            json!({"domain_id": desk.domain_id, "unique_id": "store-7", "name": "Shoe Store"}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .expect("id");
    app.post(
        "/v1/assignments",
        admin,
        json!({"operator_id": desk.operator_id, "inbox_id": store}),
    )
    .await
    .expect(201);
    desk.inbox_id = store;
    desk
}

/// A customer known by their phone (as hojre signs them in), with a session: (id, token).
async fn phone_customer(app: &TestApp, admin: &str, phone: &str, name: &str) -> (i64, String) {
    let c = app
        .post(
            "/v1/customers",
            admin,
            json!({"phone": phone, "name": name}),
        )
        .await;
    let id = c.body["id"].as_i64().expect("id");
    let token = str_of(
        &app.post(&format!("/v1/customers/{id}/sessions"), admin, json!({}))
            .await
            .expect(201)["token"],
    );
    (id, token)
}

async fn react(app: &TestApp, token: &str, path: &str, method: reqwest::Method) -> Value {
    app.call(method, path, Some(token), None).await.expect(200)
}

#[tokio::test]
async fn reactions_are_one_per_customer_and_counts_stay_exact_under_concurrent_adds() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = store_desk(&app, &admin).await;
    let subject_ids = market(&app, &admin, &desk).await;
    let product = subject_ids.2;
    let mut customers = Vec::new();
    for i in 0..8 {
        customers.push(app.customer(&admin, &format!("fan-{i}")).await.1);
    }
    let like = format!("/v1/catalogue/product/{product}/reactions/like");
    // Every customer likes it twice, all at once.
    let adds = customers.iter().flat_map(|t| [t, t]).map(|t| {
        let (app, like) = (&app, &like);
        async move { react(app, t, like, reqwest::Method::PUT).await }
    });
    futures_util::future::join_all(adds).await;
    let subject = app
        .get(&format!("/v1/catalogue/product/{product}"), &customers[0])
        .await
        .expect(200);
    assert_eq!(subject["name"], "Blue Shoes");
    assert_eq!(subject["counts"]["likes"], 8);
    assert_eq!(subject["mine"], json!(["like"]));
    // A dislike takes the place of the same customer's like.
    let s = react(
        &app,
        &customers[0],
        &format!("/v1/catalogue/product/{product}/reactions/dislike"),
        reqwest::Method::PUT,
    )
    .await;
    assert_eq!(
        (
            s["counts"]["likes"].clone(),
            s["counts"]["dislikes"].clone()
        ),
        (json!(7), json!(1))
    );
    assert_eq!(s["mine"], json!(["dislike"]));
    let s = react(&app, &customers[1], &like, reqwest::Method::DELETE).await;
    assert_eq!(s["counts"]["likes"], 6);
    let listed = app.get(&like, &admin).await.expect(200);
    assert_eq!(listed["total"], 6);
    // The catalogue's tree: the bazaar's mall, the mall's store, the store's product.
    let (bazaar, mall, _) = (subject_ids.0, subject_ids.1, product);
    let malls = app
        .get(
            &format!("/v1/catalogue/bazaar/{bazaar}/children"),
            &customers[0],
        )
        .await
        .expect(200);
    assert_eq!(malls["items"][0]["id"], mall);
    let stores = app
        .get(
            &format!("/v1/catalogue/mall/{mall}/children"),
            &customers[0],
        )
        .await
        .expect(200);
    assert_eq!(stores["items"][0]["kind"], "store");
    assert_eq!(stores["items"][0]["id"], desk.inbox_id);
    let products = app
        .get(
            &format!("/v1/catalogue/store/{}/children", desk.inbox_id),
            &customers[0],
        )
        .await
        .expect(200);
    assert_eq!(products["total"], 1);
    assert_eq!(products["items"][0]["counts"]["likes"], 6);
    let mine = app
        .get("/v1/me/reactions?kind=product&reaction=like", &customers[2])
        .await
        .expect(200);
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["items"][0]["subject_name"], "Blue Shoes");
}

#[tokio::test]
async fn a_comment_on_a_product_reaches_the_stores_operator_live_and_its_followers_feeds() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = store_desk(&app, &admin).await;
    let (_, _, product) = market(&app, &admin, &desk).await;
    let (_, follower) = app.customer(&admin, "follower").await;
    react(
        &app,
        &follower,
        &format!("/v1/catalogue/product/{product}/reactions/follow"),
        reqwest::Method::PUT,
    )
    .await;
    let mut operator = app.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    let comment = app
        .post(
            &format!("/v1/catalogue/product/{product}/comments"),
            &desk.customer,
            json!({"text": "do they come in size 44?"}),
        )
        .await
        .expect(201);
    assert_eq!(comment["subject_name"], "Blue Shoes");
    let frame = operator.next_of("notification").await;
    assert_eq!(frame["event"], "created");
    assert_eq!(frame["notification"]["kind"], "comment");
    assert_eq!(
        frame["notification"]["about"]["comment"]["text"],
        "do they come in size 44?"
    );
    let feed = app.get("/v1/notifications", &follower).await.expect(200);
    assert_eq!(feed["items"][0]["kind"], "comment");
    assert_eq!(feed["items"][0]["about"]["subject"]["id"], product);
    // The writer is not told of their own comment.
    let own = app
        .get("/v1/notifications", &desk.customer)
        .await
        .expect(200);
    assert_eq!(own["items"], json!([]));
    // A like tells the store's operator too.
    react(
        &app,
        &follower,
        &format!("/v1/catalogue/store/{}/reactions/like", desk.inbox_id),
        reqwest::Method::PUT,
    )
    .await;
    let frame = operator.next_of("notification").await;
    assert_eq!(frame["notification"]["kind"], "like");
    // Comments list newest first; the writer may delete theirs, nobody else.
    let listed = app
        .get(
            &format!("/v1/catalogue/product/{product}/comments"),
            &follower,
        )
        .await
        .expect(200);
    assert_eq!(listed["total"], 1);
    let id = comment["id"].as_i64().expect("id");
    let not_theirs = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/comments/{id}"),
            Some(&follower),
            None,
        )
        .await;
    assert_eq!(not_theirs.status, 404);
    app.call(
        reqwest::Method::DELETE,
        &format!("/v1/comments/{id}"),
        Some(&desk.customer),
        None,
    )
    .await
    .expect(204);
    let s = app
        .get(&format!("/v1/catalogue/product/{product}"), &follower)
        .await
        .expect(200);
    assert_eq!(s["counts"]["comments"], 0);
    assert_eq!(s["counts"]["followers"], 1);
    // Erasing a customer's data takes their comments and reactions with it.
    app.post(
        &format!("/v1/catalogue/product/{product}/comments"),
        &desk.customer,
        json!({"text": "again"}),
    )
    .await
    .expect(201);
    react(
        &app,
        &desk.customer,
        &format!("/v1/catalogue/product/{product}/reactions/favorite"),
        reqwest::Method::PUT,
    )
    .await;
    app.call(
        reqwest::Method::DELETE,
        &format!("/v1/customers/{}/data", desk.customer_id),
        Some(&admin),
        None,
    )
    .await
    .expect(200);
    let s = app
        .get(&format!("/v1/catalogue/product/{product}"), &follower)
        .await
        .expect(200);
    assert_eq!(
        (
            s["counts"]["comments"].clone(),
            s["counts"]["favorites"].clone()
        ),
        (json!(0), json!(0))
    );
    let feed = app.get("/v1/notifications", &follower).await.expect(200);
    assert_eq!(
        feed["items"],
        json!([]),
        "nothing quotes the erased customer"
    );
}

#[tokio::test]
async fn bad_subjects_reactions_and_comments_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = store_desk(&app, &admin).await;
    let (bazaar, _, product) = market(&app, &admin, &desk).await;
    for bad in [
        json!({"kind": "mall", "name": "No bazaar"}),
        json!({"kind": "bazaar", "name": "x", "parent_id": bazaar}),
        json!({"kind": "store", "name": "x"}),
        json!({"kind": "bazaar", "name": "  "}),
        json!({"kind": "shop", "name": "x"}),
    ] {
        let r = app.post("/v1/catalogue", &admin, bad.clone()).await;
        assert!(r.status == 422 || r.status == 400, "{bad}: {}", r.status);
    }
    let r = app
        .post(
            "/v1/catalogue",
            &admin,
            json!({"kind": "mall", "name": "x", "parent_id": 999999}),
        )
        .await;
    assert_eq!(r.status, 404);
    // Customers only react and comment; a subject of another organisation is unknown.
    let like = format!("/v1/catalogue/product/{product}/reactions/like");
    let r = app
        .call(reqwest::Method::PUT, &like, Some(&desk.operator), None)
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .call(
            reqwest::Method::PUT,
            "/v1/catalogue/product/999999/reactions/like",
            Some(&desk.customer),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/catalogue/product/{product}/reactions/love"),
            Some(&desk.customer),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let other = app.admin_of("globex").await;
    let (_, stranger) = app.customer(&other, "stranger").await;
    let r = app
        .call(reqwest::Method::PUT, &like, Some(&stranger), None)
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .post(
            &format!("/v1/catalogue/product/{product}/comments"),
            &desk.customer,
            json!({"text": ""}),
        )
        .await;
    assert_eq!(r.status, 422);
    let s = app
        .get(&format!("/v1/catalogue/product/{product}"), &admin)
        .await
        .expect(200);
    assert_eq!(
        s["counts"],
        json!({"likes": 0, "dislikes": 0, "favorites": 0, "views": 0, "followers": 0, "comments": 0})
    );
}

/// hojre's face: the same reactions and comments, in its style.
#[tokio::test]
async fn hojre_adds_lists_and_deletes_reactions_and_comments_in_its_style() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = store_desk(&app, &admin).await;
    let (bazaar, _, product) = market(&app, &admin, &desk).await;
    let phone = "09121122777";
    let (_, token) = phone_customer(&app, &admin, phone, "Ana").await;
    let auth = format!("username={phone}&token={token}");
    let post = |path: &str, form: String| {
        let (app, path) = (&app, path.to_owned());
        async move {
            let r = app
                .client
                .post(format!("{}/web/{path}", app.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.expect("JSON")
        }
    };
    let get = |query: String| {
        let app = &app;
        async move {
            let r = app
                .client
                .get(format!("{}/web/{query}", app.base))
                .send()
                .await
                .expect("request");
            assert_eq!(r.status(), 200, "{query}");
            r.json::<Value>().await.expect("JSON")
        }
    };
    let added = post("add-like", format!("{auth}&type=product&id={product}")).await;
    assert_eq!(added["status"], "success", "{added}");
    assert_eq!(added["data"]["likes"], 1);
    assert_eq!(added["data"]["mine"], json!(["like"]));
    post(
        "add-notification",
        format!("{auth}&type=bazzar&id={bazaar}"),
    )
    .await;
    post("add-view", format!("{auth}&type=product&id={product}")).await;
    post("add-view", format!("{auth}&type=product&id={product}")).await;
    let likes = get(format!("product-user-like?{auth}&id={product}")).await;
    assert_eq!(likes["_meta"]["totalCount"], 1);
    assert_eq!(likes["items"][0]["userName"], "Ana");
    assert_eq!(likes["items"][0]["target"], "Blue Shoes");
    let views = get(format!("product-user-view?{auth}&id={product}")).await;
    assert_eq!(views["_meta"]["totalCount"], 1, "one view per person");
    let following = get(format!("bazzar-user-notification?{auth}")).await;
    assert_eq!(following["items"][0]["targetId"], bazaar);

    let said = post(
        "add-comment",
        format!("{auth}&type=store&id={}&text=great+service", desk.inbox_id),
    )
    .await;
    assert_eq!(said["data"]["text"], "great service");
    let comments = get(format!("store-user-comments?{auth}&id={}", desk.inbox_id)).await;
    assert_eq!(comments["items"][0]["text"], "great service");
    assert_eq!(comments["_meta"]["totalCount"], 1);
    let mine = get(format!("store-user-comments?{auth}")).await;
    assert_eq!(mine["_meta"]["totalCount"], 1);
    let comment_id = said["data"]["id"].as_i64().expect("id");
    post("delete-comment", format!("{auth}&id={comment_id}")).await;
    let comments = get(format!("store-user-comments?{auth}&id={}", desk.inbox_id)).await;
    assert_eq!(comments["items"], json!([]));

    let deleted = post("delete-like", format!("{auth}&type=product&id={product}")).await;
    assert_eq!(deleted["data"]["likes"], 0);
    let profile = post("edit-profile", format!("{auth}&name=Ana+B")).await;
    assert_eq!(profile["data"]["name"], "Ana B");

    // Bad input: the documented error envelope, nothing changed.
    let bad = post("add-like", format!("{auth}&type=shop&id={product}")).await;
    assert_eq!(bad["status"], "error");
    let bad = post("add-like", format!("{auth}&type=product&id=999999")).await;
    assert_eq!(bad["status"], "error");
    let not_login = get(format!(
        "product-user-like?username={phone}&token=nope&id={product}"
    ))
    .await;
    assert_eq!(not_login["message"], "not login");
    let r = app
        .client
        .get(format!("{}/web/user-user-like?{auth}", app.base))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404, "no likes on users");
}

#[tokio::test]
async fn a_seller_makes_an_offer_the_customer_is_told_live_and_reads_it_here_and_in_hojre() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let desk = store_desk(&app, &admin).await;
    let (_, _, product) = market(&app, &admin, &desk).await;
    let mut customer = app.ws(&desk.customer, "").await;
    // Told live only once the socket is in place.
    customer.next_of("resumed").await;
    let offer = app
        .post(
            &format!("/v1/inboxes/{}/offers", desk.inbox_id),
            &desk.operator,
            json!({"customer_id": desk.customer_id, "text": "10% off today", "product_id": product}),
        )
        .await
        .expect(201);
    assert_eq!(offer["store"], "Shoe Store");
    assert_eq!(offer["product"], "Blue Shoes");
    let frame = customer.next_of("notification").await;
    assert_eq!(frame["notification"]["kind"], "offer");
    assert_eq!(
        frame["notification"]["about"]["offer"]["text"],
        "10% off today"
    );
    let listed = app.get("/v1/offers", &desk.customer).await.expect(200);
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["read_at"], Value::Null);
    let id = offer["id"].as_i64().expect("id");
    let read = app
        .post(&format!("/v1/offers/{id}/read"), &desk.customer, json!({}))
        .await
        .expect(200);
    assert!(read["read_at"].is_i64());
    // Only the store's operator offers, only to a customer of the organisation, and only
    // the customer reads it.
    let r = app
        .post(
            &format!("/v1/inboxes/{}/offers", desk.inbox_id),
            &desk.customer,
            json!({"customer_id": desk.customer_id, "text": "x"}),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .post(
            &format!("/v1/inboxes/{}/offers", desk.inbox_id),
            &desk.operator,
            json!({"customer_id": 999999, "text": "x"}),
        )
        .await;
    assert_eq!(r.status, 404);
    let (_, other) = app.customer(&admin, "someone-else").await;
    let r = app
        .post(&format!("/v1/offers/{id}/read"), &other, json!({}))
        .await;
    assert_eq!(r.status, 404);

    // hojre's face: the customer, given a phone, sees the same offers.
    let c = app
        .get(&format!("/v1/customers/{}", desk.customer_id), &admin)
        .await
        .expect(200);
    let phone = "09121122000";
    app.post(
        "/v1/customers",
        &admin,
        json!({"external_id": c["external_id"], "phone": phone}),
    )
    .await
    .expect(200);
    let auth = format!("username={phone}&token={}", desk.customer);
    let view = app
        .client
        .get(format!("{}/web/view-offers?{auth}", app.base))
        .send()
        .await
        .expect("request")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(view["_meta"]["totalCount"], 1, "{view}");
    assert_eq!(view["items"][0]["text"], "10% off today");
    assert_eq!(view["items"][0]["read"], true);
    let read = app
        .client
        .post(format!("{}/web/read-offer", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("{auth}&id={id}"))
        .send()
        .await
        .expect("request")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(read["status"], "success", "{read}");
}

#[tokio::test]
async fn a_customer_sets_a_password_through_hojre_and_signs_in_with_it() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let phone = "09120000001";
    let (id, token) = phone_customer(&app, &admin, phone, "Sara").await;
    let change = |form: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/web/change-password", app.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .expect("request")
                .json::<Value>()
                .await
                .expect("JSON")
        }
    };
    let auth = format!("username={phone}&token={token}");
    let first = change(format!("{auth}&newPassword=first-secret")).await;
    assert_eq!(first["status"], "success", "{first}");
    let sign_in = |password: &'static str| {
        let app = &app;
        async move {
            app.call(
                reqwest::Method::POST,
                "/v1/auth/customer",
                None,
                Some(json!({"organisation": "acme", "phone": phone, "password": password})),
            )
            .await
        }
    };
    let session = sign_in("first-secret").await.expect(201);
    let me = app
        .get("/v1/me", &str_of(&session["token"]))
        .await
        .expect(200);
    assert_eq!(me["customer"]["id"], id, "{me}");
    // Once set, the current password is needed to change it.
    let refused = change(format!("{auth}&newPassword=second-secret")).await;
    assert_eq!(refused["status"], "error");
    let too_short = change(format!("{auth}&oldPassword=first-secret&newPassword=short")).await;
    assert_eq!(too_short["status"], "error");
    let second = change(format!(
        "{auth}&oldPassword=first-secret&newPassword=second-secret"
    ))
    .await;
    assert_eq!(second["status"], "success", "{second}");
    assert_eq!(sign_in("first-secret").await.status, 401);
    sign_in("second-secret").await.expect(201);
    // A customer with no password, or of another organisation, cannot sign in so.
    let r = app
        .call(
            reqwest::Method::POST,
            "/v1/auth/customer",
            None,
            Some(json!({"organisation": "globex", "phone": phone, "password": "second-secret"})),
        )
        .await;
    assert_eq!(r.status, 401);
}
