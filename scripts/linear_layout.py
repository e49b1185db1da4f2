"""Time x @ Wᵀ two ways for SmolLM2-135M's weight shapes at small row counts: F.linear(x, W)
and (W @ xᵀ)ᵀ, to pick `decode.linear_layout`: which is faster at 2–8 rows depends on the BLAS
(see decode/target.py `project`).

    python scripts/linear_layout.py [--threads N]   # prints JSON, one line per shape
    python scripts/linear_layout.py --model         # + a whole target step (random weights,
                                                    #   SmolLM2-135M's config) both ways
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)


def _ms(fn, n: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="store_true", help="also time whole target steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    print(
        json.dumps(
            {
                "cpu": cpu,
                "avx512f": "avx512f" in flags,
                "amx": "amx_tile" in flags,
                "avx2": "avx2" in flags,
                "threads": args.threads,
                "torch": torch.__version__,
            }
        )
    )
    for rows, cols in [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]:
        w = torch.randn(rows, cols)
        n = 5 if rows > 10000 else 50
        out = {}
        for m in [1, 2, 3, 5, 9, 17, 33, 64]:
            x = torch.randn(m, cols)
            out[m] = [
                round(_ms(lambda x=x, w=w: F.linear(x, w), n), 3),
                round(_ms(lambda x=x, w=w: (w @ x.t()).t().contiguous(), n), 3),
            ]
        print(json.dumps({"weight": [rows, cols], "ms_linear_vs_weight_major": out}))
    if args.model:
        _whole_model()


def _whole_model() -> None:
    """ms per StaticLlamaTarget step of width w after a 300-token context, both layouts interleaved."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformers import LlamaConfig, LlamaForCausalLM

    from decode.target import StaticLlamaTarget

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    targets = {
        name: StaticLlamaTarget(model, max_len=512, weight_major=major)
        for name, major in [("linear", False), ("weight_major", True)]
    }
    widths = [1, 2, 3, 5, 9, 17, 33, 64]
    best = {name: dict.fromkeys(widths, float("inf")) for name in targets}
    for target in targets.values():
        target.forward(list(range(100, 400)))
    for _ in range(3):
        for name, target in targets.items():
            for w in widths:
                tokens = list(range(500, 500 + w))
                step = lambda t=target, ids=tokens: (t.forward(ids), t.rollback(300))  # noqa: E731
                best[name][w] = min(best[name][w], _ms(step, 3))
    print(json.dumps({"whole_step_ms": {name: {w: round(v, 1) for w, v in row.items()} for name, row in best.items()}}))


if __name__ == "__main__":
    main()
