"""RL: relabel every forget sample with a uniformly random class (it may equal the true
one) and train on the relabelled forget set plus the retain set (SPEC 3.3, SalUn).

``loop: sequential`` (CIFAR-10/SVHN in the reference code) runs a pass over the
relabelled forget set, then a pass over the retain set, every epoch; ``loop: mixed``
(CIFAR-100) runs one pass over their shuffled union.

When the labels are drawn (``resample``) follows the reference code (SalUn's and
MU-Q-MUL's ``RL.py``): its sequential loop draws ``torch.randint`` for every forget batch,
so a sample gets a new label each time it is seen (``batch``); its mixed loop relabels the
forget set once at the start of every epoch (``epoch``). ``fixed`` draws once, before the
first epoch, and keeps the labels: a different method, kept as an option.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from raysisa.training import LossFn, derive_seed
from raysisa.methods.base import Need, Phase, UnlearnContext, cross_entropy, register_method
from raysisa.methods.localized import LocalizedArgs, LocalizedMethod

__all__ = ["RandomLabelArgs", "Resample", "random_labels", "label_generator", "relabelled", "RandomLabel"]

Resample = Literal["batch", "epoch", "fixed"]
_STREAM = 11  # derive_seed stream of the random labels


class RandomLabelArgs(LocalizedArgs):
    """Args (SalUn/Q-MUL code defaults: lr 0.01, 10 epochs, cosine, batch 256), plus those of
    :class:`LocalizedArgs`.

    loop: ``sequential`` (forget pass, then retain pass) or ``mixed`` (one shuffled union).
    resample: when the random labels are drawn: ``batch`` (a fresh label every time a forget
        sample is in a batch), ``epoch`` (one draw per epoch) or ``fixed`` (one draw for the
        whole run). Default (``None``): the reference's choice for the loop, ``batch`` for
        ``sequential`` and ``epoch`` for ``mixed``; the validated args hold the resolved value.
    """

    epochs: int = Field(10, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "cosine"
    loop: Literal["sequential", "mixed"] = "sequential"
    resample: Resample | None = None

    @model_validator(mode="before")
    @classmethod
    def _reference_resampling(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("resample") is None:
            return {**data, "resample": "epoch" if data.get("loop") == "mixed" else "batch"}
        return data


def random_labels(ctx: UnlearnContext, *stream: int) -> torch.Tensor:
    """A seeded uniform label in [0, C) for every forget sample (it may equal the true one).

    ``stream`` (e.g. the epoch) selects an independent draw; without it, the ``fixed`` labels.
    """
    generator = torch.Generator().manual_seed(derive_seed(ctx.seed, _STREAM, *stream))
    return torch.randint(0, ctx.info.num_classes, (len(ctx.split(Need.FORGET)),), generator=generator)


def label_generator(ctx: UnlearnContext, epoch: int, phase: int) -> torch.Generator:
    """The generator of the per-batch labels of one (epoch, phase). The engine visits the
    batches of a phase in a seeded order, so the labels each sample gets are reproducible."""
    return torch.Generator().manual_seed(derive_seed(ctx.seed, _STREAM, epoch, phase))


def relabelled(loss: LossFn, num_classes: int, generator: torch.Generator, *, marked: bool = False) -> LossFn:
    """``loss`` on each batch with its forget rows relabelled by fresh uniform draws from
    ``generator`` (``resample: batch``).

    Without ``marked`` every row is a forget sample: the closure takes ``(model, x, y)``.
    With it, the first extra tensor marks the forget rows (a bool per sample) and the
    others pass on to ``loss``: ``(model, x, y, is_forget, *rest)``.
    """

    def relabel_then(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        if not marked:
            y = torch.randint(0, num_classes, y.shape, generator=generator).to(y.device)
            return loss(model, x, y, *extra)
        is_forget, *rest = extra
        y = y.clone()
        y[is_forget] = torch.randint(0, num_classes, (int(is_forget.sum()),), generator=generator).to(y.device)
        return loss(model, x, y, *rest)

    return relabel_then


@register_method
class RandomLabel(LocalizedMethod):
    name = "random_label"
    summary = "RL: train on forget samples with random labels plus the retain set (10 epochs, lr 0.01, cosine)"
    Args = RandomLabelArgs
    base_needs = frozenset({Need.FORGET, Need.RETAIN})

    def prepare(self, ctx: UnlearnContext) -> None:
        super().prepare(ctx)
        self.labels = random_labels(ctx) if self.args.resample == "fixed" else None

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        forget, retain = ctx.split(Need.FORGET), ctx.split(Need.RETAIN)
        resample, classes = self.args.resample, ctx.info.num_classes
        labels = self.labels if resample == "fixed" else random_labels(ctx, epoch) if resample == "epoch" else forget.y
        if self.args.loop == "mixed":
            x, y = torch.cat([forget.x, retain.x]), torch.cat([labels, retain.y])
            if resample != "batch":
                return [Phase(x, y, cross_entropy)]
            is_forget = torch.cat([torch.ones(len(forget), dtype=torch.bool), torch.zeros(len(retain), dtype=torch.bool)])
            return [Phase(x, y, relabelled(cross_entropy, classes, label_generator(ctx, epoch, 0), marked=True), extra=(is_forget,))]
        forget_loss = relabelled(cross_entropy, classes, label_generator(ctx, epoch, 0)) if resample == "batch" else cross_entropy
        return [Phase(forget.x, labels, forget_loss), Phase(retain.x, retain.y, cross_entropy)]
