import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from tree_drafters import RankedOracle

from commands.oracle import OracleDrafter
from conftest import ByteTokenizer, plain_greedy, tiny_llama
from decode.controller import AdaptiveController, FixedController, StepStats, plan_batch
from decode.drafters import ModelDrafter, NgramDrafter, NoDrafter
from decode.jobs import GenerationSettings, PrefillJob, ReplyJob
from decode.mtp import MTPConfig, MTPDrafter, MTPHead
from decode.scheduler import Priority, StepScheduler
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget

TARGET = tiny_llama(seed=0)
DRAFT = tiny_llama(seed=1, hidden=32, layers=1)
SLOTS = 4


def make_drafter(kind, parent):
    if kind == "ngram":
        return NgramDrafter(3, 1)
    if kind == "model":
        return ModelDrafter(StaticLlamaTarget(DRAFT, max_len=160))
    if kind == "mtp":
        torch.manual_seed(3)
        head = MTPHead(MTPConfig(hidden_size=64, intermediate_size=64, context=4)).eval()
        return MTPDrafter(head, parent.embed)
    if kind == "ranked":
        return RankedOracle(TARGET)
    return NoDrafter()


def make_controller(kind, k):
    if kind == "fixed":
        return FixedController(k)
    if kind == "tree":  # k + 2 nodes over about half as many levels, three candidates a node
        return FixedController(k + 2, depth=max(1, (k + 2) // 2), branch=3)
    return AdaptiveController(k_max=max(k, 1), verify_cost_s={0: 1.0, 8: 1.1})


def scheduler(drafter="ngram", controller="fixed", k=2, slots=SLOTS, step_tokens=16):
    parent = StaticLlamaTarget(TARGET, max_len=160)
    decs = [
        SpeculativeDecoder(
            parent.slot(i), ByteTokenizer(), make_drafter(drafter, parent), make_controller(controller, k)
        )
        for i in range(slots)
    ]
    return StepScheduler(
        decs, parent.forward_packed, {1: 1.0, 4: 1.2, 16: 2.0, 64: 6.0}, step_tokens=step_tokens, threaded=False
    )


def submit(sched, prompt, n, cancel=None, out=None):
    out = [] if out is None else out
    s = GenerationSettings(max_new_tokens=n)
    ticket = sched.submit(lambda dec: ReplyJob(dec, prompt, s, cancel), prompt, lambda span: out.extend(span.token_ids))
    return ticket, out


def run_until_idle(sched, limit=2000):
    for _ in range(limit):
        if not sched.run_step():
            return
    raise AssertionError("the scheduler never went idle")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    drafter=st.sampled_from(["ngram", "model", "mtp", "ranked", "none"]),
    controller=st.sampled_from(["fixed", "adaptive", "tree"]),
    k=st.integers(0, 5),
)
def test_sequences_joining_and_leaving_at_random_steps_each_equal_their_plain_greedy(data, drafter, controller, k):
    sched = scheduler(drafter, controller, k)
    n_seq = data.draw(st.integers(2, 6), label="sequences")
    prompts = [
        data.draw(st.lists(st.integers(1, 63), min_size=1, max_size=40), label=f"prompt{i}") for i in range(n_seq)
    ]
    joins = sorted(data.draw(st.lists(st.integers(0, 12), min_size=n_seq, max_size=n_seq), label="joins"))
    cancels = {
        i: data.draw(st.integers(0, 10), label=f"cancel{i}")
        for i in range(n_seq)
        if data.draw(st.booleans(), label=f"cancelled{i}")
    }
    n = 16
    runs = {}
    cancelled_at = {}  # i -> (tokens said before its cancel, whether it held a slot then)
    step = 0
    while len(runs) < n_seq or not all(t.finished.is_set() for t, _, _ in runs.values()):
        for i in range(n_seq):
            if i not in runs and joins[i] <= step:
                cancel = threading.Event()
                runs[i] = (*submit(sched, prompts[i], n, cancel), cancel)
            if i in runs and i in cancels and step >= joins[i] + cancels[i] and i not in cancelled_at:
                runs[i][2].set()
                cancelled_at[i] = (len(runs[i][1]), runs[i][0].job is not None)
        sched.run_step()
        for i, (said, placed) in cancelled_at.items():
            assert len(runs[i][1]) == said, f"sequence {i} spoke after its cancel"
            assert runs[i][0].finished.is_set() or not placed, f"sequence {i} still running a step after its cancel"
        step += 1
        assert step < 2000
    for i, (ticket, got, _) in runs.items():
        want = plain_greedy(TARGET, prompts[i], n)
        if i in cancels:
            assert got == want[: len(got)]  # what it said before the cancel is its own greedy prefix
        else:
            assert ticket.error is None and got == want, f"sequence {i} diverged"


def untimed(controller):
    """`controller` fed acceptance only: a batched step's verify time is not its own, and draft time
    is the machine's speed, which must not decide a test."""
    update = controller.update
    controller.update = lambda stats: update(StepStats(stats.draft_len, stats.accepted_len, 0.0, None))
    return controller


@pytest.mark.parametrize("controller", ["fixed", "adaptive"])
def test_sequences_sharing_a_step_each_draft_and_accept_part_of_it(controller):
    """Three replies packed into each step: every one drafts k = 3 (the adaptive planner too, where a
    packed forward costs the same at any width) and accepts 2 of them (the oracle is right at
    draft positions 1 and 2, wrong at 3); each reply is still its plain greedy."""
    prompts, n = [[5, 9, 13, 5], [1, 2, 3], [40, 41, 40, 41, 7]], 18
    refs = [p + plain_greedy(TARGET, p, n) for p in prompts]
    parent = StaticLlamaTarget(TARGET, max_len=160)
    decs = []
    for i in range(len(prompts)):
        ctl = FixedController(3) if controller == "fixed" else untimed(AdaptiveController(k_max=3, probe_every=1000))
        decs.append(SpeculativeDecoder(parent.slot(i), ByteTokenizer(), OracleDrafter(refs, [1.0, 1.0, 0.0], 64), ctl))
    widths = []  # per step: the width of each decoding sequence's feed (prefill feeds are last-only)

    def forward_packed(feeds):
        widths.append([len(tokens) for _, tokens, last_only, _ in feeds if not last_only])
        return parent.forward_packed(feeds)

    flat = {w: 1.0 for w in range(1, 65)}  # cost_ema = 0: the measured times never replace these
    sched = StepScheduler(decs, forward_packed, flat, step_tokens=64, cost_ema=0.0, threaded=False)
    runs = [submit(sched, p, n) for p in prompts]
    run_until_idle(sched)
    assert [out for _, out in runs] == [plain_greedy(TARGET, p, n) for p in prompts]
    assert [3 + 1] * 3 in widths, f"no step drafted k = 3 for all three sequences: {widths}"
    for ticket, _ in runs:
        st = ticket.job.stats
        assert st.drafted > 0 and 0 < st.accepted < st.drafted, (st.drafted, st.accepted)
        assert st.steps < n  # drafting saved forwards


def test_cancelling_one_sequence_never_changes_another():
    prompts = [[5, 9, 13, 5, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9], [40, 41, 40, 41]]
    outputs = []
    for cancel_second in (False, True):
        sched = scheduler("ngram", "fixed", 3)
        cancel = threading.Event()
        runs = [submit(sched, p, 20, cancel if i == 1 else None) for i, p in enumerate(prompts)]
        for _ in range(3):
            sched.run_step()
        if cancel_second:
            cancel.set()
        run_until_idle(sched)
        outputs.append([runs[0][1], runs[2][1]])
        assert all(t.finished.is_set() and t.error is None for t, _ in runs)
    assert outputs[0] == outputs[1] == [plain_greedy(TARGET, prompts[0], 20), plain_greedy(TARGET, prompts[2], 20)]


@pytest.mark.parametrize("drafter,k", [("ngram", 3), ("none", 0)])
def test_a_cancelled_sequence_stops_at_the_next_step_and_frees_its_slot(drafter, k):
    sched = scheduler(drafter, "fixed", k, slots=2)
    cancel = threading.Event()
    ticket, out = submit(sched, [5, 9, 13, 5, 9, 13], 40, cancel)
    other, other_out = submit(sched, [1, 2, 3], 40)
    for _ in range(4):
        sched.run_step()
    said = list(out)
    assert 0 < len(said) < 40 and not ticket.finished.is_set()
    cancel.set()
    sched.run_step()
    assert ticket.finished.is_set() and ticket.error is None and ticket.job.stats.cancelled
    assert out == said  # not one token after the cancel
    late, late_out = submit(sched, [7, 8, 9], 5)
    sched.run_step()
    assert late.slot == ticket.slot  # the slot was free for the next job at once
    run_until_idle(sched)
    assert out == said and other_out == plain_greedy(TARGET, [1, 2, 3], 40)
    assert late_out == plain_greedy(TARGET, [7, 8, 9], 5)


def test_a_job_goes_to_the_slot_that_has_its_prefix_cached():
    sched = scheduler(slots=3)
    history = [7, 8, 9, 10, 11, 12, 13, 14]
    first, _ = submit(sched, history + [20], 4)
    other, _ = submit(sched, [30, 31, 32], 4)
    run_until_idle(sched)
    again, out = submit(sched, history + [21, 22], 4)
    run_until_idle(sched)
    assert again.slot == first.slot != other.slot
    assert again.job.stats.tokens == 4 and out == plain_greedy(TARGET, history + [21, 22], 4)


def test_more_jobs_than_slots_wait_and_all_finish():
    sched = scheduler(slots=2)
    prompts = [[i + 1, i + 2, i + 3] for i in range(5)]
    runs = [submit(sched, p, 6) for p in prompts]
    run_until_idle(sched)
    assert [out for _, out in runs] == [plain_greedy(TARGET, p, 6) for p in prompts]


def test_scores_and_replies_share_steps_and_the_score_is_the_targets():
    sched = scheduler(slots=2)
    _, reply = submit(sched, [3, 4, 5, 6], 12)
    sched.run_step()
    prompt = [9, 8, 7, 6, 5]
    score = sched.submit(lambda dec: PrefillJob(dec, prompt, token_ids=[4]), prompt, lambda span: None)
    run_until_idle(sched)
    with torch.inference_mode():
        want = torch.softmax(TARGET(torch.tensor([prompt])).logits[0, -1], -1)[4].item()
    assert score.wait().prob == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert reply == plain_greedy(TARGET, [3, 4, 5, 6], 12)
    assert max(int(size) for size in sched.stats.as_dict()["batch_sizes"]) == 2


@pytest.mark.parametrize("drafter,k", [("ngram", 2), ("mtp", 3), ("none", 0)])
@pytest.mark.parametrize("step_tokens", [16, 3])  # one prefill forward, or chunks around the scored row
def test_a_score_inside_the_replys_prompt_is_the_targets_and_primes_the_reply(step_tokens, drafter, k):
    """The score reads its row of the reply's own prefill; the reply then takes its first token
    from the kept logits (no prefill, one forward less) and is still plain greedy."""
    sched = scheduler(drafter=drafter, k=k, slots=2, step_tokens=step_tokens)
    _, other = submit(sched, [3, 4, 5, 6], 10)  # decoding beside it: the prefill is chunked to the room left
    sched.run_step()
    words, reply_prompt = [9, 8, 7, 6, 5], [9, 8, 7, 6, 5, 2, 11, 12]
    score = sched.submit(
        lambda dec: PrefillJob(dec, reply_prompt, token_ids=[4, 2], score_at=len(words) - 1, keep_logits=True),
        reply_prompt,
    )
    run_until_idle(sched)
    with torch.inference_mode():
        want = torch.softmax(TARGET(torch.tensor([words])).logits[0, -1], -1)[[4, 2]].sum().item()
    assert score.wait().prob == pytest.approx(want, rel=1e-4, abs=1e-6)
    fed = sched.stats.tokens_fed
    ticket, out = submit(sched, reply_prompt, 6)
    sched.run_step()
    assert ticket.job is not None and not ticket.job.prefilling  # its prompt was all cached
    run_until_idle(sched)
    assert out == plain_greedy(TARGET, reply_prompt, 6) and other == plain_greedy(TARGET, [3, 4, 5, 6], 10)
    st = ticket.job.stats
    assert st.tokens == 6 and st.steps <= 5  # the first token came without a forward
    assert sched.stats.tokens_fed - fed <= st.steps * (k + 1) + 10  # no prefill of its prompt


def test_a_primed_reply_to_other_words_prefills_as_usual():
    sched = scheduler(slots=1)
    prompt = [9, 8, 7, 6, 5, 2]
    sched.submit(lambda dec: PrefillJob(dec, prompt, token_ids=[4], keep_logits=True), prompt)
    run_until_idle(sched)
    other = [9, 8, 7, 6, 1, 2]  # the words changed after the score
    _, out = submit(sched, other, 6)
    run_until_idle(sched)
    assert out == plain_greedy(TARGET, other, 6)


def test_a_held_job_waits_and_does_not_stall_others():
    sched = scheduler(slots=2)
    priority = Priority(held=True)
    s = GenerationSettings(max_new_tokens=8)
    held_out, free_out = [], []
    held = sched.submit(
        lambda dec: ReplyJob(dec, [1, 2, 3], s), [1, 2, 3], lambda sp: held_out.extend(sp.token_ids), priority
    )
    free, free_out = submit(sched, [4, 5, 6], 8)
    run_until_idle(sched)
    assert free.finished.is_set() and not held.finished.is_set() and held_out == []
    priority.held = False  # its owner released it
    run_until_idle(sched)
    assert held_out == plain_greedy(TARGET, [1, 2, 3], 8) and free_out == plain_greedy(TARGET, [4, 5, 6], 8)


def test_a_talking_job_far_ahead_of_playback_sits_out_while_an_urgent_one_runs():
    sched = scheduler(slots=2)
    sched.defer_ahead_s = 3.0
    talking = Priority(urgent=False, played_until_t=time.perf_counter() + 1000.0)
    s = GenerationSettings(max_new_tokens=12)
    talk_out = []
    sched.submit(lambda dec: ReplyJob(dec, [1, 2, 3], s), [1, 2, 3], lambda sp: talk_out.extend(sp.token_ids), talking)
    sched.run_step()  # alone it runs (prefill) however far ahead it is
    sched.run_step()
    before = len(talk_out)
    assert before > 0
    urgent, urgent_out = submit(sched, [4, 5, 6], 6)
    while not urgent.finished.is_set():
        assert sched.run_step()
        assert len(talk_out) == before  # sat out every step the urgent job ran
    talking.played_until_t = time.perf_counter() + 2.0  # playback caught up: it runs beside urgent work again
    urgent2, _ = submit(sched, [7, 8], 6)
    sched.run_step()
    assert len(talk_out) > before
    run_until_idle(sched)
    assert talk_out == plain_greedy(TARGET, [1, 2, 3], 12) and urgent_out == plain_greedy(TARGET, [4, 5, 6], 6)


def test_a_job_max_ahead_of_playback_waits_until_playback_catches_up():
    sched = scheduler(slots=2)
    sched.max_ahead_s = 8.0
    talking = Priority(urgent=False)
    s = GenerationSettings(max_new_tokens=12)
    out = []
    ticket = sched.submit(
        lambda dec: ReplyJob(dec, [1, 2, 3], s), [1, 2, 3], lambda sp: out.extend(sp.token_ids), talking
    )
    sched.run_step()
    sched.run_step()
    before = len(out)
    assert before > 0
    talking.played_until_t = time.perf_counter() + 1000.0  # far ahead of playback
    assert not sched.run_step() and len(out) == before
    talking.played_until_t = 0.0  # played out
    run_until_idle(sched)
    assert ticket.finished.is_set() and out == plain_greedy(TARGET, [1, 2, 3], 12)


def test_a_cancelled_job_frees_its_slot_for_a_job_sharing_its_prefix_at_once():
    sched = scheduler(slots=2)
    s = GenerationSettings(max_new_tokens=8)
    cancel = threading.Event()
    first = sched.submit(lambda dec: ReplyJob(dec, [1, 2, 3, 4, 5], s, cancel), [1, 2, 3, 4, 5])
    sched.run_step()  # its prefill is cached on its slot
    cancel.set()  # the words changed: the next reply shares the prefix
    second, out = submit(sched, [1, 2, 3, 4, 5, 6], 6)
    sched.run_step()
    assert first.finished.is_set() and first.job.stats.cancelled
    assert second.slot == first.slot  # not the other, empty slot: its prefix is reused
    run_until_idle(sched)
    assert out == plain_greedy(TARGET, [1, 2, 3, 4, 5, 6], 6)


def test_a_prompt_past_the_cache_fails_its_ticket_only():
    sched = scheduler(slots=2)
    too_long, _ = submit(sched, list(range(1, 64)) * 3, 4)
    fine, out = submit(sched, [1, 2, 3], 5)
    run_until_idle(sched)
    with pytest.raises(ValueError, match="exceeds the cache"):
        too_long.wait()
    assert out == plain_greedy(TARGET, [1, 2, 3], 5)


def test_the_threaded_scheduler_serves_concurrent_callers():
    parent = StaticLlamaTarget(TARGET, max_len=160)
    decs = [SpeculativeDecoder(parent.slot(i), ByteTokenizer(), NgramDrafter(), FixedController(2)) for i in range(3)]
    sched = StepScheduler(decs, parent.forward_packed, {1: 1.0, 16: 2.0})
    try:
        runs = [submit(sched, [i, i + 1, i + 2], 10) for i in range(1, 6)]
        for ticket, _ in runs:
            ticket.wait()
        assert [out for _, out in runs] == [plain_greedy(TARGET, [i, i + 1, i + 2], 10) for i in range(1, 6)]
    finally:
        sched.close()


def test_plan_batch_alone_is_the_single_sequence_argmax_and_drops_k_when_width_costs():
    acc = [[0.8] * 6]
    costs = {1: 1.0, 2: 1.05, 3: 1.1, 4: 1.15, 5: 1.2, 6: 1.25, 7: 1.3}

    def rate(k):
        return sum(0.8**i for i in range(k + 1)) / costs[k + 1]

    assert plan_batch(acc, [1.0], [6], [0], 0, costs) == [max(range(7), key=rate)]
    # four sequences where each extra packed token costs as much as a whole step: no drafting
    steep = {w: float(w) for w in range(1, 40)}
    assert plan_batch([[0.6] * 6] * 4, [1.0] * 4, [6] * 4, [0] * 4, 0, steep) == [0, 0, 0, 0]
    # flat cost: everyone drafts to k_max; a probe due keeps k >= 1 even when it does not pay
    flat = {1: 1.0, 40: 1.0}
    assert plan_batch([[0.9] * 4] * 2, [1.0, 0.25], [4, 4], [0, 0], 0, flat) == [4, 4]
    assert plan_batch([[0.0] * 4], [1.0], [4], [1], 0, steep) == [1]


def test_a_job_that_may_hold_waits_for_its_owner_to_read_each_span():
    sched = scheduler(slots=2)
    sched.owner_wait_s = 1e9  # no clock decides here: only the owner's reads
    prepared = Priority(may_hold=True)
    s = GenerationSettings(max_new_tokens=8)
    out = []
    ticket = sched.submit(
        lambda dec: ReplyJob(dec, [1, 2, 3], s), [1, 2, 3], lambda sp: out.extend(sp.token_ids), prepared
    )
    other, other_out = submit(sched, [4, 5, 6], 8)
    while not out:
        assert sched.run_step()
    before = len(out)
    sched.run_step()  # the other job goes on; this one waits for its owner to read its span
    assert len(out) == before and len(other_out) > 0
    prepared.read = prepared.emitted
    prepared.held = True  # that span finished its first phrase: held until the endpoint
    run_until_idle(sched)
    assert len(out) == before and other.finished.is_set()
    prepared.held = prepared.may_hold = False  # released
    run_until_idle(sched)
    assert ticket.finished.is_set() and out == plain_greedy(TARGET, [1, 2, 3], 8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    drafter=st.sampled_from(["ngram", "model", "mtp", "none"]),
    k=st.integers(0, 4),
)
def test_a_prefix_cached_in_a_busy_slot_is_copied_and_the_reply_is_still_plain_greedy(data, drafter, k):
    """A session's score and reply of the same history land on different slots: the second copies
    the history's KV from the first instead of prefilling it."""
    sched = scheduler(drafter, "fixed", k, slots=3)
    adopted = []
    for dec in sched.slots:  # record each copy
        dec.adopt_prefix = lambda other, n, adopt=dec.adopt_prefix: adopted.append(n) or adopt(other, n)
    history = data.draw(st.lists(st.integers(1, 63), min_size=6, max_size=40), label="history")
    tails = [data.draw(st.lists(st.integers(1, 63), min_size=1, max_size=6), label=f"tail{i}") for i in range(2)]
    first, out_first = submit(sched, history + tails[0], 12)
    sched.run_step()  # its prefill is cached; it keeps decoding, so its slot stays busy
    fed = sched.stats.tokens_fed
    second, out_second = submit(sched, history + tails[1], 8)
    run_until_idle(sched)
    assert second.slot != first.slot and adopted and adopted[0] >= len(history)
    assert out_first == plain_greedy(TARGET, history + tails[0], 12)
    assert out_second == plain_greedy(TARGET, history + tails[1], 8)
    # the second prefilled at most its own tail (and one re-fed token): the history came by copy
    assert (
        sched.stats.tokens_fed - fed
        <= first.job.stats.steps * (k + 1) + second.job.stats.steps * (k + 1) + len(tails[1]) + 1
    )


def test_a_copied_prefix_is_the_sources_keys_values_and_drafter_context():
    sched = scheduler("mtp", "fixed", 2, slots=2)
    prompt = list(range(1, 30))
    sched.submit(lambda dec: PrefillJob(dec, prompt, token_ids=[4], keep_logits=True), prompt)
    run_until_idle(sched)
    src = next(dec for dec in sched.slots if dec.cached)
    dst = next(dec for dec in sched.slots if dec is not src)
    assert dst.adopt_prefix(src, 20)
    parent = src.target.parent
    a, b = src.target.index, dst.target.index
    assert parent.lengths[b] == 20 and dst.cached == prompt[:20] and dst.hidden is None
    assert torch.equal(parent._k[b][:, :, :20], parent._k[a][:, :, :20])
    assert torch.equal(parent._v[b][:, :, :20], parent._v[a][:, :, :20])
    assert torch.equal(dst.drafter.context_kv, src.drafter.context_kv[:20])
    assert dst.adopt_prefix(src, len(prompt))  # all of it: the kept logits come along
    assert dst.primed_for(prompt) is not None and torch.equal(dst.primed_for(prompt), src.primed_for(prompt))
    other = StaticLlamaTarget(TARGET, max_len=160).slot(1)
    alone = SpeculativeDecoder(other, ByteTokenizer(), NoDrafter(), FixedController(0))
    assert not alone.adopt_prefix(src, 5) and alone.cached == []  # another target's cache: nothing copied


def test_a_free_slot_whose_cache_another_slot_holds_is_taken_before_a_unique_history():
    sched = scheduler(slots=3)
    history, other = [7, 8, 9, 10, 11, 12, 13, 14], [40, 41, 42, 43, 44, 45]
    kept, _ = submit(sched, history + [20], 2)  # a session's history, used first (least recently)
    run_until_idle(sched)
    a, _ = submit(sched, other + [1], 2)
    b, _ = submit(sched, other + [1, 2], 2)  # on another slot: holds all of a's cache but one token
    run_until_idle(sched)
    new, _ = submit(sched, [60, 61, 62], 2)  # shares nothing with any slot
    run_until_idle(sched)
    assert len({kept.slot, a.slot, b.slot}) == 3
    assert new.slot == a.slot  # the history stays cached, though its slot is the least recently used


def test_packed_steps_mix_chains_and_trees_and_each_reply_equals_its_plain_greedy():
    """Four replies share each step: two verify trees of different shapes (paths through later siblings
    move their cache rows), one a chain of prompt lookup, one an MTP tree; each stays its plain greedy."""
    prompts, n = [[5, 9, 13, 5], [1, 2, 3], [40, 41, 40, 41, 7], [8, 7, 6]], 20
    parent = StaticLlamaTarget(TARGET, max_len=160)
    setups = [
        (RankedOracle(TARGET), FixedController(6, depth=3, branch=3)),
        (NgramDrafter(3, 1), FixedController(3)),
        (RankedOracle(TARGET, ranks=(1, 3, 2, 0)), FixedController(4, depth=2, branch=2)),
        (make_drafter("mtp", parent), FixedController(5, depth=2, branch=4)),
    ]
    decs = [SpeculativeDecoder(parent.slot(i), ByteTokenizer(), d, c) for i, (d, c) in enumerate(setups)]
    kinds = []  # per step: each feed a tree (T) or a chain (C) of more than one token

    def forward_packed(feeds):
        kinds.append(sorted("T" if feed[3] is not None else "C" for feed in feeds if len(feed[1]) > 1 and not feed[2]))
        return parent.forward_packed(feeds)

    flat = {w: 1.0 for w in range(1, 65)}
    sched = StepScheduler(decs, forward_packed, flat, step_tokens=64, cost_ema=0.0, threaded=False)
    runs = [submit(sched, p, n) for p in prompts]
    run_until_idle(sched)
    assert [out for _, out in runs] == [plain_greedy(TARGET, p, n) for p in prompts]
    assert any("C" in k and k.count("T") >= 2 for k in kinds), kinds  # chains and trees in one forward
    assert all(ticket.job.stats.accepted > 0 for ticket, _ in runs[:2])
