import numpy as np
import pytest

from raysisa.evaluation.metrics import Metrics, accuracy, avg_gap, confidence, mia_efficacy


def _probs(conf, labels, classes=3):
    p = np.full((len(labels), classes), 0.0)
    for i, (c, y) in enumerate(zip(conf, labels, strict=True)):
        p[i] = (1 - c) / (classes - 1)
        p[i, y] = c
    return p


def test_accuracy_and_confidence():
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(p, np.array([0, 1, 1])) == pytest.approx(200 / 3)
    assert confidence(p, np.array([0, 1, 1])).tolist() == [0.7, 0.8, 0.4]
    assert np.isnan(accuracy(np.zeros((0, 2)), np.zeros(0, int)))


def test_mia_efficacy_separates_never_seen_from_memorised():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    members = _probs(rng.uniform(0.95, 1.0, 400), labels)  # trained on: confident
    nonmembers = _probs(rng.uniform(0.2, 0.9, 400), labels)  # held out: less so
    never_seen = _probs(rng.uniform(0.0, 0.3, 100), labels[:100])
    memorised = _probs(rng.uniform(0.96, 1.0, 100), labels[:100])
    assert mia_efficacy(members, labels, nonmembers, labels, never_seen, labels[:100]) > 95
    assert mia_efficacy(members, labels, nonmembers, labels, memorised, labels[:100]) < 5


def test_avg_gap_and_ua():
    m, r = Metrics(FA=10, RA=90, TA=80, MIA=70), Metrics(FA=0, RA=100, TA=84, MIA=100)
    assert m.UA == 90
    assert m.gaps(r) == {"FA": 10, "RA": 10, "TA": 4, "MIA": 30}
    assert avg_gap(m, r) == m.avg_gap(r) == pytest.approx(13.5)
    assert m.to_dict()["UA"] == 90
