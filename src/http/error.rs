//! The one error shape of the native API: `{"error": {"code": "...", "message": "..."}}`.

use hyper::{StatusCode, header};

use super::{HttpResponse, json_response};

use crate::domain::Error;

/// An error as the client sees it: a status, a stable code and a readable message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The methods the resource answers, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// Seconds to wait, for the `Retry-After` header of a 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// A 405, naming the methods the resource answers (`"GET, POST"`).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this resource answers {allow}"),
            )
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    pub fn into_response(self) -> HttpResponse {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let mut response = json_response(self.status, &body);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.code();
        let status = match code {
            "not_found" => StatusCode::NOT_FOUND,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "invalid" => StatusCode::UNPROCESSABLE_ENTITY,
            "conflict" => StatusCode::CONFLICT,
            "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request" => StatusCode::BAD_REQUEST,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let retry_after = match e {
            Error::RateLimited(seconds) => Some(seconds),
            _ => None,
        };
        let message = match e {
            Error::Store(ref cause) => {
                tracing::error!(error = %cause, "database error");
                match code {
                    "unavailable" => "the database is not available; try again".to_owned(),
                    _ => "internal error".to_owned(),
                }
            }
            Error::Internal(ref cause) => {
                tracing::error!(error = %cause, "internal error");
                "internal error".to_owned()
            }
            Error::Unauthorized(m) | Error::Forbidden(m) | Error::Unavailable(m) => m.to_owned(),
            Error::Invalid(m)
            | Error::Conflict(m)
            | Error::TooLarge(m)
            | Error::Unsupported(m)
            | Error::CutOff(m) => m,
            Error::NotFound(_) | Error::RateLimited(_) => e.to_string(),
        };
        ApiError {
            retry_after,
            ..ApiError::new(status, code, message)
        }
    }
}
