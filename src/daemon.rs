//! `holdfast run`: wires the stages together and runs until SIGTERM or Ctrl-C.
//!
//! Start-up order: open the store (recovery runs and reports), open the logbook (refused when it
//! disagrees with its head record or newest checkpoint) and start its checkpoint thread, load the
//! holds, start the writer thread, the sweeper thread, one camera task per configured camera,
//! then serve HTTP. Shutdown runs the other way: stop HTTP, tell the camera tasks to hand their
//! buffered frames to the writer, write a last logbook checkpoint, stop the sweeper, then let the
//! writer make everything durable before the process exits.
//!
//! When the writer thread dies (see `store::writer`: the buckets directory gone or replaced, the
//! io_uring broken), `/healthz` answers 503 at once; after [`WRITER_DEATH_GRACE`] the daemon
//! shuts down and `run` returns [`WriterDied`], which `holdfast run` turns into exit code
//! [`EXIT_WRITER_DIED`] (70, `EX_SOFTWARE`), so that systemd restarts it.
//!
//! The camera tasks run on a runtime of their own (two worker threads); HTTP and everything
//! else run on the main runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use crate::api::{self, auth::Authenticator, AppState};
use crate::config::Config;
use crate::ingest::camera::{CameraMetrics, CameraTask};
use crate::ingest::segmenter::Segmenter;
use crate::ingest::CameraStatus;
use crate::logbook::{Checkpointer, Logbook};
use crate::metrics::Metrics;
use crate::retention::holds::Holds;
use crate::retention::sweeper::{Sweeper, SweeperConfig};
use crate::store::recovery::RecoverOptions;
use crate::store::writer::{Writer, WriterConfig};
use crate::store::Store;
use crate::time::duration_to_ticks;
use crate::wallclock::TrustedClock;

/// Exit code of `holdfast run` when the writer thread died (`EX_SOFTWARE`).
pub const EXIT_WRITER_DIED: u8 = 70;
/// How long `/healthz` answers 503 for a dead writer before the daemon exits.
pub const WRITER_DEATH_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How often the daemon checks the logbook entries appended since its last check (and every
/// checkpoint); `holdfast_logbook_last_verify_timestamp_seconds` moves this often.
pub const LOGBOOK_VERIFY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// `run` ended because the writer thread died: nothing could be recorded any more.
#[derive(Debug, thiserror::Error)]
#[error("the writer thread died ({0}): exiting so that the service is restarted")]
pub struct WriterDied(pub String);

/// Options of `holdfast run`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Start although most bucket files are missing, forgetting their entries (recorded in the
    /// logbook as `store.files_lost`).
    pub accept_missing_files: bool,
}

/// Runs the daemon until `stop` resolves (or SIGTERM/Ctrl-C when `stop` is `None`).
pub async fn run(
    config: Config,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> anyhow::Result<()> {
    run_with(config, stop, RunOptions::default()).await
}

/// [`run`] with options.
pub async fn run_with(
    config: Config,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
    opts: RunOptions,
) -> anyhow::Result<()> {
    let secrets: Vec<_> = config
        .cameras
        .iter()
        .map(|c| c.load_password())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;

    let data_dir = config.storage.data_dir.clone();
    let bucket_secs = config.storage.bucket_secs();
    let recover = RecoverOptions {
        accept_missing_files: opts.accept_missing_files,
    };
    crate::service::status("recovering the store");
    let (store, report) =
        tokio::task::spawn_blocking(move || Store::open_with(&data_dir, bucket_secs, recover))
            .await?
            .with_context(|| {
                format!("opening the store in {}", config.storage.data_dir.display())
            })?;
    tracing::info!(data_dir = %config.storage.data_dir.display(), "recovery: {report}");
    let store = Arc::new(store);
    // The logbook before anything else runs: it refuses to open when its head record, last
    // entry and newest checkpoint disagree.
    crate::service::status("opening the logbook");
    let (st, settings) = (store.clone(), config.logbook.clone());
    let logbook = Arc::new(
        tokio::task::spawn_blocking(move || Logbook::open(st.index(), &settings))
            .await?
            .context("opening the logbook")?,
    );
    let head = logbook.head();
    tracing::info!(entries = head.seq, mac = %head.mac, keyed = head.keyed, "logbook open");
    // An accepted loss of bucket files (`--accept-missing-files`) left a marker in the same
    // batch that forgot them: the logbook entry and the marker's removal commit together, so a
    // crash in between cannot lose the record of the loss (it is appended at the next start).
    let lost = crate::store::recovery::files_lost_marker(store.index())
        .context("reading the record of lost bucket files")?;
    if let Some(object) = lost {
        let entry = crate::logbook::NewEntry {
            user: "holdfast".into(),
            role: "-".into(),
            action: "store.files_lost".into(),
            object,
            reason: Some("started with --accept-missing-files".into()),
            ..Default::default()
        };
        let (lb, st) = (logbook.clone(), store.clone());
        tokio::task::spawn_blocking(move || {
            let mut done = crate::store::index::IndexBatch::default();
            done.delete_raw(
                st.index(),
                crate::store::index::CF_META,
                crate::store::recovery::FILES_LOST_MARKER,
            );
            lb.append_with(st.index(), entry, done)
        })
        .await?
        .context("recording the lost bucket files in the logbook")?;
    }
    // Anchor the head at once (not only after the first interval): entries since the last
    // checkpoint before a crash or power cut are covered from now on.
    {
        let lb = logbook.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || lb.checkpoint()).await? {
            tracing::warn!(error = %e, "logbook: could not write a checkpoint at start");
        }
    }
    // Checkpoints every interval, and a last one when this is dropped or stopped.
    let checkpointer = Checkpointer::spawn(logbook.clone(), config.logbook.checkpoint_interval)
        .context("starting the logbook checkpoint thread")?;
    let mut metrics = Metrics::new();
    metrics.register_store(store.metrics());
    let metrics = Arc::new(metrics);
    // The logbook checked whole at once, then what was appended since every minute.
    let verifier = {
        let m = metrics.clone();
        crate::logbook::Verifier::spawn(
            logbook.clone(),
            store.clone(),
            LOGBOOK_VERIFY_INTERVAL,
            move |r| {
                if let Ok(v) = r {
                    m.logbook_verify_ok.set(i64::from(v.ok));
                    m.logbook_last_verify.set(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64()),
                    );
                }
            },
        )
        .context("starting the logbook check thread")?
    };
    // The trusted clock before anything asks for the time: it compares the wall clock with the
    // trusted time saved before the restart and with the newest footage (crate::wallclock).
    let clock = {
        let (st, m, settings) = (store.clone(), metrics.clone(), config.clock);
        tokio::task::spawn_blocking(move || TrustedClock::open(st.index(), settings, m))
            .await?
            .context("reading the saved clock state")?
    };
    let clock_monitor = clock
        .spawn_monitor(
            store.clone(),
            logbook.clone(),
            config.storage.data_dir.clone(),
        )
        .context("starting the clock thread")?;
    // Answers `holdfast backup` (a RocksDB checkpoint can only be made by this process).
    let backup = crate::backup::Responder::spawn(
        store.clone(),
        logbook.clone(),
        config.storage.data_dir.clone(),
    )
    .context("starting the backup thread")?;
    crate::service::status("starting the writer, the sweeper and the cameras");
    let writer = Writer::spawn(
        store.clone(),
        WriterConfig {
            bucket_secs,
            sync_interval: config.storage.sync_interval,
            queue_limit_bytes: config.storage.writer_queue,
            queue_limit_segments: 16_384,
        },
        metrics.clone(),
        None,
    )?;
    // Every bucket the writer creates records its policy's retention, so that it still expires
    // after the policy is renamed or removed.
    writer.handle().set_retention(
        config
            .policies
            .iter()
            .map(|(name, p)| (name.clone(), p.video.as_secs()))
            .collect(),
    );

    let holds =
        Arc::new(Holds::load_at(store.clone(), clock.retention_now()).context("loading holds")?);
    let retention = SweeperConfig {
        policies: config
            .policies
            .iter()
            .map(|(name, p)| (name.clone(), p.video))
            .collect(),
        interval: config.sweeper.interval,
        min_free: config.storage.min_free,
        keytags: config
            .sites
            .iter()
            .filter_map(|s| Some((s.id.clone(), config.policies.get(&s.policy)?.keytags)))
            .collect(),
        camera_sites: config
            .cameras
            .iter()
            .map(|c| (c.id.clone(), c.site.clone()))
            .collect(),
        camera_policies: config
            .cameras
            .iter()
            .map(|c| (c.id.clone(), config.camera_policy(c).to_owned()))
            .collect(),
    };
    let sweeper = Sweeper::new(
        store.clone(),
        holds.clone(),
        writer.handle(),
        retention.clone(),
        metrics.clone(),
    )
    .spawn_with_now({
        let clock = clock.clone();
        move || clock.retention_now()
    });

    // Camera sessions get a runtime of their own, so nothing the API does (synchronous RocksDB
    // reads, logbook fsyncs, a flood of requests) runs on the threads that carry them.
    let camera_rt = CameraRuntime::new()?;
    // New footage starts after the newest footage on disk, even after a backward step of the
    // wall clock that was confirmed before this start (design/time.md).
    let newest_recorded = store
        .index()
        .buckets(None)?
        .iter()
        .filter(|b| b.segments > 0)
        .map(|b| b.last_end)
        .max();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut statuses = Vec::new();
    let mut tasks = Vec::new();
    for (cam, secret) in config.cameras.iter().zip(secrets) {
        let status = Arc::new(CameraStatus::new(&cam.id, &cam.site));
        statuses.push(status.clone());
        let policy = config.camera_policy(cam);
        let task = CameraTask {
            status,
            url: cam.url.clone(),
            credentials: cam.username.clone().zip(secret),
            transport: cam.transport,
            allow_basic_auth: cam.allow_basic_auth,
            tls: crate::ingest::tls::TlsClient::for_camera(cam)
                .map_err(|e| anyhow::anyhow!("config: {e}"))?,
            segmenter: Segmenter::new(
                cam.id.as_str().into(),
                policy.into(),
                duration_to_ticks(config.storage.segment_target),
            )
            .not_before(newest_recorded),
            writer: writer.handle(),
            metrics: CameraMetrics::new(&metrics, &cam.id),
            shutdown: shutdown_rx.clone(),
            clock: clock.clone(),
        };
        tasks.push(camera_rt.spawn(task.run()));
    }
    tracing::info!(cameras = tasks.len(), "camera tasks started");

    let state = Arc::new(AppState {
        store: store.clone(),
        writer: writer.handle(),
        metrics: metrics.clone(),
        auth: Authenticator::new(&config.users, &crate::roles::RoleTable::new(&config.roles)),
        cameras: statuses.clone(),
        metrics_require_auth: config.http.metrics_require_auth,
        holds,
        sites: config
            .sites
            .iter()
            .map(|s| {
                let cams = config
                    .cameras
                    .iter()
                    .filter(|c| c.site == s.id)
                    .map(|c| c.id.clone())
                    .collect();
                (s.id.clone(), cams)
            })
            .collect(),
        retention,
        logbook,
        hold_max_future: config.holds.max_future,
        hold_review: config
            .cameras
            .iter()
            .map(|c| {
                let review = config
                    .policies
                    .get(config.camera_policy(c))
                    .map_or(std::time::Duration::from_secs(14 * 86_400), |p| {
                        p.hold_review
                    });
                (c.id.clone(), review)
            })
            .collect(),
        keytag_max_range: config.keytags.max_range.clone(),
        clock,
    });
    let listener = api::server::bind(config.http.listen)
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let died = Arc::new(std::sync::Mutex::new(None::<String>));
    let (watch, died_w) = (writer.handle(), died.clone());
    let stopped = async move {
        let requested = async {
            match stop {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => wait_for_signal().await,
            }
        };
        tokio::select! {
            _ = requested => {
                crate::service::stopping();
                tracing::info!("stopping");
            }
            reason = writer_death(watch) => {
                tracing::error!(reason = %reason, grace = ?WRITER_DEATH_GRACE,
                    "the writer thread died: /healthz answers 503; exiting after the grace period");
                crate::service::status("the writer thread died: exiting");
                tokio::time::sleep(WRITER_DEATH_GRACE).await;
                crate::service::stopping();
                *died_w.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
    };
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(api::server::tls_acceptor(cert, key)?),
        _ => None,
    };
    if tls.is_some() {
        tracing::info!(%addr, "HTTPS API listening");
    } else {
        tracing::info!(%addr, "HTTP API listening");
    }
    // READY=1 once /healthz answers, then STATUS= and the watchdog (crate::service).
    let supervisor = crate::service::Supervisor {
        stages: vec![
            ("writer", writer.handle().heartbeat()),
            ("sweeper", sweeper.heartbeat()),
        ],
        http: addr,
        tls: tls.is_some(),
        cameras: statuses,
    }
    .spawn();
    let served = api::server::serve(listener, &config.http, tls, state, stopped).await;
    if let Some(s) = supervisor {
        s.abort();
    }
    served?;

    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::task::spawn_blocking(move || {
        checkpointer.stop();
        verifier.stop();
        backup.stop();
        camera_rt.shutdown();
        sweeper.stop();
        clock_monitor.stop();
        writer.shutdown();
    })
    .await?;
    if let Some(reason) = died.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(WriterDied(reason).into());
    }
    tracing::info!("stopped; everything received is durable");
    Ok(())
}

/// Resolves when the writer thread has died, with the reason.
async fn writer_death(w: crate::store::writer::WriterHandle) -> String {
    loop {
        if !w.is_alive() {
            return w
                .death()
                .unwrap_or_else(|| "the writer thread ended".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The runtime the camera tasks run on (two worker threads), apart from the HTTP runtime.
struct CameraRuntime(Option<tokio::runtime::Runtime>);

impl CameraRuntime {
    fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("camera")
            .enable_all()
            .build()
            .context("starting the camera runtime")?;
        Ok(Self(Some(rt)))
    }

    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running").spawn(f)
    }

    /// Shuts the runtime down, waiting a little for its threads (call off the async threads).
    fn shutdown(mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

impl Drop for CameraRuntime {
    fn drop(&mut self) {
        // On an early return from `run` (inside async code), do not block.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
