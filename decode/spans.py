"""Spans: what the decoder emits, and the stable incremental detokeniser behind them.

In: token ids as they are accepted. Out: `Span`s whose `text` is the newly stable part
of the reply — never half a UTF-8 character, never text that a later token rewrites.
Cost: one small `tokenizer.decode` over a short window per step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """Tokens emitted by one decode step, with their stable text delta."""

    token_ids: tuple[int, ...]
    text: str
    draft_len: int  # k proposed this step
    accepted_len: int  # draft tokens accepted
    t: float  # perf_counter() when the step finished
    final: bool = False  # last span of the reply (EOS, max tokens, or cancelled)


class StableDetokenizer:
    """Incremental detokenisation with a prefix window (the text-generation-inference way).

    Decodes `tokens[prefix:]` and `tokens[prefix:read]`; the difference is new text, held
    back while it ends in U+FFFD (an incomplete UTF-8 sequence).
    """

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; return the text that became stable."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is left at the end of the reply (an incomplete tail is dropped as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :].replace("\ufffd", "")
