//! The web console's files, embedded in the binary (crate `rust-embed`: a release build carries
//! the contents of `console/` at build time; no Node, no build step) and served at `/`
//! (`console/index.html`) and `/console/{*path}` (any other file of `console/`, 404 otherwise).
//!
//! Every answer carries a strict Content-Security-Policy ([`CSP`]: scripts, styles, images,
//! media and fetches from this daemon only, no inline script, no framing), `nosniff`,
//! `Referrer-Policy: no-referrer`, `Cache-Control: no-cache` and an `ETag` (16 hex digits of the
//! file's SHA-256, computed at build time); `If-None-Match` with it answers 304. The files need
//! no authentication: they hold no data, and the page signs in through `api::session`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The console's files.
#[derive(rust_embed::Embed)]
#[folder = "console/"]
struct Assets;

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; media-src 'self'; connect-src 'self'; form-action 'self'; \
base-uri 'none'; frame-ancestors 'none'";

/// The content type of a file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// Whether an `If-None-Match` header value names `etag` (or is `*`).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Whether a requested path may name an embedded file (no `..`, no absolute or empty parts).
fn plausible(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn not_found(path: &str) -> Response {
    let mut e = ApiError::new(StatusCode::NOT_FOUND, "no such console file");
    e.detail = serde_json::json!({
        "path": super::limits::truncate_utf8(path, super::limits::MAX_PATH_BYTES)
    });
    let mut resp = e.into_response();
    security_headers(resp.headers_mut());
    resp
}

/// The headers every console response carries, its 404s included.
fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Serves one embedded file with the console headers (304 when the ETag matches).
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = plausible(path).then(|| Assets::get(path)).flatten() else {
        return not_found(path);
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..8]));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, content_type(path))],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is valid"),
    );
    security_headers(h);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /`: the console's `index.html`.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/{*path}`: any file of `console/`.
pub async fn asset(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let raw = uri.path().strip_prefix("/console/").unwrap_or_default();
    let path = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    serve(&path, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("i18n/nl.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("shot.png"), "image/png");
        assert_eq!(content_type("x.json"), "application/json");
        assert_eq!(content_type("favicon.ico"), "image/x-icon");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let tag = "\"0123456789abcdef\"";
        assert!(etag_matches(tag, tag));
        assert!(etag_matches("\"x\", W/\"0123456789abcdef\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"0123456789abcdee\"", tag));
        assert!(!etag_matches("", tag));
    }

    #[test]
    fn paths_outside_the_folder_are_never_looked_up() {
        assert!(plausible("app.js"));
        assert!(plausible("i18n/nl.js"));
        for bad in [
            "",
            "../Cargo.toml",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "./a",
        ] {
            assert!(!plausible(bad), "{bad}");
        }
    }

    #[test]
    fn the_index_and_the_script_are_embedded() {
        assert!(Assets::get("index.html").is_some());
        assert!(Assets::get("app.js").is_some());
        assert!(Assets::get("../Cargo.toml").is_none());
    }
}
