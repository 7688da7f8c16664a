//! The upgrade: a GET with `Upgrade: websocket` and a token becomes a socket on its
//! person's thread, or an HTTP error before any upgrade.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::io::{READ_BUFFER, WRITE_BUFFER};
use super::threads::Conn;
use super::{Sockets, task};
use crate::domain::events::Person;
use crate::domain::{Error, Principal, SignedIn};
use crate::http::{Answering, ApiError, HttpResponse, Slot, parse_id, parse_query};

/// The token of a socket: `Authorization: Bearer`, the `souq_token` cookie, or the `token`
/// query parameter (browsers cannot set headers on a WebSocket).
fn socket_token(req: &Request<Incoming>) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = v.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_owned());
    }
    for cookies in req.headers().get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for pair in cookies.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == "souq_token"
            {
                return Some(value.to_owned());
            }
        }
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    query
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// `?resume=12:5,13:0`: chats the client already has up to a seq.
fn resume_cursors(req: &Request<Incoming>) -> Result<Vec<(i64, i64)>, ApiError> {
    let query = parse_query(req.uri().query().unwrap_or(""));
    let Some((_, spec)) = query.into_iter().find(|(k, _)| k == "resume") else {
        return Ok(Vec::new());
    };
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (chat, seq) = pair.split_once(':').unwrap_or((pair, ""));
            let seq = seq
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| seq.parse::<i64>());
            match (parse_id(chat), seq) {
                (Some(c), Some(Ok(s))) => Ok((c, s)),
                _ => Err(ApiError::invalid(
                    "resume must look like 12:5,13:0 (chat:seq)",
                )),
            }
        })
        .collect()
}

/// Answers the upgrade request: 101 and a session, or an HTTP error before any upgrade.
pub async fn upgrade(
    app: Arc<Sockets>,
    mut req: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade && req.method() == hyper::Method::GET, key) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "this is the WebSocket endpoint: send a GET with Upgrade: websocket",
        ));
    };
    let token = socket_token(&req)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing token"))?;
    let signed_in = app.core.sign_in_with(&token).await?;
    let who = &signed_in.who;
    let resume = resume_cursors(&req)?;
    if let Principal::Admin { .. } = *who {
        return Err(Error::Forbidden("an admin token has no live socket").into());
    }

    let accept = derive_accept_key(key.as_bytes());
    let home = person_of(who).and_then(|p| app.threads.of(p)).cloned();
    // The socket keeps its connection's place among the node's connections.
    let slot = req.extensions_mut().remove::<Slot>();
    // Only the upgrade is kept, not the request: the task lives as long as the socket.
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // Always a TCP stream: `serve` hands hyper nothing else.
        let Ok(parts) = upgraded.downcast::<TokioIo<Answering>>() else {
            return tracing::error!("an upgraded connection that is not a TCP stream");
        };
        let (early, tcp) = (parts.read_buf, parts.io.into_inner().into_inner());
        let Some(home) = home else {
            return serve_socket(app, signed_in, Conn::new(early, tcp, slot), resume).await;
        };
        // The stream leaves this runtime's reactor for its thread's, where it is registered
        // again; epoll reports at once whatever arrived in between.
        let moved =
            |e: std::io::Error| tracing::warn!(error = %e, "cannot move a socket to its thread");
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => return moved(e),
        };
        home.spawn(async move {
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => {
                    serve_socket(app, signed_in, Conn::new(early, tcp, slot), resume).await;
                }
                Err(e) => moved(e),
            }
        });
    });
    let mut response = HttpResponse::new(crate::http::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(response)
}

/// Runs the session of an upgraded socket, on whichever runtime calls it.
async fn serve_socket(app: Arc<Sockets>, signed_in: SignedIn, conn: Conn, resume: Vec<(i64, i64)>) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(app.ws.max_frame_bytes))
        .max_frame_size(Some(app.ws.max_frame_bytes))
        // Small buffers: an idle socket should cost little memory. Writes gather in the
        // write buffer and leave on flush.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let socket = WebSocketStream::from_raw_socket(conn, Role::Server, Some(config)).await;
    task::run(app, signed_in, socket, resume).await;
}

pub(super) fn person_of(who: &Principal) -> Option<Person> {
    match *who {
        Principal::Customer { customer_id, .. } => Some(Person::Customer(customer_id)),
        Principal::Operator { operator_id, .. } => Some(Person::Operator(operator_id)),
        Principal::Admin { .. } => None,
    }
}
