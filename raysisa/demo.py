"""``raysisa demo``: the main job on the embedded default, end to end.

1. Train a SISA ensemble (5 shards x 4 slices of a small CNN) on scikit-learn's digits in
   Ray actors, checkpointing every slice to a local (or ``s3://``) store.
2. Delete a random 1% of the training samples through the normal exact-unlearning path.
3. Retrain the whole ensemble from scratch without those samples (the reference), and
   check that every shard's weights are bit-identical to the unlearned ones.
"""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import numpy as np

from raysisa.api import as_store
from raysisa.config import ClusterConfig, load_config
from raysisa.errors import ConfigError
from raysisa.sisa.cost import expected_batch_cost, retrain_cost
from raysisa.sisa.run import SisaRun

__all__ = ["run_demo"]


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def run_demo(
    store: str | None = None,
    endpoint_url: str | None = None,
    progress: bool = True,
    *,
    cluster: ClusterConfig | None = None,
    fraction: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo; returns a JSON-ready summary (plus ``_lines`` for humans)."""
    from raysisa.sisa.actors import RayPool, ray_session

    root = store or tempfile.mkdtemp(prefix="raysisa-demo-")
    job = load_config(None)
    spec = job.spec
    main_store = as_store(_join(root, "sisa"), endpoint_url)
    ref_store = as_store(_join(root, "retrain"), endpoint_url)
    for candidate in (main_store, ref_store):
        if SisaRun(candidate).store.exists():
            raise ConfigError(f"demo store {candidate.uri} already holds a run; give an empty --store")

    cluster = cluster or ClusterConfig()
    started = time.perf_counter()
    with ray_session(cluster):
        ray_ready = time.perf_counter() - started
        pool = RayPool(cluster, spec.sharding.num_shards, threads=spec.train.threads)
        try:
            sisa = SisaRun.create(spec, main_store)
            trained = sisa.train(pool, progress)
            before = sisa.evaluate(pool=pool)
            sizes = [shard["slice_sizes"] for shard in sisa.inspect(verify=False)["shards"]]
            live = sisa.store.read_index()["id"].to_numpy()
            count = max(1, math.ceil(fraction * len(live)))
            forget = np.sort(np.random.default_rng(seed).choice(live, size=count, replace=False))
            unlearned = sisa.unlearn(forget, pool, progress)
            after = sisa.evaluate(pool=pool)
            reference = SisaRun.create(spec, ref_store, exclude_ids=forget)
            retrained = reference.train(pool, progress)
            retrained_eval = reference.evaluate(pool=pool)
        finally:
            pool.close()
    ours = [s["model_sha256"] for s in sisa.inspect()["shards"]]
    theirs = [s["model_sha256"] for s in reference.inspect()["shards"]]
    exact = ours == theirs
    speedup = retrained.wall_seconds / max(unlearned.wall_seconds, 1e-9)
    grad_ratio = retrained.sample_grads / max(unlearned.sample_grads, 1)
    epochs = spec.train.epochs
    theory = sum(retrain_cost(s, epochs) for s in sizes) / expected_batch_cost(sizes, epochs, int(count))
    result = {
        "store": root,
        "data": "digits",
        "num_shards": spec.sharding.num_shards,
        "num_slices": spec.sharding.num_slices,
        "train_samples": int(len(live)),
        "deleted": int(count),
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "accuracy_full_retrain": retrained_eval.accuracy,
        "shards_retrained": len(unlearned.shards_affected),
        "slices_retrained": unlearned.slices_retrained,
        "slices_total": spec.sharding.num_shards * spec.sharding.num_slices,
        "train_seconds": trained.wall_seconds,
        "unlearn_seconds": unlearned.wall_seconds,
        "full_retrain_seconds": retrained.wall_seconds,
        "speedup_wall": speedup,
        "unlearn_sample_grads": unlearned.sample_grads,
        "full_retrain_sample_grads": retrained.sample_grads,
        "speedup_sample_grads": grad_ratio,
        "theory_speedup_sample_grads": theory,
        "bit_identical_to_retrain": exact,
        "ray_startup_seconds": ray_ready,
        "total_seconds": time.perf_counter() - started,
    }
    result["_lines"] = [
        f"store: {root}",
        f"trained {spec.sharding.num_shards} shards x {spec.sharding.num_slices} slices on {len(live)} digits "
        f"in {trained.wall_seconds:.1f}s; test accuracy {before.accuracy:.2f}%",
        f"unlearned {count} random samples (1%): retrained {unlearned.slices_retrained} of "
        f"{result['slices_total']} slices in {len(unlearned.shards_affected)} shard(s), {unlearned.wall_seconds:.1f}s; "
        f"test accuracy {after.accuracy:.2f}%",
        f"full retrain without them: {retrained.wall_seconds:.1f}s -> {speedup:.2f}x faster "
        f"({grad_ratio:.2f}x fewer sample-gradients; SISA's expectation for {count} random deletions: {theory:.2f}x)",
        f"unlearned shards bit-identical to the full retrain: {'yes' if exact else 'NO'}",
        f"total {result['total_seconds']:.1f}s (Ray start-up {ray_ready:.1f}s)",
    ]
    return result
