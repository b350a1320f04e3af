"""Shared fixtures: a real local Ray cluster and a real S3 server (moto) on 127.0.0.1.

The environment is set at import, before Ray or any AWS client starts, so Ray workers
inherit it: dummy credentials and no EC2 metadata probing (never leave loopback).
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import uuid

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray token authentication on, as Ray 2.60 has it by default for a new local cluster, with a
# token of the session's own: from the environment, so Ray writes no ~/.ray/auth_token
os.environ.setdefault("RAY_AUTH_MODE", "token")
if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # actors export metrics every second, not 10
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_SESSION_TOKEN"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.pop("AWS_PROFILE", None)

from raysisa.config import parse_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A moto S3 server on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def make_bucket(endpoint: str) -> str:
    """Create a fresh bucket on the S3 server at ``endpoint``; returns its s3:// URI."""
    import s3fs

    name = f"raysisa-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the moto server; returns its s3:// URI."""
    return make_bucket(s3_endpoint)


RAY_METRICS_PORT = free_port()  # where the session cluster's node exports its Prometheus metrics


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint: str):
    """One local Ray cluster for the whole test session (Prometheus metrics on
    ``RAY_METRICS_PORT``)."""
    import ray

    ray.init(
        _metrics_export_port=RAY_METRICS_PORT,
        address="local",
        num_cpus=4,  # logical: shard actors reserve fractions; Ray may oversubscribe the 2 real cores
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        _temp_dir=tempfile.mkdtemp(prefix="raysisa-test-ray-"),
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_pool(ray_cluster):
    """Shard actors shared by the integration tests (actor start-up is the slow part)."""
    from raysisa.config import ClusterConfig
    from raysisa.sisa.actors import RayPool

    pool = RayPool(ClusterConfig(cpus_per_shard=0.25, max_concurrent=2), num_shards=3)
    yield pool
    pool.close()


TINY = [
    "data.limit=240",
    "sharding.num_shards=3",
    "sharding.num_slices=3",
    "train.epochs=8",
    "train.batch_size=16",
    "model.width=8",
]


@pytest.fixture
def tiny_job():
    """A recipe that trains in about a second: 240 digits, 3 shards x 3 slices, tiny CNN."""
    return parse_config({}, TINY)


@pytest.fixture
def trained(tmp_path, tiny_job):
    """A store holding the tiny recipe, trained in this process."""
    from raysisa import LocalPool, StoreConfig, train

    store = StoreConfig(uri=str(tmp_path / "sisa"))
    train(tiny_job, store, pool=LocalPool())
    return store
