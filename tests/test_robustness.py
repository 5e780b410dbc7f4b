"""Robust accuracy through the harness: threat models per target, worst case, invariants, a masked model flagged,
and determinism of a re-run."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from bench import jsonl
from bench.cache import StageCache
from bench.matrix import build_cells
from bench.stage_graph import KeyPlanner, plan_cells
from bench.suite import load_suite
from tests.conftest import run_cli, run_suite_for_module

SUITE = {
    "name": "robust",
    "seed": 0,
    "dataset": {"name": "digits", "eval_size": 100, "calibration_size": 32},
    # the rounding model normalises as the built-in ones do (user models get raw pixels unless they ask)
    "models": [
        {"name": "simple_cnn", "width": 8, "hidden": 32},
        {"name": "tests.conftest:rounded_net", "normalize": True},
    ],
    "recipes": [{"name": "standard", "epochs": 5}],
    "compressions": ["none", "int8"],
    "runtimes": ["eager", {"name": "onnxruntime", "exporter": "torchscript"}],
    "attacks": [
        {"name": "fgsm", "eps": [0.0, 0.1]},
        {"name": "pgd", "eps": [0.05, 0.1, 0.2], "steps": 5},  # an eps sweep: each eps continues the smaller
        {"name": "square", "eps": 0.1, "queries": 200},
        {
            "name": "worst_case",
            "attacks": [{"name": "pgd", "eps": 0.1, "steps": 5}, {"name": "square", "eps": 0.1, "queries": 200}],
        },
    ],
    "measurement": {"profile": "smoke", "batch_sizes": [1]},
    "exclude": [{"compression": "int8", "runtime": "eager"}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root, records = run_suite_for_module(tmp_path_factory, SUITE, "robust")
    return root, root / "run.yaml", records


# simple_cnn is trained without any defence: eps 0.1 on [0, 1] pixels must break most of what it gets right
UNDEFENDED = "simple_cnn/standard"
EPS_01 = ("fgsm-0.1", "pgd-0.1", "square-0.1", "worst_case")
TARGETS = ("none/eager", "none/onnxruntime", "int8/onnxruntime")


def test_threat_model_follows_the_target(run):
    _, _, records = run
    assert records["simple_cnn/standard/none/eager/pgd-0.1"]["threat_model"] == "white-box"
    ort = records["simple_cnn/standard/none/onnxruntime/pgd-0.1"]
    assert ort["threat_model"] == "transfer" and ort["surrogate"] == "float eager twin"
    int8 = records["simple_cnn/standard/int8/onnxruntime/pgd-0.1"]
    assert int8["surrogate"] == "float eager twin + straight-through fake-quant twin"
    square = records["simple_cnn/standard/int8/onnxruntime/square-0.1"]
    assert square["threat_model"] == "black-box" and square["surrogate"] is None
    assert 0 < square["queries"]["mean"] <= 200


def test_eps_zero_is_clean_and_worst_case_is_worst(run):
    _, _, records = run
    for cell_id, r in records.items():
        if cell_id.endswith("fgsm-0"):
            assert r["robust_accuracy"] == r["clean_accuracy"]
        if cell_id.endswith("worst_case"):
            parts = [c["robust_accuracy"] for c in r["components"].values()]
            assert r["robust_accuracy"] <= min(parts)
            assert r["threat_model"].startswith("worst of") or r["threat_model"] in ("white-box", "black-box")
        assert all(check["ok"] for name, check in r["checks"].items() if "gradient" not in name), r["checks"]


def test_an_undefended_model_loses_most_of_its_accuracy_at_eps_0_1(run):
    _, _, records = run
    for target in TARGETS:
        for attack in EPS_01:
            r = records[f"{UNDEFENDED}/{target}/{attack}"]
            assert r["status"] == "ok" and r["n_eval"] == 100
            assert r["robust_accuracy"] < r["clean_accuracy"] / 2, r["cell_id"]


def test_robust_accuracy_and_attack_success_rate_count_the_same_samples(run):
    _, _, records = run
    for r in records.values():
        # success rate: the share of clean-correct samples the attack broke
        assert r["robust_accuracy"] == pytest.approx(r["clean_accuracy"] * (1 - r["attack_success_rate"])), r["cell_id"]


def test_pgd_is_at_least_as_strong_as_fgsm_and_fp32_transfer_is_white_box(run):
    _, _, records = run
    eager, fp32_ort = (f"{UNDEFENDED}/{target}" for target in TARGETS[:2])
    one_sample = 1 / records[f"{eager}/pgd-0.1"]["n_eval"]
    # PGD iterates FGSM's signed-gradient step inside the same ball: on an undefended model it finds at least as many
    # adversarial examples (one sample of slack)
    assert (
        records[f"{eager}/pgd-0.1"]["robust_accuracy"] <= records[f"{eager}/fgsm-0.1"]["robust_accuracy"] + one_sample
    )
    for attack in ("fgsm-0.1", "pgd-0.1"):
        # an FP32 artifact computes what its float twin computes, so the transferred examples hit as white-box ones do
        white_box, transfer = records[f"{eager}/{attack}"], records[f"{fp32_ort}/{attack}"]
        assert (white_box["threat_model"], transfer["threat_model"]) == ("white-box", "transfer")
        assert abs(transfer["robust_accuracy"] - white_box["robust_accuracy"]) <= one_sample + 1e-9, attack


def test_gradient_masked_model_is_flagged(run):
    root, _, records = run
    masked = records["tests.conftest:rounded_net/standard/none/eager/pgd-0.1"]
    assert masked["checks"]["pgd: non-zero input gradients"]["ok"] is False
    # zero input gradients: gradient attacks change nothing, a black-box attack still breaks the model
    for attack in ("fgsm-0.1", "pgd-0.1"):
        r = records[f"tests.conftest:rounded_net/standard/none/eager/{attack}"]
        assert r["robust_accuracy"] == r["clean_accuracy"] > 0.9, attack
    square = records["tests.conftest:rounded_net/standard/none/eager/square-0.1"]
    assert square["robust_accuracy"] < square["clean_accuracy"] - 0.2
    worst = records["tests.conftest:rounded_net/standard/none/eager/worst_case"]
    assert worst["robust_accuracy"] == square["robust_accuracy"]
    invariants = json.loads((root / "run" / "run.json").read_text())["invariants"]
    flagged = {v["artifact"] for v in invariants["violations"] if "gradient masking" in v["check"]}
    assert "digits/tests.conftest:rounded_net/standard/none/eager" in flagged
    assert not any("simple_cnn" in a for a in flagged)
    assert records["simple_cnn/standard/none/eager/pgd-0.1"]["checks"]["pgd: non-zero input gradients"]["ok"]


def test_eps_sweep_stages_continue_the_smaller_eps(run, tmp_path):
    root, suite_file, records = run
    sweep = ("pgd-0.05", "pgd-0.1", "pgd-0.2")
    for target in TARGETS:
        stages = [
            root / "cache" / "evaluate" / records[f"{UNDEFENDED}/{target}/{a}"]["stages"]["evaluate"] for a in sweep
        ]
        metas = [json.loads((stage / "meta.json").read_text()) for stage in stages]
        assert "sweep" not in metas[0]
        assert [m["sweep"]["from_eps"] for m in metas[1:]] == [0.05, 0.1], target
        assert all(m["sweep"]["warm_start"] for m in metas[1:] if m["sweep"]["broken_before"] < m["n_eval"])
        flags = [torch.load(stage / "per_sample.pt", weights_only=True)["robust_correct"] for stage in stages]
        assert not any(bool((larger & ~smaller).any()) for smaller, larger in itertools.pairwise(flags))
    # the stage graph (Ray executor): the larger eps's evaluate node needs the smaller eps's, with the run's keys
    suite = load_suite(suite_file)
    cells = [c for c in build_cells(suite, "cpu") if not c.skip_reason]
    planner = KeyPlanner(suite, StageCache(tmp_path / "cache"), tmp_path / "stages.jsonl", "cpu", 1, {})
    nodes, plans = plan_cells(planner, cells)
    evaluate_node = {p.cell.cell_id: p.nodes["evaluate"] for p in plans}
    for target in TARGETS:
        ids = [evaluate_node[f"{UNDEFENDED}/{target}/{a}"] for a in sweep]
        assert [key for _, key in ids] == [records[f"{UNDEFENDED}/{target}/{a}"]["stages"]["evaluate"] for a in sweep]
        assert ids[0] not in nodes[ids[2]].needs and nodes[ids[2]].needs[-1] == ids[1]  # the next-smaller eps only
        assert nodes[ids[1]].needs[-1] == ids[0] and nodes[ids[1]].needs[:4] == nodes[ids[0]].needs[:4]


@pytest.mark.slow
def test_same_seed_same_robust_accuracy_on_a_fresh_run(run, tmp_path, capsys):
    _, suite, records = run
    code, _, _ = run_cli(
        ["run", suite, "--out", tmp_path / "again", "--cache", tmp_path / "cache", "--no-progress"], capsys
    )
    assert code == 0
    for r in jsonl.read(tmp_path / "again" / "cells.jsonl"):
        assert r["robust_accuracy"] == records[r["cell_id"]]["robust_accuracy"], r["cell_id"]
