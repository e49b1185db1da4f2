"""Where the time of a graph-replayed speculative step goes on a GPU (random SmolLM2-135M weights, shipped MTP head).

    python scripts/step_profile.py [--sections replay,kernels,draft,loop[,compile]] [--dtype float32]

Prints one JSON object: graph-replayed step ms per width 1..9 for the shipped step and variants
(a 256-position cache, the weight-major layout, torch's fused RMSNorm, torch.compile'd), the
kernels of one replay of 1 and 5 tokens (count, summed kernel time, the costliest), the MTP
draft loop eager and graph-replayed per k, and a decode loop split into draft, verify launch and
the rest (the accept's read-back waits for the GPU there). Timings are medians of CUDA-event or
synchronised wall-clock samples.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.step_graphs import CONFIGS, Bytes  # noqa: E402

WIDTHS = list(range(1, 10))
CONTEXT = 60


def cpu_name() -> str:
    """The host CPU's model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def replay_ms(target, widths=WIDTHS, reps: int = 50) -> dict[int, float]:
    """Median GPU ms of one step per width after CONTEXT tokens (CUDA events around target.forward)."""
    target.rollback(0)
    target.forward(list(range(100, 100 + CONTEXT)))
    out = {}
    for w in widths:
        ids, times = list(range(500, 500 + w)), []
        for i in range(reps + 5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            target.forward(ids)
            end.record()
            end.synchronize()
            target.rollback(CONTEXT)
            if i >= 5:
                times.append(start.elapsed_time(end))
        out[w] = round(statistics.median(times), 3)
    return out


def kernels(target, width: int, reps: int = 5) -> dict:
    """Kernels of one replay of `width` tokens: count, summed GPU µs, first-to-last span µs, the costliest."""
    from torch.profiler import ProfilerActivity, profile

    target.rollback(CONTEXT)
    ids = list(range(500, 500 + width))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            target.forward(ids)
            torch.cuda.synchronize()
            target.rollback(CONTEXT)
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, float] = {}
    for e in events:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time / reps
    span = (max(e.time_range.end for e in events) - min(e.time_range.start for e in events)) / reps
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:12]
    return {
        "kernels": len(events) // reps,
        "kernel_us": round(sum(by_name.values()), 1),
        "span_us_avg": round(span, 1),
        "top_us": {name[:90]: round(us, 1) for name, us in top},
    }


def graphed(model, feature_layers, max_len=2048, major=False, compile_step=False):
    """A static target with captured steps of WIDTHS tokens (compile_step: over a torch.compile'd step)."""
    from decode.graphs import StepGraphs
    from decode.target import StaticLlamaTarget

    target = StaticLlamaTarget(model, max_len=max_len, feature_layers=feature_layers, weight_major=major)
    if not compile_step:
        StepGraphs(target, WIDTHS)
        return target
    graphs = StepGraphs(target, [1, 5], capture=False)
    compiled = torch.compile(functools.partial(StepGraphs._static_step.__wrapped__, graphs))

    def step(*args):
        with torch.inference_mode():
            return compiled(*args)

    graphs._static_step = step
    graphs._capture()
    return target


def draft_ms(drafter, hidden, ks=(1, 2, 4, 8), reps=30) -> dict:
    """Synchronised wall ms of one `propose` of k tokens; and whether graph drafts equal eager ones."""
    ids = [1, 2, 3, 4, 5]
    out = {}
    for k in ks:
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            drafter.propose(ids, k, hidden)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
        out[k] = round(statistics.median(times), 3)
    return out


def loop_split(target, drafter, k: int, new_tokens: int = 64) -> dict:
    """One reply decoded with fixed k: ms per step in total, in the drafter, launching the verify, the rest."""
    from decode.controller import FixedController
    from decode.drafters import NoDrafter
    from decode.jobs import GenerationSettings
    from decode.speculative import SpeculativeDecoder

    target.rollback(0)
    dec = SpeculativeDecoder(target, Bytes(), drafter if k else NoDrafter(), FixedController(k))
    settings = GenerationSettings(max_new_tokens=new_tokens)
    prompt = list(range(100, 100 + CONTEXT))
    list(dec.generate(prompt, settings))  # warm
    target.rollback(0)
    dec.forget()
    torch.cuda.synchronize()
    t = time.perf_counter()
    tokens = [x for s in dec.generate(prompt, settings) for x in s.token_ids]
    total = time.perf_counter() - t
    st = dec.stats
    steps = max(st.steps, 1)
    return {
        "k": k,
        "tokens": len(tokens),
        "steps": st.steps,
        "ms_per_step": round((total - st.prefill_s) * 1e3 / steps, 3),
        "draft_ms": round(st.draft_s * 1e3 / steps, 3),
        "verify_launch_ms": round(st.verify_s * 1e3 / steps, 3),
        "rest_ms": round((total - st.prefill_s - st.draft_s - st.verify_s) * 1e3 / steps, 3),
        "tokens_out": tokens[:16],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="replay,kernels,draft,loop")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from decode.mtp import read_mtp_config

    sections = set(args.sections.split(","))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIGS["smollm2-135m"], rms_norm_eps=1e-5))
    model = model.to("cuda", getattr(torch, args.dtype)).eval()
    layers = read_mtp_config().feature_layers
    base = graphed(model, layers)
    report = {"gpu": torch.cuda.get_device_name(), "cpu": cpu_name(), "torch": torch.__version__}
    run = functools.partial(_section, report, sections)
    run("replay", lambda: {"shipped": replay_ms(base), **variants(model, layers)})
    run("kernels", lambda: {w: kernels(base, w) for w in (1, 5)})
    run("draft", lambda: drafts(base))
    run("loop", lambda: loops(base))
    run("compile", lambda: compiled_variant(model, layers, base))
    print(json.dumps(report, indent=1))


def _section(report: dict, sections: set, name: str, fn) -> None:
    """report[name] = fn() if asked for; an error is reported, not raised (the other sections still run)."""
    if name not in sections:
        return
    try:
        report[name] = fn()
    except Exception as err:  # a variant that cannot run on this torch is a finding, not a crash
        report[name] = {"error": f"{type(err).__name__}: {err}"}


def variants(model, layers) -> dict:
    """Replay ms of the step over a 256-position cache, weight-major, and with torch's fused RMSNorm."""
    import torch.nn.functional as F

    import decode.target as target_mod

    out = {
        "max_len_256": replay_ms(graphed(model, layers, max_len=256)),
        "weight_major": replay_ms(graphed(model, layers, major=True)),
    }
    plain = target_mod.rms_norm
    target_mod.rms_norm = lambda x, w, eps: F.rms_norm(x, (x.shape[-1],), w, eps)
    try:
        out["fused_rms_norm"] = replay_ms(graphed(model, layers))
    finally:
        target_mod.rms_norm = plain
    return out


def drafts(target) -> dict:
    """The shipped MTP head's draft loop, eager and graph-replayed, and whether their tokens agree."""
    from decode.mtp import load_mtp_drafter

    drafter = load_mtp_drafter("", target)
    cfg = drafter.head.cfg
    hidden = torch.randn(cfg.hidden_size * (1 + len(cfg.feature_layers)), device="cuda")
    eager = draft_ms(drafter, hidden)
    want = {k: drafter.propose([1, 2, 3], k, hidden).tokens for k in (1, 4, 8)}
    t = time.perf_counter()
    drafter.capture(8)
    capture_s = time.perf_counter() - t
    got = {k: drafter.propose([1, 2, 3], k, hidden).tokens for k in (1, 4, 8)}
    return {
        "eager_ms": eager,
        "graph_ms": draft_ms(drafter, hidden),
        "capture_s": round(capture_s, 3),
        "same": got == want,
    }


def loops(target) -> dict:
    """Decode loops with k = 0 and 4, the MTP drafter eager then graph-replayed."""
    from decode.mtp import load_mtp_drafter

    drafter = load_mtp_drafter("", target)
    out = {"eager_draft": [loop_split(target, drafter, k) for k in (0, 4)]}
    drafter.capture(8)
    out["graph_draft"] = [loop_split(target, drafter, k) for k in (0, 4)]
    return out


def compiled_variant(model, layers, base) -> dict:
    """torch.compile'd static step, captured: compile+capture seconds, replay ms, logits against the shipped step."""
    t = time.perf_counter()
    target = graphed(model, layers, compile_step=True)
    capture_s = time.perf_counter() - t
    ms = replay_ms(target, widths=[1, 5])
    diffs = {}
    for w in (1, 5):
        ids = list(range(700, 700 + w))
        for t_ in (target, base):
            t_.rollback(CONTEXT)
        a, b = target.forward(ids).logits, base.forward(ids).logits
        diffs[w] = {"max_abs": float((a - b).abs().max()), "argmax_equal": bool((a.argmax(-1) == b.argmax(-1)).all())}
    return {"compile_and_capture_s": round(capture_s, 1), "replay_ms": ms, "vs_shipped": diffs}


if __name__ == "__main__":
    main()
