"""End-to-end tests of the streaming pipeline on piper-made speech (slow: real models)."""

import asyncio
import time

import numpy as np
import pytest

from audio.wavio import read_wav
from guards import HANG_GUARD_S
from voice.config import load_config
from voice.pipeline import VoiceSession
from voice.session_events import AudioOut, AudioStart, Speech, Transcript, TurnEnd, TurnFailed, VadState

pytestmark = pytest.mark.slow

FRAME = 320  # 20 ms


async def feed(session, audio, speed=1.0):
    for i in range(0, len(audio), FRAME):
        await session.feed_audio(audio[i : i + FRAME])
        await asyncio.sleep(0.02 / speed)


async def collect_until(session, stop, timeout=HANG_GUARD_S):
    events = []
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            ev = await asyncio.wait_for(session.events.get(), 0.5)
        except asyncio.TimeoutError:
            continue
        events.append(ev)
        if stop(ev):
            return events
    raise AssertionError(f"timed out; saw {[type(e).__name__ for e in events]}")


def silence(seconds):
    return np.zeros(int(16000 * seconds), np.float32)


def test_spoken_question_gets_transcript_reply_audio_and_consistent_metrics(stack, question_wav):
    async def main():
        session = VoiceSession(stack, load_config())
        audio = np.concatenate([silence(0.3), read_wav(question_wav), silence(3.0)])
        feeder = asyncio.ensure_future(feed(session, audio))
        events = await collect_until(session, lambda e: isinstance(e, (TurnEnd, TurnFailed)))
        feeder.cancel()
        await session.close()
        return events

    events = asyncio.run(main())
    kinds = [type(e).__name__ for e in events]
    assert "TurnFailed" not in kinds
    finals = [e.text for e in events if isinstance(e, Transcript) and e.final]
    assert finals and "capital of france" in finals[0].lower()
    assert kinds.index("AudioStart") < kinds.index("AudioOut") < kinds.index("TurnEnd")
    assert sum(len(e.chunk.samples) for e in events if isinstance(e, AudioOut)) > 22050 * 0.5
    m = events[-1].metrics
    assert "paris" in m.reply.lower()
    assert m.speech_end <= m.asr_final <= m.first_audio <= m.last_audio
    assert m.speech_end <= m.endpoint <= m.first_audio and m.tokens > 0


def test_barge_in_stops_the_reply_and_the_new_turn_proceeds(stack, tmp_path, caplog):
    import logging

    from audio.wavio import write_wav

    long_q = tmp_path / "long.wav"
    tts = stack.tts
    write_wav(long_q, tts.synthesize_all("Tell me a fun fact about octopuses.", deterministic=True), tts.rate_hz)
    second = tmp_path / "second.wav"
    write_wav(second, tts.synthesize_all("How far away is the moon?", deterministic=True), tts.rate_hz)

    async def main():
        session = VoiceSession(stack, load_config(), session_id="barge1")
        feeder = asyncio.ensure_future(feed(session, np.concatenate([silence(0.3), read_wav(long_q), silence(30.0)])))
        await collect_until(session, lambda e: isinstance(e, AudioOut))
        feeder.cancel()
        # the user talks over the reply
        feeder = asyncio.ensure_future(feed(session, np.concatenate([read_wav(second), silence(4.0)])))
        events = await collect_until(session, lambda e: isinstance(e, TurnEnd) and not e.metrics.interrupted)
        feeder.cancel()
        await session.close()
        return events

    with caplog.at_level(logging.INFO, logger="voice.pipeline"):
        events = asyncio.run(main())
    # structured log lines: one per session event, each naming the session
    lines = [r.getMessage() for r in caplog.records if "session=barge1" in r.getMessage()]
    kinds = [line.split()[0] for line in lines]
    assert kinds[0] == "event=session_open" and kinds[-1] == "event=session_close", lines
    assert any(k == "event=reply_stopped" for k in kinds), lines
    assert any(line.startswith("event=turn_end") and "interrupted=true" in line for line in lines), lines
    assert any(line.startswith("event=turn_end") and "interrupted=false" in line for line in lines), lines
    start = next(e for e in events if isinstance(e, VadState) and e.state is Speech.START)  # the barge-in
    cut = next(e for e in events if isinstance(e, TurnEnd))
    assert cut.metrics.interrupted
    # stopped in the window that started the user's speech (the pure rule: test_turntaking's
    # test_barge_in_stops_a_released_reply_in_the_window_that_starts_speech): no audio of the
    # reply was released after that window's time, and nothing of the new utterance came before
    # the reply's end
    assert 0 < cut.metrics.last_audio <= start.t
    between = events[events.index(start) : events.index(cut)]
    assert not [e for e in between if isinstance(e, (Transcript, AudioStart, AudioOut))], between
    after = events[events.index(cut) + 1 :]
    # no audio of the old reply after the cut: the next audio starts with a new AudioStart
    first_audio_after = next(i for i, e in enumerate(after) if isinstance(e, (AudioStart, AudioOut)))
    assert isinstance(after[first_audio_after], AudioStart)
    finals = [e.text.lower() for e in after if isinstance(e, Transcript) and e.final]
    assert any("moon" in f for f in finals)


def test_a_failing_tts_ends_that_turn_with_an_error_and_the_session_goes_on(stack, monkeypatch):
    from voice.tts import TTSError

    real = stack.tts.synthesize
    calls = {"n": 0}

    def flaky(text):
        calls["n"] += 1
        if calls["n"] == 1:
            raise TTSError(f"TTS failed for {text!r}: simulated")
        return real(text)

    async def main():
        session = VoiceSession(stack, load_config())
        await session.user_text("Say hello.")
        first = await collect_until(session, lambda e: isinstance(e, (TurnFailed, TurnEnd)))
        await session.user_text("What is the capital of France?")
        second = await collect_until(session, lambda e: isinstance(e, (TurnFailed, TurnEnd)))
        await session.close()
        return first[-1], second[-1]

    monkeypatch.setattr(stack.tts, "synthesize", flaky)
    failed, ok = asyncio.run(main())
    assert isinstance(failed, TurnFailed) and failed.code == "turn_failed" and "simulated" in failed.message
    assert isinstance(ok, TurnEnd) and "paris" in ok.metrics.reply.lower()


def test_deterministic_synthesis_repeats_to_the_sample(stack):
    # piper samples noise on every call by default; test and bench speech must not
    same = [stack.tts.synthesize_all("What is the capital of France?", deterministic=True) for _ in range(2)]
    assert np.array_equal(same[0], same[1]) and len(same[0]) > stack.tts.rate_hz


def noise_bursts(seed=0):
    """A cough-like burst of shaped noise, then a door slam (a decaying thud), with silence around."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * 0.35)) / 16000
    cough = (0.5 * rng.standard_normal(len(t)) * np.exp(-t / 0.08) * (1 - np.exp(-t / 0.01))).astype(np.float32)
    t = np.arange(int(16000 * 0.4)) / 16000
    thud = (
        0.9 * np.sin(2 * np.pi * 70 * t) * np.exp(-t / 0.06) + 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.02)
    ).astype(np.float32)
    return np.concatenate([silence(0.3), cough, silence(1.5), thud, silence(1.5)])


@pytest.mark.parametrize("vad_threshold", [0.5, 0.03])  # 0.03: the VAD misfires, whisper hears the noise
def test_a_cough_or_a_door_slam_never_starts_a_reply(stack, vad_threshold):
    async def main():
        session = VoiceSession(stack, load_config(overrides=[f"vad.threshold={vad_threshold}", "vad.hysteresis=0.0"]))
        await feed(session, noise_bursts())
        await asyncio.sleep(1.0)
        await session.close()
        events = []
        while not session.events.empty():
            events.append(session.events.get_nowait())
        return events

    events = asyncio.run(main())
    if vad_threshold < 0.5:  # the VAD did fire: what stopped the reply is the empty transcript
        assert [e.state for e in events if isinstance(e, VadState)][:2] == [Speech.START, Speech.ENDPOINT], events
        assert [e for e in events if isinstance(e, Transcript) and e.final and not e.text], events
    assert not [e for e in events if isinstance(e, (AudioStart, AudioOut, TurnEnd))], events
    assert not [e for e in events if isinstance(e, Transcript) and e.final and e.text], events


def _ask(stack, wav, cfg=None):
    """One spoken question on a fresh session; the events up to the turn's end."""

    async def main():
        session = VoiceSession(stack, cfg or load_config())
        audio = np.concatenate([silence(0.3), read_wav(wav), silence(3.0)])
        feeder = asyncio.ensure_future(feed(session, audio))
        events = await collect_until(session, lambda e: isinstance(e, (TurnEnd, TurnFailed)))
        feeder.cancel()
        await session.close()
        return events

    return main()


def test_with_the_asr_busy_partials_are_skipped_and_the_final_transcript_still_answers(
    stack, question_wav, monkeypatch
):
    from voice.stack import NORMAL, URGENT

    ran = []  # the priority of each ASR decode that ran: partials NORMAL, may-be-final URGENT
    run = stack.asr_worker.run_batched

    async def recording(fn, item, key, limit, priority=NORMAL):
        ran.append(priority)
        return await run(fn, item, key, limit, priority)

    monkeypatch.setattr(stack.asr_worker, "run_batched", recording)
    asyncio.run(_ask(stack, question_wav))
    assert NORMAL in ran and URGENT in ran  # free: partials while the user speaks, then the final
    ran.clear()
    monkeypatch.setattr(stack.asr_worker, "waiting", lambda: 1)  # as if other sessions' decodes were queued
    events = asyncio.run(_ask(stack, question_wav))
    assert ran and set(ran) == {URGENT}  # only the decodes that may be final ran
    finals = [e.text for e in events if isinstance(e, Transcript) and e.final]
    assert finals and "capital of france" in finals[0].lower()
    assert isinstance(events[-1], TurnEnd) and "paris" in events[-1].metrics.reply.lower()


def test_sessions_speaking_at_once_each_get_their_own_answer(stack, question_wav, tmp_path):
    from audio.wavio import write_wav

    other = tmp_path / "other.wav"
    write_wav(
        other, stack.tts.synthesize_all("What is the largest ocean on Earth?", deterministic=True), stack.tts.rate_hz
    )

    async def both():
        return await asyncio.gather(_ask(stack, question_wav), _ask(stack, other))

    first, second = asyncio.run(both())
    for events, heard, answer in ((first, "capital of france", "paris"), (second, "largest ocean", "pacific")):
        assert isinstance(events[-1], TurnEnd), [type(e).__name__ for e in events]
        assert heard in events[-1].metrics.transcript.lower() and answer in events[-1].metrics.reply.lower()


def test_a_budget_ended_reply_ends_on_a_sentence_and_tell_me_more_continues_it(stack):
    from voice.reply_policy import ends_sentence
    from voice.session_events import ReplyText

    cfg = load_config(None, ["reply.soft_tokens=8", "reply.soft_sentences=1"])

    async def main():
        session = VoiceSession(stack, cfg)
        turns = []
        for text in ("Why is the sky blue?", "Tell me more."):
            await session.user_text(text)
            turns.append(await collect_until(session, lambda e: isinstance(e, (TurnEnd, TurnFailed))))
            while not session.idle:  # the reply finished (a typed turn during one would stop it)
                await asyncio.sleep(0.05)
        history = list(session.conversation.turns)
        await session.close()
        return turns, history

    (first, second), history = asyncio.run(main())
    m1, m2 = first[-1].metrics, second[-1].metrics
    assert m1.shortened and m1.reply_end == "budget" and m1.reply_sentences == 1 and ends_sentence(m1.reply)
    assert "".join(e.text for e in first if isinstance(e, ReplyText)).strip() == m1.reply  # shown = spoken
    assert m1.reply_audio_s > 0.5 and 0 < m1.reply_tokens <= m1.tokens
    assert m2.continued and not m1.continued and m2.reply and ends_sentence(m2.reply)
    # one answer in the history, continued where it stopped: the user's "tell me more" is not a turn
    assert len(history) == 1 and history[0][0] == "Why is the sky blue?"
    assert history[0][1].startswith(m1.reply) and history[0][1].rstrip().endswith(m2.reply)
    assert m2.reply not in m1.reply
