"""What "fp32" means on every device (docs/design.md §4.3): the float32 arithmetic of convolutions and
matmuls, set for a call and restored afterwards.

PyTorch keeps cuDNN convolutions on TF32 after ``torch.set_float32_matmul_precision("highest")``
(``torch.backends.cudnn.conv.fp32_precision`` stays ``tf32``): IEEE fp32 needs both flags. Where PyTorch has the
``fp32_precision`` API (2.9 on) only it is used, never the legacy ``allow_tf32`` flags (PyTorch refuses a mixed
state); before 2.9 only the legacy flags exist (cuDNN's ``allow_tf32`` True by default), and they are set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: The float32 mode of each precision's float32 arithmetic: IEEE or TF32. fp16 and bf16 compute in 16 bits
#: (their fused forms' fp32 parts in IEEE whatever is set); fp16's mode is that of the run it falls back to
#: when ``auto`` chose it and it fails its check on the first batch: TF32 eager.
FLOAT32_MODES = {"fp32": "ieee", "tf32": "tf32", "fp16": "tf32", "bf16": "ieee"}
#: The float32 modes in words (what a training record and an output say).
FLOAT32_WORDS = {"ieee": "IEEE fp32", "tf32": "TF32"}
#: The 16-bit precisions and their torch types.
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class _Flag:
    """One flag that sets the float32 mode of convolutions or matmuls: ``fp32_precision`` (PyTorch 2.9 on:
    ``ieee``/``tf32``) or, before it, the legacy ``allow_tf32`` (a bool)."""

    label: str
    owner: object
    attribute: str

    def mode(self) -> str:
        """``ieee``, ``tf32`` (or ``none``: PyTorch's own default, with the new API)."""
        value = getattr(self.owner, self.attribute)
        return str(value) if self.attribute == "fp32_precision" else "tf32" if value else "ieee"

    def value_for(self, mode: str) -> object:
        """The flag's value for ``mode`` (``ieee`` or ``tf32``)."""
        return mode if self.attribute == "fp32_precision" else mode == "tf32"


def _backends() -> Any:
    """``torch.backends`` (a function, so that a test can stand in an older PyTorch's)."""
    return torch.backends


def _flags() -> list[_Flag]:
    """The flags that set the float32 mode of cuDNN convolutions and CUDA matmuls: the ``fp32_precision`` API
    where PyTorch has it (2.9 on), else the legacy ``allow_tf32`` flags."""
    backends = _backends()
    owners = (("cudnn.conv", getattr(backends.cudnn, "conv", None)), ("cuda.matmul", backends.cuda.matmul))
    if all(hasattr(owner, "fp32_precision") for _, owner in owners):
        return [_Flag(label, owner, "fp32_precision") for label, owner in owners]
    return [_Flag("cudnn.conv", backends.cudnn, "allow_tf32"), _Flag("cuda.matmul", backends.cuda.matmul, "allow_tf32")]


def _onednn_flags() -> list[_Flag]:
    """oneDNN's flags for PyTorch's CPU convolutions and matmuls (PyTorch 2.9 on): a caller's ``bf16`` (or
    ``set_float32_matmul_precision("medium")``'s matmuls) lowers float32 to bf16 on a CPU with bf16 units. Set as
    the GPU's are: a CPU has no TF32 (``tf32`` computes IEEE there, measured), and PyTorch reads the matmul flags
    together (``get_float32_matmul_precision`` raises on a CUDA and a oneDNN flag that no level gives). Its
    environment variable, read when PyTorch loads, is another matter (:mod:`dsen2cr.onednn`)."""
    mkldnn = getattr(_backends(), "mkldnn", None)
    owners = (("mkldnn.conv", getattr(mkldnn, "conv", None)), ("mkldnn.matmul", getattr(mkldnn, "matmul", None)))
    return [_Flag(label, owner, "fp32_precision") for label, owner in owners if hasattr(owner, "fp32_precision")]


def float32_mode() -> dict[str, str]:
    """The current mode of each flag (``ieee``, ``tf32`` or ``none``) by label: what a run records."""
    return {flag.label: flag.mode() for flag in _flags()}


#: The device types whose autocast a caller may have switched on.
AUTOCAST_DEVICES = ("cpu", "cuda", "mps")


def _autocast_on(device: str) -> bool:
    """Whether the caller's autocast is on for ``device`` (PyTorch 2.4's function, or the older ones)."""
    try:
        return bool(torch.is_autocast_enabled(device))
    except TypeError:  # PyTorch before 2.4: the CPU's function and CUDA's
        return bool(
            torch.is_autocast_cpu_enabled() if device == "cpu" else device == "cuda" and torch.is_autocast_enabled()
        )


@contextlib.contextmanager
def float32_arithmetic(mode: str) -> Iterator[None]:
    """Within the block, float32 convolutions and matmuls compute in ``mode`` (``ieee`` or ``tf32``) on every
    device (the CPU's oneDNN too), also under a caller's ``torch.autocast`` (switched off inside: a 16-bit backend
    sets its own); the previous modes are restored afterwards (also on an error)."""
    if mode not in ("ieee", "tf32"):
        raise ValueError(f"float32 mode: expected ieee or tf32, got {mode!r}")
    flags = _flags() + _onednn_flags()
    before = [getattr(flag.owner, flag.attribute) for flag in flags]
    with contextlib.ExitStack() as callers_autocast_off:
        for device in AUTOCAST_DEVICES:
            if _autocast_on(device):
                callers_autocast_off.enter_context(torch.autocast(device, enabled=False))
        try:
            for flag in flags:
                setattr(flag.owner, flag.attribute, flag.value_for(mode))
            yield
        finally:
            for flag, value in zip(flags, before, strict=True):
                setattr(flag.owner, flag.attribute, value)


def cpu_computes_bf16() -> bool:
    """Whether oneDNN computes bf16 convolutions on this CPU (PyTorch's own test: AVX512 or Arm's bf16)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch without the test
        return False


@contextlib.contextmanager
def training_arithmetic(matmul_precision: str) -> Iterator[None]:
    """Within the block, the float32 arithmetic of ``torch.set_float32_matmul_precision(matmul_precision)`` for
    convolutions and matmuls alike (:func:`training_float32`: PyTorch leaves cuDNN convolutions on TF32 after
    ``"highest"``); the caller's arithmetic is restored afterwards (a notebook that trained paper-fast went on in
    TF32). With PyTorch's ``fp32_precision`` flags (2.9 on) only they are set: a caller's oneDNN flags that no
    level of the older API gives made its ``get_float32_matmul_precision`` raise (``medium``, bf16 matmuls on a
    CPU with bf16 units, is then ``high``: the network has no matmuls)."""
    if _flags()[0].attribute == "fp32_precision":
        with float32_arithmetic(training_float32(matmul_precision)):
            yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        with float32_arithmetic(training_float32(matmul_precision)):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def training_float32(matmul_precision: str) -> str:
    """The float32 arithmetic of convolutions and matmuls for ``trainer.matmul_precision``: IEEE for
    ``highest`` (the paper config), TF32 for ``high`` and ``medium`` (paper-fast: a stated deviation)."""
    return "ieee" if matmul_precision == "highest" else "tf32"
