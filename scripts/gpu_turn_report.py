"""One JSON object from the `voice bench --json` report that `scripts/gpu-turn` wrote.

    python scripts/gpu_turn_report.py BENCH_JSON --config FILE --logs DIR --command "voice bench …"

Out (stdout): the machine (CPU model, logical cores, threads per core, the GPU and its driver), the
versions of Python and the packages the turn runs on, the commit (git's, else $VOICE_COMMIT), the
config file and the command, the rebuilt target's weights sha256 (from DIR/gguf_target.log; the
prepared one's is 785e20b3…), a summary (turn gap and stage p50/p90, predictions, the hesitation
set's split turns and cut-ins) and the whole bench report.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PACKAGES = ("torch", "transformers", "ctranslate2", "faster-whisper", "onnxruntime", "piper-tts", "silero-vad")
PACKAGES += ("av", "numpy", "tokenizers", "websockets", "soxr")


def run(*cmd: str) -> str:
    """A command's stdout, or "" where it is missing or fails."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    """The host CPU as lscpu names it, its cores, and the GPUs (nvidia-smi)."""
    from commands.machine import machine_info

    lscpu = dict(line.split(":", 1) for line in run("lscpu").splitlines() if ":" in line)
    smi = run("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader")
    gpus = [row.split(", ") for row in smi.splitlines()]
    return {
        **machine_info(),
        "lscpu_model": lscpu.get("Model name", "").strip() or None,
        "threads_per_core": int(lscpu["Thread(s) per core"]) if "Thread(s) per core" in lscpu else None,
        "gpu": [{"name": g[0], "driver": g[1]} for g in gpus if len(g) == 2],
    }


def versions() -> dict:
    """Python's and each package's version (None where it is not installed), and torch's CUDA."""
    out: dict = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def summary(bench: dict) -> dict:
    """The figures docs/gpu.md quotes: gap and stages p50/p90, predictions, the hesitation set."""
    out = {
        "turns": bench.get("turns"),
        "answered": bench.get("answered"),
        "turn_gap_ms": bench.get("turn_gap_ms"),
        "stages_ms": {s: {k: v.get(k) for k in ("p50", "p90")} for s, v in bench.get("stages_ms", {}).items()},
        "predictions": bench.get("predictions"),
        "acceptance": bench.get("acceptance"),
        "mean_draft_len": bench.get("mean_draft_len"),
    }
    if "hesitation" in bench:
        h = bench["hesitation"]
        out["hesitation"] = {k: h.get(k) for k in ("runs", "split_turns", "cut_ins", "turn_gap_ms", "by_pause_ms")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="the JSON that `voice bench --json` printed")
    parser.add_argument("--config", type=Path, required=True, help="the config file the bench ran")
    parser.add_argument("--logs", type=Path, required=True, help="the folder with gguf_target.log")
    parser.add_argument("--command", required=True, help="the bench command line, as run")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text())
    sha_log = args.logs / "gguf_target.log"
    words = sha_log.read_text().split() if sha_log.is_file() else []
    root = Path(__file__).resolve().parents[1]
    report = {
        "machine": machine(),
        "versions": versions(),
        "commit": run("git", "-C", str(root), "rev-parse", "--short", "HEAD") or os.environ.get("VOICE_COMMIT"),
        "date": run("date", "-u", "+%Y-%m-%d %H:%M UTC"),
        "command": args.command,
        "config": tomllib.loads(args.config.read_text()),
        "target_sha256": words[-1] if words else None,
        "summary": summary(bench),
        "bench": bench,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
