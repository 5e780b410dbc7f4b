"""Which model an attack crafts on, decided by what the attack and the deployed artifact declare.

- a `gradient` attack on a predictor with input gradients: on the predictor's own module (`white-box`);
- a `gradient` attack on one without (ONNX Runtime, INT8 kernels): on the float eager twin and, for an INT8
  lowering, also on a straight-through fake-quant twin, keeping the per-sample worst (`transfer`), never a silent
  fallback to a number that looks white-box;
- a `query` attack: on the deployed predictor itself, forward calls only (`black-box`);
- a `composite` attack (worst_case): each of its members under its own threat model.
Adversarial inputs are always scored on the deployed artifact (bench.evaluate).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from bench.attacks import Attack, attack_kind
from bench.fake_quant import straight_through_twin
from bench.types import Lowering


@dataclasses.dataclass
class AttackMember:
    """One attack to run on a cell: its name in the record, the attack, and its declared kind."""

    name: str
    attack: Attack
    kind: str


def attack_members(attack: Attack, name: str) -> list[AttackMember]:
    """The attacks a cell runs: the attack itself, or the members of a composite one (each with its kind)."""
    kind = attack_kind(attack)  # one of ATTACK_KINDS: checked when the attack registered
    if kind == "composite":
        return [m for member_name, member in attack.members for m in attack_members(member, member_name)]
    return [AttackMember(name, attack, kind)]


def frozen(model: nn.Module, device: str) -> nn.Module:
    """The model in eval mode on `device` with parameter gradients off: attacks need input gradients only."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ChannelsLast(nn.Module):
    """A copy of a convolutional model whose weights and inputs are in the channels-last memory layout: the same
    function (the same weights; floating-point rounding aside), whose convolutions run about 1.2x faster on CPU
    (oneDNN); input gradients come back in the caller's layout."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        import copy

        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def fast_layout(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """`model` in the channels-last layout (ChannelsLast) where it has 2-D convolutions, takes 4-D inputs and
    computes the same logits on `example` that way (a model that `view`s its activations may refuse the layout);
    otherwise `model` itself. For crafting only: adversarial inputs are always scored on the deployed predictor."""
    if example.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model
    try:
        fast = ChannelsLast(model)
        with torch.no_grad():
            same = torch.allclose(fast(example), model(example), rtol=1e-4, atol=1e-4)
    except Exception:  # the model's own code does not take the layout: craft on it as it is
        return model
    return fast if same else model


def crafting_sources(
    member: AttackMember,
    predictor: Any,
    float_twin: nn.Module,
    lowering: Lowering | None,
    calib_x: torch.Tensor,
    device: str,
) -> tuple[str, list[tuple[str, Any]]]:
    """(threat model, [(surrogate name, model to craft on)]) for one attack on one deployed predictor."""
    if member.kind == "query":
        return "black-box", [("deployed predictor (queries only)", predictor)]
    example = calib_x[:8].to(device)
    if predictor.module is not None:
        return "white-box", [("deployed model", fast_layout(frozen(predictor.module, device), example))]
    sources = [("float eager twin", fast_layout(frozen(float_twin, device), example))]
    if lowering is not None and lowering.kind == "int8":
        twin = frozen(straight_through_twin(float_twin, calib_x), device)
        sources.append(("straight-through fake-quant twin", fast_layout(twin, example)))
    return "transfer", sources
