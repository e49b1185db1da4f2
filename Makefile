# The two commands of the README: `make serve` and `make test`. Both set up what they need.
PY := .venv/bin/python
VOICE := .venv/bin/voice

.PHONY: setup setup-test prepare serve lint test bench decode-bench

setup:
	bash scripts/bootstrap

setup-test:
	bash scripts/bootstrap --test

prepare: setup
	$(VOICE) models prepare

serve: prepare
	$(VOICE) serve

# ruff's lint rules and the import contracts (layers, no cycles) are in pyproject.toml.
lint: setup-test
	$(PY) -m ruff check .
	.venv/bin/lint-imports

test: lint
	$(VOICE) models prepare
	$(PY) -m pytest $(PYTEST_ARGS)

bench: prepare
	$(VOICE) bench --json --baseline

decode-bench: prepare
	$(VOICE) decode-bench --json
