"""Training-step cost of `bmlr` relative to `only_tpo` on the same model and batch.

The two methods differ only in the label reshaping (equations 3-8), so the
ratio is the reshaping's overhead. Steps of the two methods are interleaved
(A B A B ...) so that machine noise hits both alike; the ratio of medians is
printed. Run:

    python bench/bench_step.py                     # CPU-sized default
    python bench/bench_step.py --paper-sizes       # 257x188 spectrograms, 3x224x224 frames, batch 64, ResNet-18
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bmlr.config import from_dict
from bmlr.methods import METHODS
from bmlr.models import build_model


def make_batch(args, device):
    g = torch.Generator().manual_seed(0)
    inputs = {
        "audio": torch.randn(args.batch, 1, args.spec_freq, args.spec_time, generator=g),
        "visual": torch.randn(args.batch, args.frames, 3, args.image_size, args.image_size, generator=g),
    }
    labels = torch.randint(0, args.classes, (args.batch,), generator=g)
    return {u: x.to(device) for u, x in inputs.items()}, labels.to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper-sizes", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--spec-freq", type=int, default=129)
    p.add_argument("--spec-time", type=int, default=126)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--steps", type=int, default=15, help="timed steps per method")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 keeps tiny reshaping ops off a contended thread pool)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.paper_sizes:
        args.batch, args.width, args.depth = 64, 64, 2
        args.spec_freq, args.spec_time, args.image_size = 257, 188, 224
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    blocks = (args.depth,) * 4
    model = build_model({"audio": ("resnet_audio", {"in_channels": 1, "base_width": args.width, "blocks": blocks}),
                         "visual": ("resnet_visual", {"base_width": args.width, "blocks": blocks})},
                        "concat", args.classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    inputs, labels = make_batch(args, device)
    methods = {name: METHODS.get(name)(from_dict({"method": name, "beta": 0.0})) for name in ("only_tpo", "bmlr")}

    def one_step(method) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = method.training_step(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for method in methods.values():  # warm-up
        for _ in range(2):
            one_step(method)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.steps):
        for name, method in methods.items():
            times[name].append(one_step(method))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"device {device}, batch {args.batch}, ResNet width {args.width} depth {args.depth}, "
          f"spectrogram {args.spec_freq}x{args.spec_time}, {args.frames} frames {args.image_size}px, {args.steps} steps each")
    for name in methods:
        print(f"  {name:9s} median step {med[name] * 1000:8.1f} ms")
    print(f"ratio bmlr / only_tpo = {med['bmlr'] / med['only_tpo']:.3f}")


if __name__ == "__main__":
    main()
