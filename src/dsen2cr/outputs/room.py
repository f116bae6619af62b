"""Room on disk for what a long command writes, checked before the work that a full disk would waste
(docs/design.md §3.4). A scene's COG is staged uncompressed beside its output (the image and each overview level,
in whole blocks) and then compressed into the COG beside that staging by GDAL's copy; a COG compressed while
written keeps only its compressed tiles until the file is assembled beside them. Either way a folder needs, at
worst (data that do not compress), twice the uncompressed levels; the staging alone is certain where GDAL's copy
makes the COG. A training run keeps a checkpoint of every epoch; an evaluation's images are projected from its
first batch."""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsen2cr.errors import DSen2CRError
from dsen2cr.outputs.files import describe_bytes
from dsen2cr.outputs.geotiff import COG_OPTIONS, STAGING_OPTIONS
from dsen2cr.outputs.overviews import level_shapes, overview_factors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedOutput:
    """One output COG of a scene: where it goes, its uncompressed levels' bytes (:func:`staged_bytes`), and
    whether it is compressed while written (``streamed``: its uncompressed levels are never all on disk)."""

    path: Path
    staged: int
    streamed: bool


def staged_bytes(height: int, width: int, count: int, dtype: str) -> int:
    """Bytes of a COG's image and overview levels (those GDAL's COG driver makes) uncompressed, in the staging
    file's whole blocks: a full 10980 x 10980 Sentinel-2 tile of 13 uint16 bands stages 4.27 GB."""
    block = int(str(STAGING_OPTIONS["blockxsize"]))
    levels = level_shapes(height, width, overview_factors(height, width, int(COG_OPTIONS["blocksize"])))
    blocks = sum(math.ceil(h / block) * math.ceil(w / block) for h, w in levels)
    return blocks * block * block * count * np.dtype(dtype).itemsize


def check_room(outputs: Sequence[StagedOutput]) -> None:
    """Refuse, before any work, outputs whose folder cannot hold what is certainly staged there (one line with
    the room there is and the room needed); warn where it may not hold the worst case, twice the uncompressed
    levels (the COGs as large as their staging, data that do not compress). Outputs on one file system share
    its room."""
    by_device: dict[int, list[StagedOutput]] = {}
    for output in outputs:
        by_device.setdefault(os.stat(output.path.parent).st_dev, []).append(output)
    for group in by_device.values():
        folder = group[0].path.parent
        free = shutil.disk_usage(folder).free
        staged = sum(output.staged for output in group)
        certain = sum(output.staged for output in group if not output.streamed)
        if free < certain:
            raise DSen2CRError(
                f"{group[0].path}: {folder} has {describe_bytes(free)} free, and this scene's outputs stage "
                f"{describe_bytes(certain)} there uncompressed while they are written (the image and its overview "
                "levels in whole blocks, then the compressed COG beside them; a journal's predicted windows): free "
                "space there or choose another folder"
            )
        if free < 2 * staged:
            log.warning(
                "%s: %s has %s free, and this scene's outputs may need up to %s there while they are written (their "
                "%s uncompressed and the COG beside them, as large where the data do not compress): the run may fail "
                "for want of room at its end",
                group[0].path,
                folder,
                describe_bytes(free),
                describe_bytes(2 * staged),
                describe_bytes(staged),
            )


def check_run_room(folder: Path, checkpoint: int, epochs: int) -> None:
    """Refuse a training run whose folder has no room for its first epoch's checkpoint and ``last.ckpt``
    (``checkpoint`` bytes each), before the first batch; warn where it has no room for a checkpoint of each of
    the ``epochs`` left to train, ``last.ckpt`` and the next ``last.ckpt`` written beside it."""
    free = shutil.disk_usage(folder).free
    first, every = 2 * checkpoint, (epochs + 2) * checkpoint
    if free < first:
        raise DSen2CRError(
            f"{folder}: {folder.parent} has {describe_bytes(free)} free, and this run writes a checkpoint of "
            f"{describe_bytes(checkpoint)} after every epoch and last.ckpt beside them: its first epoch needs "
            f"{describe_bytes(first)} there; free space there or choose another run folder"
        )
    if free < every:
        log.warning(
            "%s: %s has %s free, but this run keeps a checkpoint of %s for each of its %d epochs to train, and "
            "last.ckpt written beside the one it replaces, every epoch's: up to %s there; it may stop for want of "
            "room at a later epoch (its complete checkpoints stay, and --resume continues)",
            folder,
            folder.parent,
            describe_bytes(free),
            describe_bytes(checkpoint),
            epochs,
            describe_bytes(every),
        )


def check_projected_room(folder: Path, parts: Sequence[Path], done: int, total: int, *, what: str, hint: str) -> None:
    """Once ``done`` of ``total`` items (``what``: "patches") wrote into ``parts`` (folders in ``folder``), refuse
    to go on where the rest, at the bytes the first ones took, will not fit the room left there (one line, with
    ``hint``: what to do)."""
    written = sum(entry.stat().st_size for part in parts for entry in part.rglob("*") if entry.is_file())
    need, free = written * (total - done) // max(done, 1), shutil.disk_usage(folder).free
    if need > free:
        raise DSen2CRError(
            f"{folder}: the first {done} {what} wrote {describe_bytes(written)}, so the other {total - done} need "
            f"about {describe_bytes(need)} more, and {folder} has {describe_bytes(free)} free: {hint}"
        )
