"""What a suite asks of its data, checked before any work starts: what parsing alone cannot know.

`bench list` and `bench run` (before the run directory is created) call `check_suite`, which raises
`BenchInputError` (file + field) for the first mistake it finds, so that a mistake costs one line and exit code 2
rather than a traceback or a run full of failed cells:

- each dataset of the cells is loaded once: missing or unreadable files, or splits larger than the data
  (`dataset.eval_size`; `datasets[<label>]...` when the suite lists several);
- each distinct model entry is built once per data shape and runs one forward pass on two samples of the data, on
  the meta device (shapes only: no memory, no compute), for real when the meta pass fails or the model has a
  checkpoint: a constructor that raises, a network that cannot take the data's shape or does not return
  (batch, num_classes) logits, or one larger than the machine's memory (`models[<label>]`); a checkpoint that does
  not read, is not a state dict, or does not fit the network's keys and shapes (`models[<label>].checkpoint`); a
  model a compression builds (a distillation `student`) the same way (`compressions[<label>].student`);
- each attack's eps against the data's pixel range: an L2 radius above the input's diagonal, sqrt(C * H * W)
  for pixels in [0, 1], is a unit mistake (`attacks[<label>].eps`; an Linf eps above 1 is refused when the suite
  is parsed).

Every combination that appears in a cell is checked, skipped cells included (a skip depends on the machine, a
mistake does not); excluded combinations are not. The global torch RNG is left as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.datasets import load_dataset
from bench.entries import PLURAL, Choice
from bench.errors import BenchInputError, ConfigError
from bench.matrix import Cell, build_cells
from bench.rules import matches
from bench.suite import Suite
from bench.types import DataSplits

log = logging.getLogger(__name__)

MAX_MESSAGE = 300  # characters of a third-party exception's text kept in the one-line message
MAX_KEYS = 3  # keys named per kind of mismatch before "... (N more)"


def check_suite(suite: Suite, cells: list[Cell] | None = None) -> dict[str, DataSplits]:
    """Check every dataset, model and attack of `cells` (default: all the suite's cells) against the data; raise
    BenchInputError naming the suite file and the field of the first mistake. Returns the loaded splits by
    dataset label, for the run to reuse."""
    if cells is None:
        cells = build_cells(suite)
    with torch.random.fork_rng(devices=[]):  # building models draws from the global RNG; leave it as it was
        splits: dict[str, DataSplits] = {}
        for cell in cells:
            if cell.dataset.label not in splits:
                splits[cell.dataset.label] = _load(suite, cell.dataset)
        models: set[tuple[str, ...]] = set()
        attacks: set[tuple[str, ...]] = set()
        seen: set[tuple[int, ...]] = set()
        for cell in cells:
            # what is checked depends on the dataset, model, compression and attack entries, shared by many cells
            entries = (id(cell.dataset), id(cell.model), id(cell.compression), id(cell.attack))
            if entries in seen:
                continue
            seen.add(entries)
            data = splits[cell.dataset.label]
            shape = (repr(data.in_shape), str(data.num_classes))
            key = (cell.model.name, repr(cell.model.config), *shape)
            if key not in models:
                models.add(key)
                _check_model(suite, cell.model.name, cell.model.config, data, _field(suite, "model", cell.model))
            for step in cell.compression.chain:  # a model a compression builds: a distillation student
                student = getattr(step.config, "student_name", None)
                key = (step.label, str(student), repr(getattr(step.config, "student_config", None)), *shape)
                if student and key not in models:
                    models.add(key)
                    field = f"{_field(suite, 'compression', cell.compression)}.student"
                    _check_model(suite, student, step.config.student_config, data, field)
            key = (cell.attack.label, repr(cell.attack.config), repr(data.in_shape))
            if key not in attacks:
                attacks.add(key)
                _check_attack(suite, cell.attack, data)
    return splits


# --- where a choice comes from -------------------------------------------------------------------------------------


def _field(suite: Suite, axis: str, choice: Choice) -> str:
    """The field path of an entry: `models[<label>]`, `dataset` (one dataset) or `datasets[<label>]`, or the
    include rule that added it (`include[2].model`)."""
    if choice in suite.choices(axis):
        if axis == "dataset":
            return "dataset" if len(suite.datasets) == 1 else f"datasets[{choice.label}]"
        return f"{PLURAL[axis]}[{choice.label}]"
    for i, rule in enumerate(suite.include):
        if axis in rule and matches(choice, rule[axis]):
            return f"include[{i}].{axis}"
    return f"{PLURAL.get(axis, 'datasets')}[{choice.label}]"


def _describe(exc: BaseException, first_sentence: bool = False) -> str:
    """A third-party exception in one line: its type and its text, whitespace folded, shortened."""
    text = " ".join(str(exc).split())
    if first_sentence:
        text = text.split(". ")[0].rstrip(".")
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error(suite: Suite, message: str, field: str) -> BenchInputError:
    return BenchInputError(message, file=suite.file, field=field)


# --- datasets ------------------------------------------------------------------------------------------------------


def _load(suite: Suite, choice: Choice) -> DataSplits:
    field = _field(suite, "dataset", choice)
    try:
        return load_dataset(choice.name, choice.config, suite.seed)
    except BenchInputError as exc:
        raise _error(suite, exc.detail, exc.field or field) from None
    except ConfigError as exc:  # a split that does not fit the data, known once the data is read
        raise _error(suite, str(exc), f"{field}.{exc.field}".rstrip(".")) from None
    except Exception as exc:  # a loader's own failure on this config: the suite's to fix, one line
        log.debug("dataset %s failed to load", choice.label, exc_info=True)
        raise _error(suite, f"{choice.name}: cannot load: {_describe(exc)}", field) from None


# --- models --------------------------------------------------------------------------------------------------------


def _check_model(suite: Suite, name: str, config: Any, data: DataSplits, field: str) -> None:
    """Build the model for the data's shape and run one forward pass on two samples: a large model first on the
    meta device (shapes only, no memory, no compute: it checks in milliseconds), then for real when the meta pass
    cannot tell (a model whose code needs real values) or to load a checkpoint; a small model for real."""
    from bench.models import build_model

    shape = "x".join(str(d) for d in data.in_shape)
    x = data.x_eval[:2]
    meta = _on_meta(name, config, data, x)
    if meta is not None:
        net, out = meta
        values = sum(t.numel() for t in (*net.parameters(), *net.buffers()))
        memory = _memory_bytes()
        if memory and 4 * values > memory:  # a typo in a width must not fill the machine
            raise _error(
                suite,
                f"'{name}' for {shape} inputs holds {values:.3g} parameters and buffers, "
                f"{4 * values / 1e9:.3g} GB in float32: more than this machine's memory ({memory / 1e9:.3g} GB)",
                field,
            )
        _check_logits(suite, name, out, len(x), data, field)
    checkpoint = getattr(config, "checkpoint", None)
    if meta is not None and not checkpoint:
        return
    try:
        model = build_model(name, config, data.num_classes, data.in_shape, data.mean, data.std)
    except Exception as exc:
        log.debug("model %s failed to build", name, exc_info=True)
        if checkpoint:
            bare = _build_bare(name, config, data)  # None when the network itself cannot be built
            if bare is not None:
                problem = _checkpoint_problem(Path(checkpoint), bare) or _describe(exc)
                raise _error(suite, f"{checkpoint}: {problem}", f"{field}.checkpoint") from None
        detail = exc.detail if isinstance(exc, BenchInputError) else _describe(exc)
        raise _error(suite, f"cannot build '{name}' for {shape} inputs: {detail}", field) from None
    if meta is not None:
        return  # the forward pass was checked on the meta device; the checkpoint loaded
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        log.debug("model %s failed its forward pass", name, exc_info=True)
        raise _error(suite, f"'{name}' cannot run on {shape} inputs: {_describe(exc)}", field) from None
    _check_logits(suite, name, out, len(x), data, field)


# Below this many parameter and buffer values a model is checked with a real forward pass on two samples: the
# meta device's first forward pass imports torch._dynamo (about 1.5 s here), far more than a small model costs.
META_FROM_VALUES = 2_000_000


def _on_meta(name: str, config: Any, data: DataSplits, x: torch.Tensor) -> tuple[torch.nn.Module, Any] | None:
    """(model, output) of a large model built and run on the meta device, without its checkpoint; None for a
    small model, or when either fails (the real build and forward pass then say why, or pass)."""
    with torch.device("meta"), torch.no_grad():
        net = _build_bare(name, config, data)
    if net is None or sum(t.numel() for t in (*net.parameters(), *net.buffers())) < META_FROM_VALUES:
        return None
    try:
        with torch.no_grad():
            return net, net(x.to("meta"))
    except Exception:
        return None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform
        return None


def _check_logits(suite: Suite, name: str, out: Any, batch: int, data: DataSplits, field: str) -> None:
    shape = "x".join(str(d) for d in data.in_shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, data.num_classes):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise _error(
            suite,
            f"'{name}' must return logits of shape (batch, {data.num_classes}) for {shape} inputs, got {got}",
            field,
        )


def _without_checkpoint(config: Any) -> Any:
    return dataclasses.replace(config, checkpoint=None) if getattr(config, "checkpoint", None) else config


def _build_bare(name: str, config: Any, data: DataSplits) -> torch.nn.Module | None:
    """The model without its checkpoint (what the checkpoint is matched against); None if that fails too."""
    from bench.models import build_model

    try:
        return build_model(name, _without_checkpoint(config), data.num_classes, data.in_shape, data.mean, data.std)
    except Exception:
        return None


def _checkpoint_problem(path: Path, model: torch.nn.Module) -> str | None:
    """What is wrong with the checkpoint for `model`, in words, or None when nothing is found."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if zipfile.is_zipfile(path):  # a torch.save file whose objects are not plain tensors
            found = re.search(r"GLOBAL ([\w.]+)", text)  # torch names the first class it refused
            what = f"a pickled {found.group(1)}" if found else "objects other than tensors"
            return f"not a state dict: it holds {what} (a whole model?); save model.state_dict() instead"
        # torch's advice (weights_only=False) misleads here; its first sentence says what it could not read
        reason = "" if "Weights only load failed" in text else f": {_describe(exc, first_sentence=True)}"
        return f"cannot read it as a torch file (corrupt, truncated, or not saved with torch.save){reason}"
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return f"not a state dict: it holds a {type(state).__name__}; save model.state_dict() instead"
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"not a state dict: not tensors under {_abbreviate(not_tensors)}"
    net = getattr(model, "net", model)  # build_model loads the checkpoint into the network inside the wrapper
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_abbreviate(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_abbreviate(unexpected)}")
    if wrong:
        parts.append(f"shapes differ (checkpoint vs model) for {_abbreviate(wrong)}")
    if not parts:
        return None
    return f"does not match the model's state dict: {'; '.join(parts)}"


def _abbreviate(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_KEYS])
    return f"{shown}, ... ({len(items) - MAX_KEYS} more)" if len(items) > MAX_KEYS else shown


# --- attacks -------------------------------------------------------------------------------------------------------


def _balls(config: Any, field: str) -> Iterator[tuple[str, float, str]]:
    """(field, eps, norm) of an attack config and, for a composite one, of each of its members."""
    for i, member in enumerate(getattr(config, "members", None) or []):
        if isinstance(member, tuple) and len(member) == 2:
            yield from _balls(member[1], f"{field}.attacks[{i}]")
    eps = getattr(config, "eps", None)
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        yield f"{field}.eps", float(eps), str(getattr(config, "norm", "Linf"))


def _check_attack(suite: Suite, choice: Choice, data: DataSplits) -> None:
    """An L2 eps above the input's diagonal (every pixel from 0 to 1) is a unit mistake, not a stronger attack."""
    c, h, w = data.in_shape
    diagonal = math.sqrt(c * h * w)
    for field, eps, norm in _balls(choice.config, _field(suite, "attack", choice)):
        if norm == "L2" and eps > diagonal:
            raise _error(
                suite,
                f"must be at most {diagonal:.4g} for L2 on {c}x{h}x{w} inputs (the distance from an all-black to an "
                f"all-white image, sqrt(C*H*W) with pixels in [0, 1]), got {eps:g}",
                field,
            )
