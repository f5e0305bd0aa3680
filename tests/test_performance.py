"""Performance options of the engine (loader workers from the CPUs, channels-last, torch.compile)
on the CPU, and the benchmarks' own logic. No timing is asserted: the machine is shared."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from bmlr.config import ConfigError, from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
        "val_fraction": 0.3, "epochs": 1, "seeds": [0], "lr": 3e-3, "device": "cpu", "threads": 1}


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("perf")
    root = generate(base / "data", seed=0, n_train_per_class=6,
        n_test_per_class=1, n_val_per_class=1, image_size=32, n_frames=2)
    return {"data_root": str(root), "cache_dir": str(base / "cache")}


# ResNet width of the channels-last tests. oneDNN 3.12 (torch 2.13's CPU build) corrupts memory
# in the weight gradient of a strided 1x1 convolution with an NHWC input of fewer channels than
# its channel block (8 with AVX2, 16 with AVX-512): the ResNet shortcut convolutions (width ->
# 2 x width, stride 2) at width 4 overrun the heap with one thread (glibc then aborts at a later
# free: torch.set_num_threads, another test, the interpreter's exit) and give wrong gradients with
# two (the threads overwrite each other's scratch space). 16 channels keep it off that kernel.
CHANNELS_LAST_WIDTH = 16


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_loader_workers_from_the_cpus(threads):
    from bmlr.engine import loader_workers

    assert loader_workers(from_dict({"num_workers": 3})) == 3  # explicit values are kept
    assert loader_workers(from_dict({"num_workers": 0, "threads": 8})) == 0
    assert loader_workers(from_dict({"num_workers": -1, "threads": 4})) == 3  # one CPU for the step
    assert loader_workers(from_dict({"num_workers": -1, "threads": 1})) == 0
    assert loader_workers(from_dict({"num_workers": -1, "threads": 64})) == 8  # capped
    torch.set_num_threads(3)  # what a Ray trial with --cpus-per-trial 3 sets before building the Trainer
    assert loader_workers(from_dict({"num_workers": -1})) == 2
    with pytest.raises(ConfigError, match="num_workers"):
        from_dict({"num_workers": -2})


def test_trainer_sizes_its_loader_from_the_cpus(tiny_data, threads):
    from bmlr.engine import Trainer

    trainer = Trainer(from_dict({**TINY, **tiny_data, "num_workers": -1, "threads": 2}), seed=0)
    assert trainer.num_workers == 1
    loader = trainer.loader("train")
    assert loader.num_workers == 1 and loader.pin_memory is False  # pinned memory only for CUDA
    inputs, labels = next(iter(loader))
    assert inputs["visual"].shape[0] == labels.shape[0] == TINY["batch_size"]


def test_channels_last_trains_like_the_default_layout(tiny_data, threads):
    from bmlr.engine import Trainer

    tiny = {**TINY, **tiny_data, "model_width": CHANNELS_LAST_WIDTH}
    plain = Trainer(from_dict(tiny), seed=0)
    a = plain.step_epoch()  # (the global random state drives augmentation: one Trainer at a time)
    nhwc = Trainer(from_dict({**tiny, "channels_last": True}), seed=0)
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous(memory_format=torch.channels_last)
                   for m in plain.model.modules() if isinstance(m, torch.nn.Conv2d) for w in [m.weight]
                   if w.shape[1] > 1 and w.shape[-1] > 1)
    b = nhwc.step_epoch()
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)  # same math, another memory layout
    assert set(nhwc.state_dict()["model"]) == set(plain.state_dict()["model"])


# The compiled half of test_compile_keeps_parameter_names_and_trains, in a fresh interpreter: no
# dynamo state (caches, guards, the patched Module.compile) reaches the pytest process, and a
# crash in native code fails this one test instead of ending the whole run.
_COMPILE_CHILD = r"""
import json, sys
import torch
from bmlr.config import from_dict
from bmlr.engine import Trainer

cfg = json.loads(sys.argv[1])
compile_module = torch.nn.Module.compile
calls = []

def aot_eager(self, *args, **kwargs):
    calls.append(type(self).__name__)
    return compile_module(self, *args, **{**kwargs, "backend": "aot_eager"})

torch.nn.Module.compile = aot_eager

plain = Trainer(from_dict(cfg), seed=0)
a = plain.step_epoch()
compiled = Trainer(from_dict({**cfg, "compile": True, "channels_last": True}), seed=0)
b = compiled.step_epoch()
report = {
    "plain_loss": a["train_loss"], "compiled_loss": b["train_loss"], "calls": calls,
    "encoders_compiled": [getattr(e, "_compiled_call_impl", None) is not None
                          for e in compiled.model.encoders.values()],
    "plain_keys": list(plain.state_dict()["model"]), "compiled_keys": list(compiled.state_dict()["model"]),
}
plain.model.load_state_dict(compiled.state_dict()["model"])  # raises where they do not interchange
print("RESULT " + json.dumps(report), flush=True)
"""


@pytest.mark.slow
def test_compile_keeps_parameter_names_and_trains(tiny_data):
    """`compile: true` on the CPU: the engine's code path, with dynamo tracing and AOT autograd
    but without inductor's C++ code generation (which takes over ten minutes on two shared cores;
    `bench/bench_throughput.py --variants cl+compile` runs the real thing)."""
    import json
    import subprocess

    cfg = {**TINY, **tiny_data, "model_width": CHANNELS_LAST_WIDTH}
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _COMPILE_CHILD, json.dumps(cfg)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"compiled training exited with {proc.returncode}:\n{proc.stderr[-6000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result from the compiled run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["compiled_loss"] == pytest.approx(r["plain_loss"], rel=1e-3)
    assert sorted(r["calls"]) == ["ResNetAudioEncoder", "ResNetVisualEncoder"], r["calls"]
    assert r["encoders_compiled"] and all(r["encoders_compiled"])
    assert r["compiled_keys"] == r["plain_keys"]  # checkpoints interchange (and loaded in the child)


def test_bench_throughput_tiny_runs_every_cpu_variant(tiny_data, capsys, threads):
    bench = _bench("bench_throughput")
    rc = bench.main(["--sizes", "tiny", "--steps", "1", "--warmup", "1", "--cpus", "2", "--no-epoch",
                     "--variants", "fp32,workers,cl", "--data-root", tiny_data["data_root"],
                     "--cache-dir", tiny_data["cache_dir"]])
    assert rc == 0
    out = capsys.readouterr().out
    for text in ("fp32", "workers", "cl", "share of the step", "GFLOP per training step", "measured matmul"):
        assert text in out


def test_search_benchmark_curves():
    bench = _bench("bench_search")
    points = bench.grid_points(bench.GRID)
    assert len(points) == 48 and len({bench.point_key(p) for p in points}) == 48
    assert bench.best_so_far([0.2, 0.5, 0.4, 0.7]) == [0.2, 0.5, 0.5, 0.7]
    assert bench.epochs_to_target([0.2, 0.5, 0.5, 0.7], 0.5) == 2
    assert bench.epochs_to_target([0.2, 0.5], 0.9) is None
    s = bench.summarise([[0.1, 0.9], [0.9, 0.9]], target=0.9, grid_total=8)
    assert s["epochs_to_target"] == [2, 1] and s["max_ratio"] == 0.25 and s["reached"] == 2
    assert bench.summarise([[0.1], [0.9]], target=0.9, grid_total=8)["median_ratio"] is None


def test_search_benchmark_avmnist_grid_settings():
    """AV-MNIST's grid: 24 configurations on configs/avmnist-hard.yaml (one seed, one thread, the
    config's 10 epochs), recorded in the table's meta; its replays are other scripts', so asking
    this one for them is a usage error (exit 2)."""
    bench = _bench("bench_search")
    grid = bench.GRIDS["avmnist"]
    assert len(bench.grid_points(grid)) == 24 and len({bench.point_key(p, tuple(grid))
                                                        for p in bench.grid_points(grid)}) == 24
    args = bench.parse_args(["--dataset", "avmnist", "--grid-only", "--seed", "2", "--data-root", "/data"])
    assert args.epochs == 10
    base = bench.base_config(args)
    assert (base["image_size"], base["val_fraction"], base["seeds"], base["threads"]) == (10, 0.8, [2], 1)
    assert base["data_root"] == "/data" and base["dataset"] == "avmnist"
    assert bench.grid_meta(args, grid) == {"dataset": "avmnist", "config": "configs/avmnist-hard.yaml",
                                           "epochs": 10, "seed": 2, "grid": grid}
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--dataset", "avmnist"])
    assert stop.value.code == 2


def test_search_benchmark_synthetic_v3_grid_settings():
    """The grid on the synthetic default: data version v3 (its own validation split, so
    val_fraction is not part of the table's settings), the search space's 20 epochs; the v2 grid
    keeps its version by name; v3 with --val-per-class is a usage error (exit 2)."""
    bench = _bench("bench_search")
    grid = bench.GRIDS["synthetic-v3"]
    assert len(bench.grid_points(grid)) == 24
    args = bench.parse_args(["--dataset", "synthetic-v3", "--grid-only", "--seed", "1"])
    assert args.epochs == 20
    assert bench.data_overrides(args)["data_version"] == "v3"
    meta = bench.grid_meta(args, grid)
    assert (meta["synthetic_version"], meta["val_fraction"], meta["seed"]) == ("v3", None, 1)
    v2 = bench.parse_args(["--dataset", "synthetic", "--grid-only"])
    assert bench.data_overrides(v2)["data_version"] == "v2"
    assert bench.grid_meta(v2, bench.GRIDS["synthetic"])["val_fraction"] == 0.2
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--dataset", "synthetic-v3", "--grid-only", "--val-per-class", "100"])
    assert stop.value.code == 2


def test_search_benchmark_signals_and_rank_agreement():
    bench = _bench("bench_search")
    row = {"val_acc": [0.5, 0.7, 0.6], "val_loss": [1.0, 0.8, 0.9], "val_acc_audio": [0.5, 0.6, 0.6],
           "val_acc_visual": [0.2, 0.4, 0.7]}
    signals = bench.epoch_signals(row)
    assert [m["best_val_acc"] for m in signals] == [0.5, 0.7, 0.7]
    assert [m["val_acc_weakest"] for m in signals] == [0.2, 0.4, 0.6]
    assert signals[1]["val_loss"] == 0.8
    # four configurations (the product's rung check needs 4) whose final ranks are d > c > b > a: the
    # visual accuracy ranks them right from epoch 1, the epoch-1 accuracy ranks them backwards, a
    # loss counts negated
    table = {"a": {"val_acc": [0.9, 0.5], "val_acc_visual": [0.1, 0.2], "val_loss": [3.0, 2.0]},
             "b": {"val_acc": [0.8, 0.95], "val_acc_visual": [0.2, 0.3], "val_loss": [2.0, 1.0]},
             "c": {"val_acc": [0.7, 0.99], "val_acc_visual": [0.3, 0.4], "val_loss": [1.0, 0.5]},
             "d": {"val_acc": [0.6, 0.995], "val_acc_visual": [0.4, 0.5], "val_loss": [0.5, 0.25]}}
    assert bench.rank_agreement(table, 2)[1] == pytest.approx(-1.0)
    assert bench.rank_agreement(table, 2, "val_acc_visual") == pytest.approx({1: 1.0, 2: 1.0})
    assert bench.rank_agreement(table, 2, "val_loss") == pytest.approx({1: 1.0, 2: 1.0})
    assert bench.rank_agreement(table, 2, "best_val_acc")[2] == pytest.approx(1.0)
    # second halves: a (0.5), b (0.95), c (0.5, 0.6), d (0.995): one step, 0.1; c's best 0.99 stands above the
    # mean of its last (at most 5) epochs
    table["c"]["val_acc"] = [0.7, 0.99, 0.5, 0.6]
    noise = bench.epoch_noise(table, "c")
    assert noise["median_step"] == pytest.approx(0.1)
    assert noise["best_above_own_tail"] == pytest.approx(0.99 - (0.7 + 0.99 + 0.5 + 0.6) / 4)


@pytest.mark.slow
def test_search_benchmark_replays_through_ray_tune(tmp_path):
    """TPE + ASHA and random search over a made-up table, through Ray Tune: ASHA stops the poor
    configurations early (fewer epochs than trials x max epochs), random search never does."""
    import argparse

    import ray

    bench = _bench("bench_search")
    epochs = 3
    table = {bench.point_key(p): {"val_acc": [0.3 + 0.1 * (p["lr"] > 2e-3) + 0.2 * (p["beta"] == 0.5) + 0.05 * e
                                              for e in range(epochs)]} for p in bench.grid_points(bench.GRID)}
    args = argparse.Namespace(epochs=epochs, concurrent=2, replay_sleep=0.01)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        tpe = bench.run_replay(table, "tpe_asha", 0, args, tmp_path, samples=12, grace=1, reduction=3, startup=4)
        rnd = bench.run_replay(table, "random", 0, args, tmp_path, samples=6)
        # ASHA on another metric than Optuna's (then neither goes to TuneConfig)
        split = bench.run_replay(table, "tpe_asha", 1, args, tmp_path, samples=12, grace=1, reduction=3,
                                 startup=4, signal="best_val_acc")
    finally:
        ray.shutdown()
    assert len(rnd) == 6 * epochs  # no early stopping
    assert 12 <= len(tpe) < 12 * epochs  # every trial ran at least its grace epoch; ASHA stopped some
    assert 12 <= len(split) < 12 * epochs
    assert tpe == sorted(tpe) and rnd == sorted(rnd)  # best so far never decreases


@pytest.mark.parametrize("advertised_gpus, expected", [(0, 0.0), (2, 1.0)])
def test_gpus_per_trial_defaults_to_one_gpu_where_the_cluster_has_gpus(advertised_gpus, expected):
    """Without --gpus-per-trial a trial gets a whole GPU when Ray sees GPUs (Ray hides GPUs from a
    trial that asks for none); an explicit value, 0 included, is kept as given."""
    import ray

    from bmlr.tuning.ray_backend import gpus_per_trial

    ray.init(address="local", num_cpus=1, num_gpus=advertised_gpus, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        assert gpus_per_trial(None) == expected
        assert gpus_per_trial(0.25) == 0.25 and gpus_per_trial(0.0) == 0.0
    finally:
        ray.shutdown()


def test_scaling_memory_watch_measures_a_process_tree_and_stops():
    """bench_scaling's memory watcher: a child process's memory is counted with its parent's,
    and stop() ends the thread (it once shadowed Thread._stop and crashed there)."""
    import subprocess

    bench = _bench("bench_scaling")
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(30)"])
    try:
        time.sleep(1.5)
        watch = bench.MemoryWatch(os.getpid(), every=0.1)
        watch.start()
        time.sleep(0.5)
        watch.stop()
        assert not watch.is_alive()
        assert watch.peak_procs >= 2 and watch.peak_kb >= 50_000  # the child's 50 MB counted
    finally:
        child.kill()
        child.wait()
