"""SISA: sharded, isolated, sliced, aggregated training with exact unlearning."""

from raysisa.sisa.aggregate import aggregate, list_aggregators, register_aggregator
from raysisa.sisa.pool import LocalPool, ShardPool
from raysisa.sisa.run import EvalReport, SisaRun, TrainReport, UnlearnReport, parse_ids
from raysisa.sisa.shard import ShardWorker, SliceReport

__all__ = [
    "EvalReport",
    "LocalPool",
    "ShardPool",
    "ShardWorker",
    "SisaRun",
    "SliceReport",
    "TrainReport",
    "UnlearnReport",
    "aggregate",
    "list_aggregators",
    "parse_ids",
    "register_aggregator",
]
