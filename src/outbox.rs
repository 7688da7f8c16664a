//! Delivers webhook events from the outbox (see `domain::webhooks`): every node runs a
//! loop that claims each active endpoint's due events and posts them, signed, each on a
//! task of its own. An endpoint has at most [`PER_ENDPOINT`] posts in flight, so a slow
//! or dead one holds only its own events back; sends never wait on any of this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::domain::Core;
use crate::domain::webhooks::{Claimed, RetryPolicy, sign};

/// How webhook deliveries go.
#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// Longest a post may take before it counts as failed.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// How often a node looks for due events: the most a delivery waits after its commit.
/// Each look is one indexed read per active endpoint (none without endpoints).
const POLL: Duration = Duration::from_millis(200);

/// Posts in flight per endpoint.
const PER_ENDPOINT: usize = 16;

/// Delivered events are kept this long (for the API's listing), then forgotten.
const KEEP_DONE_MS: i64 = 7 * 24 * 3600 * 1000;

/// Delivers until the core is gone.
pub async fn run(core: Weak<Core>, settings: WebhookSettings) {
    // reqwest takes the process's TLS provider: ring, as the Redis connections do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .user_agent(concat!("souq-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the webhook client; no webhooks will go out");
            return;
        }
    };
    // A claim lasts the post's timeout and then some (for recording the outcome): a node
    // that dies mid-post gives the event back when it runs out.
    let lease_ms = settings.timeout.as_millis() as i64 + 5_000;
    let in_flight: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let mut rounds = 0u64;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(core) = core.upgrade() else { return };
        rounds += 1;
        if rounds.is_multiple_of(18_000) {
            // About hourly.
            if let Err(e) = core.prune_webhook_events(KEEP_DONE_MS).await {
                tracing::warn!(error = %e, "cannot forget delivered webhook events");
            }
        }
        let endpoints = match core.active_webhooks().await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhooks");
                continue;
            }
        };
        for (webhook_id, url, secret) in endpoints {
            let busy = in_flight
                .lock()
                .map(|m| m.get(&webhook_id).copied().unwrap_or(0))
                .unwrap_or(PER_ENDPOINT);
            let room = PER_ENDPOINT.saturating_sub(busy);
            if room == 0 {
                continue;
            }
            let claimed = match core
                .claim_webhook_events(webhook_id, room as u64, lease_ms)
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, webhook_id, "cannot claim webhook events");
                    continue;
                }
            };
            for event in claimed {
                if let Ok(mut m) = in_flight.lock() {
                    *m.entry(webhook_id).or_default() += 1;
                }
                let post = Post {
                    core: core.clone(),
                    client: client.clone(),
                    url: url.clone(),
                    secret: secret.clone(),
                    retry: settings.retry,
                    in_flight: in_flight.clone(),
                };
                tokio::spawn(post.deliver(event));
            }
        }
    }
}

/// One post of one event, and what to tell the outbox after.
struct Post {
    core: Arc<Core>,
    client: reqwest::Client,
    url: String,
    secret: String,
    retry: RetryPolicy,
    in_flight: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Post {
    async fn deliver(self, event: Claimed) {
        if let Err(e) = self.try_deliver(&event).await {
            // The outbox could not be told: the lease runs out and the event goes again.
            tracing::warn!(error = %e, event = event.id, "cannot record a webhook delivery");
        }
        if let Ok(mut m) = self.in_flight.lock()
            && let Some(n) = m.get_mut(&event.webhook_id)
        {
            *n = n.saturating_sub(1);
        }
    }

    async fn try_deliver(&self, event: &Claimed) -> Result<(), crate::domain::Error> {
        let core = &self.core;
        let Some(body) = core.webhook_body(event).await? else {
            return core
                .webhook_done(event.id, Some("what it was about is gone"))
                .await;
        };
        let bytes =
            serde_json::to_vec(&body).map_err(|e| crate::domain::Error::Internal(e.to_string()))?;
        // The receiver's clock is the world's, not the server's rules' (which tests move).
        let timestamp = crate::clock::system_ms() / 1000;
        let signature = sign(&self.secret, timestamp, &bytes);
        let sent = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("souq-event-id", format!("evt_{}", event.id))
            .header("souq-event-type", &event.kind)
            .header("souq-signature", format!("t={timestamp},v1={signature}"))
            .body(bytes)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => core.webhook_done(event.id, None).await,
            Ok(answer) => {
                let error = format!("HTTP {}", answer.status().as_u16());
                core.webhook_failed(event, &error, &self.retry).await
            }
            Err(e) => {
                let error = if e.is_timeout() {
                    "timed out".to_owned()
                } else if e.is_connect() {
                    "cannot connect".to_owned()
                } else {
                    e.to_string()
                };
                core.webhook_failed(event, &error, &self.retry).await
            }
        }
    }
}
