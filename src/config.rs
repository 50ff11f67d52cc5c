//! The configuration file: TOML in, a validated [`Config`] out, or every error with its key.
//!
//! Loading has two passes. The first deserialises into raw structs (unknown keys and wrong types
//! are refused, and `serde_path_to_error` names the key). The second validates meaning and
//! collects *every* problem, each as `key: what is wrong` (`cameras[2].site: unknown site
//! "zuid"`), so `holdfast check-config` can list them all at once. Durations are written like
//! `"90s"`, `"1h"`, `"28d"`; sizes like `"20GiB"` or `"5%"`. Secrets are never part of an error.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::store::segment::is_valid_camera_id;

/// One configuration problem, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `storage.bucket` or `cameras[1].password_file`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// A list of configuration problems.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A secret string (camera password). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself, for the one place that must send it (the RTSP client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[storage]`.
    pub storage: Storage,
    /// `[http]`.
    pub http: Http,
    /// `[sweeper]`.
    pub sweeper: Sweeper,
    /// `[policies.NAME]`, by name.
    pub policies: BTreeMap<String, Policy>,
    /// `[[sites]]`.
    pub sites: Vec<Site>,
    /// `[[cameras]]`.
    pub cameras: Vec<Camera>,
    /// `[[users]]`.
    pub users: Vec<User>,
    /// `[roles.NAME]`: roles replaced or added (the rest keep the design brief's defaults).
    pub roles: BTreeMap<String, crate::roles::RolePermissions>,
    /// `[logbook]`.
    pub logbook: LogbookSettings,
    /// `[holds]`.
    pub holds: HoldSettings,
    /// `[keytags]`.
    pub keytags: KeytagSettings,
    /// `[clock]`.
    pub clock: ClockSettings,
    /// `[console]`.
    pub console: ConsoleSettings,
}

/// `[console]`: the web console's local time zone and the idle timeout of its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// IANA time zone name the console shows times in (checked against jiff's tz database).
    pub timezone: String,
    /// A console session unused for this long ends (`crate::api::session`).
    pub session_idle: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            timezone: "Europe/Amsterdam".into(),
            session_idle: Duration::from_secs(15 * 60),
        }
    }
}

/// `[clock]`: when a step of the wall clock is believed (see `crate::wallclock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettings {
    /// A step of the wall clock against the monotonic clock larger than this is a jump.
    pub jump_threshold: Duration,
    /// How long (on the monotonic clock) a wall clock that jumped forward must hold before it is
    /// believed (one that jumped back is believed only when accepted).
    pub jump_confirm: Duration,
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self {
            jump_threshold: Duration::from_secs(600),
            jump_confirm: Duration::from_secs(3600),
        }
    }
}

/// `[logbook]`: how the logbook's chain is keyed and anchored outside the data directory.
#[derive(Debug, Clone)]
pub struct LogbookSettings {
    /// The MAC key of the chain (created by `holdfast logbook init-key`, mode 0600, outside the
    /// data directory). `None` only when `unkeyed` is set.
    pub key_file: Option<PathBuf>,
    /// Run with a plain SHA-256 chain (no key): anyone who can write the data directory can then
    /// rewrite the logbook. Must be set explicitly.
    pub unkeyed: bool,
    /// Directory of the append-only checkpoint file (`seq + mac` of the head, every
    /// `checkpoint_interval` and at shutdown); outside the data directory.
    pub checkpoint_dir: PathBuf,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
}

/// `[holds]`.
#[derive(Debug, Clone)]
pub struct HoldSettings {
    /// How far past now a hold's `to` may reach (an ongoing incident gets successive holds or an
    /// extension instead).
    pub max_future: Duration,
}

/// `[keytags]`.
#[derive(Debug, Clone)]
pub struct KeytagSettings {
    /// The longest range a key-tag query may cover, per purpose (`[keytags.max_range]`).
    pub max_range: BTreeMap<String, Duration>,
}

/// The purposes of key-tag queries and their default range caps: a tag check looks at a week,
/// a witness search at a day around a calamity (MW 3.6, 3.7), a data subject or the police at
/// the whole retention (28 days at the most, MW 6.7).
pub const KEYTAG_PURPOSE_DEFAULTS: [(&str, &str); 4] = [
    ("tag-check", "7d"),
    ("witness-search", "24h"),
    ("subject-access", "28d"),
    ("police", "28d"),
];

/// `[storage]`.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Where the index and bucket files live.
    pub data_dir: PathBuf,
    /// Bucket window, whole seconds dividing a day.
    pub bucket: Duration,
    /// Target segment length.
    pub segment_target: Duration,
    /// Longest wait between a write and its fdatasync.
    pub sync_interval: Duration,
    /// Free-space floor.
    pub min_free: MinFree,
    /// Payload bytes the writer queue may hold before cameras drop segments (`"auto"`: see
    /// [`auto_writer_queue`]). A reload applies a new value at once.
    pub writer_queue: u64,
}

impl Storage {
    /// The bucket window in seconds.
    pub fn bucket_secs(&self) -> u32 {
        self.bucket.as_secs() as u32
    }
}

/// A free-space floor: a share of the file system or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// Percent of the file system's size.
    Percent(f64),
    /// Bytes.
    Bytes(u64),
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct Http {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Whether `/metrics` needs a bearer token.
    pub metrics_require_auth: bool,
    /// TLS certificate chain (PEM), if TLS is on.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), if TLS is on.
    pub tls_key: Option<PathBuf>,
    /// Longest time a client may take to send a request's head; then the connection is closed.
    pub header_timeout: Duration,
    /// Longest time an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Most connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

/// `[sweeper]`.
#[derive(Debug, Clone)]
pub struct Sweeper {
    /// Time between sweeps.
    pub interval: Duration,
}

/// `[policies.NAME]`: how long data may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Retention of video.
    pub video: Duration,
    /// Retention of key-tag events.
    pub keytags: Duration,
    /// Default review date of a hold on this policy's cameras: `expires_at` is placement plus
    /// this unless the request says otherwise (WB 8: decided within two weeks).
    pub hold_review: Duration,
}

/// `[[sites]]`: a complex, with its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Site id.
    pub id: String,
    /// Policy name.
    pub policy: String,
}

/// RTSP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RTP interleaved on the RTSP TCP connection (default).
    Tcp,
    /// RTP over UDP.
    Udp,
}

/// Where a camera's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// No credentials.
    None,
    /// A file whose content (trailing newline trimmed) is the password.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// `[[cameras]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Camera {
    /// Camera id, `[a-z0-9-]`.
    pub id: String,
    /// Site id.
    pub site: String,
    /// RTSP URL, without credentials.
    pub url: url::Url,
    /// User name, if the camera needs one.
    pub username: Option<String>,
    /// Where the password comes from.
    pub password: PasswordSource,
    /// RTSP transport.
    pub transport: Transport,
    /// Whether plain Basic authentication over unencrypted `rtsp://` is acceptable (it sends the
    /// password in clear); off by default, digest is what cameras offer.
    pub allow_basic_auth: bool,
    /// For `rtsps://`: a PEM file of the CA (or the self-signed certificate) to trust.
    pub tls_ca_file: Option<PathBuf>,
    /// For `rtsps://`: the SHA-256 of the camera's certificate (DER), pinned.
    pub tls_fingerprint: Option<[u8; 32]>,
    /// Where in the config this camera is (for error messages): `cameras[N]`.
    pub key: String,
}

impl Camera {
    /// Loads the password. The error names the key, never the secret.
    pub fn load_password(&self) -> Result<Option<Secret>, ConfigError> {
        match &self.password {
            PasswordSource::None => Ok(None),
            PasswordSource::File(p) => std::fs::read_to_string(p)
                .map(|s| Some(Secret(s.trim_end_matches(['\r', '\n']).to_owned())))
                .map_err(|e| ConfigError {
                    key: format!("{}.password_file", self.key),
                    message: format!("cannot read {}: {e}", p.display()),
                }),
            PasswordSource::Env(var) => {
                std::env::var(var)
                    .map(|s| Some(Secret(s)))
                    .map_err(|_| ConfigError {
                        key: format!("{}.password_env", self.key),
                        message: format!("environment variable {var} is not set"),
                    })
            }
        }
    }
}

/// `[[users]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User (or system) name, as the logbook shows it.
    pub name: String,
    /// Role name.
    pub role: String,
    /// SHA-256 of the bearer token.
    pub token_sha256: [u8; 32],
    /// Sites the user may act on; `None` means all (`["*"]`).
    pub sites: Option<Vec<String>>,
}

impl Config {
    /// The policy name of a camera (through its site).
    pub fn camera_policy(&self, camera: &Camera) -> &str {
        self.sites
            .iter()
            .find(|s| s.id == camera.site)
            .map(|s| s.policy.as_str())
            .expect("validated: every camera's site exists")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                message: format!("not valid TOML: {e}"),
            }])
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigErrors(vec![ConfigError {
                key: if key == "." { String::new() } else { key },
                message: inner.message().trim().to_owned(),
            }])
        })?;
        raw.validate()
    }

    /// Checks that every camera's secret can be loaded (for `check-config` and start-up).
    pub fn check_secrets(&self) -> Vec<ConfigError> {
        self.cameras
            .iter()
            .filter_map(|c| c.load_password().err())
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    storage: RawStorage,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    sweeper: RawSweeper,
    #[serde(default)]
    policies: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    sites: Vec<RawSite>,
    #[serde(default)]
    cameras: Vec<RawCamera>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    #[serde(default)]
    logbook: RawLogbook,
    #[serde(default)]
    holds: RawHolds,
    #[serde(default)]
    keytags: RawKeytags,
    #[serde(default)]
    clock: RawClock,
    #[serde(default)]
    console: RawConsole,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    timezone: Option<String>,
    session_idle: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClock {
    jump_threshold: Option<String>,
    jump_confirm: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogbook {
    key_file: Option<PathBuf>,
    #[serde(default)]
    unkeyed: bool,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHolds {
    max_future: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeytags {
    #[serde(default)]
    max_range: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    permissions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: PathBuf,
    #[serde(default = "default_bucket")]
    bucket: String,
    #[serde(default = "default_segment_target")]
    segment_target: String,
    #[serde(default = "default_sync_interval")]
    sync_interval: String,
    #[serde(default = "default_min_free")]
    min_free: String,
    #[serde(default = "default_writer_queue")]
    writer_queue: String,
}

fn default_bucket() -> String {
    "1h".into()
}
fn default_segment_target() -> String {
    "2s".into()
}
fn default_sync_interval() -> String {
    "1s".into()
}
fn default_min_free() -> String {
    "5%".into()
}
fn default_writer_queue() -> String {
    "auto".into()
}

/// `writer_queue = "auto"`: room for about four 2-second segments of a 4 Mbit/s camera per
/// camera (a sync interval of data plus bursts when many keyframes coincide), at least 256 MiB.
pub fn auto_writer_queue(cameras: usize) -> u64 {
    (256u64 << 20).max((4u64 << 20) * cameras as u64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    metrics_require_auth: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            metrics_require_auth: false,
            tls_cert: None,
            tls_key: None,
            header_timeout: None,
            idle_timeout: None,
            max_connections: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8480".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweeper {
    #[serde(default = "default_sweep_interval")]
    interval: String,
}

impl Default for RawSweeper {
    fn default() -> Self {
        Self {
            interval: default_sweep_interval(),
        }
    }
}

fn default_sweep_interval() -> String {
    "1m".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    video: String,
    keytags: String,
    hold_review: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    id: String,
    policy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCamera {
    id: String,
    site: String,
    url: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default = "default_transport")]
    transport: Transport,
    #[serde(default)]
    allow_basic_auth: bool,
    tls_ca_file: Option<PathBuf>,
    tls_fingerprint: Option<String>,
}

fn default_transport() -> Transport {
    Transport::Tcp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    role: String,
    token_sha256: String,
    sites: Vec<String>,
}

/// Collects errors during validation.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &str, min: Duration, max: Duration) -> Duration {
        match parse_duration(value) {
            Ok(d) if d < min => {
                self.push(
                    key,
                    format!(
                        "{value:?} is shorter than the minimum {}",
                        humantime::format_duration(min)
                    ),
                );
                min
            }
            Ok(d) if d > max => {
                self.push(
                    key,
                    format!(
                        "{value:?} is longer than the maximum {}",
                        humantime::format_duration(max)
                    ),
                );
                max
            }
            Ok(d) => d,
            Err(e) => {
                self.push(key, e);
                min
            }
        }
    }
}

/// Parses a duration such as `"90s"`, `"1h"`, `"28d"`, `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"90s\", \"1h\" or \"28d\" ({e})"))
}

/// Parses a byte size such as `"20GiB"`, `"500MB"` or `"1048576"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(format!("{s:?} is not a size like \"20GiB\" or \"500MB\"")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"20GiB\" or \"500MB\""))?;
    Ok((n * mult as f64) as u64)
}

fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

const DAY: Duration = Duration::from_secs(86_400);

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigErrors> {
        let mut e = Errors::default();
        let s = &self.storage;
        let bucket = e.duration("storage.bucket", &s.bucket, Duration::from_secs(1), DAY);
        if bucket.subsec_nanos() != 0 || !DAY.as_secs().is_multiple_of(bucket.as_secs().max(1)) {
            e.push(
                "storage.bucket",
                format!(
                    "{:?} must be whole seconds that divide a day (e.g. \"10s\", \"15m\", \"1h\")",
                    s.bucket
                ),
            );
        }
        let segment_target = e.duration(
            "storage.segment_target",
            &s.segment_target,
            Duration::from_millis(100),
            Duration::from_secs(60),
        );
        let sync_interval = e.duration(
            "storage.sync_interval",
            &s.sync_interval,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        let min_free = match s.min_free.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if (0.0..100.0).contains(&v) => MinFree::Percent(v),
                _ => {
                    e.push(
                        "storage.min_free",
                        format!("{:?} is not a percentage from 0% to 99%", s.min_free),
                    );
                    MinFree::Percent(5.0)
                }
            },
            None => match parse_size(&s.min_free) {
                Ok(b) => MinFree::Bytes(b),
                Err(m) => {
                    e.push(
                        "storage.min_free",
                        format!("{m}, nor a percentage like \"5%\""),
                    );
                    MinFree::Percent(5.0)
                }
            },
        };
        let writer_queue = match parse_size(&s.writer_queue) {
            _ if s.writer_queue == "auto" => auto_writer_queue(self.cameras.len()),
            Ok(b) if b >= 1 << 20 => b,
            Ok(_) => {
                e.push("storage.writer_queue", "must be at least 1MiB");
                1 << 20
            }
            Err(m) => {
                e.push("storage.writer_queue", m);
                1 << 20
            }
        };
        if s.data_dir.as_os_str().is_empty() {
            e.push("storage.data_dir", "must not be empty");
        }

        let listen = match self.http.listen.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                e.push(
                    "http.listen",
                    format!(
                        "{:?} is not an address like \"127.0.0.1:8480\"",
                        self.http.listen
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 8480))
            }
        };
        match (&self.http.tls_cert, &self.http.tls_key) {
            (Some(_), None) => e.push("http.tls_key", "tls_cert is set, so tls_key is needed too"),
            (None, Some(_)) => e.push("http.tls_cert", "tls_key is set, so tls_cert is needed too"),
            _ => {}
        }
        let header_timeout = e.duration(
            "http.header_timeout",
            self.http.header_timeout.as_deref().unwrap_or("10s"),
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        let idle_timeout = e.duration(
            "http.idle_timeout",
            self.http.idle_timeout.as_deref().unwrap_or("60s"),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        let max_connections = match self.http.max_connections {
            None => 512,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(n) => {
                e.push(
                    "http.max_connections",
                    format!("{n} is not from 1 to 1000000"),
                );
                512
            }
        };
        let sweep_interval = e.duration(
            "sweeper.interval",
            &self.sweeper.interval,
            Duration::from_secs(1),
            DAY,
        );
        let clock_default = ClockSettings::default();
        let clock = ClockSettings {
            jump_threshold: self.clock.jump_threshold.as_deref().map_or(
                clock_default.jump_threshold,
                |v| {
                    e.duration(
                        "clock.jump_threshold",
                        v,
                        Duration::from_secs(1),
                        Duration::from_secs(7 * 86_400),
                    )
                },
            ),
            jump_confirm: self.clock.jump_confirm.as_deref().map_or(
                clock_default.jump_confirm,
                |v| {
                    e.duration(
                        "clock.jump_confirm",
                        v,
                        Duration::from_secs(1),
                        Duration::from_secs(30 * 86_400),
                    )
                },
            ),
        };

        let console_default = ConsoleSettings::default();
        let console = ConsoleSettings {
            timezone: match self.console.timezone.as_deref() {
                None => console_default.timezone,
                Some(tz) => {
                    if let Err(err) = jiff::tz::db().get(tz) {
                        e.push(
                            "console.timezone",
                            format!("{tz:?} is not a time zone of the tz database ({err})"),
                        );
                    }
                    tz.to_owned()
                }
            },
            session_idle: self
                .console
                .session_idle
                .as_deref()
                .map_or(console_default.session_idle, |v| {
                    e.duration("console.session_idle", v, Duration::from_secs(1), DAY)
                }),
        };

        let mut policies = BTreeMap::new();
        for (name, p) in &self.policies {
            let key = format!("policies.{name}");
            if !is_valid_name(name) {
                e.push(
                    &key,
                    "policy names use only a-z, 0-9, '-' and '_' (they name a directory)",
                );
            }
            let video = e.duration(
                &format!("{key}.video"),
                &p.video,
                Duration::from_secs(1),
                Duration::from_secs(10 * 365 * 86_400),
            );
            // A bucket is expired as a whole once its oldest data reaches retention; with less
            // than two windows of retention the bucket being written could already be due.
            if video < 2 * bucket && !bucket.is_zero() {
                e.push(
                    format!("{key}.video"),
                    format!(
                        "{:?} is shorter than two storage.bucket windows ({}); use a shorter bucket",
                        p.video,
                        humantime::format_duration(2 * bucket)
                    ),
                );
            }
            // MW 6.7: key-tag access data is kept four weeks at the most.
            let keytags = e.duration(
                &format!("{key}.keytags"),
                &p.keytags,
                Duration::from_secs(1),
                28 * DAY,
            );
            let hold_review = e.duration(
                &format!("{key}.hold_review"),
                p.hold_review.as_deref().unwrap_or("14d"),
                Duration::from_secs(60),
                Duration::from_secs(10 * 365 * 86_400),
            );
            policies.insert(
                name.clone(),
                Policy {
                    video,
                    keytags,
                    hold_review,
                },
            );
        }

        let mut site_ids = HashSet::new();
        let mut sites = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            let key = format!("sites[{i}]");
            if !is_valid_name(&site.id) {
                e.push(
                    format!("{key}.id"),
                    format!("{:?}: use only a-z, 0-9, '-' and '_'", site.id),
                );
            } else if !site_ids.insert(site.id.clone()) {
                e.push(
                    format!("{key}.id"),
                    format!("duplicate site id {:?}", site.id),
                );
            }
            if !self.policies.contains_key(&site.policy) {
                e.push(
                    format!("{key}.policy"),
                    format!("unknown policy {:?}", site.policy),
                );
            }
            sites.push(Site {
                id: site.id.clone(),
                policy: site.policy.clone(),
            });
        }

        let mut camera_ids = HashSet::new();
        let mut cameras = Vec::new();
        for (i, c) in self.cameras.into_iter().enumerate() {
            let key = format!("cameras[{i}]");
            if !is_valid_camera_id(&c.id) {
                e.push(
                    format!("{key}.id"),
                    format!("{:?}: 1 to 64 characters of a-z, 0-9 and '-'", c.id),
                );
            } else if !camera_ids.insert(c.id.clone()) {
                e.push(
                    format!("{key}.id"),
                    format!("duplicate camera id {:?}", c.id),
                );
            }
            if !site_ids.contains(&c.site) {
                e.push(format!("{key}.site"), format!("unknown site {:?}", c.site));
            }
            // Never echo the URL: it might carry a password.
            let url = match url::Url::parse(&c.url) {
                Ok(u) if u.scheme() != "rtsp" && u.scheme() != "rtsps" => {
                    e.push(format!("{key}.url"), "must be an rtsp:// or rtsps:// URL");
                    None
                }
                Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                    e.push(
                        format!("{key}.url"),
                        "must not contain credentials; use username and password_file or password_env",
                    );
                    None
                }
                Ok(u) if u.host_str().is_none() => {
                    e.push(format!("{key}.url"), "has no host");
                    None
                }
                // Tokens or passwords in a query string end up in logs and DESCRIBE answers.
                Ok(u)
                    if u.query().is_some_and(|q| {
                        url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| {
                            let k = k.to_ascii_lowercase();
                            [
                                "user", "pass", "pwd", "auth", "token", "key", "secret", "login",
                                "cred",
                            ]
                            .iter()
                            .any(|w| k.contains(w))
                        })
                    }) =>
                {
                    e.push(
                        format!("{key}.url"),
                        "must not carry credentials in its query string; use username and \
                         password_file or password_env",
                    );
                    None
                }
                Ok(u) => Some(u),
                Err(err) => {
                    e.push(format!("{key}.url"), format!("not a valid URL ({err})"));
                    None
                }
            };
            let password = match (&c.password_file, &c.password_env) {
                (Some(_), Some(_)) => {
                    e.push(
                        format!("{key}.password_env"),
                        "set password_file or password_env, not both",
                    );
                    PasswordSource::None
                }
                (Some(p), None) => PasswordSource::File(p.clone()),
                (None, Some(v)) if v.is_empty() => {
                    e.push(
                        format!("{key}.password_env"),
                        "must name an environment variable",
                    );
                    PasswordSource::None
                }
                (None, Some(v)) => PasswordSource::Env(v.clone()),
                (None, None) => PasswordSource::None,
            };
            match (&c.username, &password) {
                (Some(_), PasswordSource::None)
                    if c.password_file.is_none() && c.password_env.is_none() =>
                {
                    e.push(
                        format!("{key}.password_file"),
                        "username is set, so password_file or password_env is needed",
                    )
                }
                (None, PasswordSource::File(_) | PasswordSource::Env(_)) => e.push(
                    format!("{key}.username"),
                    "a password is set, so username is needed",
                ),
                _ => {}
            }
            let tls_fingerprint = match &c.tls_fingerprint {
                None => None,
                Some(f) => {
                    let hexed: String = f.chars().filter(|ch| *ch != ':').collect();
                    let mut fp = [0u8; 32];
                    if hex::decode_to_slice(hexed.trim(), &mut fp).is_ok() {
                        Some(fp)
                    } else {
                        e.push(
                            format!("{key}.tls_fingerprint"),
                            "must be the certificate's SHA-256: 64 hex digits, colons allowed",
                        );
                        None
                    }
                }
            };
            let tls = url.as_ref().is_some_and(|u| u.scheme() == "rtsps");
            if tls && c.tls_ca_file.is_none() && c.tls_fingerprint.is_none() {
                e.push(
                    format!("{key}.tls_fingerprint"),
                    "an rtsps:// camera needs tls_fingerprint (its certificate's SHA-256) or \
                     tls_ca_file to check who it is talking to",
                );
            }
            if tls && c.tls_ca_file.is_some() && c.tls_fingerprint.is_some() {
                e.push(
                    format!("{key}.tls_ca_file"),
                    "set tls_fingerprint or tls_ca_file, not both",
                );
            }
            if tls && c.transport == Transport::Udp {
                e.push(
                    format!("{key}.transport"),
                    "must be \"tcp\" for an rtsps:// camera (RTP goes inside the TLS connection)",
                );
            }
            if url.is_some() && !tls {
                for (set, k) in [
                    (c.tls_ca_file.is_some(), "tls_ca_file"),
                    (c.tls_fingerprint.is_some(), "tls_fingerprint"),
                ] {
                    if set {
                        e.push(format!("{key}.{k}"), "only for rtsps:// cameras");
                    }
                }
            }
            cameras.push(Camera {
                id: c.id,
                site: c.site,
                url: url.unwrap_or_else(|| url::Url::parse("rtsp://invalid/").expect("static URL")),
                username: c.username,
                password,
                transport: c.transport,
                allow_basic_auth: c.allow_basic_auth,
                tls_ca_file: c.tls_ca_file,
                tls_fingerprint,
                key,
            });
        }

        let mut roles = BTreeMap::new();
        for (name, r) in &self.roles {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                e.push(format!("roles.{name}"), "role names are [a-z_]");
            }
            match crate::roles::RolePermissions::parse(&r.permissions) {
                Ok(p) => {
                    roles.insert(name.clone(), p);
                }
                Err((i, msg)) => e.push(format!("roles.{name}.permissions[{i}]"), msg),
            }
        }
        let role_table = crate::roles::RoleTable::new(&roles);

        let mut names = HashSet::new();
        let mut users = Vec::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.trim().is_empty() {
                e.push(format!("{key}.name"), "must not be empty");
            } else if u.name == "-" || u.name == "holdfast" {
                e.push(
                    format!("{key}.name"),
                    format!("{:?} is reserved (the logbook uses it for the daemon itself or for requests without a valid token)", u.name),
                );
            } else if u.name.len() > 64
                || u.name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                e.push(
                    format!("{key}.name"),
                    "1 to 64 characters without spaces or control characters",
                );
            } else if !names.insert(u.name.to_lowercase()) {
                e.push(
                    format!("{key}.name"),
                    format!("duplicate user {:?}", u.name),
                );
            }
            if !role_table.contains(&u.role) && !self.roles.contains_key(&u.role) {
                let known: Vec<&str> = role_table.names().collect();
                e.push(
                    format!("{key}.role"),
                    format!("unknown role {:?}; one of {}", u.role, known.join(", ")),
                );
            }
            let mut token = [0u8; 32];
            if hex::decode_to_slice(u.token_sha256.trim(), &mut token).is_err() {
                e.push(
                    format!("{key}.token_sha256"),
                    "must be 64 hex digits (sha256sum of the token)",
                );
            }
            let sites = if u.sites.iter().any(|s| s == "*") {
                None
            } else {
                for (j, s) in u.sites.iter().enumerate() {
                    if !site_ids.contains(s) {
                        e.push(format!("{key}.sites[{j}]"), format!("unknown site {s:?}"));
                    }
                }
                Some(u.sites.clone())
            };
            users.push(User {
                name: u.name.clone(),
                role: u.role.clone(),
                token_sha256: token,
                sites,
            });
        }

        let data_dir = &self.storage.data_dir;
        let inside_data = |p: &Path| !data_dir.as_os_str().is_empty() && p.starts_with(data_dir);
        let lb = &self.logbook;
        match (&lb.key_file, lb.unkeyed) {
            (None, false) => e.push(
                "logbook.key_file",
                "is required: create one with `holdfast logbook init-key --config FILE` (or set \
                 logbook.unkeyed = true to run without a keyed chain)",
            ),
            (Some(_), true) => e.push(
                "logbook.unkeyed",
                "is true, but logbook.key_file is set too: choose one",
            ),
            (Some(k), false) if inside_data(k) => e.push(
                "logbook.key_file",
                "must lie outside storage.data_dir (whoever can write the data must not read the key)",
            ),
            _ => {}
        }
        let checkpoint_dir = lb
            .checkpoint_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/log/holdfast"));
        if inside_data(&checkpoint_dir) {
            e.push(
                "logbook.checkpoint_dir",
                "must lie outside storage.data_dir (it anchors the logbook against a rewrite there)",
            );
        }
        let checkpoint_interval = e.duration(
            "logbook.checkpoint_interval",
            lb.checkpoint_interval.as_deref().unwrap_or("1m"),
            Duration::from_secs(1),
            DAY,
        );
        let max_future = e.duration(
            "holds.max_future",
            self.holds.max_future.as_deref().unwrap_or("5m"),
            Duration::ZERO,
            DAY,
        );
        let mut max_range = BTreeMap::new();
        for (p, d) in KEYTAG_PURPOSE_DEFAULTS {
            max_range.insert(p.to_owned(), parse_duration(d).expect("valid default"));
        }
        for (p, d) in &self.keytags.max_range {
            let k = format!("keytags.max_range.{p}");
            if !max_range.contains_key(p) {
                let known: Vec<&str> = KEYTAG_PURPOSE_DEFAULTS.iter().map(|(p, _)| *p).collect();
                e.push(k, format!("unknown purpose; one of {}", known.join(", ")));
                continue;
            }
            let v = e.duration(&k, d, Duration::from_secs(1), 28 * DAY);
            max_range.insert(p.clone(), v);
        }

        if !e.0.is_empty() {
            return Err(ConfigErrors(e.0));
        }
        Ok(Config {
            storage: Storage {
                data_dir: self.storage.data_dir,
                bucket,
                segment_target,
                sync_interval,
                min_free,
                writer_queue,
            },
            http: Http {
                listen,
                metrics_require_auth: self.http.metrics_require_auth,
                tls_cert: self.http.tls_cert,
                tls_key: self.http.tls_key,
                header_timeout,
                idle_timeout,
                max_connections,
            },
            sweeper: Sweeper {
                interval: sweep_interval,
            },
            clock,
            policies,
            sites,
            cameras,
            users,
            roles,
            logbook: LogbookSettings {
                key_file: self.logbook.key_file,
                unkeyed: self.logbook.unkeyed,
                checkpoint_dir,
                checkpoint_interval,
            },
            holds: HoldSettings { max_future },
            keytags: KeytagSettings { max_range },
            console,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[storage]
data_dir = "/var/lib/holdfast"
bucket = "1h"

[policies.four-weeks]
video = "28d"
keytags = "28d"

[[sites]]
id = "maas-noord"
policy = "four-weeks"

[[cameras]]
id = "noord-entrance"
site = "maas-noord"
url = "rtsp://192.0.2.10:554/stream1"
username = "viewer"
password_env = "HOLDFAST_TEST_NEVER_SET"

[[users]]
name = "j.devries"
role = "manager"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
sites = ["maas-noord"]

[logbook]
key_file = "/etc/holdfast/logbook.key"
"#;

    #[test]
    fn console_defaults_and_values() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.console, ConsoleSettings::default());
        assert_eq!(c.console.session_idle, Duration::from_secs(900));
        let c = Config::parse(&format!(
            "{GOOD}\n[console]\ntimezone = \"America/New_York\"\nsession_idle = \"2s\"\n"
        ))
        .unwrap();
        assert_eq!(c.console.timezone, "America/New_York");
        assert_eq!(c.console.session_idle, Duration::from_secs(2));
    }

    #[test]
    fn console_errors_name_the_key() {
        let errs = errors(&format!(
            "{GOOD}\n[console]\ntimezone = \"Europe/Amsterdamm\"\nsession_idle = \"25h\"\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("console.timezone") && e.contains("Amsterdamm")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("console.session_idle")),
            "{errs:?}"
        );
        for bad in ["0s", "500ms", "soon"] {
            let errs = errors(&format!("{GOOD}\n[console]\nsession_idle = \"{bad}\"\n"));
            assert!(
                errs.iter().any(|e| e.starts_with("console.session_idle")),
                "{bad}: {errs:?}"
            );
        }
        let errs = errors(&format!("{GOOD}\n[console]\ntimezon = \"UTC\"\n"));
        assert!(errs.iter().any(|e| e.contains("console")), "{errs:?}");
    }

    fn errors(text: &str) -> Vec<String> {
        Config::parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn clock_settings_have_defaults_and_named_errors() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.clock, ClockSettings::default());
        assert_eq!(c.clock.jump_threshold, Duration::from_secs(600));
        assert_eq!(c.clock.jump_confirm, Duration::from_secs(3600));
        let c = Config::parse(&format!(
            "{GOOD}\n[clock]\njump_threshold = \"2m\"\njump_confirm = \"30m\"\n"
        ))
        .unwrap();
        assert_eq!(c.clock.jump_threshold, Duration::from_secs(120));
        assert_eq!(c.clock.jump_confirm, Duration::from_secs(1800));
        let errs = errors(&format!(
            "{GOOD}\n[clock]\njump_threshold = \"soon\"\njump_confirm = \"90d\"\n"
        ));
        assert!(
            errs.iter().any(|e| e.starts_with("clock.jump_threshold")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("clock.jump_confirm")),
            "{errs:?}"
        );
        let errs = errors(&format!("{GOOD}\n[clock]\njump = \"1m\"\n"));
        assert!(errs.iter().any(|e| e.contains("jump")), "{errs:?}");
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.storage.bucket_secs(), 3600);
        assert_eq!(c.storage.segment_target, Duration::from_secs(2));
        assert_eq!(c.storage.sync_interval, Duration::from_secs(1));
        assert_eq!(c.storage.min_free, MinFree::Percent(5.0));
        assert_eq!(c.sweeper.interval, Duration::from_secs(60));
        assert_eq!(
            c.policies["four-weeks"].video,
            Duration::from_secs(28 * 86_400)
        );
        assert_eq!(c.camera_policy(&c.cameras[0]), "four-weeks");
        assert_eq!(c.cameras[0].transport, Transport::Tcp);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8480");
    }

    #[test]
    fn every_error_names_its_key() {
        let bad = GOOD
            .replace(
                "bucket = \"1h\"",
                "bucket = \"7m\"\nsync_interval = \"soon\"\nmin_free = \"5 apples\"",
            )
            .replace("policy = \"four-weeks\"", "policy = \"two-weeks\"")
            .replace("keytags = \"28d\"", "keytags = \"60d\"")
            .replace("role = \"manager\"", "role = \"boss\"");
        let errs = errors(&bad);
        let keys: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            vec![
                "storage.bucket",
                "storage.sync_interval",
                "storage.min_free",
                "policies.four-weeks.keytags",
                "sites[0].policy",
                "users[0].role"
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let errs = errors(&GOOD.replace("bucket = \"1h\"", "bukket = \"1h\""));
        assert!(errs[0].contains("bukket"), "{errs:?}");
        let errs = errors(&GOOD.replace("bucket = \"1h\"", "bucket = 3600"));
        assert!(errs[0].starts_with("storage.bucket: "), "{errs:?}");
        let errs =
            errors(&GOOD.replace("[storage]\ndata_dir = \"/var/lib/holdfast\"", "[storage]"));
        assert!(errs[0].contains("data_dir"), "{errs:?}");
    }

    #[test]
    fn camera_urls_never_carry_or_echo_secrets() {
        let errs = errors(&GOOD.replace(
            "rtsp://192.0.2.10:554",
            "rtsp://admin:hunter2@192.0.2.10:554",
        ));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("cameras[0].url: must not contain credentials"));
        assert!(!errs[0].contains("hunter2"));
        let errs = errors(&GOOD.replace("rtsp://", "http://"));
        assert!(errs[0].starts_with("cameras[0].url:"));
    }

    #[test]
    fn credentials_must_be_complete() {
        let errs = errors(&GOOD.replace("password_env = \"HOLDFAST_TEST_NEVER_SET\"", ""));
        assert!(errs[0].starts_with("cameras[0].password_file:"), "{errs:?}");
        let c = Config::parse(GOOD).unwrap();
        let secret_errs = c.check_secrets();
        assert_eq!(secret_errs[0].key, "cameras[0].password_env");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        let text = GOOD.replace(
            "password_env = \"HOLDFAST_TEST_NEVER_SET\"",
            &format!("password_file = {:?}", p.display().to_string()),
        );
        let c = Config::parse(&text).unwrap();
        let secret = c.cameras[0].load_password().unwrap().unwrap();
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("28d").unwrap(),
            Duration::from_secs(28 * 86_400)
        );
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("1x").is_err());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config/holdfast.example.toml");
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.cameras.is_empty());
    }

    /// The Debian package's starting config (pkg/holdfast.toml, installed as
    /// /etc/holdfast/holdfast.toml): valid, nothing that needs a secret, no users (never a
    /// token anyone could know), the package's paths.
    #[test]
    fn package_config_is_valid_and_has_no_users() {
        let c =
            Config::parse(include_str!("../pkg/holdfast.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.users.is_empty() && c.cameras.is_empty());
        assert!(c.check_secrets().is_empty());
        assert_eq!(c.storage.data_dir, Path::new("/var/lib/holdfast"));
        assert_eq!(c.logbook.checkpoint_dir, Path::new("/var/log/holdfast"));
        assert_eq!(
            c.logbook.key_file.as_deref(),
            Some(Path::new("/etc/holdfast/secrets/logbook.key"))
        );
    }

    #[test]
    fn issue_8_keys_have_defaults_and_name_their_key() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.max_connections, 512);
        assert_eq!(c.holds.max_future, Duration::from_secs(300));
        assert_eq!(c.policies["four-weeks"].hold_review, 14 * DAY);
        assert_eq!(c.keytags.max_range["tag-check"], 7 * DAY);
        assert_eq!(c.keytags.max_range["witness-search"], DAY);
        assert_eq!(c.logbook.checkpoint_interval, Duration::from_secs(60));

        let no_key = GOOD.replace("[logbook]\nkey_file = \"/etc/holdfast/logbook.key\"\n", "");
        assert!(errors(&no_key)[0].starts_with("logbook.key_file: is required"));
        let unkeyed = format!("{no_key}\n[logbook]\nunkeyed = true\n");
        assert!(Config::parse(&unkeyed).unwrap().logbook.key_file.is_none());
        let inside = GOOD.replace("/etc/holdfast/logbook.key", "/var/lib/holdfast/k");
        assert!(errors(&inside)[0].starts_with("logbook.key_file: must lie outside"));

        let bad = format!(
            "{GOOD}\n[holds]\nmax_future = \"forever\"\n[keytags.max_range]\nwitness-search = \"30d\"\nbogus = \"1d\"\n"
        );
        let errs = errors(&bad);
        assert!(
            errs.iter().any(|e| e.starts_with("holds.max_future:")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("keytags.max_range.witness-search:")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("keytags.max_range.bogus:")),
            "{errs:?}"
        );
    }

    #[test]
    fn camera_urls_with_query_credentials_and_tls_settings() {
        let q = GOOD.replace("stream1", "stream1?user=admin&password=geheim");
        let errs = errors(&q);
        assert!(
            errs[0].starts_with("cameras[0].url: must not carry credentials"),
            "{errs:?}"
        );
        assert!(errs.iter().all(|e| !e.contains("geheim")));
        // A harmless query stays allowed.
        assert!(Config::parse(&GOOD.replace("stream1", "stream1?channel=1")).is_ok());

        let tls = GOOD.replace("rtsp://192.0.2.10:554", "rtsps://192.0.2.10:322");
        assert!(errors(&tls)[0].starts_with("cameras[0].tls_fingerprint: an rtsps://"));
        let fp = "AB:".repeat(31) + "AB";
        let pinned = tls.replace(
            "password_env = \"HOLDFAST_TEST_NEVER_SET\"",
            &format!("password_env = \"HOLDFAST_TEST_NEVER_SET\"\ntls_fingerprint = \"{fp}\""),
        );
        let c = Config::parse(&pinned).unwrap();
        assert_eq!(c.cameras[0].tls_fingerprint, Some([0xab; 32]));
        assert!(!c.cameras[0].allow_basic_auth);
        let plain_pinned = pinned.replace("rtsps://", "rtsp://");
        assert!(
            errors(&plain_pinned)[0].starts_with("cameras[0].tls_fingerprint: only for rtsps://")
        );
        let udp = pinned.replace(
            "tls_fingerprint =",
            "transport = \"udp\"\ntls_fingerprint =",
        );
        let errs = errors(&udp);
        assert!(
            errs[0].starts_with("cameras[0].transport: must be \"tcp\""),
            "{errs:?}"
        );
        let both = pinned.replace(
            "tls_fingerprint =",
            "tls_ca_file = \"/etc/holdfast/cam-ca.pem\"\ntls_fingerprint =",
        );
        let errs = errors(&both);
        assert!(
            errs[0].starts_with("cameras[0].tls_ca_file: set tls_fingerprint or"),
            "{errs:?}"
        );
    }

    #[test]
    fn user_names_are_unique_whatever_their_case_and_not_reserved() {
        let user = |name: &str| {
            format!(
                "\n[[users]]\nname = \"{name}\"\nrole = \"auditor\"\ntoken_sha256 = \"{}\"\nsites = [\"*\"]\n",
                "ab".repeat(32)
            )
        };
        let errs = errors(&format!("{GOOD}{}", user("J.DeVries")));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("users[1].name: duplicate")),
            "{errs:?}"
        );
        for reserved in ["-", "holdfast"] {
            let errs = errors(&format!("{GOOD}{}", user(reserved)));
            assert!(errs.iter().any(|e| e.contains("is reserved")), "{errs:?}");
        }
    }
}
