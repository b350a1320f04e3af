import numpy as np
import pytest

from raysisa.errors import ConfigError
from raysisa.sisa.aggregate import aggregate, list_aggregators

# 3 shards, 2 samples, 3 classes
PROBS = np.array(
    [
        [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
        [[0.2, 0.7, 0.1], [0.4, 0.5, 0.1]],
        [[0.5, 0.1, 0.4], [0.3, 0.6, 0.1]],
    ]
)


def test_majority_vote():
    pred, scores = aggregate(PROBS, "vote")
    assert pred.tolist() == [0, 1]
    assert scores.tolist() == [[2, 1, 0], [0, 2, 1]]


def test_vote_ties_go_to_the_lowest_class():
    probs = np.array([[[0.1, 0.9]], [[0.9, 0.1]]])
    assert aggregate(probs, "vote")[0].tolist() == [0]


def test_mean_softmax_differs_from_vote_when_confidence_matters():
    probs = np.array([[[0.51, 0.49]], [[0.51, 0.49]], [[0.0, 1.0]]])
    assert aggregate(probs, "vote")[0].tolist() == [0]
    assert aggregate(probs, "mean_softmax")[0].tolist() == [1]


def test_weights():
    pred, _ = aggregate(PROBS, "vote", weights=[0.0, 1.0, 0.0])
    assert pred.tolist() == [1, 1]
    pred, scores = aggregate(PROBS, "mean_softmax", weights=[2, 1, 1])
    assert np.allclose(scores.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"method": "median"}, "valid aggregations: mean_softmax, vote"),
        ({"weights": [1, 1]}, "2 shard weights given for 3 shards"),
        ({"weights": [0, 0, 0]}, "not all zero"),
        ({"weights": [1, -1, 1]}, "non-negative"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        aggregate(PROBS, **kwargs)


def test_registry_lists_both():
    assert list_aggregators() == ["mean_softmax", "vote"]
