#!/usr/bin/env bash
# The GPU check (issue 31, item 4): one command, one JSON file, at most 8 minutes on one H100.
#
#   bash bench/gpu_check.sh [--out FILE] [--dry-run]      (default FILE: bench/results/gpu_check.json)
#
# It runs the two existing benchmarks and merges their numbers (nothing is measured here):
#   1. bench/bench_throughput.py: step and epoch time, variants fp32 (data loaded in the main process),
#      workers (fp32 + loader workers), bf16 (+ workers) and bf16+cl (+ channels-last), at the paper's
#      sizes (257x188 spectrograms, 3 frames of 224 px, batch 64, two ResNet-18) and the tiny default;
#      FLOPs per step against the spec sheet's bf16 peak; torch.cuda.max_memory_allocated per variant.
#   2. bench/bench_scaling.py packing: real studies (tune.py, the tiny synthetic default) with 1, 2
#      and 4 trials on the GPU (--gpus-per-trial 1 / 0.5 / 0.25), after an unmeasured warm-up study;
#      trials per hour, and the GPU memory of a trial (nvidia-smi, sampled every 0.5 s).
#
# The JSON's top-level keys (always all of them; null where a number was not measured):
#   schema            "bmlr-gpu-check/1"
#   dry_run           true for --dry-run (CPU, tiny sizes: checks the pipeline, the numbers mean nothing)
#   date              UTC, ISO 8601
#   device, torch, cpus, spec_peak_tflops, matmul_tflops
#                     the device, torch's version, the CPUs a trial had, the spec sheet's dense bf16
#                     peak (null off the built-in table and on a CPU) and a measured large-matmul rate
#   throughput        {"paper"|"tiny": {"description", "variants": {"fp32"|"workers"|"bf16"|"bf16+cl": {
#                       "measured", "step_s" (steps back to back), "compute_s" (forward + backward +
#                       optimizer, synchronised median), "samples_per_s", "epoch_s", "epoch_source"
#                       (tiny: a measured train epoch; paper: step_s x the 105 steps of a CREMA-D-sized
#                       epoch), "val_epoch_s", "fraction_of_peak" (FLOPs per step / step_s / spec peak),
#                       "fraction_of_peak_compute" (the same over forward + backward), "fraction_of_matmul",
#                       "gpu_peak_alloc_mib"}}}}
#   bf16_vs_fp32, bf16_cl_vs_fp32
#                     {"paper"|"tiny": {"step", "compute"}}: fp32's time / the variant's (> 1: faster).
#                     "step" includes the loader workers the bf16 variants use; "compute" is the
#                     precision and memory layout alone
#   fraction_of_peak  one trial on the whole device: {"size": "paper", "variant" (the fastest),
#                     "of_spec_peak", "of_spec_peak_compute", "of_matmul"}
#   packing           {"1"|"2"|"4": {"gpus_per_trial", "trials", "wall_s", "trials_per_hour" (from the
#                       study's wall time), "trials_per_hour_training" (first trial's start to last
#                       trial's end), "vs_1", "max_parallel", "gpu_mem_mib_per_trial" (the most one
#                       process held on the GPU; where nvidia-smi lists no processes, the GPU's peak
#                       use over the study's start / trials per GPU), "gpu_mem_source", "gpu_mem_peak_mib"}}
#   raw               {"throughput", "packing"}: the two scripts' own JSON, complete
#   commands          {"throughput", "packing"}: the command lines that produced them
#
# Sizes and time (H100, 16 cores; an estimate, not yet measured: no GPU was lent to the session
# that wrote this). Throughput, ~150-180 s (hard limit 240 s): --steps 10 (+ 2 warm-up and 10 back
# to back) per variant and size, 2 timed epochs of the tiny default; the paper-size fp32 variant
# loads 64 clips of 3 JPEG frames per step in the main process (7 s on the 2-core CPU machine,
# ~2-3 s expected here), ~60-70 s; the other variants load with 8 workers, ~10-15 s each; 588
# paper-size clips are generated once into the data cache ($BMLR_CACHE or ~/.cache/bmlr; a rerun
# reuses them), ~30 s. Packing, ~220-280 s (hard limit: what is left of 470 s; 150 s per study):
# a 2-trial warm-up, then 8 trials x 3 epochs per setting (a trial: ~5-10 s of process and CUDA
# start, ~1-2 s per tiny epoch), --report none. gpu_peak_alloc_mib is torch's allocator peak (all
# four variants' models are resident); gpu_mem_mib_per_trial is nvidia-smi's (CUDA context too).
# A step that fails or overruns stops the check with an error and its log's tail.
#
# --dry-run: the same pipeline on the CPU, to check it (tests/test_gpu_check.py): --device cpu,
# variants fp32 and workers (bf16 and bf16+cl: null), a width-4 ResNet on 32 px frames, batch 8,
# 2 steps, 4 paper-size clips per class; packing with --fake-gpus (Ray advertises a GPU, trials
# train on the CPU; GPU memory: null), one 1-epoch trial per setting; throughput runs beside
# packing. About 35-45 s on 2 idle CPU cores, 60-90 s while other jobs load them.
set -euo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/bench/results/gpu_check.json"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "error: --out needs a file" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
DEADLINE=470  # seconds: the whole check, leaving time for the merge within 8 minutes
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
finish() {
  local rc=$?
  if [ "$rc" -eq 0 ]; then rm -rf "$WORK"
  elif ! rmdir "$WORK" 2>/dev/null; then echo "gpu_check: failed (exit $rc); logs kept in $WORK" >&2; fi
}
trap finish EXIT

# step NAME LIMIT_S COMMAND...: the command under a hard limit (SIGINT first, so that the Python
# scripts' cleanup stops the Ray processes they started), its output shown and kept in WORK/NAME.log
step() {
  local name=$1 limit=$2 rc=0 start=$SECONDS
  shift 2
  echo "gpu_check: $name (at most ${limit}s): $*"
  timeout -s INT -k 30 "$limit" "$@" 2>&1 | tee "$WORK/$name.log" || rc=$?
  echo "gpu_check: $name took $((SECONDS - start))s (${SECONDS}s so far)"
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "error: step '$name' ran past its ${limit}s limit" >&2 \
      || echo "error: step '$name' failed (exit $rc)" >&2
    echo "--- the end of its log ($WORK/$name.log) ---" >&2
    tail -n 30 "$WORK/$name.log" >&2
    exit 1
  fi
}

if [ "$DRY" -eq 1 ]; then
  TINY=(--set model_width=4 --set model_depth=1 --set image_size=32 --set frames=2)
  step data 60 "$PY" -c "from bmlr.data.synthetic import generate; generate('$WORK/data', seed=0, \
n_train_per_class=6, n_test_per_class=1, n_val_per_class=1, image_size=32, n_frames=2)"
  THROUGHPUT=("$PY" "$ROOT/bench/bench_throughput.py" --device cpu --sizes tiny,paper --variants fp32,workers
              --steps 2 --warmup 1 --epoch-rounds 1 --cpus 2 --batch 8 "${TINY[@]}" --set val_fraction=0.3
              --paper-clips-per-class 4 --data-root "$WORK/data" --cache-dir "$WORK/cache")
  PACKING=("$PY" "$ROOT/bench/bench_scaling.py" packing --fake-gpus --cpus 2 --samples 1 --max-epochs 1
           --no-warmup --report none "${TINY[@]}" --set batch_size=8 --data-root "$WORK/data" --timeout 120)
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: torch sees no CUDA GPU here; on a CPU machine run: bash bench/gpu_check.sh --dry-run" >&2; exit 1; }
  THROUGHPUT=("$PY" "$ROOT/bench/bench_throughput.py" --sizes tiny,paper --variants fp32,workers,bf16,bf16+cl
              --steps 10 --warmup 2 --epoch-rounds 2 --paper-clips-per-class 96)
  PACKING=("$PY" "$ROOT/bench/bench_scaling.py" packing --gpus 1 --samples 8 --max-epochs 3 --report none
           --timeout 150)
fi

if [ "$DRY" -eq 1 ]; then  # CPU timings mean nothing here: throughput runs beside packing, to keep it short
  step throughput 120 "${THROUGHPUT[@]}" --json "$WORK/throughput.json" > /dev/null &
  throughput_pid=$!
  step packing 180 "${PACKING[@]}" --json "$WORK/packing.json"
  wait "$throughput_pid" || exit 1  # its error and log's tail are printed above
  echo "gpu_check: throughput done (its log: $WORK/throughput.log, removed on success)"
else  # one after the other: the GPU's numbers
  step throughput 240 "${THROUGHPUT[@]}" --json "$WORK/throughput.json"
  left=$((DEADLINE - SECONDS))
  [ "$left" -ge 60 ] || { echo "error: only ${left}s left of the ${DEADLINE}s for the packing run" >&2; exit 1; }
  step packing "$left" "${PACKING[@]}" --json "$WORK/packing.json"
fi

# the merge: the two JSON files -> one, every key present
"$PY" - "$WORK/throughput.json" "$WORK/packing.json" "$OUT" "$DRY" "${THROUGHPUT[*]}" "${PACKING[*]}" <<'EOF'
import datetime
import json
import sys

tp_path, pack_path, out, dry, tp_cmd, pack_cmd = sys.argv[1:]
tp, pack = json.load(open(tp_path)), json.load(open(pack_path))
peak, matmul = tp["spec_peak_tflops"], tp["matmul_tflops"]
VARIANTS, SIZES, PER_GPU = ("fp32", "workers", "bf16", "bf16+cl"), ("paper", "tiny"), (1, 2, 4)


def share(flops, seconds, tflops):
    return flops / seconds / 1e12 / tflops if flops and seconds and tflops else None


def ratio(a, b):
    return a / b if a and b else None


throughput = {}
for size in SIZES:
    got = tp["sizes"].get(size, {"description": None, "rows": []})
    rows = {r["variant"]: r for r in got["rows"]}
    flops = next((r["flops_per_step"] for r in got["rows"] if r.get("flops_per_step")), None)
    variants = {}
    for name in VARIANTS:
        r = rows.get(name, {})
        fwd_bwd = r["phases_s"]["forward"] + r["phases_s"]["backward"] if r else None
        measured_epoch = r.get("train_epoch_s")
        variants[name] = {
            "measured": bool(r), "step_s": r.get("step_s"), "compute_s": r.get("compute_s"),
            "samples_per_s": r.get("samples_per_s"),
            "epoch_s": measured_epoch if measured_epoch is not None else r.get("cremad_epoch_s"),
            "epoch_source": (f"measured: a train epoch of {r['train_steps_per_epoch']} steps" if measured_epoch
                             else "step_s x the steps of a CREMA-D-sized epoch (6698 clips)"
                             if r.get("cremad_epoch_s") is not None else None),
            "val_epoch_s": r.get("val_epoch_s"),
            "fraction_of_peak": share(flops, r.get("step_s"), peak),
            "fraction_of_peak_compute": share(flops, fwd_bwd, peak),
            "fraction_of_matmul": share(flops, r.get("step_s"), matmul),
            "gpu_peak_alloc_mib": r["peak_mem_gb"] * 1e9 / 2 ** 20 if r.get("peak_mem_gb") is not None else None}
    throughput[size] = {"description": got["description"], "variants": variants}


def versus(name):
    out = {}
    for size in SIZES:
        v = throughput[size]["variants"]
        out[size] = {k: ratio(v["fp32"][k + "_s"], v[name][k + "_s"]) for k in ("step", "compute")}
    return out


paper = throughput["paper"]["variants"]
fastest = min((n for n in VARIANTS if paper[n]["measured"]), key=lambda n: paper[n]["step_s"], default=None)
best = paper.get(fastest, {})
rows = {r["per_gpu"]: r for r in pack["rows"]}
packing = {}
for n in PER_GPU:
    r = rows.get(n, {})
    per_process, device_peak = r.get("gpu_mem_max_process_mib"), r.get("gpu_mem_peak_mib")
    mem, source = ((per_process, "nvidia-smi: the most one process held") if per_process is not None else
                   (device_peak / n, "nvidia-smi: the GPU's peak use / trials per GPU") if device_peak is not None
                   else (None, None))
    packing[str(n)] = {
        "gpus_per_trial": 1 / n, "trials": r.get("trials"), "wall_s": r.get("wall_s"),
        "trials_per_hour": r.get("trials_per_hour"), "trials_per_hour_training": r.get("trials_per_hour_training"),
        "vs_1": ratio(r.get("trials_per_hour"), rows.get(1, {}).get("trials_per_hour")),
        "max_parallel": r.get("max_parallel"), "gpu_mem_mib_per_trial": mem, "gpu_mem_source": source,
        "gpu_mem_peak_mib": device_peak}
result = {
    "schema": "bmlr-gpu-check/1", "dry_run": dry == "1",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device": tp["device"], "torch": tp["torch"], "cpus": tp["cpus"], "spec_peak_tflops": peak,
    "matmul_tflops": matmul, "throughput": throughput,
    "bf16_vs_fp32": versus("bf16"), "bf16_cl_vs_fp32": versus("bf16+cl"),
    "fraction_of_peak": {"size": "paper", "variant": fastest, "of_spec_peak": best.get("fraction_of_peak"),
                         "of_spec_peak_compute": best.get("fraction_of_peak_compute"),
                         "of_matmul": best.get("fraction_of_matmul")},
    "packing": packing, "raw": {"throughput": tp, "packing": pack},
    "commands": {"throughput": tp_cmd, "packing": pack_cmd}}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(f"gpu_check: wrote {out}")


def num(x, scale=1.0, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x * scale)


for size in SIZES:
    for name, v in throughput[size]["variants"].items():
        print(f"  {size:5s} {name:8s} step {num(v['step_s'], 1e3)} ms, epoch {num(v['epoch_s'])} s, "
              f"{num(v['fraction_of_peak'], 100)} % of peak, {num(v['gpu_peak_alloc_mib'], 1, '{:.0f}')} MiB")
for n, v in packing.items():
    print(f"  {n} per GPU: {num(v['trials_per_hour'], 1, '{:.0f}')} trials/h, "
          f"{num(v['gpu_mem_mib_per_trial'], 1, '{:.0f}')} MiB per trial")
EOF
