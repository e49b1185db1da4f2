"""`voice decode-bench --synthetic`: the decoder at real model sizes, random weights, an oracle drafter.

In: a transformers config — a bundled name (`llama-3.2-1b`: `commands/data/llama-3.2-1b.config.json`,
Llama-3.2-1B's own config) or a config.json path —, the oracle's acceptance per draft position,
prompt count and length, new tokens, and the config's `llm.device` / `llm.dtype` / `decode.*`.
Out: a JSON-able report labelled `"acceptance": "synthetic"`: seconds to capture the CUDA graphs,
the verify cost per draft length k (graph-replayed and eager), and per mode (greedy, fixed k,
heuristic, adaptive) tok/s, ms to 8 tokens, measured acceptance per position and identity with
plain greedy (per prompt, the first position that differs). Cost: the model's build (Llama-1B:
1.24B parameters, 5 GB in fp32, seconds on a GPU) and modes × prompts × tokens decode steps.

Random weights make no text, so no real drafter accepts anything; the oracle (`commands.oracle`)
knows the target's continuation from a first plain greedy run and is right at draft position i
with the probability given. What it measures is the machinery at the size users run — step
costs, graphs, the controller's choice of k — not a drafter. Replies ignore EOS (every prompt
makes max_new_tokens). Only Llama-class configs: `StaticLlamaTarget` (and so the graphs) does
not implement Gemma 4 (per-layer inputs, sliding-window and KV-shared layers). The static target
takes the model's own rotary frequencies, so Llama 3's frequency scaling is applied as transformers
applies it; rope types that change with the sequence length (dynamic, longrope) are refused.
"""

from __future__ import annotations

import json
import logging
import time
from importlib.resources import files
from pathlib import Path

import torch
from tqdm import tqdm

from commands.decode_runs import FIXED_KS, against_greedy, identity_guaranteed, rounded, run_ours, speedups
from commands.machine import machine_info
from commands.oracle import OracleDrafter, acceptance_at
from decode.controller import FixedController, expected_tokens
from decode.drafters import NoDrafter
from decode.jobs import GenerationSettings
from decode.speculative import SpeculativeDecoder, calibrate_verify_cost
from decode.target import StaticLlamaTarget, static_supported
from voice.config import Config, ConfigError
from voice.llm import calibration_ks, make_controller, torch_dtype

log = logging.getLogger(__name__)

BUNDLED_CONFIGS = ("llama-3.2-1b",)
ORACLE_ACCEPT = [0.8, 0.7, 0.6, 0.5]  # the default acceptance per draft position (issue 16's)
PROMPT_TOKENS = 64


class NoText:
    """The decoder's tokenizer for random weights: token ids have no text."""

    eos_token_id = None

    def decode(self, ids: list[int], **_) -> str:
        return ""


def load_synthetic_config(source: str):
    """A transformers config from a bundled name or a config.json path; Llama-class only."""
    from transformers import AutoConfig

    path = Path(source)
    bundled = files("commands").joinpath(f"data/{source}.config.json")
    if path.is_file():
        text = path.read_text()
    elif source in BUNDLED_CONFIGS:
        text = bundled.read_text()
    else:
        raise ConfigError(
            f"--synthetic {source!r}: not a config.json file nor a bundled config "
            f"(bundled: {', '.join(BUNDLED_CONFIGS)})"
        )
    fields = json.loads(text)
    model_type = fields.pop("model_type", "")
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except ValueError as err:
        raise ConfigError(f"--synthetic {source!r}: {err}") from None
    if not static_supported(config):
        raise ConfigError(
            f"--synthetic {source!r}: {model_type} is not a Llama-class model; the static target and "
            "its CUDA graphs implement llama, mistral, qwen2 and smollm3 only (Gemma 4's per-layer "
            "inputs, sliding-window and shared-KV layers are not in it)"
        )
    return config


def build_target(config, cfg: Config) -> StaticLlamaTarget:
    """Random weights (seed `llm.seed`) of `config` on `llm.device` in `llm.dtype`, as a static target."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.llm.seed)
    with torch.device(cfg.llm.device):  # initialised where it runs: a 1B model inits in seconds on a GPU
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(torch_dtype(cfg.llm.dtype)).eval()
    target = StaticLlamaTarget(model)
    layout = cfg.decode.linear_layout
    if layout == "auto":  # as ReplyModel: torch's layout on CUDA, timed on a CPU
        if target.device.type == "cuda":
            target.weight_major = False
        else:
            target.choose_layout()
    else:
        target.weight_major = layout == "weight_major"
    return target


def capture_graphs(target: StaticLlamaTarget, cfg: Config) -> float | None:
    """Capture slot 0's steps of 1..max_draft + 1 tokens (CUDA with decode.cuda_graphs); seconds, or None."""
    if not (cfg.decode.cuda_graphs and target.device.type == "cuda"):
        return None
    from decode.graphs import StepGraphs

    start = time.perf_counter()
    StepGraphs(target, list(range(1, cfg.decode.max_draft + 2)))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def step_costs(target: StaticLlamaTarget, ks: list[int]) -> dict[str, dict[int, float] | None]:
    """Seconds per verify of k + 1 tokens, replaying the graphs (None without) and eagerly."""
    graphs = dict(target.step_graphs)
    replayed = calibrate_verify_cost(target, ks, reps=5) if graphs else None
    target.step_graphs.clear()
    try:
        eager = calibrate_verify_cost(target, ks, reps=5)
    finally:
        target.step_graphs.update(graphs)
    return {"graph": replayed, "eager": eager}


def random_prompts(vocab_size: int, n_prompts: int, prompt_tokens: int, seed: int) -> list[list[int]]:
    """`n_prompts` prompts of `prompt_tokens` uniform random token ids (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_prompts, prompt_tokens), generator=gen).tolist()


def run_modes(
    cfg: Config,
    target: StaticLlamaTarget,
    prompts: list[list[int]],
    accept: list[float],
    costs: dict[int, float],
    max_new_tokens: int,
    progress: bool,
) -> list[dict]:
    """Greedy first (the oracle's references), then fixed k, heuristic and adaptive with a fresh oracle each."""
    decoder = SpeculativeDecoder(target, NoText(), NoDrafter(), FixedController(0), seed=cfg.llm.seed)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)  # no EOS ids: every reply is full length
    run_ours(decoder, settings, prompts[:2], NoDrafter(), FixedController(0))  # warm-up
    greedy = run_ours(decoder, settings, prompts, NoDrafter(), FixedController(0))
    greedy_out = greedy.pop("_outputs")
    references = [p + out for p, out in zip(prompts, greedy_out)]
    runs = [{"mode": "greedy", "k": 0, **rounded(greedy), **against_greedy(greedy_out, greedy_out)}]
    modes = [("fixed", k) for k in FIXED_KS] + [("heuristic", None), ("adaptive", None)]
    for mode, k in tqdm(modes, desc="decode-bench synthetic", disable=not progress):
        oracle = OracleDrafter(references, accept, target.vocab_size, seed=cfg.llm.seed)
        controller = FixedController(k) if mode == "fixed" else make_controller(cfg, costs, kind=mode)
        result = run_ours(decoder, settings, prompts, oracle, controller)
        outputs = result.pop("_outputs")
        runs.append(
            {
                "mode": mode,
                "k": k,
                **rounded(result),
                **against_greedy(outputs, greedy_out),
                "oracle_off_reference": oracle.off_reference,
            }
        )
    return runs


def run_synthetic_bench(
    cfg: Config,
    source: str,
    accept: list[float],
    n_prompts: int,
    max_new_tokens: int,
    prompt_tokens: int = 64,
    progress: bool = True,
) -> dict:
    """Build the random target, capture its graphs, time its steps and run every mode; return the report."""
    config = load_synthetic_config(source)
    target = build_target(config, cfg)
    capture_s = capture_graphs(target, cfg)
    costs = step_costs(target, calibration_ks(cfg.decode.max_draft))
    prompts = random_prompts(target.vocab_size, max(1, n_prompts), prompt_tokens, cfg.llm.seed)
    runs = run_modes(cfg, target, prompts, accept, costs["graph"] or costs["eager"], max_new_tokens, progress)
    dims = {
        key: getattr(config, key)
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
        )
    }
    return {
        "acceptance": "synthetic",
        "oracle_accept": accept,
        "oracle_expected_tokens_per_step": expected_per_step(accept, FIXED_KS),
        "machine": machine_info(),
        "gpu": torch.cuda.get_device_name() if target.device.type == "cuda" else None,
        "target": f"synthetic:{source}",
        "config": dims,
        "parameters": count_parameters(target),
        "drafter": "oracle",
        "device": cfg.llm.device,
        "dtype": cfg.llm.dtype,
        "token_identity_guaranteed": identity_guaranteed(cfg.llm.dtype),
        "linear_layout": target.layout,
        "cuda_graphs": capture_s is not None,
        "graph_capture_s": None if capture_s is None else round(capture_s, 2),
        "threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "prompt_set": "random",
        "mean_prompt_tokens": prompt_tokens,
        "max_new_tokens": max_new_tokens,
        "runs": runs,
        "speedup": speedups(runs),
        "verify_cost_ms": _ms(costs["graph"] or costs["eager"]),
        "step_ms": {name: None if c is None else _ms(c) for name, c in costs.items()},
    }


def _ms(costs: dict[int, float]) -> dict[str, float]:
    return {str(k): round(v * 1e3, 2) for k, v in costs.items()}


def count_parameters(target: StaticLlamaTarget) -> int:
    """Parameters of the target's weights (a tied LM head counted once)."""
    tensors = [target.embed, target.lm_head, target.final_norm, *(w for layer in target.layers for w in layer)]
    return sum({t.data_ptr(): t.numel() for t in tensors}.values())


def expected_per_step(accept: list[float], ks: tuple[int, ...]) -> dict[str, float]:
    """The oracle's promise per fixed k: E[tokens | k] = 1 + sum_{i<=k} prod_{j<=i} a_j."""
    return {str(k): round(expected_tokens([acceptance_at(accept, i) for i in range(1, k + 1)], k), 3) for k in ks}
