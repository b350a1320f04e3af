from pathlib import Path

import numpy as np
import pytest

from raysisa.config import DataConfig
from raysisa.data import decode_images, load_source
from raysisa.data.torchvision_sources import TEST_ID_OFFSET
from raysisa.errors import ConfigError, DataError
from tests import fakes

SHARED_CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"


def test_digits_is_real_and_has_stable_ids():
    data = load_source(DataConfig(source="digits"))
    assert data.train.num_rows + data.test.num_rows == 1797
    assert data.info.num_classes == 10 and data.info.channels == 1
    ids = np.concatenate([data.train["id"].to_numpy(), data.test["id"].to_numpy()])
    assert sorted(ids.tolist()) == list(range(1797))
    pixels = decode_images(data.train.slice(0, 5), 1)
    from sklearn.datasets import load_digits

    raw = load_digits().images[data.train["id"].to_numpy()[:5]]  # 0..16 intensities, stored as 0..255 grey
    assert pixels.dtype == np.uint8 and np.array_equal(pixels[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))
    again = load_source(DataConfig(source="digits"))
    assert again.train.equals(data.train)


def test_digits_pixels_match_sklearn_exactly():
    from sklearn.datasets import load_digits

    data = load_source(DataConfig(source="digits"))
    first = data.train.slice(0, 3)
    pixels = decode_images(first, 1)[..., 0]
    raw = load_digits().images[first["id"].to_numpy()]
    assert np.array_equal(pixels, np.rint(raw * 255 / 16).astype(np.uint8))


def test_limit_subsamples_with_a_seed():
    a = load_source(DataConfig(source="digits", limit=100))
    b = load_source(DataConfig(source="digits", limit=100))
    c = load_source(DataConfig(source="digits", limit=100, split_seed=5))
    assert a.train.num_rows == 100 and a.train.equals(b.train) and not a.train.equals(c.train)


def test_parquet_folder_in_the_cifar_layout(tmp_path):
    fakes.write_cifar_like_parquet(tmp_path)
    data = load_source(DataConfig(source="parquet", uri=str(tmp_path)))
    assert (data.train.num_rows, data.test.num_rows) == (60, 20)
    assert data.info.channels == 3 and (data.info.height, data.info.width) == (32, 32)
    assert data.info.label_names == ("a", "b", "c", "d") and data.info.num_classes == 4
    assert decode_images(data.train.slice(0, 2), 3).shape == (2, 32, 32, 3)


def test_parquet_single_file_of_grey_pngs_gets_a_holdout(tmp_path):
    px = fakes.images(50, 0, shape=(8, 8))
    fakes.write_image_parquet(tmp_path / "all.parquet", np.arange(100, 150), np.arange(50) % 3, [fakes.png(p) for p in px])
    data = load_source(DataConfig(source="parquet", uri=str(tmp_path / "all.parquet"), test_fraction=0.2))
    assert (data.train.num_rows, data.test.num_rows) == (40, 10)
    assert data.info.channels == 1 and data.info.num_classes == 3
    # PNG is lossless: the decoded pixels are the ones written
    row = data.train.slice(0, 1)
    assert np.array_equal(decode_images(row, 1)[0, ..., 0], px[row["id"][0].as_py() - 100])


def test_parquet_folders_of_files(tmp_path):
    for i in range(2):
        px = fakes.images(5, i)
        fakes.write_image_parquet(tmp_path / "train" / f"part-{i}.parquet", np.arange(5) + 5 * i, np.zeros(5), [fakes.png(p) for p in px])
    fakes.write_image_parquet(tmp_path / "test" / "part-0.parquet", [0, 1], [0, 0], [fakes.png(p) for p in fakes.images(2, 9)])
    data = load_source(DataConfig(source="parquet", uri=str(tmp_path)))
    assert sorted(data.train["id"].to_pylist()) == list(range(10)) and data.test.num_rows == 2


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data/cifar10 not present")
def test_real_cifar10_parquet_from_shared():
    data = load_source(DataConfig(source="parquet", uri=str(SHARED_CIFAR), limit=50, test_limit=10))
    assert data.info.num_classes == 10 and data.info.label_names[0] == "airplane"
    assert data.train.num_rows == 50 and decode_images(data.train.slice(0, 4), 3).shape == (4, 32, 32, 3)


def test_unknown_source_names_the_valid_ones():
    with pytest.raises(ConfigError, match="valid data sources: cifar10, cifar100, digits, parquet, svhn"):
        DataConfig(source="mnist")
    with pytest.raises(DataError, match="unknown data source 'mnist'"):
        load_source(DataConfig.model_construct(source="mnist"))


def test_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2], "label": [0, 1]}), tmp_path / "train.parquet")
    with pytest.raises(DataError, match="missing column\\(s\\) image"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path)))


def test_duplicate_ids(tmp_path):
    blobs = [fakes.png(p) for p in fakes.images(3, 0)]
    fakes.write_image_parquet(tmp_path / "train.parquet", [4, 5, 4], [0, 1, 0], blobs)
    with pytest.raises(DataError, match="1 duplicate id\\(s\\), e.g. 4"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path)))


def test_duplicate_ids_across_files(tmp_path):
    for i in range(2):
        fakes.write_image_parquet(tmp_path / "train" / f"p{i}.parquet", [1, 2], [0, 0], [fakes.png(p) for p in fakes.images(2, i)])
    with pytest.raises(DataError, match="duplicate id"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path)))


def test_unreadable_file(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet file .*train.parquet"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path)))


def test_undecodable_image_names_the_sample(tmp_path):
    fakes.write_image_parquet(tmp_path / "train.parquet", [7, 8], [0, 1], [b"garbage", b"garbage"])
    with pytest.raises(DataError, match="sample id [78]: image bytes are not a readable PNG/JPEG"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path)))


def test_missing_uri_and_negative_ids(tmp_path):
    with pytest.raises(DataError, match="needs data.uri"):
        load_source(DataConfig(source="parquet"))
    with pytest.raises(DataError, match="does not exist"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path / "nope")))
    fakes.write_image_parquet(tmp_path / "train.parquet", [-1, 2], [0, 1], [fakes.png(p) for p in fakes.images(2, 0)])
    with pytest.raises(DataError, match="non-negative"):
        load_source(DataConfig(source="parquet", uri=str(tmp_path)))


@pytest.mark.parametrize(
    ("source", "writer", "n_train", "n_test", "classes"),
    [("cifar10", fakes.write_cifar10, 30, 8, 10), ("cifar100", fakes.write_cifar100, 12, 6, 100), ("svhn", fakes.write_svhn, 10, 5, 10)],
)
def test_torchvision_formats(tmp_path, source, writer, n_train, n_test, classes):
    writer(tmp_path)
    config = DataConfig(source=source, data_dir=str(tmp_path), verify_checksums=False)
    data = load_source(config)
    assert (data.train.num_rows, data.test.num_rows) == (n_train, n_test)
    assert data.info.num_classes == classes and data.info.channels == 3
    assert data.train["id"].to_pylist() == list(range(n_train))
    assert data.test["id"][0].as_py() == TEST_ID_OFFSET
    # pixels survive the PNG re-encoding bit for bit
    from torchvision import datasets

    assert decode_images(data.train.slice(0, 1), 3).shape == (1, 32, 32, 3)
    if source == "svhn":
        labels = data.train["label"].to_numpy()
        assert labels.min() == 0 and labels.max() == 9  # torchvision maps SVHN's 10 to 0
    if source == "cifar10":
        ref = datasets.CIFAR10  # noqa: F841 - the real class is what parsed the files


def test_torchvision_checksums_are_verified_by_default(tmp_path):
    fakes.write_cifar10(tmp_path)
    with pytest.raises(DataError, match="not found or corrupted"):
        load_source(DataConfig(source="cifar10", data_dir=str(tmp_path)))


def test_torchvision_missing_files(tmp_path):
    with pytest.raises(DataError, match="needs data.data_dir"):
        load_source(DataConfig(source="svhn"))
    with pytest.raises(DataError, match="data.download: true"):
        load_source(DataConfig(source="cifar10", data_dir=str(tmp_path), verify_checksums=False))
