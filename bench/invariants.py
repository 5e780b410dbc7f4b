"""Robustness invariants across the cells of a run (Carlini et al. 2019, "On Evaluating Adversarial Robustness";
AutoAttack's checks), checked at the end of every run and shown in the report:

- robust accuracy does not rise with eps, nor with more steps or restarts, for the same attack on one artifact;
- PGD is not weaker than FGSM at the same eps and norm;
- a query-based attack (Square) does not beat the gradient attacks by more than a small margin: if it does, the
  gradients are probably masked (obfuscated) and the white-box number overstates robustness;
- an unbounded gradient attack (Linf eps >= 0.5, where any image is reachable) leaves no sample robust.
A tolerance of one sample (1 / n_eval) absorbs ties; the Square margin is 2 points.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

GRADIENT_ATTACKS = ("fgsm", "pgd", "apgd")
QUERY_ATTACKS = ("square",)
MASKING_MARGIN = 0.02
UNBOUNDED_EPS = 0.5


def _artifact(record: dict[str, Any]) -> str:
    labels = record["labels"]
    return "/".join(labels[k] for k in ("dataset", "model", "recipe", "compression", "runtime"))


def _violation(kind: str, artifact: str, detail: str, cells: list[str]) -> dict[str, Any]:
    return {"check": kind, "artifact": artifact, "detail": detail, "cells": cells, "ok": False}


def run_invariants(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"checked": number of comparisons, "violations": [...]} over the ok, attacked cells of a run."""
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
                attack.get("name") in GRADIENT_ATTACKS[1:]
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
                by_eps[(r["attack"]["eps"], r["attack"].get("norm", "Linf"))][r["attack"]["name"]].append(r)
        for (eps, norm), attacks in by_eps.items():
            for pgd in attacks.get("pgd", []):
                for fgsm in attacks.get("fgsm", []):
                    checked += 1
                    if pgd["robust_accuracy"] > fgsm["robust_accuracy"] + tol:
                        violations.append(
                            _violation(
                                "PGD weaker than FGSM",
                                artifact,
                                f"eps {eps:g} {norm}: PGD {pgd['robust_accuracy']:.3f} > "
                                f"FGSM {fgsm['robust_accuracy']:.3f}",
                                [pgd["cell_id"], fgsm["cell_id"]],
                            )
                        )
            gradient = [r for name in GRADIENT_ATTACKS for r in attacks.get(name, [])]
            for query in [r for name in QUERY_ATTACKS for r in attacks.get(name, [])]:
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
