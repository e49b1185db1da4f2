"""`voice talk` and `voice devices`: the pipeline in-process on a local microphone and speaker.

In: microphone audio through sounddevice (16 kHz mono, 20 ms blocks), or a WAV played as
the microphone (`--input-wav`, paced in real time). Out: transcripts and replies printed,
reply audio to the speaker (or `--output-wav`), and each turn's gap. Without echo
cancellation on a bare sound card, speech heard while the reply plays is ignored unless
`--barge-in` is given (headphones).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Callable

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from audio.wavio import AudioError, read_wav, write_wav
from commands.cli_args import DeviceError
from voice.config import Config
from voice.session_events import AudioOut, ReplyText, Speech, Transcript, TurnEnd, TurnFailed, VadState, dispatch
from web.protocol import Decoder, ErrorReport

log = logging.getLogger(__name__)

FRAME = SAMPLE_RATE_HZ // 50  # 20 ms


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as err:  # PortAudio library missing
        raise DeviceError(
            f"audio devices unavailable ({err}); install libportaudio2, or use "
            "`voice talk --input-wav FILE` or `voice serve` with a browser"
        ) from None
    return sd


def list_devices() -> str:
    """A readable list of audio devices, or a clear line when there are none."""
    sd = _sounddevice()
    devices = sd.query_devices()
    if len(devices) == 0:
        return (
            "no audio devices found on this machine: use `voice talk --input-wav FILE` or `voice serve` and a browser"
        )
    return str(devices)


def _check_device(sd, device, kind: str, rate_hz: int = SAMPLE_RATE_HZ) -> None:
    try:
        sd.check_input_settings(
            device=device, samplerate=rate_hz, channels=1
        ) if kind == "input" else sd.check_output_settings(device=device, samplerate=rate_hz, channels=1)
    except Exception as err:  # PortAudioError or ValueError for a bad index/name
        flag = "--input-device" if kind == "input" else "--output-device"
        raise DeviceError(
            f"no usable {kind} device ({err}): pass {flag} (see `voice devices`), "
            f"{'use --input-wav FILE' if kind == 'input' else 'use --output-wav FILE'}, "
            "or use `voice serve` with a browser"
        ) from None


class Speaker:
    """Where reply audio goes at the voice's rate: a sounddevice stream, a WAV file, or nowhere (said once)."""

    def __init__(self, device, output_wav: str | None, need_device: bool, rate_hz: int) -> None:
        self.stream, self.output_wav, self.parts = None, output_wav, []
        self.rate_hz = rate_hz
        self.playing_until = 0.0
        if output_wav is None:
            sd = _sounddevice()
            try:
                _check_device(sd, device, "output", rate_hz)
                self.stream = sd.OutputStream(samplerate=rate_hz, channels=1, dtype="int16", device=device)
                self.stream.start()
            except DeviceError:
                if need_device:
                    raise
                print("(no output device: reply audio is not played; pass --output-wav FILE to keep it)")

    def play(self, samples: np.ndarray, rate_hz: int) -> None:
        """Queue reply audio (at the rate the speaker was opened with)."""
        if rate_hz != self.rate_hz:
            raise ValueError(f"reply audio at {rate_hz} Hz on a speaker opened at {self.rate_hz} Hz")
        now = time.perf_counter()
        self.playing_until = max(self.playing_until, now) + len(samples) / rate_hz
        if self.stream is not None:
            self.stream.write(samples.reshape(-1, 1))
        elif self.output_wav:
            self.parts.append(samples)

    def close(self) -> None:
        """Stop playback, write the WAV if asked."""
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
        if self.output_wav and self.parts:
            write_wav(self.output_wav, np.concatenate(self.parts), self.rate_hz)


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


async def talk(
    cfg: Config,
    input_device=None,
    output_device=None,
    input_wav: str | None = None,
    output_wav: str | None = None,
    barge_in: bool = False,
) -> int:
    """Run a conversation until Ctrl-C (microphone) or until the WAV's turns are answered."""
    from voice.pipeline import VoiceSession
    from voice.stack import load_stack

    audio = read_wav(input_wav) if input_wav else None
    sd = None
    if audio is None:
        sd = _sounddevice()
        _check_device(sd, input_device, "input")
    print("loading models…", flush=True)
    stack = await asyncio.to_thread(load_stack, cfg)
    speaker = Speaker(output_device, output_wav, need_device=output_device is not None, rate_hz=stack.tts.rate_hz)
    session = VoiceSession(stack, cfg)
    if not barge_in:
        session.echo_gate = lambda: session.replying or time.perf_counter() < speaker.playing_until
    printer = Printer(lambda rate_hz: speaker)

    async def show_events() -> None:
        while True:
            await printer.show(await session.events.get())

    shower = asyncio.ensure_future(show_events())
    try:
        if audio is not None:
            await _play_wav_as_mic(session, audio, printer)
        else:
            await _listen(sd, session, input_device)
    finally:
        shower.cancel()
        await session.close()
        speaker.close()
    return 0


async def _play_wav_as_mic(session, audio: np.ndarray, printer: Printer) -> None:
    """Feed the WAV in real time, then silence until its turn(s) end (at most 60 s)."""
    print("(playing the WAV as the microphone)", flush=True)
    signal = np.concatenate([np.zeros(SAMPLE_RATE_HZ // 2, np.float32), audio])
    t0, i = time.perf_counter(), 0
    deadline = t0 + len(signal) / SAMPLE_RATE_HZ + 60
    while time.perf_counter() < deadline:
        frame = signal[i * FRAME : (i + 1) * FRAME]
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.perf_counter()))
        await session.feed_audio(frame if len(frame) else np.zeros(FRAME, np.float32))
        if printer.turns_ended and i * FRAME > len(signal) and session.idle:
            return
    raise AudioError("no reply before the time limit: was there speech in the WAV?")


async def _listen(sd, session, device) -> None:
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue = asyncio.Queue()

    def callback(indata, frames, t, status) -> None:
        loop.call_soon_threadsafe(blocks.put_nowait, (indata[:, 0].copy(), time.perf_counter()))

    with sd.InputStream(
        samplerate=SAMPLE_RATE_HZ, channels=1, dtype="float32", blocksize=FRAME, device=device, callback=callback
    ):
        print("listening — speak; Ctrl-C to quit", flush=True)
        while True:
            samples, t = await blocks.get()
            await session.feed_audio(samples, t)


def talk_command(args, cfg: Config) -> None:
    """`voice talk` from parsed CLI arguments: in-process, or through `--server` (with the secret
    in the environment variable `--token-env` names, default `server.token_env`)."""
    from commands.cli_args import UsageError, env_token

    devices = [int(v) if v is not None and v.isdigit() else v for v in (args.input_device, args.output_device)]
    if not args.server:
        asyncio.run(talk(cfg, *devices, args.input_wav, args.output_wav, args.barge_in))
    elif not args.server.startswith(("ws://", "wss://")):
        raise UsageError(f"--server must be a ws:// or wss:// URL, got {args.server!r}")
    else:
        token = env_token(args.token_env or cfg.server.token_env)
        asyncio.run(talk_remote(args.server, *devices, args.input_wav, args.output_wav, token))


# ---- `voice talk --server`: the same conversation through a running server or a fleet -----------
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
    A server that no longer accepts connections raises `ServerLost` with the turns answered."""
    from web.client import ServerGoingAway, ServerLost, SessionDropped, open_session

    audio = read_wav(input_wav) if input_wav else None
    sd = None
    if audio is None:
        sd = _sounddevice()
        _check_device(sd, input_device, "input")
    frames: asyncio.Queue = asyncio.Queue()
    out = _RemoteOutput(output_device, output_wav)
    source = asyncio.ensure_future(
        _paced_wav(audio, frames, out) if audio is not None else _mic_frames(sd, input_device, frames)
    )
    try:
        while not out.finished.is_set():
            try:
                ws = await open_session(url, token=token)
            except ServerLost as err:
                raise ServerLost(f"{err} ({out.answered} turns answered before)") from None
            print(f"(connected to {url})", flush=True)
            try:
                await _converse(ws, frames, out, source)
            except ServerGoingAway:
                print("\n(the server is draining — reconnecting…)", flush=True)
            except SessionDropped:
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
    raises ServerGoingAway on 1001."""
    from websockets.exceptions import ConnectionClosed

    from web.client import ServerError, ServerGoingAway, SessionDropped, is_dropped, is_going_away

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
            raise ServerGoingAway("the worker is draining") from None
        if is_dropped(err):
            raise SessionDropped("the connection dropped") from None
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
