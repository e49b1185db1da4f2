"""The commands on top of every layer: the `voice` CLI (`cli.py`, with its bench/soak/decode-bench
handlers in `cli_bench.py` and shared argument types in `cli_args.py`) and the subcommands it runs
(bench, soak, talk, turn, decode-bench, train-drafter). Nothing below imports from here."""
