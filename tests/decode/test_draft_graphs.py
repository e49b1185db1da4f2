"""The MTP head's greedy draft loop captured as CUDA graphs (`decode.graphs.DraftGraphs`)."""

import pytest
import torch

from conftest import ByteTokenizer, plain_greedy, tiny_llama
from decode.controller import AdaptiveController, FixedController
from decode.graphs import StepGraphs
from decode.jobs import GenerationSettings
from decode.mtp import MTPConfig, MTPDrafter, MTPHead
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")


def head(feature_layers=(), context=0, device="cpu"):
    torch.manual_seed(0)
    cfg = MTPConfig(
        hidden_size=64,
        intermediate_size=128,
        layers=2,
        vocab_ids=tuple(range(0, 64, 2)),
        feature_layers=feature_layers,
        context=context,
    )
    return MTPHead(cfg).eval().to(device)


def test_capture_does_not_apply_on_cpu():
    embed = tiny_llama(seed=3).model.embed_tokens.weight.detach()
    assert not MTPDrafter(head(), embed).capture(4)
    assert MTPDrafter(head(), embed).graphs is None


@needs_cuda
def test_graph_drafts_equal_eager_drafts_on_cuda():
    embed = tiny_llama(seed=3).to("cuda").model.embed_tokens.weight.detach()
    eager = MTPDrafter(head(feature_layers=(1,), device="cuda"), embed)
    graphed = MTPDrafter(head(feature_layers=(1,), device="cuda"), embed)
    assert graphed.capture(6) and sorted(graphed.graphs.steps) == [1, 2, 3, 4, 5, 6]
    assert not MTPDrafter(head(context=4, device="cuda"), embed).capture(4)
    assert not MTPDrafter(head(device="cuda"), embed, temperature=1.0).capture(4)
    for seed in range(5):
        hidden = torch.randn(128, generator=torch.Generator().manual_seed(seed)).cuda()
        for k in (1, 3, 6, 7):  # 7 was not captured: eager
            ids = [5, 9, seed]
            assert graphed.propose(ids, k, hidden).tokens == eager.propose(ids, k, hidden).tokens


@needs_cuda
def test_graph_trees_equal_eager_trees_on_cuda():
    """Trees of 1..4 levels and 3 candidates replay graphs; each equals the same static tree run eagerly and
    the tree `grow_tree` grows over the frontier's rows; other shapes run eagerly."""
    from decode.tree import TreeShape

    embed = tiny_llama(seed=3).to("cuda").model.embed_tokens.weight.detach()
    eager = MTPDrafter(head(feature_layers=(1,), device="cuda"), embed)
    graphed = MTPDrafter(head(feature_layers=(1,), device="cuda"), embed)
    assert graphed.capture(4, branch=3) and sorted(graphed.graphs.trees) == [(d, 3) for d in range(1, 5)]
    for seed in range(5):
        hidden = torch.randn(128, generator=torch.Generator().manual_seed(seed)).cuda()
        for nodes, shape in [(6, TreeShape(3, 3)), (2, TreeShape(1, 3)), (4, TreeShape(4, 3)), (6, TreeShape(2, 2))]:
            ids = [5, 9, seed]
            tree = graphed.propose_tree(ids, nodes, shape, hidden)
            with torch.inference_mode():
                grown = eager.grown_tree(ids, nodes, shape, hidden)
            assert (tree.tokens, tree.parents) == (grown.tokens, grown.parents)
            assert tree.parents == eager.propose_tree(ids, nodes, shape, hidden).parents


@needs_cuda
@pytest.mark.parametrize("k", [1, 2, 4, "adaptive"])
def test_speculative_greedy_over_step_and_draft_graphs_equals_plain_greedy_on_cuda(k):
    """Against transformers' own greedy `generate` on the same CUDA model (conftest.plain_greedy), not
    the decoder's k = 0 path, which shares the static target and its graphs with what is tested."""
    model = tiny_llama(seed=3).to("cuda")
    prompt, n = [5, 9, 13, 5, 9, 13], 40
    want = plain_greedy(model, prompt, n)
    # the reference reads the context, not only the last token: attention bugs cannot hide
    assert plain_greedy(model, [7, 7, 7, 7, 7, 13], n) != want
    plain = StaticLlamaTarget(model, max_len=128, feature_layers=(1,))
    StepGraphs(plain, widths=[1])
    dec = SpeculativeDecoder(
        plain, ByteTokenizer(), MTPDrafter(head((1,), device="cuda"), plain.embed), FixedController(0)
    )
    assert [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=n)) for t in s.token_ids] == want
    target = StaticLlamaTarget(model, max_len=128, feature_layers=(1,))
    StepGraphs(target, widths=list(range(1, 7)))
    drafter = MTPDrafter(head((1,), device="cuda"), target.embed)
    assert drafter.capture(5)
    ctl = AdaptiveController(k_max=5, verify_cost_s={0: 1e-3, 5: 1.1e-3}) if k == "adaptive" else FixedController(k)
    dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, ctl)
    got = [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=n)) for t in s.token_ids]
    assert got == want and dec.stats.drafted > 0
