"""Clean and robust accuracy of a deployed predictor, with the threat model that produced the robust number.

Robust accuracy counts a sample as robust only if it is classified correctly both clean and under attack
(AutoAttack's convention: only clean-correct samples are attacked, misclassified ones count as broken).
Adversarial inputs are crafted where bench.threat_models says (white-box, transfer or black-box, from the kinds
the attacks declare) and always *scored on the deployed artifact*. Invariants are checked on every cell and
recorded in `checks`.

Work the harness saves without weakening the attack:
- only clean-correct samples are attacked, and only those are scored again on the deployed artifact;
- the gradient-masking check reads the per-sample zero-gradient flags of the attack's own first step
  (`Attack.last_zero_gradient`) instead of taking a gradient of its own, where the attack leaves them;
- an eps sweep (`previous`, the result of the same attack at the next-smaller eps on the same artifact): a sample
  broken at a smaller eps is broken at every larger one (the smaller ball lies inside the larger), so only the
  survivors are attacked, and an attack that takes `start=` (`warm_starts`) starts from their adversarial points
  at the smaller eps. `sweep_state` holds what the next eps needs: the survivors' adversarial points per surrogate.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from bench.attacks import Attack, input_gradient, zero_gradient
from bench.inference import predict, rate
from bench.threat_models import AttackMember, attack_members, crafting_sources
from bench.types import DataSplits, Lowering


def _craft(
    attack: Attack,
    source: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    device: str,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Adversarial inputs for (x, y) crafted on `source`, in batches, from `start` where given (warm start); also
    per-sample queries when counted and the attack's first-step zero-gradient flags when it leaves them."""
    generator = torch.Generator().manual_seed(seed)
    out, queries, zero = [], [], []
    for i in range(0, len(x), batch_size):
        batch = (x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), generator)
        if start is None:
            out.append(attack.perturb(source, *batch).cpu())
        else:
            out.append(attack.perturb(source, *batch, start=start[i : i + batch_size].to(device)).cpu())
        if getattr(attack, "last_queries", None) is not None:
            queries.append(attack.last_queries.cpu())
        flags = getattr(attack, "last_zero_gradient", None)
        zero.append(flags.cpu() if flags is not None and len(flags) == len(out[-1]) else None)
    x_adv = torch.cat(out) if out else x.clone()
    zero_flags = torch.cat(zero) if zero and all(z is not None for z in zero) else None  # type: ignore[arg-type]
    return x_adv, (torch.cat(queries) if queries else None), zero_flags


def _zero_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    """Share of samples whose input gradient is exactly zero (a white-box attack would be blind on them): a pass of
    its own, for attacks that do not leave their first step's flags."""
    grad = input_gradient(model.to(device), x[:256].to(device), y[:256].to(device))
    return float(zero_gradient(grad).float().mean())


def _warm_start(
    previous: dict[str, Any] | None, surrogate: str, x: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor | None:
    """The smaller eps's adversarial points of samples `idx` on `surrogate`, or None where it lacks one of them."""
    if previous is None or surrogate not in previous.get("starts", {}):
        return None
    stored = previous["starts"][surrogate]
    row = torch.full((len(x),), -1, dtype=torch.long)
    row[stored["index"]] = torch.arange(len(stored["index"]))
    rows = row[idx]
    if len(idx) == 0 or bool((rows < 0).any()):
        return None
    return (x[idx] + stored["delta"][rows].to(x.dtype)).clamp(0, 1)


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
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One attack with its threat model; per-sample robust flags are the worst over its surrogates. `previous`: the
    same attack's outcome at the next-smaller eps (robust flags and its survivors' adversarial points)."""
    name, attack = member.name, member.attack
    x, y = data.x_eval, data.y_eval
    start = time.perf_counter()
    threat, sources = crafting_sources(member, predictor, float_twin, lowering, data.x_calib, device)
    # a sample stops at its first adversarial point only where that point is judged by the model it is scored on
    attack.stop_early = threat != "transfer"
    robust = clean_correct.clone()
    if previous is not None:  # broken inside the smaller ball: broken inside this one
        robust &= previous["robust_correct"]
    checks: dict[str, dict[str, Any]] = {}
    queries = None
    crafted: dict[str, torch.Tensor] = {}
    warm = False
    for surrogate, source in sources:
        idx = robust.nonzero().flatten()  # only samples still unbroken are attacked again
        if len(idx) == 0:
            break
        x_adv = x.clone()
        begin = _warm_start(previous, surrogate, x, idx) if attack.warm_starts else None
        warm |= begin is not None
        x_adv[idx], q, zero_flags = _craft(attack, source, x[idx], y[idx], batch_size, seed, device, begin)
        crafted[surrogate] = x_adv
        robust[idx] &= predict(predictor, x_adv[idx], batch_size).argmax(1) == y[idx]
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
            zero = (
                float(zero_flags.float().mean())
                if zero_flags is not None
                else _zero_gradient_fraction(source, x[idx], y[idx], device)
            )
            checks[f"{name}: non-zero input gradients"] = {
                "ok": zero < 0.5,
                "detail": f"{zero:.1%} of attacked samples have an all-zero input gradient",
            }
    if attack.eps == 0:
        checks[f"{name}: eps = 0 gives clean accuracy"] = {
            "ok": bool(torch.equal(robust, clean_correct)),
            "detail": f"robust {rate(robust):.4f}, clean {rate(clean_correct):.4f}",
        }
    survivors = robust.nonzero().flatten()
    # what the next eps starts from: each surrogate's adversarial points of the samples that survived them all
    starts = {
        surrogate: {"index": survivors, "delta": (x_adv[survivors] - x[survivors]).to(torch.float16)}
        for surrogate, x_adv in crafted.items()
    }
    sweep = None
    if previous is not None:
        sweep = {"from_eps": previous["eps"], "broken_before": int((clean_correct & ~previous["robust_correct"]).sum())}
        sweep["warm_start"] = warm
    return {
        "starts": starts,
        "sweep": sweep,
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
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Clean accuracy, parity with the float twin, and (with an attack) robust accuracy with its threat model.

    `previous`: for an eps sweep, the same (single, non-composite) attack's `sweep_state` at the next-smaller eps on
    the same artifact, with its per-sample `robust_correct` (see the module's docstring). The result's
    `sweep_state` (with an attack) is what the next eps takes as `previous`, less `robust_correct`, which is in
    `per_sample`."""
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
        return result | {"per_sample": per_sample, "sweep_state": None}

    members = attack_members(attack, attack_name)
    if previous is not None and (len(members) != 1 or previous["eps"] > attack.eps):
        raise ValueError("an eps sweep continues one attack from a smaller eps")
    outcomes = {
        member.name: _attack(
            member, predictor, float_twin, lowering, data, clean_correct, batch_size, seed, device, previous
        )
        for member in members
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
    (sweep,) = [o["sweep"] for o in outcomes.values()] if len(outcomes) == 1 else [None]
    if sweep is not None:
        result["sweep"] = sweep
    per_sample["robust_correct"] = robust
    sweep_state = {"eps": attack.eps, "starts": next(iter(outcomes.values()))["starts"]} if len(outcomes) == 1 else None
    return result | {"per_sample": per_sample, "sweep_state": sweep_state}
