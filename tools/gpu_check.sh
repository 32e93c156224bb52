#!/usr/bin/env bash
# CUDA artifacts on a lent GPU machine. Here (with TVM and nvcc): prepare the artifacts and their
# reference outputs; there (numpy, ml_dtypes and the NVIDIA driver only): run and time them.
#
#   bash tools/gpu_check.sh prepare gpu_run        build into gpu_run/ (carry it to the GPU machine)
#   bash tools/gpu_check.sh run gpu_run [OUTDIR]   on the GPU: check every case, time the bench decoder
#   bash tools/gpu_check.sh sanitize gpu_run       on the GPU: every case under compute-sanitizer's
#                                                  memcheck, racecheck and synccheck (not on gVisor)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?prepare or run}; dir=${2:?a folder}
case "$mode" in
  prepare)
    python tools/gpu_check.py prepare "$dir.tmp"
    mkdir -p "$dir"
    for d in "$dir.tmp"/*/; do case "$(basename "$d")" in bench_*) ;; *) cp -r "$d" "$dir"/ ;; esac; done
    cp "$dir.tmp"/*_cases.npy "$dir"/
    (cd "$dir.tmp" && tar czf - bench_*) > "$dir/bench.tar.gz"    # periodic weights: about 1.5 GiB -> a few MiB
    rm -rf "$dir.tmp"
    du -sh "$dir" ;;
  run)
    out=${3:-$dir}
    [ -d "$dir/bench_fp32" ] || tar xzf "$dir/bench.tar.gz" -C "$dir"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
    PYTHONUNBUFFERED=1 python3 tools/gpu_check.py run "$dir" --json "$out/gpu_check.json"
    echo "--- per-kernel profile of the fp32 bench decode step at 255 keys (QCOMPILE_PROFILE: synchronized after each step)"
    QCOMPILE_PROFILE=1 python3 - "$dir/bench_fp32" <<'PY' 2>&1 | sort -k1 -g -r | head -24
import sys, numpy as np, json, qcompile
d = sys.argv[1]
m = json.load(open(f"{d}/bench.manifest.json"))
model = qcompile.load(f"{d}/bench.so")
shape = m["inputs"][1]["shape"]
feed = {"input_ids": np.ones((1, 1), np.int64),
        **{i["name"]: np.zeros((1, shape[1], 255, shape[3]), np.float32) for i in m["inputs"][1:]}}
for _ in range(20):
    model(**feed)
del model
PY
    ;;
  sanitize)
    for tool in memcheck racecheck synccheck; do
      echo "--- compute-sanitizer --tool $tool"
      compute-sanitizer --tool "$tool" --error-exitcode 3 python3 tools/gpu_check.py run "$dir" --no-bench 2>&1 \
        | grep -E "SUMMARY|cases match|differ|FAIL"
    done ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
