//! Real-browser tests: headless Chromium driven through chromedriver (WebDriver) with
//! fantoccini. They run where `chromedriver` is on the PATH (`CHROMEDRIVER` names another);
//! in CI (CI set) a missing driver fails them, elsewhere they skip. `.ci/run` installs
//! Debian's chromium and chromium-driver.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// A chromedriver process and one headless browser session through it.
pub struct Browser {
    driver: Child,
    pub client: Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl Browser {
    /// A fresh headless Chromium, or `None` (outside CI) when there is no driver.
    pub async fn start() -> Option<Browser> {
        let program = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let driver = match Command::new(&program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if std::env::var("CI").is_err() => {
                eprintln!("skipped: no {program} ({e})");
                return None;
            }
            Err(e) => panic!("CI must install chromedriver for the browser tests: {e}"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,900", "--lang=en-US"
            ]}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Some(Browser { driver, client }),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a browser: {last:?}");
    }

    /// Runs `script` (a function body; `arguments` as given) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something truthy, and gives it.
    pub async fn until(&self, what: &str, script: &str) -> Value {
        for _ in 0..200 {
            let v = self.js(script, vec![]).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The page's console errors so far (collected by [`Browser::watch_errors`]).
    pub async fn errors(&self) -> Vec<String> {
        let v = self.js("return window.__souqErrors || [];", vec![]).await;
        v.as_array()
            .map(|a| a.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    /// From now on, collects the page's uncaught errors and `console.error` calls.
    pub async fn watch_errors(&self) {
        self.js(
            "window.__souqErrors = window.__souqErrors || [];\
             window.addEventListener('error', e => window.__souqErrors.push(String(e.message)));\
             window.addEventListener('unhandledrejection', e => window.__souqErrors.push(String(e.reason)));\
             const ce = console.error.bind(console);\
             console.error = (...a) => { window.__souqErrors.push(a.map(String).join(' ')); ce(...a); };",
            vec![],
        )
        .await;
    }

    /// Runs `script` at the start of every page this browser loads from now on, before
    /// the page's own scripts (Chromium's DevTools, through chromedriver).
    pub async fn on_every_page(&self, script: &str) {
        self.client
            .issue_cmd(Cdp {
                cmd: "Page.addScriptToEvaluateOnNewDocument",
                params: json!({ "source": script }),
            })
            .await
            .expect("a script for every page");
    }

    /// From the next page on, records every WebSocket the page opens
    /// (`window.__sockets`), so that a test can cut them as a network drop would.
    pub async fn record_sockets(&self) {
        self.on_every_page(RECORD_SOCKETS).await;
    }

    /// Closes the page's open WebSockets (see [`Browser::record_sockets`]); gives how many.
    pub async fn cut_sockets(&self) -> i64 {
        self.js(
            "const open = (window.__sockets || []).filter(s => s.readyState === 1); \
             open.forEach(s => s.close()); return open.length;",
            vec![],
        )
        .await
        .as_i64()
        .unwrap_or(0)
    }

    /// Saves a screenshot of the page to `path` (PNG).
    pub async fn screenshot(&self, path: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).expect("the screenshot written");
    }
}

/// Wraps `WebSocket` so that every socket a page opens is kept in `window.__sockets`.
pub const RECORD_SOCKETS: &str = "window.__sockets = []; const Native = window.WebSocket; \
     window.WebSocket = function (url, p) { const s = new Native(url, p); \
     window.__sockets.push(s); return s; }; \
     window.WebSocket.prototype = Native.prototype; \
     Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });";

/// A command chromedriver passes to Chromium's DevTools.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// A page of another origin than souq's: a tiny HTTP server on its own port that answers
/// every request with `html`. Returns its base URL.
pub async fn host_page(html: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = tcp.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    base
}
