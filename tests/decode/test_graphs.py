"""The static-shape step that CUDA graphs capture (`decode.graphs`), run eagerly on the CPU."""

import pytest
import torch
from tree_drafters import RankedOracle

from conftest import ByteTokenizer, plain_greedy, tiny_llama
from decode.controller import FixedController
from decode.drafters import NgramDrafter
from decode.graphs import StepGraphs, cache_spans
from decode.jobs import GenerationSettings
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget

TARGET = tiny_llama(seed=0)


def test_static_step_matches_the_eager_forward_and_rolls_back():
    eager = StaticLlamaTarget(TARGET, max_len=64)
    static = StaticLlamaTarget(TARGET, max_len=64)
    graphs = StepGraphs(static, widths=[1, 3], capture=False)
    assert static.step_graphs == {0: graphs} and not graphs.captured
    for ids in ([5, 9, 13], [7], [2, 4, 6], [8]):
        want, got = eager.forward(ids), static.forward(ids)
        assert torch.allclose(got.logits, want.logits, atol=1e-4)
        assert torch.allclose(got.hidden, want.hidden, atol=1e-4)
    assert static.length == eager.length == 8
    static.rollback(5), eager.rollback(5)  # a rejected draft: the static step overwrites those rows
    assert torch.allclose(static.forward([1, 2, 3]).logits, eager.forward([1, 2, 3]).logits, atol=1e-4)


def test_steps_attend_over_the_narrowest_span_that_holds_them():
    assert cache_spans(64) == [64] and cache_spans(512) == [128, 256, 512] and cache_spans(300) == [128, 256, 300]
    eager = StaticLlamaTarget(TARGET, max_len=300)
    static = StaticLlamaTarget(TARGET, max_len=300)
    StepGraphs(static, widths=[1, 4], capture=False)
    eager.forward(list(range(1, 60)) * 2), static.forward(list(range(1, 60)) * 2)  # 118 tokens, eager prefill
    for ids in ([5, 9, 13, 2], [7], [2, 4, 6, 8], [8], [3, 3, 3, 3]):  # across the 128-row span's end
        want, got = eager.forward(ids), static.forward(ids)
        assert torch.allclose(got.logits, want.logits, atol=1e-4)
    static.rollback(126), eager.rollback(126)
    assert torch.allclose(static.forward([1, 2, 3, 4]).logits, eager.forward([1, 2, 3, 4]).logits, atol=1e-4)


def test_a_width_without_a_static_step_takes_the_eager_path():
    target = StaticLlamaTarget(TARGET, max_len=64)
    graphs = StepGraphs(target, widths=[1], capture=False)
    assert graphs.run([1, 2]) is None and target.length == 0
    target.forward([1, 2, 3, 4])  # eager (width 4), then width 1 static
    assert target.forward([5]).logits.shape[0] == 1 and target.length == 5


@pytest.mark.parametrize("k", [0, 2, 4])
def test_speculative_greedy_over_static_steps_equals_plain_greedy(k):
    prompt, n = [5, 9, 13, 5, 9, 13], 24
    target = StaticLlamaTarget(TARGET, max_len=128)
    StepGraphs(target, widths=list(range(1, k + 2)), capture=False)
    dec = SpeculativeDecoder(target, ByteTokenizer(), NgramDrafter(3, 1), FixedController(k))
    got = [t for span in dec.generate(prompt, GenerationSettings(max_new_tokens=n)) for t in span.token_ids]
    assert got == plain_greedy(TARGET, prompt, n)


def test_capture_needs_an_empty_slot():
    target = StaticLlamaTarget(TARGET, max_len=64)
    target.forward([1, 2])
    with pytest.raises(ValueError, match="before the slot holds"):
        StepGraphs(target, widths=[1], capture=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU (scripts/step_graphs.py)")
def test_captured_steps_replay_like_the_eager_forward_on_cuda():
    model = tiny_llama(seed=0).to("cuda")
    eager, graphed = StaticLlamaTarget(model, max_len=64), StaticLlamaTarget(model, max_len=64)
    graphs = StepGraphs(graphed, widths=[1, 3])
    assert graphs.captured
    for ids in ([5, 9, 13], [7], [2, 4, 6]):
        assert torch.allclose(graphed.forward(ids).logits, eager.forward(ids).logits, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU (scripts/step_graphs.py)")
def test_captured_steps_across_cache_spans_replay_like_the_eager_forward_on_cuda():
    model = tiny_llama(seed=0).to("cuda")
    eager, graphed = StaticLlamaTarget(model, max_len=300), StaticLlamaTarget(model, max_len=300)
    graphs = StepGraphs(graphed, widths=[1, 4])
    assert graphs.captured and sorted(graphs.steps) == [(w, s) for w in (1, 4) for s in (128, 256, 300)]
    eager.forward(list(range(1, 61)) * 4), graphed.forward(list(range(1, 61)) * 4)  # 240 tokens
    for ids in ([5, 9, 13, 2], [7], [2, 4, 6, 8], [8], [3, 3, 3, 3], [1, 2, 3, 4], [5]):  # past 256: the 300 span
        assert torch.allclose(graphed.forward(ids).logits, eager.forward(ids).logits, atol=1e-4)


def test_a_tree_capable_static_step_verifies_trees_and_chains_like_the_eager_forward():
    eager = StaticLlamaTarget(TARGET, max_len=300)
    static = StaticLlamaTarget(TARGET, max_len=300)
    StepGraphs(static, widths=[1, 4, 5], capture=False, trees=True)
    eager.forward(list(range(1, 60)) * 2), static.forward(list(range(1, 60)) * 2)  # 118 tokens, eager prefill
    # (ids, parents, the path kept after it)
    steps = [
        ([5, 9, 13, 2], [0, 0, 1], [0, 2, 3]),
        ([7, 3, 4, 8, 1], [0, 1, 0, 3], [0, 3, 4]),
        ([2, 4, 6, 8], None, [0, 1]),
        ([8], None, [0]),
    ]
    for ids, parents, path in steps * 2:  # across the 128-row span's end; the shape buffers change and come back
        want, got = eager.forward(ids, parents), static.forward(ids, parents)
        assert torch.allclose(got.logits, want.logits, atol=1e-4)
        assert torch.allclose(got.hidden, want.hidden, atol=1e-4)
        eager.keep_rows(eager.length - len(ids), path), static.keep_rows(static.length - len(ids), path)


def test_a_chain_only_static_step_leaves_trees_to_the_eager_path():
    target = StaticLlamaTarget(TARGET, max_len=64)
    graphs = StepGraphs(target, widths=[3], capture=False)
    assert graphs.run([1, 2, 3], [0, 0]) is None and target.length == 0
    eager = StaticLlamaTarget(TARGET, max_len=64)
    assert torch.allclose(target.forward([1, 2, 3], [0, 0]).logits, eager.forward([1, 2, 3], [0, 0]).logits, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 2, 2), (6, 3, 3)])
def test_speculative_greedy_over_static_tree_steps_equals_plain_greedy(shape):
    nodes, depth, branch = shape
    prompt, n = [5, 9, 13, 5, 9, 13], 24
    target = StaticLlamaTarget(TARGET, max_len=128)
    StepGraphs(target, widths=list(range(1, nodes + 2)), capture=False, trees=True)
    ctl = FixedController(nodes, depth=depth, branch=branch)
    dec = SpeculativeDecoder(target, ByteTokenizer(), RankedOracle(TARGET), ctl)
    got = [t for span in dec.generate(prompt, GenerationSettings(max_new_tokens=n)) for t in span.token_ids]
    assert got == plain_greedy(TARGET, prompt, n)
    assert dec.stats.accepted > 0 and dec.stats.tree_steps > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU (scripts/step_graphs.py)")
def test_captured_tree_steps_replay_like_the_eager_forward_on_cuda():
    model = tiny_llama(seed=0).to("cuda")
    eager, graphed = StaticLlamaTarget(model, max_len=300), StaticLlamaTarget(model, max_len=300)
    graphs = StepGraphs(graphed, widths=[1, 4, 5], trees=True)
    assert graphs.captured
    eager.forward(list(range(1, 61)) * 2), graphed.forward(list(range(1, 61)) * 2)
    steps = [
        ([5, 9, 13, 2], [0, 0, 1], [0, 2, 3]),
        ([7, 3, 4, 8, 1], [0, 1, 0, 3], [0, 3, 4]),
        ([2, 4, 6, 8], None, [0]),
    ]
    for ids, parents, path in steps * 3:
        assert torch.allclose(graphed.forward(ids, parents).logits, eager.forward(ids, parents).logits, atol=1e-4)
        eager.keep_rows(eager.length - len(ids), path), graphed.keep_rows(graphed.length - len(ids), path)
