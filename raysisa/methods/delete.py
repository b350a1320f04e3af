"""DEL — Deletion by Example Localization (Torkzadehmahani et al., TMLR 2025; SPEC 5).

1. Localise: channel-aggregated |θ ⊙ ∇(−CE)| on the forget set, global top ⌊α·N⌋ entries
   (:func:`raysisa.methods.masks.localize`).
2. Reset the selected entries to a fresh initialisation (``reset_source: fresh``, the
   code's choice), the shard's original initial weights (``original_init``) or zero.
   BatchNorm running statistics are buffers and are not reset.
3. Fine-tune on the retain set, updating only the selected entries plus, with
   ``exempt_classifier``, the whole classifier head (which is still reset only on its
   selected entries). Weight decay 0, cosine schedule down to 0.01·lr.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from raysisa.models import build_model
from raysisa.training import TrainHook, derive_seed
from raysisa.methods.base import Need, OptimArgs, Phase, UnlearnContext, UnlearnMethod, cross_entropy, register_method
from raysisa.methods.localized import train_mask
from raysisa.methods.masks import MaskHook, classifier_names


class DelArgs(OptimArgs):
    """Args (DEL code's CIFAR-10/ResNet-18 defaults):
    alpha: share of all parameters selected (0.3).
    h_frac: channel score = mean of the top ⌊h_frac·C_out⌋ entries (0.1).
    reset_source: ``fresh``, ``original_init`` or ``zero``.
    exempt_classifier: keep the classifier fully trainable.
    """

    epochs: int = Field(30, ge=0, le=10_000)
    lr: float = Field(0.015, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["constant", "cosine"] = "cosine"
    eta_min_ratio: float = Field(0.01, ge=0, le=1)
    alpha: float = Field(0.3, gt=0, le=1)
    h_frac: float = Field(0.1, gt=0, le=1)
    reset_source: Literal["fresh", "original_init", "zero"] = "fresh"
    exempt_classifier: bool = True


@register_method
class Del(UnlearnMethod):
    name = "del"
    summary = "DEL: localise critical channels on the forget set, reset them, fine-tune only them (α 0.3, 30 epochs)"
    Args = DelArgs
    base_needs = frozenset({Need.FORGET, Need.RETAIN})

    @property
    def needs(self) -> frozenset[Need]:
        return self.base_needs | ({Need.INIT_WEIGHTS} if self.args.reset_source == "original_init" else set())

    def _reset_values(self, ctx: UnlearnContext) -> dict[str, torch.Tensor]:
        if self.args.reset_source == "original_init":
            return {k: v for k, v in ctx.init_state.items()}
        torch.manual_seed(derive_seed(ctx.seed, 13))
        fresh = dict(build_model(ctx.info, ctx.model_config).named_parameters())
        if self.args.reset_source == "zero":
            return {k: torch.zeros_like(v) for k, v in fresh.items()}
        return {k: v.detach() for k, v in fresh.items()}

    @torch.no_grad()
    def prepare(self, ctx: UnlearnContext) -> None:
        selected = train_mask(ctx, self.args.alpha, self.args.h_frac, exempt_classifier=False)
        reset = self._reset_values(ctx)
        params = dict(ctx.model.named_parameters())
        for name, keep in selected.items():  # quantizer state is never selected, never reset
            params[name].copy_(torch.where(keep, reset[name].to(params[name].device), params[name]))
        trainable = dict(selected)
        if self.args.exempt_classifier:
            for name in classifier_names(ctx.model):
                trainable[name] = torch.ones_like(trainable[name])
        self._hook = MaskHook(ctx.model, trainable)  # anchored at the reset weights

    def hooks(self, ctx: UnlearnContext) -> list[TrainHook]:
        return [self._hook]

    def phases(self, ctx: UnlearnContext, epoch: int) -> list[Phase]:
        retain = ctx.split(Need.RETAIN)
        return [Phase(retain.x, retain.y, cross_entropy)]
