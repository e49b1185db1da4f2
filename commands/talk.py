"""`voice talk`: the pipeline in-process on a local microphone and speaker.

In: microphone audio through sounddevice (16 kHz mono, 20 ms blocks), or a WAV played as
the microphone (`--input-wav`, paced in real time). Out: transcripts and replies printed,
reply audio to the speaker (or `--output-wav`), and each turn's gap. Without echo
cancellation on a bare sound card, speech heard while the reply plays is ignored unless
`--barge-in` is given (headphones). With `--server`, `commands.talk_remote` holds the same
conversation through a running server.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from audio.wavio import AudioError, read_wav
from commands.audio_io import FRAME, Speaker, check_device, sounddevice
from commands.talk_printer import Printer
from voice.config import Config


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
        sd = sounddevice()
        check_device(sd, input_device, "input")
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
    from commands.talk_remote import talk_remote

    devices = [int(v) if v is not None and v.isdigit() else v for v in (args.input_device, args.output_device)]
    if not args.server:
        asyncio.run(talk(cfg, *devices, args.input_wav, args.output_wav, args.barge_in))
    elif not args.server.startswith(("ws://", "wss://")):
        raise UsageError(f"--server must be a ws:// or wss:// URL, got {args.server!r}")
    else:
        token = env_token(args.token_env or cfg.server.token_env)
        asyncio.run(talk_remote(args.server, *devices, args.input_wav, args.output_wav, token))
