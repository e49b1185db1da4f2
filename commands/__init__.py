"""The commands on top of every layer: the `voice` CLI (`cli.py`) and the subcommands it runs
(bench, soak, talk, turn, decode-bench, train-drafter). Nothing below imports from here."""
