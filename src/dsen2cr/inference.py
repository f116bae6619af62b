"""Scene jobs for ``dsen2cr remove-clouds``: one or many scenes, from arguments or a manifest, split across
torchrun ranks."""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dsen2cr.backends import Predictor, select_backend
from dsen2cr.errors import DSen2CRError
from dsen2cr.model import ModelConfig
from dsen2cr.scene import SceneReport, auto_tile, default_overlap, memory_budget, plan_tiles, remove_clouds
from dsen2cr.weights import load_model


@dataclass(frozen=True)
class SceneJob:
    """One scene to process."""

    s2: Path
    s1: Path | None
    out: Path
    mask_out: Path | None = None
    preview: Path | None = None


def _scene_stem(path: Path) -> str:
    """A name for a scene's outputs (the product name without .SAFE for folders)."""
    return path.name.removesuffix(".SAFE") if path.is_dir() else path.stem


def jobs_from_arguments(
    *,
    s2: list[str] | None,
    s1: list[str] | None,
    out: str | None,
    manifest: str | None,
    mask_out: str | None,
    preview: str | None,
) -> list[SceneJob]:
    """Scene jobs from ``--s2/--s1/--out`` lists or a manifest CSV."""
    if manifest is not None:
        if s2 or s1 or out:
            raise DSen2CRError("--manifest: give either a manifest or --s2/--s1/--out, not both")
        return read_manifest(Path(manifest))
    if not s2 or not out:
        raise DSen2CRError("remove-clouds: --s2 and --out are required (or --manifest)")
    if s1 is not None and len(s1) != len(s2):
        raise DSen2CRError(f"--s1: {len(s1)} files for {len(s2)} S2 scenes; give one S1 per S2 scene")
    if len(s2) == 1:
        return [
            SceneJob(
                Path(s2[0]),
                Path(s1[0]) if s1 else None,
                Path(out),
                Path(mask_out) if mask_out else None,
                Path(preview) if preview else None,
            )
        ]
    if mask_out or preview:
        raise DSen2CRError("--mask-out/--preview: name them per scene in a --manifest when processing several scenes")
    folder = Path(out)
    if not folder.is_dir():
        raise DSen2CRError(f"{folder}: with several scenes --out must be an existing folder")
    pairs = zip(s2, s1 or [None] * len(s2), strict=True)
    return [
        SceneJob(Path(a), Path(b) if b else None, folder / f"{_scene_stem(Path(a))}_cloudfree.tif") for a, b in pairs
    ]


def read_manifest(path: Path) -> list[SceneJob]:
    """Read a manifest CSV with a header: ``s2,s1,out`` and optionally ``mask_out,preview``."""
    if not path.is_file():
        raise DSen2CRError(f"{path}: manifest not found")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"s2", "s1", "out"} - set(reader.fieldnames or [])
        if missing:
            raise DSen2CRError(f"{path}: manifest header lacks {', '.join(sorted(missing))} (expected s2,s1,out)")
        jobs = []
        for line, row in enumerate(reader, start=2):
            if not row["s2"] or not row["out"]:
                raise DSen2CRError(f"{path}:{line}: s2 and out must not be empty")
            optional = {k: Path(row[k]) if row.get(k) else None for k in ("mask_out", "preview")}
            jobs.append(SceneJob(Path(row["s2"]), Path(row["s1"]) if row["s1"] else None, Path(row["out"]), **optional))
    if not jobs:
        raise DSen2CRError(f"{path}: manifest lists no scenes")
    return jobs


def _scene_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a scene's 10 m grid (None when it cannot be opened: its run reports the error)."""
    from dsen2cr.sources import S2Source

    try:
        source = S2Source(path)
    except DSen2CRError:
        return None
    try:
        return source.grid.height, source.grid.width
    finally:
        source.close()


def _rank_and_device(device: str) -> tuple[int, int, str]:
    """This process's rank, the world size and its device (under torchrun: one GPU per local rank)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = os.environ.get("LOCAL_RANK")
    if world > 1 and device == "cuda" and local is not None:
        device = f"cuda:{local}"
    return rank, world, device


#: ``--backend auto`` compiles (CPU) when the estimated eager run is longer than this, since compiling costs
#: tens of seconds once per tile shape (less later: inductor caches compiled code on disk).
COMPILE_WHEN_EAGER_SECONDS = 120.0
#: Rough eager fp32 rate of a CPU for the estimate (FLOP/s); a 2-core AVX-512 machine measures ~1.5e11.
EAGER_CPU_FLOPS = 1.5e11


def estimated_eager_seconds(config: ModelConfig, pixels: float) -> float:
    """Eager CPU seconds to run a model of ``config`` over ``pixels`` (2 FLOP per weight and pixel)."""
    return pixels * 2 * config.build_parameter_count() / EAGER_CPU_FLOPS


def make_predictor(
    weights: str,
    *,
    backend: str,
    device: str,
    precision: str,
    probe_shape: Callable[[ModelConfig], tuple[int, int, int]],
    pixels: float,
) -> tuple[Predictor, ModelConfig]:
    """The predictor for ``weights``: onnxruntime for .onnx files; otherwise the named PyTorch backend, or for
    ``auto`` compiled/bf16 when it pays off (checked against eager fp32 on a tile-shaped probe)."""
    is_onnx = Path(weights).suffix.lower() == ".onnx"
    if backend == "onnxruntime" or (backend == "auto" and is_onnx):
        if not is_onnx:
            raise DSen2CRError(f"{weights}: the onnxruntime backend needs an .onnx file (dsen2cr export-onnx)")
        if precision != "fp32":
            raise DSen2CRError("--precision: the onnxruntime backend runs the exported fp32 model only")
        from dsen2cr.onnx_export import OnnxPredictor

        onnx_predictor = OnnxPredictor(weights, device=device)
        print(f"backend: onnxruntime ({onnx_predictor.precision})", flush=True)
        return onnx_predictor, onnx_predictor.config
    if is_onnx:
        raise DSen2CRError(f"{weights}: an ONNX file runs with --backend onnxruntime (or auto)")
    model = load_model(weights, device=device)
    name = "bf16" if precision == "bf16" else backend
    if name == "auto":
        on_gpu = torch.device(device).type == "cuda"
        worth_compiling = estimated_eager_seconds(model.config, pixels) > COMPILE_WHEN_EAGER_SECONDS
        name = "auto" if on_gpu or worth_compiling else "eager"
    chosen, predictor = select_backend(model, name, device, probe_shape=probe_shape(model.config))
    print(f"backend: {chosen}", flush=True)
    return predictor, model.config


def run_scene_jobs(jobs: list[SceneJob], args: argparse.Namespace) -> Iterator[SceneReport]:
    """Process this rank's share of ``jobs`` with the settings of the parsed command line."""
    rank, world, device = _rank_and_device(args.device)
    mine = jobs[rank::world]
    sizes = [size for size in map(_scene_size, (job.s2 for job in mine)) if size is not None]

    batch_size = args.batch_size if args.batch_size != "auto" else 4 if torch.device(device).type == "cuda" else 1
    if args.memory is not None and args.memory <= 0:
        raise DSen2CRError(f"--memory: must be positive (GiB), got {args.memory}")
    tiles: dict[ModelConfig, int] = {}

    def overlap_of(config: ModelConfig) -> int:
        return default_overlap(config) if args.overlap is None else args.overlap

    def tile_of(config: ModelConfig) -> int:
        """--tile, or for auto the scene module's choice for the memory budget (decided once)."""
        if args.tile != "auto":
            return args.tile
        if config not in tiles:
            budget = memory_budget(device) if args.memory is None else int(args.memory * 2**30)
            tiles[config] = auto_tile(config, batch_size=batch_size, memory_bytes=budget, overlap=overlap_of(config))
            print(
                f"tiles: at most {tiles[config]} px, batch {batch_size} "
                f"(--tile auto for a {budget / 2**30:.2f} GiB budget)",
                flush=True,
            )
        return tiles[config]

    def probe_shape(config: ModelConfig) -> tuple[int, int, int]:
        """The first scene's tile shape, so that a compiled backend is built for the shape it will run."""
        tile = tile_of(config)
        height, width = sizes[0] if sizes else (tile, tile)
        window = plan_tiles(height, width, tile, overlap_of(config))[0].window
        return batch_size, window.height, window.width

    predictor, config = make_predictor(
        args.weights,
        backend=args.backend,
        device=device,
        precision=args.precision,
        probe_shape=probe_shape,
        pixels=sum(h * w for h, w in sizes),
    )
    overlap = overlap_of(config)
    for job in mine:
        yield remove_clouds(
            predictor,
            include_sar=config.include_sar,
            s2_path=job.s2,
            s1_path=job.s1,
            out=job.out,
            tile=tile_of(config),
            overlap=overlap,
            batch_size=batch_size,
            resampling=args.resampling,
            s1_linear=args.s1_linear,
            mask_out=job.mask_out,
            cloud_threshold=args.cloud_threshold,
            preview=job.preview,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
