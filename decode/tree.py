"""Draft trees: several continuations verified in one target forward (EAGLE-2, SpecInfer).

In: the drafter's candidates at each node it expands (tokens in the order they are tried, the
drafter's probability of its rank-j candidate, its law q there). Out: a `DraftTree` (tokens and
parents), the tree attention mask and positions to verify it with, and the accepted path.
No model, no I/O; cost: O(nodes²) for the mask, one softmax row per visited node to accept.

Rows: the verify feeds [last context token] + tree tokens. Row 0 is the root, row i + 1 is
token i, and `parents[i]` is the row of token i's parent (parents[i] <= i: parents come first).
A chain of k tokens is parents = [0, 1, …, k − 1]. Row r sits at position start + depth(r) and
attends to the context and to its ancestors (itself included).

Shape (`grow_tree`): a node's key is the product, along its path, of the drafter's probability of
each node's rank among its siblings: key(child j of x) = key(x) · r_x(j), with r_x(j) the j-th
largest probability of the drafter's law at x and key(root) = 1. Depth by depth, the `width` best
new nodes still among the best `nodes` so far are expanded; the tree is the best `nodes` keys
(ties: the shallower, then the earlier first, so a tree holds every ancestor and the first siblings).
With greedy top-k candidates this is EAGLE-2's tree (branches where the drafter is unsure). A key
never depends on the token its node holds, only on its rank, so a sampled tree's shape does not
look at the tokens it then verifies, and the sampling rule below stays exact.
`grow_tree_static` is the same rule over fixed-size tensors with no host read (a CUDA graph holds
it, `decode.graphs.DraftGraphs`); `tree_from_static` turns what it returns into the `DraftTree`.

Verify, with the target's law p_r at every row r:
- greedy: from the root, follow the child whose token is argmax p_r; stop where none is and emit
  the followed tokens then argmax at the last row: the longest root path whose every token is the
  target's argmax at its parent, plus the target's next token.
- sampling (recursive rejection, children tried in order): at row r with children c_1..c_m, p = p_r;
  for j = 1..m, with q_j the law c_j was drawn from (q_r without c_1..c_{j−1}, renormalised; one-hot
  at c_j for a deterministic drafter): accept c_j with probability min(1, p(c_j) / q_j(c_j)) and go on
  at its row, else p ← norm(max(0, p − q_j)). At a leaf, or when every child was rejected, the last
  token is sampled from p. Each try emits y with probability
      min(p(y), q_j(y)) + Σ_x max(0, p(x) − q_j(x)) · norm(max(0, p − q_j))(y) = p(y),
  so every emitted token follows the target's law given the ones before it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch


class TreeShape(NamedTuple):
    """How a draft tree of some node budget may grow: its levels, and candidates per expanded node."""

    depth: int
    branch: int  # 1: a chain


class DraftTree(NamedTuple):
    """Tree tokens, each one's parent row, and the drafter's law at each row (or None) in row order."""

    tokens: list[int]
    parents: list[int]
    laws: list[object]  # [n + 1]: what `Candidates.law` gave at that row (None at a leaf)


class TreeAccepted(NamedTuple):
    """The outcome of verifying a tree."""

    tokens: list[int]  # the accepted path's tokens + one target token
    accepted_len: int
    rows: list[int]  # the accepted path's rows, root (0) first: len accepted_len + 1
    tried: list[int]  # per depth along the path: how many children that node had (tried in order)
    accepted_rank: list[int]  # ... and which of them was accepted (1-based; 0: none)


class Node(NamedTuple):
    """A node to expand: its id while the tree grows (-1: the root), its parent's id, its token."""

    id: int
    parent: int
    token: int


class Candidates(NamedTuple):
    """A node's children as the drafter proposes them: in trial order, with the drafter's probability
    of its rank-j candidate (non-increasing, whatever token was drawn), and its law there."""

    tokens: list[int]
    probs: list[float]
    law: object = None


def chain_parents(k: int) -> list[int]:
    """The parents of a chain of k tokens: [0, 1, …, k − 1]."""
    return list(range(k))


def is_chain(parents: list[int]) -> bool:
    """Each token's parent is the row just before it."""
    return all(p == i for i, p in enumerate(parents))


def check_parents(parents: list[int]) -> None:
    """Raise unless every parent row comes before its child's row."""
    for i, p in enumerate(parents):
        if not 0 <= p <= i:
            raise ValueError(f"tree token {i} has parent row {p}; a parent row must lie in 0..{i}")


def depths(parents: list[int]) -> list[int]:
    """Depth of every row: 0 for the root, depth(parent) + 1 below it."""
    out = [0]
    for p in parents:
        out.append(out[p] + 1)
    return out


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """[n + 1, n + 1] bool: row r sees row c iff c is r or one of its ancestors."""
    n = len(parents) + 1
    mask = np.zeros((n, n), dtype=bool)  # numpy rows: a tree verify builds this on the host every step
    mask[0, 0] = True
    for i, p in enumerate(parents, start=1):
        mask[i] = mask[p]
        mask[i, i] = True
    return torch.from_numpy(mask)


def children(parents: list[int]) -> list[list[int]]:
    """Per row, its children's rows in order (the order they are tried)."""
    out: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents, start=1):
        out[p].append(i)
    return out


def greedy_accept_tree(tokens: list[int], parents: list[int], target_logits: torch.Tensor) -> TreeAccepted:
    """The longest root path whose tokens are the target's argmax at their parents, then the argmax
    after it. `target_logits` [n + 1, V], one row per tree row."""
    best = target_logits.argmax(dim=-1).tolist()
    kids = children(parents)
    row, rows, out, tried, ranks = 0, [0], [], [], []
    while True:
        nxt = next((j for j, c in enumerate(kids[row]) if tokens[c - 1] == best[row]), None)
        if kids[row]:
            tried.append(len(kids[row]))
            ranks.append(0 if nxt is None else nxt + 1)
        out.append(best[row])
        if nxt is None:
            return TreeAccepted(out, len(out) - 1, rows, tried, ranks)
        row = kids[row][nxt]
        rows.append(row)


def sample_accept_tree(
    tokens: list[int],
    parents: list[int],
    laws: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> TreeAccepted:
    """Recursive rejection over the tree (module docstring). `laws` [rows, V]: row r is the law the
    children of row r were drawn from, or None for a deterministic drafter (one-hot); `target_probs`
    [n + 1, V] are already temperature/top-p processed."""
    kids = children(parents)
    row, rows, out, tried, ranks = 0, [0], [], [], []
    while True:
        p = target_probs[row]
        q = None if laws is None else laws[row].clone()
        accepted = None
        for j, child in enumerate(kids[row]):
            x = tokens[child - 1]
            if q is None:
                q_j = torch.zeros_like(p)
                q_j[x] = 1.0
            else:
                q_j = q / q.sum()
            ratio = (p[x] / q_j[x]).item() if q_j[x] > 0 else 0.0
            if torch.rand((), generator=generator).item() < min(1.0, ratio):
                accepted = j
                break
            residual = (p - q_j).clamp_min(0.0)
            total = residual.sum()
            # residual mass 0 only when p == q_j numerically; then p itself is the right law
            p = residual / total if total > 0 else p
            if q is not None:
                q[x] = 0.0
        if kids[row]:
            tried.append(len(kids[row]))
            ranks.append(0 if accepted is None else accepted + 1)
        if accepted is None:
            out.append(int(torch.multinomial(p, 1, generator=generator).item()))
            return TreeAccepted(out, len(out) - 1, rows, tried, ranks)
        row = kids[row][accepted]
        out.append(tokens[row - 1])
        rows.append(row)


def grow_tree(
    expand: Callable[[list[Node]], list[Candidates]], last_token: int, nodes: int, depth: int, width: int
) -> DraftTree:
    """The best `nodes` nodes by key within `depth` levels, expanding at most `width` per level
    (module docstring). `expand(frontier)` returns each frontier node's `Candidates`."""
    toks: list[int] = []
    par: list[int] = []
    key: list[float] = []
    dep: list[int] = []
    laws: dict[int, object] = {}

    def best(limit: int) -> list[int]:
        return sorted(range(len(toks)), key=lambda i: (-key[i], dep[i], i))[:limit]

    frontier = [Node(-1, -1, last_token)]
    for level in range(1, depth + 1):
        new = []
        for node, cands in zip(frontier, expand(frontier), strict=True):
            laws[node.id] = cands.law
            base = 1.0 if node.id < 0 else key[node.id]
            if any(b > a for a, b in zip(cands.probs, cands.probs[1:])):
                raise ValueError(f"candidate probabilities must not increase with rank: {cands.probs}")
            for token, prob in zip(cands.tokens, cands.probs, strict=True):
                if prob <= 0:
                    break
                new.append(len(toks))
                toks.append(token)
                par.append(node.id)
                key.append(base * prob)
                dep.append(level)
        if level == depth:
            break
        kept = set(best(nodes))  # a node outside the best so far never enters: its children neither
        frontier = [Node(i, par[i], toks[i]) for i in sorted(new, key=lambda i: (-key[i], i)) if i in kept][:width]
        if not frontier:
            break
    return _in_row_order(best(nodes), toks, par, laws)


def _in_row_order(kept: list[int], toks: list[int], par: list[int], laws: dict[int, object]) -> DraftTree:
    """The kept nodes depth-first, children in trial order: the first-child chain takes rows 1, 2, …
    (a path accepted along it keeps its cache rows where they are)."""
    kept_set = set(kept)
    kids: dict[int, list[int]] = {}
    for i in sorted(kept):
        kids.setdefault(par[i], []).append(i)
    tokens, parents, row_laws = [], [], [laws.get(-1)]
    stack = [(c, 0) for c in reversed(kids.get(-1, []))]
    while stack:
        node, parent_row = stack.pop()
        tokens.append(toks[node])
        parents.append(parent_row)
        row_laws.append(laws.get(node) if node in kids else None)
        stack.extend((c, len(tokens)) for c in reversed(kids.get(node, [])) if c in kept_set)
    return DraftTree(tokens, parents, row_laws)


def static_tree_size(depth: int, width: int, branch: int) -> int:
    """Nodes `grow_tree_static` lays out: `branch` under the root, then on each level `branch` under each
    frontier slot, of which there are `width` or the nodes of the level before if fewer."""
    level, total = branch, branch
    for _ in range(depth - 1):
        level = min(width, level) * branch
        total += level
    return total


def grow_tree_static(
    expand: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    last_token: torch.Tensor,
    nodes: torch.Tensor,
    depth: int,
    width: int,
    branch: int,
) -> torch.Tensor:
    """`grow_tree`'s greedy tree on fixed-size tensors, with no host read: [3, n] float64 holding each
    laid-out node's token, parent id (-1: the root) and whether the tree keeps it (`tree_from_static`).

    Node ids are laid out level by level (`static_tree_size`): level 1 is ids 0..branch−1, then each
    level's frontier slot j gets the next `branch` ids. `nodes` is a 0-dim tensor (one capture serves
    every budget). `expand(parents, ids, tokens)` takes [w] frontier rows — each node's parent id, its id (-1: the
    root, whose parent is -2; n: an empty slot) and token — and returns its candidates [w, branch]:
    tokens and the drafter's float32 probabilities, best first. Keys multiply in float64 as
    `grow_tree`'s do in Python, and a stable sort by key keeps `grow_tree`'s ties (ids grow with
    depth, so (−key, id) orders as (−key, depth, id)): the same tree.

    The frontier is the level's best `width` new nodes, without `grow_tree`'s test that they are among
    the best `nodes` so far: a node that fails it has at least `nodes` better ones, and so do all its
    descendants, which sort after the frontier nodes that pass it; they fill only slots `grow_tree`
    leaves empty, and never reach the tree."""
    dev, n = last_token.device, static_tree_size(depth, width, branch)
    ids = torch.full((1,), -1, dtype=torch.long, device=dev)
    parents, tok, key = torch.full((1,), -2, dtype=torch.long, device=dev), last_token.view(1), None
    level_tokens, level_parents, level_keys = [], [], []
    end = 0
    for level in range(1, depth + 1):
        cand_tokens, cand_probs = expand(parents, ids, tok)
        probs = cand_probs.double()
        new_keys = probs if key is None else key[:, None] * probs  # an empty slot's key is -inf
        # grow_tree stops at a candidate of probability 0
        level_keys.append(torch.where(cand_probs > 0, new_keys, -torch.inf).reshape(-1))
        level_tokens.append(cand_tokens.reshape(-1))
        level_parents.append(ids[:, None].expand(-1, branch).reshape(-1))
        if level == depth:
            break
        best, order = level_keys[-1].sort(descending=True, stable=True)
        key, order = best[:width], order[:width]  # fewer when the level has fewer nodes
        parents = ids[order // branch]  # an empty slot reads some row and writes none
        ids = torch.where(key > -torch.inf, end + order, n)
        tok = level_tokens[-1][order]
        end += level_tokens[-1].shape[0]
    keys = torch.cat(level_keys)
    best, order = keys.sort(descending=True, stable=True)
    kept = torch.zeros(n, dtype=torch.bool, device=dev)
    kept[order] = (torch.arange(n, device=dev) < nodes) & (best > -torch.inf)
    return torch.stack([torch.cat(level_tokens), torch.cat(level_parents), kept]).double()


def tree_from_static(table: list[list[float]]) -> DraftTree:
    """The `DraftTree` of `grow_tree_static`'s output, read to the host (`.tolist()`); no laws (greedy)."""
    tokens, parents, kept = ([int(x) for x in row] for row in table)
    return _in_row_order([i for i, k in enumerate(kept) if k], tokens, parents, {})
