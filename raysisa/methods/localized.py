"""DEL's localisation as an option of other methods (localized FT / RL / NegGrad+).

With ``localize: alpha`` set, the method first localises the critical parameters for the
forget set (:func:`raysisa.methods.masks.localize`) and then updates only those (plus the
classifier, if ``exempt_classifier``); every other parameter stays exactly as it was.
"""

from __future__ import annotations

import torch
from pydantic import Field

from raysisa.training import TrainHook
from raysisa.methods.base import Need, OptimArgs, UnlearnContext, UnlearnMethod
from raysisa.methods.masks import MaskHook, classifier_names, localize, mask_size

__all__ = ["LocalizedArgs", "LocalizedMethod", "train_mask"]


class LocalizedArgs(OptimArgs):
    """Args of methods that can be restricted to DEL's critical parameters.

    Args:
        localize: parameter budget alpha of the localisation (``None``: update everything).
        h_frac: channels are scored by their top ``h_frac * C_out`` entries.
        exempt_classifier: the classifier head stays fully trainable.
    """

    localize: float | None = Field(None, gt=0, le=1)
    h_frac: float = Field(0.1, gt=0, le=1)
    exempt_classifier: bool = True


def train_mask(ctx: UnlearnContext, alpha: float, h_frac: float, exempt_classifier: bool) -> dict[str, torch.Tensor]:
    """DEL's localisation mask on ``ctx.forget``, with the classifier exemption applied."""
    forget = ctx.split(Need.FORGET)
    mask = localize(ctx.model, forget.x, forget.y, alpha, h_frac=h_frac, seed=ctx.seed, device=ctx.device)
    ctx.notes["localized_parameters"] = mask_size(mask)
    ctx.notes["total_parameters"] = sum(m.numel() for m in mask.values())
    if exempt_classifier:
        for name in classifier_names(ctx.model):
            mask[name] = torch.ones_like(mask[name])
    return mask


class LocalizedMethod(UnlearnMethod):
    """A method whose updates can be confined to a localisation mask."""

    Args = LocalizedArgs

    @property
    def needs(self) -> frozenset[Need]:
        return self.base_needs | ({Need.FORGET} if self.args.localize else set())

    def prepare(self, ctx: UnlearnContext) -> None:
        self._hook = None
        if self.args.localize:
            mask = train_mask(ctx, self.args.localize, self.args.h_frac, self.args.exempt_classifier)
            self._hook = MaskHook(ctx.model, mask)

    def hooks(self, ctx: UnlearnContext) -> list[TrainHook]:
        return [self._hook] if self._hook else []
