"""The one training loop, and the pieces around it (seeds, optimiser, LR schedule, inference).

Everything that trains a model in raysisa goes through :func:`train_epoch`: SISA slices
today, unlearning methods later. A caller changes *what* is optimised by passing a
``loss_fn`` and :class:`TrainHook` objects, never by copying the loop.

Determinism: an epoch is fully determined by the model and optimiser state it starts
from, the data, and the ``seed`` it is given (shuffle order, augmentation, dropout). SISA
derives that seed from (run seed, shard, slice, epoch), so an epoch replayed after a
rollback or a crash draws exactly what it drew the first time.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raysisa.config import TrainConfig
from raysisa.data.tensors import Augment, Images, random_crop_flip

__all__ = [
    "EpochStats",
    "TrainHook",
    "LossFn",
    "cross_entropy_loss",
    "shard_loss",
    "derive_seed",
    "configure_torch",
    "build_optimizer",
    "lr_at",
    "train_epoch",
    "batch_bounds",
    "predict_proba",
    "optimizer_tensors",
    "load_optimizer_tensors",
]

# (model, x batch, y batch, *extra batches) -> scalar loss
LossFn = Callable[..., torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` against ``y``: plain supervised training."""
    return F.cross_entropy(model(x), y)


def shard_loss(label_smoothing: float = 0.0) -> LossFn:
    """The loss shards train with: cross-entropy, with ``label_smoothing`` if given."""
    if not label_smoothing:
        return cross_entropy_loss

    def smoothed(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    return smoothed


class TrainHook(Protocol):
    """Optional callbacks into :func:`train_epoch` (e.g. gradient masks, weight projection)."""

    def after_backward(self, model: nn.Module) -> None: ...

    def after_step(self, model: nn.Module) -> None: ...


@dataclass
class EpochStats:
    samples: int = 0
    batches: int = 0
    loss_sum: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. run seed, shard, slice, epoch)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def configure_torch(threads: int, deterministic: bool = True) -> None:
    """Set this process's torch threads, and deterministic algorithms (on CPU, where
    SISA's bit-exactness relies on them).

    ``torch.use_deterministic_algorithms`` imports torch's compiler stack (``torch._inductor``,
    about 1.5 s and 150 MB per process) only to set the compiler's flag; the flag is set
    directly here, and the compiler's too when something has already imported it. (The
    first ``optimizer.step()`` still imports ``torch._dynamo``, about 2 s once per process:
    torch's optimisers do so unconditionally. Warm shard actors pay it once.)
    """
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch._C._set_deterministic_algorithms(deterministic)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = deterministic


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD over the parameters that train (a frozen BatchNorm weight, say, is left out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov)


def lr_at(config: TrainConfig, epoch: float, total_epochs: int) -> float:
    """Learning rate at global epoch ``epoch`` (0-based; fractional within an epoch for
    the per-step ``linear`` schedule) of a ``total_epochs`` budget."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(total_epochs, 1)))
    if config.lr_schedule == "linear":
        progress = epoch / max(total_epochs, 1)
        if progress < config.warmup:
            return config.lr * progress / config.warmup
        return config.lr * max(0.0, 1.0 - progress) / (1.0 - config.warmup)
    return config.lr


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each mini-batch of an epoch over ``n`` samples.

    A trailing remainder smaller than half a batch joins the previous batch: a batch of 2
    would give BatchNorm meaningless statistics and corrupt its running averages.

    Example:
        >>> batch_bounds(70, 32)
        [(0, 32), (32, 70)]
        >>> batch_bounds(80, 32)
        [(0, 32), (32, 64), (64, 80)]
    """
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < batch_size / 2:
        (start, _), _ = bounds[-2], bounds.pop()
        bounds[-1] = (start, n)
    return bounds


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor | Images,
    y: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    augment: bool | Augment = False,
    loss_fn: LossFn = cross_entropy_loss,
    hooks: Sequence[TrainHook] = (),
    device: torch.device | str = "cpu",
    extra: Sequence[torch.Tensor] = (),
    lr: Callable[[float], float] | None = None,
    channels_last: bool = False,
    autocast: torch.dtype | None = None,
) -> EpochStats:
    """One shuffled pass over (x, y) in mini-batches, one optimiser step per batch.

    Every sample is used once per epoch; see :func:`batch_bounds` for how a small
    remainder is folded into the last batch. ``extra`` tensors (e.g. per-sample weights)
    are batched alongside (x, y) and passed to ``loss_fn`` after them.

    Args:
        x: normalised float images (N, C, H, W), or uint8 :class:`Images` (the shards'
            path: moved to ``device`` once, each batch made there).
        augment: ``True`` for the standard crop-and-flip, or an :class:`Augment`.
        lr: the learning rate at each step, as a function of the epoch's progress in
            [0, 1) (``None``: leave the optimiser's as it is).
        channels_last: feed batches in channels-last memory format (the model should be
            converted too).
        autocast: run forward and loss under ``torch.autocast`` in this dtype (e.g.
            ``torch.bfloat16`` on CUDA); ``None``: full precision.
    """
    model.train()
    torch.manual_seed(seed)  # dropout and any other use of the global RNG
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    augment = Augment() if augment is True else (augment or None)
    if isinstance(x, Images):
        x = x.to(device)  # uint8: a quarter of the float copy's size, on the device once
    device_type = torch.device(device).type
    stats = EpochStats()
    bounds = batch_bounds(len(order), batch_size)
    for step, (start, stop) in enumerate(bounds):
        idx = order[start:stop]
        if isinstance(x, Images):
            xb = x.batch(idx, generator, augment, channels_last)
        else:
            xb = x[idx]
            if augment is not None:
                xb = random_crop_flip(xb, generator, augment.crop_padding)
            xb = xb.to(device, non_blocking=True)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[idx].to(device, non_blocking=True)
        extra_b = [t[idx].to(device, non_blocking=True) for t in extra]
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr(step / len(bounds))
        optimizer.zero_grad(set_to_none=True)
        if autocast is None:
            loss = loss_fn(model, xb, yb, *extra_b)
        else:
            with torch.autocast(device_type, dtype=autocast):
                loss = loss_fn(model, xb, yb, *extra_b)
        loss.backward()
        for hook in hooks:
            if hasattr(hook, "after_backward"):
                hook.after_backward(model)
        optimizer.step()
        for hook in hooks:
            if hasattr(hook, "after_step"):
                hook.after_step(model)
        stats.samples += len(idx)
        stats.batches += 1
        stats.loss_sum += float(loss.detach()) * len(idx)
    return stats


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    x: torch.Tensor | Images,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    flip_tta: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Softmax probabilities (N, C) of ``model`` in eval mode, on CPU.

    With ``flip_tta`` the logits of each image and of its mirror image are averaged
    (test-time augmentation by horizontal flip).
    """
    model.eval()
    if isinstance(x, Images):
        x = x.to(device)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x.batch(slice(i, i + batch_size), channels_last=channels_last) if isinstance(x, Images) else x[i : i + batch_size].to(device)
        if channels_last and not isinstance(x, Images):
            xb = xb.contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        if flip_tta:
            logits = (logits + model(xb.flip(3))) / 2
        out.append(F.softmax(logits.float(), dim=1).cpu())
    if not out:
        return torch.zeros((0, 0))
    return torch.cat(out)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state into tensors (``optim/<param index>/<name>``) and JSON data."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{index}/{name}"] = value.contiguous()  # channels-last buffers too
            else:
                scalars[f"{index}/{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    entries: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            entries.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split("/", 1)
        entries.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": meta["param_groups"]})
