"""Real-time pacing: feed a whole clip like a microphone would deliver it.

In: mono float32 samples at 16 kHz and an async `send(frame)`. Out: the clip fed as 20 ms
frames paced by the clock, after `LEAD_SILENCE_S` of silence and followed by silence until
the caller's `done` event is set; the perf_counter time at which named sample indices
were fed. Cost: the clip's own duration (plus the wait for `done`), one sleep per frame.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from commands.speech_end import last_voiced_sample

FRAME_MS = 20
LEAD_SILENCE_S = 0.5
TURN_TIMEOUT_S = 60.0


def split_frames(samples: np.ndarray, frame_ms: int = 20, rate_hz: int = SAMPLE_RATE_HZ) -> list[np.ndarray]:
    """Cut a whole signal into `frame_ms` blocks (the last one may be shorter)."""
    step = rate_hz * frame_ms // 1000
    return [samples[i : i + step] for i in range(0, len(samples), step)]


async def feed_marked(
    send,
    audio: np.ndarray,
    done: asyncio.Event,
    marks: dict[str, int],
    fed_at: dict[str, float] | None = None,
    timeout_s: float = TURN_TIMEOUT_S,
) -> dict[str, float]:
    """Feed lead silence, the audio, then silence until `done`, in paced 20 ms frames.

    `marks` names sample indices of `audio`; returns (and fills `fed_at` as it goes with)
    the perf_counter time each was fed. Gives up `timeout_s` after the audio.
    """
    lead = np.zeros(int(SAMPLE_RATE_HZ * LEAD_SILENCE_S), dtype=np.float32)
    pending = sorted((len(lead) + sample, name) for name, sample in marks.items())
    fed_at = {} if fed_at is None else fed_at
    signal = np.concatenate([lead, audio])
    silence = np.zeros(SAMPLE_RATE_HZ * FRAME_MS // 1000, dtype=np.float32)
    frames = split_frames(signal, FRAME_MS)
    t0, fed, i = time.perf_counter(), 0, 0
    deadline = t0 + len(signal) / SAMPLE_RATE_HZ + timeout_s
    while not done.is_set() and time.perf_counter() < deadline:
        frame = frames[i] if i < len(frames) else silence
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - time.perf_counter()))
        await send(frame)
        fed += len(frame)
        while pending and fed >= pending[0][0]:
            fed_at[pending.pop(0)[1]] = time.perf_counter()
    return fed_at


async def feed_realtime(send, audio: np.ndarray, done: asyncio.Event) -> float:
    """Feed `audio` like a microphone (see `feed_marked`); returns the perf_counter time the
    last voiced sample (`last_voiced_sample`) was fed, or 0.0 if it never was."""
    fed_at = await feed_marked(send, audio, done, {"last_voiced": last_voiced_sample(audio)})
    return fed_at.get("last_voiced", 0.0)
