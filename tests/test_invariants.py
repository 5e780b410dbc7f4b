"""Run-level robustness invariants on hand-made records: each violation is found, consistent runs pass."""

from __future__ import annotations

from bench.invariants import run_invariants


def rec(name, robust, runtime="eager", **attack):
    attack = {"name": name, **attack}
    label = f"{name}-{attack.get('eps')}-{attack.get('steps')}-{attack.get('restarts')}"
    labels = {
        "dataset": "digits",
        "model": "cnn",
        "recipe": "standard",
        "compression": "none",
        "runtime": runtime,
        "attack": label,
    }
    return {
        "status": "ok",
        "robust_accuracy": robust,
        "n_eval": 100,
        "cell_id": f"{runtime}/{label}",
        "attack": attack,
        "labels": labels,
    }


def checks(records):
    return [v["check"] for v in run_invariants(records)["violations"]]


def test_consistent_run_passes():
    records = [
        rec("fgsm", 0.6, eps=0.05),
        rec("fgsm", 0.4, eps=0.1),
        rec("pgd", 0.3, eps=0.1, steps=10),
        rec("pgd", 0.28, eps=0.1, steps=20),
        rec("square", 0.35, eps=0.1, queries=1000),
        rec("pgd", 0.0, eps=1.0, steps=10),
    ]
    result = run_invariants(records)
    assert result["violations"] == [] and result["checked"] >= 5


def test_robust_rising_with_eps_or_steps_is_flagged():
    assert checks([rec("fgsm", 0.4, eps=0.05), rec("fgsm", 0.5, eps=0.1)]) == ["robust accuracy rises with eps"]
    assert checks([rec("pgd", 0.3, eps=0.1, steps=10), rec("pgd", 0.35, eps=0.1, steps=20)]) == [
        "robust accuracy rises with steps"
    ]
    # within one sample (1 / n_eval) is a tie, not a violation
    assert checks([rec("fgsm", 0.40, eps=0.05), rec("fgsm", 0.41, eps=0.1)]) == []


def test_pgd_weaker_than_fgsm_and_masking_and_unbounded():
    assert checks([rec("fgsm", 0.3, eps=0.1), rec("pgd", 0.5, eps=0.1, steps=10)]) == [
        "iterative attack weaker than single-step"
    ]
    found = checks([rec("pgd", 0.9, eps=0.1, steps=10), rec("square", 0.6, eps=0.1, queries=1000)])
    assert found == ["possible gradient masking: query attack beats gradient attacks"]
    assert checks([rec("pgd", 0.2, eps=1.0, steps=10)]) == ["unbounded attack leaves robust samples"]


def test_artifacts_are_compared_separately():
    # the same attacks on two runtimes are two series: no cross-artifact comparison
    assert checks([rec("fgsm", 0.4, eps=0.05), rec("fgsm", 0.6, eps=0.1, runtime="onnxruntime")]) == []
