"""Many scenes: jobs from argument lists or a manifest, split across torchrun ranks, run with one predictor and
one set of resolved settings (docs/design.md §4.4)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from dsen2cr.auto import resolve_batch_size, resolve_device, resolve_tile
from dsen2cr.errors import DSen2CRError
from dsen2cr.files import check_distinct_outputs, check_input_file, check_output_file
from dsen2cr.geotiff import cog_options, gdal_block_cache
from dsen2cr.masks import DEFAULT_CLOUD_THRESHOLD
from dsen2cr.model import ModelConfig
from dsen2cr.predictor import load_predictor
from dsen2cr.scene.readers import S2Source
from dsen2cr.scene.remove import SceneReport, remove_clouds
from dsen2cr.scene.tiles import default_overlap, plan_tiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneJob:
    """One scene to process. ``s2`` and ``s1`` are what ``--s2``/``--s1`` take (paths, zipped products, STAC
    items as paths or URLs, ``VV,VH`` pairs), kept as text."""

    s2: str
    s1: str | None
    out: Path
    mask_out: Path | None = None
    preview: Path | None = None


def scene_stem(source: str) -> str:
    """A name for a scene's outputs: the product name without ``.SAFE``/``.SAFE.zip``, else the file stem."""
    name = Path(source.rstrip("/")).name
    for suffix in (".zip", ".SAFE", ".json", ".tif", ".tiff", ".jp2"):
        name = name.removesuffix(suffix)
    return name


def _local_parts(source: str) -> list[Path]:
    """The local files or folders an ``--s2``/``--s1`` value names (none for URLs)."""
    parts = [p.strip() for p in source.split(",")] if "," in source else [source]
    return [Path(p) for p in parts if "://" not in p]


def read_manifest(path: Path) -> list[SceneJob]:
    """Read a manifest CSV with a header: ``s2,s1,out`` and optionally ``mask_out,preview``. Relative paths
    are relative to the manifest's folder (so a manifest travels with its scenes); a UTF-8 BOM is read."""
    path = check_input_file(path, "manifest")
    base = path.parent

    def resolve(text: str) -> Path:
        """An output path relative to the manifest's folder."""
        return base / Path(text.strip())

    def resolve_input(text: str) -> str:
        """Relative paths (each of a VV,VH pair) against the manifest's folder; URLs as they are."""
        parts = [p.strip() for p in text.split(",")]
        return ",".join(p if "://" in p else str(base / p) for p in parts)

    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.DictReader(file))
            fieldnames = set(rows[0]) if rows else set()
    except (UnicodeDecodeError, csv.Error) as error:
        raise DSen2CRError(f"{path}: not a readable CSV manifest ({error})") from None
    missing = {"s2", "s1", "out"} - fieldnames
    if rows and missing:
        raise DSen2CRError(f"{path}: manifest header lacks {', '.join(sorted(missing))} (expected s2,s1,out)")
    jobs = []
    for line, row in enumerate(rows, start=2):
        if not row["s2"] or not row["out"]:
            raise DSen2CRError(f"{path}:{line}: s2 and out must not be empty")
        optional = {k: resolve(row[k]) if row.get(k) else None for k in ("mask_out", "preview")}
        s1 = resolve_input(row["s1"]) if row["s1"] else None
        jobs.append(SceneJob(resolve_input(row["s2"]), s1, resolve(row["out"]), **optional))
    if not jobs:
        raise DSen2CRError(f"{path}: manifest lists no scenes")
    return jobs


def check_jobs(jobs: list[SceneJob], *, weights: str | Path, overwrite: bool, extra_inputs: list[Path]) -> None:
    """Everything about the jobs that can be checked before the first scene runs: every input exists, every
    output can be written (exists only with ``overwrite``; its folder exists), and no output is an input or
    another output (refused even with ``overwrite``)."""
    inputs: list[tuple[str, Path]] = [("weights", Path(weights))] + [("file", p) for p in extra_inputs]
    outputs: list[tuple[str, Path]] = []
    for job in jobs:
        for role, source in (("s2", job.s2), ("s1", job.s1)):
            for part in _local_parts(source) if source else []:
                if not part.exists():
                    raise DSen2CRError(f"{part}: {role.upper()} scene not found")
                inputs.append((role, part))
        for role, target in (("out", job.out), ("mask_out", job.mask_out), ("preview", job.preview)):
            if target is not None:
                check_output_file(target, overwrite=overwrite)
                outputs.append((role, target))
    check_distinct_outputs(outputs, inputs)


def _scene_size(path: str) -> tuple[int, int] | None:
    """(height, width) of a scene's 10 m grid (None when it cannot be opened: its run reports the error)."""
    try:
        source = S2Source(path)
    except DSen2CRError:
        return None
    try:
        return source.grid.height, source.grid.width
    finally:
        source.close()


def _rank_and_device(device: str) -> tuple[int, int, torch.device]:
    """This process's rank, the world size and its device (under torchrun: one GPU per local rank)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = os.environ.get("LOCAL_RANK")
    resolved = resolve_device(device)
    if world > 1 and resolved.type == "cuda" and resolved.index is None and local is not None:
        resolved = resolve_device(f"cuda:{local}")
    return rank, world, resolved


@dataclass(frozen=True)
class SceneSettings:
    """The settings of a ``remove-clouds`` run, shared by all its scenes (``auto`` where the tool decides)."""

    weights: str
    device: str = "auto"
    backend: str = "auto"
    precision: str = "fp32"
    tile: int | str = "auto"
    overlap: int | None = None
    batch_size: int | str = "auto"
    memory_gib: float | None = None
    resampling: str = "nearest"
    s1_linear: bool = False
    s2_offset: int | None = None
    mask: str = "paper"
    keep_clear: bool = False
    feather: int | None = None  # None: dsen2cr.scene.masking.DEFAULT_FEATHER
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD
    compression: str = "deflate"
    compression_level: int | None = None  # None: GDAL's default for the compression
    overwrite: bool = False
    progress: bool = True


def run_scene_jobs(
    jobs: list[SceneJob], settings: SceneSettings, *, extra_inputs: tuple[Path, ...] = ()
) -> Iterator[SceneReport]:
    """Process this rank's share of ``jobs``: one predictor, tile and batch size for all of them. Every job is
    checked first (:func:`check_jobs`; ``extra_inputs`` such as the manifest must not be overwritten either)."""
    cog_options(settings.compression, settings.compression_level)  # refused before any scene starts
    rank, world, device = _rank_and_device(settings.device)
    check_jobs(jobs, weights=settings.weights, overwrite=settings.overwrite, extra_inputs=list(extra_inputs))
    mine = jobs[rank::world]
    sizes = [size for size in map(_scene_size, (job.s2 for job in mine)) if size is not None]
    batch_size = resolve_batch_size(settings.batch_size, device)
    tiles: dict[ModelConfig, int] = {}

    def overlap_of(config: ModelConfig) -> int:
        """--overlap, or the exact overlap of this model."""
        return default_overlap(config) if settings.overlap is None else settings.overlap

    def tile_of(config: ModelConfig) -> int:
        """The tile for this model (decided once)."""
        if config not in tiles:
            tiles[config] = resolve_tile(
                config,
                settings.tile,
                device=device,
                batch_size=batch_size,
                overlap=overlap_of(config),
                memory_gib=settings.memory_gib,
            )
        return tiles[config]

    def window_shape(config: ModelConfig) -> tuple[int, int, int]:
        """The first scene's window shape (``--backend auto`` looks up what compiling it cost before)."""
        tile = tile_of(config)
        height, width = sizes[0] if sizes else (tile, tile)
        window = plan_tiles(height, width, tile, overlap_of(config))[0].window
        return batch_size, window.height, window.width

    predictor = load_predictor(
        settings.weights,
        backend=settings.backend,
        device=device,
        precision=settings.precision,
        window_shape=window_shape,
        pixels=sum(h * w for h, w in sizes),
    )
    without_s1 = [job.s2 for job in mine if job.s1 is None]
    if predictor.include_sar and without_s1:
        raise DSen2CRError(
            f"{without_s1[0]}: these weights need SAR input; pass --s1 (or an s1 column in the manifest): VV, VH "
            "in dB on or near the S2 grid"
        )
    overlap = overlap_of(predictor.config)
    if overlap < default_overlap(predictor.config):
        log.warning(
            "overlap %d px is below the exact %d px (twice the receptive-field radius): pixels near window "
            "edges will differ from whole-image inference",
            overlap,
            default_overlap(predictor.config),
        )
    finisher = OutputFinisher(background=completes_in_background(predictor.device))
    try:
        for job in mine:
            deferred: list[contextlib.ExitStack] = []
            report = remove_clouds(
                predictor,
                s2_path=job.s2,
                s1_path=job.s1,
                out=job.out,
                tile=tile_of(predictor.config),
                overlap=overlap_of(predictor.config),
                batch_size=batch_size,
                resampling=settings.resampling,
                s1_linear=settings.s1_linear,
                s2_offset=settings.s2_offset,
                mask=settings.mask,
                keep_clear=settings.keep_clear,
                feather=settings.feather,
                mask_out=job.mask_out,
                cloud_threshold=settings.cloud_threshold,
                preview=job.preview,
                overwrite=settings.overwrite,
                progress=settings.progress,
                compression=settings.compression,
                compression_level=settings.compression_level,
                defer_outputs=deferred.append,
            )
            if (done := finisher.submit(report, deferred.pop())) is not None:
                yield done
        if (done := finisher.wait()) is not None:
            yield done
    except Exception:
        if (done := finisher.wait()) is not None:  # the scene before the failed one is complete: say so
            yield done
        raise
    finally:
        finisher.close()


def completes_in_background(device: torch.device) -> bool:
    """Whether scenes' outputs are completed while the next scene runs: on a GPU, whose network leaves the CPU
    idle; not on a CPU, whose network uses every core (overlapping measured slower there: benchmarks.pipeline,
    0.90x on 2 cores)."""
    return device.type == "cuda"


class OutputFinisher:
    """Completes each scene's outputs (the COG copy, the renames), with ``background`` on one thread while the
    next scene is predicted, so that on a GPU the CPU-bound compression of a scene overlaps the next scene's
    network; without, at once.

    At most one scene is being completed: :meth:`submit` first waits for the previous one and returns its
    report (seconds including its completion) before starting the new one's. When the previous one failed,
    the new one's outputs are removed and the error raised.
    """

    def __init__(self, *, background: bool = True) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsen2cr-finish") if background else None
        self._pending: tuple[SceneReport, Future[float]] | None = None

    def submit(self, report: SceneReport, outputs: contextlib.ExitStack) -> SceneReport | None:
        """Start completing ``outputs`` (of ``report``'s scene); return the previous scene's report, complete
        (in the foreground: this one's)."""
        if self._executor is None:
            return dataclasses.replace(report, seconds=report.seconds + _complete(outputs))
        try:
            done = self.wait()
        except BaseException as error:
            outputs.__exit__(type(error), error, error.__traceback__)  # removes this scene's temporary files
            raise
        self._pending = (report, self._executor.submit(_complete, outputs))
        return done

    def wait(self) -> SceneReport | None:
        """Wait for the scene being completed, if any, and return its report (or raise its error)."""
        if self._pending is None:
            return None
        report, future = self._pending
        self._pending = None
        return dataclasses.replace(report, seconds=report.seconds + future.result())

    def close(self) -> None:
        """Wait for any completion still running (a COG copy cannot be interrupted) and stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _complete(outputs: contextlib.ExitStack) -> float:
    """Close ``outputs`` (COG copy and renames) under the scene's GDAL settings; return the seconds taken."""
    start = time.perf_counter()
    with gdal_block_cache():
        outputs.close()
    return time.perf_counter() - start
