"""Models: every registered model adapts to the data's shape; torchvision names and user functions resolve."""

from __future__ import annotations

import pytest
import torch

from bench.errors import ConfigError, UnknownNameError
from bench.models import MODELS
from tests.conftest import build_registered_model, n_params, run_cli, tiny_net, tiny_suite, write_suite


@pytest.mark.parametrize("name,params", [("simple_cnn", {}), ("mlp", {}), ("resnet18", {"width": 4})])
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28)])
def test_registered_models_adapt_to_input_shape(name, params, in_shape):
    model = build_registered_model(name, params, in_shape)
    assert not model.training
    assert model(torch.rand(2, *in_shape)).shape == (2, 10)


def test_normalisation_is_inside_the_model():
    model = build_registered_model("mlp", {})
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(model.normalize(x), (x - 0.5) / 0.25)


def test_resnet18_has_the_paper_parameter_count():
    model = build_registered_model("resnet18", {}, (3, 32, 32))
    assert 11_100_000 < n_params(model) < 11_250_000  # CIFAR ResNet-18: 11.17 M


def test_torchvision_model_by_name_on_grey_images():
    model = build_registered_model("mobilenet_v3_small", {})
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_user_function_with_checkpoint(tmp_path):
    net = tiny_net(10, (1, 8, 8), width=16)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model = build_registered_model(
        "tests.conftest:tiny_net", {"kwargs": {"width": 16}, "checkpoint": str(tmp_path / "w.pt")}
    )
    assert torch.equal(model.net[1].weight, net[1].weight)


def test_missing_checkpoint_is_a_user_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="file not found") as info:
        build_registered_model("mlp", {"checkpoint": str(tmp_path / "missing.pt")})
    assert info.value.field == "checkpoint"
    suite = write_suite(tmp_path / "s.yaml", tiny_suite(models=[{"name": "mlp", "checkpoint": "nope.pt"}]))
    code, _, err = run_cli(["run", suite, "--out", tmp_path / "run"], capsys)
    # a relative path is relative to the suite's directory, and the message says where it looked
    assert code == 2 and f"models[0].checkpoint: file not found: {tmp_path.resolve() / 'nope.pt'}" in err
    assert not (tmp_path / "run").exists()


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid: mlp, resnet18, simple_cnn"):
        MODELS.get("no_such_model")


def test_torchvision_models_with_auxiliary_heads_train_on_one_output():
    # googlenet / inception_v3 return (logits, aux...) in training unless told otherwise: a recipe's loss needs logits
    model = build_registered_model("googlenet", {}, in_shape=(3, 32, 32)).train()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with_aux = build_registered_model("googlenet", {"kwargs": {"aux_logits": True}}, in_shape=(3, 32, 32))
    assert isinstance(with_aux.net.aux1, torch.nn.Module)  # what the user asks for still wins


def test_simple_cnn_with_batchnorm_and_dropout_compresses_and_exports(tmp_path, capsys):
    """The reference security baseline's CNN (3 conv with BatchNorm, 2 fc with dropout) through pruning, INT8 and
    ONNX Runtime: every cell ok, BatchNorm folded or pruned with its convolution."""
    net = build_registered_model("simple_cnn", {"width": 4, "batchnorm": True, "dropout": 0.5}, (1, 8, 8))
    layers = [type(m).__name__ for m in net.modules()]
    assert layers.count("BatchNorm2d") == 3 and layers.count("Dropout") == 1
    suite = tiny_suite(
        models=[{"name": "simple_cnn", "width": 4, "hidden": 16, "batchnorm": True, "dropout": 0.5}],
        compressions=["none", {"name": "prune", "ratio": 0.3}, "int8"],
        runtimes=["eager", "onnxruntime"],
        attacks=["none"],
    )
    path = write_suite(tmp_path / "bn.yaml", suite)
    code, out, _ = run_cli(
        ["run", path, "--out", tmp_path / "run", "--cache", tmp_path / "cache", "--no-progress"], capsys
    )
    assert code == 0 and "6 ok, 0 skipped, 0 failed" in out
