"""Audio frames: timestamped mono float32 blocks at 16 kHz, and re-blocking into windows.

In: arbitrary-length sample blocks as a client or microphone delivers them. Out:
`AudioFrame`s of a fixed window (silero's 512 samples at 16 kHz = 32 ms), each stamped
with the perf_counter() time its last sample arrived. Costs a numpy concatenate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 16000


@dataclass(frozen=True)
class AudioFrame:
    """A block of mono float32 samples at 16 kHz; `t` is when its last sample arrived."""

    samples: np.ndarray
    t: float


class Reframer:
    """Cuts a stream of blocks into fixed windows of `size` samples."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, frame: AudioFrame) -> list[AudioFrame]:
        """Add a block; return the complete windows it finished."""
        self._pending = np.concatenate([self._pending, frame.samples.astype(np.float32)])
        n = len(self._pending) // self.size
        out = [AudioFrame(self._pending[i * self.size : (i + 1) * self.size], frame.t) for i in range(n)]
        self._pending = self._pending[n * self.size :]
        return out
