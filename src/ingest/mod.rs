//! Ingest: one tokio task per camera pulls H.264 over RTSP (retina), a segmenter cuts the frames
//! into segments, and the segments go to the writer. Camera tasks never touch the disk.
//!
//! - `camera`: the task (connect, SETUP of the video stream only, PLAY, reconnect with backoff).
//! - `auth`: what authentication a plain-RTSP camera offers, asked before the password is sent
//!   (Basic over plain RTSP is refused unless `allow_basic_auth`).
//! - `tls`: `rtsps://` cameras: rustls with a pinned fingerprint or `tls_ca_file`, relayed to
//!   retina on 127.0.0.1.
//! - `redact`: camera URLs, Authorization headers and passwords scrubbed from error texts and logs.
//! - `segmenter`: frames -> segments (keyframe-aligned, codec changes, broken camera clocks).
//! - `clock`: RTP media time -> wall-clock time with bounded drift correction.
//!
//! [`CameraStatus`] is what the API and the metrics read about each camera.

pub mod auth;
pub mod camera;
pub mod clock;
pub mod redact;
pub mod segmenter;
pub mod tls;

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use crate::time::Time90k;

/// The state of a camera as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// Frames are arriving.
    Recording,
    /// Setting up an RTSP session.
    Connecting,
    /// Not delivering frames; a reconnect is pending.
    Down,
}

/// Live status of one camera, updated by its task and read lock-free by the API and metrics.
#[derive(Debug)]
pub struct CameraStatus {
    /// Camera id.
    pub id: String,
    /// Site id.
    pub site: String,
    state: AtomicU8,
    last_frame: AtomicI64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl CameraStatus {
    /// A camera that has not connected yet.
    pub fn new(id: &str, site: &str) -> Self {
        Self {
            id: id.to_owned(),
            site: site.to_owned(),
            state: AtomicU8::new(CameraState::Connecting as u8),
            last_frame: AtomicI64::new(i64::MIN),
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// The current state.
    pub fn state(&self) -> CameraState {
        match self.state.load(Ordering::Acquire) {
            0 => CameraState::Recording,
            1 => CameraState::Connecting,
            _ => CameraState::Down,
        }
    }

    /// Sets the state.
    pub fn set_state(&self, s: CameraState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Wall time of the last frame received, if any.
    pub fn last_frame_at(&self) -> Option<Time90k> {
        match self.last_frame.load(Ordering::Acquire) {
            i64::MIN => None,
            t => Some(Time90k(t)),
        }
    }

    /// Records the arrival of a frame.
    pub fn frame_arrived(&self, at: Time90k) {
        self.last_frame.store(at.0, Ordering::Release);
    }

    /// The last connection error (already free of credentials), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("not poisoned").clone()
    }

    /// Sets or clears the last error.
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().expect("not poisoned") = e;
    }
}
