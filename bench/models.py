"""The model axis: the MODELS registry, `build_model`, and `model_fingerprint` (what keys a model's cache entries).

Every model the harness builds takes pixels in [0, 1] (attacks work in pixel space, eps is a pixel distance).
The built-in and torchvision models, trained by the harness, get the dataset's mean/std applied *inside* the
model by `Normalize` (the RobustBench convention); a user's own model and any model loaded from a checkpoint get
the pixels as they are, unless the suite says `normalize: true`: the harness never adds a layer a user did not
ask for. Definitions live in the top-level `models/` folder (installed as `bench_models`); besides registered
names, any torchvision classification model name and a user's `package.module:function` resolve here.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import BenchInputError, ConfigError
from bench.filehash import file_sha256
from bench.registry import Entry, Registry
from bench.userimport import import_object, resolve_path, source_sha256

log = logging.getLogger(__name__)

MODELS: Registry = Registry("model", package="bench_models")  # the top-level models/ folder


@dataclasses.dataclass
class ModelConfig:
    """Options every model has. `checkpoint` is a state-dict file loaded into the network after it is built (a
    relative path is relative to the suite file's directory); `normalize` puts the dataset's mean/std inside
    the model (default: on, but off for a checkpoint, whose weights were trained on whatever the user fed them)."""

    checkpoint: str | None = None
    normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.checkpoint:
            path = resolve_path(self.checkpoint)
            # checked when the suite is loaded: a missing file is the user's mistake (exit 2), not a failed cell
            if not path.is_file():
                raise ConfigError("checkpoint", f"file not found: {path}")
            self.checkpoint = str(path)
        if self.normalize is None:
            self.normalize = self.default_normalize()

    def default_normalize(self) -> bool:
        return not self.checkpoint


@dataclasses.dataclass
class ExternalModelConfig(ModelConfig):
    """A torchvision model or a user's `package.module:function`; `kwargs` go to the constructor."""

    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class UserModelConfig(ExternalModelConfig):
    """A user's own `package.module:function`: normalisation is off unless asked for, the model gets [0, 1]
    pixels and does its own preprocessing, as it does outside the harness."""

    def default_normalize(self) -> bool:
        return False


class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model so that it takes [0, 1] pixels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """`net(normalize(x))`; `net` is the registered network, kept as a child so pruning sees its layers."""

    def __init__(self, net: nn.Module, normalize: nn.Module | None) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_model(
    name: str,
    cfg: Any,
    num_classes: int,
    in_shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> nn.Module:
    """Build the model `name` with its parsed config, normalisation inside, in eval mode on the CPU."""
    entry = MODELS.get(name)
    kwargs = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("checkpoint", "normalize", "kwargs")}
    kwargs.update(getattr(cfg, "kwargs", {}) or {})
    net = entry.obj(num_classes, in_shape, **kwargs)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise BenchInputError(f"checkpoint file not found: {path}", field=f"models[{name}].checkpoint")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    model = Classifier(net, Normalize(mean, std) if cfg.normalize else None)
    return model.eval()


def model_fingerprint(name: str, cfg: Any) -> dict[str, str]:
    """The content hashes a model's results depend on beyond its parameters: its checkpoint file's sha256 and
    the sha256 of its source (the defining module and the modules of the user's package loaded with it; None
    for the harness's own and installed libraries' code, which the harness and library versions key)."""
    out = {}
    if cfg.checkpoint:
        out["checkpoint_sha256"] = file_sha256(Path(cfg.checkpoint))
    source = source_sha256(MODELS.get(name).obj)
    if source:
        out["source_sha256"] = source
    return out


def model_files(suite: Any) -> dict[str, dict[str, str]]:
    """Each model of a suite's checkpoint and source hashes (`model_fingerprint`), by label."""
    return {c.label: model_fingerprint(c.name, c.config) for c in suite.axes["model"]}


AUX_LOGITS_MODELS = ("googlenet", "inception_v3")


def _torchvision_entry(name: str) -> Entry | None:
    """Any torchvision classification model by name, adapted to the data's channels (weights: none, offline)."""
    import torchvision

    tv_name = name.removeprefix("torchvision.")
    if tv_name not in torchvision.models.list_models(module=torchvision.models):
        return None

    def factory(num_classes: int, in_shape: tuple[int, int, int], **kwargs: Any) -> nn.Module:
        if tv_name in AUX_LOGITS_MODELS:  # in training they return a tuple with the auxiliary heads' logits
            kwargs.setdefault("aux_logits", False)
            kwargs.setdefault("init_weights", True)  # torchvision's reference initialisation, said explicitly
        net = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)
        if in_shape[0] != 3:  # torchvision stems expect RGB: repeat grey channels rather than retrain the stem
            return nn.Sequential(_RepeatChannels(3 // in_shape[0] if 3 % in_shape[0] == 0 else 3), net)
        return net

    return Entry(name, factory, ExternalModelConfig, {"source": "torchvision"}, f"torchvision.models.{tv_name}")


class _RepeatChannels(nn.Module):
    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.times, 1, 1)[:, :3]


def _user_function_entry(name: str) -> Entry | None:
    """`package.module:function`, a user's own factory with the signature (num_classes, in_shape, **kwargs).

    The module comes from the installed packages or from the suite file's directory (bench.userimport).
    """
    if ":" not in name:
        return None
    fn = import_object(name)
    return Entry(name, fn, UserModelConfig, {"source": "user"}, fn.__doc__ or "")


MODELS.add_fallback(_user_function_entry)
MODELS.add_fallback(_torchvision_entry)
