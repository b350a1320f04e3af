import pytest

from raysisa.config import RunSpec, load_config, parse_config, slice_epochs
from raysisa.errors import ConfigError


def test_defaults_are_the_embedded_digits_recipe():
    job = load_config(None)
    assert job.spec.data.source == "digits"
    assert job.spec.model.name == "small_cnn"
    assert (job.spec.sharding.num_shards, job.spec.sharding.num_slices) == (5, 4)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sharding: {num_shards: 7}\ntrain: {epochs: 9, lr: 0.1}\n")
    job = load_config(path, ["train.epochs=12", "data.limit=100"])
    assert job.spec.sharding.num_shards == 7
    assert job.spec.train.epochs == 12 and job.spec.train.lr == 0.1
    assert job.spec.data.limit == 100


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"sharding": {"num_shards": -1}}, "sharding.num_shards"),
        ({"data": {"source": "imagenet"}}, "data.source: unknown data source 'imagenet'; valid data sources: cifar10, cifar100, digits"),
        ({"model": {"name": "vgg"}}, "model.name: unknown model 'vgg'; valid models: airbench, mobilenet_v2, resnet18, small_cnn"),
        ({"model": {"quant": {"scheme": "fp8"}}}, "model.quant.scheme: unknown quantization scheme 'fp8'; valid quantization schemes: brevitas, lsq"),
        ({"model": {"quant": {"w_bits": 3}}}, "model.quant.w_bits: unsupported bit width 3; supported: 2, 4, 8, 32"),
        ({"coordinator": {"policy": "lru"}}, "coordinator.policy: unknown policy 'lru'; valid policies: dpus, hs, ohs, prs"),
        ({"train": {"lr_schedule": "step"}}, "train.lr_schedule"),
        ({"train": {"epoch": 3}}, "train.epoch: Extra inputs are not permitted"),
        ({"sharding": {"num_slices": 10}, "train": {"epochs": 2}}, "gives some slices 0 epochs"),
    ],
)
def test_bad_values_name_the_problem(data, needle):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(data)
    assert needle in str(err.value)


def test_names_are_registered_whichever_module_is_imported_first():
    # config checks names against raysisa.registry without importing the modules that fill it
    # (they sit above config); importing any raysisa module runs the package root, which does.
    import subprocess
    import sys

    code = (
        "from raysisa.config.recipe import RunSpec\n"
        "from raysisa.config.coordinator import CoordinatorConfig\n"
        "RunSpec.model_validate({'data': {'source': 'svhn'}, 'model': {'name': 'resnet18', 'quant': {'scheme': 'brevitas'}}})\n"
        "CoordinatorConfig(policy='prs')\n"
        "import sys; assert 'brevitas' not in sys.modules  # schemes load on first use\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_config({}, ["nonsense"])


def test_fingerprint_ignores_locations_but_not_recipe():
    a = RunSpec.from_dict({"data": {"source": "parquet", "uri": "/a"}})
    b = RunSpec.from_dict({"data": {"source": "parquet", "uri": "/b"}})
    c = RunSpec.from_dict({"data": {"source": "parquet", "uri": "/a"}, "train": {"seed": 1}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_config_round_trips_as_plain_data():
    spec = parse_config({}, ["train.epochs=7"]).spec
    assert RunSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(("epochs", "slices"), [(20, 4), (7, 3), (1, 1), (30, 20), (11, 5)])
def test_slice_epochs_spend_the_budget_and_average_2e_over_r_plus_1(epochs, slices):
    plan = slice_epochs(epochs, slices)
    assert len(plan) == slices
    # slice r trains on r/R of the shard: the total is e full passes, up to integer rounding
    cost = sum(e_r * r / slices for r, e_r in enumerate(plan, start=1))
    assert abs(cost - epochs) <= 1
    assert all(e >= 0 for e in plan)


def test_slice_epochs_known_values():
    assert slice_epochs(20, 4) == [8, 8, 8, 8]
    assert slice_epochs(10, 4) == [4, 4, 4, 4]
    assert slice_epochs(5, 3) == [2, 3, 2]


def test_shard_actors_reserve_the_recipe_threads_unless_told_otherwise():
    """The reservation is a fixed request an autoscaler can satisfy (not the free CPUs spread
    over the shards): by default the recipe's torch threads (each has a core), else what
    ``cluster.cpus_per_shard`` says; it is no part of the fingerprint, so changing it never
    changes a result."""
    from raysisa.sisa.actors import RayPool  # builds no actor until it is given work

    job = parse_config({})
    assert job.cluster.cpus_per_shard is None and job.cluster.max_concurrent is None
    assert RayPool(job.cluster, 5, threads=job.spec.train.threads).cpus == 1
    assert RayPool(parse_config({}, ["train.threads=3"]).cluster, 5, threads=3).cpus == 3
    assert RayPool(parse_config({"cluster": {"cpus_per_shard": 0.5}}).cluster, 5, threads=2).cpus == 0.5
    assert parse_config({"cluster": {"cpus_per_shard": 4}}).spec.fingerprint() == job.spec.fingerprint()
    for bad in (0, -1, "two"):
        with pytest.raises(ConfigError) as err:
            parse_config({"cluster": {"cpus_per_shard": bad}})
        assert "cluster.cpus_per_shard" in str(err.value)
