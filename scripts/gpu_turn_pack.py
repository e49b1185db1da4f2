"""Stage what `scripts/gpu-turn` needs on a GPU machine that has torch, transformers and onnxruntime
but not the audio stack, the embedded models or the bench audio (`scripts/gpu-turn --pack` runs this).

In: this checkout's venv (the model packages and prepared target of `scripts/bootstrap` and
`voice models prepare`) and pip, which downloads the wheels for the device's Python. Out: STAGE with
    wheels/      the audio stack for that Python (`WHEELS`, the versions installed here), stored
                 uncompressed so the archive's xz compresses their libraries (ctranslate2 43 -> 25 MB);
                 files no English turn loads are left out (`LEFT_OUT`) and their RECORD lines with them
    site/        the embedded whisper and piper model packages as installed here
    llm/         the target's GGUF, the prepared target's tokenizer files, for scripts/gguf_target.py
    cache/       the bench audio (`voice bench`'s questions and its hesitation set), as cached here
    SHA256SUMS   every file above
Cost: the downloads and copying about 450 MB.

    python scripts/gpu_turn_pack.py STAGE [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# what `voice bench` imports that the device image lacks (docs/gpu.md), with what those need that it lacks too
WHEELS = ("ctranslate2", "faster-whisper", "av", "piper-tts", "pathvalidate", "silero-vad", "soxr", "websockets")
WHEELS += ("gguf",)  # for scripts/gguf_target.py
# data of the wheels that an English turn never loads: piper's Hebrew and Arabic diacritisers, and
# silero's other exports (SileroVAD loads silero_vad.onnx)
LEFT_OUT = {
    "piper_tts": ("piper/hebrew/nakdimon.onnx", "piper/tashkeel/model.onnx"),
    "silero_vad": tuple(
        f"silero_vad/data/silero_vad{suffix}"
        for suffix in (".jit", "_16k.safetensors", "_16k_op15.onnx", "_16k_sequence.onnx", "_half.onnx")
        + ("_op18_ifless.onnx", "_openvino_16k.onnx")
    ),
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PLATFORMS += ("manylinux1_x86_64", "manylinux_2_5_x86_64")


def download_wheels(dest: Path, python_version: str) -> None:
    """The wheels of `WHEELS`, at the versions installed here, for CPython `python_version` on x86-64 Linux."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp"]
        + ["--python-version", python_version, *platforms, "-d", str(dest), *pins],
        check=True,
    )


def store_uncompressed(wheel: Path, dest: Path) -> None:
    """`wheel` rewritten uncompressed into `dest`, without its `LEFT_OUT` files and their RECORD lines."""
    drop = set(LEFT_OUT.get(wheel.name.split("-")[0].lower(), ()))
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dest / wheel.name, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD") and drop:
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if line.split(",")[0] not in drop).encode()
            info.compress_type = zipfile.ZIP_STORED
            out.writestr(info, data)


def copy_models(stage: Path) -> None:
    """The whisper and piper model packages as installed here, and the LLM's GGUF and tokenizer files."""
    from voice.config import load_config
    from voice.models import LLM_GGUF, LLM_PACKAGE, PIPER_PACKAGE, WHISPER_PARTS, llm_path, package_dir

    for package in (*WHISPER_PARTS, PIPER_PACKAGE):
        shutil.copytree(package_dir(package), stage / "site" / package, ignore=shutil.ignore_patterns("__pycache__"))
    (stage / "llm" / "tokenizer").mkdir(parents=True)
    shutil.copyfile(package_dir(LLM_PACKAGE) / LLM_GGUF, stage / "llm" / LLM_GGUF)
    prepared = Path(llm_path(load_config().models))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(prepared / name, stage / "llm" / "tokenizer" / name)
    if (prepared / "chat_template.jinja").is_file():
        shutil.copyfile(prepared / "chat_template.jinja", stage / "llm" / "tokenizer" / "chat_template.jinja")


def copy_bench_audio(stage: Path) -> None:
    """`voice bench`'s questions and hesitation clips as cached here (synthesised first if missing)."""
    from commands.bench import bench_audio
    from commands.hesitation import hesitation_audio
    from voice.config import load_config
    from voice.models import cache_dir

    cfg = load_config()
    bench_audio(cfg)
    hesitation_audio(cfg)
    for folder in ("bench-audio-fixed", "bench-hesitation"):
        shutil.copytree(cache_dir(cfg.models) / folder, stage / "cache" / folder)


def write_sums(stage: Path) -> None:
    """SHA256SUMS of every file below `stage`, paths relative to it (`sha256sum -c` reads it there)."""
    lines = []
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        lines.append(f"{digest.hexdigest()}  {path.relative_to(stage)}\n")
    (stage / "SHA256SUMS").write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", type=Path, help="an empty or new folder")
    parser.add_argument("--python-version", default="3.12", help="the device's Python (default %(default)s)")
    args = parser.parse_args()
    if args.stage.exists() and any(args.stage.iterdir()):
        sys.exit(f"gpu_turn_pack: {args.stage} is not empty: pass a new folder")
    downloaded, wheels = args.stage / "downloaded", args.stage / "wheels"
    downloaded.mkdir(parents=True)
    wheels.mkdir()
    download_wheels(downloaded, args.python_version)
    for wheel in sorted(downloaded.glob("*.whl")):
        store_uncompressed(wheel, wheels)
    shutil.rmtree(downloaded)
    copy_models(args.stage)
    copy_bench_audio(args.stage)
    write_sums(args.stage)


if __name__ == "__main__":
    main()
