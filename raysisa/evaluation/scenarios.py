"""Forget-set scenarios (random, class-wise, non-IID, backdoor) as seeded sets of ids.

A forget set is data: the sorted ids, the scenario that drew them and its seed, persisted
on the store as ``forget_sets/<kind>-seed<seed>-<sha12>.parquet`` so every comparison
names exactly which samples it forgot.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysisa.config import DataConfig, Scenario
from raysisa.errors import ConfigError
from raysisa.sisa.run import SisaRun
from raysisa.store import ObjectStore
from raysisa.training import derive_seed

__all__ = ["draw_forget_set", "excluded_test_classes", "save_forget_set", "load_forget_set", "train_labels"]


def train_labels(run: SisaRun) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) of every live training sample, sorted by id."""
    spec = run.store.spec
    tables = [
        run.store.read_partition(k, r, ["id", "label"])
        for k in range(spec.sharding.num_shards)
        for r in range(1, spec.sharding.num_slices + 1)
    ]
    table = pa.concat_tables(tables)
    order = np.argsort(table["id"].to_numpy())
    return table["id"].to_numpy()[order], table["label"].to_numpy()[order]


def draw_forget_set(scenario: Scenario, run: SisaRun, seed: int) -> np.ndarray:
    """The sorted ids ``scenario`` forgets on ``run`` for ``seed``.

    Raises:
        ConfigError: the scenario cannot be drawn on this data (unknown class, no poison...).
    """
    ids, labels = train_labels(run)
    rng = np.random.default_rng(derive_seed(seed, 101))
    num_classes = run.store.info.num_classes
    if scenario.kind == "random":
        return np.sort(rng.choice(ids, size=max(1, round(scenario.fraction * len(ids))), replace=False))
    if scenario.kind in ("classwise", "noniid"):
        chosen = []
        for c in scenario.classes:
            members = ids[labels == c]
            if c >= num_classes or not len(members):
                raise ConfigError(f"{scenario.kind} forgetting: class {c} has no training samples ({num_classes} classes)")
            if scenario.kind == "classwise":
                chosen.append(members)
            else:
                chosen.append(rng.choice(members, size=max(1, round(scenario.fraction * len(members))), replace=False))
        return np.sort(np.concatenate(chosen))
    poison = run.store.spec.data.poison
    if poison is None:
        raise ConfigError("the backdoor scenario needs data.poison (which samples carry the trigger)")
    from raysisa.data.poison import poison_ids

    everything = np.union1d(ids, run.store.tombstones()["id"].to_numpy())
    return np.intersect1d(poison_ids(everything, poison), ids)


def excluded_test_classes(scenario: Scenario) -> list[int]:
    """Classes TA leaves out: the forgotten ones in class-wise forgetting (OPTML code)."""
    return list(scenario.classes) if scenario.kind == "classwise" else []


def forget_set_key(scenario: Scenario, seed: int, ids: np.ndarray) -> str:
    digest = hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:12]
    return f"forget_sets/{scenario.kind}-seed{seed}-{digest}.parquet"


def save_forget_set(store: ObjectStore, scenario: Scenario, seed: int, ids: np.ndarray, data: DataConfig) -> str:
    """Persist a forget set (ids plus how they were drawn); returns its key."""
    table = pa.table({"id": pa.array(np.asarray(ids, dtype=np.int64))})
    meta = {"scenario": scenario.to_dict(), "seed": seed, "data": data.identity(), "count": len(ids)}
    table = table.replace_schema_metadata({b"raysisa": json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    key = forget_set_key(scenario, seed, ids)
    store.put_bytes(key, buffer.getvalue())
    return key


def load_forget_set(store: ObjectStore, key: str) -> tuple[np.ndarray, dict]:
    table = pq.read_table(io.BytesIO(store.get_bytes(key)))
    return table["id"].to_numpy(), json.loads(table.schema.metadata[b"raysisa"])
