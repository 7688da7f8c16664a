//! What a node counts, for `GET /metrics` (Prometheus' text format): one [`Metrics`] per
//! server, handed to every layer that counts something. Each count is an atomic add; the
//! hot paths (a send, a delivery) count whole batches and rooms at once.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set of one label.
type Label = Vec<(&'static str, &'static str)>;

/// The counts of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Live sockets on this node.
    pub sockets_open: Gauge,
    /// Messages stored.
    pub sends: Counter,
    /// Frames handed to sockets (a message to a room of five is five).
    pub deliveries: Counter,
    /// Sends answered with an ack (a repeated `local_id` too), counted a batch at a time.
    pub acks: Counter,
    /// Sends answered with an error, by its code (`invalid`, `unavailable`...).
    pub refusals: Family<Label, Counter>,
    /// Jobs (sends and marks) per stored batch.
    pub batch_jobs: Histogram,
    /// Seconds a batch took to store, from the writer taking it to its commit.
    pub batch_seconds: Histogram,
    /// Batches whose journal failed (the database refused or went away).
    pub batch_failures: Counter,
    /// Events published to the other nodes, and those dropped on a full queue.
    pub bus_published: Counter,
    pub bus_dropped: Counter,
    /// Events waiting to be published, read at each scrape.
    pub bus_queued: Gauge,
    /// Sockets closed by the server, by reason (`slow_consumer`, `timeout`...).
    pub socket_closes: Family<Label, Counter>,
    /// Client frames refused for coming too fast.
    pub rate_limited_frames: Counter,
    /// HTTP responses, by status class (`2xx`...); 5xx are mostly the database away.
    pub responses: Family<Label, Counter>,
    /// Files uploaded and stored, and files whose bytes were removed.
    pub files_stored: Counter,
    pub files_removed: Counter,
    /// Uploads whose bytes are being stored now.
    pub uploads_in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("souq");
        let sockets_open = Gauge::default();
        let sends = Counter::default();
        let deliveries = Counter::default();
        let acks = Counter::default();
        let refusals = Family::default();
        let batch_jobs = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let batch_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let batch_failures = Counter::default();
        let bus_published = Counter::default();
        let bus_dropped = Counter::default();
        let bus_queued = Gauge::default();
        let socket_closes = Family::default();
        let rate_limited_frames = Counter::default();
        let responses = Family::default();
        let files_stored = Counter::default();
        let files_removed = Counter::default();
        let uploads_in_flight = Gauge::default();
        let r = &mut registry;
        r.register(
            "sockets_open",
            "Live sockets on this node",
            sockets_open.clone(),
        );
        r.register("sends", "Messages stored by this node", sends.clone());
        r.register(
            "deliveries",
            "Frames handed to this node's sockets",
            deliveries.clone(),
        );
        r.register("acks", "Sends answered with an ack", acks.clone());
        r.register(
            "refusals",
            "Sends answered with an error, by code",
            refusals.clone(),
        );
        r.register(
            "batch_jobs",
            "Sends and marks per stored batch",
            batch_jobs.clone(),
        );
        r.register(
            "batch_seconds",
            "Seconds from taking a batch to its commit",
            batch_seconds.clone(),
        );
        r.register(
            "batch_failures",
            "Batches the database refused or lost",
            batch_failures.clone(),
        );
        r.register(
            "bus_published",
            "Events published to the other nodes",
            bus_published.clone(),
        );
        r.register(
            "bus_dropped",
            "Events dropped on a full queue to Redis",
            bus_dropped.clone(),
        );
        r.register(
            "bus_queued",
            "Events waiting to be published",
            bus_queued.clone(),
        );
        r.register(
            "socket_closes",
            "Sockets closed by the server, by reason",
            socket_closes.clone(),
        );
        r.register(
            "rate_limited_frames",
            "Client frames refused as too fast",
            rate_limited_frames.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses, by status class",
            responses.clone(),
        );
        r.register(
            "files_stored",
            "Files uploaded and stored",
            files_stored.clone(),
        );
        r.register(
            "files_removed",
            "Files whose bytes were removed (retention, erasure)",
            files_removed.clone(),
        );
        r.register(
            "uploads_in_flight",
            "Uploads whose bytes are being stored now",
            uploads_in_flight.clone(),
        );
        Metrics {
            registry,
            sockets_open,
            sends,
            deliveries,
            acks,
            refusals,
            batch_jobs,
            batch_seconds,
            batch_failures,
            bus_published,
            bus_dropped,
            bus_queued,
            socket_closes,
            rate_limited_frames,
            responses,
            files_stored,
            files_removed,
            uploads_in_flight,
        }
    }
}

impl Metrics {
    /// Every metric in the text format (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts `n` sends refused with `code`.
    pub fn refused(&self, code: &'static str, n: u64) {
        self.refusals
            .get_or_create(&Metrics::label("code", code))
            .inc_by(n);
    }

    /// One label's set: `("code", "unavailable")`.
    pub fn label(name: &'static str, value: &'static str) -> Label {
        vec![(name, value)]
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn counts_come_out_in_the_text_format() {
        let m = Metrics::default();
        m.sends.inc_by(3);
        m.refusals
            .get_or_create(&Metrics::label("code", "unavailable"))
            .inc();
        m.batch_jobs.observe(4.0);
        let text = m.encode();
        assert!(text.contains("souq_sends_total 3"), "{text}");
        assert!(
            text.contains(r#"souq_refusals_total{code="unavailable"} 1"#),
            "{text}"
        );
        assert!(text.contains("souq_batch_jobs_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
