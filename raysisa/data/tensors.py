"""From stored samples to training tensors: uint8 images, batched seeded augmentation and
normalisation on the training device.

The training path keeps a shard's images as uint8 (N, H, W, C) — a quarter of a float32
copy — in :class:`Images`, and makes every mini-batch on the device it trains on: gather
the batch's rows, augment them (:func:`augment_nhwc`), convert to float and normalise. The
augmentation is a pure function of a ``torch.Generator``'s state, so an epoch replayed
after a rollback draws exactly what it drew the first time.

Augmentation is defined as torchvision's reference transforms on uint8 images: for each
sample, ``RandomCrop(H, padding=p, fill=0)`` (zero = black padding) at offsets ``(dy, dx)``,
then ``RandomHorizontalFlip`` and, optionally, a cutout square set to zero; then
``ToTensor`` and ``Normalize(mean, std)``. The offsets and flips are drawn from the
generator for the whole batch (``dy``, ``dx``, ``flip``, then cutout centres), not per
sample from torch's global RNG; tests check the result against torchvision's functional
transforms at the drawn offsets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from raysisa.data.samples import DatasetInfo, decode_images

__all__ = ["Augment", "Images", "to_tensors", "normalize", "random_crop_flip", "augment_nhwc"]


@dataclass(frozen=True)
class Augment:
    """Batch augmentation (see the module docstring).

    Args:
        crop_padding: pad each side by this many zero pixels, then crop back at a random
            offset (0: no crop).
        flip: flip horizontally with probability 1/2.
        cutout: side of a square set to zero at a random centre (0: none; it may be
            clipped at the border, as in DeVries & Taylor 2017).
    """

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0


def augment_nhwc(x: torch.Tensor, generator: torch.Generator, augment: Augment = Augment()) -> torch.Tensor:
    """Augment a batch of images laid out (N, H, W, C), any dtype, on any device.

    Random numbers come from ``generator`` (a CPU generator) in a fixed order; the pixel
    work happens on ``x.device``.
    """
    n, h, w, _ = x.shape
    pad = augment.crop_padding
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if augment.flip else torch.zeros(n, dtype=torch.bool)
    if pad or augment.flip:
        padded = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1) if pad else x
        rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
        cols = dx[:, None] + torch.arange(w)[None, :]  # (n, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded[batch, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    if augment.cutout:
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
        half = augment.cutout // 2
        ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
        inside_y = (ys >= (cy - half)[:, None]) & (ys < (cy - half + augment.cutout)[:, None])  # (n, h)
        inside_x = (xs >= (cx - half)[:, None]) & (xs < (cx - half + augment.cutout)[:, None])  # (n, w)
        hole = (inside_y[:, :, None] & inside_x[:, None, :]).to(x.device)
        x = x.masked_fill(hole[..., None], 0)
    return x


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel crop (zero padding) and horizontal flip of a float (N, C, H, W)
    batch: :func:`augment_nhwc` for tensors that are already normalised (the unlearning
    methods' splits; there the zero padding is the data set's mean colour)."""
    return augment_nhwc(x.permute(0, 2, 3, 1), generator, Augment(pad, True, 0)).permute(0, 3, 1, 2).contiguous()


class Images:
    """uint8 images (N, H, W, C) and the statistics that normalise them.

    Indexing returns another :class:`Images`; :meth:`batch` makes a float (N, C, H, W)
    training batch on the images' device.
    """

    def __init__(self, pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"Images needs uint8 (N, H, W, C) pixels, got {pixels.dtype} of shape {tuple(pixels.shape)}")
        self.pixels = pixels
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def of(cls, pixels: np.ndarray | torch.Tensor, info: DatasetInfo) -> Images:
        return cls(torch.as_tensor(pixels), info.mean, info.std)

    @classmethod
    def cat(cls, parts: list[Images]) -> Images:
        return cls(torch.cat([p.pixels for p in parts]), parts[0].mean, parts[0].std)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index) -> Images:
        return Images(self.pixels[index], self.mean, self.std)

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def to(self, device: torch.device | str) -> Images:
        return self if self.pixels.device == torch.device(device) else Images(self.pixels.to(device), self.mean, self.std)

    def batch(
        self,
        index: torch.Tensor | slice,
        generator: torch.Generator | None = None,
        augment: Augment | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """Rows ``index``, augmented when ``augment`` is given (drawing from ``generator``),
        as normalised float32 (N, C, H, W) on the images' device."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.pixels.device)
        x = self.pixels[index]
        if augment is not None:
            assert generator is not None, "augmentation draws from a generator"
            x = augment_nhwc(x, generator, augment)
        mean, std = _channel_values(self.mean, x.device), _channel_values(self.std, x.device)
        out = ((x.to(torch.float32).div_(255.0) - mean) / std).permute(0, 3, 1, 2)  # channels-last in memory
        # a copy with canonical strides: ``contiguous()`` would keep these strides when C == 1,
        # and convolutions choose their (numerically different) kernels by strides
        return out if channels_last else out.clone(memory_format=torch.contiguous_format)

    def normalized(self, batch_size: int = 4096) -> torch.Tensor:
        """All images as normalised float32 (N, C, H, W) (for code that wants plain tensors)."""
        n = len(self)
        if n == 0:
            _, h, w, c = self.pixels.shape
            return torch.zeros((0, c, h, w), dtype=torch.float32)
        return torch.cat([self.batch(slice(i, i + batch_size)) for i in range(0, n, batch_size)])


@functools.lru_cache(maxsize=32)
def _channel_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A data set's per-channel mean or std as a float32 tensor on ``device``, made once
    (read only: nothing writes into it)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def to_tensors(table: pa.Table, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and normalise a table: float32 images (N, C, H, W) and int64 labels (N,)."""
    x = normalize(decode_images(table, info.channels), info)
    y = torch.from_numpy(table["label"].to_numpy().astype(np.int64))
    return x, y


def normalize(pixels: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """uint8 images (N, H, W, C) to normalised float32 (N, C, H, W)."""
    if len(pixels) == 0:
        return torch.zeros((0, info.channels, info.height, info.width), dtype=torch.float32)
    return Images.of(pixels, info).normalized()
