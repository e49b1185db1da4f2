"""Every config key takes effect where it is read.

For each `section.key` of `voice.config.Config` (listed from the dataclasses, so a new key
without a probe fails) a probe loads the config twice through `load_config(None, overrides)` —
what `--set section.key=value` does — once without and once with a non-default value, and
observes the component that reads the key: the built reply model (its reply, its drafter's
proposals, the k its controller asks and what its scheduler runs on scripted steps), the
OpenAI-compatible backend's client and request, the ASR and TTS
as `load_stack` builds them (faster-whisper and piper replaced by recording fakes), the
turn-taker on a scripted timeline, a session on a typed conversation, the server. The test
fails when the two observations are equal. A tiny random Llama with a word-level tokenizer
stands in for the LLM; nothing is downloaded and no clock decides a result.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import heapq
import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from voice.config import Config, load_config

KEYS = [f"{s.name}.{k.name}" for s in dataclasses.fields(Config) for k in dataclasses.fields(getattr(Config(), s.name))]


@dataclass(frozen=True)
class Probe:
    """`value` for `--set`, what it changes (`observe`), and overrides both loads share (`base`);
    `{name}` in a string is one of the rig's paths."""

    value: str
    observe: Callable[[Config, "Rig"], object]
    base: tuple[str, ...] = ()


PROBES: dict[str, Probe] = {}


def probe(key: str, value: str, *base: str):
    """Register `observe(cfg, rig)` as the probe of `key`."""

    def register(observe):
        assert key not in PROBES, f"two probes for {key}"
        PROBES[key] = Probe(value, observe, base)
        return observe

    return register


@dataclass
class Rig:
    """Paths of the fake models and the test's monkeypatch."""

    paths: dict[str, str]
    monkeypatch: pytest.MonkeyPatch


# ---- the reply model: a tiny Llama under models.cache_dir --------------------------------------
WORDS = ["<unk>", "<|im_start|>", "<|im_end|>", ".", "?", "!", "user", "assistant", "system"]
WORDS += [chr(c) for c in range(ord("a"), ord("z") + 1)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_llm(path: Path) -> None:
    """A random Llama and a word-level tokenizer with a ChatML template, as a local model dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"]
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    model = tiny_llama(0, vocab=len(WORDS))
    model.generation_config.eos_token_id = WORDS.index("<|im_end|>")
    model.save_pretrained(path)


def save_mtp_head(path: Path, layers: int) -> None:
    from decode.mtp import MTPConfig, MTPHead, save_mtp

    torch.manual_seed(0)
    save_mtp(MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=layers)), path)


@pytest.fixture(scope="module")
def fake_models(tmp_path_factory) -> dict[str, str]:
    """A models.cache_dir "prepared" with the tiny LLM and an empty whisper file, and other dirs."""
    from voice.models import LLM_DIR, WHISPER_DIR

    root = tmp_path_factory.mktemp("models")
    save_tiny_llm(root / "cache" / LLM_DIR)
    save_tiny_llm(root / "other-llm")
    (root / "cache" / WHISPER_DIR).mkdir()
    (root / "cache" / WHISPER_DIR / "model.bin").touch()
    save_mtp_head(root / "mtp1", layers=1)
    save_mtp_head(root / "mtp2", layers=2)
    (root / "env-cache").mkdir()
    return {name: str(root / name) for name in ("cache", "other-llm", "mtp1", "mtp2", "env-cache")}


@pytest.fixture
def rig(fake_models, monkeypatch) -> Rig:
    monkeypatch.setenv("VOICE_CACHE", fake_models["env-cache"])  # never the user's cache
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    threads = torch.get_num_threads()  # ReplyModel sets the process's torch threads (llm.threads)
    yield Rig(fake_models, monkeypatch)
    torch.set_num_threads(threads)


_MODELS: dict[Config, object] = {}


def reply_model(cfg: Config):
    """`ReplyModel(cfg)`, built once per config (its scheduler thread stays, idle)."""
    from voice.llm import ReplyModel

    if cfg not in _MODELS:
        _MODELS[cfg] = ReplyModel(cfg)
    return _MODELS[cfg]


def fresh_model(cfg: Config) -> None:
    """Build a `ReplyModel(cfg)` for its side effects, and stop its scheduler."""
    from voice.llm import ReplyModel

    ReplyModel(cfg).scheduler.close()


# one torch thread: on a busy machine more spin against each other (a model built in 0.2 s took 10)
LOCAL = (
    "models.cache_dir={cache}",
    "llm.threads=1",
    "decode.drafter=ngram",
    "decode.linear_layout=linear",
    "decode.slots=1",
    "decode.max_draft=2",
)
REMOTE = ("llm.base_url=http://127.0.0.1:9/v1",)
STACK = ("models.cache_dir={cache}",)


def remote_request(cfg: Config) -> dict:
    """The chat request the OpenAI-compatible backend built from `cfg` sends (its client faked)."""
    from voice.stack import remote_replies

    class Completions:
        async def create(self, **request):
            sent.append(request)
            return Stream()

    class Stream:
        def __aiter__(self):
            return self

        async def __anext__(self):
            raise StopAsyncIteration

        async def close(self):
            pass

    async def reply() -> None:
        async for _ in replies.reply([{"role": "user", "content": "hi"}]):
            pass

    sent: list[dict] = []
    replies = remote_replies(cfg, lambda text: [])
    replies.client = SimpleNamespace(chat=SimpleNamespace(completions=Completions()))
    asyncio.run(reply())
    return sent[0]


def remote_client(cfg: Config):
    from voice.stack import remote_replies

    replies = remote_replies(cfg, lambda text: [])
    return None if replies is None else replies.client


@probe("models.llm", "{other-llm}", *LOCAL)
def _(cfg, rig):
    return reply_model(cfg).model.name_or_path


@probe("models.cache_dir", "{cache}")
def _(cfg, rig):
    from voice.models import list_models

    return [row.path for row in list_models(cfg.models)]


@probe("llm.device", "cpu:0", *LOCAL)
def _(cfg, rig):
    from transformers import LlamaForCausalLM

    moved, to = [], LlamaForCausalLM.to
    rig.monkeypatch.setattr(LlamaForCausalLM, "to", lambda self, *a, **kw: moved.append(a) or to(self, *a, **kw))
    fresh_model(cfg)
    return moved


@probe("llm.dtype", "bfloat16", *LOCAL)
def _(cfg, rig):
    return reply_model(cfg).model.dtype


@probe("llm.threads", "2", *LOCAL)
def _(cfg, rig):
    fresh_model(cfg)  # torch's threads are the process's: the newest model set them
    return torch.get_num_threads()


def plain_reply(cfg: Config) -> list[int]:
    """The built model's reply to "hi" without drafting, from its decoder's configured seed."""
    llm = reply_model(cfg)
    llm.decoder.generator.manual_seed(llm.decoder.generator.initial_seed())  # as built, whatever ran before
    with llm.lock:
        return [t for span in llm.reply_plain([{"role": "user", "content": "hi"}]) for t in span.token_ids]


@probe("llm.max_new_tokens", "7", *LOCAL, *REMOTE)
def _(cfg, rig):
    return {"local": len(plain_reply(cfg)), "remote": remote_request(cfg)["max_tokens"]}


@probe("llm.temperature", "3.0", *LOCAL, *REMOTE, "llm.max_new_tokens=24")
def _(cfg, rig):
    return {"local": plain_reply(cfg), "remote": remote_request(cfg)["temperature"]}


@probe("llm.top_p", "0.5", *LOCAL, *REMOTE, "llm.max_new_tokens=24", "llm.temperature=3.0")
def _(cfg, rig):
    return {"local": plain_reply(cfg), "remote": remote_request(cfg)["top_p"]}


@probe("llm.seed", "5", *LOCAL, "llm.max_new_tokens=24", "llm.temperature=3.0")
def _(cfg, rig):
    """The sampled reply, and the drafter's generator (a sampling drafter draws from it)."""
    return {"reply": plain_reply(cfg), "drafter": reply_model(cfg).generator.initial_seed()}


@probe("llm.system_prompt", "Be brief.", *LOCAL, *REMOTE)
def _(cfg, rig):
    question = [{"role": "user", "content": "hi"}]
    return {"local": reply_model(cfg).chat_ids(question), "remote": remote_request(cfg)["messages"]}


@probe("llm.backend", "openai", *STACK, *REMOTE)
def _(cfg, rig):
    """The sessions' reply backend, and the server checked before the models load (faked here)."""
    import voice.stack

    checked = []
    rig.monkeypatch.setattr(voice.stack, "check_server", lambda url, *rest: checked.append(url))
    return {"replies": type(loaded_stack(cfg, rig).replies(cfg.llm)).__name__, "load_check": checked}


@probe("llm.base_url", "http://127.0.0.1:9/v1")
def _(cfg, rig):
    client = remote_client(cfg)
    return client and str(client.base_url)


@probe("llm.model", "served-name", *REMOTE)
def _(cfg, rig):
    return remote_request(cfg)["model"]


@probe("llm.api_key_env", "VOICE_TEST_KEY", *REMOTE)
def _(cfg, rig):
    rig.monkeypatch.setenv("VOICE_TEST_KEY", "from-the-environment")
    return remote_client(cfg).api_key


@probe("llm.timeout_s", "5.0", *REMOTE)
def _(cfg, rig):
    return remote_client(cfg).timeout


@probe("decode.drafter", "none", *LOCAL)
def _(cfg, rig):
    """What the built model's drafter proposes after a context that repeats itself."""
    return reply_model(cfg).drafter.propose(NGRAM_CONTEXT, 2, None).tokens


@probe("decode.controller", "fixed", *LOCAL)
def _(cfg, rig):
    return type(reply_model(cfg).decoder.controller).__name__


# ---- the built model's controller, drafter and scheduler, on scripted steps (no measured time) --
FLAT_COSTS = {0: 1.0, 8: 1.4}  # seconds of a verify forward per k: a machine where drafting pays
STEEP_COSTS = {0: 1.0, 8: 3.0}  # ... where it pays only when most drafts are accepted


def controller_ks(cfg: Config, accepted: list[int], costs: dict, draft_s: list[float] | None = None) -> list[int]:
    """The k the built reply model's controller asks before each step and after the last, the target
    accepting `accepted[i]` tokens of step i's draft; its verify costs are `costs`, not the load-time
    calibration, and not learnt (no verify time is reported); step i drafts `draft_s[i]` seconds
    per token (default 0)."""
    from decode.controller import StepStats

    built = reply_model(cfg).decoder.controller
    ctl = dataclasses.replace(built, verify_cost_s=dict(costs), draft_cost_s=0.0, load=1.0, _since_draft=0)
    ks = []
    for n, per_token_s in zip(accepted, draft_s or [0.0] * len(accepted)):
        ks.append(k := ctl.next_k())
        ctl.update(StepStats(k, min(n, k), k * per_token_s, None))
    return ks + [ctl.next_k()]


@probe("decode.max_draft", "3", *LOCAL)
def _(cfg, rig):
    """The k a controller asks while every draft is accepted, and the widths timed at load."""
    calibrated = sorted(reply_model(cfg).verify_cost_s)
    return {"controller": controller_ks(cfg, [8] * 4, FLAT_COSTS), "calibration": calibrated}


@probe("decode.fixed_draft", "1", *LOCAL, "decode.controller=fixed")
def _(cfg, rig):
    """The draft lengths of a reply (the n-gram drafter proposes up to k where its context repeats)."""
    llm = reply_model(cfg)

    async def draft_lens() -> list[int]:
        return [span.draft_len async for span in llm.reply([{"role": "user", "content": "a b c a b c a b c a b"}])]

    return max(asyncio.run(draft_lens()))


NGRAM_CONTEXT = [1, 2, 3, 4, 9, 9, 3, 4, 7, 2, 3, 4]  # [3, 4] recurs after 2 and after 9; [2, 3, 4] after 1


@probe("decode.ngram_max", "2", *LOCAL)
def _(cfg, rig):
    """The longest match wins: [2, 3, 4] continues with 9 (n = 3), [3, 4] with 7 (n <= 2)."""
    return reply_model(cfg).drafter.propose(NGRAM_CONTEXT, 2, None).tokens


@probe("decode.ngram_min", "2", *LOCAL)
def _(cfg, rig):
    """A context whose last two tokens never occurred before: n = 1 still finds its last token."""
    return reply_model(cfg).drafter.propose([5, 6, 7, 6, 8, 7], 2, None).tokens


@probe(
    "decode.draft_model",
    "{other-llm}",
    *LOCAL,
    "decode.drafter=model",
    "decode.draft_model={cache}/smollm2-135m-instruct",
)
def _(cfg, rig):
    return reply_model(cfg).drafter.hf_model.name_or_path


@probe("decode.mtp_path", "{mtp2}", *LOCAL, "decode.drafter=mtp", "decode.mtp_path={mtp1}")
def _(cfg, rig):
    return reply_model(cfg).drafter.head.cfg.layers


@probe("decode.probe_every", "4", *LOCAL)
def _(cfg, rig):
    """Where drafting never pays and nothing is accepted: the steps at which a draft is tried anyway."""
    ks = controller_ks(cfg, [0] * 40, STEEP_COSTS)
    return [i for i, k in enumerate(ks) if k]


@probe("decode.decay", "0.5", *LOCAL)
def _(cfg, rig):
    """Drafts accepted for 8 steps, then rejected: how soon the controller stops drafting."""
    return controller_ks(cfg, [8] * 8 + [0] * 8, STEEP_COSTS)


@probe("decode.prior_accept", "0.8", *LOCAL)
def _(cfg, rig):
    """The k asked before anything was measured."""
    return controller_ks(cfg, [], STEEP_COSTS)


@probe("decode.cost_ema", "0.5", *LOCAL)
def _(cfg, rig):
    """The controller: drafting a token goes from 0.02 s to 2 s (a plain step: 1 s), one token of each
    draft accepted; how soon it stops drafting. The scheduler: its estimate of a 4-token forward as
    steps of 1 s follow one of 2 s."""
    ks = controller_ks(cfg, [1] * 12, FLAT_COSTS, draft_s=[0.02] * 4 + [2.0] * 8)
    sched = idle_copy(reply_model(cfg).scheduler, width_cost_s={4: 2.0})
    estimates = []
    for _ in range(3):
        sched._learn_cost(4, 1.0)
        estimates.append(round(sched.cost(4), 3))
    return {"controller": ks, "scheduler": estimates}


def idle_copy(sched, **replaced):
    """A copy of the built model's scheduler to drive by hand (its thread, idle, keeps the original)."""
    twin = copy.copy(sched)
    twin.__dict__.update(replaced)
    return twin


def ticket(job, urgent: bool = True, played_until_t: float = 0.0):
    """A scheduler ticket already holding `job`, with the given standing."""
    from decode.scheduler import Priority, Ticket

    made = Ticket(lambda dec: job, [1], lambda span: None, Priority(urgent, False, played_until_t))
    made.job = job
    return made


def step_feeds(cfg: Config) -> list[int | None]:
    """The built scheduler's step over a reply decoding at k = 2 and a prompt to prefill: what it
    asks of each (the reply's k, the prefill's token budget); the jobs record and feed nothing."""
    from decode.controller import FixedController

    asked = []

    class Recording:
        def __init__(self, prefilling: bool) -> None:
            self.prefilling, self.controller, self.done = prefilling, FixedController(2), False

        def feed(self, k=None, max_tokens=None):
            asked.append(max_tokens if self.prefilling else k)
            return []

        def drain(self):
            return []

    idle_copy(reply_model(cfg).scheduler)._step([ticket(Recording(False)), ticket(Recording(True))])
    return asked


def runnable(cfg: Config, rig: Rig, *tickets) -> list[bool]:
    """Which of `tickets` (on the built scheduler's slots, the clock at 100 s) take part in a step."""
    import decode.scheduler

    rig.monkeypatch.setattr(decode.scheduler, "time", SimpleNamespace(perf_counter=lambda: 100.0))
    chosen = idle_copy(reply_model(cfg).scheduler, _busy=list(tickets))._runnable()
    return [t in chosen for t in tickets]


@probe("decode.slots", "2", *LOCAL)
def _(cfg, rig):
    """How many of three waiting replies start at once (each on its own slot)."""
    job = SimpleNamespace(done=False, stop_if_cancelled=lambda: False)
    sched = reply_model(cfg).scheduler
    twin = idle_copy(sched, _busy=[None] * len(sched.slots), _waiting=[ticket(job) for _ in range(3)])
    twin._used = [0.0] * len(sched.slots)
    twin._assign()
    return sum(t is not None for t in twin._busy)


@probe("decode.step_tokens", "32", *LOCAL)
def _(cfg, rig):
    return step_feeds(cfg)


@probe("decode.talking_weight", "1.0", *LOCAL)
def _(cfg, rig):
    """The k planned for an urgent reply and one already talking, sharing a step whose width costs
    a quarter of a plain step per token: the talking one drafts less the less it weighs."""
    from voice.llm import make_controller

    steep = {w: 1.0 + 0.25 * (w - 1) for w in range(1, 65)}
    replies = [SimpleNamespace(controller=make_controller(cfg, FLAT_COSTS), prefilling=False) for _ in range(2)]
    sched = idle_copy(reply_model(cfg).scheduler, width_cost_s=steep)
    plan = sched._plan([ticket(replies[0], urgent=True), ticket(replies[1], urgent=False)])
    return list(plan.values())


@probe("decode.defer_ahead_s", "1.0", *LOCAL)
def _(cfg, rig):
    """A talking reply 2 s ahead of playback beside an urgent one: does it take part in the step?"""
    return runnable(cfg, rig, ticket(None, urgent=True), ticket(None, urgent=False, played_until_t=102.0))


@probe("decode.linear_layout", "weight_major", *LOCAL)
def _(cfg, rig):
    return reply_model(cfg).target.layout


@probe("decode.block_weights", "false", *LOCAL)
def _(cfg, rig):
    """Whether the built model asks its target to hold block weights (the fake model's random weights are
    not blocks, so the answer is counted, not timed)."""
    from decode.target import StaticLlamaTarget

    asked = []
    rig.monkeypatch.setattr(StaticLlamaTarget, "use_blocks", lambda self: asked.append(1) or 0)
    fresh_model(cfg)
    return len(asked)


@probe("decode.cuda_graphs", "false", *LOCAL)
def _(cfg, rig):
    """CPU-only here: the built model is told its target sits on CUDA and asked to capture."""
    import decode.graphs

    llm, captured = reply_model(cfg), []
    rig.monkeypatch.setattr(decode.graphs, "StepGraphs", lambda target, widths, slot, trees: captured.append(slot))
    rig.monkeypatch.setattr(llm.target, "device", torch.device("cuda"))
    llm._capture_graphs(cfg, [0])
    return captured


@probe("decode.tree_branch", "4", *LOCAL, "decode.drafter=mtp", "decode.mtp_path={mtp1}", "decode.max_draft=6")
def _(cfg, rig):
    """The draft the built model feeds after a prompt when asked for 6 tokens: a tree (its parents) or a
    chain (None), and the candidates per node its controller plans with."""
    from decode.jobs import ReplyJob

    llm = reply_model(cfg)
    with llm.lock:
        dec = llm.decoder
        job = ReplyJob(dec, llm.chat_ids([{"role": "user", "content": "hi"}]), llm.settings)
        while job.prefilling:
            job.take(dec.target.forward(job.feed()), 0.0)
        job.feed(k=6)
        return {"parents": job.parents, "branch": dec.controller.branch}


# ---- ASR and TTS as load_stack builds them, their libraries faked ---------------------------
class FakeWhisperModel:
    """faster-whisper's WhisperModel as `WhisperASR` drives it (also its CTranslate2 model and
    hf tokenizer): records what it is given, hears `heard` on every decode."""

    heard = ("the the the the the the the the", 0.0, -0.5)  # text, P(no speech), avg log-prob

    def __init__(self, model_dir: str, **options) -> None:
        self.model_dir, self.options = model_dir, options
        self.model = self.hf_tokenizer = self
        self.is_multilingual = False
        self.windows: list[int] = []
        self.searches: list[dict] = []
        self.batches: list[int] = []  # prompts per generate call

    def feature_extractor(self, audio: np.ndarray) -> np.ndarray:
        return np.zeros((80, len(audio) // 160), np.float32)

    def encode(self, mel, to_cpu: bool = False):
        self.windows.append(mel.shape[-1])
        return mel

    def generate(self, encoded, prompts, **options) -> list:
        self.searches.append({k: v for k, v in options.items() if k in ("beam_size", "sampling_temperature")})
        self.batches.append(len(prompts))
        _, no_speech_prob, avg_logprob = self.heard
        ids = [9, 9, 9]
        result = SimpleNamespace(sequences_ids=[ids], scores=[avg_logprob * 4 / 3], no_speech_prob=no_speech_prob)
        return [result] * len(prompts)


class FakeWhisperTokenizer:
    def __init__(self, hf_tokenizer: FakeWhisperModel, multilingual: bool, task: str, language: str) -> None:
        self.model, self.language = hf_tokenizer, language
        self.sot_sequence, self.no_timestamps = (1,), 2

    def decode(self, ids: list[int]) -> str:
        return self.model.heard[0]


class FakeVoice:
    """A piper voice: records where it was loaded from and each synthesis config."""

    def __init__(self, path: str) -> None:
        self.path, self.config, self.syn_configs = path, SimpleNamespace(sample_rate=22050), []

    @classmethod
    def load(cls, path: str) -> FakeVoice:
        return cls(path)

    def synthesize(self, text: str, syn_config):
        self.syn_configs.append(syn_config)
        yield SimpleNamespace(audio_int16_array=np.zeros(10, np.int16), sample_rate=22050)


class FakeSession:
    """An onnxruntime session: keeps the options piper's voice was given."""

    def __init__(self, path: str, sess_options, providers) -> None:
        self.path, self.options = path, sess_options


def loaded_stack(cfg: Config, rig: Rig):
    """`load_stack(cfg)` with faster-whisper and piper faked (and the reply model, probed above)."""
    import faster_whisper
    import faster_whisper.tokenizer
    import onnxruntime
    import piper

    import voice.stack

    rig.monkeypatch.setattr(faster_whisper, "WhisperModel", FakeWhisperModel)
    rig.monkeypatch.setattr(faster_whisper.tokenizer, "Tokenizer", FakeWhisperTokenizer)
    rig.monkeypatch.setattr(piper, "PiperVoice", FakeVoice)
    rig.monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    rig.monkeypatch.setattr(voice.stack, "ReplyModel", lambda cfg: SimpleNamespace(token_ids=lambda text: []))
    return voice.stack.load_stack(cfg)


def transcribed(cfg: Config, rig: Rig, heard: tuple | None = None) -> SimpleNamespace:
    """One second of audio through the stack's ASR; what it decoded, on which windows, and the text."""
    if heard:
        rig.monkeypatch.setattr(FakeWhisperModel, "heard", heard)
    asr = loaded_stack(cfg, rig).asr
    text = asr.transcribe(np.zeros(16000, np.float32))
    return SimpleNamespace(model=asr.model, tokenizer=asr.tokenizer, text=text)


SPEECH_HEARD_AS_NOISE = ("hello there", 0.5, -1.5)  # P(no speech) 0.5, avg log-prob -1.5


@probe("models.asr", "{other-llm}", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.model_dir


@probe("asr.language", "de", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).tokenizer.language


@probe("asr.beam_size", "3", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.searches[0]


@probe("asr.compute_type", "float32", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.options["compute_type"]


@probe("asr.threads", "3", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.options["cpu_threads"]


@probe("asr.min_window_frames", "800", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.windows[0]


@probe("asr.pad_frames", "600", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.windows[0]


@probe("asr.no_speech_threshold", "0.6", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig, SPEECH_HEARD_AS_NOISE).text


@probe("asr.log_prob_threshold", "-2.0", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig, SPEECH_HEARD_AS_NOISE).text


@probe("asr.loop_retry_window_frames", "2000", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.windows


@probe("asr.loop_retry_temperature_step", "0.3", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.searches


@probe("asr.loop_retry_max_temperature", "1.0", *STACK)
def _(cfg, rig):
    return transcribed(cfg, rig).model.searches


@probe("asr.max_batch", "2", *STACK)
def _(cfg, rig):
    """Four sessions' decodes queued behind a running one: batches of at most max_batch."""
    stack = loaded_stack(cfg, rig)
    gate = threading.Event()
    stack.asr_worker.submit(gate.wait)

    async def four():
        decodes = [asyncio.ensure_future(stack.transcribe(np.zeros(16000 + 800 * i, np.float32))) for i in range(4)]
        await asyncio.sleep(0)  # all four queued before the worker is free
        gate.set()
        return await asyncio.gather(*decodes)

    asyncio.run(four())
    stack.close()
    return [
        n
        for n, search in zip(stack.asr.model.batches, stack.asr.model.searches)
        if "sampling_temperature" not in search
    ][:2]


@probe("models.tts", "/voices/other.onnx", *STACK)
def _(cfg, rig):
    return loaded_stack(cfg, rig).tts.voice.path


@probe("tts.threads", "3", *STACK)
def _(cfg, rig):
    return loaded_stack(cfg, rig).tts.voice.session.options.intra_op_num_threads


@probe("tts.length_scale", "1.5", *STACK)
def _(cfg, rig):
    tts = loaded_stack(cfg, rig).tts
    tts.synthesize_all("hello")
    return tts.voice.syn_configs[0].length_scale


# ---- turn-taking: the session's TurnTaker on a scripted timeline ------------------------------
W = 0.032  # one VAD window


def speech(seconds: float, prob: float = 0.9) -> list[float]:
    return [prob] * round(seconds / W)


def quiet(seconds: float) -> list[float]:
    return [0.02] * round(seconds / W)


def timeline(cfg: Config, probs: list[float], score: float = 0.5, asr_s: float = 0.1) -> list[tuple]:
    """The actions of `TurnTaker(turn_settings(cfg))` (what a session builds) for one VAD probability
    per window; a decode hears one more word per 0.25 s of audio and answers after `asr_s`, every
    text scores `score`."""
    from voice.pipeline import turn_settings
    from voice.turnevents import Hypothesis, Score, ScoreText, StartReply, Transcribe, Window
    from voice.turntaking import TurnTaker

    words = "what is the capital of france today".split()
    taker, due, log, order = TurnTaker(turn_settings(cfg)), [], [], itertools.count()

    def feed(event, t: float) -> None:
        for action in taker.step(event):
            log.append((round(t, 3), type(action).__name__))
            if isinstance(action, Transcribe):
                text = " ".join(words[: int(action.audio_end_t / 0.25)])
                heapq.heappush(due, (t + asr_s, next(order), Hypothesis(action.utterance, text, action.audio_end_t)))
            elif isinstance(action, (ScoreText, StartReply)):
                heapq.heappush(due, (t + 0.05, next(order), Score(action.text, score)))

    for i, prob in enumerate(probs):
        while due and due[0][0] <= i * W:
            t, _, event = heapq.heappop(due)
            feed(event, t)
        feed(Window(i * W, prob), i * W)
    return log


QUESTION = speech(1.6) + quiet(2.5)


@probe("vad.threshold", "0.4")
def _(cfg, rig):
    return timeline(cfg, speech(1.0, prob=0.45) + quiet(2.5))


@probe("vad.hysteresis", "0.3")
def _(cfg, rig):
    return timeline(cfg, speech(1.0) + speech(0.5, prob=0.3) + quiet(2.5))


@probe("vad.min_speech_ms", "400")
def _(cfg, rig):
    return timeline(cfg, QUESTION)


@probe("vad.max_utterance_s", "1.0")
def _(cfg, rig):
    return timeline(cfg, QUESTION)


@probe("asr.interval_ms", "600")
def _(cfg, rig):
    return timeline(cfg, QUESTION)


@probe("asr.partial_load", "0.25")
def _(cfg, rig):
    return timeline(cfg, QUESTION, asr_s=0.2)


@probe("asr.final_tail_ms", "500")
def _(cfg, rig):
    return timeline(cfg, QUESTION)


@probe("turn.predictive", "false")
def _(cfg, rig):
    return timeline(cfg, QUESTION)


@probe("turn.min_silence_ms", "600")
def _(cfg, rig):
    return timeline(cfg, QUESTION, score=0.5)


@probe("turn.max_silence_ms", "600")
def _(cfg, rig):
    return timeline(cfg, QUESTION, score=0.001)


@probe("turn.eot_low", "0.0001")
def _(cfg, rig):
    """Read twice: the silence an unlikely ending needs, and whether its reply is prepared."""
    actions = timeline(cfg, QUESTION, score=0.003)
    endpoint = next(t for t, action in actions if action == "Endpoint")
    return {"endpoint": endpoint, "replies": [a for a in actions if a[1] != "Endpoint"]}


@probe("turn.eot_high", "0.5")
def _(cfg, rig):
    return timeline(cfg, QUESTION, score=0.2)


# ---- a session: typed turns over a scripted stack -----------------------------------------------
REPLY_WORDS = (" ".join(f"word{i}" for i in range(24)) + ". Then a second one. And a third one.").split()


class ScriptedReply:
    """One reply of `ScriptedReplies`: REPLY_WORDS, one token each."""

    stats = SimpleNamespace(tokens=len(REPLY_WORDS), acceptance=0.0, mean_draft_len=0.0)
    capped = False

    def __init__(self) -> None:
        from decode.spans import Span

        words = [word if i == 0 else " " + word for i, word in enumerate(REPLY_WORDS)]
        self._spans = iter([Span((i,), word, 0, 0, 0.0) for i, word in enumerate(words)])

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return next(self._spans)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        pass


class ScriptedReplies:
    """The reply backend: records each request, speaks REPLY_WORDS."""

    def __init__(self) -> None:
        self.calls: list[list[dict]] = []

    def reply(self, messages, priority=None) -> ScriptedReply:
        self.calls.append(messages)
        return ScriptedReply()


def scripted_stack(replies: ScriptedReplies, phrases: list[str]) -> SimpleNamespace:
    """What a session reads of the stack; TTS records its phrases. A token is a word."""
    from voice.tts import AudioChunk

    async def run(fn, priority=None):
        return fn()

    async def end_of_turn_prob(messages) -> float:
        return 0.9

    def synthesize(text: str) -> list[AudioChunk]:
        phrases.append(text)
        return [AudioChunk(np.zeros(1600, np.int16), 16000, 0.0)]

    llm = SimpleNamespace(
        chat_ids=lambda msgs: [0] * sum(2 + len(m["content"].split()) for m in msgs),
        end_of_turn_prob=end_of_turn_prob,
        count_tokens=lambda text: len(text.split()),
        scheduler=SimpleNamespace(wake=lambda: None),
    )
    worker = SimpleNamespace(run=run, waiting=lambda: 0)
    return SimpleNamespace(
        llm=llm,
        tts=SimpleNamespace(synthesize=synthesize),
        asr_worker=worker,
        tts_worker=worker,
        replies=lambda c: replies,
    )


def conversation(cfg: Config, rig: Rig) -> SimpleNamespace:
    """A question, then "tell me more", typed into a `VoiceSession`: each turn's metrics, the
    requests the backend got, the phrases TTS spoke."""
    import voice.pipeline
    from voice.session_events import TurnEnd

    rig.monkeypatch.setattr(voice.pipeline, "SileroVAD", lambda: None)  # typed turns: no audio
    replies, phrases = ScriptedReplies(), []

    async def main() -> list:
        session = voice.pipeline.VoiceSession(scripted_stack(replies, phrases), cfg)
        ends = []
        for text in ("what is the capital of france", "tell me more"):
            await session.user_text(text)
            while not isinstance(event := await asyncio.wait_for(session.events.get(), 10), TurnEnd):
                pass
            ends.append(event.metrics)
            while not session.idle:  # the turn-taker hears the reply ended before the next turn
                await asyncio.sleep(0.01)
        await session.close()
        return ends

    return SimpleNamespace(ends=asyncio.run(main()), calls=replies.calls, phrases=phrases)


@probe("reply.soft_tokens", "4", "reply.soft_sentences=0")
def _(cfg, rig):
    return conversation(cfg, rig).ends[0].reply


@probe("reply.soft_sentences", "1")
def _(cfg, rig):
    return conversation(cfg, rig).ends[0].reply


@probe("reply.continue_on_more", "false")
def _(cfg, rig):
    return conversation(cfg, rig).ends[1].continued


@probe("llm.history_tokens", "8", "reply.continue_on_more=false")
def _(cfg, rig):
    return len(conversation(cfg, rig).calls[1])


@probe("tts.first_phrase_words", "4")
def _(cfg, rig):
    return conversation(cfg, rig).phrases[0]


@probe("tts.max_phrase_words", "5")
def _(cfg, rig):
    return conversation(cfg, rig).phrases[1]


@probe("decode.max_ahead_s", "1.0", *LOCAL)
def _(cfg, rig):
    """A talking reply 2 s ahead of playback, alone: does it take a step or wait for playback?"""
    return runnable(cfg, rig, ticket(None, urgent=False, played_until_t=102.0))


# ---- the server ----------------------------------------------------------------------------------
class ScriptedSession:
    def __init__(self, stack, cfg, session_id=None) -> None:
        self.events, self.audio, self.idle = asyncio.Queue(), [], True

    async def feed_audio(self, samples) -> None:
        self.audio.append(len(samples))

    async def close(self) -> None:
        pass


class FakeSocket:
    def __init__(self, *incoming) -> None:
        self.incoming, self.sent, self.closed = list(incoming), [], None

    async def recv(self):
        return self.incoming.pop(0)

    async def send(self, message) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code


def scripted_server(cfg: Config):
    from web.server import VoiceServer

    stack = SimpleNamespace(tts=SimpleNamespace(rate_hz=22050), llm=SimpleNamespace(target=None))
    return VoiceServer(cfg, stack, session_factory=ScriptedSession)


def server_asyncio(rig: Rig, **replaced) -> None:
    """`asyncio` as `web.server` sees it, with some functions replaced."""
    import web.server

    names = {n: getattr(asyncio, n) for n in dir(asyncio) if not n.startswith("_")}
    rig.monkeypatch.setattr(web.server, "asyncio", SimpleNamespace(**{**names, **replaced}))


def websocket_session(cfg: Config, rig: Rig, *incoming) -> SimpleNamespace:
    """`start`, `incoming`, `stop` through the server's connection handler: the error codes it sent
    and the timeouts it waited for each message with."""
    timeouts = []

    async def wait_for(awaitable, timeout):
        timeouts.append(timeout)
        return await awaitable

    server_asyncio(rig, wait_for=wait_for)
    ws = FakeSocket(json.dumps({"type": "start", "sample_rate": 16000}), *incoming, json.dumps({"type": "stop"}))
    asyncio.run(scripted_server(cfg).handle(ws))
    sent = [json.loads(m) for m in ws.sent if isinstance(m, str)]
    return SimpleNamespace(timeouts=timeouts, errors=[m["code"] for m in sent if m["type"] == "error"])


def listen_options(cfg: Config, rig: Rig) -> dict:
    """What the server passes to websockets' `serve` (faked: the port is taken)."""
    import web.server

    options = {}

    async def serve(handler, host, port, **kw):
        options.update(kw)
        raise OSError(98, "address in use (faked)")

    rig.monkeypatch.setattr(web.server, "serve", serve)
    with pytest.raises(web.server.ListenError):
        asyncio.run(scripted_server(cfg).serve("127.0.0.1", 0))
    return options


@probe("server.host", "0.0.0.0")
def _(cfg, rig):
    return serve_address(cfg, rig)


@probe("server.port", "9001")
def _(cfg, rig):
    return serve_address(cfg, rig)


def serve_address(cfg: Config, rig: Rig) -> tuple:
    """Where `voice serve` (no --host/--port) asks the server to listen."""
    import web.server
    from commands.cli import cmd_serve

    bound = []

    async def run_server(cfg, host, port, load, ready=None, listening=None):
        bound.append((host, port))

    rig.monkeypatch.setattr(web.server, "run_server", run_server)
    cmd_serve(argparse.Namespace(host=None, port=None), cfg)
    return bound[0]


@probe("server.max_sessions", "9")
def _(cfg, rig):
    server = scripted_server(cfg)
    server.sessions = {f"s{i}": None for i in range(8)}
    return server.readiness()


@probe("server.max_message_bytes", "131072")
def _(cfg, rig):
    frame = bytes(70000)
    return {"frame": websocket_session(cfg, rig, frame).errors, "socket": listen_options(cfg, rig)["max_size"]}


@probe("server.ping_interval_s", "5.0")
def _(cfg, rig):
    options = listen_options(cfg, rig)
    return {"ping_interval": options["ping_interval"], "ping_timeout": options["ping_timeout"]}


@probe("server.allowed_origins", "https://app.example")
def _(cfg, rig):
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    request = Request("/ws", Headers({"Origin": "https://app.example", "Host": "127.0.0.1:8765"}))
    return scripted_server(cfg).process_request(SimpleNamespace(respond=lambda status, body: status), request)


@probe("server.token_env", "VOICE_TEST_TOKEN")
def _(cfg, rig):
    """What a websocket handshake without a token gets (None: through to the session)."""
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    rig.monkeypatch.setenv("VOICE_TEST_TOKEN", "secret")
    connection = SimpleNamespace(
        respond=lambda status, body: SimpleNamespace(status=status, headers={}), remote_address=None
    )
    response = scripted_server(cfg).process_request(connection, Request("/ws", Headers()))
    return response and response.status


@probe("server.idle_timeout_s", "30.0")
def _(cfg, rig):
    return websocket_session(cfg, rig).timeouts


@probe("server.drain_timeout_s", "1.0")
def _(cfg, rig):
    """Seconds (on a fake clock) a drain waits for a session that never reaches a turn boundary."""
    clock, real_sleep = [0.0], asyncio.sleep

    async def sleep(seconds):
        clock[0] += seconds
        await real_sleep(0)

    server_asyncio(rig, sleep=sleep, get_running_loop=lambda: SimpleNamespace(time=lambda: clock[0]))

    async def main() -> None:
        server = scripted_server(cfg)
        server.sessions["s1"] = SimpleNamespace(sid="s1", turn=SimpleNamespace(busy=True), ws=FakeSocket())
        server.begin_drain()
        await server.stopped.wait()

    asyncio.run(main())
    return round(clock[0], 1)


# ---- the tests -----------------------------------------------------------------------------------
def test_every_config_key_has_a_probe_and_every_probe_a_key():
    assert sorted(set(KEYS) - set(PROBES)) == [], "keys without a probe: add one here, or remove the key"
    assert sorted(set(PROBES) - set(KEYS)) == [], "probes of keys that are gone"


# ---- fleet: the supervisor `voice fleet` builds, on a scripted timeline ------------------------
def fleet_supervision(cfg: Config, rig: Rig) -> list:
    """The actions of `voice fleet`'s supervisor for a worker that exits, then keeps failing to start."""
    import commands.fleet
    from commands.supervisor import Exited, Tick

    fleets = []
    rig.monkeypatch.setattr(commands.fleet, "run_fleet", fleets.append)
    args = argparse.Namespace(
        workers=2, port=8765, first_worker_port=8801, check_ms=1000, print_config=False, config=None, set=[]
    )
    commands.fleet.fleet_command(args, cfg)
    fleet = fleets[0]
    fleet.members = [commands.fleet.Worker("w1", 8801), commands.fleet.Worker("w2", 8802)]
    sup = fleet.supervisor()
    script = [Exited("w1", 0, 0.0), Exited("w1", 1, 1.0), Tick(1000.0), Exited("w1", 1, 1001.0), Tick(3000.0)]
    script += [Tick(3030.0), Tick(3600.0)]
    return [(obs, sup.observe(obs)) for obs in script]


@probe("fleet.restart_backoff_s", "2.0")
def _(cfg, rig):
    return fleet_supervision(cfg, rig)


@probe("fleet.restart_backoff_max_s", "1.5")
def _(cfg, rig):
    return fleet_supervision(cfg, rig)


@probe("fleet.start_timeout_s", "30.0")
def _(cfg, rig):
    return fleet_supervision(cfg, rig)


def test_default_toml_repeats_the_dataclass_defaults():
    """One source of defaults: configs/default.toml only documents them (other configs override)."""
    assert load_config() == Config()


@pytest.mark.parametrize("key", KEYS)
def test_setting_a_key_changes_what_reads_it(key, rig):
    p = PROBES.get(key)
    assert p is not None, f"{key} has no probe in {Path(__file__).name}: add one, or remove the key"
    base = [b.format(**rig.paths) for b in p.base]
    default = load_config(None, base)
    changed = load_config(None, base + [f"{key}={p.value.format(**rig.paths)}"])
    section, name = key.split(".")
    assert getattr(getattr(changed, section), name) != getattr(getattr(Config(), section), name), "not a change"
    before, after = p.observe(default, rig), p.observe(changed, rig)
    if isinstance(before, dict):  # a key several components read: each must see it
        unchanged = {reader: value for reader, value in before.items() if after[reader] == value}
        assert not unchanged, f"--set {key}={p.value} changed nothing in {sorted(unchanged)}: {unchanged}"
    assert before != after, f"--set {key}={p.value} changed nothing: {before!r}"
