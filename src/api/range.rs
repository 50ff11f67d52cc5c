//! HTTP byte ranges (RFC 7233) for `view.mp4` and `export.mp4`: the `Range` header of a GET,
//! judged against the file's length and the `If-Range` validator. Pure; unit-tested.
//!
//! One range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) is served as 206; an end past the file is
//! clamped to its last byte; a range that starts past the end (or `-0`) is unsatisfiable (416).
//! Everything else is ignored and the whole file is sent (200), as the RFC allows: a header that
//! is not valid `bytes=` syntax, another unit, and several ranges (a multipart answer is not
//! worth its complexity for a video player, which asks for one range at a time). `If-Range`
//! must name the response's entity tag exactly (strong comparison); a date, another tag, or a
//! response without a tag makes the range be ignored.

/// What to send for a request's `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file (no range, or one that is ignored).
    Whole,
    /// Bytes `start..=end` (206).
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Nothing of the file matches (416).
    Unsatisfiable,
}

/// Judges a `Range` header value against a file of `len` bytes (see the module doc).
pub fn parse(value: &str, len: u64) -> Ranged {
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    // Empty list elements are allowed by the list syntax (`1#`); only real specs count.
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs[..] else {
        return Ranged::Whole;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    // A number too large for u64 is past any file: unsatisfiable as a start, clamped as an end.
    let num = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    match (digits(a), digits(b), b.is_empty()) {
        // `a-b` and `a-`.
        (true, true, _) | (true, false, true) => {
            let start = num(a);
            let end = if b.is_empty() { u64::MAX } else { num(b) };
            if end < start {
                return Ranged::Whole;
            }
            if start >= len {
                return Ranged::Unsatisfiable;
            }
            Ranged::Part {
                start,
                end: end.min(len - 1),
            }
        }
        // `-n`: the last n bytes.
        (false, true, _) if a.is_empty() => {
            let n = num(b);
            if n == 0 || len == 0 {
                return Ranged::Unsatisfiable;
            }
            Ranged::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            }
        }
        _ => Ranged::Whole,
    }
}

/// Whether a request's range applies given its `If-Range` value and the response's entity tag
/// (`None`: the response has none, so an `If-Range` never matches).
pub fn if_range_allows(if_range: Option<&str>, etag: Option<&str>) -> bool {
    match if_range {
        None => true,
        // A strong comparison: weak tags and dates never match.
        Some(v) => etag.is_some_and(|t| v.trim() == t && !t.starts_with("W/")),
    }
}

/// The range a request gets: its `Range` and `If-Range` headers judged against a file of `len`
/// bytes whose entity tag is `etag`.
pub fn judge(range: Option<&str>, if_range: Option<&str>, etag: Option<&str>, len: u64) -> Ranged {
    match range {
        Some(r) if if_range_allows(if_range, etag) => parse(r, len),
        _ => Ranged::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> Ranged {
        Ranged::Part { start, end }
    }

    #[test]
    fn single_ranges_are_parts_clamped_to_the_file() {
        assert_eq!(parse("bytes=0-", 100), part(0, 99));
        assert_eq!(parse("bytes=5-9", 100), part(5, 9));
        assert_eq!(parse("bytes=-10", 100), part(90, 99));
        assert_eq!(parse("bytes=-1000", 100), part(0, 99));
        assert_eq!(parse("bytes=90-1000", 100), part(90, 99));
        assert_eq!(parse("bytes=99-99", 100), part(99, 99));
        assert_eq!(parse("bytes=0-99999999999999999999999", 100), part(0, 99));
        assert_eq!(parse(" Bytes = 5 - 9 ", 100), part(5, 9));
        assert_eq!(parse("bytes=5-9,", 100), part(5, 9));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(parse("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(parse("bytes=100-200", 100), Ranged::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(
            parse("bytes=99999999999999999999999-", 100),
            Ranged::Unsatisfiable
        );
    }

    #[test]
    fn invalid_syntax_other_units_and_several_ranges_give_the_whole_file() {
        for v in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=9-5",
            "bytes=5",
            "bytes=+5-9",
            "bytes=5-9x",
            "bytes=--5",
            "items=0-5",
            "bytes=0-5,10-20",
            "bytes=0-0,-1",
        ] {
            assert_eq!(parse(v, 100), Ranged::Whole, "{v:?}");
        }
    }

    #[test]
    fn if_range_needs_the_exact_strong_tag() {
        let tag = Some("\"abc\"");
        assert_eq!(judge(Some("bytes=5-9"), None, tag, 100), part(5, 9));
        assert_eq!(
            judge(Some("bytes=5-9"), Some("\"abc\""), tag, 100),
            part(5, 9)
        );
        for other in [
            "\"abd\"",
            "W/\"abc\"",
            "Sun, 06 Dec 2026 00:00:00 GMT",
            "abc",
        ] {
            assert_eq!(
                judge(Some("bytes=5-9"), Some(other), tag, 100),
                Ranged::Whole,
                "{other}"
            );
        }
        // No tag (a request without an id): If-Range never matches.
        assert_eq!(
            judge(Some("bytes=5-9"), Some("\"abc\""), None, 100),
            Ranged::Whole
        );
        assert_eq!(judge(Some("bytes=5-9"), None, None, 100), part(5, 9));
        assert_eq!(judge(None, None, tag, 100), Ranged::Whole);
    }
}
