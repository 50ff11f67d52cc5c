//! View and export ids: a logged look at footage, made once by a POST, then fetched by id (with
//! `Range`) without a new logbook entry per request.
//!
//! Each id keeps its MP4 layout ([`Layout`]) in memory, so every range of one viewing or download
//! is cut from the same file. An id is bound to the user name that made it (another user's id is
//! answered like an unknown one), to its camera and to its kind. A view lives until
//! [`VIEW_IDLE`] after its last request and at most [`VIEW_MAX`]; an export [`EXPORT_LIFE`].
//! Caps: [`MAX_VIEWS_PER_USER`] views and [`MAX_EXPORTS_PER_USER`] exports per user, and
//! [`MAX_BYTES_PER_USER`] bytes of layouts per user, [`MAX_IDS`] ids and [`MAX_BYTES`] in all.
//! A new id past a cap ends the user's own least recently used ids (views first); past the
//! totals, another user's id only when it has not been used for [`VIEW_IDLE`]. When that does
//! not make room, the POST is answered 503 before any view or export entry is logged (the
//! refusal itself is logged, as every refusal is; [`Ids::has_room`]), so
//! one user's looks never take away another's export or receipt. The logbook keeps the facts of
//! every id forever; only the means to fetch the bytes again ends.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

use crate::export::Layout;
use crate::roles::Footage;

/// A view ends this long after its last request.
pub const VIEW_IDLE: Duration = Duration::from_secs(30 * 60);
/// A view ends at the latest this long after it was made.
pub const VIEW_MAX: Duration = Duration::from_secs(12 * 3600);
/// An export can be downloaded (and its receipt read) this long after it was made.
pub const EXPORT_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Live views per user.
pub const MAX_VIEWS_PER_USER: usize = 8;
/// Live exports per user.
pub const MAX_EXPORTS_PER_USER: usize = 16;
/// Live ids in all.
pub const MAX_IDS: usize = 1024;
/// Memory of all kept layouts together, in bytes.
pub const MAX_BYTES: usize = 512 << 20;

/// Bytes of layouts one user's ids may hold (an eighth of [`MAX_BYTES`]: no single user fills
/// the table for everyone else).
pub const MAX_BYTES_PER_USER: usize = MAX_BYTES / 8;

/// One live id.
#[derive(Debug)]
pub struct Held {
    /// `view` or `export`.
    pub kind: Footage,
    /// The user who made it.
    pub user: String,
    /// Its camera.
    pub camera: String,
    /// Its camera's site when it was made (for the entries that refer to it).
    pub site: String,
    /// The purpose it was made for (re-checked against the user's role on each request).
    pub purpose: Option<String>,
    /// The file.
    pub layout: Arc<Layout>,
    /// The logbook entry that made it: seq and hash.
    pub logbook: (u64, String),
    /// The file name of a download.
    pub file_name: String,
    /// The receipt (the POST's answer) of an export; `Null` for a view.
    pub receipt: serde_json::Value,
    created: Instant,
    last_used: Mutex<Instant>,
}

impl Held {
    /// A new id's data, made now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: Footage,
        user: String,
        camera: String,
        site: String,
        purpose: Option<String>,
        layout: Arc<Layout>,
        logbook: (u64, String),
        file_name: String,
        receipt: serde_json::Value,
    ) -> Held {
        let now = Instant::now();
        Held {
            kind,
            user,
            camera,
            site,
            purpose,
            layout,
            logbook,
            file_name,
            receipt,
            created: now,
            last_used: Mutex::new(now),
        }
    }

    /// When it ends if not used again (views) or at all (exports).
    fn ends(&self) -> Instant {
        match self.kind {
            Footage::View => (self.last_used() + VIEW_IDLE).min(self.created + VIEW_MAX),
            Footage::Export => self.created + EXPORT_LIFE,
        }
    }

    fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long from now until it ends.
    pub fn remaining(&self) -> Duration {
        self.ends().saturating_duration_since(Instant::now())
    }
}

/// The live ids (one table per process).
#[derive(Default)]
pub struct Ids {
    table: Mutex<HashMap<String, Arc<Held>>>,
}

/// The process's table.
pub fn ids() -> &'static Ids {
    static T: LazyLock<Ids> = LazyLock::new(Ids::default);
    &T
}

/// A new id: 18 random bytes of the thread's CSPRNG (seeded from the OS), base64url.
pub fn new_id() -> String {
    let mut b = [0u8; 18];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Ids {
    /// Adds `held` under `id` (from [`new_id`]), ending least recently used ids past the caps:
    /// the user's own first (views before exports), past the totals another user's only when
    /// it has not been used for [`VIEW_IDLE`] (an export being downloaded or a receipt being
    /// printed is never pushed out by someone else's looks).
    pub fn insert(&self, id: &str, held: Held) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        t.retain(|_, h| h.ends() > now);
        let per_user = match held.kind {
            Footage::View => MAX_VIEWS_PER_USER,
            Footage::Export => MAX_EXPORTS_PER_USER,
        };
        let user = held.user.clone();
        // The least recently used id of `user` (views first), or with `user` None of anyone
        // that has not been used for VIEW_IDLE.
        let lru = |t: &HashMap<String, Arc<Held>>, kind: Option<Footage>, mine: bool| {
            t.iter()
                .filter(|(_, h)| {
                    if mine {
                        h.user == user && kind.is_none_or(|k| h.kind == k)
                    } else {
                        now.saturating_duration_since(h.last_used()) >= VIEW_IDLE
                    }
                })
                .min_by_key(|(_, h)| h.last_used())
                .map(|(k, _)| k.clone())
        };
        let own_first = |t: &HashMap<String, Arc<Held>>| {
            lru(t, Some(Footage::View), true).or_else(|| lru(t, Some(Footage::Export), true))
        };
        while t
            .values()
            .filter(|h| h.user == held.user && h.kind == held.kind)
            .count()
            >= per_user
        {
            let Some(k) = lru(&t, Some(held.kind), true) else {
                break;
            };
            t.remove(&k);
        }
        let size = held.layout.mem_size();
        let bytes_of = |t: &HashMap<String, Arc<Held>>, mine: bool| -> usize {
            t.values()
                .filter(|h| !mine || h.user == held.user)
                .map(|h| h.layout.mem_size())
                .sum()
        };
        while bytes_of(&t, true) + size > MAX_BYTES_PER_USER {
            let Some(k) = own_first(&t) else { break };
            t.remove(&k);
        }
        while t.len() >= MAX_IDS || bytes_of(&t, false) + size > MAX_BYTES {
            let Some(k) = own_first(&t).or_else(|| lru(&t, None, false)) else {
                break;
            };
            t.remove(&k);
        }
        t.insert(id.to_owned(), Arc::new(held));
    }

    /// Whether a new id of `user` holding a layout of `mem_size` bytes fits: within the user's
    /// share ([`MAX_BYTES_PER_USER`], the user's own ids ended for it) and under the totals
    /// ([`MAX_IDS`], [`MAX_BYTES`]) counting only other users' ids that are still in use. The
    /// handler asks before the hash and again just before the logbook entry, and answers 503
    /// when it does not fit, before any view or export entry is logged (only the refusal is).
    pub fn has_room(&self, user: &str, mem_size: usize) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        t.retain(|_, h| h.ends() > now);
        let (others, others_bytes) = t
            .values()
            .filter(|h| h.user != user && now.saturating_duration_since(h.last_used()) < VIEW_IDLE)
            .fold((0usize, 0usize), |(n, b), h| {
                (n + 1, b + h.layout.mem_size())
            });
        mem_size <= MAX_BYTES_PER_USER && others < MAX_IDS && others_bytes + mem_size <= MAX_BYTES
    }

    /// The live id `id` of `kind` made by `user` (for `camera` when given), marked as used now;
    /// `None` for an unknown, ended or another user's id.
    pub fn get(
        &self,
        id: &str,
        kind: Footage,
        user: &str,
        camera: Option<&str>,
    ) -> Option<Arc<Held>> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let h = t.get(id)?;
        if h.ends() <= now {
            t.remove(id);
            return None;
        }
        if h.kind != kind || h.user != user || camera.is_some_and(|c| c != h.camera) {
            return None;
        }
        *h.last_used.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Some(h.clone())
    }

    /// Live ids (for tests and diagnostics).
    pub fn len(&self) -> usize {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        t.values().filter(|h| h.ends() > now).count()
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(kind: Footage, user: &str) -> Held {
        let layout = Layout {
            plan: Default::default(),
            head: bytes::Bytes::from_static(b"head"),
            frames: 0,
        };
        Held::new(
            kind,
            user.into(),
            "cam".into(),
            "s".into(),
            None,
            Arc::new(layout),
            (1, "h".into()),
            "f.mp4".into(),
            serde_json::Value::Null,
        )
    }

    fn add(t: &Ids, h: Held) -> String {
        let id = new_id();
        t.insert(&id, h);
        id
    }

    #[test]
    fn ids_are_bound_to_user_kind_and_camera_and_capped_per_user() {
        let t = Ids::default();
        let a = add(&t, held(Footage::View, "ann"));
        assert!(a.len() >= 22, "{a}");
        assert!(t.get(&a, Footage::View, "ann", Some("cam")).is_some());
        assert!(t.get(&a, Footage::View, "ann", None).is_some());
        assert!(t.get(&a, Footage::View, "bob", Some("cam")).is_none());
        assert!(t.get(&a, Footage::Export, "ann", Some("cam")).is_none());
        assert!(t.get(&a, Footage::View, "ann", Some("other")).is_none());
        assert!(t.get("nope", Footage::View, "ann", None).is_none());
        // Eight more views of ann: the least recently used (a, used before all of them) ends.
        let more: Vec<String> = (0..MAX_VIEWS_PER_USER)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                add(&t, held(Footage::View, "ann"))
            })
            .collect();
        assert!(t.get(&a, Footage::View, "ann", None).is_none());
        assert!(more
            .iter()
            .all(|k| t.get(k, Footage::View, "ann", None).is_some()));
        // Another user's and another kind's ids do not count against ann's views.
        let b = add(&t, held(Footage::View, "bob"));
        let e = add(&t, held(Footage::Export, "ann"));
        assert_eq!(t.len(), MAX_VIEWS_PER_USER + 2);
        assert!(t.get(&b, Footage::View, "bob", None).is_some());
        assert!(t.get(&e, Footage::Export, "ann", None).is_some());
    }

    #[test]
    fn at_the_totals_a_user_ends_only_their_own_ids_and_a_newcomer_waits() {
        let t = Ids::default();
        let mut owned: Vec<(String, Footage, String)> = Vec::new();
        'fill: for u in 0.. {
            let user = format!("u{u}");
            for (kind, n) in [
                (Footage::View, MAX_VIEWS_PER_USER),
                (Footage::Export, MAX_EXPORTS_PER_USER),
            ] {
                for _ in 0..n {
                    if t.len() == MAX_IDS {
                        break 'fill;
                    }
                    owned.push((add(&t, held(kind, &user)), kind, user.clone()));
                }
            }
        }
        assert_eq!(t.len(), MAX_IDS);
        // Everyone's ids are in use: a user with none gets no room (503 before any entry)...
        assert!(!t.has_room("newcomer", 0));
        // ... and one with ids (the last one filled: below their own caps, so only the totals
        // bind) makes room out of their own, views first.
        let last = owned.last().unwrap().2.clone();
        assert!(t.has_room(&last, 0));
        let before: Vec<bool> = owned
            .iter()
            .map(|(id, kind, user)| t.get(id, *kind, user, None).is_some())
            .collect();
        assert!(before.iter().all(|b| *b));
        add(&t, held(Footage::Export, &last));
        let gone: Vec<&(String, Footage, String)> = owned
            .iter()
            .filter(|(id, kind, user)| t.get(id, *kind, user, None).is_none())
            .collect();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(
            (gone[0].1, gone[0].2.as_str()),
            (Footage::View, last.as_str())
        );
        assert_eq!(t.len(), MAX_IDS);
    }
}
