"""The `voice` command line.

In: argv. Out: the chosen subcommand's work, printed; exit code 0 on success, 2 with a
one-line `error: …` on bad input or a missing model (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from commands.cli_args import DeviceError, UsageError, config_overrides, int_list, layer_list
from commands.cli_bench import DecodeBenchPlan, SoakPlan, cmd_bench, cmd_decode_bench, cmd_soak
from commands.hesitation import DEFAULT_PAUSES_MS, HESITATION_QUESTIONS
from voice.config import Config, ServerConfig, load_config
from voice.errors import USER_ERRORS

log = logging.getLogger("voice")

TOKEN_ENV_HELP = (
    "the environment variable holding the server's secret, sent as a bearer token (default: server.token_env)"
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What becomes a one-line error: user-facing errors only (a FileNotFoundError from a bug keeps
    its traceback; files the user names are checked where they are opened)."""
    from commands.balancer import FleetError

    return (*USER_ERRORS, DeviceError, FleetError)


def cmd_models(args: argparse.Namespace, cfg: Config) -> None:
    """voice models prepare|list"""
    from voice.models import list_models, prepare

    if args.action == "prepare":
        t = time.perf_counter()
        rows = prepare(cfg.models)
        print(f"prepared in {time.perf_counter() - t:.1f} s")
    else:
        rows = list_models(cfg.models)
    for row in rows:
        print(f"{row.name:4s} {row.status:14s} {row.size_bytes / 1e6:8.1f} MB  {row.path}")


def cmd_turn(args: argparse.Namespace, cfg: Config) -> None:
    """voice turn AUDIO.wav: one batch turn (the baseline)."""
    import asyncio

    from audio.wavio import read_wav, write_wav
    from commands.turn import batch_turn
    from voice.stack import load_stack

    audio = read_wav(args.audio)
    stack = load_stack(cfg)
    result = asyncio.run(batch_turn(audio, stack.asr, stack.replies(cfg.llm), stack.tts))  # llm.backend
    if args.output_wav:
        write_wav(args.output_wav, result.audio, result.rate_hz)
    stages = {
        "asr_ms": round(result.asr_ms, 1),
        "llm_ms": round(result.llm_ms, 1),
        "tts_ms": round(result.tts_ms, 1),
        "total_ms": round(result.total_ms, 1),
    }
    if args.json:
        print(
            json.dumps(
                {
                    "transcript": result.transcript,
                    "reply": result.reply,
                    "tokens": result.tokens,
                    **stages,
                    "output_wav": args.output_wav,
                }
            )
        )
        return
    print(f"you:       {result.transcript}")
    print(f"assistant: {result.reply}")
    print("  ".join(f"{k}={v}" for k, v in stages.items()) + f"  tokens={result.tokens}")
    if args.output_wav:
        print(f"reply audio: {args.output_wav}")


def cmd_serve(args: argparse.Namespace, cfg: Config) -> None:
    """voice serve: the voice page and websocket on one port (bound first; /healthz is 503 while loading)."""
    import asyncio

    from voice.stack import load_stack
    from web.server import run_server

    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0–65535, got {port}")

    def ready(url: str) -> None:
        print(f"voice assistant ready: open {url}  (websocket: {url.replace('http', 'ws', 1)}ws)", flush=True)

    asyncio.run(
        run_server(
            cfg,
            host,
            port,
            lambda: load_stack(cfg),
            ready,
            lambda url: print(f"listening on {url} — loading models…", flush=True),
        )
    )
    print("server stopped", flush=True)


def cmd_talk(args: argparse.Namespace, cfg: Config) -> None:
    """voice talk: the pipeline on the local microphone and speaker (or through `--server`)."""
    from commands.talk import talk_command

    talk_command(args, cfg)


def cmd_devices(args: argparse.Namespace, cfg: Config) -> None:
    """voice devices: list audio devices."""
    from commands.audio_io import list_devices

    print(list_devices())


# train-drafter's flags (argparse dest) and the `DrafterTraining` field each sets; a flag not given
# leaves the field's default, so the defaults are written once, in the dataclass
TRAINING_FIELDS = {
    "prompts": "prompts",
    "max_new_tokens": "max_new_tokens",
    "steps": "steps",
    "batch": "batch",
    "depth": "depth",
    "layers": "layers",
    "feature_layers": "feature_layers",
    "sampled": "sampled",
    "lr": "lr",
    "context": "context",
    "sequences": "sequences_file",
    "conversations": "conversations",
    "vocab": "vocab",
    "device": "device",
    "out": "out",
    "gen_batch": "gen_batch",
}
TRAINING_MINIMUMS = {
    "prompts": 1,
    "steps": 10,
    "batch": 1,
    "depth": 1,
    "layers": 1,
    "vocab": 1,
    "sampled": 0,
    "context": 0,
    "max_new_tokens": 1,
    "gen_batch": 1,
}


def training_run(args: argparse.Namespace):
    """The `DrafterTraining` that `voice train-drafter` asked for: its defaults, then the flags given."""
    from commands.train_drafter import DrafterTraining

    given = {field: getattr(args, dest) for dest, field in TRAINING_FIELDS.items() if getattr(args, dest) is not None}
    run = DrafterTraining(**given)
    for dest, low in TRAINING_MINIMUMS.items():
        if (value := getattr(run, TRAINING_FIELDS[dest])) < low:
            raise UsageError(f"--{dest.replace('_', '-')} must be at least {low}, got {value}")
    return run


def cmd_train_drafter(args: argparse.Namespace, cfg: Config) -> None:
    """voice train-drafter: self-distil an MTP drafter for the target."""
    from commands.train_drafter import train_drafter

    if args.target:
        cfg = _replace(cfg, "models", llm=args.target)
    print(json.dumps(train_drafter(cfg, training_run(args)), indent=2))


def _replace(cfg: Config, section: str, **values) -> Config:
    from dataclasses import replace

    return replace(cfg, **{section: replace(getattr(cfg, section), **values)})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every built subcommand."""
    from commands.fleet import add_fleet_parser

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config (default: configs/default.toml)")
    common.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)"
    )
    common.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    parser = argparse.ArgumentParser(prog="voice", description="Local low-latency voice assistant")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", parents=[common], help="prepare or list the embedded models")
    p.add_argument("action", choices=["prepare", "list"])
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("turn", parents=[common], help="one batch turn on a WAV file (baseline)")
    p.add_argument("audio", help="a WAV file with the question")
    p.add_argument("--output-wav", metavar="FILE", help="write the reply audio here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_turn)

    p = sub.add_parser("serve", parents=[common], help="serve the voice page and websocket")
    p.add_argument("--host", help=f"address to bind (default server.host, {ServerConfig.host})")
    p.add_argument("--port", type=int, help=f"port (default server.port, {ServerConfig.port}; 0 = any free)")
    p.set_defaults(func=cmd_serve)

    add_fleet_parser(sub, common)

    p = sub.add_parser("talk", parents=[common], help="talk through the local microphone and speaker")
    p.add_argument("--input-device", help="input device index or name (see `voice devices`)")
    p.add_argument("--output-device", help="output device index or name")
    p.add_argument("--input-wav", metavar="FILE", help="play this WAV as the microphone")
    p.add_argument("--output-wav", metavar="FILE", help="write the reply audio here instead of playing it")
    p.add_argument(
        "--barge-in",
        action="store_true",
        help="let speech interrupt replies (use headphones: no echo cancellation here)",
    )
    p.add_argument(
        "--server",
        metavar="WS_URL",
        help="talk through a running server or fleet (ws://…/ws) instead "
        "of loading the models here; reconnects when a worker drains (1001)",
    )
    p.add_argument("--token-env", metavar="VAR", help=TOKEN_ENV_HELP)
    p.set_defaults(func=cmd_talk)

    p = sub.add_parser("devices", parents=[common], help="list audio devices")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("bench", parents=[common], help="real-time turn latency benchmark")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--audio", nargs="+", metavar="DIR|FILE", help="WAV files or folders (default: bundled)")
    p.add_argument("--turns", type=int, help="number of turns (default: one per audio file)")
    p.add_argument("--baseline", action="store_true", help="also run the batch `voice turn` path")
    p.add_argument("--plot", metavar="PNG", help="draw the stage timeline and gap distribution")
    p.add_argument("--server", metavar="WS_URL", help="drive a running server instead (ws://…/ws)")
    p.add_argument(
        "--hesitation", action="store_true", help="also run questions with a pause mid-sentence (split turns, cut-ins)"
    )
    p.add_argument("--hesitation-only", action="store_true", help="run only the hesitation questions")
    p.add_argument(
        "--pauses",
        default=",".join(map(str, DEFAULT_PAUSES_MS)),
        metavar="MS,MS",
        help="pause lengths of the hesitation questions (default %(default)s)",
    )
    p.add_argument(
        "--questions", type=int, help=f"hesitation questions to use (default: all {len(HESITATION_QUESTIONS)})"
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="run the same audio again with this override on the loaded models (repeatable), "
        "e.g. turn.predictive=false",
    )
    p.set_defaults(func=cmd_bench)

    # defaults: commands.train_drafter.DrafterTraining (`training_run`)
    p = sub.add_parser("train-drafter", parents=[common], help="train an MTP drafter for the target")
    p.add_argument("--target", help="target model dir or hub id (default: models.llm)")
    p.add_argument("--prompts", type=int, help="generated training prompts")
    p.add_argument("--max-new-tokens", type=int, help="reply length per prompt")
    p.add_argument("--steps", type=int, help="training steps")
    p.add_argument("--batch", type=int, help="anchors per training step")
    p.add_argument("--depth", type=int, help="draft positions trained")
    p.add_argument("--layers", type=int, help="MLP blocks in the head (1-4)")
    p.add_argument(
        "--feature-layers",
        type=layer_list,
        metavar="L1,L2",
        help="target layers read besides the last hidden state (default: a third and two thirds "
        "of the way up; 'none' for the last hidden state only)",
    )
    p.add_argument(
        "--sampled", type=float, help="sampled replies per prompt besides the greedy one (more varied contexts)"
    )
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--context", type=int, help="recent target positions each draft step attends to (0: none)")
    p.add_argument("--sequences", metavar="JSON", help="reuse generated sequences from this file (written if absent)")
    p.add_argument(
        "--conversations",
        type=int,
        help="multi-turn training chats (earlier turns answered by the target) besides the prompts",
    )
    p.add_argument("--vocab", type=int, help="reduced drafter vocabulary")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to generate and train")
    p.add_argument("--out", help="output folder (default: the shipped drafter's folder)")
    p.add_argument("--gen-batch", type=int, help="prompts generated at once")
    p.set_defaults(func=cmd_train_drafter)

    p = sub.add_parser("soak", parents=[common], help="concurrent sessions + disconnect storm against a server")
    p.add_argument("--server", metavar="WS_URL", help="a running server (default: start one on a free port)")
    soak = SoakPlan()
    p.add_argument(
        "--clients", default=",".join(map(str, soak.clients)), help="concurrency levels (default %(default)s)"
    )
    p.add_argument("--turns", type=int, default=soak.turns, help="spoken turns per client (default %(default)s)")
    p.add_argument(
        "--storm", type=int, default=soak.storm, help="clients in the disconnect storm (0: none; default %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print JSON (what it always prints)")
    p.add_argument("--token-env", metavar="VAR", help=TOKEN_ENV_HELP)
    p.set_defaults(func=cmd_soak)

    p = sub.add_parser("decode-bench", parents=[common], help="benchmark the speculative decoder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--drafter", help="ngram | model | mtp | assistant (default: decode.drafter)")
    plan = DecodeBenchPlan()
    p.add_argument("--prompts", type=int, default=plan.prompts, help="bundled prompts (max 24; default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=plan.max_new_tokens, help="default %(default)s")
    p.add_argument("--device", help="cpu | cuda (overrides llm.device)")
    p.add_argument("--dtype", help="float32 | bf16 | fp16 (overrides llm.dtype)")
    p.add_argument(
        "--batch",
        type=int_list,
        help="also decode the prompts N at a time through the batched scheduler, per size, e.g. 1,2,4,8",
    )
    p.add_argument("--batch-only", action="store_true", help="with --batch: skip the fixed/adaptive/hf modes")
    p.add_argument(
        "--conversation",
        action="store_true",
        help="the bundled held-out multi-turn conversations instead of single questions",
    )
    p.add_argument(
        "--synthetic",
        metavar="CONFIG",
        help="random weights of a real config (llama-3.2-1b or a config"
        ".json) and an oracle drafter: the report says acceptance: synthetic",
    )
    p.add_argument(
        "--oracle-accept",
        metavar="A1,A2,…",
        help="with --synthetic: acceptance per draft position, "
        "the earlier accepted; the last repeats (default 0.8,0.7,0.6,0.5)",
    )
    p.add_argument("--prompt-tokens", type=int, help="with --synthetic: tokens per random prompt (default 64)")
    p.add_argument(
        "--tree",
        nargs="?",
        const="default",
        metavar="NxDxB,…",
        help="also run fixed draft trees of N nodes, D levels, B candidates a node (no value: "
        "3x2x2,4x2x3,6x3x3,8x4x4), and the adaptive controller with trees and with chains only",
    )
    p.set_defaults(func=cmd_decode_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `voice` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    loaded = sys.modules.get("voice.stack")  # imported only by the commands that load models
    stacks_before = loaded.stacks_loaded() if loaded is not None else 0
    try:
        cfg = load_config(args.config, config_overrides(args))
        args.func(args, cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:  # the command's worker threads stop after their current call, before the interpreter exits
        loaded = sys.modules.get("voice.stack")
        if loaded is not None:
            loaded.close_stacks(stacks_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
