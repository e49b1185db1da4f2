"""Reply policy: how much of a reply is spoken, and when the user asks for the rest.

In: the reply's text deltas with their token counts, as the decoder emits them. Out: the
text to speak, when to stop decoding, and how the reply ended. Spoken assistants answer
briefly: once the soft budget is used (`reply.soft_tokens` tokens or `reply.soft_sentences`
sentences), the reply ends at the next sentence close. The first sentence streams as it is
decoded (it sets the turn gap); each later sentence is held until it closes, so when the
hard cap (`llm.max_new_tokens`) ends decoding mid-sentence the unfinished tail is dropped
and the audio still ends on a sentence. A shortened reply can be continued: `asks_for_more`
matches "tell me more" and its close variants on the transcript. Pure; no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# sentence-closing punctuation (and closing quotes/brackets) followed by whitespace
_CLOSE = re.compile(r"[.!?…]+['\")\]]*(?=\s)")
# a word before a '.' that does not end a sentence ("Dr. Smith", "e.g. rain")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "approx"})

DONE, BUDGET, CAP = "done", "budget", "cap"  # how a reply ended: the model's own end, the soft budget, the hard cap


def _is_close(text: str, m: re.Match) -> bool:
    """Whether the punctuation `m` closes a sentence: not a list marker ("1." at the start of a
    line) nor after an abbreviation or an initial ("Dr. Smith", "J. K. Rowling")."""
    if not m.group().startswith(".") or m.group().startswith(".."):
        return True  # '?', '!', '…', '...'
    line = text[: m.start()].rsplit("\n", 1)[-1]
    words = line.split()
    if not words:
        return False
    word = words[-1].strip("*_(\"'")
    if word.isdigit() and (len(words) == 1 or words[-2][-1] in ".!?:"):
        return False  # "1. Boil the water", "... water. 2. Wait"
    return not (word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word.isupper()))


def sentence_closes(text: str) -> list[int]:
    """Offsets just past each sentence-closing punctuation in `text` that whitespace follows."""
    return [m.end() for m in _CLOSE.finditer(text) if _is_close(text, m)]


def ends_sentence(text: str) -> bool:
    """Whether `text` ends on a closed sentence (its last character closes one)."""
    text = text.rstrip()
    return bool(text) and bool(sentence_closes(text + " ")) and sentence_closes(text + " ")[-1] == len(text)


@dataclass(frozen=True)
class ReplyBudget:
    """The soft budget: after `soft_tokens` tokens or `soft_sentences` sentences (0: no limit)
    the reply ends at the next sentence close."""

    soft_tokens: int = 0
    soft_sentences: int = 0

    def used(self, tokens: int, sentences: int) -> bool:
        return (0 < self.soft_tokens <= tokens) or (0 < self.soft_sentences <= sentences)


class ReplyShaper:
    """Turns decoded text into spoken text under a `ReplyBudget`.

    `push(text, tokens)` returns the text to speak now and sets `stopped` once the budget
    ends the reply; `finish(capped)` at the end of decoding returns the rest (nothing when
    the hard cap cut a held sentence: that tail goes to `dropped`).
    """

    def __init__(self, budget: ReplyBudget) -> None:
        self.budget = budget
        self.tokens = 0  # tokens decoded (spoken, held or past the stop)
        self.sentences = 0  # sentences closed in the spoken text
        self.spoken = ""
        self.dropped = ""  # an unfinished sentence cut by the hard cap, never spoken
        self.end: str | None = None  # DONE | BUDGET | CAP once the reply ended
        self.at_close = False  # the spoken text ends on a confirmed sentence close
        self._sentence = ""  # the sentence in progress
        self._sent = 0  # ... how much of it was already spoken (the first sentence streams)

    @property
    def stopped(self) -> bool:
        return self.end is not None

    @property
    def shortened(self) -> bool:
        """The policy ended the reply before the model did."""
        return self.end in (BUDGET, CAP)

    def push(self, text: str, tokens: int) -> str:
        """Add decoded text (`tokens` tokens); return the text to speak now."""
        if self.stopped:
            return ""
        self.tokens += tokens
        self._sentence += text
        out = ""
        while closes := sentence_closes(self._sentence):
            cut = closes[0]
            out += self._sentence[self._sent : cut]
            self._sentence, self._sent = self._sentence[cut:], 0
            self.sentences += 1
            self.at_close = True
            if self.budget.used(self.tokens, self.sentences):
                self.end, self._sentence = BUDGET, ""  # text past the close was decoded, not meant
                break
        if not self.stopped and self.sentences == 0 and len(self._sentence) > self._sent:  # the first streams
            out += self._sentence[self._sent :]
            self._sent, self.at_close = len(self._sentence), False
        self.spoken += out
        return out

    def finish(self, capped: bool) -> str:
        """Decoding ended (`capped`: at the hard cap, else the model's own end); return the rest to speak."""
        if self.stopped:
            return ""
        rest = self._sentence[self._sent :]
        if capped and self.sentences > 0:
            self.end, self.dropped, self._sentence = CAP, rest.strip(), ""
            return ""
        self.end = CAP if capped else DONE
        if self._sentence.strip():  # the last sentence, closed by the end of the reply (or cut, if the first)
            self.sentences += 1
        self._sentence, self.at_close = "", True
        self.spoken += rest
        return rest


_MORE = frozenset(
    {
        "tell me more",
        "go on",
        "continue",
        "keep going",
        "more",
        "say more",
        "carry on",
        "and then",
        "what else",
        "tell me more about it",
        "tell me more about that",
        "go ahead",
    }
)
_POLITE = ("please ", "ok ", "okay ", "yes ", "sure ", "and ", "so ", "can you ", "could you ")


def asks_for_more(transcript: str) -> bool:
    """Whether the user asks to continue the previous answer ("Tell me more.", "Go on, please")."""
    words = re.sub(r"[^a-z' ]+", " ", transcript.lower()).split()
    text = " ".join(words)
    for _ in range(3):
        if text in _MORE:
            return True
        text = text.removesuffix(" please")
        for prefix in _POLITE:
            text = text.removeprefix(prefix)
    return text in _MORE
