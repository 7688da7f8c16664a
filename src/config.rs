//! One typed configuration, from flags and environment variables, with defaults that
//! run out of the box: `cargo run --release` serves on 127.0.0.1:8080 with a SQLite file
//! in the working folder.

use std::net::SocketAddr;
use std::time::Duration;

use crate::domain::{FileLimits, Limits};
use crate::objects::{Place, S3Place};

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SOUQ_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Database: `sqlite://FILE` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://souq.db")]
    pub database_url: String,

    /// Redis for several nodes (`redis://HOST:6379`); unset, events stay in this process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// REDIS_URL names a Redis Cluster (Redis 7 or later): one or more of its nodes,
    /// comma-separated (`redis://HOST1:7001,redis://HOST2:7002`). Chats' channels are
    /// spread over its shards by slot (sharded pub/sub).
    #[arg(long, env = "SOUQ_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// With a `rediss://` Redis: a PEM file of the certificate authority that signed its
    /// certificate (a private CA), trusted instead of the system's roots.
    #[arg(long, env = "SOUQ_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix of souq's Redis keys and channels (deployments or tests sharing a Redis
    /// each use their own).
    #[arg(long, env = "SOUQ_REDIS_PREFIX", default_value = "souq")]
    pub redis_prefix: String,

    /// With Redis: seconds a node's claim that an operator is connected lasts unless
    /// refreshed; an operator of a dead node goes offline within about this long.
    #[arg(long, env = "SOUQ_PRESENCE_TTL", default_value_t = 30)]
    pub presence_ttl: u64,

    /// Most database connections held open by this process for requests.
    #[arg(long, env = "SOUQ_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// On PostgreSQL: message writers of this node, each with a connection of its own
    /// (besides db-max-connections). At low load one batch is in flight at a time; under
    /// load each writer takes a share of the chats. Unset: 2, or 1 with Redis, where the
    /// other nodes bring theirs (more writers than that make smaller batches under load,
    /// each with its own commit).
    #[arg(long, env = "SOUQ_PG_WRITERS")]
    pub pg_writers: Option<u32>,

    /// Where uploaded files are kept: a folder, or `s3://BUCKET[/PREFIX]` (any
    /// S3-compatible store; see the s3-* settings). Unset: a folder beside the SQLite
    /// file (`NAME-files`), or `souq-files` in the working folder.
    #[arg(long, env = "SOUQ_FILE_STORE")]
    pub file_store: Option<String>,

    /// With an s3:// file store: the address of an S3-compatible server
    /// (`https://...`; `http://` on a private network). Unset: AWS.
    #[arg(long, env = "SOUQ_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// With an s3:// file store: its region.
    #[arg(long, env = "SOUQ_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// With an s3:// file store: the access key.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// With an s3:// file store: the secret key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Largest file that may be uploaded, in bytes.
    #[arg(long, env = "SOUQ_MAX_FILE_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_file_bytes: u64,

    /// Most bytes of files one organisation may keep (0: no limit).
    #[arg(long, env = "SOUQ_MAX_ORG_FILE_BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    pub max_org_file_bytes: u64,

    /// Content types of the files taken, as sniffed from their bytes, comma-separated;
    /// `image/*` takes every image type.
    #[arg(long, env = "SOUQ_FILE_TYPES", default_value = crate::domain::DEFAULT_TYPES)]
    pub file_types: String,

    /// Seconds a file's download link lasts at least (at most twice that).
    #[arg(long, env = "SOUQ_FILE_LINK_TTL", default_value_t = 3600)]
    pub file_link_ttl: i64,

    /// Seconds a webhook post may take before it counts as failed.
    #[arg(long, env = "SOUQ_WEBHOOK_TIMEOUT", default_value_t = 10)]
    pub webhook_timeout: u64,

    /// Seconds a webhook event is retried (with backoff) before it is dead.
    #[arg(long, env = "SOUQ_WEBHOOK_RETRY_FOR", default_value_t = 24 * 3600)]
    pub webhook_retry_for: u64,

    /// Post webhooks to loopback and private addresses too (a private network, tests);
    /// refused by default, so that an organisation cannot reach the node's own network.
    #[arg(long, env = "SOUQ_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// The contact Web Push services are given for this server (RFC 8292's `sub`): a
    /// `mailto:` or `https:` URL. The timeout, retry period and private-address rule of
    /// webhooks apply to e-mail and push notifications too.
    #[arg(
        long,
        env = "SOUQ_VAPID_SUBJECT",
        default_value = "mailto:souq@localhost"
    )]
    pub vapid_subject: String,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "SOUQ_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest message text, in characters.
    #[arg(long, env = "SOUQ_MAX_TEXT_CHARS", default_value_t = 10_000)]
    pub max_text_chars: usize,

    /// Lifetime of an admin access token, in seconds.
    #[arg(long, env = "SOUQ_ACCESS_TOKEN_TTL", default_value_t = 3600)]
    pub access_token_ttl: i64,

    /// Lifetime of an admin refresh token, in seconds.
    #[arg(long, env = "SOUQ_REFRESH_TOKEN_TTL", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl: i64,

    /// Lifetime of an operator or customer session token, in seconds.
    #[arg(long, env = "SOUQ_SESSION_TTL", default_value_t = 30 * 24 * 3600)]
    pub session_ttl: i64,

    /// Frames queued for one socket before it is closed as a slow consumer (4008).
    #[arg(long, env = "SOUQ_WS_QUEUE", default_value_t = 1024)]
    pub ws_queue: usize,

    /// Largest WebSocket frame a client may send, in bytes.
    #[arg(long, env = "SOUQ_WS_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub ws_max_frame_bytes: usize,

    /// Client frames per second a socket may send (bursts of twice that).
    #[arg(long, env = "SOUQ_WS_FRAMES_PER_SEC", default_value_t = 50)]
    pub ws_frames_per_sec: u32,

    /// Threads that live sockets run on, each socket on its person's (0: on the shared
    /// runtime, with HTTP). Unset: one per core.
    #[arg(long, env = "SOUQ_SOCKET_THREADS")]
    pub socket_threads: Option<usize>,

    /// Seconds between server pings on a socket.
    #[arg(long, env = "SOUQ_WS_PING", default_value_t = 20)]
    pub ws_ping: u64,

    /// Seconds of silence (no frame, no pong) after which a socket is dropped.
    #[arg(long, env = "SOUQ_WS_IDLE_TIMEOUT", default_value_t = 60)]
    pub ws_idle_timeout: u64,

    /// Longest a send waits for its commit, and a request for a database connection, in
    /// seconds: past it the client is answered `unavailable` (503) rather than kept
    /// waiting out a database outage.
    #[arg(long, env = "SOUQ_WRITE_TIMEOUT", default_value_t = 5)]
    pub write_timeout: u64,

    /// Longest a client may take to send a request's body, in seconds; slower ones get 408.
    #[arg(long, env = "SOUQ_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,

    /// Most connections open at once, sockets included; past it new ones get 503. Unset:
    /// the process's open-files limit less 64 (for the database, Redis and files).
    #[arg(long, env = "SOUQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Read the client's address from the last entry of `X-Forwarded-For` (the one your
    /// reverse proxy appends) rather than from the connection. Only behind a proxy that
    /// sets it: otherwise any client can claim any address.
    #[arg(long, env = "SOUQ_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,

    /// Browser origins that may call the iqstore API with the client's cookie, besides
    /// the sites of the organisations' active domains (which always may), comma-separated
    /// (`https://shop.example`); `*` lets any origin.
    #[arg(long, env = "SOUQ_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,

    /// New widget visitors one client address may make per minute (0: no limit).
    #[arg(long, env = "SOUQ_VISITORS_PER_MINUTE", default_value_t = 20)]
    pub visitors_per_minute: u32,

    /// New widget visitors one widget may get per minute from all addresses (0: no limit).
    #[arg(long, env = "SOUQ_VISITORS_PER_MINUTE_PER_KEY", default_value_t = 600)]
    pub visitors_per_minute_per_key: u32,

    /// Failed sign-ins one client address may make per minute (0: no limit); past it,
    /// every sign-in from there gets 429 until the minute has refilled.
    #[arg(long, env = "SOUQ_FAILED_SIGN_INS_PER_MINUTE", default_value_t = 10)]
    pub failed_sign_ins_per_minute: u32,

    /// How log lines are written: `text` for people, `json` for one JSON object a line.
    #[arg(long, env = "SOUQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// On shutdown, how long open requests get to finish, in seconds.
    #[arg(long, env = "SOUQ_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// On shutdown, how long to go on serving first while /readyz answers 503, in seconds,
    /// so that a load balancer sends new clients elsewhere before the node stops.
    #[arg(long, env = "SOUQ_SHUTDOWN_DELAY", default_value_t = 0)]
    pub shutdown_delay: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Most socket threads a node runs, set or not.
pub const MAX_SOCKET_THREADS: usize = 256;

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// The defaults, as `souq` with no flags and no environment would run.
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: database_url.into(),
            redis_url: None,
            redis_ca_file: None,
            redis_cluster: false,
            redis_prefix: "souq".into(),
            presence_ttl: 30,
            db_max_connections: 16,
            pg_writers: None,
            file_store: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            max_file_bytes: 25 * 1024 * 1024,
            max_org_file_bytes: 10 * 1024 * 1024 * 1024,
            file_types: crate::domain::DEFAULT_TYPES.into(),
            file_link_ttl: 3600,
            webhook_timeout: 10,
            webhook_retry_for: 24 * 3600,
            webhook_allow_private: false,
            vapid_subject: "mailto:souq@localhost".into(),
            max_body_bytes: 1024 * 1024,
            max_text_chars: 10_000,
            access_token_ttl: 3600,
            refresh_token_ttl: 30 * 24 * 3600,
            session_ttl: 30 * 24 * 3600,
            ws_queue: 1024,
            ws_max_frame_bytes: 64 * 1024,
            ws_frames_per_sec: 50,
            socket_threads: None,
            ws_ping: 20,
            ws_idle_timeout: 60,
            write_timeout: 5,
            body_timeout: 30,
            max_connections: None,
            trust_forwarded_for: false,
            cors_origins: String::new(),
            visitors_per_minute: 20,
            visitors_per_minute_per_key: 600,
            failed_sign_ins_per_minute: 10,
            log_format: LogFormat::Text,
            shutdown_grace: 10,
            shutdown_delay: 0,
        }
    }

    /// Rejects values that cannot work, saying which and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError(format!(
                "DATABASE_URL must start with sqlite: or postgres:// (got {url:?})"
            )));
        }
        if let Some(redis) = &self.redis_url {
            let urls: Vec<&str> = redis.split(',').map(str::trim).collect();
            if let Some(bad) = urls
                .iter()
                .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return Err(ConfigError(format!(
                    "REDIS_URL must start with redis:// or, over TLS, rediss:// (got {bad:?})"
                )));
            }
            if urls.len() > 1 && !self.redis_cluster {
                return Err(ConfigError(
                    "several REDIS_URLs name a Redis Cluster: add --redis-cluster".into(),
                ));
            }
        }
        if self.redis_cluster && self.redis_url.is_none() {
            return Err(ConfigError(
                "redis-cluster goes with a REDIS_URL (its nodes)".into(),
            ));
        }
        if let Some(file) = &self.redis_ca_file {
            if !self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                return Err(ConfigError(
                    "redis-ca-file goes with a rediss:// REDIS_URL (Redis over TLS)".into(),
                ));
            }
            if let Err(e) = std::fs::metadata(file) {
                return Err(ConfigError(format!(
                    "cannot read redis-ca-file {}: {e}",
                    file.display()
                )));
            }
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(ConfigError("redis-prefix must be a non-empty word".into()));
        }
        if self.presence_ttl < 3 {
            return Err(ConfigError(
                "presence-ttl must be at least 3 seconds".into(),
            ));
        }
        if self.db_max_connections == 0 {
            return Err(ConfigError("db-max-connections must be at least 1".into()));
        }
        if let Some(n) = self.pg_writers
            && !(1..=16).contains(&n)
        {
            return Err(ConfigError("pg-writers must be from 1 to 16".into()));
        }
        if self.socket_threads.is_some_and(|n| n > MAX_SOCKET_THREADS) {
            return Err(ConfigError(format!(
                "socket-threads must be at most {MAX_SOCKET_THREADS}"
            )));
        }
        self.file_place()?;
        if self.max_file_bytes == 0 || self.file_link_ttl <= 0 {
            return Err(ConfigError(
                "max-file-bytes and file-link-ttl must be at least 1".into(),
            ));
        }
        if self.file_types().is_empty() {
            return Err(ConfigError("file-types must name at least one type".into()));
        }
        if self.webhook_timeout == 0 || self.webhook_retry_for == 0 {
            return Err(ConfigError(
                "webhook-timeout and webhook-retry-for must be at least 1 second".into(),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError("max-body-bytes must be at least 1024".into()));
        }
        if self.write_timeout == 0 {
            return Err(ConfigError(
                "write-timeout must be at least 1 second".into(),
            ));
        }
        if self.body_timeout == 0 {
            return Err(ConfigError("body-timeout must be at least 1 second".into()));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError("max-connections must be at least 1".into()));
        }
        if self.max_text_chars == 0 {
            return Err(ConfigError("max-text-chars must be at least 1".into()));
        }
        for (name, v) in [
            ("access-token-ttl", self.access_token_ttl),
            ("refresh-token-ttl", self.refresh_token_ttl),
            ("session-ttl", self.session_ttl),
        ] {
            if v <= 0 {
                return Err(ConfigError(format!(
                    "{name} must be a positive number of seconds"
                )));
            }
        }
        if self.ws_queue < 16 {
            return Err(ConfigError("ws-queue must be at least 16".into()));
        }
        if self.ws_max_frame_bytes < 1024 {
            return Err(ConfigError(
                "ws-max-frame-bytes must be at least 1024".into(),
            ));
        }
        if self.ws_frames_per_sec == 0 || self.ws_ping == 0 {
            return Err(ConfigError(
                "ws-frames-per-sec and ws-ping must be at least 1".into(),
            ));
        }
        if self.ws_idle_timeout <= self.ws_ping {
            return Err(ConfigError(
                "ws-idle-timeout must be longer than ws-ping".into(),
            ));
        }
        if self.refresh_token_ttl < self.access_token_ttl {
            return Err(ConfigError(
                "refresh-token-ttl must not be shorter than access-token-ttl".into(),
            ));
        }
        Ok(())
    }

    /// PostgreSQL message writers of this node: as set, or 2 alone and 1 beside other
    /// nodes (with Redis).
    pub fn postgres_writers(&self) -> u32 {
        self.pg_writers.unwrap_or(if self.redis_url.is_some() {
            1
        } else {
            crate::store::POSTGRES_WRITERS
        })
    }

    /// Socket threads: as set, or one per core up to [`MAX_SOCKET_THREADS`].
    pub fn socket_threads(&self) -> usize {
        self.socket_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_SOCKET_THREADS)
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_text_chars: self.max_text_chars,
            access_token_ttl_s: self.access_token_ttl,
            refresh_token_ttl_s: self.refresh_token_ttl,
            session_ttl_s: self.session_ttl,
            visitors_per_minute: self.visitors_per_minute,
            visitors_per_minute_per_key: self.visitors_per_minute_per_key,
            failed_sign_ins_per_minute: self.failed_sign_ins_per_minute,
            write_timeout: Duration::from_secs(self.write_timeout),
        }
    }

    /// Where files are kept (see `file_store`).
    pub fn file_place(&self) -> Result<Place, ConfigError> {
        let s3 = S3Place {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
        };
        let spec = match &self.file_store {
            Some(spec) => spec.clone(),
            None => {
                let sqlite_file = self
                    .database_url
                    .strip_prefix("sqlite://")
                    .or_else(|| self.database_url.strip_prefix("sqlite:"))
                    .map(|f| f.split('?').next().unwrap_or(f))
                    .filter(|f| !f.is_empty() && !f.contains(":memory:"));
                match sqlite_file {
                    Some(file) => {
                        let file = std::path::Path::new(file);
                        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("souq");
                        file.with_file_name(format!("{stem}-files"))
                            .to_string_lossy()
                            .into_owned()
                    }
                    None => "souq-files".into(),
                }
            }
        };
        let place = Place::parse(&spec, s3).map_err(|e| ConfigError(format!("file-store: {e}")))?;
        if let Place::S3(s3) = &place
            && s3.access_key_id.is_some() != s3.secret_access_key.is_some()
        {
            return Err(ConfigError(
                "an s3:// file store needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
            ));
        }
        Ok(place)
    }

    fn file_types(&self) -> Vec<String> {
        self.file_types
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// What files are taken, and how long their links last.
    pub fn file_limits(&self) -> FileLimits {
        FileLimits {
            max_file_bytes: self.max_file_bytes,
            max_org_bytes: self.max_org_file_bytes,
            types: self.file_types(),
            link_ttl_s: self.file_link_ttl,
        }
    }

    /// How webhook events are delivered: a try every so often, doubling from 5 s up to
    /// 15 minutes, for `webhook-retry-for`.
    pub fn webhook_settings(&self) -> crate::outbox::WebhookSettings {
        crate::outbox::WebhookSettings {
            timeout: Duration::from_secs(self.webhook_timeout),
            retry: crate::domain::webhooks::RetryPolicy {
                first_ms: 5_000,
                max_ms: 15 * 60 * 1000,
                retry_for_ms: (self.webhook_retry_for as i64).saturating_mul(1000),
            },
            allow_private: self.webhook_allow_private,
        }
    }

    /// How notifications' e-mail and Web Push go: as webhooks do.
    pub fn delivery_settings(&self) -> crate::outbox::deliveries::DeliverySettings {
        let webhooks = self.webhook_settings();
        crate::outbox::deliveries::DeliverySettings {
            timeout: webhooks.timeout,
            retry: webhooks.retry,
            allow_private: webhooks.allow_private,
            vapid_subject: self.vapid_subject.clone(),
        }
    }

    /// What the HTTP edge allows a client.
    pub fn edge(&self) -> crate::http::Edge {
        crate::http::Edge {
            max_body_bytes: self.max_body_bytes,
            body_timeout: Duration::from_secs(self.body_timeout),
            max_connections: self
                .max_connections
                .unwrap_or_else(crate::http::default_max_connections),
            trust_forwarded_for: self.trust_forwarded_for,
            cors_origins: self
                .cors_origins
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    pub fn ws_limits(&self) -> crate::socket::WsLimits {
        crate::socket::WsLimits {
            queue: self.ws_queue,
            max_frame_bytes: self.ws_max_frame_bytes,
            frames_per_sec: self.ws_frames_per_sec,
            ping_every: Duration::from_secs(self.ws_ping),
            idle_timeout: Duration::from_secs(self.ws_idle_timeout),
        }
    }

    pub fn redis(&self) -> Option<crate::bus::RedisConfig> {
        self.redis_url.as_ref().map(|url| crate::bus::RedisConfig {
            url: url.clone(),
            ca_file: self.redis_ca_file.clone(),
            cluster: self.redis_cluster,
            prefix: self.redis_prefix.clone(),
            presence_ttl: Duration::from_secs(self.presence_ttl),
        })
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn a_node_has_two_postgres_writers_alone_and_one_beside_other_nodes() {
        let mut config = Config::with_database("postgres://souq@db/souq");
        assert_eq!(config.postgres_writers(), 2, "alone");
        config.redis_url = Some("redis://cache:6379".into());
        assert_eq!(config.postgres_writers(), 1, "with Redis");
        config.pg_writers = Some(3);
        assert_eq!(config.postgres_writers(), 3, "as set");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn postgres_writers_out_of_range_are_refused_at_start() {
        for n in [0, 17] {
            let mut config = Config::with_database("postgres://souq@db/souq");
            config.pg_writers = Some(n);
            let refused = config.validate().expect_err("accepted");
            assert!(refused.to_string().contains("pg-writers"), "{n}: {refused}");
        }
    }

    #[test]
    fn a_redis_ca_file_goes_with_redis_over_tls_and_must_be_there() {
        let mut config = Config::with_database("postgres://souq@db/souq");
        config.redis_ca_file = Some(std::env::temp_dir());
        config.redis_url = Some("redis://cache:6379".into());
        let refused = config.validate().expect_err("accepted without TLS");
        assert!(refused.to_string().contains("rediss://"), "{refused}");
        config.redis_url = Some("rediss://cache:6380".into());
        assert!(
            config.validate().is_ok(),
            "a CA file that is there, over TLS"
        );
        config.redis_ca_file = Some("/nonexistent/ca.pem".into());
        let refused = config.validate().expect_err("accepted a missing file");
        assert!(
            refused.to_string().contains("/nonexistent/ca.pem"),
            "{refused}"
        );
    }

    #[test]
    fn several_redis_nodes_name_a_cluster_and_each_is_a_redis_url() {
        let mut config = Config::with_database("postgres://souq@db/souq");
        config.redis_url = Some("redis://a:7001,redis://b:7002".into());
        let refused = config
            .validate()
            .expect_err("several nodes without --redis-cluster");
        assert!(refused.to_string().contains("redis-cluster"), "{refused}");
        config.redis_cluster = true;
        assert!(config.validate().is_ok(), "a cluster of two seeds");
        assert!(config.redis().expect("redis").cluster);
        config.redis_url = Some("redis://a:7001,b:7002".into());
        let refused = config.validate().expect_err("a seed without a scheme");
        assert!(refused.to_string().contains("\"b:7002\""), "{refused}");
        config.redis_url = None;
        let refused = config.validate().expect_err("a cluster without nodes");
        assert!(refused.to_string().contains("REDIS_URL"), "{refused}");
    }

    #[test]
    fn socket_threads_are_one_per_core_unless_set_and_bounded() {
        let mut config = Config::with_database("sqlite::memory:");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config.socket_threads(), cores, "unset");
        config.socket_threads = Some(0);
        assert_eq!(config.socket_threads(), 0, "as set");
        assert!(config.validate().is_ok());
        config.socket_threads = Some(256);
        assert!(config.validate().is_ok(), "256");
        config.socket_threads = Some(257);
        let refused = config.validate().expect_err("accepted");
        assert!(refused.to_string().contains("socket-threads"), "{refused}");
    }
}
