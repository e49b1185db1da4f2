"""Next-token laws for every short context, for the sampling tests of `decode.verify` and `decode.tree`."""

import itertools

import torch


def context_laws(seed, vocab, depth, power, floor, zero=None):
    """A next-token law over `vocab` tokens for every context of up to `depth` tokens, each row its
    own (u ** power + floor, normalised; u uniform): a row read at the wrong position, or for the
    wrong context, changes what comes out. `zero(ctx)`: a token the law never gives (where the other
    side does), so rejections and the residual both matter."""
    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for n in range(depth + 1):
        for ctx in itertools.product(range(vocab), repeat=n):
            row = torch.rand(vocab, generator=gen, dtype=torch.float64) ** power + floor
            if zero is not None and (z := zero(ctx)) is not None:
                row[z] = 0.0
            rows[ctx] = row / row.sum()
    return rows
