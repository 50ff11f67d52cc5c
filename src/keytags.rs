//! Key-tag events: which tag opened which door when (R4), stored for their own retention and
//! readable only through logged queries.
//!
//! An event is `{tag, door, time}` and belongs to a site: the site of the access system that
//! submits it (a user scoped to one site), or its `site` field. Two column families hold it,
//! both with empty values, so a repeated event is the same key and submitting it twice stores it
//! once:
//!
//! ```text
//! keytags         site \0 time(8) tag \0 door     time order per site: door queries, retention
//! keytags_by_tag  tag \0 time(8) site \0 door     tag queries without scanning other tags
//! ```
//!
//! `time(8)` is the 90 kHz wall time, big-endian with the sign bit flipped, so keys sort by time.
//! A batch is parsed completely before anything is written and then written in one RocksDB batch:
//! all or nothing. The sweeper calls [`sweep`]: per site, events older than the site policy's
//! `keytags` retention go, except those a hold with `keytags: true` pins (a hold on the site, or
//! on cameras of the site, covering the event's time).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::retention::holds::HoldSnapshot;
use crate::retention::intervals::{Interval, IntervalSet};
use crate::store::index::{Index, IndexBatch, IndexError, CF_KEYTAGS, CF_KEYTAGS_BY_TAG};
use crate::time::Time90k;

/// Longest tag or door id.
pub const MAX_ID_LEN: usize = 128;

/// One key-tag event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The tag (badge) id.
    pub tag: String,
    /// The door.
    pub door: String,
    /// When the tag was presented.
    pub time: Time90k,
    /// The site of the door.
    pub site: String,
}

/// An event as submitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    tag: String,
    door: String,
    time: String,
    #[serde(default)]
    site: Option<String>,
}

/// A rejected batch: which line (1-based; element for a JSON array) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BatchError {
    /// 1-based line of NDJSON, or 1-based element of a JSON array.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

fn check_id(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > MAX_ID_LEN {
        return Err(format!("{what} is longer than {MAX_ID_LEN} bytes"));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

/// Parses a batch (NDJSON, or one JSON array). `site_for` resolves an event's site from its
/// optional `site` field (the submitter's scope) or says why it cannot.
pub fn parse_batch(
    body: &str,
    site_for: impl Fn(Option<&str>) -> Result<String, String>,
) -> Result<Vec<Event>, BatchError> {
    let trimmed = body.trim_start();
    let items: Vec<(usize, serde_json::Value)> = if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|e| BatchError {
                line: e.line(),
                message: format!("not a JSON array of events: {e}"),
            })?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v = serde_json::from_str(line).map_err(|e| BatchError {
                line: i + 1,
                message: format!("not JSON: {e}"),
            })?;
            out.push((i + 1, v));
        }
        out
    };
    if items.is_empty() {
        return Err(BatchError {
            line: 1,
            message: "no events".into(),
        });
    }
    let mut events = Vec::with_capacity(items.len());
    for (line, v) in items {
        let bad = |message: String| BatchError { line, message };
        let raw: RawEvent = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        check_id("tag", &raw.tag).map_err(bad)?;
        check_id("door", &raw.door).map_err(bad)?;
        let time = Time90k::parse_rfc3339(&raw.time).map_err(|e| bad(format!("time: {e}")))?;
        let site = site_for(raw.site.as_deref()).map_err(|e| bad(format!("site: {e}")))?;
        events.push(Event {
            tag: raw.tag,
            door: raw.door,
            time,
            site,
        });
    }
    Ok(events)
}

fn time_bytes(t: Time90k) -> [u8; 8] {
    ((t.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from(b: &[u8]) -> Time90k {
    Time90k((u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64)
}

fn site_key(e: &Event) -> Vec<u8> {
    let mut k = Vec::with_capacity(e.site.len() + e.tag.len() + e.door.len() + 11);
    k.extend_from_slice(e.site.as_bytes());
    k.push(0);
    k.extend_from_slice(&time_bytes(e.time));
    k.extend_from_slice(e.tag.as_bytes());
    k.push(0);
    k.extend_from_slice(e.door.as_bytes());
    k
}

fn tag_key(e: &Event) -> Vec<u8> {
    let mut k = Vec::with_capacity(e.site.len() + e.tag.len() + e.door.len() + 11);
    k.extend_from_slice(e.tag.as_bytes());
    k.push(0);
    k.extend_from_slice(&time_bytes(e.time));
    k.extend_from_slice(e.site.as_bytes());
    k.push(0);
    k.extend_from_slice(e.door.as_bytes());
    k
}

fn prefix_time(prefix: &str, t: Time90k) -> Vec<u8> {
    let mut k = prefix.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&time_bytes(t));
    k
}

/// Splits `a \0 time(8) b \0 c`.
fn split_key(k: &[u8]) -> Option<(&str, Time90k, &str, &str)> {
    let z = k.iter().position(|&b| b == 0)?;
    let a = std::str::from_utf8(&k[..z]).ok()?;
    let rest = k.get(z + 1..)?;
    if rest.len() < 8 {
        return None;
    }
    let t = time_from(&rest[..8]);
    let rest = &rest[8..];
    let z2 = rest.iter().position(|&b| b == 0)?;
    let b = std::str::from_utf8(&rest[..z2]).ok()?;
    let c = std::str::from_utf8(&rest[z2 + 1..]).ok()?;
    Some((a, t, b, c))
}

fn corrupt(what: &str) -> IndexError {
    IndexError::Corrupt(format!("key-tag key in {what}"))
}

/// Stores a parsed batch atomically and durably. Returns how many events were new.
pub fn store(index: &Index, events: &[Event]) -> Result<usize, IndexError> {
    let mut batch = IndexBatch::default();
    let mut new = 0;
    for e in events {
        let k = site_key(e);
        if index.get_raw(CF_KEYTAGS, &k)?.is_none() {
            new += 1;
        }
        batch.put_raw(index, CF_KEYTAGS, &k, b"");
        batch.put_raw(index, CF_KEYTAGS_BY_TAG, &tag_key(e), b"");
    }
    index.commit(batch, true)?;
    Ok(new)
}

/// Events of `tag` in `[from, to)` at the given sites (`None`: all), in time order.
pub fn by_tag(
    index: &Index,
    tag: &str,
    from: Time90k,
    to: Time90k,
    sites: Option<&[String]>,
) -> Result<Vec<Event>, IndexError> {
    let lo = prefix_time(tag, from);
    let hi = prefix_time(tag, to);
    let mut out = Vec::new();
    for item in index.range_raw(CF_KEYTAGS_BY_TAG, &lo, &hi) {
        let (k, _) = item?;
        let (tag, time, site, door) = split_key(&k).ok_or_else(|| corrupt(CF_KEYTAGS_BY_TAG))?;
        if sites.is_none_or(|s| s.iter().any(|x| x == site)) {
            out.push(Event {
                tag: tag.into(),
                door: door.into(),
                time,
                site: site.into(),
            });
        }
    }
    Ok(out)
}

/// Events at `door` in `[from, to)` at the given sites, in time order per site.
pub fn by_door(
    index: &Index,
    door: &str,
    from: Time90k,
    to: Time90k,
    sites: &[String],
) -> Result<Vec<Event>, IndexError> {
    let mut out = Vec::new();
    for site in sites {
        let lo = prefix_time(site, from);
        let hi = prefix_time(site, to);
        for item in index.range_raw(CF_KEYTAGS, &lo, &hi) {
            let (k, _) = item?;
            let (site, time, tag, d) = split_key(&k).ok_or_else(|| corrupt(CF_KEYTAGS))?;
            if d == door {
                out.push(Event {
                    tag: tag.into(),
                    door: d.into(),
                    time,
                    site: site.into(),
                });
            }
        }
    }
    out.sort_by_key(|e| e.time);
    Ok(out)
}

/// Per site, the time ranges that holds with `keytags: true` pin at `now`. A held camera's site
/// is the one the hold recorded when it was placed (`Hold::camera_sites`), so a camera removed
/// from the config or moved to another site by a reload keeps its incident's doors pinned;
/// `site_of` (the current config) answers only for holds placed before sites were recorded (the
/// same rule as the API's `held_site`).
pub fn pinned(
    holds: &HoldSnapshot,
    site_of: impl Fn(&str) -> Option<String>,
    now: Time90k,
) -> HashMap<String, IntervalSet> {
    let mut per_site: HashMap<String, Vec<Interval>> = HashMap::new();
    for h in holds.active(now).filter(|h| h.keytags) {
        let mut sites: Vec<String> = h
            .cameras
            .iter()
            .filter_map(|c| {
                if h.camera_sites.is_empty() {
                    site_of(c)
                } else {
                    h.camera_sites.get(c).cloned()
                }
            })
            .collect();
        sites.extend(h.site.clone());
        sites.sort();
        sites.dedup();
        for s in sites {
            per_site.entry(s).or_default().push(h.range());
        }
    }
    per_site
        .into_iter()
        .map(|(s, v)| (s, IntervalSet::from_intervals(v)))
        .collect()
}

/// Deletes every event older than its site's retention that no key-tag hold pins. `retention`
/// maps each site to its keytags retention in 90 kHz ticks. Returns how many events went.
pub fn sweep(
    index: &Index,
    retention: &BTreeMap<String, i64>,
    pins: &HashMap<String, IntervalSet>,
    now: Time90k,
) -> Result<u64, IndexError> {
    let mut gone = 0;
    for (site, ticks) in retention {
        let cutoff = now.add_ticks(-ticks);
        let lo = prefix_time(site, Time90k(i64::MIN));
        let hi = prefix_time(site, cutoff);
        let pinned = pins.get(site);
        let mut batch = IndexBatch::default();
        for item in index.range_raw(CF_KEYTAGS, &lo, &hi) {
            let (k, _) = item?;
            let (site, time, tag, door) = split_key(&k).ok_or_else(|| corrupt(CF_KEYTAGS))?;
            if pinned.is_some_and(|p| p.overlaps(&Interval::new(time.0, time.0 + 1))) {
                continue;
            }
            let e = Event {
                tag: tag.into(),
                door: door.into(),
                time,
                site: site.into(),
            };
            batch.delete_raw(index, CF_KEYTAGS, &k);
            batch.delete_raw(index, CF_KEYTAGS_BY_TAG, &tag_key(&e));
            gone += 1;
        }
        if !batch.is_empty() {
            index.commit(batch, true)?;
        }
    }
    Ok(gone)
}

/// Number of stored events (for tests and the metric at start).
pub fn count(index: &Index) -> Result<u64, IndexError> {
    let mut n = 0;
    for item in index.range_raw(CF_KEYTAGS, b"", &[0xff; 9]) {
        item?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-22T21:00:00+01:00";

    fn one_site(s: Option<&str>) -> Result<String, String> {
        match s {
            None | Some("maas-noord") => Ok("maas-noord".into()),
            Some(other) => Err(format!("{other:?} is not your site")),
        }
    }

    #[test]
    fn ndjson_and_arrays_parse_and_the_first_bad_line_is_named() {
        let nd = format!(
            "{{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"{T}\"}}\n\n{{\"tag\":\"B2\",\"door\":\"bike\",\"time\":\"{T}\"}}\n"
        );
        assert_eq!(parse_batch(&nd, one_site).unwrap().len(), 2);
        let arr = format!("[{{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"{T}\"}}]");
        assert_eq!(parse_batch(&arr, one_site).unwrap()[0].site, "maas-noord");
        let bad = format!(
            "{{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"{T}\"}}\n{{\"tag\":\"A1\",\"door\":\"main\",\"time\":\"yesterday\"}}\n{{\"tag\":\"\"}}"
        );
        let e = parse_batch(&bad, one_site).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("time"), "{e}");
        let e = parse_batch("{\"tag\":\"\",\"door\":\"d\",\"time\":\"x\"}", one_site).unwrap_err();
        assert!(e.message.contains("tag is empty"), "{e}");
        let e = parse_batch(
            &format!("{{\"tag\":\"A\",\"door\":\"d\",\"time\":\"{T}\",\"site\":\"elsewhere\"}}"),
            one_site,
        )
        .unwrap_err();
        assert!(e.message.starts_with("site:"), "{e}");
        assert!(parse_batch("", one_site).is_err());
    }

    #[test]
    fn keys_sort_by_time_and_round_trip() {
        let e = Event {
            tag: "A1".into(),
            door: "main".into(),
            time: Time90k::parse_rfc3339(T).unwrap(),
            site: "s".into(),
        };
        let key = site_key(&e);
        let (s, t, tag, door) = split_key(&key).unwrap();
        assert_eq!((s, t, tag, door), ("s", e.time, "A1", "main"));
        let earlier = Event {
            time: e.time.add_ticks(-1),
            ..e.clone()
        };
        assert!(site_key(&earlier) < site_key(&e));
        assert!(time_bytes(Time90k(-5)) < time_bytes(Time90k(3)));
    }

    #[test]
    fn store_query_and_sweep_keep_what_holds_pin() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let t0 = Time90k::parse_rfc3339(T).unwrap();
        let ev = |i: i64, tag: &str, door: &str| Event {
            tag: tag.into(),
            door: door.into(),
            time: t0.add_ticks(i * 90_000),
            site: "s".into(),
        };
        let events: Vec<Event> = (0..10)
            .map(|i| ev(i, if i % 2 == 0 { "A" } else { "B" }, "main"))
            .collect();
        assert_eq!(store(&index, &events).unwrap(), 10);
        assert_eq!(store(&index, &events[..3]).unwrap(), 0, "idempotent");
        assert_eq!(count(&index).unwrap(), 10);
        let a = by_tag(&index, "A", t0, t0.add_ticks(100 * 90_000), None).unwrap();
        assert_eq!(a.len(), 5);
        assert!(
            by_tag(&index, "A", t0, t0.add_ticks(1), Some(&["x".into()]))
                .unwrap()
                .is_empty()
        );
        let d = by_door(
            &index,
            "main",
            t0.add_ticks(2 * 90_000),
            t0.add_ticks(5 * 90_000),
            &["s".into()],
        )
        .unwrap();
        assert_eq!(d.len(), 3);

        // Retention 0 s at t0+10 s: everything is due; a pin on seconds 3..5 keeps two events.
        let pins = HashMap::from([(
            "s".to_owned(),
            IntervalSet::from_intervals([Interval::new(
                t0.add_ticks(3 * 90_000).0,
                t0.add_ticks(5 * 90_000).0,
            )]),
        )]);
        let gone = sweep(
            &index,
            &BTreeMap::from([("s".into(), 0)]),
            &pins,
            t0.add_ticks(10 * 90_000),
        )
        .unwrap();
        assert_eq!(gone, 8);
        let left = by_door(
            &index,
            "main",
            t0,
            t0.add_ticks(100 * 90_000),
            &["s".into()],
        )
        .unwrap();
        assert_eq!(
            left.iter().map(|e| e.time).collect::<Vec<_>>(),
            vec![events[3].time, events[4].time]
        );
        assert_eq!(
            by_tag(&index, "B", t0, t0.add_ticks(100 * 90_000), None)
                .unwrap()
                .len(),
            1
        );
    }
}
