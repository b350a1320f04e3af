"""The SISA flow in this process (LocalPool): exactness, isolation, residue, bad input."""

import pytest

from raysisa import LocalPool, SisaRun, StoreConfig, evaluate, inspect, train, unlearn
from raysisa.errors import CheckpointCorruptError, ConfigError, InvalidIdsError, StaleStateError
from raysisa.store import RunStore
from tests.sisa_checks import assert_no_residue, checkpoint_bytes, model_shas, pick

CASES = {
    "inside-one-slice": [(1, 2, 0), (1, 2, 5)],
    "across-slices": [(0, 1, 3), (0, 3, 1)],
    "across-shards": [(0, 2, 4), (1, 1, 0), (2, 3, 2)],
}


def _store(tmp_path, name):
    return StoreConfig(uri=str(tmp_path / name))


@pytest.mark.parametrize("case", sorted(CASES))
def test_unlearning_equals_training_without_the_ids(tmp_path, tiny_job, trained, case):
    where = CASES[case]
    ids = pick(trained, where)
    before = {k: checkpoint_bytes(trained, k) for k in range(3)}
    state_before = RunStore(trained).refresh()
    report = unlearn(trained, ids, pool=LocalPool())
    state_after = RunStore(trained).refresh()
    # one commit; it replaces exactly the partitions that held the ids, nothing else
    assert state_after.version == state_before.version + 1
    changed = {p for p, ref in state_before.partitions.items() if state_after.partitions[p] != ref}
    assert changed == {(k, r) for k, r, _ in where}
    assert state_after.test == state_before.test
    # and the old partitions are gone from the store: only the committed objects remain
    current = [*state_after.partitions.values(), *state_after.pixels.values(), state_after.test, state_after.test_pixels]
    assert set(RunStore(trained).data_keys()) == {ref.key for ref in current}
    # each rewritten partition has new pixels, derived from the old by the same row mask
    assert {p for p, ref in state_before.pixels.items() if state_after.pixels[p] != ref} == changed
    for at in changed:
        pixels = RunStore(trained).read_pixels(*at)
        assert pixels.source_sha256 == state_after.partitions[at].sha256
        assert pixels.ids.tolist() == RunStore(trained).read_partition(*at)["id"].to_pylist()

    reference = _store(tmp_path, "reference")
    train(tiny_job, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)

    # the SISA rule: each affected shard retrains from its earliest affected slice to R
    first = {}
    for shard, slice_, _ in where:
        first[shard] = min(first.get(shard, slice_), slice_)
    assert report.first_slice == first
    assert report.slices_retrained == sum(3 - r + 1 for r in first.values())
    assert sorted(report.deleted) == sorted(ids)
    # unaffected shards' checkpoints are byte-identical
    for shard in set(range(3)) - set(first):
        assert checkpoint_bytes(trained, shard) == before[shard]
    # affected shards keep their untouched prefix and lose everything after it
    for shard, r in first.items():
        kept = {k: v for k, v in before[shard].items() if any(f"slice={s}/" in k for s in range(r))}
        after = checkpoint_bytes(trained, shard)
        assert all(after[k] == v for k, v in kept.items())
        assert not (set(before[shard]) - set(kept)) & set(after)
    assert_no_residue(trained, ids)


def test_repeated_requests_compose(tmp_path, tiny_job, trained):
    first, second = pick(trained, [(0, 2, 1)]), pick(trained, [(0, 1, 2), (2, 3, 0)])
    unlearn(trained, first, pool=LocalPool())
    unlearn(trained, second, pool=LocalPool())
    reference = _store(tmp_path, "reference")
    train(tiny_job, reference, exclude_ids=first + second, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)
    assert_no_residue(trained, first + second)


@pytest.mark.parametrize(
    ("ids", "needle"),
    [
        ([10_000_000], "never existed"),
        ([-4], "negative id"),
        (["seven"], "not integers: 'seven'"),
        ([1.5], "not integers"),
        ([], "no sample ids given"),
    ],
)
def test_bad_ids_are_rejected_and_leave_the_store_unchanged(trained, ids, needle):
    listing = RunStore(trained).listing()
    with pytest.raises(InvalidIdsError, match=needle):
        unlearn(trained, ids, pool=LocalPool())
    assert RunStore(trained).listing() == listing


def test_a_mix_of_good_and_unknown_ids_changes_nothing(trained):
    listing = RunStore(trained).listing()
    good = pick(trained, [(0, 1, 0)])
    with pytest.raises(InvalidIdsError, match="1 id\\(s\\) never existed.*99999999"):
        unlearn(trained, good + [99_999_999], pool=LocalPool())
    assert RunStore(trained).listing() == listing


def test_already_deleted_ids_are_a_noop_that_says_so(trained):
    ids = pick(trained, [(2, 2, 2)])
    unlearn(trained, ids, pool=LocalPool())
    listing = RunStore(trained).listing()
    report = unlearn(trained, ids, pool=LocalPool())
    assert report.noop and "already deleted" in report.message and report.already_deleted == ids
    assert RunStore(trained).listing() == listing
    more = pick(trained, [(1, 1, 1)])
    mixed = unlearn(trained, ids + more, pool=LocalPool())
    assert mixed.deleted == more and mixed.already_deleted == ids and "1 id(s) were already deleted" in mixed.message


def test_tombstones_keep_ids_never_contents(trained):
    ids = pick(trained, [(0, 3, 0)])
    unlearn(trained, ids, pool=LocalPool())
    tombstones = RunStore(trained).tombstones()
    assert tombstones.column_names == ["id", "shard", "slice", "deleted_at", "reason"]
    assert tombstones["id"].to_pylist() == ids and tombstones["reason"].to_pylist() == ["unlearn"]


def test_corrupt_checkpoints_are_reported_never_loaded_and_can_be_rebuilt(tmp_path, tiny_job, trained):
    run = RunStore(trained)
    shas = model_shas(trained)
    [ref] = [r for r in run.checkpoints.list(shard=1) if r.slice == 1]
    blob = run.objects.get_bytes(ref.blob)
    run.objects.put_bytes(ref.blob, blob[: len(blob) - 100])  # truncated
    latest = max(run.checkpoints.list(shard=2))
    run.objects.put_bytes(latest.blob, b"\x00" * len(run.objects.get_bytes(latest.blob)))

    statuses = {s["shard"]: [c["status"] for c in s["checkpoints"]] for s in inspect(trained)["shards"]}
    assert statuses[1][1] == "corrupt" and statuses[2][-1] == "corrupt" and statuses[0] == ["ok"] * 4
    with pytest.raises(CheckpointCorruptError, match="shard 2 slice 3"):
        evaluate(trained)
    with pytest.raises(CheckpointCorruptError, match="shard 1 slice 1"):
        unlearn(trained, pick(trained, [(1, 2, 0)]), pool=LocalPool())  # loads checkpoint 1

    repaired = SisaRun(trained).train(LocalPool(), verify=True)
    assert repaired.checkpoints_rebuilt == 2
    reference = _store(tmp_path, "reference")
    deleted = RunStore(trained).tombstones()["id"].to_pylist()
    train(tiny_job, reference, exclude_ids=deleted, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)
    assert model_shas(trained)[0] == shas[0]


class _CrashAfter(LocalPool):
    """A pool whose machine 'dies' after some calls."""

    def __init__(self, calls):
        super().__init__()
        self.left = calls

    def submit(self, shard, method, *args):
        if self.left == 0:
            raise KeyboardInterrupt("simulated crash")
        self.left -= 1
        return super().submit(shard, method, *args)


def test_an_interrupted_training_resumes_without_redoing_work(tmp_path, tiny_job, trained):
    store = _store(tmp_path, "crashy")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_job, store, pool=_CrashAfter(7))
    with pytest.raises(StaleStateError, match="not trained on their current data"):
        evaluate(store)
    report = train(tiny_job, store, pool=LocalPool())
    # one shard at a time: 7 calls = shard 0 (init + 3 slices) + shard 1 (init + 2 slices)
    assert report.slices_trained == 9 - 5 and report.slices_skipped == 0
    assert model_shas(store) == model_shas(trained)


def test_reopening_with_another_recipe_fails(tmp_path, tiny_job, trained):
    other = tiny_job.model_copy(update={"train": tiny_job.train.model_copy(update={"seed": 9})})
    with pytest.raises(ConfigError, match="holds a run with another config"):
        train(other, trained, pool=LocalPool())


def test_resuming_needs_no_config(trained):
    report = train(None, trained, pool=LocalPool())
    assert report.slices_trained == 0 and report.slices == []  # nothing left to do


def test_the_progress_bar_counts_what_the_report_counts(tmp_path, tiny_job, capsys):
    # slice 0 (the initial model) is written, but it is not a trained slice in the report or the bar
    report = train(tiny_job, _store(tmp_path, "bar"), pool=LocalPool(), progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    done = report.slices_trained
    assert done == 3 * 3 and any(f"{done}/{done} " in line for line in bar)
    assert not any(f"/{done + 3} " in line for line in bar)


def test_excluding_unknown_ids_writes_nothing(tmp_path, tiny_job):
    store = _store(tmp_path, "x")
    with pytest.raises(InvalidIdsError, match="not training samples"):
        train(tiny_job, store, exclude_ids=[5_000_000], pool=LocalPool())
    assert RunStore(store).objects.list("") == []  # not even the lease is left behind


def test_evaluate_reports_ensemble_and_shards(trained):
    report = evaluate(trained)
    assert report.test_samples > 300 and len(report.shard_accuracy) == 3
    assert report.accuracy > 50  # a tiny net on 240 digits; chance is 10
    assert evaluate(trained, "mean_softmax").aggregation == "mean_softmax"


def test_a_shard_emptied_by_deletions_drops_out_of_the_vote(tmp_path, tiny_job, trained):
    from raysisa.store import RunStore

    index = RunStore(trained).read_index()
    shard0 = [int(i) for i, k in zip(index["id"].to_pylist(), index["shard"].to_pylist(), strict=True) if k == 0]
    report = unlearn(trained, shard0, pool=LocalPool())
    assert report.first_slice == {0: 1} and report.slices_retrained == 3
    result = evaluate(trained)
    assert len(result.shard_accuracy) == 3 and result.accuracy > 40
    reference = _store(tmp_path, "reference")
    train(tiny_job, reference, exclude_ids=shard0, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)


def test_an_empty_exclusion_list_excludes_nothing(tmp_path, tiny_job, trained):
    other = _store(tmp_path, "other")
    train(tiny_job, other, exclude_ids=[], pool=LocalPool())
    assert model_shas(other) == model_shas(trained)


def test_a_long_lived_run_object_sees_changes_made_by_others(trained):
    reader = SisaRun(trained)
    before = reader.evaluate().shard_accuracy
    ids = pick(trained, [(1, 2, 0)])
    unlearn(trained, ids, pool=LocalPool())  # another writer (its own SisaRun) commits version 2
    assert reader.inspect()["version"] == 2
    assert reader.check_ids(ids)[2].tolist() == ids  # already deleted, as the latest commit says
    assert len(reader.evaluate().shard_accuracy) == len(before)  # the retrained shard 1 is served, not reported stale


def test_the_fast_recipe_unlearns_bit_exactly(tmp_path, tiny_job):
    """The airbench network with every recipe option the CIFAR recipe uses (uint8 batches
    with crop, flip and cutout; label smoothing; Nesterov; the per-step linear schedule;
    channels-last; flip TTA): unlearning equals training without the ids."""
    fast = tiny_job.model_copy(
        update={
            "model": tiny_job.model.model_copy(update={"name": "airbench", "width": 4}),
            "train": tiny_job.train.model_copy(
                update={
                    "augment": True, "cutout": 4, "label_smoothing": 0.2, "nesterov": True, "lr_schedule": "linear",
                    "warmup": 0.2, "channels_last": True, "test_flip": True,
                }
            ),
        }
    )
    store = _store(tmp_path, "fast")
    train(fast, store, pool=LocalPool())
    ids = pick(store, [(0, 2, 1), (2, 3, 0)])
    unlearn(store, ids, pool=LocalPool())
    reference = _store(tmp_path, "reference")
    train(fast, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(store) == model_shas(reference)
    assert evaluate(store).accuracy == evaluate(reference).accuracy
    assert_no_residue(store, ids)


def test_a_compiled_recipe_trains_and_unlearns_bit_exactly(tmp_path, tiny_job):
    """train.compile: each slice's model goes through torch.compile (inductor, on CPU here;
    one shard of one slice: compiling is the slow part).
    The compiled steps are a pure function of their inputs as the eager ones are, so
    unlearning still equals training without the ids, and the compiled model scores as the
    eager one does (up to the fused kernels' rounding)."""
    from torch._dynamo.utils import counters

    small = tiny_job.model_copy(update={"sharding": tiny_job.sharding.model_copy(update={"num_shards": 1, "num_slices": 1}),
                                        "train": tiny_job.train.model_copy(update={"epochs": 2})})
    compiled = small.model_copy(update={"train": small.train.model_copy(update={"compile": True})})
    counters.clear()
    store = _store(tmp_path, "compiled")
    train(compiled, store, pool=LocalPool())
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really captured the model
    ids = pick(store, [(0, 1, 0)])
    unlearn(store, ids, pool=LocalPool())
    reference = _store(tmp_path, "reference")
    train(compiled, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(store) == model_shas(reference)

    eager = _store(tmp_path, "eager")
    train(small, eager, exclude_ids=ids, pool=LocalPool())
    assert abs(evaluate(reference).accuracy - evaluate(eager).accuracy) <= 3  # percentage points
