"""`voice bench`: turn latency of the streaming pipeline, fed in real time like a microphone.

In: WAV files (default: bundled questions synthesised once with piper and cached). Each is
fed as 20 ms frames paced by the clock (`commands.pacing`), after 0.5 s of silence and followed by silence
until the turn ends. Out: a JSON report. The turn gap of a turn is the time the first
reply audio chunk reached the bench minus the time the last voiced sample was fed — the
latter from `commands.speech_end.last_voiced_sample`, a scan of the source file against its noise
floor (so background noise after the question does not count as speech), independent of
the pipeline's endpointing, so endpoint waiting counts. `--baseline` runs the batch `voice turn` path on the same
audio; its gap is asr + llm + tts with no endpoint wait (flattering the baseline).
`--compare section.key=value` runs the same audio again on the loaded models with sessions
built from the overridden config; `--hesitation` adds questions with a pause mid-sentence
(`commands.hesitation`). The report names the machine (CPU, cores, SIMD flags); per turn the reply's sentences, tokens,
audio seconds and how it ended (the reply policy), and p50/p90 of the reply audio seconds.
Cost: the audio's own duration per turn plus the reply, and loading the models once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from audio.wavio import AudioError, read_wav, write_wav
from commands.hesitation import DEFAULT_PAUSES_MS
from commands.machine import machine_info
from commands.summary import percentiles
from commands.turn_record import STAGES, TurnRecord, run_inprocess_turn
from voice.config import Config, ConfigError
from voice.errors import VoiceError
from voice.models import cache_dir
from voice.reply_policy import ends_sentence

log = logging.getLogger(__name__)

REPLY_FIELDS = ("reply_sentences", "reply_tokens", "reply_audio_s", "reply_end", "shortened")  # per turn, from turn_end

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


PREDICTIONS = ("released", "late", "dropped", "none")


def prediction_of(record: TurnRecord) -> dict:
    """How the turn's prediction went (`voice.reply_flow.Prediction`) and when it started and had
    its first audio, in ms after the end of speech (negative: before it)."""
    ms = {}
    for stage in ("prediction_started", "prediction_audio_ready"):
        if record.stamps.get(stage) and record.last_voiced_fed_t:
            ms[stage] = round((record.stamps[stage] - record.last_voiced_fed_t) * 1e3, 1)
        else:
            ms[stage] = record.metrics.get(f"{stage}_ms")
    return {
        "prediction": record.metrics.get("prediction") or None,
        "prediction_started_ms": ms["prediction_started"],
        "prediction_audio_ready_ms": ms["prediction_audio_ready"],
    }


def report(records: list[TurnRecord], baseline: list | None = None) -> dict:
    """The bench JSON: gaps, stage times after speech end, acceptance, per-turn results."""
    answered = [r for r in records if r.turn_gap_ms is not None]
    per_turn = [r.stages_ms() for r in records]
    stages = {
        s: percentiles([st[s] for r, st in zip(records, per_turn) if r.turn_gap_ms is not None and st[s] is not None])
        for s in STAGES
    }
    acc = [r.metrics["acceptance"] for r in answered if r.metrics]
    ks = [r.metrics["mean_draft_len"] for r in answered if r.metrics]
    audio_s = [r.metrics["reply_audio_s"] for r in answered if r.metrics.get("reply_audio_s") is not None]
    out = {
        "turns": len(records),
        "answered": len(answered),
        "turn_gap_ms": percentiles([r.turn_gap_ms for r in answered]),
        "stages_ms": stages,
        "acceptance": round(statistics.mean(acc), 3) if acc else None,
        "mean_draft_len": round(statistics.mean(ks), 2) if ks else None,
        "reply_audio_s": percentiles(audio_s),
        "replies_shortened": sum(bool(r.metrics.get("shortened")) for r in answered),
        "replies_ending_a_sentence": sum(ends_sentence(r.reply) for r in answered),
        "predictions": {p: sum(r.metrics.get("prediction") == p for r in answered) for p in PREDICTIONS},
        "results": [
            {
                "audio": r.audio,
                "transcript": r.transcript,
                "reply": r.reply,
                **{k: r.metrics.get(k) for k in REPLY_FIELDS},
                "turn_gap_ms": None if r.turn_gap_ms is None else round(r.turn_gap_ms, 1),
                "stages_ms": st,
                **prediction_of(r),
            }
            for r, st in zip(records, per_turn)
        ],
    }
    if baseline is not None:
        gaps = [b.total_ms for b in baseline]
        out["baseline"] = {
            "turn_gap_ms": percentiles(gaps),
            "stages_ms": {s: percentiles([getattr(b, f"{s}_ms") for b in baseline]) for s in ("asr", "llm", "tts")},
        }
        if out["turn_gap_ms"]["p50"]:
            out["gap_ratio_vs_baseline"] = round(out["turn_gap_ms"]["p50"] / out["baseline"]["turn_gap_ms"]["p50"], 3)
    return out


def compare_report(main: dict, compared: dict, overrides: list[str]) -> dict:
    """The `compare` section: the compared run's gaps and stages, and main p50 / compared p50
    (below 1: the main config answers sooner)."""
    a, b = main["turn_gap_ms"]["p50"], compared["turn_gap_ms"]["p50"]
    return {
        "set": list(overrides),
        "turns": compared["turns"],
        "answered": compared["answered"],
        "turn_gap_ms": compared["turn_gap_ms"],
        "stages_ms": compared["stages_ms"],
        "predictions": compared["predictions"],
        "p50_ratio": round(a / b, 3) if a is not None and b else None,
    }


@dataclass(frozen=True)
class BenchPlan:
    """What one `voice bench` runs."""

    audio: tuple[str, ...] = ()  # WAV files or folders; empty: the bundled questions
    turns: int | None = None  # None: one per audio file
    baseline: bool = False
    server: str | None = None  # drive a running server instead of in-process sessions
    main: bool = True  # the question set (False: --hesitation-only)
    hesitation: bool = False
    pauses_ms: tuple[int, ...] = DEFAULT_PAUSES_MS
    questions: int | None = None  # hesitation questions; None: all
    compare_set: tuple[str, ...] = ()  # the --compare overrides, as given
    compare_cfg: Config | None = None  # the config they make
    progress: bool = True


class BenchCutError(VoiceError, RuntimeError):
    """`voice bench --server` stopped by the server (gone, or a turn failed); `records`: the turns before."""

    def __init__(self, message: str, records: list[TurnRecord]) -> None:
        super().__init__(message)
        self.records = records


def _say(plan: BenchPlan, text: str) -> None:
    if plan.progress:
        print(text, flush=True)


async def _main_set(stack, cfg: Config, plan: BenchPlan, paths: list[Path]) -> list[TurnRecord]:
    records = []
    for i, path in enumerate(paths):
        if plan.server is None:
            record = await run_inprocess_turn(stack, cfg, path)
        else:
            from commands.turn_record import run_server_turn
            from web.client import ServerError

            try:
                record = await run_server_turn(plan.server, path)
            except ServerError as err:  # the server went away or failed the turn: report what was done
                raise BenchCutError(f"{err} after {len(records)} of {len(paths)} turns", records) from None
        records.append(record)
        gap = "no reply" if record.turn_gap_ms is None else f"{record.turn_gap_ms:.0f} ms"
        _say(plan, f"[{i + 1}/{len(paths)}] {path.name}: {record.transcript!r} -> gap {gap}")
    return records


# what the loaded models read when they load: a compared config may not change it (None: the whole section)
LOAD_TIME: dict[str, tuple[str, ...] | None] = {
    "models": None,
    "llm": None,
    "decode": None,
    "asr": (
        "language", "beam_size", "compute_type", "threads", "min_window_frames", "pad_frames",
        "no_speech_threshold", "log_prob_threshold", "loop_retry_window_frames",
        "loop_retry_temperature_step", "loop_retry_max_temperature", "max_batch",
    ),
    "tts": ("length_scale",),
}  # fmt: skip


def check_compare(cfg: Config, compared: Config) -> None:
    """A compared config must share the loaded models: it may not change what they read at load
    (`LOAD_TIME`), or the comparison would silently run the loaded settings twice."""
    for section, keys in LOAD_TIME.items():
        a, b = getattr(cfg, section), getattr(compared, section)
        for f in dataclasses.fields(a):
            if (keys is None or f.name in keys) and getattr(a, f.name) != getattr(b, f.name):
                raise ConfigError(
                    f"--compare cannot change {section}.{f.name}: it takes effect when the models load and the "
                    f"compared sessions share the loaded ones; run a second `voice bench --set {section}.{f.name}=…`"
                )


async def run_bench(cfg: Config, plan: BenchPlan) -> tuple[dict, list[TurnRecord]]:
    """Run the bench in-process (or against `plan.server`); return the report and the records."""
    from concurrent.futures import ThreadPoolExecutor

    from commands.hesitation import hesitation_audio, run_hesitation

    if plan.compare_cfg is not None:
        check_compare(cfg, plan.compare_cfg)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
    stack = None
    if plan.server is None or plan.baseline:
        from voice.stack import load_stack

        stack = await asyncio.to_thread(load_stack, cfg)
    paths = resolve_audio(list(plan.audio)) if plan.audio else bench_audio(cfg, stack.tts if stack else None)
    paths = [paths[i % len(paths)] for i in range(plan.turns or len(paths))]
    if plan.server is None:
        await run_inprocess_turn(stack, cfg, paths[0])  # warm-up, not counted
    out, records = {"machine": machine_info()}, []
    if plan.main:
        records = await _main_set(stack, cfg, plan, paths)
        out.update(report(records, await _baseline(stack, cfg, paths) if plan.baseline else None))
    clips = hesitation_audio(cfg, stack.tts, plan.pauses_ms, plan.questions) if plan.hesitation else []
    if clips:
        out["hesitation"] = await run_hesitation(stack, cfg, clips, plan.progress)
    if plan.compare_cfg is not None:
        out["compare"] = await _compare(stack, plan, out, paths, clips)
    return out, records


async def _baseline(stack, cfg: Config, paths: list[Path]) -> list:
    """The batch `voice turn` path on each file, on the configured backend (`llm.backend`)."""
    from commands.turn import batch_turn

    return [await batch_turn(read_wav(p), stack.asr, stack.replies(cfg.llm), stack.tts) for p in paths]


async def _compare(stack, plan: BenchPlan, main: dict, paths: list[Path], clips: list) -> dict:
    """The same audio again, on sessions built from `plan.compare_cfg`."""
    from commands.hesitation import hesitation_summary, run_hesitation

    _say(plan, f"compare: {' '.join(plan.compare_set)}")
    out: dict = {"set": list(plan.compare_set)}
    if plan.main:
        compared = report(await _main_set(stack, plan.compare_cfg, plan, paths))
        out = compare_report(main, compared, plan.compare_set)
    if clips:
        result = await run_hesitation(stack, plan.compare_cfg, clips, plan.progress)
        out["hesitation"] = hesitation_summary(result)
    return out


def plot(records: list[TurnRecord], path: str) -> None:
    """Per-turn stage timeline (ms after speech end) and the turn-gap distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(records) + 2.5))
    colors = {
        "prediction_started": "tab:purple",
        "prediction_audio_ready": "tab:pink",
        "endpoint": "tab:gray",
        "asr_final": "tab:blue",
        "first_span": "tab:orange",
        "first_audio": "tab:green",
        "last_audio": "tab:olive",
    }
    for i, r in enumerate(records):
        for stage, color in colors.items():
            if r.stamps.get(stage):
                ms = (r.stamps[stage] - r.last_voiced_fed_t) * 1e3
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
