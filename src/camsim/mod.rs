//! `holdfast camsim`: a farm of simulated cameras, one small RTSP server serving N streams.
//!
//! Stream `i` is at `rtsp://ADDR/cam{i}`. Each client that plays it gets the shipped clip (or
//! `--clip`) looped forever from a random frame, paced in real time, with RTP timestamps and
//! sequence numbers that keep counting across loops, as a real camera's would. Only RTP over the
//! RTSP TCP connection (interleaved) is offered; that is what holdfast uses by default.
//!
//! It is built to be cheap at scale (1,000 streams x 4 Mbit/s on a small machine), so benchmarks
//! measure the recorder and not the cameras: the clip is packetized once (`clip`); the RTSP
//! handshake and the replies to keepalives run on tokio, one task per connection, which only
//! waits for requests; once a client plays, its connection is handed to one of a few pacer
//! threads (`pacer`) that send every stream's due frames on a shared tick, one `sendmsg` per
//! stream per tick from the shared payloads.

pub mod clip;
pub mod pacer;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use tokio::net::{TcpListener, TcpStream};

use self::clip::Clip;
use self::pacer::{Control, Pacers, Session};

/// The clip shipped in the repository: 4 s of 1280x720 at 25 fps, about 4 Mbit/s, keyframe every 2 s.
pub const DEFAULT_CLIP: &[u8] = include_bytes!("../../data/clip-720p25-4mbit.h264");

/// Counters of what camsim sent, shared with whoever runs it (benchmarks compare them with what
/// the recorder received).
#[derive(Debug, Default)]
pub struct CamsimStats {
    /// Frames sent, all streams together.
    pub frames_sent: AtomicU64,
    /// RTP packets sent.
    pub packets_sent: AtomicU64,
    /// Frames that were due but not sent when their session ended (its client did not read
    /// fast enough, or went away), all sessions together.
    pub frames_unsent: AtomicU64,
    /// Clients that started playing.
    pub sessions: AtomicU64,
}

/// Settings of the camera farm.
#[derive(Debug, Clone)]
pub struct CamsimConfig {
    /// Number of streams (`/cam0` .. `/cam{N-1}`).
    pub streams: usize,
    /// Frames per second of the clip.
    pub fps: u32,
}

/// A running camera farm.
pub struct Camsim {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// What it has sent.
    pub stats: Arc<CamsimStats>,
    task: tokio::task::JoinHandle<()>,
    pacers: Arc<Pacers>,
}

impl Camsim {
    /// Binds `listen` and serves in the background on the current tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        clip: Clip,
        cfg: CamsimConfig,
    ) -> std::io::Result<Camsim> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(CamsimStats::default());
        let pacers = Arc::new(Pacers::start(
            cfg.streams,
            clip.clone(),
            cfg.fps,
            stats.clone(),
        )?);
        let shared = Arc::new(Shared {
            clip,
            cfg,
            stats: stats.clone(),
            pacers: pacers.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(sock, shared).await {
                        tracing::debug!(error = %e, "camsim client ended");
                    }
                });
            }
        });
        Ok(Camsim {
            addr,
            stats,
            task,
            pacers,
        })
    }

    /// The URL of stream `i`.
    pub fn url(&self, i: usize) -> String {
        format!("rtsp://{}/cam{i}", self.addr)
    }

    /// Stops accepting and serving: every playing session is shut down, and [`Camsim::stats`]
    /// are final once this returns.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Camsim {
    fn drop(&mut self) {
        self.task.abort();
        self.pacers.stop();
    }
}

struct Shared {
    clip: Clip,
    cfg: CamsimConfig,
    stats: Arc<CamsimStats>,
    pacers: Arc<Pacers>,
}

/// One parsed RTSP request.
struct Request {
    method: String,
    url: String,
    cseq: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the next RTSP request, skipping interleaved RTCP the client sends. `None` at EOF.
async fn read_request(sock: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    loop {
        // Interleaved binary data: '$', channel, length(2), payload.
        if buf.first() == Some(&b'$') {
            if buf.len() >= 4 {
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                if buf.len() >= 4 + len {
                    buf.drain(..4 + len);
                    continue;
                }
            }
        } else if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let first = lines.next().unwrap_or_default();
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let url = parts.next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let body_len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + body_len {
                buf.drain(..end + 4 + body_len);
                let cseq = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("cseq"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                return Ok(Some(Request {
                    method,
                    url,
                    cseq,
                    headers,
                }));
            }
        }
        let mut chunk = [0u8; 4096];
        sock.readable().await?;
        let n = match sock.try_read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request too large",
            ));
        }
    }
}

/// Writes all of `data` (the handshake's replies; RTP goes through the pacers).
async fn write_all(sock: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        sock.writable().await?;
        match sock.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn response(cseq: &str, status: &str, extra: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut r = format!("RTSP/1.0 {status}\r\nCSeq: {cseq}\r\nServer: holdfast-camsim\r\n");
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// The stream index named by a URL path `/camN[/...]`, if it exists.
fn stream_of(url: &str, streams: usize) -> Option<usize> {
    let path = url
        .split("://")
        .nth(1)
        .and_then(|r| r.find('/').map(|i| &r[i..]))?;
    let n: usize = path.strip_prefix("/cam")?.split('/').next()?.parse().ok()?;
    (n < streams).then_some(n)
}

async fn serve(sock: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let session_id = format!("{:016x}", rand::random::<u64>());
    let ssrc: u32 = rand::random();
    let mut channel = 0u8;
    let mut set_up = false;
    loop {
        let Some(req) = read_request(&sock, &mut buf).await? else {
            return Ok(());
        };
        let Some(stream) = stream_of(&req.url, shared.cfg.streams) else {
            write_all(&sock, &response(&req.cseq, "404 Not Found", &[], "")).await?;
            continue;
        };
        match req.method.as_str() {
            "OPTIONS" => {
                let public = (
                    "Public",
                    "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER".to_owned(),
                );
                write_all(&sock, &response(&req.cseq, "200 OK", &[public], "")).await?;
            }
            "DESCRIBE" => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let clip = &shared.clip;
                let sdp = format!(
                    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=holdfast camsim\r\nt=0 0\r\n\
                     m=video 0 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 H264/90000\r\n\
                     a=fmtp:96 packetization-mode=1;profile-level-id={};sprop-parameter-sets={},{}\r\n\
                     a=framerate:{}\r\na=control:track0\r\n",
                    clip.profile_level_id(),
                    b64.encode(&clip.sps),
                    b64.encode(&clip.pps),
                    shared.cfg.fps
                );
                let base = format!("{}/", req.url.trim_end_matches('/'));
                let headers = [
                    ("Content-Type", "application/sdp".to_owned()),
                    ("Content-Base", base),
                ];
                write_all(&sock, &response(&req.cseq, "200 OK", &headers, &sdp)).await?;
            }
            "SETUP" => {
                let transport = req.header("Transport").unwrap_or_default().to_owned();
                if !transport.contains("RTP/AVP/TCP") {
                    write_all(
                        &sock,
                        &response(&req.cseq, "461 Unsupported Transport", &[], ""),
                    )
                    .await?;
                    continue;
                }
                channel = transport
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("interleaved="))
                    .and_then(|r| r.split('-').next())
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                set_up = true;
                let headers = [
                    (
                        "Transport",
                        format!(
                            "RTP/AVP/TCP;unicast;interleaved={}-{};ssrc={ssrc:08X}",
                            channel,
                            channel + 1
                        ),
                    ),
                    ("Session", format!("{session_id};timeout=60")),
                ];
                write_all(&sock, &response(&req.cseq, "200 OK", &headers, "")).await?;
            }
            "PLAY" if set_up => {
                let seq: u16 = rand::random();
                let rtptime: u32 = rand::random();
                let headers = [
                    ("Session", session_id.clone()),
                    ("Range", "npt=0.000-".to_owned()),
                    (
                        "RTP-Info",
                        format!(
                            "url={}/track0;seq={seq};rtptime={rtptime}",
                            req.url.trim_end_matches('/')
                        ),
                    ),
                ];
                write_all(&sock, &response(&req.cseq, "200 OK", &headers, "")).await?;
                shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
                // One line per session and stream (tests count a camera's sessions by it).
                tracing::info!("camsim: playing cam{stream}: session {session_id}");
                let control = Arc::new(Control::default());
                shared.pacers.add(Session {
                    fd: sock.as_fd().try_clone_to_owned()?,
                    control: control.clone(),
                    channel,
                    ssrc,
                    seq,
                    rtptime,
                    // Real cameras are not in step: each session starts at a random point of
                    // the clip, so the keyframes (and segment ends) of many streams spread out
                    // instead of arriving as one burst. Frames before the first keyframe are
                    // what a recorder sees from a camera joined mid-GOP.
                    phase: (ssrc as usize) % shared.clip.frames.len(),
                    start: Instant::now(),
                });
                // From here the pacer writes; this task answers requests through it.
                while let Ok(Some(req)) = read_request(&sock, &mut buf).await {
                    let done = req.method == "TEARDOWN";
                    if done {
                        tracing::info!("camsim: TEARDOWN cam{stream}: while playing");
                    }
                    control.reply(&response(&req.cseq, "200 OK", &[], ""));
                    if done {
                        break;
                    }
                }
                control.close();
                return Ok(());
            }
            "GET_PARAMETER" | "SET_PARAMETER" => {
                write_all(
                    &sock,
                    &response(&req.cseq, "200 OK", &[("Session", session_id.clone())], ""),
                )
                .await?;
            }
            "TEARDOWN" => {
                tracing::info!("camsim: TEARDOWN cam{stream}: session {session_id}");
                write_all(&sock, &response(&req.cseq, "200 OK", &[], "")).await?;
                return Ok(());
            }
            _ => {
                write_all(
                    &sock,
                    &response(&req.cseq, "455 Method Not Valid in This State", &[], ""),
                )
                .await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths() {
        assert_eq!(stream_of("rtsp://127.0.0.1:5/cam3", 4), Some(3));
        assert_eq!(stream_of("rtsp://127.0.0.1:5/cam3/track0", 4), Some(3));
        assert_eq!(stream_of("rtsp://127.0.0.1:5/cam4", 4), None);
        assert_eq!(stream_of("rtsp://127.0.0.1:5/other", 4), None);
    }
}
