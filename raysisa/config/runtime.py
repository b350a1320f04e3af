"""Where a run lives and runs: the object store and the Ray cluster. Not part of the
fingerprint."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator

from raysisa.config.base import ConfigModel

__all__ = ["ClusterConfig", "StoreConfig"]


class ClusterConfig(ConfigModel):
    """Where and how shard actors run. Not part of the fingerprint.

    Args:
        address: Ray address to connect to; ``None`` means ``RAY_ADDRESS`` if set, else a
            new local cluster.
        cpus_per_shard: logical CPUs reserved by each shard actor: a fixed request (never
            derived from what is free) that an autoscaler can satisfy. ``None`` (the
            default): the run's ``train.threads``, the torch threads each shard runs (the
            thread count is part of the recipe, since it can change float summation, so the
            reservation follows it, never the reverse).
        gpus_per_shard: GPU fraction reserved by each shard actor (0 trains on CPU).
        max_restarts: how often Ray restarts a dead shard actor (-1: forever).
        max_concurrent: shard actors at the same time (each serves any shard); ``None``
            means one per shard. Those the cluster cannot place yet stay pending, a demand
            an autoscaler sees, while the others work through the shards.
        connect_timeout_seconds: give up connecting to ``address`` after this long.
    """

    address: str | None = None
    cpus_per_shard: float | None = Field(None, gt=0)
    gpus_per_shard: float = Field(0.0, ge=0)
    max_restarts: int = Field(3, ge=-1)
    max_concurrent: int | None = Field(None, ge=1)
    connect_timeout_seconds: float = Field(30.0, gt=0)


class StoreConfig(ConfigModel):
    """An object store location: any fsspec URI (a local folder, ``file://``, ``s3://``,
    ``memory://``).

    Args:
        uri: the run's root (a local path is made absolute).
        endpoint_url: S3 endpoint override for S3-compatible servers (MinIO, moto, Ceph).
            ``AWS_ENDPOINT_URL`` in the environment works too.
        storage_options: extra keyword arguments for the fsspec filesystem.
        lease_wait_seconds: how long a writer waits for another writer's lease before
            failing with an error that names the holder.
        lease_ttl_seconds: a writer's lease lasts this long unless renewed (its heartbeat
            renews it every third of that); a holder that crashed on another machine blocks
            the store at most this long (on the same machine, not at all).
    """

    uri: str
    endpoint_url: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    lease_wait_seconds: float = Field(60.0, ge=0)
    lease_ttl_seconds: float = Field(30.0, ge=1)

    @field_validator("uri")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("store URI is empty")
        if "://" not in value:  # a local path: absolute, so Ray workers elsewhere find the same folder
            return os.path.abspath(os.path.expanduser(value))
        return value
