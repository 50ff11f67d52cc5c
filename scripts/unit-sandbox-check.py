#!/usr/bin/python3
"""Runs the real daemon under the syscall filter of systemd/holdfast.service, without systemd.

Where systemd is not PID 1 (containers, CI), `systemd-run` cannot start the unit. This script
rebuilds what matters of its sandbox by hand and records through it:

- the effective SystemCallFilter= set, computed from the unit's lines the way systemd does
  (the first line an allow list, `~` lines remove, later lines add back), groups expanded with
  `systemd-analyze syscall-filter`; loaded with libseccomp (Debian: python3-seccomp) with a
  default action that KILLS the process (stricter than the unit's SystemCallErrorNumber=EPERM:
  a call outside the list cannot go unnoticed);
- an unprivileged user (nobody), no capabilities (empty bounding set), no_new_privs, and a user
  namespace of its own (PrivateUsers=), via setpriv and unshare.

Then: a camsim camera recorded for a while (io_uring writes, fdatasync, bucket expiry and
unlink by the sweeper), the HTTP API asked, SIGTERM. Passes when the daemon recorded, answered,
and exited 0 (not killed by SIGSYS).

    /usr/bin/python3 scripts/unit-sandbox-check.py target/release/holdfast
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "systemd", "holdfast.service")
NOBODY = 65534


def expand(name, seen=None):
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    out = subprocess.run(["systemd-analyze", "syscall-filter", name],
                         capture_output=True, text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            if line not in seen:
                seen.add(line)
                calls |= expand(line, seen)
        else:
            calls.add(line)
    return calls


def effective_filter(unit_text):
    allowed = None
    for line in unit_text.splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1].strip()
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        calls = set().union(*(expand(n) for n in names))
        if allowed is None:
            assert not deny, "the unit's first SystemCallFilter= must be an allow list"
            allowed = calls
        elif deny:
            allowed -= calls
        else:
            allowed |= calls
    return allowed


def load_and_exec(allowed, argv):
    import seccomp
    f = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    unknown = []
    for name in sorted(allowed):
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            unknown.append(name)
    f.load()
    os.execv(argv[0], argv)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--exec":
        allowed = set(sys.argv[2].split(","))
        load_and_exec(allowed, sys.argv[3:])
        return
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/holdfast")
    unit = open(UNIT).read()
    allowed = effective_filter(unit)
    for needed in ["io_uring_setup", "io_uring_enter", "io_uring_register", "fallocate",
                   "fdatasync", "adjtimex", "clock_adjtime"]:
        print(f"{needed}: {'allowed' if needed in allowed else 'DENIED'}")
    for denied in ["clock_settime", "settimeofday", "mount", "setuid",
                   "ptrace", "setpriority"]:
        print(f"{denied}: {'ALLOWED' if denied in allowed else 'denied'}")
    print(f"{len(allowed)} system calls allowed")

    work = tempfile.mkdtemp(prefix="holdfast-sandbox-")
    os.chmod(work, 0o755)
    # A copy nobody may execute (the build's target dir may be under /root).
    shutil.copy(binary, os.path.join(work, "holdfast"))
    binary = os.path.join(work, "holdfast")
    os.chmod(binary, 0o755)
    data, logs = os.path.join(work, "data"), os.path.join(work, "logs")
    for d in (data, logs):
        os.mkdir(d, 0o700)
        os.chown(d, NOBODY, NOBODY)
    key = os.path.join(logs, "logbook.key")
    with open(key, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(key, 0o600)
    os.chown(key, NOBODY, NOBODY)
    cam_port, http_port = free_port(), free_port()
    token = "sandbox-check-token-0123456789abcdef"
    config = os.path.join(work, "holdfast.toml")
    with open(config, "w") as f:
        f.write(f"""[storage]
data_dir = "{data}"
bucket = "5s"
segment_target = "1s"
sync_interval = "500ms"

[http]
listen = "127.0.0.1:{http_port}"

[sweeper]
interval = "1s"

[logbook]
key_file = "{key}"
checkpoint_dir = "{logs}/checkpoints"

[policies.short]
video = "10s"
keytags = "1h"

[[sites]]
id = "site"
policy = "short"

[[cameras]]
id = "cam0"
site = "site"
url = "rtsp://127.0.0.1:{cam_port}/cam0"

[[users]]
name = "check"
role = "manager"
token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"
sites = ["*"]
""")
    os.chmod(config, 0o644)
    camsim = subprocess.Popen([binary, "camsim", "--streams", "1", "--listen",
                               f"127.0.0.1:{cam_port}"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    camsim.stdout.readline()
    log_path = os.path.join(work, "holdfast.log")
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
           "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
           "unshare", "--user",
           "/usr/bin/python3", os.path.abspath(__file__), "--exec", ",".join(sorted(allowed)),
           binary, "run", "--config", config]
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
                              env={"RUST_LOG": "info", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    ok = True
    try:
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(300):
            try:
                if get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if daemon.poll() is not None:
                break
            time.sleep(0.1)
        # Two closed buckets expire (10 s retention): writes, syncs, expiry, unlink.
        time.sleep(25)
        status, body = get(base + "/api/v1/cameras", token)
        print("GET /api/v1/cameras:", status, body[:200])
        ok &= status == 200 and b'"recording"' in body
        status, body = get(base + "/metrics", token)
        frames = [l for l in body.decode().splitlines()
                  if l.startswith("holdfast_camera_frames_total")]
        deleted = [l for l in body.decode().splitlines()
                   if l.startswith("holdfast_sweeper_buckets_deleted")]
        print("metrics:", frames, deleted)
        ok &= status == 200 and bool(frames) and bool(deleted)
        ok &= not frames[0].endswith(" 0") and not deleted[0].endswith(" 0")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = daemon.wait()
        camsim.terminate()
        camsim.wait()
    log = open(log_path).read()
    print(f"daemon exit status: {rc}")
    if rc != 0:
        ok = False
        print("log tail:\n" + "\n".join(log.splitlines()[-30:]))
    for bad in ["Operation not permitted", "panicked", "ERROR"]:
        if bad in log:
            print(f"log has {bad!r}:")
            print("\n".join(l for l in log.splitlines() if bad in l)[:3000])
            ok = False
    if ok:
        shutil.rmtree(work)
        print("PASS")
    else:
        print("FAIL - log in", log_path)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
