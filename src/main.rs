//! The `holdfast` command line: the daemon and its maintenance commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use holdfast::config::Config;
use holdfast::store::{recovery, Store};

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
    /// Rebuilds the index from the bucket files (the daemon must be stopped).
    Reindex {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Checks every indexed segment against its bytes on disk (CRC); exit 1 on damage.
    Verify {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// The logbook.
    Logbook {
        #[command(subcommand)]
        what: LogbookCommand,
    },
}

#[derive(Subcommand)]
enum LogbookCommand {
    /// Checks the hash chain; prints the head hash; exit 1 and the first bad seq on tampering.
    /// Works while the daemon runs (opens the index read-only).
    Verify {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Camera URLs (retina logs them through `log`) never reach the log.
        .with_writer(holdfast::ingest::redact::ScrubbingWriter)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => with_config(&config, |c| {
            tokio_runtime()?.block_on(holdfast::daemon::run(c, None))?;
            Ok(ExitCode::SUCCESS)
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
                    "camsim-stats sessions={} frames_sent={} packets_sent={}",
                    stats.sessions.load(Relaxed),
                    stats.frames_sent.load(Relaxed),
                    stats.packets_sent.load(Relaxed)
                );
                Ok(())
            })
        })),
        Command::CheckConfig { config } => check_config(&config),
        Command::Reindex { config } => with_config(&config, |c| {
            let store = Store::open_without_recovery(&c.storage.data_dir)?;
            let report = recovery::reindex(&store, c.storage.bucket_secs())?;
            println!("reindex: {report}");
            Ok(ExitCode::SUCCESS)
        }),
        Command::Logbook {
            what: LogbookCommand::Verify { config },
        } => with_config(&config, |c| {
            let index =
                holdfast::store::index::Index::open_read_only(&c.storage.data_dir.join("index"))?;
            let v = holdfast::logbook::Logbook::verify(&index)?;
            if v.ok {
                println!(
                    "logbook intact: {} entries, head hash {}",
                    v.entries,
                    v.head_hash.unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "logbook TAMPERED: first bad seq {}: {}",
                    v.first_bad_seq.unwrap_or(0),
                    v.problem.unwrap_or_default()
                );
                Ok(ExitCode::FAILURE)
            }
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
