"""Deletion requests end to end: a durable ledger, the retrain-or-update policies (HS/OHS),
the coordinator that applies batches exactly once, and eventual exactness."""

from raysisa.coordinator.client import register_subjects, requests, status, submit, wait
from raysisa.coordinator.ledger import Ack, Ledger, Request
from raysisa.coordinator.policy import POLICIES, ApplyMethod, Defer, Reject, RetrainFromSlice, ShardWork, decide

__all__ = [
    "POLICIES",
    "Ack",
    "ApplyMethod",
    "Defer",
    "Ledger",
    "Reject",
    "Request",
    "RetrainFromSlice",
    "ShardWork",
    "decide",
    "register_subjects",
    "requests",
    "status",
    "submit",
    "wait",
]
