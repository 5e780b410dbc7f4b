"""The torchvision zoo (suites/zoo.yaml, docs/zoo.md): every compression and runtime on small classifiers.

Pruning is checked exactly: a pruned model must compute what the original computes with the removed channels
zeroed where they enter the next convolution or linear layer (so coupled structures, channel shuffles,
squeeze-and-excitation gates and grouped convolutions were cut consistently), and `round_to` must give multiples of
8. FX INT8 must handle ShuffleNetV2 and MnasNet, whose global mean on a 1x1 map PyTorch's quantized kernel rejects.
A reduced zoo runs end to end in the default test run; the full suite is `slow`.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import bench
from bench.compressions import CompressContext, QuantSpec
from bench.compressions.int8 import Int8Config, int8
from bench.compressions.prune import PruneConfig, _shufflenet_block_forward, build_pruner, kept_channels, prune
from bench.runtimes.torch_int8 import keepdim_spatial_means, quantize_fx
from tests.conftest import build_registered_model, run_suite

ROOT = Path(__file__).resolve().parents[1]
CIFAR = (3, 32, 32)


def zoo_model(name: str) -> nn.Module:
    """A torchvision model as the harness builds it for CIFAR-shaped data, with non-trivial BatchNorm statistics
    (so that a channel cut in the wrong place changes the output)."""
    torch.manual_seed(0)
    model = build_registered_model(name, {}, CIFAR, 10, (0.5,) * 3, (0.25,) * 3).eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return model


def context(x_calib: torch.Tensor, num_classes: int = 10) -> CompressContext:
    """What prune and int8 read of the data splits: the calibration split."""
    splits = SimpleNamespace(x_calib=x_calib, y_calib=torch.randint(0, num_classes, (len(x_calib),)))
    return CompressContext(splits, 0, "cpu", x_calib[:1])


def prune_with_masked_reference(model: nn.Module, cfg: PruneConfig) -> tuple[nn.Module, nn.Module]:
    """(pruned model, original model whose removed channels are zeroed at the input of every convolution or linear
    layer that lost them). The two compute the same function when the pruning was structurally right."""
    original = copy.deepcopy(model)
    pruner = build_pruner(model, torch.rand(1, *CIFAR), cfg)
    names = {m: n for n, m in model.named_modules()}
    removed: dict[str, set[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            layer = dep.target.module
            depthwise = isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels > 1
            consumer = isinstance(layer, (nn.Conv2d, nn.Linear)) and not depthwise
            if consumer and pruner.DG.is_in_channel_pruning_fn(dep.handler):
                removed.setdefault(names[layer], set()).update(int(i) for i in idxs)
        group.prune()
    layers = dict(original.named_modules())
    for name, idxs in removed.items():
        index = torch.tensor(sorted(idxs))

        def zero_removed(layer: nn.Module, inputs: tuple[torch.Tensor], index: torch.Tensor = index) -> tuple:
            x = inputs[0].clone()
            if isinstance(layer, nn.Linear):
                x[..., index] = 0
            else:
                x[:, index] = 0
            return (x,)

        layers[name].register_forward_pre_hook(zero_removed)
    assert removed, "nothing was pruned"
    return model, original


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# --- round_to -------------------------------------------------------------------------------------------------


def test_kept_channels_rounds_down_to_multiples_and_keeps_narrow_layers_exact():
    assert kept_channels(64, 0.3, 8) == 40  # int(44.8) = 44 -> 40
    assert kept_channels(1024, 0.3, 8) == 712
    assert kept_channels(64, 0.3, 1) == 44  # round_to 1: Torch-Pruning's own count
    assert kept_channels(8, 0.3, 8) == 5  # fewer than 8 left: the exact ratio, not zero channels
    assert kept_channels(2, 0.9, 8) == 1  # never zero
    # grouped convolution, 6 groups of 8: each group keeps the same width, the total is a multiple of 8
    assert kept_channels(48, 0.3, 8, groups=6) == 24
    assert kept_channels(104, 0.3, 8, groups=13) == 65  # 13 groups: a multiple of 8 needs 8 per group; exact


def test_round_to_8_gives_multiples_of_8_and_round_to_1_does_not():
    model = build_registered_model("simple_cnn", {"width": 24, "hidden": 44}, (1, 8, 8))
    before = conv_widths(model)
    x = torch.rand(16, 1, 8, 8)
    rounded = prune(copy.deepcopy(model), PruneConfig(ratio=0.3), context(x)).model
    exact = prune(copy.deepcopy(model), PruneConfig(ratio=0.3, round_to=1), context(x)).model
    assert PruneConfig().round_to == 8
    assert list(before.values()) == [24, 48, 48]
    assert list(conv_widths(rounded).values()) == [16, 32, 32]  # int(16.8) = 16, int(33.6) = 33 -> 32
    assert rounded.net[-1].in_features == 24  # hidden 44 -> int(30.8) = 30 -> 24; the classifier keeps 10 outputs
    assert list(conv_widths(exact).values()) == [16, 33, 33]  # not forced to multiples of 8
    assert exact.net[-1].in_features == 30 and exact.net[-1].out_features == 10
    assert rounded(x).shape == exact(x).shape == (16, 10)


# --- coupled structures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "shufflenet_v2_x0_5",  # channel shuffle and split: the shuffled channels are kept, the rest is pruned
        "mobilenet_v3_small",  # squeeze-and-excitation, hardswish
        "efficientnet_b0",  # squeeze-and-excitation with narrow squeeze layers (4 to 10 channels)
        "regnet_y_400mf",  # grouped convolutions (group width 8) and SE
    ],
)
def test_pruned_model_computes_the_original_on_the_kept_channels(name):
    pruned, reference = prune_with_masked_reference(zoo_model(name), PruneConfig(ratio=0.3))
    x = torch.rand(4, *CIFAR)
    with torch.no_grad():
        out, expected = pruned(x), reference(x)
    assert out.shape == (4, 10)
    scale = expected.abs().max().item()
    assert (out - expected).abs().max().item() <= 1e-5 * max(scale, 1.0), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "mobilenet_v3_large", "mnasnet0_5", "squeezenet1_1", "resnet18", "resnet50"]
)
def test_pruned_model_computes_the_original_on_the_kept_channels_slow(name):
    test_pruned_model_computes_the_original_on_the_kept_channels(name)


def test_shufflenet_prune_keeps_the_shuffled_channels_and_rounds_the_rest():
    model = zoo_model("shufflenet_v2_x0_5")
    before = conv_widths(model)
    out = prune(model, PruneConfig(ratio=0.3), context(torch.rand(8, *CIFAR)))
    after = conv_widths(out.model)
    changed = {n: w for n, w in after.items() if w != before[n]}
    # the stem, every block's inner branch (1x1 -> depthwise -> 1x1) and the last 1x1 convolution are pruned ...
    assert changed["net.conv1.0"] == 16 and changed["net.conv5.0"] == 712
    assert changed["net.stage2.1.branch2.0"] == 16 and changed["net.stage4.3.branch2.3"] == 64
    assert all(w % 8 == 0 for w in changed.values()), changed
    # ... and the outputs of both branches, which the channel shuffle interleaves, are kept
    assert all(after[n] == before[n] for n in after if n.endswith(("branch1.2", "branch2.5")))
    assert type(out.model.net.stage2[1]).__module__ == "torchvision.models.shufflenetv2"  # torchvision's code
    assert out.meta["params_after"] < 0.75 * out.meta["params_before"]


def test_traced_shufflenet_block_computes_what_torchvision_does():
    model = zoo_model("shufflenet_v2_x0_5")
    x = torch.rand(2, *CIFAR)
    blocks = [model.net.stage2[0], model.net.stage2[1]]  # stride 2 (two branches) and stride 1 (split)
    with torch.no_grad():
        h = model.net.maxpool(model.net.conv1(model.normalize(x)))
        for block in blocks:
            assert torch.equal(_shufflenet_block_forward(block, h), block(h))
            h = block(h)


class HandShuffle(nn.Module):
    """A channel shuffle written by hand (view to 5-D, transpose, view back), as in many ShuffleNet copies."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.b(x).mean((2, 3)))


class HalvesByChunk(nn.Module):
    """`x.chunk(2)` needs two equal halves, which pruning cannot promise: the split channels must be kept."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.fc = (
            nn.Conv2d(3, 16, 1),
            nn.Conv2d(8, 8, 1),
            nn.Conv2d(16, 16, 1),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.a(x).chunk(2, dim=1)
        return self.fc(self.c(torch.cat((x1, self.b(x2)), 1)).mean((2, 3)))


@pytest.mark.parametrize("cls", [HandShuffle, HalvesByChunk])
def test_channels_through_a_hand_written_shuffle_or_a_chunk_are_kept(cls):
    torch.manual_seed(0)
    model = cls()
    x = torch.rand(4, *CIFAR)
    with torch.no_grad():
        reference = model(x)
    out = prune(copy.deepcopy(model), PruneConfig(ratio=0.5, round_to=1), context(x)).model
    assert out.a.out_channels == 16  # before the shuffle / the chunk: kept
    pruned_layer = out.b if cls is HandShuffle else out.c
    assert pruned_layer.out_channels == 8  # after it: pruned
    assert out(x).shape == reference.shape


def matching_rows(rows: torch.Tensor, old: torch.Tensor) -> list[int]:
    """For each row of `rows`, the index of the equal row of `old` (randomly initialised weights: the first few
    values identify a row)."""
    index = {tuple(row[:4].tolist()): i for i, row in enumerate(old)}
    found = [index[tuple(row[:4].tolist())] for row in rows]
    assert all(torch.equal(row, old[i]) for row, i in zip(rows, found, strict=True))
    return found


@pytest.mark.slow  # ConvNeXt-Tiny has 28 M parameters: about 15 s
def test_convnext_layer_norm_and_layer_scale_follow_their_channels():
    """ConvNeXt's blocks normalise over channels (so no masked reference exists): check instead that every
    per-channel parameter of a block kept the same channels as its depthwise convolution."""
    model = zoo_model("convnext_tiny")
    original = copy.deepcopy(model)
    prune(model, PruneConfig(ratio=0.3), context(torch.rand(4, *CIFAR)))
    assert model(torch.rand(2, *CIFAR)).shape == (2, 10)
    checked = 0
    for (name, block), old in zip(model.net.features.named_modules(), original.net.features.modules(), strict=True):
        if type(block).__name__ != "CNBlock":
            continue
        dw, dw_old = block.block[0], old.block[0]
        assert dw.out_channels % 8 == 0 and dw.out_channels < dw_old.out_channels, name
        kept = matching_rows(dw.weight.flatten(1), dw_old.weight.flatten(1))  # each kept kernel's old channel
        norm, norm_old = block.block[2], old.block[2]
        assert torch.equal(norm.weight, norm_old.weight[kept]) and torch.equal(norm.bias, norm_old.bias[kept])
        assert torch.equal(block.layer_scale, old.layer_scale[kept])
        up, up_old = block.block[3].weight, old.block[3].weight[:, kept]  # Linear(dim, 4 dim): its inputs follow
        hidden = matching_rows(up, up_old)  # and its outputs are pruned on their own
        assert len(hidden) % 8 == 0 and len(hidden) < len(up_old)
        assert torch.equal(block.block[5].weight, old.block[5].weight[kept][:, hidden])  # Linear(4 dim, dim)
        checked += 1
    assert checked == 18


def test_an_untraceable_model_fails_with_one_actionable_line(monkeypatch):
    """Without the traced ShuffleNetV2 block, Torch-Pruning trips over torchvision's view/transpose/view shuffle:
    that is one line naming the model and what to do, not a bare ZeroDivisionError."""
    monkeypatch.setattr("bench.compressions.prune.traceable_structures", contextlib.nullcontext)
    with pytest.raises(RuntimeError) as info:
        build_pruner(zoo_model("shufflenet_v2_x0_5"), torch.rand(1, *CIFAR), PruneConfig(ratio=0.3))
    message = str(info.value)
    assert "\n" not in message and "ShuffleNetV2 (ZeroDivisionError" in message and "exclude prune" in message


def test_a_model_with_nothing_to_prune_fails_with_one_actionable_line():
    class ShuffleThenClassify(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(nn.functional.channel_shuffle(self.a(x), 2).mean((2, 3)))

    with pytest.raises(RuntimeError) as info:
        prune(ShuffleThenClassify(), PruneConfig(ratio=0.3), context(torch.rand(4, *CIFAR)))
    message = str(info.value)
    assert "\n" not in message and "ShuffleThenClassify at ratio 0.3 removed nothing" in message


# --- INT8 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "mnasnet0_5"])
def test_fx_int8_runs_models_whose_global_mean_sees_a_1x1_map(name):
    model = zoo_model(name)
    x = torch.rand(32, *CIFAR)
    quantized, meta = quantize_fx(model, QuantSpec("static", False, "uint8", 32), x)
    assert meta["keepdim_means"] == 1 and len(meta["quantized_layers"]) > 40
    with torch.no_grad():
        out, expected = quantized(x), model(x)
    assert out.shape == (32, 10)
    assert (out - expected).abs().max() < 0.25 * expected.abs().max() + 0.05  # INT8 error, not garbage
    scripted = torch.jit.trace(quantized, x[:1], check_trace=False)  # how the eager runtime saves INT8
    assert torch.equal(scripted(x), out)


def test_keepdim_rewrite_leaves_other_means_alone():
    class Means(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean([2, 3]) + torch.mean(x, dim=(2, 3)) + x.mean(1).mean([1, 2]).unsqueeze(1)

    traced = torch.fx.symbolic_trace(Means())
    x = torch.rand(2, 4, 3, 3)
    expected = traced(x)
    assert keepdim_spatial_means(traced) == 2
    assert torch.allclose(traced(x), expected)


def test_fx_int8_failure_is_one_actionable_line():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # FX cannot trace a branch on a tensor's value
                x = x * 2
            return self.conv(x).mean((2, 3))

    with pytest.raises(RuntimeError) as info:
        quantize_fx(DataDependent(), QuantSpec("static", False, "uint8", 8), torch.rand(8, *CIFAR))
    message = str(info.value)
    assert "\n" not in message and "DataDependent" in message and "while tracing it" in message
    assert "onnxruntime" in message


def test_int8_declines_a_diverged_model_with_the_cause():
    model = zoo_model("squeezenet1_1")
    with torch.no_grad():
        model.net.features[0].weight.fill_(float("nan"))  # what a diverged training leaves
    with pytest.raises(RuntimeError, match=r"NaN or inf logits on 16 of 16 .* training diverged"):
        int8(model, Int8Config(), context(torch.rand(16, *CIFAR)))


# --- the zoo end to end --------------------------------------------------------------------------------------------

FP16_SKIP = "has no fp16 kernels on cpu"

# A reduced zoo for the default test run: ShuffleNetV2 on every axis (the model the issue is about: its pruning, and
# the FX INT8 fix it shares with MnasNet), MobileNetV3-Small on ONNX Runtime; one tiny training; batch 1 only; PGD
# on three ShuffleNetV2 cells (white-box on the float models, transferred to INT8). Each artifact costs a measurement
# process and each model a training, so the cells are few (seven artifacts, two models).
SMALL_ZOO: dict[str, Any] = {
    "name": "zoo-small",
    "seed": 0,
    "device": "cpu",
    "dataset": {"name": "synthetic", "n_samples": 200, "eval_size": 40, "calibration_size": 32},
    "models": ["shufflenet_v2_x0_5", "mobilenet_v3_small"],
    "recipes": [{"name": "standard", "epochs": 1, "batch_size": 64, "lr": 0.001, "optimizer": "adamw"}],
    "compressions": ["none", {"name": "prune", "ratio": 0.3}, {"name": "int8", "mode": "static"}, "fp16"],
    "runtimes": ["eager", {"name": "onnxruntime", "exporter": "torchscript"}],
    "attacks": ["none", {"name": "pgd", "eps": 0.03, "steps": 2}],
    "measurement": {"profile": "smoke", "batch_sizes": [1], "memory": False},
    "exclude": [
        {"compression": "none", "runtime": "onnxruntime"},
        {"model": "shufflenet_v2_x0_5", "compression": "prune", "runtime": "onnxruntime"},
        {"model": "mobilenet_v3_small", "compression": "none"},
        {"model": "mobilenet_v3_small", "attack": "pgd"},
        {"model": "mobilenet_v3_small", "compression": ["prune", "int8"], "runtime": "eager"},
        {"model": "mobilenet_v3_small", "compression": "fp16", "runtime": "onnxruntime"},
        {"attack": "pgd", "compression": "int8", "runtime": "eager"},
        {"attack": "pgd", "compression": "fp16"},
    ],
}


def outcome_problems(records: dict[str, dict[str, Any]]) -> list[str]:
    """Cells that are neither ok, nor skipped with a reason, nor failed with a one-line cause."""
    problems = []
    for cell_id, r in records.items():
        if r["status"] == "skipped" and not (r.get("reason") or "").strip():
            problems.append(f"{cell_id}: skipped without a reason")
        elif r["status"] == "failed":
            summary = r.get("error_summary") or (r.get("error") or "").strip().splitlines()[-1:]
            if not summary or "\n" in str(summary):
                problems.append(f"{cell_id}: failed without a one-line cause")
        elif r["status"] not in ("ok", "skipped", "failed"):
            problems.append(f"{cell_id}: status {r['status']}")
    return problems


def failures(records: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {c: (r.get("error") or "").strip().splitlines()[-1] for c, r in records.items() if r["status"] == "failed"}


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    code, records = run_suite(root, SMALL_ZOO)
    return code, records, root


def test_small_zoo_every_cell_ok_or_skipped_for_fp16_on_the_cpu(small_zoo):
    code, records, _ = small_zoo
    assert not outcome_problems(records)
    assert failures(records) == {}
    assert code == 0
    skipped = {c for c, r in records.items() if r["status"] == "skipped"}
    assert skipped == {"shufflenet_v2_x0_5/standard/fp16/eager/none", "mobilenet_v3_small/standard/fp16/eager/none"}
    assert all(FP16_SKIP in records[c]["reason"] for c in skipped)
    assert len(records) == 12 and sum(r["status"] == "ok" for r in records.values()) == 10
    pgd = {"/".join(c.split("/")[2:4]) for c in records if c.endswith("/pgd-0.03")}
    assert pgd == {"none/eager", "prune-0.3/eager", "int8-static/onnxruntime"}
    assert records["shufflenet_v2_x0_5/standard/int8-static/onnxruntime/pgd-0.03"]["threat_model"] == "transfer"


def test_small_zoo_pruned_shufflenet_keeps_multiples_of_8(small_zoo):
    _, records, root = small_zoo
    cell = "shufflenet_v2_x0_5/standard/prune-0.3/eager/none"
    assert records[cell]["status"] == "ok"
    baseline = records["shufflenet_v2_x0_5/standard/none/eager/none"]
    assert records[cell]["params"] < 0.75 * baseline["params"]
    run = bench.load_run(root / "run")
    pruned, whole = conv_widths(run.model(cell)), conv_widths(run.model("shufflenet_v2_x0_5/standard/none/eager/none"))
    changed = {n: w for n, w in pruned.items() if w != whole[n]}
    assert len(changed) > 10 and all(w % 8 == 0 for w in changed.values()), changed
    onnx_cell = "mobilenet_v3_small/standard/prune-0.3/onnxruntime/none"  # 1.53 M parameters unpruned
    assert records[onnx_cell]["status"] == "ok" and records[onnx_cell]["params"] < 800_000


def test_small_zoo_int8_runs_on_eager_and_onnxruntime(small_zoo):
    _, records, _ = small_zoo
    for cell in (
        "shufflenet_v2_x0_5/standard/int8-static/eager/none",
        "shufflenet_v2_x0_5/standard/int8-static/onnxruntime/none",
        "mobilenet_v3_small/standard/int8-static/onnxruntime/none",
    ):
        assert records[cell]["status"] == "ok", cell
    shufflenet = "shufflenet_v2_x0_5/standard/{}/{}/none"
    fp32 = records[shufflenet.format("none", "eager")]["model_size_bytes"]
    for runtime in ("eager", "onnxruntime"):  # INT8 weights (and, for eager, TorchScript's code)
        assert records[shufflenet.format("int8-static", runtime)]["model_size_bytes"] < 0.6 * fp32


# --- the full zoo (slow: about two hours on 2 CPU cores) -------------------------------------------------------


@pytest.mark.slow
def test_full_zoo_suite(tmp_path):
    suite = yaml.safe_load((ROOT / "suites" / "zoo.yaml").read_text())
    code, records = run_suite(tmp_path, suite)
    assert not outcome_problems(records)
    assert failures(records) == {}
    assert code == 0
    assert len(records) == 264
    skipped = {c: r["reason"] for c, r in records.items() if r["status"] == "skipped"}
    assert len(skipped) == 44 and all(FP16_SKIP in reason for reason in skipped.values())
    assert all("/fp16/eager/" in c or "/fp16/torchscript/" in c for c in skipped)
