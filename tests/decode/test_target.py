"""The static target's steps of the widths the decoder uses (1 token, a verify of k + 1, a packed
16) against transformers' unfused model, and against each other: speculative decoding is lossless
only while a (k + 1)-token verify computes what k + 1 one-token steps would (docs/target-step.md)."""

import pytest
import torch

from conftest import tiny_llama
from decode.target import StaticLlamaTarget

TARGET = tiny_llama(seed=0, layers=3)
CONTEXT = [(7 * i + 3) % 64 for i in range(100)]  # ~100 cached tokens, as in the measured steps
WIDTHS = (1, 5, 16)


def reference_logits(ids: list[int]) -> torch.Tensor:
    """transformers' logits for every position (q/k/v and gate/up as separate projections)."""
    with torch.inference_mode():
        return TARGET(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("weight_major", [False, True], ids=["linear", "weight_major"])
def test_fused_steps_after_a_cached_context_match_the_unfused_model(weight_major):
    target = StaticLlamaTarget(TARGET, max_len=256, weight_major=weight_major)
    ids = list(CONTEXT)
    target.forward(ids)
    for width in WIDTHS:
        step = [(5 * width + j) % 64 for j in range(width)]
        got = target.forward(step).logits
        ids += step
        assert torch.allclose(got, reference_logits(ids)[-width:], atol=1e-4)


@pytest.mark.parametrize("weight_major", [False, True], ids=["linear", "weight_major"])
def test_a_verify_step_computes_what_one_token_steps_compute(weight_major):
    target = StaticLlamaTarget(TARGET, max_len=256, weight_major=weight_major)
    target.forward(CONTEXT)
    for width in WIDTHS[1:]:
        step = [(3 * width + j) % 64 for j in range(width)]
        wide = target.forward(step).logits
        target.rollback(len(CONTEXT))
        one_by_one = torch.cat([target.forward([t]).logits for t in step])
        target.rollback(len(CONTEXT))
        assert torch.allclose(wide, one_by_one, atol=1e-5)
        assert torch.equal(wide.argmax(-1), one_by_one.argmax(-1))
