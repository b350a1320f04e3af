"""Samples as Arrow tables with stable ids, and image decoding.

Every split is a :class:`pyarrow.Table` with the schema ``id int64, label int64, image
binary`` (encoded PNG or JPEG bytes, kept exactly as the source gave them). The id is the
sample's identity for its whole life: partitions, checkpoint keys, deletion requests and
tombstones all speak in ids.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from raysisa.errors import DataError

__all__ = [
    "SAMPLE_SCHEMA",
    "DatasetInfo",
    "SourceData",
    "make_table",
    "check_table",
    "encode_png",
    "decode_images",
    "take_ids",
    "drop_ids",
]

SAMPLE_SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("image", pa.binary())])


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the samples."""

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label_names: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DatasetInfo:
        data = dict(data)
        for key in ("mean", "std", "label_names"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


@dataclass(frozen=True)
class SourceData:
    """A loaded data source: train and test tables plus their description."""

    train: pa.Table
    test: pa.Table
    info: DatasetInfo


def make_table(ids: np.ndarray, labels: np.ndarray, images: list[bytes]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(np.asarray(ids, dtype=np.int64)),
            "label": pa.array(np.asarray(labels, dtype=np.int64)),
            "image": pa.array(images, type=pa.binary()),
        },
        schema=SAMPLE_SCHEMA,
    )


def check_table(table: pa.Table, where: str) -> pa.Table:
    """Validate columns and ids of a split and cast it to :data:`SAMPLE_SCHEMA`.

    Raises:
        DataError: a column is missing or mistyped, an id is null, negative or duplicated,
            or a label is negative.
    """
    missing = [c for c in SAMPLE_SCHEMA.names if c not in table.column_names]
    if missing:
        raise DataError(
            f"{where} is missing column(s) {', '.join(missing)}; expected columns id (int64), label (int) "
            f"and image (PNG/JPEG bytes), found {', '.join(table.column_names) or 'none'}"
        )
    table = table.select(SAMPLE_SCHEMA.names)
    try:
        table = table.cast(SAMPLE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{where}: columns do not match id int64, label int, image binary: {exc}") from None
    for column in SAMPLE_SCHEMA.names:
        if table[column].null_count:
            raise DataError(f"{where}: column {column} has {table[column].null_count} null value(s)")
    ids = table["id"].to_numpy()
    if len(ids) and ids.min() < 0:
        raise DataError(f"{where}: ids must be non-negative, found {int(ids.min())}")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        dupes = unique[counts > 1]
        raise DataError(
            f"{where}: {len(dupes)} duplicate id(s), e.g. {', '.join(map(str, dupes[:5].tolist()))}; "
            "every sample needs a unique, stable id"
        )
    labels = table["label"].to_numpy()
    if len(labels) and labels.min() < 0:
        raise DataError(f"{where}: labels must be non-negative, found {int(labels.min())}")
    return table


def encode_png(pixels: np.ndarray) -> bytes:
    """Losslessly encode a uint8 image (H, W) or (H, W, C) as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def decode_images(table: pa.Table, channels: int) -> np.ndarray:
    """Decode the ``image`` column to uint8 pixels of shape (N, H, W, C).

    Raises:
        DataError: an image cannot be decoded or has another size than the first.
    """
    mode = "L" if channels == 1 else "RGB"
    blobs = table["image"].to_pylist()
    ids = table["id"]
    pixels = []
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as img:
                arr = np.asarray(img.convert(mode))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"sample id {ids[i].as_py()}: image bytes are not a readable PNG/JPEG ({exc})") from None
        if pixels and arr.shape[:2] != pixels[0].shape[:2]:
            raise DataError(
                f"sample id {ids[i].as_py()}: image is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                f"{pixels[0].shape[1]}x{pixels[0].shape[0]}; all images must have one size"
            )
        pixels.append(arr)
    if not pixels:
        return np.zeros((0, 0, 0, channels), dtype=np.uint8)
    out = np.stack(pixels)
    return out[..., None] if out.ndim == 3 else out


def take_ids(table: pa.Table, ids: np.ndarray) -> pa.Table:
    """Rows of ``table`` whose id is in ``ids`` (table order kept)."""
    return table.filter(pc.is_in(table["id"], value_set=pa.array(np.asarray(ids, dtype=np.int64))))


def drop_ids(table: pa.Table, ids: np.ndarray) -> pa.Table:
    """Rows of ``table`` whose id is not in ``ids`` (table order kept)."""
    mask = pc.invert(pc.is_in(table["id"], value_set=pa.array(np.asarray(ids, dtype=np.int64))))
    return table.filter(mask)
