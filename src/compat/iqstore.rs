//! The iqstore public API (`/public/api/v1/...`, seeds/002): every call is a POST with a
//! JSON body, and every answer is HTTP 200 with `{"OK", "Error", "Result", "Rels"}`. The
//! result's related clients, users and files come once each in `Rels`. A client (the
//! customer) is authorised by the `client-session` cookie or `Authorization: Client TOKEN`
//! (a customer session token of souq).
//!
//! The support channel is the customer's newest unfinished chat, or a new one with the
//! organisation's first active domain. Calls beyond the documented send follow its style:
//! `chats/channel/history/support`, `chats/channel/new/support`,
//! `chats/channel/received/support`, `chats/channel/read/support`, `chats/list`,
//! `profile/get`.
//!
//! Files are the document's one exception to "always JSON": `files/upload/support`
//! takes the file itself (`multipart/form-data` with a `file` part, or the raw bytes
//! with `?name=`) into the support chat and answers the usual envelope with the file as
//! `Result`; `GET files/{Id}` answers the file's bytes. A message with `Payload: "file"`
//! (sent with the upload's `FileId`) brings its file in `Rels.Files`.

use std::future::Future;

use bytes::Bytes;
use hyper::{Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::events::Person;
use crate::domain::{Error, FileInfo, Message, MessageQuery, NewMessage, Principal};
use crate::http::{ApiError, HttpResponse, Req, Surface};

/// The iqstore public API, as the router mounts it.
#[derive(Debug)]
pub(crate) struct Iqstore {
    core: std::sync::Arc<crate::domain::Core>,
    /// Whether a client is online (`Online`).
    hub: std::sync::Arc<crate::hub::Hub>,
    /// Origins let call it from a browser besides the organisations' sites (`*`: any).
    cors_origins: Vec<String>,
}

impl Iqstore {
    pub(crate) fn new(
        core: std::sync::Arc<crate::domain::Core>,
        hub: std::sync::Arc<crate::hub::Hub>,
        cors_origins: Vec<String>,
    ) -> Iqstore {
        Iqstore {
            core,
            hub,
            cors_origins,
        }
    }

    /// The request's `Origin`, if a browser on it may call this API with the client's
    /// cookie: a configured origin, or the site of an active domain.
    async fn allowed_origin(&self, req: &Req) -> Option<String> {
        let origin = req.headers.get(header::ORIGIN)?.to_str().ok()?.to_owned();
        let normal = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.cors_origins.iter().any(|o| o == "*" || *o == normal) {
            return Some(origin);
        }
        let host = normal.split_once("://")?.1;
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        match self.core.is_known_site(host).await {
            Ok(true) => Some(origin),
            _ => None,
        }
    }
}

/// The headers the document's example answer carries, for an origin let in.
fn allow_origin(response: &mut HttpResponse, origin: &str) {
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = header::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    set(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
    set(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        "Accept, Accept-Encoding, Accept-Language, Access-Control-Request-Headers, \
         Access-Control-Request-Method, Authorization, Cache-Control, Connection, \
         Content-Type, Cookie, Host, Origin, Pragma, Referer, X-Requested-With, User-Agent",
    );
    set(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, HEAD, POST, OPTIONS",
    );
    set(header::ACCESS_CONTROL_MAX_AGE, "600");
    headers.append(header::VARY, header::HeaderValue::from_static("Origin"));
}

/// The path of a file's bytes, `files/{Id}` (an id is `<uuid>.<ext>`).
fn file_id_of(path: &str) -> Option<&str> {
    path.strip_prefix("/public/api/v1/files/")
        .filter(|id| !id.is_empty() && !id.contains('/') && *id != "upload")
}

const UPLOAD: &str = "/public/api/v1/files/upload/support";

impl Surface for Iqstore {
    fn streams(&self, method: &hyper::Method, path: &str) -> bool {
        method == hyper::Method::POST && path.trim_end_matches('/') == UPLOAD
    }

    fn handle<'a>(
        &'a self,
        req: Req,
    ) -> std::pin::Pin<Box<dyn Future<Output = HttpResponse> + std::marker::Send + 'a>> {
        Box::pin(async move {
            let origin = self.allowed_origin(&req).await;
            // A preflight: answered here, with the headers if the origin is let in (the
            // browser stops the call otherwise).
            let mut response = if req.method == hyper::Method::OPTIONS {
                let mut empty = Response::new(crate::http::full(Bytes::new()));
                *empty.status_mut() = StatusCode::NO_CONTENT;
                empty
            } else {
                handle(self, req).await
            };
            if let Some(origin) = origin {
                allow_origin(&mut response, &origin);
            }
            response
        })
    }

    fn refuse(&self, e: ApiError) -> HttpResponse {
        failure(&e.message)
    }
}

fn answer(body: Value) -> HttpResponse {
    let mut response = Response::new(crate::http::full(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// An error answer: still HTTP 200, as the document says of every call.
pub(crate) fn failure(message: &str) -> HttpResponse {
    answer(json!({"OK": false, "Error": message, "Result": null, "Rels": null}))
}

fn session_token(req: &Req) -> Option<String> {
    if let Some(v) = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = v.split_once(' ')
        && scheme.eq_ignore_ascii_case("client")
    {
        return Some(token.trim().to_owned());
    }
    for cookies in req.headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for pair in cookies.split(';') {
            if let Some(("client-session", value)) = pair.trim().split_once('=') {
                return Some(value.trim().to_owned());
            }
        }
    }
    None
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Send {
    #[serde(rename = "LocalId", default)]
    local_id: Option<i64>,
    #[serde(rename = "Payload", default)]
    payload: Option<String>,
    #[serde(rename = "Text", default)]
    text: String,
    #[serde(rename = "FileId", default)]
    file_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Page {
    /// Messages older than this message id (history), or newer (new).
    #[serde(rename = "BeforeId", default)]
    before_id: Option<i64>,
    #[serde(rename = "AfterId", default)]
    after_id: Option<i64>,
    #[serde(rename = "Limit", default)]
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mark {
    /// Mark up to and including this message.
    #[serde(rename = "Id")]
    id: i64,
}

fn body<T: for<'de> Deserialize<'de> + Default>(req: &Req) -> Result<T, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    req.json()
}

impl Default for Mark {
    fn default() -> Self {
        Mark { id: -1 }
    }
}

/// A message as iqstore shows it, `My` from the caller's side.
fn message(m: &Message, me: i64) -> Value {
    let (author, client, user) = match m.author.kind.as_str() {
        "customer" => ("client", m.author.id, None),
        "operator" => ("user", None, m.author.id),
        _ => ("system", None, None),
    };
    json!({
        "Id": m.id,
        "ChatId": m.chat_id,
        "LocalId": m.local_id.as_deref().and_then(|l| l.parse::<i64>().ok()),
        "EventId": m.seq,
        "TicketMessageId": null,
        "Author": author,
        "ClientId": client,
        "UserId": user,
        "Payload": m.payload,
        "Text": m.text,
        "Received": m.received_at.is_some(),
        "Read": m.read_at.is_some(),
        "Pushed": m.pushed_at.is_some(),
        "CreatedAt": m.created_at,
        "ReceivedAt": m.received_at,
        "ReadAt": m.read_at,
        "My": author == "client" && client == Some(me),
    })
}

/// Answers one `/public/api/v1/...` request.
async fn handle(app: &Iqstore, mut req: Req) -> HttpResponse {
    if let Some(id) = file_id_of(&req.path)
        && (req.method == hyper::Method::GET || req.method == hyper::Method::HEAD)
    {
        // The bytes themselves; a failure is an HTTP status, since a browser shows the
        // answer (an <img>), not a script.
        return match download(app, &req, id).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
    }
    if req.method != hyper::Method::POST {
        return failure("every call of this API is a POST");
    }
    match route(app, &mut req).await {
        Ok(body) => answer(body),
        Err(e) => failure(&e.message),
    }
}

/// The calling client.
async fn caller(app: &Iqstore, req: &Req) -> Result<(Principal, i64), ApiError> {
    let token = session_token(req).ok_or_else(|| {
        ApiError::from(Error::Unauthorized(
            "not authorised: send the client-session cookie",
        ))
    })?;
    let who = app.core.authenticate(&token).await?;
    let Principal::Customer { customer_id, .. } = who else {
        return Err(Error::Unauthorized("not a client session").into());
    };
    Ok((who, customer_id))
}

async fn download(app: &Iqstore, req: &Req, id: &str) -> Result<HttpResponse, ApiError> {
    let who = match crate::api::files::link_of(req)? {
        Some(_) => None,
        None => Some(caller(app, req).await?.0),
    };
    crate::api::files::download(&app.core, req, id, who.as_ref()).await
}

/// A file as iqstore shows it in `Rels.Files`.
fn file(f: &FileInfo) -> Value {
    let (owner, client, user) = match f.owner.kind.as_str() {
        "customer" => ("client", f.owner.id, None),
        _ => ("user", None, f.owner.id),
    };
    json!({
        "Id": f.id,
        "Type": "file",
        "Owner": owner,
        "OwnerClientId": client,
        "ClientId": client,
        "UserId": user,
        "Name": f.name,
        "Path": f.path,
        "Size": f.size,
        "ImageWidth": f.image_width,
        "ImageHeight": f.image_height,
        "ContentType": f.content_type,
        "CreatedAt": f.created_at,
    })
}

/// The files of these messages, once each.
fn files_of(messages: &[Message]) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter_map(|m| m.file.as_deref())
        .filter(|f| seen.insert(f.id.clone()))
        .map(file)
        .collect()
}

async fn route(app: &Iqstore, req: &mut Req) -> Result<Value, ApiError> {
    let core = &app.core;
    let (who, customer_id) = caller(app, req).await?;
    let full_path = req.path.clone();
    let path = full_path
        .trim_start_matches("/public/api/v1/")
        .trim_end_matches('/');
    let messages: Vec<Message> = match path {
        "files/upload/support" => {
            let chat_id = core.support_chat(&who).await?;
            let uploaded = crate::api::files::upload(core, &who, chat_id, req).await?;
            return Ok(json!({"OK": true, "Error": null, "Result": file(&uploaded),
                "Rels": {"Clients": [client(app, &who, customer_id).await?], "Files": [], "Users": []}}));
        }
        "chats/channel/send/support" => {
            let b: Send = body(req)?;
            let chat_id = core.support_chat(&who).await?;
            let new = NewMessage {
                local_id: b.local_id.map(|l| l.to_string()),
                payload: b.payload,
                text: b.text,
                file_id: b.file_id,
            };
            vec![core.send(&who, chat_id, new).await?.0]
        }
        "chats/channel/history/support" | "chats/channel/new/support" => {
            let b: Page = body(req)?;
            let chat_id = core.support_chat(&who).await?;
            let mut q = MessageQuery {
                limit: b.limit.or(Some(50)),
                ..Default::default()
            };
            if path.ends_with("new/support") {
                q.after = Some(match b.after_id {
                    Some(id) => core.seq_of(&who, chat_id, id).await?,
                    None => 0,
                });
            } else if let Some(id) = b.before_id {
                q.before = Some(core.seq_of(&who, chat_id, id).await?);
            }
            core.messages(&who, chat_id, q).await?.items
        }
        "chats/channel/received/support" | "chats/channel/read/support" => {
            let b: Mark = body(req)?;
            let chat_id = core.support_chat(&who).await?;
            let seq = core.seq_of(&who, chat_id, b.id).await?;
            let read = path.ends_with("read/support");
            core.mark(&who, chat_id, (!read).then_some(seq), read.then_some(seq))
                .await?;
            let q = MessageQuery {
                after: Some(seq - 1),
                limit: Some(1),
                ..Default::default()
            };
            core.messages(&who, chat_id, q).await?.items
        }
        "chats/list" => {
            let page = core
                .list_chats(
                    &who,
                    &crate::domain::desk::ChatFilter::default(),
                    None,
                    Some(200),
                )
                .await?;
            let result: Vec<Value> = page
                .items
                .iter()
                .map(|c| {
                    json!({
                        "Id": c.id, "ClientId": c.customer.id, "UserId": c.operator.as_ref().map(|o| o.id),
                        "Status": c.status.as_str(), "Unread": c.unread,
                        "CreatedAt": c.created_at, "UpdatedAt": c.last_activity_at,
                        "LastMessage": c.last_message.as_ref().map(|m| message(m, customer_id)),
                    })
                })
                .collect();
            return Ok(json!({"OK": true, "Error": null, "Result": result,
                "Rels": {"Clients": [client(app, &who, customer_id).await?], "Files": [], "Users": []}}));
        }
        "profile/get" => {
            return Ok(
                json!({"OK": true, "Error": null, "Result": client(app, &who, customer_id).await?,
                "Rels": {"Clients": [], "Files": [], "Users": []}}),
            );
        }
        _ => return Err(ApiError::not_found()),
    };
    let users: Vec<Value> = core
        .authors_of(&who, &messages)
        .await?
        .into_iter()
        .map(|card| {
            let o = card.operator;
            json!({
                "Id": o.id, "Name": o.name, "Email": o.email, "Position": "", "RoleId": 1,
                "AvatarId": o.avatar.unwrap_or_default(), "Online": card.shown_online, "Deleted": false,
                "TotalAssignedTickets": card.taken_chats, "CreatedAt": o.created_at,
                "UpdatedAt": o.updated_at, "LastSeenAt": o.updated_at, "AssignedAt": card.assigned_at,
                "DisplayName": o.name,
            })
        })
        .collect();
    let result: Vec<Value> = messages.iter().map(|m| message(m, customer_id)).collect();
    Ok(json!({
        "OK": true,
        "Error": null,
        "Result": result,
        "Rels": {"Clients": [client(app, &who, customer_id).await?], "Files": files_of(&messages), "Users": users},
    }))
}

/// The calling client, as iqstore shows it.
async fn client(app: &Iqstore, who: &Principal, customer_id: i64) -> Result<Value, ApiError> {
    let card = app.core.customer_card(who, customer_id).await?;
    let c = card.customer;
    Ok(json!({
        "Id": c.id,
        "ProjectId": who.org_id(),
        "CompanyId": who.org_id(),
        "Type": "crm",
        "Name": c.name,
        "Online": app.hub.is_connected(Person::Customer(c.id)),
        "CustomerId": c.id,
        "ChannelId": null,
        "TelegramId": c.telegram_id,
        "FacebookId": c.facebook_id,
        "VKId": c.vk_id,
        "TotalTickets": card.total_chats,
        "TotalOpenTickets": card.open_chats,
        "CreatedAt": c.created_at,
        "UpdatedAt": c.updated_at,
        "SeenAt": c.updated_at,
        "MessagedAt": card.messaged_at,
        // The app's own id of the client: its external id, else souq's.
        "IntegrationId": c.external_id.unwrap_or_else(|| c.id.to_string()),
    }))
}
