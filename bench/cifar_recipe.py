"""Fast shard training on CIFAR-10: the decode-once data path, and the airbench recipe.

Two parts, each writing its JSON to ``bench/results/`` and its table to BENCHMARKS.md:

``data``: images per second, in one process on one thread, of

- a torchvision ``DataLoader`` over the Parquet (PIL decodes each JPEG every epoch, then
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``);
- raysisa's path: the shard's pixels object parsed once (``Pixels.from_bytes``), then every
  epoch's batches made by :meth:`Images.batch` (gather, crop, flip, normalise as tensor ops);

and of training the recipe's model fed by each (the plain PyTorch loop over the
DataLoader against :func:`raysisa.training.train_epoch` over :class:`Images`).

``train``: the whole ``raysisa train`` command (a fresh process: start-up, local Ray
cluster, ingest with decoding, every shard, the commit) on all 50,000 CIFAR-10 training
images with ``cluster/configs/cifar10-airbench.yaml``, for each shard count given, then
``raysisa evaluate`` on the 10,000 test images. Wall seconds are the command's.

    .venv/bin/python bench/cifar_recipe.py data
    .venv/bin/python bench/cifar_recipe.py train --shards 5          # about 30 min on 2 cores
    .venv/bin/python bench/cifar_recipe.py train --shards 1,5,10,20 --set train.epochs=8
    .venv/bin/python bench/cifar_recipe.py train --shards 1 --set train.threads=2   # the single model, both cores
    .venv/bin/python bench/cifar_recipe.py table                   # the table again from the JSON
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
RECIPE = ROOT / "cluster" / "configs" / "cifar10-airbench.yaml"
RESULTS = ROOT / "bench" / "results"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _load(path: Path, name: str) -> dict:
    file = path / name
    return json.loads(file.read_text()) if file.exists() else {}


# -- data ----------------------------------------------------------------------------------------
def bench_data(images: int, batch_size: int, train_steps: int) -> dict:
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from raysisa.config import ModelConfig, TrainConfig
    from raysisa.data.pixels import Pixels
    from raysisa.data.samples import DatasetInfo
    from raysisa.data.tensors import Augment, Images
    from raysisa.models import build_model
    from raysisa.training import build_optimizer, configure_torch, train_epoch

    configure_torch(1)
    table = pq.read_table(CIFAR / "train.parquet").slice(0, images)
    info = DatasetInfo("cifar10", 10, 3, 32, 32, MEAN, STD)
    reference = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )

    class ParquetImages(Dataset):
        def __init__(self) -> None:
            self.blobs, self.labels = table["image"].to_pylist(), table["label"].to_numpy().astype(np.int64)

        def __len__(self) -> int:
            return len(self.blobs)

        def __getitem__(self, i: int):
            with Image.open(io.BytesIO(self.blobs[i])) as img:
                return reference(img.convert("RGB")), self.labels[i]

    loader = DataLoader(ParquetImages(), batch_size=batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(0))

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    out: dict = {"images": images, "batch_size": batch_size, "threads": 1}
    out["dataloader_epoch_s"] = timed(lambda: [None for _ in loader])
    started = time.perf_counter()
    pixels = Pixels.decode(table, info, "")
    out["decode_once_s"] = time.perf_counter() - started
    blob = pixels.to_bytes()
    out["pixels_object_bytes"] = len(blob)
    out["parquet_bytes"] = int(table["image"].nbytes)
    out["load_pixels_s"] = timed(lambda: Pixels.from_bytes(blob, "bench"))
    x = Images.of(Pixels.from_bytes(blob, "bench").images, info)

    def fast_epoch() -> None:
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            x.batch(order[start : start + batch_size], generator, Augment())

    out["fast_epoch_s"] = timed(fast_epoch)
    out["dataloader_images_per_s"] = images / out["dataloader_epoch_s"]
    out["fast_images_per_s"] = images / out["fast_epoch_s"]

    # training the recipe's model fed by each path, the same number of steps
    recipe = _recipe()
    model_config, train_config = ModelConfig(**recipe["model"]), TrainConfig(**{**recipe["train"], "threads": 1})
    n = train_steps * batch_size
    y = torch.from_numpy(pixels.labels)

    def model_and_optimizer():
        torch.manual_seed(0)
        model = build_model(info, model_config).to(memory_format=torch.channels_last)
        return model, build_optimizer(model, train_config)

    model, optimizer = model_and_optimizer()
    train_epoch(model, optimizer, x[:batch_size], y[:batch_size], batch_size=batch_size, seed=0, channels_last=True)  # warm-up

    def plain_loop() -> None:
        for step, (xb, yb) in enumerate(loader, start=1):
            xb = xb.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), yb, label_smoothing=train_config.label_smoothing).backward()
            optimizer.step()
            if step == train_steps:
                return

    out["plain_train_images_per_s"] = n / timed(plain_loop)
    model, optimizer = model_and_optimizer()
    train_epoch(model, optimizer, x[:batch_size], y[:batch_size], batch_size=batch_size, seed=0, channels_last=True)
    out["fast_train_images_per_s"] = n / timed(
        lambda: train_epoch(model, optimizer, x[:n], y[:n], batch_size=batch_size, seed=1, augment=Augment(), channels_last=True)
    )
    out["model"] = recipe["model"]
    return out


def data_table(r: dict) -> str:
    return "\n".join(
        [
            f"One process, one thread, {r['images']:,} CIFAR-10 training images, batches of {r['batch_size']}; "
            f"the model is the recipe's (`{r['model']['name']}`, width {r['model']['width']}, channels-last).",
            "",
            "| | torchvision DataLoader (JPEG decode + transforms) | raysisa (uint8 pixels + tensor ops) | ratio |",
            "|---|---:|---:|---:|",
            f"| one epoch of augmented batches, images/s | {r['dataloader_images_per_s']:,.0f} | {r['fast_images_per_s']:,.0f} | "
            f"{r['fast_images_per_s'] / r['dataloader_images_per_s']:.1f}x |",
            f"| training (forward, backward, SGD step), images/s | {r['plain_train_images_per_s']:,.0f} | "
            f"{r['fast_train_images_per_s']:,.0f} | {r['fast_train_images_per_s'] / r['plain_train_images_per_s']:.2f}x |",
            "",
            f"Decoding once (at ingest) takes {r['decode_once_s']:.2f} s for these images; parsing the stored pixels "
            f"object ({r['pixels_object_bytes'] / 1e6:.1f} MB against {r['parquet_bytes'] / 1e6:.1f} MB of JPEG bytes) takes "
            f"{r['load_pixels_s'] * 1000:.0f} ms. Training is bound by the model's arithmetic either way; the data path "
            "decides what a process pays before and between steps.",
        ]
    )


# -- train ---------------------------------------------------------------------------------------
def _recipe() -> dict:
    import yaml

    return yaml.safe_load(RECIPE.read_text())


def _raysisa(*args: str) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "raysisa", *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"raysisa {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def bench_train(shards: int, overrides: list[str], keep: Path | None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"cifar-s{shards}-")) if keep is None else keep
    store = str(folder / "run")
    sets = [f"data.uri={CIFAR}", f"sharding.num_shards={shards}", *overrides]
    report, seconds = _raysisa("train", "--quiet", "--config", str(RECIPE), "--store", store, *[a for s in sets for a in ("--set", s)])
    print(f"S={shards}: trained in {seconds:.0f} s at {store}", flush=True)
    return evaluate_run(store, shards, overrides, seconds, report)


def evaluate_run(store: str, shards: int, overrides: list[str], seconds: float, report: dict) -> dict:
    """Ensemble and shard accuracy of a trained run, with its training figures."""
    vote, _ = _raysisa("evaluate", "--store", store)
    softmax, _ = _raysisa("evaluate", "--store", store, "--aggregation", "mean_softmax")
    from raysisa.config import StoreConfig
    from raysisa.store import RunStore

    run = RunStore(StoreConfig(uri=store))
    manifests = [run.checkpoints.manifest(refs[-1]) for refs in run.expected_refs().values()]
    return {
        "shards": shards,
        "overrides": overrides,
        "wall_seconds": seconds,
        "train_report": {k: report.get(k) for k in ("slices_trained", "sample_grads", "compute_seconds", "wall_seconds")},
        "peak_rss_mb_per_shard_actor": max(m.get("peak_rss_bytes", 0) for m in manifests) / 2**20,
        "train_seconds_per_shard": [m["train_seconds"] for m in manifests],
        "accuracy_vote": vote["accuracy"],
        "accuracy_mean_softmax": softmax["accuracy"],
        "shard_accuracy": vote["shard_accuracy"],
        "cpus": os.cpu_count(),
    }


def train_table(runs: dict) -> str:
    recipe = _recipe()
    lines = [
        f"`raysisa train --config cluster/configs/cifar10-airbench.yaml` on all 50,000 training images, whole command "
        f"(fresh process, local Ray cluster, ingest and decode, every shard), {os.cpu_count()} CPU cores, one thread per "
        f"shard actor; accuracy on the 10,000 test images. Recipe: `{recipe['model']['name']}` width {recipe['model']['width']}, "
        + ", ".join(f"{k}={v}" for k, v in recipe["train"].items() if k != "threads")
        + ".",
        "",
        "| shards S | overrides | wall, whole command (min) | one shard's training (s): what a deletion retrains | images/s per shard actor | peak RSS per shard actor (MB) | ensemble acc, vote | ensemble acc, mean softmax | mean shard acc |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(runs, key=lambda k: (runs[k]["shards"], k)):
        r = runs[key]
        lines.append(
            f"| {r['shards']} | {' '.join(r['overrides']) or '-'} | {'≈' if r.get('wall_note') else ''}{r['wall_seconds'] / 60:.1f} | "
            f"{np.mean(r['train_seconds_per_shard']):,.0f} | "
            f"{r['train_report']['sample_grads'] / r['train_report']['compute_seconds']:,.0f} | {r['peak_rss_mb_per_shard_actor']:,.0f} | "
            f"{r['accuracy_vote']:.2f}% | "
            f"{r['accuracy_mean_softmax']:.2f}% | {np.mean(r['shard_accuracy']):.2f}% |"
        )
    if any(r.get("wall_note") for r in runs.values()):
        lines += ["", "≈: " + "; ".join(sorted({r["wall_note"] for r in runs.values() if r.get("wall_note")}))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    d = sub.add_parser("data", help="data-path throughput")
    d.add_argument("--images", type=int, default=10_000)
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--train-steps", type=int, default=8)
    t = sub.add_parser("train", help="the recipe as whole `raysisa train` commands")
    t.add_argument("--shards", default="5", help="comma-separated shard counts")
    t.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE (repeatable)")
    t.add_argument("--keep", type=Path, help="keep the run in this folder (one shard count only)")
    sub.add_parser("table", help="rewrite the train table in BENCHMARKS.md from bench/results/cifar_recipe.json")
    args = parser.parse_args()
    if not CIFAR.exists():
        raise SystemExit(f"CIFAR-10 Parquet not found at {CIFAR}")
    RESULTS.mkdir(exist_ok=True)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    if args.part == "data":
        result = {**bench_data(args.images, args.batch_size, args.train_steps), "machine": machine}
        (RESULTS / "cifar_data_path.json").write_text(json.dumps(result, indent=2))
        write_section(ROOT / "BENCHMARKS.md", "cifar_data_path", "## Decode once: the shard data path (`bench/cifar_recipe.py data`)\n\n" + data_table(result))
        print(data_table(result))
        return
    runs = _load(RESULTS, "cifar_recipe.json")
    for shards in [] if args.part == "table" else [int(s) for s in args.shards.split(",")]:
        result = bench_train(shards, args.set, args.keep)
        runs[f"S={shards} {' '.join(args.set)}".strip()] = result
        (RESULTS / "cifar_recipe.json").write_text(json.dumps(runs, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    write_section(ROOT / "BENCHMARKS.md", "cifar_recipe", "## The fast CIFAR-10 recipe (`bench/cifar_recipe.py train`)\n\n" + train_table(runs))
    print(train_table(runs))


if __name__ == "__main__":
    main()
