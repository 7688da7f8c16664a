//! `spawn_app()`: the real server on an ephemeral port with a database of its own
//! (a temporary SQLite file, or a fresh PostgreSQL database when TEST_DATABASE_URL is
//! set), and typed helpers for its REST API. Every response is checked against
//! schema/openapi.json before the test sees it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use souq::domain::NewOrganisation;
use souq::hub::Hub;
use souq::{Clock, Config, Server};
use tokio::sync::oneshot;

use crate::openapi;

pub const PASSWORD: &str = "correct horse battery";

/// A running server and a client for it. Stops the server when dropped.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The server's clock, which a test moves on instead of sleeping.
    pub clock: Clock,
    /// The server's live sockets and waiters (not for a node of a cluster test).
    pub hub: Option<Arc<Hub>>,
    /// The server's database (empty for a node of a cluster test).
    pub database_url: String,
    /// Where the server keeps files (its own folder, or its own prefix of the S3 test
    /// bucket).
    pub files: Option<souq::objects::Place>,
    /// The server's core (not for a node of a cluster test).
    pub core: Option<Arc<souq::domain::Core>>,
    stop: Option<oneshot::Sender<()>>,
    temp_files: Vec<PathBuf>,
}

impl TestApp {
    /// A client of a server started elsewhere (a node of a cluster test).
    pub fn at(base: String) -> TestApp {
        TestApp {
            base,
            client: http_client(),
            clock: Clock::system(),
            hub: None,
            database_url: String::new(),
            files: None,
            core: None,
            stop: None,
            temp_files: Vec::new(),
        }
    }

    /// Stops the server as SIGTERM would.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for f in &self.temp_files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(souq::objects::Place::Folder(dir)) = &self.files {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An HTTP client for the tests. reqwest is built without a TLS provider of its own (the
/// server's choice, see `objects`): it takes the process's, ring.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A unique name for this test's database or file.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand_u32();
    format!("{prefix}_{}_{n}_{r:08x}", std::process::id())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Drops, once per test process and on a thread of its own beside the tests, the
/// PostgreSQL test databases of test processes that have ended. A test cannot drop its own
/// database when it ends (`Drop` cannot wait, and the nodes of a cluster test share one),
/// so each run cleans up after the runs before. A database whose creator's pid is in use
/// again, or that this run has no time left to drop, is left for a later run.
fn drop_left_behind(base: &str) {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        let base = base.to_owned();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(sweep(&base));
        });
    });
}

async fn sweep(base: &str) {
    let Ok(admin) = Database::connect(base).await else {
        return;
    };
    let listed = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname LIKE 'souq\\_test\\_%'",
        ))
        .await
        .unwrap_or_default();
    for row in listed {
        let Ok(name) = row.try_get::<String>("", "datname") else {
            continue;
        };
        // souq_test_{pid}_{n}_{random}, as `unique_name` makes them.
        let Some(pid) = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Another run may be dropping it too; whichever loses finds it gone.
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
    let _ = admin.close().await;
}

/// A fresh, empty database for one test; returns its url and files to delete after.
pub async fn fresh_database() -> (String, Vec<PathBuf>) {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let admin = Database::connect(base.as_str())
                .await
                .expect("TEST_DATABASE_URL is set but PostgreSQL cannot be reached");
            drop_left_behind(&base);
            let name = unique_name("souq_test");
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            let _ = admin.close().await;
            let (prefix, _) = base
                .rsplit_once('/')
                .expect("TEST_DATABASE_URL has a database name");
            (format!("{prefix}/{name}"), Vec::new())
        }
        _ => {
            let path = std::env::temp_dir().join(format!("{}.db", unique_name("souq_test")));
            let files = ["", "-wal", "-shm"]
                .iter()
                .map(|s| PathBuf::from(format!("{}{s}", path.display())))
                .collect();
            (format!("sqlite://{}", path.display()), files)
        }
    }
}

/// Starts the server with the default config on port 0 and a fresh database, and creates
/// the organisation `acme` (owner@acme.test / PASSWORD, addons live_chat and seller_buyer).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The S3-compatible server of the tests (`.ci/run` starts one), if TEST_S3_ENDPOINT is
/// set: endpoint, bucket, access key, secret key.
pub fn test_s3() -> Option<[String; 4]> {
    let endpoint = std::env::var("TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let postgres = std::env::var("TEST_DATABASE_URL").is_ok_and(|u| u.starts_with("postgres"));
    if endpoint.is_none() && postgres && std::env::var("CI").is_ok() {
        panic!("CI must set TEST_S3_ENDPOINT for the PostgreSQL pass: its files are kept on S3");
    }
    let endpoint = endpoint?;
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    Some([
        endpoint,
        var("TEST_S3_BUCKET", "souq-test"),
        var("TEST_S3_ACCESS_KEY", "souq"),
        var("TEST_S3_SECRET_KEY", "souq-secret"),
    ])
}

/// A file store of one test's own: a prefix of the S3 test bucket when there is one,
/// else a temporary folder. Returns the `file-store` value and the S3 settings to go
/// with it.
pub fn test_file_store() -> (String, Option<[String; 4]>) {
    match test_s3() {
        Some(s3) => (format!("s3://{}/{}", s3[1], unique_name("files")), Some(s3)),
        None => {
            let dir = std::env::temp_dir().join(unique_name("souq_files"));
            (dir.display().to_string(), None)
        }
    }
}

/// Points a config at a file store of the test's own (see [`test_file_store`]).
pub fn own_file_store(config: &mut Config) {
    let (store, s3) = test_file_store();
    config.file_store = Some(store);
    if let Some([endpoint, _, key, secret]) = s3 {
        config.s3_endpoint = Some(endpoint);
        config.s3_access_key_id = Some(key);
        config.s3_secret_access_key = Some(secret);
    }
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let (database_url, temp_files) = fresh_database().await;
    let mut config = Config::with_database(database_url.clone());
    config.bind = "127.0.0.1:0".parse().expect("address");
    own_file_store(&mut config);
    // The tests' webhook receivers listen on loopback.
    config.webhook_allow_private = true;
    tweak(&mut config);
    let clock = Clock::adjustable();
    let server = Server::build_with(&config, clock.clone())
        .await
        .expect("server starts");
    for (email, subdomain) in [("owner@acme.test", "acme"), ("owner@globex.test", "globex")] {
        server
            .core()
            .create_organisation(NewOrganisation {
                email: email.into(),
                password: PASSWORD.into(),
                subdomain: subdomain.into(),
                addons: vec!["live_chat".into(), "seller_buyer".into()],
            })
            .await
            .expect("organisation created");
    }
    TestApp::serving(server, &config, clock, temp_files)
}

impl TestApp {
    /// Runs `server` until the test app is dropped (or stopped).
    fn serving(server: Server, config: &Config, clock: Clock, temp_files: Vec<PathBuf>) -> TestApp {
        let hub = server.hub();
        let core = server.shared_core();
        let addr = server.local_addr().expect("bound");
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(server.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestApp {
            base: format!("http://{addr}"),
            client: http_client(),
            clock,
            hub: Some(hub),
            database_url: config.database_url.clone(),
            files: Some(config.file_place().expect("a file store")),
            core: Some(core),
            stop: Some(stop),
            temp_files,
        }
    }
}

impl TestApp {
    /// `SELECT COUNT(*) FROM {rows}` (a table, and a filter if need be), read from the
    /// database itself: the server may have stopped.
    pub async fn count(&self, rows: &str) -> i64 {
        let db = Database::connect(self.database_url.as_str())
            .await
            .expect("the test's database");
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {rows}"),
            ))
            .await
            .expect("counted")
            .expect("a row");
        let n: i64 = row.try_get("", "n").expect("a count");
        let _ = db.close().await;
        n
    }

    /// A second server on this one's database, sharing no bus with it (no Redis): what it
    /// commits, this one hears of only from the database, as from a node that died
    /// between a commit and its announcement.
    pub async fn node_beside(&self) -> TestApp {
        let mut config = Config::with_database(self.database_url.clone());
        config.bind = "127.0.0.1:0".parse().expect("address");
        own_file_store(&mut config);
        let server = Server::build_with(&config, self.clock.clone())
            .await
            .expect("the second server starts");
        TestApp::serving(server, &config, self.clock.clone(), Vec::new())
    }

    /// Holds the server's writes to a chat until [`Outage::end`] (they wait, then go on):
    /// on PostgreSQL a transaction of the test locks the chat's row, on SQLite it holds
    /// the file's write lock.
    pub async fn hold_writes(&self, chat_id: i64) -> Outage {
        let mut options = sea_orm::ConnectOptions::new(self.database_url.clone());
        options
            .max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        let holder = Database::connect(options).await.expect("the database");
        let postgres = self.database_url.starts_with("postgres");
        let lock = if postgres {
            format!("SELECT id FROM chats WHERE id = {chat_id} FOR UPDATE")
        } else {
            "SELECT 1".to_owned()
        };
        let begin = if postgres { "BEGIN" } else { "BEGIN EXCLUSIVE" };
        for sql in [begin, lock.as_str()] {
            holder.execute_unprepared(sql).await.expect("the lock");
        }
        Outage::Sqlite { holder }
    }

    /// Takes the server's database away until [`Outage::end`]: on PostgreSQL it refuses
    /// connections to the test's database and ends those open; on SQLite another
    /// connection holds the file's write lock.
    pub async fn database_outage(&self) -> Outage {
        match std::env::var("TEST_DATABASE_URL") {
            Ok(base) if base.starts_with("postgres") => {
                let admin = Database::connect(base.as_str()).await.expect("PostgreSQL");
                let name = self
                    .database_url
                    .rsplit('/')
                    .next()
                    .expect("a name")
                    .to_owned();
                for sql in [
                    format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"),
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ),
                ] {
                    admin
                        .execute_unprepared(&sql)
                        .await
                        .expect("the outage begins");
                }
                Outage::Postgres { admin, name }
            }
            _ => {
                let mut options = sea_orm::ConnectOptions::new(self.database_url.clone());
                options
                    .max_connections(1)
                    .min_connections(1)
                    .sqlx_logging(false);
                let holder = Database::connect(options).await.expect("the SQLite file");
                holder
                    .execute_unprepared("BEGIN EXCLUSIVE")
                    .await
                    .expect("the write lock");
                Outage::Sqlite { holder }
            }
        }
    }

    /// The server's hub (a test's own server).
    pub fn hub(&self) -> &Hub {
        self.hub.as_deref().expect("the test's own server")
    }
}

/// A database taken away from a test's server (see [`TestApp::database_outage`]).
pub enum Outage {
    Postgres {
        admin: sea_orm::DatabaseConnection,
        name: String,
    },
    /// A connection of the test's holding a lock in an open transaction.
    Sqlite { holder: sea_orm::DatabaseConnection },
}

impl Outage {
    /// Gives the database back.
    pub async fn end(self) {
        match self {
            Outage::Postgres { admin, name } => {
                admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"
                    ))
                    .await
                    .expect("the outage ends");
                let _ = admin.close().await;
            }
            Outage::Sqlite { holder } => {
                holder.execute_unprepared("COMMIT").await.expect("unlocked");
                let _ = holder.close().await;
            }
        }
    }
}

/// Waits until `ready` holds, checking every few milliseconds, for up to [`FRAME_WAIT`].
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The first `Some` that `attempt` gives, trying every 10 ms for up to [`FRAME_WAIT`].
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        if let Some(found) = attempt().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A response: its status and JSON body (Null when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
}

impl Resp {
    /// The error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self.body
    }
}

impl TestApp {
    /// Sends a request with a raw body and checks the response against the OpenAPI
    /// document.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{method} {path}: response is not JSON ({e}): {bytes:?}")
            })
        };
        openapi::check_response(method.as_str(), path, status.as_u16(), &body);
        Resp { status, body }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
        self.raw(method, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// Signs in to an organisation for an addon; returns the token response.
    pub async fn sign_in(&self, organisation: &str, addon: &str) -> Value {
        let email = format!("owner@{organisation}.test");
        self.call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"email": email, "password": PASSWORD, "organisation": organisation, "addon": addon})),
        )
        .await
        .expect(200)
    }

    /// An admin access token of `acme` for live_chat.
    pub async fn admin(&self) -> String {
        self.admin_of("acme").await
    }

    pub async fn admin_of(&self, organisation: &str) -> String {
        str_of(&self.sign_in(organisation, "live_chat").await["access_token"])
    }

    /// Builds a small desk: a domain (with its inbox), an operator assigned to it with a
    /// session, and a customer with a session and an open chat.
    pub async fn desk(&self, admin: &str) -> Desk {
        let name = unique_name("shop").replace('_', "-");
        let d = self
            .post(
                "/v1/domains",
                admin,
                json!({"name": format!("{name}.test")}),
            )
            .await
            .expect(201);
        let inbox_id = d["inbox"]["id"].as_i64().expect("inbox id");
        let operator_id = self.operator(admin, &format!("op-{name}@acme.test")).await;
        self.post(
            "/v1/assignments",
            admin,
            json!({"operator_id": operator_id, "inbox_id": inbox_id}),
        )
        .await
        .expect(201);
        let operator = self.operator_token(admin, operator_id).await;
        let (customer_id, customer) = self.customer(admin, &format!("ext-{name}")).await;
        let chat = self
            .post("/v1/chats", &customer, json!({"inbox_id": inbox_id}))
            .await
            .expect(201);
        Desk {
            domain_id: d["domain"]["id"].as_i64().expect("domain id"),
            inbox_id,
            operator_id,
            operator,
            customer_id,
            customer,
            chat_id: chat["id"].as_i64().expect("chat id"),
        }
    }

    pub async fn operator(&self, admin: &str, email: &str) -> i64 {
        self.post("/v1/operators", admin, json!({"email": email}))
            .await
            .expect(201)["id"]
            .as_i64()
            .expect("operator id")
    }

    pub async fn operator_token(&self, admin: &str, operator_id: i64) -> String {
        str_of(
            &self
                .post(
                    &format!("/v1/operators/{operator_id}/sessions"),
                    admin,
                    json!({}),
                )
                .await
                .expect(201)["token"],
        )
    }

    /// Identifies (creates) a customer and issues a session; returns (id, token).
    pub async fn customer(&self, admin: &str, external_id: &str) -> (i64, String) {
        let c = self
            .post(
                "/v1/customers",
                admin,
                json!({"external_id": external_id, "name": "Customer"}),
            )
            .await;
        assert!(c.status == 201 || c.status == 200, "customer: {}", c.body);
        let id = c.body["id"].as_i64().expect("customer id");
        let token = str_of(
            &self
                .post(&format!("/v1/customers/{id}/sessions"), admin, json!({}))
                .await
                .expect(201)["token"],
        );
        (id, token)
    }

    /// Sends a text message; returns the response.
    pub async fn send(
        &self,
        token: &str,
        chat_id: i64,
        text: &str,
        local_id: Option<&str>,
    ) -> Resp {
        let mut body = json!({"text": text});
        if let Some(l) = local_id {
            body["local_id"] = json!(l);
        }
        self.post(&format!("/v1/chats/{chat_id}/messages"), token, body)
            .await
    }
}

/// The pieces of one support desk built by [`TestApp::desk`].
#[derive(Debug, Clone)]
pub struct Desk {
    pub domain_id: i64,
    pub inbox_id: i64,
    pub operator_id: i64,
    pub operator: String,
    pub customer_id: i64,
    pub customer: String,
    pub chat_id: i64,
}

#[track_caller]
pub fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

/// A WebSocket client of `/v1/ws` whose every received frame is checked against
/// schema/ws.json.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// How long a test waits for a frame before failing.
pub const FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl TestApp {
    /// Opens a socket with `Authorization: Bearer`; `query` is appended as is.
    pub async fn ws(&self, token: &str, query: &str) -> Ws {
        self.try_ws(token, query).await.expect("socket opens")
    }

    /// Opens a socket, or gives the HTTP status of the refused upgrade.
    pub async fn try_ws(&self, token: &str, query: &str) -> Result<Ws, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/v1/ws{query}", self.base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().expect("request");
        if !token.is_empty() {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Ws { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("socket failed: {e}"),
        }
    }
}

impl TestApp {
    /// Opens a socket whose first client frame leaves in the same write as the upgrade
    /// request, before the 101 comes back, as an eager client may send it.
    pub async fn ws_with_first_frame(&self, token: &str, frame: Value) -> Ws {
        // One masked text frame, as a client must send it.
        let payload = frame.to_string().into_bytes();
        let (tcp, early) = self.raw_ws(token, &client_frame(0x1, &payload)).await;
        let stream = tokio_tungstenite::WebSocketStream::from_partially_read(
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            early,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        Ws { stream }
    }

    /// Upgrades a bare TCP connection to a socket by hand, writing `after` right behind
    /// the request; returns the connection and what the server sent past its 101.
    pub async fn raw_ws(&self, token: &str, after: &[u8]) -> (tokio::net::TcpStream, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connected");
        let mut bytes = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(after);
        tcp.write_all(&bytes).await.expect("written");
        let mut head = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.expect("an answer");
            assert!(n > 0, "closed before the upgrade");
            head.extend_from_slice(&chunk[..n]);
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let status = String::from_utf8_lossy(&head[..end]).into_owned();
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        (tcp, head[end..].to_vec())
    }
}

/// One short client frame (final, masked) of `opcode` carrying `payload`.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "a short frame");
    let mask = [0x5a, 0x17, 0xc3, 0x08];
    let mut bytes = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    bytes.extend(mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    bytes
}

/// Reads server frames from a hand-made socket (`early` first) until a close frame;
/// returns its code, or None if the connection ended without one.
pub async fn close_code_of(tcp: &mut tokio::net::TcpStream, early: Vec<u8>) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = early;
    loop {
        // A server frame: FIN+opcode, unmasked length (7 bits, or 16 after 126), payload.
        if buf.len() >= 2 {
            let (len, start) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                126 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= start + len {
                let opcode = buf[0] & 0x0f;
                let payload = buf[start..start + len].to_vec();
                buf.drain(..start + len);
                if opcode == 0x8 {
                    return (payload.len() >= 2)
                        .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                }
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(FRAME_WAIT, tcp.read(&mut chunk))
            .await
            .expect("a frame within the wait")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Ws {
    /// Sends a client frame, first checking it against schema/ws.json so that the
    /// documented client frames are the ones the server takes.
    pub async fn send(&mut self, frame: Value) {
        crate::openapi::check_client_frame(&frame);
        self.send_unchecked(frame).await;
    }

    /// Sends any JSON, valid or not.
    pub async fn send_unchecked(&mut self, frame: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                frame.to_string().into(),
            ))
            .await
            .expect("frame sent");
    }

    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        self.stream.send(message).await.expect("frame sent");
    }

    /// The next text frame (checked against the schema), or None when the socket closes.
    pub async fn recv(&mut self) -> Option<Value> {
        self.read(FRAME_WAIT)
            .await
            .expect("a frame within the wait")
    }

    async fn read(
        &mut self,
        wait: std::time::Duration,
    ) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await? {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("frame is JSON");
                    crate::openapi::check_server_frame(&frame);
                    return Ok(Some(frame));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads (and so answers the server's pings) until `n` pings have come, skipping other
    /// frames; fails if the socket closes first.
    pub async fn answer_pings(&mut self, n: usize) {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut pings = 0;
        while pings < n {
            match tokio::time::timeout(FRAME_WAIT, self.stream.next())
                .await
                .expect("a frame within the wait")
            {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(frame))) => panic!("closed after {pings} pings: {frame:?}"),
                None | Some(Err(_)) => panic!("gone after {pings} pings"),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame of type `ty`, skipping others (presence, typing, receipts...).
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let frame = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {ty}"));
            if frame["type"] == ty {
                return frame;
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        let (_, code, reason) = self.frames_until_closed().await;
        (code, reason)
    }

    /// Reads until the server closes; returns the text frames read on the way, and the
    /// close code and reason.
    pub async fn frames_until_closed(&mut self) -> (Vec<Value>, u16, String) {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut frames = Vec::new();
        loop {
            let next = tokio::time::timeout(FRAME_WAIT, self.stream.next())
                .await
                .expect("closed within the wait");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frames, u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (frames, 1005, String::new()),
                Some(Err(e)) => return (frames, 1006, e.to_string()),
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("frame is JSON");
                    crate::openapi::check_server_frame(&frame);
                    frames.push(frame);
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Asserts that `got` has exactly the fields of `spec`, recursively; a leaf of `spec` is a
/// type name: "number", "string", "bool", "null", or alternatives like "number|null". An
/// array in `spec` holds the spec of every element.
#[track_caller]
pub fn assert_types(got: &Value, spec: &Value, at: &str) {
    match spec {
        Value::Object(fields) => {
            let object = got
                .as_object()
                .unwrap_or_else(|| panic!("{at}: expected an object, got {got}"));
            let mut have: Vec<&String> = object.keys().collect();
            let mut want: Vec<&String> = fields.keys().collect();
            have.sort();
            want.sort();
            assert_eq!(have, want, "{at}: fields differ in {got}");
            for (k, v) in fields {
                assert_types(&object[k], v, &format!("{at}.{k}"));
            }
        }
        Value::Array(element) => {
            let items = got
                .as_array()
                .unwrap_or_else(|| panic!("{at}: expected an array, got {got}"));
            if let Some(element) = element.first() {
                for (i, item) in items.iter().enumerate() {
                    assert_types(item, element, &format!("{at}[{i}]"));
                }
            }
        }
        Value::String(types) => {
            let ok = types.split('|').any(|t| match t {
                "number" => got.is_number(),
                "string" => got.is_string(),
                "bool" => got.is_boolean(),
                "null" => got.is_null(),
                other => panic!("unknown type {other} in a spec"),
            });
            assert!(ok, "{at}: expected {types}, got {got}");
        }
        other => panic!("bad spec {other}"),
    }
}
