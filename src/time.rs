//! Time as holdfast stores it: 90 kHz ticks since the Unix epoch, UTC.
//!
//! RTP carries H.264 media time in 90 kHz units, so storing wall-clock time in the same unit means
//! frame durations never need rounding (Moonfire NVR made the same choice). An `i64` of 90 kHz ticks
//! covers about ±3 million years. Conversions to and from RFC 3339 strings live here too, so the
//! rest of the code never juggles seconds, milliseconds and ticks by hand.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Ticks per second of [`Time90k`] and of frame durations.
pub const TICKS_PER_SEC: i64 = 90_000;

/// A point in time: 90 kHz ticks since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time90k(pub i64);

impl Time90k {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// Converts a [`SystemTime`] (rounded down to the tick).
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(duration_to_ticks(d)),
            Err(e) => Self(-duration_to_ticks(e.duration())),
        }
    }

    /// Whole seconds since the epoch (rounded towards minus infinity).
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(TICKS_PER_SEC)
    }

    /// From whole seconds since the epoch.
    pub fn from_unix_seconds(s: i64) -> Self {
        Self(s * TICKS_PER_SEC)
    }

    /// Adds a duration in ticks, saturating.
    pub fn add_ticks(self, ticks: i64) -> Self {
        Self(self.0.saturating_add(ticks))
    }

    /// Parses an RFC 3339 timestamp with offset (e.g. `2026-11-22T21:00:00+01:00`).
    /// A time between two ticks is rounded down to the earlier tick (before 1970 too).
    pub fn parse_rfc3339(s: &str) -> Result<Self, String> {
        let ts: jiff::Timestamp = s
            .parse()
            .map_err(|e| format!("not an RFC 3339 time with offset: {e}"))?;
        let ns = ts.as_nanosecond();
        Ok(Self(
            (ns * i128::from(TICKS_PER_SEC)).div_euclid(1_000_000_000) as i64,
        ))
    }

    /// Formats as RFC 3339 in UTC with as many fractional digits as needed. A tick is not a
    /// whole number of nanoseconds: the time shown is the first nanosecond not before the tick,
    /// so [`Time90k::parse_rfc3339`] gives exactly this tick back (what the API shows can be
    /// sent back and names the same instant; stored JSON keeps its times).
    pub fn to_rfc3339(self) -> String {
        // ceil(ticks * 10^9 / 90000), for negative ticks too.
        let ns = -(-i128::from(self.0) * 1_000_000_000).div_euclid(i128::from(TICKS_PER_SEC));
        match jiff::Timestamp::from_nanosecond(ns) {
            Ok(ts) => ts.to_string(),
            Err(_) => format!("<out of range: {} ticks>", self.0),
        }
    }

    /// The start of the fixed window of `window_secs` seconds that contains this time.
    pub fn floor_to(self, window_secs: u32) -> Self {
        let w = i64::from(window_secs) * TICKS_PER_SEC;
        Self(self.0.div_euclid(w) * w)
    }
}

impl fmt::Display for Time90k {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Serialised as an RFC 3339 string (UTC), as the API and the stored JSON records show it.
impl serde::Serialize for Time90k {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// Parsed from an RFC 3339 string with offset.
impl<'de> serde::Deserialize<'de> for Time90k {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Time90k::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// Converts a [`Duration`] to 90 kHz ticks (rounded down, saturating).
pub fn duration_to_ticks(d: Duration) -> i64 {
    let t = d.as_nanos() * 90 / 1_000_000;
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// Converts 90 kHz ticks to a [`Duration`] (negative counts as zero).
pub fn ticks_to_duration(ticks: i64) -> Duration {
    if ticks <= 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((ticks as u64).saturating_mul(1_000_000) / 90)
}

/// Formats the start of a bucket window as a file stem: `20261122T1300Z`, or with seconds
/// (`20261122T130010Z`) when the window does not start on a whole minute.
pub fn bucket_stem(start: Time90k) -> String {
    let secs = start.unix_seconds();
    let ts = jiff::Timestamp::from_second(secs).expect("bucket start within jiff's range");
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    if dt.second() == 0 {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}Z",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute()
        )
    } else {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }
}

/// Parses a file stem made by [`bucket_stem`] back into the window start.
pub fn parse_bucket_stem(stem: &str) -> Option<Time90k> {
    let b = stem.as_bytes();
    if !(b.len() == 14 || b.len() == 16) || b[8] != b'T' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = stem.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let year = digits(0..4)? as i16;
    let month = digits(4..6)? as i8;
    let day = digits(6..8)? as i8;
    let hour = digits(9..11)? as i8;
    let minute = digits(11..13)? as i8;
    let second = if b.len() == 16 {
        digits(13..15)? as i8
    } else {
        0
    };
    let dt = jiff::civil::DateTime::new(year, month, day, hour, minute, second, 0).ok()?;
    let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(Time90k::from_unix_seconds(ts.as_second()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_and_offsets() {
        let t = Time90k::parse_rfc3339("2026-11-22T21:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T20:00:00Z");
        let t2 = Time90k::parse_rfc3339("2026-11-22T20:00:00.5Z").unwrap();
        assert_eq!(t2.0 - t.0, 45_000);
        assert!(Time90k::parse_rfc3339("2026-11-22 20:00").is_err());
        assert!(
            Time90k::parse_rfc3339("2026-11-22T20:00:00").is_err(),
            "offset is required"
        );
    }

    /// Found by the `keytag_batch` fuzz target (fuzz/regressions/keytag_batch/): a time with a
    /// fraction finer than a tick came back from the API one tick earlier, so events written
    /// back (and holds stored as JSON) moved by a tick.
    #[test]
    fn every_tick_survives_rfc3339_and_back() {
        let t = Time90k::parse_rfc3339("2026-11-22T20:05:03.1234567Z").unwrap();
        assert_eq!(Time90k::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        let spots = [
            0i64,
            161_584_011_281_111,
            -161_584_011_281_111,
            i64::MAX / 100_000,
        ];
        for base in spots {
            for d in -20_000i64..20_000 {
                let t = Time90k(base + d);
                let back = Time90k::parse_rfc3339(&t.to_rfc3339());
                assert_eq!(back, Ok(t), "{}", t.to_rfc3339());
            }
        }
        // Between two ticks: the earlier one, before 1970 as after.
        assert_eq!(
            Time90k::parse_rfc3339("1970-01-01T00:00:00.000000001Z"),
            Ok(Time90k(0))
        );
        assert_eq!(
            Time90k::parse_rfc3339("1969-12-31T23:59:59.999999999Z"),
            Ok(Time90k(-1))
        );
    }

    #[test]
    fn bucket_stems_round_trip() {
        let t = Time90k::parse_rfc3339("2026-11-22T13:00:00Z").unwrap();
        assert_eq!(bucket_stem(t), "20261122T1300Z");
        assert_eq!(parse_bucket_stem("20261122T1300Z"), Some(t));
        let t10 = t.add_ticks(10 * TICKS_PER_SEC);
        assert_eq!(bucket_stem(t10), "20261122T130010Z");
        assert_eq!(parse_bucket_stem("20261122T130010Z"), Some(t10));
        for bad in [
            "",
            "20261122T1300",
            "20261322T1300Z",
            "2026112XT1300Z",
            "20261122X1300Z",
        ] {
            assert_eq!(parse_bucket_stem(bad), None, "{bad}");
        }
    }

    #[test]
    fn floor_to_windows() {
        let t = Time90k::parse_rfc3339("2026-11-22T13:59:59.9Z").unwrap();
        assert_eq!(t.floor_to(3600).to_rfc3339(), "2026-11-22T13:00:00Z");
        assert_eq!(t.floor_to(10).to_rfc3339(), "2026-11-22T13:59:50Z");
        let before_epoch = Time90k(-1);
        assert_eq!(before_epoch.floor_to(10), Time90k(-10 * TICKS_PER_SEC));
    }

    #[test]
    fn serde_uses_rfc3339() {
        let t = Time90k::parse_rfc3339("2026-11-22T21:00:00+01:00").unwrap();
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, "\"2026-11-22T20:00:00Z\"");
        assert_eq!(serde_json::from_str::<Time90k>(&j).unwrap(), t);
        assert!(serde_json::from_str::<Time90k>("\"yesterday\"").is_err());
    }

    #[test]
    fn tick_conversions() {
        assert_eq!(duration_to_ticks(Duration::from_millis(40)), 3600);
        assert_eq!(ticks_to_duration(3600), Duration::from_millis(40));
        assert_eq!(ticks_to_duration(-5), Duration::ZERO);
    }
}
