//! The page (web/), embedded in the binary so the release binary alone serves the site.
//!
//! Files are served with an ETag (from the embedded content's hash) and `Cache-Control:
//! no-cache`: browsers keep them and revalidate with one cheap 304, and a deploy is picked up on
//! the next load without fingerprinted file names or a build step.

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use rust_embed::Embed;
use warp::reply::{Reply, Response};

#[derive(Embed)]
#[folder = "web/"]
struct Web;

/// The response for `GET /<path>`, or `None` when no such file is embedded.
pub fn serve(path: &str, if_none_match: Option<&str>) -> Option<Response> {
    let path = if path.is_empty() { "index.html" } else { path };
    let file = Web::get(path)?;
    let hash = file.metadata.sha256_hash();
    let etag = format!("\"{}\"", hex(&hash[..12]));
    let mut response =
        if if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag)) {
            warp::reply::with_status(warp::reply(), StatusCode::NOT_MODIFIED).into_response()
        } else {
            let mut response = Response::new(file.data.into_owned().into());
            let mime = content_type(path, file.metadata.mimetype());
            response.headers_mut().insert(header::CONTENT_TYPE, mime);
            response
        };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

fn content_type(path: &str, guessed: &str) -> HeaderValue {
    let value = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => {
            return HeaderValue::from_str(guessed)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        }
    };
    HeaderValue::from_static(value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Headers on every response: the page may load only its own scripts, styles and images, talk
/// only to its own origin, and never be framed; nothing leaks in a Referer.
pub fn add_security_headers(response: &mut Response) {
    const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
        img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
        base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    );
}
