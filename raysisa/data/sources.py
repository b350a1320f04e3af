"""Data source registry: every source yields train/test tables of (id, label, image bytes).

Built-in sources:

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download);
  the embedded default. Ids are row indices of ``load_digits()``.
- ``parquet``: Parquet files with columns ``id``, ``label``, ``image`` on any fsspec URI.
- ``cifar10``, ``cifar100``, ``svhn``: torchvision's on-disk formats under ``data_dir``
  (see :mod:`raysisa.data.torchvision_sources`). Ids are indices in the official splits.

Add a source with :func:`register_source`; it receives the :class:`DataConfig`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysisa.errors import DataError
from raysisa.registry import SOURCES

log = logging.getLogger(__name__)

__all__ = ["SOURCES", "register_source", "list_sources", "load_source"]

SourceFn = Callable[["DataConfig"], "SourceData"]  # noqa: F821 - forward refs for docs
# SOURCES (name -> SourceFn) lives in raysisa.registry, below config, which validates data.source.
# The torchvision sources register from their own module, imported by raysisa.data.
register_source = SOURCES.register  # decorator: @register_source("name")


def list_sources() -> list[str]:
    """Names of all registered data sources, sorted."""
    return SOURCES.names()


def load_source(config):
    """Load, validate and subsample the source named by ``config.source``.

    Raises:
        DataError: unknown source, unreadable files, missing columns, duplicate ids...
    """
    from raysisa.data.samples import SourceData, check_table

    if config.source not in SOURCES:
        raise DataError(SOURCES.unknown(config.source))
    data = SOURCES.get(config.source)(config)
    train = check_table(data.train, f"{config.source} train split")
    test = check_table(data.test, f"{config.source} test split")
    overlap = np.intersect1d(train["id"].to_numpy(), test["id"].to_numpy())
    if len(overlap) and config.source != "parquet":
        raise DataError(f"{config.source}: train and test share {len(overlap)} id(s)")
    train = _subsample(train, config.limit, config.split_seed)
    test = _subsample(test, config.test_limit, config.split_seed + 1)
    labels = np.concatenate([train["label"].to_numpy(), test["label"].to_numpy()])
    if len(labels) and labels.max() >= data.info.num_classes:
        raise DataError(
            f"{config.source}: label {int(labels.max())} is out of range for {data.info.num_classes} classes"
        )
    if config.poison is not None:
        from raysisa.data.poison import poison_table

        train = poison_table(train, config.poison, data.info.channels, data.info.num_classes)
    return SourceData(train=train, test=test, info=data.info)


def _subsample(table: pa.Table, limit: int | None, seed: int) -> pa.Table:
    if limit is None or limit >= table.num_rows:
        return table
    rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=limit, replace=False))
    return table.take(pa.array(rows))


def _holdout(table: pa.Table, fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Split off a seeded random test set (rows keep their ids)."""
    order = np.random.default_rng(seed).permutation(table.num_rows)
    n_test = max(1, round(table.num_rows * fraction))
    return table.take(pa.array(np.sort(order[n_test:]))), table.take(pa.array(np.sort(order[:n_test])))


@register_source("digits")
def _digits(config):
    from sklearn.datasets import load_digits

    from raysisa.data.samples import DatasetInfo, SourceData, encode_png, make_table

    bunch = load_digits()
    # 0..16 intensities -> 0..255 grey levels; PNG keeps them exactly.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    table = make_table(np.arange(len(pixels)), bunch.target, [encode_png(p) for p in pixels])
    train, test = _holdout(table, config.test_fraction, config.split_seed)
    mean = float(pixels.mean() / 255.0)
    std = float(pixels.std() / 255.0)
    info = DatasetInfo("digits", 10, 1, 8, 8, (mean,), (std,), tuple(str(d) for d in range(10)))
    return SourceData(train, test, info)


def _read_parquet(fs, path: str) -> pa.Table:
    try:
        with fs.open(path, "rb") as handle:
            return pq.read_table(handle)
    except FileNotFoundError:
        raise DataError(f"Parquet file {path} does not exist") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read Parquet file {path}: {exc}") from None


def _parquet_files(fs, root: str, split: str) -> list[str]:
    """Files of ``split`` under ``root``: ``<split>.parquet`` or ``<split>/*.parquet``."""
    single = f"{root}/{split}.parquet"
    if fs.isfile(single):
        return [single]
    folder = f"{root}/{split}"
    if fs.isdir(folder):
        return sorted(p for p in fs.find(folder) if p.endswith(".parquet"))
    return []


@register_source("parquet")
def _parquet(config):
    from raysisa.data.samples import DatasetInfo, SourceData, check_table, decode_images

    if not config.uri:
        raise DataError("data source 'parquet' needs data.uri (a folder or a .parquet file)")
    try:
        fs, root = fsspec.core.url_to_fs(config.uri, **config.storage_options)
    except (ImportError, ValueError, TypeError) as exc:
        raise DataError(f"cannot open data.uri {config.uri!r}: {exc}") from None
    root = root.rstrip("/")
    if fs.isfile(root):
        train_files, test_files = [root], []
    elif fs.isdir(root):
        train_files, test_files = _parquet_files(fs, root, "train"), _parquet_files(fs, root, "test")
        if not train_files:
            train_files = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet"))
    else:
        raise DataError(f"data.uri {config.uri!r} does not exist")
    if not train_files:
        raise DataError(f"no Parquet files under {config.uri!r} (expected train.parquet or train/*.parquet)")

    def read(files: list[str]) -> pa.Table:
        tables = [check_table(_read_parquet(fs, f), f"Parquet file {f}") for f in files]
        return pa.concat_tables(tables)

    train = read(train_files)
    test = read(test_files) if test_files else None
    if test is None:
        train, test = _holdout(train, config.test_fraction, config.split_seed)
    with fs.open(train_files[0], "rb") as handle:
        meta = pq.read_schema(handle).metadata or {}
    names = tuple(json.loads(meta[b"label_names"])) if b"label_names" in meta else ()
    labels = np.concatenate([train["label"].to_numpy(), test["label"].to_numpy()])
    num_classes = max(len(names), int(labels.max()) + 1 if len(labels) else 1)
    channels = 1 if _is_grey(train) else 3
    # Normalisation statistics from (up to) the first 1,000 training images.
    pixels = decode_images(train.slice(0, 1000), channels=channels).astype(np.float64) / 255.0
    _, height, width, _ = pixels.shape
    mean = tuple(float(m) for m in pixels.mean(axis=(0, 1, 2)))
    std = tuple(max(float(s), 1e-3) for s in pixels.std(axis=(0, 1, 2)))
    info = DatasetInfo("parquet", num_classes, channels, height, width, mean, std, names)
    return SourceData(train, test, info)


def _is_grey(table: pa.Table) -> bool:
    """Whether the first image is single-channel (PNG mode L / JPEG greyscale)."""
    import io

    from PIL import Image

    if table.num_rows == 0:
        return False
    try:
        with Image.open(io.BytesIO(table["image"][0].as_py())) as img:
            return img.mode in ("L", "1", "I", "I;16")
    except (OSError, ValueError):
        return False  # decode_images reports the unreadable sample by id
