//! The Chatwhizz external admin API (`/admin/...`), as its document describes it: an
//! organisation's addon manages operators, domains and assignments with the `access_token`
//! request header, and every answer is `{"status": 1, "data": ...}`. Errors use the same
//! envelope, `{"status": 0, "message": "..."}`, with a fitting HTTP status.
//!
//! Fields are read from a JSON body, a form body, or (for the token call, a GET) the query
//! string, whichever the client sends.

use std::future::Future;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::domain::{
    AssignmentPatch, DomainPatch, Error, NewAssignment, NewDomain, NewOperator, Presence, Principal,
};
use crate::http::{ApiError, HttpResponse, Req, Surface};
use crate::http::{parse_id, parse_query};

/// The Chatwhizz admin API, as the router mounts it.
#[derive(Debug)]
pub(crate) struct Chatwhizz {
    core: std::sync::Arc<crate::domain::Core>,
}

impl Chatwhizz {
    pub(crate) fn new(core: std::sync::Arc<crate::domain::Core>) -> Chatwhizz {
        Chatwhizz { core }
    }
}

impl Surface for Chatwhizz {
    fn handle<'a>(
        &'a self,
        req: Req,
    ) -> std::pin::Pin<Box<dyn Future<Output = HttpResponse> + Send + 'a>> {
        Box::pin(handle(self, req))
    }

    fn refuse(&self, e: ApiError) -> HttpResponse {
        envelope(
            e.status,
            &serde_json::json!({"status": 0, "message": e.message}),
        )
    }
}

type Reply = Result<HttpResponse, ApiError>;

pub(crate) fn envelope(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(crate::http::full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn ok(data: Value) -> Reply {
    Ok(envelope(
        StatusCode::OK,
        &json!({"status": 1, "data": data}),
    ))
}

/// The request's fields: a JSON object, a form (urlencoded or multipart), and the query
/// string (body first).
struct Fields(Map<String, Value>);

impl Fields {
    async fn read(req: &Req) -> Result<Fields, ApiError> {
        let mut map = Map::new();
        for (k, v) in req.query_pairs() {
            map.insert(k.clone(), Value::String(v.clone()));
        }
        let content_type = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = content_type.to_ascii_lowercase();
        // curl's -d says form even for JSON: a body that opens like JSON is read as JSON.
        let looks_json = req.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let is_form = !looks_json && kind.starts_with("application/x-www-form-urlencoded");
        if !looks_json && kind.starts_with("multipart/form-data") {
            // What a PHP or browser form sends by default; its parts are text fields.
            let boundary = multer::parse_boundary(content_type)
                .map_err(|_| ApiError::invalid("multipart/form-data needs a boundary"))?;
            let body = req.body.clone();
            let once = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
            let mut parts = multer::Multipart::new(once, boundary);
            let malformed = |e: multer::Error| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("malformed multipart body: {e}"),
                )
            };
            while let Some(field) = parts.next_field().await.map_err(malformed)? {
                let Some(name) = field.name().map(str::to_owned) else {
                    continue;
                };
                let value = field.text().await.map_err(malformed)?;
                map.insert(name, Value::String(value));
            }
        } else if is_form {
            let text = std::str::from_utf8(&req.body)
                .map_err(|_| ApiError::invalid("the form is not UTF-8"))?;
            for (k, v) in parse_query(text) {
                map.insert(k, Value::String(v));
            }
        } else if !req.body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(body)) => map.extend(body),
                Ok(_) => return Err(ApiError::invalid("the body must be a JSON object")),
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_json",
                        format!("malformed JSON: {e}"),
                    ));
                }
            }
        }
        Ok(Fields(map))
    }

    fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(format!("{name} must be a string"))),
        }
    }

    fn required(&self, name: &str) -> Result<String, ApiError> {
        self.text(name)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::invalid(format!("{name} is required")))
    }

    /// true/false, 1/0, "true"/"false", "1"/"0".
    fn flag(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(Some(true)),
            Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(Some(false)),
            Some(Value::String(s)) => match s.as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(ApiError::invalid(format!("{name} must be true or false"))),
            },
            Some(_) => Err(ApiError::invalid(format!("{name} must be true or false"))),
        }
    }

    fn id(&self, name: &str) -> Result<i64, ApiError> {
        let bad = || ApiError::invalid(format!("{name} must be an operator id"));
        match self.0.get(name) {
            Some(Value::Number(n)) => n.as_i64().ok_or_else(bad),
            Some(Value::String(s)) => parse_id(s).ok_or_else(bad),
            None | Some(Value::Null) => Err(ApiError::invalid(format!("{name} is required"))),
            Some(_) => Err(bad()),
        }
    }
}

fn tokens(t: crate::domain::AdminTokens) -> Value {
    json!({
        "access_token": t.access_token,
        "refresh_token": t.refresh_token,
        "expire_in": t.expires_in,
        "organisation_domain": t.organisation_domain,
    })
}

/// The embed code for a merchant's website: it loads souq's widget for this domain.
fn link(req: &Req, widget_key: &str) -> String {
    let host = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    format!(r#"<script src="//{host}/widget.js" data-souq-key="{widget_key}" async></script>"#)
}

async fn principal(app: &Chatwhizz, req: &Req) -> Result<Principal, ApiError> {
    let token = req
        .headers
        .get("access_token")
        .or_else(|| req.headers.get("access-token"))
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "access_token header is required",
            )
        })?;
    let who = app.core.authenticate(token).await?;
    match who {
        Principal::Admin { .. } => Ok(who),
        _ => Err(Error::Unauthorized("access_token is not an admin token").into()),
    }
}

fn id_segment(s: &str) -> Result<i64, ApiError> {
    parse_id(s).ok_or_else(|| Error::NotFound("operator").into())
}

/// Answers one `/admin/...` request, errors included, in the Chatwhizz envelope.
async fn handle(app: &Chatwhizz, req: Req) -> HttpResponse {
    match route(app, &req).await {
        Ok(response) => response,
        Err(e) => envelope(e.status, &json!({"status": 0, "message": e.message})),
    }
}

async fn route(app: &Chatwhizz, req: &Req) -> Reply {
    let core = &app.core;
    let path: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(2).collect();
    let method = &req.method;
    let f = Fields::read(req).await?;
    match (method, path.as_slice()) {
        (&Method::GET, ["access-token"]) | (&Method::POST, ["access-token"]) => {
            let t = core
                .sign_in(
                    &f.required("email")?,
                    &f.required("password")?,
                    &f.required("organisation_domain")?,
                    &f.required("addon_unique_name")?,
                    req.client,
                )
                .await?;
            ok(tokens(t))
        }
        (&Method::POST, ["access-token", "validate"]) => {
            let addon = f.text("addon_unique_name")?;
            let t = core
                .validate_admin_tokens(
                    &f.required("access_token")?,
                    &f.required("refresh_token")?,
                    addon.as_deref(),
                )
                .await?;
            ok(tokens(t))
        }
        (&Method::POST, ["access-token", "regenerate"]) => {
            let t = core
                .regenerate_admin_tokens(
                    &f.required("access_token")?,
                    &f.required("refresh_token")?,
                )
                .await?;
            ok(tokens(t))
        }
        _ => {
            let who = principal(app, req).await?;
            admin_route(app, req, &who, &f, method, &path).await
        }
    }
}

async fn admin_route(
    app: &Chatwhizz,
    req: &Req,
    who: &Principal,
    f: &Fields,
    method: &Method,
    path: &[&str],
) -> Reply {
    let core = &app.core;
    match (method, path) {
        (&Method::POST, ["operator", "create"]) => {
            let name = [f.text("first_name")?, f.text("last_name")?]
                .into_iter()
                .flatten()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let op = core
                .operator_by_email(
                    who,
                    NewOperator {
                        email: f.required("email")?,
                        name: Some(name),
                        avatar: None,
                    },
                )
                .await?;
            ok(
                json!({"id": op.id, "name": op.name, "email": op.email, "addon_unique_name": core.addon_name(who).await?}),
            )
        }
        (&Method::POST, ["operator", "assign"]) => {
            let domain = core
                .domain_by_name(who, &f.required("domain_name")?)
                .await?;
            let operator_id = f.id("operator_id")?;
            let op = core.operator(who, operator_id).await?;
            let unique_id = f.text("unique_id")?.filter(|u| !u.trim().is_empty());
            let inbox = core.inbox_for(who, domain.id, unique_id.as_deref()).await?;
            let is_admin = f.flag("is_admin")?;
            let new = NewAssignment {
                operator_id,
                inbox_id: inbox.id,
                is_admin: is_admin.unwrap_or(false),
                online: true,
                receiving: true,
            };
            let assignment = match core.create_assignment(who, new).await {
                Err(Error::Conflict(_)) => {
                    let existing = core
                        .list_assignments(who, Some(operator_id), Some(inbox.id), None, Some(1))
                        .await?
                        .pop()
                        .ok_or(Error::NotFound("assignment"))?;
                    match is_admin {
                        Some(v) => {
                            let patch = AssignmentPatch {
                                is_admin: Some(v),
                                ..Default::default()
                            };
                            core.update_assignment(who, existing.id, patch).await?
                        }
                        None => existing,
                    }
                }
                other => other?,
            };
            ok(json!({"operators": {
                "name": op.name, "email": op.email, "userId": op.id,
                "unique_id": inbox.unique_id, "is_admin": assignment.is_admin,
            }}))
        }
        (&Method::PUT, ["operator", "assign", id]) => {
            let operator_id = id_segment(id)?;
            let domain = core
                .domain_by_name(who, &f.required("domain_name")?)
                .await?;
            let unique_id = f.text("unique_id")?;
            let patch = AssignmentPatch {
                is_admin: f.flag("is_admin")?,
                online: f.flag("online_status")?,
                receiving: f.flag("status")?,
            };
            if unique_id.is_none()
                && patch.is_admin.is_none()
                && patch.online.is_none()
                && patch.receiving.is_none()
            {
                return Err(ApiError::invalid(
                    "give at least one of unique_id, is_admin, online_status, status",
                ));
            }
            let mut assignment = core
                .assignment_in_domain(who, operator_id, domain.id)
                .await?;
            let mut inbox = core.inbox(who, assignment.inbox_id).await?;
            if let Some(unique_id) =
                unique_id.filter(|u| Some(u.as_str()) != inbox.unique_id.as_deref())
            {
                inbox = core.inbox_for(who, domain.id, Some(&unique_id)).await?;
                assignment = core.move_assignment(who, assignment.id, inbox.id).await?;
            }
            if patch.is_admin.is_some() || patch.online.is_some() || patch.receiving.is_some() {
                assignment = core.update_assignment(who, assignment.id, patch).await?;
            }
            ok(json!({
                "addon_unique_name": core.addon_name(who).await?,
                "domain_name": domain.name,
                "operators": {
                    "online_status": assignment.online, "unique_id": inbox.unique_id,
                    "is_admin": assignment.is_admin, "status": assignment.receiving,
                },
            }))
        }
        (&Method::PUT, ["operator", "update", id]) => {
            let operator_id = id_segment(id)?;
            let active = f
                .flag("status")?
                .ok_or_else(|| ApiError::invalid("status (0 or 1) is required"))?;
            core.set_operator_active(who, operator_id, active).await?;
            ok(json!("Status Changes Successfully"))
        }
        (&Method::GET, ["operator", id]) => {
            let operator_id = id_segment(id)?;
            let op = core.operator(who, operator_id).await?;
            ok(json!({
                "_id": op.id, "name": op.name, "email": op.email,
                "status": Presence::code(core.presence_in_addon(who, &op).await?),
                "operator": core.operator_active(who, operator_id).await?,
            }))
        }
        (&Method::POST, ["domain", "create"]) => {
            let new = NewDomain {
                name: f.required("domain_name")?,
                email: f.text("email")?,
            };
            let (domain, _) = core.create_domain(who, new).await?;
            ok(json!({
                "name": domain.name, "email": domain.email, "status": domain.active,
                "addon_unique_name": core.addon_name(who).await?,
                "link": link(req, &domain.widget_key),
            }))
        }
        (&Method::PUT, ["domain", "update", name]) => {
            let domain = core.domain_by_name(who, name).await?;
            let patch = DomainPatch {
                name: f.text("name")?,
                email: f.text("email")?,
                active: f.flag("status")?,
                prechat: None,
            };
            let d = core.update_domain(who, domain.id, patch).await?;
            ok(json!({"name": d.name, "status": d.active, "email": d.email}))
        }
        (&Method::GET, ["domain", name]) => {
            let d = core.domain_by_name(who, name).await?;
            ok(json!({"name": d.name, "email": d.email, "status": d.active}))
        }
        _ => Err(ApiError::not_found()),
    }
}
