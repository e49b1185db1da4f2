from hypothesis import given, strategies as st

from decode.drafters import common_prefix_len
from decode.slots import pick_slot, share_source, unique_tokens

SYSTEM = [1, 2, 3, 4]


def test_the_free_slot_sharing_the_longest_prefix_is_picked():
    cached = [SYSTEM + [9, 9], SYSTEM + [5, 6, 7], []]
    assert pick_slot(cached, [True, True, True], [0.0, 0.0, 0.0], SYSTEM + [5, 6, 8]) == 1


def test_a_busy_slot_is_never_picked_and_none_when_all_are_busy():
    cached = [SYSTEM + [5, 6, 7], SYSTEM]
    assert pick_slot(cached, [False, True], [0.0, 0.0], SYSTEM + [5, 6, 7]) == 1
    assert pick_slot(cached, [False, False], [0.0, 0.0], SYSTEM) is None


def test_among_equal_prefixes_the_slot_whose_cache_others_hold_goes_first_then_the_least_recently_used():
    # slot 0 holds a history no other slot has; slot 1's is a copy of slot 2's
    cached = [SYSTEM + [7, 7, 7], SYSTEM + [8, 8], SYSTEM + [8, 8], [9]]
    assert unique_tokens(cached, 0) == 3 and unique_tokens(cached, 1) == 0
    assert pick_slot(cached, [True, True, False, False], [0.0, 5.0, 0.0, 0.0], [42]) == 1
    assert pick_slot([[1], [2]], [True, True], [3.0, 1.0], [42]) == 1  # least recently used


def test_a_longer_cached_prefix_elsewhere_is_shared_only_when_it_gains_enough():
    cached = [SYSTEM, SYSTEM + [5, 6, 7, 8, 9], SYSTEM + [5]]
    prompt = SYSTEM + [5, 6, 7, 8, 9, 10]
    assert share_source(cached, 0, prompt, min_gain=4) == (1, 9)
    assert share_source(cached, 2, prompt, min_gain=4) == (1, 9)
    assert share_source(cached, 2, prompt, min_gain=5) is None  # 9 - 5 < 5
    assert share_source(cached, 1, prompt, min_gain=1) is None  # it is the longest itself


tokens = st.lists(st.integers(0, 3), max_size=6)


@given(st.lists(tokens, min_size=1, max_size=4), tokens, st.integers(1, 4))
def test_a_shared_prefix_is_a_prefix_of_the_prompt_and_the_longest_cached(cached, prompt, min_gain):
    slot = 0
    found = share_source(cached, slot, prompt, min_gain)
    best = max(common_prefix_len(c, prompt) for c in cached)
    if found is None:
        assert best < common_prefix_len(cached[slot], prompt) + min_gain
    else:
        src, n = found
        assert n == best and cached[src][:n] == prompt[:n] and src != slot
