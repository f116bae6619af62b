"""oneDNN's own float32 arithmetic on the CPU (docs/design.md §4.3).

oneDNN runs PyTorch's CPU convolutions and matmuls. On a CPU with bf16 units (AMX, AVX512-BF16) it computes
float32 ones in bf16 (or f16, tf32) when its environment variable asks it (``ONEDNN_DEFAULT_FPMATH_MODE``, or the
older ``DNNL_DEFAULT_FPMATH_MODE``): it reads it once, when PyTorch loads, and PyTorch's flags do not undo it
(measured on a Sapphire Rapids core: a 64-channel 3x3 convolution 1.3e-2 from float64 against IEEE's 3e-7, with
``torch.backends.mkldnn.conv.fp32_precision = "ieee"`` set after it as before). The ``dsen2cr`` command leaves it
out of its environment before PyTorch loads; a Python process that loaded PyTorch with it is refused the CPU work
whose outputs say IEEE fp32 or are checked against it. No PyTorch here: the command line calls it first.
"""

from __future__ import annotations

import os
import sys

from dsen2cr.errors import DSen2CRError

#: The variables oneDNN reads for its default float32 arithmetic, the current name first.
FPMATH_VARIABLES = ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")
#: Their values that lower float32 arithmetic on a CPU (any case). STRICT, the default, is IEEE; TF32 is too on a
#: CPU (none computes it; measured with PyTorch's own tf32 flag); oneDNN ignores other values.
LOWERING_MODES = frozenset({"BF16", "F16", "ANY"})


def lowering_request() -> tuple[str, str] | None:
    """The variable of this process's environment that asks oneDNN to lower float32 arithmetic, and its value
    (None where none does)."""
    for name in FPMATH_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.upper() in LOWERING_MODES:
            return name, value
    return None


def leave_out_lowering() -> str | None:
    """At a command's start, before PyTorch loads: remove the variables from this process's environment (and so
    from its children's) so that oneDNN computes IEEE fp32; ``NAME=VALUE`` of the request removed, to say it. None
    where there was none, or where PyTorch has loaded already (the request then holds, and
    :func:`refuse_lowered_cpu_float32` refuses the CPU work it would falsify)."""
    request = lowering_request()
    if request is None or "torch" in sys.modules:
        return None
    for name in FPMATH_VARIABLES:
        os.environ.pop(name, None)
    return "=".join(request)


def refuse_lowered_cpu_float32(work: str) -> None:
    """Refuse ``work`` on the CPU (its outputs IEEE fp32, or checked against it) in a process whose environment
    asks oneDNN to lower float32 arithmetic: PyTorch read it when it loaded, and no flag undoes it."""
    request = lowering_request()
    if request is not None:
        name, value = request
        raise DSen2CRError(
            f"{name}={value}: oneDNN computes this CPU's float32 convolutions in {value.lower()} under it (read when "
            f"PyTorch loaded; no PyTorch flag undoes it), so {work} would not be what its outputs say; "
            "unset it before Python starts (the dsen2cr command leaves it out itself)"
        )
