//! Scale benchmark: `holdfast camsim` serving N streams of the shipped 720p 4 Mbit/s clip, recorded
//! by `holdfast run`, against the baseline most NVRs use: one `ffmpeg -rtsp_transport tcp -i URL
//! -c copy -f segment` per stream, on the same camsim load, in the same run.
//!
//! ```sh
//! cargo bench --bench scale                      # N = 50, 200, 500; 60 s each
//! cargo bench --bench scale -- 50 200            # chosen N
//! HOLDFAST_SCALE_SECS=20 cargo bench --bench scale -- 50
//! HOLDFAST_SCALE_NO_FFMPEG=1 ...                 # skip the baseline
//! ```
//!
//! Reported per run: CPU seconds per stream-minute (user + system, from /proc, over the measured
//! window after a warm-up), peak RSS per stream (VmHWM), frames received vs sent (camsim counts
//! what it wrote; holdfast's `holdfast_camera_frames_total`, ffmpeg's output frame counts), and
//! segments dropped. Set `HOLDFAST_BENCH_DIR` to put the data on a particular disk.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast");
const WARMUP: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (user+system CPU seconds, peak RSS bytes) of a live process.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = if f.len() > 13 {
        (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / tck
    } else {
        0.0
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, hwm)
}

fn term(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Camsim {
    child: Child,
    port: u16,
}

impl Camsim {
    fn start(n: usize) -> Camsim {
        let port = free_port();
        let mut child = Command::new(BIN)
            .args([
                "camsim",
                "--streams",
                &n.to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("camsim:"), "{line}");
        // Keep the reader for the stats line at the end.
        std::thread::spawn(move || {
            let mut rest = String::new();
            while out.read_line(&mut rest).unwrap_or(0) > 0 {
                if rest.starts_with("camsim-stats") {
                    std::fs::write(format!("/tmp/holdfast-camsim-{port}.stats"), &rest).unwrap();
                }
                rest.clear();
            }
        });
        Camsim { child, port }
    }

    /// Stops camsim; returns frames sent.
    fn stop(mut self) -> u64 {
        term(&mut self.child);
        let path = format!("/tmp/holdfast-camsim-{}.stats", self.port);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(s) = std::fs::read_to_string(&path) {
                let _ = std::fs::remove_file(&path);
                return s
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("frames_sent=")?.parse().ok())
                    .unwrap_or(0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        0
    }
}

fn http_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Result {
    cpu_per_stream_min: f64,
    rss_per_stream: f64,
    sent: u64,
    received: u64,
    dropped: u64,
}

fn run_holdfast(n: usize, secs: u64, base: &std::path::Path) -> Result {
    let sim = Camsim::start(n);
    let dir = tempfile::tempdir_in(base).unwrap();
    let http = free_port();
    let mut cfg = format!(
        "[storage]\ndata_dir = {:?}\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n\n\
         [policies.p]\nvideo = \"1d\"\nkeytags = \"1d\"\n\n[[sites]]\nid = \"s\"\npolicy = \"p\"\n",
        dir.path().join("data").display().to_string()
    );
    for i in 0..n {
        cfg.push_str(&format!(
            "\n[[cameras]]\nid = \"cam-{i}\"\nsite = \"s\"\nurl = \"rtsp://127.0.0.1:{}/cam{i}\"\n",
            sim.port
        ));
    }
    cfg.push_str(&format!(
        "\n[logbook]\nunkeyed = true\ncheckpoint_dir = {:?}\n",
        dir.path().join("checkpoints").display().to_string()
    ));
    let cfg_path = dir.path().join("holdfast.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut daemon = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    std::thread::sleep(WARMUP);
    let (cpu0, _) = proc_usage(daemon.id());
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu1, hwm) = proc_usage(daemon.id());
    let sent = sim.stop();
    std::thread::sleep(Duration::from_millis(500));
    let m = http_metrics(http);
    let received = sum_series(&m, "holdfast_camera_frames_total") as u64;
    let dropped = sum_series(&m, "holdfast_segments_dropped_total") as u64;
    term(&mut daemon);
    Result {
        cpu_per_stream_min: (cpu1 - cpu0) / n as f64 / (secs as f64 / 60.0),
        rss_per_stream: hwm as f64 / n as f64,
        sent,
        received,
        dropped,
    }
}

fn run_ffmpeg(n: usize, secs: u64, base: &std::path::Path) -> Result {
    let sim = Camsim::start(n);
    let dir = tempfile::tempdir_in(base).unwrap();
    let mut children: Vec<Child> = (0..n)
        .map(|i| {
            Command::new("ffmpeg")
                .args([
                    "-nostdin",
                    "-v",
                    "error",
                    "-progress",
                    "pipe:1",
                    "-rtsp_transport",
                    "tcp",
                    "-i",
                ])
                .arg(format!("rtsp://127.0.0.1:{}/cam{i}", sim.port))
                .args([
                    "-map",
                    "0:v",
                    "-c",
                    "copy",
                    "-f",
                    "segment",
                    "-segment_time",
                    "2",
                    "-reset_timestamps",
                    "1",
                ])
                .arg(dir.path().join(format!("cam{i}-%06d.mp4")))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Each ffmpeg reports `frame=N` on its progress pipe; keep the latest.
    let counts: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>> = children
        .iter_mut()
        .map(|c| {
            let a = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let a2 = a.clone();
            let out = c.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Some(v) = line
                        .strip_prefix("frame=")
                        .and_then(|v| v.trim().parse().ok())
                    {
                        a2.store(v, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            a
        })
        .collect();
    std::thread::sleep(WARMUP);
    let cpu0: f64 = children.iter().map(|c| proc_usage(c.id()).0).sum();
    std::thread::sleep(Duration::from_secs(secs));
    let usage: Vec<(f64, u64)> = children.iter().map(|c| proc_usage(c.id())).collect();
    let cpu1: f64 = usage.iter().map(|u| u.0).sum();
    let hwm: u64 = usage.iter().map(|u| u.1).sum();
    let sent = sim.stop();
    std::thread::sleep(Duration::from_millis(1500));
    for c in &mut children {
        term(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let received = counts
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    Result {
        cpu_per_stream_min: (cpu1 - cpu0) / n as f64 / (secs as f64 / 60.0),
        rss_per_stream: hwm as f64 / n as f64,
        sent,
        received,
        dropped: 0,
    }
}

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![50, 200, 500]
    } else {
        ns
    };
    let secs: u64 = std::env::var("HOLDFAST_SCALE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let base = std::env::var_os("HOLDFAST_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let with_ffmpeg = std::env::var_os("HOLDFAST_SCALE_NO_FFMPEG").is_none();
    println!(
        "scale benchmark: {secs} s per run after {WARMUP:?} warm-up; camsim clip 720p25 ~4 Mbit/s"
    );
    println!(
        "{:>5} {:>9} {:>14} {:>12} {:>11} {:>11} {:>9}",
        "N", "recorder", "CPU s/str-min", "RSS/stream", "sent", "received", "dropped"
    );
    for n in ns {
        let h = run_holdfast(n, secs, &base);
        let line = |name: &str, r: &Result| {
            println!(
                "{:>5} {:>9} {:>14.4} {:>10.2}MB {:>11} {:>11} {:>9}",
                n,
                name,
                r.cpu_per_stream_min,
                r.rss_per_stream / 1e6,
                r.sent,
                r.received,
                r.dropped
            )
        };
        line("holdfast", &h);
        if with_ffmpeg {
            let f = run_ffmpeg(n, secs, &base);
            line("ffmpeg", &f);
            println!(
                "{:>5} {:>9} holdfast uses {:.1}x less CPU per stream than ffmpeg",
                n,
                "ratio",
                f.cpu_per_stream_min / h.cpu_per_stream_min.max(1e-9)
            );
        }
    }
}
