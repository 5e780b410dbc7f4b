"""Preflight (bench.preflight): what a suite asks of its data is checked by `bench list` and at the start of
`bench run`, before the run directory exists: each mistake is one line naming the file and the field, exit 2."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import BenchInputError
from bench.preflight import check_suite
from bench.suite import load_suite
from tests.conftest import run_cli, tiny_net, tiny_suite, write_suite

TINY = "tests.conftest:tiny_net"


def raising_net(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """A user's factory that raises (referenced as `tests.test_preflight:raising_net`)."""
    raise ValueError("this factory fails\non purpose")


def three_logits_net(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    """A user's factory that ignores `num_classes`."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), 3))


def fake_cifar10(root: Path, per_batch: int = 4) -> Path:
    """CIFAR-10's python batches with `per_batch` images each (5 train batches, 1 test batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"labels": [1] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def with_datasets(data: dict[str, Any], datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """The suite with a `datasets:` list instead of its `dataset:`."""
    return {k: v for k, v in data.items() if k != "dataset"} | {"datasets": datasets}


def input_error(tmp_path: Path, capsys: Any, data: dict[str, Any], field: str) -> str:
    """`bench list` and `bench run` both exit 2 with one line naming the suite file and `field`, and the run
    directory is not created; returns the line."""
    path = write_suite(tmp_path / "suite.yaml", data)
    code, _out, err = run_cli(["list", path], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"bench: error: {path}: {field}: "), lines[0]
    run_dir = tmp_path / "run"
    args = ["run", path, "--out", run_dir, "--cache", tmp_path / "cache", "--no-progress"]
    code, _out, run_err = run_cli(args, capsys)
    assert code == 2 and run_err == err, run_err
    assert not run_dir.exists()
    assert "Traceback" not in err
    return lines[0]


# --- data --------------------------------------------------------------------------------------------------------


def test_digits_too_small_for_the_splits(tmp_path, capsys):
    line = input_error(tmp_path, capsys, tiny_suite(dataset={"name": "digits", "eval_size": 3000}), "dataset.eval_size")
    assert "1797 samples" in line


def test_file_dataset_too_small_for_the_splits_is_found_when_loaded(tmp_path, capsys):
    root = fake_cifar10(tmp_path / "data")  # 20 train images, 4 test images
    data = tiny_suite(dataset={"name": "cifar10", "root": str(root), "eval_size": 10, "calibration_size": 2})
    line = input_error(tmp_path, capsys, data, "dataset.eval_size")
    assert "eval_size=10 does not fit: the cifar10 test set has 4 samples" in line


def test_several_datasets_name_the_one_at_fault(tmp_path, capsys):
    root = fake_cifar10(tmp_path / "data")
    datasets = [
        {"name": "digits", "eval_size": 100, "calibration_size": 32},
        {"name": "cifar10", "root": str(root), "eval_size": 4, "calibration_size": 50},
    ]
    input_error(tmp_path, capsys, with_datasets(tiny_suite(), datasets), "datasets[cifar10].calibration_size")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_dataset_files(tmp_path, capsys, name):
    data = tiny_suite(dataset={"name": name, "root": str(tmp_path / "nodata")})
    line = input_error(tmp_path, capsys, data, "dataset")
    assert "no data under" in line and "download: true" in line


# --- models and checkpoints ----------------------------------------------------------------------------------------


def checkpoint_suite(path: Path) -> dict[str, Any]:
    return tiny_suite(models=[{"name": TINY, "checkpoint": str(path)}], recipes=["none"])


def test_a_matching_checkpoint_passes(tmp_path, capsys):
    torch.save(tiny_net(10, (1, 8, 8)).state_dict(), tmp_path / "good.pt")
    code, out, err = run_cli(["list", write_suite(tmp_path / "s.yaml", checkpoint_suite(tmp_path / "good.pt"))], capsys)
    assert code == 0, err
    assert "2 cells" in out


def _corrupt(path: Path) -> None:
    path.write_bytes(b"these are not the weights you are looking for")


def _truncated(path: Path) -> None:
    torch.save(tiny_net(10, (1, 8, 8)).state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])


CHECKPOINTS = {
    "corrupt": (_corrupt, "cannot read it as a torch file"),
    "truncated": (_truncated, "cannot read it as a torch file"),
    "whole module": (
        lambda p: torch.save(tiny_net(10, (1, 8, 8)), p),
        "not a state dict: it holds a pickled torch.nn.modules.container.Sequential (a whole model?)",
    ),
    "a list": (lambda p: torch.save([torch.zeros(2)], p), "not a state dict: it holds a list"),
    "not tensors": (lambda p: torch.save({"1.weight": 3}, p), "not a state dict: not tensors under 1.weight"),
    "other keys": (
        lambda p: torch.save({"fc.weight": torch.zeros(2, 2), "1.weight": torch.zeros(16, 64)}, p),
        "missing keys 1.bias, 3.weight, 3.bias; unexpected keys fc.weight",
    ),
    "other shapes": (
        lambda p: torch.save(tiny_net(10, (1, 8, 8), width=8).state_dict(), p),
        "shapes differ (checkpoint vs model) for 1.weight (8, 64) vs (16, 64), 1.bias (8,) vs (16,), 3.weight "
        "(10, 8) vs (10, 16)",
    ),
    "many keys missing": (
        lambda p: torch.save({f"extra.{i}": torch.zeros(1) for i in range(5)}, p),
        "missing keys 1.weight, 1.bias, 3.weight, ... (1 more); "
        "unexpected keys extra.0, extra.1, extra.2, ... (2 more)",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINTS, ids=list(CHECKPOINTS))
def test_a_bad_checkpoint_names_the_field(tmp_path, capsys, case):
    write, message = CHECKPOINTS[case]
    write(tmp_path / "ckpt.pt")
    line = input_error(tmp_path, capsys, checkpoint_suite(tmp_path / "ckpt.pt"), f"models[{TINY}].checkpoint")
    assert message in line
    assert str(tmp_path / "ckpt.pt") in line


def test_a_model_that_cannot_take_the_data_shape(tmp_path, capsys):
    # squeezenet's stem (7x7 stride 2, then a 3x3 max pool) leaves nothing of an 8x8 digit
    line = input_error(tmp_path, capsys, tiny_suite(models=["squeezenet1_0"]), "models[squeezenet1_0]")
    assert "'squeezenet1_0' cannot run on 1x8x8 inputs: RuntimeError:" in line


def test_a_user_factory_that_raises(tmp_path, capsys):
    name = "tests.test_preflight:raising_net"
    line = input_error(tmp_path, capsys, tiny_suite(models=[name]), f"models[{name}]")
    assert line.endswith(f"cannot build '{name}' for 1x8x8 inputs: ValueError: this factory fails on purpose")


def test_a_model_with_the_wrong_number_of_outputs(tmp_path, capsys):
    name = "tests.test_preflight:three_logits_net"
    line = input_error(tmp_path, capsys, tiny_suite(models=[name]), f"models[{name}]")
    assert "must return logits of shape (batch, 10) for 1x8x8 inputs, got shape (2, 3)" in line


def test_a_model_larger_than_the_machine_is_refused_before_it_is_built(tmp_path, capsys):
    line = input_error(tmp_path, capsys, tiny_suite(models=[{"name": "mlp", "hidden": [10**12]}]), "models[mlp]")
    assert "'mlp' for 1x8x8 inputs holds 7.5e+13 parameters and buffers" in line and "memory" in line


def test_a_distillation_student_is_checked_too(tmp_path, capsys):
    data = tiny_suite(compressions=["none", {"name": "kd", "student": "squeezenet1_0", "epochs": 1}])
    input_error(tmp_path, capsys, data, "compressions[kd].student")


def test_an_include_rule_names_itself(tmp_path, capsys):
    include = [{"model": "squeezenet1_0", "recipe": "standard", "compression": "none", "runtime": "eager",
                "attack": "none"}]  # fmt: skip
    input_error(tmp_path, capsys, tiny_suite(include=include), "include[0].model")


def test_excluded_combinations_are_not_checked(tmp_path, capsys):
    # squeezenet cannot take digits, but only runs on the synthetic 3x32x32 data here
    data = tiny_suite(
        models=["mlp", "squeezenet1_0"],
        recipes=["none"],
        attacks=["none"],
        exclude=[{"dataset": "digits", "model": "squeezenet1_0"}],
    )
    datasets = [
        {"name": "digits", "eval_size": 100, "calibration_size": 32},
        {"name": "synthetic", "n_samples": 60, "eval_size": 20, "calibration_size": 10, "num_classes": 3},
    ]
    data = with_datasets(data, datasets)
    code, out, err = run_cli(["list", write_suite(tmp_path / "s.yaml", data)], capsys)
    assert code == 0, err
    assert "3 cells" in out


# --- eps -----------------------------------------------------------------------------------------------------------


def test_an_l2_eps_beyond_the_diagonal(tmp_path, capsys):
    data = tiny_suite(attacks=[{"name": "pgd", "eps": 9.0, "norm": "L2", "steps": 2}])
    line = input_error(tmp_path, capsys, data, "attacks[pgd-9].eps")
    assert "must be at most 8 for L2 on 1x8x8 inputs" in line and "got 9" in line


def test_an_l2_eps_of_a_worst_case_member(tmp_path, capsys):
    members = ["fgsm", {"name": "apgd", "eps": 20.0, "norm": "L2", "steps": 2}]
    data = tiny_suite(attacks=[{"name": "worst_case", "label": "worst", "attacks": members}])
    input_error(tmp_path, capsys, data, "attacks[worst].attacks[1].eps")


def test_an_l2_eps_up_to_the_diagonal_passes(tmp_path):
    data = tiny_suite(attacks=[{"name": "pgd", "eps": 8.0, "norm": "L2", "steps": 2}, {"name": "fgsm", "eps": 1.0}])
    check_suite(load_suite(write_suite(tmp_path / "s.yaml", data)))


# --- the API -------------------------------------------------------------------------------------------------------


def test_check_suite_returns_the_data_and_leaves_the_global_rng_alone(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite()))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    splits = check_suite(suite)
    assert torch.equal(torch.rand(3), expected)
    assert list(splits) == ["digits"] and splits["digits"].in_shape == (1, 8, 8)


def test_check_suite_raises_a_typed_error(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.yaml", tiny_suite(models=["squeezenet1_0"])))
    with pytest.raises(BenchInputError) as info:
        check_suite(suite)
    assert info.value.file == suite.file and info.value.field == "models[squeezenet1_0]"


# --- found by tests/test_fuzz_suites.py, now refused when the suite is parsed ------------------------------------


PARSE_ERRORS = {
    "a seed torch cannot take": (tiny_suite(seed=10**30), "seed", "expected an integer in [0, 2**32)"),
    "a synthetic dataset larger than memory": (
        tiny_suite(dataset={"name": "synthetic", "n_samples": 10**9, "eval_size": 10, "calibration_size": 10}),
        "dataset.n_samples",
        "n_samples x channels x height x width = 3.07e+12 values, more than the 268435456",
    ),
    "more classes than samples": (
        tiny_suite(dataset={"name": "synthetic", "n_samples": 50, "num_classes": 100, "eval_size": 10}),
        "dataset.num_classes",
        "must be at most n_samples (50), got 100",
    ),
    "a student that does not import": (
        tiny_suite(compressions=[{"name": "kd", "student": "tests.nope:thing"}]),
        "compressions[0].student.name",
        "cannot import 'tests.nope:thing'",
    ),
}


@pytest.mark.parametrize("case", PARSE_ERRORS, ids=list(PARSE_ERRORS))
def test_parse_errors_found_by_the_fuzz(tmp_path, capsys, case):
    data, field, message = PARSE_ERRORS[case]
    assert message in input_error(tmp_path, capsys, data, field)
