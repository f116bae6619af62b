"""Where every ``auto`` setting is decided: device, batch size, tile size and whether to compile
(docs/design.md §4.3). Each decision is logged once, at INFO level, by the function that makes it."""

from __future__ import annotations

import logging
import math

import torch

from dsen2cr.errors import DSen2CRError
from dsen2cr.model import ModelConfig
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS

log = logging.getLogger(__name__)

#: Working memory of one window, in float32 values per pixel and hidden feature. Measured peaks
#: (benchmarks/window_memory.py): eager fp32 about 5 feature maps (oneDNN reorders included), the compiled
#: backend about 2.5; 6 leaves a margin.
FEATURE_MAPS_PER_WINDOW = 6
#: ``--tile auto`` aims for windows just large enough that the overlap costs at most this factor of compute
#: over a large scene ((tile / (tile - overlap))^2); larger windows gain little, and narrow models run slower
#: per pixel on them (their feature maps no longer fit in the CPU cache).
TARGET_REDUNDANCY = 1.15
#: ``--tile auto`` on CPU uses at most this much of the available memory.
MAX_CPU_MEMORY = 8 * 2**30
#: ``--batch-size auto``: windows per forward pass on a GPU (batching does not make a CPU faster: 1 there).
GPU_BATCH_SIZE = 4
#: Share of the eager time that the compiled backend saves on CPU (measured: 1.2-1.4x eager on long runs).
COMPILE_SAVING = 0.25
#: Seconds a first build of the compiled backend (compile, then check against eager) is assumed to cost while
#: none is recorded for the window shape; a build found in the persistent cache costs a few seconds, and what
#: it took is recorded (:mod:`dsen2cr.compile_cache`).
COLD_BUILD_SECONDS = 30.0
#: Rough eager fp32 rate of a CPU for the estimate (FLOP/s); a 2-core AVX-512 machine measures ~1.5e11.
EAGER_CPU_FLOPS = 1.5e11


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when PyTorch sees a GPU, else the CPU; any other name is checked (one-line error)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise DSen2CRError(f"device: {device!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DSen2CRError(f"device: {device!r} asked for, but this PyTorch sees no CUDA GPU")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DSen2CRError(f"device: {device!r}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif resolved.type != "cpu":
        raise DSen2CRError(f"device: {device!r} is not supported; use auto, cpu or cuda[:N]")
    return resolved


def resolve_batch_size(batch_size: int | str, device: str | torch.device) -> int:
    """``auto``: 1 on CPU, ``GPU_BATCH_SIZE`` on GPU; a number must be at least 1."""
    if batch_size == "auto":
        return GPU_BATCH_SIZE if torch.device(device).type == "cuda" else 1
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DSen2CRError(f"batch size: must be at least 1, got {batch_size}")
    return batch_size


def window_bytes(config: ModelConfig, height: int, width: int) -> int:
    """Estimated peak working memory (bytes) of the network on one height x width window."""
    values_per_pixel = FEATURE_MAPS_PER_WINDOW * config.num_features + 2 * (NUM_S2_BANDS + NUM_S1_BANDS)
    return 4 * height * width * values_per_pixel


def memory_budget(device: str | torch.device) -> int:
    """Memory that ``--tile auto`` may fill: half the free memory of a GPU; on CPU half the available memory,
    at most ``MAX_CPU_MEMORY``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    import psutil

    return min(psutil.virtual_memory().available // 2, MAX_CPU_MEMORY)


def choose_tile(config: ModelConfig, *, batch_size: int, memory_bytes: int, overlap: int) -> int:
    """The tile (a multiple of 64) for ``--tile auto``: just large enough for ``TARGET_REDUNDANCY``, smaller
    when a batch of such windows would not fit in ``memory_bytes``, never below the overlap plus 64 pixels."""
    enough = math.ceil(overlap / (1 - TARGET_REDUNDANCY**-0.5))
    fits = math.isqrt(int(memory_bytes / max(batch_size, 1) / window_bytes(config, 1, 1)))
    return max(_round_up_64(overlap + 64), min(_round_up_64(enough), fits // 64 * 64))


def auto_tile(
    config: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    memory_bytes: int | None = None,
    overlap: int | None = None,
) -> int:
    """``--tile auto``: :func:`choose_tile` with the device's :func:`memory_budget` (unless ``memory_bytes``)
    and the exact :func:`~dsen2cr.scene.tiles.default_overlap` (unless ``overlap``)."""
    from dsen2cr.scene.tiles import default_overlap  # the scene package imports this module

    return choose_tile(
        config,
        batch_size=batch_size,
        memory_bytes=memory_budget(device) if memory_bytes is None else memory_bytes,
        overlap=default_overlap(config) if overlap is None else overlap,
    )


def resolve_tile(
    config: ModelConfig,
    tile: int | str,
    *,
    device: str | torch.device,
    batch_size: int,
    overlap: int,
    memory_gib: float | None = None,
) -> int:
    """``tile`` itself, or for ``auto`` :func:`choose_tile` for the memory budget (``memory_gib``, else the
    device's :func:`memory_budget`); the automatic choice is logged."""
    if tile != "auto":
        return int(tile)
    if memory_gib is not None and not (math.isfinite(memory_gib) and memory_gib > 0):
        raise DSen2CRError(f"memory: must be a positive number of GiB, got {memory_gib}")
    budget = memory_budget(device) if memory_gib is None else int(memory_gib * 2**30)
    chosen = choose_tile(config, batch_size=batch_size, memory_bytes=budget, overlap=overlap)
    log.info("tiles: at most %d px, batch %d (--tile auto for a %.2f GiB budget)", chosen, batch_size, budget / 2**30)
    return chosen


def _round_up_64(pixels: int) -> int:
    """``pixels`` rounded up to a multiple of 64."""
    return -(-pixels // 64) * 64


def estimated_eager_seconds(config: ModelConfig, pixels: float) -> float:
    """Eager CPU seconds to run a model of ``config`` over ``pixels`` (2 FLOP per weight and pixel)."""
    return pixels * 2 * config.build_parameter_count() / EAGER_CPU_FLOPS


def torch_backend_candidates(
    config: ModelConfig,
    device: str | torch.device,
    pixels: float | None,
    window_shape: tuple[int, int, int] | None = None,
) -> str:
    """What ``--backend auto`` asks :func:`dsen2cr.backends.select_backend` for: ``auto`` (the fastest backend
    that agrees with eager) on GPU, and on CPU when compiling pays for itself: the time it saves
    (``COMPILE_SAVING`` of the estimated eager run over ``pixels``) exceeds what building it costs (the
    recorded build of this window shape, else ``COLD_BUILD_SECONDS``); else ``eager`` (also when ``pixels`` is
    unknown: compiling is worth it only for a known, long run)."""
    from dsen2cr.compile_cache import build_key, recorded_build_seconds

    device = torch.device(device)
    if device.type == "cuda":
        return "auto"
    if pixels is None:
        return "eager"
    recorded = None if window_shape is None else recorded_build_seconds(build_key(config, window_shape, device))
    build = COLD_BUILD_SECONDS if recorded is None else recorded
    saving = COMPILE_SAVING * estimated_eager_seconds(config, pixels)
    log.debug(
        "backend auto: compiling would save ~%.0f s and cost ~%.0f s%s",
        saving,
        build,
        "" if recorded is None else " (recorded)",
    )
    return "auto" if saving > build else "eager"
