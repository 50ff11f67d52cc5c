//! holdfast records RTSP H.264 cameras, keeps footage exactly as long as each site's policy allows,
//! never deletes what an incident hold pins, and logs every look at the data.
//!
//! The stages, in the order data flows (see ARCHITECTURE.md for the codemap and invariants):
//! - [`ingest`]: one task per camera (retina), the segmenter and the media clock.
//! - [`store`]: segment records, bucket files, the writer thread, the RocksDB index, recovery.
//! - [`retention`]: holds, erasures and the sweeper that expires buckets.
//! - [`api`]: the HTTP API (axum), authentication and roles.
//!
//! Around them: [`config`] (TOML and validation), [`metrics`] (Prometheus), [`time`] (90 kHz
//! wall-clock time), [`daemon`] (wiring and shutdown), [`service`] (systemd notify, watchdog, journal), [`camsim`] (simulated cameras) and
//! [`demo`].

#![warn(missing_docs)]

pub mod api;
pub mod backup;
pub mod camsim;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod export;
pub mod fuzz_checks;
pub mod ingest;
pub mod keytags;
pub mod logbook;
pub mod metrics;
pub mod reload;
pub mod retention;
pub mod roles;
pub mod service;
pub mod store;
pub mod time;
pub mod users;
pub mod wallclock;

/// Helpers shared by the unit tests and the integration tests (`tests/support`); not part of
/// the product.
#[doc(hidden)]
pub mod testing {
    /// Whether the tests run as root. When not, prints that the caller skips (`what` says what
    /// needs root), and fails instead under `HOLDFAST_REQUIRE_ROOT_TESTS`: CI runs as root and
    /// sets it, so there a skip is a failure.
    pub fn is_root_or_skip(what: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert!(
            std::env::var_os("HOLDFAST_REQUIRE_ROOT_TESTS").is_none(),
            "HOLDFAST_REQUIRE_ROOT_TESTS is set but the tests do not run as root"
        );
        eprintln!("skipped: needs root {what}");
        false
    }
}
