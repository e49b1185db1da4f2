"""The handlers of the measuring subcommands: `voice bench`, `voice soak`, `voice decode-bench`.

In: the parsed arguments and the config (`cli.py` routes here). Out: the benchmark's report,
printed as JSON or a short table; bad flags raise `UsageError`. Cost: what the benchmark runs
(the models load in-process, or `soak` starts a server unless given one).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from commands.cli_args import UsageError, config_overrides, env_token
from voice.config import Config, load_config


@dataclass(frozen=True)
class SoakPlan:
    """What `voice soak` runs without flags."""

    clients: tuple[int, ...] = (1, 2, 4)  # concurrency levels, one after another
    turns: int = 10  # spoken turns per client
    storm: int = 20  # clients in the disconnect storm (0: none)


@dataclass(frozen=True)
class DecodeBenchPlan:
    """What `voice decode-bench` decodes without flags."""

    prompts: int = 20  # bundled prompts (at most 24)
    max_new_tokens: int = 64


def cmd_decode_bench(args: argparse.Namespace, cfg: Config) -> None:
    """voice decode-bench: speculative decoding against plain greedy and baselines."""
    from commands.decode_bench import bench_from_args, print_table

    report = bench_from_args(args, cfg)  # --synthetic: random weights of a real config, an oracle drafter
    print(json.dumps(report, indent=2) if args.json else print_table(report))


def cmd_soak(args: argparse.Namespace, cfg: Config) -> None:
    """voice soak: concurrent sessions and a disconnect storm against a server."""
    import asyncio

    from commands.bench import bench_audio
    from commands.launch import spawn_server, stop_server
    from commands.machine import machine_info
    from commands.soak import disconnect_storm, soak
    from web.client import ServerLostError

    try:
        levels = [int(x) for x in args.clients.split(",")]
    except ValueError:
        raise UsageError(f"--clients must be a comma-separated list of integers, got {args.clients!r}") from None
    if any(n < 1 for n in levels) or args.turns < 1:
        raise UsageError("--clients and --turns must be at least 1")
    token = env_token(args.token_env or cfg.server.token_env)  # a server started here reads the same variable
    paths = bench_audio(cfg)
    # the server it starts runs this command's config and --set overrides
    passed = ([f"--config={args.config}"] if args.config else []) + [f"--set={kv}" for kv in args.set]
    proc, url = (
        (None, args.server)
        if args.server
        else spawn_server(*passed, "--set", f"server.max_sessions={max(levels + [args.storm]) + 2}")
    )
    ws_url = url if url.startswith("ws") else url.replace("http", "ws", 1) + "ws"

    async def soak_then_storm() -> dict:
        result = await soak(ws_url, paths, levels, args.turns, token=token)
        result["machine"] = machine_info()
        if args.storm and "server_lost" not in result:
            try:
                result["storm"] = await disconnect_storm(ws_url, paths[0], args.storm, token=token)
            except ServerLostError as err:
                result["server_lost"] = str(err)
        return result

    try:
        result = asyncio.run(soak_then_storm())  # one event loop for the levels and the storm
    finally:
        if proc is not None:
            stop_server(proc)
    print(json.dumps(result, indent=2), flush=True)
    if "server_lost" in result:
        answered = result["warmup_answered"] + sum(level["answered"] for level in result["levels"])
        lost = result["server_lost"]
        raise ServerLostError(f"{lost} — {answered} turns answered before; the JSON above has the counts")


def cmd_bench(args: argparse.Namespace, cfg: Config) -> None:
    """voice bench: real-time turn latency of the streaming pipeline."""
    import asyncio

    from commands.bench import BenchCutError, plot, report, run_bench
    from commands.machine import machine_info

    plan = _bench_plan(args)
    try:
        result, records = asyncio.run(run_bench(cfg, plan))
    except BenchCutError as err:  # the turns before still count: their JSON, then the one-line error
        if args.json:
            cut = {"machine": machine_info(), **report(err.records), "server_lost": str(err)}
            print(json.dumps(cut, indent=2), flush=True)
        raise
    if args.plot and records:
        plot(records, args.plot)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["machine"]
    print(
        f"machine: {m['cpu']}, {m['logical_cores']} cores, avx2 {m['avx2']} avx512 {m['avx512']} "
        f"amx {m['amx']} vnni {m['vnni']}"
    )
    if "turn_gap_ms" in result:
        gap = result["turn_gap_ms"]
        print(
            f"answered {result['answered']}/{result['turns']}  turn gap p50 {gap['p50']} ms  "
            f"p90 {gap['p90']} ms  max {gap['max']} ms"
        )
        for stage, v in result["stages_ms"].items():
            print(f"  {stage:12s} p50 {v['p50']} ms after speech end")
    if "baseline" in result:
        print(
            f"batch baseline p50 {result['baseline']['turn_gap_ms']['p50']} ms "
            f"(ratio {result.get('gap_ratio_vs_baseline')})"
        )
    for name, section in (
        ("hesitation", result.get("hesitation")),
        ("compared hesitation", result.get("compare", {}).get("hesitation")),
    ):
        if section:
            print(
                f"{name}: {section['split_turns']}/{section['runs']} split turns, {section['cut_ins']} cut-ins, "
                f"gap p50 {section['turn_gap_ms']['p50']} ms; by pause {section['by_pause_ms']}"
            )
    if result.get("compare", {}).get("turn_gap_ms"):
        c = result["compare"]
        print(
            f"compared ({' '.join(c['set'])}): gap p50 {c['turn_gap_ms']['p50']} ms, main/compared p50 {c['p50_ratio']}"
        )


def _bench_plan(args: argparse.Namespace):
    """The `voice bench` arguments, checked, as a `BenchPlan`."""
    from commands.bench import BenchPlan

    if args.server and not args.server.startswith(("ws://", "wss://")):
        raise UsageError(f"--server must be a ws:// or wss:// URL, got {args.server!r}")
    if args.server and (args.hesitation or args.hesitation_only or args.compare):
        raise UsageError("--hesitation and --compare run in-process only: leave out --server")
    for flag, value in (("--turns", args.turns), ("--questions", args.questions)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1")
    try:
        pauses = tuple(int(x) for x in args.pauses.split(","))
    except ValueError:
        raise UsageError(f"--pauses must be comma-separated milliseconds, got {args.pauses!r}") from None
    if not all(0 < ms <= 5000 for ms in pauses):
        raise UsageError(f"--pauses must be between 1 and 5000 ms, got {args.pauses!r}")
    compare_cfg = load_config(args.config, config_overrides(args) + args.compare) if args.compare else None
    return BenchPlan(
        tuple(args.audio or ()),
        args.turns,
        args.baseline,
        args.server,
        main=not args.hesitation_only,
        hesitation=args.hesitation or args.hesitation_only,
        pauses_ms=pauses,
        questions=args.questions,
        compare_set=tuple(args.compare),
        compare_cfg=compare_cfg,
        progress=not args.json,
    )
