"""Hyperparameters tuned by raysisa's own sweeps: a method's defaults for one setting.

A method's class defaults are its reference implementation's values. Those values were
chosen for other models and data, and on a small CNN trained by QAT at 2–8 bits they can
be far from the best. ``raysisa sweep`` (``tune_configs/*-cifar10.yaml``) searches each
method's hyperparameters per bit width against the retrained reference; the winners are
recorded in ``tuned.json`` next to this module, one entry per (method, setting), with the
study, trial and Avg Gap they came from (``python bench/sweeps.py --write-defaults``
regenerates the file from the studies' ``best.json``).

A *setting* is what the tuning depended on: the data set (a torchvision source's name, or
the folder name of a Parquet copy, e.g. ``cifar10``), the model and the weight bit width.
:func:`tuned_args` gives the entry's hyperparameters for a setting, or nothing; ``compare``
uses them under the user's ``method_args`` (``compare.tuned_defaults: false`` turns this
off and compares the references' defaults).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from raysisa.config import RunSpec
from raysisa.config.recipe import FULL_PRECISION, bits_label

__all__ = ["Setting", "Tuned", "tuned_table", "tuned_args", "TABLE_PATH"]

TABLE_PATH = Path(__file__).with_name("tuned.json")


@dataclass(frozen=True)
class Setting:
    """What tuned hyperparameters depend on: data set, model, weight bits (32: FP)."""

    dataset: str
    model: str
    bits: int

    @classmethod
    def of(cls, spec: RunSpec) -> Setting:
        data = spec.data
        dataset = data.source
        if data.source == "parquet" and data.uri:
            dataset = data.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        quant = spec.model.quant
        return cls(dataset, spec.model.name, FULL_PRECISION if quant is None else quant.w_bits)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.model}/{bits_label(self.bits)}"


@dataclass(frozen=True)
class Tuned:
    """One method's tuned hyperparameters for one setting, and where they came from."""

    method: str
    setting: Setting
    params: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)  # study, trial, avg_gap, seeds, date

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tuned:
        return cls(data["method"], Setting(**data["setting"]), dict(data["params"]), dict(data.get("source", {})))


@lru_cache(maxsize=1)
def tuned_table(path: str | None = None) -> tuple[Tuned, ...]:
    """Every entry of ``tuned.json`` (empty when the file is absent)."""
    file = Path(path) if path else TABLE_PATH
    if not file.exists():
        return ()
    return tuple(Tuned.from_dict(entry) for entry in json.loads(file.read_text())["entries"])


def tuned_args(method: str, setting: Setting) -> Tuned | None:
    """The tuned entry of ``method`` for ``setting``, or ``None`` when it was not tuned there."""
    for entry in tuned_table():
        if entry.method == method and entry.setting == setting:
            return entry
    return None
