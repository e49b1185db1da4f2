"""The real-time path: audio frames in, reply audio out, every stage overlapping the next.

In: 16 kHz float32 blocks via `VoiceSession.feed_audio` (or typed text via `user_text`).
Out: events on `VoiceSession.events` (an asyncio.Queue): `VadState`, `Transcript`,
`ReplyText`, `AudioStart`, `AudioOut`, `TurnEnd`, `TurnFailed`.

The turn-gap path, in order (every decision is `voice.turntaking.TurnTaker`'s; this module
only carries out its actions):
1. Each 32 ms window goes through silero VAD into the `TurnTaker`.
2. While the user speaks, the growing utterance is re-decoded every `asr.interval_ms`; each
   hypothesis is scored by the LLM (P(end of user message) — a prefill the reply reuses).
3. Predictive reply: words that look complete get a reply at once — LLM, then the first
   phrase's audio — held back; other words drop it. Once the user is silent, the final
   transcript (a decode reaching past the last voiced window) confirms or replaces it.
4. Endpoint: the silence needed falls with the final words' end-of-turn score
   (`turn.min_silence_ms` … `turn.max_silence_ms`); the held reply is released at once.
5. Decoder spans → `PhraseChunker` → piper, phrase by phrase, in worker threads
   (`voice.reply_speaker`).
6. Speech starting while a reply is active is a barge-in: decoding stops within one
   verify step, queued phrases and unsent audio are dropped, the turn ends `interrupted`.
Echo: the server relies on the browser's echo cancellation; `voice talk` ignores speech
while its own reply is playing unless `--barge-in` is given (no AEC on a bare sound card).
Sessions share the models: the replies of all sessions advance together in the decode
scheduler's batched steps (a reply awaiting its first phrase goes first); ASR and TTS each
run on one priority worker (a final transcript and a first phrase go first).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Callable

import numpy as np

from audio.frames import AudioFrame, Reframer
from audio.vad import SileroVAD
from voice.config import Config
from voice.errors import VoiceError
from voice.reply_flow import Drop, Finish, Forwarded, OutputMade, Prediction, Release, Stage, Stop
from voice.reply_policy import ReplyShaper, asks_for_more
from voice.reply_speaker import ReplySpeaker
from voice.reply_turn import ReplyTurn, reply_budget
from voice.session_events import AudioOut, AudioStart, Speech, Transcript, TurnEnd, TurnFailed, VadState, log_line
from voice.stack import NORMAL, URGENT, Stack
from voice.turnevents import (
    Action,
    ClientInterrupt,
    DropReply,
    Endpoint,
    Hypothesis,
    ReleaseReply,
    ReplyDone,
    Score,
    ScoreText,
    SpeechStarted,
    StartReply,
    StopReply,
    Transcribe,
    TypedText,
    Window,
)
from voice.turns import Conversation
from voice.turntaking import TurnSettings, TurnTaker

log = logging.getLogger(__name__)

PREROLL_WINDOWS = 10  # 320 ms kept before speech_start: the detector fires late
_local_ids = itertools.count(1)


def _traceback_wanted(err: Exception) -> bool:
    """A failed turn logs one line; the traceback too with --debug, or when it is a bug here."""
    return log.isEnabledFor(logging.DEBUG) or not isinstance(err, VoiceError)


def turn_settings(cfg: Config) -> TurnSettings:
    """The turn-taking tunables from the `vad`, `asr` and `turn` sections."""
    v, a, t = cfg.vad, cfg.asr, cfg.turn
    return TurnSettings(
        v.threshold,
        v.hysteresis,
        v.min_speech_ms,
        a.interval_ms,
        a.partial_load,
        a.final_tail_ms,
        t.min_silence_ms,
        t.max_silence_ms,
        t.eot_low,
        t.eot_high,
        v.max_utterance_s,
        t.predictive,
    )


class VoiceSession:
    """One user's conversation over the shared models: carries out the `TurnTaker`'s actions."""

    def __init__(self, stack: Stack, cfg: Config, session_id: str | None = None) -> None:
        self.stack, self.cfg = stack, cfg
        self.replies = stack.replies(cfg.llm)  # the embedded decoder or a server (`llm.backend`)
        self.speaker = ReplySpeaker(stack, self.replies, cfg)
        self.id = session_id or f"local{next(_local_ids)}"  # in every log line of this session
        self.events: asyncio.Queue = asyncio.Queue()
        self.vad = SileroVAD()
        self.turns = TurnTaker(turn_settings(cfg))
        self.reframer = Reframer()
        self.conversation = Conversation(lambda msgs: len(stack.llm.chat_ids(msgs)), cfg.llm.history_tokens)
        # when set and true, speech is our own reply through the speaker (no AEC): ignore it
        self.echo_gate: Callable[[], bool] | None = None
        self._preroll: deque[np.ndarray] = deque(maxlen=PREROLL_WINDOWS)
        self._utterance: list[np.ndarray] | None = None
        self._utterance_id = 0
        self._latest_text = ""  # the newest hypothesis: older ones are not worth scoring
        self._heard_at: dict[tuple[int, float], float] = {}  # (utterance, audio end) -> hypothesis time
        self._scoring: dict[str, asyncio.Future] = {}  # text -> its end-of-turn score's prefill, in flight
        self._replies: dict[int, ReplyTurn] = {}
        self._dropped = ""  # why this utterance's last prediction was dropped ("" if none was)
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._log("session_open")

    def _log(self, event: str, level: int = logging.INFO, **fields) -> None:
        log.log(level, log_line(event, session=self.id, **fields))

    # ---- input -------------------------------------------------------------------
    async def feed_audio(self, samples: np.ndarray, t: float | None = None) -> None:
        """Feed 16 kHz mono float32 samples that arrived at `t` (perf_counter)."""
        t = time.perf_counter() if t is None else t
        for window in self.reframer.push(AudioFrame(samples, t)):
            prob = self.vad.prob(window.samples)
            echo = self.echo_gate is not None and self.echo_gate()
            self._collect(window.samples)
            await self._act(self.turns.step(Window(window.t, prob, echo)))

    async def user_text(self, text: str) -> None:
        """A typed user turn: straight to the reply."""
        await self._act(self.turns.step(TypedText(text, time.perf_counter())))

    async def interrupt(self) -> None:
        """Stop the current reply now (the client's `interrupt`)."""
        await self._act(self.turns.step(ClientInterrupt(time.perf_counter())))

    async def close(self) -> None:
        """End the session: cancel everything in flight."""
        self._closed = True
        self._log("session_close", replies_in_flight=len(self._replies))
        for turn in list(self._replies.values()):
            turn.step(Stop("session closed"))
            await self._cancel(turn, heard=False)  # nobody is left to tell
        for task in list(self._tasks):
            task.cancel()

    @property
    def idle(self) -> bool:
        """No speech in progress and no reply in flight."""
        return not self._replies and self._utterance is None

    @property
    def replying(self) -> bool:
        """A confirmed reply is being produced."""
        return any(
            t.flow.stage is Stage.RELEASED and t.task is not None and not t.task.done() for t in self._replies.values()
        )

    def _collect(self, window: np.ndarray) -> None:
        if self._utterance is not None:
            self._utterance.append(window)
        else:
            self._preroll.append(window)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- actions -------------------------------------------------------------------
    async def _act(self, actions: list[Action]) -> None:
        """Carry out the turn-taker's actions, in order."""
        for action in actions:
            log.debug("turn-taker: %s", action)
            if isinstance(action, SpeechStarted):
                self._utterance, self._utterance_id = list(self._preroll), action.utterance
                self._dropped = ""
                await self.events.put(VadState(Speech.START, action.t))
            elif isinstance(action, Transcribe):
                self._spawn(self._hypothesis(action, np.concatenate(self._utterance)))
            elif isinstance(action, ScoreText):
                self._spawn(self._score(action.text))
            elif isinstance(action, StartReply):
                self._start_reply(action)
            elif isinstance(action, Endpoint):
                await self._endpoint(action)
            elif (turn := self._replies.get(action.reply)) is None:
                continue  # that reply already ended (it failed, or all its output went out)
            elif isinstance(action, DropReply):
                self._log("reply_dropped", turn=turn.id, reason=action.reason, text=turn.text)
                self._dropped = action.reason
                for cancel in turn.step(Drop(action.reason)):
                    await self._cancel(turn, cancel.heard)
            elif isinstance(action, ReleaseReply):
                self._release(turn, action.endpoint)
            elif isinstance(action, StopReply):
                self._log("reply_stopped", turn=turn.id, reason=action.reason)
                for cancel in turn.step(Stop(action.reason)):
                    await self._cancel(turn, cancel.heard)

    async def _endpoint(self, end: Endpoint) -> None:
        self._utterance, self._preroll = None, deque(maxlen=PREROLL_WINDOWS)
        await self.events.put(VadState(Speech.ENDPOINT, end.t))
        if not end.transcript.strip():  # noise or a cough: no words, no reply
            await self.events.put(Transcript("", True, self._heard(end)))
        self._heard_at = {k: v for k, v in self._heard_at.items() if k[0] >= end.utterance}

    def _heard(self, end: Endpoint) -> float:
        """When the final transcript's decode came back (the endpoint's time if unknown)."""
        return self._heard_at.get((end.utterance, end.final_audio_end_t), end.t)

    def _release(self, turn: ReplyTurn, end: Endpoint) -> None:
        """The endpoint confirmed the reply's words: open its output, record how the prediction went."""
        for gate in turn.step(Release(end.t, self._dropped)):
            prediction = gate.prediction
            turn.stamp(
                speech_end=end.speech_end_t,
                endpoint=end.t,
                asr_final=self._heard(end),
                transcript=end.transcript,
                predictive=prediction in (Prediction.RELEASED, Prediction.LATE),
                prediction=prediction.value,
                prediction_started=turn.flow.created_t,
                prediction_audio=turn.flow.audio_made_t or 0.0,
                end_of_turn_prob=self.turns.score_of(end.transcript),
            )
            if prediction is Prediction.DROPPED:
                self._log("prediction_dropped", logging.DEBUG, turn=turn.id, reason=self._dropped)
            turn.gate.set()
            self.stack.llm.scheduler.wake()  # it may be waiting on this held reply

    async def _cancel(self, turn: ReplyTurn, heard: bool) -> None:
        """Carry out a reply's `Cancel`: end its task; if the user heard part of it, report and remember it."""
        self._replies.pop(turn.id, None)
        turn.gate.set()  # its forwarder sees it ended
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()
            try:
                await turn.task
            except asyncio.CancelledError:
                pass
        if heard:
            turn.stamp(interrupted=True, reply=turn.reply_text, reply_audio_s=round(turn.audio_s, 2))
            self._remember(turn)
            await self.events.put(TurnEnd(turn.m))

    def _remember(self, turn: ReplyTurn) -> None:
        """Put the spoken reply in the history (a continuation extends the previous answer), once."""
        if turn.remembered:
            return
        turn.remembered = True
        m = turn.m.as_dict()
        self._log(
            "turn_end",
            turn=turn.id,
            gap_ms=m["turn_gap_ms"],
            interrupted=m["interrupted"],
            reply_end=m["reply_end"] or None,
            tokens=m["tokens"],
            acceptance=m["acceptance"],
        )
        if turn.continued:
            self.conversation.extend_last(turn.reply_text.rstrip(), turn.m.shortened)
        else:
            self.conversation.add(turn.m.transcript, turn.reply_text.strip(), turn.m.shortened)

    # ---- ASR and scores --------------------------------------------------------------
    async def _hypothesis(self, ask: Transcribe, audio: np.ndarray) -> None:
        current = ask.utterance == self._utterance_id and self._utterance is not None
        if not ask.quiet and self.stack.asr_worker.waiting():
            # under load partials thin out: another decode already waits, so this one is skipped
            # (the words so far stand); decodes that may be final are never skipped
            text = self._latest_text if current else ""
            await self._act(self.turns.step(Hypothesis(ask.utterance, text, ask.audio_end_t)))
            return
        try:  # a decode that may be the final transcript goes before other sessions' partials
            heard = await self.stack.transcribe(audio, URGENT if ask.quiet else NORMAL)
            text, looped = heard.text, heard.attempts > 1 or heard.collapsed
        except Exception as err:  # the turn-taker must hear back, or it waits forever
            log.error(log_line("asr_failed", session=self.id, error=str(err)), exc_info=_traceback_wanted(err))
            await self.events.put(TurnFailed("asr_failed", f"{type(err).__name__}: {err}"))
            text, looped = "", False
        self._heard_at[(ask.utterance, ask.audio_end_t)] = time.perf_counter()
        if ask.utterance == self._utterance_id and self._utterance is not None and text:
            self._latest_text = text
            await self.events.put(Transcript(text, False, time.perf_counter()))
        await self._act(self.turns.step(Hypothesis(ask.utterance, text, ask.audio_end_t, looped)))

    async def _score(self, text: str) -> None:
        if text != self._latest_text:  # newer words came while this waited
            return
        prob = await self._end_of_turn_prob(text)
        await self._act(self.turns.step(Score(text, prob)))

    def _end_of_turn_prob(self, text: str) -> asyncio.Future:
        """The end-of-turn score of `text`, one prefill per text: a reply to words whose score is
        in flight waits for that prefill (it keeps the reply's first logits) instead of running
        a second one. Shielded: a cancelled reply does not cancel the score others wait for."""
        future = self._scoring.get(text)
        if future is None:
            msgs = self.conversation.messages(text)
            future = asyncio.ensure_future(self.stack.llm.end_of_turn_prob(msgs))
            self._scoring[text] = future
            future.add_done_callback(lambda _: self._scoring.pop(text, None))
        return asyncio.shield(future)

    # ---- reply -----------------------------------------------------------------
    def _start_reply(self, start: StartReply) -> None:
        more = self.cfg.reply.continue_on_more and self.conversation.shortened and asks_for_more(start.text)
        turn = ReplyTurn(start.reply, start.text, reply_budget(self.cfg), continued=more)
        self._replies[turn.id] = turn
        self._log("turn_start", turn=turn.id, typed=start.released, continued=more)
        if start.released:  # a typed turn: no speech to wait for
            now = turn.flow.created_t
            turn.stamp(speech_end=now, endpoint=now, asr_final=now)
            turn.step(Release(now))
            turn.gate.set()
        turn.task = asyncio.ensure_future(self._reply(turn))

    async def _forward(self, turn: ReplyTurn) -> None:
        """Release the turn's events in order once the endpoint confirms it."""
        await turn.gate.wait()
        if turn.ended:
            return
        await self.events.put(Transcript(turn.m.transcript, True, turn.m.asr_final))
        while (event := await turn.out.get()) is not None:
            if turn.ended:
                return
            if isinstance(event, AudioOut):
                now = time.perf_counter()
                if not turn.m.first_audio:
                    # audio made before the endpoint counts from its release at the endpoint
                    turn.stamp(first_audio=now)
                    await self.events.put(AudioStart(event.chunk.rate_hz, now))
                turn.stamp(last_audio=now)
                turn.sent_audio(len(event.chunk.samples) / event.chunk.rate_hz)
            elif isinstance(event, TurnEnd):
                turn.stamp(reply_audio_s=round(turn.audio_s, 2))
                self._remember(turn)  # before the client hears the turn ended: its next turn sees it
                event = TurnEnd(turn.m)
            await self.events.put(event)

    async def _reply(self, turn: ReplyTurn) -> None:
        forward = asyncio.ensure_future(self._forward(turn))
        try:
            messages = self.conversation.continuation() if turn.continued else self.conversation.messages(turn.text)
            await self._speak_reply(turn, messages)
            if turn.continued and not turn.reply_text.strip():
                # the model had nothing to add to its answer: "tell me more" is answered as a question
                turn.continued, turn.shaper = False, ReplyShaper(reply_budget(self.cfg))
                turn.stamp(continued=False)
                await self._speak_reply(turn, self.conversation.messages(turn.text))
            turn.stamp(reply=turn.reply_text.strip())
            turn.step(OutputMade())
            turn.out.put_nowait(TurnEnd(turn.m))
            turn.out.put_nowait(None)
            await forward  # held until the endpoint
            if any(isinstance(a, Finish) for a in turn.step(Forwarded())):  # the turn is over
                self._replies.pop(turn.id, None)
                await self._act(self.turns.step(ReplyDone(turn.id)))
        except asyncio.CancelledError:
            forward.cancel()
            raise
        except Exception as err:  # a failing stage ends this turn, not the session
            log.error(
                log_line("turn_failed", session=self.id, turn=turn.id, error=str(err)),
                exc_info=_traceback_wanted(err),
            )
            forward.cancel()
            self._replies.pop(turn.id, None)
            await self._act(self.turns.step(ReplyDone(turn.id)))
            await self.events.put(TurnFailed("turn_failed", f"{type(err).__name__}: {err}"))

    async def _speak_reply(self, turn: ReplyTurn, messages: list[dict]) -> None:
        if self.turns.score_of(turn.text) is None:  # the endpoint rule needs it; usually it is known already
            prob = await self._end_of_turn_prob(turn.text)
            self._spawn(self._act(self.turns.step(Score(turn.text, prob))))
        await self.speaker.speak(turn, messages)
