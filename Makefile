# The two commands of the README: `make serve` and `make test`. Both set up what they need.
PY := .venv/bin/python
VOICE := .venv/bin/voice

.PHONY: setup setup-test prepare serve test bench decode-bench

setup:
	bash scripts/bootstrap

setup-test:
	bash scripts/bootstrap --test

prepare: setup
	$(VOICE) models prepare

serve: prepare
	$(VOICE) serve

test: setup-test
	$(VOICE) models prepare
	$(PY) -m pytest $(PYTEST_ARGS)

bench: prepare
	$(VOICE) bench --json --baseline

decode-bench: prepare
	$(VOICE) decode-bench --json
