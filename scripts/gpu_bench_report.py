"""One JSON object from the decode-bench reports that `scripts/gpu-bench` left in a folder.

    python scripts/gpu_bench_report.py RESULTS_DIR

Out (stdout): the GPU's name, the host CPU (model, cores), torch/transformers/CUDA versions, a
summary per part (greedy, best fixed k, heuristic and adaptive tok/s, adaptive's ratios, whether
every run was token-identical to greedy, and where not the prompts that diverged, verify ms, ms
to 8 tokens; with `--tree`: each tree shape's and the adaptive controllers' tok/s, tokens per
verify and share of tree verifies) and every part's full report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def summary(report: dict) -> dict:
    """The figures the README quotes, from one decode-bench report."""
    runs = report["runs"]
    by_mode = {r["mode"]: r for r in runs}
    fixed = [r for r in runs if r["mode"] == "fixed"]
    best = max(fixed, key=lambda r: r["tokens_per_s"]) if fixed else None
    out = {
        "dtype": report["dtype"],
        "acceptance": report.get("acceptance", "measured"),
        "cuda_graphs": report.get("cuda_graphs"),
        "greedy_tok_s": by_mode["greedy"]["tokens_per_s"],
        "fixed_tok_s": {str(r["k"]): r["tokens_per_s"] for r in fixed},
        "best_fixed": None if best is None else {"k": best["k"], "tok_s": best["tokens_per_s"]},
        "heuristic_tok_s": by_mode.get("heuristic", {}).get("tokens_per_s"),
        "adaptive_tok_s": by_mode.get("adaptive", {}).get("tokens_per_s"),
        "adaptive_mean_k": by_mode.get("adaptive", {}).get("mean_k"),
        "speedup": report["speedup"],
        "all_identical": all(r["identical"] for r in runs),
        "diverged_prompts": {
            f"{r['mode']}{'' if r['k'] is None else r['k']}": r.get("diverged_prompts")
            for r in runs
            if not r["identical"]
        },
        "token_identity_guaranteed": report.get("token_identity_guaranteed"),
        "ms_to_first_8": {m: by_mode[m].get("ms_to_first_8_tokens") for m in ("greedy", "adaptive") if m in by_mode},
        "verify_ms": report["verify_cost_ms"],
        "draft_ms_per_token": {
            m: by_mode[m].get("draft_ms_per_token") for m in ("adaptive", "heuristic") if m in by_mode
        },
        "draft_graphs": report.get("draft_graphs"),
    }
    if "adaptive_tree" in by_mode:  # decode-bench --tree
        out["trees"] = {
            r["mode"] + ("x".join(map(str, [r["k"], *r.get("tree", [])])) if r["mode"] in ("tree", "fixed") else ""): {
                "tok_s": r["tokens_per_s"],
                "tokens_per_verify": r["mean_accepted"],
                "mean_nodes": r["mean_k"],
                "tree_share": r.get("tree_steps"),
                "identical": r["identical"],
            }
            for r in runs
            if r["mode"] in ("fixed", "tree", "adaptive", "adaptive_tree", "adaptive_chain")
        }
    if report.get("acceptance") == "synthetic":
        out.update(
            oracle_accept=report["oracle_accept"],
            graph_capture_s=report["graph_capture_s"],
            eager_verify_ms=report["step_ms"]["eager"],
            adaptive_acceptance_per_position=by_mode["adaptive"]["acceptance_per_position"],
        )
    return out


def rebuilt_sha256(logs: Path) -> str | None:
    """The fp32 weights' sha256 that scripts/gguf_target.py printed (compare: `--checksum` of a prepared target)."""
    log = logs / "gguf_target.log"
    return log.read_text().split()[-1] if log.is_file() and log.read_text().split() else None


def main() -> None:
    from commands.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the folder of decode-bench JSON reports (WORK/results)")
    results = parser.parse_args().results
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.stat().st_size}
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
                "cpu": machine_info(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "transformers": transformers.__version__,
                "target_sha256": rebuilt_sha256(results.parent / "logs"),
                "summary": {name: summary(report) for name, report in parts.items()},
                "parts": parts,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
