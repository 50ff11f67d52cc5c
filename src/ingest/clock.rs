//! Media time to wall-clock time, for one camera session.
//!
//! A camera stamps frames with a 90 kHz RTP clock of its own; holdfast stores wall-clock time. The
//! first frame of a session anchors the two: its wall time is its arrival time. After that a
//! frame's wall time is the anchor plus the RTP time elapsed, plus a correction that follows the
//! camera's clock drift:
//!
//! - The lag `arrival - wall` is observed for every frame; the smallest lag of each 5-second window
//!   (the frame that had the least network and buffering delay) is the clock error. The correction
//!   moves towards it, but never faster than [`MAX_SLEW_PPM`] of media time, so frame durations
//!   stay smooth and a burst of late packets cannot drag the timeline.
//! - Frames whose RTP time does not advance (constant timestamps), goes backwards, or jumps more
//!   than [`MAX_STEP`] are anomalies: they get the wall time that keeps the lag of the frame
//!   before (so they follow their arrival), clamped to advance by 1 ms to 10 s, and the anchor
//!   moves to them. They are counted, never fatal.
//! - When the error grows past [`MAX_ERROR`] (a camera whose clock was reset, a stall), the clock
//!   re-anchors at the current frame's arrival.
//!
//! Wall times out of one clock always increase strictly.

use crate::time::{Time90k, TICKS_PER_SEC};

/// Largest forward step of RTP time between two frames that is believed.
pub const MAX_STEP: i64 = 10 * TICKS_PER_SEC;
/// Smallest step between two frames' wall times (1 ms).
pub const MIN_STEP: i64 = TICKS_PER_SEC / 1000;
/// Largest error between media-derived and arrival-derived time before re-anchoring.
pub const MAX_ERROR: i64 = 5 * TICKS_PER_SEC;
/// Fastest correction of drift, in parts per million of media time.
pub const MAX_SLEW_PPM: i64 = 5_000;
/// Length of the window whose smallest lag is taken as the clock error.
const WINDOW: i64 = 5 * TICKS_PER_SEC;

/// What happened to a frame's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Derived from RTP time.
    Normal,
    /// RTP time did not advance (constant timestamps).
    Constant,
    /// RTP time went backwards.
    Backwards,
    /// RTP time jumped forward by more than [`MAX_STEP`].
    Jump,
    /// The error against arrival time exceeded [`MAX_ERROR`]; re-anchored.
    Resync,
}

/// The clock of one camera session.
#[derive(Debug, Clone)]
pub struct Clock {
    base_rtp: i64,
    base_wall: Time90k,
    correction: i64,
    to_apply: i64,
    last_rtp: i64,
    last_wall: Time90k,
    last_arrival: Time90k,
    window_start: Time90k,
    window_min_lag: i64,
}

impl Clock {
    /// Anchors a clock at the first frame of a session; returns it and the frame's wall time.
    /// `not_before` is the end of what was already recorded (wall times never go back past it).
    pub fn start(rtp: i64, arrival: Time90k, not_before: Option<Time90k>) -> (Self, Time90k) {
        let wall = match not_before {
            Some(t) if t > arrival => t,
            _ => arrival,
        };
        (
            Clock {
                base_rtp: rtp,
                base_wall: wall,
                correction: 0,
                to_apply: 0,
                last_rtp: rtp,
                last_wall: wall,
                last_arrival: arrival,
                window_start: wall,
                window_min_lag: i64::MAX,
            },
            wall,
        )
    }

    /// The wall time of the next frame, given its RTP time and arrival.
    pub fn frame(&mut self, rtp: i64, arrival: Time90k) -> (Time90k, Timing) {
        let delta = rtp - self.last_rtp;
        let (mut wall, mut timing) = if delta <= 0 || delta > MAX_STEP {
            let lag = self.last_arrival.0 - self.last_wall.0;
            let step = (arrival.0 - lag - self.last_wall.0).clamp(MIN_STEP, MAX_STEP);
            let kind = match delta {
                0 => Timing::Constant,
                d if d < 0 => Timing::Backwards,
                _ => Timing::Jump,
            };
            (self.last_wall.add_ticks(step), kind)
        } else {
            // Slew towards the observed error, bounded by MAX_SLEW_PPM of this step.
            let limit = (delta * MAX_SLEW_PPM / 1_000_000).max(1);
            let step = self.to_apply.clamp(-limit, limit);
            self.correction += step;
            self.to_apply -= step;
            (
                self.base_wall
                    .add_ticks(rtp - self.base_rtp + self.correction),
                Timing::Normal,
            )
        };
        if (arrival.0 - wall.0).abs() > MAX_ERROR {
            wall = arrival;
            timing = Timing::Resync;
        }
        if wall.0 < self.last_wall.0 + MIN_STEP {
            wall = self.last_wall.add_ticks(MIN_STEP);
        }
        if timing != Timing::Normal {
            // Re-anchor at this frame: later frames count RTP time from here.
            self.base_rtp = rtp;
            self.base_wall = wall;
            self.correction = 0;
            self.to_apply = 0;
            self.window_start = wall;
            self.window_min_lag = i64::MAX;
        } else {
            self.window_min_lag = self.window_min_lag.min(arrival.0 - wall.0);
            if wall.0 - self.window_start.0 >= WINDOW {
                // The least-delayed frame of the window shows the clock error.
                self.to_apply = self.window_min_lag;
                self.window_start = wall;
                self.window_min_lag = i64::MAX;
            }
        }
        self.last_rtp = rtp;
        self.last_wall = wall;
        self.last_arrival = arrival;
        (wall, timing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Time90k = Time90k(1_795_000_000 * TICKS_PER_SEC);

    #[test]
    fn good_timestamps_follow_rtp_exactly() {
        let (mut c, w0) = Clock::start(1000, T0, None);
        assert_eq!(w0, T0);
        for i in 1..500 {
            // Network jitter of 0..30 ms delays arrivals, never the media time.
            let jitter = if i % 10 == 0 { 0 } else { (i * 7919) % 2700 };
            let (w, t) = c.frame(1000 + i * 3600, T0.add_ticks(i * 3600 + jitter));
            assert_eq!(t, Timing::Normal);
            assert_eq!(w, T0.add_ticks(i * 3600), "frame {i}");
        }
    }

    #[test]
    fn drift_is_corrected_with_bounded_slew() {
        // The camera's clock runs 0.2% slow: its RTP time advances 3592.8 ticks per 40 ms.
        let (mut c, _) = Clock::start(0, T0, None);
        let mut last = T0;
        for i in 1..=25 * 120i64 {
            let arrival = T0.add_ticks(i * 3600);
            let rtp = i * 3600 * 998 / 1000;
            let (w, t) = c.frame(rtp, arrival);
            assert_eq!(t, Timing::Normal);
            let step = w.0 - last.0;
            let nominal = 3600 * 998 / 1000;
            assert!(
                (step - nominal).abs() <= nominal * MAX_SLEW_PPM / 1_000_000 + 2,
                "step {step} at {i}"
            );
            last = w;
        }
        // After two minutes the error (0.24 s uncorrected) is mostly gone.
        let err = T0.add_ticks(25 * 120 * 3600).0 - last.0;
        assert!(err.abs() < TICKS_PER_SEC / 20, "error {err} ticks");
    }

    #[test]
    fn constant_timestamps_follow_arrival() {
        let (mut c, _) = Clock::start(5000, T0, None);
        let mut last = T0;
        for i in 1..100 {
            let (w, t) = c.frame(5000, T0.add_ticks(i * 3600));
            assert_eq!(t, Timing::Constant);
            assert!(w > last);
            assert_eq!(w, T0.add_ticks(i * 3600));
            last = w;
        }
        // Frames that arrive in a burst still get strictly increasing times.
        let (a, _) = c.frame(5000, last);
        let (b, _) = c.frame(5000, last);
        assert!(b > a && a > last);
    }

    #[test]
    fn backwards_and_jumps_are_flagged_and_survived() {
        let (mut c, _) = Clock::start(0, T0, None);
        let (w1, _) = c.frame(3600, T0.add_ticks(3600));
        let (w2, t2) = c.frame(-100_000, T0.add_ticks(7200));
        assert_eq!(t2, Timing::Backwards);
        assert_eq!(w2, T0.add_ticks(7200));
        let (w3, t3) = c.frame(-100_000 + 3600, T0.add_ticks(10_800));
        assert_eq!(
            (w3, t3),
            (T0.add_ticks(10_800), Timing::Normal),
            "counts from the new anchor"
        );
        let (w4, t4) = c.frame(i64::from(u32::MAX), T0.add_ticks(14_400));
        assert_eq!(t4, Timing::Jump);
        assert!(w4 > w3 && w3 > w2 && w2 > w1);
    }

    #[test]
    fn a_large_error_resyncs_to_arrival() {
        let (mut c, _) = Clock::start(0, T0, None);
        // RTP says 1 s passed, but 20 s really did (the stream stalled without a reconnect).
        let arrival = T0.add_ticks(20 * TICKS_PER_SEC);
        let (w, t) = c.frame(TICKS_PER_SEC, arrival);
        assert_eq!((w, t), (arrival, Timing::Resync));
    }

    #[test]
    fn a_new_session_never_starts_before_what_was_recorded() {
        let later = T0.add_ticks(TICKS_PER_SEC);
        let (_, w) = Clock::start(0, T0, Some(later));
        assert_eq!(w, later);
    }
}
