//! What keeps a flood of bad requests from hurting: refusals are logged coalesced, and a source
//! that keeps failing authentication is answered 429 without further work.
//!
//! **Coalescing.** Every refused request (401, 403, 429) is written to the logbook, but at most
//! one entry per (source, route pattern, status) per [`WINDOW`]: the first refusal of a window is
//! logged at once with `count: 1`; later ones in the same window are only counted, and the count
//! is written as one more entry when the window has closed (by [`Limits::flush_expired`], which
//! the server calls every few seconds, or at the next refusal after the window closed), or at
//! shutdown ([`Limits::flush_all`]). Paths in entries are cut to [`MAX_PATH_BYTES`]; tokens are
//! never logged.
//!
//! **Rate limit.** After [`MAX_AUTH_FAILURES`] 401s from one source within [`WINDOW`], every
//! further request from it that carries no valid token is answered 429 with `Retry-After` until
//! the window ends. Valid tokens are never throttled.
//!
//! **Memory.** A source is an IPv4 address or an IPv6 /64 (one host usually owns a whole /64).
//! Both tables are capped ([`MAX_SOURCES`], [`MAX_WINDOWS`]); when full, closed windows are
//! dropped first and then the oldest. A refusal that finds the coalescing table full is counted
//! in one overflow window per route and status (source `*`), so a flood from many addresses
//! still writes a bounded number of entries per minute.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::logbook::NewEntry;
use crate::time::Time90k;

/// Length of a coalescing window and of the failed-authentication window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// 401s from one source within [`WINDOW`] after which it is answered 429.
pub const MAX_AUTH_FAILURES: u32 = 20;
/// Sources tracked by the rate limiter at most.
pub const MAX_SOURCES: usize = 4096;
/// Coalescing windows kept at most (beyond that: the overflow window of the route).
pub const MAX_WINDOWS: usize = 512;
/// Longest request path written to the logbook, in bytes.
pub const MAX_PATH_BYTES: usize = 256;
/// Distinct user names remembered per window (403s of authenticated users).
const MAX_USERS_PER_WINDOW: usize = 8;

/// Where a request came from, as the limits see it: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses included).
    V4(std::net::Ipv4Addr),
    /// The /64 prefix of an IPv6 address.
    V6Net(u64),
    /// Any source: the overflow window when the table is full.
    Any,
}

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Net((u128::from(a) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{a}"),
            Source::V6Net(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*p) << 64)),
            Source::Any => f.write_str("*"),
        }
    }
}

/// A refused request, as the middleware saw it.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The peer's address.
    pub peer: IpAddr,
    /// Method.
    pub method: String,
    /// Path as requested (cut to [`MAX_PATH_BYTES`] here).
    pub path: String,
    /// Route pattern (`unmatched` when none).
    pub route: String,
    /// Status answered.
    pub status: u16,
    /// User and role when the token was valid (403).
    pub user: Option<(String, String)>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    opened_at: Time90k,
    /// Refusals counted but not yet written.
    pending: u64,
    last_at: Time90k,
    peer: IpAddr,
    method: String,
    path: String,
    users: Vec<String>,
}

#[derive(Debug)]
struct Failures {
    since: Instant,
    count: u32,
}

type WindowKey = (Source, String, u16);

/// The coalescing and rate-limit tables of one server.
#[derive(Debug, Default)]
pub struct Limits {
    windows: Mutex<HashMap<WindowKey, Window>>,
    failures: Mutex<HashMap<Source, Failures>>,
}

/// Cuts `s` to at most `max` bytes, on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limits {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// When `peer` is throttled: how long until it may try again.
    pub fn throttled(&self, peer: IpAddr) -> Option<Duration> {
        self.throttled_at(peer, Instant::now())
    }

    fn throttled_at(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let t = lock(&self.failures);
        let f = t.get(&Source::of(peer))?;
        let age = now.saturating_duration_since(f.since);
        (f.count >= MAX_AUTH_FAILURES && age < WINDOW).then(|| WINDOW - age)
    }

    /// Counts a 401 answered to `peer`.
    pub fn auth_failed(&self, peer: IpAddr) {
        self.auth_failed_at(peer, Instant::now());
    }

    fn auth_failed_at(&self, peer: IpAddr, now: Instant) {
        let src = Source::of(peer);
        let mut t = lock(&self.failures);
        if !t.contains_key(&src) && t.len() >= MAX_SOURCES {
            t.retain(|_, f| now.saturating_duration_since(f.since) < WINDOW);
            if t.len() >= MAX_SOURCES {
                // Evict the window that started first: it ends soonest anyway.
                if let Some(k) = t.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k) {
                    t.remove(&k);
                }
            }
        }
        let f = t.entry(src).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.saturating_duration_since(f.since) >= WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
    }

    /// Records a refusal; returns the logbook entries to write now (at most two: the closed
    /// window this refusal's key had, and this refusal when it opens a new window).
    pub fn refused(&self, r: Refusal) -> Vec<NewEntry> {
        self.refused_at(r, Instant::now(), Time90k::now())
    }

    fn refused_at(&self, r: Refusal, now: Instant, wall: Time90k) -> Vec<NewEntry> {
        let mut out = Vec::new();
        let mut t = lock(&self.windows);
        let mut key = (Source::of(r.peer), r.route.clone(), r.status);
        if !t.contains_key(&key) && t.len() >= MAX_WINDOWS {
            out.extend(take_closed(&mut t, now));
            if t.len() >= MAX_WINDOWS {
                key.0 = Source::Any;
            }
        }
        if let Some(w) = t.get(&key) {
            if now.saturating_duration_since(w.opened) >= WINDOW {
                let w = t.remove(&key).expect("present");
                if w.pending > 0 {
                    out.push(window_entry(&key, &w));
                }
            }
        }
        match t.get_mut(&key) {
            Some(w) => {
                w.pending += 1;
                w.last_at = wall;
                if let Some((name, _)) = &r.user {
                    if w.users.len() < MAX_USERS_PER_WINDOW && !w.users.contains(name) {
                        w.users.push(name.clone());
                    }
                }
            }
            None => {
                let path = truncate_utf8(&r.path, MAX_PATH_BYTES).to_owned();
                let opening = Window {
                    opened: now,
                    opened_at: wall,
                    pending: 1,
                    last_at: wall,
                    peer: r.peer,
                    method: r.method.clone(),
                    path,
                    users: r.user.iter().map(|(n, _)| n.clone()).collect(),
                };
                let mut e = window_entry(&key, &opening);
                if let Some((name, role)) = &r.user {
                    e.user = name.clone();
                    e.role = role.clone();
                }
                out.push(e);
                t.insert(
                    key,
                    Window {
                        pending: 0,
                        ..opening
                    },
                );
            }
        }
        out
    }

    /// Entries for every window that has closed with refusals not yet written; forgets closed
    /// windows.
    pub fn flush_expired(&self) -> Vec<NewEntry> {
        take_closed(&mut lock(&self.windows), Instant::now())
    }

    /// Entries for every window with refusals not yet written (at shutdown).
    pub fn flush_all(&self) -> Vec<NewEntry> {
        let mut t = lock(&self.windows);
        let out = t
            .iter()
            .filter(|(_, w)| w.pending > 0)
            .map(|(k, w)| window_entry(k, w))
            .collect();
        t.clear();
        out
    }

    /// Forgets failure counts whose window has closed (memory only).
    pub fn purge(&self) {
        let now = Instant::now();
        lock(&self.failures).retain(|_, f| now.saturating_duration_since(f.since) < WINDOW);
    }
}

fn take_closed(t: &mut HashMap<WindowKey, Window>, now: Instant) -> Vec<NewEntry> {
    let mut out = Vec::new();
    t.retain(|k, w| {
        if now.saturating_duration_since(w.opened) < WINDOW {
            return true;
        }
        if w.pending > 0 {
            out.push(window_entry(k, w));
        }
        false
    });
    out
}

/// The logbook entry standing for `w.pending` refusals of one window.
fn window_entry(key: &WindowKey, w: &Window) -> NewEntry {
    let (source, route, status) = key;
    let peer = match source {
        Source::Any => "*".to_owned(),
        _ => w.peer.to_string(),
    };
    NewEntry {
        user: if w.users.len() == 1 {
            w.users[0].clone()
        } else {
            "-".into()
        },
        role: "-".into(),
        action: "denied".into(),
        object: json!({
            "method": w.method,
            "path": w.path,
            "route": route,
            "status": status,
            "source": peer,
            "source_net": source.to_string(),
            "count": w.pending,
            "first": w.opened_at.to_rfc3339(),
            "last": w.last_at.to_rfc3339(),
            "users": w.users,
        }),
        text: Some(format!("HTTP {status} x{}", w.pending)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ip: &str, status: u16) -> Refusal {
        Refusal {
            peer: ip.parse().unwrap(),
            method: "GET".into(),
            path: "/api/v1/holds".into(),
            route: "/api/v1/holds".into(),
            status,
            user: None,
        }
    }

    #[test]
    fn a_window_logs_the_first_refusal_and_then_one_count() {
        let l = Limits::new();
        let t0 = Instant::now();
        let w = Time90k::now();
        let first = l.refused_at(refusal("10.0.0.1", 401), t0, w);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].object["count"], 1);
        for i in 1..100 {
            let e = l.refused_at(refusal("10.0.0.1", 401), t0 + Duration::from_millis(i), w);
            assert!(e.is_empty());
        }
        // Another status or route is another window.
        assert_eq!(l.refused_at(refusal("10.0.0.1", 403), t0, w).len(), 1);
        // The next refusal after the window closed writes the closed count and opens anew.
        let e = l.refused_at(refusal("10.0.0.1", 401), t0 + WINDOW, w);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].object["count"], 99);
        assert_eq!(e[1].object["count"], 1);
        assert!(l.flush_all().is_empty());
    }

    #[test]
    fn flush_writes_closed_windows_only() {
        let l = Limits::new();
        let t0 = Instant::now() - WINDOW;
        let w = Time90k::now();
        l.refused_at(refusal("10.0.0.1", 401), t0, w);
        l.refused_at(refusal("10.0.0.1", 401), t0, w);
        l.refused_at(refusal("10.0.0.2", 401), Instant::now(), w);
        l.refused_at(refusal("10.0.0.2", 401), Instant::now(), w);
        let e = l.flush_expired();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].object["source"], "10.0.0.1");
        assert_eq!(e[0].object["count"], 1);
        let e = l.flush_all();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].object["source"], "10.0.0.2");
    }

    #[test]
    fn many_sources_stay_bounded() {
        let l = Limits::new();
        let t0 = Instant::now();
        let w = Time90k::now();
        let mut entries = 0;
        for i in 0..20_000u32 {
            let ip = IpAddr::V6(Ipv6Addr::from((u128::from(i) << 64) | 1));
            entries += l.refused_at(refusal(&ip.to_string(), 401), t0, w).len();
            l.auth_failed_at(ip, t0);
        }
        assert!(lock(&l.windows).len() <= MAX_WINDOWS + 1);
        assert!(lock(&l.failures).len() <= MAX_SOURCES);
        assert_eq!(entries, MAX_WINDOWS + 1, "one per window and one overflow");
        let flushed: u64 = l
            .flush_all()
            .iter()
            .map(|e| e.object["count"].as_u64().unwrap())
            .sum();
        assert_eq!(flushed as usize + entries, 20_000);
    }

    #[test]
    fn throttling_after_repeated_failures_by_v4_or_v6_net() {
        let l = Limits::new();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..MAX_AUTH_FAILURES - 1 {
            l.auth_failed_at(a, t0);
        }
        assert!(l.throttled_at(a, t0).is_none());
        l.auth_failed_at(b, t0);
        assert!(l.throttled_at(a, t0).is_some(), "same /64");
        assert!(l.throttled_at("2001:db9::1".parse().unwrap(), t0).is_none());
        assert!(l.throttled_at(a, t0 + WINDOW).is_none(), "window over");
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Source::of(v4), Source::of(mapped));
    }

    #[test]
    fn paths_are_cut_on_a_char_boundary() {
        let s = "é".repeat(200);
        let t = truncate_utf8(&s, MAX_PATH_BYTES);
        assert!(t.len() <= MAX_PATH_BYTES && t.len() >= MAX_PATH_BYTES - 1);
        assert_eq!(truncate_utf8("abc", 2), "ab");
    }
}
