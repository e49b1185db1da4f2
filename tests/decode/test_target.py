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


TREE_TOKENS, TREE_PARENTS = [3, 4, 8, 2, 9, 6], [0, 1, 0, 3, 3, 1]  # rows: 1-2, 1-6, 3-4, 3-5 under root 0


def root_path(row: int) -> list[int]:
    rows = [row]
    while rows[-1]:
        rows.append(TREE_PARENTS[rows[-1] - 1])
    return rows[::-1]


@pytest.mark.parametrize("weight_major", [False, True], ids=["linear", "weight_major"])
def test_a_tree_verify_computes_what_each_of_its_paths_computes_as_a_chain(weight_major):
    """Row r of a tree forward sees the context and its ancestors at positions start + depth: its
    logits are those of the chain context + its path."""
    target = StaticLlamaTarget(TARGET, max_len=256, weight_major=weight_major)
    target.forward(CONTEXT)
    out = target.forward([7] + TREE_TOKENS, TREE_PARENTS)
    for row in range(len(TREE_TOKENS) + 1):
        chain = [7] + [TREE_TOKENS[r - 1] for r in root_path(row)[1:]]
        target.rollback(len(CONTEXT))
        want = target.forward(chain)
        assert torch.allclose(out.logits[row], want.logits[-1], atol=1e-4), row
        assert torch.allclose(out.hidden[row], want.hidden[-1], atol=1e-4), row


def test_keeping_a_paths_rows_leaves_the_cache_a_chain_would():
    """After a tree verify, the accepted path 0-3-5 is gathered into place; the next step computes what
    it computes after a plain prefill of the same tokens."""
    target = StaticLlamaTarget(TARGET, max_len=256)
    target.forward(CONTEXT)
    target.forward([7] + TREE_TOKENS, TREE_PARENTS)
    target.keep_rows(len(CONTEXT), [0, 3, 5])
    assert target.length == len(CONTEXT) + 3
    after = target.forward([11, 12])
    fresh = StaticLlamaTarget(TARGET, max_len=256)
    want = fresh.forward(CONTEXT + [7, 8, 9, 11, 12]).logits[-2:]
    assert torch.allclose(after.logits, want, atol=1e-4)
    with pytest.raises(ValueError, match="not a path"):
        target.keep_rows(len(CONTEXT), [1, 2])


def test_packed_slots_keep_their_own_trees_and_chains():
    """One packed forward of a tree on slot 0, a chain on slot 1 and a tree on slot 2 computes what each
    computes alone."""
    alone = []
    for tokens, parents in (([7] + TREE_TOKENS, TREE_PARENTS), ([7, 3, 4], None), ([5, 6, 1, 2], [0, 0, 1])):
        target = StaticLlamaTarget(TARGET, max_len=256)
        target.forward(CONTEXT[: 40 + len(tokens)])
        alone.append(target.forward(tokens, parents).logits)
    packed = StaticLlamaTarget(TARGET, max_len=256)
    feeds = []
    for slot, (tokens, parents) in enumerate(
        (([7] + TREE_TOKENS, TREE_PARENTS), ([7, 3, 4], None), ([5, 6, 1, 2], [0, 0, 1]))
    ):
        packed.slot(slot).forward(CONTEXT[: 40 + len(tokens)])
        feeds.append((slot, tokens, False, parents))
    for got, want in zip(packed.forward_packed(feeds), alone):
        assert torch.allclose(got.logits, want, atol=1e-4)
