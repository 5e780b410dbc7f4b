"""Datasets: each loader turns a typed config and a seed into fixed train / calibration / eval splits.

Images are float32 NCHW in [0, 1]; models normalise inside their forward with the `mean` / `std` recorded here, so
every compression and runtime sees the same raw inputs. Splits are disjoint and drawn from a seeded permutation,
so the same seed gives the same splits (and the same `fingerprint`) on every machine.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import check_range, parse_config
from bench.errors import BenchInputError, ConfigError
from bench.registry import Registry
from bench.types import DataSplits
from bench.userimport import resolve_path

log = logging.getLogger(__name__)

DATASETS: Registry = Registry("dataset")
DEFAULT_DATASET = "digits"  # bundled with scikit-learn: runs anywhere, no files, no download
DIGITS_SAMPLES = 1797
MAX_SYNTHETIC_VALUES = 2**28  # values (samples x pixels) the synthetic dataset may hold: 1 GiB of float32

Pool = tuple[torch.Tensor, torch.Tensor]  # (images, labels) of one official set


# --- configs -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SplitConfig:
    """Split sizes shared by every dataset; `train_size: null` takes every sample left after the other splits."""

    eval_size: int = 300
    calibration_size: int = 100
    train_size: int | None = None

    def __post_init__(self) -> None:
        check_range("eval_size", self.eval_size, lo=1)
        check_range("calibration_size", self.calibration_size, lo=1)
        check_range("train_size", self.train_size, lo=1)


@dataclasses.dataclass
class DigitsConfig(SplitConfig):
    """scikit-learn's bundled 8x8 digits (1,797 images)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # The sample count is known here, so a split that cannot fit fails when the suite is parsed.
        requests = [("eval_size", self.eval_size), ("calibration_size", self.calibration_size)]
        _split_counts(DIGITS_SAMPLES, "the digits dataset", [*requests, ("train_size", self.train_size)])


@dataclasses.dataclass
class SyntheticConfig(SplitConfig):
    """Class templates plus noise, generated from the seed; no files needed."""

    channels: int = 3
    height: int = 32
    width: int = 32
    num_classes: int = 10
    n_samples: int = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("channels", self.channels, lo=1)
        check_range("height", self.height, lo=1)
        check_range("width", self.width, lo=1)
        check_range("num_classes", self.num_classes, lo=2)
        check_range("n_samples", self.n_samples, lo=3)
        if self.num_classes > self.n_samples:
            raise ConfigError("num_classes", f"must be at most n_samples ({self.n_samples}), got {self.num_classes}")
        values = self.n_samples * self.channels * self.height * self.width
        if values > MAX_SYNTHETIC_VALUES:  # a typo in a size must fail here, not fill the machine's memory
            raise ConfigError(
                "n_samples",
                f"n_samples x channels x height x width = {values:.3g} values, more than the {MAX_SYNTHETIC_VALUES} "
                f"({4 * MAX_SYNTHETIC_VALUES / 2**30:g} GiB of float32) the synthetic dataset generates",
            )
        # The sample count is known here, so a split that cannot fit fails when the suite is parsed.
        _split_counts(
            self.n_samples,
            "the synthetic dataset",
            [
                ("eval_size", self.eval_size),
                ("calibration_size", self.calibration_size),
                ("train_size", self.train_size),
            ],
        )


@dataclasses.dataclass
class VisionConfig(SplitConfig):
    """A torchvision-format dataset under `root`; eval comes from the official test set, the rest from train."""

    eval_size: int = 1000
    calibration_size: int = 200
    root: str = "data"
    download: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.root:
            raise ConfigError("root", "must be a non-empty path")
        # relative to the suite's directory, as a checkpoint is: a suite reads the same data from any directory
        self.root = str(resolve_path(self.root))


# --- splitting -----------------------------------------------------------------------------------------------------


def _split_counts(total: int, source: str, requests: list[tuple[str, int | None]]) -> list[int]:
    """Sizes of consecutive splits of `total` samples; `None` takes what is left. Every split gets at least 1."""
    counts: list[int] = []
    used = 0
    for i, (field, size) in enumerate(requests):
        later = len(requests) - i - 1  # each later split needs at least one sample
        available = total - used - later
        if size is None:
            size = available
        if size < 1 or size > available:
            names = " + ".join(f for f, _ in requests)
            raise ConfigError(
                field,
                f"{field}={size} does not fit: {source} has {total} samples "
                f"({names} must fit in {total}, with at least 1 sample per split)",
            )
        counts.append(size)
        used += size
    return counts


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _to_float(images: torch.Tensor | np.ndarray, scale: float) -> torch.Tensor:
    return (torch.as_tensor(images).to(torch.float32) / scale).contiguous()


def _finish(name: str, num_classes: int, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> DataSplits:
    """Pack the splits and record the per-channel statistics of the train split."""
    x_train = splits["train"][0]
    _, channels, height, width = x_train.shape
    mean = x_train.mean(dim=(0, 2, 3))
    # std over a single sample is nan (correction=1); use the population std so tiny splits still work.
    std = x_train.std(dim=(0, 2, 3), correction=0).clamp_min(1e-6)
    data = DataSplits(
        name=name,
        x_train=x_train,
        y_train=splits["train"][1].to(torch.int64),
        x_calib=splits["calib"][0],
        y_calib=splits["calib"][1].to(torch.int64),
        x_eval=splits["eval"][0],
        y_eval=splits["eval"][1].to(torch.int64),
        num_classes=num_classes,
        in_shape=(channels, height, width),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
    log.info(
        "dataset %s: %d train, %d calib, %d eval, shape %s",
        name,
        len(data.y_train),
        len(data.y_calib),
        len(data.y_eval),
        data.in_shape,
    )
    return data


def _split_one_pool(
    name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: SplitConfig, seed: int, source: str
) -> DataSplits:
    """eval, calibration and train drawn without overlap from one pool of samples."""
    n_eval, n_calib, n_train = _split_counts(
        len(y),
        source,
        [("eval_size", cfg.eval_size), ("calibration_size", cfg.calibration_size), ("train_size", cfg.train_size)],
    )
    order = torch.randperm(len(y), generator=_generator(seed))
    parts = torch.split(order[: n_eval + n_calib + n_train], [n_eval, n_calib, n_train])
    splits = {key: (x[idx], y[idx]) for key, idx in zip(("eval", "calib", "train"), parts, strict=True)}
    return _finish(name, num_classes, splits)


def _split_train_test(name: str, train: Pool, test: Pool, num_classes: int, cfg: SplitConfig, seed: int) -> DataSplits:
    """eval from the official test set; calibration and train, disjoint, from the official train set."""
    (x_tr, y_tr), (x_te, y_te) = train, test
    (n_eval,) = _split_counts(len(y_te), f"the {name} test set", [("eval_size", cfg.eval_size)])
    n_calib, n_train = _split_counts(
        len(y_tr), f"the {name} train set", [("calibration_size", cfg.calibration_size), ("train_size", cfg.train_size)]
    )
    gen = _generator(seed)
    eval_idx = torch.randperm(len(y_te), generator=gen)[:n_eval]
    calib_idx, train_idx = torch.split(
        torch.randperm(len(y_tr), generator=gen)[: n_calib + n_train], [n_calib, n_train]
    )
    return _finish(
        name,
        num_classes,
        {
            "eval": (x_te[eval_idx], y_te[eval_idx]),
            "calib": (x_tr[calib_idx], y_tr[calib_idx]),
            "train": (x_tr[train_idx], y_tr[train_idx]),
        },
    )


# --- loaders -------------------------------------------------------------------------------------------------------


@DATASETS.register("digits", config=DigitsConfig)
def load_digits(cfg: DigitsConfig, seed: int) -> DataSplits:
    """scikit-learn's 8x8 handwritten digits, 1x8x8, 10 classes; ships with scikit-learn, so always available."""
    images, target = _digits_arrays()
    x = _to_float(images.reshape(-1, 1, 8, 8), 16.0)  # pixel values are 0..16
    y = torch.as_tensor(target, dtype=torch.int64)
    return _split_one_pool("digits", x, y, 10, cfg, seed, "the digits dataset")


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the digits: read from scikit-learn's data file as its load_digits reads it, without
    importing sklearn (seconds of scipy imports, paid by every `bench list`); through sklearn if the file moved."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


@DATASETS.register("synthetic", config=SyntheticConfig)
def load_synthetic(cfg: SyntheticConfig, seed: int) -> DataSplits:
    """Per-class smooth random templates plus per-sample noise; any shape, learnable, deterministic in the seed."""
    gen = _generator(seed)
    c, h, w, k = cfg.channels, cfg.height, cfg.width, cfg.num_classes

    def smooth(n: int) -> torch.Tensor:
        # Upsampled coarse noise: spatially smooth, so convolutions and linear models both have signal to use.
        coarse = torch.rand(n, c, min(4, h), min(4, w), generator=gen)
        return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    templates = 0.2 + 0.6 * smooth(k)
    y = torch.arange(cfg.n_samples) % k  # balanced classes; the split permutation shuffles them
    # Smooth noise of about the templates' own scale keeps it from being trivial: a small CNN reaches ~95%, a
    # linear model ~65-95% depending on the shape, which leaves room to see what compression costs.
    noise = 0.8 * (smooth(cfg.n_samples) - 0.5) + 0.2 * torch.randn(cfg.n_samples, c, h, w, generator=gen)
    x = (templates[y] + noise).clamp_(0.0, 1.0)
    return _split_one_pool("synthetic", x, y, k, cfg, seed, "the synthetic dataset")


def _load_torchvision_mnist(name: str, dataset_cls: Any, cfg: VisionConfig) -> tuple[Pool, Pool]:
    """(x, y) of the official train and test sets of an MNIST-format torchvision dataset, read from `cfg.root`."""
    raw = Path(cfg.root) / dataset_cls.__name__ / "raw"
    pools: list[Pool] = []
    for train in (True, False):
        try:
            ds = dataset_cls(cfg.root, train=train, download=cfg.download)
        except (RuntimeError, AssertionError, TypeError, ValueError, IndexError, OSError) as exc:
            # torchvision raises RuntimeError for missing files, a failed download and a truncated file alike, and
            # asserts on bad headers: tell them apart by what is on disk.
            files = [Path(url).stem for url, _ in dataset_cls.resources]  # "train-images-idx3-ubyte.gz" -> raw name
            missing = [f for f in files if not (raw / f).is_file()]
            if missing and cfg.download:
                raise BenchInputError(
                    f"{name}: could not download into '{raw}' ({exc}); "
                    f"put the {dataset_cls.__name__} files there instead"
                ) from exc
            if missing:
                raise BenchInputError(
                    f"{name}: no data under '{raw}' (set dataset.download: true, "
                    f"or put the {dataset_cls.__name__} files there; missing {', '.join(missing)})"
                ) from exc
            raise BenchInputError(f"{name}: cannot read the files under '{raw}': {exc or type(exc).__name__}") from exc
        x = _to_float(ds.data.unsqueeze(1), 255.0)  # (N, 28, 28) uint8 -> (N, 1, 28, 28) float
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        if len(x) != len(y):
            raise BenchInputError(f"{name}: {len(x)} images but {len(y)} labels under '{raw}'")
        pools.append((x, y))
    return pools[0], pools[1]


@DATASETS.register("mnist", config=VisionConfig)
def load_mnist(cfg: VisionConfig, seed: int) -> DataSplits:
    """MNIST handwritten digits, 1x28x28, 10 classes, read from `root/MNIST/raw`."""
    from torchvision.datasets import MNIST  # torchvision is slow to import; only the file-based loaders need it

    train, test = _load_torchvision_mnist("mnist", MNIST, cfg)
    return _split_train_test("mnist", train, test, 10, cfg, seed)


@DATASETS.register("fashion_mnist", config=VisionConfig)
def load_fashion_mnist(cfg: VisionConfig, seed: int) -> DataSplits:
    """Fashion-MNIST clothing images, 1x28x28, 10 classes, read from `root/FashionMNIST/raw`."""
    from torchvision.datasets import FashionMNIST

    train, test = _load_torchvision_mnist("fashion_mnist", FashionMNIST, cfg)
    return _split_train_test("fashion_mnist", train, test, 10, cfg, seed)


CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


def _read_cifar_batch(path: Path) -> Pool:
    """One batch of the official python format: a pickle with b"data" (uint8 N x 3072, channel-major) and b"labels"."""
    try:
        with path.open("rb") as f:
            # The official format is a pickle; only local files the user placed (or torchvision fetched) are read.
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise BenchInputError(f"cifar10: cannot read '{path}': {exc or type(exc).__name__}") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise BenchInputError(
            f"cifar10: '{path}' holds data of shape {data.shape} and {len(labels)} labels; "
            "expected N x 3072 and N labels"
        )
    return _to_float(data.reshape(-1, 3, 32, 32), 255.0), torch.from_numpy(labels)


@DATASETS.register("cifar10", config=VisionConfig)
def load_cifar10(cfg: VisionConfig, seed: int) -> DataSplits:
    """CIFAR-10, 3x32x32, 10 classes, read from `root/cifar-10-batches-py` (the official python batches)."""
    folder = Path(cfg.root) / CIFAR10_DIR
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and cfg.download:
        # Only when files are missing: torchvision checks md5 sums, and would re-download over files that fail them.
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(cfg.root, train=True, download=True)
        except (RuntimeError, OSError) as exc:
            raise BenchInputError(
                f"cifar10: could not download into '{folder}' ({exc}); put the CIFAR-10 python batches there instead"
            ) from exc
        missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise BenchInputError(
            f"cifar10: no data under '{folder}' (set dataset.download: true, or put the CIFAR-10 "
            f"python batches there; missing {', '.join(missing)})"
        )
    batches = [_read_cifar_batch(folder / n) for n in CIFAR10_TRAIN_BATCHES]
    train = (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    test = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    for labels in (train[1], test[1]):
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise BenchInputError(
                f"cifar10: labels under '{folder}' must be 0..9, found {labels.min().item()}..{labels.max().item()}"
            )
    return _split_train_test("cifar10", train, test, 10, cfg, seed)


def load_dataset(name: str, cfg: Any = None, seed: int = 0) -> DataSplits:
    """Load the registered dataset `name`; `cfg` is its config dataclass, a mapping of its parameters, or None."""
    entry = DATASETS.get(name)
    if cfg is None:
        cfg = entry.config_cls()
    elif isinstance(cfg, dict):
        cfg = parse_config(entry.config_cls, cfg)
    elif not isinstance(cfg, entry.config_cls):
        raise TypeError(f"dataset '{name}' takes a {entry.config_cls.__name__}, got {type(cfg).__name__}")
    return entry.obj(cfg, seed)
