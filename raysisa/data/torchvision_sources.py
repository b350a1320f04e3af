"""CIFAR-10, CIFAR-100 and SVHN through torchvision's own loaders.

``data.data_dir`` must hold the files in torchvision's layout (``cifar-10-batches-py/``,
``cifar-100-python/``, ``train_32x32.mat`` + ``test_32x32.mat``). With ``data.download``
torchvision fetches missing files (needs network). Pixels are re-encoded as lossless PNG so
every source lands on the store in the same (id, label, image bytes) form. Ids are the
indices in the official train and test splits, offset so they never collide: test ids
start at ``TEST_ID_OFFSET``.

``data.verify_checksums: false`` accepts files whose md5 differs from the published one
(a locally rebuilt or trimmed copy); torchvision's loaders still read them.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from raysisa.data.samples import DatasetInfo, SourceData, encode_png, make_table
from raysisa.data.sources import register_source
from raysisa.errors import DataError

__all__ = ["TEST_ID_OFFSET"]

TEST_ID_OFFSET = 10_000_000

_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def _md5(path: str) -> str:
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as handle:
        return hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()


def _trust_local_files(cls: type, root: str) -> type:
    """A subclass of a torchvision CIFAR/SVHN class whose expected md5s are the files' own."""
    attrs: dict[str, Any] = {}
    if hasattr(cls, "split_list"):  # SVHN: {split: [url, filename, md5]}
        attrs["split_list"] = {
            split: [url, name, _md5(os.path.join(root, name))] for split, (url, name, _) in cls.split_list.items()
        }
    else:  # CIFAR: train_list / test_list of [filename, md5], meta {"filename", "key", "md5"}
        folder = os.path.join(root, cls.base_folder)
        for attr in ("train_list", "test_list"):
            attrs[attr] = [[name, _md5(os.path.join(folder, name))] for name, _ in getattr(cls, attr)]
        attrs["meta"] = {**cls.meta, "md5": _md5(os.path.join(folder, cls.meta["filename"]))}
    return type(f"Unverified{cls.__name__}", (cls,), attrs)


def _load_split(config, name: str, cls: type, split_kwargs: dict[str, Any]) -> Any:
    if not config.data_dir:
        raise DataError(f"data source {name!r} needs data.data_dir (the folder holding torchvision's {name} files)")
    root = os.path.expanduser(config.data_dir)
    loader = cls if config.verify_checksums else _trust_local_files(cls, root)
    try:
        return loader(root=root, download=config.download, **split_kwargs)
    except RuntimeError as exc:
        hint = "" if config.download else " (set data.download: true to fetch it, network permitting)"
        raise DataError(f"{name} under {root}: {exc}{hint}") from None
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(f"cannot read {name} files under {root}: {exc}") from None


def _to_table(pixels: np.ndarray, labels: np.ndarray, offset: int):
    images = [encode_png(p) for p in pixels]
    return make_table(np.arange(len(images), dtype=np.int64) + offset, np.asarray(labels), images)


def _cifar(config, name: str, cls_name: str) -> SourceData:
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    train = _load_split(config, name, cls, {"train": True})
    test = _load_split(config, name, cls, {"train": False})
    mean, std = _STATS[name]
    info = DatasetInfo(name, len(train.classes), 3, 32, 32, mean, std, tuple(train.classes))
    return SourceData(
        _to_table(train.data, np.asarray(train.targets), 0),
        _to_table(test.data, np.asarray(test.targets), TEST_ID_OFFSET),
        info,
    )


@register_source("cifar10")
def _cifar10(config) -> SourceData:
    return _cifar(config, "cifar10", "CIFAR10")


@register_source("cifar100")
def _cifar100(config) -> SourceData:
    return _cifar(config, "cifar100", "CIFAR100")


@register_source("svhn")
def _svhn(config) -> SourceData:
    from torchvision.datasets import SVHN

    train = _load_split(config, "svhn", SVHN, {"split": "train"})
    test = _load_split(config, "svhn", SVHN, {"split": "test"})
    mean, std = _STATS["svhn"]
    info = DatasetInfo("svhn", 10, 3, 32, 32, mean, std, tuple(str(d) for d in range(10)))
    # torchvision keeps SVHN as (N, C, H, W) and already maps label 10 to 0.
    return SourceData(
        _to_table(train.data.transpose(0, 2, 3, 1), train.labels, 0),
        _to_table(test.data.transpose(0, 2, 3, 1), test.labels, TEST_ID_OFFSET),
        info,
    )
