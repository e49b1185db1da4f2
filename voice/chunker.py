"""Phrase chunker: decoder text deltas in, speakable phrases out.

In: text deltas as spans arrive. Out: phrases for TTS. The first phrase goes as soon as
it can be spoken naturally — `first_words` complete words (more while the last one is a
word no phrase ends on: "the", "of", "is", …), or a clause/sentence end — then clause or
sentence chunks (capped at `max_words`). A cut happens only at whitespace,
so a word or a number ("3.14", "1,000") is never split. Pure; no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# punctuation that ends a clause when followed by whitespace
_CLAUSE_END = re.compile(r"[.!?;:,]['\")\]]*\s")
# words a spoken phrase does not end on: a first phrase "The" or "It is" would be said alone
_LEANS_ON_NEXT = frozenset(
    "a an the of to in on at for from with by about as into and or but if so that than "
    "is are was were be been am do does did can could will would should may might must "
    "i you he she it we they my your his her its our their this these those there".split()
)


@dataclass
class PhraseChunker:
    """Accumulates text and releases phrases at natural boundaries."""

    first_words: int
    max_words: int
    _buffer: str = ""
    _emitted: int = 0
    phrases: list[str] = field(default_factory=list)

    def push(self, text: str) -> list[str]:
        """Add decoded text; return phrases ready to speak."""
        self._buffer += text
        out = []
        while (cut := self._next_cut()) is not None:
            phrase, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if phrase:
                out.append(phrase)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        """The remainder at the end of the reply."""
        phrase, self._buffer = self._buffer.strip(), ""
        return [phrase] if phrase else []

    def _next_cut(self) -> int | None:
        buf = self._buffer
        clause = _CLAUSE_END.search(buf)
        # complete words = words followed by whitespace
        word_ends = [m.end() for m in re.finditer(r"\S+\s", buf)]
        limit = self.first_words if self._emitted == 0 else self.max_words
        if clause:
            n_words = len(buf[: clause.end()].split())
            if n_words <= limit and (self._emitted == 0 or n_words >= 2):
                return clause.end()
        if self._emitted == 0:
            limit = self._first_cut_words(buf, limit)
        if len(word_ends) >= limit:
            return word_ends[limit - 1]
        return None

    def _first_cut_words(self, buf: str, limit: int) -> int:
        """Words in the first phrase: `limit`, more while the last leans on the next (to `max_words`)."""
        words = buf.split()
        while limit < self.max_words and limit <= len(words) and words[limit - 1].lower() in _LEANS_ON_NEXT:
            limit += 1
        return limit
