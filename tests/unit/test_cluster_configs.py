"""cluster/configs/ are for runs on a cluster, whose jobs run in a temporary working
directory: a config names its data by URI, or not at all (digits; torchvision's folder,
given with --data-dir), never by a relative local path."""

import re
from pathlib import Path

import pytest
import yaml

from raysisa.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "cluster" / "configs").glob("*.yaml"))
LOCATIONS = ("uri", "data_dir")  # every key of the data section that locates files


def _has_scheme(location: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", location) is not None


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_configs_name_their_data_by_uri_or_not_at_all(path):
    data = (yaml.safe_load(path.read_text()) or {}).get("data", {})
    for key in LOCATIONS:
        if key in data:
            assert _has_scheme(str(data[key])), f"{path.name}: data.{key} {data[key]!r} is not a URI"
    spec = load_config(path).spec.data  # what the job reads after validation, defaults included
    assert spec.uri is None or _has_scheme(spec.uri)
    assert spec.data_dir is None or _has_scheme(spec.data_dir)
    if spec.source == "parquet":
        assert spec.uri, f"{path.name}: a parquet config names its data (a placeholder URI, overridden with --set data.uri=)"


def test_the_data_location_is_overridden_as_the_comments_say():
    """The placeholder gives way to --set data.uri=... (a local folder too, outside a job),
    and the data location is not part of the run's fingerprint."""
    path = ROOT / "cluster" / "configs" / "cifar10-parquet.yaml"
    assert "--set data.uri=" in path.read_text()
    shipped = load_config(path)
    local = load_config(path, ["data.uri=../shared/data/cifar10"])
    assert local.spec.data.uri == "../shared/data/cifar10"
    assert local.spec.fingerprint() == shipped.spec.fingerprint()
    torchvision = ROOT / "cluster" / "configs" / "cifar10-torchvision.yaml"
    assert "--data-dir /" in torchvision.read_text()  # an absolute folder, given on the command line


def test_the_check_tells_uris_from_paths():
    assert _has_scheme("s3://bucket/data") and _has_scheme("gs://b/x") and _has_scheme("file:///data")
    assert not _has_scheme("../shared/data/cifar10") and not _has_scheme("./data") and not _has_scheme("/abs/path")
