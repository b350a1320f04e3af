"""Q-MUL — machine unlearning for quantized networks (Tong et al., ICCV 2025; SPEC 4).

Random relabelling (RL) injects label noise that quantization amplifies, and forget and
retain gradients are imbalanced. Q-MUL fixes both, once per epoch:

- **Similar Labels** (``similar_labels``): each forget sample is relabelled with
  ŷ = argmin_{j≠y} |p_j − p_y| under the current model's softmax (eval mode); whenever
  p_y ≥ 0.5 this is the runner-up class. This is the paper's definition; the released
  code compares raw logits with a probability and drops the index shift, so it can return
  the true label — raysisa does not copy that (SPEC 4.3).
- **Adaptive Gradient Reweighting** (``agr``): measure the mean per-batch gradient norm of
  the forget loss (with this epoch's forget labels) ḡ_f and of the retain loss ḡ_r (no
  optimiser step), then weight the losses w_f = ḡ_r/(ḡ_f+ḡ_r), w_r = ḡ_f/(ḡ_f+ḡ_r)
  (SPEC 4.4). The reference measures in train mode (``agr_mode``, see
  :func:`mean_gradient_norm`).

With both switches off this is RL; the ablations RL+SL and RL+AGR are the two mixes. Their
random labels follow the reference's ``RL_min``, which relabels the forget set once at the
start of every epoch (``resample: epoch``) and measures AGR and trains on those labels.
``loop: sequential`` (CIFAR-10/SVHN) runs a weighted pass over the relabelled forget set
then one over the retain set; ``loop: mixed`` (CIFAR-100) one pass over their union with
per-sample weights, loss (1/B)·Σ w_i·CE_i.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from raysisa.training import batch_bounds, predict_proba
from raysisa.methods.base import Need, OptimArgs, Phase, Split, UnlearnContext, UnlearnMethod, cross_entropy, register_method, scaled
from raysisa.methods.random_label import Resample, label_generator, random_labels, relabelled

__all__ = ["similar_labels", "agr_weights", "mean_gradient_norm", "QmulArgs", "Qmul"]


@torch.no_grad()
def similar_labels(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ŷ = argmin_{j≠y} |p_j − p_y| per row of ``probs`` (never the true label)."""
    p_y = probs.gather(1, labels[:, None])
    distance = (probs - p_y).abs()
    distance.scatter_(1, labels[:, None], float("inf"))
    return distance.argmin(dim=1)


def agr_weights(g_forget: float, g_retain: float) -> tuple[float, float]:
    """(w_f, w_r) = (ḡ_r, ḡ_f) / (ḡ_f + ḡ_r): the larger gradient gets the smaller weight."""
    total = g_forget + g_retain
    if total <= 0:
        return 0.5, 0.5
    return g_retain / total, g_forget / total


def mean_gradient_norm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    norm: str = "tensor_sum",
    max_batches: int | None = None,
    device: str = "cpu",
    mode: str = "train",
) -> float:
    """Mean over batches of the gradient norm of the batch-mean CE. No optimiser step is
    taken and the gradients are cleared afterwards; the model's mode is restored.

    ``tensor_sum`` sums per-tensor L2 norms (the reference code); ``global_l2`` takes the
    L2 norm of all gradients together.

    ``mode``: ``train`` (the reference, which calls ``model.train()`` before measuring):
    BatchNorm normalises each batch with that batch's statistics and updates its running
    mean, variance and batch count once per measured batch, so the training pass that
    follows starts from moved running statistics (dropout is active too). A remainder under
    half a batch joins the last batch, as in training. ``eval``: BatchNorm uses its running
    statistics and leaves them untouched, so the measurement changes no model state.
    """
    was_training = model.training
    model.train(mode == "train")
    n = len(x)
    bounds = batch_bounds(n, batch_size) if mode == "train" else [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    norms = []
    for start, stop in bounds:
        if max_batches is not None and len(norms) >= max_batches:
            break
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[start:stop].to(device)), y[start:stop].to(device))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if norm == "global_l2":
            norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
        else:
            norms.append(float(sum(g.norm() for g in grads)))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return sum(norms) / max(len(norms), 1)


class QmulArgs(OptimArgs):
    """Args (Q-MUL code defaults: lr 0.01, 10 epochs, cosine, batch 256).

    similar_labels: Similar Labels instead of random labels.
    agr: Adaptive Gradient Reweighting of the forget and retain losses.
    loop: ``sequential`` (forget pass, then retain pass) or ``mixed`` (weighted union).
    agr_norm: ``tensor_sum`` (reference code) or ``global_l2``.
    agr_mode: model mode of the AGR measurement: ``train`` (reference code; BatchNorm uses
        batch statistics and updates its running statistics) or ``eval`` (running
        statistics used and left unchanged).
    agr_max_retain_batches: cap the retain measurement pass (``None``: all batches).
    resample: with ``similar_labels`` off, when the random labels are drawn: ``epoch`` (the
        reference's ``RL_min``: one draw per epoch, used by the AGR measurement and the
        training pass), ``batch`` (a fresh label each time a forget sample is in a training
        batch; the measurement pass, where each sample appears once, uses its own
        per-epoch draw) or ``fixed`` (one draw for the whole run).
    """

    epochs: int = Field(10, ge=0, le=10_000)
    lr: float = Field(0.01, gt=0, le=10)
    schedule: Literal["constant", "cosine"] = "cosine"
    similar_labels: bool = True
    agr: bool = True
    loop: Literal["sequential", "mixed"] = "sequential"
    agr_norm: Literal["tensor_sum", "global_l2"] = "tensor_sum"
    agr_mode: Literal["train", "eval"] = "train"
    agr_max_retain_batches: int | None = Field(None, ge=1)
    resample: Resample = "epoch"


def _per_sample_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * nn.functional.cross_entropy(model(x), y, reduction="none")).sum() / len(y)


@register_method
class Qmul(UnlearnMethod):
    name = "qmul"
    summary = "Q-MUL: Similar Labels + Adaptive Gradient Reweighting, for quantized models (10 epochs, lr 0.01, cosine)"
    Args = QmulArgs
    base_needs = frozenset({Need.FORGET, Need.RETAIN})

    def prepare(self, ctx: UnlearnContext) -> None:
        fixed = not self.args.similar_labels and self.args.resample == "fixed"
        self.random = random_labels(ctx) if fixed else None  # the RL ablation with fixed labels
        self.history: list[dict[str, float]] = []
        ctx.notes["epochs"] = self.history

    def _labels(self, ctx: UnlearnContext, forget: Split, epoch: int) -> torch.Tensor:
        """This epoch's forget labels (under ``resample: batch``, those of the measurement)."""
        if not self.args.similar_labels:
            return self.random if self.args.resample == "fixed" else random_labels(ctx, epoch)
        was_training = ctx.model.training
        probs = predict_proba(ctx.model, forget.x, device=ctx.device)  # in eval mode, SPEC 4.3
        ctx.model.train(was_training)
        return similar_labels(probs, forget.y)

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        forget, retain = ctx.split(Need.FORGET), ctx.split(Need.RETAIN)
        labels = self._labels(ctx, forget, epoch)
        w_f, w_r = 1.0, 1.0
        if self.args.agr:
            bs, norm, mode = self.args.batch_size, self.args.agr_norm, self.args.agr_mode
            g_f = mean_gradient_norm(ctx.model, forget.x, labels, bs, norm, device=ctx.device, mode=mode)
            g_r = mean_gradient_norm(ctx.model, retain.x, retain.y, bs, norm, self.args.agr_max_retain_batches, ctx.device, mode)
            w_f, w_r = agr_weights(g_f, g_r)
        self.history.append({"w_forget": w_f, "w_retain": w_r, "label_changes": int((labels != forget.y).sum())})
        fresh = not self.args.similar_labels and self.args.resample == "batch"
        classes = ctx.info.num_classes
        if self.args.loop == "mixed":
            x, y = torch.cat([forget.x, retain.x]), torch.cat([labels, retain.y])
            weights = torch.cat([torch.full((len(forget),), w_f), torch.full((len(retain),), w_r)])
            if not fresh:
                return [Phase(x, y, _per_sample_ce, extra=(weights,))]
            is_forget = torch.cat([torch.ones(len(forget), dtype=torch.bool), torch.zeros(len(retain), dtype=torch.bool)])
            loss = relabelled(_per_sample_ce, classes, label_generator(ctx, epoch, 0), marked=True)
            return [Phase(x, y, loss, extra=(is_forget, weights))]
        forget_loss = scaled(cross_entropy, w_f)
        if fresh:
            forget_loss = relabelled(forget_loss, classes, label_generator(ctx, epoch, 0))
        return [Phase(forget.x, labels, forget_loss), Phase(retain.x, retain.y, scaled(cross_entropy, w_r))]
