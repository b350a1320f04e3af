import json

import pytest
import torch

from raysisa.config import StoreConfig
from raysisa.errors import CheckpointCorruptError, StoreError, StoreNotFoundError
from raysisa.store import CheckpointRef, CheckpointStore, ObjectStore, tensors_sha256

KEY = "a" * 64


@pytest.fixture(params=["local", "memory"])
def objects(request, tmp_path):
    uri = str(tmp_path / "store") if request.param == "local" else f"memory://test-{tmp_path.name}"
    return ObjectStore(StoreConfig(uri=uri))


def test_bytes_json_listing_and_delete(objects):
    objects.put_bytes("a/b/c.bin", b"123")
    objects.put_json("a/d.json", {"x": [1, 2]})
    assert objects.get_bytes("a/b/c.bin") == b"123"
    assert objects.get_json("a/d.json") == {"x": [1, 2]}
    assert objects.list("a") == ["a/b/c.bin", "a/d.json"]
    assert objects.exists("a/d.json") and not objects.exists("a/zzz")
    objects.put_bytes("a/b/c.bin", b"456")  # overwrite in place
    assert objects.get_bytes("a/b/c.bin") == b"456"
    objects.delete(["a/b/c.bin", "a/never-there"])
    assert objects.list("a") == ["a/d.json"]
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        objects.get_bytes("a/b/c.bin")
    assert objects.list("nothing-here") == []


def test_local_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    objects = ObjectStore(StoreConfig(uri=str(tmp_path)))
    for i in range(5):
        objects.put_bytes("k.bin", bytes([i]) * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.bin"]
    (tmp_path / "k.bin.tmp-deadbeef").write_bytes(b"partial")  # a crashed writer's leftover
    assert objects.list("") == ["k.bin"]
    assert objects.list_temporary("") == ["k.bin.tmp-deadbeef"]


def test_copy_to_copies_every_object_and_skips_leftover_temporaries(objects, tmp_path):
    objects.put_bytes("a/b.bin", bytes(range(256)))
    objects.put_json("c.json", {"x": 1})
    target = ObjectStore(StoreConfig(uri=str(tmp_path / "copy")))
    assert objects.copy_to(target) == 2
    assert target.list() == ["a/b.bin", "c.json"] and target.get_bytes("a/b.bin") == bytes(range(256))
    assert target.list_temporary() == []


def test_store_travels_as_configuration(tmp_path):
    import pickle

    objects = ObjectStore(StoreConfig(uri=str(tmp_path)))
    clone = pickle.loads(pickle.dumps(objects))
    assert clone.config == objects.config and clone.root == objects.root


def _tensors():
    torch.manual_seed(0)
    return {
        "model/w": torch.randn(4, 3),
        "model/bn.num_batches_tracked": torch.tensor(7),
        "optim/0/momentum_buffer": torch.randn(4, 3),
    }


def test_checkpoint_round_trip_is_exact(objects):
    ckpts = CheckpointStore(objects)
    ref = CheckpointRef(2, 3, KEY)
    tensors = _tensors()
    manifest = ckpts.put(ref, tensors, {"lineage": {"ids": [1, 2]}})
    loaded = ckpts.get(ref)
    assert set(loaded.tensors) == set(tensors)
    assert all(torch.equal(loaded.tensors[k], tensors[k]) for k in tensors)
    assert loaded.manifest["lineage"] == {"ids": [1, 2]} and manifest["blob_sha256"] == loaded.manifest["blob_sha256"]
    assert ckpts.list() == [ref] and ckpts.list(shard=2) == [ref] and ckpts.list(shard=1) == []
    assert ckpts.verify(ref) is None
    ckpts.delete([ref])
    assert ckpts.list() == [] and objects.list("checkpoints") == []


def test_tensors_sha256_is_order_free_and_content_sensitive():
    t = _tensors()
    assert tensors_sha256(t) == tensors_sha256(dict(reversed(list(t.items()))))
    t2 = dict(t)
    t2["model/w"] = t["model/w"].clone()
    t2["model/w"][0, 0] += 1e-6
    assert tensors_sha256(t2) != tensors_sha256(t)


@pytest.mark.parametrize("damage", ["truncate_blob", "flip_blob", "truncate_manifest", "edit_manifest", "drop_blob"])
def test_corrupt_checkpoints_are_detected_and_never_loaded(objects, damage):
    ckpts = CheckpointStore(objects)
    ref = CheckpointRef(0, 1, KEY)
    ckpts.put(ref, _tensors(), {})
    blob, manifest = objects.get_bytes(ref.blob), objects.get_bytes(ref.manifest)
    if damage == "truncate_blob":
        objects.put_bytes(ref.blob, blob[: len(blob) // 2])
    elif damage == "flip_blob":
        objects.put_bytes(ref.blob, blob[:-1] + bytes([blob[-1] ^ 1]))
    elif damage == "truncate_manifest":
        objects.put_bytes(ref.manifest, manifest[:20])
    elif damage == "edit_manifest":
        body = json.loads(manifest)
        body["lineage"] = {"ids": []}
        objects.put_bytes(ref.manifest, json.dumps(body).encode())
    else:
        objects.delete(ref.blob)
    with pytest.raises(CheckpointCorruptError, match="corrupt"):
        ckpts.get(ref)
    assert "corrupt" in ckpts.verify(ref)


def test_orphans_are_blobs_without_manifest(objects):
    ckpts = CheckpointStore(objects)
    done, half = CheckpointRef(0, 1, KEY), CheckpointRef(0, 2, "b" * 64)
    ckpts.put(done, _tensors(), {})
    objects.put_bytes(half.blob, b"written before a crash")
    assert ckpts.orphans() == [half.blob]


def test_unwritable_store_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    objects = ObjectStore(StoreConfig(uri=str(blocker)))
    with pytest.raises(StoreError, match="cannot write"):
        objects.put_bytes("a.bin", b"1")
