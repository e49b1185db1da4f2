import torch
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


def _first_token_counts(draft_q, target_p, draft_token_fn, n, seed):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(target_p))
    for _ in range(n):
        tok = draft_token_fn(gen)
        q = None if draft_q is None else draft_q[None]
        out = sample_accept([tok], q, torch.stack([target_p, target_p]), gen)
        counts[out.tokens[0]] += 1
    return counts


def test_rejection_sampling_first_token_follows_target_distribution():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0])
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])  # a poor drafter, mass where p has none
    n = 6000
    counts = _first_token_counts(q, p, lambda g: int(torch.multinomial(q, 1, generator=g)), n, seed=1)
    assert counts[4] == 0
    stat = chisquare(counts[:4].numpy(), (p[:4] * n).numpy())
    assert stat.pvalue > 0.01, stat


def test_rejection_sampling_with_deterministic_drafter_is_exact():
    p = torch.tensor([0.25, 0.25, 0.5])
    n = 6000
    counts = _first_token_counts(None, p, lambda g: 2, n, seed=2)
    stat = chisquare(counts.numpy(), (p * n).numpy())
    assert stat.pvalue > 0.01, stat


def test_identical_distributions_accept_everything():
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    out = sample_accept([0, 1], p[:2], p, torch.Generator().manual_seed(0))
    assert out.accepted_len == 2 and len(out.tokens) == 3
