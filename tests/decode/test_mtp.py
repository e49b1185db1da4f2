import pytest
import torch

from conftest import ByteTokenizer, plain_greedy, tiny_llama
from decode.controller import AdaptiveController, FixedController
from decode.hf_target import HFTarget
from decode.jobs import GenerationSettings
from decode.mtp import MTPConfig, MTPDrafter, MTPHead, load_mtp, load_mtp_drafter, save_mtp
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget

TARGET = tiny_llama(seed=3)


def head(vocab_ids=()):
    torch.manual_seed(0)
    return MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=2, vocab_ids=vocab_ids)).eval()


def sampling_drafter(vocab_ids):
    """`head(vocab_ids)` on the target's embeddings, sampling at temperature 1 from a seeded generator."""
    return MTPDrafter(
        head(vocab_ids),
        TARGET.model.embed_tokens.weight.detach(),
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )


def test_mtp_drafter_is_lossless_under_every_controller():
    for target_cls in (StaticLlamaTarget, HFTarget):
        for ctl in (FixedController(3), AdaptiveController(k_max=4, verify_cost_s={0: 1e-3, 4: 1.2e-3})):
            target = target_cls(TARGET)
            drafter = MTPDrafter(head(tuple(range(0, 64, 2))), TARGET.model.embed_tokens.weight.detach())
            dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, ctl)
            out = [t for s in dec.generate([5, 6, 7], GenerationSettings(max_new_tokens=20)) for t in s.token_ids]
            assert out == plain_greedy(TARGET, [5, 6, 7], 20)
            assert dec.stats.drafted > 0


def test_reduced_vocabulary_drafts_only_its_tokens_and_sampling_gives_full_rows():
    vocab = tuple(range(10, 20))
    drafter = sampling_drafter(vocab)
    draft = drafter.propose([1, 2, 3], 4, torch.randn(64))
    assert len(draft.tokens) == 4 and all(t in vocab for t in draft.tokens)
    assert draft.probs.shape == (4, 64)
    assert torch.allclose(draft.probs.sum(-1), torch.ones(4)) and draft.probs[:, :10].sum() == 0
    assert drafter.propose([1, 2, 3], 4, None).tokens == []  # no hidden state yet: no draft


def test_save_and_load_round_trip(tmp_path):
    h = head((1, 2, 3))
    save_mtp(h, tmp_path)
    loaded = load_mtp(tmp_path)
    x, e = torch.randn(64), torch.randn(64)
    assert loaded.cfg == h.cfg
    assert torch.allclose(loaded.step(x, e), h.step(x, e), atol=1e-2)


def test_feature_layers_match_between_targets_and_reject_bad_layers():
    model = tiny_llama(seed=4, layers=3)
    outs = [cls(model, feature_layers=(1, 2)).forward([3, 4, 5, 6]).hidden for cls in (StaticLlamaTarget, HFTarget)]
    assert outs[0].shape == (4, 3 * 64)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
    plain = StaticLlamaTarget(model).forward([3, 4, 5, 6]).hidden
    assert torch.allclose(outs[0][:, :64], plain, atol=1e-5)  # the last hidden state comes first
    for bad in ((0,), (3,)):
        with pytest.raises(ValueError, match="feature layers"):
            StaticLlamaTarget(model, feature_layers=bad)


def test_multi_layer_mtp_drafter_is_lossless_and_must_match_the_target(tmp_path):
    torch.manual_seed(0)
    cfg = MTPConfig(hidden_size=64, intermediate_size=128, layers=1, feature_layers=(1,))
    h = MTPHead(cfg).eval()
    save_mtp(h, tmp_path)
    embed = TARGET.model.embed_tokens.weight.detach()
    for target_cls in (StaticLlamaTarget, HFTarget):
        target = target_cls(TARGET, feature_layers=(1,))
        drafter = load_mtp_drafter(str(tmp_path), target)
        assert drafter.head.cfg.feature_layers == (1,)
        dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, FixedController(3))
        out = [t for s in dec.generate([9, 8, 7], GenerationSettings(max_new_tokens=20)) for t in s.token_ids]
        assert out == plain_greedy(TARGET, [9, 8, 7], 20)
        assert dec.stats.drafted > 0
    with pytest.raises(ValueError, match="reads target layers"):
        load_mtp_drafter(str(tmp_path), StaticLlamaTarget(TARGET))
    assert MTPDrafter(h, embed).propose([1, 2], 3, torch.randn(128)).tokens  # [last, layer 1] features


def test_context_attention_head_is_lossless_and_tracks_the_cache():
    torch.manual_seed(0)
    cfg = MTPConfig(hidden_size=64, intermediate_size=128, layers=1, feature_layers=(1,), context=6)
    target = StaticLlamaTarget(TARGET, feature_layers=(1,))
    drafter = MTPDrafter(MTPHead(cfg).eval(), TARGET.model.embed_tokens.weight.detach())
    dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, FixedController(3))
    for prompt in ([9, 8, 7], [9, 8, 7, 1, 2]):  # the second reuses the first's cached prefix
        out = [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=20)) for t in s.token_ids]
        assert out == plain_greedy(TARGET, prompt, 20)
        assert dec.stats.drafted > 0
        # the drafter's keys/values are those of the target's features at every cached position
        cached = dec._cached
        fresh = StaticLlamaTarget(TARGET, feature_layers=(1,)).forward(cached).hidden
        assert drafter.context_kv.shape[0] == len(cached)
        assert torch.allclose(drafter.context_kv, drafter.head.context_kv(fresh), atol=1e-4)


def test_context_window_masks_positions_before_the_sequence():
    torch.manual_seed(0)
    head = MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=1, context=4)).eval()
    h, e = torch.randn(2, 64), torch.randn(2, 64)
    ctx = torch.randn(2, 4, 64)
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out = head.step(h, e, head.context_kv(ctx), valid)
    ctx_changed = ctx.clone()
    ctx_changed[0, :2] = torch.randn(2, 64)  # masked rows of the first window: no effect there
    again = head.step(h, e, head.context_kv(ctx_changed), valid)
    assert torch.allclose(out[0], again[0], atol=1e-5)
    assert torch.allclose(out[0], head.step(h[:1], e[:1], head.context_kv(ctx[:1, 2:]))[0], atol=1e-5)


def tree_paths(draft):
    """Each tree row's tokens from the root."""
    paths = {0: ()}
    for i, (t, p) in enumerate(zip(draft.tokens, draft.parents), start=1):
        paths[i] = paths[p] + (t,)
    return paths


def test_a_greedy_tree_grows_around_the_drafters_own_chain():
    """Siblings are distinct reduced-vocabulary tokens, the budget and depth hold, and the first-child path
    is the chain the head drafts greedily (each node chains its own parent's feature)."""
    from decode.tree import TreeShape

    drafter = MTPDrafter(head(tuple(range(0, 64, 2))), TARGET.model.embed_tokens.weight.detach())
    hidden = torch.randn(64)
    tree = drafter.propose_tree([1, 2, 3], 7, TreeShape(3, 3), hidden)
    paths = tree_paths(tree)
    assert len(tree.tokens) == 7 and max(map(len, paths.values())) <= 3 and tree.probs is None
    assert all(t % 2 == 0 for t in tree.tokens)
    siblings = {}
    for row, p in enumerate(tree.parents, start=1):
        siblings.setdefault(p, []).append(tree.tokens[row - 1])
    assert all(len(set(s)) == len(s) for s in siblings.values())
    first = [0]
    while first[-1] + 1 in paths and tree.parents[first[-1]] == first[-1]:  # rows 1, 2, … chain down
        first.append(first[-1] + 1)
    chain = drafter.propose([1, 2, 3], len(first) - 1, hidden).tokens
    assert list(paths[first[-1]]) == chain


@pytest.mark.parametrize("nodes,depth,branch", [(8, 4, 4), (3, 2, 2), (16, 6, 4), (24, 8, 4), (5, 5, 3), (4, 1, 4)])
def test_a_greedy_heads_static_tree_is_the_tree_grown_level_by_level(nodes, depth, branch):
    """`propose_tree` of a greedy head runs `tree_table` (fixed shapes, what CUDA graphs replay): the same
    tokens and parents as `grow_tree` expanding only the frontier's rows."""
    from decode.tree import TreeShape

    for seed in range(6):
        torch.manual_seed(seed)
        cfg = MTPConfig(
            hidden_size=64, intermediate_size=128, layers=2, vocab_ids=tuple(range(0, 64, 2)), feature_layers=(1,)
        )
        drafter = MTPDrafter(MTPHead(cfg).eval(), torch.randn(64, 64))
        hidden, shape = torch.randn(128), TreeShape(depth, branch)
        tree = drafter.propose_tree([1, 2, 3], nodes, shape, hidden)
        with torch.inference_mode():
            grown = drafter.grown_tree([1, 2, 3], nodes, shape, hidden)
        assert (tree.tokens, tree.parents) == (grown.tokens, grown.parents) and len(tree.tokens) == nodes


def test_a_sampled_tree_carries_the_heads_law_at_each_expanded_row():
    from decode.tree import TreeShape

    vocab = tuple(range(10, 30))
    drafter = sampling_drafter(vocab)
    tree = drafter.propose_tree([1, 2, 3], 6, TreeShape(2, 3), torch.randn(64))
    assert tree.probs.shape == (7, 64)
    expanded = sorted(set(tree.parents))
    assert torch.allclose(tree.probs[expanded].sum(-1), torch.ones(len(expanded)))
    assert tree.probs[:, :10].sum() == 0 and all(t in vocab for t in tree.tokens)
    for row, p in enumerate(tree.parents, start=1):
        assert tree.probs[p, tree.tokens[row - 1]] > 0  # each token drawn from its parent's law


def test_context_attention_trees_are_lossless_and_track_the_accepted_path():
    """A head with context attention drafting wide trees (16 candidates a node, so the random head is
    sometimes right, off its first child): after each step the drafter's keys/values are those of the
    target's features along what was accepted, not along the rows the tree fed."""
    torch.manual_seed(0)
    cfg = MTPConfig(hidden_size=64, intermediate_size=128, layers=1, feature_layers=(1,), context=6)
    target = StaticLlamaTarget(TARGET, feature_layers=(1,))
    moved = []
    keep = target.keep_rows
    target.keep_rows = lambda start, rows, slot=0: (moved.append(rows), keep(start, rows, slot))
    drafter = MTPDrafter(MTPHead(cfg).eval(), TARGET.model.embed_tokens.weight.detach())
    dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, FixedController(24, depth=2, branch=16))
    out = [t for s in dec.generate([9, 8, 7], GenerationSettings(max_new_tokens=20)) for t in s.token_ids]
    assert out == plain_greedy(TARGET, [9, 8, 7], 20)
    assert any(rows[1:] and rows[1] != 1 for rows in moved)  # accepted off the first child
    fresh = StaticLlamaTarget(TARGET, feature_layers=(1,)).forward(dec._cached).hidden
    assert torch.allclose(drafter.context_kv, drafter.head.context_kv(fresh), atol=1e-4)
