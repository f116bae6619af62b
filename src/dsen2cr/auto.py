"""Where every ``auto`` setting is decided (docs/design.md §4.3), one entry point each: the device
(:func:`resolve_device`), the batch size (:func:`resolve_batch_size`), the tile (:func:`resolve_tile`), the
backend and precision, ONNX files included (:func:`plan_backend`); :func:`plan_scene_run` makes a run's
:class:`~dsen2cr.settings.ScenePlan` from them. Each decision is logged once, at INFO level, by the function
that makes it."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from rasterio.windows import Window

import dsen2cr.machine as machine
from dsen2cr.choices import GDAL_CACHE_BYTES, PRECISIONS
from dsen2cr.compile_cache import COMPILE_SAVING, build_key, recorded_build_seconds
from dsen2cr.errors import DSen2CRError
from dsen2cr.launch import this_launch
from dsen2cr.models import ModelSpec
from dsen2cr.precision import FLOAT32_MODES, HALF_DTYPES, cpu_computes_bf16
from dsen2cr.preprocessing import NUM_S1_BANDS, NUM_S2_BANDS
from dsen2cr.scene.tiles import area_region, default_overlap, plan_tiles
from dsen2cr.settings import BACKEND_CHOICES, ScenePlan, SceneSettings

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
#: Seconds a first build of the compiled backend (compile, then check against eager) is assumed to cost while
#: none is recorded for the window shape; a build found in the persistent cache costs a few seconds, and what
#: it took is recorded (:mod:`dsen2cr.compile_cache`).
COLD_BUILD_SECONDS = 30.0
#: Rough eager fp32 rate of a CPU for the estimate (FLOP/s); a 2-core AVX-512 machine measures ~1.5e11.
EAGER_CPU_FLOPS = 1.5e11


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when PyTorch sees a GPU, else the CPU; any other name is checked (one-line error).
    In a run of several processes (torchrun, an ``srun`` step: :func:`dsen2cr.launch.this_launch`), a CUDA device
    without an index is this process's GPU: ``cuda:LOCAL_RANK``, or the only one it sees where the launcher gave
    each process its own (``srun --gpus-per-task 1``)."""
    resolved = _device(device)
    launch = this_launch()
    if launch.world > 1 and resolved.type == "cuda" and resolved.index is None and launch.local_rank is not None:
        own = launch.local_rank if torch.cuda.device_count() != 1 else 0
        resolved = _device(f"cuda:{own}")
    return resolved


def _device(device: str | torch.device) -> torch.device:
    """:func:`resolve_device` on one process."""
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
    """``auto``: 1 on CPU, ``GPU_BATCH_SIZE`` on GPU; a number as it is (checked in
    :class:`~dsen2cr.settings.SceneSettings`)."""
    if batch_size == "auto":
        return GPU_BATCH_SIZE if torch.device(device).type == "cuda" else 1
    return int(batch_size)


def window_bytes(config: ModelSpec, height: int, width: int) -> int:
    """Estimated peak working memory (bytes) of the network on one height x width window."""
    values_per_pixel = FEATURE_MAPS_PER_WINDOW * config.hidden_channels + 2 * (NUM_S2_BANDS + NUM_S1_BANDS)
    return 4 * height * width * values_per_pixel


def memory_budget(device: str | torch.device) -> int:
    """Memory that ``--tile auto`` may fill: half the free memory of a GPU; on CPU half the available memory
    (within a container's or batch job's limit: :func:`dsen2cr.machine.available_memory_bytes`), at most
    ``MAX_CPU_MEMORY``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return min(machine.available_memory_bytes() // 2, MAX_CPU_MEMORY)


def choose_tile(config: ModelSpec, *, batch_size: int, memory_bytes: int, overlap: int) -> int:
    """The tile (a multiple of 64) for ``--tile auto``: just large enough for ``TARGET_REDUNDANCY`` at the overlap,
    or at the exact one (:func:`~dsen2cr.scene.tiles.default_overlap`) when that is larger (a smaller overlap
    trades accuracy for work, and must not buy tiny windows), smaller when a batch of such windows would not fit
    in ``memory_bytes``, never below the overlap plus 64 pixels."""
    enough = math.ceil(max(overlap, default_overlap(config)) / (1 - TARGET_REDUNDANCY**-0.5))
    fits = math.isqrt(int(memory_bytes / max(batch_size, 1) / window_bytes(config, 1, 1)))
    return max(_round_up_64(overlap + 64), min(_round_up_64(enough), fits // 64 * 64))


def resolve_tile(
    config: ModelSpec,
    tile: int | str,
    *,
    device: str | torch.device,
    batch_size: int,
    overlap: int,
    memory_gib: float | None = None,
) -> int:
    """``tile`` itself, or for ``auto`` :func:`choose_tile` for the memory budget (``memory_gib``, else the
    device's :func:`memory_budget`); the automatic choice is logged, and on a CPU a ``memory_gib`` beyond what a
    container's or job's memory limit leaves is warned of (the kernel kills a process at its limit)."""
    if tile != "auto":
        return int(tile)
    budget = memory_budget(device) if memory_gib is None else int(memory_gib * 2**30)
    chosen = choose_tile(config, batch_size=batch_size, memory_bytes=budget, overlap=overlap)
    limit = machine.memory_limit() if torch.device(device).type == "cpu" else None
    if limit is not None and memory_gib is not None and budget > limit[1]:
        log.warning(
            "--memory %.2f GiB is more than this container's or job's memory limit leaves (%.2f GiB of %.2f GiB): "
            "the kernel may kill the run; give --memory %.2f or less (half what it leaves, as the default plans)",
            memory_gib,
            limit[1] / 2**30,
            limit[0] / 2**30,
            limit[1] / 2 / 2**30,
        )
    within = ""
    if limit is not None and memory_gib is None:
        within = f", within this container's or job's memory limit of {limit[0] / 2**30:.2f} GiB"
    log.info(
        "tiles: at most %d px, batch %d (--tile auto for a %.2f GiB budget%s)",
        chosen,
        batch_size,
        budget / 2**30,
        within,
    )
    return chosen


def _round_up_64(pixels: int) -> int:
    """``pixels`` rounded up to a multiple of 64."""
    return -(-pixels // 64) * 64


def estimated_eager_seconds(config: ModelSpec, pixels: float) -> float:
    """Eager CPU seconds to run a model of ``config`` over ``pixels`` (2 FLOP per weight and pixel)."""
    return pixels * 2 * config.build_parameter_count() / EAGER_CPU_FLOPS


def resolve_precision(
    precision: str, device: torch.device, *, onnx: bool = False, exact: bool = False, backend: str = "auto"
) -> str:
    """What ``--precision`` means here: ``fp32`` (IEEE), ``tf32``, ``fp16`` or ``bf16``.

    ``auto``: IEEE fp32 on a CPU, in ``exact`` runs (evaluate's) and for ONNX files (run as exported); on a GPU
    with fp16 tensor cores (7.0+) fp16, p99 6.9 / max 29 DN from float64 on the paper-size model (TF32 4 / 12,
    bf16 51 / 206: docs/design.md §13) at bf16's rate; IEEE fp32 on older GPUs. A float32 ``backend`` named
    (eager, compiled) keeps auto in float32 (TF32 where the GPU has it). ``tf32`` without TF32 (a CPU, a GPU
    before 8.0) is IEEE fp32: said, not refused. ``bf16`` on a GPU without bf16 is refused."""
    if precision not in PRECISIONS:
        raise DSen2CRError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if onnx:
        if precision not in ("auto", "fp32"):
            raise DSen2CRError("--precision: an ONNX file runs the precision it was exported in (auto)")
        return "fp32"
    cuda = device.type == "cuda"
    if precision == "auto":
        chosen = auto_precision(device, exact=exact, backend=backend)
        reason = "exact results" if exact else f"auto on {device_name(device)}"
        reason += "" if backend == "auto" or exact else f" with --backend {backend}"
        log.info("precision: %s (%s; --precision fp32, tf32, fp16 or bf16 to choose)", chosen, reason)
        return chosen
    if precision == "tf32" and not has_tf32(device):
        log.info("precision: tf32 on %s is IEEE fp32 (TF32 exists on NVIDIA GPUs from Ampere on)", device_name(device))
        return "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise DSen2CRError(f"--precision bf16: {device_name(device)} cannot compute in bf16")
    if precision in HALF_DTYPES and not cuda:
        fast = precision == "bf16" and cpu_computes_bf16()
        how = "its convolutions by oneDNN in bf16" if fast else "its 16-bit convolutions emulated at about fp32's speed"
        log.info("precision: %s on %s, its residual stream, head and tail in fp32, %s", precision, device.type, how)
    return precision


def auto_precision(device: torch.device, *, exact: bool = False, backend: str = "auto") -> str:
    """What ``--precision auto`` picks for a PyTorch model on ``device`` (:func:`resolve_precision`, which says
    why): fp16 on a GPU with fp16 tensor cores, else TF32 on a GPU that has it, else IEEE fp32; IEEE fp32 on a CPU
    and for ``exact`` results; a float32 ``backend`` the user named keeps float32."""
    fast = device.type == "cuda" and not exact  # a GPU, and no exact results asked for
    if fast and backend == "auto" and _capability(device) >= FP16_TENSOR_CORES:
        return "fp16"
    return "tf32" if fast and has_tf32(device) else "fp32"


#: Compute capability from which NVIDIA GPUs multiply fp16 on tensor cores (Volta), and TF32 (Ampere).
FP16_TENSOR_CORES, TF32_TENSOR_CORES = (7, 0), (8, 0)


def has_tf32(device: torch.device) -> bool:
    """Whether ``device`` computes TF32 when asked (else its float32 arithmetic is IEEE whatever is set)."""
    return device.type == "cuda" and _capability(device) >= TF32_TENSOR_CORES


def float32_mode_of(precision: str, device: torch.device) -> str:
    """The float32 arithmetic a run of the resolved ``precision`` sets (:data:`dsen2cr.precision.FLOAT32_MODES`),
    IEEE on a device without TF32 (so a fall back from fp16 records fp32 there, what it computes)."""
    mode = FLOAT32_MODES[precision]
    return mode if mode == "ieee" or has_tf32(device) else "ieee"


def _capability(device: torch.device) -> tuple[int, int]:
    """The CUDA compute capability of ``device``."""
    return torch.cuda.get_device_capability(device)


def device_name(device: torch.device) -> str:
    """The device's name for a log line: the GPU's model on CUDA."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def plan_backend(
    backend: str,
    precision: str,
    config: ModelSpec | None,
    device: torch.device,
    *,
    onnx: bool = False,
    named_precision: bool = False,
    pixels: float | None = None,
    window_shape: tuple[int, int, int] | None = None,
) -> tuple[tuple[str, ...], bool]:
    """The backends to try, in order, for a resolved ``precision`` (:func:`resolve_precision`), and whether a
    failure is an error (strict: the user named the backend, or ``named_precision``) or a fall back to IEEE
    fp32 eager. ONNX files run with onnxruntime (``auto`` or ``onnxruntime``). ``fp16`` and ``bf16`` are the
    backends of those names (fp16 that ``auto`` chose falls back to TF32 eager when it fails its check; a float32
    backend named beside them is not used, with a warning). ``auto``: on a CPU the compiled backend when the run
    pays for building it (:func:`compile_pays_off`), then eager; else eager. ``config`` None: choices checked."""
    if backend not in BACKEND_CHOICES:
        raise DSen2CRError(f"--backend: expected one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    if onnx:
        if backend not in ("auto", "onnxruntime"):
            raise DSen2CRError(f"--backend {backend}: an ONNX file runs with the onnxruntime backend (or auto)")
        return ("onnxruntime",), True
    if backend == "onnxruntime":
        raise DSen2CRError("--backend onnxruntime: needs an .onnx file (dsen2cr export-onnx)")
    if precision in HALF_DTYPES:
        if backend != "auto":
            log.warning("--backend %s is not used: --precision %s runs its own backend, %s", backend, *[precision] * 2)
        return (precision,), precision == "bf16" or named_precision
    if backend != "auto":
        return (backend,), backend != "eager" or named_precision
    if device.type != "cuda" and config is not None and compile_pays_off(config, device, pixels, window_shape):
        return ("compiled", "eager"), named_precision
    return ("eager",), named_precision


def compile_pays_off(
    config: ModelSpec,
    device: torch.device,
    pixels: float | None,
    window_shape: tuple[int, int, int] | None = None,
) -> bool:
    """Whether compiling on CPU pays for itself: the time it saves (``COMPILE_SAVING`` of the estimated eager
    run over ``pixels``) exceeds what building it costs (the recorded build of this window shape, else
    ``COLD_BUILD_SECONDS``). False when ``pixels`` is unknown: compiling is worth it only for a known, long run."""
    if pixels is None:
        return False
    recorded = None if window_shape is None else recorded_build_seconds(build_key(config, window_shape, device))
    build = COLD_BUILD_SECONDS if recorded is None else recorded
    saving = COMPILE_SAVING * estimated_eager_seconds(config, pixels)
    log.debug(
        "backend auto: compiling would save ~%.0f s and cost ~%.0f s%s",
        saving,
        build,
        "" if recorded is None else " (recorded)",
    )
    return saving > build


#: Eager CPU seconds of a scene from which ``--journal auto`` keeps its predicted windows: a stop after this much
#: work costs more than writing them (4 bytes a band and pixel) costs time.
JOURNAL_AFTER_SECONDS = 600.0
#: ``--fetch-inputs auto``: seconds beyond the network's estimate a scene's signatures must hold not to be fetched.
FETCH_MARGIN_SECONDS = 600.0


def resolve_journal(journal: str, config: ModelSpec, device: torch.device, pixels: float) -> bool:
    """Whether a scene of ``pixels`` keeps a journal of its predicted windows (``--journal``): ``on``, ``off``, or
    ``auto``: on a CPU where the network's estimated time for the scene passes :data:`JOURNAL_AFTER_SECONDS`
    (a full tile with the paper's model: hours), never on a GPU (seconds a tile: its gigabytes would cost more)."""
    if journal != "auto":
        return journal == "on"
    return device.type == "cpu" and estimated_eager_seconds(config, pixels) >= JOURNAL_AFTER_SECONDS


def resolve_fetch(fetch: str, config: ModelSpec, device: torch.device, pixels: float, left: float | None) -> bool:
    """Whether a scene downloads its remote assets first (``--fetch-inputs`` ``on``, ``off``; ``auto``: on a CPU where
    their signatures expire, in ``left`` seconds, before the network's estimate and :data:`FETCH_MARGIN_SECONDS`)."""
    needed = estimated_eager_seconds(config, pixels) + FETCH_MARGIN_SECONDS
    return fetch == "on" if fetch != "auto" else device.type == "cpu" and left is not None and left < needed


def plan_scene_run(
    settings: SceneSettings,
    config: ModelSpec,
    *,
    scene_areas: Sequence[tuple[int, int, Window]] = (),
    onnx: bool = False,
    device: torch.device | None = None,
) -> ScenePlan:
    """The plan of a run of ``settings`` with a model of ``config``: the device, the batch size, the tile (for
    the memory budget), the overlap (exact unless set), and the backends for a run over scenes of
    ``scene_areas`` (height, width and the window of it to process), whose first window shape ``--backend auto``
    looks up in the compile records. ``device``: already resolved (a predictor's), else from the settings."""
    device = resolve_device(settings.device) if device is None else device
    batch_size = resolve_batch_size(settings.batch_size, device)
    overlap = default_overlap(config) if settings.overlap is None else settings.overlap
    tile = resolve_tile(
        config, settings.tile, device=device, batch_size=batch_size, overlap=overlap, memory_gib=settings.memory_gib
    )
    regions = [area_region(height, width, area, overlap) for height, width, area in scene_areas]
    window = plan_tiles(regions[0].height, regions[0].width, tile, overlap)[0].window if regions else None
    window_shape = (batch_size, tile, tile) if window is None else (batch_size, window.height, window.width)
    pixels = float(sum(region.height * region.width for region in regions)) if regions else None
    precision = resolve_precision(settings.precision, device, onnx=onnx, backend=settings.backend)
    backends, strict = plan_backend(
        settings.backend,
        precision,
        config,
        device,
        onnx=onnx,
        named_precision=settings.precision != "auto",
        pixels=pixels,
        window_shape=window_shape,
    )
    if overlap < default_overlap(config):
        log.warning(
            "overlap %d px is below the exact %d px (twice the receptive-field radius): pixels near window "
            "edges will differ from whole-image inference",
            overlap,
            default_overlap(config),
        )
    reading = {"band_threads": resolve_band_threads(device), "block_cache_bytes": resolve_block_cache_bytes(device)}
    finish = resolve_finish_threads(device)
    hold = resolve_hold_bytes(device)
    return ScenePlan(
        settings, device, backends, strict, precision, tile, overlap, batch_size, finish, **reading, hold_bytes=hold
    )


def resolve_finish_threads(device: torch.device) -> int:
    """Threads that turn predicted windows into output pixels (``--keep-clear``'s map and blend, numpy and scipy
    releasing the GIL) while the network runs: on a GPU all cores but the feeder's and the reader's, at most 8; on
    a CPU one, beside the network, which uses every core (benchmarks.keep_clear)."""
    if device.type != "cuda":
        return 1
    return max(1, min(8, machine.cores() - 2))


def resolve_band_threads(device: torch.device) -> int:
    """Threads that read a product's band files side by side (:class:`~dsen2cr.inputs.readers.S2Source`), and the
    mask's statistics pass its blocks: on a GPU, whose network can outrun one thread decoding JPEG 2000 bands,
    every core, at most one per band; on a CPU one (the network, far slower than the reads, uses every core)."""
    if device.type != "cuda":
        return 1
    return max(1, min(NUM_S2_BANDS, machine.cores()))


def resolve_block_cache_bytes(device: torch.device) -> int:
    """GDAL's block cache for a scene run (:func:`dsen2cr.rasters.set_block_cache_bytes`): 256 MiB on a CPU, whose
    network is far slower than any read; on a GPU 1 GiB (at most an eighth of the memory): a block row of a full
    tile's 13 JPEG 2000 bands is 168 MB and a row of windows touches up to three, so at 256 MiB blocks were
    decoded again (benchmarks.product_read: reads 1.52x faster at 1 GiB)."""
    if device.type != "cuda":
        return GDAL_CACHE_BYTES
    return max(GDAL_CACHE_BYTES, min(2**30, machine.memory_bytes() // 8))


def resolve_hold_bytes(device: torch.device) -> int:
    """Bytes of predicted windows that may wait in memory while the cloud mask's statistics pass runs (the first
    map waits for it; :func:`dsen2cr.scene.batches.write_in_order`): on a GPU 4 GiB (at most an eighth of this
    process's share of the memory, :func:`dsen2cr.machine.memory_bytes`; some 50 windows of 1024 px, four seconds
    of an H200's network); on a CPU none (its network is far slower than the pass)."""
    if device.type != "cuda":
        return 0
    return min(4 * 2**30, machine.memory_bytes() // 8)
