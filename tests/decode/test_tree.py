"""The draft-tree rules alone (`decode/tree.py`): shape, mask, greedy acceptance, and the sampling
rule's law (χ² over every 3-token sequence, fixed seeds)."""

import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st
from laws import context_laws
from scipy.stats import chisquare

from decode.tree import (
    Candidates,
    ancestor_mask,
    chain_parents,
    depths,
    greedy_accept_tree,
    grow_tree,
    grow_tree_static,
    sample_accept_tree,
    static_tree_size,
    tree_from_static,
)
from decode.verify import greedy_accept


@st.composite
def trees(draw, max_nodes=12, vocab=4):
    """Random (tokens, parents): every parent row before its child, siblings' tokens distinct."""
    n = draw(st.integers(0, max_nodes))
    parents, tokens, used = [], [], {}
    for i in range(n):
        parent = draw(st.integers(0, i))
        free = [t for t in range(vocab) if t not in used.get(parent, set())]
        if not free:
            break
        token = draw(st.sampled_from(free))
        used.setdefault(parent, set()).add(token)
        parents.append(parent)
        tokens.append(token)
    return tokens, parents


def path_of(row, parents):
    """Rows from the root to `row`."""
    out = [row]
    while out[-1]:
        out.append(parents[out[-1] - 1])
    return out[::-1]


@settings(max_examples=300, deadline=None)
@given(tree=trees(), best=st.lists(st.integers(0, 3), min_size=13, max_size=13))
def test_greedy_tree_accepts_the_longest_path_of_target_argmaxes(tree, best):
    """The accepted path is the deepest row whose every token is the target's argmax at its parent
    (found by brute force over all rows), then the target's argmax there."""
    tokens, parents = tree
    logits = torch.nn.functional.one_hot(torch.tensor(best[: len(tokens) + 1]), 4).float()
    got = greedy_accept_tree(tokens, parents, logits)
    matching = [
        r for r in range(len(tokens) + 1) if all(tokens[c - 1] == best[parents[c - 1]] for c in path_of(r, parents)[1:])
    ]
    deepest = max(matching, key=lambda r: len(path_of(r, parents)))
    assert got.rows == path_of(deepest, parents)
    assert got.tokens == [tokens[r - 1] for r in got.rows[1:]] + [best[deepest]]
    assert got.accepted_len == len(got.rows) - 1


@settings(max_examples=200, deadline=None)
@given(draft=st.lists(st.integers(0, 3), max_size=8), best=st.lists(st.integers(0, 3), min_size=9, max_size=9))
def test_a_chain_is_the_tree_special_case(draft, best):
    logits = torch.nn.functional.one_hot(torch.tensor(best[: len(draft) + 1]), 4).float()
    got = greedy_accept_tree(draft, chain_parents(len(draft)), logits)
    assert (got.tokens, got.accepted_len) == tuple(greedy_accept(draft, logits))
    assert got.rows == list(range(got.accepted_len + 1))


@settings(max_examples=200, deadline=None)
@given(tree=trees(max_nodes=16))
def test_mask_and_positions_are_ancestors_and_depths(tree):
    _, parents = tree
    mask, depth = ancestor_mask(parents), depths(parents)
    for r in range(len(parents) + 1):
        path = path_of(r, parents)
        assert depth[r] == len(path) - 1
        assert mask[r].nonzero().flatten().tolist() == sorted(path)


def fixed_expand(table):
    """An `expand` reading candidates from a table keyed by the path of tokens to the node."""
    paths = {-1: ()}
    calls = []

    def expand(frontier):
        calls.append(len(frontier))
        out = []
        for node in frontier:
            if node.id >= 0:
                paths[node.id] = paths[node.parent] + (node.token,)
            tokens, probs = table.get(paths[node.id], ([], []))
            out.append(Candidates(tokens, probs))
        return out

    return expand, calls


def test_grow_tree_keeps_the_best_keys_and_branches_where_the_drafter_is_unsure():
    """Root: 10 (0.5) / 11 (0.45) — unsure, both kept; under 10: 20 (0.9) sure; under 11: 30 (0.9).
    Keys: 10 .5, 11 .45, 10-20 .45, 11-30 .405, 10-20-40 .36, … the best 5 of them."""
    table = {
        (): ([10, 11, 12], [0.5, 0.45, 0.05]),
        (10,): ([20, 21], [0.9, 0.1]),
        (11,): ([30, 31], [0.9, 0.1]),
        (10, 20): ([40], [0.8]),
        (11, 30): ([50], [0.1]),
    }
    expand, calls = fixed_expand(table)
    tree = grow_tree(expand, last_token=1, nodes=5, depth=3, width=2)
    # rows depth-first, children in trial order: the first-child chain takes rows 1, 2, 3
    assert tree.tokens == [10, 20, 40, 11, 30]
    assert tree.parents == [0, 1, 2, 0, 4]
    assert calls == [1, 2, 2]  # one batched expansion per level, at most `width` nodes
    sure = {(): ([10, 11], [0.95, 0.05]), (10,): ([20, 21], [0.95, 0.05]), (10, 20): ([40, 41], [0.95, 0.05])}
    expand, _ = fixed_expand(sure)
    assert grow_tree(expand, 1, nodes=3, depth=3, width=2).parents == [0, 1, 2]  # a sure drafter: a chain
    tied = {(): ([10, 11], [0.5, 0.5]), (10,): ([20], [1.0])}  # three keys of 0.5: the shallower, then the earlier
    expand, _ = fixed_expand(tied)
    assert grow_tree(expand, 1, nodes=2, depth=2, width=2)[:2] == ([10, 11], [0, 0])
    expand, _ = fixed_expand(tied)
    assert grow_tree(expand, 1, nodes=3, depth=2, width=2)[:2] == ([10, 20, 11], [0, 1, 0])


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    nodes=st.integers(1, 12),
    depth=st.integers(1, 6),
    width=st.integers(1, 4),
    branch=st.integers(1, 4),
)
def test_grown_trees_are_the_best_keys_closed_under_ancestors_and_earlier_siblings(seed, nodes, depth, width, branch):
    gen = torch.Generator().manual_seed(seed)
    paths = {-1: ()}
    keys = {(): 1.0}

    def expand(frontier):
        out = []
        for node in frontier:
            if node.id >= 0:
                paths[node.id] = paths[node.parent] + (node.token,)
            probs = sorted(torch.rand(branch, generator=gen).tolist(), reverse=True)
            probs = [p / (sum(probs) + 0.1) for p in probs]
            tokens = list(range(branch))
            for t, p in zip(tokens, probs):
                keys[paths[node.id] + (t,)] = keys[paths[node.id]] * p
            out.append(Candidates(tokens, probs))
        return out

    tree = grow_tree(expand, 0, nodes, depth, width)
    assert len(tree.tokens) <= nodes
    rows = {0: ()}
    for i, (t, p) in enumerate(zip(tree.tokens, tree.parents), start=1):
        assert p < i
        rows[i] = rows[p] + (t,)
    kept = set(rows.values()) - {()}
    assert max(map(len, kept), default=0) <= depth
    for path in kept:  # its earlier siblings are in the tree too, so children are tried in rank order
        assert all(path[:-1] + (s,) in kept for s in range(path[-1]))
    # nothing left out of the tree whose parent is in it beats what is in it
    left_out = [p for p in keys if p and p not in kept and p[:-1] in kept | {()} and len(p) <= depth]
    if left_out and len(kept) == nodes:
        assert max(keys[p] for p in left_out) <= min(keys[p] for p in kept) + 1e-12


def ranked_candidates(path, branch, seed):
    """A node's candidates as a function of its path: tokens 0..branch−1 in a shuffled order, probabilities
    drawn from a few float32 values, ties and zeros (which end the list) included, best first."""
    gen = torch.Generator().manual_seed(hash((seed,) + path) % 2**31)
    probs = torch.tensor([0.5, 0.25, 0.25, 0.125, 0.0, 0.3])[torch.randint(0, 6, (branch,), generator=gen)]
    return torch.randperm(branch, generator=gen), probs.sort(descending=True).values


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    nodes=st.integers(1, 14),
    depth=st.integers(1, 5),
    width=st.integers(1, 4),
    branch=st.integers(1, 4),
)
def test_the_static_tree_is_the_grown_tree_ties_and_zeros_included(seed, nodes, depth, width, branch):
    """`grow_tree_static` (fixed-size tensors, the frontier chosen without a host read: what a CUDA graph
    replays) keeps the same nodes in the same rows as `grow_tree`, given the same candidates."""

    def grown_expand(frontier):
        out = []
        for node in frontier:
            paths[node.id] = () if node.id < 0 else paths[node.parent] + (node.token,)
            tokens, probs = ranked_candidates(paths[node.id], branch, seed)
            out.append(Candidates(tokens.tolist(), probs.tolist()))
        return out

    def static_expand(parents, ids, tokens):
        rows = []
        for parent, node, token in zip(parents.tolist(), ids.tolist(), tokens.tolist()):
            if node < 0 or node == n:  # the root; an empty frontier slot (its candidates must not count)
                paths[node] = ()
            else:
                paths[node] = paths[parent] + (token,)
            rows.append(ranked_candidates(paths[node], branch, seed))
        return torch.stack([t for t, _ in rows]), torch.stack([p for _, p in rows])

    paths = {}
    want = grow_tree(grown_expand, 7, nodes, depth, width)
    paths, n = {}, static_tree_size(depth, width, branch)
    table = grow_tree_static(static_expand, torch.tensor([7]), torch.tensor(nodes), depth, width, branch)
    got = tree_from_static(table.tolist())
    assert (got.tokens, got.parents) == (want.tokens, want.parents)


# ---- sampling: the first three tokens of a decoder loop over trees --------------------------------
V = 4  # 64 cells


def laws(seed, zero=None):
    """A next-token law for every context of up to 7 tokens (each its own row), `zero(ctx)` a token
    it never gives, so rejections and residuals both matter."""
    return context_laws(seed, V, depth=7, power=3, floor=0.01, zero=zero)


P = laws(20, zero=lambda ctx: 3 if len(ctx) == 1 else None)  # the target
Q = laws(21, zero=lambda ctx: 0 if len(ctx) % 2 else None)  # a drafter unlike it


def tree_draft(out, nodes, depth, branch, gen, sampled):
    """A tree over Q after `out`: children drawn without replacement from Q (Gumbel top-k; their laws
    kept), or Q's top tokens (deterministic: no laws)."""
    paths = {-1: ()}

    def expand(frontier):
        result = []
        for node in frontier:
            if node.id >= 0:
                paths[node.id] = paths[node.parent] + (node.token,)
            q = Q[tuple(out) + paths[node.id]]
            m = min(branch, int((q > 0).sum()))
            ranked = q.sort(descending=True).values[:m].tolist()
            if sampled:
                gumbel = -(-torch.rand(V, generator=gen, dtype=torch.float64).log()).log()
                tokens = (q.log() + gumbel).topk(m).indices.tolist()
                result.append(Candidates(tokens, ranked, q))
            else:
                result.append(Candidates(q.topk(m).indices.tolist(), ranked))
        return result

    tree = grow_tree(expand, -1, nodes, depth, branch)
    laws_ = (
        torch.stack([torch.zeros(V, dtype=torch.float64) if q is None else q for q in tree.laws]) if sampled else None
    )
    return tree, laws_


def speculate_tree(n, nodes, depth, branch, gen, sampled):
    out: list[int] = []
    while len(out) < n:
        tree, q = tree_draft(out, nodes, depth, branch, gen, sampled)
        ctx = {0: ()}
        for i, (t, p) in enumerate(zip(tree.tokens, tree.parents), start=1):
            ctx[i] = ctx[p] + (t,)
        p_rows = torch.stack([P[tuple(out) + ctx[r]] for r in range(len(tree.tokens) + 1)])
        out += sample_accept_tree(tree.tokens, tree.parents, q, p_rows, gen).tokens
    return tuple(out[:n])


@pytest.mark.parametrize("nodes,depth,branch", [(4, 2, 3), (6, 3, 2), (3, 1, 3)])
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled_q", "top_k"])
def test_sampled_tree_sequences_follow_the_target_law_over_the_first_three_tokens(nodes, depth, branch, sampled):
    """P(x1 x2 x3) = p(x1) p(x2 | x1) p(x3 | x1 x2) whatever the tree: each try's ratio, each residual
    and the q renormalised without the siblings tried must use their own node's rows."""
    gen = torch.Generator().manual_seed(nodes * 10 + depth)
    n = 6000
    cells = list(itertools.product(range(V), repeat=3))
    counts = dict.fromkeys(cells, 0)
    for _ in range(n):
        counts[speculate_tree(3, nodes, depth, branch, gen, sampled)] += 1
    expected = [float(P[()][a] * P[(a,)][b] * P[(a, b)][c]) * n for a, b, c in cells]
    observed = [counts[c] for c in cells]
    assert all(o == 0 for o, e in zip(observed, expected) if e == 0), "a token the target never gives"
    kept = [(o, e) for o, e in zip(observed, expected) if e >= 5]
    folded = (sum(o for o, e in zip(observed, expected) if 0 < e < 5), sum(e for e in expected if 0 < e < 5))
    obs = [o for o, _ in kept] + [folded[0]]
    exp = [e for _, e in kept] + [folded[1]]
    assert chisquare(obs, [e * sum(obs) / sum(exp) for e in exp]).pvalue > 0.001
