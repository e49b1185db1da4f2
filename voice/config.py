"""Typed configuration: TOML files in `configs/` loaded into frozen dataclasses.

In: an optional TOML path and `section.key=value` overrides from the CLI. Out: a
`Config`. Every field has a default; an unknown section or key, or a value of the wrong
type, raises `ConfigError` naming the key. Costs nothing worth measuring.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from voice.errors import VoiceError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


class ConfigError(VoiceError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


def secret_from_env(name: str, unset: Callable[[str], Exception]) -> str | None:
    """The secret in the environment variable `name` (None when no variable is named); raises
    `unset(name)` when that variable is unset or empty."""
    if not name:
        return None
    token = os.environ.get(name, "")
    if not token:
        raise unset(name)
    return token


@dataclass(frozen=True)
class ModelsConfig:
    """Where each model comes from: `embedded` (pip package) or a hub id / local dir."""

    asr: str = "embedded"
    tts: str = "embedded"
    llm: str = "embedded"
    cache_dir: str = ""  # empty: $VOICE_CACHE or ~/.cache/voice


@dataclass(frozen=True)
class LLMConfig:
    """The target language model and how replies are generated."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0  # 0: one per core
    max_new_tokens: int = 96
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    # empty: the model's own chat template default (why the brief instruction: docs/benchmarks.md)
    system_prompt: str = (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Answer in one or two short sentences."
    )
    history_tokens: int = 1024
    # "local": the embedded decoder; "openai": replies streamed from an OpenAI-compatible server at
    # base_url (vLLM, SGLang, llama.cpp, Ollama), its API key read from the env var api_key_env.
    # The end-of-turn score stays on the embedded model either way.
    backend: str = "local"
    base_url: str = ""  # e.g. http://127.0.0.1:8080/v1
    model: str = "default"  # the server's model name
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 30.0


@dataclass(frozen=True)
class ReplyConfig:
    """How much of a reply is spoken (`voice.reply_policy`); the hard cap is `llm.max_new_tokens`.

    Once `soft_tokens` tokens or `soft_sentences` sentences are decoded (0: no limit), the reply
    ends at the next sentence close; "tell me more" continues a reply the policy shortened.
    """

    soft_tokens: int = 32
    soft_sentences: int = 2
    continue_on_more: bool = True  # "tell me more", "go on", ... after a shortened reply continue it


@dataclass(frozen=True)
class DecodeConfig:
    """The speculative decoder: which drafter, and how k is chosen."""

    drafter: str = "mtp"  # none | ngram | model | mtp (the shipped head) | assistant (Gemma 4)
    controller: str = "adaptive"  # adaptive | fixed | heuristic
    max_draft: int = 8
    fixed_draft: int = 4
    ngram_max: int = 3
    ngram_min: int = 1
    draft_model: str = ""
    mtp_path: str = ""
    probe_every: int = 16
    decay: float = 0.9
    prior_accept: float = 0.5  # the adaptive controller's acceptance guess before it has measured any
    cost_ema: float = 0.2  # weight of each new step in its running verify/draft cost estimates
    slots: int = 8  # replies decoded together in one batched forward (sessions beyond wait for a slot)
    step_tokens: int = 64  # packed tokens per batched step: prefill chunks share what decoding leaves
    talking_weight: float = 0.25  # a reply already speaking counts this much against one awaiting its first phrase
    defer_ahead_s: float = 3.0  # a reply this far ahead of playback sits steps out while one awaits its first phrase
    max_ahead_s: float = 8.0  # ... and this far ahead it waits for playback (inf: decode the whole reply at once)
    # how the static target multiplies rows by a weight: auto (CPU: timed at load, the faster kept; CUDA: linear) |
    # linear (torch's F.linear) | weight_major ((W xᵀ)ᵀ; which is faster depends on the BLAS: docs/decoding.md)
    linear_layout: str = "auto"
    # on a CPU, weights that are exactly 4-/8-bit blocks (the embedded GGUF, dequantised) are multiplied as
    # such: the same weights and results up to the order of sums, a third of the memory traffic (docs/target-step.md)
    block_weights: bool = True
    cuda_graphs: bool = True  # on CUDA: steps of 1..max_draft + 1 tokens and the MTP draft loop replay captured graphs
    # candidates per node of a draft tree the adaptive controller may plan (1: chains only); k is then the
    # node budget, and where a wide verify costs too much it still picks chains (docs/decoding.md)
    tree_branch: int = 1


@dataclass(frozen=True)
class ASRConfig:
    """Streaming speech recognition on faster-whisper."""

    language: str = "en"
    beam_size: int = 1
    compute_type: str = "int8"
    threads: int = 0
    interval_ms: int = 250  # partial decodes while the user speaks, at most this often
    partial_load: float = 1.0  # ... and at most this share of the time (1: back to back)
    min_window_frames: int = 600  # mel frames (10 ms each) encoded at least
    pad_frames: int = 300  # silence frames encoded after the speech
    final_tail_ms: int = 64  # audio awaited after the first quiet VAD window before the final decode
    # faster-whisper's silence test on each short-window decode: "" when P(<|nospeech|>) >
    # no_speech_threshold and the mean token log-prob <= log_prob_threshold (1.0: off); below
    # faster-whisper's 0.6, which suits 30 s windows (docs/benchmarks.md)
    no_speech_threshold: float = 0.4
    log_prob_threshold: float = -1.0
    # after a looping greedy decode: greedy on a longer window (0: none), then sampling on it at
    # temperatures step, 2 * step, ... up to max_temperature (step 0: none)
    loop_retry_window_frames: int = 1500
    loop_retry_temperature_step: float = 0.2
    loop_retry_max_temperature: float = 0.6
    # decodes of several sessions that share a window run as one CTranslate2 batch, at most this many
    max_batch: int = 4


@dataclass(frozen=True)
class VADConfig:
    """Silero VAD and endpointing."""

    threshold: float = 0.5
    hysteresis: float = 0.15  # in speech, stay voiced down to threshold - hysteresis
    min_speech_ms: int = 150
    max_utterance_s: float = 20.0


@dataclass(frozen=True)
class TurnConfig:
    """Turn-taking: when the user's turn ends, and the reply prepared before it does.

    The silence needed to end a turn falls with the end-of-turn score p of the words heard:
    `max_silence_ms` at p <= `eot_low`, `min_silence_ms` at p >= `eot_high`, linear in log p between.
    """

    predictive: bool = True  # prepare the reply (ASR, LLM, first phrase's audio) before the endpoint
    min_silence_ms: int = 200  # silence that ends a turn whose words look complete
    max_silence_ms: int = 1200  # silence that ends any turn
    eot_low: float = 0.005  # at or below: wait max_silence_ms (chosen on scripts/data/eot: docs/benchmarks.md)
    eot_high: float = 0.1  # at or above: wait min_silence_ms


@dataclass(frozen=True)
class TTSConfig:
    """Piper synthesis and the phrase chunker that feeds it."""

    first_phrase_words: int = 1  # more while its last word leans on the next ("The" waits for "moon")
    max_phrase_words: int = 18
    length_scale: float = 1.0
    # piper's ONNX threads (0: onnxruntime's default, one per core). One, and never spinning: a held first
    # phrase is synthesised beside the final whisper decode, which a second piper thread slows (docs/turn-taking.md)
    threads: int = 1


@dataclass(frozen=True)
class ServerConfig:
    """The websocket server."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 8
    max_message_bytes: int = 65536  # larger audio frames get `frame_too_large`; 16x that closes the socket
    ping_interval_s: float = 20.0  # keepalive; a peer silent for as long again is dropped
    allowed_origins: tuple[str, ...] = ()  # empty: same origin only
    idle_timeout_s: float = 120.0
    drain_timeout_s: float = 60.0  # SIGTERM: running turns may finish for this long, then sessions close (1001)
    # the environment variable holding a shared secret ("": none): /ws then needs `Authorization: Bearer
    # <secret>` (or ?token=), /metrics and /stats the header; /healthz stays open for a balancer
    token_env: str = ""


@dataclass(frozen=True)
class FleetConfig:
    """How `voice fleet` restarts its workers (the supervision rules are in commands/supervisor.py).

    A worker that exits before it is back in the balancer's rotation failed to start: the n-th
    such failure in a row waits min(restart_backoff_max_s, restart_backoff_s * 2**(n-1)) before
    the next start.
    """

    restart_backoff_s: float = 1.0  # wait after the first failed start; doubles with each failure in a row
    restart_backoff_max_s: float = 60.0
    start_timeout_s: float = 600.0  # a worker not healthy this long after its start is killed (a failed start)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    reply: ReplyConfig = field(default_factory=ReplyConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    vad: VADConfig = field(default_factory=VADConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)


def _coerce(key: str, value: object, kind: object) -> object:
    """Check `value` against the field's annotated type; parse strings from `--set`."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(value, str) and kind is not str:
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{key}: cannot parse {value!r} as {kind.__name__}") from None
        return _coerce(key, value, kind)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):  # type: ignore[arg-type]
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _section(name: str, cls: type, values: dict) -> object:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {name}.{key} (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """Turn `["decode.max_draft=6", …]` into `{"decode": {"max_draft": "6"}}`."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"bad --set {item!r}: expected section.key=value")
        out.setdefault(section, {})[name] = value.strip()
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load `path` (default `configs/default.toml`) and apply `--set` overrides."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    for section, values in parse_overrides(overrides or []).items():
        data.setdefault(section, {}).update(values)
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]
    kwargs = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}] (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        kwargs[name] = _section(name, sections[name], values)
    return Config(**kwargs)
