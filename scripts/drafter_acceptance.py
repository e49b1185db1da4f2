"""Acceptance of the configured drafter at a fixed k on decode-bench's prompts, cheaply (CPU-friendly).

`voice decode-bench` runs nine modes; to compare two heads on a shared 2-core machine this
runs two: plain greedy (the reference) and the drafter at a fixed k, on the same prompts
(`--conversation`: the bundled multi-turn set). Prints JSON: acceptance per draft position
(position j counts only when the earlier ones were accepted), first-position acceptance,
mean accepted per verify step, tokens/s of both, and identity with greedy.

    python scripts/drafter_acceptance.py [--conversation] [--prompts 8] [--max-new-tokens 48] [--k 4]
        [--set decode.mtp_path=DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import torch

from commands.decode_bench import bench_prompt_ids
from decode.controller import FixedController
from decode.drafters import NoDrafter
from decode.speculative import DecodeStats
from voice.config import load_config
from voice.llm import ReplyModel


def run(llm: ReplyModel, prompts: list[list[int]], drafter, k: int) -> tuple[DecodeStats, list[list[int]], float]:
    """Decode every prompt at fixed k; returns the summed stats, the outputs and the seconds taken."""
    total, outputs, t0 = DecodeStats(), [], time.perf_counter()
    for ids in prompts:
        out: list[int] = []
        for span in llm.decoder.generate(ids, llm.settings, drafter=drafter, controller=FixedController(k)):
            out.extend(span.token_ids)
        outputs.append(out)
        total.add(llm.decoder.stats)
    return total, outputs, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conversation", action="store_true", help="the bundled multi-turn conversations")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args()
    cfg = load_config(None, args.set)
    llm = ReplyModel(replace(cfg, llm=replace(cfg.llm, max_new_tokens=args.max_new_tokens)))
    prompts = bench_prompt_ids(llm, args.prompts, args.conversation)
    run(llm, prompts[:1], NoDrafter(), 0)  # warm-up
    _, reference, greedy_s = run(llm, prompts, NoDrafter(), 0)
    stats, outputs, spec_s = run(llm, prompts, llm.drafter, args.k)
    per_position = [round(a / t, 3) for t, a in zip(stats.tried_at, stats.accepted_at)]
    print(
        json.dumps(
            {
                "prompt_set": "conversation" if args.conversation else "single",
                "prompts": len(prompts),
                "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
                "k": args.k,
                "mtp_path": cfg.decode.mtp_path or "shipped",
                "drafter": llm.drafter.name,
                "first_position_acceptance": per_position[0] if per_position else None,
                "acceptance_per_position": per_position,
                "mean_accepted": round(stats.mean_accepted, 3),
                "tokens": stats.tokens,
                "greedy_tokens_per_s": round(sum(map(len, reference)) / greedy_s, 1),
                "fixed_k_tokens_per_s": round(stats.tokens / spec_s, 1),
                "identical": outputs == reference,
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
