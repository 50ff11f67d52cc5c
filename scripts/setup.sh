#!/usr/bin/env bash
# Installs what holdfast needs to build, test and run its demo on Debian 12:
# clang/libclang (RocksDB's bindings), GStreamer's RTSP server (test cameras), ffmpeg/ffprobe
# (export checks, clip making), prometheus (promtool), and schemathesis from PyPI (tests/api_spec.rs
# runs it against docs/api.yaml) in a venv of its own. Needs root (or sudo) and a Rust toolchain.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(
  build-essential clang libclang-dev pkg-config
  ffmpeg prometheus curl openssl python3 python3-venv
  gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad
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
# schemathesis, pinned, in its own venv (Debian's python3 refuses pip installs outside one).
# tests/api_spec.rs reads SCHEMATHESIS_VERSION from this line and looks in the same directory.
SCHEMATHESIS_VERSION=4.32.5
st_venv="${HOLDFAST_TOOLS_DIR:-$HOME/.cache/holdfast-tools}/schemathesis-$SCHEMATHESIS_VERSION"
if ! "$st_venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  echo "setup: installing schemathesis $SCHEMATHESIS_VERSION into $st_venv"
  rm -rf "$st_venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  "$st_venv/bin/schemathesis" --version >/dev/null
fi
echo "setup: ok"
