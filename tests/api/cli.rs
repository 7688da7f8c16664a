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
    let r = reqwest::Client::new()
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
