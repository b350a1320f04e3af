"""Decode once: pixels objects beside partitions, and the uint8 training path's augmentation."""

import json
import logging

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from raysisa import LocalPool, SisaRun, StoreConfig, train, unlearn
from raysisa.data import pixels as pixels_module
from raysisa.data.pixels import Pixels
from raysisa.data.samples import DatasetInfo, decode_images
from raysisa.data.tensors import Augment, Images, augment_nhwc
from raysisa.errors import DataError
from raysisa.store import RunStore
from tests.sisa_checks import assert_no_residue, model_shas, pick

CIFAR = DatasetInfo("cifar-like", 10, 3, 32, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _uint8_images(n=6, h=32, w=32, c=3, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8))


# -- augmentation ------------------------------------------------------------------------------
@pytest.mark.parametrize("cutout", [0, 8])
def test_the_batch_path_equals_torchvision_transforms_at_the_drawn_offsets(cutout):
    """crop (zero padding) -> flip -> cutout -> ToTensor -> Normalize, per sample, bit for bit."""
    pixels = _uint8_images()
    images = Images(pixels, CIFAR.mean, CIFAR.std)
    augment = Augment(crop_padding=4, flip=True, cutout=cutout)
    batch = images.batch(torch.arange(len(pixels)), torch.Generator().manual_seed(3), augment)

    g = torch.Generator().manual_seed(3)  # the draws, in the documented order
    n = len(pixels)
    dy, dx = torch.randint(0, 9, (n,), generator=g), torch.randint(0, 9, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    cy, cx = (torch.randint(0, 32, (n,), generator=g), torch.randint(0, 32, (n,), generator=g)) if cutout else (None, None)
    assert flip.any() and not flip.all() and len(set(dy.tolist())) > 1  # the draws exercise both branches
    for i in range(n):
        img = pixels[i].permute(2, 0, 1)  # torchvision's uint8 (C, H, W)
        ref = TF.crop(TF.pad(img, [4], fill=0), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            ref = TF.hflip(ref)
        if cutout:
            y0, x0 = max(int(cy[i]) - cutout // 2, 0), max(int(cx[i]) - cutout // 2, 0)
            ref = ref.clone()
            ref[:, y0 : int(cy[i]) - cutout // 2 + cutout, x0 : int(cx[i]) - cutout // 2 + cutout] = 0
        ref = TF.normalize(ref.to(torch.float32).div(255.0), CIFAR.mean, CIFAR.std)
        assert torch.equal(batch[i], ref), f"sample {i}"


def test_augmentation_is_a_pure_function_of_the_generator_and_works_on_any_dtype():
    pixels = _uint8_images(8)
    a = augment_nhwc(pixels, torch.Generator().manual_seed(1), Augment(cutout=6))
    b = augment_nhwc(pixels, torch.Generator().manual_seed(1), Augment(cutout=6))
    c = augment_nhwc(pixels, torch.Generator().manual_seed(2), Augment(cutout=6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # uint8 then normalise == normalise then augment with the normalised black as fill: the
    # float path differs only where padding or cutout filled zeros
    as_float = augment_nhwc(pixels.to(torch.float32), torch.Generator().manual_seed(1), Augment(cutout=6))
    assert torch.equal(as_float, a.to(torch.float32))


def test_unaugmented_batches_are_the_normalised_images_in_both_memory_formats():
    pixels = _uint8_images(4)
    images = Images(pixels, CIFAR.mean, CIFAR.std)
    reference = TF.normalize(pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0, CIFAR.mean, CIFAR.std)
    plain, last = images.batch(slice(0, 4)), images.batch(slice(0, 4), channels_last=True)
    assert torch.equal(plain, reference) and plain.is_contiguous()
    assert torch.equal(last, reference) and last.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        Images(pixels.float(), CIFAR.mean, CIFAR.std)
    # one channel: canonical NCHW strides (a view with C's stride 1 would make convolutions pick
    # channels-last kernels, other numerics than the float path's)
    gray = Images(_uint8_images(4, c=1), (0.5,), (0.25,)).batch(slice(0, 4))
    assert gray.stride() == torch.empty(gray.shape).stride()


# -- pixels objects -----------------------------------------------------------------------------
def test_pixels_objects_round_trip_deterministically_and_reject_other_bytes():
    p = Pixels(np.arange(3, dtype=np.int64), np.array([1, 0, 2]), _uint8_images(3).numpy(), "ab" * 32)
    data = p.to_bytes()
    assert data == Pixels(p.ids, p.labels, p.images.copy(), p.source_sha256).to_bytes()
    back = Pixels.from_bytes(data, "x")
    assert back.source_sha256 == p.source_sha256 and np.array_equal(back.images, p.images) and back.labels.tolist() == [1, 0, 2]
    for junk in (b"", b"\x89PNG\r\n\x1a\n\x00\xff" * 8, data[:-5]):
        with pytest.raises(DataError, match="not a pixels object"):
            Pixels.from_bytes(junk, "x")


def test_ingest_stores_every_partition_decoded_beside_it(trained):
    run = RunStore(trained)
    state = run.refresh()
    assert set(state.pixels) == set(state.partitions) and state.test_pixels is not None
    for at, ref in state.partitions.items():
        table = run.read_partition(*at)
        pixels = run.read_pixels(*at)
        assert state.pixels[at].key == ref.key.replace(".parquet", ".pixels.safetensors")
        assert pixels.source_sha256 == ref.sha256 and pixels.matches(table)
        assert np.array_equal(pixels.images, decode_images(table, run.info.channels))
    test = run.read_test_pixels()
    assert test.matches(run.read_test()) and test.images.shape[1:] == (8, 8, 1)


def test_shards_never_decode_images_once_pixels_exist(trained, monkeypatch):
    """Unlearning reads pixels objects and derives the new partitions' pixels by row mask."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(pixels_module, "decode_images", no_decoding)
    ids = pick(trained, [(0, 2, 1), (2, 1, 0)])
    unlearn(trained, ids, pool=LocalPool())
    SisaRun(trained).evaluate()
    assert_no_residue(trained, ids)


def test_a_missing_pixels_object_is_decoded_from_its_partition_and_written_again(tmp_path, tiny_job, trained, caplog):
    run = RunStore(trained)
    state = run.refresh()
    victim = state.pixels[(1, 2)]
    run.objects.delete(victim.key)
    with caplog.at_level(logging.WARNING):
        pixels = RunStore(trained).read_pixels(1, 2)
    assert "decoding its Parquet" in caplog.text
    assert pixels.matches(run.read_partition(1, 2)) and pixels.source_sha256 == state.partitions[(1, 2)].sha256
    # training on the rebuilt rows gives the same models as training from the stored pixels
    ids = pick(trained, [(1, 2, 0)])
    unlearn(trained, ids, pool=LocalPool())
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(tiny_job, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)
    # a partition the deletion did not rewrite: the listing sweep writes its pixels again
    other = RunStore(trained).refresh().pixels[(2, 3)]
    kept = run.objects.get_bytes(other.key)
    run.objects.delete(other.key)
    assert SisaRun(trained).purge_stale() == 0
    assert run.objects.get_bytes(other.key) == kept
    assert not run.objects.exists(victim.key)  # its partition was rewritten: the old pixels are swept, not rebuilt
    assert_no_residue(trained, ids)


def _rewrite_commit(store: StoreConfig, change) -> None:
    run = RunStore(store)
    state = run.refresh()
    key = f"_log/commits/{state.version:012d}.json"
    data = json.loads(run.objects.get_bytes(key))
    change(data)
    run.objects.put_bytes(key, json.dumps(data).encode())


def test_stale_or_corrupt_pixels_are_never_used(trained, caplog):
    """A commit that names another partition's pixels (intact bytes, wrong source) and a
    corrupted pixels object: both are detected; the rows come from the Parquet."""
    run = RunStore(trained)
    state = run.refresh()

    def swap(data):
        entries = {(p["shard"], p["slice"]): p for p in data["pixels"]}
        entries[(0, 1)].update({k: v for k, v in entries[(0, 2)].items() if k not in ("shard", "slice")})

    _rewrite_commit(trained, swap)
    with caplog.at_level(logging.WARNING):
        pixels = RunStore(trained).read_pixels(0, 1)
    assert "decoded from another partition" in caplog.text
    assert pixels.matches(run.read_partition(0, 1))

    key = state.pixels[(2, 2)].key
    data = bytearray(run.objects.get_bytes(key))
    data[-1] ^= 0xFF
    run.objects.put_bytes(key, bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pixels = RunStore(trained).read_pixels(2, 2)
    assert "is corrupt" in caplog.text
    assert np.array_equal(pixels.images, decode_images(run.read_partition(2, 2), 1))


def test_a_run_without_pixels_objects_state_format_2_still_trains_and_unlearns(tmp_path, tiny_job, trained):
    """Runs created before pixels objects: readers decode their Parquet."""
    run = RunStore(trained)
    for ref in [*run.refresh().pixels.values(), run.refresh().test_pixels]:
        run.objects.delete(ref.key)

    def legacy(data):
        data["format_version"] = 2
        data.pop("pixels")
        data.pop("test_pixels")

    _rewrite_commit(trained, legacy)
    assert RunStore(trained).refresh().pixels == {}
    ids = pick(trained, [(2, 3, 1)])
    unlearn(trained, ids, pool=LocalPool())
    reference = StoreConfig(uri=str(tmp_path / "reference"))
    train(tiny_job, reference, exclude_ids=ids, pool=LocalPool())
    assert model_shas(trained) == model_shas(reference)
    assert set(RunStore(trained).refresh().pixels) == {(2, 3)}  # the rewritten partition got its pixels
