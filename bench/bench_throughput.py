"""Training throughput: time per step (split into data, host-to-device copy, forward, backward,
optimizer) and per epoch, for the paper's input sizes and for the tiny CPU model, with the
engine's own options (loader workers from the CPUs, bf16 autocast, channels-last, torch.compile).

Two input settings, both through the real data pipeline (cached spectrograms, JPEG frames decoded
and augmented per item, `bmlr.engine.Trainer`'s DataLoader, method step and optimizer):

* ``paper``: 257 x 188 log spectrograms (16 kHz, 3 s, n_fft 512, hop 256), 3 frames of
  224 x 224, batch 64, two ResNet-18 (width 64, 2 blocks per stage). The clips are synthetic
  (the generator at 224 px), written once to the cache.
* ``tiny``: the synthetic default exactly as `python tune.py` trains it (129 x 63 spectrograms,
  3 frames of 32 x 32, batch 64, ResNet width 8, 1 block per stage).

Variants (each a Trainer configuration): ``fp32`` (in-process loading, the default),
``workers`` (num_workers = -1: one loader process per CPU beyond the first), and on a GPU
``bf16`` (amp), ``bf16+cl`` (channels-last), ``bf16+cl+compile``. On a CPU ``cl`` and
``compile`` run too (the code paths the GPU uses) unless left out with --variants.

``--reshaping`` measures the cost of BMLR's label reshaping (equations 3-8) instead: the variants
are the methods ``only_tpo`` and ``bmlr`` (beta 0: every step reshapes) on the same model and
batches, which differ only in the reshaping; after the table the ratio of their median compute
time per step (forward + backward + optimizer) is printed. ``--set`` sizes the model and inputs.

Printed: per variant the median of each phase over the timed steps (the device is synchronised
between phases, so the parts add up to the step), the step time without those synchronisations
(steps back to back, as in training), samples per second, the model's FLOPs per step (counted with
torch's FlopCounterMode on one step) and the FLOP rate they imply, as a share of the device's
peak: the spec sheet's dense bf16 peak on known GPUs (--peak-tflops otherwise) and a measured
large-matmul rate (fp32 on CPU, bf16 on GPU). Steps (and epochs) of the variants are interleaved;
ratios are to the first variant of the same run.

    python bench/bench_throughput.py --sizes tiny             # seconds
    python bench/bench_throughput.py --sizes paper --steps 3  # minutes on a CPU
    python bench/bench_throughput.py                          # both; on a GPU all variants
    python bench/bench_throughput.py --reshaping --sizes tiny --steps 20 --cpus 1 --no-epoch --batch 32 \\
        --set model_width=16 --set model_depth=2 --set image_size=64 --set data_version=v2  # bmlr / only_tpo
    python bench/bench_throughput.py --reshaping --sizes paper   # the same at the paper's sizes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' spec sheets (no sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "L4": 121.0, "A10": 125.0, "V100": 125.0}
PAPER_AUDIO = dict(sample_rate=16000, duration_s=3.0, n_fft=512, hop_length=256)  # -> 257 x 188
CREMAD_TRAIN_CLIPS = 6698  # an epoch of a CREMA-D-sized training set, for the paper setting


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def spec_peak(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, seconds: float = 2.0) -> float:
    """A large matrix product's rate: what this device attains on dense math (fp32 on a CPU, bf16 on a GPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        sync(device)
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e12


# --- data ---------------------------------------------------------------------------------------
def tiny_config(args) -> dict[str, Any]:
    from bmlr.tuning.search_space import load_search_space

    fixed = load_search_space(ROOT / "search_spaces" / "synthetic.yaml").fixed
    cfg = {**fixed, "seeds": [0], "lr": 1e-3, "val_fraction": 0.1}
    if args.data_root:
        cfg["data_root"] = str(Path(args.data_root).resolve())
    return cfg


def paper_data(args, cfg):
    """Synthetic clips with 224 px frames and paper-sized spectrograms, through the real loaders."""
    from bmlr.data.audio import SpectrogramParams, expected_shape
    from bmlr.data.base import build_audio_visual_splits
    from bmlr.data.cache import cache_root
    from bmlr.data.synthetic import CLASS_NAMES, ensure_synthetic

    params = SpectrogramParams(**PAPER_AUDIO)
    assert expected_shape(params) == (257, 188), expected_shape(params)
    root = ensure_synthetic(cache_root(cfg) / "bench-paper", seed=0, version="v2",
                            n_train_per_class=args.paper_clips_per_class, n_test_per_class=2, image_size=224,
                            n_frames=3)
    return build_audio_visual_splits(cfg, root, CLASS_NAMES, params, source=f"bench-paper-{root.name}")


def paper_config(args) -> dict[str, Any]:
    return {"image_size": 224, "frames": 3, "model_width": 64, "model_depth": 2, "batch_size": 64,
            "seeds": [0], "lr": 5e-5, "val_fraction": 0.1}


# --- timing -------------------------------------------------------------------------------------
PHASES = ("data", "h2d", "forward", "backward", "optimizer")


def one_step(trainer, batch_iter, device, phases: dict[str, list[float]] | None, synced: bool) -> int:
    """One training step: `Trainer.train_step`'s public pieces, in its order, with a timestamp
    after each (the device synchronised first where `synced`); returns the batch size."""
    marks = [time.perf_counter()]

    def mark():
        if synced:
            sync(device)
        marks.append(time.perf_counter())

    inputs, labels = next(batch_iter)
    mark()
    inputs, labels = trainer.to_device(inputs, labels)
    mark()
    result = trainer.forward(inputs, labels)
    mark()
    trainer.backward(result.loss)
    mark()
    trainer.optimizer_step()
    mark()
    if phases is not None:
        for name, a, b in zip(PHASES, marks, marks[1:]):
            phases[name].append(b - a)
    return len(labels)


def endless(trainer):
    while True:
        trainer.epoch += 1  # a new shuffle each pass
        yield from trainer.loader("train")


def count_flops(trainer, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    inputs, labels = trainer.to_device(*batch)
    with FlopCounterMode(display=False) as counter:
        result = trainer.forward(inputs, labels)
        trainer.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_variants(variants: list[tuple[str, dict[str, Any]]], base: dict[str, Any], data, args,
                 device) -> list[dict[str, Any]]:
    """All variants side by side, steps interleaved (A B C A B C ...) so that the noise of a shared
    machine hits every variant alike; medians per phase."""
    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    trainers, iters, rows = {}, {}, {}
    for name, overrides in variants:
        cfg = from_dict({**base, **overrides, "device": str(device), "threads": args.cpus})
        trainers[name] = Trainer(cfg, seed=0, data=data, device=device)
        iters[name] = endless(trainers[name])
        start = time.perf_counter()
        for _ in range(args.warmup):  # compile, cuDNN autotuning, allocator, first worker fork
            one_step(trainers[name], iters[name], device, None, synced=True)
        rows[name] = {"variant": name, "overrides": overrides, "workers": trainers[name].num_workers,
                      "warmup_s": time.perf_counter() - start, "batch_size": cfg.batch_size}
        print(f"    {name}: built and warmed up in {rows[name]['warmup_s']:.1f}s", flush=True)
    phases = {name: {p: [] for p in PHASES} for name in trainers}
    for _ in range(args.steps):
        for name, trainer in trainers.items():
            one_step(trainer, iters[name], device, phases[name], synced=True)
    for name in trainers:
        med = {p: statistics.median(v) for p, v in phases[name].items()}
        compute = statistics.median(map(sum, zip(*(phases[name][p] for p in PHASES[2:]))))
        rows[name].update(phases_s=med, step_synced_s=sum(med.values()), step_s=sum(med.values()), compute_s=compute)
    if device.type == "cuda":  # back to back, one synchronisation at the end of each run of steps
        for name, trainer in trainers.items():
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)  # this variant's peak (all variants' models are resident)
            t = time.perf_counter()
            for _ in range(args.steps):
                one_step(trainer, iters[name], device, None, synced=False)
            sync(device)
            rows[name]["step_s"] = (time.perf_counter() - t) / args.steps
            rows[name]["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    for name in trainers:
        rows[name]["samples_per_s"] = rows[name]["batch_size"] / rows[name]["step_s"]
        if args.size == "paper":  # the training steps of a CREMA-D-sized epoch, as printed
            steps = math.ceil(CREMAD_TRAIN_CLIPS / rows[name]["batch_size"])
            rows[name]["cremad_epoch_s"] = steps * rows[name]["step_s"]
    if args.epoch and args.size == "tiny":  # real epochs (train + validation), variants interleaved
        times: dict[str, dict[str, list[float]]] = {n: {"train": [], "val": []} for n in trainers}
        for _ in range(args.epoch_rounds):
            for name, trainer in trainers.items():
                t = time.perf_counter()
                trainer.train_epoch()
                times[name]["train"].append(time.perf_counter() - t)
                t = time.perf_counter()
                trainer.evaluate("val")
                times[name]["val"].append(time.perf_counter() - t)
        for name, trainer in trainers.items():
            rows[name]["train_epoch_s"] = statistics.median(times[name]["train"])
            rows[name]["val_epoch_s"] = statistics.median(times[name]["val"])
            rows[name]["train_steps_per_epoch"] = math.ceil(len(data.train) / trainer.cfg.batch_size)
    first = variants[0][0]
    # the largest batch of one pass (a full one unless the data set is smaller than a batch)
    batch = max(trainers[first].loader("train"), key=lambda b: len(b[1]))
    rows[first]["flops_per_step"] = count_flops(trainers[first], batch)
    return [rows[name] for name, _ in variants]


def variants_for(device: torch.device, wanted: list[str] | None, reshaping: bool) -> list[tuple[str, dict[str, Any]]]:
    if reshaping:  # the two methods differ only in the reshaping; beta 0: it applies at every step
        return [(m, {"method": m, "beta": 0.0, "amp": False, "num_workers": 0}) for m in ("only_tpo", "bmlr")]
    common = {"fp32": {"amp": False, "num_workers": 0}, "workers": {"amp": False, "num_workers": -1}}
    if device.type == "cuda":
        extra = {"bf16": {"amp": True, "num_workers": -1},
                 "bf16+cl": {"amp": True, "num_workers": -1, "channels_last": True},
                 "bf16+cl+compile": {"amp": True, "num_workers": -1, "channels_last": True, "compile": True}}
    else:  # the GPU's code paths, exercised on the CPU (amp is a no-op there)
        extra = {"cl": {"num_workers": -1, "channels_last": True},
                 "cl+compile": {"num_workers": -1, "channels_last": True, "compile": True}}
    allv = {**common, **extra}
    names = wanted or list(allv)
    unknown = [n for n in names if n not in allv]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(allv)}")
    return [(n, allv[n]) for n in names]


def report(size: str, rows: list[dict[str, Any]], device, peak_spec, peak_measured, batch, desc) -> list[str]:
    lines = [f"\n{size}: {desc}", f"  {'variant':16s} {'workers':>7s} " + " ".join(f"{p:>9s}" for p in PHASES)
             + f" {'step':>9s} {'samples/s':>9s} {'vs first':>8s}"]
    first = rows[0]["step_s"]
    for r in rows:
        ph = " ".join(f"{r['phases_s'][p] * 1e3:7.1f}ms" for p in PHASES)
        lines.append(f"  {r['variant']:16s} {r['workers']:7d} {ph} {r['step_s'] * 1e3:7.1f}ms "
                     f"{r['samples_per_s']:9.1f} {first / r['step_s']:7.2f}x")
    for r in rows:
        total = r["step_synced_s"]
        shares = ", ".join(f"{p} {r['phases_s'][p] / total:.0%}" for p in PHASES)
        lines.append(f"  {r['variant']}: share of the step: {shares}")
    flops = next((r.get("flops_per_step") for r in rows if r.get("flops_per_step")), None)
    if flops:
        lines.append(f"  model compute: {flops / 1e9:.1f} GFLOP per training step (forward + backward, batch {batch})")
        for r in rows:
            rate = flops / r["step_s"] / 1e12
            compute_only = flops / (r["phases_s"]["forward"] + r["phases_s"]["backward"]) / 1e12
            parts = [f"{rate * 1e3:.1f} GFLOP/s over the whole step, {compute_only * 1e3:.1f} GFLOP/s in forward+backward"]
            if peak_spec:
                parts.append(f"{rate / peak_spec:.1%} of the {peak_spec:.0f} TFLOP/s bf16 peak")
            if peak_measured:
                parts.append(f"{rate / peak_measured:.1%} of the measured matmul rate")
            lines.append(f"  {r['variant']}: " + "; ".join(parts))
    for r in rows:
        if "train_epoch_s" in r:
            lines.append(f"  {r['variant']}: epoch of the synthetic default: train {r['train_epoch_s']:.2f}s "
                         f"({r['train_steps_per_epoch']} steps), validation {r['val_epoch_s']:.2f}s")
        elif size == "paper":
            steps = math.ceil(CREMAD_TRAIN_CLIPS / batch)
            lines.append(f"  {r['variant']}: a CREMA-D-sized epoch ({CREMAD_TRAIN_CLIPS} clips, {steps} steps) "
                         f"would take {steps * r['step_s'] / 60:.1f} min of training steps")
    return lines


def measure_size(size: str, args, device, peak_spec, peak_measured) -> dict[str, Any]:
    """One input setting: its data, every variant side by side, the table printed."""
    from bmlr.config import from_dict
    from bmlr.data import build_datasets

    args.size = size
    base = tiny_config(args) if size == "tiny" else paper_config(args)
    base.update({k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)})
    if args.batch:
        base["batch_size"] = args.batch
    if args.cache_dir:
        base["cache_dir"] = str(Path(args.cache_dir).resolve())
    cfg = from_dict({**base, "device": "cpu"})
    data = build_datasets(cfg) if size == "tiny" else paper_data(args, cfg)
    shapes = {u: tuple(s.shape) for u, s in data.modalities.items()}
    desc = (f"inputs {shapes}, batch {base['batch_size']}, ResNet width {base['model_width']} "
            f"depth {base['model_depth']}, {args.steps} timed steps (median)")
    print(f"  {size}: {desc}", flush=True)
    rows = run_variants(variants_for(device, args.variants and args.variants.split(","), args.reshaping), base,
                        data, args, device)
    for line in report(size, rows, device, peak_spec, peak_measured, base["batch_size"], desc):
        print(line)
    if args.reshaping:
        print(f"ratio bmlr / only_tpo = {rows[1]['compute_s'] / rows[0]['compute_s']:.3f} (median compute time "
              f"per step: {rows[1]['compute_s'] * 1e3:.1f} vs {rows[0]['compute_s'] * 1e3:.1f} ms)")
    return {"description": desc, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,paper", help="comma-separated: tiny, paper")
    p.add_argument("--variants", help="comma-separated subset (default: all for the device)")
    p.add_argument("--reshaping", action="store_true", help="the variants are only_tpo and bmlr: the reshaping's cost")
    p.add_argument("--device", default="auto")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1,
                   help="the trial's CPUs: torch threads and the base of num_workers=-1")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, help="batch size (default 64, the paper's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a Config key of both sizes (model_width=16, image_size=64)")
    p.add_argument("--paper-clips-per-class", type=int, default=24, help="synthetic 224 px clips per class")
    p.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the timed epochs (tiny)")
    p.add_argument("--epoch-rounds", type=int, default=3, help="timed epochs per variant (tiny; median)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak, where not in the built-in table")
    p.add_argument("--cache-dir", help="data cache (default: $BMLR_CACHE or ~/.cache/bmlr)")
    p.add_argument("--data-root", help="tiny: another synthetic data folder (default: the generated default)")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args(argv)

    from bmlr.engine import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.cpus)
    peak_spec = spec_peak(device, args.peak_tflops)
    peak_measured = matmul_tflops(device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.cpus} CPUs for the trial "
          f"(torch threads; num_workers=-1 gives {max(0, min(8, args.cpus - 1))}); measured matmul "
          f"{peak_measured * 1e3:.1f} GFLOP/s" + (f"; spec bf16 peak {peak_spec:.0f} TFLOP/s" if peak_spec else ""),
          flush=True)
    sizes = {size: measure_size(size, args, device, peak_spec, peak_measured)
             for size in [s.strip() for s in args.sizes.split(",") if s.strip()]}
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "cpus": args.cpus,
                                               "matmul_tflops": peak_measured, "spec_peak_tflops": peak_spec,
                                               "torch": torch.__version__, "sizes": sizes}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
