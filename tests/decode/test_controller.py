import pytest

from decode.controller import (
    AdaptiveController,
    HeuristicController,
    StepStats,
    expected_tokens,
    interpolate_cost,
    tree_plan,
)


def test_expected_tokens_matches_closed_form():
    a, k = 0.7, 5
    assert abs(expected_tokens([a] * 8, k) - (1 - a ** (k + 1)) / (1 - a)) < 1e-9
    assert expected_tokens([0.9] * 4, 0) == 1.0


def test_interpolated_cost_between_and_beyond_measured_points():
    costs = {0: 10.0, 2: 14.0, 4: 30.0}
    assert interpolate_cost(costs, 1) == 12.0
    assert interpolate_cost(costs, 6) == 46.0  # slope of the last two points
    assert interpolate_cost({0: 5.0}, 3) == 5.0


def test_k0_when_drafts_are_never_accepted():
    ctl = AdaptiveController(k_max=6, verify_cost_s={0: 0.03, 1: 0.031, 4: 0.045, 8: 0.06})
    for _ in range(20):
        ctl.update(StepStats(draft_len=ctl.next_k() or 1, accepted_len=0, draft_s=0.0, verify_s=0.035))
    assert ctl.next_k() == 0


def test_k_climbs_to_max_when_everything_is_accepted_and_verify_is_flat():
    ctl = AdaptiveController(k_max=6, verify_cost_s={0: 0.03, 8: 0.031})
    for _ in range(30):
        k = max(ctl.next_k(), 1)
        ctl.update(StepStats(draft_len=k, accepted_len=k, draft_s=0.0, verify_s=0.03))
    assert ctl.next_k() == 6


def test_expensive_verification_needs_high_acceptance():
    # verifying 4 costs 2x a plain step: at a = 0.5, E[4] = 1.94 < 2, so k = 4 must not win
    ctl = AdaptiveController(
        k_max=4, verify_cost_s={0: 1.0, 1: 1.9, 2: 1.95, 3: 1.98, 4: 2.0}, prior_accept=0.5, prior_weight=1000.0
    )
    assert ctl.next_k() == 0
    ctl = AdaptiveController(
        k_max=4, verify_cost_s={0: 1.0, 1: 1.9, 2: 1.95, 3: 1.98, 4: 2.0}, prior_accept=0.95, prior_weight=1000.0
    )
    assert ctl.next_k() == 4


def test_probe_after_a_run_of_plain_steps():
    ctl = AdaptiveController(k_max=4, probe_every=3, verify_cost_s={0: 1.0, 4: 10.0})
    ks = []
    for _ in range(8):
        k = ctl.next_k()
        ks.append(k)
        ctl.update(StepStats(k, 0, 0.0, 1.0 if k == 0 else 2.0))
    assert 1 in ks and ks.count(0) >= 5


def test_heuristic_schedule():
    ctl = HeuristicController(k=3, k_max=6)
    ctl.update(StepStats(3, 3, 0, 0))
    assert ctl.next_k() == 5
    ctl.update(StepStats(5, 2, 0, 0))
    assert ctl.next_k() == 4
    for _ in range(10):
        ctl.update(StepStats(ctl.next_k(), 0, 0, 0))
    assert ctl.next_k() == 1


def test_a_busier_machine_scales_every_width_not_only_the_k_in_use():
    # calibrated quiet: k = 2 at 1.4x a plain step pays at a = 0.6 (E = 1.96)
    ctl = AdaptiveController(
        k_max=2, verify_cost_s={0: 1.0, 1: 1.3, 2: 1.4}, prior_accept=0.6, prior_weight=1000.0, probe_every=1000
    )
    assert ctl.next_k() == 2
    for _ in range(30):  # now only plain steps run, and they take 3x as long
        ctl.update(StepStats(0, 0, 0.0, 3.0))
    assert ctl.verify_cost(2) / ctl.verify_cost(0) == pytest.approx(1.4, rel=0.1)  # the shape holds
    assert ctl.verify_cost(2) > 3.0  # and k = 2 is no longer priced at its quiet cost


def test_failed_probes_back_off_and_an_accepted_one_resets_the_wait():
    ctl = AdaptiveController(k_max=2, probe_every=4, verify_cost_s={0: 1.0, 1: 3.0, 2: 4.0})
    probes = []
    for step in range(200):
        k = ctl.next_k()
        if k:
            probes.append(step)
        ctl.update(StepStats(k, 0, 0.0, 1.0 if k == 0 else 3.0))
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= 4 * gaps[0]  # doubling, capped at 16x
    assert max(gaps) <= 16 * 4 + 1
    ctl.next_k()
    ctl._since_draft = ctl._probe_gap
    assert ctl.next_k() == 1
    ctl.update(StepStats(1, 1, 0.0, 3.0))  # the probe was accepted
    assert ctl._probe_gap == 4


def test_tree_plan_with_one_rank_is_the_chain():
    a = [0.8, 0.6, 0.5, 0.3]
    plan = tree_plan([[x] for x in a], 4)
    assert [depth for _, depth in plan] == [0, 1, 2, 3, 4]
    assert all(abs(e - expected_tokens(a, k)) < 1e-12 for k, (e, _) in enumerate(plan))


def test_tree_plan_takes_the_best_nodes_by_path_probability():
    # level 1: ranks .6/.3; level 2: .5/.2. Nodes: 1a .6, 1b .3, 1a-2a .3, 1b-2a .15, 1a-2b .12, 1b-2b .06
    plan = tree_plan([[0.6, 0.3], [0.5, 0.2]], 7)
    want = [(1.0, 0), (1.6, 1), (1.9, 1), (2.2, 2), (2.35, 2), (2.47, 2), (2.53, 2), (2.53, 2)]
    assert [(round(e, 9), d) for e, d in plan] == want


CPU_COSTS = {0: 0.033, 1: 0.035, 2: 0.037, 3: 0.045, 4: 0.056, 6: 0.064, 8: 0.072}  # a wide verify is dear
GPU_COSTS = {0: 0.00264, 1: 0.0032, 8: 0.0036}  # nearly flat past one draft token


def test_the_controller_picks_chains_where_wide_verifies_are_dear_and_trees_where_they_are_cheap():
    """The same drafter (first candidate right 60 % of the time, the second 24 %: the prior, pinned by its
    weight): on the CPU's costs a chain of 2, on the GPU's a tree of every node it may draft."""
    cpu = AdaptiveController(k_max=8, branch=3, verify_cost_s=dict(CPU_COSTS), prior_accept=0.6, prior_weight=1e3)
    assert [round(b, 3) for b in cpu.rank_acceptance()[0]] == [0.6, 0.24, 0.096]
    assert cpu.next_k() == 2 and cpu.tree_shape(2) == (2, 1)  # a chain
    gpu = AdaptiveController(k_max=8, branch=3, verify_cost_s=dict(GPU_COSTS), prior_accept=0.6, prior_weight=1e3)
    shape = gpu.tree_shape(8)
    assert gpu.next_k() == 8 and shape.branch == 3 and shape.depth < 8  # a tree of 8 nodes, 3 candidates a node
    chains_only = AdaptiveController(k_max=8, verify_cost_s=dict(GPU_COSTS), prior_accept=0.6, prior_weight=1e3)
    assert gpu.score(8) > chains_only.score(8)


def test_trees_that_emit_less_than_expected_lose_their_estimate():
    """Trees of 6 whose first node had one child, always right, and nothing below it: 2 tokens a step. The
    template (first candidates now always right, deeper levels at the prior) promises more than 3; the
    estimate for 6 nodes follows what they emitted, a budget not tried keeps the template's."""
    ctl = AdaptiveController(k_max=8, branch=3, verify_cost_s=dict(GPU_COSTS), prior_accept=0.6)
    for _ in range(10):
        ctl.update(StepStats(6, 1, 0.0, None, tried=(1,), accepted_rank=(1,)))
    template = tree_plan(ctl.rank_acceptance(), 8)
    assert template[6][0] > 3.0 and template[5][0] > 3.0
    assert ctl.tree_tokens()[6][0] < 2.3
    assert ctl.tree_tokens()[5][0] == template[5][0]


def test_one_branch_is_exactly_the_chain_rule():
    """branch = 1 picks argmax_k E[tokens | k] / (k c_draft + c_verify(k)) over its chain estimates, and
    every shape it asks is a chain of k."""
    ctl = AdaptiveController(k_max=6, branch=1, verify_cost_s=dict(CPU_COSTS), probe_every=1000)
    for n in [2, 0, 1, 3, 3, 1, 0, 2, 2, 4, 4, 1]:
        k = ctl.next_k()
        rate = [expected_tokens(ctl.acceptance(), j) / (j * ctl.draft_cost_s + ctl.verify_cost(j)) for j in range(7)]
        assert k == max(range(7), key=rate.__getitem__) and ctl.tree_shape(k) == (k, 1)
        ctl.update(StepStats(max(k, 1), min(n, max(k, 1)), 0.001 * k, 0.04))
