"""How a study's cost grows, and how many trials an hour a machine gets through.

Every measurement runs a real study (`tune.py` in a subprocess, the tiny synthetic default
unless --set says otherwise) and watches it: wall time, peak memory of the whole process tree
(driver, Ray's processes, every trial; proportional set size, so shared pages count once),
the GPUs' memory where nvidia-smi answers (the peak over the study, the most one process held),
the study folder's size on disk, and trial intervals from Ray's results (how many ran at once).

    python bench/bench_scaling.py samples       # 8, 16, 32 trials (TPE + ASHA defaults)
    python bench/bench_scaling.py data          # 50, 100 (the default), 200, 400 clips per class
    python bench/bench_scaling.py concurrency   # --concurrent 1, 2, 4 on this machine's CPUs
    python bench/bench_scaling.py packing       # 1, 2, 4 trials per GPU (--gpus-per-trial 1, 0.5, 0.25)

`packing` needs GPUs; `--fake-gpus N` runs it on a CPU machine against a `ray start` head that
advertises N GPUs (the trials then train on the CPU: this checks Ray's placement of fractional
trials, not GPU speed). Ratios are to the first setting of the same run. Results: --json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    e = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


# --- memory of a process tree (/proc, no psutil) -----------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def gpu_mib(query: str) -> list[int] | None:
    """One integer per row of `nvidia-smi --query-<query> --format=csv,noheader,nounits` (MiB);
    None without nvidia-smi (no GPU, or --fake-gpus)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, f"--query-{query}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [int(v) for v in out.split() if v.isdigit()]


class MemoryWatch(threading.Thread):
    """Peak summed PSS of a process and all its descendants, sampled every `every` seconds; with
    nvidia-smi also the GPUs' memory in use (summed, the first sample as the baseline) and the most
    one process on a GPU held (a trial; None where nvidia-smi lists no processes, as in some containers)."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kb, self.peak_procs = pid, every, 0, 0
        self.gpu_base_mib = self.gpu_peak_mib = self.gpu_process_mib = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = tree(self.pid)
            total = sum(pss_kb(p) for p in pids)
            if total > self.peak_kb:
                self.peak_kb, self.peak_procs = total, len(pids)
            used, procs = gpu_mib("gpu=memory.used"), gpu_mib("compute-apps=used_memory")
            if used:
                self.gpu_base_mib = sum(used) if self.gpu_base_mib is None else self.gpu_base_mib
                self.gpu_peak_mib = max(self.gpu_peak_mib or 0, sum(used))
            if procs:
                self.gpu_process_mib = max(self.gpu_process_mib or 0, *procs)
            self._done.wait(self.every)

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


# --- one study ----------------------------------------------------------------------------------
def run_study(args, work: Path, name: str, extra: list[str], data_root: Path | None = None) -> dict[str, Any]:
    from bmlr.tuning.store import read_json_lines

    storage = work / "runs"
    cmd = [sys.executable, str(ROOT / "tune.py"), "--storage", str(storage), "--name", name, "-v", "0",
           "--set", f"cache_dir={work / 'cache'}", *extra]
    for item in args.set:
        cmd += ["--set", item]
    if args.report:
        cmd += ["--report", args.report]
    if data_root is not None:
        cmd += ["--data-root", str(data_root)]
    log = (work / f"{name}.log").open("w")
    start = time.time()
    proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    watch = MemoryWatch(proc.pid)
    watch.start()
    try:
        rc = proc.wait(args.timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        watch.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    wall = time.time() - start
    study = storage / "synthetic" / name
    text = (work / f"{name}.log").read_text()
    if rc != 0:
        raise SystemExit(f"study {name} failed (exit {rc}):\n{text[-3000:]}")
    prepared = next((float(line.rsplit("prepared in ", 1)[1].split("s")[0]) for line in text.splitlines()
                     if "prepared in" in line), None)
    intervals, epochs = [], 0
    for result in (study / "ray").glob("trial_*/result.json"):
        rows = read_json_lines(result)
        if rows:
            epochs += len(rows)
            intervals.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, d in events:
        running += d
        most = max(most, running)
    span = (max(e for _, e in intervals) - min(s for s, _ in intervals)) if intervals else None
    return {"name": name, "wall_s": wall, "trials": len(intervals), "epochs": epochs,
            "trials_per_hour": len(intervals) / wall * 3600,
            "trials_per_hour_training": len(intervals) / span * 3600 if span else None,
            "epochs_per_hour": epochs / wall * 3600, "max_parallel": most,
            "peak_pss_gb": watch.peak_kb / 1024 ** 2, "processes_at_peak": watch.peak_procs,
            "gpu_mem_peak_mib": watch.gpu_peak_mib and watch.gpu_peak_mib - watch.gpu_base_mib,
            "gpu_mem_max_process_mib": watch.gpu_process_mib,
            "study_disk_mb": du(study) / 1e6, "mlflow_db_mb": du(storage / "mlflow.db") / 1e6,
            "data_prepare_s": prepared}


def show(title: str, rows: list[dict[str, Any]], key: str) -> None:
    print(f"\n{title}")
    print(f"  {key:>12s} {'wall':>8s} {'vs first':>8s} {'trials':>6s} {'epochs':>6s} {'trials/h':>9s} "
          f"{'vs first':>8s} {'parallel':>8s} {'peak mem':>9s} {'vs first':>8s} {'study dir':>9s}")
    f = rows[0]
    for r in rows:
        print(f"  {str(r[key]):>12s} {r['wall_s']:7.0f}s {r['wall_s'] / f['wall_s']:7.2f}x {r['trials']:6d} "
              f"{r['epochs']:6d} {r['trials_per_hour']:9.0f} {r['trials_per_hour'] / f['trials_per_hour']:7.2f}x "
              f"{r['max_parallel']:8d} {r['peak_pss_gb']:8.2f}G {r['peak_pss_gb'] / f['peak_pss_gb']:7.2f}x "
              f"{r['study_disk_mb']:8.1f}M" + (f"  data prepared in {r['data_prepare_s']:.1f}s"
                                               if r.get("data_prepare_s") is not None and key == "clips/class" else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(cpus: int, gpus: int, temp_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus",
                             str(cpus), "--num-gpus", str(gpus), "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", temp_dir,
                             "--object-store-memory", str(200 * 1024 ** 2)],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from bmlr.tuning.ray_backend import check_address

    check_address(f"127.0.0.1:{port}", timeout=90)  # RayStartError where it does not come up
    return proc, f"127.0.0.1:{port}"


def stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(10)
            return
        except (ProcessLookupError, PermissionError):
            return
        except subprocess.TimeoutExpired:
            continue


# per measurement: the rows' key, its default values, a row's progress line, the table's title
WHAT = {"samples": ("samples", "8,16,32", "{} samples", "wall time and memory against the number of trials "
                    "(TPE + ASHA defaults, at most {max_epochs} epochs, tiny synthetic default)"),
        "data": ("clips/class", "50,100,200,400", "{} clips per class",
                 "wall time and memory against the data set size ({runs}, no early stopping)"),
        "concurrency": ("concurrent", "1,2,4", "--concurrent {}", "trials per hour against --concurrent ({runs}, "
                        "no early stopping, --cpus-per-trial = {cpus} / concurrent)"),
        "packing": ("per_gpu", "1,2,4", "{} trials per GPU", "trials per hour against trials per GPU ({gpus}; {runs})")}


def study_args(args, value: int, work: Path) -> tuple[list[str], Path | None]:
    """tune.py's arguments of the study that measures `value` (after the common ones), and its data
    folder (`data` only). Grace = max epochs: no trial is stopped early, so every setting does the
    same work (but `samples`, which measures the TPE + ASHA defaults)."""
    fixed = ["--samples", str(args.samples), "--grace-period", str(args.max_epochs)]
    concurrent = ["--concurrent", str(args.concurrent)] if args.concurrent else []
    if args.what == "samples":
        return ["--samples", str(value), *concurrent], None
    if args.what == "data":
        from bmlr.data.synthetic import generate

        root = work / f"data-{value}"
        if not (root / ".complete").exists():
            generate(root, seed=0, version="v2", n_train_per_class=value)
        return fixed + concurrent, root
    if args.what == "concurrency":
        return fixed + ["--concurrent", str(value), "--cpus-per-trial", f"{args.cpus / value:g}"], None
    trials = value * args.gpus
    return fixed + ["--gpus-per-trial", f"{1 / value:g}", "--cpus-per-trial", f"{args.cpus / trials:g}",
                    "--concurrent", str(trials)], None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=tuple(WHAT))
    p.add_argument("--values", help="comma-separated settings (default: see the description)")
    p.add_argument("--samples", type=int, default=8, help="trials of each study (data, concurrency, packing)")
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--concurrent", type=int, help="trials at once (samples, data; default: as many as fit)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs the studies may use")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (packing)")
    p.add_argument("--fake-gpus", action="store_true", help="packing on a CPU machine: a Ray head advertising --gpus")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to tune.py")
    p.add_argument("--report", choices=("full", "fast", "none"), help="the studies' report (default: tune.py's)")
    p.add_argument("--data-root", help="samples, concurrency, packing: a synthetic data folder (default: "
                   "tune.py's generated default)")
    p.add_argument("--work", help="folder for the studies (default: a temporary one, removed afterwards)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the unmeasured 2-trial, 1-epoch study that runs first, so that first-run costs "
                   "(generating and caching the data, Ray's first start, cold imports) land on no row")
    return p.parse_args(argv)


def measure(args, work: Path, base: list[str]) -> list[dict[str, Any]]:
    """The unmeasured warm-up study, then one study per setting, its row printed as it ends."""
    key, defaults, progress, title = WHAT[args.what]
    if args.warmup:
        start = time.time()
        run_study(args, work, "warmup", [*base, "--samples", "2", "--max-epochs", "1"], args.data_root)
        print(f"  warm-up study (not measured): {time.time() - start:.0f}s", flush=True)
    rows = []
    for value in [int(v) for v in (args.values or defaults).split(",")]:
        extra, data_root = study_args(args, value, work)
        row = {key: value, **run_study(args, work, f"{args.what}-{value}", base + extra, data_root or args.data_root)}
        if args.what == "data":
            row.update(train_clips=6 * value, cache_mb=du(work / "cache") / 1e6)
        rows.append(row)
        print(f"  {progress.format(value)}: {row['wall_s']:.0f}s", flush=True)
    gpus = f"{args.gpus} GPU{'s' if args.gpus > 1 else ''}" + (
        ", advertised by Ray only: trials train on the CPU" if args.fake_gpus else "")
    show(title.format(max_epochs=args.max_epochs, cpus=args.cpus, gpus=gpus,
                      runs=f"{args.samples} trials of {args.max_epochs} epochs"), rows, key)
    return rows


def main(argv: list[str] | None = None) -> int:
    import platform

    args = parse_args(argv)
    if args.what == "packing" and not args.fake_gpus:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("packing needs a GPU; --fake-gpus checks Ray's placement on a CPU machine")
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix=f"bench-{args.what}-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.node()}, {os.cpu_count()} CPU cores visible, load average "
          f"{os.getloadavg()[0]:.1f} at start; studies may use {args.cpus} CPUs", flush=True)
    head = temp_dir = None
    try:
        base = ["--max-epochs", str(args.max_epochs), "--num-cpus", str(args.cpus)]
        if args.what == "packing" and args.fake_gpus:
            temp_dir = tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp")
            head, address = start_head(args.cpus, args.gpus, temp_dir)
            base = ["--max-epochs", str(args.max_epochs), "--address", address]
        rows = measure(args, work, base)
    finally:
        if head is not None:
            stop_group(head)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"what": args.what, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
