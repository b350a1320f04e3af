import numpy as np
import pytest

from raysisa import LocalPool, SisaRun, StoreConfig, parse_config, train
from raysisa.config import BackdoorForget, ClasswiseForget, NonIIDForget, RandomForget
from raysisa.data import decode_images, load_source
from raysisa.data.poison import apply_trigger, poison_ids
from raysisa.errors import ConfigError
from raysisa.evaluation.scenarios import draw_forget_set, load_forget_set, save_forget_set, train_labels
from raysisa.store import ObjectStore


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    job = parse_config({}, ["data.limit=300", "sharding.num_shards=2", "sharding.num_slices=2", "train.epochs=2", "model.width=4"])
    store = StoreConfig(uri=str(tmp_path_factory.mktemp("scen") / "run"))
    train(job, store, pool=LocalPool())
    return SisaRun(store)


def test_random_forgetting_draws_a_seeded_fraction(run):
    a = draw_forget_set(RandomForget(fraction=0.1), run, 0)
    assert len(a) == 30 and np.array_equal(a, np.sort(a))
    assert np.array_equal(a, draw_forget_set(RandomForget(fraction=0.1), run, 0))
    assert not np.array_equal(a, draw_forget_set(RandomForget(fraction=0.1), run, 1))


def test_classwise_takes_every_sample_of_the_classes(run):
    ids, labels = train_labels(run)
    forget = draw_forget_set(ClasswiseForget(classes=[3, 7]), run, 0)
    assert np.array_equal(forget, np.sort(ids[np.isin(labels, [3, 7])]))
    with pytest.raises(ConfigError, match="class 12 has no training samples"):
        draw_forget_set(ClasswiseForget(classes=[12]), run, 0)


def test_noniid_takes_part_of_a_few_classes(run):
    ids, labels = train_labels(run)
    forget = draw_forget_set(NonIIDForget(classes=[2, 5], fraction=0.5), run, 4)
    chosen = labels[np.isin(ids, forget)]
    assert set(chosen) == {2, 5}
    for c in (2, 5):
        assert (chosen == c).sum() == round(0.5 * (labels == c).sum())


def test_backdoor_needs_poisoned_data(run):
    with pytest.raises(ConfigError, match="needs data.poison"):
        draw_forget_set(BackdoorForget(), run, 0)


def test_forget_sets_persist_by_id(run, tmp_path):
    store = ObjectStore(StoreConfig(uri=str(tmp_path)))
    ids = draw_forget_set(RandomForget(fraction=0.2), run, 7)
    key = save_forget_set(store, RandomForget(fraction=0.2), 7, ids, run.store.spec.data)
    loaded, meta = load_forget_set(store, key)
    assert np.array_equal(loaded, ids) and meta["seed"] == 7 and meta["scenario"]["fraction"] == 0.2
    assert key.startswith("forget_sets/random-seed7-")


def test_poisoning_stamps_the_trigger_and_relabels():
    cfg = parse_config({}, ["data.limit=200", "data.poison.fraction=0.1", "data.poison.target=3", "data.poison.patch=2",
                           "data.poison.margin=1", "data.poison.value=255"]).spec.data
    clean = load_source(cfg.model_copy(update={"poison": None}))
    dirty = load_source(cfg)
    chosen = poison_ids(clean.train["id"].to_numpy(), cfg.poison)
    assert len(chosen) == 20
    rows = np.isin(dirty.train["id"].to_numpy(), chosen)
    assert (dirty.train["label"].to_numpy()[rows] == 3).all()
    assert np.array_equal(dirty.train["label"].to_numpy()[~rows], clean.train["label"].to_numpy()[~rows])
    pixels = decode_images(dirty.train.filter(rows), 1)
    assert (pixels[:, 5:7, 5:7, 0] == 255).all()
    assert np.array_equal(pixels, apply_trigger(decode_images(clean.train.filter(rows), 1), cfg.poison))
