//! camsim's pacer threads: they send the RTP of every playing session, so 1,000 streams x 4 Mbit/s
//! cost well under one core.
//!
//! A few threads (one per 500 streams, at most one per core) each serve many sessions on one
//! shared tick ([`TICK`]) instead of one timer per stream. On every tick a session gets one
//! `sendmsg` covering all its frames that are due: the interleave prefix and RTP header of each
//! packet (16 bytes, written into a per-thread scratch) and the clip's shared, pre-built payloads,
//! as one iovec list, so no payload byte is copied in user space. Sockets are written without
//! blocking; a session whose socket is full keeps its place (frame and byte offset) and catches up
//! on later ticks, exactly as a blocking camera would. RTSP replies the session's reader task
//! queues ([`Control`]) are sent at the next frame boundary, never inside a frame.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::clip::Clip;
use super::CamsimStats;

/// The shared tick: a frame is sent at most this long after its time.
pub const TICK: Duration = Duration::from_millis(20);
/// Most iovecs in one `sendmsg` (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;
/// Most packets in one `sendmsg`: a header and a payload iovec each, one iovec for replies.
const MAX_PACKETS: usize = (MAX_IOV - 1) / 2;
/// How long a session whose client has gone may take to flush its last reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a stop waits for the clients to receive what was written.
const STOP_DRAIN: Duration = Duration::from_secs(5);
/// Sessions per pacer thread before another thread is started (up to one per core).
const STREAMS_PER_THREAD: usize = 500;
/// Interleave prefix (4 bytes) plus RTP header (12 bytes).
const HEADER: usize = 16;

/// What a playing session's RTSP reader task shares with its pacer.
#[derive(Debug, Default)]
pub struct Control {
    /// RTSP replies to send at the next frame boundary.
    replies: Mutex<Vec<u8>>,
    /// Whether `replies` holds bytes (checked every tick without taking the lock).
    has_replies: AtomicBool,
    /// Set once the client sent TEARDOWN or closed: flush the replies, then close.
    closing: AtomicBool,
}

impl Control {
    /// Queues an RTSP reply.
    pub fn reply(&self, bytes: &[u8]) {
        let mut r = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        r.extend_from_slice(bytes);
        self.has_replies.store(true, Ordering::Release);
    }

    /// Asks the pacer to finish the frame under way, send the queued replies and close.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }
}

/// A session that has answered PLAY, handed to a pacer.
#[derive(Debug)]
pub struct Session {
    /// The connection (a duplicate of the reader task's descriptor).
    pub fd: OwnedFd,
    /// Shared with the reader task.
    pub control: Arc<Control>,
    /// Interleaved channel of RTP.
    pub channel: u8,
    /// RTP SSRC.
    pub ssrc: u32,
    /// Sequence number of the first packet (as announced in RTP-Info).
    pub seq: u16,
    /// RTP timestamp of the first frame (as announced in RTP-Info).
    pub rtptime: u32,
    /// Clip frame the session starts at.
    pub phase: usize,
    /// When the first frame is due; frame `n` is due `n` frame periods later.
    pub start: Instant,
}

/// The pacer threads of one camera farm.
pub struct Pacers {
    inboxes: Vec<Arc<Mutex<Vec<Session>>>>,
    next: AtomicUsize,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The clip as the pacers send it, shared by every session.
struct Wire {
    clip: Clip,
    /// Bytes on the wire of each frame (headers included).
    frame_bytes: Vec<usize>,
    period_ns: u64,
    frame_ticks: u32,
    stats: Arc<CamsimStats>,
}

impl Pacers {
    /// Starts the pacer threads for `streams` streams of `clip` at `fps`.
    pub fn start(
        streams: usize,
        clip: Clip,
        fps: u32,
        stats: Arc<CamsimStats>,
    ) -> std::io::Result<Pacers> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = streams.div_ceil(STREAMS_PER_THREAD).clamp(1, cores.max(1));
        let fps = fps.max(1);
        let frame_bytes = clip
            .frames
            .iter()
            .map(|f| f.payloads.iter().map(|p| HEADER + p.len()).sum())
            .collect();
        let wire = Arc::new(Wire {
            clip,
            frame_bytes,
            period_ns: 1_000_000_000 / u64::from(fps),
            frame_ticks: 90_000 / fps,
            stats,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut inboxes = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let inbox = Arc::new(Mutex::new(Vec::new()));
            let (inbox2, stop2, wire2) = (inbox.clone(), stop.clone(), wire.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("camsim-pacer-{i}"))
                    .spawn(move || run(&inbox2, &stop2, &wire2))?,
            );
            inboxes.push(inbox);
        }
        Ok(Pacers {
            inboxes,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// Number of pacer threads.
    pub fn threads(&self) -> usize {
        self.inboxes.len()
    }

    /// Hands a session to a pacer (round robin).
    pub fn add(&self, session: Session) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        self.inboxes[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session);
    }

    /// Stops every pacer and waits for the threads: their sessions end after what was already
    /// written has been received (at most `STOP_DRAIN`), then are shut down.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One pacer thread.
fn run(inbox: &Mutex<Vec<Session>>, stop: &AtomicBool, wire: &Wire) {
    let mut sessions: Vec<Playing> = Vec::new();
    let mut scratch = Scratch::new();
    let mut next_tick = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let unsent = sessions.iter().map(|p| p.unsent(now, wire)).sum();
            wire.stats
                .frames_unsent
                .fetch_add(unsent, Ordering::Relaxed);
            drain(&sessions);
            return;
        }
        sessions.extend(
            inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .map(Playing::new),
        );
        let now = Instant::now();
        let mut totals = (0u64, 0u64);
        let mut unsent = 0;
        sessions.retain_mut(|p| {
            let keep = p.service(now, wire, &mut scratch, &mut totals);
            if !keep {
                unsent += p.unsent(now, wire);
            }
            keep
        });
        if unsent > 0 {
            wire.stats
                .frames_unsent
                .fetch_add(unsent, Ordering::Relaxed);
        }
        if totals.0 > 0 {
            wire.stats
                .frames_sent
                .fetch_add(totals.0, Ordering::Relaxed);
            wire.stats
                .packets_sent
                .fetch_add(totals.1, Ordering::Relaxed);
        }
        next_tick += TICK;
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        } else {
            next_tick = now;
        }
    }
}

/// At stop: ends every session after the bytes already written, and waits (at most
/// [`STOP_DRAIN`]) until the clients have them, so every frame counted as sent can be received
/// (the process exiting with data still queued could reset the connection and lose it).
fn drain(sessions: &[Playing]) {
    for p in sessions {
        // SAFETY: a valid descriptor.
        unsafe {
            libc::shutdown(p.s.fd.as_raw_fd(), libc::SHUT_WR);
        }
    }
    let t0 = Instant::now();
    let mut left: Vec<&Playing> = sessions.iter().collect();
    while !left.is_empty() && t0.elapsed() < STOP_DRAIN {
        left.retain(|p| !delivered(&p.s.fd));
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in sessions {
        shutdown(&p.s.fd);
    }
}

/// Whether a socket shut down for writing has had everything (and its FIN) acknowledged, or is
/// closed. Not a TCP socket: `true`.
fn delivered(fd: &OwnedFd) -> bool {
    const TCP_ESTABLISHED: u8 = 1;
    const TCP_FIN_WAIT1: u8 = 4;
    const TCP_CLOSE_WAIT: u8 = 8;
    const TCP_LAST_ACK: u8 = 9;
    const TCP_CLOSING: u8 = 11;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` has room for `len` bytes; tcpi_state is its first byte.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    r != 0
        || len == 0
        || !matches!(
            info[0],
            TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING
        )
}

fn shutdown(fd: &OwnedFd) {
    // SAFETY: a valid descriptor owned by the caller.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Per-thread room for the headers and iovecs of one `sendmsg`.
struct Scratch {
    headers: Box<[[u8; HEADER]; MAX_PACKETS]>,
    used: usize,
    iov: Vec<libc::iovec>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            headers: Box::new([[0; HEADER]; MAX_PACKETS]),
            used: 0,
            iov: Vec::with_capacity(MAX_IOV),
        }
    }

    fn clear(&mut self) {
        self.used = 0;
        self.iov.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
    }

    /// Writes a header into the next slot and queues it from byte `skip`.
    fn push_header(&mut self, h: [u8; HEADER], skip: usize) {
        let slot = &mut self.headers[self.used];
        *slot = h;
        self.used += 1;
        let bytes = &slot[skip.min(HEADER)..];
        // The slot lives in a box that neither moves nor is written again before the send.
        self.iov.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
    }

    fn full(&self) -> bool {
        self.used == MAX_PACKETS
    }
}

/// A session being played by a pacer.
struct Playing {
    s: Session,
    /// Frames completely sent.
    n: u64,
    /// Clip index of frame `n`.
    frame: usize,
    /// Sequence number of frame `n`'s first packet.
    seq: u16,
    /// Bytes of frame `n` already sent.
    off: usize,
    replies: Vec<u8>,
    replies_off: usize,
    closing_since: Option<Instant>,
}

impl Playing {
    fn new(s: Session) -> Playing {
        Playing {
            n: 0,
            frame: s.phase,
            seq: s.seq,
            off: 0,
            replies: Vec::new(),
            replies_off: 0,
            closing_since: None,
            s,
        }
    }

    /// Sends what is due at `now`. `false` once the session is over (its socket shut down).
    fn service(
        &mut self,
        now: Instant,
        wire: &Wire,
        scratch: &mut Scratch,
        totals: &mut (u64, u64),
    ) -> bool {
        let c = &self.s.control;
        if self.replies_off == self.replies.len() && c.has_replies.load(Ordering::Acquire) {
            let mut r = c.replies.lock().unwrap_or_else(|e| e.into_inner());
            self.replies.clear();
            self.replies_off = 0;
            std::mem::swap(&mut self.replies, &mut *r);
            c.has_replies.store(false, Ordering::Release);
        }
        let closing = c.closing.load(Ordering::Acquire);
        if closing && self.closing_since.is_none() {
            self.closing_since = Some(now);
        }
        let elapsed = now.saturating_duration_since(self.s.start).as_nanos() as u64;
        let due = if closing {
            // Finish the frame under way, start no other.
            self.n + u64::from(self.off > 0)
        } else {
            elapsed / wire.period_ns + 1
        };
        let frames = &wire.clip.frames;
        loop {
            let with_replies = self.off == 0 && self.replies_off < self.replies.len();
            if !with_replies && self.n >= due {
                break;
            }
            scratch.clear();
            if with_replies {
                scratch.push(&self.replies[self.replies_off..]);
            }
            let (mut k, mut f, mut seq, mut skip) = (self.n, self.frame, self.seq, self.off);
            let mut more = false;
            'frames: while k < due {
                let frame = &frames[f];
                let ts = self
                    .s
                    .rtptime
                    .wrapping_add((k as u32).wrapping_mul(wire.frame_ticks));
                let last = frame.payloads.len().saturating_sub(1);
                for (i, p) in frame.payloads.iter().enumerate() {
                    if skip >= HEADER + p.len() {
                        skip -= HEADER + p.len();
                        seq = seq.wrapping_add(1);
                        continue;
                    }
                    if scratch.full() {
                        more = true;
                        break 'frames;
                    }
                    scratch.push_header(
                        header(self.s.channel, p.len(), i == last, seq, ts, self.s.ssrc),
                        skip,
                    );
                    scratch.push(&p[skip.saturating_sub(HEADER)..]);
                    skip = 0;
                    seq = seq.wrapping_add(1);
                }
                k += 1;
                f = (f + 1) % frames.len();
            }
            let total: usize = scratch.iov.iter().map(|v| v.iov_len).sum();
            if total == 0 {
                break;
            }
            let written = match send(&self.s.fd, &mut scratch.iov) {
                Ok(w) => w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "camsim client gone");
                    shutdown(&self.s.fd);
                    return false;
                }
            };
            self.advance(written, with_replies, wire, totals);
            if written < total {
                return true; // the socket is full: the rest on a later tick
            }
            if !more && !with_replies && self.n >= due {
                break;
            }
        }
        if closing {
            let flushed = self.off == 0 && self.replies_off == self.replies.len();
            let late = self
                .closing_since
                .is_some_and(|t| now.saturating_duration_since(t) > CLOSE_GRACE);
            if flushed || late {
                shutdown(&self.s.fd);
                return false;
            }
        }
        true
    }

    /// Frames due a tick before `now` and not sent (none once the client asked to close): the
    /// frames of the tick under way are not late yet.
    fn unsent(&self, now: Instant, wire: &Wire) -> u64 {
        if self.closing_since.is_some() {
            return 0;
        }
        let elapsed = now
            .saturating_duration_since(self.s.start)
            .saturating_sub(TICK)
            .as_nanos() as u64;
        (elapsed / wire.period_ns + 1).saturating_sub(self.n)
    }

    /// Accounts `w` bytes sent: replies first (if they led the send), then frames.
    fn advance(&mut self, mut w: usize, with_replies: bool, wire: &Wire, totals: &mut (u64, u64)) {
        if with_replies {
            let r = w.min(self.replies.len() - self.replies_off);
            self.replies_off += r;
            w -= r;
        }
        while w > 0 {
            let rest = wire.frame_bytes[self.frame] - self.off;
            if w < rest {
                self.off += w;
                break;
            }
            w -= rest;
            let packets = wire.clip.frames[self.frame].payloads.len();
            self.seq = self.seq.wrapping_add(packets as u16);
            self.n += 1;
            self.frame = (self.frame + 1) % wire.clip.frames.len();
            self.off = 0;
            totals.0 += 1;
            totals.1 += packets as u64;
        }
    }
}

/// The `$`-framed interleave prefix and RTP header of one packet.
fn header(channel: u8, payload: usize, marker: bool, seq: u16, ts: u32, ssrc: u32) -> [u8; HEADER] {
    let len = ((12 + payload) as u16).to_be_bytes();
    let seq = seq.to_be_bytes();
    let ts = ts.to_be_bytes();
    let ssrc = ssrc.to_be_bytes();
    [
        b'$',
        channel,
        len[0],
        len[1],
        0x80,
        if marker { 0x80 | 96 } else { 96 },
        seq[0],
        seq[1],
        ts[0],
        ts[1],
        ts[2],
        ts[3],
        ssrc[0],
        ssrc[1],
        ssrc[2],
        ssrc[3],
    ]
}

/// One non-blocking `sendmsg` of the iovecs (no SIGPIPE).
fn send(fd: &OwnedFd, iov: &mut [libc::iovec]) -> std::io::Result<usize> {
    // SAFETY: the msghdr points at `iov`, whose entries point at live buffers for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn small_clip() -> Clip {
        // Three frames: an IDR split into FU-A pieces, two small P frames.
        let mut data = vec![0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0, 0, 0, 1, 0x68, 0xce];
        data.extend([0, 0, 0, 1, 0x65]);
        data.extend((0..4000u32).map(|i| (i % 200 + 1) as u8));
        for p in 0..2u8 {
            data.extend([0, 0, 0, 1, 0x41, 7 + p, 8, 9]);
        }
        Clip::from_annex_b(&data).unwrap()
    }

    /// An RTP packet read back: (seq, ts, marker, payload).
    type Packet = (u16, u32, bool, Vec<u8>);

    /// RTP packets and RTSP replies read back from a stream.
    fn parse(mut bytes: &[u8]) -> (Vec<Packet>, Vec<String>) {
        let mut packets = Vec::new();
        let mut replies = Vec::new();
        while !bytes.is_empty() {
            if bytes[0] == b'$' {
                if bytes.len() < 4 {
                    break;
                }
                let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
                if bytes.len() < 4 + len {
                    break;
                }
                let p = &bytes[4..4 + len];
                assert_eq!(bytes[1], 2, "channel");
                assert_eq!(u32::from_be_bytes([p[8], p[9], p[10], p[11]]), 0xabcd);
                packets.push((
                    u16::from_be_bytes([p[2], p[3]]),
                    u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                    p[1] & 0x80 != 0,
                    p[12..].to_vec(),
                ));
                bytes = &bytes[4 + len..];
            } else {
                let end = bytes
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("a whole reply between frames");
                replies.push(String::from_utf8_lossy(&bytes[..end]).into_owned());
                bytes = &bytes[end + 4..];
            }
        }
        (packets, replies)
    }

    #[test]
    fn sessions_count_on_across_loops_partial_writes_and_replies() {
        let clip = small_clip();
        assert_eq!(clip.frames.len(), 3);
        let stats = Arc::new(CamsimStats::default());
        // 500 fps: 10 frames per tick, so a few ticks loop the 3-frame clip many times.
        let pacers = Pacers::start(1, clip.clone(), 500, stats.clone()).unwrap();
        let mut fds = [0; 2];
        // SAFETY: plain socketpair; both ends are owned right after.
        let (ours, theirs) = unsafe {
            assert_eq!(
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()),
                0
            );
            // A small send buffer forces partial writes inside frames.
            let small: libc::c_int = 4096;
            libc::setsockopt(
                fds[0],
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                &small as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            (
                OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        let control = Arc::new(Control::default());
        pacers.add(Session {
            fd: ours,
            control: control.clone(),
            channel: 2,
            ssrc: 0xabcd,
            seq: 65530,
            rtptime: u32::MAX - 1000,
            phase: 1,
            start: Instant::now(),
        });
        let mut theirs = theirs;
        let mut got = Vec::new();
        let mut chunk = [0u8; 1000];
        // Read slowly for a while, queueing a reply in between.
        for i in 0..60 {
            if i == 20 {
                control.reply(b"RTSP/1.0 200 OK\r\nCSeq: 9\r\n\r\n");
            }
            let n = theirs.read(&mut chunk).unwrap();
            got.extend_from_slice(&chunk[..n]);
            std::thread::sleep(Duration::from_millis(2));
        }
        control.close();
        theirs.read_to_end(&mut got).unwrap();
        pacers.stop();
        let (packets, replies) = parse(&got);
        assert_eq!(replies, vec!["RTSP/1.0 200 OK\r\nCSeq: 9".to_owned()]);
        // Every frame complete: the close came at a frame boundary.
        assert!(packets.last().unwrap().2, "ends with a frame's last packet");
        let frames_sent = stats.frames_sent.load(Ordering::Relaxed);
        assert_eq!(
            packets.iter().filter(|p| p.2).count() as u64,
            frames_sent,
            "frames_sent counts whole frames written"
        );
        assert!(frames_sent > 6, "looped at least twice: {frames_sent}");
        assert_eq!(
            stats.packets_sent.load(Ordering::Relaxed),
            packets.len() as u64
        );
        // Sequence numbers count on by one (wrapping), timestamps by 90000/500 per frame.
        let mut frame = 0u32;
        let mut clip_frame = 1usize;
        let mut in_frame = 0usize;
        for (j, (seq, ts, marker, payload)) in packets.iter().enumerate() {
            assert_eq!(*seq, 65530u16.wrapping_add(j as u16));
            assert_eq!(*ts, (u32::MAX - 1000).wrapping_add(frame * 180));
            assert_eq!(payload[..], clip.frames[clip_frame].payloads[in_frame][..]);
            in_frame += 1;
            assert_eq!(*marker, in_frame == clip.frames[clip_frame].payloads.len());
            if *marker {
                frame += 1;
                clip_frame = (clip_frame + 1) % 3;
                in_frame = 0;
            }
        }
    }
}
