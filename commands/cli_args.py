"""What the command line's values mean, for `cli.py` and the handlers beside it.

In: argv strings and a parsed `argparse.Namespace`. Out: `UsageError` for bad input, the
argparse value types of list flags, and the config overrides a command's flags make
(`--set` plus `--device`/`--dtype`). Cost: none.
"""

from __future__ import annotations

import argparse

from voice.config import secret_from_env
from voice.errors import VoiceError


class UsageError(VoiceError, ValueError):
    """Bad command-line input: a flag's value, or flags that do not go together (every command)."""


class DeviceError(RuntimeError):
    """No usable audio device (`voice talk`); the message says what to do instead."""


def int_list(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4] (argparse type: a bad value is a usage error)."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def layer_list(text: str) -> tuple[int, ...]:
    """'10,20' → (10, 20); 'none' → ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer numbers like 10,20 or 'none', got {text!r}") from None


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The `--set` values, then `llm.device`/`llm.dtype` from `--device`/`--dtype` where the command has them."""
    extra = list(args.set)
    for flag, key in (("device", "llm.device"), ("dtype", "llm.dtype")):
        if getattr(args, flag, None):
            extra.append(f"{key}={args.__dict__[flag]}")
    return extra


def env_token(name: str) -> str | None:
    """The server's shared secret from the environment variable `name` (`--token-env`; "": none)."""
    return secret_from_env(
        name,
        lambda name: UsageError(
            f"--token-env {name}: that environment variable is not set; export it (the server's secret)"
        ),
    )
