"""`voice bench --hesitation`: questions with a pause where the words so far are plainly unfinished.

In: bundled (first half, second half) pairs. Each sentence is spoken once by piper (so the
prosody is that of one sentence), cut at the word boundary between the halves, and
`pause_ms` of silence goes in there; the audio is cached as 16 kHz WAVs. Each clip is fed in
real time to a fresh `VoiceSession`, and events are collected until the clip has been fed,
the reply (if any) has ended and `QUIET_S` passed with nothing new. Out: per run, the final
transcripts, the turns answered, whether it was a split turn or a cut-in, and the turn gap
after the true end of the whole question; a JSON summary overall and by pause length.
Cost: per run the clip's duration plus the reply and `QUIET_S`; piper synthesises each question once.

piper 1.8 exposes phoneme alignments only by patching the voice in memory with the `onnx`
package (`piper-tts[alignment]`), which is not a dependency here; the boundary is found by
aligning the halves, spoken alone, to the whole sentence instead (`word_boundary`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audio.frames import SAMPLE_RATE_HZ
from audio.wavio import pcm16_to_float, read_wav, resample, write_wav
from commands.pacing import feed_marked
from commands.speech_end import last_voiced_sample
from commands.summary import percentiles
from voice.config import Config
from voice.models import cache_dir

HESITATION_QUESTIONS = [
    ("Can you tell me the name of the", "largest ocean?"),
    ("What is the best way to", "learn to swim?"),
    ("I would like to know how", "volcanoes form."),
    ("Which country has the", "most people?"),
    ("How long does it take to", "boil an egg?"),
    ("What is the capital city of", "Italy?"),
]
DEFAULT_PAUSES_MS = (400, 700, 900)
QUIET_S = 1.5  # nothing new for this long after the clip and any reply: the run is over
RUN_TIMEOUT_S = 30.0  # after the clip, at most
AGREE_MS = 40  # forward and backward alignments closer than this are averaged
SEARCH_MS = 30  # the cut moves to the quietest 10 ms within this of the aligned boundary


@dataclass(frozen=True)
class HesitationClip:
    """One question with a pause: 16 kHz audio and where things are in it (sample indices)."""

    name: str
    first: str
    second: str
    pause_ms: int
    pause_at: int  # the pause starts here (the end of the first half)
    second_at: int  # the second half starts here
    end_sample: int  # just past the last voiced sample of the question
    audio: np.ndarray = field(repr=False, compare=False)


def log_spectrum(
    samples: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ, hop_ms: int = 10, window_ms: int = 25, bands: int = 32
) -> np.ndarray:
    """Log power in `bands` log-spaced bands per frame (frames × bands); frame k spans
    samples [k·hop, k·hop + window). Features for aligning two renditions of the same words."""
    hop, win = rate_hz * hop_ms // 1000, rate_hz * window_ms // 1000
    n = (len(samples) - win) // hop + 1
    if n <= 0:
        return np.zeros((0, bands))
    index = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    spectrum = np.abs(np.fft.rfft(np.asarray(samples, np.float64)[index] * np.hanning(win), axis=1)) ** 2
    edges = np.unique(np.geomspace(2, spectrum.shape[1] - 1, bands + 1).astype(int))
    return np.log(np.add.reduceat(spectrum, edges[:-1], axis=1) + 1e-8)


def aligned_end(query: np.ndarray, ref: np.ndarray) -> int:
    """The frame of `ref` where all of `query` ends, by dynamic time warping anchored at both
    starts with a free end in `ref`: `D[i,j] = |q_i - r_j| + min(D[i-1,j-1], D[i-1,j], D[i,j-1])`,
    the end is `argmin_j D[n,j] / (n + j)` (normalised by path length, so no prefix is favoured)."""
    cost = np.sqrt(((query[:, None, :] - ref[None, :, :]) ** 2).sum(axis=-1))
    n, m = cost.shape
    d = np.full((n + 1, m + 1), np.inf)
    d[0, 0] = 0.0
    for i in range(1, n + 1):
        diag_up = np.minimum(d[i - 1, :-1], d[i - 1, 1:]) + cost[i - 1]
        row = d[i]
        for j in range(1, m + 1):
            row[j] = min(diag_up[j - 1], row[j - 1] + cost[i - 1, j - 1])
    return int(np.argmin(d[n, 1:] / (n + np.arange(1, m + 1))))


def first_voiced_sample(samples: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Index of the first voiced sample (`last_voiced_sample` run backwards)."""
    return len(samples) - last_voiced_sample(np.ascontiguousarray(samples[::-1]), rate_hz)


def word_boundary(sentence: np.ndarray, first: np.ndarray, second: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """The sample of `sentence` where the words of `first` end and those of `second` begin
    (each half spoken alone by the same voice). The end of `first` is aligned forwards onto
    the sentence, the start of `second` backwards; close estimates are averaged, else the
    backward one wins (a half spoken alone stretches its last word, not its first). The cut
    then moves to the quietest 10 ms within `SEARCH_MS`, so no sound is split."""
    hop, win = rate_hz // 100, rate_hz * 25 // 1000
    whole = log_spectrum(sentence, rate_hz)
    forward = aligned_end(log_spectrum(first[: last_voiced_sample(first, rate_hz)], rate_hz), whole) * hop + win
    tail = second[first_voiced_sample(second, rate_hz) :][::-1]
    back = aligned_end(log_spectrum(tail, rate_hz), log_spectrum(sentence[::-1], rate_hz))
    backward = len(sentence) - (back * hop + win)
    agree = abs(forward - backward) <= rate_hz * AGREE_MS // 1000
    return quietest_point(sentence, (forward + backward) // 2 if agree else backward, rate_hz)


def quietest_point(samples: np.ndarray, near: int, rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """The centre of the quietest 10 ms window (5 ms steps) within `SEARCH_MS` of `near`."""
    step, win, reach = rate_hz // 200, rate_hz // 100, rate_hz * SEARCH_MS // 1000
    starts = np.arange(max(0, near - reach - win // 2), min(len(samples) - win, near + reach - win // 2) + 1, step)
    if len(starts) == 0:
        return int(np.clip(near, 0, len(samples)))
    energy = [float(np.mean(np.square(samples[s : s + win], dtype=np.float64))) for s in starts]
    return int(starts[int(np.argmin(energy))] + win // 2)


def insert_pause(sentence: np.ndarray, at: int, pause_ms: int, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """`sentence` with `pause_ms` of digital silence inserted before sample `at`."""
    pause = np.zeros(rate_hz * pause_ms // 1000, dtype=np.float32)
    return np.concatenate([sentence[:at].astype(np.float32), pause, sentence[at:].astype(np.float32)])


def _speak(tts, text: str) -> np.ndarray:
    return resample(pcm16_to_float(tts.synthesize_all(text, deterministic=True)), tts.rate_hz, SAMPLE_RATE_HZ)


def _sentences(folder: Path, pairs: list[tuple[str, str]], tts_factory) -> list[tuple[np.ndarray, int]]:
    """Each pair's whole sentence (16 kHz, from the cache or piper) and its boundary sample."""
    index_path = folder / "boundaries.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    out, tts = [], None
    for i, (first, second) in enumerate(pairs):
        key, text, wav = f"q{i:02d}", f"{first} {second}", folder / f"q{i:02d}.wav"
        if index.get(key, {}).get("text") != text or not wav.is_file():
            tts = tts or tts_factory()
            sentence = _speak(tts, text)
            write_wav(wav, sentence, SAMPLE_RATE_HZ)
            index[key] = {"text": text, "cut": word_boundary(sentence, _speak(tts, first), _speak(tts, second))}
            index_path.write_text(json.dumps(index, indent=1))
        out.append((read_wav(wav), int(index[key]["cut"])))
    return out


def hesitation_audio(
    cfg: Config, tts=None, pauses_ms=DEFAULT_PAUSES_MS, questions: int | None = None
) -> list[HesitationClip]:
    """The hesitation clips, question by question and pause by pause; WAVs cached under the
    bench cache dir (`bench-hesitation/`, with the cut of each sentence in boundaries.json)."""
    folder = cache_dir(cfg.models) / "bench-hesitation"
    folder.mkdir(parents=True, exist_ok=True)

    def load_tts():
        from voice.models import piper_path
        from voice.tts import PiperTTS

        return tts or PiperTTS(piper_path(cfg.models))

    pairs = HESITATION_QUESTIONS[:questions]
    clips = []
    for i, ((first, second), (sentence, cut)) in enumerate(zip(pairs, _sentences(folder, pairs, load_tts))):
        for pause_ms in pauses_ms:
            audio = insert_pause(sentence, cut, pause_ms)
            path = folder / f"q{i:02d}-pause{pause_ms}.wav"
            if not path.is_file():
                write_wav(path, audio, SAMPLE_RATE_HZ)  # to listen to; the runs use `audio`
            second_at = cut + SAMPLE_RATE_HZ * pause_ms // 1000
            clips.append(
                HesitationClip(path.stem, first, second, pause_ms, cut, second_at, last_voiced_sample(audio), audio)
            )
    return clips


@dataclass(frozen=True)
class Verdict:
    """What a hesitation run amounts to."""

    answered: int  # turns the pipeline committed to answer (non-empty final transcripts)
    split_turn: bool  # more than one answered, or the first committed before the second half
    cut_in: bool  # reply audio arrived before the last voiced sample of the question was fed
    turn_gap_ms: float | None  # first reply starting after the true end, minus that end


def classify(
    finals: list[tuple[str, float]], reply_starts: list[float], second_at_t: float, last_voiced_t: float
) -> Verdict:
    """Judge a run from its timeline (perf_counter seconds; 0.0 = that sample was never fed)."""
    committed = [t for text, t in finals if text.strip()]
    second = second_at_t or float("inf")
    end = last_voiced_t or float("inf")
    split = len(committed) > 1 or (bool(committed) and committed[0] < second)
    after = [t for t in reply_starts if t >= end]
    gap = round((after[0] - end) * 1e3, 1) if after else None
    return Verdict(len(committed), split, any(t < end for t in reply_starts), gap)


@dataclass
class HesitationRun:
    """The timeline one run produced (perf_counter seconds, as received by the bench)."""

    clip: HesitationClip
    finals: list[tuple[str, float]] = field(default_factory=list)
    reply_starts: list[float] = field(default_factory=list)  # each reply's first audio chunk
    fed_at: dict[str, float] = field(default_factory=dict)  # pause, second_half, last_voiced, audio_end


async def _collect(session, run: HesitationRun, done: asyncio.Event) -> None:
    """Record events until the clip is fed, no utterance or answered turn is open, and
    `QUIET_S` passed with no event."""
    from voice.session_events import AudioOut, AudioStart, Speech, Transcript, TurnEnd, TurnFailed, VadState

    open_turns, speaking, last, new_reply = 0, False, time.perf_counter(), False
    while True:
        try:
            event = await asyncio.wait_for(session.events.get(), 0.1)
        except asyncio.TimeoutError:
            event = None
        now = time.perf_counter()
        if event is not None:
            last = now
        if isinstance(event, VadState):
            speaking = event.state is Speech.START
        elif isinstance(event, Transcript) and event.final:
            run.finals.append((event.text, now))
            open_turns += bool(event.text.strip())
        elif isinstance(event, AudioStart):
            new_reply = True
        elif isinstance(event, AudioOut) and new_reply:
            run.reply_starts.append(now)
            new_reply = False
        elif isinstance(event, (TurnEnd, TurnFailed)):
            open_turns = max(0, open_turns - 1)
        fed = run.fed_at.get("audio_end")
        if fed is not None and not speaking and open_turns == 0 and now - max(last, fed) >= QUIET_S:
            done.set()
            return


async def run_clip(stack, cfg: Config, clip: HesitationClip) -> HesitationRun:
    """Feed one clip in real time to a fresh session and record what came back."""
    from voice.pipeline import VoiceSession

    session, run, done = VoiceSession(stack, cfg), HesitationRun(clip), asyncio.Event()
    marks = {
        "pause": clip.pause_at,
        "second_half": clip.second_at,
        "last_voiced": clip.end_sample,
        "audio_end": len(clip.audio),
    }
    collector = asyncio.ensure_future(_collect(session, run, done))
    try:
        await feed_marked(lambda f: session.feed_audio(f), clip.audio, done, marks, run.fed_at, RUN_TIMEOUT_S)
    finally:
        collector.cancel()
        await session.close()
    return run


def run_result(run: HesitationRun) -> dict:
    """One run's entry in the report."""
    clip, fed = run.clip, run.fed_at
    verdict = classify(run.finals, run.reply_starts, fed.get("second_half", 0.0), fed.get("last_voiced", 0.0))
    committed = [t for text, t in run.finals if text.strip()]
    first_commit = (committed[0] - fed["second_half"]) * 1e3 if committed and "second_half" in fed else None
    return {
        "audio": clip.name,
        "first": clip.first,
        "second": clip.second,
        "pause_ms": clip.pause_ms,
        "finals": [text for text, _ in run.finals],
        "answered": verdict.answered,
        "split_turn": verdict.split_turn,
        "cut_in": verdict.cut_in,
        "turn_gap_ms": verdict.turn_gap_ms,
        # when the first answered turn was committed, after the second half began (< 0: in the pause)
        "first_commit_ms": None if first_commit is None else round(first_commit, 1),
    }


def hesitation_report(results: list[dict]) -> dict:
    """Counts over `run_result` entries, overall and by pause length, with the entries."""
    by_pause: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: r["pause_ms"]):
        group = by_pause.setdefault(str(r["pause_ms"]), {"runs": 0, "split_turns": 0, "cut_ins": 0})
        group["runs"] += 1
        group["split_turns"] += r["split_turn"]
        group["cut_ins"] += r["cut_in"]
    gaps = [r["turn_gap_ms"] for r in results if r["turn_gap_ms"] is not None]
    return {
        "questions": len({(r["first"], r["second"]) for r in results}),
        "runs": len(results),
        "split_turns": sum(r["split_turn"] for r in results),
        "cut_ins": sum(r["cut_in"] for r in results),
        "unanswered": sum(r["answered"] == 0 for r in results),
        "turn_gap_ms": percentiles(gaps),
        "by_pause_ms": by_pause,
        "results": results,
    }


def hesitation_summary(report: dict) -> dict:
    """`hesitation_report` without the per-run entries."""
    return {k: v for k, v in report.items() if k != "results"}


async def run_hesitation(stack, cfg: Config, clips: list[HesitationClip], progress: bool = True) -> dict:
    """Every clip through a fresh session; the `hesitation` section of the bench report."""
    results = []
    for i, clip in enumerate(clips):
        result = run_result(await run_clip(stack, cfg, clip))
        results.append(result)
        if progress:
            flags = ", ".join(k for k in ("split_turn", "cut_in") if result[k]) or "one turn"
            print(
                f"[hesitation {i + 1}/{len(clips)}] {clip.name}: {result['finals']} -> {flags}, "
                f"gap {result['turn_gap_ms']} ms",
                flush=True,
            )
    return hesitation_report(results)
