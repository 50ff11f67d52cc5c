//! The `holdfast` command line: the daemon and its maintenance commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use holdfast::config::Config;
use holdfast::logbook;
use holdfast::store::{recovery, Store};

/// The process allocator: mimalloc (per-thread free lists, no arena lock on the camera threads'
/// malloc/free of RTP buffers and frames); see design/performance.md for the measured gain.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// `mi_option_set` of the mimalloc library that `mimalloc` links (libmimalloc-sys 0.1.49
    /// builds mimalloc v3 unless its `v2` feature is on).
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}
/// `mi_option_purge_delay` in `mi_option_e` (include/mimalloc.h): 15 in both v2 and v3.
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// Frames are allocated on the camera threads and freed on the writer thread once copied: with
/// mimalloc's default purge (10 ms after pages empty) the freed pages went back to the OS and
/// were faulted in and zeroed again for the next frames (`clear_page` was 8% of the daemon's CPU
/// at N = 200). Never purging keeps them: the peak stays bounded by the writer's queue limit,
/// and the daemon's CPU per frame drops 10-15% (design/performance.md).
fn tune_allocator() {
    // SAFETY: plain setter of a global option, valid at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[derive(Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Records RTSP cameras; keeps footage exactly as long as policy allows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon (what systemd starts).
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Start although most bucket files are missing (a disk lost for good, not one that is
        /// not mounted): their index entries are forgotten and a `store.files_lost` logbook
        /// entry records it.
        #[arg(long)]
        accept_missing_files: bool,
    },
    /// Runs simulated cameras and the daemon on a temporary data directory.
    Demo {
        /// Number of simulated cameras.
        #[arg(long, default_value_t = 4)]
        cameras: usize,
        /// Address of the HTTP API.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: std::net::SocketAddr,
    },
    /// Serves N simulated cameras (rtsp://ADDR/cam0 ..) looping an H.264 clip.
    Camsim {
        /// Number of streams.
        #[arg(long)]
        streams: usize,
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// An H.264 Annex B clip without B-frames (default: the shipped 720p 4 Mbit/s clip).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Frames per second of the clip.
        #[arg(long, default_value_t = 25)]
        fps: u32,
    },
    /// Validates a config file; prints every error with its key; exit 1 on error.
    CheckConfig {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Rebuilds the index from the bucket files (the daemon must be stopped). Never rebuilds the
    /// logbook: refuses when the logbook is missing, cut or disagrees with its checkpoints.
    Reindex {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Go on when the logbook was lost or cut, appending a `logbook.lost` entry that records
        /// the loss (and the last checkpoint it knew) in the chain.
        #[arg(long)]
        force: bool,
    },
    /// Checks every indexed segment against its bytes on disk (CRC); exit 1 on damage.
    Verify {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Copies the index and the logbook (a consistent RocksDB checkpoint, made by the running
    /// daemon or, when none runs, by this command) and the logbook checkpoint file to DIR, with
    /// a MANIFEST.json; logged as `store.backup`. Not the footage, not the logbook key. Needs
    /// write access to the data directory (the daemon's user or root).
    Backup {
        /// Where to put the backup: a new or empty directory.
        dir: PathBuf,
        /// The config file.
        #[arg(long, default_value = "/etc/holdfast/holdfast.toml")]
        config: PathBuf,
    },
    /// The logbook.
    Logbook {
        #[command(subcommand)]
        what: LogbookCommand,
    },
    /// The trusted clock (wall-clock jumps).
    Clock {
        #[command(subcommand)]
        what: ClockCommand,
    },
    /// API users in the config file.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Adds a user: prints a new bearer token once (it is stored nowhere) and appends a [[users]]
    /// entry with its SHA-256 to the config (the rest of the file is kept as it is). Refuses,
    /// writing nothing, when the name exists, the role or a site is unknown, or the config would
    /// not validate.
    Add {
        /// The user's name (as the logbook shows it).
        name: String,
        /// The role (manager, consultant, caretaker, technician, privacy_officer,
        /// access_system, auditor, or one of the config's [roles.NAME]).
        #[arg(long)]
        role: String,
        /// Site ids the user may act on, comma-separated, or `*` for all.
        #[arg(long)]
        sites: String,
        /// The config file.
        #[arg(long, default_value = "/etc/holdfast/holdfast.toml")]
        config: PathBuf,
    },
    /// Lists the config's users: name, role, sites (never token hashes).
    List {
        /// The config file.
        #[arg(long, default_value = "/etc/holdfast/holdfast.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClockCommand {
    /// Tells the daemon running with this config to trust the wall clock now, after a jump it
    /// holds back (recorded in the logbook as `clock.accept` by `cli:<user>`). Needs write access
    /// to the data directory (the daemon's user or root); waits up to 15 s for the answer.
    Accept {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogbookCommand {
    /// Checks the chain (MACs with logbook.key_file), the head record and every checkpoint;
    /// prints the head; exit 1 naming the first bad seq, or the cut tail, on tampering.
    /// Works while the daemon runs (opens the index read-only).
    Verify {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Creates logbook.key_file (a random 32-byte key, mode 0600, its directory 0700 if
    /// missing); never overwrites an existing key; never prints the key.
    InitKey {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Continues an unkeyed logbook keyed (once, the daemon stopped): checks the whole unkeyed
    /// chain, then appends a `logbook.keyed` entry; every later entry is linked with the key.
    Seal {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    init_logging();
    // A panic's message goes through the same scrubbing as every log line (a camera task that
    // panics on a hostile stream must not print its URL).
    std::panic::set_hook(Box::new(|info| {
        let text = holdfast::ingest::redact::scrub_rtsp_urls(&info.to_string());
        tracing::error!(panic = %text, "panicked");
    }));
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            accept_missing_files,
        } => with_config(&config, |c| {
            let opts = holdfast::daemon::RunOptions {
                accept_missing_files,
                config_path: Some(config.clone()),
            };
            match tokio_runtime()?.block_on(holdfast::daemon::run_with(c, None, opts)) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if e.downcast_ref::<holdfast::daemon::WriterDied>().is_some() => {
                    eprintln!("error: {e:#}");
                    Ok(ExitCode::from(holdfast::daemon::EXIT_WRITER_DIED))
                }
                Err(e) => Err(e),
            }
        }),
        Command::Demo { cameras, listen } => {
            report(tokio_runtime().and_then(|rt| rt.block_on(holdfast::demo::run(cameras, listen))))
        }
        Command::Camsim {
            streams,
            listen,
            clip,
            fps,
        } => report(tokio_runtime().and_then(|rt| {
            rt.block_on(async {
                let data = match clip {
                    Some(p) => std::fs::read(&p)
                        .map_err(|e| anyhow::anyhow!("--clip {}: {e}", p.display()))?,
                    None => holdfast::camsim::DEFAULT_CLIP.to_vec(),
                };
                let clip = holdfast::camsim::clip::Clip::from_annex_b(&data)?;
                let sim = holdfast::camsim::Camsim::start(
                    listen,
                    clip,
                    holdfast::camsim::CamsimConfig { streams, fps },
                )
                .await?;
                println!(
                    "camsim: {streams} streams at {} .. {}",
                    sim.url(0),
                    sim.url(streams.saturating_sub(1))
                );
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r?,
                    _ = term.recv() => {}
                }
                let stats = sim.stats.clone();
                sim.stop();
                use std::sync::atomic::Ordering::Relaxed;
                println!(
                    "camsim-stats sessions={} frames_sent={} packets_sent={} frames_unsent={}",
                    stats.sessions.load(Relaxed),
                    stats.frames_sent.load(Relaxed),
                    stats.packets_sent.load(Relaxed),
                    stats.frames_unsent.load(Relaxed)
                );
                Ok(())
            })
        })),
        Command::CheckConfig { config } => check_config(&config),
        Command::Reindex { config, force } => with_config(&config, |c| reindex(&c, force)),
        Command::Logbook {
            what: LogbookCommand::Verify { config },
        } => with_config(&config, |c| logbook_verify(&c)),
        Command::Logbook {
            what: LogbookCommand::InitKey { config },
        } => with_config(&config, |c| logbook_init_key(&c)),
        Command::Logbook {
            what: LogbookCommand::Seal { config },
        } => with_config(&config, |c| {
            let index = holdfast::store::index::Index::open(&c.storage.data_dir.join("index"))?;
            let lb = holdfast::logbook::Logbook::seal(&index, &c.logbook)?;
            lb.checkpoint()?;
            let head = lb.head();
            println!(
                "logbook sealed: keyed from seq {} on; head {} at seq {}",
                head.seq, head.mac, head.seq
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Clock {
            what: ClockCommand::Accept { config },
        } => with_config(&config, |c| {
            let by = cli_user();
            let msg = holdfast::wallclock::request_accept(
                &c.storage.data_dir,
                &by,
                std::time::Duration::from_secs(15),
            )?;
            println!("clock: {msg}");
            Ok(ExitCode::SUCCESS)
        }),
        Command::User {
            what:
                UserCommand::Add {
                    name,
                    role,
                    sites,
                    config,
                },
        } => report(user_add(&config, name, role, &sites)),
        Command::User {
            what: UserCommand::List { config },
        } => with_config(&config, |c| {
            for line in holdfast::users::list_lines(&c) {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Backup { dir, config } => with_config(&config, |c| {
            let m = holdfast::backup::run(&c, &dir, &cli_user())?;
            println!(
                "backup: {} files in {}; logbook {} entries (head {}), the store.backup entry \
                 is seq {}; made by {}",
                m.files.len(),
                dir.display(),
                m.logbook_entries,
                m.logbook_head,
                m.backup_entry,
                if m.daemon_running {
                    "the running daemon"
                } else {
                    "this command (no daemon running)"
                }
            );
            for n in &m.not_included {
                println!("not included: {n}");
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify { config } => with_config(&config, |c| {
            let (store, report) = Store::open(&c.storage.data_dir, c.storage.bucket_secs())?;
            println!("recovery: {report}");
            let v = store.verify()?;
            for line in &v.bad {
                println!("bad: {line}");
            }
            println!(
                "verify: {} segments ({} bytes) intact, {} bad",
                v.segments,
                v.bytes,
                v.bad.len()
            );
            Ok(if v.bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
    }
}

/// `holdfast user add`: the token goes to stdout once, with what to do next.
fn user_add(
    config: &std::path::Path,
    name: String,
    role: String,
    sites: &str,
) -> anyhow::Result<()> {
    let sites = holdfast::users::parse_sites(sites)?;
    let user = holdfast::users::NewUser { name, role, sites };
    let token = holdfast::users::add_user(config, &user)?;
    println!(
        "added user {:?} (role {}, sites {}) to {}",
        user.name,
        user.role,
        user.sites.join(","),
        config.display()
    );
    println!("token: {}", token.expose());
    println!(
        "This token is shown only now and is not stored anywhere (the config keeps its SHA-256): \
         hand it to the user. Make the running daemon use it: systemctl reload holdfast"
    );
    Ok(())
}

/// Who runs this command, for the logbook: the sudo user or the user, and the uid.
fn cli_user() -> String {
    let by = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    // SAFETY: getuid has no preconditions.
    format!("{by} (uid {})", unsafe { libc::getuid() })
}

/// `holdfast reindex`: refuses (unless `force`) when the logbook is gone or cut, because a
/// rebuilt index would otherwise carry an empty logbook that verifies.
fn reindex(c: &Config, force: bool) -> anyhow::Result<ExitCode> {
    let checkpoints = logbook::Checkpoints::read(&c.logbook.checkpoint_dir)?;
    let key = load_key(c)?;
    let index_dir = c.storage.data_dir.join("index");
    let mut cause = None;
    if !index_dir.exists() {
        if let Some(cp) = checkpoints.newest() {
            cause = Some(format!(
                "the index directory {} is missing, but the checkpoint at seq {} (written {}) in \
                 {} shows the logbook had entries 1..{}",
                index_dir.display(),
                cp.seq,
                cp.time,
                checkpoints.path.display(),
                cp.seq
            ));
        }
    }
    let refuse = |cause: &str| {
        anyhow::anyhow!(
            "refusing to reindex: {cause}. reindex never rebuilds the logbook from footage: \
             restore {} from a backup, or run `holdfast reindex --force --config FILE` to go on \
             with an entry in the logbook that records the loss",
            index_dir.display()
        )
    };
    if let (Some(cause), false) = (&cause, force) {
        return Err(refuse(cause));
    }
    let store = Store::open_without_recovery(&c.storage.data_dir)?;
    if cause.is_none() {
        cause = logbook::check_before_reindex(store.index(), key.as_ref(), &checkpoints)?.err();
    }
    if let Some(cause) = cause {
        if !force {
            return Err(refuse(&cause));
        }
        let e = logbook::record_loss(
            store.index(),
            key,
            Some(&c.logbook.checkpoint_dir),
            &checkpoints,
            &cause,
        )?;
        println!(
            "reindex --force: the loss is recorded as logbook entry {} ({}): {cause}",
            e.entry.seq,
            logbook::ACTION_LOST
        );
    }
    let report = recovery::reindex(&store, c.storage.bucket_secs()).context(
        "reindex stopped: the index now holds the files before the one named; fix the disk and \
         run reindex again (or start the daemon: its recovery indexes the files not yet indexed)",
    )?;
    println!("reindex: {report}");
    Ok(ExitCode::SUCCESS)
}

fn load_key(c: &Config) -> anyhow::Result<Option<logbook::LogbookKey>> {
    Ok(c.logbook
        .key_file
        .as_deref()
        .map(logbook::LogbookKey::load)
        .transpose()?)
}

/// `holdfast logbook verify`: the chain, the head record and every checkpoint.
fn logbook_verify(c: &Config) -> anyhow::Result<ExitCode> {
    // Checkpoints first: every line read then refers to entries already synced to the index.
    let checkpoints = logbook::Checkpoints::read(&c.logbook.checkpoint_dir)?;
    let key = load_key(c)?;
    let index_dir = c.storage.data_dir.join("index");
    if !index_dir.exists() {
        return match checkpoints.newest() {
            Some(cp) => {
                println!(
                    "logbook TAMPERED: first bad seq 1: entries 1..{} were cut: the index \
                     directory {} is missing; checkpoint at seq {} (written {}) in {}",
                    cp.seq,
                    index_dir.display(),
                    cp.seq,
                    cp.time,
                    checkpoints.path.display()
                );
                Ok(ExitCode::FAILURE)
            }
            None => Err(anyhow::anyhow!(
                "no index at {} (and no checkpoints in {})",
                index_dir.display(),
                checkpoints.path.display()
            )),
        };
    }
    let index = holdfast::store::index::Index::open_read_only(&index_dir)?;
    let v = logbook::verify(&index, key.as_ref(), Some(&checkpoints))?;
    if v.ok {
        println!(
            "logbook intact: {} entries, head hash {}",
            v.entries,
            v.head_hash.as_deref().unwrap_or_default()
        );
        match v.keyed_from {
            Some(1) => println!("chain: keyed (HMAC-SHA256) from seq 1"),
            Some(k) => println!(
                "chain: plain SHA-256 up to seq {}, keyed (HMAC-SHA256) from seq {k}",
                k - 1
            ),
            None if v.entries == 0 => println!("chain: empty"),
            None => println!("chain: plain SHA-256 (unkeyed)"),
        }
        println!(
            "checkpoints: {} checked in {}{}",
            v.checkpoints_checked,
            checkpoints.path.display(),
            checkpoints
                .newest()
                .map(|c| format!("; newest at seq {} ({})", c.seq, c.time))
                .unwrap_or_default()
        );
    } else {
        let problem = v.problem.as_deref().unwrap_or_default();
        match v.first_bad_seq {
            Some(seq) => println!("logbook TAMPERED: first bad seq {seq}: {problem}"),
            None => println!("logbook TAMPERED: {problem}"),
        }
    }
    for note in &v.notes {
        println!("note: {note}");
    }
    Ok(if v.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `holdfast logbook init-key`: a new key at `logbook.key_file`, never over an existing one.
fn logbook_init_key(c: &Config) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(path) = &c.logbook.key_file else {
        anyhow::bail!(
            "logbook.key_file is not set (the config runs the logbook unkeyed): set \
             logbook.key_file, remove logbook.unkeyed, then run init-key again"
        );
    };
    if path.exists() {
        anyhow::bail!(
            "logbook.key_file {}: exists already; not overwritten (entries linked with the old \
             key could no longer be checked)",
            path.display()
        );
    }
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                anyhow::anyhow!("logbook.key_file: cannot create {}: {e}", dir.display())
            })?;
    }
    logbook::write_new_key(path)
        .map_err(|e| anyhow::anyhow!("logbook.key_file {}: cannot create: {e}", path.display()))?;
    println!(
        "logbook key written to {} (mode 0600). Make it readable by the user the daemon runs as \
         only (e.g. `chown holdfast: {}`). Keep a copy offline, apart from backups of the data \
         directory: without it the chain cannot be checked, and whoever holds it can rewrite \
         the logbook.",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Plain text to stderr, or journald with structured fields when stderr is the journal stream
/// (`holdfast::service::JournalLayer`). Camera URLs (retina logs them through `log`) never
/// reach either.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let plain =
        tracing_subscriber::fmt::layer().with_writer(holdfast::ingest::redact::ScrubbingWriter);
    let registry = tracing_subscriber::registry().with(filter);
    if holdfast::service::journal_stream_is_stderr() {
        // Without the journal's timestamps doubled: journald stamps each entry itself.
        let fallback = tracing_subscriber::fmt::layer()
            .without_time()
            .with_writer(holdfast::ingest::redact::ScrubbingWriter);
        match holdfast::service::JournalLayer::new(Box::new(fallback)) {
            Ok(journal) => {
                registry.with(journal).init();
                return;
            }
            Err(e) => {
                registry.with(plain).init();
                tracing::warn!(error = %e, "journald not reachable: logging plain text to stderr");
                return;
            }
        }
    }
    registry.with(plain).init();
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            let secret_errors = c.check_secrets();
            if !secret_errors.is_empty() {
                for e in secret_errors {
                    println!("error: {e}");
                }
                return ExitCode::FAILURE;
            }
            println!(
                "{}: ok ({} policies, {} sites, {} cameras, {} users)",
                path.display(),
                c.policies.len(),
                c.sites.len(),
                c.cameras.len(),
                c.users.len()
            );
            for w in orphan_policy_warnings(&c) {
                println!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in errs.0 {
                println!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Warnings about footage on disk of policies the config no longer has (renamed or removed):
/// it still expires, by the retention recorded in its buckets or its cameras' current policy
/// if shorter. Reads the index read-only (also while the daemon runs); no data dir, no warning.
fn orphan_policy_warnings(c: &Config) -> Vec<String> {
    let index_dir = c.storage.data_dir.join("index");
    if !index_dir.exists() {
        return Vec::new();
    }
    let buckets = match holdfast::store::index::Index::open_read_only(&index_dir)
        .and_then(|i| i.buckets(None))
    {
        Ok(b) => b,
        Err(e) => {
            return vec![format!(
                "could not read the index in {} to look for footage of removed policies: {e}",
                index_dir.display()
            )]
        }
    };
    let mut orphans: std::collections::BTreeMap<&str, (u64, u64, Vec<Option<u64>>)> =
        Default::default();
    for b in &buckets {
        if b.expired || c.policies.contains_key(&b.policy) {
            continue;
        }
        let o = orphans.entry(&b.policy).or_default();
        o.0 += 1;
        o.1 += b.committed_len;
        if !o.2.contains(&b.retention_secs) {
            o.2.push(b.retention_secs);
        }
    }
    orphans
        .into_iter()
        .map(|(policy, (n, bytes, rets))| {
            let rets: Vec<String> = rets
                .iter()
                .map(|r| r.map_or("unknown".to_owned(), |s| format!("{s}s")))
                .collect();
            format!(
                "policy {policy:?} is not in the config but {n} bucket(s) of it ({bytes} bytes)                  are on disk: they expire by their recorded retention ({}) or their cameras'                  current policy if shorter (if it was renamed, that is expected)",
                rets.join(", ")
            )
        })
        .collect()
}

fn with_config(
    path: &std::path::Path,
    f: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            for e in errs.0 {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    match f(config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
