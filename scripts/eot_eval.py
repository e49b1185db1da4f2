"""End-of-turn scores, semantic (LLM) and acoustic (Smart Turn), on the same spoken items.

In: scripts/data/eot/items.json (complete turns, incomplete prefixes with the turn each was
cut from, earlier exchanges) plus commands.bench.BENCH_QUESTIONS. Each item is spoken by
piper (deterministic), ends with `--silence-ms` of silence (what the models see at a
decision) and is transcribed by the pipeline's whisper. Incomplete items come two ways:
`cut`, the full turn's audio cut at the gap after the prefix's last word (piper's phoneme
alignments: mid-sentence prosody, as a user pausing), and `tts`, the prefix synthesised
alone (piper ends it like a sentence). Scores: the LLM's P(end of user message) on
whisper's transcript, with and without its closing punctuation, and on the written words;
P(end or closing punctuation) on the same; each as a first turn and as the second turn
after each earlier exchange; Smart Turn on the audio; combinations of the two.
Out: JSON on stdout (setup + summary: AUCs, threshold tables, what (eot_low, eot_high)
pairs do, the best pair) and, with --out, the same with every item.
Cost: ~5 min on 2 idle cores, ~17 min when they are shared (piper WAVs from scripts/eot_audio.py
cached under the voice cache, `eot-audio/`). Needs `pip install onnx` for piper's alignments.

    python scripts/eot_eval.py --out scripts/data/eot/scores.json
    python scripts/eot_eval.py --rescore scripts/data/eot/scores.json   # summary again, no models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from eot_audio import AlignedVoice

ROOT = Path(__file__).resolve().parent.parent
ITEMS = ROOT / "scripts" / "data" / "eot" / "items.json"
THRESHOLDS = [0.001, 0.003, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
LOWS = [0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]
HIGHS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
HESITATION_MS = 500  # a mid-sentence pause this long should not end an unfinished turn
MAX_CUT_OFF = 0.05  # the most unfinished turns a HESITATION_MS pause may end, choosing a pair
PAIRS = [(0.005, 0.05), (0.005, 0.1), (0.01, 0.2), (0.2, 0.8)]  # shown for every scorer, with the configured one


@dataclass
class Item:
    """One spoken item and its scores."""

    kind: str  # complete | cut | tts
    text: str  # the written words spoken (for cut: the prefix)
    full: str  # the turn it was cut from (complete: == text)
    audio_s: float = 0.0
    transcript: str = ""
    smart_turn: float = 0.0
    llm: dict[str, float] = field(default_factory=dict)  # "<source>:<context>" -> score (see setup.scores)


# ---- pure rules -------------------------------------------------------------------------


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(score of a random complete item > that of a random incomplete one), ties count 1/2."""
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def required_silence_ms(p: float, low: float, high: float, min_ms: float, max_ms: float) -> float:
    """Silence that ends a turn of score p: max_ms at p <= low, min_ms at p >= high, linear between."""
    if p <= low:
        return max_ms
    if p >= high:
        return min_ms
    return max_ms - (p - low) / (high - low) * (max_ms - min_ms)


def threshold_table(complete: list[float], incomplete: list[float]) -> list[dict[str, float]]:
    """Per threshold t: fraction of complete and of incomplete items scoring >= t."""
    c, i = np.asarray(complete), np.asarray(incomplete)
    return [
        {"t": t, "complete_ge": round(float((c >= t).mean()), 3), "incomplete_ge": round(float((i >= t).mean()), 3)}
        for t in THRESHOLDS
    ]


def pair_outcome(
    complete: list[float], incomplete: list[float], low: float, high: float, min_ms: float, max_ms: float
) -> dict[str, float]:
    """What (eot_low, eot_high) does to each set: how many end at min silence, the mean silence
    waited, and how many unfinished turns a `HESITATION_MS` pause would end (`incomplete_cut_off`)."""
    wait_c = [required_silence_ms(p, low, high, min_ms, max_ms) for p in complete]
    wait_i = [required_silence_ms(p, low, high, min_ms, max_ms) for p in incomplete]
    return {
        "complete_at_min": round(float(np.mean([w <= min_ms for w in wait_c])), 3),
        "complete_mean_wait_ms": round(float(np.mean(wait_c))),
        "incomplete_at_min": round(float(np.mean([w <= min_ms for w in wait_i])), 3),
        "incomplete_cut_off": round(float(np.mean([w <= HESITATION_MS for w in wait_i])), 3),
        "incomplete_mean_wait_ms": round(float(np.mean(wait_i))),
    }


COMBINATIONS: dict[str, Callable[[float, float], float]] = {
    "mean": lambda text, audio: (text + audio) / 2,
    "max": max,
    "min": min,
    "geo_mean": lambda text, audio: float(np.sqrt(text * audio)),
}


def gated(text: float, audio: float, low: float, high: float) -> float:
    """LLM with Smart Turn as tie-breaker: inside (low, high) the audio places the score."""
    return text if text <= low or text >= high else low + (high - low) * audio


def best_pair(
    scores: Callable[[float, float], tuple[list[float], list[float]]], min_ms: float, max_ms: float
) -> dict | None:
    """The (eot_low, eot_high) of the grid that makes complete turns wait least while a
    `HESITATION_MS` pause ends at most `MAX_CUT_OFF` of the unfinished ones; `scores(low, high)`
    gives (complete, incomplete) scores. None when no pair keeps that bound."""
    best = None
    for low in LOWS:
        for high in (h for h in HIGHS if h > low):
            outcome = pair_outcome(*scores(low, high), low, high, min_ms, max_ms)
            key = (outcome["complete_mean_wait_ms"], outcome["incomplete_at_min"], -low)
            if outcome["incomplete_cut_off"] <= MAX_CUT_OFF and (best is None or key < best[0]):
                best = key, {"eot_low": low, "eot_high": high}
    return best[1] if best else None


# ---- run --------------------------------------------------------------------------------


def bare(text: str) -> str:
    """The words without the punctuation that closes them (whisper's '?', '.', '...')."""
    return text.rstrip(" .?!,;:…")


def load_items() -> tuple[list[Item], list[list[dict[str, str]]]]:
    """Every item to score, and the earlier exchanges."""
    from commands.bench import BENCH_QUESTIONS

    data = json.loads(ITEMS.read_text())
    items = [Item("complete", t, t) for t in BENCH_QUESTIONS + data["complete"]]
    for kind in ("cut", "tts"):
        items += [Item(kind, prefix, full) for prefix, full in data["incomplete"]]
    return items, data["contexts"]


class TurnScorer:
    """LLM end-of-turn scores of a conversation whose last user message is `words`, cached and timed.

    `end`: P(end-of-user token | words) (the pipeline's score before it read punctuation too).
    `close`: P(end-of-user token or a closing-punctuation token | words) — `ReplyModel.end_of_turn_prob`
    on unpunctuated words — read from the same
    softmax: unpunctuated words that form a finished sentence are followed by '.', '?' or '!'
    (SmolLM2 puts little mass on ending a message without one).
    """

    def __init__(self, llm, contexts: list[list[dict[str, str]]]) -> None:
        self.llm, self.contexts = llm, contexts
        tok = llm.tokenizer
        self.closing = [i for i in range(len(tok)) if (t := tok.decode([i]).strip()) and set(t) <= set(".?!…")]
        self.cache: dict[tuple[str, int], tuple[float, float]] = {}
        self.ms: list[float] = []
        self.runner = asyncio.Runner()  # one event loop for every `end_of_turn_prob` of the run

    def _probs(self, words: str, ctx: int) -> tuple[float, float]:
        import torch

        if (words, ctx) not in self.cache:
            history = self.contexts[ctx - 1] if ctx else []
            messages = history + [{"role": "user", "content": words}]
            ids = self.llm.chat_ids(messages)
            at = max(i for i, tok in enumerate(ids) if tok == self.llm.end_of_user_id)
            with torch.no_grad():  # a plain forward: the decoder's own cache is left alone
                logits = self.llm.model(torch.tensor([ids[:at]]), use_cache=False).logits[0, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            end = float(probs[self.llm.end_of_user_id])
            if words == words.rstrip(".?!… "):  # unpunctuated: the pipeline's score is `close`
                t = time.perf_counter()
                close = self.runner.run(self.llm.end_of_turn_prob(messages))
                self.ms.append((time.perf_counter() - t) * 1e3)
                if abs(end + float(probs[self.closing].sum()) - close) > 1e-3:
                    raise RuntimeError(f"the plain forward disagrees with end_of_turn_prob on {words!r}")
            self.cache[words, ctx] = end, end + float(probs[self.closing].sum())
        return self.cache[words, ctx]

    def end(self, words: str, ctx: int) -> float:
        return self._probs(words, ctx)[0]

    def close(self, words: str, ctx: int) -> float:
        return self._probs(words, ctx)[1]


def score(
    items: list[Item], contexts: list, stack, smart_turn, voice: AlignedVoice, cache: Path, silence_ms: int
) -> dict[str, float]:
    """Fill every item's audio, transcript and scores; return the median latency of each scorer (ms)."""
    from eot_audio import cut_after, spoken  # beside this script; --rescore and the tests need no piper

    rate = 16000
    tail = np.zeros(rate * silence_ms // 1000, dtype=np.float32)
    llm = TurnScorer(stack.llm, contexts)
    st_ms: list[float] = []
    for n, item in enumerate(items):
        if item.kind == "cut":
            audio = cut_after(voice, item.full, item.text, rate)
        else:
            audio = spoken(item.text, stack, cache)
        audio = np.concatenate([audio, tail])
        item.audio_s = round(audio.size / rate, 3)
        item.transcript = stack.asr.transcribe(audio)
        t = time.perf_counter()
        item.smart_turn = smart_turn.prob(audio)
        st_ms.append((time.perf_counter() - t) * 1e3)
        for ctx in range(len(contexts) + 1):
            item.llm[f"asr:{ctx}"] = llm.end(item.transcript, ctx)
            item.llm[f"asr_bare:{ctx}"] = llm.end(bare(item.transcript), ctx)
            item.llm[f"close:{ctx}"] = llm.close(bare(item.transcript), ctx)
            item.llm[f"words:{ctx}"] = llm.end(bare(item.text), ctx)
            item.llm[f"close_words:{ctx}"] = llm.close(bare(item.text), ctx)
        item.llm["text:0"] = llm.end(item.text, 0)
        print(
            f"[{n + 1}/{len(items)}] {item.kind:8s} st={item.smart_turn:.3f} end={item.llm['asr:0']:.3g} "
            f"close={item.llm['close:0']:.3g} {item.transcript!r}",
            file=sys.stderr,
        )
    llm.runner.close()
    return {
        "smart_turn_ms_p50": round(statistics.median(st_ms), 1),
        "llm_eot_ms_p50": round(statistics.median(llm.ms), 1),
        "closing_tokens": len(llm.closing),
    }


def smart_turn_latency(smart_turn, audio: np.ndarray, calls: int = 20) -> dict[str, float]:
    """Median and spread of `calls` Smart Turn calls on one clip (after one warm-up)."""
    smart_turn.prob(audio)
    ms = []
    for _ in range(calls):
        t = time.perf_counter()
        smart_turn.prob(audio)
        ms.append((time.perf_counter() - t) * 1e3)
    return {
        "calls": calls,
        "p50_ms": round(statistics.median(ms), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
    }


def summarise(
    items: list[Item], n_contexts: int, min_ms: float, max_ms: float, config_pair: tuple[float, float]
) -> dict[str, dict]:
    """Per scorer: AUC and threshold table against each incomplete set (cut, tts); what the
    configured pair and `PAIRS` do ("low-high"); the best pair (`best_pair`, both incomplete
    sets together)."""
    complete = [i for i in items if i.kind == "complete"]
    sets = {kind: [i for i in items if i.kind == kind] for kind in ("cut", "tts")}
    scorers: dict[str, Callable[[Item, float, float], float]] = {"smart_turn": lambda i, lo, hi: i.smart_turn}
    for key in [
        f"{src}:{c}" for src in ("asr", "asr_bare", "close", "words", "close_words") for c in range(n_contexts + 1)
    ] + ["text:0"]:
        scorers[f"llm_{key}"] = lambda i, lo, hi, key=key: i.llm[key]
    for key in ("asr:0", "close:0", "close:1"):
        for name, rule in COMBINATIONS.items():
            scorers[f"{name}_{key}"] = lambda i, lo, hi, key=key, rule=rule: rule(i.llm[key], i.smart_turn)
        scorers[f"gated_{key}"] = lambda i, lo, hi, key=key: gated(i.llm[key], i.smart_turn, lo, hi)

    out: dict[str, dict] = {}
    for name, score in scorers.items():

        def on(group: list[Item], lo: float = 0.0, hi: float = 1.0, score=score) -> list[float]:
            return [score(i, lo, hi) for i in group]

        entry: dict = {}
        if not name.startswith("gated"):  # a gated score depends on the pair: no AUC of its own
            for kind, group in sets.items():
                entry[f"auc_{kind}"] = round(auc(on(complete), on(group)), 3)
            for kind, group in sets.items():
                entry[f"thresholds_{kind}"] = threshold_table(on(complete), on(group))
        entry["pairs"] = {
            f"{lo}-{hi}": {
                kind: pair_outcome(on(complete, lo, hi), on(group, lo, hi), lo, hi, min_ms, max_ms)
                for kind, group in sets.items()
            }
            for lo, hi in [config_pair] + PAIRS
        }
        pair = best_pair(lambda lo, hi: (on(complete, lo, hi), on(sets["cut"] + sets["tts"], lo, hi)), min_ms, max_ms)
        if pair:
            lo, hi = pair["eot_low"], pair["eot_high"]
            entry["best"] = {
                **pair,
                **{
                    kind: pair_outcome(on(complete, lo, hi), on(group, lo, hi), lo, hi, min_ms, max_ms)
                    for kind, group in sets.items()
                },
            }
        out[name] = entry
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write setup, summary and every item here")
    parser.add_argument("--silence-ms", type=int, default=200, help="silence after the speech")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for Smart Turn")
    parser.add_argument("--rescore", type=Path, help="summarise the items of an earlier --out file again")
    return parser.parse_args(argv)


def rescore(path: Path, out: Path | None) -> int:
    """The summary of an earlier --out file's items again (no models)."""
    earlier = json.loads(path.read_text())
    items = [Item(**i) for i in earlier["items"]]
    setup = earlier["setup"]
    summary = summarise(
        items,
        len(setup["contexts"]),
        setup["min_silence_ms"],
        setup["max_silence_ms"],
        (setup["eot_low"], setup["eot_high"]),
    )
    return report(setup, summary, items, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rescore:
        return rescore(args.rescore, args.out)

    from eot_audio import AlignedVoice, spoken  # beside this script (see `score`)

    from commands.smart_turn import SmartTurn
    from voice.config import load_config
    from voice.models import cache_dir, piper_path, prepare
    from voice.stack import load_stack

    cfg = load_config()
    prepare(cfg.models)
    stack = load_stack(cfg)
    smart_turn = SmartTurn(threads=args.threads)
    voice = AlignedVoice(piper_path(cfg.models))
    cache = cache_dir(cfg.models) / "eot-audio"
    cache.mkdir(parents=True, exist_ok=True)
    items, contexts = load_items()
    load_before = os.getloadavg()[0]
    setup = {
        "silence_ms": args.silence_ms,
        "min_silence_ms": cfg.turn.min_silence_ms,
        "max_silence_ms": cfg.turn.max_silence_ms,
        "eot_low": cfg.turn.eot_low,
        "eot_high": cfg.turn.eot_high,
        "hesitation_ms": HESITATION_MS,
        "max_cut_off": MAX_CUT_OFF,
        "n_complete": sum(i.kind == "complete" for i in items),
        "n_incomplete": sum(i.kind == "cut" for i in items),
        "contexts": contexts,
        "smart_turn_threads": args.threads,
        "smart_turn_latency": smart_turn_latency(smart_turn, spoken(items[0].text, stack, cache)),
        **score(items, contexts, stack, smart_turn, voice, cache, args.silence_ms),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_cores": os.cpu_count(),
        "scores": "llm_<src>:<c>, c earlier exchanges (0: first turn; 1, 2: second turn after "
        "contexts[c-1]). src: asr = P(end-of-user) on whisper's transcript, as the pipeline "
        "scores it now; asr_bare = the same with the transcript's closing punctuation "
        "stripped; close = P(end-of-user or a closing-punctuation token) on the stripped "
        "transcript; words, close_words = end, close on the written words (no closing "
        "punctuation); text = end on the text as written. <rule>_<src>:<c>: that LLM score "
        "combined with smart_turn by rule (mean, max, min, geo_mean; gated: the LLM score "
        "outside (eot_low, eot_high), Smart Turn placing it inside).",
    }
    summary = summarise(
        items, len(contexts), cfg.turn.min_silence_ms, cfg.turn.max_silence_ms, (cfg.turn.eot_low, cfg.turn.eot_high)
    )
    return report(setup, summary, items, args.out)


def report(setup: dict, summary: dict, items: list[Item], out: Path | None) -> int:
    """Print setup and summary as JSON; with `out`, write them there with every item."""
    result = {"setup": setup, "summary": summary}
    print(json.dumps(result, indent=1))
    if out:
        result["items"] = [asdict(i) for i in items]
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
