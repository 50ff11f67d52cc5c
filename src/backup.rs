//! `holdfast backup DIR`: a consistent copy of the index (with the logbook, which lives in the
//! same RocksDB) and of the logbook checkpoint file, taken while the daemon records.
//!
//! RocksDB makes a consistent copy with a checkpoint (hard links of the immutable SST files, a
//! copy of the manifest and WAL), but only from the process that has the database open for
//! writing: a read-only or secondary instance answers `DisableFileDeletions` with
//! `NotSupported` ("Not supported operation in read only mode", `db_impl_readonly.h`), and the
//! daemon holds the database's lock. So while the daemon runs, the CLI asks it, the way
//! `holdfast clock accept` does (crate::wallclock): it writes [`REQUEST_FILE`] (mode 0600, renamed
//! into place) into the data directory; the daemon's backup thread appends a `store.backup`
//! logbook entry (who, where to), creates the checkpoint in a staging directory inside the data
//! directory (the hardened unit may write only there) and answers in [`RESULT_FILE`]; the CLI
//! copies the staging directory to DIR and removes it. Without a running daemon (nobody holds
//! the database's lock), the CLI opens the database and does the same itself.
//!
//! The checkpoint file is copied before the index is checkpointed, so every checkpoint line in
//! the backup names an entry the backed-up logbook holds. DIR also gets `MANIFEST.json` (what was
//! copied, with SHA-256 and size of every file, the logbook head, what is not in the backup).
//! The footage (bucket files) and the logbook key are never copied.
//!
//! Run as root against the packaged daemon (user `holdfast`), the CLI gives the request file to
//! the data directory's owner (`write_request`) so the daemon can read it. It does not trust
//! the daemon's user: it derives the staging path itself from its nonce, checks it is a real
//! directory owned by the data directory's owner, and copies only regular files and directories
//! (a symlink is refused by name). One backup runs at a time: the CLI holds an exclusive
//! `flock` on the data directory for the whole backup, and a second is refused at once; the
//! daemon removes staging directories of dead requests before it answers a new one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::logbook::{Logbook, NewEntry, CHECKPOINT_FILE};
use crate::store::index::Index;

/// File name (in the data directory) of a backup request from the CLI.
pub const REQUEST_FILE: &str = "backup.request";
/// File name (in the data directory) of the daemon's answer.
pub const RESULT_FILE: &str = "backup.result";
/// Prefix of the staging directories the daemon checkpoints into (inside the data directory).
pub const STAGING_PREFIX: &str = "backup-staging-";
/// Logbook action of a backup.
pub const ACTION_BACKUP: &str = "store.backup";
/// How long a request stays valid (by the wall clock; the CLI waits this long too).
const REQUEST_TTL: Duration = Duration::from_secs(60);
/// Staging directories older than this are removed when the daemon starts (left by a CLI that
/// was killed while copying).
const STAGING_STALE: Duration = Duration::from_secs(3600);

/// A backup request from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Request {
    by: String,
    dest: String,
    nonce: u64,
    /// Unix seconds when it was written.
    created: u64,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    nonce: u64,
    /// The checkpoint (a directory inside the data directory), on success.
    staging: Option<PathBuf>,
    /// The seq of the `store.backup` entry, on success.
    entry_seq: Option<u64>,
    message: String,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends the `store.backup` entry, then writes a RocksDB checkpoint of `index` to `dest`
/// (which must not exist; its parent must). Returns the entry's seq: the backup holds it.
pub fn checkpoint(
    index: &Index,
    logbook: &Logbook,
    by: &str,
    to: &str,
    dest: &Path,
) -> anyhow::Result<u64> {
    let e = logbook
        .append(
            index,
            NewEntry {
                user: format!("cli:{by}"),
                role: "-".into(),
                action: ACTION_BACKUP.into(),
                object: serde_json::json!({ "dir": to }),
                text: Some(format!("holdfast backup of the index and logbook to {to}")),
                ..Default::default()
            },
        )
        .context("writing the store.backup logbook entry")?;
    rocksdb::checkpoint::Checkpoint::new(index.db())
        .and_then(|c| c.create_checkpoint(dest))
        .map_err(|e| anyhow::anyhow!("RocksDB checkpoint into {}: {e}", dest.display()))?;
    Ok(e.entry.seq)
}

/// The daemon's backup thread: answers requests of `holdfast backup` (checked every 500 ms).
pub struct Responder {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    /// Removes stale staging directories, then starts the thread.
    pub fn spawn(
        store: Arc<crate::store::Store>,
        logbook: Arc<Logbook>,
        data_dir: PathBuf,
    ) -> std::io::Result<Self> {
        remove_stale_staging(&data_dir, STAGING_STALE);
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("holdfast-backup".into())
            .spawn(move || loop {
                if let Some(req) = read_request(&data_dir) {
                    answer(&store, &logbook, &data_dir, req);
                }
                if !matches!(
                    rx.recv_timeout(Duration::from_millis(500)),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
            })?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread (after a backup that is running).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Removes the staging directories in `data_dir` older than `max_age`.
fn remove_stale_staging(data_dir: &Path, max_age: Duration) {
    let Ok(dir) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in dir.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= max_age);
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) && stale {
            tracing::warn!(path = %e.path().display(), "backup: removing a stale staging directory");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Reads a request file left by a CLI in the data directory: a regular file (not a link), at
/// most 4 KiB, owned by this process's user or root (the CLI run as root gives it to the data
/// directory's owner, [`write_request`]), parsed as JSON. `None`: there is none; `Some(None)`:
/// one that is not a valid request (the caller removes it).
pub(crate) fn read_request_file<T: serde::de::DeserializeOwned>(path: &Path) -> Option<Option<T>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let ok =
        meta.file_type().is_file() && meta.len() <= 4096 && (meta.uid() == me || meta.uid() == 0);
    Some(
        ok.then(|| std::fs::read(path).ok())
            .flatten()
            .and_then(|b| serde_json::from_slice::<T>(&b).ok()),
    )
}

/// Reads and removes a pending backup request; an invalid one is removed and ignored.
fn read_request(data_dir: &Path) -> Option<Request> {
    let path = data_dir.join(REQUEST_FILE);
    let req = read_request_file::<Request>(&path)?;
    let _ = std::fs::remove_file(&path);
    if req.is_none() {
        tracing::warn!(path = %path.display(), "backup: an invalid request was removed");
    }
    req
}

fn answer(store: &crate::store::Store, logbook: &Logbook, data_dir: &Path, req: Request) {
    let now = unix_now();
    let result = if req.created > now + 5 || now - req.created > REQUEST_TTL.as_secs() {
        tracing::warn!(by = %req.by, "backup: a request older than a minute was ignored");
        Answer {
            nonce: req.nonce,
            staging: None,
            entry_seq: None,
            message: "the request was too old; ignored".into(),
        }
    } else {
        // The CLI holds the data directory's lock for its whole backup: any staging directory
        // present now was left by a CLI that died.
        remove_stale_staging(data_dir, Duration::ZERO);
        let staging = staging_dir(data_dir, req.nonce);
        let dest = staging.join("index");
        let r = std::fs::create_dir(&staging)
            .with_context(|| format!("creating {}", staging.display()))
            .and_then(|()| checkpoint(store.index(), logbook, &req.by, &req.dest, &dest));
        match r {
            Ok(seq) => {
                tracing::info!(by = %req.by, to = %req.dest, entry = seq, "backup: index checkpoint made");
                Answer {
                    nonce: req.nonce,
                    staging: Some(staging),
                    entry_seq: Some(seq),
                    message: "checkpoint made".into(),
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "backup: checkpoint failed");
                let _ = std::fs::remove_dir_all(&staging);
                Answer {
                    nonce: req.nonce,
                    staging: None,
                    entry_seq: None,
                    message: format!("the daemon could not make the checkpoint: {e:#}"),
                }
            }
        }
    };
    let tmp = data_dir.join(format!("{RESULT_FILE}.tmp"));
    let written = write_private(&tmp, &serde_json::to_vec(&result).expect("serialises"))
        .and_then(|()| std::fs::rename(&tmp, data_dir.join(RESULT_FILE)));
    if let Err(e) = written {
        tracing::error!(error = %e, "backup: could not write the answer");
    }
}

/// Writes `body` to a new file at `path` (an old one removed first) with mode 0600, synced.
pub(crate) fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = create_private(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// Creates a new file at `path` (an old one removed first) with mode 0600.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// The staging directory of the request `nonce` (both sides derive it; the CLI never takes a path
/// from the daemon's answer).
fn staging_dir(data_dir: &Path, nonce: u64) -> PathBuf {
    data_dir.join(format!("{STAGING_PREFIX}{nonce}"))
}

/// Writes a request file `path` (mode 0600, created new) in `data_dir` for the daemon to read:
/// when this process's euid is not the data directory's owner (root running the CLI against the
/// packaged daemon's `holdfast` user), the file is given to the owner (uid and gid) before it is
/// renamed into place, so the daemon (no capabilities) can read and remove it.
pub(crate) fn write_request(data_dir: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(data_dir)?;
    let mut f = create_private(path)?;
    let r = (|| {
        if needs_chown(owner.uid()) {
            std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid())).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "giving {} to the data directory's owner (uid {}): {e}",
                        path.display(),
                        owner.uid()
                    ),
                )
            })?;
        }
        f.write_all(body)?;
        f.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Whether a file this process creates must be given to `owner` (this euid is another user).
fn needs_chown(owner: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    owner != unsafe { libc::geteuid() }
}

/// An exclusive `flock` on the data directory, held for a whole backup (released on drop).
struct BackupLock {
    _held: std::fs::File,
}

impl BackupLock {
    /// Takes the lock, or refuses at once when another backup holds it.
    fn take(data_dir: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(data_dir)
            .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
        // SAFETY: fd is open for the duration of the call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                anyhow::bail!(
                    "another holdfast backup of {} is running (it holds the data directory's lock); wait for it to finish and run this one again",
                    data_dir.display()
                );
            }
            anyhow::bail!("locking the data directory {}: {e}", data_dir.display());
        }
        Ok(Self { _held: f })
    }
}

/// Checks the staging directory the daemon made: a real directory (not a link), owned by
/// `owner` (the data directory's owner).
fn check_staging(staging: &Path, owner: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(staging)
        .with_context(|| format!("the staging directory {}", staging.display()))?;
    if !m.file_type().is_dir() {
        anyhow::bail!(
            "the staging directory {} is not a directory (a symlink or other file): refused",
            staging.display()
        );
    }
    if m.uid() != owner {
        anyhow::bail!(
            "the staging directory {} belongs to uid {}, not to the data directory's owner (uid {owner}): refused",
            staging.display(),
            m.uid()
        );
    }
    Ok(())
}

/// Whether another process holds RocksDB's lock on the index (`LOCK`, an fcntl write lock):
/// the daemon runs on it.
pub fn index_locked(index_dir: &Path) -> anyhow::Result<bool> {
    use std::os::fd::AsRawFd;
    let path = index_dir.join("LOCK");
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    // SAFETY: a zeroed flock is a valid argument; F_GETLK only fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fd is open for the duration of the call; fl is a valid flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if r != 0 {
        return Err(anyhow::anyhow!(
            "{}: cannot test the lock: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Asks the daemon running on `data_dir` for a checkpoint; returns the staging directory (derived
/// from the nonce, checked) and the seq of the `store.backup` entry. The caller holds the
/// [`BackupLock`].
fn request(data_dir: &Path, by: &str, dest: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let nonce = u64::from(std::process::id()) << 32 | u64::from(rand::random::<u32>());
    let req = Request {
        by: by.to_owned(),
        dest: dest.display().to_string(),
        nonce,
        created: unix_now(),
    };
    let result_path = data_dir.join(RESULT_FILE);
    let _ = std::fs::remove_file(&result_path);
    let tmp = data_dir.join(format!("{REQUEST_FILE}.{}", std::process::id()));
    write_request(
        data_dir,
        &tmp,
        &serde_json::to_vec(&req).expect("serialises"),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot write the backup request in {}: {e} (run as the daemon's user or root)",
            data_dir.display()
        )
    })?;
    std::fs::rename(&tmp, data_dir.join(REQUEST_FILE))?;
    let deadline = std::time::Instant::now() + REQUEST_TTL;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(b) = std::fs::read(&result_path) else {
            continue;
        };
        let Ok(a) = serde_json::from_slice::<Answer>(&b) else {
            continue;
        };
        if a.nonce != nonce {
            continue;
        }
        let _ = std::fs::remove_file(&result_path);
        return match (a.staging, a.entry_seq) {
            (Some(_), Some(seq)) => {
                use std::os::unix::fs::MetadataExt;
                let staging = staging_dir(data_dir, nonce);
                check_staging(&staging, std::fs::metadata(data_dir)?.uid())?;
                Ok((staging, seq))
            }
            _ => Err(anyhow::anyhow!("{}", a.message)),
        };
    }
    let _ = std::fs::remove_file(data_dir.join(REQUEST_FILE));
    Err(anyhow::anyhow!(
        "no answer from the daemon on {} within {}s (it holds the index's lock, so it runs: is \
         it an older version without backup support, or stuck?)",
        data_dir.display(),
        REQUEST_TTL.as_secs()
    ))
}

/// One file of the backup in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path inside the backup directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the content (hex).
    pub sha256: String,
}

/// `MANIFEST.json` of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The holdfast version that wrote it.
    pub holdfast_version: String,
    /// When (RFC 3339, UTC).
    pub created: String,
    /// Who ran the backup.
    pub by: String,
    /// Whether the running daemon made the checkpoint (else the CLI did, the daemon stopped).
    pub daemon_running: bool,
    /// The data directory backed up.
    pub data_dir: PathBuf,
    /// The checkpoint directory whose file was copied.
    pub checkpoint_dir: PathBuf,
    /// Entries in the backed-up logbook (its last seq).
    pub logbook_entries: u64,
    /// The seq of this backup's `store.backup` entry (in the backup).
    pub backup_entry: u64,
    /// The head link of the backed-up logbook (hex).
    pub logbook_head: String,
    /// Bytes of the logbook checkpoint file copied (up to its last newline: a line the
    /// checkpointer was appending is left out); `None` when there was no checkpoint file.
    #[serde(default)]
    pub checkpoint_file_bytes: Option<u64>,
    /// Every file copied.
    pub files: Vec<ManifestFile>,
    /// What is deliberately not in the backup.
    pub not_included: Vec<String>,
}

/// Name of the manifest in the backup directory.
pub const MANIFEST_FILE: &str = "MANIFEST.json";

/// `holdfast backup DIR`: refuses a `dest` that exists and is not empty; copies the checkpoint
/// file, then the index (through the running daemon, or directly when none runs), then writes
/// the manifest.
pub fn run(config: &Config, dest: &Path, by: &str) -> anyhow::Result<Manifest> {
    use std::os::unix::fs::DirBuilderExt;
    let data_dir = &config.storage.data_dir;
    let index_dir = data_dir.join("index");
    if !index_dir.is_dir() {
        anyhow::bail!(
            "no index at {} (storage.data_dir): nothing to back up",
            index_dir.display()
        );
    }
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!(
                    "backup directory {} exists and is not empty: give a new or empty directory",
                    dest.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dest)
                .with_context(|| format!("creating the backup directory {}", dest.display()))?;
        }
        Err(e) => return Err(anyhow::anyhow!("backup directory {}: {e}", dest.display())),
    }
    let dest = std::fs::canonicalize(dest)
        .with_context(|| format!("backup directory {}", dest.display()))?;
    // The checkpoint lines first: each names an entry the index copied afterwards holds.
    let _lock = BackupLock::take(data_dir)?;
    let cp_src = config.logbook.checkpoint_dir.join(CHECKPOINT_FILE);
    let checkpoint_file_bytes = if cp_src.exists() {
        let cp_dir = dest.join("checkpoints");
        std::fs::DirBuilder::new().mode(0o700).create(&cp_dir)?;
        let body =
            std::fs::read(&cp_src).with_context(|| format!("reading {}", cp_src.display()))?;
        let whole = whole_lines(&body);
        write_private(&cp_dir.join(CHECKPOINT_FILE), whole)
            .with_context(|| format!("copying {}", cp_src.display()))?;
        Some(whole.len() as u64)
    } else {
        None
    };
    let dest_index = dest.join("index");
    let running = index_locked(&index_dir)?;
    let backup_entry = if running {
        let (staging, seq) = request(data_dir, by, &dest)?;
        let copied = copy_tree(&staging.join("index"), &dest_index);
        let removed = std::fs::remove_dir_all(&staging);
        copied.with_context(|| {
            format!(
                "copying the checkpoint {} to {}",
                staging.display(),
                dest_index.display()
            )
        })?;
        removed.with_context(|| format!("removing the staging copy {}", staging.display()))?;
        seq
    } else {
        // Opening the database creates files (WAL, SST, LOG): as another user than its owner
        // (root) they would keep the daemon from opening it afterwards.
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&index_dir)?.uid();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if owner != me {
            anyhow::bail!(
                "no daemon runs on {}, so this command would open the index itself, but it \
                 belongs to uid {owner} and this is uid {me}: files it creates there would keep \
                 the daemon out. Run it as the daemon's user (sudo -u holdfast holdfast backup \
                 ...), or start the daemon first",
                index_dir.display()
            );
        }
        let index = Index::open(&index_dir).with_context(|| {
            format!(
                "opening {} (no daemon holds it; if one just started, run backup again)",
                index_dir.display()
            )
        })?;
        let logbook = Logbook::open(&index, &config.logbook).context("opening the logbook")?;
        let seq = checkpoint(
            &index,
            &logbook,
            by,
            &dest.display().to_string(),
            &dest_index,
        )?;
        // The stopped daemon's checkpoint file did not see the new entry: anchor it.
        logbook
            .checkpoint()
            .context("writing a logbook checkpoint")?;
        seq
    };
    let (entries, head) = {
        let index = Index::open_read_only(&dest_index)
            .with_context(|| format!("opening the copy {}", dest_index.display()))?;
        index
            .logbook_head()?
            .map_or((0, String::new()), |(s, l)| (s, hex::encode(l)))
    };
    let mut files = Vec::new();
    list_files(&dest, &dest, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        holdfast_version: env!("CARGO_PKG_VERSION").into(),
        created: crate::time::Time90k::now().to_rfc3339(),
        by: by.to_owned(),
        daemon_running: running,
        data_dir: data_dir.clone(),
        checkpoint_dir: config.logbook.checkpoint_dir.clone(),
        logbook_entries: entries,
        logbook_head: head,
        backup_entry,
        checkpoint_file_bytes,
        files,
        not_included: vec![
            format!(
                "the footage: bucket files in {} (back them up separately, or accept losing them)",
                data_dir.join("buckets").display()
            ),
            match &config.logbook.key_file {
                Some(k) => format!(
                    "the logbook key {} (keep its copy offline, apart from this backup)",
                    k.display()
                ),
                None => "the logbook key (none configured: the logbook is unkeyed)".into(),
            },
            "the config and its secrets (tokens, camera passwords)".into(),
        ],
    };
    let path = dest.join(MANIFEST_FILE);
    let mut body = serde_json::to_vec_pretty(&manifest).expect("serialises");
    body.push(b'\n');
    write_private(&path, &body).with_context(|| format!("writing {}", path.display()))?;
    crate::store::sync_dir(&dest).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(manifest)
}

/// `body` up to and including its last newline (a line being appended is left out).
fn whole_lines(body: &[u8]) -> &[u8] {
    body.iter()
        .rposition(|&b| b == b'\n')
        .map_or(&body[..0], |i| &body[..=i])
}

/// Copies the tree `from` to `to` (created): only regular files and directories; a symlink or
/// any other kind of file is refused, naming its path (the tree is made by the daemon's user).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_tree_at(from, from, to)
}

/// [`copy_tree`] of the directory at `open` (shown in errors as `shown`). The directory is opened
/// without following a link (`O_NOFOLLOW | O_DIRECTORY`) and listed and read through its
/// descriptor (`/proc/self/fd/N/...`), so a directory or file that the data directory's owner
/// swaps for a link after a check is refused, not followed (the CLI may run as root).
fn copy_tree_at(open: &Path, shown: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let named = |err: std::io::Error, p: &Path| {
        std::io::Error::new(err.kind(), format!("{}: {err}", p.display()))
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(open)
        .map_err(|e| named(e, shown))?;
    let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    std::fs::DirBuilder::new().mode(0o700).create(to)?;
    for e in std::fs::read_dir(&via).map_err(|e| named(e, shown))? {
        let e = e?;
        let (src, path) = (via.join(e.file_name()), shown.join(e.file_name()));
        let target = to.join(e.file_name());
        // DirEntry::file_type does not follow symlinks.
        let t = e.file_type()?;
        if t.is_dir() {
            copy_tree_at(&src, &path, &target)?;
        } else if t.is_file() {
            // O_NOFOLLOW: a file swapped for a link after the listing is refused too.
            let mut from = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&src)
                .map_err(|err| named(err, &path))?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)?;
            std::io::copy(&mut from, &mut dst)?;
            dst.sync_all()?;
        } else {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file or directory (a symlink?): refused",
                path.display()
            )));
        }
    }
    std::fs::File::open(to)?.sync_all()
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<ManifestFile>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            list_files(root, &e.path(), out)?;
            continue;
        }
        let mut f = std::fs::File::open(e.path())?;
        let mut h = Sha256::new();
        let bytes = std::io::copy(&mut f, &mut h)?;
        out.push(ManifestFile {
            path: e
                .path()
                .strip_prefix(root)
                .unwrap_or(&e.path())
                .display()
                .to_string(),
            bytes,
            sha256: hex::encode(h.finalize()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_holds_the_backup_entry_and_opens_alone() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index")).unwrap();
        let lb = Logbook::open_with(&index, None, None).unwrap();
        let dest = dir.path().join("copy");
        let seq = checkpoint(&index, &lb, "tester", "/backups/x", &dest).unwrap();
        assert_eq!(seq, 1);
        let copy = Index::open_read_only(&dest).unwrap();
        assert_eq!(copy.logbook_head().unwrap().unwrap().0, 1);
        let v = crate::logbook::verify(&copy, None, None).unwrap();
        assert!(v.ok, "{v:?}");
        let e = Logbook::get(&copy, 1).unwrap();
        assert_eq!(e.entry.body.action, ACTION_BACKUP);
        assert_eq!(e.entry.body.user, "cli:tester");
    }

    #[test]
    fn copy_tree_refuses_a_symlink_planted_in_the_staging_dir_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("staging/index");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("CURRENT"), b"MANIFEST-1\n").unwrap();
        std::fs::write(from.join("sub/a"), b"a").unwrap();
        let ok = dir.path().join("ok");
        copy_tree(&from, &ok).unwrap();
        assert_eq!(std::fs::read(ok.join("sub/a")).unwrap(), b"a");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root:secret").unwrap();
        std::os::unix::fs::symlink(&secret, from.join("sub/OPTIONS-1")).unwrap();
        // The staging index itself a link to another directory: refused, not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("shadow"), b"root:secret").unwrap();
        let linked = dir.path().join("staging/linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        let e = copy_tree(&linked, &dir.path().join("copy-linked"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&linked.display().to_string()), "{e}");
        assert!(!dir.path().join("copy-linked/shadow").exists());
        let to = dir.path().join("copy");
        let e = copy_tree(&from, &to).unwrap_err().to_string();
        assert!(
            e.contains(&from.join("sub/OPTIONS-1").display().to_string()),
            "{e}"
        );
        assert!(!to.join("sub/OPTIONS-1").exists());
    }

    #[test]
    fn the_cli_refuses_a_staging_path_that_is_a_link_or_of_another_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        let staging = staging_dir(dir.path(), 7);
        assert_eq!(staging, dir.path().join("backup-staging-7"));
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &staging).unwrap();
        let e = check_staging(&staging, me).unwrap_err().to_string();
        assert!(
            e.contains("not a directory") && e.contains("backup-staging-7"),
            "{e}"
        );
        std::fs::remove_file(&staging).unwrap();
        std::fs::create_dir(&staging).unwrap();
        check_staging(&staging, me).unwrap();
        let e = check_staging(&staging, me + 1).unwrap_err().to_string();
        assert!(e.contains("belongs to uid"), "{e}");
    }

    #[test]
    fn only_whole_checkpoint_lines_are_copied() {
        assert_eq!(whole_lines(b"a\nb\nc"), b"a\nb\n");
        assert_eq!(whole_lines(b"a\nb\n"), b"a\nb\n");
        assert_eq!(whole_lines(b"half"), b"");
        assert_eq!(whole_lines(b""), b"");
    }

    #[test]
    fn a_second_backup_lock_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = BackupLock::take(dir.path()).unwrap();
        let e = BackupLock::take(dir.path()).err().unwrap().to_string();
        assert!(e.contains("another holdfast backup"), "{e}");
        drop(first);
        BackupLock::take(dir.path()).unwrap();
    }

    #[test]
    fn a_request_written_by_root_is_given_to_the_data_dirs_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !crate::testing::is_root_or_skip("to give a file to another user") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
        let f = data.join("backup.request.1");
        write_request(&data, &f, b"{}").unwrap();
        let m = std::fs::symlink_metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"{}");
        // Owned by root: nothing to give.
        std::os::unix::fs::chown(&data, Some(0), Some(0)).unwrap();
        write_request(&data, &f, b"{}").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), 0);
    }
}
