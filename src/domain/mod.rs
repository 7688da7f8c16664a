//! The core: chats, messages, receipts, organisations and their people. Knows nothing of
//! HTTP or sockets; every surface (native API, the seed APIs) calls in here.
//!
//! Every function takes the caller's [`Principal`] and checks it first: an id that
//! belongs to another organisation, or that the caller may not see, is answered exactly
//! like an id that does not exist.

mod admin;
mod auth;
pub mod canned;
pub mod catalogue;
mod chats;
mod chatwhizz;
mod customers;
pub mod desk;
pub mod events;
mod files;
mod messages;
pub mod notes;
pub mod notify;
pub mod report;
pub mod routing;
pub mod search;
mod settings;
mod storefront;
mod support;
mod throttle;
pub mod webhooks;
mod widget;
mod write;

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbErr};

pub use self::events::Live;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::Store;

pub use admin::{
    Assignment, AssignmentPatch, Domain, DomainPatch, Inbox, InboxPatch, NewAssignment, NewDomain,
    NewInbox, NewOperator, Operator, OperatorPatch, Presence,
};
pub use auth::{AdminTokens, NewOrganisation, SessionToken, SignedIn};
pub use chats::{Chat, ChatPage, ChatStatus, LiveChat};
pub use customers::{Customer, CustomerFields};
pub use files::{DEFAULT_TYPES, FileAccess, FileInfo, FileLimits, FileSettings, Files};
pub use messages::{
    Author, MemberReceipt, Message, MessagePage, MessageQuery, NewMessage, Receipt,
};
pub use settings::{OrganisationPatch, OrganisationSettings};
pub use storefront::{Broadcast, BroadcastTo, Numbered, Said, Sent, StoreChat};
pub use support::{CustomerCard, OperatorCard};
pub use widget::{Visitor, VisitorDetails};

use self::events::Event;

/// Who is calling, as proven by a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An organisation's admin token for one addon.
    Admin {
        org_id: i64,
        addon_id: i64,
    },
    Operator {
        org_id: i64,
        operator_id: i64,
    },
    Customer {
        org_id: i64,
        customer_id: i64,
    },
}

impl Principal {
    pub fn org_id(&self) -> i64 {
        match *self {
            Principal::Admin { org_id, .. }
            | Principal::Operator { org_id, .. }
            | Principal::Customer { org_id, .. } => org_id,
        }
    }
}

/// Errors of the core, each one a distinct answer to the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Unknown, or not visible to the caller (the two are never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Missing, bad or expired credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Valid credentials of a kind that may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request is well-formed but its values are not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (a taken email, a finished chat).
    #[error("{0}")]
    Conflict(String),
    /// The database did not answer in time; nothing is known to be stored.
    #[error("{0}")]
    Unavailable(&'static str),
    /// More bytes than a limit allows (a file, an organisation's files).
    #[error("{0}")]
    TooLarge(String),
    /// A file whose bytes are not of a type the server takes.
    #[error("{0}")]
    Unsupported(String),
    /// The client stopped sending half way, or too slowly.
    #[error("{0}")]
    CutOff(String),
    /// Too many tries from one client (or for one widget); try again in this many seconds.
    #[error("too many requests; try again in {0} s")]
    RateLimited(u64),
    #[error("database error")]
    Store(#[from] DbErr),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code every API answers this error with.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Invalid(_) => "invalid",
            Error::Conflict(_) => "conflict",
            Error::RateLimited(_) => "rate_limited",
            Error::TooLarge(_) => "payload_too_large",
            Error::Unsupported(_) => "unsupported_media_type",
            Error::CutOff(_) => "bad_request",
            Error::Unavailable(_) => "unavailable",
            Error::Store(e) if crate::store::is_away(e) => "unavailable",
            Error::Store(_) | Error::Internal(_) => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Limits and lifetimes the core enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest message text, in characters.
    pub max_text_chars: usize,
    /// Lifetime of an admin access token, in seconds.
    pub access_token_ttl_s: i64,
    /// Lifetime of an admin refresh token, in seconds.
    pub refresh_token_ttl_s: i64,
    /// Lifetime of an operator or customer session, in seconds.
    pub session_ttl_s: i64,
    /// Widget visitors one client address may make per minute (0: no limit).
    pub visitors_per_minute: u32,
    /// Widget visitors one widget may get per minute, from all addresses (0: no limit).
    pub visitors_per_minute_per_key: u32,
    /// Failed sign-ins one client address may make per minute (0: no limit).
    pub failed_sign_ins_per_minute: u32,
    /// Longest a send or mark waits for its commit before it is answered `Unavailable`.
    pub write_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 10_000,
            access_token_ttl_s: 3600,
            refresh_token_ttl_s: 30 * 24 * 3600,
            session_ttl_s: 30 * 24 * 3600,
            visitors_per_minute: 20,
            visitors_per_minute_per_key: 600,
            failed_sign_ins_per_minute: 10,
            write_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// The core service: one per process, shared by every request.
#[derive(Debug)]
pub struct Core {
    store: Store,
    limits: Limits,
    live: Arc<dyn Live>,
    clock: Clock,
    /// Where every message and receipt is stored: concurrent sends share a commit.
    writer: write::Writer,
    throttles: throttle::Throttles,
    /// What this server counts (`GET /metrics`).
    metrics: Arc<Metrics>,
    /// Where uploaded files are kept, and what is taken.
    files: Files,
    /// The Web Push key, read once from the database.
    vapid: tokio::sync::OnceCell<crate::push::Vapid>,
}

impl Core {
    /// Must be called within a tokio runtime: it starts the message writer. Fails when the
    /// writer cannot open its own connection to a SQLite file (or the database is an
    /// in-memory SQLite one, which a second connection cannot share).
    pub fn new(
        store: Store,
        limits: Limits,
        live: Arc<dyn Live>,
        clock: Clock,
        metrics: Arc<Metrics>,
        files: Files,
    ) -> Result<Self> {
        let writer = write::Writer::start(
            store.clone(),
            live.clone(),
            clock.clone(),
            write::tuning::Tuning {
                answer_within: limits.write_timeout,
                ..write::tuning::Tuning::DEFAULT
            },
            metrics.clone(),
        )?;
        Ok(Core {
            store,
            metrics,
            throttles: throttle::Throttles::new(&limits),
            limits,
            live,
            clock,
            writer,
            files,
            vapid: tokio::sync::OnceCell::new(),
        })
    }

    /// Announces events that need no commit of their own (typing), or one just made.
    pub fn announce(&self, event: Event) {
        self.live.announce(std::slice::from_ref(&event));
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn into_store(self) -> Store {
        self.store
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The time every rule of the core reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Now, in unix milliseconds, by [`Core::clock`].
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A key of the server named `name`, shared by every node through the database: the
    /// first node that needs it stores `fresh()`, and every node reads what is stored.
    async fn shared_secret(&self, name: &str, fresh: impl FnOnce() -> String) -> Result<String> {
        let backend = self.store().backend();
        self.store()
            .db()
            .execute_raw(crate::store::stmt(
                backend,
                "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                [name.into(), fresh().into()],
            ))
            .await?;
        let rows = self
            .store()
            .query("SELECT value FROM secrets WHERE name = ?", [name.into()])
            .await?;
        Ok(rows
            .first()
            .ok_or_else(|| Error::Internal(format!("no {name} key")))?
            .try_get("", "value")?)
    }
}

/// Bytes as lowercase hex: how tokens, keys, hashes and signatures are written.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Checks a required text field: trimmed, non-empty, at most `max` characters.
fn required(field: &str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::Invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(Error::Invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(value.to_owned())
}

/// Checks an optional text field; an empty string counts as absent.
fn optional(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => required(field, v, max).map(Some),
    }
}

fn email(field: &str, value: &str) -> Result<String> {
    let value = required(field, value, 254)?.to_lowercase();
    let valid = match value.split_once('@') {
        Some((local, host)) => {
            !local.is_empty() && host.contains('.') && !value.contains(char::is_whitespace)
        }
        None => false,
    };
    if !valid {
        return Err(Error::Invalid(format!("{field} is not an email address")));
    }
    Ok(value)
}

/// Runs an `INSERT ... RETURNING id` (written with `?` placeholders) and gives the id.
async fn inserted_id(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Result<i64> {
    let row = conn
        .query_one_raw(crate::store::stmt(conn.get_database_backend(), sql, values))
        .await?
        .ok_or_else(|| Error::Internal("an insert returned no id".into()))?;
    Ok(row.try_get("", "id")?)
}

/// Maps a lost insert race on a unique key to a conflict with `message`.
fn conflict_on_unique(err: DbErr, message: impl Into<String>) -> Error {
    if crate::store::is_unique_violation(&err) {
        Error::Conflict(message.into())
    } else {
        Error::Store(err)
    }
}
