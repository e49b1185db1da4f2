"""One reply's words into audio: decoder spans → reply policy → phrase chunker → piper.

In: a `ReplyTurn` and the chat messages to answer. Out: `ReplyText` and `AudioOut` events on
`turn.out`, in order, as they are made (before the endpoint when the reply is predictive; the
session releases them). The spans come from `voice.replies.Replies`: the embedded decoder in
the shared scheduler (urgent until the first phrase is out, paused when far ahead of playback)
or a server. Each phrase is synthesised on the shared TTS worker as soon as the chunker closes
it, a first phrase before other sessions' later ones. Cancelling the task that speaks (the
session does, on the flow's `Cancel`) closes the reply: the decoder stops at its next verify
step, a server's stream closes, and queued phrases are dropped. The speaker tells the reply's
flow when its first phrase went to TTS, when its first audio was made and when the reply
policy has what it will speak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

from voice.chunker import PhraseChunker
from voice.config import Config
from voice.replies import Replies
from voice.reply_flow import AudioMade, FirstPhrase, PolicyDone
from voice.reply_turn import ReplyTurn
from voice.session_events import AudioOut, ReplyText
from voice.stack import NORMAL, URGENT, Stack
from voice.tts import AudioChunk

log = logging.getLogger(__name__)


class ReplySpeaker:
    """Speaks replies over the shared models for one session."""

    def __init__(self, stack: Stack, replies: Replies, cfg: Config) -> None:
        self.stack, self.replies, self.cfg = stack, replies, cfg

    async def speak(self, turn: ReplyTurn, messages: list[dict]) -> None:
        """Decode the reply to `messages` and speak it onto `turn.out`, phrase by phrase."""
        phrases: asyncio.Queue = asyncio.Queue()
        turn.stamp(llm_start=time.perf_counter())
        # urgent until its first phrase is out; a held reply then waits for the endpoint, and a
        # reply far ahead of playback waits for it, leaving the batch and the cores to others
        reply = self.replies.reply(messages, turn.priority)
        speaking = asyncio.ensure_future(self._tts_worker(turn, phrases))
        chunker = PhraseChunker(self.cfg.tts.first_phrase_words, self.cfg.tts.max_phrase_words)
        shaper = turn.shaper
        try:
            async with aclosing(reply):  # leaving it early (policy, cancel, failure) stops the decoding
                async for span in reply:
                    if not turn.m.first_span:
                        turn.stamp(first_span=span.t)
                    self._say(turn, shaper.push(span.text, len(span.token_ids)), chunker, phrases, span.t)
                    if shaper.stopped:  # the reply policy has what it will speak
                        turn.step(PolicyDone())
                        break
            st = reply.stats
            if not shaper.stopped:  # decoding ended: the model's end token, or the hard cap
                self._say(turn, shaper.finish(reply.capped), chunker, phrases, time.perf_counter())
            turn.stamp(
                tokens=st.tokens,
                acceptance=st.acceptance,
                mean_draft_len=st.mean_draft_len,
                reply_end=shaper.end,
                shortened=shaper.shortened,
                reply_sentences=shaper.sentences,
                reply_tokens=self.stack.llm.count_tokens(turn.reply_text.strip()),
                dropped=shaper.dropped,
            )
            for phrase in chunker.flush():
                phrases.put_nowait(phrase)
            phrases.put_nowait(None)
            await speaking
        except BaseException:
            speaking.cancel()
            raise

    @staticmethod
    def _say(turn: ReplyTurn, text: str, chunker: PhraseChunker, phrases: asyncio.Queue, t: float) -> None:
        """Send text the reply policy released to TTS and the client; a closed sentence goes out whole."""
        if not text:
            return
        turn.reply_text += text
        for phrase in chunker.push(text) + (chunker.flush() if turn.shaper.at_close else []):
            phrases.put_nowait(phrase)
            turn.step(FirstPhrase(t))
        turn.out.put_nowait(ReplyText(text, t))

    async def _tts_worker(self, turn: ReplyTurn, phrases: asyncio.Queue) -> None:
        """Synthesise phrases as they come (ahead of the endpoint when predictive); a first phrase
        goes before other sessions' later phrases."""
        tts = self.stack.tts
        first = True
        while (phrase := await phrases.get()) is not None:
            if turn.ended:
                return

            def synthesize(p: str = phrase) -> tuple[list[AudioChunk], float, float]:
                start = time.perf_counter()
                return list(tts.synthesize(p)), start, time.perf_counter()

            queued = time.perf_counter()
            chunks, start, end = await self.stack.tts_worker.run(synthesize, URGENT if first else NORMAL)
            log.debug(
                "tts: %s phrase of %d words waited %.0f ms, synthesised in %.0f ms",
                "first" if first else "later",
                len(phrase.split()),
                (start - queued) * 1e3,
                (end - start) * 1e3,
            )
            first = False
            if chunks:
                turn.step(AudioMade(end))
            for chunk in chunks:
                turn.out.put_nowait(AudioOut(chunk))
