"""The report's views: headline, problems at the top, variant table, trade-offs, grids, size and plotly_src."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from plotly.offline import get_plotlyjs
from torch import nn

from bench.report import render_report
from bench.report.charts import pct_axis, tick_labels
from bench.report.views import break_even
from bench.training import OptimConfig, fit
from tests.conftest import run_suite_for_module, tiny_suite
from tests.report_fixtures import fake_run, plotly_source, report_figures, report_grid

MASKING = "possible gradient masking: query attack beats gradient attacks"
CAUSE = "export: RuntimeError: unsupported operator aten::frobnicate"


def _cell(compression: str, runtime: str, attack: str, **fields: Any) -> dict[str, Any]:
    labels = {"model": "net", "recipe": "standard", "compression": compression, "runtime": runtime, "attack": attack}
    record = {"cell_id": "/".join(labels.values()), "labels": labels, "status": "ok"}
    record["attack"] = {"name": attack.split("-")[0]} | ({"eps": 0.03} if attack != "none" else {})
    return record | fields


# compression, runtime: p50 at batch 1 (ms), worst robust accuracy, size (bytes), within budget, compress seconds
VARIANTS = {
    ("none", "eager"): (1.0, 0.6, 100_000, True, 0.0),
    ("int8", "eager"): (0.5, 0.2, 30_000, True, 10.0),
    ("prune", "eager"): (0.2, 0.5, 10_000, False, 4.0),
    ("none", "onnxruntime"): (0.6, 0.55, 90_000, True, 0.0),
    ("int8", "onnxruntime"): (0.3, 0.25, 20_000, True, 3.0),
    ("kd", "eager"): (1.5, 0.1, 50_000, True, 2.0),  # slower than uncompressed: never pays for itself
}


def _fabricated() -> list[dict[str, Any]]:
    cells = []
    for (compression, runtime), (lat, robust, size, within, compress_s) in VARIANTS.items():
        common = {
            "clean_accuracy": 0.9,
            "latency_ms": {"1": {"p50": lat, "n": 100}, "32": {"p50": lat * 10, "n": 50}},
            "model_size_bytes": size,
            "peak_memory_mb": 400.0,
            "model_memory_mb": 5.0,
            "costs": {"train_s": 20.0, "compress_s": compress_s, "measure_s": 7.0, "attack_s": 3.0},
            "budget": {"ratio": 0.99, "within_budget": within},
            "training": {"history": [{"epoch": 1, "loss": 1.0, "train_accuracy": 0.5}, {"epoch": 2, "loss": 0.5}]},
        }
        cells.append(_cell(compression, runtime, "none", **common))
        cells.append(_cell(compression, runtime, "fgsm-0.03", robust_accuracy=robust + 0.1, **common))
        cells.append(_cell(compression, runtime, "pgd-0.03", robust_accuracy=robust, **common))
    cells[-1]["payoff"] = {"verdict": "does not pay off", "baseline_cell": "net/standard/none/eager/none"}
    cells[-1]["payoff"]["ratio"] = {"1": 1.5}
    cells[0]["gates"] = {"max_latency_ms": {"verdict": "fail", "detail": "p50 at batch 1 1.0 ms > 0.5 ms"}}
    cells[1]["checks"] = {"eps_ball": {"ok": False, "detail": "max |delta| 0.2 > eps 0.03"}}
    failed = _cell("lowrank", "eager", "none", status="failed", error="Traceback...\nRuntimeError: x")
    failed["error_summary"] = CAUSE
    skipped = _cell("int8", "tensorrt", "none", status="skipped", reason="runtime tensorrt is not installed")
    return [*cells, failed, skipped]


def _write(path: Path, cells: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells), encoding="utf-8")
    (path / "run.json").write_text(json.dumps({"name": "fab", "status": "complete"} | (meta or {})), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("views")
    violations = [
        {"check": "robust accuracy rises with eps", "artifact": "net/standard/none/eager", "detail": "0.3 -> 0.4"},
        {"check": MASKING, "artifact": "net/standard/int8/eager", "detail": "square 0.1 < pgd 0.2"},
    ]
    run = _write(root / "run", _fabricated(), {"invariants": {"violations": violations}})
    return render_report([run], root / "report.html").read_text(encoding="utf-8")


def _grid(html: str, name: str) -> dict[str, Any]:
    return report_grid(html, name)


def _top(html: str) -> str:
    """The page above the headline: where every problem must show."""
    return html[: html.index('id="headline"')]


def _headline(html: str) -> str:
    return html[html.index('id="headline"') : html.index('id="variants"')]


def test_headline_picks(fab: str) -> None:
    row = re.search(r"<strong>net</strong>.*?</tr>", _headline(fab), re.S)
    assert row is not None
    tds = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    fastest, robust, smallest, front = tds[:4]  # after the model's own cell
    # prune is faster but lost the budget: int8 on onnxruntime is the fastest within it, 1.0 / 0.3 = 3.33x eager
    assert "int8 · onnxruntime" in fastest and "3.33× eager" in fastest
    assert "none · eager" in robust and "60.0%" in robust  # the worst attack's 0.6, not fgsm's 0.7
    assert "prune · eager" in smallest and "10 kB" in smallest
    # the front: prune (0.2 ms, 50%), none on onnxruntime (0.6 ms, 55%), none on eager (1.0 ms, 60%)
    assert re.findall(r"<code>(.*?)</code>", front) == ["prune · eager", "none · onnxruntime", "none · eager"]


def test_problems_at_top_in_red(fab: str) -> None:
    top = _top(fab)
    assert 'id="problems" class="problems"' in top
    assert CAUSE in top and "1 failed cell" in top
    assert "runtime tensorrt is not installed" in top
    assert "max_latency_ms" in top and "p50 at batch 1 1.0 ms &gt; 0.5 ms" in top
    assert "eps_ball" in top and "max |delta| 0.2 &gt; eps 0.03" in top
    assert "net/standard/kd/eager" in top and "do not pay off" in top
    # gradient masking first, flagged, in red
    masking = top.index(MASKING)
    assert masking < top.index("robust accuracy rises with eps")
    item = top[top.rindex("<li", 0, masking) : masking]
    assert 'class="bad"' in item and "GRADIENT MASKING" in item


def test_variant_table(fab: str) -> None:
    grid = _grid(fab, "variants")
    labels = [c["label"] for c in grid["columns"]]
    assert len(grid["rows"]) == len(VARIANTS) + 2  # one per variant (failed and skipped ones included), not per attack
    assert "robust: fgsm-0.03" in labels and "robust: pgd-0.03" in labels
    rows = {
        (r[labels.index("compression")], r[labels.index("runtime")]): dict(zip(labels, r, strict=True))
        for r in grid["rows"]
    }
    int8_ort = rows[("int8", "onnxruntime")]
    assert int8_ort["speed-up vs uncompressed"] == pytest.approx(2.0)  # 0.6 / 0.3
    assert int8_ort["speed-up vs eager"] == pytest.approx(3.333, rel=1e-3)  # 1.0 / 0.3
    assert int8_ort["size vs uncompressed"] == pytest.approx(20 / 90, rel=1e-3)
    assert int8_ort["size vs eager"] == pytest.approx(0.2)
    assert int8_ort["robust: pgd-0.03"] == pytest.approx(0.25) and int8_ort["robust: fgsm-0.03"] == pytest.approx(0.35)
    assert int8_ort["p50 max batch (ms)"] == [3.0, 32]
    assert int8_ort["peak mem (MB)"] == 400.0 and int8_ort["model mem (MB)"] == 5.0
    assert rows[("prune", "eager")]["budget"].startswith("lost")
    # the cell table keeps building and benchmarking costs apart
    cells = _grid(fab, "cells")
    cols = [c["label"] for c in cells["columns"]]
    first = dict(zip(cols, cells["rows"][0], strict=True))
    assert first["train+compress (s)"] == 20.0 and first["export+measure+eval (s)"] == 10.0


def test_break_even(fab: str) -> None:
    assert break_even(10.0, 0.5) == 20_000
    assert break_even(1.0, 0.0) is None and break_even(1.0, -0.1) is None
    assert break_even(0.0, 0.1) == 0
    grid = _grid(fab, "breakeven")
    labels = [c["label"] for c in grid["columns"]]
    rows = {r[0]: dict(zip(labels, r, strict=True)) for r in grid["rows"]}
    int8 = rows["net/standard/int8/eager"]
    assert int8["extra train+compress (s)"] == 10.0 and int8["saving per inference (ms)"] == 0.5
    assert int8["break-even (inferences)"] == 20_000 and "after 20,000 inferences" in int8["verdict"]
    assert rows["net/standard/int8/onnxruntime"]["break-even (inferences)"] == 10_000  # 3 s / 0.3 ms
    assert rows["net/standard/kd/eager"]["verdict"] == "never (not faster)"
    assert 'id="chart-breakeven"' in fab


def test_tick_labels_never_repeat(fab: str) -> None:
    rng = random.Random(0)
    cases = [[0.962, 0.965, 0.968, 0.971, 0.974], [0.5], [0.0, 1.0], [0.9991, 0.9993]]
    cases += [[rng.uniform(lo, lo + rng.choice([1e-3, 1e-2, 0.1, 0.5])) for _ in range(6)] for lo in [0.0, 0.4, 0.9]]
    for values in cases:
        labels = tick_labels(pct_axis(values, "acc"))
        assert len(labels) >= 2 and len(set(labels)) == len(labels), (values, labels)
    # on the figure itself: the size-accuracy chart's y axis
    axis = report_figures(fab)["chart-size-accuracy"]["layout"]["yaxis"]
    labels = tick_labels(axis)
    assert len(labels) >= 2 and len(set(labels)) == len(labels)


def test_plotly_src(tmp_path: Path) -> None:
    run = _write(tmp_path / "run", _fabricated())
    html = render_report([run], tmp_path / "r.html", plotly_src="../plotly.min.js").read_text(encoding="utf-8")
    banner = re.search(r"plotly\.js v\d+\.\d+\.\d+", get_plotlyjs())
    assert banner is not None and banner.group(0) not in html
    assert plotly_source(html) == "../plotly.min.js" and html.count("../plotly.min.js") == 1
    assert len(html) < 1_000_000 and report_figures(html)


def test_ten_thousand_cells_under_8_mb(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "big", 10_000)
    out = render_report([run], tmp_path / "report.html")
    assert out.stat().st_size < 8_000_000
    html = out.read_text(encoding="utf-8")
    assert len(_grid(html, "cells")["rows"]) == 10_000
    assert html.count(re.search(r"plotly\.js v\d+\.\d+\.\d+", get_plotlyjs()).group(0)) == 1  # type: ignore[union-attr]


def test_fit_records_history() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    cost = fit(model, x, y, OptimConfig(epochs=3, batch_size=16), seed=0)
    assert [h["epoch"] for h in cost.history] == [1, 2, 3]
    assert all(h["loss"] > 0 and 0 <= h["train_accuracy"] <= 1 for h in cost.history)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    suite = tiny_suite(compressions=["none", {"name": "prune", "ratio": 0.5}])
    root, _ = run_suite_for_module(tmp_path_factory, suite, "views-real")
    run_dir = root / "run"
    return run_dir, (run_dir / "report.html").read_text(encoding="utf-8")


def test_real_run(real: tuple[Path, str]) -> None:
    run_dir, html = real
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    assert all(r["training"]["history"] for r in records if r["status"] == "ok")
    grid = _grid(html, "variants")
    labels = [c["label"] for c in grid["columns"]]
    assert len(grid["rows"]) == 2 and "robust: fgsm-0.1" in labels
    assert len(_grid(html, "cells")["rows"]) == len(records)
    assert "<strong>mlp</strong>" in _headline(html)
    for chart in ("chart-robust-latency", "chart-size-accuracy", "chart-speedup", "chart-training"):
        assert chart in report_figures(html)


# -- federated recipes: bytes per client and round, loss and accuracy per round --------------------------------------


def _fedavg(data: Any, **params: Any) -> tuple[nn.Module, Any]:
    from bench.config import parse_config
    from bench.models import MODELS, build_model
    from bench.recipes import RECIPES

    torch.manual_seed(0)
    cfg = parse_config(MODELS.get("simple_cnn").config_cls, {"width": 8, "hidden": 32})
    model = build_model("simple_cnn", cfg, data.num_classes, data.in_shape, data.mean, data.std)
    entry = RECIPES.get("fedavg")
    fed = {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "rounds": 3, "clients": 3} | params
    cost = entry.obj(model, data, parse_config(entry.config_cls, fed), seed=0, device="cpu")
    return model.eval(), cost


@pytest.fixture(scope="module")
def digits() -> Any:
    import dataclasses

    from bench.datasets import load_dataset

    data = load_dataset("digits", None, 0)
    return dataclasses.replace(data, x_train=data.x_train[:600], y_train=data.y_train[:600])


def test_fedavg_records_bytes_and_accuracy_per_round(digits: Any) -> None:
    from bench.recipes.federated import ROUND_EVAL_SAMPLES, held_out_accuracy

    model, cost = _fedavg(digits, update_compression="topk", topk_ratio=0.1, batch_size=32, local_epochs=2)
    extra = cost.extra
    # bytes: [round][client], summing to the per-client totals; top-k sends the same on every round
    sent, received = extra["round_bytes_sent"], extra["round_bytes_received"]
    assert len(sent) == len(received) == 3 and all(len(r) == 3 for r in sent + received)
    assert [sum(r[k] for r in sent) for k in range(3)] == extra["bytes_sent"]
    assert [sum(r[k] for r in received) for k in range(3)] == extra["bytes_received"]
    assert all(r == [extra["dense_update_bytes"]] * 3 for r in received)  # the dense global model, every round
    assert all(0 < b < extra["dense_update_bytes"] for r in sent for b in r) and sent[0] == sent[-1]
    # accuracy of the global model after each round, on the calibration split: the last one is the final model's
    accuracy = extra["round_accuracy"]
    n = min(len(digits.y_calib), ROUND_EVAL_SAMPLES)
    assert len(accuracy) == 3 and extra["round_accuracy_samples"] == n > 0
    assert all(a is not None and a * n == pytest.approx(round(a * n), abs=0.01) for a in accuracy)
    final = held_out_accuracy(model, digits.x_calib, digits.y_calib, "cpu")
    assert final is not None and accuracy[-1] == round(final, 4)
    assert accuracy[-1] > 0.3 and accuracy[-1] > accuracy[0]  # it learns (chance is 0.1)


def test_fedavg_round_evaluation_changes_no_weight(digits: Any) -> None:
    """Scoring the global model after each round neither changes the weights nor the random streams."""
    import dataclasses

    no_calib = dataclasses.replace(digits, x_calib=digits.x_calib[:0], y_calib=digits.y_calib[:0])
    scored, cost = _fedavg(digits, rounds=2, clients=2)
    unscored, bare = _fedavg(no_calib, rounds=2, clients=2)
    assert bare.extra["round_accuracy"] == [None, None] and bare.extra["round_accuracy_samples"] == 0
    assert all(a is not None for a in cost.extra["round_accuracy"])
    a, b = scored.state_dict(), unscored.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cost.extra["round_loss"] == bare.extra["round_loss"]


@pytest.mark.parametrize("eps", [0.1, 0.6])  # 0.6: no round's model is robust, and the earliest tie is kept
def test_fedavg_keeps_the_round_with_the_best_robust_accuracy(digits: Any, eps: float) -> None:
    """`round_attack` scores each round's global model under PGD on the calibration split; `keep: best` ends with
    the model of the best round, and the record names it."""
    from bench.attacks.pgd import PGD, PGDConfig
    from bench.recipes.federated import held_out_robust_accuracy

    pgd = {"eps": eps, "alpha": eps / 5, "steps": 5}
    params = {"rounds": 4, "clients": 2, "round_attack": pgd}
    last, last_cost = _fedavg(digits, **params)
    best, cost = _fedavg(digits, keep="best", **params)
    robust, clean = cost.extra["round_robust_accuracy"], cost.extra["round_accuracy"]
    assert len(robust) == len(clean) == 4 and all(0 <= r <= c for r, c in zip(robust, clean, strict=True))
    assert robust == last_cost.extra["round_robust_accuracy"]  # the same rounds: scoring changes nothing
    kept = cost.extra["kept_round"]
    assert kept == robust.index(max(robust)) + 1 and last_cost.extra["kept_round"] == 4
    attack = PGD(PGDConfig(**pgd))
    final = held_out_robust_accuracy(best, digits.x_calib, digits.y_calib, attack, 0, "cpu")
    assert round(final, 4) == robust[kept - 1]  # the model it ends with is that round's
    if kept != 4:
        pairs = zip(best.state_dict().values(), last.state_dict().values(), strict=True)
        assert any(not torch.equal(a, b) for a, b in pairs)


def test_fedavg_torchrun_records_the_same_rounds(digits: Any) -> None:
    """The torchrun ranks carry the calibration split: rank 0 scores the global model as the simulation does."""
    import dataclasses

    small = dataclasses.replace(digits, x_train=digits.x_train[:200], y_train=digits.y_train[:200])
    params = {"rounds": 2, "clients": 2, "update_compression": "topk"}
    _, sim = _fedavg(small, **params)
    _, dist = _fedavg(small, **params, mode="torchrun")
    assert dist.extra["processes"] == 2
    for key in ("round_accuracy", "round_accuracy_samples", "round_bytes_sent", "round_bytes_received", "bytes_sent"):
        assert sim.extra[key] == dist.extra[key], key
    assert all(a is not None for a in dist.extra["round_accuracy"])


def test_federated_chart(tmp_path: Path, digits: Any) -> None:
    _, cost = _fedavg(digits, update_compression="int8")
    extra = cost.extra
    fed = _cell("none", "eager", "none", clean_accuracy=0.8, latency_ms={"1": {"p50": 1.0, "n": 100}})
    fed["labels"]["recipe"] = "fedavg"
    fed["cell_id"] = "/".join(fed["labels"].values())
    fed["training"] = {"seconds": cost.seconds, "epochs": cost.epochs, "extra": extra}
    old = json.loads(json.dumps(fed))  # a record from before the per-round figures: totals only
    old["labels"]["model"] = "old"
    old["cell_id"] = "/".join(old["labels"].values())
    for key in ("round_bytes_sent", "round_bytes_received", "round_accuracy"):
        del old["training"]["extra"][key]
    html = render_report([_write(tmp_path / "run", [fed, old])], tmp_path / "r.html").read_text(encoding="utf-8")
    fig = report_figures(html)["chart-federated"]
    traces = {t["name"]: t for t in fig["data"]}
    sent = traces["net · fedavg: sent"]
    assert sent["x"] == ["client 0", "client 1", "client 2"]
    assert sent["y"] == [b / 3 for b in extra["bytes_sent"]]  # a round's bytes (the same each round for int8)
    assert all(text.startswith("r1 ") and text.count(", ") == 2 for text in sent["customdata"])
    assert traces["net · fedavg: received"]["y"] == [extra["dense_update_bytes"]] * 3
    assert traces["net · fedavg: loss"]["y"] == extra["round_loss"]
    acc = traces["net · fedavg: accuracy"]
    assert acc["x"] == [1, 2, 3] and acc["y"] == extra["round_accuracy"] and acc["yaxis"] == "y3"
    assert fig["layout"]["yaxis3"]["tickformat"] == ".0%"
    # the old record: bytes spread evenly over its rounds, no accuracy line
    assert traces["old · fedavg: sent"]["y"] == sent["y"] and "old · fedavg: accuracy" not in traces


def test_report_cli_plotly_src(tmp_path: Path) -> None:
    from bench.cli import main

    run = _write(tmp_path / "run", _fabricated())
    out = tmp_path / "site" / "report.html"
    assert main(["report", str(run), "-o", str(out), "--plotly-src", "../assets/plotly.min.js"]) == 0
    html = out.read_text(encoding="utf-8")
    assert plotly_source(html) == "../assets/plotly.min.js" and len(html) < 1_000_000
    assert main(["report", str(run), "-o", str(tmp_path / "inline.html")]) == 0
    assert plotly_source((tmp_path / "inline.html").read_text(encoding="utf-8")) is None
