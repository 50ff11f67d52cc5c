#!/bin/bash
# Ingest CPU at a fixed camsim load: `holdfast camsim --streams N` + `holdfast run` recording all
# N streams; after a warm-up, `perf stat` of the daemon alone (task-clock, instructions, context
# switches) for SECS seconds. Several binaries in one invocation are measured one after the
# other against the same camsim binary, so a baseline and a variant share the run:
#   flock /work/bench.lock scripts/ingest-cpu.sh [-n 200] [-s 20] BIN_BASE BIN_VARIANT ...
# Prints one line per binary: task-clock ms, instructions, frames recorded, CPU per frame.
# With -r DIR, a `perf record -g` profile of each daemon goes to DIR/<binary name>.data as well.
# WARM (seconds, default 15) is the time before the window: the daemon's memory grows to its
# working set in its first ~10 s at N = 200 (design/performance.md, "The measured window").
set -euo pipefail
N=200; SECS=20; WARM=${WARM:-15}; REC=
while getopts n:s:r: o; do case $o in n) N=$OPTARG;; s) SECS=$OPTARG;; r) REC=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND-1))
SIM=${CAMSIM_BIN:-$1}
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
metric_sum() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($0,n)==1 {s+=$NF} END {printf "%d", s}'; }
for BIN in "$@"; do
  D=$(mktemp -d /tmp/ingest-cpu.XXXXXX)
  SP=$(port); HP=$(port)
  "$SIM" camsim --streams "$N" --listen "127.0.0.1:$SP" >"$D/camsim.log" 2>&1 &
  SIMPID=$!
  sleep 1
  {
    printf '[storage]\ndata_dir = "%s/data"\n\n[http]\nlisten = "127.0.0.1:%s"\n\n' "$D" "$HP"
    printf '[policies.p]\nvideo = "1d"\nkeytags = "1d"\n\n[[sites]]\nid = "s"\npolicy = "p"\n'
    for ((i=0; i<N; i++)); do
      printf '\n[[cameras]]\nid = "cam-%d"\nsite = "s"\nurl = "rtsp://127.0.0.1:%s/cam%d"\n' $i "$SP" $i
    done
    printf '\n[logbook]\nunkeyed = true\ncheckpoint_dir = "%s/checkpoints"\n' "$D"
  } >"$D/holdfast.toml"
  RUST_LOG=error "$BIN" run --config "$D/holdfast.toml" >"$D/daemon.log" 2>&1 &
  PID=$!
  sleep "$WARM"
  F0=$(metric_sum "$HP" holdfast_camera_frames_total)
  if [ -n "$REC" ]; then
    perf record -q -g -F 999 -p "$PID" -o "$REC/$(basename "$BIN").data" -- \
      perf stat -x, -e task-clock,instructions,context-switches -p "$PID" -o "$D/stat" -- sleep "$SECS"
  else
    perf stat -x, -e task-clock,instructions,context-switches -p "$PID" -o "$D/stat" -- sleep "$SECS"
  fi
  F1=$(metric_sum "$HP" holdfast_camera_frames_total)
  kill -TERM "$PID"; wait "$PID" || true
  kill -TERM "$SIMPID"; wait "$SIMPID" || true
  TC=$(awk -F, '$3=="task-clock"{printf "%d", $1}' "$D/stat")
  INS=$(awk -F, '$3 ~ /^instructions/{print $1}' "$D/stat")
  CS=$(awk -F, '$3=="context-switches"{print $1}' "$D/stat")
  FR=$((F1-F0))
  echo "$(basename "$BIN") N=$N secs=$SECS task-clock-ms=$TC instructions=$INS ctx-switches=$CS frames=$FR us-per-frame=$(awk -v t="$TC" -v f="$FR" 'BEGIN{if(f>0) printf "%.2f", t*1000/f; else print "nan"}') instr-per-frame=$(awk -v i="$INS" -v f="$FR" 'BEGIN{if(f>0 && i ~ /^[0-9]+$/) printf "%d", i/f; else print "nan"}')"
  rm -rf "$D"
done
