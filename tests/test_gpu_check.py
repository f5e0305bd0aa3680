"""Issue 31, item 4: `bench/gpu_check.sh`, the one GPU check, run here as `--dry-run` (the whole
pipeline on the CPU: bench_throughput at tiny sizes, bench_scaling packing with --fake-gpus, the
merge): it exits 0 and writes one JSON file with every key, numbers where the CPU measures them
and null where only a GPU does (bf16 variants, the spec peak, GPU memory). No timing is asserted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# every key of the JSON, as bench/gpu_check.sh's header documents them
TOP = {"schema", "dry_run", "date", "device", "torch", "cpus", "spec_peak_tflops", "matmul_tflops", "throughput",
       "bf16_vs_fp32", "bf16_cl_vs_fp32", "fraction_of_peak", "packing", "raw", "commands"}
SIZES = {"paper", "tiny"}
VARIANTS = {"fp32", "workers", "bf16", "bf16+cl"}
VARIANT_KEYS = {"measured", "step_s", "compute_s", "samples_per_s", "epoch_s", "epoch_source", "val_epoch_s",
                "fraction_of_peak", "fraction_of_peak_compute", "fraction_of_matmul", "gpu_peak_alloc_mib"}
FRACTION_KEYS = {"size", "variant", "of_spec_peak", "of_spec_peak_compute", "of_matmul"}
PER_GPU = {"1", "2", "4"}
PACKING_KEYS = {"gpus_per_trial", "trials", "wall_s", "trials_per_hour", "trials_per_hour_training", "vs_1",
                "max_parallel", "gpu_mem_mib_per_trial", "gpu_mem_source", "gpu_mem_peak_mib"}
# measured by the dry run on the CPU (the rest of the keys are null there)
CPU_MEASURED = ("step_s", "compute_s", "samples_per_s", "epoch_s", "fraction_of_matmul")
PACKING_MEASURED = ("trials", "wall_s", "trials_per_hour", "trials_per_hour_training", "vs_1", "max_parallel")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and x >= 0


@pytest.mark.slow  # starts a Ray head (bench_scaling --fake-gpus) and three tiny studies
def test_the_gpu_check_dry_run_writes_every_key(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(tmp_path))
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # the bench scripts stop their Ray processes on SIGINT
        try:
            log, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        pytest.fail(f"gpu_check.sh --dry-run did not finish in 300 s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]
    assert not list(tmp_path.glob("gpu-check-*")), "the work folder is removed on success"

    d = json.loads(out.read_text())
    assert set(d) == TOP
    assert d["dry_run"] is True and d["schema"] == "bmlr-gpu-check/1"
    assert isinstance(d["device"], str) and isinstance(d["torch"], str) and isinstance(d["date"], str)
    assert is_number(d["cpus"]) and is_number(d["matmul_tflops"])
    assert d["spec_peak_tflops"] is None  # a CPU has no spec-sheet bf16 peak

    assert set(d["throughput"]) == SIZES
    for size in SIZES:
        got = d["throughput"][size]
        assert set(got) == {"description", "variants"} and isinstance(got["description"], str)
        assert set(got["variants"]) == VARIANTS
        for name, v in got["variants"].items():
            assert set(v) == VARIANT_KEYS, (size, name)
            assert v["measured"] is (name in ("fp32", "workers")), (size, name)  # no bf16 on a CPU
            for key in CPU_MEASURED:
                assert is_number(v[key]) if v["measured"] else v[key] is None, (size, name, key)
            assert v["fraction_of_peak"] is None and v["gpu_peak_alloc_mib"] is None
        assert isinstance(got["variants"]["fp32"]["epoch_source"], str)
    assert is_number(d["throughput"]["tiny"]["variants"]["fp32"]["val_epoch_s"])  # a measured epoch

    for key in ("bf16_vs_fp32", "bf16_cl_vs_fp32"):
        assert set(d[key]) == SIZES
        assert all(d[key][size] == {"step": None, "compute": None} for size in SIZES)
    fraction = d["fraction_of_peak"]
    assert set(fraction) == FRACTION_KEYS
    assert fraction["size"] == "paper" and fraction["variant"] in ("fp32", "workers")
    assert is_number(fraction["of_matmul"]) and fraction["of_spec_peak"] is None

    assert set(d["packing"]) == PER_GPU
    for n, p in d["packing"].items():
        assert set(p) == PACKING_KEYS, n
        assert p["gpus_per_trial"] == pytest.approx(1 / int(n))
        for key in PACKING_MEASURED:
            assert is_number(p[key]), (n, key)
        assert p["trials"] >= 1
        assert p["gpu_mem_mib_per_trial"] is None and p["gpu_mem_peak_mib"] is None  # --fake-gpus: no GPU
    assert d["packing"]["1"]["vs_1"] == pytest.approx(1.0)

    assert set(d["raw"]) == {"throughput", "packing"} and d["raw"]["packing"]["what"] == "packing"
    assert "--fake-gpus" in d["commands"]["packing"] and "--device cpu" in d["commands"]["throughput"]
