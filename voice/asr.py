"""Speech recognition on faster-whisper, encoding only the real audio window.

In: 16 kHz mono float32 audio. Out: text. Whisper pads every input to 30 s (3000 mel
frames); CTranslate2 accepts shorter windows, so we encode only the utterance (rounded up,
at least `min_window_frames`), so the cost grows with the utterance instead of being 30 s's.
Audio longer than 30 s falls back to faster-whisper's own segmenting transcribe.

On a short utterance greedy whisper sometimes loops ("Mount Everest Mount Everest Mount …")
until the token cap. A loop never leaves this module: `voice.repetition` spots it, and
`transcribe_until_clean` retries with a longer window, then samples at rising temperatures
(faster-whisper's fallback), and if all of them loop, `collapse_repetition` keeps one copy.
A clean first decode costs what it always did (one encode, one greedy decode, plus a ~40 µs
check); a loop costs the longer-window decode too.

On non-speech (a cough, a door slam, a keyboard) whisper hallucinates ("I", "I'm sorry.").
`NoSpeechRule` is faster-whisper's own silence test on each decode: P(<|nospeech|>) above
`no_speech_threshold` and an average token log-prob at or below `log_prob_threshold` give "".
Both come out of the same `generate` call, so no decode is added: the no-speech probability
costs one vocabulary projection at <|startoftranscript|> during the prompt's prefill, the
log-prob nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from voice.repetition import is_repetition_loop, loop_free

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
FRAMES_PER_S = 100  # whisper mel frames (10 ms hop)
MAX_FRAMES = 3000


class Decoded(NamedTuple):
    """One decode's text and whisper's own evidence that the audio held speech."""

    text: str
    no_speech_prob: float = 0.0  # P(<|nospeech|>) right after <|startoftranscript|>
    avg_logprob: float = 0.0  # mean log-prob of the text's tokens and the end token


def average_logprob(score: float, n_tokens: int, length_penalty: float = 1.0) -> float:
    """faster-whisper's avg_logprob from CTranslate2's score: `score * n**length_penalty / (n + 1)`.

    CTranslate2 returns the summed log-prob of the n tokens and the end token divided by
    `n**length_penalty`; undoing that and dividing by n + 1 gives the mean over all n + 1.
    """
    return score * n_tokens**length_penalty / (n_tokens + 1) if n_tokens else score


@dataclass(frozen=True)
class NoSpeechRule:
    """faster-whisper's silence test: a decode is no speech when
    `no_speech_prob > no_speech_threshold and avg_logprob <= log_prob_threshold`.

    Either alone would cost words: P(<|nospeech|>) runs high on faint short answers
    too, and a low log-prob alone means an unsure transcript. faster-whisper's 0.6 is set for
    30 s windows; short windows give noise a lower P(<|nospeech|>), hence a lower default
    (`asr.no_speech_threshold`). A loop's tokens predict each other, so its log-prob says nothing
    about the audio: when every attempt loops, the no-speech probability decides alone
    (`looped=True`). `no_speech_threshold = 1` turns the rule off.
    """

    no_speech_threshold: float = 0.4
    log_prob_threshold: float = -1.0

    def __call__(self, decoded: Decoded, looped: bool = False) -> bool:
        """Whether `decoded` came from audio without speech."""
        return decoded.no_speech_prob > self.no_speech_threshold and (
            looped or decoded.avg_logprob <= self.log_prob_threshold
        )


@dataclass(frozen=True)
class LoopRetry:
    """What `transcribe` tries after a looping greedy decode, in this order."""

    # Why 1500 frames and T <= 0.6 (and 3000 frames opt-in): docs/benchmarks.md, "Whisper loop retries"
    windows_frames: tuple[int, ...] = (1500,)  # longer windows: more trailing silence
    temperatures: tuple[float, ...] = (0.2, 0.4, 0.6)  # sampled on the longest window

    @classmethod
    def stepped(cls, window_frames: int, temperature_step: float, max_temperature: float) -> LoopRetry:
        """One longer window (0: none), then temperatures `step, 2 * step, ...` up to
        `max_temperature` (whisper's temperature_increment_on_fallback; step 0: no sampling)."""
        count = int(max_temperature / temperature_step + 1e-6) if temperature_step > 0 else 0
        return cls(
            tuple(w for w in (window_frames,) if w > 0),
            tuple(round(temperature_step * k, 6) for k in range(1, count + 1)),
        )


class DecodeAttempt(NamedTuple):
    """One decode of an utterance: mel window length and sampling temperature (0 = greedy)."""

    window_frames: int
    temperature: float


def decode_plan(first_window_frames: int, retry: LoopRetry = LoopRetry()) -> list[DecodeAttempt]:
    """Greedy at the short window, greedy at each longer retry window, then sampling at each
    retry temperature on the longest window (whose encoding the sampled attempts share)."""
    longer = sorted({min(w, MAX_FRAMES) for w in retry.windows_frames if w > first_window_frames})
    windows = [first_window_frames] + longer
    return [DecodeAttempt(w, 0.0) for w in windows] + [DecodeAttempt(windows[-1], t) for t in retry.temperatures]


@dataclass(frozen=True)
class Transcription:
    """The outcome of one `transcribe` call."""

    text: str
    attempts: int  # decodes run: 1 unless the first one looped
    collapsed: bool = False  # every attempt looped; text is the first one with its loop collapsed
    decodes: tuple[Decoded, ...] = ()  # what each attempt decoded, in order
    no_speech: bool = False  # whisper judged the audio non-speech (`NoSpeechRule`); text is ""

    @property
    def texts(self) -> tuple[str, ...]:
        """What each attempt decoded, in order."""
        return tuple(d.text for d in self.decodes)


def transcribe_until_clean(
    decode: Callable[[DecodeAttempt], Decoded],
    plan: Sequence[DecodeAttempt],
    is_loop: Callable[[str], bool] = is_repetition_loop,
    no_speech: NoSpeechRule = NoSpeechRule(),
) -> Transcription:
    """Run `plan` until an attempt does not loop; a retry that hears nothing does not count
    (the first attempt heard words). An attempt `no_speech` calls silence ends it with ""
    (as in faster-whisper's fallback). If all loop, a first attempt whose no-speech
    probability alone passes the rule gives "" (a loop on noise); otherwise collapse the
    first, and if even that loops (compression ratio only, e.g. "hahaha…"), return ""."""
    decodes: list[Decoded] = []
    for attempt in plan:
        decoded = decode(attempt)
        decodes.append(decoded)
        if no_speech(decoded):
            log.info(
                "ASR attempt %d heard no speech (P(nospeech)=%.2f, avg logprob=%.2f): dropped %r",
                len(decodes),
                decoded.no_speech_prob,
                decoded.avg_logprob,
                decoded.text,
            )
            return Transcription("", len(decodes), decodes=tuple(decodes), no_speech=True)
        if not is_loop(decoded.text) and (decoded.text or len(decodes) == 1):
            return Transcription(decoded.text, len(decodes), decodes=tuple(decodes))
        if len(decodes) < len(plan):
            log.info(
                "ASR attempt %d (%d frames, T=%.1f) gave %r; retrying",
                len(decodes),
                attempt.window_frames,
                attempt.temperature,
                decoded.text,
            )
    if decodes and no_speech(decodes[0], looped=True):
        log.warning(
            "ASR looped on all %d attempts on non-speech (P(nospeech)=%.2f); dropped %r",
            len(decodes),
            decodes[0].no_speech_prob,
            decodes[0].text,
        )
        return Transcription("", len(decodes), collapsed=True, decodes=tuple(decodes), no_speech=True)
    collapsed = loop_free(decodes[0].text, is_loop) if decodes else ""
    log.warning(
        "ASR looped on all %d attempts; passing on %r instead of %r",
        len(decodes),
        collapsed,
        decodes[0].text if decodes else "",
    )
    return Transcription(collapsed, len(decodes), collapsed=True, decodes=tuple(decodes))


class WindowDecoder:
    """Decodes one utterance's mel features at any window and temperature, encoding each
    window once (the sampled retries share the longest window's encoding)."""

    def __init__(
        self,
        model: Any,
        prompt: list[int],
        features: np.ndarray,
        max_length: int,
        detokenize: Callable[[list[int]], str],
        beam_size: int = 1,
    ) -> None:
        self.model, self.prompt, self.features = model, prompt, features
        self.max_length, self.detokenize, self.beam_size = max_length, detokenize, beam_size
        self.encoded: dict[int, Any] = {}
        self.known: dict[DecodeAttempt, Decoded] = {}  # attempts already decoded in a batch

    def __call__(self, attempt: DecodeAttempt) -> Decoded:
        """Text, no-speech probability and average log-prob of one greedy (T = 0) or sampled
        (top-k 0, T > 0) decode; the two numbers come with the decode, not from another one.
        An attempt already decoded in a batch (`known`) is taken from there."""
        if attempt in self.known:
            return self.known.pop(attempt)
        window = attempt.window_frames
        if window not in self.encoded:
            self.encoded[window] = self.model.encode(_mel([self.features], window), to_cpu=False)
        result = _generate(self.model, self.encoded[window], [self.prompt], self.max_length, attempt, self.beam_size)[0]
        return self.decoded(result)

    def decoded(self, result: Any) -> Decoded:
        """One CTranslate2 whisper result as text, no-speech probability and average log-prob."""
        token_ids = list(result.sequences_ids[0])
        return Decoded(
            self.detokenize(token_ids).strip(), result.no_speech_prob, average_logprob(result.scores[0], len(token_ids))
        )


def _mel(features: list[np.ndarray], window: int) -> Any:
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.transcribe import get_ctranslate2_storage

    return get_ctranslate2_storage(np.stack([pad_or_trim(f, window) for f in features]))


def _generate(
    model: Any, encoded: Any, prompts: list[list[int]], max_length: int, attempt: DecodeAttempt, beam_size: int
) -> list:
    search = (
        {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": attempt.temperature}
        if attempt.temperature > 0
        else {"beam_size": beam_size}
    )
    return model.generate(
        encoded,
        prompts,
        max_length=max_length,
        suppress_blank=True,
        suppress_tokens=[-1],
        return_scores=True,
        return_no_speech_prob=True,
        **search,
    )


def decode_together(decoders: Sequence[WindowDecoder], attempt: DecodeAttempt) -> list[Decoded]:
    """`attempt` (greedy) for several utterances in one encode and one generate call.

    Whisper encodes a fixed window, so the utterances share `attempt.window_frames` and each
    one's mel frames and encoding are what it would get alone; greedy decoding is per row,
    so each row's tokens are its own decode's (checked in the tests on the embedded model).
    The decoders share their prompt and `max_length` too (`WhisperASR` derives the cap from the
    window).
    """
    first = decoders[0]
    if any(
        (d.prompt, d.max_length, d.beam_size) != (first.prompt, first.max_length, first.beam_size) for d in decoders
    ):
        raise ValueError("decode_together: the decoders differ in prompt, max_length or beam size")
    encoded = first.model.encode(_mel([d.features for d in decoders], attempt.window_frames), to_cpu=False)
    results = _generate(
        first.model, encoded, [first.prompt] * len(decoders), first.max_length, attempt, first.beam_size
    )
    return [d.decoded(result) for d, result in zip(decoders, results)]


class WhisperASR:
    """A loaded CTranslate2 whisper model with short-window decoding."""

    def __init__(
        self,
        model_dir: str,
        language: str = "en",
        beam_size: int = 1,
        compute_type: str = "int8",
        threads: int = 0,
        min_window_frames: int = 600,
        pad_frames: int = 300,
        no_speech_threshold: float = 0.4,
        log_prob_threshold: float = -1.0,
        loop_retry_window_frames: int = 1500,
        loop_retry_temperature_step: float = 0.2,
        loop_retry_max_temperature: float = 0.6,
        max_batch: int = 4,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language=language
        )
        self.language, self.beam_size = language, beam_size
        self.no_speech = NoSpeechRule(no_speech_threshold, log_prob_threshold)
        self.retry = LoopRetry.stepped(
            loop_retry_window_frames, loop_retry_temperature_step, loop_retry_max_temperature
        )
        self.min_window_frames, self.pad_frames = min_window_frames, pad_frames
        if max_batch < 1:
            raise ValueError(f"asr.max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch  # utterances decoded in one batch at most (`transcribe_batch`'s callers)
        self._prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]
        self.last_transcription: Transcription | None = None  # for callers that log attempts

    def transcribe(self, audio: np.ndarray) -> str:
        """Text of one utterance (16 kHz float32); never a repetition loop, "" for non-speech."""
        return self.transcribe_detailed(audio).text

    def transcribe_detailed(self, audio: np.ndarray) -> Transcription:
        """Text of one utterance and how many decodes it took (also kept in `last_transcription`)."""
        self.last_transcription = self.transcribe_batch([audio])[0]
        return self.last_transcription

    def transcribe_batch(self, audios: Sequence[np.ndarray]) -> list[Transcription]:
        """`transcribe_detailed` of each utterance; the first decodes of those that share a
        window run as one batch (`decode_together`), retries alone. Each result is the one
        its utterance gets alone."""
        planned = [self._plan(audio) for audio in audios]
        groups: dict[DecodeAttempt, list[WindowDecoder]] = {}
        for p in planned:
            if not isinstance(p, Transcription):
                groups.setdefault(p[1][0], []).append(p[0])
        for attempt, decoders in groups.items():
            if len(decoders) > 1 and attempt.temperature == 0:
                for d, decoded in zip(decoders, decode_together(decoders, attempt)):
                    d.known[attempt] = decoded
        return [
            p if isinstance(p, Transcription) else transcribe_until_clean(*p, no_speech=self.no_speech) for p in planned
        ]

    def batch_key(self, audio: np.ndarray) -> int | None:
        """What utterances must share to be decoded in one batch (their first window, in mel
        frames); None: this one decodes alone (empty, or longer than whisper's 30 s)."""
        if audio.size == 0 or audio.size > SAMPLE_RATE_HZ * MAX_FRAMES // FRAMES_PER_S:
            return None
        return self._window(len(audio) // (SAMPLE_RATE_HZ // FRAMES_PER_S) + 1)  # the extractor's frames (centred)

    def _window(self, frames: int) -> int:
        # Silence after the speech (pad_frames, at least min_window_frames) keeps whisper from
        # repeating itself or dropping the last word, which it does on a window cut at the speech.
        return min(MAX_FRAMES, max(self.min_window_frames, -(-(frames + self.pad_frames) // 100) * 100))

    def _plan(self, audio: np.ndarray) -> Transcription | tuple[WindowDecoder, list[DecodeAttempt]]:
        """The decoder and decode plan of one utterance, or its transcription where no short
        window applies (empty audio; longer than 30 s: faster-whisper's own segmenting)."""
        if audio.size == 0:
            return Transcription("", 0)
        if audio.size > SAMPLE_RATE_HZ * MAX_FRAMES // FRAMES_PER_S:
            # faster-whisper applies its own silence test, with thresholds set for its 30 s windows
            segments, _ = self.model.transcribe(audio, language=self.language, beam_size=self.beam_size)
            text = " ".join(s.text.strip() for s in segments).strip()
            looped = is_repetition_loop(text)  # faster-whisper retried already; still never pass one on
            return Transcription(loop_free(text) if looped else text, 1, looped, (Decoded(text),))
        features = self.model.feature_extractor(audio)
        window = self._window(features.shape[-1])
        # ~3 words/s of the speech the window can hold: stops loops; one cap per window, so that
        # utterances sharing a window decode in one batch exactly as alone
        max_tokens = 16 + 8 * max(0, window - self.pad_frames) // FRAMES_PER_S
        decoder = WindowDecoder(
            self.model.model,
            self._prompt,
            features,
            min(224, len(self._prompt) + max_tokens),
            self.tokenizer.decode,
            self.beam_size,
        )
        return decoder, decode_plan(window, self.retry)
