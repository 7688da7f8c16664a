//! The pages the server serves itself, with no build step: the front page, the operator
//! console, the widget's script and demo, and the API reference. Each is a plain file
//! under `web/` compiled into the binary, so a deployment is still one file.

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response};

use crate::http::HttpResponse;

/// A page or asset, as the route table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    Front,
    Console,
    ConsoleJs,
    Css,
    Demo,
    DemoJs,
    Reference,
    ReferenceJs,
    WidgetJs,
    OpenApi,
    Frames,
}

/// How a page may be cached and what it may load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// A page of this server: scripts, styles and pictures of this origin only, and the
    /// socket of this host.
    Own,
    /// The demo page runs the widget as a merchant's page would; the widget's fallback
    /// for browsers without constructable style sheets is a `<style>` in its shadow root.
    Demo,
    /// A script or style sheet, or JSON: loaded, never shown as a page.
    Asset,
    /// The widget's script is loaded by other origins' pages.
    Widget,
}

struct Asset {
    body: &'static str,
    content_type: &'static str,
    policy: Policy,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "application/javascript; charset=utf-8";

fn asset(page: Page) -> Asset {
    let (body, content_type, policy) = match page {
        Page::Front => (include_str!("web/index.html"), HTML, Policy::Own),
        Page::Console => (include_str!("web/console.html"), HTML, Policy::Own),
        Page::ConsoleJs => (include_str!("web/console.js"), JS, Policy::Asset),
        Page::Css => (
            include_str!("web/souq.css"),
            "text/css; charset=utf-8",
            Policy::Asset,
        ),
        Page::Demo => (include_str!("web/demo.html"), HTML, Policy::Demo),
        Page::DemoJs => (include_str!("web/demo.js"), JS, Policy::Asset),
        Page::Reference => (include_str!("web/reference.html"), HTML, Policy::Own),
        Page::ReferenceJs => (include_str!("web/reference.js"), JS, Policy::Asset),
        Page::WidgetJs => (include_str!("widget.js"), JS, Policy::Widget),
        Page::OpenApi => (
            include_str!("../../schema/openapi.json"),
            "application/json",
            Policy::Asset,
        ),
        Page::Frames => (
            include_str!("../../schema/ws.json"),
            "application/json",
            Policy::Asset,
        ),
    };
    Asset {
        body,
        content_type,
        policy,
    }
}

/// The request's `Host`, if it is a plain host name or address with an optional port: it
/// is written into the page's policy, so nothing else may pass.
fn plain_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    plain.then_some(host)
}

/// The Content-Security-Policy of a page: nothing inline, nothing from elsewhere.
/// `connect-src 'self'` covers the socket in current browsers; older ones need the
/// `ws:`/`wss:` origin of the host named outright.
fn policy(policy: Policy, headers: &HeaderMap) -> Option<String> {
    let socket = plain_host(headers)
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    let styles = match policy {
        Policy::Own => "'self'",
        Policy::Demo => "'self' 'unsafe-inline'",
        Policy::Asset | Policy::Widget => return None,
    };
    Some(format!(
        "default-src 'none'; script-src 'self'; style-src {styles}; img-src 'self' data: blob:; \
         media-src 'self'; connect-src 'self'{socket}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    ))
}

/// The response that serves `page`.
pub(crate) fn serve(page: Page, headers: &HeaderMap) -> HttpResponse {
    let asset = asset(page);
    let mut response = Response::new(crate::http::full(Bytes::from_static(asset.body.as_bytes())));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // Pages are checked again on every visit, so that an upgraded server's console is
    // never run against an older script; scripts, styles and schemas keep five minutes.
    let cache = if asset.content_type == HTML {
        "no-cache"
    } else {
        "public, max-age=300"
    };
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        // The console's sign-in link carries its token in the fragment, which is never
        // sent; this keeps even the page's own address out of other sites' logs.
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if let Some(csp) = policy(asset.policy, headers)
        && let Ok(value) = HeaderValue::from_str(&csp)
    {
        out.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    if asset.policy == Policy::Widget {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_with_anything_but_name_characters_is_left_out_of_the_policy() {
        for (host, expected) in [
            ("souq.example:8080", Some("souq.example:8080")),
            ("[::1]:80", Some("[::1]:80")),
            ("evil; script-src *", None),
            ("", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(plain_host(&headers), expected, "host {host:?}");
        }
    }

    #[test]
    fn pages_have_a_policy_and_assets_do_not() {
        let headers = HeaderMap::new();
        assert!(policy(Policy::Own, &headers).is_some_and(|p| p.contains("script-src 'self'")));
        assert!(policy(Policy::Asset, &headers).is_none());
    }
}
