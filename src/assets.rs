//! The page (web/), embedded in the binary so the release binary alone serves the site.
//!
//! Files are served with an ETag (from the embedded content's hash) and `Cache-Control:
//! no-cache`: browsers keep them and revalidate with one cheap 304, and a deploy is picked up on
//! the next load without fingerprinted file names or a build step.
//!
//! `index.html` is the one file the server fills in, once at start-up: the operator's contact
//! (`OPERATOR_CONTACT`), where the page holds the comment `<!--operator-contact-->`.

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use rust_embed::Embed;
use sha2::{Digest, Sha256};
use warp::reply::{Reply, Response};

#[derive(Embed)]
#[folder = "web/"]
struct Web;

/// Where `index.html` takes the operator's contact.
const CONTACT_SLOT: &str = "<!--operator-contact-->";

/// The site as this server serves it: the embedded files, `index.html` filled in.
#[derive(Debug)]
pub struct Site {
    index: Vec<u8>,
    index_etag: String,
}

impl Site {
    /// The site with the operator's contact (an e-mail address or an https:// address, checked
    /// by the configuration) on the page, or none.
    pub fn new(operator_contact: Option<&str>) -> Site {
        let page = Web::get("index.html").expect("web/index.html is embedded");
        let page = String::from_utf8_lossy(&page.data).into_owned();
        let filled = match operator_contact {
            Some(contact) => page.replace(CONTACT_SLOT, &contact_html(contact)),
            None => page,
        };
        let hash = Sha256::digest(filled.as_bytes());
        Site {
            index_etag: format!("\"{}\"", hex(&hash[..12])),
            index: filled.into_bytes(),
        }
    }

    /// The response for `GET /<path>`, or `None` when no such file is embedded.
    pub fn serve(&self, path: &str, if_none_match: Option<&str>) -> Option<Response> {
        let path = if path.is_empty() { "index.html" } else { path };
        if path == "index.html" {
            return Some(respond(&self.index_etag, if_none_match, || {
                (self.index.clone(), content_type(path, "text/html"))
            }));
        }
        let file = Web::get(path)?;
        let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..12]));
        let mime = content_type(path, file.metadata.mimetype());
        Some(respond(&etag, if_none_match, || {
            (file.data.into_owned(), mime)
        }))
    }
}

/// The contact line: a mail link for an address, a link for an https:// address, escaped.
fn contact_html(contact: &str) -> String {
    let text = escape(contact);
    let href = if contact.starts_with("https://") {
        text.clone()
    } else {
        format!("mailto:{text}")
    };
    format!(
        "<p class=\"operator-contact\">To reach the people who run this site: \
         <a href=\"{href}\" rel=\"noopener\">{text}</a></p>"
    )
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A file's response: 304 when the client holds `etag`, else the body and its type (from
/// `body`).
fn respond(
    etag: &str,
    if_none_match: Option<&str>,
    body: impl FnOnce() -> (Vec<u8>, HeaderValue),
) -> Response {
    let mut response =
        if if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag)) {
            warp::reply::with_status(warp::reply(), StatusCode::NOT_MODIFIED).into_response()
        } else {
            let (bytes, mime) = body();
            let mut response = Response::new(bytes.into());
            response.headers_mut().insert(header::CONTENT_TYPE, mime);
            response
        };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex is a valid header"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
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

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(site: &Site) -> String {
        String::from_utf8(site.index.clone()).unwrap()
    }

    #[test]
    fn the_operator_contact_fills_the_page_escaped_and_changes_its_etag() {
        let plain = Site::new(None);
        assert!(index_of(&plain).contains(CONTACT_SLOT));
        assert!(!index_of(&plain).contains("operator-contact\""));
        let mail = Site::new(Some("abuse@example.org"));
        assert!(index_of(&mail).contains(
            "<a href=\"mailto:abuse@example.org\" rel=\"noopener\">abuse@example.org</a>"
        ));
        assert_ne!(mail.index_etag, plain.index_etag);
        let link = Site::new(Some("https://example.org/contact?a=1&b=2"));
        assert!(index_of(&link).contains(
            "href=\"https://example.org/contact?a=1&amp;b=2\" rel=\"noopener\">https://example.org/contact?a=1&amp;b=2</a>"
        ));
        assert_eq!(
            escape("<a href='x'>\"&"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;"
        );
    }
}
