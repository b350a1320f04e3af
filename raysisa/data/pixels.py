"""Decoded images stored beside their Parquet partition: decode once, train many times.

A partition's Parquet (id, label, encoded PNG/JPEG bytes) is the source of truth. Beside
it the store keeps a *pixels object*: a safetensors file with the same rows, decoded::

    ids     int64 (N,)
    labels  int64 (N,)
    images  uint8 (N, H, W, C)
    metadata: {"raysisa.pixels": '{"format": "1", "source_sha256": <sha256 of the Parquet it was decoded from>}'}

``source_sha256`` ties the pixels to one exact partition object, so pixels of an older
partition (one that still held a deleted sample) can never be used for a newer one. When a
deletion rewrites a partition, its pixels are derived by the same row mask
(:meth:`Pixels.drop`), not decoded again. A missing, corrupt or stale pixels object is
never trusted: the reader decodes the Parquet instead (and the store's sweep writes the
object again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from raysisa.data.samples import DatasetInfo, decode_images
from raysisa.errors import DataError

__all__ = ["Pixels", "PIXELS_FORMAT"]

PIXELS_FORMAT = "1"
_METADATA_KEY = "raysisa.pixels"


@dataclass(frozen=True)
class Pixels:
    """The decoded rows of one partition (or of the test split), in the partition's order."""

    ids: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)
    images: np.ndarray  # uint8 (N, H, W, C)
    source_sha256: str

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def decode(cls, table: pa.Table, info: DatasetInfo, source_sha256: str) -> Pixels:
        """Decode a sample table (id, label, image bytes).

        Raises:
            DataError: an image is unreadable or has another size than ``info`` says.
        """
        images = decode_images(table, info.channels)
        if len(images) == 0:
            images = np.zeros((0, info.height, info.width, info.channels), dtype=np.uint8)
        elif images.shape[1:] != (info.height, info.width, info.channels):
            raise DataError(
                f"images are {images.shape[2]}x{images.shape[1]}x{images.shape[3]}, the run's data is "
                f"{info.width}x{info.height}x{info.channels}"
            )
        ids = table["id"].to_numpy().astype(np.int64)
        labels = table["label"].to_numpy().astype(np.int64)
        return cls(ids, labels, np.ascontiguousarray(images), source_sha256)

    def take(self, rows: np.ndarray) -> Pixels:
        """The rows selected by the boolean mask ``rows`` (order kept)."""
        return Pixels(self.ids[rows], self.labels[rows], np.ascontiguousarray(self.images[rows]), self.source_sha256)

    def drop(self, ids: np.ndarray, source_sha256: str) -> Pixels:
        """These pixels without the rows of ``ids``, for the partition ``source_sha256``
        that a deletion wrote (row order kept, as :func:`~raysisa.data.samples.drop_ids`)."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        return Pixels(self.ids[keep], self.labels[keep], np.ascontiguousarray(self.images[keep]), source_sha256)

    def matches(self, table: pa.Table) -> bool:
        """Whether these pixels hold exactly the rows (ids and labels, in order) of ``table``."""
        return np.array_equal(self.ids, table["id"].to_numpy()) and np.array_equal(self.labels, table["label"].to_numpy())

    def to_bytes(self) -> bytes:
        """Deterministic safetensors bytes (the same pixels always give the same sha256)."""
        tensors = {"ids": self.ids, "labels": self.labels, "images": self.images}
        # one metadata entry: safetensors writes a metadata map in hash order, not sorted
        about = json.dumps({"format": PIXELS_FORMAT, "source_sha256": self.source_sha256}, sort_keys=True)
        return st_save(tensors, metadata={_METADATA_KEY: about})

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Pixels:
        """Parse a pixels object.

        Raises:
            DataError: not a pixels object of this format.
        """
        try:
            tensors = st_load(data)
            metadata = json.loads(_metadata(data)[_METADATA_KEY])
            pixels = cls(tensors["ids"], tensors["labels"], tensors["images"], metadata["source_sha256"])
        except (SafetensorError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where} is not a pixels object ({type(exc).__name__}: {exc})") from None
        if metadata.get("format") != PIXELS_FORMAT or pixels.images.dtype != np.uint8 or pixels.images.ndim != 4:
            raise DataError(f"{where} is not a pixels object of format {PIXELS_FORMAT}")
        if not len(pixels.ids) == len(pixels.labels) == len(pixels.images):
            raise DataError(f"{where}: ids, labels and images have different lengths")
        return pixels


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (its JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + size]).get("__metadata__") or {})
