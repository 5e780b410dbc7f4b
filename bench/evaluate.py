"""Clean and robust accuracy of a deployed predictor, with the threat model that produced the robust number.

Robust accuracy counts a sample as robust only if it is classified correctly both clean and under attack
(AutoAttack's convention: only clean-correct samples are attacked, misclassified ones count as broken).
Adversarial inputs are crafted where bench.threat_models says (white-box, transfer or black-box, from the kinds
the attacks declare) and always *scored on the deployed artifact*. Invariants are checked on every cell and
recorded in `checks`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bench.attacks import Attack, input_gradient
from bench.inference import predict, rate
from bench.threat_models import AttackMember, attack_members, crafting_sources
from bench.types import DataSplits, Lowering


def _craft(
    attack: Attack, source: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, device: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adversarial inputs for (x, y) crafted on `source`, in batches; also per-sample queries when counted."""
    generator = torch.Generator().manual_seed(seed)
    out, queries = [], []
    for i in range(0, len(x), batch_size):
        out.append(
            attack.perturb(source, x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), generator).cpu()
        )
        if getattr(attack, "last_queries", None) is not None:
            queries.append(attack.last_queries.cpu())
    x_adv = torch.cat(out) if out else x.clone()
    return x_adv, (torch.cat(queries) if queries else None)


def _zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    """Share of samples whose input gradient is exactly zero (a white-box attack would be blind on them)."""
    grad = input_gradient(model.to(device), x[:256].to(device), y[:256].to(device))
    return float((grad.flatten(1).abs().sum(1) == 0).float().mean())


def _attack(
    member: AttackMember,
    predictor: Any,
    float_twin: nn.Module,
    lowering: Lowering | None,
    data: DataSplits,
    clean_correct: torch.Tensor,
    batch_size: int,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """One attack with its threat model; per-sample robust flags are the worst over its surrogates."""
    name, attack = member.name, member.attack
    x, y = data.x_eval, data.y_eval
    threat, sources = crafting_sources(member, predictor, float_twin, lowering, data.x_calib, device)
    robust = clean_correct.clone()
    checks: dict[str, dict[str, Any]] = {}
    queries = None
    start = time.perf_counter()
    for surrogate, source in sources:
        idx = robust.nonzero().flatten()  # only samples still unbroken are attacked again
        if len(idx) == 0:
            break
        x_adv = x.clone()
        x_adv[idx], q = _craft(attack, source, x[idx], y[idx], batch_size, seed, device)
        robust &= predict(predictor, x_adv, batch_size).argmax(1) == y
        if q is not None:
            queries = q
        delta = (x_adv - x).flatten(1)
        dist = delta.abs().max(1).values if attack.norm == "Linf" else delta.norm(dim=1)
        worst = float(dist.max()) if len(dist) else 0.0
        checks[f"{name}: eps-ball ({surrogate})"] = {
            "ok": worst <= attack.eps + 1e-5,
            "detail": f"max {attack.norm} distance {worst:.5f}, eps {attack.eps:.5f}",
        }
        checks[f"{name}: pixel range ({surrogate})"] = {
            "ok": bool(x_adv.min() >= 0 and x_adv.max() <= 1),
            "detail": f"x_adv in [{float(x_adv.min()):.3f}, {float(x_adv.max()):.3f}]",
        }
        if threat == "white-box" and len(idx):
            zero = _zero_gradient_fraction(source, x[idx], y[idx], device)
            checks[f"{name}: non-zero input gradients"] = {
                "ok": zero < 0.5,
                "detail": f"{zero:.1%} of attacked samples have an all-zero input gradient",
            }
    if attack.eps == 0:
        checks[f"{name}: eps = 0 gives clean accuracy"] = {
            "ok": bool(torch.equal(robust, clean_correct)),
            "detail": f"robust {rate(robust):.4f}, clean {rate(clean_correct):.4f}",
        }
    return {
        "robust_correct": robust,
        "threat_model": threat,
        "surrogate": " + ".join(s for s, _ in sources) if threat == "transfer" else None,
        "seconds": time.perf_counter() - start,
        "queries": queries,
        "checks": checks,
        "eps": attack.eps,
        "norm": attack.norm,
    }


def evaluate(
    predictor: Any,
    float_twin: nn.Module,
    attack: Attack | None,
    data: DataSplits,
    *,
    batch_size: int,
    seed: int,
    device: str,
    lowering: Lowering | None = None,
    attack_name: str = "attack",
) -> dict[str, Any]:
    """Clean accuracy, parity with the float twin, and (with an attack) robust accuracy with its threat model."""
    x, y = data.x_eval, data.y_eval
    start = time.perf_counter()
    logits = predict(predictor, x, batch_size)
    eval_s = time.perf_counter() - start
    clean_correct = logits.argmax(1) == y
    twin_logits = predict(lambda b: float_twin.to(device)(b.to(device)), x, batch_size)
    result: dict[str, Any] = {
        "n_eval": len(y),
        "clean_accuracy": rate(clean_correct),
        "eval_s": eval_s,
        # agreement of the deployed artifact with the float eager model it came from (parity)
        "agreement": {
            "top1_agreement": rate(logits.argmax(1) == twin_logits.argmax(1)),
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

    outcomes = {
        member.name: _attack(member, predictor, float_twin, lowering, data, clean_correct, batch_size, seed, device)
        for member in attack_members(attack, attack_name)
    }
    robust = clean_correct.clone()
    for outcome in outcomes.values():
        robust &= outcome["robust_correct"]
    threats = sorted({o["threat_model"] for o in outcomes.values()})
    queries = next((o["queries"] for o in outcomes.values() if o["queries"] is not None), None)
    n_correct = int(clean_correct.sum())
    result.update(
        robust_accuracy=rate(robust),
        threat_model=threats[0] if len(threats) == 1 else "worst of " + ", ".join(threats),
        surrogate="; ".join(o["surrogate"] for o in outcomes.values() if o["surrogate"]) or None,
        attack_s=sum(o["seconds"] for o in outcomes.values()),
        attack_success_rate=1 - int(robust.sum()) / n_correct if n_correct else None,
        eps=attack.eps,
        norm=attack.norm,
        checks=result["checks"] | {k: v for o in outcomes.values() for k, v in o["checks"].items()},
    )
    if len(outcomes) > 1:
        result["components"] = {
            name: {
                "robust_accuracy": rate(o["robust_correct"]),
                "threat_model": o["threat_model"],
                "seconds": o["seconds"],
            }
            for name, o in outcomes.items()
        }
    if queries is not None:
        attacked = queries[queries > 0]
        result["queries"] = {
            "mean": float(attacked.float().mean()) if len(attacked) else 0.0,
            "max": int(queries.max()) if len(queries) else 0,
        }
    per_sample["robust_correct"] = robust
    return result | {"per_sample": per_sample}
