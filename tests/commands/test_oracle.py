import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from commands.oracle import OracleDrafter, acceptance_at
from conftest import ByteTokenizer, tiny_llama
from decode.controller import AdaptiveController, FixedController, HeuristicController
from decode.drafters import NoDrafter
from decode.jobs import GenerationSettings
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget

REFERENCE = list(range(10, 60))  # a "greedy continuation": prompt 10..14, then the reply
PROMPT = REFERENCE[:5]
TARGET = tiny_llama(seed=0)


def test_always_right_proposes_the_reference_and_always_wrong_never_does():
    right = OracleDrafter([REFERENCE], [1.0], vocab_size=64)
    wrong = OracleDrafter([REFERENCE], [0.0], vocab_size=64)
    for p in range(5, 40):
        assert right.propose(REFERENCE[:p], 4, None).tokens == REFERENCE[p : p + 4]
        tokens = wrong.propose(REFERENCE[:p], 4, None).tokens
        assert len(tokens) == 4 and all(t != r and 0 <= t < 64 for t, r in zip(tokens, REFERENCE[p : p + 4]))


def test_each_position_is_right_with_its_probability_given_the_earlier_ones():
    oracle = OracleDrafter([REFERENCE], [0.8, 0.5], vocab_size=64, seed=3)
    hits, tries = [0, 0, 0], [0, 0, 0]
    for _ in range(4000):
        tokens = oracle.propose(PROMPT, 3, None).tokens
        for i, (t, r) in enumerate(zip(tokens, REFERENCE[5:8])):
            tries[i] += 1
            hits[i] += t == r
            if t != r:
                break  # a verifier stops at the first wrong token
    rates = [h / t for h, t in zip(hits, tries)]
    assert rates[0] == pytest.approx(0.8, abs=0.03)
    assert rates[1] == pytest.approx(0.5, abs=0.04)
    assert rates[2] == pytest.approx(0.5, abs=0.05)  # the last value repeats
    assert [acceptance_at([0.8, 0.5], i) for i in (1, 2, 3, 9)] == [0.8, 0.5, 0.5, 0.5]


def test_the_same_seed_gives_the_same_drafts_and_reset_replays_them():
    a = OracleDrafter([REFERENCE], [0.6], vocab_size=64, seed=7)
    b = OracleDrafter([REFERENCE], [0.6], vocab_size=64, seed=7)
    first = [a.propose(PROMPT, 4, None).tokens for _ in range(20)]
    assert first == [b.propose(PROMPT, 4, None).tokens for _ in range(20)]
    a.reset()
    assert first == [a.propose(PROMPT, 4, None).tokens for _ in range(20)]


def test_a_context_off_every_reference_gets_no_draft_and_drafts_stop_at_the_reference_end():
    other = [1, 2, 3, 4, 5, 6, 7, 8]
    oracle = OracleDrafter([REFERENCE, other], [1.0], vocab_size=64)
    assert oracle.propose([1, 2, 3], 3, None).tokens == [4, 5, 6]  # the reference it prefixes
    assert oracle.propose([10, 11, 99], 3, None).tokens == []
    assert oracle.off_reference == 1
    assert oracle.propose(REFERENCE[:-2], 5, None).tokens == REFERENCE[-2:]
    assert oracle.propose(PROMPT, 0, None).tokens == []


@pytest.mark.parametrize("accept, vocab", [([], 64), ([1.2], 64), ([-0.1], 64), ([0.5], 1)])
def test_bad_settings_are_refused(accept, vocab):
    with pytest.raises(ValueError):
        OracleDrafter([REFERENCE], accept, vocab_size=vocab)


def greedy_continuations(prompts, n):
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET, max_len=256), ByteTokenizer(), NoDrafter(), FixedController(0))
    out = []
    for p in prompts:
        out.append(p + [t for s in dec.generate(p, GenerationSettings(max_new_tokens=n)) for t in s.token_ids])
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompt=st.lists(st.integers(1, 63), min_size=1, max_size=10),
    accept=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
    controller=st.sampled_from(["fixed", "adaptive", "heuristic"]),
    k=st.integers(1, 6),
)
def test_decoding_with_the_oracle_is_plain_greedy_whatever_it_proposes(prompt, accept, controller, k):
    (reference,) = greedy_continuations([prompt], 20)
    ctrl = {
        "fixed": FixedController(k),
        "heuristic": HeuristicController(k=k, k_max=6),
        "adaptive": AdaptiveController(k_max=6, verify_cost_s={0: 1.0, 6: 1.0}),
    }[controller]
    oracle = OracleDrafter([reference], accept, vocab_size=64, seed=1)
    dec = SpeculativeDecoder(StaticLlamaTarget(TARGET, max_len=256), ByteTokenizer(), oracle, ctrl)
    out = [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=20)) for t in s.token_ids]
    assert prompt + out == reference
    assert oracle.off_reference == 0


def test_with_a_real_target_acceptance_is_the_oracles():
    prompts = [[5, 9, 13], [40, 41, 42, 43]]
    references = greedy_continuations(prompts, 24)
    for accept, want in (([1.0], 1.0), ([0.0], 0.0)):
        oracle = OracleDrafter(references, accept, vocab_size=64)
        dec = SpeculativeDecoder(StaticLlamaTarget(TARGET, max_len=256), ByteTokenizer(), oracle, FixedController(3))
        for p, ref in zip(prompts, references):
            out = [t for s in dec.generate(p, GenerationSettings(max_new_tokens=24)) for t in s.token_ids]
            assert p + out == ref
            assert dec.stats.acceptance == want
