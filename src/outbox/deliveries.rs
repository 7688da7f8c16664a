//! Sends notifications' e-mail and Web Push deliveries (see `domain::notify`): every
//! node runs a loop that claims due deliveries, sends each on a task of its own, and
//! records the outcomes a round at a time, as webhook events are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::{Notify, mpsc};

use super::{POLL, private_target};
use crate::domain::Core;
use crate::domain::notify::{ClaimedDelivery, Notification, Outgoing};
use crate::domain::webhooks::{Delivery, RetryPolicy};

/// How e-mail and push deliveries go.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Longest a send may take before it counts as failed.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Whether push endpoints on loopback or private addresses are posted to.
    pub allow_private: bool,
    /// The contact a push service is given in the VAPID token (`mailto:` or `https:`).
    pub vapid_subject: String,
}

/// Sends at once, at most.
const IN_FLIGHT: usize = 64;

/// How long a push service keeps a message for a browser that is off.
const PUSH_TTL_S: u64 = 24 * 3600;

type Mailer = AsyncSmtpTransport<Tokio1Executor>;

/// Delivers until the core is gone.
pub async fn run(core: Weak<Core>, settings: DeliverySettings) {
    let Some(client) = super::client(settings.timeout, settings.allow_private, "pushes") else {
        return;
    };
    let lease_ms = settings.timeout.as_millis() as i64 + 10_000;
    let settings = Arc::new(settings);
    let mailers: Arc<Mutex<HashMap<String, Mailer>>> = Arc::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(ClaimedDelivery, Delivery)>();
    let finished = Arc::new(Notify::new());
    let mut in_flight = 0usize;
    loop {
        let Some(core) = core.upgrade() else { return };
        let mut outcomes = Vec::new();
        while let Ok(outcome) = done_rx.try_recv() {
            in_flight = in_flight.saturating_sub(1);
            outcomes.push(outcome);
        }
        if !outcomes.is_empty()
            && let Err(e) = core.record_deliveries(&outcomes, &settings.retry).await
        {
            tracing::warn!(error = %e, "cannot record notification deliveries");
        }
        let room = IN_FLIGHT.saturating_sub(in_flight);
        let claimed = if room == 0 {
            Vec::new()
        } else {
            core.claim_deliveries(room as u64, lease_ms)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot claim notification deliveries");
                    Vec::new()
                })
        };
        let claimed_any = !claimed.is_empty();
        for delivery in claimed {
            in_flight += 1;
            let send = Send {
                core: core.clone(),
                client: client.clone(),
                settings: settings.clone(),
                mailers: mailers.clone(),
            };
            let done = done_tx.clone();
            let finished = finished.clone();
            tokio::spawn(async move {
                let timeout = send.settings.timeout;
                let result = tokio::time::timeout(timeout, send.deliver(&delivery))
                    .await
                    .unwrap_or_else(|_| Delivery::Failed("timed out".into()));
                let _ = done.send((delivery, result));
                finished.notify_one();
            });
        }
        drop(core);
        if !claimed_any {
            let _ = tokio::time::timeout(POLL, finished.notified()).await;
        }
    }
}

struct Send {
    core: Arc<Core>,
    client: reqwest::Client,
    settings: Arc<DeliverySettings>,
    mailers: Arc<Mutex<HashMap<String, Mailer>>>,
}

impl Send {
    async fn deliver(&self, delivery: &ClaimedDelivery) -> Delivery {
        let outgoing = match self.core.outgoing(delivery).await {
            Ok(Some(outgoing)) => outgoing,
            Ok(None) => return Delivery::Gone,
            Err(e) => return Delivery::Failed(format!("cannot read the notification: {e}")),
        };
        match delivery.channel.as_str() {
            "email" => self.mail(&delivery.target, &outgoing).await,
            "push" => self.push(&outgoing).await,
            other => Delivery::Failed(format!("no channel {other}")),
        }
    }

    async fn mail(&self, to: &str, outgoing: &Outgoing) -> Delivery {
        let Some(url) = &outgoing.smtp_url else {
            return Delivery::Gone;
        };
        let mailer = {
            let mut mailers = self.mailers.lock().unwrap_or_else(|e| e.into_inner());
            match mailers.get(url) {
                Some(m) => m.clone(),
                None => match Mailer::from_url(url) {
                    Ok(builder) => {
                        let m = builder.timeout(Some(self.settings.timeout)).build();
                        mailers.insert(url.clone(), m.clone());
                        m
                    }
                    Err(e) => return Delivery::Failed(format!("smtp_url: {e}")),
                },
            }
        };
        let from: Mailbox = match outgoing
            .mail_from
            .as_deref()
            .unwrap_or("souq <souq@localhost>")
            .parse()
        {
            Ok(from) => from,
            Err(e) => return Delivery::Failed(format!("mail_from: {e}")),
        };
        let to: Mailbox = match to.parse() {
            Ok(to) => to,
            Err(e) => return Delivery::Failed(format!("address: {e}")),
        };
        let (subject, text) = mail_text(&outgoing.notification, &outgoing.org_name);
        let message = match lettre::Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(text)
        {
            Ok(m) => m,
            Err(e) => return Delivery::Failed(format!("cannot build the mail: {e}")),
        };
        match mailer.send(message).await {
            Ok(_) => Delivery::Delivered,
            Err(e) => Delivery::Failed(format!("smtp: {e}")),
        }
    }

    async fn push(&self, outgoing: &Outgoing) -> Delivery {
        let Some((subscription, vapid)) = &outgoing.push else {
            return Delivery::Gone;
        };
        if !self.settings.allow_private && private_target(&subscription.endpoint) {
            return Delivery::Failed("private address refused".into());
        }
        let payload = push_payload(&outgoing.notification);
        let now_s = crate::clock::system_ms() / 1000;
        let request = match vapid.request(
            subscription,
            payload,
            &self.settings.vapid_subject,
            now_s,
            PUSH_TTL_S,
        ) {
            Ok(r) => r,
            Err(e) => return Delivery::Failed(format!("cannot encrypt: {e}")),
        };
        match self.client.execute(request).await {
            Ok(answer) if answer.status().is_success() => Delivery::Delivered,
            // The browser unsubscribed: the subscription is removed.
            Ok(answer) if matches!(answer.status().as_u16(), 404 | 410) => Delivery::Ended,
            Ok(answer) => Delivery::Failed(format!("HTTP {}", answer.status().as_u16())),
            Err(e) => Delivery::Failed(super::failure(&e)),
        }
    }
}

/// One line of a message in a digest: `Name: text`, or what it sent.
fn said(m: &serde_json::Value) -> String {
    let name = m["author"]["name"].as_str().filter(|n| !n.is_empty());
    let who = name.unwrap_or(match m["author"]["kind"].as_str() {
        Some("operator") => "Operator",
        _ => "Customer",
    });
    let text = m["text"].as_str().unwrap_or_default().trim();
    let what = match (m["payload"].as_str(), m["file_name"].as_str()) {
        (Some("file"), Some(file)) if text.is_empty() => format!("sent a file: {file}"),
        (Some("file"), Some(file)) => format!("{text} [file: {file}]"),
        _ => text.to_owned(),
    };
    let what: String = what.chars().take(300).collect();
    format!("{who}: {what}")
}

fn unread_phrase(n: i64) -> String {
    if n == 1 {
        "1 unread message".into()
    } else {
        format!("{n} unread messages")
    }
}

/// What happened, in a line, for a notification of another kind than `unread`: "Ana
/// commented on Blue Shoes: nice" or "Ana liked Blue Shoes".
fn event_line(n: &Notification) -> Option<String> {
    let about = n.about.as_ref()?;
    let who = about["by"]["name"].as_str().unwrap_or("Someone");
    let what = about["subject"]["name"].as_str().unwrap_or("");
    Some(match n.kind.as_str() {
        "comment" => {
            let text: String = about["comment"]["text"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            format!("{who} commented on {what}: {text}")
        }
        "like" => format!("{who} liked {what}"),
        "offer" => {
            let text: String = about["offer"]["text"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            format!("{who} of {what} made you an offer: {text}")
        }
        other => format!("{who}: {other} on {what}"),
    })
}

/// The subject and plain text of a notification's e-mail: each chat's newest messages
/// and its link back (or, for a comment or a like, what happened).
pub fn mail_text(n: &Notification, org: &str) -> (String, String) {
    if let Some(line) = event_line(n) {
        let subject: String = line.chars().take(120).collect();
        return (
            format!("{subject} ({org})"),
            format!("{line}\n\nSent by {org}'s chat.\n"),
        );
    }
    let chats = n.chats.as_array().cloned().unwrap_or_default();
    let subject = format!("{} ({org})", unread_phrase(n.unread));
    let mut text = format!(
        "You have {} while you were away.\n",
        unread_phrase(n.unread)
    );
    for chat in &chats {
        let unread = chat["unread"].as_i64().unwrap_or(0);
        text.push_str(&format!(
            "\nChat {} ({}):\n",
            chat["chat_id"],
            unread_phrase(unread)
        ));
        let messages = chat["messages"].as_array().cloned().unwrap_or_default();
        if unread > messages.len() as i64 {
            text.push_str("  ...\n");
        }
        for m in &messages {
            text.push_str(&format!("  {}\n", said(m)));
        }
        if let Some(link) = chat["link"].as_str() {
            text.push_str(&format!("  Answer: {link}\n"));
        }
    }
    text.push_str(&format!(
        "\nSent by {org}'s chat because these messages stayed unread.\n"
    ));
    (subject, text)
}

/// What a browser's service worker gets: a title and body to show, and where to go.
pub fn push_payload(n: &Notification) -> Vec<u8> {
    if let Some(line) = event_line(n) {
        return serde_json::json!({
            "title": n.about.as_ref().map_or("", |a| a["subject"]["name"].as_str().unwrap_or("")),
            "body": line.chars().take(200).collect::<String>(),
            "notification_id": n.id,
            "kind": n.kind,
        })
        .to_string()
        .into_bytes();
    }
    let first = &n.chats[0];
    let last = first["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(said)
        .unwrap_or_default();
    serde_json::json!({
        "title": unread_phrase(n.unread),
        "body": last.chars().take(200).collect::<String>(),
        "notification_id": n.id,
        "chat_id": first["chat_id"],
        "link": first["link"],
        "unread": n.unread,
    })
    .to_string()
    .into_bytes()
}
