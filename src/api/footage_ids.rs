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
//! refusal itself is logged, as every refusal is; [`Ids::has_room`]), so one user's looks never
//! take away another's export or receipt. The last check before the entry reserves the room
//! ([`Ids::reserve`]) until the id is made, so concurrent POSTs that pass it together fit
//! together; the ids it ends for that room end at that check. The logbook keeps the facts of
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
    table: Mutex<Table>,
}

/// What [`Ids`] guards with its lock.
#[derive(Default)]
struct Table {
    /// The live ids.
    held: HashMap<String, Arc<Held>>,
    /// Room promised to new ids not inserted yet ([`Reservation`]), by number.
    reserved: HashMap<u64, Promise>,
    /// The next reservation's number.
    next_reservation: u64,
}

/// Room for one new id, taken by [`Ids::reserve`] and counted against the totals of every later
/// check until it is turned into the id ([`Reservation::insert`]) or dropped (the request
/// failed or was abandoned before its id was made).
#[must_use = "the room is given back when the reservation is dropped"]
pub struct Reservation<'a> {
    ids: &'a Ids,
    number: u64,
}

impl Reservation<'_> {
    /// Adds `held` under `id` in the room this reservation made and holds (should the caps
    /// still bind, ids are ended as [`Ids::reserve`] does, the room of the other reservations
    /// counted as taken).
    pub fn insert(self, id: &str, held: Held) {
        let (ids, number) = (self.ids, self.number);
        // Given back below, under the same lock as the insert, not by `drop`.
        std::mem::forget(self);
        let mut t = ids.lock();
        t.reserved.remove(&number);
        t.insert(id, held);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.ids.lock().reserved.remove(&self.number);
    }
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

/// Live ids of `kind` one user may hold.
fn per_user_cap(kind: Footage) -> usize {
    match kind {
        Footage::View => MAX_VIEWS_PER_USER,
        Footage::Export => MAX_EXPORTS_PER_USER,
    }
}

/// A reservation's promise: whose, of which kind, how many bytes of layout.
struct Promise {
    user: String,
    kind: Footage,
    bytes: usize,
}

impl Table {
    /// The promises that `f` picks: how many, and their bytes together.
    fn promised(&self, f: impl Fn(&Promise) -> bool) -> (usize, usize) {
        self.reserved
            .values()
            .filter(|p| f(p))
            .fold((0, 0), |(n, b), p| (n + 1, b + p.bytes))
    }

    /// Ends least recently used ids until one more id of `user` and `kind` holding `size` bytes
    /// fits within every cap, the room the reservations hold counted as taken: the user's own
    /// ids first (views before exports), past the totals another user's only when it has not
    /// been used for [`VIEW_IDLE`] (an export being downloaded or a receipt being printed is
    /// never pushed out by someone else's looks). Stops when nothing more may be ended.
    fn make_room(&mut self, user: &str, kind: Footage, size: usize) {
        let now = Instant::now();
        self.held.retain(|_, h| h.ends() > now);
        let (all_n, all_bytes) = self.promised(|_| true);
        let (_, own_bytes) = self.promised(|p| p.user == user);
        let (own_kind_n, _) = self.promised(|p| p.user == user && p.kind == kind);
        let t = &mut self.held;
        let per_user = per_user_cap(kind);
        // The least recently used id of `user` (of `kind` if given), or with `mine` false of
        // anyone that has not been used for VIEW_IDLE.
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
            .filter(|h| h.user == user && h.kind == kind)
            .count()
            + own_kind_n
            >= per_user
        {
            let Some(k) = lru(t, Some(kind), true) else {
                break;
            };
            t.remove(&k);
        }
        let bytes_of = |t: &HashMap<String, Arc<Held>>, mine: bool| -> usize {
            t.values()
                .filter(|h| !mine || h.user == user)
                .map(|h| h.layout.mem_size())
                .sum()
        };
        while bytes_of(t, true) + own_bytes + size > MAX_BYTES_PER_USER {
            let Some(k) = own_first(t) else { break };
            t.remove(&k);
        }
        while t.len() + all_n >= MAX_IDS || bytes_of(t, false) + all_bytes + size > MAX_BYTES {
            let Some(k) = own_first(t).or_else(|| lru(t, None, false)) else {
                break;
            };
            t.remove(&k);
        }
    }

    /// Adds `held` under `id` (from [`new_id`]), ending ids past the caps first
    /// ([`Table::make_room`]; with a reservation, its room was made when it was taken).
    fn insert(&mut self, id: &str, held: Held) {
        self.make_room(&held.user, held.kind, held.layout.mem_size());
        self.held.insert(id.to_owned(), Arc::new(held));
    }

    /// See [`Ids::has_room`]: other users' ids in use and every reservation (the user's own
    /// too: a reserved id cannot be ended to make room) count against the totals.
    fn has_room(&mut self, user: &str, kind: Footage, mem_size: usize) -> bool {
        let now = Instant::now();
        self.held.retain(|_, h| h.ends() > now);
        let (others, others_bytes) = self
            .held
            .values()
            .filter(|h| h.user != user && now.saturating_duration_since(h.last_used()) < VIEW_IDLE)
            .map(|h| h.layout.mem_size())
            .chain(self.reserved.values().map(|p| p.bytes))
            .fold((0usize, 0usize), |(n, b), bytes| (n + 1, b + bytes));
        let (_, own_reserved) = self.promised(|p| p.user == user);
        // The user's own ids of the kind can all be ended for a new one; ids promised cannot.
        let (own_kind_promised, _) = self.promised(|p| p.user == user && p.kind == kind);
        own_kind_promised < per_user_cap(kind)
            && own_reserved + mem_size <= MAX_BYTES_PER_USER
            && others < MAX_IDS
            && others_bytes + mem_size <= MAX_BYTES
    }
}

impl Ids {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `held` under `id` (from [`new_id`]), ending least recently used ids past the caps:
    /// the user's own first (views before exports), past the totals another user's only when
    /// it has not been used for [`VIEW_IDLE`] (an export being downloaded or a receipt being
    /// printed is never pushed out by someone else's looks). The handlers insert through a
    /// [`Reservation`], so that concurrent requests cannot all fit in the same room; this is
    /// for the unit tests.
    #[cfg(test)]
    fn insert(&self, id: &str, held: Held) {
        self.lock().insert(id, held);
    }

    /// Whether a new id of `user` holding a layout of `mem_size` bytes fits: within the user's
    /// share ([`MAX_BYTES_PER_USER`], the user's own ids ended for it) and under the totals
    /// ([`MAX_IDS`], [`MAX_BYTES`]) counting other users' ids that are still in use and every
    /// reservation, the user's own included (a reserved id cannot be ended for room). The
    /// handler asks before the hash and again, with [`Ids::reserve`], just before the logbook
    /// entry, and answers 503 when it does not fit, before any view or export entry is logged
    /// (only the refusal is).
    pub fn has_room(&self, user: &str, kind: Footage, mem_size: usize) -> bool {
        self.lock().has_room(user, kind, mem_size)
    }

    /// [`Ids::has_room`], and if there is room, makes it and keeps it for this new id (of
    /// `kind`) until the returned [`Reservation`] is inserted or dropped: the ids past the caps
    /// are ended now (the user's own least recently used first, then other users' idle ones),
    /// and the room is promised, all in one step under the table's lock, so concurrent requests
    /// that pass together fit together, and an idle id that is fetched again meanwhile cannot
    /// take the room back (it has already ended). The ids ended stay ended if no id is made
    /// after all (the logbook refused the entry, the client went away): only the promise is
    /// given back.
    pub fn reserve(&self, user: &str, kind: Footage, mem_size: usize) -> Option<Reservation<'_>> {
        let mut t = self.lock();
        if !t.has_room(user, kind, mem_size) {
            return None;
        }
        t.make_room(user, kind, mem_size);
        let number = t.next_reservation;
        t.next_reservation += 1;
        let promise = Promise {
            user: user.to_owned(),
            kind,
            bytes: mem_size,
        };
        t.reserved.insert(number, promise);
        Some(Reservation { ids: self, number })
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
        let mut t = self.lock();
        let now = Instant::now();
        let h = t.held.get(id)?;
        if h.ends() <= now {
            t.held.remove(id);
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
        let t = self.lock();
        let now = Instant::now();
        t.held.values().filter(|h| h.ends() > now).count()
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
        assert!(!t.has_room("newcomer", Footage::View, 0));
        // ... and one with ids (the last one filled: below their own caps, so only the totals
        // bind) makes room out of their own, views first.
        let last = owned.last().unwrap().2.clone();
        assert!(t.has_room(&last, Footage::Export, 0));
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

    /// Fills the table with other users' ids in use until `free` places are left.
    fn fill_leaving(t: &Ids, free: usize) {
        let mut u = 0;
        while t.len() < MAX_IDS - free {
            for _ in 0..MAX_EXPORTS_PER_USER {
                if t.len() == MAX_IDS - free {
                    break;
                }
                add(t, held(Footage::Export, &format!("filler{u}")));
            }
            u += 1;
        }
    }

    #[test]
    fn a_reservation_keeps_its_room_until_inserted_or_dropped() {
        let t = Ids::default();
        fill_leaving(&t, 1);
        let first = t
            .reserve("ann", Footage::View, 0)
            .expect("one place is free");
        // The one place is promised: neither another user nor ann again gets it.
        assert!(t.reserve("bob", Footage::View, 0).is_none());
        assert!(!t.has_room("bob", Footage::View, 0));
        assert!(t.reserve("ann", Footage::View, 0).is_none());
        // Given back when dropped (the logbook refused the entry, the request went away).
        drop(first);
        let again = t.reserve("bob", Footage::View, 0).expect("room given back");
        again.insert(&new_id(), held(Footage::View, "bob"));
        assert_eq!(t.len(), MAX_IDS);
        assert!(
            t.lock().reserved.is_empty(),
            "an inserted reservation is not kept"
        );
        assert!(t.reserve("carol", Footage::View, 0).is_none());
    }

    #[test]
    fn reserved_bytes_count_for_the_user_and_for_everyone() {
        let t = Ids::default();
        let a = t
            .reserve("ann", Footage::View, MAX_BYTES_PER_USER)
            .expect("a user's whole share");
        // ann's share is promised to the first id; a second one of any size does not fit.
        assert!(t.reserve("ann", Footage::View, 1).is_none());
        let rest: Vec<Reservation> = (1..MAX_BYTES / MAX_BYTES_PER_USER)
            .map(|i| {
                t.reserve(&format!("u{i}"), Footage::View, MAX_BYTES_PER_USER)
                    .expect("under the total")
            })
            .collect();
        assert!(
            t.reserve("zed", Footage::View, 1).is_none(),
            "MAX_BYTES is promised in full"
        );
        drop(a);
        assert!(t.reserve("zed", Footage::View, 1).is_some());
        drop(rest);
    }

    #[test]
    fn concurrent_reservations_never_overshoot_the_total() {
        let t = Arc::new(Ids::default());
        fill_leaving(&t, 10);
        let start = Arc::new(std::sync::Barrier::new(32));
        let made: usize = (0..32)
            .map(|i| {
                let (t, start) = (t.clone(), start.clone());
                std::thread::spawn(move || {
                    let user = format!("new{i}");
                    start.wait();
                    let Some(r) = t.reserve(&user, Footage::View, 0) else {
                        return 0;
                    };
                    // The logbook write between the check and the insert.
                    std::thread::sleep(Duration::from_millis(5));
                    r.insert(&new_id(), held(Footage::View, &user));
                    1
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(made, 10);
        assert_eq!(t.len(), MAX_IDS);
    }

    #[test]
    fn a_user_with_an_id_and_a_newcomer_reserving_together_stay_within_the_total() {
        // ann's one id is in use; one place is free. bob reserves it; ann reserves too (her own
        // id can be ended for hers). Whoever inserts first, the table never holds more than
        // MAX_IDS, and bob's place is not taken by ann's insert.
        for ann_first in [true, false] {
            let t = Ids::default();
            let ann_old = add(&t, held(Footage::Export, "ann"));
            fill_leaving(&t, 1);
            let bob = t.reserve("bob", Footage::View, 0).expect("the free place");
            let ann = t
                .reserve("ann", Footage::View, 0)
                .expect("room out of her own id");
            assert!(t.reserve("carol", Footage::View, 0).is_none());
            let (ann, bob) = ((ann, "ann"), (bob, "bob"));
            let (first, second) = if ann_first { (ann, bob) } else { (bob, ann) };
            first.0.insert(&new_id(), held(Footage::View, first.1));
            assert!(t.len() <= MAX_IDS);
            second.0.insert(&new_id(), held(Footage::View, second.1));
            assert_eq!(t.len(), MAX_IDS);
            // ann's old id was the one ended.
            assert!(t.get(&ann_old, Footage::Export, "ann", None).is_none());
        }
    }

    #[test]
    fn an_idle_id_counted_as_room_is_ended_by_the_reservation_not_revived_into_an_overshoot() {
        let t = Ids::default();
        let idle = add(&t, held(Footage::Export, "old"));
        // Unused for longer than VIEW_IDLE (an Instant that far back exists on any machine up
        // for more than VIEW_IDLE; skip otherwise).
        let Some(back) = Instant::now().checked_sub(VIEW_IDLE + Duration::from_secs(1)) else {
            eprintln!("SKIPPED: the machine has been up for less than VIEW_IDLE");
            return;
        };
        *t.lock().held[&idle].last_used.lock().unwrap() = back;
        fill_leaving(&t, 0);
        assert_eq!(t.len(), MAX_IDS);
        // The table is full, but `old`'s id is idle: bob gets room, and it is made now.
        let bob = t
            .reserve("bob", Footage::View, 0)
            .expect("room out of the idle id");
        assert!(
            t.get(&idle, Footage::Export, "old", None).is_none(),
            "the idle id ended at the reservation"
        );
        // Nothing idle is left: nobody else fits, and bob's insert stays within the total.
        assert!(t.reserve("carol", Footage::View, 0).is_none());
        bob.insert(&new_id(), held(Footage::View, "bob"));
        assert_eq!(t.len(), MAX_IDS);
    }

    #[test]
    fn a_users_concurrent_reservations_respect_the_per_user_cap() {
        let t = Ids::default();
        let mine: Vec<String> = (0..MAX_VIEWS_PER_USER)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                add(&t, held(Footage::View, "ann"))
            })
            .collect();
        // Two views reserved together: each ends one of ann's oldest views.
        let a = t.reserve("ann", Footage::View, 0).unwrap();
        let b = t.reserve("ann", Footage::View, 0).unwrap();
        a.insert(&new_id(), held(Footage::View, "ann"));
        b.insert(&new_id(), held(Footage::View, "ann"));
        assert_eq!(t.len(), MAX_VIEWS_PER_USER);
        let kept: Vec<bool> = mine
            .iter()
            .map(|id| t.get(id, Footage::View, "ann", None).is_some())
            .collect();
        assert_eq!(kept.iter().filter(|k| !**k).count(), 2, "{kept:?}");
        assert!(!kept[0] && !kept[1], "the two oldest ended: {kept:?}");
    }

    #[test]
    fn more_concurrent_reservations_of_a_kind_than_a_user_may_hold_are_refused() {
        let t = Ids::default();
        let eight: Vec<Reservation> = (0..MAX_VIEWS_PER_USER)
            .map(|_| t.reserve("ann", Footage::View, 0).expect("within the cap"))
            .collect();
        // A ninth view of ann at the same time would end one of the eight being made.
        assert!(t.reserve("ann", Footage::View, 0).is_none());
        assert!(!t.has_room("ann", Footage::View, 0));
        // Her exports and other users' views are not affected.
        assert!(t.reserve("ann", Footage::Export, 0).is_some());
        assert!(t.reserve("bob", Footage::View, 0).is_some());
        let ids: Vec<String> = eight
            .into_iter()
            .map(|r| {
                let id = new_id();
                r.insert(&id, held(Footage::View, "ann"));
                id
            })
            .collect();
        assert!(ids
            .iter()
            .all(|id| t.get(id, Footage::View, "ann", None).is_some()));
    }
}
