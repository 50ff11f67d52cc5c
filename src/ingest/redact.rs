//! Scrubbing of camera error texts and log lines, so that camera URLs, Authorization headers and
//! passwords never reach `last_error`, the logs or the metrics.
//!
//! retina's error texts name the URL it was given (and so its query string), the SDP's control
//! URLs and the camera's reason phrases; a hostile or broken camera also controls part of those
//! texts. [`error_text`] is applied to every camera error before it is stored or logged: URLs of
//! any scheme become `<camera url>`, an `Authorization` header value becomes `<redacted>`, the
//! camera's password (if it ever appeared) becomes `<password>`, control characters (log
//! injection) become spaces, and the text is capped at [`MAX_ERROR_LEN`] bytes.
//! [`ScrubbingWriter`] does the same for `rtsp://`-family URLs in every log line the daemon writes
//! (retina also logs through the `log` crate, which the tracing subscriber picks up).

use std::io::Write;

/// What a URL is replaced with.
pub const URL_PLACEHOLDER: &str = "<camera url>";
/// Longest error text kept, in bytes (a camera controls part of it).
pub const MAX_ERROR_LEN: usize = 512;

/// Scrubs a camera error text: URLs, Authorization headers, the password, control characters;
/// capped at [`MAX_ERROR_LEN`].
pub fn error_text(text: &str, password: Option<&str>) -> String {
    let mut s = scrub_urls(text, |_| true);
    s = scrub_authorization(&s);
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        s = s.replace(p, "<password>");
    }
    // Control characters (a camera could inject fake log lines) become spaces; retina's
    // multi-line texts become one line.
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    let out_trimmed = out.trim_end().len();
    out.truncate(out_trimmed);
    if out.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// Replaces every `rtsp://`, `rtsps://` or `rtspu://` URL in `text` with [`URL_PLACEHOLDER`].
pub fn scrub_rtsp_urls(text: &str) -> String {
    scrub_urls(text, |scheme| {
        ["rtsp", "rtsps", "rtspu"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
    })
}

/// Replaces every `scheme://...` for which `wanted(scheme)` holds. A URL ends at whitespace, a
/// quote, `<`, `>` or a backtick; trailing sentence punctuation is kept out of it.
fn scrub_urls(text: &str, wanted: impl Fn(&str) -> bool) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0; // text[..copied] is already in `out` (or replaced)
    let mut search = 0;
    while let Some(rel) = memchr::memmem::find(&bytes[search..], b"://") {
        let sep = search + rel;
        let mut start = sep;
        while start > copied
            && (bytes[start - 1].is_ascii_alphanumeric() || b"+.-".contains(&bytes[start - 1]))
        {
            start -= 1;
        }
        // A scheme starts with a letter.
        while start < sep && !bytes[start].is_ascii_alphabetic() {
            start += 1;
        }
        if start == sep || !wanted(&text[start..sep]) {
            search = sep + 3;
            continue;
        }
        let mut end = sep + 3;
        while end < bytes.len()
            && !bytes[end].is_ascii_whitespace()
            && !b"\"'<>`".contains(&bytes[end])
        {
            end += 1;
        }
        while end > sep + 3 && b".,;:!?)".contains(&bytes[end - 1]) {
            end -= 1;
        }
        if end == sep + 3 {
            // "rtsps://" alone names a scheme, not a camera.
            search = end;
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(URL_PLACEHOLDER);
        copied = end;
        search = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces the value of every `Authorization:` / `Proxy-Authorization:` header (to the end of the
/// line) with `<redacted>`.
fn scrub_authorization(text: &str) -> String {
    const NAME: &[u8] = b"authorization";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(rel) = memchr::memmem::find(&lower.as_bytes()[search..], NAME) {
        let at = search + rel + NAME.len();
        let rest = &lower.as_bytes()[at..];
        // `Authorization: x`, `Authorization=x` and `"authorization": "x"` all count.
        let skip = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'"' | b'\''))
            .count();
        if !matches!(rest.get(skip), Some(b':' | b'=')) {
            search = at;
            continue;
        }
        let value_start = at + skip + 1;
        let value_end = text[value_start..]
            .find(['\r', '\n'])
            .map_or(text.len(), |i| value_start + i);
        out.push_str(&text[copied..value_start]);
        out.push_str(" <redacted>");
        copied = value_end;
        search = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// A `tracing_subscriber` writer that scrubs `rtsp://`-family URLs out of every log line before it
/// reaches stderr (the fmt layer writes one event per `write` call into a formatted buffer).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubbingWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ScrubbingWriter {
    type Writer = ScrubbingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingStderr
    }
}

/// The writer [`ScrubbingWriter`] hands out: scrubs, then writes to stderr.
#[derive(Debug)]
pub struct ScrubbingStderr;

impl Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Whole lines only: a short write would let the rest (perhaps a URL split in two)
        // come in another call, past the check.
        if memchr::memmem::find(buf, b"://").is_none() {
            std::io::stderr().write_all(buf)?;
            return Ok(buf.len());
        }
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub_rtsp_urls(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_any_scheme_are_replaced_and_the_message_kept() {
        let e = "DESCRIBE: [127.0.0.1:40000(me)->10.0.0.9:554@2026-11-23T10:00:00] \
                 Bad URL rtsp://10.0.0.9:554/stream1?channel=1&x=y; only scheme rtsp supported";
        let s = error_text(e, None);
        assert_eq!(
            s,
            "DESCRIBE: [127.0.0.1:40000(me)->10.0.0.9:554@2026-11-23T10:00:00] \
             Bad URL <camera url>; only scheme rtsp supported"
        );
        assert_eq!(
            error_text(
                "Must specify host in rtsp url rtsps://cam.example:322/a/b",
                None
            ),
            "Must specify host in rtsp url <camera url>"
        );
        assert_eq!(
            error_text("unknown stream RTSP://[::1]:554/x?token=abc).", None),
            "unknown stream <camera url>)."
        );
        assert_eq!(
            error_text("a=control:\"http://user:pw@h/x\" and https://h/y", None),
            "a=control:\"<camera url>\" and <camera url>"
        );
        // Not URLs: left alone.
        assert_eq!(error_text("no frame for 5 s", None), "no frame for 5 s");
        assert_eq!(error_text(":// 1://x", None), ":// 1://x");
        assert_eq!(
            error_text("use digest or rtsps://, or allow", None),
            "use digest or rtsps://, or allow"
        );
    }

    #[test]
    fn the_log_writer_scrubs_only_rtsp_urls() {
        assert_eq!(
            scrub_rtsp_urls("repaired schemeless x to rtsp://h:1/p?q=1 see https://docs"),
            "repaired schemeless x to <camera url> see https://docs"
        );
        assert_eq!(
            scrub_rtsp_urls("rtspu://h/ rtsps://h/"),
            "<camera url> <camera url>"
        );
    }

    #[test]
    fn authorization_headers_and_the_password_never_survive() {
        let e = "got request\r\nAuthorization: Basic dmlld2VyOnNlY3JldA==\r\nCSeq: 2";
        let s = error_text(e, None);
        assert!(!s.contains("dmlld2Vy"), "{s}");
        assert!(s.contains("Authorization: <redacted>"), "{s}");
        assert!(s.contains("CSeq: 2"), "{s}");
        let s = error_text(
            "{\"authorization\": \"Digest username=x, response=abc\"}",
            None,
        );
        assert!(!s.contains("response=abc"), "{s}");
        let s = error_text(
            "server said: wrong password s3cret-Pa55 for viewer",
            Some("s3cret-Pa55"),
        );
        assert_eq!(s, "server said: wrong password <password> for viewer");
        // "authorization" as a word without a value is kept.
        assert_eq!(
            error_text("authorization failed", None),
            "authorization failed"
        );
    }

    #[test]
    fn control_characters_and_huge_texts_are_neutralised() {
        let s = error_text("reason\nFAKE LOG LINE\x1b[31m", None);
        assert!(!s.chars().any(char::is_control), "{s:?}");
        assert_eq!(
            error_text("401 Unauthorized: no\n\nconn: a->b", None),
            "401 Unauthorized: no conn: a->b"
        );
        let huge = "é".repeat(10_000);
        let s = error_text(&huge, None);
        assert!(s.len() <= MAX_ERROR_LEN + 3);
        assert!(s.ends_with("..."));
    }
}
