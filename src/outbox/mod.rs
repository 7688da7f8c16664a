//! Delivers what the outbox holds. Webhook events (see `domain::webhooks`): every node
//! runs a loop that claims each active endpoint's due events and posts them, signed, each
//! on a task of its own, and records the outcomes a round at a time. An endpoint has at
//! most [`PER_ENDPOINT`] posts in flight, so a slow or dead one holds only its own events
//! back; sends never wait on any of this. Notifications' e-mail and Web Push go the same
//! way ([`deliveries`]).

pub mod deliveries;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::domain::Core;
use crate::domain::webhooks::{Claimed, Delivery, Outcome, RetryPolicy, sign};

/// How webhook deliveries go.
#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// Longest a post may take before it counts as failed.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Whether endpoints on loopback or private addresses are posted to (tests, a private
    /// network); otherwise such an event fails with "private address refused".
    pub allow_private: bool,
}

/// Whether `url` names this machine or a private network by address (or `localhost`):
/// what an organisation's admin must not make a node post to, unless allowed. A name
/// that resolves to such an address is caught when it is resolved ([`PublicOnly`]).
pub(crate) fn private_target(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return true;
    };
    let Some(host) = url.host_str() else {
        return true;
    };
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => private_ip(ip),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost"),
    }
}

/// Whether an address is this machine's, a private network's, or link-local (where a
/// cloud's metadata service answers).
fn private_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => private_ip(std::net::IpAddr::V4(v4)),
            None => {
                ip.is_loopback()
                    || ip.is_unspecified()
                    || (ip.segments()[0] & 0xfe00) == 0xfc00
                    || (ip.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

/// What a name that leads only to private addresses fails with.
const PRIVATE_REFUSED: &str = "private address refused";

/// Resolves names as the system does, keeping only public addresses: a name an admin
/// points at this machine or its network (`metadata.internal`, a record to 10.0.0.5)
/// reaches it no more than the address would.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !private_ip(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(PRIVATE_REFUSED.into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a post failed, in a word: a refused private address, a timeout, no connection.
pub(crate) fn failure(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.to_string() == PRIVATE_REFUSED {
            return PRIVATE_REFUSED.into();
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.to_string()
    }
}

/// The HTTP client of an outbox loop: posts end within `timeout`, and a redirect (which
/// could lead anywhere, an internal address) counts as a failure. `None`, said in the
/// log, when it cannot be made: then no `what` go out.
pub(crate) fn client(
    timeout: Duration,
    allow_private: bool,
    what: &str,
) -> Option<reqwest::Client> {
    // reqwest takes the process's TLS provider: ring, as the Redis connections do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("souq/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
    }
    match builder.build() {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::error!(error = %e, "cannot make an HTTP client; no {what} will go out");
            None
        }
    }
}

/// How often an idle node looks for due events: the most a delivery waits after its
/// commit when nothing else is going on. Each look is one claim per active endpoint.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// Posts in flight per endpoint (a chat has one at a time, so this many chats' events go
/// out side by side).
const PER_ENDPOINT: usize = 256;

/// Delivered events are kept this long (for the API's listing), then forgotten.
const KEEP_DONE_MS: i64 = 7 * 24 * 3600 * 1000;

/// Delivers until the core is gone. Each round records the outcomes of the posts that
/// finished since the last (one transaction), then claims what is due for every endpoint
/// with room; with nothing claimed, it waits for a post to finish or for [`POLL`].
pub async fn run(core: Weak<Core>, settings: WebhookSettings) {
    let Some(client) = client(settings.timeout, settings.allow_private, "webhooks") else {
        return;
    };
    // A claim lasts the post's timeout and then some (for recording the outcome): a node
    // that dies mid-post gives the event back when it runs out.
    let lease_ms = settings.timeout.as_millis() as i64 + 10_000;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let finished = Arc::new(Notify::new());
    let mut in_flight: HashMap<i64, usize> = HashMap::new();
    let mut last_prune = std::time::Instant::now();
    loop {
        let Some(core) = core.upgrade() else { return };
        let mut outcomes = Vec::new();
        while let Ok(outcome) = done_rx.try_recv() {
            if let Some(n) = in_flight.get_mut(&outcome.event.webhook_id) {
                *n = n.saturating_sub(1);
            }
            outcomes.push(outcome);
        }
        if let Err(e) = core
            .record_webhook_outcomes(&outcomes, &settings.retry)
            .await
        {
            // Not recorded: their leases run out and they are sent again.
            tracing::warn!(error = %e, "cannot record webhook deliveries");
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            if let Err(e) = core.prune_outbox(KEEP_DONE_MS).await {
                tracing::warn!(error = %e, "cannot forget what the outbox delivered");
            }
        }
        let mut claimed_any = false;
        match core.active_webhooks().await {
            Ok(endpoints) => {
                for (webhook_id, url, secret) in endpoints {
                    let busy = in_flight.get(&webhook_id).copied().unwrap_or(0);
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
                    claimed_any |= !claimed.is_empty();
                    for event in claimed {
                        *in_flight.entry(webhook_id).or_default() += 1;
                        let post = Post {
                            core: core.clone(),
                            client: client.clone(),
                            url: url.clone(),
                            secret: secret.clone(),
                            done: done_tx.clone(),
                            finished: finished.clone(),
                            timeout: settings.timeout,
                            allow_private: settings.allow_private,
                        };
                        tokio::spawn(post.deliver(event));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the webhooks"),
        }
        drop(core);
        if !claimed_any {
            let _ = tokio::time::timeout(POLL, finished.notified()).await;
        }
    }
}

/// One post of one event; its outcome goes back to the loop.
struct Post {
    core: Arc<Core>,
    client: reqwest::Client,
    url: String,
    secret: String,
    done: mpsc::UnboundedSender<Outcome>,
    finished: Arc<Notify>,
    timeout: Duration,
    allow_private: bool,
}

impl Post {
    async fn deliver(self, event: Claimed) {
        // The whole try (reading the event, the post) within the timeout, so that it
        // ends well inside its claim's lease.
        let result = if !self.allow_private && private_target(&self.url) {
            Delivery::Failed("private address refused".into())
        } else {
            tokio::time::timeout(self.timeout, self.post(&event))
                .await
                .unwrap_or_else(|_| Delivery::Failed("timed out".into()))
        };
        let _ = self.done.send(Outcome { event, result });
        self.finished.notify_one();
    }

    async fn post(&self, event: &Claimed) -> Delivery {
        let body = match self.core.webhook_body(event).await {
            Ok(Some(body)) => body,
            Ok(None) => return Delivery::Gone,
            Err(e) => return Delivery::Failed(format!("cannot read the event: {e}")),
        };
        let bytes = match serde_json::to_vec(&body) {
            Ok(bytes) => bytes,
            Err(e) => return Delivery::Failed(e.to_string()),
        };
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
            Ok(answer) if answer.status().is_success() => Delivery::Delivered,
            Ok(answer) => Delivery::Failed(format!("HTTP {}", answer.status().as_u16())),
            Err(e) => Delivery::Failed(failure(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::private_target;

    #[tokio::test]
    async fn a_name_that_leads_only_to_private_addresses_is_refused() {
        use reqwest::dns::Resolve;
        for name in ["localhost", "127.0.0.1"] {
            let resolved = super::PublicOnly
                .resolve(name.parse().expect("a name"))
                .await;
            let Err(e) = resolved else {
                panic!("{name} resolved to a public address");
            };
            assert_eq!(e.to_string(), super::PRIVATE_REFUSED);
        }
        assert!(super::private_ip(
            "::ffff:10.1.2.3".parse().expect("an address")
        ));
    }

    #[test]
    fn private_and_local_addresses_are_told_apart() {
        for private in [
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://localhost:9000/",
            "http://0.0.0.0/",
        ] {
            assert!(private_target(private), "{private}");
        }
        for public in ["https://hooks.example.com/souq", "http://93.184.216.34/"] {
            assert!(!private_target(public), "{public}");
        }
    }
}
