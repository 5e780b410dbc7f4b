"""Robustness invariants across the cells of a run (Carlini et al. 2019, "On Evaluating Adversarial Robustness";
AutoAttack's checks), checked at the end of every run and shown in the report:

- robust accuracy does not rise with eps, nor with more steps or restarts, for the same attack on one artifact;
- an iterative gradient attack (PGD, APGD) is not weaker than a single-step one (FGSM) at the same eps and norm;
- a query-based attack (Square) does not beat the gradient attacks by more than a small margin: if it does, the
  gradients are probably masked (obfuscated) and the white-box number overstates robustness;
- an unbounded iterative gradient attack (Linf eps >= 0.5, where any image is reachable) leaves no sample robust.
Which attack is which comes from the `kind` (and `single_step`) each attack declared when it registered, so a new
attack takes part in these checks without an edit here. A tolerance of one sample (1 / n_eval) absorbs ties; the
query-attack margin is 2 points.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

MASKING_MARGIN = 0.02
UNBOUNDED_EPS = 0.5


def _role(attack_name: str) -> str:
    """ "iterative" / "single-step" (gradient attacks), "query", or "other", from the attack's declared capabilities."""
    from bench.plugins import registry

    attacks = registry("attack")
    if attack_name not in attacks:
        return "other"  # a run recorded with a plugin that is not installed here
    caps = attacks.get(attack_name).capabilities
    if caps.get("kind") == "gradient":
        return "single-step" if caps.get("single_step") else "iterative"
    return "query" if caps.get("kind") == "query" else "other"


def _artifact(record: dict[str, Any]) -> str:
    labels = record["labels"]
    return "/".join(labels[k] for k in ("dataset", "model", "recipe", "compression", "runtime"))


def _violation(kind: str, artifact: str, detail: str, cells: list[str]) -> dict[str, Any]:
    return {"check": kind, "artifact": artifact, "detail": detail, "cells": cells, "ok": False}


def run_invariants(records: list[Any]) -> dict[str, Any]:
    """{"checked": number of comparisons, "violations": [...]} over the ok, attacked cells of a run.

    `records` are cell records as JSON objects (or typed records, which are turned into them)."""
    records = [r.to_json() if hasattr(r, "to_json") else r for r in records]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and r.get("robust_accuracy") is not None:
            groups[_artifact(r)].append(r)
    checked, violations = 0, []
    for artifact, cells in groups.items():
        tol = 1 / max(cells[0]["n_eval"], 1) + 1e-12
        # monotone in eps / steps / restarts: same attack, all other parameters equal
        for budget in ("eps", "steps", "restarts"):
            series: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in cells:
                if budget in r["attack"]:
                    rest = {k: v for k, v in r["attack"].items() if k not in (budget, "alpha")}
                    series[repr(sorted(rest.items()))].append(r)
            for members in series.values():
                members.sort(key=lambda r: r["attack"][budget] or 0)
                for weaker, stronger in itertools.pairwise(members):
                    if weaker["attack"][budget] == stronger["attack"][budget]:
                        continue
                    checked += 1
                    if stronger["robust_accuracy"] > weaker["robust_accuracy"] + tol:
                        violations.append(
                            _violation(
                                f"robust accuracy rises with {budget}",
                                artifact,
                                f"{weaker['labels']['attack']} {weaker['robust_accuracy']:.3f} < "
                                f"{stronger['labels']['attack']} {stronger['robust_accuracy']:.3f}",
                                [weaker["cell_id"], stronger["cell_id"]],
                            )
                        )
        for r in cells:
            attack = r["attack"]
            if (
                _role(attack.get("name", "")) == "iterative"
                and attack.get("norm", "Linf") == "Linf"
                and (attack.get("eps") or 0) >= UNBOUNDED_EPS
            ):
                checked += 1
                if r["robust_accuracy"] > tol:
                    violations.append(
                        _violation(
                            "unbounded attack leaves robust samples",
                            artifact,
                            f"{r['labels']['attack']} (eps {attack['eps']:g}) leaves {r['robust_accuracy']:.3f} robust",
                            [r["cell_id"]],
                        )
                    )
        by_eps: dict[tuple[float, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for r in cells:
            if "eps" in r["attack"]:
                by_eps[(r["attack"]["eps"], r["attack"].get("norm", "Linf"))][_role(r["attack"]["name"])].append(r)
        for (eps, norm), roles in by_eps.items():
            for iterative in roles.get("iterative", []):
                for single in roles.get("single-step", []):
                    checked += 1
                    if iterative["robust_accuracy"] > single["robust_accuracy"] + tol:
                        violations.append(
                            _violation(
                                "iterative attack weaker than single-step",
                                artifact,
                                f"eps {eps:g} {norm}: {iterative['labels']['attack']} "
                                f"{iterative['robust_accuracy']:.3f} > {single['labels']['attack']} "
                                f"{single['robust_accuracy']:.3f}",
                                [iterative["cell_id"], single["cell_id"]],
                            )
                        )
            gradient = roles.get("iterative", []) + roles.get("single-step", [])
            for query in roles.get("query", []):
                if not gradient:
                    continue
                checked += 1
                best = min(gradient, key=lambda r: r["robust_accuracy"])
                if query["robust_accuracy"] < best["robust_accuracy"] - MASKING_MARGIN:
                    violations.append(
                        _violation(
                            "possible gradient masking: query attack beats gradient attacks",
                            artifact,
                            f"eps {eps:g} {norm}: {query['labels']['attack']} {query['robust_accuracy']:.3f} < "
                            f"{best['labels']['attack']} {best['robust_accuracy']:.3f} - {MASKING_MARGIN}",
                            [query["cell_id"], best["cell_id"]],
                        )
                    )
    return {"checked": checked, "violations": violations}
