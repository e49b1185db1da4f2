"""Local audio devices for `voice talk` and `voice devices`: the microphone's frame, device
checks with errors that say what to use instead, and `Speaker`, where reply audio goes.

In: a device index or name (None: the default), or a WAV path for the reply. Out: a
sounddevice stream at 16 kHz mono in 20 ms blocks (input) or at the voice's rate (output).
"""

from __future__ import annotations

import time

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from audio.wavio import write_wav
from commands.cli_args import DeviceError

FRAME = SAMPLE_RATE_HZ // 50  # 20 ms


def sounddevice():
    """The sounddevice module, or a `DeviceError` saying what to use instead (no PortAudio)."""
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
    sd = sounddevice()
    devices = sd.query_devices()
    if len(devices) == 0:
        return (
            "no audio devices found on this machine: use `voice talk --input-wav FILE` or `voice serve` and a browser"
        )
    return str(devices)


def check_device(sd, device, kind: str, rate_hz: int = SAMPLE_RATE_HZ) -> None:
    """Raise `DeviceError` (naming the flag to pass) unless `device` can do `kind` (input|output) mono at `rate_hz`."""
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
            sd = sounddevice()
            try:
                check_device(sd, device, "output", rate_hz)
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
