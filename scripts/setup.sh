#!/usr/bin/env bash
# Installs what holdfast needs to build, test and run its demo on Debian 12:
# clang/libclang (RocksDB's bindings), GStreamer's RTSP server (test cameras), ffmpeg/ffprobe
# (export checks, clip making), prometheus (promtool). Needs root (or sudo) and a Rust toolchain.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PKGS=(
  build-essential clang libclang-dev pkg-config
  ffmpeg prometheus curl openssl
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
echo "setup: ok"
