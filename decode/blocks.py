"""Weights that are exactly 4- or 8-bit blocks, multiplied without widening them to fp32 in memory.

In: an fp32 weight W [out, in]. Out: a `BlockWeight` whose `x @ Wᵀ` reads 6 (4-bit) or 10 (8-bit)
bits per weight instead of 32, or None when W is not exactly such blocks. The embedded target is a
GGUF's Q4_1 layers and Q8_0 embedding dequantised to fp32 once (`voice models prepare`), so every
group of 32 inputs of an output row holds at most 16 (Q4_1) or 255 (Q8_0) values: w = d·q + m with
q in 0..15, or w = d·q with q in -127..127, d (and m) one fp16 number per group. `find_q4` and
`find_q8` recover d, m and q from the fp32 values and keep them only if d·q + m gives back every
weight bit for bit, so the product multiplies the very same weights; what differs from torch's fp32
matmul is only the order of the sums (~1e-6 relative).

Cost: on a 2-core CPU the step streams 540 MB of fp32 weights per token and is bound by memory;
the blocks stream ~95 MB. The kernel (`blocks_linear.cpp`) is built once per CPU kind with torch's
extension builder (~40 s, cached under ~/.cache/torch_extensions); without AVX2 + FMA, a compiler
or ninja, `load_kernel` returns None and the target keeps fp32. Each output is one FMA chain over
the inputs in order whatever the number of rows, so a k-token verify gives every token the bits a
one-token step gives it (`tests/decode/test_blocks.py`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

log = logging.getLogger(__name__)

OUT_BLOCK = 16  # outputs per block (one AVX-512 register of fp32)
GROUP = 32  # inputs per group: GGUF's Q4_1 and Q8_0 block size


def cpu_isas() -> list[str]:
    """The kernel builds this CPU runs, best first: "avx512" (AVX-512F/BW/VL), "avx2" (AVX2, FMA, F16C)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return []
    needs = {"avx512": {"avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"}, "avx2": {"avx2", "fma", "f16c"}}
    return [isa for isa, flag_set in needs.items() if flag_set <= flags]


ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
}


@functools.cache
def load_kernel(isa: str | None = None) -> Any | None:
    """The compiled `packed_linear` module for this CPU (or the given build of `cpu_isas()`), built on
    first use; None if it cannot be."""
    isa = isa or next(iter(cpu_isas()), None)
    if isa is None:
        log.info("block weights: this CPU has neither AVX-512 nor AVX2 + FMA; the target stays fp32")
        return None
    from torch.utils.cpp_extension import load

    # the ninja that torch's builder runs comes with this environment (`ninja` on PyPI) even when the
    # process was started without the venv's bin on PATH
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    try:
        log.info("block weights: building the %s kernel once (about 40 s)", isa)
        return load(
            name=f"voice_blocks_linear_{isa}",
            sources=[str(Path(__file__).with_name("blocks_linear.cpp"))],
            extra_cflags=["-O3", *ISA_FLAGS[isa]],
            verbose=False,
        )
    except Exception as err:  # no compiler, no ninja, no headers: fp32 still serves
        log.warning("block weights: the kernel did not build (%s: %s); the target stays fp32", type(err).__name__, err)
        return None


class Blocks(NamedTuple):
    """Per output row and group of 32 inputs: q [out, in/32, 32] (uint8 or int8), d and m [out, in/32]."""

    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None  # None: w = d·q (Q8_0)


def _groups(weight: torch.Tensor) -> torch.Tensor | None:
    out, inp = weight.shape
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or out % OUT_BLOCK or inp % GROUP:
        return None
    return weight.reshape(out, inp // GROUP, GROUP)


def find_q4(weight: torch.Tensor) -> Blocks | None:
    """W as w = d·q + m per group (q in 0..15, d fp16, m = the group's least value), if exact.

    Q4_1 stores m = fp16(min) and d = fp16((max - min) / 15), so the dequantised group's least
    value is m (q = 0) and its largest d·15 + m; d is recovered as fp16((max - m) / 15).
    """
    g = _groups(weight)
    if g is None:
        return None
    m = g.amin(-1)
    d = ((g.amax(-1) - m) / 15).half().float()
    q = torch.round((g - m[..., None]) / torch.where(d > 0, d, 1)[..., None]).clamp(0, 15)
    if not torch.equal(q * d[..., None] + m[..., None], g):
        return None
    return Blocks(q.to(torch.uint8), d, m)


def find_q8(weight: torch.Tensor) -> Blocks | None:
    """W as w = d·q per group (q in -127..127, d = max|w| / 127, fp16), if exact (Q8_0)."""
    g = _groups(weight)
    if g is None:
        return None
    d = g.abs().amax(-1) / 127
    if not torch.equal(d.half().float(), d):
        return None
    q = torch.round(g / torch.where(d > 0, d, 1)[..., None]).clamp(-127, 127)
    if not torch.equal(q * d[..., None], g):
        return None
    return Blocks(q.to(torch.int8), d, None)


class BlockWeight:
    """A weight [out, in] held as `Blocks` in the kernel's layout; `apply(x)` is x Wᵀ in fp32."""

    def __init__(self, blocks: Blocks, kernel: Any) -> None:
        out, groups, _ = blocks.q.shape
        nb = out // OUT_BLOCK
        # [nb, groups, 32 inputs, 16 outputs]: for each input, the block's 16 outputs side by side
        q = blocks.q.reshape(nb, OUT_BLOCK, groups, GROUP).permute(0, 2, 3, 1)
        if blocks.m is None:
            self.q4, self.qs = False, q.reshape(nb, groups, GROUP * OUT_BLOCK).contiguous()
        else:  # two outputs a byte: output j in the low nibble, output j + 8 in the high one
            self.q4 = True
            self.qs = (q[..., :8] | (q[..., 8:] << 4)).reshape(nb, groups, GROUP * OUT_BLOCK // 2).contiguous()
        per_block = lambda t: t.reshape(nb, OUT_BLOCK, groups).permute(0, 2, 1).contiguous()  # noqa: E731
        self.d = per_block(blocks.d)
        self.m = per_block(blocks.m) if blocks.m is not None else self.d
        self.shape = (out, groups * GROUP)
        self.kernel = kernel

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x Wᵀ for rows x [T, in] (fp32)."""
        return self.kernel.packed_linear(x, self.qs, self.d, self.m, self.q4)

    @property
    def nbytes(self) -> int:
        """Bytes the product reads per call (blocks and their scales)."""
        return self.qs.numel() + self.d.numel() * 4 * (2 if self.q4 else 1)


def block_weight(weight: torch.Tensor, kernel: Any) -> BlockWeight | None:
    """`weight` as 4-bit, else 8-bit blocks, if it is exactly such blocks; else None."""
    blocks = find_q4(weight) or find_q8(weight)
    return BlockWeight(blocks, kernel) if blocks is not None else None
