import functools
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from tree_drafters import RankedOracle

from conftest import ByteTokenizer, plain_greedy, tiny_llama
from decode.controller import AdaptiveController, FixedController, HeuristicController
from decode.drafters import Draft, ModelDrafter, NgramDrafter, NoDrafter
from decode.hf_target import HFTarget
from decode.jobs import GenerationSettings
from decode.layers import project
from decode.mtp import MTPConfig, MTPDrafter, MTPHead
from decode.speculative import SpeculativeDecoder, calibrate_verify_cost
from decode.target import StaticLlamaTarget

TARGET = tiny_llama(seed=0)
DRAFT = tiny_llama(seed=1, hidden=32, layers=1)


class WrongDrafter:
    """Always proposes a token the target will not pick (acceptance 0)."""

    name = "wrong"

    def __init__(self, model):
        self.model = model

    def propose(self, ids, k, hidden):
        return Draft([(t + 1) % 64 for t in self._oracle(ids, k)])

    def _oracle(self, ids, k):
        return plain_greedy(self.model, ids, k)

    def reset(self):
        pass


class OracleDrafter(WrongDrafter):
    """Proposes exactly the target's greedy continuation (acceptance 1)."""

    name = "oracle"

    def propose(self, ids, k, hidden):
        return Draft(self._oracle(ids, k))


def decode(target, drafter, controller, prompt, n):
    dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, controller)
    spans = list(dec.generate(prompt, GenerationSettings(max_new_tokens=n)))
    return [t for s in spans for t in s.token_ids], dec


GRID_PROMPTS = ([5, 9, 13, 5, 9, 13, 5], [41, 7, 22, 3, 60, 18])  # prompt lookup finds drafts in the first


@functools.cache
def greedy_of(prompt, n):
    return plain_greedy(TARGET, list(prompt), n)


@pytest.mark.parametrize("weight_major", [False, True], ids=["linear", "weight_major"])
@pytest.mark.parametrize("controller", ["fixed", "adaptive", "heuristic"])
@pytest.mark.parametrize("drafter", ["ngram", "model", "none"])
@pytest.mark.parametrize("k", [1, 4])
def test_speculative_greedy_equals_plain_greedy(drafter, controller, weight_major, k):
    """Every drafter x controller x layout, each run (not sampled): output == plain greedy."""
    n = 24
    for prompt in GRID_PROMPTS:
        drafters = {
            "ngram": NgramDrafter(3, 1),
            "none": NoDrafter(),
            "model": ModelDrafter(StaticLlamaTarget(DRAFT, max_len=128)),
        }
        ctl = {
            "fixed": FixedController(k),
            "heuristic": HeuristicController(k, 6),
            "adaptive": AdaptiveController(k_max=k, verify_cost_s={0: 1.0, 8: 1.1}),
        }[controller]
        target = StaticLlamaTarget(TARGET, max_len=128, weight_major=weight_major)
        got, _ = decode(target, drafters[drafter], ctl, prompt, n)
        assert got == greedy_of(tuple(prompt), n), f"prompt {prompt}"


class HalfRightDrafter(WrongDrafter):
    """Proposes the target's greedy continuation for the first half of k, then wrong tokens: every
    step accepts some of its draft and rejects the rest (the rollback path)."""

    name = "half_right"

    def propose(self, ids, k, hidden):
        right = self._oracle(ids, k)
        half = (k + 1) // 2
        return Draft(right[:half] + [(t + 1) % 64 for t in right[half:]])


@pytest.mark.parametrize("target_kind", ["static", "hf"])
def test_a_draft_accepted_in_part_rolls_back_its_rejected_tail(target_kind):
    """Each step accepts 2 of 4 drafted tokens and rejects 2 that the target has already cached:
    the cache must drop them, or every later token reads their keys."""
    prompt, n = [3, 4, 5], 24
    target = StaticLlamaTarget(TARGET, max_len=128) if target_kind == "static" else HFTarget(TARGET)
    dec = SpeculativeDecoder(target, ByteTokenizer(), HalfRightDrafter(TARGET), FixedController(4))
    spans = list(dec.generate(prompt, GenerationSettings(max_new_tokens=n)))
    got = [t for s in spans for t in s.token_ids]
    assert got == greedy_of(tuple(prompt), n)
    full = [s for s in spans if s.draft_len == 4]
    assert len(full) >= 4 and all(s.accepted_len == 2 for s in full)  # accepted in part, every step
    assert target.length == len(prompt) + n - 1  # the cache holds what was said, not the rejected drafts


def test_hf_target_with_cache_crop_is_lossless_too():
    prompt = [5, 9, 13, 5, 9]
    got, _ = decode(HFTarget(TARGET), NgramDrafter(), FixedController(4), prompt, 20)
    assert got == plain_greedy(TARGET, prompt, 20)


def test_always_wrong_drafter_drives_adaptive_k_to_zero():
    target = StaticLlamaTarget(TARGET)
    # costs fixed and timing ignored: measured on a busy machine, drafting can look free
    ctl = AdaptiveController(k_max=6, probe_every=1000, verify_cost_s={0: 1e-3, 1: 1.05e-3, 8: 1.4e-3})
    ctl.update = _ignore_timing(ctl.update)
    got, dec = decode(target, WrongDrafter(TARGET), ctl, [3, 4, 5], 30)
    assert got == plain_greedy(TARGET, [3, 4, 5], 30)
    assert dec.stats.accepted == 0
    assert dec.stats.draft_lens[-10:] == [0] * 10


def test_oracle_drafter_drives_adaptive_k_to_max():
    target = StaticLlamaTarget(TARGET)
    # verification as flat as on a GPU, and drafting free: full acceptance must reach k_max
    ctl = AdaptiveController(k_max=5, verify_cost_s={0: 1e-3, 8: 1.1e-3})
    ctl.update = _ignore_timing(ctl.update)
    got, dec = decode(target, OracleDrafter(TARGET), ctl, [3, 4, 5], 40)
    assert got == plain_greedy(TARGET, [3, 4, 5], 40)
    assert dec.stats.acceptance == 1.0
    assert dec.stats.draft_lens[-2] == 5


def _ignore_timing(update):
    """Feed the controller acceptance only, so the test does not depend on machine speed."""
    from decode.controller import StepStats

    def wrapped(stats):
        update(StepStats(stats.draft_len, stats.accepted_len, 0.0, 1e-3 if stats.draft_len == 0 else 1.05e-3))

    return wrapped


def test_rollback_equals_fresh_prefill():
    ids = [7, 3, 9, 1, 22, 40, 5, 6]
    for target in (StaticLlamaTarget(TARGET), HFTarget(TARGET)):
        target.forward(ids[:5])
        target.forward([11, 12, 13])  # a rejected draft
        target.rollback(5)
        assert target.length == 5
        resumed = target.forward(ids[5:]).logits
        fresh_target = type(target)(TARGET)
        fresh = fresh_target.forward(ids).logits[5:]
        assert torch.allclose(resumed, fresh, atol=1e-4)
        if isinstance(target, HFTarget):
            assert target.cache.get_seq_length() == len(ids)


@pytest.mark.parametrize("weight_major", [False, True])
def test_static_target_matches_transformers_logits(weight_major):
    ids = [1, 2, 3, 4, 5, 6]
    with torch.inference_mode():
        ref = TARGET(torch.tensor([ids])).logits[0]
    target = StaticLlamaTarget(TARGET, weight_major=weight_major)
    assert torch.allclose(target.forward(ids).logits, ref, atol=1e-4)


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 10000.0,
}


@pytest.mark.parametrize("rope", [LLAMA3_ROPE, {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}])
def test_static_target_applies_the_configs_rope_scaling_as_transformers_does(rope):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters=rope,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = list(range(1, 40))
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0]
        plain = StaticLlamaTarget(tiny_llama_like(model)).forward(ids).logits  # unscaled rope: differs
    assert torch.allclose(StaticLlamaTarget(model).forward(ids).logits, ref, atol=1e-4)
    assert not torch.allclose(plain, ref, atol=1e-4)


def tiny_llama_like(model):
    """The same weights with the default rope."""
    from transformers import LlamaForCausalLM

    cfg = model.config.to_dict()
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    other = LlamaForCausalLM(type(model.config).from_dict(cfg)).eval()
    other.load_state_dict(model.state_dict(), strict=False)
    return other


def test_project_is_x_times_w_transposed_in_both_layouts():
    torch.manual_seed(0)
    w = torch.randn(40, 16)
    for rows in (1, 2, 5, 33):
        x = torch.randn(rows, 16)
        for major in (False, True):
            got = project(x, w, major)
            assert got.shape == (rows, 40) and got.is_contiguous()
            assert torch.allclose(got, x @ w.t(), atol=1e-5)


def test_choose_layout_keeps_the_faster_and_restores_the_context():
    target = StaticLlamaTarget(TARGET, max_len=128)
    before = target.forward([4, 5, 6]).logits
    target.rollback(0)
    target.forward([4, 5])
    costs = target.choose_layout(widths=(2, 3), rounds=1, context=16)
    assert set(costs) == {"linear", "weight_major"} and all(c > 0 for c in costs.values())
    assert target.weight_major == (costs["weight_major"] < costs["linear"])
    assert target.layout == ("weight_major" if target.weight_major else "linear")
    assert target.length == 2  # the timing steps are rolled back
    assert torch.allclose(target.forward([6]).logits, before[-1:], atol=1e-4)


def test_cancel_stops_within_one_step():
    cancel = threading.Event()
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET), ByteTokenizer(), NoDrafter(), FixedController(0))
    spans = []
    for span in dec.generate([1, 2, 3], GenerationSettings(max_new_tokens=50), cancel):
        spans.append(span)
        if len(spans) == 3:
            cancel.set()
    assert len(spans) == 4 and spans[-1].final and spans[-1].token_ids == ()
    assert dec.stats.cancelled


def test_eos_and_max_tokens_end_the_reply():
    want = plain_greedy(TARGET, [3, 4], 12)
    eos = want[5]
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET), ByteTokenizer(), NgramDrafter(), FixedController(3))
    spans = list(dec.generate([3, 4], GenerationSettings(max_new_tokens=12, eos_ids=(eos,))))
    got = [t for s in spans for t in s.token_ids]
    assert got == want[: want.index(eos)] and spans[-1].final


def test_prefix_reuse_gives_same_reply():
    target = StaticLlamaTarget(TARGET)
    dec = SpeculativeDecoder(target, ByteTokenizer(), NgramDrafter(), FixedController(2))
    s = GenerationSettings(max_new_tokens=10)
    dec.prefill([3, 4, 5, 6])  # a partial transcript, later extended
    first = [t for sp in dec.generate([3, 4, 5, 6, 7, 8], s) for t in sp.token_ids]
    again = [t for sp in dec.generate([3, 4, 5, 6, 7, 8], s) for t in sp.token_ids]
    assert first == again == plain_greedy(TARGET, [3, 4, 5, 6, 7, 8], 10)


def test_sampling_decoder_runs_and_respects_budget():
    dec = SpeculativeDecoder(
        StaticLlamaTarget(TARGET),
        ByteTokenizer(),
        ModelDrafter(StaticLlamaTarget(DRAFT), temperature=0.8),
        FixedController(3),
    )
    spans = list(dec.generate([1, 2], GenerationSettings(max_new_tokens=15, temperature=0.8)))
    assert sum(len(s.token_ids) for s in spans) == 15


def target_law_of_three(prompt, temperature):
    """P(x1, x2, x3 | prompt) under TARGET sampled at `temperature`: [V, V, V], from one forward
    over every two-token continuation."""
    from decode.verify import probs_from_logits

    vocab = TARGET.config.vocab_size
    pairs = torch.tensor([[a, b] for a in range(vocab) for b in range(vocab)])
    ids = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
    with torch.inference_mode():
        logits = TARGET(ids).logits.double()
    p = probs_from_logits(logits[:, -3:], temperature)  # after the prompt, after x1, after x2
    p1 = p[0, 0]
    p2 = p[::vocab, 1]  # row a * vocab: x1 = a
    p3 = p[:, 2].reshape(vocab, vocab, vocab)
    return p1[:, None, None] * p2[:, :, None] * p3


def sample_three(dec: SpeculativeDecoder, prompt: list[int], temperature: float, n: int, law: torch.Tensor):
    """`n` sampled replies of three tokens: their counts per flattened (x1, x2, x3) cell, the first
    spans' accepted lengths, and the tree steps taken."""
    s = GenerationSettings(max_new_tokens=3, temperature=temperature)
    counts = torch.zeros_like(law)
    accepted, trees = set(), 0
    vocab = TARGET.config.vocab_size
    for _ in range(n):
        spans = list(dec.generate(prompt, s))
        a, b, c = [t for sp in spans for t in sp.token_ids]
        counts[(a * vocab + b) * vocab + c] += 1
        accepted.add(spans[0].accepted_len)
        trees += dec.stats.tree_steps
    return counts, accepted, trees


def assert_counts_follow(law: torch.Tensor, counts: torch.Tensor, n: int) -> None:
    """χ² of the counts against `law`: the likely sequences, the rest folded into one bin."""
    from scipy.stats import chisquare

    cells = law * n >= 5
    observed = torch.cat([counts[cells], counts[~cells].sum()[None]])
    expected = torch.cat([law[cells], law[~cells].sum()[None]]) * n
    assert cells.sum() >= 10
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 0.01


def test_sampled_replies_follow_the_targets_law_over_their_first_three_tokens():
    """The decoder end to end at temperature 2 with a drafter whose q is not p (the target's own
    weights at temperature 1): one step drafts two tokens, so the first three come from the accept
    ratio, the residual and the bonus row at each position. P(x1 x2 x3) must be the target's."""

    prompt, temperature, n = [5, 9, 2, 7], 2.0, 2000
    law = target_law_of_three(prompt, temperature).flatten()
    drafter = ModelDrafter(
        StaticLlamaTarget(TARGET, max_len=64), temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    dec = SpeculativeDecoder(
        StaticLlamaTarget(TARGET, max_len=64), ByteTokenizer(), drafter, FixedController(2), seed=3
    )
    counts, accepted, _ = sample_three(dec, prompt, temperature, n, law)
    assert accepted == {0, 1, 2}  # rejections at either position, and full acceptance (the bonus row)
    assert_counts_follow(law, counts, n)


def test_calibration_leaves_cache_untouched():
    target = StaticLlamaTarget(TARGET)
    target.forward([1, 2, 3])
    costs = calibrate_verify_cost(target, [0, 1, 4], reps=1)
    assert set(costs) == {0, 1, 4} and target.length == 3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.integers(1, 63), min_size=2, max_size=10),
    words=st.lists(st.integers(1, 63), min_size=1, max_size=6),
    end_token=st.integers(1, 63),
)
def test_end_of_turn_probability_is_the_targets_and_the_reply_after_it_is_unchanged(history, words, end_token):
    """P(end | words) equals a fresh forward's softmax, and scoring first never changes the reply."""
    prompt = history + words
    with torch.inference_mode():
        logits = TARGET(torch.tensor([prompt])).logits[0, -1].float()
    want = torch.softmax(logits, -1)[end_token].item()
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET), ByteTokenizer(), NgramDrafter(), FixedController(2))
    dec.prefill(history + [5, 6, 7])  # a cache holding other words after the shared history
    assert dec.next_token_prob(prompt, [end_token]) == pytest.approx(want, rel=1e-4, abs=1e-6)
    two = [end_token, end_token % 63 + 1]
    both = torch.softmax(logits, -1)[two].sum().item()
    assert dec.next_token_prob(prompt, two) == pytest.approx(both, rel=1e-4, abs=1e-6)
    reply = prompt + [end_token, 9]
    spans = list(dec.generate(reply, GenerationSettings(max_new_tokens=8)))
    assert [t for s in spans for t in s.token_ids] == plain_greedy(TARGET, reply, 8)


def test_a_primed_reply_samples_its_first_token_from_the_targets_distribution():
    """Sampling: the first token taken from a prefill's kept logits follows softmax(logits / T)."""
    from scipy.stats import chisquare

    from decode.jobs import PrefillJob
    from decode.verify import probs_from_logits

    prompt = [5, 9, 2, 7]
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET), ByteTokenizer(), NoDrafter(), FixedController(0), seed=3)
    s = GenerationSettings(max_new_tokens=1, temperature=1.5)
    with torch.inference_mode():
        p = probs_from_logits(TARGET(torch.tensor([prompt])).logits[0, -1:].float(), 1.5)[0]
    n, counts = 2000, torch.zeros(len(p))
    for _ in range(n):
        for _ in dec.run(PrefillJob(dec, prompt, keep_logits=True)):
            pass
        assert dec.primed_for(prompt) is not None
        (span,) = [sp for sp in dec.generate(prompt, s) if sp.token_ids]
        counts[span.token_ids[0]] += 1
    top = torch.argsort(p, descending=True)[:8]  # the likely tokens; the tail is folded into one bin
    observed = torch.cat([counts[top], (n - counts[top].sum())[None]])
    expected = torch.cat([p[top], (1 - p[top].sum())[None]]) * n
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 0.01


# ---- draft trees --------------------------------------------------------------------------------
TREE_SHAPES = [(3, 1, 3), (4, 2, 2), (6, 3, 3), (8, 4, 2)]  # (nodes, depth, branch)


def tree_drafter(kind, target_model=TARGET):
    if kind == "ranked":
        return RankedOracle(target_model)
    if kind == "mtp":
        torch.manual_seed(0)
        head = MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=2, feature_layers=(1,))).eval()
        return MTPDrafter(head, target_model.model.embed_tokens.weight.detach())
    return {"ngram": NgramDrafter(3, 1), "model": ModelDrafter(StaticLlamaTarget(DRAFT, max_len=128))}[kind]


@pytest.mark.parametrize("weight_major", [False, True], ids=["linear", "weight_major"])
@pytest.mark.parametrize("shape", TREE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("drafter", ["ranked", "mtp", "ngram", "model"])
def test_tree_speculative_greedy_equals_plain_greedy(drafter, shape, weight_major):
    """Every drafter under a tree-shaped controller (the n-gram and model drafters cannot branch: they
    draft chains), every shape and layout: output == plain greedy."""
    nodes, depth, branch = shape
    n = 24
    for prompt in GRID_PROMPTS:
        target = StaticLlamaTarget(TARGET, max_len=128, weight_major=weight_major, feature_layers=(1,))
        ctl = FixedController(nodes, depth=depth, branch=branch)
        got, dec = decode(target, tree_drafter(drafter), ctl, prompt, n)
        assert got == greedy_of(tuple(prompt), n), f"prompt {prompt}"
        assert dec.stats.drafted > 0
        assert (dec.stats.tree_steps > 0) == (drafter in ("ranked", "mtp"))  # only these branch


def test_trees_accepted_through_later_siblings_move_their_cache_rows_into_place():
    """The oracle puts the target's token second, first, third or nowhere among each node's
    candidates: accepted paths leave the first-child rows, so their keys/values must be gathered
    into place before the rest is dropped — or every later token reads the wrong ones."""
    prompt, n = [3, 4, 5], 30
    target = StaticLlamaTarget(TARGET, max_len=128)
    moved = []
    keep = target.keep_rows
    target.keep_rows = lambda start, rows, slot=0: (moved.append(rows), keep(start, rows, slot))
    got, dec = decode(target, tree_drafter("ranked"), FixedController(8, depth=4, branch=3), prompt, n)
    assert got == greedy_of(tuple(prompt), n)
    assert any(rows != list(range(len(rows))) for rows in moved), moved  # some path left the first children
    assert dec.stats.accepted > 0 and dec.stats.steps < n
    assert target.length == len(prompt) + n - 1  # the cache holds what was said, not the other branches
    # the oracle's token sat nowhere, first or second (third: a node this tree does not keep): levels were
    # counted at each of those ranks
    assert len(dec.stats.tree_ranks) == 3 and all(dec.stats.tree_ranks), dec.stats.tree_ranks


def test_adaptive_trees_are_lossless_and_a_flat_verify_makes_them_branch():
    """The adaptive controller with branch 3 where a wider verify costs nothing: it asks for trees (the
    ranked oracle's right token is often second), and the output is plain greedy's."""
    prompt, n = [41, 7, 22, 3], 40
    ctl = AdaptiveController(k_max=8, branch=3, verify_cost_s={0: 1e-3, 8: 1.0001e-3})
    ctl.update = _ignore_timing(ctl.update)
    got, dec = decode(StaticLlamaTarget(TARGET, max_len=128), tree_drafter("ranked"), ctl, prompt, n)
    assert got == greedy_of(tuple(prompt), n)
    assert dec.stats.tree_steps > dec.stats.steps / 2 and ctl.tree_shape(ctl.next_k()).branch == 3  # it branches
    assert dec.stats.mean_accepted > 1.5


@pytest.mark.parametrize("drafter", ["ranked", "mtp"])
def test_hf_target_falls_back_to_chains_and_stays_lossless(drafter):
    prompt = [5, 9, 13, 5, 9]
    target = HFTarget(TARGET, feature_layers=(1,))
    got, dec = decode(target, tree_drafter(drafter), FixedController(6, depth=2, branch=3), prompt, 20)
    assert got == plain_greedy(TARGET, prompt, 20)
    assert dec.stats.drafted > 0 and dec.stats.tree_steps == 0


def test_sampled_tree_replies_follow_the_targets_law_over_their_first_three_tokens():
    """The decoder end to end at temperature 2 with an MTP head sampling trees at temperature 1 (its q is
    not p): children drawn without replacement, tried in order; P(x1 x2 x3) must be the target's."""

    prompt, temperature, n = [5, 9, 2, 7], 2.0, 2000
    law = target_law_of_three(prompt, temperature).flatten()
    torch.manual_seed(0)
    head = MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=1)).eval()
    drafter = MTPDrafter(
        head, TARGET.model.embed_tokens.weight.detach(), 1.0, generator=torch.Generator().manual_seed(1)
    )
    ctl = FixedController(5, depth=2, branch=4)
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET, max_len=64), ByteTokenizer(), drafter, ctl, seed=3)
    counts, accepted, trees = sample_three(dec, prompt, temperature, n, law)
    assert accepted == {0, 1, 2} and trees >= n  # rejections at either level, a whole path accepted; trees
    assert_counts_follow(law, counts, n)
