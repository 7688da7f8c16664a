//! Files over HTTP, for every surface: an upload read as a stream (`multipart/form-data`,
//! or the raw bytes with a name), and a download with ranges and headers that keep a
//! browser from running a file as a page of souq's origin.

use hyper::{Response, StatusCode, header};

use crate::domain::{Core, Error, FileAccess, FileInfo, Principal};
use crate::http::{ApiError, HttpResponse, Req, streamed};

/// Stores the file a request uploads into `chat_id`: the first part of a
/// `multipart/form-data` body that carries a file name (or is called `file`), or else
/// the whole body, named by the `name` query parameter or a `Content-Disposition`
/// header.
pub(crate) async fn upload(
    core: &Core,
    who: &Principal,
    chat_id: i64,
    req: &mut Req,
) -> Result<FileInfo, ApiError> {
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Room for a multipart body's headers and boundaries besides the file.
    let most = core.files().limits().max_file_bytes + 64 * 1024;
    if declared.is_some_and(|n| n > most) {
        return Err(Error::TooLarge(format!(
            "a file may have at most {} bytes",
            core.files().limits().max_file_bytes
        ))
        .into());
    }
    let body = req.take_body();
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|_| ApiError::invalid("multipart/form-data needs a boundary"))?;
        // The whole body is bounded, part headers and all: multer holds a part's head in
        // memory until it ends.
        let limits =
            multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(most));
        let mut parts = multer::Multipart::with_constraints(body, boundary, limits);
        loop {
            let field = parts.next_field().await.map_err(|e| match e {
                multer::Error::StreamSizeExceeded { .. } => {
                    ApiError::from(Error::TooLarge(format!(
                        "a file may have at most {} bytes",
                        core.files().limits().max_file_bytes
                    )))
                }
                e => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("malformed multipart body: {e}"),
                ),
            })?;
            let Some(field) = field else {
                return Err(ApiError::invalid(
                    "the multipart body has no file: send it in a part called \"file\"",
                ));
            };
            if field.file_name().is_some() || field.name() == Some("file") {
                let name = field.file_name().unwrap_or("").to_owned();
                return Ok(core.upload(who, chat_id, &name, field).await?);
            }
        }
    }
    let name = req
        .query("name")
        .map(str::to_owned)
        .or_else(|| {
            req.headers
                .get(header::CONTENT_DISPOSITION)
                .and_then(|v| v.to_str().ok())
                .and_then(disposition_name)
        })
        .unwrap_or_default();
    Ok(core.upload(who, chat_id, &name, body).await?)
}

/// The `filename` of a `Content-Disposition` header (`filename*=UTF-8''...` first).
fn disposition_name(value: &str) -> Option<String> {
    let params = value.split(';').map(str::trim);
    let mut plain = None;
    for p in params {
        let Some((key, v)) = p.split_once('=') else {
            continue;
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let (charset, rest) = v.split_once('\'')?;
                let (_, encoded) = rest.split_once('\'')?;
                if charset.eq_ignore_ascii_case("utf-8") {
                    let bytes: Vec<u8> = percent_decode(encoded.as_bytes());
                    return String::from_utf8(bytes).ok();
                }
            }
            "filename" => plain = Some(v.trim().trim_matches('"').to_owned()),
            _ => {}
        }
    }
    plain
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let hex = || std::str::from_utf8(input.get(i + 1..i + 3)?).ok();
        match (input[i], hex().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// How a download proves itself: a signed link (`expires` and `signature` in the query),
/// else the caller's token.
pub(crate) fn link_of(req: &Req) -> Result<Option<(i64, &str)>, ApiError> {
    match (req.query("expires"), req.query("signature")) {
        (None, None) => Ok(None),
        (Some(expires), Some(signature)) => {
            let expires = expires.parse().map_err(|_| ApiError::not_found())?;
            Ok(Some((expires, signature)))
        }
        _ => Err(ApiError::not_found()),
    }
}

/// Answers a download of file `id` (GET, or HEAD for its headers alone), by a signed link
/// or a caller who can see its chat.
pub(crate) async fn download(
    core: &Core,
    req: &Req,
    id: &str,
    who: Option<&Principal>,
) -> Result<HttpResponse, ApiError> {
    let access = match (link_of(req)?, who) {
        (Some((expires, signature)), _) => FileAccess::Link { expires, signature },
        (None, Some(who)) => FileAccess::Caller(who),
        (None, None) => {
            return Err(Error::Unauthorized(
                "send Authorization: Bearer <token>, or use the file's signed url",
            )
            .into());
        }
    };
    let file = core.file(access, id).await?;
    serve(core, req, &file).await
}

/// The file's bytes (or the range asked for) with safe headers.
pub(crate) async fn serve(
    core: &Core,
    req: &Req,
    file: &FileInfo,
) -> Result<HttpResponse, ApiError> {
    let size = file.size.max(0) as u64;
    let range = match req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(asked) => match byte_range(asked, size) {
            Ranged::Whole => None,
            Ranged::Part(range) => Some(range),
            Ranged::Unsatisfiable => {
                let mut response = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("the file has {size} bytes"),
                )
                .into_response();
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header::HeaderValue::from_str(&format!("bytes */{size}"))
                        .map_err(|_| ApiError::not_found())?,
                );
                return Ok(response);
            }
        },
    };
    let head_only = req.method == hyper::Method::HEAD;
    let (status, length) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let body = match (head_only, size) {
        (true, _) | (_, 0) => crate::http::full(bytes::Bytes::new()),
        (false, _) => streamed(core.file_bytes(file, range.clone()).await?),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: String| {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, file.content_type.clone());
    set(header::CONTENT_LENGTH, length.to_string());
    set(
        header::CONTENT_DISPOSITION,
        content_disposition(file.disposition(), &file.name),
    );
    set(header::ACCEPT_RANGES, "bytes".into());
    set(header::ETAG, format!("\"{}\"", file.id));
    // A file never changes under its id; the link's signature ends, though.
    set(header::CACHE_CONTROL, "private, max-age=3600".into());
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff".into());
    // Even opened as a page, a file runs nothing and reaches nothing.
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
            .into(),
    );
    // An <img> of another origin (the shop's page, the widget) may show it.
    set(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "cross-origin".into(),
    );
    if let Some(r) = &range {
        set(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        );
    }
    Ok(response)
}

/// `inline` or `attachment`, with the name as ASCII and as UTF-8 (RFC 6266).
fn content_disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// Not one byte range (or not understood): the whole file, as if not asked.
    Whole,
    Part(std::ops::Range<u64>),
    /// Starts past the end.
    Unsatisfiable,
}

fn byte_range(asked: &str, size: u64) -> Ranged {
    let Some(spec) = asked.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // The last n bytes.
        (true, false) => match number(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(n) if size > 0 => Ranged::Part(size.saturating_sub(n)..size),
            Some(_) => Ranged::Unsatisfiable,
            None => Ranged::Whole,
        },
        (false, _) => {
            let Some(start) = number(first) else {
                return Ranged::Whole;
            };
            let end = match last.is_empty() {
                true => size,
                false => match number(last) {
                    Some(last) if last >= start => last.saturating_add(1).min(size),
                    _ => return Ranged::Whole,
                },
            };
            if start >= size {
                Ranged::Unsatisfiable
            } else {
                Ranged::Part(start..end)
            }
        }
        (true, true) => Ranged::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let cases = [
            ("bytes=0-9", Ranged::Part(0..10)),
            ("bytes=5-", Ranged::Part(5..100)),
            ("bytes=-10", Ranged::Part(90..100)),
            ("bytes=-1000", Ranged::Part(0..100)),
            ("bytes=90-1000", Ranged::Part(90..100)),
            ("bytes=100-", Ranged::Unsatisfiable),
            ("bytes=-0", Ranged::Unsatisfiable),
            ("bytes=9-3", Ranged::Whole),
            ("bytes=0-1,5-6", Ranged::Whole),
            ("items=0-1", Ranged::Whole),
            ("bytes=x-1", Ranged::Whole),
        ];
        for (asked, expected) in cases {
            assert_eq!(byte_range(asked, 100), expected, "{asked}");
        }
    }

    #[test]
    fn a_name_is_given_in_ascii_and_in_utf8() {
        assert_eq!(
            content_disposition("attachment", "фото \"1\".jpg"),
            "attachment; filename=\"____ _1_.jpg\"; \
             filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE%20%221%22.jpg"
        );
        assert_eq!(
            disposition_name("attachment; filename*=UTF-8''%D1%84.png").as_deref(),
            Some("ф.png")
        );
        assert_eq!(
            disposition_name("form-data; filename=\"a b.pdf\"").as_deref(),
            Some("a b.pdf")
        );
    }
}
