//! Retention: policies decide when footage goes, incident holds pin what must stay, erasures
//! delete early on request, and the sweeper carries it all out.
//!
//! - [`intervals`]: half-open interval sets, the maths under everything here.
//! - [`holds`]: holds, their storage, the lock-free snapshot and the gate.
//! - [`sweeper`]: the thread that expires buckets, honours holds and relieves disk pressure.
//! - [`erasure`]: early deletion of a camera's range, refused where a hold covers it.
//! - [`ledger`]: pinned bytes kept per bucket, so gauges do not walk every held segment.
//!
//! The invariants (design brief, "Retention and holds") and where each is enforced are listed in
//! ARCHITECTURE.md.

pub mod erasure;
pub mod holds;
pub mod intervals;
pub mod ledger;
pub mod sweeper;
