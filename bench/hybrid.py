"""A stream of deletion requests through the coordinator: PRS-only, DPUS-only, HS and OHS.

For each data set, one SISA ensemble is trained and copied once per policy; then the same
stream — single random ids with class-wise bursts (a share of one class at once, which
touches every shard) — is submitted request by request. After each request the
coordinator processes it (one batch) and the served ensemble's test accuracy is measured.
At the end the approximate shards are retrained (eventual exactness), which every policy
but PRS owes. The stream and the replay are :mod:`raysisa.coordinator.replay`'s (the hybrid
sweep study, ``tune_configs/hybrid-digits.yaml``, tunes the policy on the same kind of stream).

Reported per policy: time to apply the stream (what a requester waits), requests per hour,
the deferred cost of restoring exactness, accuracy after each request (min, final) and
after exactness; and the efficiency gain T(PRS) / T(policy). A ρ sweep of HS on digits
shows how the boundary trades time for accuracy.

    .venv/bin/python bench/hybrid.py                       # digits + CIFAR-10 subset (about 35 min on 2 cores)
    .venv/bin/python bench/hybrid.py --datasets cifar10           # rerun one; the others' results are kept
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from raysisa import SisaRun, StoreConfig  # noqa: E402
from raysisa.config import ClusterConfig, CoordinatorConfig, OhsConfig, load_config  # noqa: E402
from raysisa.coordinator.replay import deletion_stream as stream  # noqa: E402
from raysisa.coordinator.replay import replay  # noqa: E402
from raysisa.sisa.actors import RayPool, ray_session  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
RECIPES = {
    "digits": {"overrides": [], "singles": 40, "bursts": 3, "burst_share": 0.3},
    # the fast CIFAR recipe (cluster/configs/cifar10-airbench.yaml) at width 16 and 12 epochs on
    # a 10,000-image subset, 5 shards x 4 slices as digits; batch 64 at the linearly scaled lr
    # (1.0 x 64/256: the recipe's 256 would give a first slice of 500 images two steps per
    # epoch). Measured before choosing: 5,000 images 38.8% (vote), 5,000 at 24 epochs 48.0%,
    # 10,000 at 12 epochs 51.0%, the last two at the same training cost.
    "cifar10": {
        "config": ROOT / "cluster" / "configs" / "cifar10-airbench.yaml",
        "overrides": [
            f"data.uri={CIFAR}", "data.limit=10000", "data.test_limit=1000", "sharding.num_slices=4",
            "model.width=16", "train.epochs=12", "train.batch_size=64", "train.lr=0.25", "train.test_flip=false",
        ],
        "singles": 12,
        "bursts": 2,
        "burst_share": 0.3,
    },
}
POLICIES = {
    "PRS-only": CoordinatorConfig(policy="prs"),
    "DPUS-only": CoordinatorConfig(policy="dpus", max_approx_updates=1000, max_drift_points=100),
    "HS": CoordinatorConfig(policy="hs", max_approx_updates=1000, max_drift_points=100),
    "OHS": CoordinatorConfig(policy="ohs", max_approx_updates=1000, max_drift_points=100),
}


def bench(name: str, workdir: Path, pool_cluster: ClusterConfig, seed: int, sweep: bool) -> dict:
    recipe = RECIPES[name]
    job = load_config(recipe.get("config"), recipe["overrides"])
    base = StoreConfig(uri=str(workdir / name / "base"))
    pool = RayPool(pool_cluster, job.spec.sharding.num_shards)
    try:
        run = SisaRun.create(job.spec, base)
        run.train(pool, progress=True)
        initial = run.evaluate(pool=pool).accuracy
        requests = stream(run, recipe["singles"], recipe["bursts"], recipe["burst_share"], seed)
        policies = dict(POLICIES)
        # OHS's fine-tuning budget (default: rho x a full retrain) against a smaller one
        policies["OHS budget=0.2"] = POLICIES["OHS"].model_copy(update={"ohs": OhsConfig(budget=0.2)})
        if sweep:
            for rho in (0.3, 0.8):
                policies[f"HS rho={rho}"] = POLICIES["HS"].model_copy(update={"rho": rho})
        results = {}
        for label, config in policies.items():
            copy = workdir / name / label.replace(" ", "_").replace("=", "")
            shutil.copytree(workdir / name / "base", copy)
            print(f"{name} / {label}", flush=True)
            results[label] = replay(StoreConfig(uri=str(copy)), config, requests, pool)
    finally:
        pool.close()
    return {"dataset": name, "initial_accuracy": initial, "requests": len(requests), "deleted": sum(map(len, requests)), "policies": results}


def markdown(result: dict) -> str:
    prs = result["policies"]["PRS-only"]
    lines = [
        f"**{result['dataset']}**: {result['requests']} requests deleting {result['deleted']} samples "
        f"(initial test accuracy {result['initial_accuracy']:.2f}%).",
        "",
        "| policy | apply s | requests / hour | gain vs PRS | shard decisions (retrain / update) | min acc. | final acc. | gap to PRS (pp) | restore exactness s | acc. after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in result["policies"].items():
        lines.append(
            f"| {label} | {r['apply_seconds']:.1f} | {r['requests_per_hour']:,.0f} | {prs['apply_seconds'] / r['apply_seconds']:.2f}x "
            f"| {r['shard_decisions'].get('retrain', 0)} / {r['shard_decisions'].get('update', 0)} "
            f"| {r['min_accuracy']:.2f} | {r['final_accuracy']:.2f} | {r['final_accuracy'] - prs['final_accuracy']:+.2f} "
            f"| {r['restore_seconds']:.1f} | {r['exact_accuracy']:.2f} |"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Served test accuracy after each request against cumulative apply time, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_request, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for label, r in result["policies"].items():
        t = r["timeline"]
        by_request.plot([p["request"] + 1 for p in t], [p["accuracy"] for p in t], label=label, lw=1.2)
        by_time.plot([p["applied_seconds"] for p in t], [p["accuracy"] for p in t], lw=1.2)
    first = next(iter(result["policies"].values()))["timeline"]
    for i, p in enumerate(p for p in first if p["ids"] > 1):
        by_request.axvline(p["request"] + 1, color="grey", ls="--", lw=0.8, label="class-wise burst" if i == 0 else None)
    by_request.set_xlabel("requests applied")
    by_time.set_xlabel("cumulative apply time (s)")
    for ax in (by_request, by_time):
        ax.set_ylabel("served test accuracy (%)")
        ax.grid(alpha=0.3)
    by_request.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{result['dataset']}: served accuracy over a deletion stream")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,cifar10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--from-json", action="store_true", help="re-render tables and plots from bench/results/hybrid.json")
    args = parser.parse_args()
    out = ROOT / "bench" / "results"
    if args.from_json:
        saved = json.loads((out / "hybrid.json").read_text())
        return publish(saved["meta"], saved["results"], out, write=not args.no_write)
    names = args.datasets.split(",")
    if "cifar10" in names and not CIFAR.exists():
        sys.exit(f"{CIFAR} not found")
    import ray
    import torch

    results = []
    cluster = ClusterConfig()
    with tempfile.TemporaryDirectory(prefix="raysisa-hybrid-") as tmp, ray_session(cluster):
        for name in names:
            results.append(bench(name, Path(tmp), cluster, args.seed, sweep=name == "digits"))
    run_line = (
        f"Run {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}, CPU, Ray {ray.__version__}, "
        f"torch {torch.__version__}); `python bench/hybrid.py {' '.join(sys.argv[1:])}`."
    )
    for result in results:
        result["run"] = run_line
    # data sets not run this time keep their last results (each names its own run)
    saved = json.loads((out / "hybrid.json").read_text()) if (out / "hybrid.json").exists() else {"results": []}
    kept = [dict(r, run=r.get("run", saved["meta"].split(". ")[0] + ".")) for r in saved["results"] if r["dataset"] not in names]
    results = kept + results
    meta = (
        "5 shards x 4 slices; one batch per "
        "request (window 0); cifar10: 10,000 training images, the fast CIFAR recipe's airbench at width 16, 12 epochs, batch 64, lr 0.25, no flip TTA; DPUS = neggrad_plus (2 epochs, lr 0.01), OHS lr 0.1 x the training lr; debt bounds off so "
        "approximate debt accumulates until the final restoration. Accuracy is the served ensemble's (vote) on the test split."
    )
    out.mkdir(exist_ok=True)
    (out / "hybrid.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    publish(meta, results, out, write=not args.no_write)


def publish(meta: str, results: list[dict], out: Path, write: bool) -> None:
    """Print the tables, draw one accuracy plot per data set and (unless told not to) update BENCHMARKS.md."""
    parts = [meta]
    for result in results:
        png = out / f"hybrid_{result['dataset']}.png"
        plot(result, png)
        run = f"{result['run']} " if "run" in result else ""
        parts.append(run + markdown(result) + f"\n\nAccuracy over the stream: [`{png.relative_to(ROOT)}`]({png.relative_to(ROOT)}).")
    body = "\n\n".join(parts)
    print(body)
    if write:
        write_section(ROOT / "BENCHMARKS.md", "hybrid", body)


if __name__ == "__main__":
    main()
