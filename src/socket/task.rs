//! The socket's one task: it registers the session, then reads client frames and calls the
//! core, writes what the session's mailbox receives and the answers to sends, and flushes
//! once nothing more is ready, until either side closes.
//!
//! One task rather than a reader and a writer: half the tasks, no lock around the socket,
//! and an answer to a send goes out in the same flush as the message it answers. The
//! heartbeat comes through the mailbox too (see `heartbeat`), so an idle socket holds no
//! timer; it is its task, its buffers and its place in the hub.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{Error, Message as WsMessage, Utf8Bytes};

use super::Sockets;
use super::frames::{
    ClientFrame, RateLimit, Reply, domain_error_frame, error_frame, frame_id, send_reply,
};
use super::io::{self, Socket};
use super::session::{Cursors, Delivery, Reads, Sink};
use super::upgrade::person_of;
use crate::domain::events::{Event, Person};
use crate::domain::{Core, Error as DomainError, NewMessage, OperatorPatch, Principal, SignedIn};
use crate::http::parse_id;
use crate::hub::{CloseReason, Outbound, Replay, Session, encode};
use crate::metrics::Metrics;

impl Sink for Socket {
    fn put(&mut self, frame: Utf8Bytes) -> impl Future<Output = bool> + Send {
        io::put(self, WsMessage::Text(frame))
    }
}

/// The socket's one task: it registers the session, then reads client frames, writes
/// what the session's mailbox receives and the answers to sends, and flushes once nothing
/// more is ready, until either side closes.
pub(super) async fn run(
    app: Arc<Sockets>,
    signed_in: SignedIn,
    mut socket: Socket,
    resume: Vec<(i64, i64)>,
) {
    let SignedIn {
        who,
        expires_at,
        session_id,
    } = signed_in;
    let Some(person) = person_of(&who) else {
        return;
    };
    let hub = app.bus.hub().clone();
    // Register first, then read the chats: a chat opened in between reaches this session
    // through its person (and is then caught up), rather than being missed.
    let session = hub.connect(person, app.ws.queue);
    tracing::info!(
        socket = session.id,
        person = person.kind(),
        id = person.id(),
        "socket open"
    );
    let mut delivery = Delivery {
        history: Reads {
            core: &app.core,
            who: &who,
        },
        hub: &hub,
        session: &session,
        cursors: Cursors::default(),
    };
    if !Box::pin(delivery.start(resume)).await {
        hub.disconnect(&session);
        return;
    }
    // Boxed, as every rare step of the task: a task is as large as its largest step,
    // and every idle socket would carry that size.
    match person {
        Person::Operator(id) => Box::pin(operator_connected(&app, id)).await,
        Person::Customer(id) => Box::pin(app.bus.customer_connected(id)).await,
    }
    let signed_in = Signed {
        expires_at,
        session_id,
    };
    let reason = serve(&app, &who, signed_in, &mut delivery, &mut socket).await;
    tracing::info!(socket = session.id, code = reason.code(), "socket closed");
    app.core
        .metrics()
        .socket_closes
        .get_or_create(&Metrics::label("reason", reason.label()))
        .inc();
    Box::pin(io::close(&mut socket, reason)).await;
    if hub.disconnect(&session) {
        match person {
            Person::Operator(id) => {
                if Box::pin(app.bus.operator_disconnected(id)).await
                    && let Err(e) = Box::pin(app.core.operator_disconnected(id)).await
                {
                    tracing::warn!(error = %e, "cannot mark the operator offline");
                }
            }
            Person::Customer(id) => Box::pin(app.bus.customer_disconnected(id)).await,
        }
    }
}

/// An operator's socket opened: their presence goes online (across nodes, with Redis).
async fn operator_connected(app: &Sockets, operator_id: i64) {
    app.bus.operator_connected(operator_id).await;
    if let Err(e) = app.core.operator_connected(operator_id).await {
        tracing::warn!(error = %e, "cannot mark the operator online");
    }
}

/// What became ready for the socket's task.
enum Ready {
    /// Answers to sends (oldest first), mail, and at most one client frame.
    Work,
    /// Nothing else is ready, and frames wait in the write buffer.
    Flush,
    /// The session is closing (everything queued before has been taken).
    Close(CloseReason),
}

/// Until when the socket's token holds, and its session (a `refresh` frame moves both).
#[derive(Clone, Copy)]
struct Signed {
    expires_at: i64,
    session_id: Option<i64>,
}

/// Serves the socket until it closes; returns why.
async fn serve(
    app: &Sockets,
    who: &Principal,
    mut signed: Signed,
    delivery: &mut Delivery<'_, Reads<'_>>,
    socket: &mut Socket,
) -> CloseReason {
    let session = delivery.session;
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
    // Set while MAX_PIPELINED answers wait, until CROWDED_AFTER has passed (then
    // `crowded`): boxed, as an idle socket has none.
    let mut stalled: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut crowded = false;
    // Armed at a heartbeat when the token expires before the next one: boxed, as most
    // sockets have none.
    let mut expiring = expiry(app, signed.expires_at);
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
            let mut closing = match session.poll_mail(cx, &mut mail) {
                Poll::Ready(Err(reason)) => Some(reason),
                Poll::Ready(Ok(())) | Poll::Pending => None,
            };
            if let Some(timer) = &mut expiring
                && timer.as_mut().poll(cx).is_ready()
            {
                closing.get_or_insert(CloseReason::Expired);
            }
            // Past MAX_PIPELINED waiting sends (or marks) the client is not read: it
            // sends faster than they commit. If they are still that many a moment later,
            // the database is slow or away: the client is read on (receipts and typing go
            // on), and its sends past MAX_PIPELINED are refused at once, up to
            // MAX_UNANSWERED answers held. Nothing is read once the session is closing.
            let full = pending.len() >= MAX_PIPELINED || marks.len() >= MAX_PIPELINED;
            if !full {
                stalled = None;
                crowded = false;
            } else if !crowded {
                let timer =
                    stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(CROWDED_AFTER)));
                if timer.as_mut().poll(cx).is_ready() {
                    crowded = true;
                    stalled = None;
                }
            }
            if closing.is_none()
                && (!full || crowded)
                && pending.len() < MAX_UNANSWERED
                && marks.len() < MAX_UNANSWERED
                && let Poll::Ready(next) = socket.poll_next_unpin(cx)
            {
                frame = Some(next);
            }
            // A server that stops answers the sends in flight before it closes: each of
            // them was committed or refused, and the client is told which.
            let answered = pending.is_empty() && marks.is_empty();
            if !replies.is_empty() || !mail.is_empty() || frame.is_some() {
                Poll::Ready(Ready::Work)
            } else if let Some(reason) = closing
                && (answered || reason != CloseReason::Shutdown)
            {
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
                if !io::flush(socket).await {
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
                // Checked at each heartbeat; a token that expires before the next one
                // ends the socket at its expiry.
                if app.core.now_ms() >= signed.expires_at {
                    return CloseReason::Expired;
                }
                expiring = expiry(app, signed.expires_at);
            }
            // Told that the person's access changed (a revoked session among the
            // reasons): a socket whose session has ended closes.
            if matches!(out, Outbound::Recheck)
                && let Some(id) = signed.session_id
                && !Box::pin(app.core.session_alive(id)).await.unwrap_or(true)
            {
                return CloseReason::Revoked;
            }
            let written = match out {
                Outbound::Ping => io::put(socket, WsMessage::Ping(bytes::Bytes::new())).await,
                out => delivery.deliver(socket, out).await,
            };
            // A failed write, or a database failure mid catch-up: this socket cannot go
            // on without a gap, so it closes and the client resumes.
            if !written {
                return CloseReason::Unavailable;
            }
            unflushed = true;
        }
        for reply in replies.drain(..) {
            if !io::put(socket, WsMessage::Text(reply)).await {
                return CloseReason::Unavailable;
            }
            unflushed = true;
        }
        let Some(next) = frame.take() else { continue };
        let text = match next {
            Some(Err(Error::Capacity(_))) => {
                return CloseReason::TooBig;
            }
            // A client that breaks the protocol is told so (1002, 1007), not told to
            // reconnect as after a server's stop, which a buggy client would do forever.
            Some(Err(Error::Protocol(_))) => return CloseReason::Protocol,
            Some(Err(Error::Utf8(_))) => return CloseReason::NotUtf8,
            // The client closed or went away: there is no one left to tell anything.
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
            app.core.metrics().rate_limited_frames.inc();
            let id = frame_id(&text);
            session.push(Outbound::direct(error_frame(
                id.as_deref(),
                "rate_limited",
                "too many frames; slow down",
            )));
            continue;
        }
        let frame: ClientFrame = match serde_json::from_str(&text) {
            // A fresh token of the same person: the socket goes on under it.
            Ok(ClientFrame::Refresh { id, token }) => {
                // Boxed, and owning its strings: the socket's task is as large as its
                // largest step, and a refresh is rare.
                let (fresh, reply) = Box::pin(refresh(app, who, id, token)).await;
                if let Some(fresh) = fresh {
                    signed = fresh;
                    expiring = expiry(app, fresh.expires_at);
                }
                session.push(Outbound::direct(reply));
                continue;
            }
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
        let refuse = Crowded {
            sends: crowded && pending.len() >= MAX_PIPELINED,
            marks: crowded && marks.len() >= MAX_PIPELINED,
        };
        match Box::pin(handle(app, who, session, frame, refuse, &mut last_typing)).await {
            Some(Answer::InOrder(reply)) => pending.push_back(reply),
            Some(Answer::AnyTime(reply)) => marks.push(reply),
            None => {}
        }
    }
}

/// A timer for a token that expires before the next heartbeat (which checks the others).
fn expiry(app: &Sockets, expires_at: i64) -> Option<Pin<Box<tokio::time::Sleep>>> {
    let left = Duration::from_millis((expires_at - app.core.now_ms()).max(0).unsigned_abs());
    (left < app.ws.ping_every).then(|| Box::pin(tokio::time::sleep(left)))
}

/// A `refresh` frame: what its token signs in, if it is the same person as the socket's,
/// and the answer (`refreshed`, or the error).
async fn refresh(
    app: &Sockets,
    who: &Principal,
    id: Option<String>,
    token: String,
) -> (Option<Signed>, Utf8Bytes) {
    let fresh = match app.core.sign_in_with(&token).await {
        Ok(fresh) if fresh.who == *who => fresh,
        Ok(_) => {
            let e = DomainError::Forbidden("the token is another person's");
            return (None, domain_error_frame(id.as_deref(), e));
        }
        Err(e) => return (None, domain_error_frame(id.as_deref(), e)),
    };
    let signed = Signed {
        expires_at: fresh.expires_at,
        session_id: fresh.session_id,
    };
    let reply = encode(&Reply::Refreshed {
        id: id.as_deref(),
        expires_at: fresh.expires_at,
    });
    (Some(signed), reply)
}

/// Most sends (and, apart, marks) of one socket waiting for their commit; past this a
/// send (or mark) is refused at once with `unavailable`, in its turn among the answers.
const MAX_PIPELINED: usize = 32;

/// How long a socket's MAX_PIPELINED sends may wait before it is read on and its next
/// sends are refused (1 s): a commit takes milliseconds, unless the database is away.
const CROWDED_AFTER: Duration = Duration::from_secs(1);

/// Most answers a socket holds unsent (waiting commits and refusals in line behind them);
/// past this the socket is not read until some go. The frame rate limit keeps a client
/// well under it, unless raised.
const MAX_UNANSWERED: usize = 4 * MAX_PIPELINED;

/// Whether the socket refuses its next sends, or marks, at once (see [`CROWDED_AFTER`]).
#[derive(Clone, Copy)]
struct Crowded {
    sends: bool,
    marks: bool,
}

/// The answer to a send or mark refused because too many of the socket's wait.
fn crowded_reply<'a>(id: Option<&str>) -> PendingReply<'a> {
    let reply = error_frame(
        id,
        "unavailable",
        "32 of your frames wait for the database already: this one is not stored; \
         send it again once they are answered",
    );
    Box::pin(std::future::ready(Some(reply)))
}

/// The answer to a send or a mark, ready once its commit is (a mark that worked has none).
type PendingReply<'a> = Pin<Box<dyn Future<Output = Option<Utf8Bytes>> + Send + 'a>>;

/// A `received` or `read` frame. In a followed chat the mark is held briefly to commit
/// with others, and only an error answers it, when its commit is done; elsewhere it is
/// done at once.
async fn mark<'a>(
    core: &'a Core,
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
    app: &'a Sockets,
    who: &'a Principal,
    session: &Arc<Session>,
    frame: ClientFrame,
    crowded: Crowded,
    last_typing: &mut HashMap<i64, Instant>,
) -> Option<Answer<'a>> {
    let core = &app.core;
    match frame {
        ClientFrame::Send { id, .. } if crowded.sends => {
            core.metrics().refused("unavailable", 1);
            return Some(Answer::InOrder(crowded_reply(id.as_deref())));
        }
        ClientFrame::Received { id, .. } | ClientFrame::Read { id, .. } if crowded.marks => {
            return Some(Answer::AnyTime(crowded_reply(id.as_deref())));
        }
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
                match parse_id(&chat) {
                    Some(c) if seq >= 0 => list.push((c, seq, true)),
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
        // Taken by the socket's loop, which holds the token's expiry.
        ClientFrame::Refresh { .. } => {}
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
