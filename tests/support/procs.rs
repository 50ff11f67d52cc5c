//! Real peers for integration tests: GStreamer's RTSP server and the holdfast daemon, each a child
//! process on 127.0.0.1 with its own port, stopped when the handle drops. And a tiny HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (the OS picks it, so parallel tests do not collide).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of a file in the repository.
///
/// Read at run time: `cargo test` sets `CARGO_MANIFEST_DIR` for the test process, and the
/// compile-time value would point at whichever clone first built a shared target dir.
pub fn repo_path(rel: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join(rel)
}

fn terminate(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// GStreamer's RTSP server (`tests/support/rtsp_server.py`).
pub struct RtspServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// The stats file it writes.
    pub stats: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RtspServer {
    /// Starts a server with extra arguments (`--cameras 3`, `--audio`, ...) and waits until ready.
    pub fn start(args: &[&str]) -> RtspServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RtspServer {
            child: None,
            port: free_port(),
            stats: dir.path().join("stats.json"),
            args: args.iter().map(|a| a.to_string()).collect(),
            _dir: dir,
        };
        s.restart();
        s
    }

    /// (Re)starts the process on the same port; returns when it listens.
    pub fn restart(&mut self) -> Instant {
        let mut child = Command::new("/usr/bin/python3")
            .arg(repo_path("tests/support/rtsp_server.py"))
            .args(["--port", &self.port.to_string(), "--stats"])
            .arg(&self.stats)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start /usr/bin/python3 tests/support/rtsp_server.py (scripts/setup.sh installs GStreamer)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "RTSP server did not start");
        self.child = Some(child);
        Instant::now()
    }

    /// Stops the process (SIGTERM; it writes its final stats first).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// URL of a mount.
    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{mount}", self.port)
    }

    /// The URLs of every SETUP request so far.
    pub fn setups(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["setups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Frames sent per mount so far.
    pub fn frames_sent(&self, mount: &str) -> u64 {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v.get(mount).and_then(|n| n.as_u64()).unwrap_or(0)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The holdfast daemon (`holdfast run`) as a child process.
pub struct Daemon {
    child: Option<Child>,
    /// HTTP address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
    /// The bearer token of the `test-admin` manager.
    pub token: String,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

fn spawn_daemon(config: &Path, log: &Path, env: &[(String, String)]) -> Child {
    spawn_daemon_args(config, log, env, &[])
}

fn spawn_daemon_args(config: &Path, log: &Path, env: &[(String, String)], extra: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast"));
    cmd.args(["run", "--config"])
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "debug,retina=debug")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Token of the `test-admin` user every test config gets.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// Bearer token of the privacy officer every test daemon also has (role `privacy_officer`).
pub const PRIVACY_TOKEN: &str = "test-privacy-token-0123456789abcdef";

impl Daemon {
    /// Starts `holdfast run` with `[storage]`/`[http]` filled in, the given rest of the config
    /// (policies, sites, cameras), and a manager user with [`ADMIN_TOKEN`]; waits for /healthz.
    pub fn start(rest: &str, storage_extra: &str) -> Daemon {
        Self::start_env(rest, storage_extra, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_env(rest: &str, storage_extra: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_in(rest, storage_extra, env, None)
    }

    /// Like [`Daemon::start_env`], with the data directory at `data_dir` (a mount made by the
    /// test) instead of `dir/data`.
    pub fn start_in(
        rest: &str,
        storage_extra: &str,
        env: &[(&str, &str)],
        data_dir: Option<&Path>,
    ) -> Daemon {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let token_hash = hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()));
        let privacy_hash = hex::encode(sha2::Sha256::digest(PRIVACY_TOKEN.as_bytes()));
        let config = format!(
            "[storage]\ndata_dir = {data:?}\n{storage_extra}\n\n[http]\nlisten = \"{addr}\"\n\n{rest}\n\n\
             [[users]]\nname = \"test-admin\"\nrole = \"manager\"\ntoken_sha256 = \"{token_hash}\"\nsites = [\"*\"]\n\n\
             [[users]]\nname = \"test-privacy\"\nrole = \"privacy_officer\"\ntoken_sha256 = \"{privacy_hash}\"\nsites = [\"*\"]\n",
            data = data_dir.display().to_string(),
        );
        let config = format!("{config}{}", logbook_section(dir.path()));
        let config_path = dir.path().join("holdfast.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("holdfast.log");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = spawn_daemon(&config_path, &log, &env);
        let d = Daemon {
            child: Some(child),
            addr,
            data_dir,
            log,
            token: ADMIN_TOKEN.to_owned(),
            dir,
            env,
        };
        d.wait_until(Duration::from_secs(30), |d| {
            d.get("/healthz", None).0 == 200
        });
        d
    }

    /// Polls `cond` every 100 ms until it holds; panics (with the log tail) after `limit`.
    pub fn wait_until(&self, limit: Duration, mut cond: impl FnMut(&Daemon) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            if cond(self) {
                return t0.elapsed();
            }
            if t0.elapsed() > limit {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(40).collect();
                panic!(
                    "condition not met within {limit:?}; log tail:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET with an optional bearer token: (status, body).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        http_get(self.addr, path, token)
    }

    /// POST a JSON body as the test admin: (status, parsed body).
    pub fn post(&self, path: &str, json: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_post(self.addr, path, Some(&self.token), json);
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// GET as the test admin, expecting 200, parsed as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path, Some(&self.token));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The state of a camera from `/api/v1/cameras`.
    pub fn camera_state(&self, id: &str) -> String {
        let v = self.get_json("/api/v1/cameras");
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["state"].as_str().unwrap().to_owned())
            .unwrap()
    }

    /// A sample from `/metrics`: `name{labels}` exactly as exposed, e.g.
    /// `holdfast_camera_frames_total{camera="a"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics", None);
        metric_value(&text, series).unwrap_or(0.0)
    }

    /// Stops the daemon with SIGTERM (it flushes everything first) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    /// Kills the daemon with SIGKILL (no flush, no shutdown) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status, once the daemon has exited by itself (then `stop` has nothing to do).
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Starts the stopped daemon again on the same config and data; waits for /healthz.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_again();
        self.wait_until(Duration::from_secs(30), |d| {
            d.get("/healthz", None).0 == 200
        });
    }

    /// Starts the stopped daemon again without waiting for anything.
    pub fn spawn_again(&mut self) {
        let config = self.config_path();
        self.child = Some(spawn_daemon(&config, &self.log, &self.env));
    }

    /// Starts the stopped daemon again with extra arguments after `run --config FILE`
    /// (`--accept-missing-files`), without waiting for anything.
    pub fn spawn_again_with(&mut self, extra: &[&str]) {
        let config = self.config_path();
        self.child = Some(spawn_daemon_args(&config, &self.log, &self.env, extra));
    }

    /// Whether the daemon process has exited (`Some(exit status)`), reaping it.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal (`libc::SIGHUP`, ...) to the running daemon.
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("the daemon runs");
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    /// SIGTERM, then waits (at most `limit`) for the exit: its status and how long it took.
    /// Panics (after a SIGKILL) when the daemon is still there after `limit`.
    pub fn terminate_within(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("the daemon runs");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return (status, t0.elapsed());
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the daemon did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("holdfast.toml")
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The temporary directory holding config, log and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of one series in a text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A minimal HTTP/1.1 GET (Connection: close): (status, body).
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(addr, "GET", path, token, None)
}

/// A minimal HTTP/1.1 POST of a JSON body: (status, body).
pub fn http_post(addr: SocketAddr, path: &str, token: Option<&str>, json: &str) -> (u16, String) {
    http_request(addr, "POST", path, token, Some(json))
}

/// One request on a fresh connection: (status, body); status 0 when no answer came (refused,
/// reset, closed while the request was sent or before an answer).
fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body_head = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{body_head}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    );
    // A server that dies (or answers and closes) while the request is sent makes the write fail
    // (EPIPE, ECONNRESET): that is a status 0 like a refused connection, unless an answer came.
    let _ = s.write_all(request.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, text);
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A HEAD request: (status, response head, bytes that came after the head: none from a correct
/// server).
pub fn http_head(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, usize) {
    let (status, head, body) = raw_request(addr, "HEAD", path, token, &[]);
    (status, head, body.len())
}

/// A GET whose body is binary (an MP4): (status, headers, body bytes).
pub fn http_get_bytes(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    http_get_bytes_with(addr, path, token, &[])
}

/// [`http_get_bytes`] with extra request headers (`Range`, `If-Range`, ...).
pub fn http_get_bytes_with(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    raw_request(addr, "GET", path, token, headers)
}

/// One bodiless request on a fresh connection, read to its close: (status, head, the bytes
/// after the head as they came).
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Connection: close\r\n\r\n"
    );
    exchange(addr, request.as_bytes(), Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no HTTP answer from {addr} to {method} {path}"))
}

/// Sends `request` on a fresh connection and reads the answer to its close: (status, head,
/// the bytes after the head as they came). `None` when the connection or the head failed.
fn exchange(
    addr: SocketAddr,
    request: &[u8],
    read_timeout: Duration,
) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(read_timeout)).unwrap();
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    raw.drain(..split + 4);
    Some((status, head, raw))
}

/// Percent-encodes a query value (RFC 3339 times carry `+` and `:`).
pub fn q(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// `ffprobe` of an MP4: (frames decoded by count, duration in seconds, codec name).
pub fn ffprobe(path: &Path) -> (u64, f64, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,codec_name:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        s["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap(),
        v["format"]["duration"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap(),
        s["codec_name"].as_str().unwrap_or("").to_owned(),
    )
}

/// `ffmpeg -v error -i FILE -f null -`: the decoder's complaints (empty when the clip is clean).
pub fn ffmpeg_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        s.push_str(&format!("\nexit {:?}", out.status.code()));
    }
    s
}

/// A self-signed certificate for 127.0.0.1 and its key (PEM), made with `openssl` in `dir`:
/// `(cert.pem, key.pem)`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    (cert, key)
}

/// A `[logbook]` section for a test daemon in `dir`: a fresh key file (0600) and a checkpoint
/// directory, both outside the data directory (`dir/data`).
pub fn logbook_section(dir: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let key = dir.join("logbook.key");
    if !key.exists() {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        let bytes: [u8; 32] = rand::random();
        writeln!(f, "{}", hex::encode(bytes)).unwrap();
    }
    format!(
        "\n[logbook]\nkey_file = {:?}\ncheckpoint_dir = {:?}\n",
        key.display().to_string(),
        dir.join("checkpoints").display().to_string()
    )
}

/// A config block for one more user with the given token.
pub fn user(name: &str, role: &str, token: &str, sites: &str) -> String {
    use sha2::Digest;
    format!(
        "\n[[users]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\nsites = {sites}\n",
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    )
}

/// `holdfast camsim`: N simulated cameras looping the shipped 720p 4 Mbit/s clip
/// (`rtsp://127.0.0.1:PORT/cam0` ..); stopped when the handle drops.
pub struct Camsim {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Camsim {
    /// Starts `streams` streams and waits until the server listens.
    pub fn start(streams: usize) -> Camsim {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["camsim", "--streams", &streams.to_string(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("camsim:"), "{line}");
        Camsim { child, port }
    }

    /// Like [`Camsim::start`], with camsim's log (one `camsim: playing` line per session and
    /// stream, one `camsim: TEARDOWN` line per TEARDOWN received) in `log`.
    pub fn start_logged(streams: usize, log: &Path) -> Camsim {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["camsim", "--streams", &streams.to_string(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("camsim:"), "{line}");
        Camsim { child, port }
    }

    /// URL of stream `i`.
    pub fn url(&self, i: usize) -> String {
        format!("rtsp://127.0.0.1:{}/cam{i}", self.port)
    }
}

/// Lines of a camsim log (see [`Camsim::start_logged`]) with `what` (`camsim: playing`,
/// `camsim: TEARDOWN`) for stream `i`.
pub fn camsim_events(log: &Path, what: &str, i: usize) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let needle = format!("{what} cam{i}:");
    text.lines().filter(|l| l.contains(&needle)).count()
}

impl Drop for Camsim {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Runs a `holdfast` subcommand (`args`, then `--config FILE`) to its end: whether it succeeded,
/// and its stdout and stderr together.
pub fn holdfast(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A daemon log without terminal colour codes (the log may carry them).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An answer read by [`http_raw`]: status, headers (names lower-cased, in order) and body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code (0 when no answer came).
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (dechunked), lossily as text.
    pub body: String,
}

impl RawResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The value `NAME=value` of a `Set-Cookie` header for `name`, if one was sent.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next())
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// One HTTP/1.1 request with any headers (`Host` and `Connection: close` are added) and an
/// optional body (sent with `Content-Length`), on a fresh connection.
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> RawResponse {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    request.push_str(body.unwrap_or(""));
    let Some((status, head, body)) = exchange(addr, request.as_bytes(), Duration::from_secs(30))
    else {
        return RawResponse {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
        };
    };
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = String::from_utf8_lossy(&body);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(&body)
    } else {
        body.into_owned()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The `flags:` of the first descriptor of this process open on `path` (octal in fdinfo).
pub fn open_flags(path: &Path) -> Option<u32> {
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() == Some(path) {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.file_name().to_str()?))
                    .ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            return u32::from_str_radix(flags.trim(), 8).ok();
        }
    }
    None
}
