"""Whisper's repetition loops, found and collapsed in the text alone (no model).

On a short utterance greedy whisper sometimes loops ("Mount Everest Mount Everest Mount …")
until the token cap. `find_repetitions` finds a phrase of up to `LOOP_MAX_PERIOD_WORDS` words
said `LOOP_MIN_REPEATS` or more times in a row; `is_repetition_loop` adds faster-whisper's
compression-ratio test; `collapse_repetition` keeps one copy of each run (what `voice.asr`
passes on when every retry looped). Cost: ~40 µs per transcript.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

LOOP_MIN_REPEATS = 3
LOOP_MAX_PERIOD_WORDS = 12
CLAUSE_MIN_WORDS = 3  # a whole sentence this long said twice in a row is a loop too
COMPRESSION_RATIO_THRESHOLD = 2.4  # faster-whisper's default for its temperature fallback
_SENTENCE_END = (".", "?", "!")


def _norm(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def compression_ratio(text: str) -> float:
    """faster-whisper's repetition measure: `len(utf8) / len(zlib.compress(utf8))`.

    Useless on short text (zlib's overhead keeps "Italy Italy Italy Italy" at 1.4), so it
    only backs up the word-level rule on long transcripts.
    """
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Repetition(NamedTuple):
    """Words [start, end) repeat with period `period_words`: `word[i] == word[i - period]`."""

    start: int
    end: int
    period_words: int


def _periodic_end(keys: Sequence[str], start: int, period: int) -> int:
    end = start + period
    while end < len(keys) and keys[end] == keys[end - period]:
        end += 1
    if end == len(keys) - 1 and keys[end] and keys[end - period].startswith(keys[end]):
        end += 1  # the token cap cut the last word: "Farge a Stocean Farge a St"
    return end


def _loop_at(
    words: Sequence[str], keys: Sequence[str], start: int, min_repeats: int, max_period_words: int
) -> Repetition | None:
    for period in range(1, min(max_period_words, (len(keys) - start) // 2) + 1):
        end = _periodic_end(keys, start, period)
        run = end - start
        if run >= min_repeats * period or (end == len(keys) and run > 2 * period):
            return Repetition(start, end, period)
        if run >= 2 * period >= 2 * CLAUSE_MIN_WORDS and _is_clause(words, start, period):
            return Repetition(start, end, period)
    return None


def _is_clause(words: Sequence[str], start: int, period: int) -> bool:
    """Words [start, start + period) are a whole sentence: it closes, and nothing open precedes it."""
    opens = start == 0 or words[start - 1].endswith(_SENTENCE_END)
    return opens and words[start + period - 1].endswith(_SENTENCE_END)


def find_repetitions(
    words: Sequence[str], min_repeats: int = LOOP_MIN_REPEATS, max_period_words: int = LOOP_MAX_PERIOD_WORDS
) -> list[Repetition]:
    """The loop runs in `words`, left to right, not overlapping, shortest period first.

    Words compare lower-cased without punctuation. A run of length L with period p (a phrase
    of p <= max_period_words words) is a loop when L >= min_repeats * p, or when it ends the
    text and L > 2 * p: a loop cut off mid-phrase by the token cap ("Learn to swim! Learn to
    swim! Learn to"), or when the phrase is a whole sentence of p >= CLAUSE_MIN_WORDS words
    said twice: a short-window decode that invents an ending and repeats it ("Who painted
    her? Who painted her?"). So "No, no, no." and "very very very good" count as loops
    (retried, then collapsed to "No" / "very good", which keeps their meaning); "Yes yes." and
    "Thank you. Thank you." do not.
    """
    keys = [_norm(w) for w in words]
    runs: list[Repetition] = []
    start = 0
    while start < len(keys):
        run = _loop_at(words, keys, start, min_repeats, max_period_words)
        runs += [run] if run else []
        start = run.end if run else start + 1
    return runs


def is_repetition_loop(
    text: str,
    min_repeats: int = LOOP_MIN_REPEATS,
    max_period_words: int = LOOP_MAX_PERIOD_WORDS,
    max_compression_ratio: float = COMPRESSION_RATIO_THRESHOLD,
) -> bool:
    """Whether whisper looped: a repeated-phrase run (`find_repetitions`) or, for long text,
    `compression_ratio(text) > max_compression_ratio` as faster-whisper's fallback tests."""
    return (
        bool(find_repetitions(text.split(), min_repeats, max_period_words))
        or compression_ratio(text) > max_compression_ratio
    )


def _one_period(words: Sequence[str], run: Repetition) -> list[str]:
    """One copy of the repeated phrase: the first phase that ends a sentence, else the first.

    Every phase is a full copy, so choosing one loses no words ("ocean? the ocean? the
    ocean?" -> "the ocean?").
    """
    period = run.period_words
    for shift in range(min(period, run.end - run.start - period + 1)):
        if words[run.start + shift + period - 1].endswith(_SENTENCE_END):
            return list(words[run.start + shift : run.start + shift + period])
    return list(words[run.start : run.start + period])


def collapse_repetition(
    text: str, min_repeats: int = LOOP_MIN_REPEATS, max_period_words: int = LOOP_MAX_PERIOD_WORDS
) -> str:
    """`text` with every loop run replaced by one copy of its phrase ("Italy Italy Italy" ->
    "Italy"), repeated until no run is left; text without a loop comes back unchanged."""
    words = text.split()
    runs = find_repetitions(words, min_repeats, max_period_words)
    if not runs:
        return text
    while runs:
        kept: list[str] = []
        done = 0
        for run in runs:
            kept += list(words[done : run.start]) + _one_period(words, run)
            done = run.end
        words = kept + list(words[done:])
        runs = find_repetitions(words, min_repeats, max_period_words)
    return " ".join(words).rstrip(",;:")


def loop_free(text: str, is_loop: Callable[[str], bool] = is_repetition_loop) -> str:
    collapsed = collapse_repetition(text)
    return "" if is_loop(collapsed) else collapsed
