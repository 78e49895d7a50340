#!/usr/bin/env bash
# On-device latency of the bundled artifacts on an Android phone over adb.
#
#   scripts/bench_android.sh [ARTIFACT_DIR] [THREADS] [RUNS]
#   (defaults: artifacts/android 2 50)
#
# Needs: adb with one device attached (arm64-v8a), python3 on the host, and two device binaries you build
# or download yourself (NOT part of this repo, and nothing here can run them: this machine has no phone):
#   ET_RUNNER   ExecuTorch's executor runner with XNNPACK and the quantized kernels linked in
#               (default: ./bin/android-arm64/executor_runner); see docs/on_device_benchmarks.md
#   TFL_BENCH   LiteRT's benchmark_model for android_aarch64 (default: ./bin/android-arm64/benchmark_model)
#
# Results: bench_android/<file>.log on the host, one per model file, and a summary on stdout.
set -euo pipefail

ARTIFACTS="${1:-artifacts/android}"
THREADS="${2:-2}"
RUNS="${3:-50}"
ET_RUNNER="${ET_RUNNER:-bin/android-arm64/executor_runner}"
TFL_BENCH="${TFL_BENCH:-bin/android-arm64/benchmark_model}"
DEVICE_DIR="${DEVICE_DIR:-/data/local/tmp/albert_bench}"
OUT="${OUT:-bench_android}"

command -v adb >/dev/null || { echo "adb not found" >&2; exit 2; }
[ -f "$ARTIFACTS/manifest.json" ] || { echo "no manifest.json in $ARTIFACTS" >&2; exit 2; }
adb get-state >/dev/null || { echo "no device attached" >&2; exit 2; }
mkdir -p "$OUT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Real inputs: the first golden case, written as raw little-endian int64 files (executor_runner --inputs),
# in the order each .pte declares its inputs; and LiteRT value ranges that stay inside the vocabulary.
python3 - "$ARTIFACTS" "$TMP" <<'PY'
import json, struct, sys, pathlib
folder, tmp = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
manifest = json.loads((folder / "manifest.json").read_text())
case = json.loads((folder / "golden.json").read_text())["cases"][0]
for name in ("input_ids", "attention_mask", "token_type_ids"):
    (tmp / f"{name}.bin").write_bytes(struct.pack(f"<{len(case[name])}q", *case[name]))
lines = []
for f in manifest["files"]:
    if f.get("runtime") not in ("executorch", "litert"):
        continue
    names = [t["name"] for t in f["inputs"]]
    lines.append("\t".join([f["runtime"], f["path"], ",".join(names)]))
(tmp / "files.tsv").write_text("\n".join(lines) + "\n")
PY

adb shell mkdir -p "$DEVICE_DIR"
adb push "$TMP"/*.bin "$DEVICE_DIR/" >/dev/null
[ -f "$ET_RUNNER" ] && adb push "$ET_RUNNER" "$DEVICE_DIR/executor_runner" >/dev/null && adb shell chmod +x "$DEVICE_DIR/executor_runner"
[ -f "$TFL_BENCH" ] && adb push "$TFL_BENCH" "$DEVICE_DIR/benchmark_model" >/dev/null && adb shell chmod +x "$DEVICE_DIR/benchmark_model"

while IFS=$'\t' read -r runtime file names; do
  adb push "$ARTIFACTS/$file" "$DEVICE_DIR/$file" >/dev/null
  log="$OUT/$file.log"
  if [ "$runtime" = executorch ]; then
    [ -f "$ET_RUNNER" ] || { echo "skip $file: no ExecuTorch runner at $ET_RUNNER"; continue; }
    inputs=""
    IFS=, read -ra parts <<<"$names"
    for n in "${parts[@]}"; do inputs="${inputs:+$inputs,}$DEVICE_DIR/$n.bin"; done
    # one cold execution (load + first run), then the timed loop
    adb shell "cd $DEVICE_DIR && ./executor_runner --model_path=$file --inputs=$inputs --cpu_threads=$THREADS \
      --num_executions=$RUNS --print_output=none" >"$log" 2>&1 || echo "executor_runner failed for $file (see $log)"
    grep -iE "model executed|execution time|average|ms" "$log" | tail -3 | sed "s|^|$file: |"
  else
    [ -f "$TFL_BENCH" ] || { echo "skip $file: no benchmark_model at $TFL_BENCH"; continue; }
    # token ids inside a small vocabulary range, masks all ones, token types zero
    ranges=""
    IFS=, read -ra parts <<<"$names"
    for n in "${parts[@]}"; do
      case "$n" in
        *input_ids*) r="$n,1,100";; *attention_mask*) r="$n,1,1";; *) r="$n,0,0";;
      esac
      ranges="${ranges:+$ranges:}$r"
    done
    adb shell "cd $DEVICE_DIR && ./benchmark_model --graph=$file --num_threads=$THREADS --num_runs=$RUNS \
      --warmup_runs=5 --use_xnnpack=true --input_layer_value_range=$ranges --report_peak_memory_footprint=true" \
      >"$log" 2>&1 || echo "benchmark_model failed for $file (see $log)"
    grep -E "Inference timings|Peak memory|Memory footprint" "$log" | sed "s|^|$file: |"
  fi
done <"$TMP/files.tsv"
echo "logs in $OUT/"
