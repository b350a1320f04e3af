import numpy as np
import pytest

from raysisa.data.partition import plan_partition, split_sizes
from raysisa.errors import ConfigError
from raysisa.store.keys import init_key, slice_keys


def test_split_sizes_gives_the_remainder_to_the_last_part():
    assert split_sizes(10, 3) == [3, 3, 4]
    assert split_sizes(9, 3) == [3, 3, 3]


def test_partition_is_seeded_complete_and_disjoint():
    ids = np.arange(1000, 2003)
    p = plan_partition(ids[::-1], 4, 5, seed=3)
    assert sorted(p.ids.tolist()) == ids.tolist()
    assert set(p.shard.tolist()) == {0, 1, 2, 3} and set(p.slice.tolist()) == {1, 2, 3, 4, 5}
    q = plan_partition(ids, 4, 5, seed=3)  # input order does not matter
    assert (p.ids == q.ids).all() and (p.shard == q.shard).all() and (p.slice == q.slice).all()
    r = plan_partition(ids, 4, 5, seed=4)
    assert not (p.ids == r.ids).all()
    sizes = [int((p.shard == k).sum()) for k in range(4)]
    assert sizes == [250, 250, 250, 253]
    assert [len(p.slice_ids(0, s)) for s in range(1, 6)] == [50] * 5


def test_too_few_samples_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot fill 4 shards x 5 slices"):
        plan_partition(np.arange(19), 4, 5, 0)


def test_deleting_in_slice_j_changes_keys_j_and_later_only():
    slices = [np.array([5, 1, 9]), np.array([4, 7]), np.array([2, 8, 3])]
    before = slice_keys("fp", 0, slices)
    after = slice_keys("fp", 0, [slices[0], np.array([7]), slices[2]])
    assert before[0] == after[0] == init_key("fp", 0)
    assert before[1] == after[1]
    assert before[2] != after[2] and before[3] != after[3]
    assert len(set(before)) == 4


def test_keys_depend_on_fingerprint_shard_and_slice_boundaries():
    slices = [np.array([1, 2]), np.array([3])]
    base = slice_keys("fp", 0, slices)
    assert slice_keys("other", 0, slices)[1] != base[1]
    assert slice_keys("fp", 1, slices)[1] != base[1]
    # same ids, other boundary between slices -> other keys
    assert slice_keys("fp", 0, [np.array([1]), np.array([2, 3])])[2] != base[2]
