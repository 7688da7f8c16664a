//! The native REST API, `/v1/...`: routes, and handlers that turn requests into calls on
//! the core and its answers into JSON.

pub(crate) mod files;
mod web;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::domain::canned::{CannedPatch, NewCanned};
use crate::domain::catalogue::{NewItem, NewOffer, Reaction, SubjectKind};
use crate::domain::desk::{AttributesPatch, ChatFilter, Labels, Snooze};
use crate::domain::events::Person;
use crate::domain::notes::NewNote;
use crate::domain::notify::{MarkRead, NewSubscription};
use crate::domain::routing::Transfer;
use crate::domain::webhooks::{NewWebhook, WebhookPatch};
use crate::domain::{
    AssignmentPatch, ChatStatus, Core, CustomerFields, DomainPatch, InboxPatch, MessageQuery,
    NewAssignment, NewDomain, NewInbox, NewMessage, NewOperator, OperatorPatch, OrganisationPatch,
    Presence, Principal,
};
use crate::http::{ApiError, HttpResponse, Req, Surface, json_response, parse_id};
use crate::hub::Hub;

/// The native REST API, as the router mounts it.
#[derive(Debug)]
pub(crate) struct Api {
    core: Arc<Core>,
    /// Long-polls wait on its waiters.
    hub: Arc<Hub>,
    routes: Routes,
}

impl Api {
    pub(crate) fn new(core: Arc<Core>, hub: Arc<Hub>) -> Api {
        Api {
            core,
            hub,
            routes: Routes::new(),
        }
    }
}

impl Surface for Api {
    fn streams(&self, method: &Method, path: &str) -> bool {
        method == Method::POST
            && self
                .routes
                .0
                .at(path)
                .is_ok_and(|m| m.value.0 == Route::ChatFiles)
    }

    fn handle<'a>(&'a self, req: Req) -> Pin<Box<dyn Future<Output = HttpResponse> + Send + 'a>> {
        Box::pin(async move {
            dispatch(self, req)
                .await
                .unwrap_or_else(ApiError::into_response)
        })
    }
}

/// Every path the API serves. Methods are matched in [`dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    /// A page or asset of [`web`].
    Web(web::Page),
    WidgetVisitors,
    WidgetSettings,
    AuthToken,
    AuthRefresh,
    SignOut,
    Me,
    MePresence,
    Operators,
    Operator,
    OperatorSessions,
    Domains,
    Domain,
    Inboxes,
    Inbox,
    InboxBroadcasts,
    Broadcasts,
    Assignments,
    Assignment,
    Customers,
    Customer,
    CustomerSessions,
    Chats,
    Chat,
    ChatTake,
    ChatQueue,
    ChatTransfer,
    ChatUnassign,
    ChatSnooze,
    ChatNotes,
    ChatLabels,
    ChatAttributes,
    CustomerLabels,
    CustomerAttributes,
    ChatFinish,
    ChatMessages,
    ChatReceipts,
    ChatFiles,
    File,
    CustomerData,
    Organisation,
    Webhooks,
    Webhook,
    WebhookEvents,
    WebhookRetry,
    Notifications,
    NotificationsRead,
    PushKey,
    PushSubscriptions,
    PushSubscription,
    Catalogue,
    Subject,
    StoreMall,
    SubjectChildren,
    Reactions,
    SubjectComments,
    MyReactions,
    MyComments,
    Comment,
    CannedResponses,
    CannedResponse,
    CannedRender,
    CustomerSignIn,
    MyPassword,
    InboxOffers,
    Offers,
    OfferRead,
    Search,
    InboxReport,
}

#[derive(Debug)]
/// Each path's route, and the methods it answers (the `Allow` of a 405).
struct Routes(matchit::Router<(Route, &'static str)>);

impl Routes {
    fn new() -> Self {
        let table = [
            ("/v1/health", Route::Health, "GET"),
            ("/", Route::Web(web::Page::Front), "GET"),
            ("/console", Route::Web(web::Page::Console), "GET"),
            ("/console.js", Route::Web(web::Page::ConsoleJs), "GET"),
            ("/souq.css", Route::Web(web::Page::Css), "GET"),
            ("/demo", Route::Web(web::Page::Demo), "GET"),
            ("/demo.js", Route::Web(web::Page::DemoJs), "GET"),
            ("/reference", Route::Web(web::Page::Reference), "GET"),
            ("/reference.js", Route::Web(web::Page::ReferenceJs), "GET"),
            ("/widget.js", Route::Web(web::Page::WidgetJs), "GET"),
            (
                "/schema/openapi.json",
                Route::Web(web::Page::OpenApi),
                "GET",
            ),
            ("/schema/ws.json", Route::Web(web::Page::Frames), "GET"),
            ("/v1/widget/{key}", Route::WidgetSettings, "GET, OPTIONS"),
            (
                "/v1/widget/{key}/visitors",
                Route::WidgetVisitors,
                "POST, OPTIONS",
            ),
            ("/v1/auth/token", Route::AuthToken, "POST"),
            ("/v1/auth/refresh", Route::AuthRefresh, "POST"),
            ("/v1/auth/sign-out", Route::SignOut, "POST"),
            ("/v1/me", Route::Me, "GET"),
            ("/v1/me/presence", Route::MePresence, "PUT"),
            ("/v1/operators", Route::Operators, "GET, POST"),
            ("/v1/operators/{id}", Route::Operator, "GET, PATCH"),
            (
                "/v1/operators/{id}/sessions",
                Route::OperatorSessions,
                "POST, DELETE",
            ),
            ("/v1/domains", Route::Domains, "GET, POST"),
            ("/v1/domains/{id}", Route::Domain, "GET, PATCH"),
            ("/v1/inboxes", Route::Inboxes, "GET, POST"),
            ("/v1/inboxes/{id}", Route::Inbox, "GET, PATCH"),
            (
                "/v1/inboxes/{id}/broadcasts",
                Route::InboxBroadcasts,
                "POST",
            ),
            ("/v1/assignments", Route::Assignments, "GET, POST"),
            (
                "/v1/assignments/{id}",
                Route::Assignment,
                "GET, PATCH, DELETE",
            ),
            ("/v1/customers", Route::Customers, "POST"),
            ("/v1/customers/{id}", Route::Customer, "GET"),
            (
                "/v1/customers/{id}/sessions",
                Route::CustomerSessions,
                "POST, DELETE",
            ),
            ("/v1/chats", Route::Chats, "GET, POST"),
            ("/v1/chats/{id}", Route::Chat, "GET, OPTIONS"),
            ("/v1/chats/{id}/take", Route::ChatTake, "POST"),
            ("/v1/chats/{id}/queue", Route::ChatQueue, "GET"),
            ("/v1/chats/{id}/transfer", Route::ChatTransfer, "POST"),
            ("/v1/chats/{id}/unassign", Route::ChatUnassign, "POST"),
            ("/v1/chats/{id}/snooze", Route::ChatSnooze, "POST, DELETE"),
            ("/v1/chats/{id}/notes", Route::ChatNotes, "GET, POST"),
            ("/v1/chats/{id}/labels", Route::ChatLabels, "PUT"),
            ("/v1/chats/{id}/attributes", Route::ChatAttributes, "PATCH"),
            (
                "/v1/customers/{id}/labels",
                Route::CustomerLabels,
                "GET, PUT",
            ),
            (
                "/v1/customers/{id}/attributes",
                Route::CustomerAttributes,
                "PATCH",
            ),
            ("/v1/chats/{id}/finish", Route::ChatFinish, "POST"),
            ("/v1/chats/{id}/messages", Route::ChatMessages, "GET, POST"),
            ("/v1/chats/{id}/receipts", Route::ChatReceipts, "POST"),
            ("/v1/chats/{id}/files", Route::ChatFiles, "POST, OPTIONS"),
            ("/v1/files/{id}", Route::File, "GET, HEAD"),
            ("/v1/customers/{id}/data", Route::CustomerData, "DELETE"),
            ("/v1/organisation", Route::Organisation, "GET, PATCH"),
            ("/v1/webhooks", Route::Webhooks, "GET, POST"),
            ("/v1/webhooks/{id}", Route::Webhook, "GET, PATCH, DELETE"),
            ("/v1/webhooks/{id}/events", Route::WebhookEvents, "GET"),
            (
                "/v1/webhooks/{id}/events/{event}/retry",
                Route::WebhookRetry,
                "POST",
            ),
            ("/v1/notifications", Route::Notifications, "GET"),
            ("/v1/notifications/read", Route::NotificationsRead, "POST"),
            ("/v1/broadcasts", Route::Broadcasts, "GET"),
            ("/v1/push/key", Route::PushKey, "GET, OPTIONS"),
            (
                "/v1/push/subscriptions",
                Route::PushSubscriptions,
                "GET, POST, OPTIONS",
            ),
            (
                "/v1/push/subscriptions/{id}",
                Route::PushSubscription,
                "DELETE, OPTIONS",
            ),
            ("/v1/catalogue", Route::Catalogue, "POST"),
            ("/v1/catalogue/{kind}/{id}", Route::Subject, "GET"),
            ("/v1/catalogue/{kind}/{id}/mall", Route::StoreMall, "PUT"),
            (
                "/v1/catalogue/{kind}/{id}/children",
                Route::SubjectChildren,
                "GET",
            ),
            (
                "/v1/catalogue/{kind}/{id}/reactions/{reaction}",
                Route::Reactions,
                "GET, PUT, DELETE",
            ),
            (
                "/v1/catalogue/{kind}/{id}/comments",
                Route::SubjectComments,
                "GET, POST",
            ),
            ("/v1/me/reactions", Route::MyReactions, "GET"),
            ("/v1/me/comments", Route::MyComments, "GET"),
            ("/v1/comments/{id}", Route::Comment, "DELETE"),
            ("/v1/inboxes/{id}/offers", Route::InboxOffers, "POST"),
            ("/v1/offers", Route::Offers, "GET"),
            ("/v1/auth/customer", Route::CustomerSignIn, "POST"),
            ("/v1/canned-responses", Route::CannedResponses, "GET, POST"),
            (
                "/v1/canned-responses/{id}",
                Route::CannedResponse,
                "GET, PATCH, DELETE",
            ),
            (
                "/v1/canned-responses/{id}/render",
                Route::CannedRender,
                "POST",
            ),
            ("/v1/me/password", Route::MyPassword, "PUT"),
            ("/v1/offers/{id}/read", Route::OfferRead, "POST"),
            ("/v1/search", Route::Search, "GET"),
            ("/v1/inboxes/{id}/report", Route::InboxReport, "GET"),
        ];
        let mut router = matchit::Router::new();
        for (path, route, allow) in table {
            // The table above is fixed; a clash would fail every test at the first request.
            if let Err(e) = router.insert(path, (route, allow)) {
                panic!("route table is inconsistent at {path}: {e}");
            }
        }
        Routes(router)
    }
}

type Reply = Result<HttpResponse, ApiError>;

fn reply(status: StatusCode, body: &impl Serialize) -> Reply {
    Ok(json_response(status, body))
}

fn ok(body: &impl Serialize) -> Reply {
    reply(StatusCode::OK, body)
}

fn created_or_ok(created: bool, body: &impl Serialize) -> Reply {
    reply(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        body,
    )
}

fn no_content() -> Reply {
    let mut response = Response::new(crate::http::full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// `{"items": [...]}` for the admin lists.
fn items<T: Serialize>(items: Vec<T>) -> Reply {
    ok(&json!({ "items": items }))
}

/// The subject a catalogue path names: its kind and id; anything else is 404.
fn subject_of(params: &matchit::Params) -> Result<(SubjectKind, i64), ApiError> {
    let kind = params
        .get("kind")
        .and_then(SubjectKind::parse)
        .ok_or_else(ApiError::not_found)?;
    Ok((kind, path_id(params)?))
}

/// `?kind=` of a listing of the caller's own.
fn query_kind(req: &Req) -> Result<SubjectKind, ApiError> {
    req.query("kind")
        .and_then(SubjectKind::parse)
        .ok_or_else(|| ApiError::invalid("kind must be bazaar, mall, store, product or user"))
}

/// `?page=` (from 1) and `?per_page=` (1 to 200, 50 by default).
fn page_of(req: &Req) -> Result<(u64, u64), ApiError> {
    let page = req.query_num::<u64>("page")?.unwrap_or(1).max(1);
    let per_page = req
        .query_num::<u64>("per_page")?
        .unwrap_or(50)
        .clamp(1, 200);
    Ok((page, per_page))
}

/// The longest wait a chat list filters by (a year).
const MAX_WAITING_SECS: i64 = 366 * 24 * 3600;

/// A chat list's filters: `status`, `inbox_id`, `customer_id`, `operator_id` (an id, `me`
/// or `none`), `label`, `unread=true`, `waiting_secs`, `snoozed=true|false`.
fn chat_filter(req: &Req, who: &Principal) -> Result<ChatFilter, ApiError> {
    let flag = |name: &str| -> Result<Option<bool>, ApiError> {
        match req.query(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid(format!("{name} must be true or false"))),
        }
    };
    let status = match req.query("status") {
        None => None,
        Some(s) => Some(
            ChatStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status must be pending, chatting or finished"))?,
        ),
    };
    let operator_id = match req.query("operator_id") {
        None => None,
        Some("none") => Some(None),
        Some("me") => match *who {
            Principal::Operator { operator_id, .. } => Some(Some(operator_id)),
            _ => return Err(ApiError::invalid("operator_id=me is for an operator")),
        },
        Some(_) => Some(Some(
            req.query_num::<i64>("operator_id")
                .map_err(|_| ApiError::invalid("operator_id must be an id, me or none"))?
                .unwrap_or(0),
        )),
    };
    let label = match req.query("label") {
        None => None,
        Some(l) if l.trim().is_empty() => {
            return Err(ApiError::invalid("label must not be empty"));
        }
        Some(l) => Some(l.to_owned()),
    };
    Ok(ChatFilter {
        status,
        inbox_id: req.query_num("inbox_id")?,
        operator_id,
        label,
        unread: flag("unread")?.unwrap_or(false),
        waiting_secs: match req.query_num::<i64>("waiting_secs")? {
            Some(n) if n > MAX_WAITING_SECS => {
                return Err(ApiError::invalid(format!(
                    "waiting_secs must be 0 to {MAX_WAITING_SECS}"
                )));
            }
            other => other,
        },
        snoozed: flag("snoozed")?,
        customer_id: req.query_num("customer_id")?,
    })
}

/// The id in the path; an id that is not a positive integer names nothing, so 404.
fn path_id(params: &matchit::Params) -> Result<i64, ApiError> {
    params
        .get("id")
        .and_then(parse_id)
        .ok_or_else(ApiError::not_found)
}

async fn principal(app: &Api, req: &Req) -> Result<Principal, ApiError> {
    let token = req.bearer().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing token: send Authorization: Bearer <token>",
        )
    })?;
    Ok(app.core.authenticate(token).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    email: String,
    password: String,
    /// The organisation's subdomain.
    organisation: String,
    addon: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenderCanned {
    chat_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerSignIn {
    /// The organisation's subdomain.
    organisation: String,
    phone: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    #[serde(default)]
    current: Option<String>,
    new: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPresence {
    presence: Presence,
}

fn cors(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static("authorization, content-type"),
    );
    response
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VisitorBody {
    /// A visitor's earlier token, to continue as the same visitor.
    #[serde(default)]
    token: Option<String>,
    /// A new visitor's name and e-mail, from the widget's pre-chat form.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreMall {
    #[serde(deserialize_with = "Option::deserialize")]
    mall_id: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComment {
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenChat {
    inbox_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mark {
    #[serde(default)]
    received: Option<i64>,
    #[serde(default)]
    read: Option<i64>,
}

/// Routes one request and runs its handler.
async fn dispatch(app: &Api, mut req: Req) -> Reply {
    let path = req.path.clone();
    let matched = app.routes.0.at(&path).map_err(|_| ApiError::not_found())?;
    let (route, allow) = *matched.value;
    if !allow.split(", ").any(|m| m == req.method.as_str()) {
        return Err(ApiError::method_not_allowed(allow));
    }
    let params = matched.params;
    let core = &app.core;
    use Method as M;
    use Route as R;

    // Routes that need no token.
    match (route, &req.method) {
        (R::Health, &M::GET) => return ok(&json!({ "status": "ok" })),
        (R::AuthToken, &M::POST) => {
            let b: SignIn = req.json()?;
            return ok(&core
                .sign_in(&b.email, &b.password, &b.organisation, &b.addon, req.client)
                .await?);
        }
        (R::CustomerSignIn, &M::POST) => {
            let b: CustomerSignIn = req.json()?;
            return reply(
                StatusCode::CREATED,
                &core
                    .customer_sign_in(&b.organisation, &b.phone, &b.password, req.client)
                    .await?,
            );
        }
        (R::AuthRefresh, &M::POST) => {
            let b: Refresh = req.json()?;
            return ok(&core.refresh_admin_tokens(&b.refresh_token).await?);
        }
        (R::Web(page), &M::GET) => return Ok(web::serve(page, &req.headers)),
        // The widget runs on the merchant's site: its one REST call is cross-origin. It
        // carries no cookie, so any origin may make it.
        (R::WidgetVisitors | R::WidgetSettings, &M::OPTIONS) => return Ok(cors(no_content()?)),
        (R::WidgetSettings, &M::GET) => {
            let key = params.get("key").unwrap_or_default();
            return Ok(cors(match core.widget_settings(key).await {
                Ok(settings) => reply(StatusCode::OK, &settings)?,
                Err(e) => ApiError::from(e).into_response(),
            }));
        }
        (R::WidgetVisitors, &M::POST) => {
            let key = params.get("key").unwrap_or_default();
            let b: VisitorBody = if req.body.iter().all(u8::is_ascii_whitespace) {
                VisitorBody::default()
            } else {
                req.json()?
            };
            let details = crate::domain::VisitorDetails {
                name: b.name,
                email: b.email,
            };
            let result = core
                .visitor(key, b.token.as_deref(), details, req.client)
                .await;
            return match result {
                Ok(v) => Ok(cors(reply(StatusCode::OK, &v)?)),
                Err(e) => Ok(cors(ApiError::from(e).into_response())),
            };
        }
        // The widget uploads from the merchant's site. Its token goes in a header, not a
        // cookie, so any origin may ask.
        (R::ChatFiles, &M::OPTIONS) => return Ok(cors(no_content()?)),
        (R::ChatFiles, &M::POST) => {
            // Refusals too carry CORS headers, so that the widget can read them.
            let uploaded = async {
                let who = principal(app, &req).await?;
                let id = path_id(&params)?;
                files::upload(core, &who, id, &mut req).await
            }
            .await;
            return Ok(cors(match uploaded {
                Ok(file) => reply(StatusCode::CREATED, &file)?,
                Err(e) => e.into_response(),
            }));
        }
        // The widget shows who has its chat, from the merchant's site; the token goes in
        // a header, not a cookie, so any origin may ask.
        (R::Chat, &M::OPTIONS) => return Ok(cors(no_content()?)),
        (R::Chat, &M::GET) => {
            let chat = async {
                let who = principal(app, &req).await?;
                ok(&core.chat(&who, path_id(&params)?).await?)
            }
            .await;
            return Ok(cors(chat.unwrap_or_else(|e| e.into_response())));
        }
        // Web Push from the widget, on the merchant's site: cross-origin, with the token
        // in a header, so any origin may ask.
        (R::PushKey | R::PushSubscriptions | R::PushSubscription, &M::OPTIONS) => {
            return Ok(cors(no_content()?));
        }
        (R::PushKey, &M::GET) => {
            let key = core.vapid().await?.public_key();
            return Ok(cors(ok(&json!({ "public_key": key }))?));
        }
        (R::PushSubscriptions, &M::POST) | (R::PushSubscription, &M::DELETE) => {
            let done = async {
                let who = principal(app, &req).await?;
                if route == R::PushSubscription {
                    core.unsubscribe_push(&who, path_id(&params)?).await?;
                    return no_content();
                }
                let new: NewSubscription = req.json()?;
                reply(StatusCode::CREATED, &core.subscribe_push(&who, new).await?)
            }
            .await;
            return Ok(cors(done.unwrap_or_else(|e| e.into_response())));
        }
        // A signed link needs no token: an <img> has none to send.
        (R::File, &M::GET | &M::HEAD) => {
            let who = match req.bearer() {
                Some(_) => Some(principal(app, &req).await?),
                None => None,
            };
            let id = params.get("id").unwrap_or_default();
            return files::download(core, &req, id, who.as_ref()).await;
        }
        (
            R::Health
            | R::AuthToken
            | R::AuthRefresh
            | R::Web(_)
            | R::WidgetVisitors
            | R::WidgetSettings
            | R::File
            | R::PushKey
            | R::PushSubscription
            | R::CustomerSignIn,
            _,
        ) => {
            return Err(ApiError::method_not_allowed(allow));
        }
        _ => {}
    }

    let who = principal(app, &req).await?;
    match (route, req.method.clone()) {
        (R::Me, M::GET) => me(app, &who).await,
        (R::SignOut, M::POST) => {
            // The token was checked just above; it is the one that ends.
            core.sign_out(req.bearer().unwrap_or_default()).await?;
            no_content()
        }
        (R::MePresence, M::PUT) => {
            let Principal::Operator { operator_id, .. } = who else {
                return Err(
                    crate::domain::Error::Forbidden("only an operator has a presence").into(),
                );
            };
            let b: SetPresence = req.json()?;
            let patch = OperatorPatch {
                presence: Some(b.presence),
                ..Default::default()
            };
            ok(&core.update_operator(&who, operator_id, patch).await?)
        }

        (R::Operators, M::POST) => reply(
            StatusCode::CREATED,
            &core
                .create_operator(&who, req.json::<NewOperator>()?)
                .await?,
        ),
        (R::Operators, M::GET) => items(
            core.list_operators(&who, req.query_num("after")?, req.query_num("limit")?)
                .await?,
        ),
        (R::Operator, M::GET) => ok(&core.operator(&who, path_id(&params)?).await?),
        (R::Operator, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .update_operator(&who, id, req.json::<OperatorPatch>()?)
                .await?)
        }
        (R::OperatorSessions, M::POST) => reply(
            StatusCode::CREATED,
            &core.operator_session(&who, path_id(&params)?).await?,
        ),
        (R::OperatorSessions, M::DELETE) => {
            let operator = Person::Operator(path_id(&params)?);
            core.revoke_sessions(&who, operator).await?;
            no_content()
        }

        (R::Domains, M::POST) => {
            let (domain, inbox) = core.create_domain(&who, req.json::<NewDomain>()?).await?;
            reply(
                StatusCode::CREATED,
                &json!({ "domain": domain, "inbox": inbox }),
            )
        }
        (R::Domains, M::GET) => items(
            core.list_domains(&who, req.query_num("after")?, req.query_num("limit")?)
                .await?,
        ),
        (R::Domain, M::GET) => ok(&core.domain(&who, path_id(&params)?).await?),
        (R::Domain, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .update_domain(&who, id, req.json::<DomainPatch>()?)
                .await?)
        }

        (R::Inboxes, M::POST) => reply(
            StatusCode::CREATED,
            &core.create_inbox(&who, req.json::<NewInbox>()?).await?,
        ),
        (R::Inboxes, M::GET) => items(
            core.list_inboxes(
                &who,
                req.query_num("domain_id")?,
                req.query_num("after")?,
                req.query_num("limit")?,
            )
            .await?,
        ),
        (R::Inbox, M::GET) => ok(&core.inbox(&who, path_id(&params)?).await?),
        (R::Inbox, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .update_inbox(&who, id, req.json::<InboxPatch>()?)
                .await?)
        }
        (R::InboxBroadcasts, M::POST) => {
            let id = path_id(&params)?;
            let b: Broadcast = req.json()?;
            let sent = core.broadcast(&who, id, &b.text).await?;
            // `chats`: named when each customer got a copy in their chat; it counts the
            // customers the broadcast reaches.
            reply(StatusCode::CREATED, &json!({ "chats": sent.customers }))
        }

        (R::Assignments, M::POST) => reply(
            StatusCode::CREATED,
            &core
                .create_assignment(&who, req.json::<NewAssignment>()?)
                .await?,
        ),
        (R::Assignments, M::GET) => items(
            core.list_assignments(
                &who,
                req.query_num("operator_id")?,
                req.query_num("inbox_id")?,
                req.query_num("after")?,
                req.query_num("limit")?,
            )
            .await?,
        ),
        (R::Assignment, M::GET) => ok(&core.assignment(&who, path_id(&params)?).await?),
        (R::Assignment, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .update_assignment(&who, id, req.json::<AssignmentPatch>()?)
                .await?)
        }
        (R::Assignment, M::DELETE) => {
            core.delete_assignment(&who, path_id(&params)?).await?;
            no_content()
        }

        (R::Customers, M::POST) => {
            let (customer, created) = core
                .identify_customer(&who, req.json::<CustomerFields>()?)
                .await?;
            created_or_ok(created, &customer)
        }
        (R::Customer, M::GET) => ok(&core.customer(&who, path_id(&params)?).await?),
        (R::CustomerSessions, M::POST) => reply(
            StatusCode::CREATED,
            &core.customer_session(&who, path_id(&params)?).await?,
        ),
        (R::CustomerData, M::DELETE) => {
            let erased = core.erase_customer(&who, path_id(&params)?).await?;
            ok(&json!({ "chats_erased": erased }))
        }
        (R::Webhooks, M::POST) => reply(
            StatusCode::CREATED,
            &core.create_webhook(&who, req.json::<NewWebhook>()?).await?,
        ),
        (R::Webhooks, M::GET) => items(core.webhooks(&who).await?),
        (R::Webhook, M::GET) => ok(&core.webhook(&who, path_id(&params)?).await?),
        (R::Webhook, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .update_webhook(&who, id, req.json::<WebhookPatch>()?)
                .await?)
        }
        (R::Webhook, M::DELETE) => {
            core.delete_webhook(&who, path_id(&params)?).await?;
            no_content()
        }
        (R::WebhookEvents, M::GET) => items(
            core.webhook_events(
                &who,
                path_id(&params)?,
                req.query("state"),
                req.query_num("limit")?,
            )
            .await?,
        ),
        (R::WebhookRetry, M::POST) => {
            let id = path_id(&params)?;
            let event = params.get("event").unwrap_or_default();
            core.retry_webhook_event(&who, id, event).await?;
            no_content()
        }
        (R::Organisation, M::GET) => ok(&core.organisation_settings(&who).await?),
        (R::Organisation, M::PATCH) => ok(&core
            .update_organisation(&who, req.json::<OrganisationPatch>()?)
            .await?),
        (R::Notifications, M::GET) => ok(&core
            .notifications(&who, req.query_num("before")?, req.query_num("limit")?)
            .await?),
        (R::NotificationsRead, M::POST) => {
            let unread = core
                .mark_notifications_read(&who, req.json::<MarkRead>()?)
                .await?;
            ok(&json!({ "unread": unread }))
        }
        (R::Broadcasts, M::GET) => {
            let (page, per_page) = page_of(&req)?;
            let found = core.broadcasts_to(&who, page, per_page).await?;
            ok(&json!({"items": found.items, "total": found.total}))
        }
        (R::PushSubscriptions, M::GET) => items(core.push_subscriptions(&who).await?),
        (R::Catalogue, M::POST) => reply(
            StatusCode::CREATED,
            &core
                .create_catalogue_item(&who, req.json::<NewItem>()?)
                .await?,
        ),
        (R::Subject, M::GET) => {
            let (kind, id) = subject_of(&params)?;
            ok(&core.subject(&who, kind, id).await?)
        }
        (R::SubjectChildren, M::GET) => {
            let (kind, id) = subject_of(&params)?;
            let (page, per_page) = page_of(&req)?;
            let found = core.children(&who, kind, id, page, per_page).await?;
            ok(&json!({"items": found.items, "total": found.total}))
        }
        (R::StoreMall, M::PUT) => {
            let (kind, id) = subject_of(&params)?;
            if kind != SubjectKind::Store {
                return Err(ApiError::not_found());
            }
            let b: StoreMall = req.json()?;
            core.set_store_mall(&who, id, b.mall_id).await?;
            no_content()
        }
        (R::Reactions, method @ (M::GET | M::PUT | M::DELETE)) => {
            let (kind, id) = subject_of(&params)?;
            let reaction = params
                .get("reaction")
                .and_then(Reaction::parse)
                .ok_or_else(ApiError::not_found)?;
            match method {
                M::PUT => ok(&core.react(&who, kind, id, reaction).await?),
                M::DELETE => ok(&core.unreact(&who, kind, id, reaction).await?),
                _ => {
                    let (page, per_page) = page_of(&req)?;
                    let found = core
                        .reactions(&who, kind, Some(id), reaction, page, per_page)
                        .await?;
                    ok(&json!({"items": found.items, "total": found.total}))
                }
            }
        }
        (R::SubjectComments, method @ (M::GET | M::POST)) => {
            let (kind, id) = subject_of(&params)?;
            if method == M::POST {
                let b: NewComment = req.json()?;
                reply(
                    StatusCode::CREATED,
                    &core.comment(&who, kind, id, &b.text).await?,
                )
            } else {
                let (page, per_page) = page_of(&req)?;
                let found = core.comments(&who, kind, Some(id), page, per_page).await?;
                ok(&json!({"items": found.items, "total": found.total}))
            }
        }
        (R::MyReactions, M::GET) => {
            let kind = query_kind(&req)?;
            let reaction = req
                .query("reaction")
                .and_then(Reaction::parse)
                .ok_or_else(|| {
                    ApiError::invalid("reaction must be like, dislike, favorite, view or follow")
                })?;
            let (page, per_page) = page_of(&req)?;
            let found = core
                .reactions(&who, kind, None, reaction, page, per_page)
                .await?;
            ok(&json!({"items": found.items, "total": found.total}))
        }
        (R::MyComments, M::GET) => {
            let kind = query_kind(&req)?;
            let (page, per_page) = page_of(&req)?;
            let found = core.comments(&who, kind, None, page, per_page).await?;
            ok(&json!({"items": found.items, "total": found.total}))
        }
        (R::Comment, M::DELETE) => {
            core.delete_comment(&who, path_id(&params)?).await?;
            no_content()
        }
        (R::InboxOffers, M::POST) => {
            let store = path_id(&params)?;
            reply(
                StatusCode::CREATED,
                &core
                    .make_offer(&who, store, req.json::<NewOffer>()?)
                    .await?,
            )
        }
        (R::Offers, M::GET) => {
            let (page, per_page) = page_of(&req)?;
            let found = core.offers(&who, page, per_page).await?;
            ok(&json!({"items": found.items, "total": found.total}))
        }
        (R::OfferRead, M::POST) => ok(&core.read_offer(&who, path_id(&params)?).await?),
        (R::CannedResponses, M::POST) => reply(
            StatusCode::CREATED,
            &core.create_canned(&who, req.json::<NewCanned>()?).await?,
        ),
        (R::CannedResponses, M::GET) => items(
            core.list_canned(&who, req.query("q"), req.query_num("inbox_id")?)
                .await?,
        ),
        (R::CannedResponse, M::GET) => ok(&core.canned(&who, path_id(&params)?).await?),
        (R::CannedResponse, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .update_canned(&who, id, req.json::<CannedPatch>()?)
                .await?)
        }
        (R::CannedResponse, M::DELETE) => {
            core.delete_canned(&who, path_id(&params)?).await?;
            no_content()
        }
        (R::CannedRender, M::POST) => {
            let id = path_id(&params)?;
            let b: RenderCanned = req.json()?;
            ok(&json!({ "text": core.render_canned(&who, id, b.chat_id).await? }))
        }
        (R::Search, M::GET) => ok(&core
            .search(
                &who,
                req.query("q"),
                req.query("before"),
                req.query_num("limit")?,
            )
            .await?),
        (R::InboxReport, M::GET) => {
            let id = path_id(&params)?;
            ok(&core
                .inbox_report(&who, id, req.query_num("from")?, req.query_num("to")?)
                .await?)
        }
        (R::MyPassword, M::PUT) => {
            let b: NewPassword = req.json()?;
            core.set_customer_password(&who, b.current.as_deref(), &b.new)
                .await?;
            no_content()
        }
        (R::CustomerSessions, M::DELETE) => {
            let customer = Person::Customer(path_id(&params)?);
            core.revoke_sessions(&who, customer).await?;
            no_content()
        }

        (R::Chats, M::POST) => {
            let b: OpenChat = req.json()?;
            let (chat, created) = core.open_chat(&who, b.inbox_id).await?;
            created_or_ok(created, &chat)
        }
        (R::Chats, M::GET) => ok(&core
            .list_chats(
                &who,
                &chat_filter(&req, &who)?,
                req.query("before"),
                req.query_num("limit")?,
            )
            .await?),
        (R::ChatQueue, M::GET) => ok(&core.queue_place(&who, path_id(&params)?).await?),
        (R::ChatTransfer, M::POST) => {
            let id = path_id(&params)?;
            ok(&core
                .transfer_chat(&who, id, req.json::<Transfer>()?)
                .await?)
        }
        (R::ChatUnassign, M::POST) => ok(&core.unassign_chat(&who, path_id(&params)?).await?),
        (R::ChatSnooze, M::POST) => {
            let id = path_id(&params)?;
            let snooze = if req.body_is_empty() {
                Snooze::default()
            } else {
                req.json::<Snooze>()?
            };
            ok(&core.snooze_chat(&who, id, snooze).await?)
        }
        (R::ChatSnooze, M::DELETE) => ok(&core.wake_chat(&who, path_id(&params)?).await?),
        (R::ChatNotes, M::GET) => {
            let id = path_id(&params)?;
            ok(&core
                .notes(&who, id, req.query_num("after")?, req.query_num("limit")?)
                .await?)
        }
        (R::ChatNotes, M::POST) => {
            let id = path_id(&params)?;
            let note = core.add_note(&who, id, req.json::<NewNote>()?).await?;
            reply(StatusCode::CREATED, &note)
        }
        (R::ChatLabels, M::PUT) => {
            let id = path_id(&params)?;
            ok(&core
                .set_chat_labels(&who, id, req.json::<Labels>()?)
                .await?)
        }
        (R::ChatAttributes, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .patch_chat_attributes(&who, id, req.json::<AttributesPatch>()?)
                .await?)
        }
        (R::CustomerLabels, M::GET) => ok(&core.customer_tags(&who, path_id(&params)?).await?),
        (R::CustomerLabels, M::PUT) => {
            let id = path_id(&params)?;
            ok(&core
                .set_customer_labels(&who, id, req.json::<Labels>()?)
                .await?)
        }
        (R::CustomerAttributes, M::PATCH) => {
            let id = path_id(&params)?;
            ok(&core
                .patch_customer_attributes(&who, id, req.json::<AttributesPatch>()?)
                .await?)
        }
        (R::ChatTake, M::POST) => ok(&core.take_chat(&who, path_id(&params)?).await?),
        (R::ChatFinish, M::POST) => ok(&core.finish_chat(&who, path_id(&params)?).await?),
        (R::ChatMessages, M::POST) => {
            let id = path_id(&params)?;
            let (message, created) = core.send(&who, id, req.json::<NewMessage>()?).await?;
            created_or_ok(created, &message)
        }
        (R::ChatMessages, M::GET) => {
            let q = MessageQuery {
                after: req.query_num("after")?,
                before: req.query_num("before")?,
                limit: req.query_num("limit")?,
            };
            let id = path_id(&params)?;
            match req.query_num::<u64>("wait")? {
                None => ok(&core.messages(&who, id, q).await?),
                Some(wait) => ok(&long_poll(app, &who, id, q, wait).await?),
            }
        }
        (R::ChatReceipts, M::POST) => {
            let id = path_id(&params)?;
            let b: Mark = req.json()?;
            ok(&core.mark(&who, id, b.received, b.read).await?)
        }

        _ => Err(ApiError::method_not_allowed(allow)),
    }
}

/// The polling fallback: messages after a seq, waiting up to `wait` seconds (at most 30)
/// for the first one to be committed. Woken by the same bus as the sockets.
async fn long_poll(
    app: &Api,
    who: &Principal,
    chat_id: i64,
    q: MessageQuery,
    wait: u64,
) -> Result<crate::domain::MessagePage, ApiError> {
    if wait > 30 {
        return Err(ApiError::invalid("wait must be at most 30 seconds"));
    }
    if q.after.is_none() {
        return Err(ApiError::invalid("wait needs after: the last seq you have"));
    }
    let hub = &*app.hub;
    /// Forgets the chat's waiter entry however the request ends (a client that hangs up
    /// drops this future mid-wait). Declared before the receiver so it drops after it.
    struct Forget<'a>(&'a crate::hub::Hub, i64);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.forget_waiter(self.1);
        }
    }
    let _forget = Forget(hub, chat_id);
    // Subscribe before reading, so that a commit between the read and the wait still wakes us.
    let mut woken = hub.waiter(chat_id);
    let page = app.core.messages(who, chat_id, q).await?;
    // A stopping server answers (with what there is) rather than hold up its stop.
    if !page.items.is_empty() || wait == 0 || hub.is_stopping() {
        return Ok(page);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(wait), woken.changed()).await;
    Ok(app.core.messages(who, chat_id, q).await?)
}

/// Who the token belongs to.
async fn me(app: &Api, who: &Principal) -> Reply {
    match *who {
        Principal::Admin { org_id, addon_id } => ok(&json!({
            "kind": "admin", "organisation_id": org_id, "addon_id": addon_id
        })),
        Principal::Operator { operator_id, .. } => ok(&json!({
            "kind": "operator", "operator": app.core.operator(who, operator_id).await?
        })),
        Principal::Customer { customer_id, .. } => ok(&json!({
            "kind": "customer", "customer": app.core.customer(who, customer_id).await?
        })),
    }
}
