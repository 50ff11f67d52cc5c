#!/usr/bin/env bash
# Installs what holdfast needs to build, test and run its demo on Debian 12:
# clang/libclang (RocksDB's bindings), GStreamer's RTSP server (test cameras), ffmpeg/ffprobe
# (export checks, clip making), prometheus (promtool), faketime (tests/clock.rs moves the daemon's
# wall clock with libfaketime), fuse3 and e2fsprogs (tests/faults.rs: the faultfs FUSE layer and
# the loop-mounted ext4 image), dpkg-dev and fakeroot (`cargo deb`: dpkg-shlibdeps finds the
# package's Depends; tests/package.rs installs it into a throwaway root, under fakeroot when not
# root), chromium, chromium-driver and python3-selenium (tests/console.rs drives the web console in
# a headless browser), fio (benches/writer.rs: the raw disk baseline at queue depth 8), cargo-deb (pinned), and schemathesis from PyPI (tests/api_spec.rs
# runs it against docs/api.yaml) in a venv of its own; the nightly toolchain and cargo-fuzz for the
# fuzz targets (fuzz/, tests/fuzz_smoke.rs). Needs root (or sudo) and a Rust toolchain (rustup).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(
  build-essential clang libclang-dev pkg-config
  ffmpeg prometheus curl openssl python3 python3-venv faketime fuse3 e2fsprogs dpkg-dev fakeroot
  gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad
  systemd python3-seccomp
  chromium chromium-driver python3-selenium
  fio
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no cargo on PATH; install Rust (rustup) first" >&2
  exit 1
fi
# cargo-deb builds the Debian package (`cargo deb`; tests/package.rs), pinned so that a new
# release cannot change the package.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  echo "setup: installing cargo-deb $CARGO_DEB_VERSION"
  # (its own temporary target dir: never the project's CARGO_TARGET_DIR)
  env -u CARGO_TARGET_DIR cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --force
fi
# The fuzz targets (fuzz/, run by tests/fuzz_smoke.rs) need a nightly toolchain and cargo-fuzz,
# pinned so that a new release cannot change the run.
CARGO_FUZZ_VERSION=0.13.2
if command -v rustup >/dev/null 2>&1; then
  if ! rustup toolchain list | grep -q '^nightly-'; then
    echo "setup: installing the nightly toolchain (for cargo-fuzz)"
    # Not fatal: on machines that cannot fetch a toolchain the fuzz smoke test skips (and says so).
    rustup toolchain install nightly --profile minimal ||
      echo "setup: could not install nightly: the fuzz smoke test will be skipped" >&2
  fi
else
  echo "setup: no rustup: the fuzz smoke test needs a nightly toolchain and is skipped" >&2
fi
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "setup: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  # (its own temporary target dir: never the project's CARGO_TARGET_DIR)
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --force ||
    echo "setup: could not install cargo-fuzz: the fuzz smoke test will be skipped" >&2
fi
# schemathesis (needs Python >= 3.11: Debian 12 has 3.11), pinned with its dependencies, in its own
# venv (Debian's python3 refuses pip installs outside one).
# tests/api_spec.rs reads SCHEMATHESIS_VERSION from this line and looks in the same directory.
SCHEMATHESIS_VERSION=4.32.5
st_venv="${HOLDFAST_TOOLS_DIR:-$HOME/.cache/holdfast-tools}/schemathesis-$SCHEMATHESIS_VERSION"
if ! "$st_venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  echo "setup: installing schemathesis $SCHEMATHESIS_VERSION into $st_venv"
  rm -rf "$st_venv"
  python3 -m venv "$st_venv"
  # Its dependencies as tested with it, so that a new release of one cannot change the run.
  printf '%s\n' anyio==4.16.0 certifi==2026.10.18 charset-normalizer==3.5.2 click==8.5.1 \
    graphql-core==3.3.2 harfile==0.6.0 hypothesis==6.170.15 hypothesis-graphql==0.13.5 idna==3.20 \
    iniconfig==2.3.1 jsonschema_rs==0.60.3 markdown-it-py==4.3.0 MarkupSafe==3.0.4 mdurl==0.1.2 \
    packaging==26.3 pluggy==1.7.0 Pygments==2.21.0 pyrate-limiter==4.5.1 pytest==9.2.0 PyYAML==6.0.3 \
    requests==2.34.2 rich==15.0.0 sortedcontainers==2.4.0 typing_extensions==4.16.0 urllib3==2.8.0 \
    Werkzeug==3.1.9 >"$st_venv/constraints.txt"
  "$st_venv/bin/pip" install -q --disable-pip-version-check -c "$st_venv/constraints.txt" \
    "schemathesis==$SCHEMATHESIS_VERSION"
  "$st_venv/bin/schemathesis" --version >/dev/null
fi
echo "setup: ok"
