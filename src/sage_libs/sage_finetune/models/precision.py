"""Precision decisions made before anything loads (imports no torch): whether this CPU computes in
bfloat16 natively, and which dtype the base weights are held in.

bf16 on the CPU pays only where the CPU has bfloat16 instructions (x86: AVX512-BF16 or AMX-BF16,
since Intel Cooper Lake / Sapphire Rapids and AMD Zen 4; Arm: the BF16 extension). Elsewhere
oneDNN emulates it and a bf16 run is slower than float32, so ``training.bf16`` is refused there
(:func:`..trainers.hf_args.check_precision`).

With bf16 mixed precision and a frozen base (LoRA and its kin), the base weights are held in
bfloat16 unless ``training.model_dtype`` says otherwise: autocast would cast each frozen float32
weight to bfloat16 in every forward pass (time, and a transient copy), and the weights take half
the memory. The adapter's weights, gradients and optimizer states stay float32 (PEFT upcasts
adapter weights of a 16-bit base).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["NATIVE_BF16_FLAGS", "cpu_native_bf16", "base_weights_dtype"]

# /proc/cpuinfo flags of bfloat16 arithmetic in hardware (x86 "flags", aarch64 "Features")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=None)
def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first processor's flags, or None where /proc/cpuinfo is unreadable (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> tuple[bool | None, str]:
    """(native, evidence): True with the flag found, False with what the CPU has instead, or None
    where the flags cannot be read (then the caller keeps transformers' own check)."""
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        return None, f"no {cpuinfo} on {platform.system() or 'this system'}"
    found = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if found:
        return True, found[0]
    best = next((f for f in ("avx512f", "avx2", "avx", "asimd", "neon") if f in flags), "none of them")
    return False, f"its widest vector flag is {best}"


def base_weights_dtype(model_dtype: str, *, bf16: bool, frozen_base: bool) -> str:
    """The dtype to load the base weights in: ``training.model_dtype`` when set; ``bfloat16`` for a
    frozen base under bf16 mixed precision; else ``auto`` (the checkpoint's own)."""
    if model_dtype != "auto":
        return model_dtype
    return "bfloat16" if bf16 and frozen_base else "auto"
