"""Clean and robust accuracy of a deployed predictor, with the threat model that produced the robust number.

Robust accuracy counts a sample as robust only if it is classified correctly both clean and under attack
(AutoAttack's convention: only clean-correct samples are attacked, misclassified ones count as broken).
Adversarial inputs are always *scored on the deployed artifact*; they are crafted on it when it has input
gradients (white-box) and on its float eager twin when it has none (transfer). Invariants are checked on every
cell and recorded in `checks`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bench.attacks import Attack
from bench.training import predict


def _rate(flags: torch.Tensor) -> float:
    """Share of True flags, as an exact ratio of counts (a float32 mean would print 0.925000011920929)."""
    return int(flags.sum()) / len(flags) if len(flags) else float("nan")


def _craft(
    attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, device: str
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # gradients w.r.t. inputs only: cheaper, and the model stays untouched
    out = [
        attack.perturb(model, x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), generator).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out) if out else x.clone()


def _zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    """Share of samples whose input gradient is exactly zero (a white-box attack would be blind on them)."""
    from bench.attacks import input_gradient

    grad = input_gradient(model.to(device), x[:256].to(device), y[:256].to(device))
    return float((grad.flatten(1).abs().sum(1) == 0).float().mean())


def evaluate(
    predictor: Any, float_twin: nn.Module, attack: Attack | None, data: Any, *, batch_size: int, seed: int, device: str
) -> dict[str, Any]:
    x, y = data.x_eval, data.y_eval
    start = time.perf_counter()
    logits = predict(predictor, x, batch_size)
    eval_s = time.perf_counter() - start
    clean_correct = logits.argmax(1) == y
    twin_logits = predict(lambda b: float_twin.to(device)(b.to(device)), x, batch_size)
    result: dict[str, Any] = {
        "n_eval": len(y),
        "clean_accuracy": _rate(clean_correct),
        "eval_s": eval_s,
        # agreement of the deployed artifact with the float eager model it came from (parity)
        "agreement": {
            "top1_agreement": _rate(logits.argmax(1) == twin_logits.argmax(1)),
            "max_abs_logit_diff": float((logits - twin_logits).abs().max()) if len(y) else 0.0,
        },
        "robust_accuracy": None,
        "threat_model": None,
        "surrogate": None,
        "attack_s": 0.0,
        "checks": {"finite_outputs": {"ok": bool(torch.isfinite(logits).all()), "detail": "clean logits finite"}},
    }
    per_sample = {"clean_correct": clean_correct, "robust_correct": None}
    if attack is None:
        return result | {"per_sample": per_sample}

    white_box = predictor.module is not None
    source = predictor.module if white_box else float_twin
    idx = clean_correct.nonzero().flatten()
    start = time.perf_counter()
    x_adv = x.clone()
    x_adv[idx] = _craft(attack, source, x[idx], y[idx], batch_size, seed, device)
    adv_correct = predict(predictor, x_adv, batch_size).argmax(1) == y
    attack_s = time.perf_counter() - start
    robust_correct = clean_correct & adv_correct
    delta = (x_adv - x).abs().flatten(1).max(1).values if len(x) else torch.zeros(0)
    max_delta = float(delta.max()) if len(delta) else 0.0
    checks = result["checks"] | {
        "eps_ball": {
            "ok": max_delta <= attack.eps + 1e-6,
            "detail": f"max |x_adv - x| {max_delta:.5f}, eps {attack.eps:.5f}",
        },
        "pixel_range": {
            "ok": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
            "detail": f"x_adv in [{float(x_adv.min()):.3f}, {float(x_adv.max()):.3f}]",
        },
    }
    if white_box:
        zero = _zero_gradient_fraction(source, x[idx], y[idx], device) if len(idx) else 0.0
        checks["nonzero_gradients"] = {"ok": zero < 0.5, "detail": f"{zero:.1%} of samples have a zero input gradient"}
    n_correct = int(clean_correct.sum())
    result.update(
        robust_accuracy=_rate(robust_correct),
        threat_model="white-box" if white_box else "transfer",
        surrogate=None if white_box else "float eager twin",
        attack_s=attack_s,
        attack_success_rate=float(1 - robust_correct.sum() / n_correct) if n_correct else None,
        eps=attack.eps,
        norm=attack.norm,
        checks=checks,
    )
    per_sample["robust_correct"] = robust_correct
    return result | {"per_sample": per_sample}
