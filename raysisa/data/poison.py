"""Backdoor triggers (SPEC 3.5): poison a seeded share of the training data, and build the
triggered test set that measures the attack success rate (ASR)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysisa.config import PoisonConfig
from raysisa.data.samples import decode_images, encode_png, make_table
from raysisa.errors import DataError

__all__ = ["apply_trigger", "poison_ids", "poison_table"]


def apply_trigger(pixels: np.ndarray, config: PoisonConfig) -> np.ndarray:
    """A copy of uint8 images (N, H, W, C) with the trigger square stamped on."""
    out = pixels.copy()
    _, h, w, _ = out.shape
    top, left = h - config.margin - config.patch, w - config.margin - config.patch
    if top < 0 or left < 0:
        raise DataError(f"a {config.patch}px trigger {config.margin}px from the corner does not fit {w}x{h} images")
    out[:, top : top + config.patch, left : left + config.patch, :] = config.value
    return out


def poison_ids(train_ids: np.ndarray, config: PoisonConfig) -> np.ndarray:
    """The (sorted) ids a poison config selects from ``train_ids``."""
    ids = np.sort(np.asarray(train_ids, dtype=np.int64))
    count = max(1, round(config.fraction * len(ids)))
    return np.sort(np.random.default_rng(config.seed).choice(ids, size=count, replace=False))


def poison_table(table: pa.Table, config: PoisonConfig, channels: int, num_classes: int) -> pa.Table:
    """The training table with the selected samples triggered (lossless PNG) and relabelled."""
    if config.target >= num_classes:
        raise DataError(f"poison target {config.target} is not a class (there are {num_classes})")
    chosen = poison_ids(table["id"].to_numpy(), config)
    rows = np.flatnonzero(np.isin(table["id"].to_numpy(), chosen))
    triggered = apply_trigger(decode_images(table.take(pa.array(rows)), channels), config)
    images = table["image"].to_pylist()
    labels = table["label"].to_numpy().copy()
    for row, pixels in zip(rows, triggered, strict=True):
        images[row] = encode_png(pixels[..., 0] if channels == 1 else pixels)
        labels[row] = config.target
    return make_table(table["id"].to_numpy(), labels, images)
