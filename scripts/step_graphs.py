"""Eager vs CUDA-graph target steps (decode/graphs.py) on a GPU, random weights of a real config.

    python scripts/step_graphs.py [--config smollm2-135m|llama-1b] [--dtype float32]

Prints JSON: ms per step of width 1..9 after a 300-token context, eager and graph-replayed,
and whether greedy speculative decoding (n-gram drafter, fixed k = 0, 2, 4) over the graphs
gives the same tokens as eager plain greedy.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
}


class Bytes:
    """Enough of a tokenizer for the decoder: ids are their own text."""

    eos_token_id = None

    def decode(self, ids, **_):
        return " ".join(map(str, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="smollm2-135m", choices=sorted(CONFIGS))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--layout", default="linear", choices=["linear", "weight_major"])
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from decode.graphs import StepGraphs
    from decode.target import StaticLlamaTarget

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = LlamaForCausalLM(LlamaConfig(**CONFIGS[args.config], rms_norm_eps=1e-5)).to("cuda", dtype).eval()
    widths = list(range(1, 10))

    def step_ms(target) -> dict:
        target.forward(list(range(100, 400)))
        out = {}
        for w in widths:
            ids = list(range(500, 500 + w))
            for _ in range(3):
                target.forward(ids), target.rollback(300)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                target.forward(ids)
                target.rollback(300)
            torch.cuda.synchronize()
            out[w] = round((time.perf_counter() - start) / 20 * 1e3, 2)
        target.rollback(0)
        return out

    major = args.layout == "weight_major"
    eager = StaticLlamaTarget(model, max_len=1024, weight_major=major)
    graphed = StaticLlamaTarget(model, max_len=1024, weight_major=major)
    t0 = time.perf_counter()
    StepGraphs(graphed, widths)
    capture_s = time.perf_counter() - t0
    report = {
        "gpu": torch.cuda.get_device_name(),
        "config": args.config,
        "dtype": args.dtype,
        "layout": args.layout,
        "capture_s": round(capture_s, 2),
        "eager_ms": step_ms(eager),
        "graph_ms": step_ms(graphed),
    }
    report.update(identity(eager, graphed, widths))
    print(json.dumps(report))


def identity(eager, graphed, widths: list[int]) -> dict:
    """Whether greedy speculative decoding (n-gram drafter, fixed k) over the graphs, on slot 0 and on a
    scheduler slot with its own graphs, gives eager plain greedy's tokens."""
    from decode.controller import FixedController
    from decode.drafters import NgramDrafter
    from decode.graphs import StepGraphs
    from decode.jobs import GenerationSettings
    from decode.speculative import SpeculativeDecoder

    prompt = [5, 9, 13, 5, 9, 13, 21, 5, 9]
    settings = GenerationSettings(max_new_tokens=48)

    def run(target, k):
        target.rollback(0)
        dec = SpeculativeDecoder(target, Bytes(), NgramDrafter(3, 1), FixedController(k))
        return [t for s in dec.generate(prompt, settings) for t in s.token_ids]

    want = run(eager, 0)
    out = {"identical": {k: run(graphed, k) == want for k in (0, 2, 4)}}
    StepGraphs(graphed, widths, slot=1)  # a scheduler slot: its own cache, its own graphs
    out["identical_slot_1"] = {k: run(graphed.slot(1), k) == want for k in (0, 4)}
    return out


if __name__ == "__main__":
    main()
