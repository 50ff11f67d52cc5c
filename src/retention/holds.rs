//! Incident holds: what they pin, how they are stored, and the snapshot readers see.
//!
//! A hold pins a time range of some cameras (listed, or every camera of a site at the time it is
//! placed) until it is released or its optional `expires_at` passes (then it has lapsed, by
//! itself: no job has to run for that). Holds are stored as JSON in the `holds` column family and
//! published as an immutable [`HoldSnapshot`] behind an `ArcSwap`: the sweeper, the erasure check
//! and the API read it without taking a lock.
//!
//! Changes (place, release, extend) are rare and go through one mutex, the *gate*. The gate is
//! also what makes invariant 1 hold under concurrency: the sweeper plans a deletion against a
//! snapshot without any lock, then takes the gate only for its irreversible step, re-checks that
//! the snapshot version is still current (re-planning when not), and commits while holding it.
//! A hold is acknowledged only after it is durable and published, and it cannot be published
//! while a deletion that ignores it is being committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::intervals::{Interval, IntervalSet};
use crate::store::index::IndexBatch;
use crate::store::{Store, StoreError};
use crate::time::Time90k;

/// A change of a hold after it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldChange {
    /// When.
    pub at: Time90k,
    /// Which user.
    pub by: String,
    /// Why.
    pub reason: String,
    /// For an extension: the new expiry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_at: Option<Time90k>,
}

/// One incident hold, as stored and as the API shows it (plus its state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Id (sequential).
    pub id: u64,
    /// The cameras it pins (for a site hold: the site's cameras when it was placed).
    pub cameras: Vec<String>,
    /// The site, when it was placed for a whole site.
    pub site: Option<String>,
    /// Start of the pinned range.
    pub from: Time90k,
    /// End of the pinned range (exclusive).
    pub to: Time90k,
    /// Why footage is held.
    pub reason: String,
    /// Incident or police case number.
    pub reference: String,
    /// Who asked for it (police, resident, manager).
    pub requested_by: String,
    /// The user who placed it.
    pub placed_by: String,
    /// When it was placed.
    pub placed_at: Time90k,
    /// When it lapses by itself, if ever.
    pub expires_at: Option<Time90k>,
    /// Whether it also pins the key-tag events of the held cameras' site doors.
    pub keytags: bool,
    /// Release, if released.
    pub released: Option<HoldChange>,
    /// Extensions, oldest first.
    pub extensions: Vec<HoldChange>,
    /// The site of every held camera when the hold was placed: site scope and the sites of the
    /// hold's logbook entries follow these, not the current config (a camera that moves or
    /// leaves the config does not move its incident to another site).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub camera_sites: BTreeMap<String, String>,
}

/// The state of a hold at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldState {
    /// Pins its range.
    Active,
    /// Released by a user.
    Released,
    /// Its `expires_at` has passed.
    Lapsed,
}

impl Hold {
    /// Its state at `now`.
    pub fn state(&self, now: Time90k) -> HoldState {
        if self.released.is_some() {
            HoldState::Released
        } else if self.expires_at.is_some_and(|e| e <= now) {
            HoldState::Lapsed
        } else {
            HoldState::Active
        }
    }

    /// The pinned time range.
    pub fn range(&self) -> Interval {
        Interval::new(self.from.0, self.to.0)
    }

    /// The API view: every field plus `state`.
    pub fn to_json(&self, now: Time90k) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("a hold serialises");
        v["state"] = serde_json::to_value(self.state(now)).expect("a state serialises");
        v
    }
}

/// A request to place a hold, validated by the caller (the API names the fields).
#[derive(Debug, Clone)]
pub struct NewHold {
    /// Cameras to pin (already resolved from a site if the request named one).
    pub cameras: Vec<String>,
    /// The site named in the request, if any.
    pub site: Option<String>,
    /// Start of the range.
    pub from: Time90k,
    /// End of the range (exclusive).
    pub to: Time90k,
    /// Why (non-empty).
    pub reason: String,
    /// Case number.
    pub reference: String,
    /// Who asked.
    pub requested_by: String,
    /// Optional lapse time.
    pub expires_at: Option<Time90k>,
    /// Pin key-tag events too.
    pub keytags: bool,
    /// The site of every camera, as configured when the hold is placed.
    pub camera_sites: BTreeMap<String, String>,
}

/// The review period given to holds stored without a review date (placed before every hold
/// had one): from the moment they are loaded, so none lapses by surprise.
pub const LEGACY_REVIEW_TICKS: i64 = 14 * 86_400 * crate::time::TICKS_PER_SEC;

/// Why a hold change was refused.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// No hold with that id.
    #[error("no hold {0}")]
    NotFound(u64),
    /// The change does not fit the hold's state (released, lapsed, no expiry to extend).
    #[error("{0}")]
    Conflict(String),
    /// A field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal (the logbook entry that records the change, in the same batch) failed: the
    /// change was not stored either.
    #[error("recording the change in the logbook failed: {0}")]
    Journal(String),
}

/// Commits the batch that stores a hold change, given the hold as it will be stored.
/// [`Holds::place_with`] and [`Holds::extend_with`] take one so that the caller (the API) adds
/// the change's logbook entry to the same batch (`Logbook::append_with`): the hold and the entry
/// that records it become durable together or not at all, so a crash in between can leave
/// neither a hold without its `hold.place` entry nor an entry of a hold that does not exist.
pub type Journal<'a> = &'a mut dyn FnMut(&Hold, IndexBatch) -> Result<(), HoldError>;

/// An immutable view of every hold, with the pins per camera precomputed.
#[derive(Debug, Default)]
pub struct HoldSnapshot {
    /// Increases with every change; the sweeper compares it before an irreversible step.
    pub version: u64,
    holds: BTreeMap<u64, Arc<Hold>>,
    /// Per camera: (range, lapse time) of every unreleased hold.
    by_camera: HashMap<String, Vec<(Interval, Option<Time90k>)>>,
}

impl HoldSnapshot {
    fn build(version: u64, holds: BTreeMap<u64, Arc<Hold>>) -> Self {
        let mut by_camera: HashMap<String, Vec<(Interval, Option<Time90k>)>> = HashMap::new();
        for h in holds.values().filter(|h| h.released.is_none()) {
            for c in &h.cameras {
                by_camera
                    .entry(c.clone())
                    .or_default()
                    .push((h.range(), h.expires_at));
            }
        }
        HoldSnapshot {
            version,
            holds,
            by_camera,
        }
    }

    /// Every hold, by id.
    pub fn holds(&self) -> impl Iterator<Item = &Arc<Hold>> {
        self.holds.values()
    }

    /// One hold.
    pub fn get(&self, id: u64) -> Option<&Arc<Hold>> {
        self.holds.get(&id)
    }

    /// Holds active at `now`.
    pub fn active(&self, now: Time90k) -> impl Iterator<Item = &Arc<Hold>> {
        self.holds
            .values()
            .filter(move |h| h.state(now) == HoldState::Active)
    }

    /// What is pinned of a camera at `now`.
    pub fn pins(&self, camera: &str, now: Time90k) -> IntervalSet {
        IntervalSet::from_intervals(
            self.by_camera
                .get(camera)
                .into_iter()
                .flatten()
                .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                .map(|(i, _)| *i),
        )
    }

    /// Cameras with at least one active pin at `now`.
    pub fn pinned_cameras(&self, now: Time90k) -> Vec<&str> {
        self.by_camera
            .iter()
            .filter(|(_, v)| v.iter().any(|(_, exp)| exp.is_none_or(|e| e > now)))
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// Ids of the holds active at `now` that pin any part of a camera's `range`.
    pub fn holds_covering(&self, camera: &str, range: Interval, now: Time90k) -> Vec<u64> {
        self.active(now)
            .filter(|h| h.cameras.iter().any(|c| c == camera) && h.range().overlaps(&range))
            .map(|h| h.id)
            .collect()
    }
}

/// The holds of a running daemon: storage, snapshot and gate.
pub struct Holds {
    store: Arc<Store>,
    current: ArcSwap<HoldSnapshot>,
    gate: Mutex<()>,
    ledger: super::ledger::Ledger,
}

impl Holds {
    /// Loads the stored holds at the trusted time as the persisted clock state tells it
    /// ([`crate::wallclock::persisted_now`]); see [`Holds::load_at`].
    pub fn load(store: Arc<Store>) -> Result<Self, HoldError> {
        let now = crate::wallclock::persisted_now(store.index());
        Self::load_at(store, now)
    }

    /// Loads the stored holds. A hold stored without a review date (from before every hold had
    /// one) gets one, [`LEGACY_REVIEW_TICKS`] from `now`, recorded as an extension by
    /// `holdfast`. The daemon passes its trusted time (`crate::wallclock`), never the raw wall
    /// clock: a wall clock a year back would otherwise date the review a year early.
    pub fn load_at(store: Arc<Store>, now: Time90k) -> Result<Self, HoldError> {
        let mut holds = BTreeMap::new();
        let mut batch = IndexBatch::default();
        let mut changed = 0;
        for (id, json) in store.index().holds().map_err(StoreError::from)? {
            let mut h: Hold = serde_json::from_slice(&json).map_err(|e| {
                StoreError::from(crate::store::index::IndexError::Corrupt(format!(
                    "hold {id}: {e}"
                )))
            })?;
            if h.expires_at.is_none() && h.released.is_none() {
                let review = now.add_ticks(LEGACY_REVIEW_TICKS);
                h.expires_at = Some(review);
                h.extensions.push(HoldChange {
                    at: now,
                    by: "holdfast".into(),
                    reason: "review date added: every hold is reviewed (WB 8)".into(),
                    expires_at: Some(review),
                });
                batch.put_hold(
                    store.index(),
                    id,
                    &serde_json::to_vec(&h).expect("a hold serialises"),
                );
                changed += 1;
            }
            holds.insert(id, Arc::new(h));
        }
        if changed > 0 {
            store
                .index()
                .commit(batch, true)
                .map_err(StoreError::from)?;
            tracing::warn!(
                holds = changed,
                "holds without a review date got one, 14 days from now"
            );
        }
        Ok(Holds {
            store,
            current: ArcSwap::from_pointee(HoldSnapshot::build(1, holds)),
            gate: Mutex::new(()),
            ledger: super::ledger::Ledger::new(),
        })
    }

    /// The current snapshot (lock-free).
    pub fn snapshot(&self) -> Arc<HoldSnapshot> {
        self.current.load_full()
    }

    /// The pinned-bytes ledger (see [`super::ledger`]): whoever deletes index entries tells it.
    pub fn ledger(&self) -> &super::ledger::Ledger {
        &self.ledger
    }

    /// Takes the gate: no hold changes until the guard is dropped. For irreversible deletions
    /// (see the module doc); keep it short. Lock order: the gate, then the logbook's head (a
    /// [`Journal`] appends under the gate), then the index; never the other way round, and the
    /// store's reclaim lock only after the gate is dropped.
    pub fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places a hold; returns it once it is durable and published.
    pub fn place(&self, req: NewHold, by: &str, now: Time90k) -> Result<Arc<Hold>, HoldError> {
        self.place_with(req, by, now, &mut |_, batch| self.commit_plain(batch))
    }

    /// [`Holds::place`], committed by `journal` (see [`Journal`]).
    pub fn place_with(
        &self,
        req: NewHold,
        by: &str,
        now: Time90k,
        journal: Journal<'_>,
    ) -> Result<Arc<Hold>, HoldError> {
        if req.from >= req.to {
            return Err(HoldError::Invalid {
                field: "to",
                message: "must be after from".into(),
            });
        }
        if req.reason.trim().is_empty() {
            return Err(HoldError::Invalid {
                field: "reason",
                message: "must not be empty".into(),
            });
        }
        if req.cameras.is_empty() {
            return Err(HoldError::Invalid {
                field: "cameras",
                message: "names no camera".into(),
            });
        }
        if req.expires_at.is_some_and(|e| e <= now) {
            return Err(HoldError::Invalid {
                field: "expires_at",
                message: "must be in the future".into(),
            });
        }
        let _gate = self.gate();
        let snap = self.snapshot();
        let id = snap.holds.keys().next_back().map_or(1, |k| k + 1);
        let hold = Hold {
            id,
            cameras: req.cameras,
            site: req.site,
            from: req.from,
            to: req.to,
            reason: req.reason,
            reference: req.reference,
            requested_by: req.requested_by,
            placed_by: by.to_owned(),
            placed_at: now,
            expires_at: req.expires_at,
            keytags: req.keytags,
            released: None,
            extensions: Vec::new(),
            camera_sites: req.camera_sites,
        };
        self.publish(&snap, hold, journal)
    }

    /// Releases an active hold: its ranges go at the next sweep.
    pub fn release(
        &self,
        id: u64,
        reason: &str,
        by: &str,
        now: Time90k,
    ) -> Result<Arc<Hold>, HoldError> {
        if reason.trim().is_empty() {
            return Err(HoldError::Invalid {
                field: "reason",
                message: "must not be empty".into(),
            });
        }
        let _gate = self.gate();
        let snap = self.snapshot();
        let mut hold = Hold::clone(snap.holds.get(&id).ok_or(HoldError::NotFound(id))?);
        match hold.state(now) {
            HoldState::Active => {}
            s => {
                return Err(HoldError::Conflict(format!(
                    "hold {id} is {} already",
                    serde_json::to_value(s).expect("serialises")
                )))
            }
        }
        hold.released = Some(HoldChange {
            at: now,
            by: by.to_owned(),
            reason: reason.to_owned(),
            expires_at: None,
        });
        self.publish(&snap, hold, &mut |_, batch| self.commit_plain(batch))
    }

    /// Moves an active hold's expiry later.
    pub fn extend(
        &self,
        id: u64,
        expires_at: Time90k,
        reason: &str,
        by: &str,
        now: Time90k,
    ) -> Result<Arc<Hold>, HoldError> {
        self.extend_with(id, expires_at, reason, by, now, &mut |_, batch| {
            self.commit_plain(batch)
        })
    }

    /// [`Holds::extend`], committed by `journal` (see [`Journal`]).
    pub fn extend_with(
        &self,
        id: u64,
        expires_at: Time90k,
        reason: &str,
        by: &str,
        now: Time90k,
        journal: Journal<'_>,
    ) -> Result<Arc<Hold>, HoldError> {
        if reason.trim().is_empty() {
            return Err(HoldError::Invalid {
                field: "reason",
                message: "must not be empty".into(),
            });
        }
        let _gate = self.gate();
        let snap = self.snapshot();
        let mut hold = Hold::clone(snap.holds.get(&id).ok_or(HoldError::NotFound(id))?);
        if hold.state(now) != HoldState::Active {
            return Err(HoldError::Conflict(format!(
                "hold {id} is not active: it can no longer be extended"
            )));
        }
        match hold.expires_at {
            None => {
                return Err(HoldError::Conflict(format!(
                    "hold {id} has no expiry: it lasts until released"
                )))
            }
            Some(old) if expires_at <= old => {
                return Err(HoldError::Invalid {
                    field: "expires_at",
                    message: format!("must be later than the current expiry {old}"),
                })
            }
            Some(_) => {}
        }
        hold.expires_at = Some(expires_at);
        hold.extensions.push(HoldChange {
            at: now,
            by: by.to_owned(),
            reason: reason.to_owned(),
            expires_at: Some(expires_at),
        });
        self.publish(&snap, hold, journal)
    }

    /// Commits a batch on its own (synced): the journal of changes nobody logs with them.
    fn commit_plain(&self, batch: IndexBatch) -> Result<(), HoldError> {
        self.store
            .index()
            .commit(batch, true)
            .map_err(|e| HoldError::Store(StoreError::from(e)))
    }

    /// Stores a hold (synced, through `journal`) and publishes the next snapshot. Caller holds
    /// the gate.
    fn publish(
        &self,
        snap: &HoldSnapshot,
        hold: Hold,
        journal: Journal<'_>,
    ) -> Result<Arc<Hold>, HoldError> {
        let index = self.store.index();
        let mut batch = IndexBatch::default();
        batch.put_hold(
            index,
            hold.id,
            &serde_json::to_vec(&hold).expect("a hold serialises"),
        );
        journal(&hold, batch)?;
        let hold = Arc::new(hold);
        let mut holds = snap.holds.clone();
        holds.insert(hold.id, hold.clone());
        self.current
            .store(Arc::new(HoldSnapshot::build(snap.version + 1, holds)));
        Ok(hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::TICKS_PER_SEC;

    const T0: Time90k = Time90k(1_795_000_000 * TICKS_PER_SEC);

    fn t(s: i64) -> Time90k {
        T0.add_ticks(s * TICKS_PER_SEC)
    }

    fn req(cams: &[&str], from: i64, to: i64) -> NewHold {
        NewHold {
            cameras: cams.iter().map(|c| c.to_string()).collect(),
            site: None,
            from: t(from),
            to: t(to),
            reason: "burglary".into(),
            reference: "PL1300-2026-1".into(),
            requested_by: "police".into(),
            expires_at: None,
            keytags: false,
            camera_sites: BTreeMap::new(),
        }
    }

    #[test]
    fn keytag_pins_follow_the_sites_a_hold_recorded_not_the_current_config() {
        let (_d, _s, h) = holds();
        let mut r = req(&["cam-a"], 10, 20);
        r.keytags = true;
        r.camera_sites = BTreeMap::from([("cam-a".to_owned(), "north".to_owned())]);
        h.place(r, "j", t(0)).unwrap();
        // cam-a since removed from the config (no site) or moved to "south" by a reload.
        for now_site in [None, Some("south".to_owned())] {
            let pins = crate::keytags::pinned(&h.snapshot(), |_| now_site.clone(), t(5));
            assert_eq!(
                pins.keys().collect::<Vec<_>>(),
                vec!["north"],
                "{now_site:?}"
            );
            assert!(pins["north"].contains(t(15).0), "{now_site:?}");
        }
        // A hold without recorded sites (placed before they were recorded) asks the config.
        let mut old = req(&["cam-b"], 30, 40);
        old.keytags = true;
        h.place(old, "j", t(0)).unwrap();
        let pins = crate::keytags::pinned(&h.snapshot(), |c| Some(format!("{c}-site")), t(5));
        assert!(pins["cam-b-site"].contains(t(35).0));
    }

    fn holds() -> (tempfile::TempDir, Arc<Store>, Holds) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 3600).unwrap();
        let store = Arc::new(store);
        let h = Holds::load(store.clone()).unwrap();
        (dir, store, h)
    }

    #[test]
    fn place_release_extend_and_snapshot_pins() {
        let (_d, _s, h) = holds();
        let v0 = h.snapshot().version;
        let a = h
            .place(req(&["cam-a", "cam-b"], 10, 20), "j", t(0))
            .unwrap();
        let mut r = req(&["cam-a"], 15, 40);
        r.expires_at = Some(t(100));
        let b = h.place(r, "j", t(0)).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        let s = h.snapshot();
        assert!(s.version > v0);
        assert_eq!(
            s.pins("cam-a", t(0)).intervals(),
            &[Interval::new(t(10).0, t(40).0)]
        );
        assert_eq!(
            s.pins("cam-b", t(0)).intervals(),
            &[Interval::new(t(10).0, t(20).0)]
        );
        // b lapses by itself at t(100).
        assert_eq!(
            s.pins("cam-a", t(100)).intervals(),
            &[Interval::new(t(10).0, t(20).0)]
        );
        assert_eq!(s.get(2).unwrap().state(t(100)), HoldState::Lapsed);
        assert_eq!(
            s.holds_covering("cam-a", Interval::new(t(30).0, t(31).0), t(0)),
            vec![2]
        );

        let e = h.extend(2, t(200), "court date moved", "p", t(1)).unwrap();
        assert_eq!(e.expires_at, Some(t(200)));
        assert!(matches!(
            h.extend(2, t(150), "x", "p", t(1)),
            Err(HoldError::Invalid {
                field: "expires_at",
                ..
            })
        ));
        assert!(matches!(
            h.extend(1, t(150), "x", "p", t(1)),
            Err(HoldError::Conflict(_))
        ));

        h.release(1, "case closed", "p", t(2)).unwrap();
        assert!(matches!(
            h.release(1, "again", "p", t(2)),
            Err(HoldError::Conflict(_))
        ));
        assert!(matches!(
            h.release(9, "x", "p", t(2)),
            Err(HoldError::NotFound(9))
        ));
        assert!(h.snapshot().pins("cam-b", t(2)).is_empty());
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let (_d, _s, h) = holds();
        let field = |r: NewHold| match h.place(r, "j", t(0)) {
            Err(HoldError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(req(&["c"], 20, 10)), "to");
        let mut r = req(&["c"], 1, 2);
        r.reason = "  ".into();
        assert_eq!(field(r), "reason");
        assert_eq!(field(req(&[], 1, 2)), "cameras");
        let mut r = req(&["c"], 1, 2);
        r.expires_at = Some(t(-1));
        assert_eq!(field(r), "expires_at");
        assert!(h.snapshot().holds().next().is_none(), "nothing stored");
    }

    #[test]
    fn holds_survive_a_restart() {
        let (_d, store, h) = holds();
        h.place(req(&["cam-a"], 10, 20), "j", t(0)).unwrap();
        h.release(1, "done", "j", t(1)).unwrap();
        h.place(req(&["cam-b"], 30, 40), "j", t(2)).unwrap();
        let again = Holds::load(store).unwrap();
        let s = again.snapshot();
        let all: Vec<_> = s.holds().map(|h| (h.id, h.state(t(3)))).collect();
        assert_eq!(all, vec![(1, HoldState::Released), (2, HoldState::Active)]);
        assert_eq!(s.get(1).unwrap().released.as_ref().unwrap().reason, "done");
    }
}
