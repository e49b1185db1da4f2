"""Draft-length controllers: choose k for the next speculative step.

In: what each step measured (k asked, draft tokens proposed, accepted_len, draft time,
verify time). Out: the next k in [0, k_max]. Pure arithmetic; no model.

The adaptive rule maximises expected tokens per second. With per-position acceptance
estimates a_1..a_k (a_j = P(draft j accepted | drafts before it accepted)), one step
emits in expectation

    E[tokens | k] = 1 + sum_{i=1..k} prod_{j<=i} a_j      (= (1 - a**(k+1)) / (1 - a) for equal a)

and costs T(k) = k * c_draft + c_verify(k), where c_verify(0) is a plain decoding step.
k = 0 wins whenever drafting does not pay; every `probe_every` steps at k = 0 a short
draft is tried anyway so a stale estimate can recover.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class StepStats:
    """What one decode step measured."""

    draft_len: int  # tokens actually proposed (may be < k asked)
    accepted_len: int
    draft_s: float
    verify_s: float


class Controller(Protocol):
    """Chooses k before a step and learns from the step after it."""

    def next_k(self) -> int: ...

    def update(self, stats: StepStats) -> None: ...


@dataclass
class FixedController:
    """Always k (k = 0 is plain decoding)."""

    k: int

    def next_k(self) -> int:
        return self.k

    def update(self, stats: StepStats) -> None:
        pass


@dataclass
class HeuristicController:
    """transformers' schedule: +2 after a fully accepted draft, -1 otherwise (min 1)."""

    k: int = 5
    k_max: int = 8

    def next_k(self) -> int:
        return self.k

    def update(self, stats: StepStats) -> None:
        if stats.draft_len == 0:
            return
        if stats.accepted_len == stats.draft_len:
            self.k = min(self.k + 2, self.k_max)
        else:
            self.k = max(self.k - 1, 1)


def expected_tokens(acceptance: list[float], k: int) -> float:
    """E[tokens | k] = 1 + sum_{i<=k} prod_{j<=i} a_j for per-position acceptance a_j."""
    total, run = 1.0, 1.0
    for a in acceptance[:k]:
        run *= a
        total += run
    return total


def interpolate_cost(costs: dict[int, float], k: int) -> float:
    """c_verify(k) from measured points: linear between neighbours, flat-slope beyond."""
    if k in costs:
        return costs[k]
    ks = sorted(costs)
    lower = [x for x in ks if x < k]
    upper = [x for x in ks if x > k]
    if lower and upper:
        lo, hi = lower[-1], upper[0]
        w = (k - lo) / (hi - lo)
        return costs[lo] * (1 - w) + costs[hi] * w
    if len(ks) >= 2:  # extrapolate with the slope of the two nearest points
        a, b = (ks[-2], ks[-1]) if upper == [] else (ks[0], ks[1])
        slope = (costs[b] - costs[a]) / (b - a)
        edge = ks[-1] if upper == [] else ks[0]
        return max(costs[edge] + slope * (k - edge), 1e-6)
    return costs[ks[0]] if ks else 1.0


@dataclass
class AdaptiveController:
    """Chooses k maximising E[tokens | k] / (k·c_draft + c_verify(k)) from online estimates."""

    k_max: int = 8
    decay: float = 0.9
    probe_every: int = 16
    verify_cost_s: dict[int, float] = field(default_factory=dict)  # seeded by calibration
    draft_cost_s: float = 0.0
    prior_accept: float = 0.5
    prior_weight: float = 1.0
    cost_ema: float = 0.2
    _hits: list[float] = field(default_factory=list)
    _trials: list[float] = field(default_factory=list)
    _since_draft: int = 0

    def __post_init__(self) -> None:
        self._hits = [0.0] * self.k_max
        self._trials = [0.0] * self.k_max

    def acceptance(self) -> list[float]:
        """Per-position acceptance estimates a_1..a_kmax (decayed counts with a weak prior)."""
        w = self.prior_weight
        return [(h + w * self.prior_accept) / (t + w) for h, t in zip(self._hits, self._trials)]

    def score(self, k: int) -> float:
        """Expected tokens per second at draft length k."""
        cost = k * self.draft_cost_s + interpolate_cost(self.verify_cost_s, k)
        return expected_tokens(self.acceptance(), k) / cost

    def next_k(self) -> int:
        best = max(range(self.k_max + 1), key=self.score)
        if best == 0 and self._since_draft >= self.probe_every:
            return 1
        return best

    def update(self, stats: StepStats) -> None:
        k, n = stats.draft_len, stats.accepted_len
        self._since_draft = 0 if k else self._since_draft + 1
        # position j was tried iff all before it were accepted: j <= n, and j < k
        for j in range(min(n + 1, k)):
            self._hits[j] = self.decay * self._hits[j] + (1.0 if j < n else 0.0)
            self._trials[j] = self.decay * self._trials[j] + 1.0
        old = self.verify_cost_s.get(k)
        self.verify_cost_s[k] = stats.verify_s if old is None else (
            (1 - self.cost_ema) * old + self.cost_ema * stats.verify_s)
        if k:
            per_token = stats.draft_s / k
            self.draft_cost_s = per_token if self.draft_cost_s == 0 else (
                (1 - self.cost_ema) * self.draft_cost_s + self.cost_ema * per_token)
