"""Retrain-or-update policies as tables: (work, config) -> decision."""

import pytest

from raysisa.config import CoordinatorConfig
from raysisa.coordinator.policy import (
    ApplyMethod,
    Defer,
    Reject,
    RetrainFromSlice,
    ShardWork,
    decide,
    decision_from_dict,
    ohs_slices,
    screen,
)
from raysisa.errors import ConfigError, StoreError


def work(**kw):
    base = dict(shard=0, first_slice=1, ids=1, retrain_grads=1000, full_grads=1000, throughput=100.0, ohs_slices=2)
    return ShardWork(**{**base, **kw})


HS = CoordinatorConfig(policy="hs", rho=0.5)
OHS = CoordinatorConfig(policy="ohs", rho=0.5)

TABLE = [
    # (config, work, expected kind, expected fields)
    (HS, work(retrain_grads=300), "retrain", {"slice": 1}),
    (HS, work(retrain_grads=500), "retrain", {}),  # the boundary is inclusive
    (HS, work(retrain_grads=501), "update", {"method": "neggrad_plus", "ohs_slices": 0}),
    (OHS, work(retrain_grads=900), "update", {"method": "neggrad_plus", "ohs_slices": 2}),
    (OHS, work(retrain_grads=900, quantized=True), "update", {"method": "qmul"}),
    (OHS, work(retrain_grads=200, first_slice=4), "retrain", {"slice": 4}),
    # debt bounds force exact retraining of heavy work
    (OHS, work(retrain_grads=900, approx_updates=5), "retrain", {}),
    (OHS, work(retrain_grads=900, approx_updates=4), "update", {}),
    (OHS, work(retrain_grads=900, drift=1.5), "retrain", {}),
    (OHS, work(retrain_grads=900, drift=0.5), "update", {}),
    # a time budget lets heavy-but-fast work retrain
    (CoordinatorConfig(policy="hs", time_budget_seconds=10), work(retrain_grads=900, throughput=100.0), "retrain", {}),
    (CoordinatorConfig(policy="hs", time_budget_seconds=5), work(retrain_grads=900, throughput=100.0), "update", {}),
    (CoordinatorConfig(policy="hs", time_budget_seconds=5), work(retrain_grads=900, throughput=None), "update", {}),
    # deferral while heavy work is young
    (CoordinatorConfig(policy="hs", defer_seconds=60), work(retrain_grads=900, age_seconds=10), "defer", {}),
    (CoordinatorConfig(policy="hs", defer_seconds=60), work(retrain_grads=900, age_seconds=61), "update", {}),
    (CoordinatorConfig(policy="hs", defer_seconds=60), work(retrain_grads=100, age_seconds=1), "retrain", {}),
    # single-strategy baselines
    (CoordinatorConfig(policy="prs"), work(retrain_grads=1000), "retrain", {}),
    (CoordinatorConfig(policy="dpus"), work(retrain_grads=1), "update", {}),
    (CoordinatorConfig(policy="dpus"), work(retrain_grads=1, approx_updates=9), "retrain", {}),
]


@pytest.mark.parametrize(("config", "shard_work", "kind", "fields"), TABLE)
def test_policy_table(config, shard_work, kind, fields):
    [decision] = decide([shard_work], config)
    assert decision.kind == kind, decision
    assert decision.reason
    for key, value in fields.items():
        assert getattr(decision, key) == value
    expected_type = {"retrain": RetrainFromSlice, "update": ApplyMethod, "defer": Defer}[kind]
    assert isinstance(decision, expected_type) and decision.shard == shard_work.shard


def test_one_decision_per_shard_in_order():
    works = [work(shard=3, retrain_grads=100), work(shard=1, retrain_grads=999)]
    assert [(d.shard, d.kind) for d in decide(works, OHS)] == [(3, "retrain"), (1, "update")]


def test_ohs_slices_fit_the_budget():
    # 4 slices of 10 retained samples, 2 epochs each: 20 sample-grads per trailing slice
    assert ohs_slices([10, 10, 10, 10], full_grads=100, rho=0.5, epochs=2) == 2  # 40 <= 50 < 60
    assert ohs_slices([10, 10, 10, 10], full_grads=100, rho=0.1, epochs=2) == 0
    assert ohs_slices([10, 10, 10, 10], full_grads=1000, rho=1.0, epochs=2) == 4


def test_unknown_policy_and_bad_bounds_are_config_errors():
    with pytest.raises(ConfigError, match="unknown policy 'greedy'; valid policies: dpus, hs, ohs, prs"):
        CoordinatorConfig(policy="greedy")
    with pytest.raises(ConfigError, match="rho"):
        CoordinatorConfig(rho=-1)


def test_decisions_are_tagged_values_that_read_back():
    decisions = [RetrainFromSlice(2, 3, "light"), ApplyMethod(1, "neggrad_plus", {"epochs": 2}, 1, "heavy"), Defer(4, "young")]
    for decision in decisions:
        data = decision.to_dict()
        assert data["kind"] == decision.kind and data["shard"] == decision.shard
        assert decision_from_dict(data) == decision
    with pytest.raises(StoreError, match="plan shard 1 decision is malformed: unknown decision kind 'reject'"):
        decision_from_dict({"kind": "reject", "shard": 1, "reason": "x"}, "plan shard 1 decision")
    with pytest.raises(StoreError, match="'slice' should be an integer"):
        decision_from_dict({"kind": "retrain", "shard": 1, "slice": True, "reason": "x"})
    assert ShardWork.from_dict(work(drift=0.5).to_dict()) == work(drift=0.5)


class Req:
    def __init__(self, request_id, n):
        self.request_id, self.ids = request_id, list(range(n))


def test_screen_rejects_requests_over_the_size_limit_in_the_policy():
    requests = [Req("a", 3), Req("b", 1), Req("c", 2), Req("d", 5)]
    accepted, rejected = screen(requests, CoordinatorConfig(max_request_ids=2))
    assert [r.request_id for r in accepted] == ["b", "c"]
    assert [(r.request_id, r.kind) for r in rejected] == [("a", "reject"), ("d", "reject")]
    assert rejected[0].reason == "3 ids: more than max_request_ids (2)" and isinstance(rejected[0], Reject)
    assert screen(requests, CoordinatorConfig()) == (requests, [])
