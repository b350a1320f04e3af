"""Unlearning metrics, exactly as SPEC 6 defines them (all in %).

- FA = accuracy on the forget set with its true labels; UA = 100 − FA.
- RA = accuracy on the retain set; TA = accuracy on the test set (class-wise forgetting:
  the test set without the forgotten classes).
- MIA-Efficacy (OPTML ``SVC_MIA_forget_efficacy["confidence"]``): an RBF SVC (C=3,
  gamma="auto") learns member (the first |D_test| retain samples, in id order) vs
  non-member (D_test) from the confidence p(y_true|x); MIA-Efficacy is the share of the
  forget set it calls non-member. Higher means more forgotten.
- Avg Gap = ¼·(|FA−FA_R| + |RA−RA_R| + |TA−TA_R| + |MIA−MIA_R|) against retraining.
- ASR (backdoor) = share of triggered test images (true class ≠ target) predicted as the
  target class; SA is the clean TA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Metrics", "GAP_METRICS", "accuracy", "confidence", "mia_efficacy", "avg_gap"]

GAP_METRICS = ("FA", "RA", "TA", "MIA")


@dataclass(frozen=True)
class Metrics:
    FA: float
    RA: float
    TA: float
    MIA: float
    ASR: float | None = None

    @property
    def UA(self) -> float:
        return 100.0 - self.FA

    def gaps(self, reference: Metrics) -> dict[str, float]:
        """|metric − reference| for FA (= the UA gap), RA, TA and MIA."""
        return {m: abs(getattr(self, m) - getattr(reference, m)) for m in GAP_METRICS}

    def avg_gap(self, reference: Metrics) -> float:
        return avg_gap(self, reference)

    def to_dict(self) -> dict[str, float | None]:
        return {**asdict(self), "UA": self.UA}


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in %; NaN on an empty set."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())


def confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(y_true | x) per sample."""
    probs = np.asarray(probs)
    return probs[np.arange(len(labels)), np.asarray(labels)]


def mia_efficacy(
    member_probs: np.ndarray,
    member_labels: np.ndarray,
    nonmember_probs: np.ndarray,
    nonmember_labels: np.ndarray,
    target_probs: np.ndarray,
    target_labels: np.ndarray,
) -> float:
    """Share (%) of the target (forget) samples an SVC on confidence calls non-members."""
    from sklearn.svm import SVC

    if len(target_labels) == 0:
        return float("nan")
    features = np.concatenate([confidence(member_probs, member_labels), confidence(nonmember_probs, nonmember_labels)])
    membership = np.concatenate([np.ones(len(member_labels)), np.zeros(len(nonmember_labels))])
    attacker = SVC(C=3, gamma="auto", kernel="rbf").fit(features.reshape(-1, 1), membership)
    predicted = attacker.predict(confidence(target_probs, target_labels).reshape(-1, 1))
    return 100.0 * float((predicted == 0).mean())


def avg_gap(metrics: Metrics, reference: Metrics) -> float:
    return float(np.mean(list(metrics.gaps(reference).values())))
