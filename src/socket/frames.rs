//! The frames of the socket's protocol: what a client sends (decoded, with errors that
//! name the frame) and the replies the server writes itself (ready, ack, resumed, error);
//! the events every member hears are encoded once by the hub. Every frame has its JSON
//! Schema in schema/ws.json.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::{Error, Message, Presence};
use crate::http::ApiError;
use crate::hub::encode;

#[derive(Serialize)]
pub(super) struct ReadyChat {
    pub(super) id: i64,
    pub(super) last_seq: i64,
}

/// The frames the server writes for one socket.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(super) enum Reply<'a> {
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
    /// The socket goes on under a fresh token, until `expires_at` (unix ms).
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        expires_at: i64,
    },
}

pub(super) fn error_frame(id: Option<&str>, code: &str, message: &str) -> Utf8Bytes {
    encode(&Reply::Error { id, code, message })
}

/// An error of the core, as the native API words it.
pub(super) fn domain_error_frame(id: Option<&str>, e: Error) -> Utf8Bytes {
    let api = ApiError::from(e);
    error_frame(id, api.code, &api.message)
}

/// The ack of a send, or its error.
pub(super) fn send_reply(
    id: Option<&str>,
    chat_id: i64,
    sent: Result<(Message, bool), Error>,
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

/// Client frames.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum ClientFrame {
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
    /// A fresh token of the same person, before the socket's own expires.
    Refresh {
        #[serde(default)]
        id: Option<String>,
        token: String,
    },
}

fn yes() -> bool {
    true
}

/// The `id` of a frame that failed to parse, if it has one, so the error can name it.
pub(super) fn frame_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// A token bucket: `rate` frames a second, bursts up to twice that.
pub(super) struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub(super) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimit {
            rate,
            tokens: rate * 2.0,
            at: Instant::now(),
        }
    }

    pub(super) fn allow(&mut self) -> bool {
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
