from decode.controller import AdaptiveController, HeuristicController, StepStats, expected_tokens, interpolate_cost


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
    ctl = AdaptiveController(k_max=4, verify_cost_s={0: 1.0, 1: 1.9, 2: 1.95, 3: 1.98, 4: 2.0},
                             prior_accept=0.5, prior_weight=1000.0)
    assert ctl.next_k() == 0
    ctl = AdaptiveController(k_max=4, verify_cost_s={0: 1.0, 1: 1.9, 2: 1.95, 3: 1.98, 4: 2.0},
                             prior_accept=0.95, prior_weight=1000.0)
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
