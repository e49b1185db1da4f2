"""`voice talk --server`: the same conversation as `voice talk`, through a running server or fleet.

In: microphone audio (or a WAV paced in real time) as 16-bit PCM frames to the server's
`/ws`. Out: its messages decoded (`web.protocol.Decoder`) and shown by `Printer`, reply audio
to the speaker or `--output-wav`. A worker that drains (1001) or drops the connection gets a
new session; a server that no longer accepts connections raises `ServerLostError`.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from audio.wavio import AudioError, read_wav
from commands.audio_io import FRAME, Speaker, check_device, sounddevice
from commands.talk_printer import Printer
from web.protocol import Decoder


async def talk_remote(
    url: str,
    input_device=None,
    output_device=None,
    input_wav: str | None = None,
    output_wav: str | None = None,
    token: str | None = None,
) -> int:
    """Stream the microphone (or a WAV) to a server's `/ws`; print and play what comes back. A
    worker that drains closes with 1001 at a turn boundary (or dies, dropping the connection):
    a new session opens (through a balancer, on another worker) and the microphone carries on.
    A server that no longer accepts connections raises `ServerLostError` with the turns answered."""
    from web.client import ServerGoingAwayError, ServerLostError, SessionDroppedError, open_session

    audio = read_wav(input_wav) if input_wav else None
    sd = None
    if audio is None:
        sd = sounddevice()
        check_device(sd, input_device, "input")
    frames: asyncio.Queue = asyncio.Queue()
    out = _RemoteOutput(output_device, output_wav)
    source = asyncio.ensure_future(
        _paced_wav(audio, frames, out) if audio is not None else _mic_frames(sd, input_device, frames)
    )
    try:
        while not out.finished.is_set():
            try:
                ws = await open_session(url, token=token)
            except ServerLostError as err:
                raise ServerLostError(f"{err} ({out.answered} turns answered before)") from None
            print(f"(connected to {url})", flush=True)
            try:
                await _converse(ws, frames, out, source)
            except ServerGoingAwayError:
                print("\n(the server is draining — reconnecting…)", flush=True)
            except SessionDroppedError:
                print("\n(the connection dropped — reconnecting…)", flush=True)
    finally:
        source.cancel()
        out.close()
    return 0


class _RemoteOutput:
    """The server's messages decoded and shown as `voice talk` shows an in-process session's events
    (the speaker opened at the first reply audio's rate); `finished` is set once a WAV's question
    was fed and answered."""

    def __init__(self, device, output_wav: str | None) -> None:
        self.device, self.output_wav, self.speaker = device, output_wav, None
        self.printer = Printer(self._speaker)
        self.decoder = Decoder()
        self.fed_all = False
        self.finished = asyncio.Event()

    @property
    def answered(self) -> int:
        return self.printer.turns_ended

    def _speaker(self, rate_hz: int) -> Speaker:
        if self.speaker is None:
            self.speaker = Speaker(self.device, self.output_wav, need_device=self.device is not None, rate_hz=rate_hz)
        return self.speaker

    async def on_message(self, message) -> None:
        """Show one message from the server."""
        await self.printer.show(self.decoder.decode(message))
        self._check_done()

    def wav_fed(self) -> None:
        self.fed_all = True
        self._check_done()

    def _check_done(self) -> None:
        if self.fed_all and self.answered:
            self.finished.set()

    def close(self) -> None:
        if self.speaker is not None:
            self.speaker.close()


async def _converse(ws, frames: asyncio.Queue, out: _RemoteOutput, source: asyncio.Task) -> None:
    """One session: frames out, events in, until `out.finished` (or the audio source fails);
    raises ServerGoingAwayError on 1001."""
    from websockets.exceptions import ConnectionClosed

    from web.client import ServerError, ServerGoingAwayError, SessionDroppedError, is_dropped, is_going_away

    async def send() -> None:
        while True:
            await ws.send((await frames.get()).tobytes())

    async def receive() -> None:
        while True:  # recv() raises ConnectionClosed with the server's close code
            await out.on_message(await ws.recv())

    tasks = [
        asyncio.ensure_future(send()),
        asyncio.ensure_future(receive()),
        asyncio.ensure_future(out.finished.wait()),
    ]
    try:
        await asyncio.wait([*tasks, source], return_when=asyncio.FIRST_COMPLETED)
        for task in (*tasks[:2], source):
            if task.done() and task.exception():
                raise task.exception()
    except ConnectionClosed as err:
        if is_going_away(err):
            raise ServerGoingAwayError("the worker is draining") from None
        if is_dropped(err):
            raise SessionDroppedError("the connection dropped") from None
        raise ServerError(f"the server closed the session ({err}); is it still running?") from None
    finally:
        for task in tasks:
            task.cancel()
        if out.finished.is_set():
            await ws.close()


async def _paced_wav(audio: np.ndarray, frames: asyncio.Queue, out: _RemoteOutput) -> None:
    """The WAV as a microphone: half a second of silence, the WAV, then silence (60 s at most)."""
    signal = np.concatenate([np.zeros(SAMPLE_RATE_HZ // 2, np.float32), audio])
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    t0, i = time.perf_counter(), 0
    while i * FRAME < len(pcm) + 60 * SAMPLE_RATE_HZ:
        frame = pcm[i * FRAME : (i + 1) * FRAME]
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.perf_counter()))
        frames.put_nowait(frame if len(frame) else np.zeros(FRAME, "<i2"))
        if i * FRAME >= len(pcm) and not out.fed_all:
            out.wav_fed()
    raise AudioError("no reply before the time limit: was there speech in the WAV?")


async def _mic_frames(sd, device, frames: asyncio.Queue) -> None:
    loop = asyncio.get_running_loop()

    def callback(indata, n, t, status) -> None:
        pcm = (np.clip(indata[:, 0], -1, 1) * 32767).astype("<i2")
        loop.call_soon_threadsafe(frames.put_nowait, pcm)

    with sd.InputStream(
        samplerate=SAMPLE_RATE_HZ, channels=1, dtype="float32", blocksize=FRAME, device=device, callback=callback
    ):
        print("listening — speak; Ctrl-C to quit", flush=True)
        await asyncio.Event().wait()
