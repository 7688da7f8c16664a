//! A request read into memory: bounded body, decoded query, bearer token, JSON parsing
//! with errors that say what is wrong.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use serde::de::DeserializeOwned;

use std::net::{IpAddr, SocketAddr};

use super::{ApiError, Edge};

#[derive(Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    query: Vec<(String, String)>,
    pub body: Bytes,
    /// The client's address (see [`client_address`]).
    pub client: IpAddr,
    /// The body still unread, for a surface that streams it (an upload): then `body`
    /// is empty.
    unread: Option<Incoming>,
    /// Longest wait for the next bytes of an unread body.
    body_timeout: std::time::Duration,
}

/// Why a streamed body stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// A streamed body's chunks, each due within the body timeout of the last.
pub type BodyChunks = BoxStream<'static, Result<Bytes, BodyError>>;

/// The client's address: the connection's peer, or behind a trusted reverse proxy the
/// last entry of `X-Forwarded-For` (the one the proxy appended; earlier ones are the
/// client's word).
pub fn client_address(headers: &HeaderMap, peer: SocketAddr, trust_forwarded_for: bool) -> IpAddr {
    let forwarded = || {
        let list = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()?
            .to_str()
            .ok()?;
        list.rsplit(',').next()?.trim().parse().ok()
    };
    match trust_forwarded_for {
        true => forwarded().unwrap_or(peer.ip()),
        false => peer.ip(),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

impl Req {
    /// Reads the whole body, refusing more than `edge.max_body_bytes` and one that takes
    /// longer than `edge.body_timeout` to arrive.
    pub async fn read(
        req: Request<Incoming>,
        client: IpAddr,
        edge: &Edge,
    ) -> Result<Req, ApiError> {
        let limit = edge.max_body_bytes;
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let body = tokio::time::timeout(edge.body_timeout, Limited::new(body, limit).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the body did not arrive within {} s",
                        edge.body_timeout.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    too_large(limit)
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "could not read the body",
                    )
                }
            })?
            .to_bytes();
        Ok(Req {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(parse_query).unwrap_or_default(),
            headers: parts.headers,
            body,
            client,
            unread: None,
            body_timeout: edge.body_timeout,
        })
    }

    /// A request whose body is left unread, for [`Req::take_body`].
    pub fn streamed(req: Request<Incoming>, client: IpAddr, edge: &Edge) -> Req {
        let (parts, body) = req.into_parts();
        Req {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(parse_query).unwrap_or_default(),
            headers: parts.headers,
            body: Bytes::new(),
            client,
            unread: Some(body),
            body_timeout: edge.body_timeout,
        }
    }

    /// The unread body as chunks (empty for a request read whole): it stops with an error
    /// when the connection fails or the next bytes take longer than the body timeout.
    pub fn take_body(&mut self) -> BodyChunks {
        let Some(body) = self.unread.take() else {
            return futures_util::stream::empty().boxed();
        };
        let idle = self.body_timeout;
        futures_util::stream::unfold(Some(body.into_data_stream()), move |data| async move {
            let mut data = data?;
            match tokio::time::timeout(idle, data.next()).await {
                Ok(None) => None,
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(data))),
                Ok(Some(Err(e))) => {
                    Some((Err(BodyError(format!("the body was cut off: {e}"))), None))
                }
                Err(_) => Some((
                    Err(BodyError(format!(
                        "no bytes of the body came for {} s",
                        idle.as_secs()
                    ))),
                    None,
                )),
            }
        })
        .fuse()
        .boxed()
    }

    /// Whether the body is empty (or only whitespace).
    pub fn body_is_empty(&self) -> bool {
        self.body.iter().all(|b| b.is_ascii_whitespace())
    }

    /// The body, a JSON object, as `T`. Malformed JSON is a 400; well-formed JSON of the
    /// wrong shape (not an object; missing, unknown or mistyped fields) a 422 naming the
    /// problem.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let malformed = |e: serde_json::Error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("malformed JSON: {e}"),
            )
        };
        match self.body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    "expected a JSON body",
                ));
            }
            // serde reads a struct from an array too (`[null, null]` would fill its
            // fields in order): every body of these APIs is an object.
            Some(b'{') => {}
            Some(_) => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&self.body).map_err(malformed)?;
                return Err(ApiError::invalid("the body must be a JSON object"));
            }
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::invalid(e.to_string()),
                Category::Syntax | Category::Eof | Category::Io => malformed(e),
            }
        })
    }

    /// Every query parameter, decoded, in order.
    pub fn query_pairs(&self) -> impl Iterator<Item = &(String, String)> {
        self.query.iter()
    }

    /// A query parameter as given (last one wins). An empty value (`status=`) is given as
    /// empty, for the caller to refuse: it is not the same as leaving the parameter out.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter parsed as a number, written as digits only; anything else (an
    /// empty value, a sign, a space) is a 422.
    pub fn query_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        let invalid = || ApiError::invalid(format!("{name} must be a non-negative integer"));
        match self.query(name) {
            None => Ok(None),
            Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) => Err(invalid()),
            Some(v) => v.parse().map(Some).map_err(|_| invalid()),
        }
    }

    /// The token of an `Authorization: Bearer ...` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// An id as every API writes it: a positive integer in digits, without a sign or leading
/// zeros (`+1` and `01` name nothing, rather than chat 1).
pub fn parse_id(text: &str) -> Option<i64> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    text.parse().ok().filter(|id| canonical && *id > 0)
}

/// Where request ids come from: a random start per process, then counting.
#[derive(Debug)]
pub struct RequestIds {
    start: u32,
    next: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            start: rand::random(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

/// A request's id, in its log line and its `X-Request-Id` header: the client's own (or its
/// proxy's) when it sends one of at most 64 visible characters, else one made here. A
/// socket keeps the id of its upgrade.
#[derive(Debug, Clone)]
pub struct RequestId(header::HeaderValue);

impl RequestId {
    pub fn of<B>(req: &Request<B>, ids: &RequestIds) -> RequestId {
        if let Some(given) = req.headers().get("x-request-id")
            && (1..=64).contains(&given.len())
            && given.as_bytes().iter().all(u8::is_ascii_graphic)
        {
            return RequestId(given.clone());
        }
        let n = ids.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let made = format!("{:08x}{n:08x}", ids.start);
        RequestId(
            header::HeaderValue::from_str(&made).unwrap_or(header::HeaderValue::from_static("-")),
        )
    }

    /// Sets the response's `X-Request-Id`.
    pub fn answer<B>(&self, response: &mut hyper::Response<B>) {
        response
            .headers_mut()
            .insert("x-request-id", self.0.clone());
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Visible ASCII only, checked or made so.
        f.write_str(self.0.to_str().unwrap_or("-"))
    }
}

/// Decodes `a=1&b=x%20y` into pairs (`+` is a space; bytes that are not UTF-8 become
/// U+FFFD).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{parse_id, parse_query};

    #[test]
    fn ids_are_positive_integers_written_one_way() {
        assert_eq!(parse_id("1"), Some(1));
        assert_eq!(parse_id("9223372036854775807"), Some(i64::MAX));
        for bad in [
            "",
            "0",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "0x1",
            "9223372036854775808",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn query_strings_are_decoded() {
        let q = parse_query("a=1&b=x%20y+z&c&d=%zz&e=%4");
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "%4".into()),
            ]
        );
        // An escape at the very end is decoded too.
        assert_eq!(parse_query("q=%41"), vec![("q".into(), "A".into())]);
    }
}
