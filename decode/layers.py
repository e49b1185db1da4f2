"""Llama's building blocks in plain torch: RMSNorm, a bias-free projection in a chosen weight
layout, and the rotary embedding's half rotation. The static target, the graph-captured step
and the MTP head are made of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: x / sqrt(mean(x**2) + eps), computed in fp32, times weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def project(x: torch.Tensor, weight: torch.Tensor, weight_major: bool = True) -> torch.Tensor:
    """x Wᵀ for rows x [T, in] and a weight W [out, in] (a bias-free linear layer).

    weight_major computes it as (W xᵀ)ᵀ for T > 1: the same product, with the weight as the left
    operand. Some BLAS builds (MKL's sgemm on AVX2) stream a large weight once per row for the
    x Wᵀ layout at small T and once in all for W xᵀ, so a verify step of a few tokens then costs
    about what one token does; others are faster with x Wᵀ (`scripts/linear_layout.py` measures
    both; figures in docs/decoding.md). One row is always F.linear (a matrix-vector product
    either way). A weight that is not a tensor (`decode.blocks.BlockWeight`) computes it itself.
    """
    if not isinstance(weight, torch.Tensor):
        return weight.apply(x)
    if not weight_major or x.shape[0] == 1:
        return F.linear(x, weight)
    return (weight @ x.t()).t().contiguous()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotary embedding's partner of x: the halves of its last dim swapped, the first negated."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
