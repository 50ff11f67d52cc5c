//! Prometheus metrics: one registry, the metric handles every stage updates, and the text
//! exposition served at `/metrics`.
//!
//! Names and labels are part of the external contract (`design.md`, "Metrics"). Counters are
//! registered without the `_total` suffix; the exposition adds it. No label ever carries a URL,
//! a user name or a secret: cameras are labelled by their id only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label set of per-camera metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    /// Camera id.
    pub camera: String,
}

/// Every `reason` of [`DropLabels`]; each camera's series start at 0 (see
/// [`Metrics::register_camera_drops`]).
pub const DROP_REASONS: [&str; 7] = [
    "queue_full",
    "write_error",
    "sync_error",
    "writer_stopped",
    "expired",
    "storage_full",
    "invalid",
];

/// Label set of dropped-segment counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Camera id.
    pub camera: String,
    /// Why: `queue_full`, `write_error`, `sync_error`, `writer_stopped`, `expired` (a late
    /// segment for a bucket the sweeper already expired), `storage_full`, `invalid`.
    pub reason: String,
}

/// Label set of HTTP request counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/api/v1/cameras/{id}/recordings`), never the raw path.
    pub route: String,
    /// The status code.
    pub status: u16,
}

/// Label set of clock jump counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `forward` or `backward`.
    pub direction: String,
}

/// Label set of config reload counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `refused`.
    pub result: String,
}

/// Label set of per-policy metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// Retention policy name.
    pub policy: String,
}

type GaugeF64 = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Label set of reclaim errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReclaimOpLabel {
    /// What failed: `open`, `stat`, `punch`, `unlink`, `sync_dir` or `index`.
    pub op: String,
}

/// The metrics the store keeps itself (it is opened, and recovery runs, before [`Metrics`]
/// exists): created by the store, registered with [`Metrics::register_store`]. Clones share
/// their values.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// `holdfast_reclaim_errors_total{op}`: failed reclaim steps.
    pub reclaim_errors: Family<ReclaimOpLabel, Counter>,
    /// `holdfast_reclaim_pending_bytes`: bytes the failed, still pending reclaim records would
    /// free.
    pub reclaim_pending_bytes: Gauge,
    /// `holdfast_index_missing_files`: bucket files the index names that are missing.
    pub index_missing_files: Gauge,
}

/// The `op` labels of `holdfast_reclaim_errors_total`.
pub const RECLAIM_OPS: [&str; 6] = ["open", "stat", "punch", "unlink", "sync_dir", "index"];

impl Default for StoreMetrics {
    /// Every `op` series exists from the start, at 0 (so that `rate()` and alerts see them).
    fn default() -> Self {
        let m = StoreMetrics {
            reclaim_errors: Family::default(),
            reclaim_pending_bytes: Gauge::default(),
            index_missing_files: Gauge::default(),
        };
        for op in RECLAIM_OPS {
            drop(
                m.reclaim_errors
                    .get_or_create(&ReclaimOpLabel { op: op.into() }),
            );
        }
        m
    }
}

impl StoreMetrics {
    /// Counts a failed reclaim step.
    pub fn reclaim_error(&self, op: &str) {
        self.reclaim_errors
            .get_or_create(&ReclaimOpLabel { op: op.to_owned() })
            .inc();
    }
}

/// Every metric handle of the daemon.
pub struct Metrics {
    registry: Registry,
    /// 1 while a camera delivers frames.
    pub camera_up: Family<CameraLabel, Gauge>,
    /// Frames received per camera.
    pub camera_frames: Family<CameraLabel, Counter>,
    /// Payload bytes received per camera.
    pub camera_bytes: Family<CameraLabel, Counter>,
    /// Reconnects per camera.
    pub camera_reconnects: Family<CameraLabel, Counter>,
    /// Seconds since the last frame of each camera.
    pub camera_last_frame_age: Family<CameraLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Frames whose RTP timestamp was broken (constant, backwards, jumping) or needed a resync.
    pub camera_timestamp_anomalies: Family<CameraLabel, Counter>,
    /// Frames dropped because no keyframe had started a segment.
    pub camera_frames_dropped: Family<CameraLabel, Counter>,
    /// HTTP requests by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Segments that were not stored, by camera and reason.
    pub segments_dropped: Family<DropLabels, Counter>,
    /// Payload bytes queued for or in flight in the writer.
    pub writer_queue_bytes: Gauge,
    /// Time to write one batch of segments (writev on io_uring).
    pub writer_write_seconds: Histogram,
    /// Time to make a group durable: fdatasync of the files, then the index commit.
    pub writer_sync_seconds: Histogram,
    /// Completed sweeps.
    pub sweeper_runs: Counter,
    /// Buckets expired (on time or early under disk pressure).
    pub sweeper_buckets_deleted: Counter,
    /// Allocated bytes given back by unlinking and hole punching.
    pub sweeper_bytes_freed: Counter,
    /// Unix time of the last sweep that finished without error.
    pub sweeper_last_success: GaugeF64,
    /// `holdfast_sweeper_errors_total`: sweep steps that failed (one bucket's expiry, a reclaim
    /// run, the key-tag sweep) and are retried at the next sweep.
    pub sweeper_errors: Counter,
    /// `holdfast_sweeper_pressure_stalled`: 1 while early expiry has stopped because expiring
    /// footage gave back no space (snapshots, another process filling the disk).
    pub sweeper_pressure_stalled: Gauge,
    /// Holds active now.
    pub holds_active: Gauge,
    /// `holdfast_holds_expiring_soon`: active holds whose review date is within three days.
    pub holds_expiring_soon: Gauge,
    /// Key-tag events stored (new ones; repeats are not counted).
    pub keytag_events: Counter,
    /// Logbook entries appended.
    pub logbook_entries: Counter,
    /// Bytes of segments pinned by active holds.
    pub pinned_bytes: Gauge,
    /// Bytes of unpinned data older than retention plus one sweep interval (must stay 0).
    pub retention_overdue_bytes: Family<PolicyLabel, Gauge>,
    /// Age of the oldest unpinned data per policy.
    pub oldest_unpinned_age: Family<PolicyLabel, GaugeF64>,
    /// Free bytes of the data directory's file system (for unprivileged users).
    pub storage_free_bytes: Gauge,
    /// `holdfast_storage_min_free_bytes`: the free-space floor (`storage.min_free`) in bytes,
    /// set by each sweep and scrape (a percentage is taken of the file system's size).
    pub storage_min_free_bytes: Gauge,
    /// `holdfast_logbook_verify_ok`: 1 while the last periodic check of the logbook (chain since
    /// the last check, head record, checkpoints) passed, 0 after it found tampering (a check
    /// that could not run leaves it and the timestamp as they were).
    pub logbook_verify_ok: Gauge,
    /// `holdfast_logbook_last_verify_timestamp_seconds`: Unix time of the last periodic check of
    /// the logbook that ran to the end (whatever it found).
    pub logbook_last_verify: GaugeF64,
    /// Allocated bytes of bucket files per policy.
    pub storage_used_bytes: Family<PolicyLabel, Gauge>,
    /// 1 while new video is refused because only pinned data is left on a full disk.
    pub storage_writes_paused: Gauge,
    /// Wall-clock jumps against the monotonic clock, by direction (`crate::wallclock`).
    pub clock_jumps: Family<DirectionLabel, Counter>,
    /// Wall clock minus trusted time, in seconds (0 while the wall clock is trusted).
    pub clock_offset_seconds: GaugeF64,
    /// Config reloads (SIGHUP) by result: `ok` or `refused`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Unix time of the last accepted config reload (0: none since the start).
    pub config_last_reload_success: GaugeF64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let camera_up = Family::<CameraLabel, Gauge>::default();
        registry.register(
            "holdfast_camera_up",
            "1 while the camera delivers frames",
            camera_up.clone(),
        );
        let camera_frames = Family::<CameraLabel, Counter>::default();
        registry.register(
            "holdfast_camera_frames",
            "Video frames received",
            camera_frames.clone(),
        );
        let camera_bytes = Family::<CameraLabel, Counter>::default();
        registry.register(
            "holdfast_camera_bytes",
            "Video payload bytes received",
            camera_bytes.clone(),
        );
        let camera_reconnects = Family::<CameraLabel, Counter>::default();
        registry.register(
            "holdfast_camera_reconnects",
            "Times the RTSP session was set up again",
            camera_reconnects.clone(),
        );
        let camera_last_frame_age =
            Family::<CameraLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "holdfast_camera_last_frame_age_seconds",
            "Seconds since the camera's last frame",
            camera_last_frame_age.clone(),
        );
        let camera_timestamp_anomalies = Family::<CameraLabel, Counter>::default();
        registry.register(
            "holdfast_camera_timestamp_anomalies",
            "Frames with broken RTP timestamps (constant, backwards, jumping) or clock resyncs",
            camera_timestamp_anomalies.clone(),
        );
        let camera_frames_dropped = Family::<CameraLabel, Counter>::default();
        registry.register(
            "holdfast_camera_frames_dropped",
            "Frames dropped while waiting for a keyframe",
            camera_frames_dropped.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "holdfast_http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let segments_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "holdfast_segments_dropped",
            "Segments not stored, by camera and reason",
            segments_dropped.clone(),
        );
        let writer_queue_bytes = Gauge::default();
        registry.register(
            "holdfast_writer_queue_bytes",
            "Payload bytes waiting in or being written by the writer",
            writer_queue_bytes.clone(),
        );
        let writer_write_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register(
            "holdfast_writer_write_seconds",
            "Seconds to write one batch of segments (direct I/O: to stage and submit it, and to \
             wait for earlier writes: busy staging slots, a full completion queue, a fallback)",
            writer_write_seconds.clone(),
        );
        let writer_sync_seconds = Histogram::new(exponential_buckets(0.000_5, 2.0, 14));
        registry.register(
            "holdfast_writer_sync_seconds",
            "Seconds to make a group of segments durable (direct writes still in flight \
             completing, fdatasync and index commit)",
            writer_sync_seconds.clone(),
        );
        let sweeper_runs = Counter::default();
        registry.register(
            "holdfast_sweeper_runs",
            "Completed retention sweeps",
            sweeper_runs.clone(),
        );
        let sweeper_buckets_deleted = Counter::default();
        registry.register(
            "holdfast_sweeper_buckets_deleted",
            "Buckets expired, on time or early under disk pressure",
            sweeper_buckets_deleted.clone(),
        );
        let sweeper_bytes_freed = Counter::default();
        registry.register(
            "holdfast_sweeper_bytes_freed",
            "Allocated bytes given back by unlinking bucket files and punching holes",
            sweeper_bytes_freed.clone(),
        );
        let sweeper_last_success = GaugeF64::default();
        registry.register(
            "holdfast_sweeper_last_success_timestamp_seconds",
            "Unix time of the last sweep that finished without error",
            sweeper_last_success.clone(),
        );
        let sweeper_errors = Counter::default();
        registry.register(
            "holdfast_sweeper_errors",
            "Sweep steps that failed (a bucket's expiry, a reclaim run, the key-tag sweep); retried at the next sweep",
            sweeper_errors.clone(),
        );
        let sweeper_pressure_stalled = Gauge::default();
        registry.register(
            "holdfast_sweeper_pressure_stalled",
            "1 while early expiry has stopped because expiring footage gave back no space",
            sweeper_pressure_stalled.clone(),
        );
        let keytag_events = Counter::default();
        registry.register(
            "holdfast_keytag_events",
            "Key-tag events stored (repeated submissions are not counted twice)",
            keytag_events.clone(),
        );
        let logbook_entries = Counter::default();
        registry.register(
            "holdfast_logbook_entries",
            "Logbook entries appended",
            logbook_entries.clone(),
        );
        let holds_active = Gauge::default();
        registry.register(
            "holdfast_holds_active",
            "Incident holds active now",
            holds_active.clone(),
        );
        let holds_expiring_soon = Gauge::default();
        registry.register(
            "holdfast_holds_expiring_soon",
            "Active incident holds whose review date (expires_at) is within three days: decide to extend or release them",
            holds_expiring_soon.clone(),
        );
        let pinned_bytes = Gauge::default();
        registry.register(
            "holdfast_pinned_bytes",
            "Bytes of segments pinned by active holds",
            pinned_bytes.clone(),
        );
        let retention_overdue_bytes = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "holdfast_retention_overdue_bytes",
            "Bytes of unpinned footage older than retention plus one sweep interval (must be 0)",
            retention_overdue_bytes.clone(),
        );
        let oldest_unpinned_age = Family::<PolicyLabel, GaugeF64>::default();
        registry.register(
            "holdfast_oldest_unpinned_age_seconds",
            "Age of the oldest unpinned footage",
            oldest_unpinned_age.clone(),
        );
        let storage_free_bytes = Gauge::default();
        registry.register(
            "holdfast_storage_free_bytes",
            "Free bytes of the data directory's file system",
            storage_free_bytes.clone(),
        );
        let storage_min_free_bytes = Gauge::default();
        registry.register(
            "holdfast_storage_min_free_bytes",
            "The free-space floor storage.min_free in bytes (below it footage expires early)",
            storage_min_free_bytes.clone(),
        );
        let logbook_verify_ok = Gauge::default();
        // 1 until a check says otherwise: the logbook was checked against its head record and
        // newest checkpoint when it was opened.
        logbook_verify_ok.set(1);
        registry.register(
            "holdfast_logbook_verify_ok",
            "1 while the last periodic logbook check passed, 0 when it found tampering",
            logbook_verify_ok.clone(),
        );
        let logbook_last_verify = GaugeF64::default();
        registry.register(
            "holdfast_logbook_last_verify_timestamp_seconds",
            "Unix time of the last periodic logbook check that ran to the end",
            logbook_last_verify.clone(),
        );
        let storage_used_bytes = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "holdfast_storage_used_bytes",
            "Allocated bytes of bucket files",
            storage_used_bytes.clone(),
        );
        let storage_writes_paused = Gauge::default();
        registry.register(
            "holdfast_storage_writes_paused",
            "1 while new video is refused: the disk is below its floor and only pinned footage is left",
            storage_writes_paused.clone(),
        );
        let clock_jumps = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "holdfast_clock_jumps",
            "Steps of the wall clock against the monotonic clock beyond clock.jump_threshold",
            clock_jumps.clone(),
        );
        // Both directions exist from the start at 0, so the first jump is an increase that
        // `increase(holdfast_clock_jumps_total[10m])` (the alert) sees.
        for direction in ["forward", "backward"] {
            drop(clock_jumps.get_or_create(&DirectionLabel {
                direction: direction.to_owned(),
            }));
        }
        let clock_offset_seconds = GaugeF64::default();
        registry.register(
            "holdfast_clock_offset_seconds",
            "Wall clock minus the trusted time (0 while the wall clock is trusted)",
            clock_offset_seconds.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "holdfast_config_reloads",
            "Config reloads (SIGHUP) by result: ok (applied) or refused (invalid, or a key that needs a restart changed)",
            config_reloads.clone(),
        );
        for result in ["ok", "refused"] {
            drop(config_reloads.get_or_create(&ResultLabel {
                result: result.to_owned(),
            }));
        }
        let config_last_reload_success = GaugeF64::default();
        registry.register(
            "holdfast_config_last_reload_success_timestamp_seconds",
            "Unix time of the last accepted config reload (0: none since the daemon started)",
            config_last_reload_success.clone(),
        );
        Self {
            registry,
            config_reloads,
            config_last_reload_success,
            clock_jumps,
            clock_offset_seconds,
            sweeper_runs,
            sweeper_buckets_deleted,
            sweeper_bytes_freed,
            sweeper_last_success,
            sweeper_errors,
            sweeper_pressure_stalled,
            holds_active,
            holds_expiring_soon,
            keytag_events,
            logbook_entries,
            pinned_bytes,
            retention_overdue_bytes,
            oldest_unpinned_age,
            storage_free_bytes,
            storage_min_free_bytes,
            logbook_verify_ok,
            logbook_last_verify,
            storage_used_bytes,
            storage_writes_paused,
            camera_up,
            camera_frames,
            camera_bytes,
            camera_reconnects,
            camera_last_frame_age,
            camera_timestamp_anomalies,
            camera_frames_dropped,
            http_requests,
            segments_dropped,
            writer_queue_bytes,
            writer_write_seconds,
            writer_sync_seconds,
        }
    }

    /// Registers the store's own metrics (see [`StoreMetrics`]).
    pub fn register_store(&mut self, m: &StoreMetrics) {
        self.registry.register(
            "holdfast_reclaim_errors",
            "Failed reclaim steps (freeing deleted footage), by operation; retried with backoff",
            m.reclaim_errors.clone(),
        );
        self.registry.register(
            "holdfast_reclaim_pending_bytes",
            "Bytes that failed reclaim records would free (waiting for a retry)",
            m.reclaim_pending_bytes.clone(),
        );
        self.registry.register(
            "holdfast_index_missing_files",
            "Bucket files the index names that are missing",
            m.index_missing_files.clone(),
        );
    }

    /// Removes the state series (`holdfast_camera_up`, `holdfast_camera_last_frame_age_seconds`)
    /// of a camera a reload removed, so it does not stay "down" (and alerting) until the next
    /// start; its counters stay (they only ever grow).
    pub fn forget_camera_state(&self, camera: &str) {
        let l = CameraLabel {
            camera: camera.to_owned(),
        };
        self.camera_up.remove(&l);
        self.camera_last_frame_age.remove(&l);
    }

    /// Creates a camera's dropped-segment series at 0 for every reason, so the first drop is an
    /// increase a rate or an alert sees, and dashboards show the family before anything failed.
    pub fn register_camera_drops(&self, camera: &str) {
        for reason in DROP_REASONS {
            drop(self.segments_dropped.get_or_create(&DropLabels {
                camera: camera.to_owned(),
                reason: reason.to_owned(),
            }));
        }
    }

    /// Counts a dropped segment.
    pub fn segment_dropped(&self, camera: &str, reason: &str) {
        self.segments_dropped
            .get_or_create(&DropLabels {
                camera: camera.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition (format 0.0.4), as `promtool check metrics` accepts it.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
            .expect("writing to a String cannot fail");
        to_prometheus_text(&open_metrics)
    }
}

/// Turns prometheus-client's OpenMetrics output into Prometheus text format 0.0.4.
///
/// OpenMetrics names a counter family without its `_total` suffix in `# HELP` / `# TYPE`, has
/// `# UNIT` lines and ends with `# EOF`; the classic text format (what Prometheus scrapes as
/// `text/plain` and what promtool lints) wants the sample name in the metadata and neither of
/// the other two.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 64 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_jumps_and_camera_drops_start_at_zero() {
        let m = Metrics::new();
        m.register_camera_drops("noord");
        let text = m.encode();
        for direction in ["forward", "backward"] {
            let series = format!("holdfast_clock_jumps_total{{direction=\"{direction}\"}} 0");
            assert!(text.contains(&series), "{text}");
        }
        for result in ["ok", "refused"] {
            let series = format!("holdfast_config_reloads_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&series), "{text}");
        }
        assert!(
            text.contains("holdfast_config_last_reload_success_timestamp_seconds 0"),
            "{text}"
        );
        for reason in DROP_REASONS {
            let series = format!(
                "holdfast_segments_dropped_total{{camera=\"noord\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&series), "{text}");
        }
    }

    #[test]
    fn counters_are_named_with_total_in_text_format() {
        let om = "# HELP a_frames Frames.\n# TYPE a_frames counter\na_frames_total{c=\"x\"} 3\n\
                  # HELP q Queue.\n# TYPE q gauge\nq 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_frames_total Frames.\n# TYPE a_frames_total counter\na_frames_total{c=\"x\"} 3\n\
             # HELP q Queue.\n# TYPE q gauge\nq 1\n"
        );
    }

    #[test]
    fn exposition_names_follow_the_contract() {
        let m = Metrics::new();
        m.segment_dropped("noord", "queue_full");
        m.writer_queue_bytes.set(5);
        m.writer_sync_seconds.observe(0.01);
        let text = m.encode();
        assert!(
            text.contains(
                r#"holdfast_segments_dropped_total{camera="noord",reason="queue_full"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("holdfast_writer_queue_bytes 5"), "{text}");
        assert!(
            text.contains("holdfast_writer_sync_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("holdfast_writer_write_seconds_count 0"),
            "{text}"
        );
    }

    #[test]
    fn store_metrics_are_named_by_the_contract() {
        let mut m = Metrics::new();
        let s = StoreMetrics::default();
        m.register_store(&s);
        s.reclaim_error("unlink");
        s.reclaim_pending_bytes.set(4096);
        s.index_missing_files.set(2);
        let text = m.encode();
        assert!(
            text.contains(r#"holdfast_reclaim_errors_total{op="unlink"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"holdfast_reclaim_errors_total{op="sync_dir"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("holdfast_reclaim_pending_bytes 4096"),
            "{text}"
        );
        assert!(text.contains("holdfast_index_missing_files 2"), "{text}");
    }
}
