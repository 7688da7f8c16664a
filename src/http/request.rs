//! A request read into memory: bounded body, decoded query, bearer token, JSON parsing
//! with errors that say what is wrong.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode, header};
use serde::de::DeserializeOwned;

use super::ApiError;

#[derive(Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    query: Vec<(String, String)>,
    pub body: Bytes,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

impl Req {
    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn read(req: Request<Incoming>, limit: usize) -> Result<Req, ApiError> {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let body = Limited::new(body, limit)
            .collect()
            .await
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
        })
    }

    /// The body as `T`. Malformed JSON is a 400; well-formed JSON of the wrong shape
    /// (missing, unknown or mistyped fields) a 422 naming the problem.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                "expected a JSON body",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::invalid(e.to_string()),
                Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    format!("malformed JSON: {e}"),
                ),
            }
        })
    }

    /// Every query parameter, decoded, in order.
    pub fn query_pairs(&self) -> impl Iterator<Item = &(String, String)> {
        self.query.iter()
    }

    /// A query parameter as given (last one wins); an empty value counts as absent.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A query parameter parsed as a number; a value that is not one is a 422.
    pub fn query_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        let invalid = || ApiError::invalid(format!("{name} must be a non-negative integer"));
        match self.query(name) {
            None => Ok(None),
            Some(v) if v.starts_with('-') || v.starts_with('+') => Err(invalid()),
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

/// Decodes `a=1&b=x%20y` into pairs (`+` is a space; bytes that are not UTF-8 become
/// U+FFFD).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_query;

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
