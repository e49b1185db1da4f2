import itertools

import pytest
import torch
from laws import context_laws
from scipy.stats import chisquare

from decode.verify import greedy_accept, probs_from_logits, sample_accept


def onehot_logits(rows, vocab=8):
    out = torch.full((len(rows), vocab), -10.0)
    for i, t in enumerate(rows):
        out[i, t] = 10.0
    return out


def test_greedy_accepts_matching_prefix_then_target_token():
    logits = onehot_logits([3, 5, 1, 7])
    assert greedy_accept([3, 5, 2], logits) == ([3, 5, 1], 2)
    assert greedy_accept([4, 5, 1], logits) == ([3], 0)
    assert greedy_accept([3, 5, 1], logits) == ([3, 5, 1, 7], 3)  # bonus token
    assert greedy_accept([], logits[:1]) == ([3], 0)


def test_top_p_keeps_smallest_prefix_reaching_mass():
    probs = probs_from_logits(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 1.0, top_p=0.7)
    assert torch.allclose(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=1e-5)


def test_identical_distributions_accept_everything():
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    out = sample_accept([0, 1], p[:2], p, torch.Generator().manual_seed(0))
    assert out.accepted_len == 2 and len(out.tokens) == 3


# ---- sampling end to end: the first three tokens, as a decoder loop emits them ---------------
V = 3  # every 3-token sequence is one χ² cell (27)


def laws(seed, zero=None):
    """A next-token law for every context of up to 5 tokens, each row its own: a row read at the
    wrong position, or for the wrong context, changes what comes out. `zero(ctx)`: a token the
    law never gives (where the other side does), so rejections and the residual both matter."""
    return context_laws(seed, V, depth=5, power=2, floor=0.02, zero=zero)


P = laws(10, zero=lambda ctx: 2 if len(ctx) == 1 else None)  # the target
Q = laws(11, zero=lambda ctx: 0)  # a drafter unlike it: never proposes 0, often what p never gives


def speculate(n, k, gen, sampled):
    """Tokens from `sample_accept` steps of k drafts (the decoder's loop, no model) until n.

    `sampled`: the drafter samples from Q and its rows go to `sample_accept`; else it proposes
    Q's most likely token (a deterministic drafter: one-hot q)."""
    out: list[int] = []
    while len(out) < n:
        draft, q_rows = [], []
        for _ in range(k):
            row = Q[tuple(out + draft)]
            token = int(torch.multinomial(row, 1, generator=gen)) if sampled else int(row.argmax())
            draft.append(token)
            q_rows.append(row)
        p_rows = torch.stack([P[tuple(out + draft[:i])] for i in range(k + 1)])
        q = torch.stack(q_rows) if sampled else None
        out += sample_accept(draft, q, p_rows, gen).tokens
    return tuple(out[:n])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled_q", "one_hot"])
def test_sampled_sequences_follow_the_target_law_over_the_first_three_tokens(k, sampled):
    """P(x1, x2, x3) = p(x1) p(x2 | x1) p(x3 | x1 x2), whatever the drafter and k: the accept ratio,
    the residual and the bonus token must each use the row of their own position."""
    gen = torch.Generator().manual_seed(k)
    n = 6000
    cells = list(itertools.product(range(V), repeat=3))
    counts = dict.fromkeys(cells, 0)
    for _ in range(n):
        counts[speculate(3, k, gen, sampled)] += 1
    expected = [float(P[()][a] * P[(a,)][b] * P[(a, b)][c]) * n for a, b, c in cells]
    observed = [counts[c] for c in cells]
    assert all(o == 0 for o, e in zip(observed, expected) if e == 0), "a token the target never gives"
    kept = [(o, e) for o, e in zip(observed, expected) if e > 0]
    total = sum(e for _, e in kept)
    stat = chisquare([o for o, _ in kept], [e * n / total for _, e in kept])
    assert stat.pvalue > 0.01, stat
