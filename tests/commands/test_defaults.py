"""One source of defaults: what the CLI does with no flags is what the dataclasses say."""

import dataclasses

import pytest

from commands.bench import BenchPlan
from commands.cli import TRAINING_FIELDS, build_parser, training_run
from commands.cli_bench import DecodeBenchPlan, SoakPlan
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


def joined(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


# (subcommand, dest) -> the default its dataclass gives; None: the config decides at run time
COUNTERPARTS = {
    ("fleet", "workers"): Fleet.workers,
    ("fleet", "port"): Fleet.port,
    ("fleet", "first_worker_port"): Fleet.first_worker_port,
    ("fleet", "check_ms"): Fleet.check_ms,
    ("bench", "pauses"): joined(BenchPlan.pauses_ms),
    ("soak", "clients"): joined(SoakPlan.clients),
    ("soak", "turns"): SoakPlan.turns,
    ("soak", "storm"): SoakPlan.storm,
    ("decode-bench", "prompts"): DecodeBenchPlan.prompts,
    ("decode-bench", "max_new_tokens"): DecodeBenchPlan.max_new_tokens,
    ("serve", "host"): None,  # server.host
    ("serve", "port"): None,  # server.port
    ("soak", "token_env"): None,  # server.token_env
    ("talk", "token_env"): None,
    ("decode-bench", "drafter"): None,  # decode.drafter
    ("decode-bench", "device"): None,  # llm.device
    ("decode-bench", "dtype"): None,  # llm.dtype
    ("train-drafter", "target"): None,  # models.llm
    **{("train-drafter", dest): None for dest in TRAINING_FIELDS},  # DrafterTraining's, in `training_run`
}


def every_valued_option() -> set[tuple[str, str]]:
    """(subcommand, dest) of every option whose argparse default is a value (not None, a switch's
    False or an append's [])."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {
        (name, dest)
        for name in sub.choices
        for dest, default in options(name).items()
        if default is not None and default is not False and default != []
    }


@pytest.mark.parametrize("command, dest", sorted(COUNTERPARTS))
def test_a_flag_defaults_to_its_dataclass_or_the_config(command, dest):
    assert options(command)[dest] == COUNTERPARTS[command, dest]


def test_every_flag_with_a_default_has_a_counterpart():
    """A new flag with a literal default fails here until the default lives in a dataclass."""
    assert every_valued_option() <= set(COUNTERPARTS)


def test_the_plans_agree_with_the_config_and_each_other():
    assert (Fleet().port, Fleet().max_sessions) == (ServerConfig.port, ServerConfig.max_sessions)
    assert BenchPlan.pauses_ms == DEFAULT_PAUSES_MS


def test_decode_bench_help_states_the_synthetic_defaults():
    helps = {a.dest: a.help for a in subparser("decode-bench")._actions}
    assert ",".join(map(str, ORACLE_ACCEPT)) in helps["oracle_accept"]
    assert f"default {PROMPT_TOKENS}" in helps["prompt_tokens"]
    assert TREE_SHAPES in helps["tree"]
