"""Which slot a job goes to, and which slot's cache it copies. Pure; no model.

In: each slot's cached tokens (the context its KV holds), which slots are free, when each was
last used, and the new job's prompt. Out: a slot index.

- `pick_slot`: the free slot whose cache shares the longest prefix with the prompt (a
  conversation stays cached across turns); among equals the one with the fewest unique tokens
  (what evicting it loses: a superseded hypothesis' reply, a history copied on), then the least
  recently used.
- `share_source`: the slot, busy or not, whose cache holds the longest prefix of the prompt,
  when that prefix is at least `min_gain` tokens longer than the chosen slot's own: its KV is
  copied instead of prefilled (a session's score or reply of the same words).
"""

from __future__ import annotations

from typing import Sequence

from decode.drafters import common_prefix_len


def unique_tokens(cached: Sequence[list[int]], slot: int) -> int:
    """How many of `slot`'s cached tokens no other slot caches as well:
    u(s) = |c_s| - max_{j != s} lcp(c_s, c_j)."""
    mine = cached[slot]
    shared = max((common_prefix_len(mine, c) for j, c in enumerate(cached) if j != slot), default=0)
    return len(mine) - shared


def pick_slot(
    cached: Sequence[list[int]], free: Sequence[bool], used: Sequence[float], prompt: list[int]
) -> int | None:
    """The free slot for `prompt`: max over free s of (lcp(c_s, prompt), -u(s), -used_s); None if none is free."""
    candidates = [i for i, f in enumerate(free) if f]
    if not candidates:
        return None
    return max(candidates, key=lambda i: (common_prefix_len(cached[i], prompt), -unique_tokens(cached, i), -used[i]))


def share_source(cached: Sequence[list[int]], slot: int, prompt: list[int], min_gain: int) -> tuple[int, int] | None:
    """(source slot, prefix length) to copy into `slot`, or None when no slot caches a prefix of
    `prompt` at least `min_gain` tokens longer than `slot`'s own."""
    lengths = [common_prefix_len(c, prompt) for c in cached]
    src = max(range(len(cached)), key=lengths.__getitem__)
    if src == slot or lengths[src] < lengths[slot] + min_gain:
        return None
    return src, lengths[src]
