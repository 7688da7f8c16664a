//! The native live API, `/v1/ws`: the WebSocket upgrade and one session per socket.
//!
//! Each socket is served by one task, on its person's socket thread (`threads`). It parses
//! client frames and calls the core (send, received/read, typing, presence, resume), and
//! it writes what the session's mailbox receives, keeping every chat in seq order: it skips
//! what it already sent and fills any gap from the database before going on, so a client
//! sees each message once, in order, whatever the bus did. Whatever is ready is written
//! before one flush.
//!
//! One task rather than a reader and a writer: half the tasks, no lock around the socket,
//! and an answer to a send goes out in the same flush as the message it answers. The
//! heartbeat comes through the mailbox too (see `http::heartbeat`), so an idle socket
//! holds no timer; it is its task, its buffers and its place in the hub.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

mod threads;

use self::threads::Conn;
pub use self::threads::SocketThreads;
use crate::bus::Bus;
use crate::domain::events::{Event, Person};
use crate::domain::{Core, Error, MessageQuery, NewMessage, OperatorPatch, Presence, Principal};
use crate::http::{ApiError, HttpResponse, parse_query};
use crate::hub::{CloseReason, Envelope, Outbound, Replay, Session, encode};

/// The path of the socket.
pub const PATH: &str = "/v1/ws";

/// The live sockets of this node: what their sessions reach, and their limits.
#[derive(Debug)]
pub struct Sockets {
    core: Arc<Core>,
    bus: Bus,
    ws: WsLimits,
    /// The threads live sockets run on.
    threads: SocketThreads,
}

impl Sockets {
    /// Sockets served with `threads`, and their heartbeat (until they are dropped).
    pub fn start(core: Arc<Core>, bus: Bus, ws: WsLimits, threads: SocketThreads) -> Arc<Sockets> {
        let sockets = Arc::new(Sockets {
            core,
            bus,
            ws,
            threads,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&sockets)));
        sockets
    }
}

type App = Sockets;

/// Pings every live socket once per `ping_every`, a slice of them at a time, until the
/// sockets are dropped. A socket silent for longer than the idle timeout closes on its ping.
async fn heartbeat(app: std::sync::Weak<Sockets>) {
    const SLICES: u32 = 16;
    let Some(every) = app.upgrade().map(|a| a.ws.ping_every / SLICES) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for slice in (0..u64::from(SLICES)).cycle() {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.bus.hub().heartbeat(slice, u64::from(SLICES));
    }
}

type Socket = WebSocketStream<Conn>;

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
    let (who, expires_at) = app.core.authenticate_until(&token).await?;
    let resume = resume_cursors(&req)?;
    if let Principal::Admin { .. } = who {
        return Err(Error::Forbidden("an admin token has no live socket").into());
    }

    let accept = derive_accept_key(key.as_bytes());
    let home = person_of(&who).and_then(|p| app.threads.of(p)).cloned();
    // Only the upgrade is kept, not the request: the task lives as long as the socket.
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        // Always a TCP stream: `serve` hands hyper nothing else.
        let Ok(parts) = upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() else {
            return tracing::error!("an upgraded connection that is not a TCP stream");
        };
        let (early, tcp) = (parts.read_buf, parts.io.into_inner());
        let Some(home) = home else {
            return serve_socket(app, who, expires_at, Conn::new(early, tcp), resume).await;
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
                Ok(tcp) => serve_socket(app, who, expires_at, Conn::new(early, tcp), resume).await,
                Err(e) => moved(e),
            }
        });
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

/// Runs the session of an upgraded socket, on whichever runtime calls it.
async fn serve_socket(
    app: Arc<App>,
    who: Principal,
    expires_at: i64,
    conn: Conn,
    resume: Vec<(i64, i64)>,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(app.ws.max_frame_bytes))
        .max_frame_size(Some(app.ws.max_frame_bytes))
        // Small buffers: an idle socket should cost little memory. Writes gather in the
        // write buffer and leave on flush.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let socket = WebSocketStream::from_raw_socket(conn, Role::Server, Some(config)).await;
    run(app, who, expires_at, socket, resume).await;
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

/// The socket's one task: it registers the session, then reads client frames, writes
/// what the session's mailbox receives and the answers to sends, and flushes once nothing
/// more is ready, until either side closes.
async fn run(
    app: Arc<App>,
    who: Principal,
    expires_at: i64,
    mut socket: Socket,
    resume: Vec<(i64, i64)>,
) {
    let Some(person) = person_of(&who) else {
        return;
    };
    let hub = app.bus.hub().clone();
    // Register first, then read the chats: a chat opened in between reaches this session
    // through its person (and is then caught up), rather than being missed.
    let session = hub.connect(person, app.ws.queue);
    let Some(cursors) = Box::pin(start(&app, &who, &session, resume)).await else {
        hub.disconnect(&session);
        return;
    };
    let reason = serve(&app, &who, expires_at, &session, &mut socket, cursors).await;
    Box::pin(close(&mut socket, reason)).await;
    if hub.disconnect(&session)
        && let Person::Operator(id) = person
        && Box::pin(app.bus.operator_disconnected(id)).await
        && let Err(e) = Box::pin(app.core.operator_disconnected(id)).await
    {
        tracing::warn!(error = %e, "cannot mark the operator offline");
    }
}

/// Joins the rooms of the caller's chats and queues the ready frame and the catch-up.
/// Returns the seq each chat's catch-up starts from, or `None` if the chats cannot be read.
async fn start(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    resume: Vec<(i64, i64)>,
) -> Option<HashMap<i64, i64>> {
    let hub = app.bus.hub();
    let chats = match app.core.live_chats(who).await {
        Ok(chats) => chats,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a socket's chats");
            return None;
        }
    };
    let mut cursors = HashMap::new();
    for chat in &chats {
        hub.join(session, chat.id);
        // A reconnecting client starts from what it has, so that live messages arriving
        // before its catch-up are preceded by the missing ones, not followed.
        let from = resume
            .iter()
            .find(|(c, _)| *c == chat.id)
            .map_or(chat.last_seq, |(_, s)| *s);
        cursors.insert(chat.id, from.min(chat.last_seq));
    }
    if let Person::Operator(id) = session.person {
        app.bus.operator_connected(id).await;
        if let Err(e) = app.core.operator_connected(id).await {
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
    Some(cursors)
}

/// Sends our close frame, then gives the client a moment to answer it before the TCP
/// connection goes, so that it reads the close code rather than a reset. Bounded as a
/// whole: a slow consumer's socket may not even take the close frame.
async fn close(socket: &mut Socket, reason: CloseReason) {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from_static(reason.text()),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        // Refused when the client closed first; tungstenite has then answered it already.
        let _ = socket.send(WsMessage::Close(Some(frame))).await;
        while let Some(Ok(msg)) = socket.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}

/// How long closing a socket may take: sending our close frame and reading the answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What became ready for the socket's task.
enum Ready {
    /// Answers to sends (oldest first), mail, and at most one client frame.
    Work,
    /// Nothing else is ready, and frames wait in the write buffer.
    Flush,
    /// The session is closing (everything queued before has been taken).
    Close(CloseReason),
}

/// Serves the socket until it closes; returns why.
async fn serve(
    app: &App,
    who: &Principal,
    expires_at: i64,
    session: &Arc<Session>,
    socket: &mut Socket,
    mut cursors: HashMap<i64, i64>,
) -> CloseReason {
    let mut limit = RateLimit::new(app.ws.frames_per_sec);
    let mut last_typing: HashMap<i64, Instant> = HashMap::new();
    let mut last_seen = Instant::now();
    // Answers to sends, in the order the sends came: a client may send again before its
    // last send is committed, and the sends are stored in that order.
    let mut pending: VecDeque<PendingReply<'_>> = VecDeque::new();
    // Answers to marks, in any order.
    let mut marks: Vec<PendingReply<'_>> = Vec::new();
    let mut replies: Vec<Utf8Bytes> = Vec::new();
    let mut mail: VecDeque<Outbound> = VecDeque::new();
    let mut frame = None;
    let mut unflushed = false;
    loop {
        let ready = std::future::poll_fn(|cx| {
            // Sends commit in order, so waiting on the oldest loses nothing.
            while let Some(reply) = pending.front_mut() {
                let Poll::Ready(reply) = reply.as_mut().poll(cx) else {
                    break;
                };
                pending.pop_front();
                replies.extend(reply);
            }
            marks.retain_mut(|mark| match mark.as_mut().poll(cx) {
                Poll::Ready(reply) => {
                    replies.extend(reply);
                    false
                }
                Poll::Pending => true,
            });
            let closing = match session.poll_mail(cx, &mut mail) {
                Poll::Ready(Err(reason)) => Some(reason),
                Poll::Ready(Ok(())) | Poll::Pending => None,
            };
            // Past this many unanswered sends (or marks) the client is not read.
            if pending.len() < MAX_PIPELINED
                && marks.len() < MAX_PIPELINED
                && let Poll::Ready(next) = socket.poll_next_unpin(cx)
            {
                frame = Some(next);
            }
            if !replies.is_empty() || !mail.is_empty() || frame.is_some() {
                Poll::Ready(Ready::Work)
            } else if let Some(reason) = closing {
                Poll::Ready(Ready::Close(reason))
            } else if unflushed {
                Poll::Ready(Ready::Flush)
            } else {
                Poll::Pending
            }
        })
        .await;
        match ready {
            Ready::Close(reason) => return reason,
            Ready::Flush => {
                if !flush(socket).await {
                    return CloseReason::Unavailable;
                }
                unflushed = false;
                continue;
            }
            Ready::Work => {}
        }
        // Mail first: a send's message is published before its answer is ready, so the
        // sender's device gets the message, then the ack.
        while let Some(out) = mail.pop_front() {
            if let Outbound::Ping = out {
                if last_seen.elapsed() > app.ws.idle_timeout {
                    return CloseReason::Timeout;
                }
                // Checked at each heartbeat: a token that expires mid-socket ends it then.
                if app.core.now_ms() >= expires_at {
                    return CloseReason::Expired;
                }
            }
            // A failed write, or a database failure mid catch-up: this socket cannot go
            // on without a gap, so it closes and the client resumes.
            if !write_one(app, who, session, socket, &mut cursors, out).await {
                return CloseReason::Unavailable;
            }
            unflushed = true;
        }
        for reply in replies.drain(..) {
            if !put(socket, WsMessage::Text(reply)).await {
                return CloseReason::Unavailable;
            }
            unflushed = true;
        }
        let Some(next) = frame.take() else { continue };
        let text = match next {
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                return CloseReason::TooBig;
            }
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return CloseReason::Shutdown,
            Some(Ok(msg)) => {
                last_seen = Instant::now();
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
                    // Pings are answered by tungstenite; pongs only show the client lives.
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
        // Boxed, as are the task's other rare or large steps: a task's future is as big
        // as its biggest step, and every idle socket would carry that size.
        match Box::pin(handle(app, who, session, frame, &mut last_typing)).await {
            Some(Answer::InOrder(reply)) => pending.push_back(reply),
            Some(Answer::AnyTime(reply)) => marks.push(reply),
            None => {}
        }
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

/// Most sends (and, apart, marks) of one socket waiting for their commit; past this the
/// socket is not read.
const MAX_PIPELINED: usize = 32;

/// The answer to a send or a mark, ready once its commit is (a mark that worked has none).
type PendingReply<'a> = Pin<Box<dyn Future<Output = Option<Utf8Bytes>> + Send + 'a>>;

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

/// A `received` or `read` frame. In a followed chat the mark is held briefly to commit
/// with others, and only an error answers it, when its commit is done; elsewhere it is
/// done at once.
async fn mark<'a>(
    core: &'a crate::domain::Core,
    who: &'a Principal,
    session: &Session,
    id: Option<String>,
    chat_id: i64,
    received: Option<i64>,
    read: Option<i64>,
) -> PendingReply<'a> {
    let marked = if session.in_chat(chat_id) {
        match core.queue_mark(who, chat_id, received, read, true).await {
            Ok(commit) => {
                return Box::pin(async move {
                    let e = commit.await.err()?;
                    Some(domain_error_frame(id.as_deref(), e))
                });
            }
            Err(e) => Err(e),
        }
    } else {
        Box::pin(core.mark(who, chat_id, received, read)).await
    };
    let reply = marked.err().map(|e| domain_error_frame(id.as_deref(), e));
    Box::pin(std::future::ready(reply))
}

/// The answer to come of a send or a mark.
enum Answer<'a> {
    /// A send's: answers go out in the order of the sends.
    InOrder(PendingReply<'a>),
    /// A mark's (an error, if anything): whenever it is ready. A held mark must not hold
    /// up the acks of the sends after it.
    AnyTime(PendingReply<'a>),
}

/// Handles one client frame. A send or a mark returns its answer to come, which the socket
/// sends when it is ready; every other frame is done when this returns.
async fn handle<'a>(
    app: &'a App,
    who: &'a Principal,
    session: &Arc<Session>,
    frame: ClientFrame,
    last_typing: &mut HashMap<i64, Instant>,
) -> Option<Answer<'a>> {
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
                return Some(Answer::InOrder(Box::pin(async move {
                    let sent = match queued {
                        Ok(commit) => commit.await,
                        Err(e) => Err(e),
                    };
                    Some(send_reply(id.as_deref(), chat_id, sent))
                })));
            }
            // Boxed, as the other steps that read the database: `handle` is moved whole
            // into its box for every frame, so its size is what a followed send pays.
            let sent = Box::pin(core.send(who, chat_id, new)).await;
            let reply = send_reply(id.as_deref(), chat_id, sent);
            return Some(Answer::InOrder(Box::pin(std::future::ready(Some(reply)))));
        }
        ClientFrame::Received { id, chat_id, seq } => {
            let marked = mark(core, who, session, id, chat_id, Some(seq), None).await;
            return Some(Answer::AnyTime(marked));
        }
        ClientFrame::Read { id, chat_id, seq } => {
            let marked = mark(core, who, session, id, chat_id, None, Some(seq)).await;
            return Some(Answer::AnyTime(marked));
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
            core.announce(Event::Typing {
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
            if let Err(e) = Box::pin(core.update_operator(who, operator_id, patch)).await {
                session.push(Outbound::direct(domain_error_frame(id.as_deref(), e)));
            }
        }
    }
    None
}

/// Writes one queued item into the socket's buffer (not flushed), keeping each chat in seq
/// order; false if the socket failed, or the database did mid catch-up.
async fn write_one(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    sink: &mut Socket,
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
        Outbound::Ping => put(sink, WsMessage::Ping(bytes::Bytes::new())).await,
        Outbound::Resync(only) => Box::pin(resync(app, who, session, sink, only, cursors)).await,
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

/// Catches the socket's chats (or one of them) up from its own cursors: the bus may have
/// lost events. False if the socket failed, or the database did.
async fn resync(
    app: &App,
    who: &Principal,
    session: &Arc<Session>,
    sink: &mut Socket,
    only: Option<i64>,
    cursors: &mut HashMap<i64, i64>,
) -> bool {
    if only.is_none()
        && let Ok(live) = app.core.live_chats(who).await
    {
        // Chats opened while the bus was away were never announced here.
        for chat in live {
            if !session.in_chat(chat.id) {
                app.bus.hub().join(session, chat.id);
                cursors.entry(chat.id).or_insert(0);
            }
        }
    }
    let chats: Vec<(i64, i64)> = cursors
        .iter()
        .filter(|(chat, _)| only.is_none_or(|c| c == **chat))
        .map(|(chat, seq)| (*chat, *seq))
        .collect();
    for (chat_id, from) in chats {
        if !catch_up(app, who, sink, chat_id, from, i64::MAX, cursors).await {
            return false;
        }
    }
    true
}

/// Sends the messages of `chat_id` after `from` up to `to` (or to the newest when `to`
/// is None) from the database, and moves the cursor. Returns false if the socket failed.
async fn catch_up(
    app: &App,
    who: &Principal,
    sink: &mut Socket,
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
            let frame = Envelope::of(&Event::Message(m.clone())).frame;
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
    let hub = app.bus.hub();
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
    sink: &mut Socket,
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
            app.bus.hub().join(session, chat_id);
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
                let frame = Envelope::of(&Event::Receipt {
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
const READ_BUFFER: usize = 1024;

/// Frames gather up to this much before being written, unless flushed sooner.
const WRITE_BUFFER: usize = 8 * 1024;

/// How long one frame may take to leave: a client that stops reading (its TCP window
/// full) would otherwise hold its session forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A socket write: done at once, or waiting (boxed, see [`put`]).
type Write<'a> = Either<std::future::Ready<bool>, Pin<Box<dyn Future<Output = bool> + Send + 'a>>>;

/// Queues one frame in the socket's write buffer (which writes out once it is full); false
/// if the socket failed or the frame could not be queued in time. [`flush`] sends the rest.
///
/// Most frames go straight into the buffer. Only a socket that cannot take more waits,
/// with a timer, in a boxed future: a task is as large as its largest step, and every
/// socket's task would otherwise carry the wait and its timer.
fn put(socket: &mut Socket, msg: WsMessage) -> Write<'_> {
    match std::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).now_or_never() {
        Some(Ok(())) => Either::Left(std::future::ready(socket.start_send_unpin(msg).is_ok())),
        Some(Err(_)) => Either::Left(std::future::ready(false)),
        None => Either::Right(Box::pin(within_send_timeout(socket.feed(msg)))),
    }
}

/// Writes out what [`put`] queued; false if the socket failed or it could not leave in time.
fn flush(socket: &mut Socket) -> Write<'_> {
    match std::future::poll_fn(|cx| socket.poll_flush_unpin(cx)).now_or_never() {
        Some(done) => Either::Left(std::future::ready(done.is_ok())),
        None => Either::Right(Box::pin(within_send_timeout(socket.flush()))),
    }
}

/// Waits for a socket write, at most [`SEND_TIMEOUT`]: a client that stops reading fills
/// its TCP window, and would otherwise hold its session forever.
async fn within_send_timeout<E>(write: impl Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, write).await, Ok(Ok(())))
}
