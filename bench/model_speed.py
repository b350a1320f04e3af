"""Training throughput of the registry's CIFAR models on the CPU (images per second).

One training step is forward + backward + an SGD step (momentum 0.9, weight decay 5e-4,
cross-entropy) on a fixed random batch of 32x32x3 images, 10 classes. Each row builds the
model from seed 0, runs ``--warmup`` steps untimed, then times up to ``--steps`` steps
(stopping early once ``--max-seconds`` have passed, at least one step), with the model and
the batch in channels-last memory format or not. Models: ``airbench`` at several widths (64
is the paper's airbench94), ``small_cnn`` at width 32 and ``resnet18`` (CIFAR stem).

MACs per image count the multiply-accumulates of every Conv2d and Linear in one forward pass
(forward hooks; BatchNorm, activations and pooling left out). A training step costs about
three forward passes (the backward computes gradients of inputs and of weights), so the
achieved rate is ``6 x MACs x images/s`` FLOP/s.

    .venv/bin/python bench/model_speed.py                          # batch 256, 1 thread
    .venv/bin/python bench/model_speed.py --batch 64 --steps 3 --max-seconds 10
    .venv/bin/python bench/model_speed.py --threads 2 --models airbench:64,resnet18
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raysisa.config import ModelConfig  # noqa: E402
from raysisa.data.samples import DatasetInfo  # noqa: E402
from raysisa.models import build_model  # noqa: E402

CIFAR = DatasetInfo("cifar10", 10, 3, 32, 32, (0.5,) * 3, (0.25,) * 3)
DEFAULT_MODELS = "airbench:16,airbench:24,airbench:32,airbench:48,airbench:64,small_cnn:32,resnet18"


def parse_models(spec: str) -> list[tuple[str, int]]:
    """``name[:width],...`` -> [(name, width)]; the width defaults to 32 (ignored by resnet18)."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, width = item.partition(":")
        out.append((name, int(width) if width else 32))
    return out


def macs_per_image(model: nn.Module, info: DatasetInfo) -> int:
    """Multiply-accumulates of every Conv2d and Linear in one forward pass of one image."""
    total = 0

    def conv(mod: nn.Conv2d, inputs, out) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear(mod: nn.Linear, inputs, out) -> None:
        nonlocal total
        total += mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, info.channels, info.height, info.width))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return total


def bench_one(name: str, width: int, channels_last: bool, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build_model(CIFAR, ModelConfig(name=name, width=width))
    macs = macs_per_image(model, CIFAR)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, CIFAR.channels, CIFAR.height, CIFAR.width)
    y = torch.randint(0, CIFAR.num_classes, (args.batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    steps, started = 0, time.perf_counter()
    while steps < args.steps:
        step()
        steps += 1
        if time.perf_counter() - started >= args.max_seconds:
            break
    seconds = time.perf_counter() - started
    images_per_s = steps * args.batch / seconds
    return {
        "model": name if name == "resnet18" else f"{name} w{width}",
        "channels_last": channels_last,
        "params": params,
        "mmacs_per_image": macs / 1e6,
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "images_per_s": images_per_s,
        "gflops": 6 * macs * images_per_s / 1e9,
    }


def table(rows: list[dict]) -> str:
    head = "| model | channels_last | params | MMACs/image | timed steps | s/step | images/s | GFLOP/s (6·MACs) |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'on' if r['channels_last'] else 'off'} | {r['params']:,} | {r['mmacs_per_image']:.1f} "
            f"| {r['steps']} | {r['seconds_per_step']:.2f} | {r['images_per_s']:.1f} | {r['gflops']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"name[:width],... (default {DEFAULT_MODELS})")
    parser.add_argument("--batch", type=int, default=256, help="images per step (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps at most (default 10)")
    parser.add_argument(
        "--max-seconds", type=float, default=30.0, help="stop timing a row after this long, after >= 1 step (default 30)"
    )
    parser.add_argument(
        "--layouts", choices=["both", "on", "off"], default="both", help="channels_last on, off or both (default both)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layouts = {"both": [False, True], "on": [True], "off": [False]}[args.layouts]
    print(
        f"torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s), batch {args.batch}, "
        f"{args.warmup} warm-up + up to {args.steps} timed steps (max {args.max_seconds:g} s a row)",
        flush=True,
    )
    rows = []
    for name, width in parse_models(args.models):
        for channels_last in layouts:
            rows.append(bench_one(name, width, channels_last, args))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
