//! The camera task: keeps one RTSP session to one camera alive forever and feeds its segmenter.
//!
//! Per session: DESCRIBE, SETUP of the first H.264 video stream only (audio and every other stream
//! offered are never set up: R2, HW 3), PLAY with `FrameFormat::MP4` (AVC length-prefixed samples,
//! the bytes that go to disk unchanged). Every step has a timeout, and so does every frame: a
//! camera that stops delivering is `down` within [`FRAME_TIMEOUT`]. After any failure the task
//! flushes the segmenter (the gap starts there), waits a capped exponential backoff with jitter
//! (1 s doubling to 30 s; "equal jitter": the wait is drawn from [backoff/2, backoff], so
//! cameras that failed together spread out, and the wait never exceeds the nominal step) and
//! tries again. For [`FAST_RETRY_WINDOW`] after a session that
//! delivered frames the delay stays at 1 s: short outages (a camera reboot, a switch port
//! flapping) are bridged within a second or two of the camera's return, while a camera that stays
//! away is soon tried only every 30 s.
//!
//! Credentials go to retina only, and only when they are safe to send: on a plain `rtsp://` camera
//! without `allow_basic_auth`, [`super::auth::probe`] first asks (without credentials) what the
//! camera offers, and a camera that offers only Basic is refused before retina ever sees the
//! password. `rtsps://` cameras go through [`super::tls`]: TLS (rustls, ring) with the camera's
//! certificate checked by a pinned fingerprint or `tls_ca_file`, relayed to retina on 127.0.0.1,
//! RTP interleaved over the one connection. Every error text passes [`super::redact::error_text`]
//! (no URL, no Authorization header, no password, no control characters) before it is logged or
//! becomes `last_error`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, Transport as RtspTransport,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};

use super::auth::Offer;
use super::segmenter::{FrameIn, Segmenter};
use super::tls::TlsClient;
use super::{auth, redact, tls, CameraState, CameraStatus};
use crate::config::{Secret, Transport};
use crate::metrics::Metrics;
use crate::store::segment::CodecConfig;
use crate::store::writer::WriterHandle;

/// Longest wait for one RTSP request (DESCRIBE, SETUP, PLAY).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next frame before the session is given up.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Largest reconnect delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long after a session with frames the reconnect delay stays at [`BACKOFF_START`].
pub const FAST_RETRY_WINDOW: Duration = Duration::from_secs(10);
/// Most items taken from retina in one batch (one clock reading) before the task waits again.
pub const MAX_BATCH: usize = 32;

/// Everything a camera task needs.
pub struct CameraTask {
    /// Status shared with the API.
    pub status: Arc<CameraStatus>,
    /// RTSP URL (no credentials in it).
    pub url: url::Url,
    /// User name and password, if any.
    pub credentials: Option<(String, Secret)>,
    /// Transport (always TCP for `rtsps://`).
    pub transport: Transport,
    /// Whether Basic authentication over plain `rtsp://` is acceptable.
    pub allow_basic_auth: bool,
    /// TLS settings; `Some` exactly for `rtsps://` cameras.
    pub tls: Option<TlsClient>,
    /// The segmenter (owns camera id and policy).
    pub segmenter: Segmenter,
    /// Where segments go.
    pub writer: WriterHandle,
    /// Metric handles of this camera.
    pub metrics: CameraMetrics,
    /// Becomes true when the daemon stops.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The trusted clock: frames are stamped with its time, not the raw wall clock.
    pub clock: Arc<crate::wallclock::TrustedClock>,
    /// This task's RTSP sessions: when the task stops, it waits (at most [`TEARDOWN_TIMEOUT`])
    /// for retina's TEARDOWN of the last one.
    pub sessions: Arc<retina::client::SessionGroup>,
}

/// Longest wait for the camera to answer the TEARDOWN when the task stops.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Metric handles of one camera, looked up once (never per frame).
#[derive(Clone)]
pub struct CameraMetrics {
    up: Gauge,
    frames: Counter,
    bytes: Counter,
    reconnects: Counter,
    anomalies: Counter,
    dropped_no_key: Counter,
}

impl CameraMetrics {
    /// Looks up (creating) the handles of `camera`.
    pub fn new(m: &Metrics, camera: &str) -> Self {
        let l = crate::metrics::CameraLabel {
            camera: camera.to_owned(),
        };
        m.register_camera_drops(camera);
        Self {
            up: m.camera_up.get_or_create_owned(&l),
            frames: m.camera_frames.get_or_create_owned(&l),
            bytes: m.camera_bytes.get_or_create_owned(&l),
            reconnects: m.camera_reconnects.get_or_create_owned(&l),
            anomalies: m.camera_timestamp_anomalies.get_or_create_owned(&l),
            dropped_no_key: m.camera_frames_dropped.get_or_create_owned(&l),
        }
    }
}

impl CameraTask {
    /// Runs until the daemon stops; then hands the buffered frames to the writer and returns.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut last_recording: Option<tokio::time::Instant> = None;
        let mut shutdown = self.shutdown.clone();
        loop {
            self.status.set_state(CameraState::Connecting);
            let before = self.segmenter.stats().frames;
            // For rtsps://, the relay of this session: kept past the session's end when the task
            // stops, so that retina's TEARDOWN can still go through it.
            let mut relay = None;
            let outcome = tokio::select! {
                r = self.session(&mut relay) => Some(r),
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(result) = outcome else {
                // Stopped (daemon stop, or the camera removed or changed by a reload): what is
                // buffered goes to the writer, then the session (dropped with the `session`
                // future above) is torn down: retina sends TEARDOWN on its connection.
                if let Some(seg) = self.segmenter.end_of_stream() {
                    let _ = self.writer.submit(seg);
                }
                self.sync_stats();
                self.metrics.up.set(0);
                self.status.set_state(CameraState::Down);
                match tokio::time::timeout(TEARDOWN_TIMEOUT, self.sessions.await_teardown()).await {
                    Ok(Ok(())) => {
                        tracing::info!(camera = %self.status.id, "camera stopped; session torn down")
                    }
                    Ok(Err(e)) => tracing::info!(camera = %self.status.id,
                        error = %redact::error_text(&e.to_string(), self.credentials.as_ref().map(|(_, p)| p.expose())),
                        "camera stopped; the TEARDOWN failed"),
                    Err(_) => tracing::warn!(camera = %self.status.id, timeout = ?TEARDOWN_TIMEOUT,
                        "camera stopped; no answer to the TEARDOWN in time"),
                }
                drop(relay);
                return;
            };
            drop(relay);
            // The stream ended: what is buffered is written, and the gap starts here.
            if let Some(seg) = self.segmenter.end_of_stream() {
                let _ = self.writer.submit(seg);
            }
            self.sync_stats();
            self.metrics.up.set(0);
            self.status.set_state(CameraState::Down);
            let e = result.err().unwrap_or_else(|| "stream ended".to_owned());
            let e = redact::error_text(&e, self.credentials.as_ref().map(|(_, p)| p.expose()));
            tracing::warn!(camera = %self.status.id, error = %e, "camera session ended; reconnecting");
            self.status.set_error(Some(e));
            if self.segmenter.stats().frames > before {
                backoff = BACKOFF_START;
                last_recording = Some(tokio::time::Instant::now());
            }
            let jitter = rand::rng().random_range(0.5..=1.0);
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if last_recording.is_none_or(|t| t.elapsed() > FAST_RETRY_WINDOW) {
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
            self.metrics.reconnects.inc();
        }
    }

    fn sync_stats(&mut self) {
        let s = self.segmenter.stats();
        // Counters only move forward; add what is new since the last sync.
        let add = |c: &Counter, v: u64| {
            let cur = c.get();
            if v > cur {
                c.inc_by(v - cur);
            }
        };
        add(
            &self.metrics.anomalies,
            s.timestamp_anomalies + s.clock_resyncs,
        );
        add(&self.metrics.dropped_no_key, s.frames_dropped_no_keyframe);
    }

    /// One RTSP session, until it fails. The caller scrubs the error text.
    async fn session(&mut self, relay_slot: &mut Option<tls::Relay>) -> Result<(), String> {
        let user_agent = format!("holdfast/{}", env!("CARGO_PKG_VERSION"));
        // For rtsps://, the relay lives as long as this session.
        // For rtsps://, the relay lives in the caller's slot (as long as this session, or until
        // the TEARDOWN when the task stops).
        let url = match &self.tls {
            Some(client) => {
                let relay = within("TLS connect", tls::connect(&self.url, client)).await?;
                let url = relay.url.clone();
                *relay_slot = Some(relay);
                url
            }
            None => {
                if self.credentials.is_some() && !self.allow_basic_auth {
                    self.refuse_basic_only(&user_agent).await?;
                }
                self.url.clone()
            }
        };
        let creds = self.credentials.as_ref().map(|(u, p)| Credentials {
            username: u.clone(),
            password: p.expose().to_owned(),
        });
        let opts = SessionOptions::default()
            .creds(creds)
            .user_agent(user_agent)
            .session_group(self.sessions.clone());
        let mut session = timeout("DESCRIBE", Session::describe(url, opts)).await?;
        let video = session
            .streams()
            .iter()
            .position(|s| s.media() == "video" && s.encoding_name().eq_ignore_ascii_case("h264"))
            .ok_or_else(|| "the camera offers no H.264 video stream".to_owned())?;
        let transport = match self.transport {
            // RTP must stay inside the TLS connection.
            _ if self.tls.is_some() => RtspTransport::Tcp(Default::default()),
            Transport::Tcp => RtspTransport::Tcp(Default::default()),
            Transport::Udp => RtspTransport::Udp(Default::default()),
        };
        timeout(
            "SETUP",
            session.setup(
                video,
                SetupOptions::default()
                    .transport(transport)
                    .frame_format(FrameFormat::MP4),
            ),
        )
        .await?;
        let playing = timeout("PLAY", session.play(PlayOptions::default())).await?;
        let mut demuxed = playing.demuxed().map_err(|e| e.to_string())?;
        tracing::info!(camera = %self.status.id, "camera session playing");
        if let Some(ParametersRef::Video(v)) = demuxed.streams()[video].parameters() {
            self.segmenter
                .set_codec(Arc::new(CodecConfig::new(Bytes::copy_from_slice(
                    v.extra_data(),
                ))));
        }
        // The frame timeout is a timer armed once and moved on only when it fires (to the last
        // item's time plus FRAME_TIMEOUT), not a new timer per frame.
        let mut last_item = tokio::time::Instant::now();
        let idle = tokio::time::sleep_until(last_item + FRAME_TIMEOUT);
        tokio::pin!(idle);
        loop {
            let first = tokio::select! {
                biased;
                item = demuxed.next() => item,
                _ = &mut idle => {
                    let due = last_item + FRAME_TIMEOUT;
                    if due <= tokio::time::Instant::now() {
                        return Err(format!("no frame for {} s", FRAME_TIMEOUT.as_secs()));
                    }
                    idle.as_mut().reset(due);
                    continue;
                }
            };
            // One batch: this item and every further one retina has ready without waiting (read
            // from the socket together). The batch shares one reading of the clocks: the frames
            // arrived together.
            last_item = tokio::time::Instant::now();
            let arrival = self.clock.now();
            let mut next = Some(first);
            let mut in_batch = 0;
            while let Some(item) = next.take() {
                let item = match item {
                    None => return Err("the camera ended the stream".to_owned()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(item)) => item,
                };
                if let CodecItem::VideoFrame(frame) = item {
                    if frame.stream_id() == video {
                        self.take_frame(frame, arrival, &demuxed, video);
                    }
                }
                in_batch += 1;
                if in_batch < MAX_BATCH {
                    next = demuxed.next().now_or_never();
                }
            }
        }
    }

    /// Hands one video frame, which arrived at `arrival`, to the segmenter; a completed segment
    /// goes to the writer.
    fn take_frame(
        &mut self,
        frame: retina::codec::VideoFrame,
        arrival: crate::time::Time90k,
        demuxed: &retina::client::Demuxed,
        video: usize,
    ) {
        if frame.has_new_parameters() {
            if let Some(ParametersRef::Video(v)) = demuxed.streams()[video].parameters() {
                self.segmenter
                    .set_codec(Arc::new(CodecConfig::new(Bytes::copy_from_slice(
                        v.extra_data(),
                    ))));
            }
        }
        let key = frame.is_random_access_point();
        let rtp = frame.timestamp().timestamp();
        // retina sizes the frame's Vec exactly, so this takes it over without a copy or an
        // allocation.
        let data = Bytes::from(frame.into_data());
        // Per frame: tests and dashboards read these counters over short windows, and they are
        // two uncontended atomic adds (design/performance.md).
        self.metrics.frames.inc();
        self.metrics.bytes.inc_by(data.len() as u64);
        if self.status.state() != CameraState::Recording {
            self.status.set_state(CameraState::Recording);
            self.status.set_error(None);
            self.metrics.up.set(1);
        }
        self.status.frame_arrived(arrival);
        let seg = self.segmenter.push(FrameIn {
            rtp,
            arrival,
            key,
            data,
        });
        // Per frame, so the anomaly counters are as current as the frame counter.
        self.sync_stats();
        if let Some(seg) = seg {
            // A full queue drops the segment and counts it; the camera never waits.
            let _ = self.writer.submit(seg);
        }
    }
}

impl CameraTask {
    /// Refuses the session if the camera offers only Basic authentication (or a challenge nobody
    /// understands) over plain RTSP, before the password is ever sent.
    async fn refuse_basic_only(&self, user_agent: &str) -> Result<(), String> {
        match within("DESCRIBE (authentication probe)", async {
            auth::probe(&self.url, user_agent).await
        })
        .await?
        {
            Offer::NoChallenge | Offer::Digest => Ok(()),
            Offer::BasicOnly => Err("camera offers only Basic authentication over plain RTSP; \
                 the password would cross the network in clear, so it is not sent: use digest or \
                 TLS (rtsps), or set allow_basic_auth = true for this camera to accept the risk"
                .to_owned()),
            Offer::Unparseable => Err("camera asks for an authentication scheme holdfast does \
                 not understand (not Digest, not Basic); the password is not sent"
                .to_owned()),
            Offer::Unanswered(status) => Err(format!(
                "camera answered a DESCRIBE without credentials with {}, neither 200 nor a \
                 401 challenge, so it cannot be told that the password would not go in clear; \
                 it is not sent (retrying)",
                status.map_or("no RTSP status".to_owned(), |s| format!("status {s}"))
            )),
        }
    }
}

/// Runs `f` within [`CONNECT_TIMEOUT`]; its error text is passed through unchanged.
async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{what} timed out after {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })
}

async fn timeout<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Err(_) => Err(format!(
            "{what} timed out after {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}
