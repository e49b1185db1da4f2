"""A drafter for the tree tests: it knows the target's greedy token at every node and puts it at a
chosen rank among the node's candidates, so accepted paths run through second and third children
(their cache rows must be moved into place) and some nodes hold no right token at all."""

from __future__ import annotations

import torch

from decode.drafters import Draft
from decode.tree import Candidates, TreeShape, grow_tree

RANK_PROBS = (0.5, 0.25, 0.12, 0.06, 0.03)


class RankedOracle:
    """At context c the target's greedy next token is candidate number `ranks[len(c) % len(ranks)]`
    (1-based; 0: absent); the other candidates are tokens it would not pick."""

    name = "ranked_oracle"

    def __init__(self, model, ranks=(2, 1, 3, 0, 1, 2), vocab: int = 64) -> None:
        self.model, self.ranks, self.vocab = model, ranks, vocab

    def reset(self) -> None:
        pass

    def _greedy_next(self, context: list[int]) -> int:
        with torch.inference_mode():
            return int(self.model(torch.tensor([context])).logits[0, -1].argmax())

    def _candidates(self, context: list[int], branch: int) -> Candidates:
        right = self._greedy_next(context)
        wrong = [(right + 1 + i) % self.vocab for i in range(branch)]
        rank = self.ranks[len(context) % len(self.ranks)]
        tokens = wrong if rank == 0 or rank > branch else wrong[: rank - 1] + [right] + wrong[rank - 1 :]
        return Candidates(tokens[:branch], list(RANK_PROBS[:branch]))

    def propose(self, ids: list[int], k: int, hidden) -> Draft:
        """A chain: the rank-1 candidate at each position."""
        tokens: list[int] = []
        for _ in range(k):
            tokens.append(self._candidates(ids + tokens, 1).tokens[0])
        return Draft(tokens)

    def propose_tree(self, ids: list[int], nodes: int, shape: TreeShape, hidden) -> Draft:
        paths = {-1: []}

        def expand(frontier):
            out = []
            for node in frontier:
                if node.id >= 0:
                    paths[node.id] = paths[node.parent] + [node.token]
                out.append(self._candidates(ids + paths[node.id], shape.branch))
            return out

        tree = grow_tree(expand, ids[-1], nodes, shape.depth, shape.branch)
        return Draft(tree.tokens, None, tree.parents)
