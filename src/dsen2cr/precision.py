"""What "fp32" means on every device (docs/design.md §4.3): the float32 arithmetic of convolutions and
matmuls, set for a call and restored afterwards.

PyTorch keeps cuDNN convolutions on TF32 after ``torch.set_float32_matmul_precision("highest")``
(``torch.backends.cudnn.conv.fp32_precision`` stays ``tf32``): IEEE fp32 needs both flags. Only the
``fp32_precision`` API is used, never the legacy ``allow_tf32`` flags (PyTorch refuses a mixed state).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: What ``--precision`` takes: ``auto`` (decided in :func:`dsen2cr.auto.resolve_precision`), IEEE ``fp32``,
#: ``tf32`` (float32 inputs, TF32 tensor-core products on GPUs that have them), ``fp16``, ``bf16``.
PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")
#: The float32 mode of each precision's float32 arithmetic: IEEE or TF32. fp16 and bf16 compute in 16 bits
#: (their fused forms' fp32 parts in IEEE whatever is set); fp16's mode is that of the run it falls back to
#: when ``auto`` chose it and it fails its check on the first batch: TF32 eager.
FLOAT32_MODES = {"fp32": "ieee", "tf32": "tf32", "fp16": "tf32", "bf16": "ieee"}
#: The 16-bit precisions and their torch types.
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _flags() -> list[tuple[str, object, str]]:
    """(label, object, attribute) of the flags that set the float32 mode of convolutions and matmuls (PyTorch
    2.9 and later; older releases have only the legacy flags, left alone)."""
    owners = (("cudnn.conv", getattr(torch.backends.cudnn, "conv", None)), ("cuda.matmul", torch.backends.cuda.matmul))
    return [(label, owner, "fp32_precision") for label, owner in owners if hasattr(owner, "fp32_precision")]


def float32_mode() -> dict[str, str]:
    """The current mode of each flag (``ieee``, ``tf32`` or ``none``) by label: what a run records."""
    return {label: str(getattr(owner, name)) for label, owner, name in _flags()}


@contextlib.contextmanager
def float32_arithmetic(mode: str) -> Iterator[None]:
    """Within the block, float32 convolutions and matmuls compute in ``mode`` (``ieee`` or ``tf32``) on every
    device; the previous modes are restored afterwards (also on an error)."""
    if mode not in ("ieee", "tf32"):
        raise ValueError(f"float32 mode: expected ieee or tf32, got {mode!r}")
    flags = _flags()
    before = [getattr(owner, name) for _, owner, name in flags]
    try:
        for _, owner, name in flags:
            setattr(owner, name, mode)
        yield
    finally:
        for (_, owner, name), value in zip(flags, before, strict=True):
            setattr(owner, name, value)


def set_float32_arithmetic(mode: str) -> None:
    """Set the float32 mode of convolutions and matmuls for the rest of the process (a training run)."""
    for _, owner, name in _flags():
        setattr(owner, name, mode)
