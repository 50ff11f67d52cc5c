//! Half-open interval sets over `i64`: the maths of holds, segments and byte ranges.
//!
//! The same type serves two spaces: time (90 kHz ticks, for "which segments does a hold pin") and
//! bytes (offsets in a bucket file, for "which ranges does no index entry reference any more").
//! An [`IntervalSet`] is always normalised: sorted, non-empty intervals, neither overlapping nor
//! touching, so equality of sets is equality of their vectors and every query is a binary search.

/// `[from, to)`. Empty when `from >= to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    /// First point inside.
    pub from: i64,
    /// First point after.
    pub to: i64,
}

impl Interval {
    /// `[from, to)`.
    pub fn new(from: i64, to: i64) -> Self {
        Interval { from, to }
    }

    /// Whether it holds no point.
    pub fn is_empty(&self) -> bool {
        self.from >= self.to
    }

    /// Number of points (0 when empty).
    pub fn len(&self) -> i64 {
        (self.to - self.from).max(0)
    }

    /// Whether the two share at least one point.
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.from < other.to && other.from < self.to && !self.is_empty() && !other.is_empty()
    }
}

/// A normalised set of disjoint, non-touching, non-empty intervals in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet(Vec<Interval>);

impl IntervalSet {
    /// The empty set.
    pub fn new() -> Self {
        IntervalSet(Vec::new())
    }

    /// The union of any intervals (empty ones are ignored).
    pub fn from_intervals(items: impl IntoIterator<Item = Interval>) -> Self {
        let mut v: Vec<Interval> = items.into_iter().filter(|i| !i.is_empty()).collect();
        v.sort_unstable();
        let mut out: Vec<Interval> = Vec::with_capacity(v.len());
        for i in v {
            match out.last_mut() {
                Some(last) if i.from <= last.to => last.to = last.to.max(i.to),
                _ => out.push(i),
            }
        }
        IntervalSet(out)
    }

    /// The intervals, ascending.
    pub fn intervals(&self) -> &[Interval] {
        &self.0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total number of points.
    pub fn total_len(&self) -> i64 {
        self.0.iter().map(Interval::len).sum()
    }

    /// Whether any point of `i` is in the set.
    pub fn overlaps(&self, i: &Interval) -> bool {
        if i.is_empty() {
            return false;
        }
        // The first interval that ends after i.from is the only candidate.
        let k = self.0.partition_point(|x| x.to <= i.from);
        self.0.get(k).is_some_and(|x| x.from < i.to)
    }

    /// Whether every point of `i` is in the set (true for an empty `i`).
    pub fn covers(&self, i: &Interval) -> bool {
        if i.is_empty() {
            return true;
        }
        let k = self.0.partition_point(|x| x.to <= i.from);
        self.0
            .get(k)
            .is_some_and(|x| x.from <= i.from && i.to <= x.to)
    }

    /// Whether the point is in the set.
    pub fn contains(&self, p: i64) -> bool {
        self.overlaps(&Interval::new(p, p.saturating_add(1)))
    }

    /// `self ∪ other`.
    pub fn union(&self, other: &IntervalSet) -> IntervalSet {
        IntervalSet::from_intervals(self.0.iter().chain(other.0.iter()).copied())
    }

    /// `self ∩ other`.
    pub fn intersection(&self, other: &IntervalSet) -> IntervalSet {
        let (mut a, mut b) = (0, 0);
        let mut out = Vec::new();
        while a < self.0.len() && b < other.0.len() {
            let (x, y) = (self.0[a], other.0[b]);
            let i = Interval::new(x.from.max(y.from), x.to.min(y.to));
            if !i.is_empty() {
                out.push(i);
            }
            if x.to <= y.to {
                a += 1;
            } else {
                b += 1;
            }
        }
        // Pieces of disjoint, non-touching inputs never touch each other.
        IntervalSet(out)
    }

    /// `self \ other`.
    pub fn difference(&self, other: &IntervalSet) -> IntervalSet {
        let mut out = Vec::new();
        let mut b = 0;
        for &x in &self.0 {
            let mut from = x.from;
            while b < other.0.len() && other.0[b].to <= from {
                b += 1;
            }
            let mut k = b;
            while k < other.0.len() && other.0[k].from < x.to {
                let y = other.0[k];
                if y.from > from {
                    out.push(Interval::new(from, y.from));
                }
                from = from.max(y.to);
                k += 1;
            }
            if from < x.to {
                out.push(Interval::new(from, x.to));
            }
        }
        IntervalSet(out)
    }

    /// The parts of `within` that are not in the set.
    pub fn complement_within(&self, within: Interval) -> IntervalSet {
        IntervalSet::from_intervals([within]).difference(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn iv(a: i64, b: i64) -> Interval {
        Interval::new(a, b)
    }

    /// The set as a membership bitmap over 0..250 (all generated points lie inside): the
    /// obviously right model.
    fn bits(s: &IntervalSet) -> Vec<bool> {
        (0..250).map(|p| s.contains(p)).collect()
    }

    fn raw() -> impl Strategy<Value = Vec<(i64, i64)>> {
        prop::collection::vec((0i64..200, 0i64..40), 0..12)
    }

    fn set(r: &[(i64, i64)]) -> IntervalSet {
        IntervalSet::from_intervals(r.iter().map(|&(a, l)| iv(a, a + l)))
    }

    fn model(r: &[(i64, i64)]) -> Vec<bool> {
        (0..250)
            .map(|p| r.iter().any(|&(a, l)| a <= p && p < a + l))
            .collect()
    }

    #[test]
    fn normalises_overlapping_touching_and_empty() {
        let s = IntervalSet::from_intervals([iv(5, 7), iv(0, 2), iv(2, 3), iv(9, 9), iv(6, 8)]);
        assert_eq!(s.intervals(), &[iv(0, 3), iv(5, 8)]);
        assert_eq!(s.total_len(), 6);
        assert!(s.covers(&iv(5, 8)) && !s.covers(&iv(4, 6)));
        assert!(s.overlaps(&iv(7, 20)) && !s.overlaps(&iv(3, 5)));
        assert_eq!(
            s.complement_within(iv(0, 10)).intervals(),
            &[iv(3, 5), iv(8, 10)]
        );
    }

    proptest! {
        #[test]
        fn construction_matches_the_bitmap_model(r in raw()) {
            let s = set(&r);
            prop_assert_eq!(bits(&s), model(&r));
            for w in s.intervals().windows(2) {
                prop_assert!(w[0].to < w[1].from, "normalised: {:?}", s);
            }
            prop_assert_eq!(s.total_len(), model(&r).iter().filter(|b| **b).count() as i64);
        }

        #[test]
        fn set_operations_match_the_model(a in raw(), b in raw()) {
            let (sa, sb) = (set(&a), set(&b));
            let (ma, mb) = (model(&a), model(&b));
            let zip = |f: fn(bool, bool) -> bool| -> Vec<bool> {
                ma.iter().zip(&mb).map(|(x, y)| f(*x, *y)).collect()
            };
            prop_assert_eq!(bits(&sa.union(&sb)), zip(|x, y| x || y));
            prop_assert_eq!(bits(&sa.intersection(&sb)), zip(|x, y| x && y));
            prop_assert_eq!(bits(&sa.difference(&sb)), zip(|x, y| x && !y));
            // The results are normalised too.
            prop_assert_eq!(sa.difference(&sb), IntervalSet::from_intervals(sa.difference(&sb).intervals().to_vec()));
            prop_assert_eq!(sa.intersection(&sb), IntervalSet::from_intervals(sa.intersection(&sb).intervals().to_vec()));
        }

        #[test]
        fn queries_match_the_model(a in raw(), from in 0i64..200, len in 0i64..50) {
            let s = set(&a);
            let m = model(&a);
            let q = iv(from, from + len);
            let inside: Vec<bool> = (from..from + len).map(|p| m[p as usize]).collect();
            prop_assert_eq!(s.overlaps(&q), inside.iter().any(|b| *b));
            prop_assert_eq!(s.covers(&q), inside.iter().all(|b| *b));
        }

        /// Holds x segments x buckets: a segment is pinned exactly when some hold of its camera
        /// overlaps it; what a bucket keeps is the pinned segments' bytes, and what it frees is
        /// the rest of its length, never a byte of a pinned segment.
        #[test]
        fn pinned_segments_and_freed_bytes(
            holds in prop::collection::vec((0usize..3, 0i64..1000, 1i64..200), 0..8),
            segs in prop::collection::vec((0usize..3, 1i64..60), 1..60),
        ) {
            // Lay the segments out in one bucket file, in arrival order, each camera's back to back.
            let mut next_start = [0i64; 3];
            let mut offset = 0i64;
            let mut laid = Vec::new();
            for (cam, dur) in &segs {
                let t = iv(next_start[*cam], next_start[*cam] + dur);
                next_start[*cam] = t.to;
                let len = dur * 10;
                laid.push((*cam, t, iv(offset, offset + len)));
                offset += len;
            }
            let pins: Vec<IntervalSet> = (0..3)
                .map(|c| IntervalSet::from_intervals(
                    holds.iter().filter(|h| h.0 == c).map(|h| iv(h.1, h.1 + h.2))))
                .collect();
            let kept = IntervalSet::from_intervals(
                laid.iter().filter(|(c, t, _)| pins[*c].overlaps(t)).map(|(_, _, b)| *b));
            let freed = kept.complement_within(iv(0, offset));
            for (c, t, b) in &laid {
                let pinned = holds.iter().any(|h| h.0 == *c && t.overlaps(&iv(h.1, h.1 + h.2)));
                prop_assert_eq!(pins[*c].overlaps(t), pinned);
                if pinned {
                    prop_assert!(!freed.overlaps(b), "a pinned segment's bytes are freed");
                } else {
                    prop_assert!(freed.covers(b), "an unpinned segment's bytes are kept");
                }
            }
            prop_assert_eq!(kept.total_len() + freed.total_len(), offset);
        }
    }
}
