"""Time to unlearn one random sample vs retraining the whole ensemble from scratch.

For each data set: train a SISA ensemble in Ray actors, then for several draws delete one
random live sample through the normal exact-unlearning path, and finally retrain the
whole ensemble from scratch without the deleted samples (which must come out
bit-identical). Costs are measured three ways:

- sample-gradients (epochs x samples actually trained: the SPEC 1.3 accounting),
- compute seconds (the sum of per-slice training times, as the reference SISA code counts),
- wall seconds (what a user waits, Ray and store overhead included).

Two theory columns:

- *expected*: SPEC 1.3's expectation for one uniformly drawn deletion, for the run's actual
  slice sizes and integer epoch schedule (≈ S·3R/(2R+1));
- *for these draws*: the same accounting applied to the slices the draws actually hit, which
  removes the luck of the draw (with a handful of draws, which slice gets hit dominates the
  spread) and leaves what the implementation adds or saves.

    .venv/bin/python bench/sisa_speedup.py                 # digits + the fast CIFAR recipe on a subset
    .venv/bin/python bench/sisa_speedup.py --datasets digits --draws 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from raysisa import SisaRun, StoreConfig  # noqa: E402
from raysisa.config import load_config  # noqa: E402
from raysisa.sisa.actors import RayPool, ray_session  # noqa: E402
from raysisa.sisa.cost import expected_single_deletion_cost, expected_speedup, retrain_cost  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"

RECIPES = {
    "digits": [],  # the embedded default: 5 shards x 4 slices, small_cnn, 20 epochs
    # the fast CIFAR recipe (cluster/configs/cifar10-airbench.yaml: airbench width 32, 22
    # epochs) on a 10,000-image subset, with 4 slices per shard so that slicing shows
    "cifar10": [
        f"data.uri={CIFAR}",
        "data.limit=10000",
        "data.test_limit=2000",
        "sharding.num_slices=4",
    ],
}
CONFIGS = {"digits": None, "cifar10": ROOT / "cluster" / "configs" / "cifar10-airbench.yaml"}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def bench_dataset(name: str, draws: int, workdir: Path, seed: int) -> dict:
    job = load_config(CONFIGS[name], RECIPES[name])
    spec = job.spec
    cluster = job.cluster  # the reservation follows the recipe's threads
    pool = RayPool(cluster, spec.sharding.num_shards, threads=spec.train.threads)
    try:
        sisa = SisaRun.create(spec, StoreConfig(uri=str(workdir / name / "sisa")))
        initial = sisa.train(pool, progress=True)
        accuracy = sisa.evaluate().accuracy
        sizes = [s["slice_sizes"] for s in sisa.inspect(verify=False)["shards"]]
        rng = np.random.default_rng(seed)
        runs, predicted = [], []
        for _ in range(draws):
            live = sisa.store.read_index()["id"].to_numpy()
            victim = int(rng.choice(live))
            report = sisa.unlearn([victim], pool, progress=False)
            runs.append(report)
            [(shard, first)] = report.first_slice.items()
            predicted.append(retrain_cost(sizes[shard], spec.train.epochs, first))
            print(f"  {name}: deleted {victim} (shard {report.shards_affected}, slice {report.first_slice}) "
                  f"{report.compute_seconds:.1f}s compute, {report.wall_seconds:.1f}s wall", flush=True)
        deleted = [i for r in runs for i in r.deleted]
        reference = SisaRun.create(spec, StoreConfig(uri=str(workdir / name / "retrain")), exclude_ids=deleted)
        full = reference.train(pool, progress=True)
        exact = [s["model_sha256"] for s in sisa.inspect()["shards"]] == [
            s["model_sha256"] for s in reference.inspect()["shards"]
        ]
    finally:
        pool.close()
    epochs = spec.train.epochs
    total = sum(map(sum, sizes))
    # a uniform deletion lands in shard k with probability |D_k| / N
    expected = sum(sum(s) / total * expected_single_deletion_cost(s, epochs) for s in sizes)
    theory = sum(retrain_cost(s, epochs) for s in sizes) / expected
    grads, compute, wall = ([getattr(r, f) for r in runs] for f in ("sample_grads", "compute_seconds", "wall_seconds"))
    g, c, w = mean_std(grads), mean_std(compute), mean_std(wall)
    result = {
        "dataset": name,
        "train_samples": int(sum(map(sum, sizes))),
        "num_shards": spec.sharding.num_shards,
        "num_slices": spec.sharding.num_slices,
        "epochs": epochs,
        "model": f"{spec.model.name}(width={spec.model.width})",
        "test_accuracy": accuracy,
        "draws": draws,
        "full_retrain": {"sample_grads": full.sample_grads, "compute_seconds": full.compute_seconds, "wall_seconds": full.wall_seconds},
        "initial_train_wall_seconds": initial.wall_seconds,
        "unlearn_one": {"sample_grads": g, "compute_seconds": c, "wall_seconds": w},
        "speedup": {
            "sample_grads": full.sample_grads / g[0],
            "compute": full.compute_seconds / c[0],
            "wall": full.wall_seconds / w[0],
        },
        "theory_speedup": theory,
        "theory_speedup_equal_slices": expected_speedup(spec.sharding.num_shards, spec.sharding.num_slices),
        "bit_identical_to_full_retrain": exact,
    }
    result["theory_speedup_for_draws"] = full.sample_grads / statistics.fmean(predicted)
    result["measured_over_theory"] = {k: v / theory for k, v in result["speedup"].items()}
    result["measured_over_draw_theory"] = {k: v / result["theory_speedup_for_draws"] for k, v in result["speedup"].items()}
    return result


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Run {meta['date']} on {meta['machine']} (CPU only, Ray {meta['ray']}, torch {meta['torch']}); "
        f"`{meta['command']}`.",
        "",
        "| data set | train samples | S x R | epochs | model | test acc. | draws | unlearn 1 sample: sample-grads / compute s / wall s "
        "| full retrain: sample-grads / compute s / wall s | speed-up (grads / compute / wall) | theory: expected / for these draws "
        "| measured / expected (grads / compute / wall) | measured / for these draws (grads / compute / wall) | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        u, f, s, m = r["unlearn_one"], r["full_retrain"], r["speedup"], r["measured_over_theory"]
        d = r["measured_over_draw_theory"]
        lines.append(
            f"| {r['dataset']} | {r['train_samples']:,} | {r['num_shards']} x {r['num_slices']} | {r['epochs']} | {r['model']} "
            f"| {r['test_accuracy']:.1f}% | {r['draws']} "
            f"| {u['sample_grads'][0]:,.0f} ± {u['sample_grads'][1]:,.0f} / {u['compute_seconds'][0]:.1f} ± {u['compute_seconds'][1]:.1f} "
            f"/ {u['wall_seconds'][0]:.1f} ± {u['wall_seconds'][1]:.1f} "
            f"| {f['sample_grads']:,} / {f['compute_seconds']:.1f} / {f['wall_seconds']:.1f} "
            f"| {s['sample_grads']:.2f}x / {s['compute']:.2f}x / {s['wall']:.2f}x "
            f"| {r['theory_speedup']:.2f}x / {r['theory_speedup_for_draws']:.2f}x "
            f"| {m['sample_grads']:.2f} / {m['compute']:.2f} / {m['wall']:.2f} "
            f"| {d['sample_grads']:.2f} / {d['compute']:.2f} / {d['wall']:.2f} "
            f"| {'yes' if r['bit_identical_to_full_retrain'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,cifar10")
    parser.add_argument("--draws", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    names = args.datasets.split(",")
    if "cifar10" in names and not CIFAR.exists():
        sys.exit(f"{CIFAR} not found (the shared CIFAR-10 Parquet copy)")
    import ray
    import torch

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = []
    with tempfile.TemporaryDirectory(prefix="raysisa-bench-") as tmp, ray_session():
        for name in names:
            results.append(bench_dataset(name, args.draws, Path(tmp), args.seed))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "ray": ray.__version__,
        "torch": torch.__version__,
        "command": "python bench/sisa_speedup.py " + " ".join(sys.argv[1:]),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "sisa_speedup.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown(results, meta)
    print(table)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", "sisa_speedup", table)


if __name__ == "__main__":
    main()
