"""What `voice talk` shows and plays of a session's events, in process or through a server.

In: session events (`voice.session_events`, or `web.protocol.Decoder`'s decoding of a server's
messages). Out: the transcript and reply printed as they come, reply audio to a `Speaker`,
one line of figures per turn.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable

from commands.audio_io import Speaker
from voice.session_events import AudioOut, ReplyText, Speech, Transcript, TurnEnd, TurnFailed, VadState, dispatch
from web.protocol import ErrorReport


class Printer:
    """What `voice talk` shows and plays of a session's events, the same in process and through a
    server (decoded by `web.protocol.Decoder`): the transcript, the reply as it comes, reply audio
    to the speaker `speaker_for(rate_hz)` gives, each turn's gap and stage times."""

    def __init__(self, speaker_for: Callable[[int], Speaker]) -> None:
        self.speaker_for = speaker_for
        self.turns_ended = 0  # answered or failed

    async def show(self, event) -> None:
        """Print or play one event; reply audio has played (been queued) when this returns."""
        handlers = {
            VadState: self._heard,
            Transcript: self._transcript,
            ReplyText: lambda ev: print(ev.text, end="", flush=True),
            AudioOut: self._play,
            TurnEnd: self._turn_end,
            TurnFailed: self._error,
            ErrorReport: self._error,
        }
        played = dispatch(event, handlers)
        if played is not None:
            await played

    def _play(self, ev: AudioOut):
        chunk = ev.chunk
        return asyncio.to_thread(self.speaker_for(chunk.rate_hz).play, chunk.samples, chunk.rate_hz)

    def _heard(self, ev: VadState) -> None:
        if ev.state is Speech.START:
            print("(listening…)", flush=True)

    def _transcript(self, ev: Transcript) -> None:
        if ev.final and ev.text:
            print(f"you:       {ev.text}", flush=True)
            print("assistant: ", end="", flush=True)

    def _turn_end(self, ev: TurnEnd) -> None:
        m = ev.metrics.as_dict()
        if m.get("shortened"):
            print(" (shortened — say 'tell me more')", end="", flush=True)
        print("\n" + turn_line(m), flush=True)
        self.turns_ended += 1

    def _error(self, ev: TurnFailed | ErrorReport) -> None:
        print(f"\nerror: {ev.message}", file=sys.stderr, flush=True)
        self.turns_ended += isinstance(ev, TurnFailed)


def turn_line(m: dict) -> str:
    """One turn's figures from its `turn_end` metrics, e.g. `[turn gap 812.4 ms · transcript 301.2 ms · …]`."""
    parts = [
        f"turn gap {m.get('turn_gap_ms')} ms" + (" (interrupted)" if m.get("interrupted") else ""),
        f"transcript {m.get('asr_final_ms')} ms",
        f"first words {m.get('first_span_ms')} ms",
    ]
    if m.get("acceptance") is not None:
        parts.append(f"acceptance {m['acceptance']:.0%}")
    if m.get("mean_draft_len") is not None:
        parts.append(f"mean k {m['mean_draft_len']}")
    return "[" + " · ".join(parts) + "]"
