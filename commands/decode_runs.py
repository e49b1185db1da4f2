"""Running prompts through one decoder and comparing runs: what both decode-bench modes share.

In: a `SpeculativeDecoder`, generation settings, prompt token ids, a drafter and a controller.
Out: a run's tok/s, ms to its first 8 tokens, acceptance (overall and per draft position), mean k,
and per prompt where its output first left plain greedy's. Cost: the decoding itself.
"""

from __future__ import annotations

import time

from decode.controller import Controller
from decode.drafters import Drafter
from decode.jobs import DecodeStats, GenerationSettings
from decode.speculative import SpeculativeDecoder

FIXED_KS = (1, 2, 4, 6)  # the fixed draft lengths every bench runs against the controllers


def run_ours(
    decoder: SpeculativeDecoder,
    settings: GenerationSettings,
    prompts: list[list[int]],
    drafter: Drafter,
    controller: Controller,
) -> dict:
    """Every prompt through `decoder` with this drafter and controller: tok/s, ms to 8 tokens, acceptance;
    the outputs under `_outputs`."""
    outputs, first8, total_s, total = [], [], 0.0, DecodeStats()
    for ids in prompts:
        t0 = time.perf_counter()
        out: list[int] = []
        t8 = None
        for span in decoder.generate(ids, settings, drafter=drafter, controller=controller):
            out.extend(span.token_ids)
            if t8 is None and len(out) >= 8:
                t8 = span.t - t0
        total_s += time.perf_counter() - t0
        first8.append((t8 if t8 is not None else time.perf_counter() - t0) * 1e3)
        outputs.append(out)
        total.add(decoder.stats)
    return {
        "tokens_per_s": total.tokens / total_s,
        "ms_to_first_8_tokens": sum(first8) / len(first8),
        "acceptance": total.acceptance,
        "mean_accepted": total.mean_accepted,
        "mean_k": total.mean_draft_len,
        "tree_steps": total.tree_steps / total.steps if total.steps else 0.0,  # share of verifies that were trees
        "tokens": total.tokens,
        "acceptance_per_position": [round(a / t, 3) for t, a in zip(total.tried_at, total.accepted_at)],
        # trees: of the levels along accepted paths, the share that accepted no child, the first, the second, …
        "tree_ranks": [round(n / sum(total.tree_ranks), 3) for n in total.tree_ranks],
        "draft_ms_per_token": total.draft_s * 1e3 / total.drafted if total.drafted else None,
        "_outputs": outputs,
    }


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first token position where two outputs differ (a shorter one differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def against_greedy(outputs: list[list[int]], greedy: list[list[int]]) -> dict:
    """Per prompt, where a run's output first left plain greedy's (None: identical), and the counts."""
    where = [first_divergence(out, ref) for out, ref in zip(outputs, greedy)]
    diverged = sum(w is not None for w in where)
    return {
        "identical": diverged == 0 and len(outputs) == len(greedy),
        "diverged_prompts": diverged,
        "first_divergence": where,
    }


def identity_guaranteed(dtype: str) -> bool:
    """Speculative output equals plain greedy token for token only in fp32: in bf16/fp16 a verify of
    k + 1 tokens rounds differently from a one-token step, so a near-tie can flip an argmax."""
    return dtype == "float32"


def rounded(result: dict) -> dict:
    """Floats to 3 decimals (the report's precision)."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def speedups(runs: list[dict]) -> dict:
    """Adaptive's tok/s over greedy's, the best fixed k's, the heuristic's and transformers' (where run)."""
    by_mode = {r["mode"]: r for r in runs}
    if "adaptive" not in by_mode:
        return {}
    ours = by_mode["adaptive"]["tokens_per_s"]
    best_fixed = max(r["tokens_per_s"] for r in runs if r["mode"] == "fixed")
    greedy = by_mode["greedy"]["tokens_per_s"]
    out = {"adaptive_vs_greedy": ours / greedy, "adaptive_vs_best_fixed": ours / best_fixed}
    if "heuristic" in by_mode:
        out["adaptive_vs_heuristic"] = ours / by_mode["heuristic"]["tokens_per_s"]
    if "hf_assisted" in by_mode:
        out["adaptive_vs_hf_assisted"] = ours / by_mode["hf_assisted"]["tokens_per_s"]
    if "adaptive_tree" in by_mode:  # decode-bench --tree
        tree = by_mode["adaptive_tree"]["tokens_per_s"]
        out["adaptive_tree_vs_greedy"] = tree / greedy
        out["adaptive_tree_vs_adaptive_chain"] = tree / by_mode["adaptive_chain"]["tokens_per_s"]
        out["best_tree_vs_best_fixed"] = max(r["tokens_per_s"] for r in runs if r["mode"] == "tree") / best_fixed
    return {k: round(v, 3) for k, v in out.items()}
