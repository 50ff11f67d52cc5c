//! `faultfs`: a FUSE passthrough file system for the fault tests (crate `fuser`), mounted by the
//! test process over a real backing directory. It does two things a real disk does and a healthy
//! test machine never shows:
//!
//! - **Power cut.** Every change to a file's bytes or length (write, truncate, fallocate, punch)
//!   is applied to the backing file at once and remembered in an undo log of that file (the old
//!   length and the old bytes it overwrote); `fsync`/`fdatasync` of the file empties its log.
//!   Every file or directory created is remembered under its parent until the parent is fsynced
//!   (strict POSIX: fsync of the new file alone does not make its name durable). A simulated
//!   power cut ([`FaultFs::power_cut`]) unmounts (the caller has killed every process using the
//!   mount: a machine that lost power runs nothing), rolls every file back through its undo log,
//!   removes every entry created since its directory's last fsync, and mounts again with a cold
//!   page cache. So after a cut the disk holds exactly what was synced, the worst case a real
//!   disk may show. Not modelled: unlinks and renames are durable at once (journalled), and a
//!   rename makes the name of a created file durable; torn (partially persisted) unsynced writes
//!   are not simulated, only "all unsynced lost".
//! - **Faults.** [`FaultFs::fail`] adds a rule: an operation ([`Op`]) on paths containing a
//!   pattern fails with an errno (EIO, ENOSPC, ...), until [`FaultFs::clear`]; every injected
//!   error is counted.
//! - **Stalls.** [`FaultFs::stall_fsync`]: an `fsync` of a path containing a pattern gets no
//!   answer (the caller hangs, as on a dying disk or a hung NFS server) until
//!   [`FaultFs::unstall`] completes it as synced; other requests are still served.
//!   [`FaultFs::slow_reads`]: reads of a path containing a pattern are answered late.
//!
//! The daemon writes with io_uring `writev` and fdatasyncs with io_uring too: on a FUSE file the
//! kernel runs those requests in io-wq worker threads, and they reach this layer as ordinary
//! FUSE `WRITE` and `FSYNC` requests (the tests check the daemon records through it).
//!
//! Every FUSE request is served under one mutex: simple and plenty fast for a few cameras.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// An operation that a fault rule can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Opening or creating a file.
    Open,
    /// Reading a file.
    Read,
    /// Writing a file (also fallocate that allocates, and truncate).
    Write,
    /// `fsync`/`fdatasync` of a file.
    Fsync,
    /// `fsync` of a directory.
    SyncDir,
    /// `fallocate(PUNCH_HOLE)`.
    Punch,
    /// `unlink`.
    Unlink,
}

/// One fault rule: `op` on a path (relative to the mount, e.g. `buckets/a/...`) containing
/// `pattern` fails with `errno`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The operation.
    pub op: Op,
    /// A substring of the relative path.
    pub pattern: String,
    /// The error returned (`libc::EIO`, `libc::ENOSPC`, ...).
    pub errno: i32,
}

/// What a power cut threw away.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// Unsynced writes (and truncates/fallocates) undone.
    pub writes_dropped: u64,
    /// Bytes those writes had written.
    pub bytes_dropped: u64,
    /// Files whose content was rolled back.
    pub files_rolled_back: u64,
    /// Created files and directories removed (their directory was not fsynced).
    pub entries_removed: u64,
    /// Their paths, and the paths of the files rolled back.
    pub paths: Vec<String>,
}

/// Counters of what the layer saw.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Write requests served.
    pub writes: u64,
    /// Read requests served (the kernel's, after its page cache: a cached read never comes).
    pub reads: u64,
    /// Of those, the ones answered late ([`FaultFs::slow_reads`]).
    pub slowed_reads: u64,
    /// Bytes asked for by the reads answered late.
    pub slowed_bytes: u64,
    /// File fsyncs served.
    pub fsyncs: u64,
    /// Directory fsyncs served.
    pub dir_fsyncs: u64,
    /// Errors injected, per operation.
    pub injected: HashMap<String, u64>,
}

struct Undo {
    old_len: u64,
    offset: u64,
    old: Vec<u8>,
    written: u64,
}

struct Created {
    parent: u64,
    name: std::ffi::OsString,
    ino: u64,
}

struct Inner {
    backing: PathBuf,
    root_ino: u64,
    /// FUSE inode -> path relative to the backing directory.
    paths: HashMap<u64, PathBuf>,
    files: HashMap<u64, (File, u64)>,
    next_fh: u64,
    undo: HashMap<u64, Vec<Undo>>,
    created: Vec<Created>,
    rules: Vec<Rule>,
    stats: Stats,
    /// Patterns whose fsyncs stall.
    stall_fsync: Vec<String>,
    /// Stalled fsyncs: (inode, the reply not sent yet).
    stalled: Vec<(u64, ReplyEmpty)>,
    /// Reads of paths containing the pattern are answered only after this long.
    slow_read: Option<(String, Duration)>,
}

/// Punches larger than this are treated as durable at once (their old bytes are not kept).
const MAX_PUNCH_UNDO: u64 = 256 << 20;
const TTL: Duration = Duration::ZERO;

impl Inner {
    fn rel(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.paths.get(&ino).cloned().ok_or(Errno::ENOENT)
    }
    fn abs(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }
    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else {
            st_ino
        }
    }
    fn check(&mut self, op: Op, rel: &Path) -> Result<(), Errno> {
        let p = rel.to_string_lossy();
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.op == op && p.contains(&r.pattern))
        {
            let errno = r.errno;
            *self.stats.injected.entry(format!("{op:?}")).or_default() += 1;
            return Err(Errno::from_i32(errno));
        }
        Ok(())
    }
    fn attr(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.abs(rel)).map_err(Errno::from)?;
        Ok(self.to_attr(&m))
    }
    fn to_attr(&self, m: &std::fs::Metadata) -> FileAttr {
        let t = |s: i64, ns: i64| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, ns as u32)
            } else {
                UNIX_EPOCH
            }
        };
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: t(m.ctime(), m.ctime_nsec()),
            kind: FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }
    /// Records the old state of `[offset, offset + len)` of `file` before a change.
    fn remember(&mut self, ino: u64, file: &File, offset: u64, len: u64, written: u64) {
        let old_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let end = (offset + len).min(old_len);
        let mut old = Vec::new();
        if end > offset {
            old = vec![0; (end - offset) as usize];
            let _ = file.read_exact_at(&mut old, offset);
        }
        self.undo.entry(ino).or_default().push(Undo {
            old_len,
            offset,
            old,
            written,
        });
    }
    fn file(&self, fh: FileHandle) -> Result<(File, u64), Errno> {
        let (f, ino) = self.files.get(&fh.0).ok_or(Errno::EBADF)?;
        Ok((f.try_clone().map_err(Errno::from)?, *ino))
    }
}

/// The file system handed to `fuser` (shares its state with [`FaultFs`]).
struct Fs(Arc<Mutex<Inner>>);

impl Fs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

macro_rules! tri {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                $reply.error(e);
                return;
            }
        }
    };
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(parent.0)).join(name);
        let attr = tri!(reply, s.attr(&rel));
        s.paths.insert(attr.ino.0, rel);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        let attr = tri!(reply, s.attr(&rel));
        reply.attr(&TTL, &attr);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        let abs = s.abs(&rel);
        if let Some(mode) = mode {
            tri!(
                reply,
                std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(Errno::from)
            );
        }
        if let Some(size) = size {
            tri!(reply, s.check(Op::Write, &rel));
            let f = tri!(
                reply,
                OpenOptions::new()
                    .write(true)
                    .open(&abs)
                    .map_err(Errno::from)
            );
            let cur = f.metadata().map(|m| m.len()).unwrap_or(0);
            s.remember(ino.0, &f, size.min(cur), cur.saturating_sub(size), 0);
            tri!(reply, f.set_len(size).map_err(Errno::from));
        }
        let attr = tri!(reply, s.attr(&rel));
        reply.attr(&TTL, &attr);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(parent.0)).join(name);
        tri!(reply, s.check(Op::Open, &rel));
        let abs = s.abs(&rel);
        tri!(reply, std::fs::create_dir(&abs).map_err(Errno::from));
        let _ = std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & 0o7777));
        let attr = tri!(reply, s.attr(&rel));
        s.paths.insert(attr.ino.0, rel);
        s.created.push(Created {
            parent: parent.0,
            name: name.to_owned(),
            ino: attr.ino.0,
        });
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(parent.0)).join(name);
        tri!(reply, s.check(Op::Unlink, &rel));
        let ino = s.attr(&rel).map(|a| a.ino.0).ok();
        tri!(
            reply,
            std::fs::remove_file(s.abs(&rel)).map_err(Errno::from)
        );
        if let Some(ino) = ino {
            s.undo.remove(&ino);
            s.created.retain(|c| c.ino != ino);
        }
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(parent.0)).join(name);
        let ino = s.attr(&rel).map(|a| a.ino.0).ok();
        tri!(reply, std::fs::remove_dir(s.abs(&rel)).map_err(Errno::from));
        if let Some(ino) = ino {
            s.created.retain(|c| c.ino != ino);
        }
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        let from = tri!(reply, s.rel(parent.0)).join(name);
        let to = tri!(reply, s.rel(newparent.0)).join(newname);
        let ino = tri!(reply, s.attr(&from)).ino.0;
        if let Ok(old) = s.attr(&to) {
            s.undo.remove(&old.ino.0);
            s.created.retain(|c| c.ino != old.ino.0);
        }
        tri!(
            reply,
            std::fs::rename(s.abs(&from), s.abs(&to)).map_err(Errno::from)
        );
        // Not modelled: the rename is durable at once, and so is the name of the file.
        s.created.retain(|c| c.ino != ino);
        let moved: Vec<(u64, PathBuf)> = s
            .paths
            .iter()
            .filter(|(_, p)| **p != from)
            .filter_map(|(i, p)| p.strip_prefix(&from).ok().map(|rest| (*i, to.join(rest))))
            .collect();
        s.paths.extend(moved);
        s.paths.insert(ino, to);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        tri!(reply, s.check(Op::Open, &rel));
        let abs = s.abs(&rel);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&abs)
            .or_else(|_| File::open(&abs));
        let f = tri!(reply, f.map_err(Errno::from));
        if flags.0 & libc::O_TRUNC != 0 {
            let cur = f.metadata().map(|m| m.len()).unwrap_or(0);
            s.remember(ino.0, &f, 0, cur, 0);
            tri!(reply, f.set_len(0).map_err(Errno::from));
        }
        let fh = s.next_fh;
        s.next_fh += 1;
        s.files.insert(fh, (f, ino.0));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(parent.0)).join(name);
        tri!(reply, s.check(Op::Open, &rel));
        let abs = s.abs(&rel);
        let mut o = OpenOptions::new();
        o.read(true).write(true).mode(mode & 0o7777);
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        } else {
            o.create(true);
        }
        let existed = abs.exists();
        let f = tri!(reply, o.open(&abs).map_err(Errno::from));
        let attr = s.to_attr(&tri!(reply, f.metadata().map_err(Errno::from)));
        if flags & libc::O_TRUNC != 0 && existed {
            s.remember(attr.ino.0, &f, 0, attr.size, 0);
            tri!(reply, f.set_len(0).map_err(Errno::from));
        }
        s.paths.insert(attr.ino.0, rel);
        if !existed {
            s.created.push(Created {
                parent: parent.0,
                name: name.to_owned(),
                ino: attr.ino.0,
            });
        }
        let fh = s.next_fh;
        s.next_fh += 1;
        s.files.insert(fh, (f, attr.ino.0));
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let (f, delay) = {
            let mut s = self.lock();
            let rel = tri!(reply, s.rel(ino.0));
            tri!(reply, s.check(Op::Read, &rel));
            s.stats.reads += 1;
            let p = rel.to_string_lossy();
            let delay = s
                .slow_read
                .as_ref()
                .filter(|(pat, _)| p.contains(pat.as_str()))
                .map(|(_, d)| *d);
            if delay.is_some() {
                s.stats.slowed_reads += 1;
                s.stats.slowed_bytes += u64::from(size);
            }
            (tri!(reply, s.file(fh)).0, delay)
        };
        // Outside the lock: other requests are served meanwhile, as by a slow disk.
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut buf = vec![0; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(Errno::from(e));
                    return;
                }
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        tri!(reply, s.check(Op::Write, &rel));
        let (f, _) = tri!(reply, s.file(fh));
        s.remember(ino.0, &f, offset, data.len() as u64, data.len() as u64);
        tri!(reply, f.write_all_at(data, offset).map_err(Errno::from));
        s.stats.writes += 1;
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        tri!(reply, s.check(Op::Fsync, &rel));
        let p = rel.to_string_lossy();
        if s.stall_fsync.iter().any(|pat| p.contains(pat.as_str())) {
            s.stalled.push((ino.0, reply));
            return;
        }
        // The backing file is this layer's "disk": its bytes are now the synced state.
        s.undo.remove(&ino.0);
        s.stats.fsyncs += 1;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        let rd = tri!(reply, std::fs::read_dir(s.abs(&rel)).map_err(Errno::from));
        let mut entries = vec![
            (ino.0, FileType::Directory, std::ffi::OsString::from(".")),
            (1, FileType::Directory, std::ffi::OsString::from("..")),
        ];
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let fino = s.fuse_ino(m.ino());
            s.paths.insert(fino, rel.join(e.file_name()));
            let kind = FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile);
            entries.push((fino, kind, e.file_name()));
        }
        for (i, (eino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(eino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        tri!(reply, s.check(Op::SyncDir, &rel));
        s.created.retain(|c| c.parent != ino.0);
        s.stats.dir_fsyncs += 1;
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.lock();
        let c = std::ffi::CString::new(s.backing.as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            reply.error(Errno::EIO);
            return;
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        let rel = tri!(reply, s.rel(ino.0));
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        tri!(
            reply,
            s.check(if punch { Op::Punch } else { Op::Write }, &rel)
        );
        let (f, _) = tri!(reply, s.file(fh));
        if !punch || length <= MAX_PUNCH_UNDO {
            s.remember(ino.0, &f, offset, if punch { length } else { 0 }, 0);
        }
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if r != 0 {
            reply.error(Errno::from(std::io::Error::last_os_error()));
            return;
        }
        reply.ok();
    }
}

/// A mounted `faultfs` over a backing directory; unmounted on drop.
pub struct FaultFs {
    inner: Arc<Mutex<Inner>>,
    session: Option<fuser::BackgroundSession>,
    /// Where it is mounted (the daemon's data directory).
    pub mountpoint: PathBuf,
    /// The backing directory (the "disk").
    pub backing: PathBuf,
}

impl FaultFs {
    /// Mounts a new `faultfs` of `backing` (created if missing) on `mountpoint` (created if
    /// missing). Needs /dev/fuse and the right to mount (root), or `fusermount3`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<FaultFs> {
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let backing = backing.canonicalize()?;
        let root_ino = std::fs::metadata(&backing)?.ino();
        let inner = Inner {
            backing: backing.clone(),
            root_ino,
            paths: HashMap::from([(1, PathBuf::new())]),
            files: HashMap::new(),
            next_fh: 1,
            undo: HashMap::new(),
            created: Vec::new(),
            rules: Vec::new(),
            stats: Stats::default(),
            stall_fsync: Vec::new(),
            stalled: Vec::new(),
            slow_read: None,
        };
        let mut fs = FaultFs {
            inner: Arc::new(Mutex::new(inner)),
            session: None,
            mountpoint: mountpoint.canonicalize()?,
            backing,
        };
        fs.mount_again()?;
        Ok(fs)
    }

    fn mount_again(&mut self) -> std::io::Result<()> {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("faultfs".into()),
            fuser::MountOption::Subtype("faultfs".into()),
        ];
        cfg.n_threads = Some(2);
        let session = fuser::spawn_mount(Fs(self.inner.clone()), &self.mountpoint, &cfg)?;
        self.session = Some(session);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unmount(&mut self) {
        self.unstall();
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                eprintln!("faultfs: unmount of {}: {e}", self.mountpoint.display());
            }
        }
        // Whatever happened above, never leave a mount behind.
        let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()).unwrap();
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }

    /// Simulates a power cut: unmounts (every process using the mount must be dead), throws
    /// away every unsynced change, and mounts again with a cold cache.
    pub fn power_cut(&mut self) -> CutReport {
        self.unmount();
        let mut report = CutReport::default();
        {
            let mut s = self.lock();
            s.files.clear();
            let undo = std::mem::take(&mut s.undo);
            for (ino, log) in undo {
                let Some(rel) = s.paths.get(&ino) else {
                    continue;
                };
                let Ok(f) = OpenOptions::new().write(true).open(s.abs(rel)) else {
                    continue;
                };
                if f.metadata().map(|m| m.ino()).ok() != Some(ino) && ino != 1 {
                    continue;
                }
                report.files_rolled_back += 1;
                report.paths.push(format!("rolled back: {}", rel.display()));
                for u in log.iter().rev() {
                    report.writes_dropped += 1;
                    report.bytes_dropped += u.written;
                    if !u.old.is_empty() {
                        f.write_all_at(&u.old, u.offset)
                            .expect("faultfs: undo write");
                    }
                    f.set_len(u.old_len).expect("faultfs: undo set_len");
                }
            }
            let created = std::mem::take(&mut s.created);
            for c in created.iter().rev() {
                let Some(parent) = s.paths.get(&c.parent) else {
                    continue;
                };
                let abs = s.abs(&parent.join(&c.name));
                match std::fs::symlink_metadata(&abs) {
                    Ok(m) if m.ino() == c.ino => {
                        report.entries_removed += 1;
                        report
                            .paths
                            .push(format!("removed: {}", parent.join(&c.name).display()));
                        if m.is_dir() {
                            std::fs::remove_dir_all(&abs).expect("faultfs: undo mkdir");
                        } else {
                            std::fs::remove_file(&abs).expect("faultfs: undo create");
                        }
                    }
                    _ => {}
                }
            }
        }
        self.mount_again()
            .expect("faultfs: mount again after the power cut");
        report
    }

    /// Adds a fault rule (takes effect at once).
    pub fn fail(&self, op: Op, pattern: &str, errno: i32) {
        self.lock().rules.push(Rule {
            op,
            pattern: pattern.to_owned(),
            errno,
        });
    }

    /// Removes the rules for `op` on `pattern`.
    pub fn unfail(&self, op: Op, pattern: &str) {
        self.lock()
            .rules
            .retain(|r| !(r.op == op && r.pattern == pattern));
    }

    /// Removes every fault rule.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// From now on, an `fsync` of a path containing `pattern` is not answered until
    /// [`FaultFs::unstall`].
    pub fn stall_fsync(&self, pattern: &str) {
        self.lock().stall_fsync.push(pattern.to_owned());
    }

    /// From now on, each read of a path containing `pattern` is answered `delay` late (a slow
    /// disk); `None` ends it.
    pub fn slow_reads(&self, slow: Option<(&str, Duration)>) {
        self.lock().slow_read = slow.map(|(p, d)| (p.to_owned(), d));
    }

    /// How many fsyncs are stalled now.
    pub fn stalled(&self) -> usize {
        self.lock().stalled.len()
    }

    /// Ends every stall: the stalled fsyncs complete (as synced) and later ones are answered.
    pub fn unstall(&self) {
        let mut s = self.lock();
        s.stall_fsync.clear();
        for (ino, reply) in std::mem::take(&mut s.stalled) {
            s.undo.remove(&ino);
            s.stats.fsyncs += 1;
            reply.ok();
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Errors injected so far, all operations.
    pub fn injected(&self) -> u64 {
        self.lock().stats.injected.values().sum()
    }

    /// Unsynced changes now pending (what a power cut would drop): (changes, files).
    pub fn unsynced(&self) -> (usize, usize) {
        let s = self.lock();
        (s.undo.values().map(Vec::len).sum(), s.undo.len())
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
