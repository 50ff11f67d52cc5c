//! Everything systemd: the notify protocol, the watchdog and the choice of log output.
//!
//! - **Notify** (`Type=notify`): [`status`] lines while the daemon starts ("recovering the
//!   store", "opening the logbook", ...), [`ready`] once recovery is done and the HTTP listener
//!   is bound (the [`Supervisor`] sends it when it starts, just before the server runs: a
//!   connection made then waits in the listen queue and is answered), then
//!   "recording N of M cameras" every few seconds, [`stopping`] when shutdown starts and
//!   [`reloading`] when a reload starts. Every call is a no-op without `NOTIFY_SOCKET`, and a
//!   failed send is only logged (at debug): systemd going away never stops recording.
//! - **Watchdog** (`WatchdogSec=`, seen as `WATCHDOG_USEC`): the [`Supervisor`] sends
//!   `WATCHDOG=1` at half the interval, but only while every stage makes progress: the writer
//!   thread and the sweeper thread bump a [`Heartbeat`] at every turn of their loops (both wake
//!   up at least every [`HEARTBEAT_TICK`] or `sync_interval`, also when idle; the sweeper also
//!   beats per bucket, so one long sweep that advances is not stuck), and the HTTP server must
//!   make progress: its own heartbeat (`AppState::http_progress`: idle with a free slot and a
//!   working accept, requests finished, bytes written, connections closed) or an answered
//!   loopback `GET /healthz` (any status). Not the probe alone: a flood that holds every
//!   connection slot would delay the probe, and a restart would cost every camera footage;
//!   nor does a non-loopback `http.listen` that `IPAddressDeny=` keeps the probe from reaching
//!   stop the pings while the server works. A stage without progress for
//!   longer than the watchdog interval stops the pings; the daemon logs which stage and since
//!   when (warn) and says so in `STATUS=`, and systemd restarts the service.
//! - **Logs**: [`journal_stream_is_stderr`] tells `main` whether stderr is the journal stream
//!   (`JOURNAL_STREAM` names its device and inode), in which case events go to journald with
//!   structured fields (see `main.rs`), plain text otherwise.
//!
//! The talking is done by the `sd-notify` crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sd_notify::NotifyState;

use crate::ingest::{CameraState, CameraStatus};

/// How often an idle stage loop wakes up (at most) to beat its [`Heartbeat`].
pub const HEARTBEAT_TICK: Duration = Duration::from_secs(1);

/// How often `STATUS=` is refreshed when there is no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "could not notify the service manager");
    }
}

/// `READY=1`: start-up is complete (recovery done, HTTP answering).
pub fn ready() {
    READY.store(true, Ordering::Relaxed);
    send(&[NotifyState::Ready]);
}

/// Set by [`ready`]: the start is over (a reload says READY=1 again only after this).
static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A reload is over: `READY=1` again, with a status line, but only when the start had already
/// said so (a SIGHUP caught during the start must not announce readiness before the start is
/// over).
pub fn reloaded(text: &str) {
    if READY.load(Ordering::Relaxed) {
        send(&[NotifyState::Ready, NotifyState::Status(&one_line(text))]);
    } else {
        status(text);
    }
}

/// `STATUS=`: one line of text shown by `systemctl status` (line breaks become spaces).
pub fn status(text: &str) {
    send(&[NotifyState::Status(&one_line(text))]);
}

/// Set by [`stopping`]: the HTTP server no longer answers on purpose.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `STOPPING=1`: shutdown has started.
pub fn stopping() {
    STOPPING.store(true, Ordering::Relaxed);
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (as `Type=notify-reload` wants): a reload has started;
/// call [`ready`] when it is done.
pub fn reloading() {
    if !READY.load(Ordering::Relaxed) {
        return; // still starting: systemd is waiting for READY=1 anyway
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=DEV:INODE` naming
/// the device and inode of fd 2): then logs go to journald with structured fields.
pub fn journal_stream_is_stderr() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&v.to_string_lossy()) else {
        return false;
    };
    // SAFETY: fstat writes into the zeroed struct; fd 2 is only inspected.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// `DEV:INODE` of `JOURNAL_STREAM` (both decimal).
fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A stage's sign of life: the time of its last loop turn, bumped lock-free.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that beat just now.
    pub fn new() -> Self {
        let h = Heartbeat(Arc::new(AtomicU64::new(0)));
        h.beat();
        h
    }

    /// The stage made progress (a loop turn, a bucket done).
    pub fn beat(&self) {
        let ms = process_start().elapsed().as_millis() as u64;
        self.0.fetch_max(ms, Ordering::Relaxed);
    }

    /// When it last beat.
    pub fn last(&self) -> Instant {
        process_start() + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// Where the watchdog's probe connects for the server listening on `listen`: the address
/// itself, or loopback for an unspecified (`0.0.0.0`, `::`) one.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Sends `GET /healthz` through the daemon's own HTTP(S) server and returns the status code
/// (any code: the server answered).
pub async fn probe_http(addr: SocketAddr, tls: bool, timeout: Duration) -> Result<u16, String> {
    match tokio::time::timeout(timeout, probe_inner(addr, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(addr: SocketAddr, tls: bool) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if tls {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(probe_tls_config()?));
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        exchange(stream).await
    } else {
        exchange(tcp).await
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    while buf.len() < 12 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf).ok_or_else(|| "no HTTP status line in the answer".to_owned())
}

/// The status code of an HTTP/1.x answer's first bytes.
fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(buf.get(..12)?).ok()?;
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// The probe talks to this very process over loopback: the certificate is not what is being
/// checked (the server's answering is), so any certificate is accepted.
fn probe_tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// "recording N of M cameras".
pub fn recording_status(cameras: &[Arc<CameraStatus>]) -> String {
    let n = cameras
        .iter()
        .filter(|c| c.state() == CameraState::Recording)
        .count();
    format!("recording {n} of {} cameras", cameras.len())
}

/// The first stage whose last progress is older than `limit` at `now`: (name, last progress).
fn stuck_stage<'a>(
    stages: &[(&'a str, Instant)],
    now: Instant,
    limit: Duration,
) -> Option<(&'a str, Instant)> {
    stages
        .iter()
        .find(|(_, last)| now.saturating_duration_since(*last) > limit)
        .copied()
}

fn wall_time_of(at: Instant) -> String {
    let ago = Instant::now().saturating_duration_since(at);
    let t = SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The watchdog and status task: readiness, `STATUS=` and `WATCHDOG=1` (see the module doc).
pub struct Supervisor {
    /// Stages with a heartbeat: ("writer", ...), ("sweeper", ...).
    pub stages: Vec<(&'static str, Heartbeat)>,
    /// Where the HTTP server listens.
    pub http: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
    /// The server's own progress (`AppState::http_progress`).
    pub http_progress: Heartbeat,
    /// The cameras now (a reload changes them), for "recording N of M cameras".
    pub cameras: Arc<dyn Fn() -> Vec<Arc<CameraStatus>> + Send + Sync>,
}

impl Supervisor {
    /// Starts the task (on the current runtime) when a service manager listens; it sends
    /// `READY=1` at once (the caller spawns it once recovery is done and the listener is bound),
    /// then status lines and watchdog pings until aborted.
    pub fn spawn(self) -> Option<tokio::task::JoinHandle<()>> {
        enabled().then(|| tokio::spawn(self.run(watchdog_interval())))
    }

    async fn run(self, watchdog: Option<Duration>) {
        let addr = probe_addr(self.http);
        let probe_timeout = watchdog.map_or(Duration::from_secs(5), |w| {
            (w / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
        });
        // Recovery is done and the listener is bound (the caller spawns this just before the
        // server runs): ready.
        ready();
        // The loopback probe runs on its own task, so a slow answer (a busy server) never delays
        // the pings; it beats `probed` when the server answered.
        let probed = Heartbeat::new();
        let prober = watchdog.map(|w| {
            let (probed, tls) = (probed.clone(), self.tls);
            let every = (w / 2).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if STOPPING.load(Ordering::Relaxed) {
                        continue; // the server stops answering on purpose
                    }
                    match probe_http(addr, tls, probe_timeout).await {
                        Ok(_) => probed.beat(),
                        Err(e) => {
                            tracing::debug!(%addr, error = %e, "watchdog: /healthz probe failed")
                        }
                    }
                }
            })
        });
        let _stop_prober = AbortOnDrop(prober);
        status(&recording_status(&(self.cameras)()));
        tracing::info!(watchdog = ?watchdog, "service ready");
        let tick = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(100)));
        let mut reported: Option<&'static str> = None;
        let mut last_status = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let Some(limit) = watchdog else {
                status(&recording_status(&(self.cameras)()));
                continue;
            };
            let stopping = STOPPING.load(Ordering::Relaxed);
            let mut stages: Vec<(&'static str, Instant)> =
                self.stages.iter().map(|(n, h)| (*n, h.last())).collect();
            if !stopping {
                // While stopping, the server stops answering on purpose: only the threads count.
                stages.push(("HTTP server", probed.last().max(self.http_progress.last())));
            }
            match stuck_stage(&stages, Instant::now(), limit) {
                Some((stage, since)) => {
                    if reported != Some(stage) {
                        let since = wall_time_of(since);
                        tracing::warn!(stage, since = %since, watchdog = ?limit,
                            "no progress for longer than the watchdog interval: no more watchdog \
                             pings, systemd will restart the service");
                        status(&format!(
                            "watchdog: the {stage} has made no progress since {since}; not \
                             pinging the watchdog"
                        ));
                        reported = Some(stage);
                    }
                }
                None => {
                    if let Some(stage) = reported.take() {
                        tracing::info!(stage, "progress again: watchdog pings resume");
                    }
                    watchdog_ping();
                    if !stopping && last_status.elapsed() >= STATUS_EVERY.min(limit) {
                        status(&recording_status(&(self.cameras)()));
                        last_status = Instant::now();
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped (the supervisor's prober goes with the supervisor).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Whether a text would be changed by the log scrubbing (holds an `rtsp://`-family URL, which
/// may carry a camera's password).
fn needs_scrubbing(text: &str) -> bool {
    text.contains("://") && crate::ingest::redact::scrub_rtsp_urls(text) != text
}

/// Finds whether any field of an event needs scrubbing.
#[derive(Default)]
struct DirtyCheck(bool);

impl tracing::field::Visit for DirtyCheck {
    fn record_str(&mut self, _field: &tracing::field::Field, value: &str) {
        self.0 |= needs_scrubbing(value);
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0 |= needs_scrubbing(&format!("{value:?}"));
    }
}

/// The journald output: events go to the journal with their fields as structured fields
/// (`F_CAMERA=...`, `MESSAGE=`, `PRIORITY=`, `TARGET=`, `CODE_FILE=`, ...), except
///
/// - an event with a field that holds an `rtsp://` URL (retina logs them; one may carry a
///   camera's password): it goes through `plain` (the scrubbing text writer, to stderr, which
///   is the journal stream) as one scrubbed line, so no secret reaches a journal field;
/// - an event inside a span (only dependencies open spans): plain too, since span fields are
///   not checked.
pub struct JournalLayer<S> {
    journal: tracing_journald::Layer,
    plain: Box<dyn tracing_subscriber::Layer<S> + Send + Sync>,
}

impl<S> JournalLayer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    /// The journal output, or the reason why journald cannot be reached.
    pub fn new(
        plain: Box<dyn tracing_subscriber::Layer<S> + Send + Sync>,
    ) -> std::io::Result<Self> {
        Ok(JournalLayer {
            journal: tracing_journald::layer()?,
            plain,
        })
    }
}

impl<S> tracing_subscriber::Layer<S> for JournalLayer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.plain.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.plain.on_record(span, values, ctx);
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.plain.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.plain.on_exit(id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.plain.on_close(id, ctx);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut check = DirtyCheck::default();
        event.record(&mut check);
        if check.0 || ctx.lookup_current().is_some() {
            self.plain.on_event(event, ctx);
        } else {
            self.journal.on_event(event, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_may_carry_passwords_are_caught() {
        assert!(needs_scrubbing(
            "DESCRIBE rtsp://admin:pw@10.0.0.9/stream failed"
        ));
        assert!(needs_scrubbing("RTSPS://cam/x"));
        assert!(!needs_scrubbing("GET http://localhost/healthz"));
        assert!(!needs_scrubbing("camera a recording"));
    }

    #[test]
    fn journal_stream_parses() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:12345\n"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }

    #[test]
    fn status_lines_have_no_line_breaks() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }

    #[test]
    fn status_codes_are_read() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1"), None);
    }

    #[test]
    fn unspecified_listen_addresses_are_probed_on_loopback() {
        let a: SocketAddr = "0.0.0.0:8480".parse().unwrap();
        assert_eq!(probe_addr(a), "127.0.0.1:8480".parse().unwrap());
        let a: SocketAddr = "[::]:8480".parse().unwrap();
        assert_eq!(probe_addr(a), "[::1]:8480".parse().unwrap());
        let a: SocketAddr = "10.0.0.5:8480".parse().unwrap();
        assert_eq!(probe_addr(a), a);
    }

    #[test]
    fn the_first_stage_past_the_limit_is_stuck() {
        let now = Instant::now() + Duration::from_secs(100);
        let limit = Duration::from_secs(30);
        let fresh = now - Duration::from_secs(5);
        let old = now - Duration::from_secs(31);
        assert_eq!(
            stuck_stage(&[("writer", fresh), ("sweeper", fresh)], now, limit),
            None
        );
        assert_eq!(
            stuck_stage(&[("writer", fresh), ("sweeper", old)], now, limit),
            Some(("sweeper", old))
        );
        // Exactly at the limit is not yet stuck.
        let edge = now - limit;
        assert_eq!(stuck_stage(&[("writer", edge)], now, limit), None);
    }

    #[test]
    fn heartbeats_only_move_forward() {
        let h = Heartbeat::new();
        let first = h.last();
        h.beat();
        assert!(h.last() >= first);
        let c = h.clone();
        c.beat();
        assert_eq!(c.last(), h.last());
    }

    #[test]
    fn recording_counts_cameras_that_record() {
        let a = Arc::new(CameraStatus::new("a", "s"));
        let b = Arc::new(CameraStatus::new("b", "s"));
        a.set_state(CameraState::Recording);
        b.set_state(CameraState::Down);
        assert_eq!(recording_status(&[a, b]), "recording 1 of 2 cameras");
        assert_eq!(recording_status(&[]), "recording 0 of 0 cameras");
    }
}
