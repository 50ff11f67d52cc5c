//! `holdfast run`: wires the stages together, reloads the config on SIGHUP, and runs until
//! SIGTERM or Ctrl-C.
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
//! SIGHUP (`Reloader`) re-reads the config file: refused whole (errors logged by key, the running
//! config kept) when it is invalid or a key that needs a restart changed (`crate::reload`);
//! otherwise removed and changed cameras stop, added and changed ones start, untouched ones keep
//! their task and RTSP session, and the API's `Live` settings, the sweeper's settings and the
//! writer's retention map are replaced. Every reload is a `config.reload` logbook entry. The
//! stop has a budget ([`STOP_BUDGET`]) below systemd's `TimeoutStopSec`.
//!
//! The camera tasks run on a runtime of their own (two worker threads); HTTP and everything
//! else run on the main runtime.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::{self, AppState, Live};
use crate::config::Config;
use crate::ingest::camera::{CameraMetrics, CameraTask};
use crate::ingest::segmenter::Segmenter;
use crate::ingest::CameraStatus;
use crate::logbook::{Checkpointer, Logbook};
use crate::metrics::{Metrics, ResultLabel};
use crate::reload::{restart_keys, CameraSpec, Summary};
use crate::retention::holds::Holds;
use crate::retention::sweeper::{Sweeper, SweeperConfig, SweeperHandle};
use crate::store::recovery::RecoverOptions;
use crate::store::writer::{DirectTuning, Writer, WriterConfig, WriterHandle};
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
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Start although most bucket files are missing, forgetting their entries (recorded in the
    /// logbook as `store.files_lost`).
    pub accept_missing_files: bool,
    /// The config file, re-read on SIGHUP (`None`: no reload; SIGHUP keeps its default action).
    pub config_path: Option<PathBuf>,
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
    // SIGHUP is caught from the very start, so a reload asked for during recovery is not fatal
    // (it is applied once the daemon runs). Without a config file (the demo) there is nothing to
    // re-read and SIGHUP keeps its default action.
    let hup = match opts.config_path {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?,
        ),
        None => None,
    };
    // Every camera's password is readable before anything is opened (they are loaded again when
    // the camera tasks start).
    if let Some(e) = config.check_secrets().into_iter().next() {
        anyhow::bail!("config: {e}");
    }

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
    let writer = Writer::spawn_tuned(
        store.clone(),
        WriterConfig {
            bucket_secs,
            sync_interval: config.storage.sync_interval,
            queue_limit_bytes: config.storage.writer_queue,
            queue_limit_segments: 16_384,
            io: Default::default(),
        },
        metrics.clone(),
        None,
        // Sized for the cameras configured at start; a reload that changes their number
        // resizes it (`Reloader::apply`).
        DirectTuning::for_cameras(config.cameras.len()),
    )?;
    // Every bucket the writer creates records its policy's retention, so that it still expires
    // after the policy is renamed or removed.
    writer.handle().set_retention(writer_retention(&config));

    let holds =
        Arc::new(Holds::load_at(store.clone(), clock.retention_now()).context("loading holds")?);
    let retention = sweeper_config(&config);
    let sweeper = Arc::new(
        Sweeper::new(
            store.clone(),
            holds.clone(),
            writer.handle(),
            retention.clone(),
            metrics.clone(),
        )
        .spawn_with_now({
            let clock = clock.clone();
            move || clock.retention_now()
        }),
    );

    // New footage starts after the newest footage on disk, even after a backward step of the
    // wall clock that was confirmed before this start (design/time.md).
    let newest_recorded = store
        .index()
        .buckets(None)?
        .iter()
        .filter(|b| b.segments > 0)
        .map(|b| b.last_end)
        .max();
    // Camera sessions get a runtime of their own, so nothing the API does (synchronous RocksDB
    // reads, logbook fsyncs, a flood of requests) runs on the threads that carry them.
    let mut cameras = Cameras {
        rt: Some(CameraRuntime::new()?),
        running: BTreeMap::new(),
        writer: writer.handle(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        segment_target: config.storage.segment_target,
        newest_recorded,
    };
    let prepared = config
        .cameras
        .iter()
        .map(|c| Cameras::prepare(&config, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let statuses: Vec<_> = prepared.into_iter().map(|p| cameras.start(p)).collect();
    tracing::info!(cameras = statuses.len(), "camera tasks started");

    let (sessions, ended_sessions) = api::session::Sessions::new(config.http.tls_cert.is_some());
    let state = Arc::new(AppState {
        store: store.clone(),
        writer: writer.handle(),
        metrics: metrics.clone(),
        live: arc_swap::ArcSwap::from_pointee(Live::new(&config, statuses, retention)),
        holds,
        logbook,
        clock,
        http_progress: crate::service::Heartbeat::new(),
        sessions,
    });
    tokio::spawn(api::session::run(Arc::downgrade(&state), ended_sessions));
    let listener = api::server::bind(config.http.listen)
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let cameras = Arc::new(tokio::sync::Mutex::new(cameras));
    // SIGHUP: re-read the config (see `Reloader`). A SIGHUP that came during the start (the
    // handler is installed first thing) is applied now.
    // Turned on as soon as a stop is asked for (in `stopped` below, before HTTP drains), so no
    // reload starts cameras during the stop.
    let (reload_stop, reload_stopped) = tokio::sync::watch::channel(false);
    let reload_stop = Arc::new(reload_stop);
    let reloader = opts.config_path.clone().zip(hup).map(|(path, hup)| {
        let r = Reloader {
            path,
            config: config.clone(),
            cameras: cameras.clone(),
            state: state.clone(),
            sweeper: sweeper.clone(),
            writer: writer.handle(),
            metrics: metrics.clone(),
        };
        tokio::spawn(r.run(hup, reload_stopped))
    });
    let died = Arc::new(std::sync::Mutex::new(None::<String>));
    let (watch, died_w, reload_stop_s) = (writer.handle(), died.clone(), reload_stop.clone());
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
                let _ = reload_stop_s.send(true);
                crate::service::stopping();
                tracing::info!(budget = ?STOP_BUDGET, "stopping");
            }
            reason = writer_death(watch) => {
                tracing::error!(reason = %reason, grace = ?WRITER_DEATH_GRACE,
                    "the writer thread died: /healthz answers 503; exiting after the grace period");
                let _ = reload_stop_s.send(true);
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
    // READY=1 now (recovery done, listener bound), then STATUS= and the watchdog (crate::service).
    let supervisor = crate::service::Supervisor {
        stages: vec![
            ("writer", writer.handle().heartbeat()),
            ("sweeper", sweeper.heartbeat()),
        ],
        http: addr,
        tls: tls.is_some(),
        http_progress: state.http_progress.clone(),
        cameras: {
            let st = state.clone();
            Arc::new(move || st.live().cameras.clone())
        },
    }
    .spawn();
    let served = api::server::serve(listener, &config.http, tls, state, stopped).await;
    if let Some(s) = supervisor {
        s.abort();
    }
    served?;

    // The stop: every step has a share of STOP_BUDGET, so the process is gone before systemd's
    // TimeoutStopSec (60 s) would kill it.
    let t0 = std::time::Instant::now();
    // No reload starts from here on; one under way is let finish (it is bounded: its camera
    // stops have CAMERA_STOP_BUDGET), because cut at an await it could drop camera tasks it
    // had taken out of `cameras` before they handed over their frames. Only a reload stuck
    // past its budget is aborted.
    let _ = reload_stop.send(true);
    if let Some(mut r) = reloader {
        if tokio::time::timeout(RELOAD_FINISH_BUDGET, &mut r)
            .await
            .is_err()
        {
            tracing::warn!(budget = ?RELOAD_FINISH_BUDGET, "a config reload did not finish in time; cut off");
            r.abort();
            let _ = r.await;
        }
    }
    let mut cams = cameras.lock().await;
    let ids: Vec<String> = cams.running.keys().cloned().collect();
    let cut = cams.stop(&ids, CAMERA_STOP_BUDGET).await;
    if cut > 0 {
        tracing::warn!(cameras = cut, budget = ?CAMERA_STOP_BUDGET,
            "camera tasks that did not stop within their budget were cut off");
    }
    let camera_rt = cams.rt.take();
    drop(cams);
    tracing::info!(
        took_ms = t0.elapsed().as_millis() as u64,
        "camera tasks stopped"
    );
    let store_w = store.clone();
    let last = tokio::task::spawn_blocking(move || {
        checkpointer.stop();
        verifier.stop();
        backup.stop();
        if let Some(rt) = camera_rt {
            rt.shutdown();
        }
        match Arc::try_unwrap(sweeper) {
            Ok(s) => s.stop(),
            Err(s) => drop(s),
        }
        clock_monitor.stop();
        writer.shutdown();
        // Everything is durable; the memtables go to SST files now, so the next start replays no
        // write-ahead log.
        if let Err(e) = store_w.index().flush() {
            tracing::warn!(error = %e, "could not flush the index at stop");
        }
    });
    match tokio::time::timeout(STOP_BUDGET.saturating_sub(t0.elapsed()), last).await {
        Ok(r) => r?,
        Err(_) => {
            tracing::error!(budget = ?STOP_BUDGET,
                "the stop did not finish within its budget: exiting now; the next start \
                 recovers whatever was not made durable");
            std::process::exit(i32::from(EXIT_STOP_TIMEOUT));
        }
    }
    if let Some(reason) = died.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(WriterDied(reason).into());
    }
    tracing::info!(
        took_ms = t0.elapsed().as_millis() as u64,
        "stopped; everything received is durable"
    );
    Ok(())
}

/// How long the whole stop after SIGTERM may take (systemd's `TimeoutStopSec` is 60 s).
pub const STOP_BUDGET: Duration = Duration::from_secs(45);
/// The camera tasks' share of [`STOP_BUDGET`]: hand the buffered frames to the writer, TEARDOWN.
pub const CAMERA_STOP_BUDGET: Duration = Duration::from_secs(10);
/// How long the stop waits for a config reload under way to finish (its camera stops have
/// [`CAMERA_STOP_BUDGET`]; the rest is reading the file and one logbook entry).
pub const RELOAD_FINISH_BUDGET: Duration = Duration::from_secs(15);
/// Exit code when the stop overran [`STOP_BUDGET`] (`EX_TEMPFAIL`).
pub const EXIT_STOP_TIMEOUT: u8 = 75;

/// The sweeper's settings from a config.
pub fn sweeper_config(config: &Config) -> SweeperConfig {
    SweeperConfig {
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
    }
}

/// The video retention (seconds) per policy that new buckets record.
fn writer_retention(config: &Config) -> HashMap<String, u64> {
    config
        .policies
        .iter()
        .map(|(name, p)| (name.clone(), p.video.as_secs()))
        .collect()
}

/// One running camera task.
struct RunningCamera {
    spec: CameraSpec,
    status: Arc<CameraStatus>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a camera needs to start, checked before anything changes (a reload with one camera whose
/// password file is unreadable is refused whole).
struct Prepared {
    spec: CameraSpec,
    tls: Option<crate::ingest::tls::TlsClient>,
}

/// The camera tasks by id: started at start and by reloads, stopped by reloads and the stop.
struct Cameras {
    rt: Option<CameraRuntime>,
    running: BTreeMap<String, RunningCamera>,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    clock: Arc<TrustedClock>,
    segment_target: Duration,
    newest_recorded: Option<crate::time::Time90k>,
}

impl Cameras {
    /// Loads the camera's password and TLS settings; the error names the key.
    fn prepare(
        config: &Config,
        cam: &crate::config::Camera,
    ) -> Result<Prepared, crate::config::ConfigError> {
        let secret = cam.load_password()?;
        // The CA file's hash before and after the client loads it: equal, the client holds
        // exactly those bytes (a file replaced in between is refused, not recorded with a hash
        // the running camera does not use, which would leave the new CA unused for good).
        let ca_hash = || -> Result<Option<[u8; 32]>, crate::config::ConfigError> {
            let Some(path) = &cam.tls_ca_file else {
                return Ok(None);
            };
            let bytes = std::fs::read(path).map_err(|e| crate::config::ConfigError {
                key: format!("{}.tls_ca_file", cam.key),
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            Ok(Some(<sha2::Sha256 as sha2::Digest>::digest(&bytes).into()))
        };
        let before = ca_hash()?;
        let tls = crate::ingest::tls::TlsClient::for_camera(cam)?;
        if ca_hash()? != before {
            return Err(crate::config::ConfigError {
                key: format!("{}.tls_ca_file", cam.key),
                message: "the file changed while it was read; reload again".into(),
            });
        }
        let mut spec = CameraSpec::new(config, cam, secret);
        spec.tls_ca_sha256 = before;
        Ok(Prepared { spec, tls })
    }

    /// Starts a camera task; returns its status.
    fn start(&mut self, p: Prepared) -> Arc<CameraStatus> {
        let cam = &p.spec.camera;
        let status = Arc::new(CameraStatus::new(&cam.id, &cam.site));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = CameraTask {
            status: status.clone(),
            url: cam.url.clone(),
            credentials: cam.username.clone().zip(p.spec.secret.clone()),
            transport: cam.transport,
            allow_basic_auth: cam.allow_basic_auth,
            tls: p.tls,
            segmenter: Segmenter::new(
                cam.id.as_str().into(),
                p.spec.policy.as_str().into(),
                duration_to_ticks(self.segment_target),
            )
            .not_before(self.newest_recorded),
            writer: self.writer.clone(),
            metrics: CameraMetrics::new(&self.metrics, &cam.id),
            shutdown,
            clock: self.clock.clone(),
            sessions: Default::default(),
        };
        let task = self.rt.as_ref().expect("running").spawn(task.run());
        self.running.insert(
            cam.id.clone(),
            RunningCamera {
                spec: p.spec,
                status: status.clone(),
                stop,
                task,
            },
        );
        status
    }

    /// Stops these cameras together (each hands its buffered frames to the writer and tears its
    /// RTSP session down); returns how many did not finish within `budget` and were cut off.
    async fn stop(&mut self, ids: &[String], budget: Duration) -> usize {
        let stopping: Vec<_> = ids
            .iter()
            .filter_map(|id| self.running.remove(id))
            .collect();
        for c in &stopping {
            let _ = c.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + budget;
        let mut cut = 0;
        for mut c in stopping {
            if tokio::time::timeout_at(deadline, &mut c.task)
                .await
                .is_err()
            {
                tracing::warn!(camera = %c.status.id, "camera task did not stop in time; cut off");
                c.task.abort();
                cut += 1;
            }
        }
        cut
    }

    fn specs(&self) -> BTreeMap<String, CameraSpec> {
        self.running
            .iter()
            .map(|(id, c)| (id.clone(), c.spec.clone()))
            .collect()
    }
}

/// Applies config reloads on SIGHUP, one at a time.
struct Reloader {
    path: PathBuf,
    /// The running config (replaced only by an accepted reload).
    config: Config,
    cameras: Arc<tokio::sync::Mutex<Cameras>>,
    state: Arc<AppState>,
    sweeper: Arc<SweeperHandle>,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Applies a reload per SIGHUP until `stop` turns true; a reload under way is never cut
    /// here (the stop waits for it, see `run_with`).
    async fn run(
        mut self,
        mut hup: tokio::signal::unix::Signal,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                }
            }
            self.reload().await;
        }
    }

    /// One reload: applied whole or refused whole; logged, counted and a logbook entry either way.
    async fn reload(&mut self) {
        // systemd shows "reloading" until READY=1 again (`service::reloaded` below).
        crate::service::reloading();
        tracing::info!(config = %self.path.display(), "SIGHUP: reloading the config");
        let (result, object, text) = match self.apply().await {
            Ok(summary) => {
                tracing::info!(changes = %summary, "config reload applied: {summary}");
                let mut object = summary.to_json();
                object["result"] = "ok".into();
                ("ok", object, format!("applied: {summary}"))
            }
            Err(errors) => {
                for (key, message) in &errors {
                    tracing::error!(key = %key, "config reload refused: {key}: {message}");
                }
                tracing::error!(
                    errors = errors.len(),
                    "config reload refused; the running config is kept"
                );
                let keys = crate::reload::error_keys(errors.iter().map(|(k, _)| k.as_str()));
                let text = format!("refused: {}", keys.join(", "));
                (
                    "refused",
                    serde_json::json!({ "result": "refused", "errors": keys }),
                    text,
                )
            }
        };
        let entry = crate::logbook::NewEntry {
            user: "holdfast".into(),
            role: "-".into(),
            action: "config.reload".into(),
            object,
            reason: Some("SIGHUP".into()),
            text: Some(text),
            ..Default::default()
        };
        if let Err(e) = self.state.record(entry).await {
            tracing::error!(error = ?e, result, "could not write the logbook entry of a config reload");
        }
        // Counted after its logbook entry was written (or failing to write it was logged), so a
        // test or tool that sees the counter move finds the entry.
        if result == "ok" {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.metrics.config_last_reload_success.set(now);
        }
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        crate::service::reloaded(&format!("config reload {result}"));
    }

    /// Loads and checks the file, then applies it; the errors (key, message) when refused.
    async fn apply(&mut self) -> Result<Summary, Vec<(String, String)>> {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| vec![(String::new(), format!("loading the config: {e}"))])?;
        let new = loaded.map_err(|errs| {
            errs.0
                .into_iter()
                .map(|e| (e.key, e.message))
                .collect::<Vec<_>>()
        })?;
        let mut errors = restart_keys(&self.config, &new);
        let mut prepared = BTreeMap::new();
        for cam in &new.cameras {
            match Cameras::prepare(&new, cam) {
                Ok(p) => {
                    prepared.insert(cam.id.clone(), p);
                }
                Err(e) => errors.push((e.key, e.message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut cams = self.cameras.lock().await;
        let new_specs: BTreeMap<_, _> = prepared
            .iter()
            .map(|(id, p)| (id.clone(), p.spec.clone()))
            .collect();
        let summary = Summary::of(&self.config, &new, &cams.specs(), &new_specs);
        let d = &summary.cameras;
        let restart: Vec<String> = d.removed.iter().chain(&d.changed).cloned().collect();
        let cut = cams.stop(&restart, CAMERA_STOP_BUDGET).await;
        if cut > 0 {
            tracing::warn!(
                cameras = cut,
                "camera tasks that did not stop in time were cut off"
            );
        }
        for id in &d.removed {
            self.metrics.forget_camera_state(id);
        }
        // New buckets of a new policy record its retention before its first segment arrives.
        self.writer.set_retention(writer_retention(&new));
        // The queue's budget before the added cameras start (after the removed ones stopped).
        let was = self.writer.queue_limit();
        if new.storage.writer_queue != was {
            self.writer.set_queue_limit(new.storage.writer_queue);
            tracing::info!(
                was,
                now = self.writer.queue_limit(),
                "writer queue budget (storage.writer_queue) changed"
            );
        }
        // The staging arena follows the site, as at a start with this config. The writer acts
        // on it between two batches and logs the outcome; at the same size it only registers
        // an arena the memory lock limit refused before (a limit raised since then).
        self.writer
            .resize_arena(DirectTuning::for_cameras(new.cameras.len()).slots);
        for id in d.added.iter().chain(&d.changed) {
            if let Some(p) = prepared.remove(id) {
                cams.start(p);
            }
        }
        let statuses = new
            .cameras
            .iter()
            .filter_map(|c| cams.running.get(&c.id).map(|r| r.status.clone()))
            .collect();
        drop(cams);
        let retention = sweeper_config(&new);
        self.state
            .live
            .store(Arc::new(Live::new(&new, statuses, retention.clone())));
        // Console sessions of users the new config no longer has end now (`session.end`).
        self.state.sessions.sweep(&self.state.live());
        self.sweeper.set_config(retention);
        self.config = new;
        Ok(summary)
    }
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
