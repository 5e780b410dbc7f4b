"""Datasets: split sizes and disjointness, determinism in the seed, and exact round trips of the on-disk formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.datasets import DATASETS, load_dataset
from bench.errors import BenchInputError, ConfigError, UnknownNameError
from tests.conftest import config_error


def rows(x: torch.Tensor) -> set[bytes]:
    """Each sample as bytes, to compare splits by content."""
    return {r.numpy().tobytes() for r in x.flatten(1)}


def check_common(data, n_eval: int, n_calib: int, n_train: int) -> None:
    for x, y, n in (
        (data.x_train, data.y_train, n_train),
        (data.x_calib, data.y_calib, n_calib),
        (data.x_eval, data.y_eval, n_eval),
    ):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (n, *data.in_shape) and tuple(y.shape) == (n,)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < data.num_classes
    assert len(data.mean) == len(data.std) == data.in_shape[0]
    assert all(s >= 1e-6 for s in data.std)
    train, calib, evals = rows(data.x_train), rows(data.x_calib), rows(data.x_eval)
    assert not train & calib and not train & evals and not calib & evals


# --- digits --------------------------------------------------------------------------------------------------------


def test_digits_default_splits_cover_the_dataset_without_overlap():
    from sklearn.datasets import load_digits

    data = load_dataset("digits", None, seed=0)
    assert data.name == "digits" and data.num_classes == 10 and data.in_shape == (1, 8, 8)
    check_common(data, n_eval=300, n_calib=100, n_train=1797 - 400)
    assert data.x_train.max() == 1.0  # 16 / 16: scaled, not left at 0..16
    everything = rows(torch.as_tensor(load_digits().images.reshape(-1, 1, 8, 8) / 16.0, dtype=torch.float32))
    assert rows(data.x_train) | rows(data.x_calib) | rows(data.x_eval) == everything
    assert set(data.y_eval.tolist()) == set(range(10))
    mean = data.x_train.mean().item()
    assert data.mean == pytest.approx((mean,), rel=1e-5)


def test_digits_sizes_from_config():
    data = load_dataset("digits", {"eval_size": 50, "calibration_size": 20, "train_size": 200}, seed=3)
    check_common(data, n_eval=50, n_calib=20, n_train=200)


def test_same_seed_same_splits_other_seed_other_splits():
    a = load_dataset("digits", {}, seed=7)
    b = load_dataset("digits", {}, seed=7)
    c = load_dataset("digits", {}, seed=8)
    for name in ("x_train", "y_train", "x_calib", "y_calib", "x_eval", "y_eval"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64
    assert rows(a.x_eval) != rows(c.x_eval)
    assert a.fingerprint() != c.fingerprint()


def test_fingerprint_sees_a_single_pixel():
    data = load_dataset("digits", {}, seed=0)
    before = data.fingerprint()
    data.x_eval[0, 0, 0, 0] += 0.5
    assert data.fingerprint() != before


# --- synthetic -----------------------------------------------------------------------------------------------------


def test_synthetic_shape_and_determinism():
    params = {
        "channels": 2,
        "height": 12,
        "width": 10,
        "num_classes": 4,
        "n_samples": 500,
        "eval_size": 60,
        "calibration_size": 40,
    }
    data = load_dataset("synthetic", params, seed=1)
    assert data.in_shape == (2, 12, 10) and data.num_classes == 4
    check_common(data, n_eval=60, n_calib=40, n_train=400)
    assert set(data.y_train.tolist()) == {0, 1, 2, 3}
    assert load_dataset("synthetic", params, seed=1).fingerprint() == data.fingerprint()
    assert load_dataset("synthetic", params, seed=2).fingerprint() != data.fingerprint()


def test_synthetic_default_shape():
    data = load_dataset("synthetic", {}, seed=0)
    assert data.in_shape == (3, 32, 32) and data.num_classes == 10
    check_common(data, n_eval=300, n_calib=100, n_train=1600)


def test_synthetic_is_learnable_by_a_linear_model():
    data = load_dataset("synthetic", {"height": 16, "width": 16, "n_samples": 1000}, seed=0)
    x = data.x_train.flatten(1)
    weight = torch.zeros(x.shape[1], data.num_classes, requires_grad=True)
    bias = torch.zeros(data.num_classes, requires_grad=True)
    # Plain full-batch gradient descent: torch.optim would import torch._dynamo, which alone takes seconds.
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, data.y_train)
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
        with torch.no_grad():
            weight -= 0.5 * grad_w
            bias -= 0.5 * grad_b
    with torch.no_grad():
        accuracy = ((data.x_eval.flatten(1) @ weight + bias).argmax(1) == data.y_eval).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


# --- MNIST-format files --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: magic 0x0000 08 <ndim> (uint8 data), big-endian uint32 dims, then the raw bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_images(n: int, first_id: int) -> np.ndarray:
    """Distinct images; pixel (0, 0) holds the image's id so a loaded image can be traced back to its file."""
    rng = np.random.default_rng(first_id)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(first_id, first_id + n)
    return images


@pytest.fixture(params=[("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")], ids=["mnist", "fashion_mnist"])
def mnist_root(request, tmp_path):
    name, folder = request.param
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    files = {
        "train": (mnist_images(60, first_id=0), np.arange(60) % 10),
        "t10k": (mnist_images(30, first_id=100), (np.arange(30) * 3) % 10),
    }
    for prefix, (images, labels) in files.items():
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    assert (raw / "train-images-idx3-ubyte").read_bytes()[:4] == b"\x00\x00\x08\x03"  # 2051
    assert (raw / "train-labels-idx1-ubyte").read_bytes()[:4] == b"\x00\x00\x08\x01"  # 2049
    return name, tmp_path, files


def traced(x: torch.Tensor, y: torch.Tensor, images: np.ndarray, labels: np.ndarray, first_id: int) -> list[int]:
    """Check every loaded sample equals its source image / 255 and label; return the source indices."""
    indices = []
    for xi, yi in zip(x, y, strict=True):
        i = round(xi[0, 0, 0].item() * 255) - first_id
        assert 0 <= i < len(images)
        assert torch.equal(xi[0], torch.from_numpy(images[i]).float() / 255)
        assert yi.item() == labels[i]
        indices.append(i)
    return indices


def test_mnist_format_round_trip(mnist_root):
    name, root, files = mnist_root
    data = load_dataset(name, {"root": str(root), "eval_size": 20, "calibration_size": 10}, seed=0)
    assert data.name == name and data.in_shape == (1, 28, 28) and data.num_classes == 10
    check_common(data, n_eval=20, n_calib=10, n_train=50)
    eval_idx = traced(data.x_eval, data.y_eval, *files["t10k"], first_id=100)  # eval only from the test files
    calib_idx = traced(data.x_calib, data.y_calib, *files["train"], first_id=0)
    train_idx = traced(data.x_train, data.y_train, *files["train"], first_id=0)
    assert len(set(eval_idx)) == 20
    assert sorted(calib_idx + train_idx) == list(range(60))  # train file split between calibration and train


def test_mnist_eval_size_larger_than_test_set(mnist_root):
    name, root, _ = mnist_root
    with pytest.raises(ConfigError) as info:
        load_dataset(name, {"root": str(root), "eval_size": 31, "calibration_size": 10}, seed=0)
    assert info.value.field == "eval_size" and "30" in str(info.value)


def test_mnist_truncated_file_is_an_input_error(mnist_root):
    name, root, _ = mnist_root
    images = next(root.glob("*/raw/t10k-images-idx3-ubyte"))
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(BenchInputError, match="cannot read") as info:
        load_dataset(name, {"root": str(root), "eval_size": 5, "calibration_size": 5}, seed=0)
    assert str(images.parent) in str(info.value)


@pytest.mark.parametrize(
    "name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("cifar10", "cifar-10-batches-py")]
)
def test_missing_files_without_download(tmp_path, name, folder):
    root = tmp_path / "nowhere"
    with pytest.raises(BenchInputError) as info:
        load_dataset(name, {"root": str(root)}, seed=0)
    message = str(info.value)
    assert str(root / folder) in message and "download: true" in message
    assert "\n" not in message


# --- CIFAR-10 ------------------------------------------------------------------------------------------------------


def cifar_batch(n: int, first_id: int) -> dict:
    """A batch in the official layout; byte 0 of each row holds the image's id, pixel (c=2, h=5, w=7) is 200 + c."""
    rng = np.random.default_rng(first_id)
    data = rng.integers(0, 100, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(first_id, first_id + n)
    data[:, 2 * 1024 + 5 * 32 + 7] = 202  # channel-major: red plane, then green, then blue
    data[:, 1 * 1024 + 5 * 32 + 7] = 201
    labels = [(first_id + i) % 10 for i in range(n)]
    return {
        b"batch_label": b"test",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"{first_id + i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{b}": cifar_batch(4, first_id=4 * (b - 1)) for b in range(1, 6)}
    batches["test_batch"] = cifar_batch(6, first_id=100)
    for file, batch in batches.items():
        with (folder / file).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    return tmp_path, batches


def test_cifar10_round_trip(cifar_root):
    root, batches = cifar_root
    data = load_dataset("cifar10", {"root": str(root), "eval_size": 5, "calibration_size": 3}, seed=0)
    assert data.in_shape == (3, 32, 32) and data.num_classes == 10
    check_common(data, n_eval=5, n_calib=3, n_train=17)
    train_rows = np.concatenate([batches[f"data_batch_{b}"][b"data"] for b in range(1, 6)])
    test_rows = batches["test_batch"][b"data"]
    for x, y, source, first_id in (
        (data.x_train, data.y_train, train_rows, 0),
        (data.x_calib, data.y_calib, train_rows, 0),
        (data.x_eval, data.y_eval, test_rows, 100),
    ):
        for xi, yi in zip(x, y, strict=True):
            image_id = round(xi[0, 0, 0].item() * 255)
            row = source[image_id - first_id]
            assert xi[2, 5, 7].item() == pytest.approx(202 / 255)
            assert xi[1, 5, 7].item() == pytest.approx(201 / 255)
            assert xi[0, 5, 7].item() == pytest.approx(row[5 * 32 + 7] / 255)
            assert xi[1, 9, 3].item() == pytest.approx(row[1024 + 9 * 32 + 3] / 255)
            assert yi.item() == image_id % 10
    eval_ids = {round(v * 255) for v in data.x_eval[:, 0, 0, 0].tolist()}
    assert eval_ids <= set(range(100, 106))


def test_cifar10_one_batch_missing(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(BenchInputError, match="data_batch_3"):
        load_dataset("cifar10", {"root": str(root)}, seed=0)


# --- configs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, field",
    [
        ({"eval_size": 0}, "eval_size"),
        ({"calibration_size": -1}, "calibration_size"),
        ({"train_size": 0}, "train_size"),
        ({"eval_size": "many"}, "eval_size"),
    ],
)
def test_bad_values_name_the_field(params, field):
    assert config_error(DATASETS.get("digits").config_cls, params).field == field


@pytest.mark.parametrize(
    "params, field",
    [
        ({"eval_size": 5000}, "eval_size"),
        ({"eval_size": 1000, "calibration_size": 797}, "calibration_size"),
        ({"train_size": 1500}, "train_size"),
    ],
)
def test_splits_larger_than_the_data(params, field):
    with pytest.raises(ConfigError) as info:
        load_dataset("digits", params, seed=0)
    assert info.value.field == field and "1797" in str(info.value)


def test_synthetic_sizes_checked_when_parsed():
    error = config_error(DATASETS.get("synthetic").config_cls, {"n_samples": 300, "eval_size": 300})
    assert error.field == "eval_size" and "300 samples" in str(error)


def test_registry_and_lookup():
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS.names())
    with pytest.raises(UnknownNameError):
        load_dataset("imagenet-1k-please", None, seed=0)
    with pytest.raises(TypeError):
        load_dataset("digits", DATASETS.get("synthetic").config_cls(), seed=0)
