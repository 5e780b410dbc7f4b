"""`prune`: structured channel pruning that physically removes channels (Torch-Pruning, Fang et al., "DepGraph:
Towards Any Structural Pruning", CVPR 2023, arXiv:2301.12900).

Channels are ranked by the L1 or L2 norm of their weights, or by first-order Taylor importance (|w * dL/dw|,
Molchanov et al. CVPR 2019, data-aware: gradients of the loss on a calibration batch); coupled layers (conv -> bn
-> residual add -> next conv, concatenations, squeeze-and-excitation gates, ConvNeXt's LayerNorm and layer scale)
are pruned together through Torch-Pruning's dependency graph, and the classifier keeps its outputs. The result is
a smaller dense model, so latency drops on dense kernels, unlike masks.

Channel counts: with `round_to: 8` (the default) every pruned layer keeps a multiple of 8 channels (the kept
count is rounded down, so at least `ratio` of the channels go), because CPU kernels work in blocks of channels:
ONNX Runtime runs a convolution in its blocked layout (8 channels with AVX2, 16 with AVX-512) only when its
channel counts are multiples, and falls back to much slower kernels otherwise (docs/zoo.md: MobileNetV3-Small and
EfficientNet-B0 pruned at 0.3 run in about 0.55x the unpruned time with multiples of 8, and about 3x slower than
unpruned with exact counts). A layer too narrow to keep one multiple (fewer than 8 channels left at this ratio)
is pruned to the exact ratio instead. In a grouped convolution (RegNet) every group keeps the same width and the
total is the multiple. `round_to: 1` prunes every layer to the exact ratio. With `global_pruning`,
Torch-Pruning's own rounding applies (a layer that would round to nothing is left whole).

Some ops move channels in ways the dependency graph cannot follow; the channels that pass through one are kept,
and everything else is pruned: channel and pixel (un)shuffles, `split` / `chunk` (their sizes are written in the
model's code: `x.chunk(2)` needs two equal halves) and reshapes from 5-D tensors (a channel shuffle written by
hand). In ShuffleNetV2 this prunes the stem, each block's inner branch and the last 1x1 convolution, and keeps
the channels that the shuffle interleaves between the two branches of every block. torchvision writes that
shuffle with view/transpose/view, which Torch-Pruning misreads as a flatten (ZeroDivisionError); while the graph
is traced, the blocks run an equivalent forward (`torch.split` with explicit sizes, then
`torch.nn.functional.channel_shuffle`). The pruned model is the same torchvision class with fewer channels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn

from bench.compressions import COMPRESSIONS, CompressContext, Compressed, finetune
from bench.config import check_range


@dataclasses.dataclass
class PruneConfig:
    ratio: float = 0.5  # fraction of channels removed per layer (or overall, with global_pruning)
    importance: Literal["l1", "l2", "taylor"] = "l1"
    global_pruning: bool = False
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    # kept channel counts are multiples of this (rounded down; 8 suits SIMD kernels); 1 prunes to the exact ratio
    round_to: int = 8

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, lo=0, hi=1, lo_open=True, hi_open=True)
        check_range("finetune_epochs", self.finetune_epochs, lo=0)
        check_range("finetune_lr", self.finetune_lr, lo=0, lo_open=True)
        check_range("round_to", self.round_to, lo=1)


# Ops whose channels are kept (the autograd names of their nodes, lower case). Channel and pixel (un)shuffles move
# channels between positions or change their count, which Torch-Pruning would take for element-wise ops; split
# and chunk sizes are written in the model's code (`x.chunk(2)` needs two equal halves), which pruning cannot edit.
OPAQUE_OPS = ("channelshuffle", "pixelshuffle", "pixelunshuffle", "split")

# Layers whose parameters Torch-Pruning prunes itself; a parameter held by any other module is "unwrapped".
_WRAPPED = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.PReLU,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.LSTM,
)


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last Linear (or Conv) layer: its outputs are the classes and must not be pruned."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return layers[-1]


def _importance(cfg: PruneConfig) -> tp.importance.Importance:
    if cfg.importance == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if cfg.importance == "l1" else 2)


def _shufflenet_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ShuffleNetV2 `InvertedResidual.forward` with the ops Torch-Pruning can follow: the same halves
    through `torch.split` with explicit sizes (its offsets for `chunk` are wrong), the same permutation through
    `channel_shuffle` (one op, where view/transpose/view reads as a flatten and raises ZeroDivisionError)."""
    if self.stride == 1:
        half = x.shape[1] // 2
        x1, x2 = torch.split(x, [half, x.shape[1] - half], dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
    else:
        out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
    return nn.functional.channel_shuffle(out, 2)


@contextlib.contextmanager
def traceable_structures() -> Iterator[None]:
    """While active, torchvision's ShuffleNetV2 blocks run `_shufflenet_block_forward` (same outputs), so that
    Torch-Pruning can trace them; the pruned model keeps torchvision's own code."""
    from torchvision.models.shufflenetv2 import InvertedResidual

    original = InvertedResidual.forward
    InvertedResidual.forward = _shufflenet_block_forward
    try:
        yield
    finally:
        InvertedResidual.forward = original


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters held by a composite module (ConvNeXt's `layer_scale`, shape (C, 1, 1)) with the dimension that
    holds their channels: the last one longer than 1 (Torch-Pruning's default, stated so that it does not warn)."""
    found = []
    for module in model.modules():
        if isinstance(module, _WRAPPED):
            continue
        for p in module._parameters.values():
            dims = [i for i, size in enumerate(p.shape) if size > 1] if p is not None else []
            if dims:
                found.append((p, dims[-1]))
    return found


def _new_pruner(model: nn.Module, example: torch.Tensor, cfg: PruneConfig, **options) -> tp.pruner.BasePruner:
    with traceable_structures():
        pruner = tp.pruner.BasePruner(
            model,
            example,
            importance=_importance(cfg),
            pruning_ratio=cfg.ratio,
            global_pruning=cfg.global_pruning,
            ignored_layers=[classifier_layer(model)],
            unwrapped_parameters=unwrapped_parameters(model),
            **options,
        )
    # this graph's own op nodes whose channels are kept: a group that reaches one is not pruned
    pruner.ignored_layers.extend(node.module for node in pruner.DG.module2node.values() if _is_opaque(node))
    return pruner


def _is_opaque(node: tp.Node) -> bool:
    """Whether the channels through this traced op must be kept: one of OPAQUE_OPS, or a reshape from a tensor of
    five or more dims (the view back from (N, groups, C / groups, H, W) of a channel shuffle written by hand),
    which Torch-Pruning maps only for 2-D and 4-D tensors and would otherwise take for an element-wise op."""
    name = node.grad_fn.name().lower() if hasattr(node.grad_fn, "name") else ""
    if any(op in name for op in OPAQUE_OPS):
        return True
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    return ("view" in name or "reshape" in name) and sizes is not None and len(sizes) > 4


def _channel_groups(pruner: tp.pruner.BasePruner, group: tp.Group) -> int:
    """How many channel groups the group's layers split into (grouped convolutions, GroupNorm): Torch-Pruning
    removes the same channels from each, so each keeps the same width."""
    found = [1]
    for dep, _ in group:
        out = pruner.DG.is_out_channel_pruning_fn(dep.handler)
        found.append((pruner.out_channel_groups if out else pruner.in_channel_groups).get(dep.target.module, 1))
    return max(found)


def kept_channels(channels: int, ratio: float, round_to: int, groups: int = 1) -> int:
    """How many of a layer's `channels` pruning keeps: Torch-Pruning's count (int(width * (1 - ratio)) per channel
    group), rounded down so the total is a multiple of `round_to`, unless that would leave no channel."""
    width = channels // groups
    kept = int(width * (1 - ratio))
    step = round_to // math.gcd(round_to, groups)  # the per-group width that makes the total a multiple
    if kept >= step:
        kept -= kept % step
    return max(kept, 1) * groups


def _rounded_ratios(probe: tp.pruner.BasePruner, cfg: PruneConfig) -> dict[nn.Module, float]:
    """Per-layer ratios that make Torch-Pruning keep `kept_channels` in every group (its own `round_to` computes
    the multiple over all the channels of a grouped convolution but applies it per group, removing them all)."""
    ratios = {}
    for group in probe.DG.get_all_groups(
        ignored_layers=probe.ignored_layers, root_module_types=probe.root_module_types
    ):
        root = group[0].dep.target.module
        channels, groups = probe.DG.get_out_channels(root), _channel_groups(probe, group)
        if not channels or channels % groups:
            continue
        width = channels // groups
        kept = kept_channels(channels, cfg.ratio, cfg.round_to, groups) // groups
        # Torch-Pruning keeps int(width * (1 - ratio)): half a channel of margin survives floating point
        ratio = 0.0 if kept >= width else 1 - (kept + 0.5) / width
        for dep, _ in group:
            if probe.DG.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, _WRAPPED):
                ratios[dep.target.module] = ratio
    return ratios


def build_pruner(model: nn.Module, example: torch.Tensor, cfg: PruneConfig) -> tp.pruner.BasePruner:
    """A Torch-Pruning pruner for `model` set up as `prune` uses it (`pruner.step()` prunes in place).

    A failure to trace the model's channel dependencies is raised as one RuntimeError naming the model and what
    to do about it."""
    net = getattr(model, "net", model)  # bench.models.Classifier wraps the registered network
    try:
        if cfg.global_pruning or cfg.round_to == 1:
            return _new_pruner(model, example, cfg, round_to=cfg.round_to if cfg.round_to > 1 else None)
        probe = _new_pruner(model, example, cfg)
        return _new_pruner(model, example, cfg, pruning_ratio_dict=_rounded_ratios(probe, cfg))
    except Exception as exc:
        raise RuntimeError(
            f"Torch-Pruning could not trace the channel dependencies of {type(net).__name__} "
            f"({type(exc).__name__}: {exc}); the usual cause is a reshape that regroups channels, such as a channel "
            "shuffle written with view/transpose: write it with torch.nn.ChannelShuffle, or exclude prune for this "
            "model in the suite"
        ) from exc


@COMPRESSIONS.register("prune", config=PruneConfig, dtype="fp32", primary="ratio")
def prune(model: nn.Module, cfg: PruneConfig, ctx: CompressContext) -> Compressed:
    """Structured channel pruning (L1 / L2 / Taylor) with physical removal, then optional fine-tuning."""
    example = ctx.example.to("cpu")
    model = model.to("cpu").eval()
    macs_before, params_before = tp.utils.count_ops_and_params(model, example)
    pruner = build_pruner(model, example, cfg)
    start = time.perf_counter()
    if cfg.importance == "taylor":  # data-aware: needs the loss gradients on a batch of the calibration split
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(ctx.data.x_calib[:256]), ctx.data.y_calib[:256])
        loss.backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    prune_s = time.perf_counter() - start
    macs_after, params_after = tp.utils.count_ops_and_params(model, example)
    if not (params_after < params_before and macs_after < macs_before):
        net = getattr(model, "net", model)
        raise RuntimeError(
            f"pruning {type(net).__name__} at ratio {cfg.ratio} removed nothing (params {params_before} -> "
            f"{params_after}): every prunable channel is coupled to the classifier's outputs or to a channel "
            "shuffle; exclude prune for this model in the suite"
        )
    meta = {
        "params_before": int(params_before),
        "params_after": int(params_after),
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "prune_s": prune_s,
        "round_to": cfg.round_to,
        **finetune(model, ctx, cfg.finetune_epochs, cfg.finetune_lr),
    }
    return Compressed(model.eval(), meta=meta)
