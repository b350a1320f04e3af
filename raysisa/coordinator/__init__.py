"""Deletion requests end to end: a durable ledger, the retrain-or-update policies (HS/OHS),
the pure batch planner, the coordinator that applies batches exactly once, and eventual
exactness."""

from raysisa.coordinator.client import register_subjects, requests, status, submit, wait
from raysisa.coordinator.ledger import Ack, Ledger, Request
from raysisa.coordinator.plan import BatchPlan, ShardPlan, plan_batch
from raysisa.coordinator.policy import POLICIES, ApplyMethod, Defer, Reject, RetrainFromSlice, ShardWork, decide, screen
from raysisa.coordinator.records import OverlayMeta, Receipt

__all__ = [
    "POLICIES",
    "Ack",
    "ApplyMethod",
    "BatchPlan",
    "Defer",
    "Ledger",
    "OverlayMeta",
    "Receipt",
    "Reject",
    "Request",
    "RetrainFromSlice",
    "ShardPlan",
    "ShardWork",
    "decide",
    "plan_batch",
    "register_subjects",
    "requests",
    "screen",
    "status",
    "submit",
    "wait",
]
