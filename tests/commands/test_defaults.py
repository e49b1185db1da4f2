"""One source of defaults: what the CLI does with no flags is what the dataclasses say."""

import dataclasses

from commands.bench import BenchPlan
from commands.cli import TRAINING_FIELDS, build_parser, training_run
from commands.decode_bench import TREE_SHAPES
from commands.decode_bench_synthetic import ORACLE_ACCEPT, PROMPT_TOKENS
from commands.fleet import Fleet
from commands.hesitation import DEFAULT_PAUSES_MS
from commands.train_drafter import DrafterTraining
from voice.config import ServerConfig


def subparser(name: str):
    """The argparse parser of one `voice` subcommand."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def options(name: str) -> dict[str, object]:
    """dest -> argparse default for each option of a subcommand (help and the common ones aside)."""
    skip = {"help", "config", "set", "debug"}
    return {a.dest: a.default for a in subparser(name)._actions if a.option_strings and a.dest not in skip}


def test_train_drafter_without_flags_runs_drafter_training_defaults():
    args = build_parser().parse_args(["train-drafter"])
    assert training_run(args) == DrafterTraining()
    assert DrafterTraining().layers == 2  # the shipped head's blocks (decode/assets/.../training.json)


def test_every_train_drafter_flag_reaches_its_field():
    run = training_run(build_parser().parse_args(["train-drafter", "--layers", "3", "--max-new-tokens", "40"]))
    assert (run.layers, run.max_new_tokens) == (3, 40)
    flags = options("train-drafter")
    fields = {f.name for f in dataclasses.fields(DrafterTraining)}
    assert set(TRAINING_FIELDS) == set(flags) - {"target"}  # every flag but --target sets a field
    assert set(TRAINING_FIELDS.values()) <= fields
    assert {dest: flags[dest] for dest in TRAINING_FIELDS} == dict.fromkeys(TRAINING_FIELDS)  # no second default


def test_fleet_flags_default_to_the_fleet_and_server_defaults():
    flags = options("fleet")
    fleet = Fleet()
    assert {k: flags[k] for k in ("workers", "port", "first_worker_port", "check_ms")} == {
        "workers": fleet.workers,
        "port": fleet.port,
        "first_worker_port": fleet.first_worker_port,
        "check_ms": fleet.check_ms,
    }
    assert (fleet.port, fleet.max_sessions) == (ServerConfig.port, ServerConfig.max_sessions)


def test_bench_pauses_default_to_the_hesitation_set():
    pauses = tuple(int(ms) for ms in options("bench")["pauses"].split(","))
    plan_default = next(f.default for f in dataclasses.fields(BenchPlan) if f.name == "pauses_ms")
    assert pauses == DEFAULT_PAUSES_MS == plan_default


def test_serve_and_soak_read_host_port_and_token_from_the_config():
    assert options("serve")["host"] is None and options("serve")["port"] is None  # server.host / server.port
    assert options("soak")["token_env"] is None  # server.token_env


def test_decode_bench_help_states_the_synthetic_defaults():
    helps = {a.dest: a.help for a in subparser("decode-bench")._actions}
    assert ",".join(map(str, ORACLE_ACCEPT)) in helps["oracle_accept"]
    assert f"default {PROMPT_TOKENS}" in helps["prompt_tokens"]
    assert TREE_SHAPES in helps["tree"]
