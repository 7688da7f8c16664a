//! The binary as a user runs it: `souq org create`, then sign-in on a server over the
//! same database.

use std::process::Command;

use serde_json::json;

use crate::helpers::fresh_database;

/// Runs `souq org create` for the same organisation against `database_url`.
fn org_create(database_url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_souq"))
        .args([
            "org",
            "create",
            "--email",
            "boss@shop.test",
            "--password",
            "s3cret-pass",
            "--subdomain",
            "shop",
        ])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "off")
        .output()
        .expect("souq runs")
}

#[tokio::test]
async fn org_create_then_sign_in_works_from_the_command_line() {
    let (database_url, files) = fresh_database().await;
    let out = org_create(&database_url);
    assert!(
        out.status.success(),
        "org create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created organisation"));

    let again = org_create(&database_url);
    assert!(
        !again.status.success(),
        "a second organisation with the same email was created"
    );

    let mut config = souq::Config::with_database(database_url);
    config.bind = "127.0.0.1:0".parse().expect("addr");
    let server = souq::Server::build(&config).await.expect("server starts");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let r = crate::helpers::http_client()
        .post(format!("http://{addr}/v1/auth/token"))
        .json(&json!({"email": "boss@shop.test", "password": "s3cret-pass", "organisation": "shop", "addon": "seller_buyer"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let _ = stop.send(());
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

#[tokio::test]
async fn log_format_json_writes_one_object_a_line_with_each_request_id() {
    let (database_url, files) = fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_souq"))
        .args(["--log-format", "json"])
        .env("DATABASE_URL", &database_url)
        .env("SOUQ_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "souq=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("souq runs");
    let client = crate::helpers::http_client();
    let base = format!("http://127.0.0.1:{port}");
    let mut made = None;
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            made = r
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().expect("ascii").to_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let made = made.expect("the server came up and named its answer");
    let r = client
        .get(format!("{base}/v1/nowhere"))
        .header("x-request-id", "given-7f3a")
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "given-7f3a");
    let mut child = child;
    let _ = child.kill();
    let out = child.wait_with_output().expect("its output");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let request = |id: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "request" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no request line with id {id}: {lines:?}"))
            .clone()
    };
    let given = request("given-7f3a");
    assert_eq!(
        (given["path"].as_str(), given["status"].as_u64()),
        (Some("/v1/nowhere"), Some(404))
    );
    assert_eq!(given["level"], "INFO");
    assert_eq!(request(&made)["path"], "/healthz");
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}
