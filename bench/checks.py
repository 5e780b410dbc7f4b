"""Invariants that say a compression really happened, checked on every cell and recorded with it.

Pruning must leave fewer parameters and MACs; INT8 must leave quantized operators (QDQ nodes or quantized
modules); FP16 must leave about half the bytes of the FP32 artifact; unstructured pruning must reach its
sparsity. A silent no-op would otherwise be reported as a compressed model.
"""

from __future__ import annotations

from typing import Any


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
    return checks


def budget_verdict(record: dict[str, Any], baseline: dict[str, Any], ratio: float) -> dict[str, Any]:
    """Does the cell keep `ratio` of its uncompressed baseline's clean and robust accuracy?"""
    verdict: dict[str, Any] = {"ratio": ratio}
    for metric in ("clean_accuracy", "robust_accuracy"):
        value, base = record.get(metric), baseline.get(metric)
        if value is None or base is None:
            verdict[metric] = None
            continue
        verdict[metric] = {"value": value, "baseline": base, "kept": value >= ratio * base - 1e-12}
    outcomes = [v["kept"] for v in (verdict["clean_accuracy"], verdict["robust_accuracy"]) if v is not None]
    verdict["within_budget"] = all(outcomes)
    return verdict
