"""`voice bench`: turn latency of the streaming pipeline, fed in real time like a microphone.

In: WAV files (default: bundled questions synthesised once with piper and cached). Each is
fed as 20 ms frames paced by the clock, after 0.5 s of silence and followed by silence
until the turn ends. Out: a JSON report. The turn gap of a turn is the time the first
reply audio chunk reached the bench minus the time the last voiced sample was fed — the
latter from an energy scan of the source file, independent of the pipeline's endpointing,
so endpoint waiting counts. `--baseline` runs the batch `voice turn` path on the same
audio; its gap is asr + llm + tts with no endpoint wait (flattering the baseline).
"""
from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio.frames import last_voiced_sample, split_frames
from audio.wavio import AudioError, read_wav, write_wav
from voice.config import Config
from voice.models import cache_dir

log = logging.getLogger(__name__)

FRAME_MS = 20
LEAD_SILENCE_S = 0.5
TURN_TIMEOUT_S = 60.0
BENCH_QUESTIONS = [
    "What is the capital of France?",
    "How far away is the moon?",
    "Why is the sky blue?",
    "Tell me a fun fact about octopuses.",
    "How do I boil an egg?",
    "What is the tallest mountain in the world?",
    "Can you recommend a good book to read?",
    "What is photosynthesis?",
    "How many days are there in a leap year?",
    "What should I cook for dinner tonight?",
    "How do airplanes stay in the air?",
    "Tell me a short joke.",
]


@dataclass
class TurnRecord:
    """What the bench saw of one turn (times in perf_counter seconds)."""

    audio: str
    speech_end: float = 0.0
    first_audio: float = 0.0
    transcript: str = ""
    reply: str = ""
    metrics: dict = field(default_factory=dict)  # the pipeline's turn_end metrics
    stamps: dict = field(default_factory=dict)  # absolute stage times, in-process only

    @property
    def turn_gap_ms(self) -> float | None:
        """First reply audio minus the true end of speech."""
        return (self.first_audio - self.speech_end) * 1e3 if self.first_audio else None


def bench_audio(cfg: Config, tts=None) -> list[Path]:
    """The bundled questions as WAV files, synthesised with piper once and cached."""
    folder = cache_dir(cfg.models) / "bench-audio-fixed"  # piper without sampling noise
    paths = [folder / f"q{i:02d}.wav" for i in range(len(BENCH_QUESTIONS))]
    if all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    if tts is None:
        from voice.models import piper_path
        from voice.tts import PiperTTS

        tts = PiperTTS(piper_path(cfg.models))
    for path, text in zip(paths, BENCH_QUESTIONS):
        write_wav(path, tts.synthesize_all(text, deterministic=True), tts.rate_hz)
    return paths


def resolve_audio(items: list[str]) -> list[Path]:
    """WAV paths from files and directories."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(p.glob("*.wav"))
        elif p.is_file():
            paths.append(p)
        else:
            raise AudioError(f"no such audio file or directory: {p}")
    if not paths:
        raise AudioError(f"no .wav files in {', '.join(items)}")
    return paths


async def feed_realtime(send, audio: np.ndarray, done: asyncio.Event) -> float:
    """Feed lead silence, the audio, then silence until `done`, in paced 20 ms frames.

    Returns the perf_counter time the last voiced sample was fed.
    """
    lead = np.zeros(int(16000 * LEAD_SILENCE_S), dtype=np.float32)
    end_sample = len(lead) + last_voiced_sample(audio)
    signal = np.concatenate([lead, audio])
    silence = np.zeros(16000 * FRAME_MS // 1000, dtype=np.float32)
    t0, fed, speech_end = time.perf_counter(), 0, 0.0
    frames = split_frames(signal, FRAME_MS)
    i = 0
    deadline = t0 + len(signal) / 16000 + TURN_TIMEOUT_S
    while not done.is_set() and time.perf_counter() < deadline:
        frame = frames[i] if i < len(frames) else silence
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - time.perf_counter()))
        await send(frame)
        fed += len(frame)
        if not speech_end and fed >= end_sample:
            speech_end = time.perf_counter()
    return speech_end


async def run_inprocess_turn(stack, cfg: Config, path: Path) -> TurnRecord:
    """One turn through an in-process `VoiceSession`."""
    from voice.pipeline import AudioOut, Transcript, TurnEnd, TurnError, VoiceSession

    session = VoiceSession(stack, cfg)
    record, done = TurnRecord(str(path)), asyncio.Event()

    async def consume() -> None:
        while True:
            event = await session.events.get()
            if isinstance(event, AudioOut) and not record.first_audio:
                record.first_audio = time.perf_counter()
            elif isinstance(event, Transcript) and event.final:
                record.transcript = event.text
                if not event.text:
                    break
            elif isinstance(event, TurnEnd):
                m = event.metrics
                record.reply, record.metrics = m.reply, m.as_dict()
                record.stamps = {"endpoint": m.endpoint, "asr_final": m.asr_final, "llm_start": m.llm_start,
                                 "first_span": m.first_span, "first_audio": m.first_audio,
                                 "last_audio": m.last_audio}
                break
            elif isinstance(event, TurnError):
                log.warning("turn error: %s", event.message)
                break
        done.set()

    consumer = asyncio.ensure_future(consume())
    record.speech_end = await feed_realtime(lambda f: session.feed_audio(f), read_wav(path), done)
    consumer.cancel()
    await session.close()
    return record


def percentiles(values: list[float]) -> dict:
    """p50, p90 and max of a list (None when empty)."""
    if not values:
        return {"p50": None, "p90": None, "max": None}
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {"p50": round(statistics.median(values), 1), "p90": round(q[8], 1), "max": round(max(values), 1)}


def report(records: list[TurnRecord], baseline: list | None = None) -> dict:
    """The bench JSON: gaps, stage times after speech end, acceptance, per-turn results."""
    answered = [r for r in records if r.turn_gap_ms is not None]
    stages = {}
    for stage in ("endpoint", "asr_final", "first_span", "first_audio"):
        vals = [(r.stamps[stage] - r.speech_end) * 1e3 for r in answered if r.stamps.get(stage)]
        if not vals:  # through a server: its own figures, from its VAD's end of speech
            vals = [r.metrics[f"{stage}_ms"] for r in answered if r.metrics.get(f"{stage}_ms") is not None]
        stages[stage] = percentiles(vals)
    acc = [r.metrics["acceptance"] for r in answered if r.metrics]
    ks = [r.metrics["mean_draft_len"] for r in answered if r.metrics]
    out = {"turns": len(records), "answered": len(answered),
           "turn_gap_ms": percentiles([r.turn_gap_ms for r in answered]), "stages_ms": stages,
           "acceptance": round(statistics.mean(acc), 3) if acc else None,
           "mean_draft_len": round(statistics.mean(ks), 2) if ks else None,
           "results": [{"audio": r.audio, "transcript": r.transcript, "reply": r.reply,
                        "turn_gap_ms": None if r.turn_gap_ms is None else round(r.turn_gap_ms, 1)}
                       for r in records]}
    if baseline is not None:
        gaps = [b.total_ms for b in baseline]
        out["baseline"] = {"turn_gap_ms": percentiles(gaps),
                           "stages_ms": {s: percentiles([getattr(b, f"{s}_ms") for b in baseline])
                                         for s in ("asr", "llm", "tts")}}
        if out["turn_gap_ms"]["p50"]:
            out["gap_ratio_vs_baseline"] = round(out["turn_gap_ms"]["p50"] / out["baseline"]["turn_gap_ms"]["p50"], 3)
    return out


async def run_bench(cfg: Config, audio: list[str], turns: int, baseline: bool, server: str | None,
                    progress: bool = True) -> tuple[dict, list[TurnRecord]]:
    """Run the bench in-process (or against `server`); return the report and the records."""
    from concurrent.futures import ThreadPoolExecutor

    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
    stack = None
    if server is None or baseline:
        from voice.stack import load_stack

        stack = await asyncio.to_thread(load_stack, cfg)
    paths = resolve_audio(audio) if audio else bench_audio(cfg, stack.tts if stack else None)
    paths = [paths[i % len(paths)] for i in range(turns or len(paths))]
    if server is None:
        await run_inprocess_turn(stack, cfg, paths[0])  # warm-up, not counted
    records = []
    for i, path in enumerate(paths):
        if server is None:
            record = await run_inprocess_turn(stack, cfg, path)
        else:
            from web.client import run_server_turn

            record = await run_server_turn(server, path)
        records.append(record)
        if progress:
            gap = "no reply" if record.turn_gap_ms is None else f"{record.turn_gap_ms:.0f} ms"
            print(f"[{i + 1}/{len(paths)}] {path.name}: {record.transcript!r} -> gap {gap}", flush=True)
    base = None
    if baseline:
        from voice.turn import batch_turn

        base = [await asyncio.to_thread(batch_turn, read_wav(p), stack.asr, stack.llm, stack.tts) for p in paths]
    return report(records, base), records


def plot(records: list[TurnRecord], path: str) -> None:
    """Per-turn stage timeline (ms after speech end) and the turn-gap distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(records) + 2.5))
    colors = {"endpoint": "tab:gray", "asr_final": "tab:blue", "first_span": "tab:orange",
              "first_audio": "tab:green", "last_audio": "tab:olive"}
    for i, r in enumerate(records):
        for stage, color in colors.items():
            if r.stamps.get(stage):
                ms = (r.stamps[stage] - r.speech_end) * 1e3
                ax1.plot([ms], [i], "o", color=color, label=stage if i == 0 else None)
        if r.turn_gap_ms is not None:
            ax1.barh(i, r.turn_gap_ms, color="tab:green", alpha=0.25)
    ax1.set_yticks(range(len(records)), [Path(r.audio).stem for r in records])
    ax1.axvline(0, color="k", lw=0.8)
    ax1.set_xlabel("ms after end of speech")
    ax1.set_title("stage timeline per turn (bar = turn gap)")
    ax1.legend(loc="lower right", fontsize=8)
    gaps = [r.turn_gap_ms for r in records if r.turn_gap_ms is not None]
    ax2.hist(gaps, bins=max(5, len(gaps) // 2), color="tab:green")
    ax2.set_xlabel("turn gap (ms)")
    ax2.set_title(f"turn gap distribution (p50 {statistics.median(gaps):.0f} ms)" if gaps else "no turns")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
