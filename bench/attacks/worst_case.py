r"""`worst_case`: per sample, the worst over a list of attacks; a sample is robust only if it survives all of
them (the RobustBench / AutoAttack convention, Croce et al., "RobustBench", NeurIPS 2021 Datasets and Benchmarks,
arXiv:2010.09670). Each member keeps its own threat model: white-box members run on the target or, without
gradients, on its twins; query-based members run on the deployed predictor. The evaluator runs the members
(bench.evaluate) and combines them per sample.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.attacks import ATTACKS, Attack
from bench.config import parse_config
from bench.errors import ConfigError, UnknownNameError


@dataclasses.dataclass
class WorstCaseConfig:
    attacks: list[Any] = dataclasses.field(default_factory=lambda: ["fgsm", "pgd"])

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ConfigError("attacks", "needs at least one attack")
        self.members = [_parse_member(spec, i) for i, spec in enumerate(self.attacks)]


def _parse_member(spec: Any, i: int) -> tuple[str, Any]:
    params = {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else None
    if params is None or not isinstance(params.get("name"), str):
        raise ConfigError(f"attacks[{i}]", f"expected an attack name or a mapping with 'name', got {spec!r}")
    name = params.pop("name")
    if name in ("none", "worst_case"):
        raise ConfigError(f"attacks[{i}]", f"'{name}' cannot be a member of worst_case")
    try:
        entry = ATTACKS.get(name)
        return name, parse_config(entry.config_cls, params)
    except UnknownNameError as exc:
        raise ConfigError(f"attacks[{i}]", str(exc)) from exc
    except ConfigError as exc:
        raise ConfigError(f"attacks[{i}].{exc.field}", str(exc)) from exc


@ATTACKS.register("worst_case", config=WorstCaseConfig, kind="composite")
class WorstCase(Attack):
    """Per-sample worst case over its member attacks (each with its own threat model)."""

    @property
    def members(self) -> list[tuple[str, Attack]]:
        return [(name, ATTACKS.get(name).obj(cfg)) for name, cfg in self.cfg.members]

    @property
    def eps(self) -> float:
        return max(attack.eps for _, attack in self.members)

    @property
    def norm(self) -> str:
        return "/".join(sorted({attack.norm for _, attack in self.members}))
