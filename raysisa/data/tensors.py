"""From stored samples to training tensors, and seeded augmentation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from raysisa.data.samples import DatasetInfo, decode_images

__all__ = ["to_tensors", "normalize", "random_crop_flip"]


def to_tensors(table: pa.Table, info: DatasetInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and normalise a table: float32 images (N, C, H, W) and int64 labels (N,)."""
    x = normalize(decode_images(table, info.channels), info)
    y = torch.from_numpy(table["label"].to_numpy().astype(np.int64))
    return x, y


def normalize(pixels: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """uint8 images (N, H, W, C) to normalised float32 (N, C, H, W)."""
    if len(pixels) == 0:
        return torch.zeros((0, info.channels, info.height, info.width), dtype=torch.float32)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel crop (zero padding) and horizontal flip, drawn from ``generator``.

    The standard CIFAR augmentation, vectorised over the batch and fully determined by the
    generator's state, so a resumed run draws exactly what an uninterrupted one would.
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w)[None, :]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()
