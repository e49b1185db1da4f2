"""The reply generator: loads the target LLM and builds the speculative decoder from config.

In: `Config`. Out: `ReplyModel`, which turns a conversation (chat messages) into `Span`s via
the speculative decoder: `reply` streams them on the decode scheduler into the caller's event
loop (`voice.replies`); `reply_plain` decodes without the drafter (the baseline). Cost at load: the
model, and a verify-cost calibration that seeds the adaptive controller.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Iterator

import torch

from decode.controller import AdaptiveController, Controller, FixedController, HeuristicController
from decode.drafters import Drafter, ModelDrafter, NgramDrafter, NoDrafter, can_branch
from decode.hf_target import HFTarget
from decode.jobs import GenerationSettings, PrefillJob, ReplyJob
from decode.scheduler import Priority, StepScheduler
from decode.spans import Span
from decode.speculative import SpeculativeDecoder, calibrate_verify_cost
from decode.target import StaticLlamaTarget, Target, static_supported
from voice.config import Config, ConfigError
from voice.models import ModelNotReady, llm_path
from voice.replies import ScheduledReply, scheduled_job

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def calibration_ks(max_draft: int) -> list[int]:
    """Every draft length the controller may pick, 0..max_draft: on CPUs the verify cost is not
    smooth in k (docs/decoding.md), so none is interpolated."""
    return list(range(max(0, max_draft) + 1))


def torch_dtype(name: str) -> torch.dtype:
    """`float32` / `bf16` / … to a torch dtype."""
    if name not in DTYPES:
        raise ConfigError(f"llm.dtype: unknown dtype {name!r} (known: {', '.join(DTYPES)})")
    return DTYPES[name]


def load_causal_lm(name_or_path: str, device: str, dtype: torch.dtype):
    """A transformers causal LM and tokenizer from a local dir or the local hub cache only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local_only = not os.path.isdir(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
        model = (
            AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, local_files_only=local_only)
            .to(device)
            .eval()
        )
    except OSError as err:
        raise cannot_load(name_or_path, err) from None
    return model, tokenizer


def cannot_load(name: str, err: OSError) -> ModelNotReady:
    """The error for a model that is neither a local directory nor in the local hub cache."""
    return ModelNotReady(
        f"cannot load {name!r}: not a local model directory and not in the local hub "
        f"cache (this machine cannot download models). Put it in the hub cache first. ({err})"
    )


def make_drafter(cfg: Config, tokenizer, target: Target, generator: torch.Generator) -> Drafter:
    """The drafter named by `decode.drafter`."""
    name = cfg.decode.drafter
    if name == "none":
        return NoDrafter()
    if name == "ngram":
        return NgramDrafter(cfg.decode.ngram_max, cfg.decode.ngram_min)
    if name == "model":
        if not cfg.decode.draft_model:
            raise ConfigError("decode.draft_model: set it to a draft model dir or hub id for drafter=model")
        model, draft_tok = load_causal_lm(cfg.decode.draft_model, cfg.llm.device, torch_dtype(cfg.llm.dtype))
        if draft_tok.get_vocab() != tokenizer.get_vocab():
            raise ConfigError("decode.draft_model: its tokenizer differs from the target's")
        return ModelDrafter(make_target(model), cfg.llm.temperature, cfg.llm.top_p, generator, model)
    if name == "mtp":
        from decode.mtp import load_mtp_drafter

        try:
            drafter = load_mtp_drafter(cfg.decode.mtp_path, target, cfg.llm.temperature, cfg.llm.top_p, generator)
        except FileNotFoundError as err:
            raise ConfigError(f"decode.mtp_path: {err}") from None
        if cfg.decode.cuda_graphs:  # on CUDA greedy drafts and trees replay graphs (decode.graphs.DraftGraphs)
            drafter.capture(cfg.decode.max_draft, cfg.decode.tree_branch)
        return drafter
    if name == "assistant":
        return load_assistant_drafter(cfg, target, generator)
    raise ConfigError(f"decode.drafter: unknown drafter {name!r} (known: none, ngram, model, mtp, assistant)")


def load_assistant_drafter(cfg: Config, target: Target, generator: torch.Generator) -> Drafter:
    """Gemma 4's assistant (`decode.draft_model`) over a Gemma 4 target (`ReplyModel` checks the target)."""
    from decode.assistant import AssistantDrafter, load_assistant

    if not cfg.decode.draft_model:
        raise ConfigError("decode.draft_model: set it to a Gemma 4 assistant (dir or hub id) for drafter=assistant")
    name = cfg.decode.draft_model
    try:
        assistant = load_assistant(name, cfg.llm.device, torch_dtype(cfg.llm.dtype), not os.path.isdir(name))
    except OSError as err:
        raise cannot_load(name, err) from None
    return AssistantDrafter(assistant, target, cfg.llm.temperature, cfg.llm.top_p, generator)


def make_controller(
    cfg: Config, verify_cost_s: dict[int, float], kind: str | None = None, k: int | None = None, branch: int = 1
) -> Controller:
    """The controller named by `decode.controller` (or `kind`), seeded with measured costs; `branch` > 1:
    the adaptive one may plan draft trees of that many candidates a node (`ReplyModel.tree_branch`)."""
    kind = kind or cfg.decode.controller
    if kind == "fixed":
        return FixedController(cfg.decode.fixed_draft if k is None else k)
    if kind == "heuristic":
        return HeuristicController(k=cfg.decode.fixed_draft, k_max=cfg.decode.max_draft)
    if kind == "adaptive":
        return AdaptiveController(
            k_max=cfg.decode.max_draft,
            decay=cfg.decode.decay,
            probe_every=cfg.decode.probe_every,
            verify_cost_s=dict(verify_cost_s),
            prior_accept=cfg.decode.prior_accept,
            cost_ema=cfg.decode.cost_ema,
            branch=branch,
        )
    raise ConfigError(f"decode.controller: unknown controller {kind!r} (known: adaptive, fixed, heuristic)")


def drafter_feature_layers(cfg: Config) -> tuple[int, ...]:
    """Target layers the configured drafter reads besides the last hidden state."""
    if cfg.decode.drafter != "mtp":
        return ()
    from decode.mtp import read_mtp_config

    try:
        return read_mtp_config(cfg.decode.mtp_path).feature_layers
    except FileNotFoundError as err:
        raise ConfigError(f"decode.mtp_path: {err}") from None


END_OF_USER_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<turn|>")


def end_of_user_token(tokenizer) -> int:
    """The id of the token a chat template puts after a user message (ChatML, Gemma, Llama 3)."""
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    for token in END_OF_USER_TOKENS:
        if token in probe:
            return tokenizer.convert_tokens_to_ids(token)
    raise ConfigError(f"cannot find the end-of-user-message token in the chat template (tried {END_OF_USER_TOKENS})")


CLOSING_CHARS = ".?!…"


def closing_tokens(tokenizer) -> list[int]:
    """Ids of the tokens that are only sentence-closing punctuation (".", " ?", "...", "!!", …)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if (t := text.strip()) and set(t) <= set(CLOSING_CHARS)]


BATCHED_DRAFTERS = ("none", "ngram", "mtp")  # drafters whose per-slot copies share weights
CALIBRATED_WIDTHS = (16, 32, 64)  # packed widths measured at load besides 1..max_draft + 1


def make_target(model, max_len: int = 2048, feature_layers: tuple[int, ...] = ()) -> Target:
    """The fastest target implementation that supports `model`: static Llama, else transformers'."""
    if static_supported(model.config):
        return StaticLlamaTarget(model, max_len=max_len, feature_layers=feature_layers)
    return HFTarget(model, feature_layers=feature_layers)


class ReplyModel:
    """Target LLM + drafter + controller.

    Sessions go through `scheduler` (`reply`, `end_of_turn_prob`, awaited on their event loop):
    replies of all sessions advance together in batched steps, each on its own KV slot.
    `decoder` (slot 0) serves one caller at a time under `lock` (benchmarks, `reply_plain`).
    """

    def __init__(self, cfg: Config) -> None:
        torch.set_num_threads(cfg.llm.threads or os.cpu_count() or 1)
        self.cfg = cfg
        model, self.tokenizer = load_causal_lm(llm_path(cfg.models), cfg.llm.device, torch_dtype(cfg.llm.dtype))
        self.model = model
        if cfg.decode.drafter == "assistant":
            if model.config.get_text_config().model_type != "gemma4_text":
                raise ConfigError(f"decode.drafter=assistant needs a Gemma 4 target, not {model.config.model_type}")
            self.target = HFTarget(model, keep_shared_kv=True)
        else:
            self.target = make_target(model, feature_layers=drafter_feature_layers(cfg))
            if cfg.decode.block_weights and isinstance(self.target, StaticLlamaTarget):
                log.info("block weights: %d of the target's weights held as 4-/8-bit blocks", self.target.use_blocks())
            self._set_layout(cfg.decode.linear_layout)
        self.generator = torch.Generator().manual_seed(cfg.llm.seed)
        self.drafter = make_drafter(cfg, self.tokenizer, self.target, self.generator)
        if cfg.decode.tree_branch < 1:
            raise ConfigError(f"decode.tree_branch: expected 1 (chains) or more, got {cfg.decode.tree_branch}")
        # candidates per draft-tree node: trees need a drafter that branches and a target that verifies them
        self.tree_branch = cfg.decode.tree_branch if can_branch(self.drafter, self.target) else 1
        self._capture_graphs(cfg, [0])
        self.verify_cost_s = calibrate_verify_cost(self.target, calibration_ks(cfg.decode.max_draft))
        self.decoder = SpeculativeDecoder(
            self.target,
            self.tokenizer,
            self.drafter,
            make_controller(cfg, self.verify_cost_s, branch=self.tree_branch),
            seed=cfg.llm.seed,
        )
        eos = {self.tokenizer.eos_token_id, model.generation_config.eos_token_id}
        eos = {e for x in eos for e in (x if isinstance(x, list) else [x]) if e is not None}
        self.settings = GenerationSettings(cfg.llm.max_new_tokens, cfg.llm.temperature, cfg.llm.top_p, tuple(eos))
        self.lock = threading.Lock()
        self.end_of_user_id = end_of_user_token(self.tokenizer)
        self.turn_end_ids = [self.end_of_user_id] + closing_tokens(self.tokenizer)
        self.scheduler = self._make_scheduler(cfg)

    def _set_layout(self, layout: str) -> None:
        """Pick the static target's matmul layout (see `decode.layers.project`)."""
        if layout not in ("auto", "linear", "weight_major"):
            raise ConfigError(f"decode.linear_layout: expected auto, linear or weight_major, got {layout!r}")
        if not isinstance(self.target, StaticLlamaTarget):
            return
        if layout == "auto" and self.target.device.type == "cuda":
            # eager GPU steps are launch-bound, so timing them picks at random; in CUDA graphs
            # torch's layout was no slower (docs/gpu.md)
            self.target.weight_major = False
        elif layout == "auto":
            costs = self.target.choose_layout()
            log.info(
                "linear layout: %s (steps of 3 and 8 tokens: %s)",
                self.target.layout,
                ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in costs.items()),
            )
        else:
            self.target.weight_major = layout == "weight_major"

    def _capture_graphs(self, cfg: Config, slots: list[int]) -> None:
        """On CUDA, capture the static target's one-sequence steps of 1..max_draft + 1 tokens for `slots`
        (`decode.graphs`; steps that verify trees too when `tree_branch` > 1): slot 0 first, then the
        scheduler's, unless slot 0's capture failed; where capture fails, steps stay eager (one log line)."""
        if not (
            cfg.decode.cuda_graphs and isinstance(self.target, StaticLlamaTarget) and self.target.device.type == "cuda"
        ) or (slots != [0] and 0 not in self.target.step_graphs):
            return
        from decode.graphs import StepGraphs

        try:
            for slot in slots:
                StepGraphs(self.target, list(range(1, cfg.decode.max_draft + 2)), slot, trees=self.tree_branch > 1)
        except Exception as err:  # a driver or kernel that cannot be captured: eager steps still work
            self.target.step_graphs.clear()
            log.warning("CUDA graph capture failed, steps stay eager: %s: %s", type(err).__name__, err)

    def _make_scheduler(self, cfg: Config) -> StepScheduler:
        """Slots 1..decode.slots of the static target, each with its own drafter and controller copy;
        one slot over its own decoder when the target or drafter cannot batch."""
        target = self.target
        if not (
            isinstance(target, StaticLlamaTarget) and cfg.decode.drafter in BATCHED_DRAFTERS and cfg.decode.slots > 1
        ):
            # one slot, slot 0: the scheduler shares it with direct callers, who must not overlap sessions
            return StepScheduler(
                [self.decoder],
                None,
                {k + 1: c for k, c in self.verify_cost_s.items()},
                cfg.decode.step_tokens,
                cfg.decode.talking_weight,
                cfg.decode.cost_ema,
                defer_ahead_s=cfg.decode.defer_ahead_s,
                max_ahead_s=cfg.decode.max_ahead_s,
            )
        widths = {k + 1: c for k, c in self.verify_cost_s.items()}
        wide = [w - 1 for w in CALIBRATED_WIDTHS if w <= cfg.decode.step_tokens and w not in widths]
        widths.update({k + 1: c for k, c in calibrate_verify_cost(target, wide, reps=2).items()})
        self._capture_graphs(cfg, list(range(1, cfg.decode.slots + 1)))
        slots = []
        for i in range(1, cfg.decode.slots + 1):
            view = target.slot(i)
            drafter = make_drafter(cfg, self.tokenizer, view, self.generator)
            slots.append(
                SpeculativeDecoder(
                    view,
                    self.tokenizer,
                    drafter,
                    make_controller(cfg, self.verify_cost_s, branch=self.tree_branch),
                    seed=cfg.llm.seed + i,
                )
            )
        return StepScheduler(
            slots,
            target.forward_packed,
            widths,
            cfg.decode.step_tokens,
            cfg.decode.talking_weight,
            cfg.decode.cost_ema,
            defer_ahead_s=cfg.decode.defer_ahead_s,
            max_ahead_s=cfg.decode.max_ahead_s,
        )

    def reply(self, messages: list[dict[str, str]], priority: Priority | None = None) -> ScheduledReply:
        """The reply on the decode scheduler, read on the calling event loop (`voice.replies.Replies`);
        `priority`: what its owner tells the scheduler at each step (urgent, held, playback)."""
        ids = self.chat_ids(messages)
        return ScheduledReply(
            self.scheduler,
            lambda dec, cancel: ReplyJob(dec, ids, self.settings, cancel),
            ids,
            priority,
            self.settings.max_new_tokens,
        )

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation with the generation prompt appended; when the last message
        is the assistant's, the ids end inside it (no end-of-turn token) so the reply continues it."""
        if self.cfg.llm.system_prompt:
            messages = [{"role": "system", "content": self.cfg.llm.system_prompt}] + messages
        if messages[-1]["role"] == "assistant" and messages[-1]["content"]:
            return self._continuation_ids(messages)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _continuation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat rendered up to the end of the last (assistant) message's text."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        content = messages[-1]["content"]
        return list(self.tokenizer(text[: text.rindex(content) + len(content)], add_special_tokens=False)["input_ids"])

    def token_ids(self, text: str) -> list[int]:
        """The tokenizer's ids of a piece of reply text (no special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def count_tokens(self, text: str) -> int:
        """Tokens of a piece of reply text (the spoken reply's length)."""
        return len(self.token_ids(text))

    def reply_plain(self, messages: list[dict[str, str]]) -> Iterator[Span]:
        """Plain greedy/sampled decoding (no drafter): the baseline."""
        return self.decoder.generate(
            self.chat_ids(messages), self.settings, drafter=NoDrafter(), controller=FixedController(0)
        )

    async def end_of_turn_prob(self, messages: list[dict[str, str]]) -> float:
        """Semantic end of turn of the last user message: P(it ends here, or a sentence closes here).

        The message is scored without its closing punctuation (whisper closes cut phrases with
        '?' or '.' and the model believes it): p = P(end-of-user token) + P('.', '?', '!', …)
        after the words, from the target's softmax at that position (how well it separates complete
        from cut phrases: docs/benchmarks.md). The prefill it needs is the reply's own: when
        the reply's prompt (punctuation kept, then the assistant's header) extends the scored
        words, one prefill of that prompt reads p at the words' last row and keeps the last row's
        logits, and a reply to these words then takes its first token from them (`ReplyJob`).
        """
        words = messages[-1]["content"].rstrip().rstrip(CLOSING_CHARS).rstrip()
        ids = self.chat_ids(messages[:-1] + [{"role": "user", "content": words or "."}])
        end = max(i for i, tok in enumerate(ids) if tok == self.end_of_user_id)
        reply = self.chat_ids(messages)
        primes = len(reply) > end and reply[:end] == ids[:end]
        # the reply's whole prompt, its logits kept: a reply to these words takes its first token from them
        prefill = reply if primes else ids[:end]  # else a tokenization merging the words with what follows
        job = await scheduled_job(
            self.scheduler,
            lambda dec: PrefillJob(dec, prefill, token_ids=self.turn_end_ids, score_at=end - 1, keep_logits=primes),
            prefill,
        )
        return job.prob
