//! `/v1/ws`: the WebSocket upgrade and one session per socket.
//!
//! Each socket has two tasks. The reader parses client frames and calls the core (send,
//! received/read, typing, presence, resume). The writer owns the socket's sink and drains
//! the session's bounded queue, keeping every chat in seq order: it skips what it already
//! sent and fills any gap from the database before going on, so a client sees each
//! message once, in order, whatever the bus did.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use super::request::parse_query;
use super::{ApiError, App, HttpResponse};
use crate::bus::encode;
use crate::domain::events::{Event, Person};
use crate::domain::{Error, MessageQuery, NewMessage, OperatorPatch, Presence, Principal};
use crate::hub::{CloseReason, Outbound, Replay, Session};

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Limits of live sockets.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// Frames queued for one socket before it counts as a slow consumer.
    pub queue: usize,
    /// Largest client frame, in bytes.
    pub max_frame_bytes: usize,
    /// Sustained client frames per second (bursts of twice that are allowed).
    pub frames_per_sec: u32,
    /// Interval of server pings.
    pub ping_every: Duration,
    /// A socket silent for this long (no frame, no pong) is dropped.
    pub idle_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            queue: 1024,
            max_frame_bytes: 64 * 1024,
            frames_per_sec: 50,
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

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
            match (chat.parse::<i64>(), seq.parse::<i64>()) {
                (Ok(c), Ok(s)) if c > 0 && s >= 0 => Ok((c, s)),
                _ => Err(ApiError::invalid(
                    "resume must look like 12:5,13:0 (chat:seq)",
                )),
            }
        })
        .collect()
}

/// Answers the upgrade request: 101 and a session, or an HTTP error before any upgrade.
pub async fn upgrade(app: Arc<App>, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
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
    let who = app.core.authenticate(&token).await?;
    let resume = resume_cursors(&req)?;
    if let Principal::Admin { .. } = who {
        return Err(Error::Forbidden("an admin token has no live socket").into());
    }

    let accept = derive_accept_key(key.as_bytes());
    let app2 = app.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(app2.ws.max_frame_bytes))
                    .max_frame_size(Some(app2.ws.max_frame_bytes))
                    // Small buffers: an idle socket should cost little memory. Writes
                    // gather in the write buffer and leave on flush.
                    .read_buffer_size(READ_BUFFER)
                    .write_buffer_size(WRITE_BUFFER);
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                run(app2, who, socket, resume).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut response = HttpResponse::new(http_body_util::Full::new(bytes::Bytes::new()));
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

fn person_of(who: &Principal) -> Option<Person> {
    match *who {
        Principal::Customer { customer_id, .. } => Some(Person::Customer(customer_id)),
        Principal::Operator { operator_id, .. } => Some(Person::Operator(operator_id)),
        Principal::Admin { .. } => None,
    }
}

#[derive(Serialize)]
struct ReadyChat {
    id: i64,
    last_seq: i64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Reply<'a> {
    Ready {
        session_id: u64,
        chats: &'a [ReadyChat],
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        chat_id: i64,
        local_id: Option<&'a str>,
        message_id: i64,
        seq: i64,
    },
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        chats: &'a HashMap<String, i64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: &'a str,
        message: &'a str,
    },
}

fn error_frame(id: Option<&str>, code: &str, message: &str) -> Utf8Bytes {
    encode(&Reply::Error { id, code, message })
}

fn domain_error_frame(id: Option<&str>, e: Error) -> Utf8Bytes {
    let api = ApiError::from(e);
    error_frame(id, api.code, &api.message)
}

async fn run(app: Arc<App>, who: Principal, socket: Socket, resume: Vec<(i64, i64)>) {
    let Some(person) = person_of(&who) else {
        return;
    };
    let hub = app.core.bus().hub().clone();
    // Register first, then read the chats: a chat opened in between reaches this session
    // through its person (and is then caught up), rather than being missed.
    let (session, rx) = hub.connect(person, app.ws.queue);
    let chats = match Box::pin(app.core.live_chats(&who)).await {
        Ok(chats) => chats,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a socket's chats");
            hub.disconnect(&session);
            return;
        }
    };
    let mut cursors = HashMap::new();
    for chat in &chats {
        hub.join(&session, chat.id);
        // A reconnecting client starts from what it has, so that live messages arriving
        // before its catch-up are preceded by the missing ones, not followed.
        let from = resume
            .iter()
            .find(|(c, _)| *c == chat.id)
            .map_or(chat.last_seq, |(_, s)| *s);
        cursors.insert(chat.id, from.min(chat.last_seq));
    }
    if let Person::Operator(id) = person {
        Box::pin(app.core.bus().operator_connected(id)).await;
        if let Err(e) = Box::pin(app.core.operator_connected(id)).await {
            tracing::warn!(error = %e, "cannot mark the operator online");
        }
    }
    let ready: Vec<ReadyChat> = chats
        .iter()
        .map(|c| ReadyChat {
            id: c.id,
            last_seq: c.last_seq,
        })
        .collect();
    session.push(Outbound::direct(encode(&Reply::Ready {
        session_id: session.id,
        chats: &ready,
    })));
    // Anything committed between reading the chats and joining their rooms, and whatever a
    // reconnecting client asked for, is caught up from the database first.
    let mut catch_up: Vec<(i64, i64, bool)> =
        chats.iter().map(|c| (c.id, c.last_seq, false)).collect();
    for (chat, seq) in resume {
        match catch_up.iter_mut().find(|(c, _, _)| *c == chat) {
            Some(entry) => *entry = (chat, seq, true),
            None => catch_up.push((chat, seq, true)),
        }
    }
    session.push(Outbound::Resume(Box::new(Replay {
        id: None,
        chats: catch_up,
        rewind: false,
    })));

    let (sink, stream) = socket.split();
    let last_seen = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let writer = {
        let session = session.clone();
        let task = write_loop(
            app.clone(),
            who,
            session.clone(),
            rx,
            sink,
            cursors,
            last_seen.clone(),
            started,
        );
        tokio::spawn(async move {
            task.await;
            // However the writer ended, the reader must stop too.
            session.close(CloseReason::Shutdown);
        })
    };
    let mut stream = stream;
    read_loop(&app, &who, &session, &mut stream, &last_seen, started).await;
    // The reader is done (client closed or broke): stop the writer unless it stopped first.
    session.close(CloseReason::Shutdown);
    let _ = writer.await;
    // Closing handshake: give the client a moment to answer our close before the TCP
    // connection goes, so it reads the close code rather than a reset.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    if hub.disconnect(&session)
        && let Person::Operator(id) = person
        && Box::pin(app.core.bus().operator_disconnected(id)).await
        && let Err(e) = Box::pin(app.core.operator_disconnected(id)).await
    {
        tracing::warn!(error = %e, "cannot mark the operator offline");
    }
}

/// Client frames.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Send {
        #[serde(default)]
        id: Option<String>,
        chat_id: i64,
        #[serde(default)]
        local_id: Option<String>,
        #[serde(default)]
        payload: Option<String>,
        #[serde(default)]
        text: String,
        #[serde(default)]
        file_id: Option<String>,
    },
    Received {
        #[serde(default)]
        id: Option<String>,
        chat_id: i64,
        seq: i64,
    },
    Read {
        #[serde(default)]
        id: Option<String>,
        chat_id: i64,
        seq: i64,
    },
    Typing {
        #[serde(default)]
        id: Option<String>,
        chat_id: i64,
        #[serde(default = "yes")]
        typing: bool,
    },
    Resume {
        #[serde(default)]
        id: Option<String>,
        chats: HashMap<String, i64>,
    },
    Presence {
        #[serde(default)]
        id: Option<String>,
        presence: Presence,
    },
}

fn yes() -> bool {
    true
}

/// The `id` of a frame that failed to parse, if it has one, so the error can name it.
fn frame_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// A token bucket: `rate` frames a second, bursts up to twice that.
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate * 2.0,
            at: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn read_loop(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    stream: &mut SplitStream<Socket>,
    last_seen: &AtomicI64,
    started: Instant,
) {
    let mut limit = RateLimit::new(app.ws.frames_per_sec);
    let mut last_typing: HashMap<i64, Instant> = HashMap::new();
    // One close watch for the socket's life, not one per frame.
    let closed = session.close_requested();
    tokio::pin!(closed);
    // Answers to sends, in the order the sends came: a client may send again before its
    // last send is committed, and the sends are stored in that order.
    let mut pending: VecDeque<PendingReply<'_>> = VecDeque::new();
    loop {
        let next = tokio::select! {
            frame = stream.next(), if pending.len() < MAX_PIPELINED => Next::Frame(frame),
            reply = first_reply(&mut pending), if !pending.is_empty() => Next::Replied(reply),
            _ = &mut closed => Next::Closed,
        };
        let frame = match next {
            Next::Frame(frame) => frame,
            Next::Replied(reply) => {
                pending.pop_front();
                session.push(Outbound::direct(reply));
                continue;
            }
            Next::Closed => return,
        };
        let text = match frame {
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                session.close(CloseReason::TooBig);
                return;
            }
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
            Some(Ok(msg)) => {
                last_seen.store(started.elapsed().as_millis() as i64, Ordering::Relaxed);
                match msg {
                    WsMessage::Text(text) => text,
                    WsMessage::Binary(_) => {
                        session.push(Outbound::direct(error_frame(
                            None,
                            "bad_frame",
                            "send JSON text frames",
                        )));
                        continue;
                    }
                    _ => continue,
                }
            }
        };
        if !limit.allow() {
            let id = frame_id(&text);
            session.push(Outbound::direct(error_frame(
                id.as_deref(),
                "rate_limited",
                "too many frames; slow down",
            )));
            continue;
        }
        let frame: ClientFrame = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let id = frame_id(&text);
                session.push(Outbound::direct(error_frame(
                    id.as_deref(),
                    "bad_frame",
                    &e.to_string(),
                )));
                continue;
            }
        };
        // Boxed, as are the socket tasks' other rare or large steps: a task's future is as
        // big as its biggest step, and every idle socket would carry that size.
        if let Some(reply) = Box::pin(handle(app, who, session, frame, &mut last_typing)).await {
            pending.push_back(reply);
        }
    }
}

/// Most sends of one socket waiting for their commit; past this the socket is not read.
const MAX_PIPELINED: usize = 32;

/// The answer to a send, ready once its commit is.
type PendingReply<'a> = Pin<Box<dyn Future<Output = Utf8Bytes> + Send + 'a>>;

/// What the reader does next.
enum Next {
    Frame(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Replied(Utf8Bytes),
    Closed,
}

/// The answer to the oldest waiting send. Sends commit in order, so waiting on the oldest
/// loses nothing.
async fn first_reply(pending: &mut VecDeque<PendingReply<'_>>) -> Utf8Bytes {
    std::future::poll_fn(|cx| match pending.front_mut() {
        Some(reply) => reply.as_mut().poll(cx),
        None => Poll::Pending,
    })
    .await
}

/// The ack of a send, or its error.
fn send_reply(
    id: Option<&str>,
    chat_id: i64,
    sent: Result<(crate::domain::Message, bool), Error>,
) -> Utf8Bytes {
    match sent {
        Ok((m, _)) => encode(&Reply::Ack {
            id,
            chat_id,
            local_id: m.local_id.as_deref(),
            message_id: m.id,
            seq: m.seq,
        }),
        Err(e) => domain_error_frame(id, e),
    }
}

/// Handles one client frame. A send returns its answer to come, which the reader sends
/// when it is ready, in order; every other frame is done when this returns.
async fn handle<'a>(
    app: &'a App,
    who: &'a Principal,
    session: &Arc<Session>,
    frame: ClientFrame,
    last_typing: &mut HashMap<i64, Instant>,
) -> Option<PendingReply<'a>> {
    let core = &app.core;
    match frame {
        ClientFrame::Send {
            id,
            chat_id,
            local_id,
            payload,
            text,
            file_id,
        } => {
            let new = NewMessage {
                local_id,
                payload,
                text,
                file_id,
            };
            // A socket in the chat's room has been shown the chat: no need to read it
            // again, and the send is queued now and answered when committed.
            if session.in_chat(chat_id) {
                let queued = core.queue_send(who, chat_id, new).await;
                return Some(Box::pin(async move {
                    let sent = match queued {
                        Ok(commit) => commit.await,
                        Err(e) => Err(e),
                    };
                    send_reply(id.as_deref(), chat_id, sent)
                }));
            }
            let sent = core.send(who, chat_id, new).await;
            let reply = send_reply(id.as_deref(), chat_id, sent);
            return Some(Box::pin(std::future::ready(reply)));
        }
        ClientFrame::Received { id, chat_id, seq } => {
            if let Err(e) = core.mark(who, chat_id, Some(seq), None).await {
                session.push(Outbound::direct(domain_error_frame(id.as_deref(), e)));
            }
        }
        ClientFrame::Read { id, chat_id, seq } => {
            if let Err(e) = core.mark(who, chat_id, None, Some(seq)).await {
                session.push(Outbound::direct(domain_error_frame(id.as_deref(), e)));
            }
        }
        ClientFrame::Typing {
            id,
            chat_id,
            typing,
        } => {
            if !session.in_chat(chat_id) {
                session.push(Outbound::direct(error_frame(
                    id.as_deref(),
                    "not_found",
                    "chat not found",
                )));
                return None;
            }
            // At most one typing signal per chat per second from a socket; extras are dropped.
            let now = Instant::now();
            if last_typing
                .get(&chat_id)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
                && typing
            {
                return None;
            }
            last_typing.insert(chat_id, now);
            core.bus().publish(Event::Typing {
                chat_id,
                who: session.person,
                typing,
            });
        }
        ClientFrame::Resume { id, chats } => {
            let mut list = Vec::new();
            for (chat, seq) in chats {
                match chat.parse::<i64>() {
                    Ok(c) if c > 0 && seq >= 0 => list.push((c, seq, true)),
                    _ => {
                        session.push(Outbound::direct(error_frame(
                            id.as_deref(),
                            "invalid",
                            "chats maps chat ids to seqs >= 0",
                        )));
                        return None;
                    }
                }
            }
            session.push(Outbound::Resume(Box::new(Replay {
                id,
                chats: list,
                rewind: true,
            })));
        }
        ClientFrame::Presence { id, presence } => {
            let Principal::Operator { operator_id, .. } = *who else {
                session.push(Outbound::direct(error_frame(
                    id.as_deref(),
                    "forbidden",
                    "only an operator has a presence",
                )));
                return None;
            };
            let patch = OperatorPatch {
                presence: Some(presence),
                ..Default::default()
            };
            if let Err(e) = core.update_operator(who, operator_id, patch).await {
                session.push(Outbound::direct(domain_error_frame(id.as_deref(), e)));
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)] // one task's whole state, handed over once
async fn write_loop(
    app: Arc<App>,
    who: Principal,
    session: Arc<Session>,
    mut rx: tokio::sync::mpsc::Receiver<Outbound>,
    mut sink: SplitSink<Socket, WsMessage>,
    mut cursors: HashMap<i64, i64>,
    last_seen: Arc<AtomicI64>,
    started: Instant,
) {
    let mut ping = tokio::time::interval(app.ws.ping_every);
    ping.tick().await;
    let closed = session.close_requested();
    tokio::pin!(closed);
    let reason = loop {
        let out = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => out,
                None => break CloseReason::Shutdown,
            },
            reason = &mut closed => break reason,
            _ = ping.tick() => {
                let idle = started.elapsed().as_millis() as i64 - last_seen.load(Ordering::Relaxed);
                if idle > app.ws.idle_timeout.as_millis() as i64 {
                    break CloseReason::Timeout;
                }
                if !(put(&mut sink, WsMessage::Ping(bytes::Bytes::new())).await
                    && flush(&mut sink).await)
                {
                    return;
                }
                continue;
            }
        };
        // Whatever else is already queued goes out with this frame, in one flush.
        let mut sent = write_one(&app, &who, &session, &mut sink, &mut cursors, out).await;
        let mut taken = 1;
        while sent && taken < WRITE_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            sent = write_one(&app, &who, &session, &mut sink, &mut cursors, more).await;
            taken += 1;
        }
        if !(sent && flush(&mut sink).await) {
            // The socket failed, or the database did mid catch-up: either way this socket
            // cannot go on without a gap, so it closes and the client resumes.
            break CloseReason::Unavailable;
        }
    };
    let close = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from_static(reason.text()),
    };
    let _ = put(&mut sink, WsMessage::Close(Some(close))).await;
    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
}

/// Writes one queued item into the socket's buffer (not flushed), keeping each chat in seq
/// order; false if the socket failed, or the database did mid catch-up.
async fn write_one(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    sink: &mut SplitSink<Socket, WsMessage>,
    cursors: &mut HashMap<i64, i64>,
    out: Outbound,
) -> bool {
    match out {
        Outbound::Direct(frame) => put(sink, WsMessage::Text(*frame)).await,
        Outbound::Event(env) => match env.ordered() {
            None => put(sink, WsMessage::Text(env.frame.clone())).await,
            Some((chat_id, seq)) => {
                let cursor = cursors.get(&chat_id).copied().unwrap_or(0);
                if seq <= cursor {
                    return true; // already sent
                }
                // A gap (the bus lost or reordered events) is filled from the database.
                let gapless = seq == cursor + 1
                    || Box::pin(catch_up(app, who, sink, chat_id, cursor, seq - 1, cursors)).await;
                cursors.insert(chat_id, seq);
                gapless && put(sink, WsMessage::Text(env.frame.clone())).await
            }
        },
        Outbound::Recheck => {
            Box::pin(recheck(app, who, session, cursors)).await;
            true
        }
        Outbound::Resync(only) => {
            if only.is_none()
                && let Ok(live) = Box::pin(app.core.live_chats(who)).await
            {
                // Chats opened while the bus was away were never announced here.
                for chat in live {
                    if !session.in_chat(chat.id) {
                        app.core.bus().hub().join(session, chat.id);
                        cursors.entry(chat.id).or_insert(0);
                    }
                }
            }
            let chats: Vec<(i64, i64)> = cursors
                .iter()
                .filter(|(chat, _)| only.is_none_or(|c| c == **chat))
                .map(|(chat, seq)| (*chat, *seq))
                .collect();
            let mut ok = true;
            for (chat_id, from) in chats {
                ok = ok
                    && Box::pin(catch_up(app, who, sink, chat_id, from, i64::MAX, cursors)).await;
            }
            ok
        }
        Outbound::Resume(replay) => {
            let Replay { id, chats, rewind } = *replay;
            let request = ResumeRequest {
                id: id.as_deref(),
                chats,
                rewind,
            };
            Box::pin(resume(app, who, session, sink, request, cursors)).await
        }
    }
}

/// Sends the messages of `chat_id` after `from` up to `to` (or to the newest when `to`
/// is None) from the database, and moves the cursor. Returns false if the socket failed.
async fn catch_up(
    app: &App,
    who: &Principal,
    sink: &mut SplitSink<Socket, WsMessage>,
    chat_id: i64,
    from: i64,
    to: i64,
    cursors: &mut HashMap<i64, i64>,
) -> bool {
    let mut after = from;
    while after < to {
        let q = MessageQuery {
            after: Some(after),
            before: None,
            limit: Some(500),
        };
        let page = match app.core.messages(who, chat_id, q).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, chat_id, "catch-up failed");
                return false;
            }
        };
        if page.items.is_empty() {
            break;
        }
        for m in page.items.iter().filter(|m| m.seq <= to) {
            let frame = crate::bus::Envelope::of(&Event::Message(m.clone())).frame;
            if !put(sink, WsMessage::Text(frame)).await {
                return false;
            }
            after = m.seq;
        }
        if !page.has_more {
            break;
        }
    }
    cursors.insert(chat_id, after.max(from));
    true
}

/// Leaves the rooms of chats the socket may no longer see and joins the open chats it may
/// now see (from their newest seq, as at connect).
async fn recheck(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    cursors: &mut HashMap<i64, i64>,
) {
    let hub = app.core.bus().hub();
    let Ok(live) = app.core.live_chats(who).await else {
        return;
    };
    for chat_id in session.chat_ids() {
        if live.iter().any(|c| c.id == chat_id) {
            continue;
        }
        // Not open, or not visible: only the second is a reason to leave.
        if let Err(Error::NotFound(_)) = app.core.chat(who, chat_id).await {
            hub.leave(session, chat_id);
            cursors.remove(&chat_id);
        }
    }
    for chat in live {
        if !session.in_chat(chat.id) {
            hub.join(session, chat.id);
            cursors.entry(chat.id).or_insert(chat.last_seq);
        }
    }
}

/// A catch-up asked for: at connect (`rewind` false: never before what was sent) or by a
/// client's resume frame (`rewind` true: replay from its seq, even what was sent).
struct ResumeRequest<'a> {
    id: Option<&'a str>,
    chats: Vec<(i64, i64, bool)>,
    rewind: bool,
}

async fn resume(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    sink: &mut SplitSink<Socket, WsMessage>,
    request: ResumeRequest<'_>,
    cursors: &mut HashMap<i64, i64>,
) -> bool {
    let id = request.id;
    let mut done = HashMap::new();
    for (chat_id, from, with_receipts) in request.chats {
        let chat = match app.core.chat(who, chat_id).await {
            Ok(chat) => chat,
            Err(e) => {
                if !put(sink, WsMessage::Text(domain_error_frame(id, e))).await {
                    return false;
                }
                continue;
            }
        };
        if !session.in_chat(chat_id) {
            // A finished or not yet followed chat the caller can see: follow it now.
            app.core.bus().hub().join(session, chat_id);
        }
        // A seq past the end would skip messages to come: start at the end instead.
        let mut from = from.min(chat.last_seq);
        if !request.rewind {
            from = from.max(cursors.get(&chat_id).copied().unwrap_or(0));
        }
        if !catch_up(app, who, sink, chat_id, from, i64::MAX, cursors).await {
            return false;
        }
        if with_receipts && let Ok(receipts) = app.core.chat_receipts(who, chat_id).await {
            for r in receipts {
                let frame = crate::bus::Envelope::of(&Event::Receipt {
                    chat_id,
                    member: r.member,
                    received_seq: r.received_seq,
                    read_seq: r.read_seq,
                })
                .frame;
                if !put(sink, WsMessage::Text(frame)).await {
                    return false;
                }
            }
        }
        done.insert(
            chat_id.to_string(),
            cursors.get(&chat_id).copied().unwrap_or(from),
        );
    }
    put(
        sink,
        WsMessage::Text(encode(&Reply::Resumed { id, chats: &done })),
    )
    .await
}

/// What a socket reads at a time (tungstenite's default is 128 KiB, allocated per socket).
const READ_BUFFER: usize = 2 * 1024;

/// Frames gather up to this much before being written, unless flushed sooner.
const WRITE_BUFFER: usize = 8 * 1024;

/// How long one frame may take to leave: a client that stops reading (its TCP window
/// full) would otherwise hold its session forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Queues one frame in the socket's write buffer (which writes out once it is full); false
/// if the socket failed or the frame could not be queued in time. [`flush`] sends the rest.
async fn put(sink: &mut SplitSink<Socket, WsMessage>, msg: WsMessage) -> bool {
    within_send_timeout(sink.feed(msg)).await
}

/// Writes out what [`put`] queued; false if the socket failed or it could not leave in time.
async fn flush(sink: &mut SplitSink<Socket, WsMessage>) -> bool {
    within_send_timeout(sink.flush()).await
}

/// Runs a socket write, with a timer only if it does not finish at once: most frames just
/// go into the buffer, and a timer per frame would cost more than the frame.
async fn within_send_timeout<E>(write: impl Future<Output = Result<(), E>>) -> bool {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(done) => done.is_ok(),
        Poll::Pending => matches!(tokio::time::timeout(SEND_TIMEOUT, write).await, Ok(Ok(()))),
    }
}
