"""Invariants that say a compression really happened, checked on every cell and recorded with it.

Pruning must leave fewer parameters and MACs; INT8 must leave quantized operators (QDQ nodes or quantized
modules); FP16 must leave about half the bytes of the FP32 artifact; unstructured pruning must reach its
sparsity. A silent no-op would otherwise be reported as a compressed model.

The accuracy-budget verdict (`budget_verdict`) respects sample size: a cell loses its budget only when a paired
test on the same samples (bench.stats) supports the drop; too few samples to tell is "inconclusive".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.stats import ALPHA, paired_accuracy


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


def compression_checks(
    steps: list[dict[str, Any]], lowering: dict[str, Any] | None, export_meta: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    for step in steps:
        if "params_before" in step:
            checks[f"{step['label']}: fewer params and MACs"] = _check(
                step["params_after"] < step["params_before"] and step["macs_after"] < step["macs_before"],
                f"params {step['params_before']} -> {step['params_after']}, "
                f"MACs {step['macs_before']} -> {step['macs_after']}",
            )
        if "sparsity" in step:
            checks[f"{step['label']}: sparsity"] = _check(step["sparsity"] > 0, f"{step['sparsity']:.1%} zero weights")
    if lowering and lowering.get("kind") == "int8":
        count = export_meta.get("quantized_ops") or len(export_meta.get("quantized_layers") or [])
        checks["int8: quantized operators present"] = _check(count > 0, f"{count} quantized operators / layers")
    if lowering and lowering.get("kind") == "fp16" and "size_ratio_to_fp32" in export_meta:
        ratio = export_meta["size_ratio_to_fp32"]
        checks["fp16: about half the bytes"] = _check(0.35 <= ratio <= 0.65, f"{ratio:.2f} x the FP32 artifact")
    if "onnx_checker" in export_meta:  # an artifact the checker rejects fails its export: this one passed
        batch = export_meta.get("batch_dim")
        checks["onnx: checker, dynamic batch"] = _check(
            isinstance(batch, str), f"onnx.checker passed; opset {export_meta.get('opset')}, batch dimension {batch!r}"
        )
    return checks


def budget_verdict(
    record: dict[str, Any],
    baseline: dict[str, Any],
    ratio: float,
    cell_samples: dict[str, Any] | None = None,
    baseline_samples: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Does the cell keep `ratio` of its uncompressed baseline's clean and robust accuracy?

    Per metric: "kept" when value >= ratio * baseline; "lost" when below that *and* the exact McNemar test on the
    same samples (the per-sample correctness of the cell and of its baseline: {"clean_correct", "robust_correct"}
    as in an evaluate stage's per_sample.pt) supports a drop at bench.stats.ALPHA; "inconclusive" otherwise, and
    when the per-sample correctness is not given. `within_budget` is False only when a metric is lost.
    """
    verdict: dict[str, Any] = {"ratio": ratio}
    for metric, key in (("clean_accuracy", "clean_correct"), ("robust_accuracy", "robust_correct")):
        value, base = record.get(metric), baseline.get(metric)
        if value is None or base is None:
            verdict[metric] = None
            continue
        before = None if baseline_samples is None else baseline_samples.get(key)
        after = None if cell_samples is None else cell_samples.get(key)
        verdict[metric] = metric_verdict(value, base, ratio, before, after)
    outcomes = [v["verdict"] for v in (verdict["clean_accuracy"], verdict["robust_accuracy"]) if v is not None]
    verdict["within_budget"] = "lost" not in outcomes
    verdict["verdict"] = next((o for o in ("lost", "inconclusive") if o in outcomes), "kept")
    return verdict


def metric_verdict(value: float, base: float, ratio: float, before: Any = None, after: Any = None) -> dict[str, Any]:
    """One accuracy against its baseline's (see budget_verdict); `before` / `after`: per-sample correctness of the
    baseline and of the cell (bool arrays or tensors, the same samples in the same order), or None."""
    limit = ratio * base
    out: dict[str, Any] = {"value": value, "baseline": base, "kept": None, "verdict": "inconclusive", "limit": limit}
    if before is not None and after is not None:
        test = paired_accuracy(np.asarray(before, bool), np.asarray(after, bool))
        out |= {"n": test.n, "b": test.b, "c": test.c, "p_value": test.p_value, "ci": list(test.ci)}
        lost = test.p_value <= ALPHA
    else:
        lost = False  # no per-sample evidence: a value below the limit cannot be told from noise
    if value >= limit - 1e-12:
        out |= {"kept": True, "verdict": "kept"}
    elif lost:
        out |= {"kept": False, "verdict": "lost"}
    return out
