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

Trees (`branch` > 1 candidates per node, `decode.tree`): for each k the controller weighs a chain
of k against a tree of k nodes (the drafter shapes it), whose verify costs the same c_verify(k).
A tree's E[tokens | k] is measured: the decayed mean of what tree steps of k nodes emitted, with a
prior from the template in which every node has `branch` children: with b_{j,r} the probability
that the target's token at level j is the drafter's rank-r candidate (b_{j,1} = a_j), a node
reached through ranks r_1..r_j is accepted with probability prod_i b_{i,r_i}, and

    E[tokens | tree] = 1 + sum over its nodes of prod_{i<=j} b_{i,r_i}

is largest for the k best nodes (`tree_plan`, best-first). A tree's drafting cost per node is
measured apart from a chain's. A tree of k nodes accepts at least what its first-child chain does,
so where verifying is flat (GPUs) it wins; where a wide verify is dear, the best k is small, and at
k = 1..2 a chain keeps its depth (CPUs).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

from decode.tree import TreeShape


@dataclass(frozen=True)
class StepStats:
    """What one decode step measured."""

    draft_len: int  # tokens actually proposed (may be < k asked)
    accepted_len: int
    draft_s: float
    verify_s: float | None  # None: the forward was shared with other sequences (its time is not this k's cost)
    tried: tuple[int, ...] | None = None  # a tree: per level along the accepted path, the children tried there
    accepted_rank: tuple[int, ...] | None = None  # ... and the rank accepted there (1-based; 0: none)


class Controller(Protocol):
    """Chooses k before a step and learns from the step after it."""

    def next_k(self) -> int: ...

    def tree_shape(self, k: int) -> TreeShape:
        """How k draft nodes grow (branch 1: a chain of k)."""
        ...

    def update(self, stats: StepStats) -> None: ...


@dataclass
class FixedController:
    """Always k (k = 0 is plain decoding); with `depth` < k and `branch` > 1, a tree of k nodes."""

    k: int
    depth: int | None = None
    branch: int = 1

    def next_k(self) -> int:
        return self.k

    def tree_shape(self, k: int) -> TreeShape:
        if self.branch <= 1 or self.depth is None:
            return TreeShape(k, 1)
        return TreeShape(min(self.depth, k), self.branch)

    def update(self, stats: StepStats) -> None:
        pass


@dataclass
class HeuristicController:
    """transformers' schedule: +2 after a fully accepted draft, -1 otherwise (min 1)."""

    k: int = 5
    k_max: int = 8

    def next_k(self) -> int:
        return self.k

    def tree_shape(self, k: int) -> TreeShape:
        return TreeShape(k, 1)

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


def tree_plan(acceptance: list[list[float]], max_nodes: int) -> list[tuple[float, int]]:
    """For every node budget N = 0..max_nodes: (E[tokens] of the best N-node tree, its depth).

    acceptance[j][r] = b_{j+1,r+1}: P(the target's token at level j + 1 is the drafter's rank-(r+1)
    candidate | the path so far accepted). The template gives every node len(acceptance[j]) children;
    a node's value is prod b along its path, E = 1 + the sum of the chosen values, and since values
    shrink along a path the best N nodes (best-first) form a tree.
    """
    plan = [(1.0, 0)]
    heap = [(-b, 1, r) for r, b in enumerate(acceptance[0])] if acceptance else []
    heapq.heapify(heap)
    while heap and len(plan) <= max_nodes:
        value, level, _ = heapq.heappop(heap)
        plan.append((plan[-1][0] - value, max(plan[-1][1], level)))
        if level < len(acceptance):
            for r, b in enumerate(acceptance[level]):
                heapq.heappush(heap, (value * b, level + 1, r))
    return plan + [plan[-1]] * (max_nodes + 1 - len(plan))


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
    """Chooses k maximising E[tokens | k] / (k·c_draft + c_verify(k)) from online estimates.

    Verify cost: c_verify(k) = load · shape(k). `shape` starts as the calibrated curve (not
    smooth on CPUs, so it is kept per k); `load` follows every step (measured / shape(k)), so
    when the machine gets busier or quieter all widths move together, not just the k in use
    (a stale cheap k otherwise looks like a win on a loaded machine). shape(k > 0) itself adapts
    slowly to what k measures (shape(0) anchors it). Probing: after `probe_every` plain steps one
    step at the best k > 0 is tried (where the curve is flat it tests several positions at once);
    each probe that accepts nothing doubles the wait (up to 16x), one that accepts resets it, so a
    drafter that never pays costs one probe per 16 x `probe_every` plain steps.

    With `branch` > 1, each k is a chain or a tree of k nodes, whichever rates higher (module
    docstring); a tree's expected tokens start at the template's (`tree_plan`), whose ranks past the
    first start at prior_accept * (1 - prior_accept)**(r - 1) (the r-th candidate right as often,
    among the cases the ones before it missed, as the first is), and follow what its trees emit.
    branch = 1 is exactly the chain rule.
    """

    k_max: int = 8
    decay: float = 0.9
    probe_every: int = 16
    verify_cost_s: dict[int, float] = field(default_factory=dict)  # seeded by calibration: the shape
    draft_cost_s: float = 0.0
    prior_accept: float = 0.5
    prior_weight: float = 1.0
    cost_ema: float = 0.2
    branch: int = 1  # candidates per tree node it may plan with (1: chains only)
    tree_draft_cost_s: float = 0.0  # per node of a tree (0: not measured yet; a chain's is used)
    _hits: list[float] = field(default_factory=list)
    _trials: list[float] = field(default_factory=list)
    _rank_hits: list[list[float]] = field(default_factory=list)  # [level][rank - 2], ranks 2..branch
    _rank_trials: list[list[float]] = field(default_factory=list)
    _tree_tokens: list[float] = field(default_factory=list)  # per k: decayed tokens that trees of k emitted
    _tree_steps: list[float] = field(default_factory=list)  # ... and decayed count of those steps
    # `rates()` since the last update (next_k, then tree_shape, read it); not copied by dataclasses.replace
    _rates: list | None = field(default=None, init=False, repr=False, compare=False)
    _since_draft: int = 0
    _probe_gap: int = 0
    _probing: bool = False
    load: float = 1.0

    def __post_init__(self) -> None:
        self._hits = [0.0] * self.k_max
        self._trials = [0.0] * self.k_max
        self._rank_hits = [[0.0] * (self.branch - 1) for _ in range(self.k_max)]
        self._rank_trials = [[0.0] * (self.branch - 1) for _ in range(self.k_max)]
        self._tree_tokens = [0.0] * (self.k_max + 1)
        self._tree_steps = [0.0] * (self.k_max + 1)
        self._probe_gap = self.probe_every

    def acceptance(self) -> list[float]:
        """Per-position acceptance estimates a_1..a_kmax (decayed counts with a weak prior)."""
        w = self.prior_weight
        return [(h + w * self.prior_accept) / (t + w) for h, t in zip(self._hits, self._trials)]

    def rank_acceptance(self) -> list[list[float]]:
        """Per level, b_{j,1..branch}: rank 1 is `acceptance`, the others decayed counts with the prior."""
        w, a = self.prior_weight, self.prior_accept
        priors = [w * a * (1 - a) ** r for r in range(1, self.branch)]
        return [
            [first] + [(h + p) / (t + w) for h, t, p in zip(hits, trials, priors)]
            for first, hits, trials in zip(self.acceptance(), self._rank_hits, self._rank_trials)
        ]

    def tree_tokens(self) -> list[tuple[float, int]]:
        """Per k = 0..k_max: E[tokens | a tree of k nodes] — what trees of k emitted (decayed), the
        template's E (`tree_plan`) weighing as `prior_weight` steps — and the template's depth (the
        levels such a tree may grow: each is one draft step)."""
        w = self.prior_weight
        plan = tree_plan(self.rank_acceptance(), self.k_max)
        return [((t + w * e) / (n + w), d) for (e, d), t, n in zip(plan, self._tree_tokens, self._tree_steps)]

    def rates(self) -> list[tuple[float, TreeShape]]:
        """Per k = 0..k_max: expected tokens per second of the better of a chain and a tree of k nodes,
        and that shape (a tree grows as the drafter's confidence says, up to the template's depth)."""
        if self._rates is None:
            self._rates = self._compute_rates()
        return self._rates

    def _compute_rates(self) -> list[tuple[float, TreeShape]]:
        chain, run = [1.0], 1.0  # E[tokens | a chain of k] for every k in one pass (`expected_tokens`)
        for a in self.acceptance():
            run *= a
            chain.append(chain[-1] + run)
        trees = self.tree_tokens() if self.branch > 1 else None
        tree_cost = self.tree_draft_cost_s or self.draft_cost_s
        out = []
        for k in range(self.k_max + 1):
            verify = self.verify_cost(k)
            best = (chain[k] / (k * self.draft_cost_s + verify), TreeShape(k, 1))
            if trees is not None and k > 1 and (rate := trees[k][0] / (k * tree_cost + verify)) > best[0]:
                best = (rate, TreeShape(trees[k][1], self.branch))
            out.append(best)
        return out

    def tree_shape(self, k: int) -> TreeShape:
        if self.branch <= 1 or not 1 < k <= self.k_max:
            return TreeShape(k, 1)
        return self.rates()[k][1]

    def verify_cost(self, k: int) -> float:
        """c_verify(k) = load · shape(k)."""
        return self.load * interpolate_cost(self.verify_cost_s, k)

    def score(self, k: int) -> float:
        """Expected tokens per second at draft length (node budget) k."""
        return self.rates()[k][0]

    @property
    def probe_due(self) -> bool:
        """Enough plain steps have passed: try a draft so a stale estimate can recover."""
        return self._since_draft >= self._probe_gap

    def next_k(self) -> int:
        rates = [rate for rate, _ in self.rates()]
        best = max(range(self.k_max + 1), key=rates.__getitem__)
        self._probing = best == 0 and self.probe_due and self.k_max > 0
        if self._probing:  # the best drafting k: where the cost curve is flat a probe tests several positions
            return max(range(1, self.k_max + 1), key=rates.__getitem__)
        return best

    def update(self, stats: StepStats) -> None:
        self._rates = None
        k, n = stats.draft_len, stats.accepted_len
        self._since_draft = 0 if k else self._since_draft + 1
        if self._probing and k:
            self._probe_gap = self.probe_every if n else min(2 * self._probe_gap, 16 * self.probe_every)
        self._probing = False
        tree = stats.tried is not None
        if tree:
            self._learn_ranks(stats.tried, stats.accepted_rank)
            if k <= self.k_max:
                self._tree_tokens[k] = self.decay * self._tree_tokens[k] + n + 1
                self._tree_steps[k] = self.decay * self._tree_steps[k] + 1.0
        else:  # a chain: position j was tried iff all before it were accepted: j <= n, and j < k
            self._learn_ranks([1] * min(n + 1, k), [1] * n + [0])
        if stats.verify_s is not None:
            self._learn_cost(k, stats.verify_s)
        if k:
            per_token = stats.draft_s / k
            if tree:
                self.tree_draft_cost_s = self._ema(self.tree_draft_cost_s, per_token)
            else:
                self.draft_cost_s = self._ema(self.draft_cost_s, per_token)

    def _ema(self, old: float, new: float) -> float:
        return new if old == 0 else (1 - self.cost_ema) * old + self.cost_ema * new

    def _learn_ranks(self, tried: list[int] | tuple[int, ...], accepted_rank: list[int] | tuple[int, ...]) -> None:
        """Level j's node had tried[j] candidates and accepted its accepted_rank[j]-th (0: none)."""
        for j, (m, rank) in enumerate(zip(tried[: self.k_max], accepted_rank)):
            self._hits[j] = self.decay * self._hits[j] + (1.0 if rank == 1 else 0.0)
            self._trials[j] = self.decay * self._trials[j] + 1.0
            for r in range(2, min(m, self.branch) + 1):
                hits, trials = self._rank_hits[j], self._rank_trials[j]
                hits[r - 2] = self.decay * hits[r - 2] + (1.0 if rank == r else 0.0)
                trials[r - 2] = self.decay * trials[r - 2] + 1.0

    def _learn_cost(self, k: int, seconds: float) -> None:
        if not self.verify_cost_s:
            self.verify_cost_s[k] = seconds
            return
        shape = interpolate_cost(self.verify_cost_s, k)
        self.load = (1 - self.cost_ema) * self.load + self.cost_ema * seconds / shape
        if k:  # shape(0), the plain step, anchors the curve; the widths above it adapt slowly
            slow = self.cost_ema / 4
            self.verify_cost_s[k] = (1 - slow) * shape + slow * seconds / self.load


def plan_batch(
    acceptance: list[list[float]],
    weights: list[float],
    k_max: list[int],
    k_min: list[int],
    fixed_tokens: int,
    verify_cost_s: dict[int, float],
    draft_cost_s: float = 0.0,
    rounds: int = 3,
) -> list[int]:
    """Draft lengths k_i for the decoding sequences of one batched step:

        maximise  sum_i w_i E_i[tokens | k_i] / (c(T) + c_draft * sum_i k_i),
        T = fixed_tokens + sum_i (k_i + 1)

    where E_i is `expected_tokens` over sequence i's acceptance estimates and c(T) the measured
    cost of one packed forward of T tokens (`interpolate_cost` between measured widths; the
    surface is not smooth, so every width in reach is evaluated). Coordinate ascent from
    k_i = k_min_i: each k_i in turn over k_min_i..k_max_i with the others fixed, `rounds` passes
    (stops early when a pass changes nothing). With one sequence this is the exact argmax.
    """
    ks = list(k_min)

    def rate(ks: list[int]) -> float:
        width = fixed_tokens + sum(k + 1 for k in ks)
        cost = interpolate_cost(verify_cost_s, width) + draft_cost_s * sum(ks)
        return sum(w * expected_tokens(a, k) for w, a, k in zip(weights, acceptance, ks)) / cost

    for _ in range(rounds):
        changed = False
        for i in range(len(ks)):
            best_k, best = ks[i], rate(ks)
            for k in range(k_min[i], k_max[i] + 1):
                trial = ks[:i] + [k] + ks[i + 1 :]
                if (score := rate(trial)) > best + 1e-12:
                    best_k, best = k, score
            changed |= best_k != ks[i]
            ks[i] = best_k
        if not changed:
            break
    return ks
