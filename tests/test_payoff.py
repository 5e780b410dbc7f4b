"""A compression that makes its model slower on a runtime is flagged "does not pay off": in the record, in the
summary `bench run` prints and in the report; noise is not flagged."""

from __future__ import annotations

import numpy as np

from bench.payoff import FASTER, SLOWER, UNCLEAR, latency_payoff, read_samples
from bench.record import CellRecord
from bench.report.grids import payoff_text
from bench.summary import summary_table
from tests.conftest import run_suite, tiny_suite


def times(median_ms: float, n: int = 60, seed: int = 0) -> list[float]:
    """Call times around a median with the right skew of real timings (a few slow outliers)."""
    rng = np.random.default_rng(seed)
    return list(median_ms * (1 + 0.03 * rng.standard_normal(n)) + rng.exponential(0.02 * median_ms, n))


def test_verdicts_follow_size_and_evidence_of_the_change():
    base = {"1": times(1.0, seed=1), "16": times(10.0, seed=2)}
    slower = latency_payoff({"1": times(1.0, seed=3), "16": times(28.0, seed=4)}, base, "m/none/ort/none")
    assert slower.verdict == SLOWER and slower.slower_batches == [16]
    assert 2.6 < slower.ratio["16"] < 3.0 and slower.p_value["16"] < 1e-6
    faster = latency_payoff({"1": times(0.5, seed=5), "16": times(4.0, seed=6)}, base, "m/none/ort/none")
    assert faster.verdict == FASTER and faster.slower_batches is None
    # the same distribution drawn again: no verdict either way
    noise = latency_payoff({"1": times(1.0, seed=7), "16": times(10.0, seed=8)}, base, "m/none/ort/none")
    assert noise.verdict == UNCLEAR
    # 3% slower with overwhelming evidence is still within the threshold: not flagged
    small = latency_payoff({"1": times(1.03, n=5000, seed=9)}, {"1": times(1.0, n=5000, seed=10)}, "b")
    assert small.verdict == UNCLEAR
    # three calls a side cannot show a difference at p <= 0.01, however large it looks
    few = latency_payoff({"1": [3.0, 3.1, 3.2]}, {"1": [1.0, 1.1, 1.2]}, "b")
    assert few.verdict == UNCLEAR


def test_a_slower_variant_is_named_in_the_summary_and_the_report():
    payoff = latency_payoff({"16": times(19.0)}, {"16": times(6.8, seed=1)}, "mobilenet/standard/none/onnxruntime/none")
    record = CellRecord(cell_id="mobilenet/standard/prune-0.3/onnxruntime/none", status="ok", payoff=payoff)
    line = summary_table([record]).splitlines()[-1]
    assert line.startswith("does not pay off: mobilenet/standard/prune-0.3/onnxruntime/none is slower than")
    assert f"(batch 16: {payoff.ratio['16']:.2f}x)" in line and 2.6 < payoff.ratio["16"] < 3.0
    text = payoff_text(CellRecord.from_json(record.to_json()))  # the report's cell; it survives the JSON round trip
    assert text == f"does not pay off ({payoff.ratio['16']:.2f}x)"


def test_every_compressed_cell_is_compared_with_its_uncompressed_twin_on_the_same_runtime(tmp_path):
    data = tiny_suite(
        compressions=["none", {"name": "prune", "ratio": 0.5}],
        runtimes=["eager", "onnxruntime"],
        attacks=["none"],
    )
    code, records = run_suite(tmp_path, data)
    assert code == 0
    for runtime in ("eager", "onnxruntime"):
        pruned = records[f"mlp/standard/prune-0.5/{runtime}/none"]
        assert pruned["payoff"]["baseline_cell"] == f"mlp/standard/none/{runtime}/none"
        assert pruned["payoff"]["verdict"] in (SLOWER, FASTER, UNCLEAR)
        assert set(pruned["payoff"]["ratio"]) == {"1", "8"}
        assert records[f"mlp/standard/none/{runtime}/none"]["payoff"] is None


def test_samples_of_processes_with_different_call_counts_are_pooled(tmp_path):
    (tmp_path / "samples.json").write_text('{"1": [[1.0, 2.0, 3.0], [4.0, 5.0]], "8": [6.0, 7.0]}')
    assert read_samples(tmp_path) == {"1": [1.0, 2.0, 3.0, 4.0, 5.0], "8": [6.0, 7.0]}
