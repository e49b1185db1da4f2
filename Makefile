# The two commands of the README: `make serve` and `make test`. Both set up what they need.
PY := .venv/bin/python
VOICE := .venv/bin/voice

.PHONY: setup setup-test setup-fleet prepare serve fleet llama-server lint test bench decode-bench

setup:
	bash scripts/bootstrap

setup-test:
	bash scripts/bootstrap --test

setup-fleet:
	bash scripts/bootstrap --fleet

prepare: setup
	$(VOICE) models prepare

serve: prepare
	$(VOICE) serve

# N workers (default 2, ports 8801…) behind HAProxy on http://127.0.0.1:8765/; Ctrl-C drains them.
# e.g. make fleet FLEET_ARGS="--workers 3"
fleet: setup-fleet
	$(VOICE) models prepare
	$(VOICE) fleet $(FLEET_ARGS)

# An OpenAI-compatible server on the embedded SmolLM2 GGUF, for llm.backend=openai (README "Deployment"):
# the first run builds llama-cpp-python from source (~55 min on 2 busy cores; pip caches the wheel);
# it serves the model as "smollm2" (--set llm.model=smollm2: the load-time check wants a listed name)
LLAMA_PORT ?= 8080
llama-server: setup
	$(PY) -m pip install -q "llama-cpp-python[server]==0.3.36"
	$(PY) -m llama_cpp.server --host 127.0.0.1 --port $(LLAMA_PORT) --n_ctx 4096 --model_alias smollm2 --model "$$($(PY) -c \
	  'from voice.models import LLM_GGUF, LLM_PACKAGE, package_dir; print(package_dir(LLM_PACKAGE) / LLM_GGUF)')"

# ruff's lint and format rules and the import contracts (layers, no cycles) are in pyproject.toml;
# then a size report (modules over ~400 lines, functions over ~60): a prompt to look, never a failure.
lint: setup-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	.venv/bin/lint-imports
	$(PY) scripts/sizes.py

test: lint
	$(VOICE) models prepare
	$(PY) -m pytest $(PYTEST_ARGS)

bench: prepare
	$(VOICE) bench --json --baseline

decode-bench: prepare
	$(VOICE) decode-bench --json
