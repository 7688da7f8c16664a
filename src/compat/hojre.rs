//! The hojre customer API (`/web/...`, seeds/000 and 001): a customer's chats with stores
//! and a chat's messages, authorised by `username` (the customer's phone) and `token`
//! (their session token) in the query, paged with `page` and `perPage` (or `per-page`),
//! in the `{items, _links, _meta}` envelope. Errors are `{"status": "error", "message",
//! "data": ""}` with HTTP 200, as the document shows them in a successful-looking reply.
//!
//! Beyond the documented two, in the same style: `GET /web/broadcasts` (what stores the
//! customer chatted with announced to all their customers, newest first, with `store` and
//! `storeId`), `GET /web/store-messages?storeId=` (the messages of the customer's newest
//! chat with a store) and `POST /web/submit-store-messages` (`storeId`, `text`: write to a
//! store); and the rest of the document's table of contents over `domain::catalogue`:
//! comments, likes, dislikes, favorites, views and notifications (follows) of bazaars,
//! malls, stores and products, offers, the profile and the password (docs/compat.md).
//! The coordinates `x`, `y` are accepted and not used.

use std::future::Future;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::domain::catalogue::{Comment, Offer, Reacted, Reaction, Subject, SubjectKind};
use crate::domain::{BroadcastTo, Error, NewMessage, Numbered, Principal, Said};
use crate::http::{ApiError, HttpResponse, Req, Surface};
use crate::http::{parse_id, parse_query};

/// The hojre customer API, as the router mounts it.
#[derive(Debug)]
pub(crate) struct Hojre {
    core: std::sync::Arc<crate::domain::Core>,
}

impl Hojre {
    pub(crate) fn new(core: std::sync::Arc<crate::domain::Core>) -> Hojre {
        Hojre { core }
    }
}

impl Surface for Hojre {
    fn handle<'a>(
        &'a self,
        req: Req,
    ) -> std::pin::Pin<Box<dyn Future<Output = HttpResponse> + Send + 'a>> {
        Box::pin(handle(self, req))
    }

    fn refuse(&self, e: ApiError) -> HttpResponse {
        error(&e.message)
    }
}

/// The largest page, and the size of a page when none is asked for.
const PER_PAGE: u64 = 300;

fn reply(body: Value) -> HttpResponse {
    let mut response = Response::new(crate::http::full(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

pub(crate) fn error(message: &str) -> HttpResponse {
    reply(json!({"status": "error", "message": message, "data": ""}))
}

/// Query parameters, and for a POST the form or JSON body's fields too.
fn params(req: &Req) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = req.query_pairs().cloned().collect();
    if req.method == Method::POST {
        if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&req.body) {
            for (k, v) in body {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                all.push((k, v));
            }
        } else if let Ok(text) = std::str::from_utf8(&req.body) {
            all.extend(parse_query(text));
        }
    }
    all
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Paging {
    page: u64,
    per_page: u64,
}

/// The page asked for, as the document's framework (Yii2) reads it: `perPage` (or
/// `per-page`) is kept within 1..=300, and a page or size that is not a number is the
/// default. A page past the end is answered with no items.
fn paging(params: &[(String, String)]) -> Paging {
    let number = |name: &str| get(params, name).and_then(|v| v.trim().parse::<i64>().ok());
    let page = number("page").unwrap_or(1).clamp(1, 1_000_000_000) as u64;
    let per_page = number("perPage")
        .or_else(|| number("per-page"))
        .map_or(PER_PAGE, |n| n.clamp(1, PER_PAGE as i64) as u64);
    Paging { page, per_page }
}

/// `{items, _links: {self: {href}}, _meta: {...}}` for page `p` of `total`.
fn listing(
    req: &Req,
    params: &[(String, String)],
    extra: &[&str],
    items: Vec<Value>,
    total: u64,
    p: &Paging,
) -> Value {
    let origin = origin(req);
    let mut query = String::new();
    for name in ["username", "token"].iter().chain(extra) {
        if let Some(v) = get(params, name) {
            query.push_str(&format!("{name}={}&", encode(v)));
        }
    }
    json!({
        "items": items,
        "_links": {"self": {"href": format!("{origin}{}?{query}page={}&per-page={}", req.path, p.page, p.per_page)}},
        "_meta": {
            "totalCount": total,
            "pageCount": total.div_ceil(p.per_page),
            "currentPage": p.page,
            "perPage": p.per_page,
        },
    })
}

/// Where sellers' ids start in `senderId`: customers and operators are numbered apart,
/// both from 1, and an app tells its own messages by `senderId` = its user id. A customer
/// is their own id; a seller (operator) is this plus theirs. A system message has none.
pub(crate) const SELLER_ID_BASE: i64 = 1_000_000_000_000;

fn sender_id(m: &crate::domain::Message) -> Option<i64> {
    match m.author.kind.as_str() {
        "operator" => m.author.id.map(|id| SELLER_ID_BASE + id),
        _ => m.author.id,
    }
}

/// The address of this server as the client reached it, for absolute links.
fn origin(req: &Req) -> String {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// A message as hojre's main-chats shows it. The document's item has no place for a
/// file, and an app shows `text`: a file message's text is its caption (if any), then a
/// line with the file's name and a link that downloads it (signed, lasting at least the
/// link period; each read gives a fresh one).
fn said(s: &Said, origin: &str) -> Value {
    let m = &s.message;
    let text = match &m.file {
        Some(f) => {
            let link = match &f.url {
                Some(url) => format!("{} {origin}{url}", f.name),
                None => format!("{} (removed)", f.name),
            };
            match m.text.trim() {
                "" => link,
                caption => format!("{caption}\n{link}"),
            }
        }
        None => m.text.clone(),
    };
    json!({
        "id": m.id,
        "sender": s.sender,
        "text": text,
        "sentDate": m.created_at / 1000,
        "status": m.status,
        "chat": m.chat_id,
        "senderId": sender_id(m),
        "senderAvatar": s.sender_avatar.clone().unwrap_or_default(),
    })
}

/// A broadcast as a message of the customer's chat with the store (`chat`), with the
/// store: `id` is the broadcast's, the same in every customer's listing.
fn broadcast(b: &BroadcastTo) -> Value {
    let cast = &b.broadcast;
    json!({
        "id": cast.id,
        "sender": cast.sender,
        "text": cast.text,
        "sentDate": cast.created_at / 1000,
        "status": "sent",
        "chat": b.chat_id,
        "senderId": SELLER_ID_BASE + cast.operator_id,
        "senderAvatar": b.sender_avatar.clone().unwrap_or_default(),
        "store": cast.store,
        "storeId": cast.inbox_id,
    })
}

fn messages(
    req: &Req,
    params: &[(String, String)],
    extra: &[&str],
    page: Numbered<Said>,
    p: &Paging,
) -> Value {
    let origin = origin(req);
    let items = page.items.iter().map(|s| said(s, &origin)).collect();
    listing(req, params, extra, items, page.total, p)
}

/// The operations served, by method and path (besides the marketplace's, [`social`]).
const OPERATIONS: &[(Method, &str)] = &[
    (Method::GET, "/web/chats"),
    (Method::GET, "/web/main-chats"),
    (Method::GET, "/web/broadcasts"),
    (Method::GET, "/web/store-messages"),
    (Method::POST, "/web/submit-store-messages"),
    (Method::POST, "/web/add-comment"),
    (Method::POST, "/web/delete-comment"),
    (Method::POST, "/web/edit-profile"),
    (Method::GET, "/web/view-offers"),
    (Method::POST, "/web/read-offer"),
    (Method::POST, "/web/change-password"),
];

/// A subject's kind as hojre names it in paths and in `type` (the document spells
/// bazaar "bazzar"; both are taken).
fn subject_kind(name: &str) -> Option<SubjectKind> {
    match name {
        "bazzar" | "bazaar" => Some(SubjectKind::Bazaar),
        "mall" => Some(SubjectKind::Mall),
        "store" => Some(SubjectKind::Store),
        "product" => Some(SubjectKind::Product),
        "user" => Some(SubjectKind::User),
        _ => None,
    }
}

fn kind_name(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Bazaar => "bazzar",
        other => other.as_str(),
    }
}

/// A reaction as hojre names it (its "notification" is following a subject).
fn reaction_of(name: &str) -> Option<Reaction> {
    match name {
        "like" => Some(Reaction::Like),
        "dislike" => Some(Reaction::Dislike),
        "favorite" => Some(Reaction::Favorite),
        "view" => Some(Reaction::View),
        "notification" => Some(Reaction::Follow),
        _ => None,
    }
}

/// The marketplace's operations: `GET /web/{kind}-user-{comments|like|dislike|favorite|
/// view|notification}` lists, `POST /web/add-{like|...}` and `/web/delete-{...}` react.
enum Social {
    Comments(SubjectKind),
    Reactions(SubjectKind, Reaction),
    Add(Reaction),
    Delete(Reaction),
}

fn social(method: &Method, path: &str) -> Option<Social> {
    let name = path.strip_prefix("/web/")?;
    if *method == Method::GET {
        let (kind, what) = name.split_once("-user-")?;
        let kind = subject_kind(kind)?;
        return match what {
            "comments" => Some(Social::Comments(kind)),
            _ if kind == SubjectKind::User => None,
            other => reaction_of(other).map(|r| Social::Reactions(kind, r)),
        };
    }
    if *method == Method::POST {
        if let Some(r) = name.strip_prefix("add-").and_then(reaction_of) {
            return Some(Social::Add(r));
        }
        if let Some(r) = name.strip_prefix("delete-").and_then(reaction_of) {
            return Some(Social::Delete(r));
        }
    }
    None
}

fn comment_item(c: &Comment) -> Value {
    json!({
        "id": c.id,
        "user": c.customer_id,
        "userName": c.customer_name,
        "userAvatar": c.customer_avatar.clone().unwrap_or_default(),
        "text": c.text,
        "sentDate": c.created_at / 1000,
        "type": kind_name(c.subject_kind),
        "targetId": c.subject_id,
        "target": c.subject_name,
    })
}

fn reacted_item(r: &Reacted) -> Value {
    json!({
        "user": r.customer_id,
        "userName": r.customer_name,
        "userAvatar": r.customer_avatar.clone().unwrap_or_default(),
        "type": kind_name(r.subject_kind),
        "targetId": r.subject_id,
        "target": r.subject_name,
        "date": r.created_at / 1000,
    })
}

fn subject_item(s: &Subject) -> Value {
    json!({
        "type": kind_name(s.kind),
        "targetId": s.id,
        "target": s.name,
        "likes": s.counts.likes,
        "dislikes": s.counts.dislikes,
        "favorites": s.counts.favorites,
        "views": s.counts.views,
        "notifications": s.counts.followers,
        "comments": s.counts.comments,
        "mine": s.mine.iter().map(|r| match r {
            Reaction::Follow => "notification",
            other => other.as_str(),
        }).collect::<Vec<_>>(),
    })
}

fn offer_item(o: &Offer) -> Value {
    json!({
        "id": o.id,
        "store": o.store,
        "storeId": o.store_id,
        "seller": o.seller,
        "sellerAvatar": o.seller_avatar.clone().unwrap_or_default(),
        "product": o.product.clone().unwrap_or_default(),
        "productId": o.product_id,
        "text": o.text,
        "sentDate": o.created_at / 1000,
        "read": o.read_at.is_some(),
    })
}

fn success(data: Value) -> Value {
    json!({"status": "success", "message": "", "data": data})
}

/// `type` and `id` of a POST about a subject.
fn target(params: &[(String, String)]) -> Result<(SubjectKind, i64), Error> {
    let kind = get(params, "type").and_then(subject_kind).ok_or_else(|| {
        Error::Invalid("type must be bazzar, mall, store, product or user".into())
    })?;
    let id = get(params, "id")
        .and_then(parse_id)
        .ok_or_else(|| Error::Invalid("id is required".into()))?;
    Ok((kind, id))
}

/// Answers one `/web/...` request.
async fn handle(app: &Hojre, req: Req) -> HttpResponse {
    let path = req.path.trim_end_matches('/');
    let social_op = social(&req.method, path);
    if social_op.is_none()
        && !OPERATIONS
            .iter()
            .any(|(m, p)| *m == req.method && *p == path)
    {
        // Not a page of this API: 404, in its error envelope.
        let mut response = error("there is no such operation");
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let params = params(&req);
    let who = match (get(&params, "username"), get(&params, "token")) {
        (Some(username), Some(token)) => match app.core.customer_by_phone(token, username).await {
            Ok(who) => who,
            Err(_) => return error("not login"),
        },
        _ => return error("not login"),
    };
    let p = paging(&params);
    let core = &app.core;
    let path = req.path.trim_end_matches('/');
    if let Some(op) = social_op {
        let id = get(&params, "id").and_then(parse_id);
        let result = match op {
            Social::Comments(kind) => {
                core.comments(&who, kind, id, p.page, p.per_page)
                    .await
                    .map(|found| {
                        let items = found.items.iter().map(comment_item).collect();
                        listing(&req, &params, &["id"], items, found.total, &p)
                    })
            }
            Social::Reactions(kind, reaction) => core
                .reactions(&who, kind, id, reaction, p.page, p.per_page)
                .await
                .map(|found| {
                    let items = found.items.iter().map(reacted_item).collect();
                    listing(&req, &params, &["id"], items, found.total, &p)
                }),
            Social::Add(reaction) => match target(&params) {
                Ok((kind, id)) => core
                    .react(&who, kind, id, reaction)
                    .await
                    .map(|s| success(subject_item(&s))),
                Err(e) => Err(e),
            },
            Social::Delete(reaction) => match target(&params) {
                Ok((kind, id)) => core
                    .unreact(&who, kind, id, reaction)
                    .await
                    .map(|s| success(subject_item(&s))),
                Err(e) => Err(e),
            },
        };
        return match result {
            Ok(body) => reply(body),
            Err(e) => error(&crate::http::ApiError::from(e).message),
        };
    }
    let result: Result<Value, Error> = match (&req.method, path) {
        (&Method::GET, "/web/chats") => {
            core.store_chats(&who, p.page, p.per_page)
                .await
                .map(|page| {
                    let items = page
                        .items
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.chat.id,
                                "user": c.chat.customer.id,
                                "seller": c.seller,
                                "startDate": c.chat.created_at / 1000,
                                "status": c.chat.status.as_str(),
                                "store": c.store,
                                "storeId": c.chat.inbox_id,
                                "sellerAvatar": c.seller_avatar.clone().unwrap_or_default(),
                            })
                        })
                        .collect();
                    listing(&req, &params, &[], items, page.total, &p)
                })
        }
        (&Method::GET, "/web/main-chats") => {
            let Some(id) = get(&params, "id").and_then(parse_id) else {
                return error("there is no chat for u");
            };
            match core
                .messages_newest_first(&who, id, p.page, p.per_page)
                .await
            {
                Ok(page) => Ok(messages(&req, &params, &["id"], page, &p)),
                Err(Error::NotFound(_)) => return error("there is no chat for u"),
                Err(e) => Err(e),
            }
        }
        (&Method::GET, "/web/broadcasts") => core
            .broadcasts_to(&who, p.page, p.per_page)
            .await
            .map(|page| {
                let items = page.items.iter().map(broadcast).collect();
                listing(&req, &params, &[], items, page.total, &p)
            }),
        (&Method::GET, "/web/store-messages") => {
            match store_chat(app, &who, &params, false).await {
                Ok(chat_id) => core
                    .messages_newest_first(&who, chat_id, p.page, p.per_page)
                    .await
                    .map(|page| messages(&req, &params, &["storeId"], page, &p)),
                Err(e) => Err(e),
            }
        }
        (&Method::POST, "/web/submit-store-messages") => {
            let Some(text) = get(&params, "text") else {
                return error("text is required");
            };
            match store_chat(app, &who, &params, true).await {
                Ok(chat_id) => {
                    let new = NewMessage {
                        local_id: get(&params, "localId").map(str::to_owned),
                        payload: None,
                        text: text.to_owned(),
                        file_id: None,
                    };
                    match core.send(&who, chat_id, new).await {
                        Ok(_) => core
                            .messages_newest_first(&who, chat_id, 1, 1)
                            .await
                            .map(|page| json!({"status": "success", "message": "", "data": page.items.first().map(|s| said(s, &origin(&req)))})),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
        (&Method::POST, "/web/add-comment") => match (target(&params), get(&params, "text")) {
            (Ok((kind, id)), Some(text)) => core
                .comment(&who, kind, id, text)
                .await
                .map(|c| success(comment_item(&c))),
            (Err(e), _) => Err(e),
            (_, None) => return error("text is required"),
        },
        (&Method::POST, "/web/delete-comment") => {
            let Some(id) = get(&params, "id").and_then(parse_id) else {
                return error("id is required");
            };
            core.delete_comment(&who, id)
                .await
                .map(|()| success(json!({"id": id})))
        }
        (&Method::GET, "/web/view-offers") => {
            core.offers(&who, p.page, p.per_page).await.map(|found| {
                let items = found.items.iter().map(offer_item).collect();
                listing(&req, &params, &[], items, found.total, &p)
            })
        }
        (&Method::POST, "/web/read-offer") => {
            let Some(id) = get(&params, "id").and_then(parse_id) else {
                return error("id is required");
            };
            core.read_offer(&who, id)
                .await
                .map(|o| success(offer_item(&o)))
        }
        (&Method::POST, "/web/change-password") => {
            let Some(new) = get(&params, "newPassword").or_else(|| get(&params, "password")) else {
                return error("newPassword is required");
            };
            core.set_customer_password(&who, get(&params, "oldPassword"), new)
                .await
                .map(|()| success(json!("")))
        }
        (&Method::POST, "/web/edit-profile") => core
            .edit_profile(
                &who,
                get(&params, "name").map(str::to_owned),
                get(&params, "avatar").map(str::to_owned),
            )
            .await
            .map(|c| {
                success(json!({
                    "id": c.id,
                    "name": c.name,
                    "avatar": c.avatar.unwrap_or_default(),
                    "username": c.phone.unwrap_or_default(),
                }))
            }),
        _ => return error("no such operation"),
    };
    match result {
        Ok(body) => reply(body),
        Err(e) => error(&crate::http::ApiError::from(e).message),
    }
}

/// The customer's chat with the store `storeId`: the newest one, opened if `open` and there
/// is no unfinished one.
async fn store_chat(
    app: &Hojre,
    who: &Principal,
    params: &[(String, String)],
    open: bool,
) -> Result<i64, Error> {
    let store = get(params, "storeId")
        .and_then(parse_id)
        .ok_or_else(|| Error::Invalid("storeId is required".into()))?;
    if open {
        return Ok(app.core.open_chat(who, store).await?.0.id);
    }
    let chats = app.core.store_chats(who, 1, PER_PAGE).await?;
    chats
        .items
        .iter()
        .rev()
        .find(|c| c.chat.inbox_id == store)
        .map(|c| c.chat.id)
        .ok_or(Error::NotFound("chat"))
}
