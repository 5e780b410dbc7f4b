"""The statistical tests behind every verdict: one home, so gates, budgets, compare and the report agree.

- Accuracy on the same eval samples (a cell against its baseline, a candidate against a baseline run): the exact
  McNemar test on the discordant pairs (scipy's binomial test), with a Wald interval of the paired difference.
- Accuracy against an absolute limit: the exact binomial test of the correct count against the limit.
- Latency between two runs: the Mann-Whitney U test (asv's rule) on per-process medians, so that drift between
  processes (the machine's state) counts as noise rather than as evidence.
A verdict needs both a difference beyond the threshold *and* the test's support; "inconclusive" is honest about
samples too few to tell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05  # significance level of the accuracy tests
# Latency is judged at a stricter level: processes within one run share that run's machine state, so they are not
# independent of the drift between runs (measured here: two runs of one suite minutes apart gave 3-of-3 process
# separations, p = 0.05, at 1.1x). p <= 0.01 needs at least 4 against 4 processes (5 per run: the nightly profile).
LATENCY_ALPHA = 0.01
Z95 = 1.959963984540054


@dataclasses.dataclass
class PairedAccuracy:
    """Two accuracies on the same n samples: b = right before / wrong after, c = wrong before / right after."""

    n: int
    before: float
    after: float
    b: int
    c: int
    p_value: float  # exact McNemar, one-sided: "after is worse than before"
    ci: tuple[float, float]  # 95% interval of after - before

    @property
    def diff(self) -> float:
        return self.after - self.before


def paired_accuracy(before: np.ndarray, after: np.ndarray) -> PairedAccuracy:
    """Compare per-sample correctness (bool arrays of one length, the same samples in the same order)."""
    from scipy.stats import binomtest

    before, after = np.asarray(before, bool), np.asarray(after, bool)
    if before.shape != after.shape:
        raise ValueError(f"paired samples differ in length: {before.shape} vs {after.shape}")
    n = len(before)
    b = int(np.sum(before & ~after))
    c = int(np.sum(~before & after))
    p = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    diff = (c - b) / n if n else 0.0
    se = math.sqrt(max(b + c - n * diff * diff, 0.0)) / n if n else 0.0
    return PairedAccuracy(
        n=n,
        before=float(before.mean()) if n else float("nan"),
        after=float(after.mean()) if n else float("nan"),
        b=b,
        c=c,
        p_value=float(p),
        ci=(diff - Z95 * se, diff + Z95 * se),
    )


def below_limit_p(correct: int, n: int, limit: float) -> float:
    """One-sided exact binomial p-value that the true accuracy is below `limit` (small: evidence it is)."""
    from scipy.stats import binomtest

    if n == 0:
        return 1.0
    return float(binomtest(correct, n, min(max(limit, 0.0), 1.0), alternative="less").pvalue)


def proportion_ci(correct: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of an accuracy."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="exact")
    return (float(ci.low), float(ci.high))


def slower_p(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that the candidate's values are larger (slower) than the baseline's."""
    from scipy.stats import mannwhitneyu

    if len(baseline) < 2 or len(candidate) < 2:
        return 1.0  # one value per side cannot show a difference
    return float(mannwhitneyu(candidate, baseline, alternative="greater").pvalue)
