//! Several nodes as separate processes on one PostgreSQL database and one Redis, each
//! test with its own database, its own key prefix and its own Redis user (whose
//! connections it can cut without touching anyone else's).
//!
//! They run when TEST_DATABASE_URL is PostgreSQL and TEST_REDIS_URL is set. In CI
//! (CI set) a missing TEST_REDIS_URL fails them; on a machine without it they skip.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Desk, PASSWORD, TestApp, eventually, fresh_database, unique_name};

struct Node {
    child: Child,
    app: TestApp,
}

struct Cluster {
    nodes: Vec<Node>,
    redis_admin: String,
    /// The Redis user, which is also the key prefix.
    user: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if let Ok(client) = redis::Client::open(self.redis_admin.as_str())
            && let Ok(mut conn) = client.get_connection()
        {
            let _: redis::RedisResult<()> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.user)
                .query(&mut conn);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.user))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

/// The services a cluster needs, or None (after saying why) when this run has none.
fn services() -> Option<String> {
    let redis = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let postgres = std::env::var("TEST_DATABASE_URL").is_ok_and(|u| u.starts_with("postgres"));
    match (redis, postgres) {
        (Some(redis), true) => Some(redis),
        (None, _) if std::env::var("CI").is_ok() => {
            panic!("CI must set TEST_REDIS_URL: the multi-node tests need Redis")
        }
        (None, _) => {
            eprintln!(
                "skipped: set TEST_REDIS_URL and a PostgreSQL TEST_DATABASE_URL to run the multi-node tests"
            );
            None
        }
        (Some(_), false) => {
            eprintln!("skipped on SQLite: the multi-node tests run in the PostgreSQL pass");
            None
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Whether a Redis answers a PING within 10 s.
async fn answers(client: &redis::Client) -> bool {
    for _ in 0..400 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A plain redis-server of one test's own, which the test can restart (empty, as a Redis
/// without persistence comes back). Stopped when dropped.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = free_port();
        OwnRedis {
            child: OwnRedis::spawn(port).await,
            port,
        }
    }

    async fn spawn(port: u16) -> Child {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) starts");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
        if !answers(&client).await {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server never answered on port {port}");
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it and starts a new one on the same port, with nothing in it.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = OwnRedis::spawn(self.port).await;
    }

    /// How many connections are subscribed to `channel`.
    async fn subscribers(&self, channel: &str) -> i64 {
        let client = redis::Client::open(self.url()).expect("url");
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return 0;
        };
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        counts.first().map_or(0, |(_, n)| *n)
    }

    /// How many nodes claim the operator, as Redis says now.
    async fn claims(&self, prefix: &str, operator_id: i64) -> i64 {
        let client = redis::Client::open(self.url()).expect("url");
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return 0;
        };
        redis::cmd("ZCARD")
            .arg(format!("{prefix}:presence:{operator_id}"))
            .query_async(&mut conn)
            .await
            .unwrap_or(0)
    }
}

/// A redis-server of one test's own that speaks only TLS, with a certificate authority
/// and a certificate for 127.0.0.1 and localhost made here. Stopped when dropped.
struct TlsRedis {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TlsRedis {
    async fn start() -> TlsRedis {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(unique_name("souq_tls"));
        std::fs::create_dir_all(&dir).expect("a folder for the certificates");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "souq test CA");
        let ca_key = KeyPair::generate().expect("a key");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().expect("a key");
        let server_cert = server.signed_by(&server_key, &issuer).expect("signed");
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a certificate");
        }
        let port = free_port();
        let file = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &file("server.pem")])
            .args(["--tls-key-file", &file("server.key")])
            .args(["--tls-ca-cert-file", &file("ca.pem")])
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) starts");
        // Dropped (and so stopped) if it never answers.
        let redis = TlsRedis { child, dir, port };
        assert!(
            answers(&redis.client()).await,
            "redis-server never answered over TLS on port {port}"
        );
        redis
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// A client that trusts the test's CA.
    fn client(&self) -> redis::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(self.ca_file()).expect("the CA");
        redis::Client::build_with_tls(
            self.url(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .expect("a TLS client")
    }
}

impl Cluster {
    async fn start(n: usize) -> Option<Cluster> {
        Cluster::start_with(n, None, 3).await
    }

    /// `n` nodes, on the shared Redis (under a user of their own), or on a Redis of the
    /// test's own: its URL, and the CA file to trust for TLS; each node's presence claims
    /// last `presence_ttl` seconds.
    async fn start_with(
        n: usize,
        own: Option<(String, Option<std::path::PathBuf>)>,
        presence_ttl: u64,
    ) -> Option<Cluster> {
        Cluster::start_on(n, own, false, presence_ttl).await
    }

    /// `n` nodes on the Redis Cluster of TEST_REDIS_CLUSTER_URL, or None (after saying
    /// why) when this run has none.
    async fn start_on_redis_cluster(n: usize) -> Option<(Cluster, String)> {
        services()?;
        let urls = match std::env::var("TEST_REDIS_CLUSTER_URL") {
            Ok(urls) if !urls.is_empty() => urls,
            _ if std::env::var("CI").is_ok() => {
                panic!(
                    "CI must set TEST_REDIS_CLUSTER_URL: the sharded pub/sub tests need a Redis Cluster"
                )
            }
            _ => {
                eprintln!("skipped: set TEST_REDIS_CLUSTER_URL to run the Redis Cluster tests");
                return None;
            }
        };
        let cluster = Cluster::start_on(n, Some((urls.clone(), None)), true, 3).await?;
        Some((cluster, urls))
    }

    async fn start_on(
        n: usize,
        own: Option<(String, Option<std::path::PathBuf>)>,
        redis_cluster: bool,
        presence_ttl: u64,
    ) -> Option<Cluster> {
        let redis_admin = services()?;
        let (database_url, _) = fresh_database().await;
        let prefix = unique_name("souq_t");
        let user = prefix.clone();
        let password = "node-secret";
        // A Redis user of this test alone, limited to its keys and channels.
        let client = redis::Client::open(redis_admin.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("TEST_REDIS_URL is set but Redis cannot be reached");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(format!(">{password}"))
            .arg(format!("~{prefix}:*"))
            .arg(format!("&{prefix}:*"))
            .arg("+@all")
            .query_async(&mut conn)
            .await
            .expect("acl setuser");
        // The nodes log in as that user: same host, our credentials.
        let rest = redis_admin
            .split_once("://")
            .map_or(redis_admin.as_str(), |(_, r)| r);
        let host = rest
            .rsplit_once('@')
            .map_or(rest, |(_, h)| h)
            .trim_end_matches('/');
        let node_redis = match &own {
            Some((url, _)) => url.clone(),
            None => format!("redis://{user}:{password}@{host}"),
        };

        let out = Command::new(env!("CARGO_BIN_EXE_souq"))
            .args([
                "org",
                "create",
                "--email",
                "owner@acme.test",
                "--password",
                PASSWORD,
                "--subdomain",
                "acme",
            ])
            .env("DATABASE_URL", &database_url)
            .env("RUST_LOG", "off")
            .output()
            .expect("souq org create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut cluster = Cluster {
            nodes: Vec::new(),
            redis_admin,
            user,
        };
        // One file store for all the nodes: S3 in CI, else a folder they share.
        let (file_store, s3) = crate::helpers::test_file_store();
        for i in 0..n {
            let port = free_port();
            let mut node = Command::new(env!("CARGO_BIN_EXE_souq"));
            if let Some((_, Some(ca))) = &own {
                node.env("SOUQ_REDIS_CA_FILE", ca);
            }
            if redis_cluster {
                node.env("SOUQ_REDIS_CLUSTER", "true");
            }
            node.env("SOUQ_FILE_STORE", &file_store);
            if let Some([endpoint, _, key, secret]) = &s3 {
                node.env("SOUQ_S3_ENDPOINT", endpoint)
                    .env("AWS_ACCESS_KEY_ID", key)
                    .env("AWS_SECRET_ACCESS_KEY", secret);
            }
            let child = node
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", &node_redis)
                .env("SOUQ_REDIS_PREFIX", &prefix)
                .env("SOUQ_BIND", format!("127.0.0.1:{port}"))
                .env("SOUQ_PRESENCE_TTL", presence_ttl.to_string())
                .env("SOUQ_DB_MAX_CONNECTIONS", "8")
                .env("SOUQ_WEBHOOK_TIMEOUT", "1")
                .env("SOUQ_WEBHOOK_ALLOW_PRIVATE", "true")
                .env("RUST_LOG", "souq=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node starts");
            let mut app = TestApp::at(format!("http://127.0.0.1:{port}"));
            // The first node's app removes a shared folder when the test ends.
            if i == 0 {
                let mut config = souq::Config::with_database("sqlite::memory:");
                config.file_store = Some(file_store.clone());
                app.files = config.file_place().ok();
            }
            cluster.nodes.push(Node { child, app });
        }
        for node in &cluster.nodes {
            let mut up = false;
            for _ in 0..200 {
                if let Ok(r) = node
                    .app
                    .client
                    .get(format!("{}/v1/health", node.app.base))
                    .send()
                    .await
                    && r.status() == 200
                {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(up, "node {} did not come up", node.app.base);
        }
        Some(cluster)
    }

    fn node(&self, i: usize) -> &TestApp {
        &self.nodes[i].app
    }

    fn kill(&mut self, i: usize) {
        let _ = self.nodes[i].child.kill();
        let _ = self.nodes[i].child.wait();
    }

    /// Lets the nodes' Redis user log in (`on`) or not (`off`).
    async fn redis_user(&self, on: bool) {
        let client = redis::Client::open(self.redis_admin.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.user)
            .arg(if on { "on" } else { "off" })
            .query_async(&mut conn)
            .await
            .expect("acl setuser");
    }

    /// Cuts every Redis connection of this cluster's nodes.
    async fn cut_redis(&self) -> i64 {
        let client = redis::Client::open(self.redis_admin.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&self.user)
            .query_async(&mut conn)
            .await
            .expect("client kill")
    }
}

/// Sends `total` messages from the desk's operator through `node`, `pause_after` of them
/// at once, then the rest once told to go on (the test has cut or killed something by
/// then): so some are in flight at the cut, and the rest come after it.
fn sender(
    node: &TestApp,
    desk: &Desk,
    total: i64,
    pause_after: i64,
    local_ids: bool,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (go_on, told) = tokio::sync::oneshot::channel::<()>();
    let app = TestApp::at(node.base.clone());
    let (token, chat_id) = (desk.operator.clone(), desk.chat_id);
    let task = tokio::spawn(async move {
        let mut told = Some(told);
        for i in 1..=total {
            if i > pause_after
                && let Some(told) = told.take()
            {
                let _ = told.await;
            }
            let local_id = local_ids.then(|| format!("l{i}"));
            app.send(&token, chat_id, &format!("m{i}"), local_id.as_deref())
                .await
                .expect(201);
        }
    });
    (task, go_on)
}

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .map(|f| f["message"]["seq"].as_i64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn clients_on_three_nodes_chat_with_receipts_typing_and_presence() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let admin = a.admin().await;
    let desk: Desk = a.desk(&admin).await;

    let mut customer = a.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = b.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    let mut operator_laptop = c.ws(&desk.operator, "").await;
    operator_laptop.next_of("resumed").await;
    // The operator came online on node B; the customer on node A hears it.
    assert_eq!(customer.next_of("presence").await["presence"], "online");

    customer.send(json!({"type": "send", "chat_id": desk.chat_id, "local_id": "x1", "text": "across nodes"})).await;
    for device in [&mut operator, &mut operator_laptop] {
        let m = device.next_of("message").await;
        assert_eq!(
            (m["message"]["seq"].clone(), m["message"]["text"].clone()),
            (json!(1), json!("across nodes"))
        );
    }
    // The sender gets the ack and its own message (the message is pushed first), once.
    let (first, second) = (
        customer.recv().await.expect("open"),
        customer.recv().await.expect("open"),
    );
    assert_eq!(
        (first["type"].clone(), first["message"]["seq"].clone()),
        (json!("message"), json!(1))
    );
    assert_eq!(
        (second["type"].clone(), second["seq"].clone()),
        (json!("ack"), json!(1))
    );

    operator
        .send(json!({"type": "read", "chat_id": desk.chat_id, "seq": 1}))
        .await;
    let r = customer.next_of("receipt").await;
    assert_eq!(
        (r["member"]["kind"].clone(), r["read_seq"].clone()),
        (json!("operator"), json!(1))
    );

    operator
        .send(json!({"type": "typing", "chat_id": desk.chat_id}))
        .await;
    assert_eq!(customer.next_of("typing").await["who"]["kind"], "operator");

    // A message sent over REST on node C reaches sockets on A and B.
    c.send(&desk.operator, desk.chat_id, "from C", None)
        .await
        .expect(201);
    let m = customer.next_of("message").await;
    assert_eq!(
        (m["message"]["seq"].clone(), m["message"]["text"].clone()),
        (json!(2), json!("from C"))
    );
    assert_eq!(operator.next_of("message").await["message"]["seq"], 2);

    // A new chat opened through node C reaches the operator's sockets on B and C.
    let (_, newcomer) = c.customer(&admin, "newcomer").await;
    let chat = c
        .post("/v1/chats", &newcomer, json!({"inbox_id": desk.inbox_id}))
        .await
        .expect(201);
    for device in [&mut operator, &mut operator_laptop] {
        let created = loop {
            let f = device.next_of("chat").await;
            if f["event"] == "created" {
                break f;
            }
        };
        assert_eq!(created["chat"]["id"], chat["id"]);
    }
    c.send(&newcomer, chat["id"].as_i64().expect("id"), "hello B", None)
        .await
        .expect(201);
    assert_eq!(
        operator.next_of("message").await["message"]["text"],
        "hello B"
    );

    // Offline only when the operator's last socket, on any node, is gone.
    drop(operator);
    operator_laptop
        .send(json!({"type": "typing", "chat_id": desk.chat_id, "typing": false}))
        .await;
    loop {
        let f = customer.recv().await.expect("open");
        assert_ne!(
            f["type"], "presence",
            "the operator went offline while a socket was still open"
        );
        if f["type"] == "typing" {
            assert_eq!(f["typing"], false);
            break;
        }
    }
    drop(operator_laptop);
    assert_eq!(customer.next_of("presence").await["presence"], "offline");
}

#[tokio::test]
async fn a_killed_nodes_clients_resume_on_another_node_without_loss_or_duplicates() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let admin = cluster.node(0).admin().await;
    let desk = cluster.node(0).desk(&admin).await;
    let mut customer = cluster.node(2).ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let total = 60;
    let (sender, go_on) = sender(cluster.node(0), &desk, total, 20, true);
    let mut got = Vec::new();
    while got.len() < 10 {
        got.push(customer.next_of("message").await);
    }
    cluster.kill(2);
    let _ = go_on.send(());
    let last = seqs(&got).last().copied().expect("some");
    let mut customer = cluster
        .node(1)
        .ws(&desk.customer, &format!("?resume={}:{last}", desk.chat_id))
        .await;
    while seqs(&got).last().copied().unwrap_or(0) < total {
        let f = customer.recv().await.expect("open");
        if f["type"] == "message" {
            got.push(f);
        }
    }
    sender.await.expect("sender");
    assert_eq!(seqs(&got), (1..=total).collect::<Vec<_>>());
}

#[tokio::test]
async fn cutting_the_redis_connection_mid_stream_loses_nothing() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let admin = cluster.node(0).admin().await;
    let desk = cluster.node(0).desk(&admin).await;
    let mut customer = cluster.node(1).ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let total = 40;
    let (sender, go_on) = sender(cluster.node(0), &desk, total, 10, false);
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(customer.next_of("message").await);
    }
    assert!(cluster.cut_redis().await > 0, "no connection was cut");
    let _ = go_on.send(());
    while seqs(&got).last().copied().unwrap_or(0) < total {
        got.push(customer.next_of("message").await);
    }
    sender.await.expect("sender");
    assert_eq!(seqs(&got), (1..=total).collect::<Vec<_>>());
    // Live delivery works again after the reconnect.
    cluster
        .node(0)
        .send(&desk.operator, desk.chat_id, "after the cut", None)
        .await
        .expect(201);
    assert_eq!(
        customer.next_of("message").await["message"]["text"],
        "after the cut"
    );
}

#[tokio::test]
async fn an_operator_of_a_dead_node_goes_offline_soon_after() {
    let Some(mut cluster) = Cluster::start(2).await else {
        return;
    };
    let admin = cluster.node(0).admin().await;
    let desk = cluster.node(0).desk(&admin).await;
    let mut customer = cluster.node(0).ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = cluster.node(1).ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    assert_eq!(customer.next_of("presence").await["presence"], "online");
    cluster.kill(1);
    // The dead node cannot say so; its presence claim (3 s here) expires and node A's
    // sweep sets the operator offline.
    assert_eq!(customer.next_of("presence").await["presence"], "offline");
    let me = cluster
        .node(0)
        .get("/v1/me", &desk.operator)
        .await
        .expect(200);
    assert_eq!(me["operator"]["presence"], "offline");
}

#[tokio::test]
async fn readyz_says_so_while_redis_refuses_the_node_and_recovers_with_it() {
    let Some(cluster) = Cluster::start(1).await else {
        return;
    };
    let node = cluster.node(0);
    let readyz = || async {
        let r = node
            .client
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .expect("answered");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("JSON"))
    };
    assert_eq!(
        readyz().await,
        (
            200,
            json!({"status": "ready", "database": "ok", "redis": "ok"})
        )
    );
    // Redis turns the node's user away, and cuts its connections.
    cluster.redis_user(false).await;
    cluster.cut_redis().await;
    let seen = eventually("readyz saying 503", || async {
        let (status, body) = readyz().await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(
        seen,
        json!({"status": "unavailable", "database": "ok", "redis": "unavailable"})
    );
    cluster.redis_user(true).await;
    eventually("readyz back after Redis", || async {
        (readyz().await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_long_poll_on_one_node_wakes_on_a_send_through_another() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let admin = cluster.node(0).admin().await;
    let desk = cluster.node(0).desk(&admin).await;
    let poll = {
        let app = TestApp::at(cluster.node(1).base.clone());
        let token = desk.customer.clone();
        tokio::spawn(async move {
            app.get(
                &format!("/v1/chats/{}/messages?after=0&wait=30", desk.chat_id),
                &token,
            )
            .await
            .expect(200)
        })
    };
    // The poll waits on node B, which subscribes to the chat's channel for it (no socket
    // follows the chat): wait for that subscription, then send through node A.
    let channel = format!("{}:chat:{}", cluster.user, desk.chat_id);
    let client = redis::Client::open(cluster.redis_admin.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut subscribed = false;
    for _ in 0..1000 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .expect("pubsub numsub");
        if n > 0 {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(subscribed, "node B never subscribed for the poll");
    assert!(!poll.is_finished(), "answered before anything was sent");
    cluster
        .node(0)
        .send(&desk.operator, desk.chat_id, "across nodes", None)
        .await
        .expect(201);
    // Well inside the 30 s wait: only a wake-up through Redis answers this soon.
    let page = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll on node B answered on a commit through node A")
        .expect("task");
    assert_eq!(page["items"][0]["text"], "across nodes");
}

/// A broadcast is one event on the bus, whatever its audience: sent through node A, it
/// reaches the audience's sockets on node B.
#[tokio::test]
async fn a_broadcast_sent_through_one_node_reaches_its_customers_on_another() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let admin = a.admin().await;
    let desk = a.desk(&admin).await;
    let mut customer = b.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let r = a
        .post(
            &format!("/v1/inboxes/{}/broadcasts", desk.inbox_id),
            &desk.operator,
            json!({"text": "across nodes"}),
        )
        .await
        .expect(201);
    assert_eq!(r["chats"], 1);
    assert_eq!(
        customer.next_of("broadcast").await["broadcast"]["text"],
        "across nodes"
    );
}

/// Over a Redis that speaks only TLS (`rediss://`, its certificate signed by a CA of the
/// test's own that the nodes are told to trust), messages, receipts and presence cross
/// nodes as they do in the clear.
#[tokio::test]
async fn presence_holds_through_a_redis_restart_while_an_operator_keeps_a_socket_open() {
    if services().is_none() {
        return;
    }
    let mut redis = OwnRedis::start().await;
    // Claims of 30 s, refreshed every 10: a lost claim would stay lost that long.
    let Some(cluster) = Cluster::start_with(2, Some((redis.url(), None)), 30).await else {
        return;
    };
    let admin = cluster.node(0).admin().await;
    let desk = cluster.node(0).desk(&admin).await;
    let mut customer = cluster.node(0).ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    // The operator on two devices, one on each node.
    let mut laptop = cluster.node(0).ws(&desk.operator, "").await;
    laptop.next_of("resumed").await;
    assert_eq!(customer.next_of("presence").await["presence"], "online");
    let mut phone = cluster.node(1).ws(&desk.operator, "").await;
    phone.next_of("resumed").await;
    let prefix = cluster.user.clone();
    until_async("both claims", || async {
        redis.claims(&prefix, desk.operator_id).await == 2
    })
    .await;
    // Redis restarts empty: every claim is gone. Both nodes are back on it (subscribed
    // again, and node A answering), and the laptop closes.
    redis.restart().await;
    let channel = format!("{prefix}:person:o:{}", desk.operator_id);
    until_async("both nodes subscribed again", || async {
        redis.subscribers(&channel).await == 2
    })
    .await;
    until_async("node A back on Redis", || async {
        let r = cluster
            .node(0)
            .client
            .get(format!("{}/readyz", cluster.node(0).base))
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    drop(laptop);
    // Node B claims again as soon as it is back on Redis.
    until_async("node B's claim again", || async {
        redis.claims(&prefix, desk.operator_id).await >= 1
    })
    .await;
    // Then a message through node A: the customer's frames up to it hold no "offline".
    let r = cluster
        .node(0)
        .send(&desk.customer, desk.chat_id, "still there?", None)
        .await;
    assert_eq!(r.status, 201);
    loop {
        let f = customer.recv().await.expect("open");
        assert!(
            !(f["type"] == "presence" && f["presence"] == "offline"),
            "announced offline while the phone is connected: {f}"
        );
        if f["type"] == "message" {
            break;
        }
    }
    // And the database says online, on either node.
    until_async("online in the database", || async {
        let me = cluster.node(1).get("/v1/me", &desk.operator).await;
        me.body["operator"]["presence"] == "online"
    })
    .await;
    phone.next_of("message").await;
}

/// Waits until the async `ready` holds (see [`eventually`]).
async fn until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut ready: impl FnMut() -> F,
) {
    eventually(what, || {
        let ready = ready();
        async move { ready.await.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn nodes_talk_through_a_redis_that_speaks_only_tls() {
    if services().is_none() {
        return;
    }
    let tls = TlsRedis::start().await;
    let Some(cluster) = Cluster::start_with(2, Some((tls.url(), Some(tls.ca_file()))), 3).await
    else {
        return;
    };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let admin = a.admin().await;
    let desk: Desk = a.desk(&admin).await;
    let mut customer = a.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    let mut operator = b.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    assert_eq!(
        customer.next_of("presence").await["presence"],
        "online",
        "the operator's presence, from node B"
    );
    customer
        .send(
            json!({"type": "send", "chat_id": desk.chat_id, "local_id": "t1", "text": "over TLS"}),
        )
        .await;
    let m = operator.next_of("message").await;
    assert_eq!(m["message"]["text"], "over TLS");
    operator
        .send(json!({"type": "read", "chat_id": desk.chat_id, "seq": 1}))
        .await;
    let r = customer.next_of("receipt").await;
    assert_eq!(r["read_seq"], 1);
    // Both nodes' subscribers are connected (the server has no port but its TLS one).
    let mut conn = tls
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("client list");
    let subscribers = clients
        .lines()
        .filter(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("sub="))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > 0)
        })
        .count();
    assert!(subscribers >= 2, "each node subscribed: {clients}");
}

/// With several nodes the file store is shared (S3 in CI): a photo uploaded through one
/// node reaches an operator on another live, and downloads from that node.
#[tokio::test]
async fn a_file_uploaded_through_one_node_is_shown_and_downloaded_on_another() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let admin = a.admin().await;
    let desk: Desk = a.desk(&admin).await;
    let mut operator = b.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    let photo = crate::files::png(1200, 900, 3 * 1024 * 1024 + 17);
    let (status, file) = a
        .upload(&desk.customer, desk.chat_id, "label.png", photo.clone())
        .await;
    assert_eq!(status, 201, "{file}");
    a.post(
        &format!("/v1/chats/{}/messages", desk.chat_id),
        &desk.customer,
        json!({"payload": "file", "file_id": file["id"], "text": "the label"}),
    )
    .await
    .expect(201);
    let m = operator.next_of("message").await;
    assert_eq!(m["message"]["file"]["image_width"], 1200);
    let url = crate::helpers::str_of(&m["message"]["file"]["url"]);
    let r = b.fetch(&url, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").to_vec(), photo);
}

/// Two nodes share the outbox: each event reaches the endpoint once while both run, and
/// none is lost when one is killed mid-delivery (the other takes its claims over when
/// they run out).
#[tokio::test]
async fn webhook_events_go_out_once_from_two_nodes_and_survive_a_kill() {
    use crate::webhooks::{Mode, Receiver};
    let Some(mut cluster) = Cluster::start(2).await else {
        return;
    };
    let admin = cluster.node(0).admin().await;
    let mut receiver = Receiver::start().await;
    cluster
        .node(0)
        .post(
            "/v1/webhooks",
            &admin,
            json!({"url": receiver.url, "events": ["message.created"]}),
        )
        .await
        .expect(201);
    let desk = cluster.node(0).desk(&admin).await;
    for i in 0..20 {
        let node = cluster.node(i % 2);
        node.send(&desk.customer, desk.chat_id, &format!("m{i}"), None)
            .await
            .expect(201);
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    while seen.len() < 20 {
        let got = receiver.next().await;
        *seen
            .entry(crate::helpers::str_of(&got.body["id"]))
            .or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "each event once: {seen:?}");

    // Hang the endpoint so that posts are in flight, then kill the first node.
    receiver.set(Mode::Hang);
    for i in 20..25 {
        cluster
            .node(1)
            .send(&desk.customer, desk.chat_id, &format!("m{i}"), None)
            .await
            .expect(201);
    }
    receiver.next().await;
    cluster.kill(0);
    receiver.set(Mode::Ok);
    let mut texts = std::collections::BTreeSet::new();
    while texts.len() < 5 {
        let got = receiver.next().await;
        if got.body["type"] == "message.created" {
            let text = crate::helpers::str_of(&got.body["data"]["message"]["text"]);
            if text[1..].parse::<u32>().is_ok_and(|n| n >= 20) {
                texts.insert(text);
            }
        }
    }
    assert_eq!(texts.len(), 5, "no event lost: {texts:?}");
}

/// With several nodes, a customer whose socket is on another node than the one that
/// looks for people to notify is present: not told, while one with no socket is.
#[tokio::test]
async fn a_customer_on_another_nodes_socket_is_not_notified_and_one_with_none_is() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (a, b) = (cluster.node(0), cluster.node(1));
    let admin = a.admin().await;
    a.patch("/v1/organisation", &admin, json!({"notify_after_secs": 1}))
        .await
        .expect(200);
    let here: Desk = a.desk(&admin).await;
    let away: Desk = a.desk(&admin).await;
    let mut ws = b.ws(&here.customer, "").await;
    ws.next_of("resumed").await;
    // The connected customer's answer first: when the other's is due, so is this one.
    a.send(&here.operator, here.chat_id, "for the one in the app", None)
        .await
        .expect(201);
    a.send(&away.operator, away.chat_id, "for the one away", None)
        .await
        .expect(201);
    // Either node may look (both do, one at a time); the nodes run on the system clock.
    eventually("the absent customer told", || async {
        let feed = a.get("/v1/notifications", &away.customer).await.expect(200);
        (feed["unread"] == 1).then_some(())
    })
    .await;
    let feed = b.get("/v1/notifications", &here.customer).await.expect(200);
    assert_eq!(feed["items"], json!([]), "{feed}");
    drop(ws);
}

/// Issue 30's routing on three nodes: customers open chats through every node at once
/// while an operator goes offline and online through another; each chat goes to exactly
/// one operator, no one past capacity, the rest queue in order and move up when a place
/// frees on any node.
#[tokio::test]
async fn chats_opened_on_three_nodes_at_once_are_routed_once_each_within_capacity() {
    use crate::desk::{presence, team};
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let nodes = [cluster.node(0), cluster.node(1), cluster.node(2)];
    let admin = nodes[0].admin().await;
    let (inbox, ops) = team(nodes[0], &admin, 3).await;
    for (i, (_, token)) in ops.iter().enumerate() {
        presence(nodes[i], token, "online").await;
    }
    nodes[1]
        .patch(
            &format!("/v1/inboxes/{inbox}"),
            &admin,
            json!({"routing": "least_busy", "capacity": 2}),
        )
        .await
        .expect(200);
    let mut customers = Vec::new();
    for i in 0..15 {
        customers.push((i % 3, nodes[0].customer(&admin, &unique_name("c")).await.1));
    }
    let flapping = async {
        for _ in 0..4 {
            presence(nodes[2], &ops[2].1, "away").await;
            presence(nodes[1], &ops[2].1, "online").await;
        }
    };
    let opens =
        futures_util::future::join_all(customers.iter().map(|(node, token)| {
            nodes[*node].post("/v1/chats", token, json!({"inbox_id": inbox}))
        }));
    let (opened, ()) = tokio::join!(opens, flapping);
    assert!(
        opened.iter().all(|r| r.status == 201),
        "every open answered"
    );
    let settled = eventually("6 routed, 9 queued", || async {
        let items = nodes[2]
            .get(&format!("/v1/chats?inbox_id={inbox}&limit=200"), &admin)
            .await
            .expect(200)["items"]
            .as_array()
            .expect("items")
            .clone();
        let routed = items.iter().filter(|c| c["operator"].is_object()).count();
        (routed == 6 && items.len() == 15).then_some(items)
    })
    .await;
    for (id, _) in &ops {
        let n = settled
            .iter()
            .filter(|c| c["operator"]["id"].as_i64() == Some(*id))
            .count();
        assert_eq!(n, 2, "operator {id} holds its capacity exactly");
    }
    // A place frees on one node: the first in the queue (the oldest) is routed.
    let first_queued = nodes[0]
        .get(
            &format!("/v1/chats?inbox_id={inbox}&operator_id=none&limit=200"),
            &admin,
        )
        .await
        .expect(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .min_by_key(|c| (c["created_at"].as_i64(), c["id"].as_i64()))
        .map(|c| c["id"].clone())
        .expect("a queue");
    let mine = settled
        .iter()
        .find(|c| c["operator"]["id"].as_i64() == Some(ops[0].0))
        .map(|c| c["id"].clone())
        .expect("a chat of the first operator");
    nodes[1]
        .post(&format!("/v1/chats/{mine}/finish"), &ops[0].1, json!({}))
        .await
        .expect(200);
    let now = nodes[2]
        .get(&format!("/v1/chats/{first_queued}"), &admin)
        .await
        .expect(200);
    assert_eq!(now["operator"]["id"].as_i64(), Some(ops[0].0), "{now}");
}

/// A master of a Redis Cluster: its id, address and slot ranges.
#[derive(Debug, Clone)]
struct Master {
    id: String,
    addr: String,
    slots: Vec<(u16, u16)>,
}

impl Master {
    fn owns(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{}", self.addr))
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("a cluster node answers")
    }

    /// How many clients are subscribed to the sharded `channel` on this master.
    async fn shard_subscribers(&self, channel: &str) -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query_async(&mut self.conn().await)
            .await
            .expect("pubsub shardnumsub");
        n
    }
}

/// The cluster's masters, as its first node sees them (`CLUSTER NODES`).
async fn masters(urls: &str) -> Vec<Master> {
    let first = urls.split(',').next().expect("a node");
    let mut conn = redis::Client::open(first)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("a cluster node answers");
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("cluster nodes");
    nodes
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") {
                return None;
            }
            let slots = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(Master {
                id: f[0].to_string(),
                addr: f[1].split('@').next().unwrap_or(f[1]).to_string(),
                slots,
            })
        })
        .collect()
}

/// The slot of `key`, and the master that owns it.
async fn owner(urls: &str, key: &str) -> (u16, Master) {
    let all = masters(urls).await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut all[0].conn().await)
        .await
        .expect("cluster keyslot");
    let master = all
        .into_iter()
        .find(|m| m.owns(slot))
        .expect("every slot is served");
    (slot, master)
}

/// Moves `slot` (with its keys) from `from` to `to`, as a resharding does, and tells every
/// master.
async fn move_slot(urls: &str, slot: u16, from: &Master, to: &Master) {
    let (mut source, mut target) = (from.conn().await, to.conn().await);
    let setslot = |how: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(how).arg(id);
        c
    };
    let _: () = setslot("IMPORTING", &from.id)
        .query_async(&mut target)
        .await
        .expect("importing");
    let _: () = setslot("MIGRATING", &to.id)
        .query_async(&mut source)
        .await
        .expect("migrating");
    let (host, port) = to.addr.rsplit_once(':').expect("host:port");
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut source)
            .await
            .expect("getkeysinslot");
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg(host)
            .arg(port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys)
            .query_async(&mut source)
            .await
            .expect("migrate");
    }
    for master in masters(urls).await {
        let _: () = setslot("NODE", &to.id)
            .query_async(&mut master.conn().await)
            .await
            .expect("setslot node");
    }
}

/// Chats spread over a Redis Cluster's shards by their channel's slot: every message
/// reaches the sockets on other nodes live, through the shard that owns the chat's channel;
/// a slot moved to another master mid-conversation (resharding) is followed there, and
/// so is a cut of every connection to the cluster.
#[tokio::test]
async fn chats_on_every_shard_of_a_redis_cluster_reach_other_nodes_through_a_slot_move_and_a_cut() {
    let Some((cluster, urls)) = Cluster::start_on_redis_cluster(3).await else {
        return;
    };
    let prefix = cluster.user.clone();
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let admin = a.admin().await;
    let desk = a.desk(&admin).await;
    // Chats of the desk's inbox until their channels cover every master.
    let mut chats = vec![(desk.chat_id, desk.customer.clone())];
    let mut shards = std::collections::HashMap::new();
    for i in 0.. {
        let (chat_id, _) = chats.last().cloned().expect("a chat");
        let (_, master) = owner(&urls, &format!("{prefix}:chat:{chat_id}")).await;
        shards.entry(master.addr).or_insert(chat_id);
        if shards.len() == masters(&urls).await.len() {
            break;
        }
        assert!(i < 200, "200 chats and still a master without one");
        let (_, customer) = a.customer(&admin, &format!("shard-{i}")).await;
        let chat = a
            .post("/v1/chats", &customer, json!({"inbox_id": desk.inbox_id}))
            .await
            .expect(201);
        chats.push((chat["id"].as_i64().expect("chat id"), customer));
    }
    // The operator watches every chat from node B; each customer writes through node C.
    let mut operator = b.ws(&desk.operator, "").await;
    operator.next_of("resumed").await;
    round(c, &chats, "first", &mut operator).await;
    // Each chat's channel is subscribed on the master that owns its slot.
    for (chat_id, _) in &chats {
        let channel = format!("{prefix}:chat:{chat_id}");
        let (_, master) = owner(&urls, &channel).await;
        assert!(
            master.shard_subscribers(&channel).await >= 1,
            "{channel} is not subscribed on {}",
            master.addr
        );
    }

    // Resharding: the first chat's slot moves to another master.
    let moved = format!("{prefix}:chat:{}", desk.chat_id);
    let (slot, from) = owner(&urls, &moved).await;
    let to = masters(&urls)
        .await
        .into_iter()
        .find(|m| m.id != from.id)
        .expect("another master");
    move_slot(&urls, slot, &from, &to).await;
    until_async(
        "the moved chat's channel is subscribed on its new master",
        || {
            let (to, moved) = (to.clone(), moved.clone());
            async move { to.shard_subscribers(&moved).await >= 1 }
        },
    )
    .await;
    round(c, &chats, "moved", &mut operator).await;

    // Every connection to every master is cut: the nodes reconnect and subscribe again.
    for master in masters(&urls).await {
        for kind in ["normal", "pubsub"] {
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg(kind)
                .query_async(&mut master.conn().await)
                .await
                .expect("client kill");
        }
    }
    for (chat_id, _) in &chats {
        let channel = format!("{prefix}:chat:{chat_id}");
        let (_, master) = owner(&urls, &channel).await;
        until_async("a chat's channel is subscribed again after the cut", || {
            let (master, channel) = (master.clone(), channel.clone());
            async move { master.shard_subscribers(&channel).await >= 1 }
        })
        .await;
    }
    round(c, &chats, "after the cut", &mut operator).await;

    // A store's broadcast, on the channel every node keeps, reaches a customer on node A.
    let mut customer = a.ws(&desk.customer, "").await;
    customer.next_of("resumed").await;
    c.post(
        &format!("/v1/inboxes/{}/broadcasts", desk.inbox_id),
        &desk.operator,
        json!({"text": "sale today"}),
    )
    .await
    .expect(201);
    assert_eq!(
        customer.next_of("broadcast").await["broadcast"]["text"],
        "sale today"
    );
}

/// Each customer of `chats` writes a message through `node`; `watcher` gets every one.
async fn round(
    node: &TestApp,
    chats: &[(i64, String)],
    label: &str,
    watcher: &mut crate::helpers::Ws,
) {
    let mut want = std::collections::HashSet::new();
    for (chat_id, customer) in chats {
        let text = format!("{label} in {chat_id}");
        node.send(customer, *chat_id, &text, None).await.expect(201);
        want.insert(text);
    }
    while !want.is_empty() {
        let m = watcher.next_of("message").await;
        want.remove(m["message"]["text"].as_str().expect("text"));
    }
}
