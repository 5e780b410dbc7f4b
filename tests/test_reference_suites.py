"""The reference suites (suites/reference/) run in a reduced form (fewer epochs and samples, the smoke measurement
profile), and each well-established effect goes the way the literature says it does: never exact numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_suite

REFERENCE = Path(__file__).resolve().parent.parent / "suites" / "reference"


def reduced(name: str, epochs: int) -> dict[str, Any]:
    """The shipped suite with fewer epochs and samples and the smoke measurement profile."""
    data = yaml.safe_load((REFERENCE / name).read_text())
    data["dataset"] |= {"eval_size": 200, "calibration_size": 64}
    data["recipes"] = [recipe | {"epochs": epochs} for recipe in data["recipes"]]
    data["measurement"] = {"profile": "smoke", "batch_sizes": [1, 32]}
    return data


def by_label(records: dict[str, Any], **labels: str) -> list[dict[str, Any]]:
    return [r for r in records.values() if all(r["labels"][axis] == label for axis, label in labels.items())]


def test_every_reference_suite_states_its_question_and_loads() -> None:
    from bench.suite import load_suite

    suites = sorted(REFERENCE.glob("*.yaml"))
    assert len(suites) >= 4
    for path in suites:
        suite = load_suite(path)  # the CIFAR-10 variants load too; their data is only read when they run
        assert suite.description.strip().endswith(")") or suite.description.strip().endswith("."), path
        assert "?" in suite.description, f"{path.name}: its description states the question it answers"


@pytest.fixture(scope="module")
def fgsm_augmentation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code, records = run_suite(tmp_path_factory.mktemp("ref5"), reduced("fgsm_augmentation.yaml", epochs=6))
    assert code == 0, {k: r.get("error_summary") for k, r in records.items() if r["status"] != "ok"}
    return records


def test_fgsm_augmentation_raises_robust_accuracy_and_costs_training_time(fgsm_augmentation: dict[str, Any]) -> None:
    standard = by_label(fgsm_augmentation, recipe="standard")
    augmented = by_label(fgsm_augmentation, recipe="fgsm_augment")
    assert len(standard) == len(augmented) == 7

    def robust(records: list[dict[str, Any]]) -> float:
        return sum(r["robust_accuracy"] for r in records if r["robust_accuracy"] is not None)

    assert robust(augmented) > robust(standard)  # over FGSM and PGD at three eps
    assert augmented[0]["training"]["seconds"] > standard[0]["training"]["seconds"]  # the attack in every step


@pytest.fixture(scope="module")
def security_baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code, records = run_suite(tmp_path_factory.mktemp("ref1"), reduced("security_baseline.yaml", epochs=3))
    assert code in (0, 1), records  # 1: a variant may miss the accuracy budget (the release gate) after 3 epochs
    assert all(r["status"] == "ok" for r in records.values()), [r.get("error_summary") for r in records.values()]
    return records


def test_security_baseline_pruning_cuts_parameters_and_int8_shrinks_the_artifact(
    security_baseline: dict[str, Any],
) -> None:
    def one(compression: str) -> dict[str, Any]:
        return by_label(security_baseline, compression=compression, attack="none")[0]

    original, pruned = one("none"), one("prune-0.3")
    quantized = one("int8-dynamic")
    assert pruned["params"] < original["params"]
    assert quantized["model_size_bytes"] < original["model_size_bytes"]
    for record in security_baseline.values():
        if record["robust_accuracy"] is not None:
            assert record["robust_accuracy"] <= record["clean_accuracy"]
            assert record["eps"] == pytest.approx(8 / 255)
        assert record["training"]["extra"]["processes"] == 2  # data-parallel on two torchrun processes
        assert "budget" in (record.get("gates") or {}) or record["labels"]["compression"] == "none"
