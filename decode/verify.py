"""Verify/accept: the pure rule that keeps speculative decoding lossless.

In: k draft tokens, the drafter's probabilities for them (or None for a deterministic
drafter), and the target's logits at the k+1 positions (after the context, after each
draft token). Out: `Accepted(tokens, accepted_len)` — the accepted draft prefix plus one
token from the target (a correction or the bonus token). No model, no I/O; cost is
one softmax over k+1 rows.

Greedy: the longest prefix where draft == argmax(target), then the target's argmax.
Sampling (Leviathan et al. 2023): accept draft token x with probability min(1, p(x)/q(x));
on the first rejection sample from norm(max(0, p − q)); if all k are accepted, sample the
bonus token from p at position k. Emitted tokens are then distributed exactly as p.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Accepted(NamedTuple):
    """The outcome of one verify step."""

    tokens: list[int]  # accepted draft prefix + one target token
    accepted_len: int  # how many draft tokens were accepted


def probs_from_logits(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Turn logits [..., V] into sampling probabilities with temperature and top-p.

    Applied identically to target and draft, so both sides see the same distribution family.
    """
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def greedy_accept(draft: list[int], target_logits: torch.Tensor) -> Accepted:
    """Longest prefix of `draft` equal to the target's argmax, then the target's next token.

    `target_logits` has shape [len(draft) + 1, V].
    """
    best = target_logits.argmax(dim=-1).tolist()
    n = 0
    while n < len(draft) and draft[n] == best[n]:
        n += 1
    return Accepted(list(draft[:n]) + [best[n]], n)


def sample_accept(
    draft: list[int],
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Accepted:
    """Rejection sampling over a draft; `draft_probs` [k, V] or None for a one-hot drafter.

    `target_probs` [k+1, V] are already temperature/top-p processed.
    """
    for i, token in enumerate(draft):
        p = target_probs[i]
        if draft_probs is None:
            q = torch.zeros_like(p)
            q[token] = 1.0
        else:
            q = draft_probs[i]
        ratio = (p[token] / q[token]).item() if q[token] > 0 else 0.0
        if torch.rand((), generator=generator).item() < min(1.0, ratio):
            continue
        residual = (p - q).clamp_min(0.0)
        total = residual.sum()
        # residual mass 0 only when p == q numerically; then p itself is the right law
        residual = residual / total if total > 0 else p
        fix = torch.multinomial(residual, 1, generator=generator).item()
        return Accepted(list(draft[:i]) + [int(fix)], i)
    bonus = torch.multinomial(target_probs[len(draft)], 1, generator=generator).item()
    return Accepted(list(draft) + [int(bonus)], len(draft))
